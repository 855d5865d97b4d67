"""``finops`` sub-commands of the producer SDK: ``emit`` (one event by hand) and ``bench-producer``.

Each command is one ``add_parser`` in :func:`register`, so more commands merge without conflicts. Heavy imports
(confluent-kafka, fastavro) happen inside the handlers to keep ``finops --help`` fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from decimal import Decimal
from typing import Any

from schemas.errors import FieldProblem, FinopsError, ValidationFailed

# Flags of `finops emit` that map 1:1 onto integer UsageEvent fields (flag --x-y -> field x_y).
_INT_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
    "web_search_calls", "requests", "attempt", "latency_ms",
)  # fmt: skip
# String fields: (flag, field).
_STR_FIELDS = (
    ("agent", "agent_id"), ("team", "team"), ("project", "project"), ("provider", "provider"), ("model", "model"),
    ("task_id", "task_id"), ("parent_task_id", "parent_task_id"), ("task_type", "task_type"),
    ("environment", "environment"), ("status", "status"), ("prompt_hash", "prompt_hash"), ("source", "source"),
    ("event_id", "event_id"), ("occurred_at", "occurred_at"),
)  # fmt: skip

EXIT_DELIVERED, EXIT_FAILED, EXIT_SPOOLED = 0, 1, 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``emit``, ``bench-producer``, ``simulate`` and ``replay``."""
    from producers import replay, simulator

    simulator.register_commands(subparsers)
    replay.register_commands(subparsers)
    emit = subparsers.add_parser(
        "emit",
        help="publish one usage event from flags or --json (validated; id and time filled in)",
        description="Validate and publish one usage event. Flags override --json. Exit 0 when the broker "
                    "acknowledged it, 3 when it was kept in the spool (broker unreachable; sent later), 1 when it "
                    "failed, 2 when it is invalid (the message names each field).",
    )
    emit.add_argument("--json", dest="json_event", default=None, help="the event as a JSON object")
    for flag, _ in _STR_FIELDS:
        emit.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None)
    for name in _INT_FIELDS:
        emit.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    emit.add_argument("--reported-cost", dest="reported_cost", default=None, help="USD billed, as a decimal string")
    emit.add_argument("--tag", action="append", default=[], metavar="K=V", help="a tag (repeatable)")
    emit.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker (default 15)")
    emit.set_defaults(func=_emit)

    bench = subparsers.add_parser(
        "bench-producer",
        help="events/s of validate+encode+produce on one core (emit, and emit_many in batches), beside a bare "
             "confluent-kafka produce",
    )
    bench.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    bench.add_argument("--topic", default=None, help="topic (default <prefix>finops.bench.producer, created)")
    bench.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (default: the first)")
    bench.set_defaults(func=_bench)


# ---------------------------------------------------------------------------------------------------------- emit
#: The flag of each event field (the user types ``--agent``, the event says ``agent_id``).
_FLAG_OF: dict[str, str] = {
    **{name: f"--{flag.replace('_', '-')}" for flag, name in _STR_FIELDS},
    **{name: f"--{name.replace('_', '-')}" for name in _INT_FIELDS},
    "reported_cost": "--reported-cost",
    "tags": "--tag",
}


class EmitInvalid(ValidationFailed):
    """The event built from ``finops emit``'s input is invalid. Each problem names where the value came from: the
    flag the user typed (``--agent``) with the event field (``agent_id``), or the ``--json`` field; a missing field
    names the flag that sets it. One problem per cause (see :func:`producers.producer.complete_usage_record`)."""

    def __init__(self, problems: list[FieldProblem], origins: dict[str, str]) -> None:
        self.origins = origins
        super().__init__(problems, record="the event")

    def where(self, field: str) -> str:
        """``--agent (agent_id)``, ``--json field agent_id`` or, for a field nobody gave, the flag that sets it."""
        root = field.split(".", 1)[0]
        origin = self.origins.get(field) or self.origins.get(root)
        if origin == "--json":
            return f"--json field {field}"
        flag = origin or _FLAG_OF.get(root)
        if flag is None:
            return field  # filled in by the producer (event_id, source, occurred_at defaults) or not settable
        return f"{flag} ({field})"

    def _render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.record} is invalid ({count} problem{'s' if count != 1 else ''}); nothing was sent:"]
        lines.extend(f"  - {self.where(p.field)} [{p.rule}]: {p.message}" for p in self.problems)
        return "\n".join(lines)


def build_event_with_origins(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The event dict from ``--json`` and the flags (flags win), and for each field where its value came from
    (``--agent``, ``--tag``, ``--json``). Raises FinopsError for malformed input."""
    event: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if args.json_event:
        try:
            loaded = json.loads(args.json_event, parse_float=Decimal)
        except json.JSONDecodeError as err:
            raise FinopsError(f"--json is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise FinopsError("--json must be a JSON object with UsageEvent fields")
        event.update(loaded)
        origins.update(dict.fromkeys(loaded, "--json"))
    for flag, name in _STR_FIELDS:
        if getattr(args, flag) is not None:
            event[name] = getattr(args, flag)
            origins[name] = _FLAG_OF[name]
    for name in _INT_FIELDS:
        if getattr(args, name) is not None:
            event[name] = getattr(args, name)
            origins[name] = _FLAG_OF[name]
    if args.reported_cost is not None:
        event["reported_cost"] = args.reported_cost
        origins["reported_cost"] = "--reported-cost"
    if args.tag:
        tags = dict(event.get("tags") or {}) if isinstance(event.get("tags") or {}, dict) else {}
        for item in args.tag:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise FinopsError(f"--tag {item!r}: expected KEY=VALUE")
            tags[key] = value
            origins[f"tags.{key[:40]}"] = "--tag"
        event["tags"] = tags
    return event, origins


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    """The event dict from ``--json`` and the flags (flags win). Raises FinopsError for malformed input."""
    return build_event_with_origins(args)[0]


def _emit(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from finops.settings import load_settings
    from producers.producer import Delivery, UsageProducer, complete_usage_record

    settings = load_settings()
    event, origins = build_event_with_origins(args)
    # Validated before any broker connection, so bad input gets its own message and nothing else.
    problems = complete_usage_record(event, datetime.now(UTC), settings.producer.source)
    if problems:
        raise EmitInvalid(problems, origins)  # -> exit 2 via finops.cli
    done = threading.Event()
    result: list[Delivery] = []

    def on_delivery(delivery: Delivery) -> None:
        result.append(delivery)
        done.set()

    # A spool of its own (as finops replay does): the machine's agents hold <data dir>/spool's lock.
    spool_dir = settings.spool_dir() / "cli-emit"
    producer = UsageProducer.from_settings(settings, spool_dir=spool_dir, register_atexit=False, close_timeout=0)
    try:
        event_id = producer.emit(event, on_delivery=on_delivery)
        print(f"event_id {event_id}")
        done.wait(args.timeout)
    finally:
        left = producer.close(timeout=0)
    if not result and left:
        print(f"spooled: the broker did not answer within {args.timeout:.0f}s; the event is kept in "
              f"{spool_dir} and sent by the next `finops emit`")
        return EXIT_SPOOLED
    delivery = result[0] if result else None
    if delivery is None:
        print("failed: no delivery report", file=sys.stderr)
        return EXIT_FAILED
    if delivery.status == "delivered":
        print(f"delivered to {delivery.topic} partition {delivery.partition} offset {delivery.offset}")
        return EXIT_DELIVERED
    if delivery.status == "spooled":
        print(f"spooled: the broker is unreachable; the event is kept in {spool_dir} "
              "and sent by the next `finops emit`")
        return EXIT_SPOOLED
    print(f"{delivery.status}: {delivery.error}", file=sys.stderr)
    return EXIT_FAILED


# ---------------------------------------------------------------------------------------------------------- bench
def _bench_events(n: int) -> list[dict[str, Any]]:
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


def _bench(args: argparse.Namespace) -> int:
    import os
    import resource
    import tempfile
    import time
    from datetime import UTC, datetime
    from pathlib import Path

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
    events = _bench_events(n)
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
    now = datetime.now(UTC)
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
