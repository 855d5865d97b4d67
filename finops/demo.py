"""`finops demo`: the whole system on one machine with a simulated fleet (what `make run` runs).

Order (STYLE.md: logging, settings, connectivity, build, signals, run, close in reverse):
1. the local Kafka broker (`finops stack up`: topics included) and the ClickHouse migrations;
2. a local HTTP receiver standing in for Slack and PagerDuty unless real destinations are configured;
3. every role as a child process, each with its log in ``<data dir>/logs``: the sink (it owns the embedded
   ClickHouse and serves it to the others on ``FINOPS_CLICKHOUSE_QUERY_URL``), the stream job, detection, the
   alert worker and the dashboard;
4. a budget policy and a simulated fleet with one runaway agent;
5. where to look; Ctrl-C (or SIGTERM) stops the children in reverse order and leaves the broker running for the
   next start (`finops stack down` stops it).
A role that exits on its own stops the demo with its log tail: a half-running system is not a demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from schemas.errors import FinopsError

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Role:
    name: str
    argv: list[str]
    wait_for_port: int | None = None


class _Receiver(BaseHTTPRequestHandler):
    """Records every POST as one JSON line and answers 202 like PagerDuty / 200 like Slack."""

    log_path: Path
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        channel = "pagerduty" if "pagerduty" in self.path else "slack" if "slack" in self.path else "webhook"
        record = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "channel": channel, "payload": payload}
        with self.lock, open(self.log_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        summary = payload.get("text") or payload.get("payload", {}).get("summary") if isinstance(payload, dict) else ""
        print(f"  [{channel}] {summary or ''}", flush=True)
        self.send_response(202 if channel == "pagerduty" else 200)
        self.end_headers()
        self.wfile.write(b'{"status":"success"}' if channel == "pagerduty" else b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        return


def start_receiver(port: int, log_path: Path) -> ThreadingHTTPServer:
    handler = type("Receiver", (_Receiver,), {"log_path": log_path})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, name="demo-receiver", daemon=True).start()
    return server


def _available_commands() -> set[str]:
    from finops.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return set(action.choices)
    return set()


def _wait_port(port: int, deadline: float) -> bool:
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_demo(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from finops.stack import stack_from_settings
    from finops.topics import ensure_topics

    settings = load_settings()
    data = settings.data_dir
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    finops = [sys.executable, "-m", "finops.cli"]

    print("1/5 kafka: starting the local broker ...", flush=True)
    stack = stack_from_settings(data, settings.kafka.bootstrap)
    stack.up()
    ensure_topics(settings.kafka.client_config(), prefix=settings.kafka.topic_prefix,
                  usage_partitions=settings.kafka.usage_partitions)
    print(f"    broker on {stack.bootstrap}, data in {stack.data_dir}")
    done = subprocess.run([*finops, "migrate"], capture_output=True, text=True)
    if done.returncode != 0:
        raise FinopsError(f"migrations failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    print("    clickhouse migrations applied")

    env = dict(os.environ)
    receiver = None
    receiver_log = data / "demo-alerts.jsonl"
    if settings.alerting.slack_webhook_url is None and settings.alerting.pagerduty_routing_key is None:
        receiver = start_receiver(args.receiver_port, receiver_log)
        env["FINOPS_ALERTING_SLACK_WEBHOOK_URL"] = f"http://127.0.0.1:{args.receiver_port}/slack/demo"
        env["FINOPS_ALERTING_PAGERDUTY_URL"] = f"http://127.0.0.1:{args.receiver_port}/pagerduty/v2/enqueue"
        env["FINOPS_ALERTING_PAGERDUTY_ROUTING_KEY"] = "demo-routing-key"
        print(f"2/5 alerts: no Slack/PagerDuty configured; a local receiver on :{args.receiver_port} records them "
              f"in {receiver_log}")
    else:
        print("2/5 alerts: delivering to the configured Slack / PagerDuty destinations")
    env.setdefault("FINOPS_CONTROL_SIGNING_KEY", "demo-signing-key-change-me")
    env.setdefault("FINOPS_CONTROL_OPERATOR_KEY", "demo-operator-key")

    available = _available_commands()
    query_port = 8124
    roles = [
        Role("sink", [*finops, "sink", "run"], wait_for_port=query_port),
        Role("stream", [*finops, "stream", "run"]),
        Role("detect", [*finops, "detect", "run"]),
        Role("alerts", [*finops, "alerts", "run"]),
        Role("dashboard", [*finops, "serve", "--port", str(args.port)], wait_for_port=args.port),
    ]
    procs: list[tuple[Role, subprocess.Popen[bytes]]] = []
    stopping = threading.Event()

    def stop_all() -> None:
        stopping.set()
        for role, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for role, proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if receiver is not None:
            receiver.shutdown()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("3/5 roles:", flush=True)
        for role in roles:
            command = role.argv[3]
            if command not in available:
                print(f"    {role.name}: not in this build (no `finops {command}`), skipped")
                continue
            log = open(logs / f"{role.name}.log", "ab")
            proc = subprocess.Popen(role.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            procs.append((role, proc))
            if role.wait_for_port and not _wait_port(role.wait_for_port, time.monotonic() + 60):
                raise FinopsError(f"{role.name} did not open port {role.wait_for_port}; log tail:\n"
                                  f"{_tail(logs / f'{role.name}.log')}")
            print(f"    {role.name}: pid {proc.pid}, log {logs / (role.name + '.log')}")

        print("4/5 fleet: budget policy and simulated agents (agent-007 runs away)", flush=True)
        policy = REPO_ROOT / "infra" / "policies.example.yaml"
        if "policy" in available and policy.exists():
            subprocess.run([*finops, "policy", "apply", str(policy)], env=env, check=False,
                           stdout=open(logs / "policy.log", "ab"), stderr=subprocess.STDOUT)
        sim = Role("simulate", [*finops, "simulate", "--realtime", "--agents", str(args.agents), "--teams", "4",
                                "--projects", "8", "--rate", args.rate, "--duration", "24h",
                                "--misbehave", "runaway:agent-007", "--misbehave", "retry_loop:agent-011",
                                "--answer-key", str(data / "demo-answer-key.json")])
        proc = subprocess.Popen(sim.argv, env=env, stdout=open(logs / "simulate.log", "ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append((sim, proc))

        print("5/5 ready. Where to look:")
        if "serve" in available:
            print(f"    dashboard      http://127.0.0.1:{args.port}/")
        print(f"    SQL            {Path(sys.argv[0]).name if sys.argv else 'finops'} sql "
              "\"SELECT team, sum(cost_usd) FROM usage_ledger GROUP BY team ORDER BY 2 DESC\"")
        print(f"    alerts         {receiver_log if receiver else 'your Slack / PagerDuty'}")
        print(f"    role logs      {logs}/")
        print("    Ctrl-C stops everything.", flush=True)
        while True:
            for role, proc in procs:
                code = proc.poll()
                if code is not None and not stopping.is_set():
                    raise FinopsError(f"{role.name} exited with {code}; log tail:\n{_tail(logs / f'{role.name}.log')}")
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stop_all()
        print("stopped (the broker keeps running: `finops stack down` stops it)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="run the whole system on one machine with a simulated fleet (make run)")
    demo.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080)")
    demo.add_argument("--receiver-port", type=int, default=8125, help="local alert receiver port (default 8125)")
    demo.add_argument("--agents", type=int, default=40, help="simulated agents (default 40)")
    demo.add_argument("--rate", default="40/s", help="fleet-wide events per second (default 40/s)")
    demo.set_defaults(func=run_demo)
