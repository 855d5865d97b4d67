"""`finops demo`: the whole system on one machine with a simulated fleet (what `make run` runs).

Order (STYLE.md: logging, settings, connectivity, build, signals, run, close in reverse):
1. the local Kafka broker (`finops stack up`: topics included) and the ClickHouse migrations;
2. a local HTTP receiver standing in for Slack and PagerDuty unless real destinations are configured;
3. every role as a child process, each with its log in ``<data dir>/logs``: the sink (it owns the embedded
   ClickHouse and serves it to the others on ``FINOPS_CLICKHOUSE_QUERY_URL``), the stream job, detection, the
   alert worker and the dashboard; then a dashboard token and the demo budget policies;
4. the fleet, in three phases of one seeded simulation (same seed = same agents, so one phase's habits are the
   next one's baseline):
   a. *history*: the last 70 minutes of the fleet, emitted as fast as the pipeline takes them. The dashboard has a
      fleet's spend within seconds, and the runaway detector has the hour of per-agent norms it needs before it
      judges an agent (``runaway_warmup_s``);
   b. *incident*: 90 s in real time in which one agent runs away (50x its task rate) from about 50 s in (seed 7
      puts the start at 54 % of the phase; the simulator picks 30-60 %), so its alert reaches the receiver about
      80 s after the fleet goes live (the detector judges a 60 s window);
   c. *steady*: the same fleet in real time for a day, until Ctrl-C;
5. where to look (dashboard URL and token, a `finops sql` query, where the alerts went), then the first spend
   seen in ClickHouse and every alert the receiver gets, as they happen.
Ctrl-C (or SIGTERM) stops the children one by one in reverse order (the fleet first, the sink last, so every
event in flight is written) and leaves the broker running for the next start (`finops stack down` stops it).
The children run in their own sessions: a terminal's Ctrl-C reaches the demo only, which then stops them in order.
A role that exits on its own stops the demo with its log tail: a half-running system is not a demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from schemas.errors import FinopsError

__all__ = ["FleetPlan", "Role", "build_fleet_plan", "register", "run_demo", "start_receiver"]

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The demo fleet (one seed: the history phase teaches the detectors the habits the live phases keep).
DEMO_SEED = 7
HISTORY = timedelta(minutes=70)  # > the runaway detector's one-hour warm-up per agent
INCIDENT_SECONDS = 90
RUNAWAY_AGENT = "agent-003"  # a busy agent: its runaway is visible in dollars, and it trips its budget
#: The runaway's jump in task rate. The simulator's default (20x) is what the e2e detection test scores over a
#: whole day; here the runaway has ~40 s before the phase ends, and 20x left it at the edge of the detector's 3x
#: spend-over-60-s test (alerted in one run, not in the next), so the demo makes it unmistakable.
RUNAWAY_FACTOR = 50

#: Demo budgets, written to the data dir and applied with `finops policy apply`. The runaway agent's daily cap
#: sits above what its normal day so far costs (~$37 in the 70-minute history at the default rate), so the 80 %
#: notice comes from the runaway and the hard 100 % (suspend) follows later in the steady phase; the team budget
#: shows a healthy one.
DEMO_POLICIES = f"""\
# Written by `finops demo` (make run). Budget policies as code: see infra/policies.example.yaml for every field.
policies:
  - policy_id: demo-{RUNAWAY_AGENT}-daily
    scope_type: agent
    scope_value: {RUNAWAY_AGENT}
    period: day
    timezone: UTC
    limit_usd: 50
    mode: hard
    thresholds:
      - {{percent: 80, actions: [notify]}}
      - {{percent: 100, actions: [notify, suspend], channels: ["slack:#finops-demo", "pagerduty:finops"]}}
  - policy_id: demo-platform-monthly
    scope_type: team
    scope_value: platform
    period: month
    timezone: UTC
    limit_usd: 5000
    mode: soft
    thresholds:
      - {{percent: 50, actions: [notify]}}
      - {{percent: 100, actions: [notify, throttle]}}
    forecast: true
    throttle_rate_per_minute: 30
"""


@dataclass(frozen=True)
class Role:
    """One child process of the demo: its name (and log file), its argv, and the port that says it is ready."""

    name: str
    argv: list[str]
    wait_for_port: int | None = None


@dataclass(frozen=True)
class FleetPlan:
    """The simulate invocations of the fleet, run one after the other (see the module docstring, step 4)."""

    phases: list[tuple[str, list[str]]] = field(default_factory=list)


def build_fleet_plan(finops: Sequence[str], now: datetime, *, agents: int, rate: float, answer_key: Path) -> FleetPlan:
    """The three fleet phases for a demo started at ``now``. Pure: same arguments, same argv."""
    common = ["--seed", str(DEMO_SEED), "--agents", str(agents), "--teams", "4", "--projects", "8",
              "--rate", f"{rate:g}/s"]
    start = (now - HISTORY).replace(microsecond=0)
    history_minutes = int(HISTORY.total_seconds() // 60)
    return FleetPlan([
        ("history", [*finops, "simulate", "--fast", "--start", start.isoformat(), "--duration",
                     f"{history_minutes}m", *common]),
        ("incident", [*finops, "simulate", "--realtime", "--duration", f"{INCIDENT_SECONDS}s", *common,
                      "--misbehave", f"runaway:{RUNAWAY_AGENT}",
                      "--runaway-factor", str(RUNAWAY_FACTOR), "--answer-key", str(answer_key)]),
        ("steady", [*finops, "simulate", "--realtime", "--duration", "24h", *common]),
    ])


# ---- the local alert receiver ------------------------------------------------------------------------------------
class _Receiver(BaseHTTPRequestHandler):
    """Records every POST as one JSON line and answers 202 like PagerDuty / 200 like Slack."""

    log_path: Path
    on_record: Callable[[dict[str, Any]], None] | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        channel = "pagerduty" if "pagerduty" in self.path else "slack" if "slack" in self.path else "webhook"
        record = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "channel": channel, "path": self.path,
                  "payload": payload}
        with self.lock, open(self.log_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        if self.on_record is not None:
            self.on_record(record)
        self.send_response(202 if channel == "pagerduty" else 200)
        self.end_headers()
        self.wfile.write(b'{"status":"success"}' if channel == "pagerduty" else b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        return


def start_receiver(port: int, log_path: Path,
                   on_record: Callable[[dict[str, Any]], None] | None = None) -> ThreadingHTTPServer:
    """Serve the stand-in Slack / PagerDuty on 127.0.0.1:``port`` in a daemon thread; each POST is appended to
    ``log_path`` as a JSON line and passed to ``on_record``. Raises OSError when the port is taken."""
    attrs: dict[str, Any] = {"log_path": log_path, "on_record": staticmethod(on_record) if on_record else None}
    handler = type("Receiver", (_Receiver,), attrs)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, name="demo-receiver", daemon=True).start()
    return server


def alert_summary(record: dict[str, Any]) -> str:
    """One line for a received notification: Slack's text or PagerDuty's summary and action."""
    payload = record.get("payload")
    if not isinstance(payload, dict):
        return str(payload)[:160]
    if record.get("channel") == "pagerduty":
        inner = payload.get("payload") or {}
        return f"{payload.get('event_action', '?')}: {inner.get('summary', '') if isinstance(inner, dict) else ''}"
    text = payload.get("text") or ""
    return str(text).splitlines()[0][:200] if text else json.dumps(payload)[:160]


# ---- helpers -----------------------------------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers do: a port left in TIME_WAIT by the last run is free for them, so it is free here.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll until something accepts on 127.0.0.1:``port``; False at the deadline or when ``proc`` has exited."""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
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


def _available_commands() -> set[str]:
    from finops.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return set(action.choices)
    return set()


class _FleetRunner(threading.Thread):
    """Runs the fleet phases one after the other as child processes; ``failed`` holds why a phase failed."""

    def __init__(self, plan: FleetPlan, env: dict[str, str], logs: Path, say: Callable[[str], None]) -> None:
        super().__init__(name="demo-fleet", daemon=True)
        self.plan, self.env, self.logs, self.say = plan, env, logs, say
        self.current: subprocess.Popen[bytes] | None = None
        self.failed: str | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        for name, argv in self.plan.phases:
            with self._lock:
                if self.stopping.is_set():
                    return
                log = open(self.logs / "simulate.log", "ab")
                log.write(f"\n=== fleet phase {name}: {' '.join(argv[3:])}\n".encode())
                log.flush()
                started = time.monotonic()
                self.current = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            code = self.current.wait()
            log.close()
            if self.stopping.is_set():
                return
            if code != 0:
                self.failed = f"fleet phase {name} exited with {code}; log tail:\n{_tail(self.logs / 'simulate.log')}"
                return
            self.say(f"fleet: {name} phase done in {time.monotonic() - started:.0f} s")

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
            proc = self.current
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the simulator flushes its producer on SIGINT
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _issue_token(finops: list[str], env: dict[str, str], logs: Path) -> str | None:
    """A finops_admin token for every team (printed once; only its hash is stored), or None if issuing failed."""
    done = subprocess.run([*finops, "token", "issue", "--role", "finops_admin", "--team", "*", "--subject", "demo",
                           "--json"], env=env, capture_output=True, text=True, timeout=60)
    with open(logs / "token.log", "a") as log:
        log.write(done.stderr)
    if done.returncode != 0:
        return None
    try:
        return str(json.loads(done.stdout)["token"])
    except (ValueError, KeyError):
        return None


def _spend_probe(settings: Any) -> Callable[[], tuple[int, Any] | None]:
    """A function returning (calls, dollars) in the ledger through the store owner's endpoint, None if unreachable."""
    from sinks.sql_cli import open_readonly_client

    state: dict[str, Any] = {}

    def probe() -> tuple[int, Any] | None:
        try:
            if "client" not in state:
                state["client"], _ = open_readonly_client(settings.clickhouse_url(), settings.clickhouse.database,
                                                          settings.clickhouse.query_url, ping_timeout=2.0)
            rows = state["client"].query("SELECT count(), sum(cost_usd) FROM usage_ledger").result_rows
            return int(rows[0][0]), rows[0][1]
        except Exception:  # noqa: BLE001 - a probe: the demo only reports what it sees
            state.pop("client", None)
            return None

    return probe


# ---- the command -------------------------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:  # noqa: C901, PLR0912, PLR0915 - one linear script, in the order above
    """Start everything, print where to look, block until Ctrl-C / SIGTERM or a role dies; stop in reverse order.

    Returns 0 after a requested stop. Raises FinopsError when a port is taken, the broker or the migrations fail,
    or a role does not come up / exits on its own.
    """
    from finops.settings import load_settings
    from finops.stack import stack_from_settings
    from finops.topics import ensure_topics
    from sinks.clickhouse import parse_clickhouse_url
    from sinks.store_server import parse_query_url

    t_start = time.monotonic()
    settings = load_settings()
    data = settings.data_dir
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    finops = [sys.executable, "-m", "finops.cli"]
    embedded = parse_clickhouse_url(settings.clickhouse_url()).kind != "http"
    query_port = parse_query_url(settings.clickhouse.query_url).port
    use_receiver = settings.alerting.slack_webhook_url is None and settings.alerting.pagerduty_routing_key is None

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t_start:5.1f}s] {text}", flush=True)

    # Ports first: a clash found after the broker started leaves the user with half a system.
    wanted = {"dashboard (--port)": args.port, "OTLP intake (FINOPS_INTAKE_PORT)": settings.intake.port}
    if use_receiver:
        wanted["alert receiver (--receiver-port)"] = args.receiver_port
    if embedded:
        wanted["store endpoint (FINOPS_CLICKHOUSE_QUERY_URL)"] = query_port
    taken = [f"{what} {port}" for what, port in wanted.items() if not _port_free(port)]
    if taken:
        raise FinopsError(f"port(s) in use: {', '.join(taken)}. Is another `finops demo` running? Stop it, or pick "
                          "other ports (finops demo --port/--receiver-port, FINOPS_CLICKHOUSE_QUERY_URL).")

    say("1/5 kafka: starting the local broker ...")
    stack = stack_from_settings(data, settings.kafka.bootstrap)
    stack.up()
    ensure_topics(settings.kafka.client_config(), prefix=settings.kafka.topic_prefix,
                  usage_partitions=settings.kafka.usage_partitions,
                  replication_factor=settings.kafka.replication_factor)
    say(f"    broker on {stack.bootstrap}, data in {stack.data_dir}")
    done = subprocess.run([*finops, "migrate"], capture_output=True, text=True)
    if done.returncode != 0:
        raise FinopsError(f"migrations failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    say("    clickhouse migrations applied")

    env = dict(os.environ)
    receiver = None
    receiver_log = data / "demo-alerts.jsonl"
    alerts_seen: list[dict[str, Any]] = []

    def on_alert(record: dict[str, Any]) -> None:
        alerts_seen.append(record)
        say(f"    alert -> {record['channel']}: {alert_summary(record)}")

    if use_receiver:
        receiver = start_receiver(args.receiver_port, receiver_log, on_alert)
        base = f"http://127.0.0.1:{args.receiver_port}"
        env["FINOPS_ALERTING_SLACK_WEBHOOK_URL"] = f"{base}/slack/demo"
        env["FINOPS_ALERTING_PAGERDUTY_URL"] = f"{base}/pagerduty/v2/enqueue"
        env["FINOPS_ALERTING_PAGERDUTY_ROUTING_KEY"] = "demo-routing-key"
        say(f"2/5 alerts: no Slack/PagerDuty configured; a local receiver on :{args.receiver_port} stands in for "
            f"both and records them in {receiver_log}")
    else:
        say("2/5 alerts: delivering to the configured Slack / PagerDuty destinations")
    env.setdefault("FINOPS_CONTROL_SIGNING_KEY", "demo-signing-key-change-me")
    env.setdefault("FINOPS_CONTROL_OPERATOR_KEY", "demo-operator-key")
    env.setdefault("FINOPS_ALERTING_DASHBOARD_URL", f"http://127.0.0.1:{args.port}")

    available = _available_commands()
    roles = [
        Role("sink", [*finops, "sink", "run"], wait_for_port=query_port if embedded else None),
        Role("stream", [*finops, "stream", "run"]),
        # From the earliest priced event: the history phase may be priced before detection's group has joined.
        Role("detect", [*finops, "detect", "run", "--from-earliest"]),
        Role("alerts", [*finops, "alerts", "run"]),
        Role("dashboard", [*finops, "serve", "--port", str(args.port)], wait_for_port=args.port),
        # Zero-code intake: OTLP/HTTP from agents that need no SDK (README "Connect your agents").
        Role("intake", [*finops, "intake", "run"], wait_for_port=settings.intake.port),
    ]
    procs: list[tuple[Role, subprocess.Popen[bytes]]] = []
    fleet: _FleetRunner | None = None

    def stop_all() -> None:
        if fleet is not None:
            fleet.stop()
        # One by one, newest first: the stream flushes its outputs before the sink (which writes them) stops.
        for role, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    say(f"    {role.name} did not stop within 30 s; killed")
                    proc.kill()
                    proc.wait()
        if receiver is not None:
            receiver.shutdown()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        say("3/5 roles:")
        for role in roles:
            command = role.argv[3]
            if command not in available:
                say(f"    {role.name}: not in this build (no `finops {command}`), skipped")
                continue
            log_path = logs / f"{role.name}.log"
            with open(log_path, "ab") as log:
                # Own session: a terminal Ctrl-C reaches the demo, which stops the roles in order.
                proc = subprocess.Popen(role.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            procs.append((role, proc))
            if role.wait_for_port and not _wait_port(role.wait_for_port, time.monotonic() + 90, proc):
                raise FinopsError(f"{role.name} did not open port {role.wait_for_port}; log tail:\n{_tail(log_path)}")
            say(f"    {role.name}: pid {proc.pid}, log {log_path}")

        token = _issue_token(finops, env, logs) if "token" in available else None
        if token:
            (data / "demo-token").write_text(token + "\n")
            (data / "demo-token").chmod(0o600)

        policy = data / "demo-policies.yaml"
        policy.write_text(DEMO_POLICIES)
        if "policy" in available:
            applied = subprocess.run([*finops, "policy", "apply", str(policy)], env=env, capture_output=True,
                                     text=True, timeout=120)
            with open(logs / "policy.log", "a") as policy_log:
                policy_log.write(applied.stdout + applied.stderr)
            say(f"4/5 budgets: {policy} " + ("applied" if applied.returncode == 0 else
                                             f"NOT applied (exit {applied.returncode}, see {logs / 'policy.log'})"))

        plan = build_fleet_plan(finops, datetime.now(UTC), agents=args.agents, rate=args.rate,
                                answer_key=data / "demo-answer-key.json")
        fleet = _FleetRunner(plan, env, logs, say)
        fleet.start()
        say(f"    fleet: {args.agents} agents at {args.rate:g} events/s; the last {HISTORY.seconds // 60} minutes "
            f"first, then live; {RUNAWAY_AGENT} runs away about a minute in")

        url = f"http://127.0.0.1:{args.port}/"
        say("5/5 ready. Where to look:")
        print(f"    dashboard  {url}  (sign in with the token below)", flush=True)
        if token:
            print(f"    token      {token}  (also in {data / 'demo-token'}; API: curl -H 'Authorization: Bearer "
                  f"<token>' {url}api/overview)")
        print("    SQL        finops sql \"SELECT team, round(sum(cost_usd), 2) AS usd, count() AS calls FROM "
              "usage_ledger GROUP BY team ORDER BY usd DESC\"")
        print("               finops sql \"SELECT occurred_at, severity, agent_id, title FROM alerts ORDER BY occurred_at DESC "
              f"LIMIT 10\"")
        print(f"    alerts     {receiver_log if receiver else 'your Slack / PagerDuty'}")
        print(f"    OTLP       http://{settings.intake.host}:{settings.intake.port}  (finops intake token issue "
              "--source NAME; README \"Connect your agents\")")
        print(f"    role logs  {logs}/")
        print("    Ctrl-C stops everything.", flush=True)
        if args.open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                  or sys.platform == "darwin"):
            import webbrowser

            webbrowser.open(url)

        probe = _spend_probe(settings)
        spend_seen = False
        next_probe = 0.0
        while True:
            for role, proc in procs:
                code = proc.poll()
                if code is not None:
                    raise FinopsError(f"{role.name} exited with {code}; log tail:\n"
                                      f"{_tail(logs / f'{role.name}.log')}")
            if fleet.failed:
                raise FinopsError(fleet.failed)
            if not spend_seen and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 2.0
                seen = probe()
                if seen and seen[0] > 0:
                    spend_seen = True
                    say(f"    spend is queryable: {seen[0]:,} calls, ${seen[1]:,.2f} so far (the dashboard shows it)")
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping (fleet, then the roles newest first) ...")
        return 0
    finally:
        stop_all()
        say(f"stopped; {len(alerts_seen)} notifications received. The broker keeps running: `finops stack down` "
            "stops it.")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops demo``."""
    demo = sub.add_parser("demo", help="run the whole system on one machine with a simulated fleet (make run)",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080)")
    demo.add_argument("--receiver-port", type=int, default=8125, help="local alert receiver port (default 8125)")
    demo.add_argument("--agents", type=int, default=30, help="simulated agents (default 30)")
    demo.add_argument("--rate", type=float, default=10.0, help="fleet-wide events per second (default 10)")
    demo.add_argument("--no-browser", dest="open_browser", action="store_false",
                      help="do not open the dashboard in a browser (it is opened only when a display exists)")
    demo.set_defaults(func=run_demo)

