"""``finops bench [all|producer|stream|sink|intake|latency] [--json FILE]``: the benchmark suite in one run
(``make bench``).

Role: every number is measured on this machine in this run, beside a plain baseline measured in the same run:
producer events/s (``finops bench-producer``), stream events/s per core (``finops bench-stream``), sink rows/s
(``finops bench-sink``, beside the bare row insert and the engine's floor), intake spans/s
(``finops/benches/intake.py``) and the whole pipeline's latency under load (:func:`run_latency`). The table goes
to the terminal and the whole result to JSON (default ``bench-results/latest.json``); the README, "Performance",
quotes the latest run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finops.benches import producer as producer_bench
from finops.benches import sink as sink_bench
from finops.benches import stream as stream_bench
from finops.benches.producer import bench_events
from finops.benches.producer import run_bench as run_producer_bench
from finops.benches.sink import run_bench as run_sink_bench
from finops.benches.stream import render as render_stream
from finops.benches.stream import run_bench as run_stream_bench
from finops.clickhouse import open_endpoint_client
from finops.clock import utc_now
from finops.receiver import start_receiver
from schemas.errors import FinopsError
from sinks.worker_cli import DEFAULT_BATCH_ROWS

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["LatencyConfig", "register", "render", "run_latency", "run_suite"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = Path("bench-results") / "latest.json"
PARTS = ("producer", "stream", "sink", "intake", "latency")
_BROKER_JIT = "broker JIT compiler"  # the part of the broker's CPU its JVM spent compiling
_BROKER_PID: list[int] = []  # the bench's own broker while bench_broker() runs (its CPU is measured too)


# ---- CLI ---------------------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops bench`` and the per-part benches (``bench-producer``, ``bench-stream``, ``bench-sink``)."""
    producer_bench.register(sub)
    stream_bench.register(sub)
    sink_bench.register(sub)
    bench = sub.add_parser("bench", help="the benchmark suite (make bench): producer, stream, sink and end-to-end "
                           "latency, each beside a bare confluent-kafka baseline; a table and JSON",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("part", nargs="?", default="all", choices=("all", *PARTS), help="what to run (default all)")
    bench.add_argument("--json", type=Path, default=DEFAULT_JSON,
                       help=f"write the results here (default {DEFAULT_JSON})")
    bench.add_argument("--producer-events", type=int, default=100_000, help="producer bench events (100000)")
    bench.add_argument("--stream-events", type=int, default=100_000, help="stream bench events (100000)")
    bench.add_argument("--sink-events", type=int, default=100_000, help="sink bench events (100000)")
    bench.add_argument("--capacity", type=float, default=None,
                       help="events/s that count as 100 %% for the latency levels (default: measured first: a "
                            "burst through the running pipeline, every role sharing this machine)")
    bench.add_argument("--levels", default="25,50,75", help="latency load levels, %% of capacity (25,50,75)")
    bench.add_argument("--level-seconds", type=float, default=15.0, help="steady load per level (15 s)")
    bench.add_argument("--breaches", type=int, default=3, help="budget breaches injected per level (3)")
    bench.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    with bench_broker():
        return _run(args)


@contextlib.contextmanager
def bench_broker() -> Iterator[str]:
    """The broker the bench measures against: ``FINOPS_KAFKA_BOOTSTRAP`` when set (someone else's broker, used as
    is), otherwise a local single-node broker of our own on free ports in a temporary home, started here and
    stopped (with its data) when the block ends, so ``make bench`` works on a fresh clone with nothing running.

    While the block runs, ``FINOPS_KAFKA_BOOTSTRAP`` names that broker, so the child processes of the stream and
    latency benches reach the same one. Raises StackError (a FinopsError) when the broker cannot be started.
    """
    configured = os.environ.get("FINOPS_KAFKA_BOOTSTRAP")
    if configured:
        _say(f"broker: {configured} (FINOPS_KAFKA_BOOTSTRAP)")
        yield configured
        return
    from finops.stack import KafkaStack, free_port_pair

    with tempfile.TemporaryDirectory(prefix="finops-bench-kafka-") as home:
        port = free_port_pair()
        stack = KafkaStack(Path(home), port=port, controller_port=port + 1)
        _say(f"broker: none configured; starting a local one on 127.0.0.1:{port} (stopped at the end) ...")
        status = stack.up()
        if status.pid is not None:
            _BROKER_PID[:] = [status.pid]
        os.environ["FINOPS_KAFKA_BOOTSTRAP"] = stack.bootstrap
        try:
            yield stack.bootstrap
        finally:
            os.environ.pop("FINOPS_KAFKA_BOOTSTRAP", None)
            _BROKER_PID.clear()
            stack.down()


def _run(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    settings = load_settings()
    parts = PARTS if args.part == "all" else (args.part,)
    levels = tuple(float(x) / 100 for x in args.levels.split(",") if x.strip())
    result = run_suite(settings, parts, producer_events=args.producer_events, stream_events=args.stream_events,
                       sink_events=args.sink_events, capacity=args.capacity,
                       latency=LatencyConfig(levels=levels, level_seconds=args.level_seconds,
                                             breaches=args.breaches))
    table = render(result)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = table.splitlines()
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---- the suite ---------------------------------------------------------------------------------------------------
def run_suite(settings: Any, parts: tuple[str, ...], *, producer_events: int, stream_events: int, sink_events: int,
              capacity: float | None, latency: LatencyConfig) -> dict[str, Any]:
    """Run the chosen parts in order and return everything measured (JSON-ready). Blocks for the whole run.

    Baselines: the producer SDK (validate + ids/times + encode + produce), per event (``emit``) and in batches of
    1,000 (``emit_many``), vs a bare confluent-kafka produce loop of the same pre-encoded bytes; the stream hot path
    vs a plain consume + decode + price + dicts loop, each pinned to one CPU; one sink thread vs bare
    clickhouse-connect inserts of pre-built rows; the OTLP receiver's work per body (decode, map, produce, wait for
    every acknowledgement) vs a bare protobuf decode of the same bodies, one CPU.

    Raises FinopsError when the broker cannot be reached or a part fails.
    """
    result: dict[str, Any] = {
        "date": utc_now().isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "platform": platform.platform(), "cpu_model": _cpu_model()},
        "broker": settings.kafka.bootstrap,
    }
    if "producer" in parts:
        _say(f"producer: {producer_events:,} events, SDK then bare confluent-kafka ...")
        result["producer"] = bench_producer(producer_events)
    if "stream" in parts:
        _say(f"stream: {stream_events:,} events, plain loop then hot path, one pinned CPU each ...")
        result["stream"] = bench_stream(settings, stream_events)
    if "sink" in parts:
        _say(f"sink: {sink_events:,} rows, bare insert then the sink worker ...")
        result["sink"] = bench_sink(sink_events)
    if "intake" in parts:
        _say("intake: 20,000 GenAI spans in 200 OTLP bodies, bare protobuf decode then the receiver into Kafka ...")
        result["intake"] = bench_intake(settings)
    if "latency" in parts:
        result["latency"] = run_latency(settings, capacity, latency)
    return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _captured(fn: Callable[[], Any]) -> str:
    """Run ``fn`` with its stdout captured (the existing benches print their tables) and return that text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn()
    return out.getvalue()


_NUM = r"([\d,]+(?:\.\d+)?)"


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def bench_producer(events: int) -> dict[str, Any]:
    """``finops bench-producer`` (imported), its table parsed: SDK and bare events/s, µs/event, peak RSS."""
    text = _captured(lambda: run_producer_bench(argparse.Namespace(events=events, topic=None, cpu=None)))
    rows: dict[str, dict[str, float]] = {}
    for key, label in (("sdk", "sdk: validate+encode+produce"), ("sdk_many", "sdk: emit_many"),
                       ("bare", "bare confluent-kafka produce")):
        line = next((ln for ln in text.splitlines() if ln.startswith(label)), None)
        if line is None:
            raise FinopsError(f"bench-producer printed no {label!r} row:\n{text}")
        nums = [_num(x) for x in re.findall(_NUM, line[44:])]
        rows[key] = {"events": nums[0], "wall_s": nums[1], "cpu_s": nums[2], "events_per_s": nums[3],
                     "us_per_event": nums[4]}
    rss = re.search(r"peak RSS: " + _NUM, text)
    return {**rows, "peak_rss_mb": _num(rss.group(1)) if rss else None, "output": text.splitlines()}


def bench_stream(settings: Any, events: int) -> dict[str, Any]:
    """``finops bench-stream`` (imported): plain loop vs hot path, one pinned CPU each, in child processes."""
    results = run_stream_bench(settings.kafka.client_config(), events=events, agents=10_000, rate=2_000.0,
                               seed=7, cpu=None, prefix=settings.kafka.topic_prefix)
    out: dict[str, Any] = {}
    for key, r in results.items():
        out[key] = {"name": r.name, "events": r.events, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
                    "events_per_s": r.events_per_s, "cpu_us_per_event": r.cpu_us_per_event,
                    "peak_rss_mb": r.peak_rss_mb, "detail": r.detail}
    out["output"] = render_stream(results, events, 10_000).splitlines()
    return out


def bench_sink(events: int) -> dict[str, Any]:
    """``finops bench-sink`` (imported), its table parsed: bare insert and sink rows/s, peak RSS."""
    args = argparse.Namespace(events=events, batch_rows=DEFAULT_BATCH_ROWS, partitions=3, outage_seconds=3.0,
                              clickhouse_url=None)
    text = _captured(lambda: run_sink_bench(args))
    rows: dict[str, dict[str, float]] = {}
    for key, label in (("bare", "bare clickhouse-connect insert"), ("floor", "engine floor: chdb"),
                       ("decode", "decode-only floor"), ("sink", "sink: consume")):
        line = next((ln for ln in text.splitlines() if ln.startswith(label)), None)
        if line is None:
            if key in ("floor", "decode"):
                continue  # only measured on chdb
            raise FinopsError(f"bench-sink printed no {label!r} row:\n{text}")
        nums = [_num(x) for x in re.findall(_NUM, line[58:])]
        rows[key] = {"rows": nums[0], "seconds": nums[1], "rows_per_s": nums[2], "cpu_s": nums[3]}
    rss = re.search(r"sink peak RSS " + _NUM, text)
    return {**rows, "peak_rss_mb": _num(rss.group(1)) if rss else None, "output": text.splitlines()}


def bench_intake(settings: Any) -> dict[str, Any]:
    """The intake receiver (decode, map, produce, acks) vs a bare protobuf decode of the same bodies, one core."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from finops.benches.intake import run_bench
    from finops.kafka.clients import build_admin

    client = settings.kafka.client_config()
    topic = f"{settings.kafka.topic_prefix}finops.bench.intake"
    admin = build_admin(client)
    if topic not in admin.list_topics(timeout=15).topics:
        for future in admin.create_topics([NewTopic(topic, num_partitions=settings.kafka.usage_partitions,
                                                    replication_factor=settings.kafka.replication_factor)]).values():
            future.result(30)
    extra = {k: v for k, v in client.items() if k != "bootstrap.servers"}
    return run_bench(settings.kafka.bootstrap, topic, kafka_config=extra)


# ---- latency -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyConfig:
    """Load levels (share of capacity), seconds of steady load per level, budget breaches per level."""

    levels: tuple[float, ...] = (0.25, 0.5, 0.75)
    level_seconds: float = 15.0
    breaches: int = 3
    capacity_events: int = 100_000
    drain_timeout_s: float = 180.0
    alert_timeout_s: float = 90.0


@dataclass
class _Roles:
    """The role processes of a latency run and where their logs are."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise FinopsError(f"bench: role {name} exited with {proc.returncode}; log tail:\n"
                                  f"{_tail(self.logs / f'{name}.log')}")

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: _vm_hwm_mb(proc.pid) for name, proc in self.procs.items() if proc.poll() is None}

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of ``pid`` (VmHWM), MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _stat_cpu_s(stat: str) -> float | None:
    """User + system CPU seconds in a ``/proc/.../stat`` file (a process's, its threads included, or one thread's
    under ``task/``), or None when it is gone."""
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (its threads included), or None when it is gone."""
    return _stat_cpu_s(f"/proc/{pid}/stat")


def _jit_threads_s(pid: int) -> dict[str, float] | None:
    """CPU seconds of each JIT compiler thread (HotSpot's ``C1 CompilerThreadN`` / ``C2 CompilerThreadN``) of the JVM
    ``pid``, by thread id, or None when it is gone: how much of a broker's CPU went to compiling rather than serving
    requests. HotSpot starts and stops compiler threads as its queue grows and shrinks, so a phase's figure is the
    sum over the threads alive at its end (:class:`_CpuMeter`)."""
    found: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            compiler = Path(f"/proc/{pid}/task/{task}/comm").read_text().startswith(("C1 Compiler", "C2 Compiler"))
        except OSError:
            continue  # the thread ended between the listing and the read
        seconds = _stat_cpu_s(f"/proc/{pid}/task/{task}/stat") if compiler else None
        if seconds is not None:
            found[task] = seconds
    return found


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs: /proc/stat minus idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class _CpuMeter:
    """CPU seconds per process over a phase: the role processes, the broker when it is ours, this process (the load
    generator, the alert receiver, the polling) and the machine as a whole, read from /proc at the start and end."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._t0 = time.monotonic()
        self._jit_start = _jit_threads_s(self._pids["broker"]) if "broker" in self._pids else None
        self._start = self._read()

    def _read(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {name: _proc_cpu_s(pid) for name, pid in self._pids.items()}
        now["load generator (bench process)"] = time.process_time()
        now["machine"] = _machine_busy_s()
        return now

    def stop(self) -> dict[str, Any]:
        """``{"seconds": wall, "cpu_s": {name: CPU seconds}}``; a process that went away is left out."""
        end, wall = self._read(), time.monotonic() - self._t0
        used = {name: end[name] - begin for name, begin in self._start.items()  # type: ignore[operator]
                if begin is not None and end.get(name) is not None}
        if self._jit_start is not None:
            jit_end = _jit_threads_s(self._pids["broker"])
            if jit_end is not None:
                # Per thread: one started during the phase counts from zero; one that ended during it is left out
                # (its last figure died with it), so this is a lower bound, never a negative difference of totals.
                used[_BROKER_JIT] = sum(v - self._jit_start.get(tid, 0.0) for tid, v in jit_end.items())
        return {"seconds": wall, "cpu_s": used}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], timeout: float, what: str, check: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise FinopsError(f"bench: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    s = sorted(values)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return {"n": len(s), "p50": q(0.5), "p99": q(0.99), "max": s[-1]}


def _load_events(n: int) -> list[dict[str, Any]]:
    """The producer bench's events without task ids: cycled through at a steady rate, eight calls of one task would
    look like retry loops to the waste detector, and hundreds of waste alerts queued at Slack's rate limit would
    measure the queue, not the pipeline."""
    return [{k: v for k, v in e.items() if k != "task_id"} for e in bench_events(n)]


def _breach_policies(agents: list[str]) -> str:
    lines = ["policies:"]
    for agent in agents:
        lines += [f"  - policy_id: bench-{agent}", "    scope_type: agent", f"    scope_value: {agent}",
                  "    period: day", "    timezone: UTC", "    limit_usd: 1", "    mode: soft",
                  "    thresholds:", "      - {percent: 100, actions: [notify]}"]
    return "\n".join(lines) + "\n"


def _breach_event(agent: str) -> dict[str, Any]:
    """One call that costs more than $1 on its own (2M gpt-4o input tokens at $2.50 / M = $5)."""
    return {"agent_id": agent, "team": "bench", "project": "bench-breach", "provider": "openai",
            "model": "gpt-4o-2024-08-06", "input_tokens": 2_000_000, "output_tokens": 10, "tags": {"bench": "breach"}}


def _drive(producer: Any, events: list[dict[str, Any]], rate: float, seconds: float, tag: dict[str, str],
           injections: list[tuple[float, Callable[[], None]]] | None = None) -> int:
    """Emit ``rate`` events/s for ``seconds`` through ``producer`` (in fixed ``tick`` steps, each tick's events in one
    ``emit_many``, occurred_at stamped at emit time); run each injection when its offset (seconds into the level)
    has come. Returns the events emitted.

    The generator stands in for a fleet whose SDKs run on other machines; here it shares the pipeline's CPUs, so it
    takes the SDK's cheapest path."""
    pending = sorted(injections or [], key=lambda x: x[0])
    tick = 0.01
    per_tick = rate * tick
    owed = 0.0
    sent = 0
    start = time.monotonic()
    next_tick = start
    i = 0
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= seconds:
            break
        while pending and pending[0][0] <= elapsed:
            pending.pop(0)[1]()
        owed += per_tick
        due = int(owed)
        if due:
            stamp = utc_now()
            producer.emit_many([{**events[(i + k) % len(events)], "occurred_at": stamp, "tags": tag}
                                for k in range(due)])
            i += due
            owed -= due
            sent += due
        next_tick += tick
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the load generator, not waiting for a condition
    for _, inject in pending:
        inject()
    return sent


def _bare_loop(client: dict[str, Any], in_topic: str, out_topic: str, expected: Any, ready: Any, out: Any) -> None:
    """Child process: the plain baseline. consume(500) -> produce each message's bytes to ``out_topic`` with its
    original timestamp; the delivery report's wall time minus that timestamp is the event's latency (ms). Runs
    until ``expected`` (a shared value the parent sets once it has sent the level, -1 before) messages are seen."""
    from finops.kafka.clients import Role, build_consumer, build_producer

    consumer = build_consumer(client, Role.BENCH, f"bench-bare-{uuid.uuid4().hex[:8]}",
                              overrides={"auto.offset.reset": "latest"})
    producer = build_producer(client, Role.BENCH, overrides={"linger.ms": 5, "compression.type": "lz4"})
    assigned = threading.Event()
    consumer.subscribe([in_topic], on_assign=lambda c, parts: assigned.set())
    while not assigned.is_set():
        consumer.poll(0.1)
    consumer.consume(1, 1.0)  # the fetch position is fixed (latest) before the load starts
    ready.set()
    latencies: list[float] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            latencies.append(time.time() * 1000 - msg.timestamp()[1])

    deadline = time.monotonic() + 600
    seen = 0
    while (expected.value < 0 or seen < expected.value) and time.monotonic() < deadline:
        batch = consumer.consume(500, 0.1)
        for msg in batch:
            if msg.error() is not None:
                continue
            seen += 1
            while True:
                try:
                    producer.produce(out_topic, msg.value(), msg.key(), timestamp=msg.timestamp()[1],
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(30)
    consumer.close()
    out.put((latencies, _vm_hwm_mb(os.getpid())))


class _LedgerWatch:
    """Whether the ledger holds a phase's rows, asked through the sink's store endpoint as a user would ask.

    The filtered count reads every row's tags inside the sink's process, whose CPU the bench measures, and the bench
    asks ten times a second. Each phase's tag is new, so its rows all land after the phase began: until the table's
    whole count (ClickHouse answers it from part metadata) has grown by ``n`` since :meth:`begin`, the answer is no
    without reading a row."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._base = 0

    def _total(self) -> int:
        return int(self._reader.query("SELECT count() FROM usage_ledger").result_rows[0][0])

    def count(self, tag: str) -> int:
        return int(self._reader.query("SELECT count() FROM usage_ledger WHERE tags['bench_level'] = {t:String}",
                                      parameters={"t": tag}).result_rows[0][0])

    def begin(self) -> None:
        """Call before a phase emits its first row."""
        self._base = self._total()

    def holds(self, tag: str, n: int) -> bool:
        return self._total() - self._base >= n and self.count(tag) >= n

    def batches(self, tag: str) -> dict[str, int]:
        """How a phase's rows travelled: the stream batches that priced them (one ``priced_at`` per batch) and the
        sink inserts that stored them (one ``ingested_at`` per insert)."""
        stream, sink = self._reader.query(
            "SELECT uniqExact(priced_at), uniqExact(ingested_at) FROM usage_ledger "
            "WHERE tags['bench_level'] = {t:String}", parameters={"t": tag}).result_rows[0]
        return {"stream_batches": int(stream), "sink_inserts": int(sink)}


def _measure_capacity(producer: Any, events: list[dict[str, Any]], n: int, ledger: _LedgerWatch,
                      check: Callable[[], None], meter: Callable[[], _CpuMeter]) -> tuple[float, dict[str, Any]]:
    """The running pipeline's throughput on this machine: ``n`` events emitted as fast as the SDK goes (``emit_many``
    in batches of 1,000, as an agent with a backlog sends them), divided by the time from the first emit until the
    last one is queryable (every role shares the machine, as in the levels); with the CPU seconds each process used
    meanwhile (``meter`` starts the count).
    """
    _say(f"latency: capacity: {n:,} events at once through the whole pipeline ...")
    ledger.begin()
    cpu = meter()
    t0 = time.monotonic()
    tags = {"bench_level": "capacity"}
    for start in range(0, n, 1000):
        stamp = utc_now()
        producer.emit_many([{**events[i % len(events)], "occurred_at": stamp, "tags": tags}
                            for i in range(start, min(start + 1000, n))])
    producer.flush(120)
    _wait(lambda: ledger.holds("capacity", n), 600, "the capacity burst to be queryable", check)
    rate = n / (time.monotonic() - t0)
    used = cpu.stop()
    used.update(ledger.batches("capacity"))  # after the clock stopped: this query is not part of the measurement
    _say(f"latency: capacity {rate:,.0f} events/s end to end; CPU s: "
         + ", ".join(f"{k} {v:.2f}" for k, v in used["cpu_s"].items()))
    return rate, used


def run_latency(settings: Any, capacity: float | None, config: LatencyConfig) -> dict[str, Any]:  # noqa: PLR0915
    """Start the roles on a fresh prefix and a temporary chdb, measure the pipeline's capacity (unless given), drive
    each load level, measure.

    The real roles run as child processes (``finops sink run`` owning a temporary chdb and serving it, ``finops
    stream run``, ``finops detect run``, ``finops alerts run`` posting to a local receiver) on the configured broker
    under a fresh topic prefix. Capacity is measured first: a burst of events through the running pipeline, divided
    by the time until the last is queryable (not the stream bench's one-core figure: here the load generator, stream,
    sink with chdb, detection and alerts share the machine). A steady load is then driven with the producer SDK at
    25 / 50 / 75 % of it, each event's ``occurred_at`` stamped at emit time, and measured as event-to-queryable (the
    ledger's ``ingested_at - occurred_at``, p50 / p99 over the level, and its two legs split at ``priced_at``: SDK
    -> broker -> stream, then the stream's batch -> priced topic -> sink -> insert); event-to-alert (a few agents
    with a $1 daily budget get one event that costs more; from its emit time to the receiver getting the first Slack
    POST naming the agent; ``detect run`` runs with ``--no-clickhouse``, so the measured path is the stream's); the
    baseline, a bare confluent-kafka consume -> produce loop at the same rate, from emit to the forwarded message's
    delivery report; and peak memory (VmHWM from ``/proc/<pid>/status`` of each role at the end).

    Blocks for the whole run (about a minute per level). Raises FinopsError when a role dies or a level does not
    drain within ``config.drain_timeout_s``.
    """
    from finops.topics import TopicNames, ensure_topics
    from producers.producer import UsageProducer

    client = settings.kafka.client_config()
    run = uuid.uuid4().hex[:8]
    prefix = f"{settings.kafka.topic_prefix}bench{run}."
    ensure_topics(client, prefix=prefix, usage_partitions=settings.kafka.usage_partitions,
                  replication_factor=settings.kafka.replication_factor)
    names = TopicNames(prefix)
    tmp = tempfile.TemporaryDirectory(prefix="finops-bench-latency-")
    home = Path(tmp.name)
    logs = home / "logs"
    logs.mkdir()
    store_port, receiver_port = _free_port(), _free_port()
    received: list[tuple[float, dict[str, Any]]] = []
    receiver = start_receiver(receiver_port, home / "alerts.jsonl", lambda r: received.append((time.time(), r)))
    env = {**os.environ,
           "FINOPS_DATA_DIR": str(home), "FINOPS_KAFKA_TOPIC_PREFIX": prefix,
           "FINOPS_CLICKHOUSE_URL": f"chdb://{home / 'clickhouse'}", "FINOPS_CLICKHOUSE_DATABASE": "finops",
           "FINOPS_CLICKHOUSE_QUERY_URL": f"http://127.0.0.1:{store_port}",
           "FINOPS_STREAM_GROUP_ID": f"bench-hotpath-{run}",
           "FINOPS_ALERTING_SLACK_WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/slack/bench",
           "FINOPS_ALERTING_PAGERDUTY_URL": f"http://127.0.0.1:{receiver_port}/pagerduty/v2/enqueue",
           "FINOPS_ALERTING_PAGERDUTY_ROUTING_KEY": "bench-routing-key",
           "FINOPS_CONTROL_SIGNING_KEY": "bench-signing-key"}
    finops = [sys.executable, "-m", "finops.cli"]
    pct = [int(round(level * 100)) for level in config.levels]
    breach_agents = {p: [f"bench-breach-{run}-{p}-{k}" for k in range(config.breaches)] for p in pct}
    roles = _Roles(logs)
    result: dict[str, Any] = {"levels": [], "prefix": prefix}
    try:
        done = subprocess.run([*finops, "migrate"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise FinopsError(f"bench: migrations failed: {done.stderr[-1500:]}")
        policy = home / "bench-policies.yaml"
        policy.write_text(_breach_policies([a for agents in breach_agents.values() for a in agents]))
        done = subprocess.run([*finops, "policy", "apply", str(policy)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise FinopsError(f"bench: policy apply failed: {done.stdout[-800:]}{done.stderr[-800:]}")
        _say(f"latency: roles on prefix {prefix}, logs in {logs} ...")
        roles.start("sink", [*finops, "sink", "run"], env)
        _wait(lambda: _port_open(store_port), 90, "the sink's store endpoint", roles.check)
        roles.start("stream", [*finops, "stream", "run"], env)
        roles.start("detect", [*finops, "detect", "run", "--from-earliest", "--no-clickhouse"], env)
        roles.start("alerts", [*finops, "alerts", "run", "--group", f"bench-alerts-{run}"], env)

        # The sink generated this installation's credentials in `home` at its start; read as the reader.
        reader = open_endpoint_client(f"http://127.0.0.1:{store_port}", "finops", readonly=True, data_dir=home)

        ledger = _LedgerWatch(reader)

        def cpu_meter() -> _CpuMeter:
            return _CpuMeter({**{name: proc.pid for name, proc in roles.procs.items()},
                              **({"broker": _BROKER_PID[0]} if _BROKER_PID else {})})

        events = _load_events(20_000)
        producer = UsageProducer(settings.kafka.bootstrap, names.usage, f"bench-{run}", home / "spool",
                                 kafka_config={k: v for k, v in client.items() if k != "bootstrap.servers"},
                                 compression=settings.producer.compression, linger_ms=settings.producer.linger_ms,
                                 register_atexit=False)
        # Warm-up: the pipeline is ready when a first handful of events is queryable (group joins, Faust start).
        ledger.begin()
        warm = _drive(producer, events, 200, 1.0, {"bench_level": "warmup"})
        producer.flush(30)
        _wait(lambda: ledger.holds("warmup", warm), 180, "the warm-up events to be queryable", roles.check)
        if capacity is None:
            capacity, result["capacity_cpu"] = _measure_capacity(
                producer, events, config.capacity_events, ledger, roles.check, cpu_meter)
            result["capacity_source"] = (f"measured: {config.capacity_events:,} events emitted at once, "
                                         "divided by the time until the last was queryable")
        else:
            result["capacity_source"] = "given"
        result["capacity_events_per_s"] = capacity
        result["capacity_events"] = config.capacity_events
        for level, p in zip(config.levels, pct, strict=True):
            rate = capacity * level
            emitted: dict[str, float] = {}

            def breach(agent: str, emitted: dict[str, float] = emitted) -> Callable[[], None]:
                def inject() -> None:
                    emitted[agent] = time.time()
                    producer.emit({**_breach_event(agent), "occurred_at": utc_now()})
                return inject

            offsets = [(config.level_seconds * (k + 1) / (config.breaches + 1), breach(a))
                       for k, a in enumerate(breach_agents[p])]
            _say(f"latency: {p} % of capacity = {rate:,.0f} events/s for {config.level_seconds:g} s ...")
            ledger.begin()
            level_cpu = cpu_meter()
            t0 = time.monotonic()
            sent = _drive(producer, events, rate, config.level_seconds, {"bench_level": str(p)}, offsets)
            achieved = sent / (time.monotonic() - t0)
            if producer.flush(60):
                raise FinopsError("bench: the load generator's events were not acknowledged")
            _wait(lambda tag=str(p), n=sent: ledger.holds(tag, n), config.drain_timeout_s,  # type: ignore[misc]
                  f"{sent:,} events of level {p} % to be queryable", roles.check)
            used = level_cpu.stop()

            def alerted(emitted: dict[str, float] = emitted) -> dict[str, float]:
                firsts: dict[str, float] = {}
                for at, record in list(received):
                    text = json.dumps(record.get("payload"))
                    for agent in emitted:
                        if agent in text and record["channel"] == "slack" and agent not in firsts:
                            firsts[agent] = at
                return firsts

            # A live fleet never goes quiet: a trickle keeps every partition's event-time clock moving while the
            # level's alerts are awaited (detection judges by event time, and a silent partition holds it back).
            quiet = threading.Event()
            trickle = threading.Thread(target=lambda quiet=quiet: [
                _drive(producer, events, 50, 0.5, {"bench_level": "trickle"}) for _ in iter(quiet.is_set, True)],
                daemon=True)
            trickle.start()
            try:
                _wait(lambda found=alerted, wanted=emitted: len(found()) >= len(wanted),  # type: ignore[misc]
                      config.alert_timeout_s, f"the budget alerts of level {p} %", roles.check)
            finally:
                quiet.set()
                trickle.join(5)
            firsts = alerted()
            # priced_at is the stream's clock at the start of the consumed batch that priced the event (one stamp
            # per batch), ingested_at the insert's now64() (one per insert); every role runs on this machine, so
            # the three clocks are one and the legs add up to the whole.
            rows = reader.query(
                "SELECT toUnixTimestamp64Micro(occurred_at), toUnixTimestamp64Micro(priced_at), "
                "toUnixTimestamp64Micro(ingested_at) FROM usage_ledger "
                "WHERE tags['bench_level'] = {t:String}", parameters={"t": str(p)}).result_rows
            queryable = _quantiles([(i - o) / 1000.0 for o, _, i in rows])
            legs = {"to_priced_ms": _quantiles([(pr - o) / 1000.0 for o, pr, _ in rows]),
                    "priced_to_queryable_ms": _quantiles([(i - pr) / 1000.0 for _, pr, i in rows]),
                    "stream_batches": len({pr for _, pr, _ in rows}), "sink_inserts": len({i for _, _, i in rows})}
            to_alert = _quantiles([(firsts[a] - emitted[a]) * 1000.0 for a in emitted])
            per_agent = {a: sum(1 for _, r in received if a in json.dumps(r.get("payload"))
                                and r["channel"] == "slack") for a in emitted}
            result["levels"].append({"percent": p, "target_events_per_s": rate, "achieved_events_per_s": achieved,
                                     "events": sent, "queryable_ms": queryable, "queryable_legs": legs,
                                     "alert_ms": to_alert, "slack_posts_per_breach": per_agent, "cpu": used})
            _say(f"latency: {p} %: queryable p50 {queryable['p50']:.0f} ms p99 {queryable['p99']:.0f} ms; "
                 f"alert p50 {to_alert['p50']:.0f} ms")
        result["peak_rss_mb"] = roles.peak_rss_mb()
        result["peak_rss_mb"]["load generator (bench process)"] = _vm_hwm_mb(os.getpid())
        producer.close()
        roles.stop()
        result["baseline"] = _run_baseline(settings, client, prefix, events, config, capacity)
    except BaseException:
        # Keep the role logs of a failed run: the temporary directory goes away below.
        kept = Path("bench-results") / "latency-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(logs, kept)
        _say(f"latency: failed; role logs kept in {kept}")
        raise
    finally:
        roles.stop()
        receiver.shutdown()
        with contextlib.suppress(Exception):
            from finops.kafka.clients import build_admin

            admin = build_admin(client)
            md = admin.list_topics(timeout=10)
            admin.delete_topics([t for t in md.topics if t.startswith(prefix)])
        tmp.cleanup()
    return result


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _run_baseline(settings: Any, client: dict[str, Any], prefix: str, events: list[dict[str, Any]],
                  config: LatencyConfig, capacity: float) -> list[dict[str, Any]]:
    """The bare consume -> produce loop at each level's rate (roles stopped, so it has the machine to itself as the
    roles had it to themselves)."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from finops.kafka.clients import build_admin
    from producers.producer import UsageProducer

    in_topic, out_topic = f"{prefix}bare.in", f"{prefix}bare.out"
    admin = build_admin(client)
    for fut in admin.create_topics([NewTopic(t, num_partitions=settings.kafka.usage_partitions,
                                             replication_factor=settings.kafka.replication_factor)
                                    for t in (in_topic, out_topic)]).values():
        fut.result()
    ctx = multiprocessing.get_context("spawn")
    levels = []
    with tempfile.TemporaryDirectory(prefix="finops-bench-bare-") as spool:
        producer = UsageProducer(settings.kafka.bootstrap, in_topic, "bench-bare", Path(spool),
                                 kafka_config={k: v for k, v in client.items() if k != "bootstrap.servers"},
                                 compression=settings.producer.compression, linger_ms=settings.producer.linger_ms,
                                 register_atexit=False)
        for level in config.levels:
            rate = capacity * level
            expected = ctx.Value("q", -1)
            ready, out = ctx.Event(), ctx.Queue()
            child = ctx.Process(target=_bare_loop, args=(client, in_topic, out_topic, expected, ready, out))
            child.start()
            if not ready.wait(60):
                child.kill()
                raise FinopsError("bench: the baseline loop did not get its partitions")
            _say(f"baseline: bare consume->produce at {rate:,.0f} events/s ...")
            sent = _drive(producer, events, rate, config.level_seconds, {"bench_level": "bare"})
            producer.flush(60)
            expected.value = sent
            latencies, rss = out.get(timeout=config.drain_timeout_s)
            child.join(30)
            levels.append({"percent": int(round(level * 100)), "events": sent, "latency_ms": _quantiles(latencies),
                           "peak_rss_mb": rss})
        producer.close()
    return levels


# ---- the table ---------------------------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}{unit}"


def _cpu_line(what: str, cpu: Mapping[str, Any], events: int, cpus: int) -> str:
    """CPU µs per event of each process over a phase, and how busy the whole machine was."""
    used = cpu["cpu_s"]
    per = ", ".join(f"{k} {v / events * 1e6:,.0f}" + (f" (JIT compiler {used[_BROKER_JIT] / events * 1e6:,.0f} of it)"
                                                    if k == "broker" and _BROKER_JIT in used else "")
                    for k, v in used.items() if k not in ("machine", _BROKER_JIT))
    busy = cpu["cpu_s"].get("machine", 0.0) / max(cpu["seconds"], 1e-9) / cpus * 100
    return f"  CPU µs per event, {what}: {per}; machine busy {busy:.0f} % of {cpus} CPUs over {cpu['seconds']:.1f} s"


def _legs_line(legs: Mapping[str, Any]) -> str:
    """Where an event's time to queryable went: emit -> priced_at (SDK, broker, the stream's consume) and priced_at
    -> ingested_at (the stream's batch and produce, the priced topic, the sink's batching, its checks and insert).
    Quantiles of each leg on its own, so the legs' p99s need not add up to the whole's."""
    a, b = legs["to_priced_ms"], legs["priced_to_queryable_ms"]
    return (f"  of which emit->priced (SDK+broker+stream) p50 / p99 {_fmt(a['p50'])} / {_fmt(a['p99'])} ms, "
            f"priced->queryable (priced topic+sink+insert) {_fmt(b['p50'])} / {_fmt(b['p99'])} ms; "
            f"{legs.get('stream_batches', 0):,} stream batches, {legs.get('sink_inserts', 0):,} sink inserts")


def render(result: Mapping[str, Any]) -> str:
    """One table: each measurement beside its baseline, then peak memory per role."""
    m = result["machine"]
    lines = [f"finops bench, {result['date']}: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, "
             f"broker {result['broker']}"]
    header = f"{'measurement':<46} {'finops':>16} {'baseline':>16} {'ratio':>6}  baseline is"
    lines += [header, "-" * len(header)]

    def row(name: str, ours: float | None, base: float | None, what: str, unit: str = "",
            higher_better: bool = True) -> None:
        ratio = "" if not ours or not base else f"{(ours / base if higher_better else base / ours):.2f}"
        lines.append(f"{name:<46} {_fmt(ours, unit):>16} {_fmt(base, unit):>16} {ratio:>6}  {what}")

    if "producer" in result:
        p = result["producer"]
        row("producer events/s (SDK, 1 core)", p["sdk"]["events_per_s"], p["bare"]["events_per_s"],
            "bare confluent-kafka produce, pre-encoded")
        if "sdk_many" in p:
            row("producer emit_many events/s (SDK, 1 core)", p["sdk_many"]["events_per_s"],
                p["bare"]["events_per_s"], "same; batches of 1,000 events")
    if "stream" in result:
        s = result["stream"]
        row("stream events/s per core (hot path)", s["hotpath"]["events_per_s"], s["plain"]["events_per_s"],
            "consume+decode+price+dicts, no output")
    if "sink" in result:
        k = result["sink"]
        row("sink rows/s (1 thread, chdb)", k["sink"]["rows_per_s"], k["bare"]["rows_per_s"],
            "bare clickhouse-connect insert")
        if "floor" in k:
            row("sink rows/s vs the engine's floor", k["sink"]["rows_per_s"], k["floor"]["rows_per_s"],
                "chdb INSERT SELECT FROM file() of the same containers")
        if "decode" in k:
            row("sink rows/s vs the engine's Avro decode alone", k["sink"]["rows_per_s"], k["decode"]["rows_per_s"],
                "the same INSERT into a Null-engine ledger")
    if "intake" in result:
        i = result["intake"]
        row("intake spans/s into Kafka (1 core, OTLP proto)", i["intake"]["spans_per_s"], i["bare"]["spans_per_s"],
            "bare protobuf decode of the same bodies")
    if "latency" in result:
        lat = result["latency"]
        base = {b["percent"]: b for b in lat.get("baseline", [])}
        if "stream" in result and lat.get("capacity_source", "").startswith("measured"):
            # The pipeline runs every role on this machine; its capacity as a share of one core's hot path says how
            # much of the machine the roles beside the hot path (sink, detection, alerts, broker) take.
            row("whole pipeline events/s (all roles, this machine)", lat["capacity_events_per_s"],
                result["stream"]["hotpath"]["events_per_s"], "the hot path's one-core rate above")
        if lat.get("capacity_cpu"):
            lines.append(_cpu_line("capacity burst", lat["capacity_cpu"], lat.get("capacity_events") or 1,
                                   m["cpus"]))
            inserts = lat["capacity_cpu"].get("sink_inserts")
            if inserts:
                events = lat.get("capacity_events") or 0
                lines.append(f"  {lat['capacity_cpu'].get('stream_batches', 0):,} stream batches, {inserts:,} sink "
                             f"inserts ({events / inserts:,.0f} rows each on average)")
        lines.append(f"latency at % of capacity = {lat['capacity_events_per_s']:,.0f} events/s, the whole pipeline's "
                     f"throughput here ({lat.get('capacity_source', '')}); finops = SDK -> broker -> stream -> sink "
                     "-> ClickHouse, all roles on this machine")
        for level in lat["levels"]:
            pct = level["percent"]
            b = base.get(pct, {}).get("latency_ms", {})
            q = level["queryable_ms"]
            label = f"@{pct}% ({level['achieved_events_per_s']:,.0f}/s)"
            row(f"event->queryable p50 ms {label}", q["p50"], b.get("p50"), "bare consume->produce, emit->ack",
                higher_better=False)
            row(f"event->queryable p99 ms {label}", q["p99"], b.get("p99"), "same", higher_better=False)
            if level.get("queryable_legs"):
                lines.append(_legs_line(level["queryable_legs"]))
            if level.get("cpu"):
                lines.append(_cpu_line(f"@{pct}%", level["cpu"], level["events"], m["cpus"]))
            a = level["alert_ms"]
            lines.append(f"{'event->alert (Slack POST) p50 / max ms ' + f'@{pct}%':<46} "
                         f"{_fmt(a['p50']) + ' / ' + _fmt(a['max']):>16} {'n/a':>16} {'':>6}  "
                         f"{a['n']} budget breaches; posts per breach "
                         f"{sorted(set(level['slack_posts_per_breach'].values()))}")
    rss: dict[str, float] = {}
    if "producer" in result and result["producer"].get("peak_rss_mb"):
        rss["producer bench (SDK + bare)"] = result["producer"]["peak_rss_mb"]
    if "stream" in result:
        rss["stream bench: hot path / plain loop"] = result["stream"]["hotpath"]["peak_rss_mb"]
    if "sink" in result and result["sink"].get("peak_rss_mb"):
        rss["sink bench (incl. chdb)"] = result["sink"]["peak_rss_mb"]
    if "latency" in result:
        for name, mb in result["latency"].get("peak_rss_mb", {}).items():
            rss[f"role {name}" if "generator" not in name else name] = mb
        bare = [b["peak_rss_mb"] for b in result["latency"].get("baseline", [])]
        if bare:
            rss["bare consume->produce loop"] = max(bare)
    if rss:
        lines.append("peak memory (VmHWM / ru_maxrss, MiB): " + ", ".join(f"{k} {v:,.0f}" for k, v in rss.items()))
    return "\n".join(lines)

