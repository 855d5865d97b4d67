"""``finops bench-producer``: events/s of the SDK's validate + encode + produce on one core (``emit``, and
``emit_many`` in batches) beside a bare confluent-kafka produce of the same bytes, plus where the SDK's time goes.

A shell module: it drives the producer part's public API (``UsageProducer``) the way an agent does.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from finops.clock import utc_now
from schemas.errors import FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["bench_events", "register", "run_bench"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops bench-producer``."""
    bench = sub.add_parser(
        "bench-producer",
        help="events/s of validate+encode+produce on one core (emit, and emit_many in batches), beside a bare "
             "confluent-kafka produce",
    )
    bench.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    bench.add_argument("--topic", default=None, help="topic (default <prefix>finops.bench.producer, created)")
    bench.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (default: the first)")
    bench.set_defaults(func=run_bench)


def bench_events(n: int) -> list[dict[str, Any]]:
    """Realistic, varied events without ids or times (the SDK fills those in, inside the measured path)."""
    models = [("openai", "gpt-4o-2024-08-06"), ("anthropic", "claude-sonnet-4-5"), ("google", "gemini-2.5-pro")]
    events = []
    for i in range(n):
        provider, model = models[i % 3]
        inp = 500 + (i * 7919) % 20000
        events.append({
            "agent_id": f"agent-{i % 200}", "team": f"team-{i % 12}", "project": f"project-{i % 30}",
            "provider": provider, "model": model, "input_tokens": inp, "output_tokens": 50 + (i * 31) % 2000,
            "cache_read_tokens": inp // 2, "reasoning_tokens": 0, "task_id": f"task-{i // 8}",
            "latency_ms": 200 + i % 5000, "tags": {"env": "bench"},
        })
    return events


#: Events per emit_many call in the bench (a producer that buffers a second of a busy agent's calls).
_BENCH_BATCH = 1000


def _row(name: str, n: int, wall: float, cpu: float) -> str:
    return f"{name:<44} {n:>9,} {wall:>8.2f} {cpu:>8.2f} {n / wall:>11,.0f} {wall / n * 1e6:>9.2f}"


def run_bench(args: argparse.Namespace) -> int:
    """Run the producer bench (arguments as ``finops bench-producer`` parses them); prints the table; returns 0.

    The process runs pinned to one CPU meanwhile and gets its CPU set back at the end (``finops bench all`` runs
    this in-process, and the roles the latency part starts later inherit the CPU set of this process)."""
    before = os.sched_getaffinity(0)
    try:
        return _run_pinned(args)
    finally:
        os.sched_setaffinity(0, before)


def _run_pinned(args: argparse.Namespace) -> int:
    """The bench itself: pins this process to ``args.cpu`` (default the first allowed) and runs both paths."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from finops.kafka.clients import Role, build_admin, build_producer
    from finops.settings import load_settings
    from producers.producer import UsageProducer, sdk_client_id, sdk_producer_settings
    from schemas.models import check_usage_dict
    from schemas.wire import AvroCodec

    settings = load_settings()
    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[0]
    # Pinned before any client exists, so librdkafka's threads inherit it: the whole client shares one core.
    os.sched_setaffinity(0, {cpu})
    topic = args.topic or f"{settings.kafka.topic_prefix}finops.bench.producer"
    client = settings.kafka.client_config()
    admin = build_admin(client)
    if topic not in admin.list_topics(timeout=15).topics:
        futures = admin.create_topics([NewTopic(topic, num_partitions=settings.kafka.usage_partitions,
                                                replication_factor=settings.kafka.replication_factor)])
        for fut in futures.values():
            try:
                fut.result()
            except Exception as err:  # noqa: BLE001 - "already exists" from a concurrent run is fine
                if "already exists" not in str(err).lower():
                    raise FinopsError(f"cannot create bench topic {topic}: {err}") from err
    n = args.events
    events = bench_events(n)
    extra = {k: v for k, v in client.items() if k != "bootstrap.servers"}
    print(f"bench: {n:,} events to {topic} on {settings.kafka.bootstrap}, pinned to CPU {cpu}", file=sys.stderr)

    rows: list[str] = []
    with tempfile.TemporaryDirectory() as spool_dir:
        # 1. The SDK: validate + fill ids/times + encode + produce, delivery reports on the poll thread.
        producer = UsageProducer(settings.kafka.bootstrap, topic, "bench", Path(spool_dir), kafka_config=extra,
                                 compression=settings.producer.compression, linger_ms=settings.producer.linger_ms,
                                 register_atexit=False)
        producer.emit(events[0])
        producer.flush(30)  # connection and producer id set up before the clock starts
        w0, c0 = time.perf_counter(), time.process_time()
        for event in events:
            producer.emit(event)
        left = producer.flush(120)
        sdk_wall, sdk_cpu = time.perf_counter() - w0, time.process_time() - c0
        stats = producer.stats()
        prepared = [producer.prepare(e) for e in events]  # same bytes for the bare run (not timed)
        producer.close()
        if left or stats.spooled or stats.failed:
            raise FinopsError(f"bench run incomplete: {left} unacknowledged, {stats.spooled} spooled, "
                              f"{stats.failed} failed; is the broker healthy?")
        rows.append(_row("sdk: validate+encode+produce (UsageProducer)", n, sdk_wall, sdk_cpu))

    with tempfile.TemporaryDirectory() as spool_dir:
        # 1b. The SDK's batch path: emit_many over batches of _BENCH_BATCH events, same events, a fresh producer.
        producer = UsageProducer(settings.kafka.bootstrap, topic, "bench", Path(spool_dir), kafka_config=extra,
                                 compression=settings.producer.compression, linger_ms=settings.producer.linger_ms,
                                 register_atexit=False)
        producer.emit_many(events[:1])
        producer.flush(30)
        w0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, n, _BENCH_BATCH):
            producer.emit_many(events[start : start + _BENCH_BATCH])
        left = producer.flush(120)
        many_wall, many_cpu = time.perf_counter() - w0, time.process_time() - c0
        stats = producer.stats()
        producer.close()
        if left or stats.spooled or stats.failed:
            raise FinopsError(f"bench run (emit_many) incomplete: {left} unacknowledged, {stats.spooled} spooled, "
                              f"{stats.failed} failed; is the broker healthy?")
        rows.append(_row(f"sdk: emit_many (batches of {_BENCH_BATCH:,})", n, many_wall, many_cpu))

    # 2. Bare confluent-kafka: the same pre-encoded bytes, same producer settings, a counting delivery callback.
    bare = build_producer(
        {"bootstrap.servers": settings.kafka.bootstrap}, Role.SDK, client_id=sdk_client_id("bench-bare"),
        overrides={**sdk_producer_settings(compression=settings.producer.compression,
                                           linger_ms=settings.producer.linger_ms), **extra},
    )
    delivered = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[0] += 1

    bare.produce(topic, prepared[0][2], prepared[0][1])
    bare.flush(30)
    w0, c0 = time.perf_counter(), time.process_time()
    for i, (_, key, value) in enumerate(prepared):
        while True:
            try:
                bare.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                bare.poll(0.05)
        if i % 1000 == 0:
            bare.poll(0)
    bare.flush(120)
    bare_wall, bare_cpu = time.perf_counter() - w0, time.process_time() - c0
    rows.append(_row("bare confluent-kafka produce (pre-encoded)", n, bare_wall, bare_cpu))

    # 3. Where the SDK's time goes: the pure-Python steps alone (no Kafka).
    codec = AvroCodec()
    now = utc_now()
    sample = [dict(e, event_id=p[0], source="bench", occurred_at=now) for e, p in
              zip(events[: min(n, 50_000)], prepared, strict=False)]
    w0, c0 = time.perf_counter(), time.process_time()
    for record in sample:
        check_usage_dict(record, now)
    rows.append(_row("  part: validate (check_usage_dict)", len(sample), time.perf_counter() - w0,
                     time.process_time() - c0))
    w0, c0 = time.perf_counter(), time.process_time()
    for record in sample:
        codec.encode(record, "UsageEvent")
    rows.append(_row("  part: encode (AvroCodec single-object)", len(sample), time.perf_counter() - w0,
                     time.process_time() - c0))

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'path':<44} {'events':>9} {'wall s':>8} {'cpu s':>8} {'events/s':>11} {'us/event':>9}")
    for row in rows:
        print(row)
    print(f"ratio sdk/bare (events/s): {(n / sdk_wall) / (n / bare_wall):.2f}")
    print(f"ratio emit_many/bare (events/s): {(n / many_wall) / (n / bare_wall):.2f}")
    print(f"peak RSS: {peak_mib:.0f} MiB")
    return 0
