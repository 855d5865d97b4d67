"""`finops demo`: the whole system on one machine with a simulated fleet (what `make run` runs).

Role: in STYLE.md's order (logging, settings, connectivity, build, signals, run, close in reverse), start the local
broker and the migrations, a local stand-in receiver for Slack and PagerDuty, every role as a child process (the
sink owns the embedded ClickHouse and serves it to the others), a dashboard token and the demo budgets, then the
fleet in phases of one seeded timeline: history, an incident in which one agent runs away, steady traffic
(:func:`run_demo` lists the steps).

Guarantee: a restart on the same data dir continues the timeline without re-sending what was sent (re-sent events
keep their ids and are dropped by id); Ctrl-C or SIGTERM stops the children in reverse order, the sink last, so every
event in flight is written; a role that exits on its own stops the demo with its log tail. README, "Demo".
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from finops.cli import build_parser
from finops.clickhouse import open_client, parse_clickhouse_url, parse_query_url
from finops.clock import utc_now
from finops.receiver import alert_summary, start_receiver
from finops.secrets import CONTROL_OPERATOR_KEY, load_control_signing_key, load_or_create_secret, secret_path
from producers.simulator import parse_duration
from schemas.errors import FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["FleetPhase", "FleetTimeline", "Role", "build_fleet_plan", "load_timeline", "register", "run_demo"]

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The demo fleet (one seed: the history phase teaches the detectors the habits the live phases keep).
DEMO_SEED = 7
HISTORY = timedelta(minutes=70)  # > the runaway detector's one-hour warm-up per agent
INCIDENT_SECONDS = 90
#: One steady segment (a restart regenerates at most one segment to find its place in it).
STEADY_SECONDS = 3600
#: The subject of the demo's dashboard token (a restart reuses it and revokes any other active one of it).
TOKEN_SUBJECT = "demo"
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


def build_roles(finops: Sequence[str], *, dashboard_port: int, query_port: int | None,
                intake_port: int) -> list[Role]:
    """The roles the demo starts, in start order (the Docker deployment, infra/docker-compose.yml, runs the same
    ones; tests/unit/test_compose.py checks it against this list). ``query_port``: the embedded store endpoint the
    sink opens, None against a ClickHouse server. Pure."""
    return [
        Role("sink", [*finops, "sink", "run"], wait_for_port=query_port),
        Role("stream", [*finops, "stream", "run"]),
        # From the earliest priced event: the history phase may be priced before detection's group has joined.
        Role("detect", [*finops, "detect", "run", "--from-earliest"]),
        Role("alerts", [*finops, "alerts", "run"]),
        Role("dashboard", [*finops, "serve", "--port", str(dashboard_port)], wait_for_port=dashboard_port),
        # Zero-code intake: OTLP/HTTP from agents that need no SDK (README "Connect your agents").
        Role("intake", [*finops, "intake", "run"], wait_for_port=intake_port),
    ]


@dataclass(frozen=True)
class FleetTimeline:
    """The demo fleet's simulated time, recorded in ``<data dir>/demo-fleet/timeline.json`` and fixed once set:
    ``origin`` is the event time of the first history event (the first fleet start minus the history), and
    ``live_start`` the event time the live phases begin at, set when the incident first starts (the history ends
    at the fleet's start, but sending it takes a while; the incident then starts live instead of in the past).
    The phases follow each other from there (:func:`run_demo`, step 4)."""

    origin: datetime
    agents: int
    rate: float
    history_s: int
    incident_s: int
    steady_s: int = STEADY_SECONDS
    seed: int = DEMO_SEED
    live_start: datetime | None = None

    def fleet(self) -> dict[str, Any]:
        """What makes two timelines the same fleet (everything but the times)."""
        return {k: v for k, v in asdict(self).items() if k not in ("origin", "live_start")}

    def to_json(self) -> str:
        live = self.live_start.isoformat() if self.live_start else None
        return json.dumps({**self.fleet(), "origin": self.origin.isoformat(), "live_start": live}, indent=2) + "\n"


def load_timeline(path: Path) -> FleetTimeline | None:
    """The timeline recorded in ``path``, or None when there is none. Raises FinopsError when it is unreadable."""
    try:
        data = json.loads(path.read_text())
        live = data.pop("live_start", None)
        return FleetTimeline(origin=datetime.fromisoformat(data.pop("origin")),
                             live_start=datetime.fromisoformat(live) if live else None, **data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise FinopsError(f"{path} is not a demo timeline ({err}); delete it (the fleet then starts afresh) or "
                          "start on a clean data dir") from err


def save_timeline(state_dir: Path, timeline: FleetTimeline) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "timeline.json.tmp"
    tmp.write_text(timeline.to_json())
    os.replace(tmp, state_dir / "timeline.json")


@dataclass(frozen=True)
class FleetPhase:
    """One ``finops simulate`` run of the timeline: [start, start + duration_s) of event time."""

    name: str
    start: datetime
    duration_s: int
    realtime: bool
    misbehave: bool = False

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)


def timeline_phases(timeline: FleetTimeline) -> Iterator[FleetPhase]:
    """Every phase of ``timeline`` in order: history, incident, then steady segments without end. Pure."""
    history = FleetPhase("history", timeline.origin, timeline.history_s, realtime=False)
    yield history
    incident = FleetPhase("incident", timeline.live_start or history.end, timeline.incident_s, realtime=True,
                          misbehave=True)
    yield incident
    start, number = incident.end, 1
    while True:
        yield FleetPhase(f"steady-{number:04d}", start, timeline.steady_s, realtime=True)
        start, number = start + timedelta(seconds=timeline.steady_s), number + 1


def progress_path(state_dir: Path, phase: FleetPhase) -> Path:
    return state_dir / f"{phase.name}.progress.json"


def _phase_progress(state_dir: Path, phase: FleetPhase) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(progress_path(state_dir, phase).read_text())
        return data
    except (OSError, ValueError):
        return {}


def build_fleet_plan(finops: Sequence[str], timeline: FleetTimeline, state_dir: Path, *, skip_before: datetime,
                     answer_key: Path, clock: Callable[[], datetime] = lambda: utc_now(),
                     ) -> Iterator[tuple[str, list[str]]]:
    """The simulate invocations still to run, lazily, in order: ``(phase name, argv)``. Phases that finished on
    an earlier start, or that lie wholly before ``skip_before``, are left out; the others resume from their
    progress file and skip what lies before ``skip_before``. When the live phases are reached and the timeline
    has no ``live_start`` yet, it is set to ``max(end of history, clock())`` and saved in ``state_dir``."""
    common = ["--seed", str(timeline.seed), "--agents", str(timeline.agents), "--teams", "4", "--projects", "8",
              "--rate", f"{timeline.rate:g}/s"]
    phases = timeline_phases(timeline)
    while True:
        phase = next(phases)
        if phase.name == "incident" and timeline.live_start is None:
            timeline = replace(timeline, live_start=max(phase.start, clock().replace(microsecond=0)))
            save_timeline(state_dir, timeline)
            phases = timeline_phases(timeline)
            next(phases)  # the history, handled already
            phase = next(phases)
        if phase.end <= skip_before or _phase_progress(state_dir, phase).get("finished"):
            continue
        argv = [*finops, "simulate", "--realtime" if phase.realtime else "--fast", "--start", phase.start.isoformat(),
                "--duration", f"{phase.duration_s}s", *common, "--resume-file", str(progress_path(state_dir, phase))]
        if skip_before > phase.start:
            argv += ["--skip-before", skip_before.isoformat()]
        if phase.misbehave:
            argv += ["--misbehave", f"runaway:{RUNAWAY_AGENT}", "--runaway-factor", str(RUNAWAY_FACTOR),
                     "--answer-key", str(answer_key)]
        yield phase.name, argv


def fleet_totals(state_dir: Path) -> tuple[int, int, datetime | None]:
    """(events sent, events skipped, event time reached) over every phase's progress file of ``state_dir``."""
    sent = skipped = 0
    through: datetime | None = None
    for path in sorted(state_dir.glob("*.progress.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        sent += int(data.get("emitted", 0))
        skipped += int(data.get("skipped", 0))
        if data.get("through"):
            at = datetime.fromisoformat(data["through"])
            through = at if through is None else max(through, at)
    return sent, skipped, through


def check_timeline(state_dir: Path, wanted: FleetTimeline) -> FleetTimeline | None:
    """The recorded timeline when it is the fleet ``wanted`` describes (a restart continues it), else None (the
    fleet starts afresh; stale progress files are removed). Raises FinopsError when the data dir holds another
    fleet that already sent events, or a demo of a version that recorded no timeline (its policies file is there):
    two fleets' histories in one ledger would double count their overlap."""
    held = load_timeline(state_dir / "timeline.json")
    if held is None and (state_dir.parent / "demo-policies.yaml").exists():
        raise FinopsError(
            f"{state_dir.parent} holds a demo started by an earlier version, which recorded no fleet timeline: "
            "starting the fleet again would send the last minutes of its history a second time (double counted "
            "spend, false budget alerts). Start on a clean data dir (`make clean`, or FINOPS_DATA_DIR=another/dir); "
            "from then on a restart continues the fleet.")
    if held is not None and held.fleet() == wanted.fleet():
        return held
    if held is not None and fleet_totals(state_dir)[0] > 0:
        raise FinopsError(
            f"the data dir holds the demo fleet started {held.origin:%Y-%m-%d %H:%M} UTC ({held.agents} agents at "
            f"{held.rate:g} events/s, history {held.history_s}s, incident {held.incident_s}s); a restart continues "
            f"it, but these options ask for another fleet ({wanted.agents} agents at {wanted.rate:g} events/s, "
            f"history {wanted.history_s}s, incident {wanted.incident_s}s). Start it on a clean data dir "
            "(`make clean`, or FINOPS_DATA_DIR=another/dir), or use the first fleet's options.")
    for stale in state_dir.glob("*.progress.json"):
        stale.unlink()
    return None


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
    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor for sub-commands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return set(action.choices)
    return set()


class _FleetRunner(threading.Thread):
    """Runs the fleet phases one after the other as child processes; ``failed`` holds why a phase failed."""

    def __init__(self, plan: Iterator[tuple[str, list[str]]], env: dict[str, str], logs: Path,
                 say: Callable[[str], None]) -> None:
        super().__init__(name="demo-fleet", daemon=True)
        self.plan, self.env, self.logs, self.say = plan, env, logs, say
        self.current: subprocess.Popen[bytes] | None = None
        self.failed: str | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        for name, argv in self.plan:
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


def _finops_json(finops: list[str], env: dict[str, str], log: Path, *args: str) -> Any:
    """Run ``finops ARGS`` and parse its standard output as JSON; None when it failed (stderr goes to ``log``)."""
    done = subprocess.run([*finops, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    with open(log, "a") as out:
        out.write(done.stderr)
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout)
    except ValueError:
        return None


def demo_token(finops: list[str], env: dict[str, str], token_file: Path, logs: Path) -> tuple[str | None, str]:
    """The demo's finops_admin token (every team) and what was done: the one in ``token_file`` when it is still
    active, else a new one (written to ``token_file``, 0600). Every other active finops_admin token of subject
    ``demo`` is revoked, so restarts never leave old admin tokens behind. (None, why) when the store refused."""
    from dashboard.auth import AccessError, parse_token

    log = logs / "token.log"
    listed = _finops_json(finops, env, log, "token", "list", "--json")
    if not isinstance(listed, list):
        return None, f"`finops token list` failed (see {log})"
    active = {str(r["token_id"]): r for r in listed
              if r.get("revoked_at") is None and r.get("role") == "finops_admin" and r.get("subject") == TOKEN_SUBJECT}
    token: str | None = None
    try:
        held = token_file.read_text().strip()
        if parse_token(held)[0] in active:
            token, how = held, "reused from the last start"
    except (OSError, AccessError):
        pass
    if token is None:
        issued = _finops_json(finops, env, log, "token", "issue", "--role", "finops_admin", "--team", "*",
                              "--subject", TOKEN_SUBJECT, "--json")
        if not isinstance(issued, dict) or "token" not in issued:
            return None, f"`finops token issue` failed (see {log})"
        token, how = str(issued["token"]), "new"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        token_file.chmod(0o600)  # also when the file existed with wider permissions
    keep = parse_token(token)[0]
    revoked = [token_id for token_id in active if token_id != keep
               and subprocess.run([*finops, "token", "revoke", token_id], env=env, capture_output=True,
                                  timeout=60, check=False).returncode == 0]
    if revoked:
        how += f"; revoked the previous demo token{'s' if len(revoked) > 1 else ''} {', '.join(revoked)}"
    return token, how


def _spend_probe(settings: Any) -> Callable[[], tuple[int, Any] | None]:
    """A function returning (calls, dollars) in the ledger through the store owner's endpoint, None if unreachable."""
    state: dict[str, Any] = {}

    def probe() -> tuple[int, Any] | None:
        try:
            if "client" not in state:
                state["client"], _ = open_client(settings.clickhouse_url(), settings.clickhouse.database,
                                                 settings.clickhouse.query_url, ping_timeout=2.0,
                                                 readonly=True, data_dir=settings.data_dir)
            rows = state["client"].query("SELECT count(), sum(cost_usd) FROM usage_ledger FINAL "
                                         "WHERE source = 'finops-simulator'").result_rows
            return int(rows[0][0]), rows[0][1]
        except Exception:  # noqa: BLE001 - a probe: the demo only reports what it sees
            state.pop("client", None)
            return None

    return probe


def _backlog_probe(settings: Any, ledger_probe: Callable[[], tuple[int, Any] | None]
                   ) -> Callable[[int], str | None]:
    """A function of the fleet's sent total that says what the pipeline has not handled yet (None: all of it):
    the ledger short of the simulator's events, or detection behind the end of the priced topic."""
    from finops.kafka.clients import Role, build_consumer
    from finops.topics import TopicNames
    from stream_jobs.detection import DetectionConfig

    priced = TopicNames(settings.kafka.topic_prefix).priced
    state: dict[str, Any] = {}

    def detection_behind() -> int | None:
        try:
            if "consumer" not in state:
                state["consumer"] = build_consumer(settings.kafka, Role.READER, DetectionConfig.group_id)
            consumer = state["consumer"]
            parts = consumer.list_topics(priced, timeout=5).topics[priced].partitions
            committed = consumer.committed([TopicPartition(priced, p) for p in parts], timeout=5)
            behind = 0
            for tp in committed:
                _, high = consumer.get_watermark_offsets(TopicPartition(priced, tp.partition), timeout=5)
                behind += max(0, high - max(tp.offset, 0))
            return behind
        except Exception:  # noqa: BLE001 - a probe: unknown is reported, not raised
            return None

    def probe(sent: int) -> str | None:
        seen = ledger_probe()
        if seen is None:
            return "the ledger is not reachable"
        if seen[0] < sent:
            return f"the ledger holds {seen[0]:,} of the {sent:,} events sent"
        behind = detection_behind()
        if behind is None or behind > 0:
            return f"detection is {behind if behind is not None else '?'} priced events behind"
        return None

    return probe


# ---- the command -------------------------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:  # noqa: C901, PLR0912, PLR0915 - one linear script, in the order above
    """Start everything, print where to look, block until Ctrl-C / SIGTERM or a role dies; stop in reverse order.

    1. the local Kafka broker (`finops stack up`: topics included) and the ClickHouse migrations;
    2. a local HTTP receiver standing in for Slack and PagerDuty unless real destinations are configured;
    3. every role as a child process, each with its log in ``<data dir>/logs``: the sink (it owns the embedded
       ClickHouse and serves it on ``FINOPS_CLICKHOUSE_QUERY_URL``), the stream job, detection, the alert worker and
       the dashboard; then a dashboard token and the demo budget policies;
    4. the fleet, in phases of one seeded timeline (same seed = same agents, so one phase's habits are the next
       one's baseline), fixed at the first start in ``<data dir>/demo-fleet/timeline.json``: (a) history, the
       70 minutes before the first start, emitted as fast as the pipeline takes them, so the dashboard has a fleet's
       spend at once and the runaway detector has the hour of per-agent norms it needs (``runaway_warmup_s``);
       (b) incident, the next 90 s in real time, in which one agent runs away (50x its task rate) part-way in (the
       simulator picks 30-60 % of the phase), so its alert reaches the receiver within the phase; (c) steady, the
       same fleet in real time, in one-hour segments, until Ctrl-C;
    5. where to look (dashboard URL and token, a `finops sql` query, where the alerts went), then the first spend
       seen in ClickHouse and every alert the receiver gets, as they happen.

    Restart: each phase records how far it got (``simulate --resume-file``, saved after the producer's flush
    barrier), so events already sent are not sent again; what fell due while stopped is caught up at once, at most
    ``--max-catch-up`` of it (older events are skipped: the fleet was off). The dashboard token is reused (any other
    demo token revoked); the budgets are re-applied (no change). Another fleet (``--agents``, ``--rate``, ...) on the
    same data dir is refused: use a clean one.

    Stop: Ctrl-C or SIGTERM (also in the background, where SIGINT starts ignored) stops the children one by one in
    reverse order (the fleet first, the sink last) and leaves the broker running for the next start (`finops stack
    down` stops it). The children run in their own sessions, so a terminal's Ctrl-C reaches the demo only.

    Returns 0 after a requested stop. Raises FinopsError when a port is taken, the broker or the migrations fail,
    or a role does not come up / exits on its own.
    """
    from finops.settings import load_settings
    from finops.stack import stack_from_settings
    from finops.topics import ensure_topics
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
    # The fleet's timeline before anything starts: another fleet on this data dir is refused with nothing running.
    fleet_dir = data / "demo-fleet"
    wanted_fleet = FleetTimeline(origin=utc_now(), agents=args.agents, rate=args.rate,
                                 history_s=args.history, incident_s=args.incident)
    held_timeline = check_timeline(fleet_dir, wanted_fleet)
    if held_timeline is None:
        save_timeline(fleet_dir, wanted_fleet)  # this data dir's demo has a timeline from now on (re-anchored below)

    # Signals before any child exists: a child inherits an ignored SIGINT (a background job of a non-interactive
    # shell starts so) but not a handler, so the roles and the fleet get the default disposition back.
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return  # already stopping in order; a second Ctrl-C must not cut that short
        stopping.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

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
    # This installation's keys, generated once in <data dir>/secrets (0600) and found there by every role and by a
    # plain shell's `finops control`; FINOPS_CONTROL_SIGNING_KEY still overrides for a real deployment.
    load_control_signing_key(data, None, create=True)
    operator_key_file = secret_path(data, CONTROL_OPERATOR_KEY)
    load_or_create_secret(operator_key_file)
    env.setdefault("FINOPS_ALERTING_DASHBOARD_URL", f"http://127.0.0.1:{args.port}")

    available = _available_commands()
    roles = build_roles(finops, dashboard_port=args.port, query_port=query_port if embedded else None,
                        intake_port=settings.intake.port)
    procs: list[tuple[Role, subprocess.Popen[bytes]]] = []
    fleet: _FleetRunner | None = None

    def stop_all(drain: bool) -> None:
        if fleet is not None:
            fleet.stop()
        if drain and fleet is not None and args.drain_timeout > 0:
            # Before the roles stop: let them handle what the fleet sent, so the ledger and the budget counters
            # match the fleet at the stop (what is left would be handled at the next start anyway).
            sent = fleet_totals(fleet_dir)[0]
            backlog = _backlog_probe(settings, _spend_probe(settings))
            deadline = time.monotonic() + args.drain_timeout
            left = backlog(sent)
            if left:
                say(f"    waiting up to {args.drain_timeout:g} s for the pipeline: {left}")
            while left and time.monotonic() < deadline and all(proc.poll() is None for _, proc in procs):
                time.sleep(0.5)
                left = backlog(sent)
            say(f"    pipeline {'still behind: ' + left + ' (handled at the next start)' if left else 'caught up'}")
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

    requested = False
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

        token, token_note = demo_token(finops, env, data / "demo-token", logs) if "token" in available else (
            None, "no `finops token` in this build")

        policy = data / "demo-policies.yaml"
        policy.write_text(DEMO_POLICIES)
        if "policy" in available:
            applied = subprocess.run([*finops, "policy", "apply", str(policy)], env=env, capture_output=True,
                                     text=True, timeout=120)
            with open(logs / "policy.log", "a") as policy_log:
                policy_log.write(applied.stdout + applied.stderr)
            say(f"4/5 budgets: {policy} " + ("applied" if applied.returncode == 0 else
                                             f"NOT applied (exit {applied.returncode}, see {logs / 'policy.log'})"))

        now = utc_now().replace(microsecond=0)
        resuming = held_timeline is not None and fleet_totals(fleet_dir)[0] > 0
        if held_timeline is None or not resuming:
            # Nothing sent yet: the history ends now, when the fleet starts (not when the demo did).
            timeline = replace(wanted_fleet, origin=now - timedelta(seconds=args.history))
            for stale in fleet_dir.glob("*.progress.json"):
                stale.unlink()  # of another anchoring, with nothing sent: simulate would refuse them
            save_timeline(fleet_dir, timeline)
        else:
            timeline = held_timeline
        skip_before = max(timeline.origin, now - timedelta(seconds=args.max_catch_up))
        plan = build_fleet_plan(finops, timeline, fleet_dir, skip_before=skip_before,
                                answer_key=data / "demo-answer-key.json")
        fleet = _FleetRunner(plan, env, logs, say)
        fleet.start()
        if resuming:
            sent, _, through = fleet_totals(fleet_dir)
            where = f"{through:%Y-%m-%d %H:%M:%S} UTC" if through else "its start"
            gap = f"; events before {skip_before:%H:%M:%S} UTC are skipped (the fleet was off)" if (
                through is None or skip_before > through) and skip_before > timeline.origin else ""
            say(f"    fleet: continuing the demo fleet of {timeline.origin:%Y-%m-%d %H:%M} UTC ({timeline.agents} "
                f"agents at {timeline.rate:g} events/s): {sent:,} events sent before, up to {where}; what fell due "
                f"since is sent at once, then live{gap}")
        else:
            say(f"    fleet: {timeline.agents} agents at {timeline.rate:g} events/s; the last "
                f"{timeline.history_s // 60} minutes first, then live; {RUNAWAY_AGENT} runs away about a minute in")

        url = f"http://127.0.0.1:{args.port}/"
        say("5/5 ready. Where to look:")
        print(f"    dashboard  {url}  (sign in with the token below)", flush=True)
        if token:
            print(f"    token      {token}  ({token_note}; also in {data / 'demo-token'}; API: curl -H "
                  f"'Authorization: Bearer <token>' {url}api/overview)")
        else:
            print(f"    token      none: {token_note}")
        print("    SQL        finops sql \"SELECT team, round(sum(cost_usd), 2) AS usd, count() AS calls FROM "
              "usage_ledger GROUP BY team ORDER BY usd DESC\"")
        print("               finops sql \"SELECT occurred_at, severity, agent_id, title FROM alerts "
              "ORDER BY occurred_at DESC LIMIT 10\"")
        print(f"    alerts     {receiver_log if receiver else 'your Slack / PagerDuty'}")
        print(f"    OTLP       http://{settings.intake.host}:{settings.intake.port}  (finops intake token issue "
              "--source NAME; README \"Connect your agents\")")
        print(f"    operator   finops control suspend --agent {RUNAWAY_AGENT} --reason why --operator-key "
              f"\"$(cat {operator_key_file})\"   (store and control secrets in {operator_key_file.parent}/)")
        print(f"    bills      {url}bills  (a provider bill built from the ledger plus one uninstrumented key, "
              "refreshed every 2 minutes; finops bills reconcile --period YYYY-MM)")
        print(f"    role logs  {logs}/")
        print("    Ctrl-C stops everything.", flush=True)
        if args.open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                  or sys.platform == "darwin"):
            import webbrowser

            webbrowser.open(url)

        probe = _spend_probe(settings)
        spend_seen = False
        next_probe = 0.0
        # The Bill vs ledger page: a provider bill built from the ledger (plus one uninstrumented key), re-imported
        # every two minutes once spend is there (each import replaces the last; `finops bills demo-seed`).
        bill_seed: subprocess.Popen[bytes] | None = None
        next_bill = 0.0
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
            if spend_seen and "bills" in available and time.monotonic() >= next_bill and (
                    bill_seed is None or bill_seed.poll() is not None):
                next_bill = time.monotonic() + 120.0
                with open(logs / "bills.log", "ab") as bills_log:
                    bill_seed = subprocess.Popen([*finops, "bills", "demo-seed"], env=env, stdout=bills_log,
                                                 stderr=subprocess.STDOUT)
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping (fleet, then the roles newest first) ...")
        requested = True
        return 0
    finally:
        stopping.set()  # from here a signal is ignored: the stop below is already the orderly one
        try:
            stop_all(drain=requested)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sent, _, through = fleet_totals(fleet_dir)
        say(f"stopped; {len(alerts_seen)} notifications received; the fleet has sent {sent:,} events"
            f"{f' up to {through:%H:%M:%S} UTC' if through else ''} (a restart continues from there). The broker "
            "keeps running: `finops stack down` stops it.")


def _seconds(text: str) -> int:
    """Whole seconds of a duration flag (``90s``, ``10m``, ``1h``)."""
    try:
        return max(1, int(parse_duration(text)))
    except FinopsError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops demo``."""
    demo = sub.add_parser("demo", help="run the whole system on one machine with a simulated fleet (make run)",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080)")
    demo.add_argument("--receiver-port", type=int, default=8125, help="local alert receiver port (default 8125)")
    demo.add_argument("--agents", type=int, default=30, help="simulated agents (default 30)")
    demo.add_argument("--rate", type=float, default=10.0, help="fleet-wide events per second (default 10)")
    demo.add_argument("--history", type=_seconds, default=int(HISTORY.total_seconds()), metavar="DURATION",
                      help="simulated history sent first, as fast as it goes (default 70m; under an hour the runaway "
                           "detector has too little history to judge)")
    demo.add_argument("--incident", type=_seconds, default=INCIDENT_SECONDS, metavar="DURATION",
                      help=f"length of the live phase in which {RUNAWAY_AGENT} runs away (default 90s)")
    demo.add_argument("--max-catch-up", type=_seconds, default=int(HISTORY.total_seconds()), metavar="DURATION",
                      help="on a restart, send at most this much of what fell due while the demo was stopped "
                           "(default 70m); older events are skipped")
    demo.add_argument("--drain-timeout", type=float, default=20.0, metavar="SECONDS",
                      help="at Ctrl-C, wait up to this long for the roles to handle what the fleet sent before "
                           "stopping them (default 20; 0 stops at once)")
    demo.add_argument("--no-browser", dest="open_browser", action="store_false",
                      help="do not open the dashboard in a browser (it is opened only when a display exists)")
    demo.set_defaults(func=run_demo)

