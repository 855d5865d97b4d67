"""``finops bench-sink``: what one sink core writes into ClickHouse, against a bare insert measured in the same run.

Phases (one process, one embedded ClickHouse in a temporary directory unless ``--clickhouse-url`` is given, topics
under a fresh prefix): (1) pre-fill ``agent.usage.priced.v1`` with N synthetic PricedUsageEvents; (2) breakdown:
decode and row mapping of the same payloads in memory (the row path's cost); (3) baseline: bare ``client.insert``
of the same rows in batches of ``--batch-rows``; (3b) on chdb, the engine's floor: the same payloads as the sink's
Avro containers in files, inserted by ``INSERT ... SELECT FROM file(..., Avro)`` with the sink's settings, and into
a Null-engine ledger (the Avro decode alone); (4) sink: one :class:`~sinks.worker.SinkWorker` from the pre-filled
topic until every event is written, timed from its first consumed message (the group join is printed apart), and its
ratio to the baseline; (5) backpressure: a second sink whose inserts fail for ``--outage-seconds``, its RSS sampled by a
background thread: before, peak during the outage, and messages consumed while paused (bounded by one batch).

chdb runs inside this process, so ClickHouse's own CPU is in both the baseline and the sink numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from finops.clickhouse import avro_file_insert_sql, column_read_types, connect
from schemas.errors import FinopsError
from schemas.loader import load_schema
from sinks.worker_cli import DEFAULT_BATCH_ROWS, build_dlq_producer, build_sink_worker

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["add_arguments", "build_bench_event", "register", "run_bench"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops bench-sink``."""
    bench = sub.add_parser(
        "bench-sink",
        help="measure sink rows/s per core (decode + map + insert) against a bare clickhouse-connect insert, and "
        "peak RSS under backpressure",
    )
    add_arguments(bench)
    bench.set_defaults(func=run_bench)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events to pre-fill and write (200000)")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                        help=f"rows per insert for both paths (the sink's default, {DEFAULT_BATCH_ROWS})")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the bench topic (3)")
    parser.add_argument("--outage-seconds", type=float, default=5.0, help="ClickHouse outage in the backpressure "
                        "phase (5 s; 0 skips the phase)")
    parser.add_argument("--clickhouse-url", default=None, help="ClickHouse to write to (default: chdb in a "
                        "temporary directory; never the configured data path, which a running sink may own)")


def build_bench_event(i: int, rng: random.Random, start: datetime) -> dict[str, Any]:
    """A realistic PricedUsageEvent Avro dict (exact Decimal costs, tags, optional fields half filled)."""
    parts = [Decimal(rng.randint(0, 3_000_000_000)).scaleb(-12) for _ in range(5)]
    occurred = start + timedelta(microseconds=rng.randrange(3_600_000_000))
    inp, out = rng.randint(100, 60_000), rng.randint(10, 4_000)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "source": f"svc-{i % 4}",
        "occurred_at": occurred, "agent_id": f"agent-{i % 500}", "team": f"team-{i % 12}",
        "project": f"proj-{i % 40}", "provider": "anthropic", "model": ("claude-sonnet-4", "claude-haiku-4")[i % 2],
        "input_tokens": inp, "output_tokens": out, "cache_read_tokens": inp // 3, "cache_write_tokens": inp // 10,
        "cache_write_1h_tokens": 0, "reasoning_tokens": out // 4, "input_audio_tokens": 0, "output_audio_tokens": 0,
        "cache_audio_read_tokens": 0, "image_tokens": 0, "web_search_calls": 0, "requests": 1,
        "task_id": f"task-{i // 7}", "parent_task_id": None if i % 3 else f"task-{i // 21}",
        "task_type": "code" if i % 2 else None, "environment": "prod", "attempt": 1 + (i % 10 == 0),
        "status": "ok" if i % 20 else "error", "latency_ms": rng.randint(100, 20_000),
        "prompt_hash": f"{rng.getrandbits(64):016x}", "reported_cost": None,
        "tags": {"feature": f"f{i % 9}", "customer": f"c{i % 100}"}, "schema_version": 1,
        "cost_usd": sum(parts, Decimal(0)), "cost_input_usd": parts[0], "cost_output_usd": parts[1],
        "cost_cache_read_usd": parts[2], "cost_cache_write_usd": parts[3], "cost_other_usd": parts[4],
        "price_input_mtok": Decimal(3), "price_output_mtok": Decimal(15), "price_cache_read_mtok": Decimal("0.3"),
        "price_cache_write_mtok": Decimal("3.75"), "price_cache_write_1h_mtok": Decimal(6),
        "pricing_status": "priced", "unpriced_reason": None, "catalogue_version": "bench",
        "price_book_version": None, "price_source": "catalogue", "cost_delta_usd": None, "cost_mismatch": False,
        "late": False, "priced_at": occurred + timedelta(milliseconds=3), "source_topic": "agent.usage.v1",
        "source_partition": i % 6, "source_offset": i,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _page_size()


def _page_size() -> int:

    return os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a daemon thread; ``peak`` since the last reset."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peak = _rss_bytes()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, _rss_bytes())

    def reset(self) -> int:
        self.peak = _rss_bytes()
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _OutageClient:
    """Delegates to a clickhouse-connect client; ``insert``, ``raw_insert`` and ``command`` (the sink's Avro
    containers: raw inserts on a server, ``INSERT ... SELECT FROM file()`` statements on chdb) raise a transient
    error while ``outage`` is set."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.outage = threading.Event()

    def _fail_in_outage(self) -> None:
        if self.outage.is_set():
            from clickhouse_connect.driver.exceptions import OperationalError

            raise OperationalError("bench: simulated ClickHouse outage")

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._fail_in_outage()
        return self._client.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self._fail_in_outage()
        return self._client.raw_insert(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self._fail_in_outage()
        return self._client.command(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _TimedConsumer:
    """Delegates to a confluent-kafka consumer; ``first`` is when a ``consume`` first returned messages (the group
    joined and the first fetch arrived), so the sink's rate is timed over its work, the join reported apart."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.first: float | None = None
        self.first_cpu: float | None = None

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        messages = self._consumer.consume(*args, **kwargs)
        if messages and self.first is None:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _engine_floor(client: Any, database: str, payloads: list[bytes], batch_rows: int,
                  directory: Path) -> tuple[float, float]:
    """Seconds (wall, CPU) for chdb to insert ``payloads`` into ``database``'s ledger from Avro container files of
    ``batch_rows`` bodies each (built as the sink builds them), with the sink's insert settings."""
    from sinks.avro_block import build_container, build_container_header
    from sinks.rows import LEDGER

    head, sync = build_container_header(load_schema(LEDGER.schema_name))
    files = []
    for lo in range(0, len(payloads), batch_rows):
        chunk = payloads[lo : lo + batch_rows]
        path = directory / f"floor-{lo}.avro"
        path.write_bytes(build_container(head, sync, chunk, [10] * len(chunk)))
        files.append(path)
    # Read as the sink's block path reads them on chdb (finops.clickhouse.insert_avro_container): each
    # LowCardinality column as its plain type, converted by the insert.
    types = column_read_types(client, database, LEDGER.table)
    settings = ", ".join(f"{k} = {v}" for k, v in LEDGER.block_settings.items())
    t0, c0 = time.perf_counter(), time.process_time()
    for path in files:
        client.command(avro_file_insert_sql(f"{database}.{LEDGER.table}", LEDGER.columns, str(path), types)
                       + (f" SETTINGS {settings}" if settings else ""))
    elapsed = (time.perf_counter() - t0, time.process_time() - c0)
    for path in files:
        path.unlink()
    return elapsed


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FinopsError(f"bench: timed out waiting for {what}")
        time.sleep(0.01)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def run_bench(args: argparse.Namespace) -> int:
    """Run the phases and print the table. Blocks for the whole run; needs a reachable broker."""
    from finops.kafka.clients import Role, build_producer
    from finops.kafka.loop import tune_gc
    from finops.settings import load_settings
    from finops.tables import LEDGER_COLUMNS
    from finops.topics import TopicNames, ensure_topics
    from schemas.wire import AvroCodec
    from sinks.migrations import MigrationRunner
    from sinks.rows import LEDGER, compute_ledger_row

    settings = load_settings()
    kafka_config = settings.kafka.client_config()
    n, batch_rows = args.events, args.batch_rows
    tmp = None
    url = args.clickhouse_url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="finops-bench-")
        url = f"chdb://{Path(tmp.name) / 'ch'}"
    client = connect(url)
    suffix = uuid.uuid4().hex[:8]
    databases = {name: f"bench_{name}_{suffix}" for name in ("base", "floor", "sink", "bp")}
    for db in databases.values():
        MigrationRunner(client, db).apply()
    # The decode-only floor: a ledger of the same columns whose engine discards the rows (no parts, no views), so
    # its insert is the engine's Avro parsing alone. A measurement fixture of this bench, dropped at the end.
    databases["decode"] = f"bench_decode_{suffix}"
    client.command(f"CREATE DATABASE {databases['decode']}")
    client.command(f"CREATE TABLE {databases['decode']}.{LEDGER.table} AS {databases['floor']}.{LEDGER.table} "
                   "ENGINE = Null")
    topics = TopicNames(f"bench{suffix}.")
    ensure_topics(kafka_config, prefix=topics.prefix, usage_partitions=args.partitions)
    rss = _RssSampler()

    # 1. pre-fill
    codec = AvroCodec()
    rng = random.Random(42)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    payloads = [codec.encode(build_bench_event(i, rng, start), "PricedUsageEvent") for i in range(n)]
    producer = build_producer(kafka_config, Role.BENCH, overrides={"linger.ms": 20, "compression.type": "lz4"})
    for i, value in enumerate(payloads):
        while True:
            try:
                producer.produce(topics.priced, key=f"agent-{i % 500}".encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError("bench: pre-fill not acknowledged")
    avg_bytes = sum(map(len, payloads)) / n

    # 2. breakdown in memory
    t0 = time.perf_counter()
    records = [codec.decode(p)[1] for p in payloads]
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = [compute_ledger_row(r) for r in records]
    t_map = time.perf_counter() - t0
    del records

    # The process settings of `finops sink run` (its start-up is done here too), for the baseline and the sink alike.
    tune_gc()

    # 3. baseline: bare inserts of the same pre-built rows
    columns = list(LEDGER_COLUMNS)
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, n, batch_rows):
        client.insert(LEDGER.table, rows[lo:lo + batch_rows], column_names=columns, database=databases["base"])
    t_base, cpu_base = time.perf_counter() - t0, time.process_time() - c0
    del rows

    # 3b. the engine's floor: the same containers the sink builds, read from files by ClickHouse itself
    floor: tuple[float, float] | None = None
    decode: tuple[float, float] | None = None
    if url.startswith("chdb://"):
        directory = Path(tmp.name if tmp else tempfile.gettempdir())
        floor = _engine_floor(client, databases["floor"], payloads, batch_rows, directory)
        decode = _engine_floor(client, databases["decode"], payloads, batch_rows, directory)

    # 4. the sink
    dlq = build_dlq_producer(kafka_config)
    timed: list[_TimedConsumer] = []

    def timed_consumer(consumer: Any) -> _TimedConsumer:
        timed.append(_TimedConsumer(consumer))
        return timed[-1]

    worker = build_sink_worker("ledger", client=client, database=databases["sink"], kafka_config=kafka_config,
                               topic=topics.priced, dlq_topic=topics.dlq, dlq_producer=dlq,
                               group_id=f"bench-sink-{suffix}", batch_rows=batch_rows, batch_seconds=1.0,
                               consumer_wrapper=timed_consumer)
    rss.reset()
    thread = threading.Thread(target=worker.run, daemon=True)
    t_start = time.perf_counter()
    thread.start()
    _wait(lambda: worker.stats.inserted + worker.stats.duplicates + worker.stats.dead_lettered >= n, 600, "sink")
    t_end, c_end = time.perf_counter(), time.process_time()
    consumer = timed[0]
    assert consumer.first is not None and consumer.first_cpu is not None
    t_join, t_sink, cpu_sink = consumer.first - t_start, t_end - consumer.first, c_end - consumer.first_cpu
    sink_peak = rss.peak
    worker.stop()
    thread.join()
    worker.close()
    stored = client.query(f"SELECT count() FROM {databases['sink']}.usage_ledger").result_rows[0][0]

    # 5. backpressure
    bp_line = "skipped"
    if args.outage_seconds > 0:
        flaky = _OutageClient(client)
        flaky.outage.set()
        bp = build_sink_worker("ledger", client=flaky, database=databases["bp"], kafka_config=kafka_config,
                               topic=topics.priced, dlq_topic=topics.dlq, dlq_producer=dlq,
                               group_id=f"bench-bp-{suffix}", batch_rows=batch_rows, batch_seconds=1.0)
        before = rss.reset()
        bp_thread = threading.Thread(target=bp.run, daemon=True)
        bp_thread.start()
        _wait(lambda: bp.stats.consumed > 0, 60, "backpressure sink to consume")
        time.sleep(args.outage_seconds)  # the outage lasts this long by construction (a fault, not a wait)
        outage_peak, consumed_paused = rss.peak, bp.stats.consumed
        flaky.outage.clear()
        _wait(lambda: bp.stats.inserted + bp.stats.duplicates >= n, 600, "backpressure sink to catch up")
        bp.stop()
        bp_thread.join()
        bp.close()
        bp_line = (f"outage {args.outage_seconds:g} s with {n:,} events waiting: consumed while paused "
                   f"{consumed_paused:,} (batch {batch_rows:,}); RSS before {_mb(before)}, peak during outage "
                   f"{_mb(outage_peak)}, peak incl. catch-up {_mb(rss.peak)}; retries {bp.stats.retries}")
    dlq.flush(10)
    rss.close()

    base_rate, sink_rate = n / t_base, n / t_sink
    print(f"sink benchmark: {n:,} PricedUsageEvents ({avg_bytes:.0f} B each), batches of {batch_rows:,}, "
          f"{args.partitions} partitions, ClickHouse {url.split('://')[0]}")
    header = f"{'path':58} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'CPU s':>7} {'vs baseline':>11}"
    print(header)
    print("-" * len(header))
    print(f"{'bare clickhouse-connect insert of pre-built rows':58} {n:>9,} {t_base:>8.2f} {base_rate:>10,.0f} "
          f"{cpu_base:>7.2f} {'1.00':>11}")
    if floor is not None and decode is not None:
        t_floor, cpu_floor = floor
        print(f"{'engine floor: chdb INSERT SELECT FROM file(), same Avro':58} {n:>9,} {t_floor:>8.2f} "
              f"{n / t_floor:>10,.0f} {cpu_floor:>7.2f} {n / t_floor / base_rate:>11.2f}")
        t_decode_only, cpu_decode_only = decode
        print(f"{'decode-only floor: the same into a Null-engine ledger':58} {n:>9,} {t_decode_only:>8.2f} "
              f"{n / t_decode_only:>10,.0f} {cpu_decode_only:>7.2f} {n / t_decode_only / base_rate:>11.2f}")
    print(f"{'sink: consume+ids+Avro insert+commit (1 thread)':58} {stored:>9,} {t_sink:>8.2f} "
          f"{sink_rate:>10,.0f} {cpu_sink:>7.2f} {sink_rate / base_rate:>11.2f}")
    print(f"the sink is timed from its first consumed message; before it, the group join and first fetch took "
          f"{t_join:.2f} s (with them: {n / (t_join + t_sink):,.0f} rows/s)")
    print(f"breakdown per row: row path's fastavro decode {t_decode / n * 1e6:.1f} µs and row mapping "
          f"{t_map / n * 1e6:.2f} µs (the sink skips both), bare insert {t_base / n * 1e6:.1f} µs, sink total "
          f"{t_sink / n * 1e6:.1f} µs")
    print(f"sink peak RSS {_mb(sink_peak)}")
    print(f"backpressure: {bp_line}")
    for db in databases.values():
        client.command(f"DROP DATABASE IF EXISTS {db}")
    client.close()
    if tmp is not None:
        tmp.cleanup()
    return 0 if stored == n else 1
