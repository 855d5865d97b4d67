"""Helpers for the sink and reconciliation tests (no tests here): priced events and spend partials with known
Decimal costs, producing them, running a sink worker in a thread, and waiting on conditions with a deadline."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from finops.topics import TopicNames
from schemas.loader import load_schema
from schemas.wire import AvroCodec

CONFLUENT_ID = 7
BASE_TIME = datetime(2025, 3, 31, 23, 20, tzinfo=UTC)  # spans an hour, a UTC day and a month partition


def make_codec() -> AvroCodec:
    """A codec that also resolves Confluent schema id 7 to PricedUsageEvent (both framings on the topic)."""
    schemas = {CONFLUENT_ID: load_schema("PricedUsageEvent")}
    return AvroCodec(resolver=schemas.__getitem__)


def make_priced(
    i: int,
    rng: random.Random,
    *,
    start: datetime = BASE_TIME,
    span_minutes: int = 80,
    teams: Sequence[str] = ("search", "support", "billing"),
) -> dict[str, Any]:
    """A PricedUsageEvent Avro dict with a random exact cost (12 decimal places) and random tokens."""
    occurred = start + timedelta(seconds=rng.randrange(span_minutes * 60), microseconds=rng.randrange(10**6))
    team = teams[i % len(teams)]
    parts = [Decimal(rng.randint(0, 3_000_000_000)).scaleb(-12) for _ in range(5)]
    inp, out = rng.randint(1, 50_000), rng.randint(1, 5_000)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "source": f"svc-{i % 2}",
        "occurred_at": occurred,
        "agent_id": f"agent-{i % 7}",
        "team": team,
        "project": f"proj-{i % 3}",
        "provider": "openai",
        "model": "gpt-4o" if i % 2 else "gpt-4o-mini",
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": inp // 4,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": out // 3,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "cache_audio_read_tokens": 0,
        "image_tokens": 0,
        "web_search_calls": 0,
        "requests": 1,
        "task_id": f"task-{i % 11}" if i % 5 else None,
        "parent_task_id": None,
        "task_type": "chat" if i % 2 else None,
        "environment": "prod",
        "attempt": 1 + (i % 4 == 0),
        "status": "ok" if i % 9 else "error",
        "latency_ms": rng.randint(50, 9000),
        "prompt_hash": None,
        "reported_cost": None,
        "tags": {"feature": f"f{i % 4}"},
        "schema_version": 1,
        "cost_usd": sum(parts, Decimal(0)),
        "cost_input_usd": parts[0],
        "cost_output_usd": parts[1],
        "cost_cache_read_usd": parts[2],
        "cost_cache_write_usd": parts[3],
        "cost_other_usd": parts[4],
        "price_input_mtok": Decimal("2.5"),
        "price_output_mtok": Decimal("10"),
        "price_cache_read_mtok": Decimal("1.25"),
        "price_cache_write_mtok": None,
        "price_cache_write_1h_mtok": None,
        "pricing_status": "priced",
        "unpriced_reason": None,
        "catalogue_version": "test-1",
        "price_book_version": None,
        "price_source": "catalogue",
        "cost_delta_usd": None,
        "cost_mismatch": False,
        "late": False,
        "priced_at": occurred + timedelta(milliseconds=5),
        "source_topic": "agent.usage.v1",
        "source_partition": i % 3,
        "source_offset": i,
    }


def spend_partials(events: Iterable[dict[str, Any]], dimensions: Sequence[str] = ("team", "model")) -> list[dict]:
    """The SpendAggregate partials the hot path would emit for ``events`` (per minute, dimension, key, partition)."""
    acc: dict[tuple[datetime, str, str, int], dict[str, Any]] = {}
    for e in events:
        minute = e["occurred_at"].replace(second=0, microsecond=0)
        for dim in dimensions:
            key = {"team": e["team"], "model": f"{e['provider']}/{e['model']}", "agent": e["agent_id"],
                   "project": e["project"]}[dim]
            k = (minute, dim, key, e["source_partition"])
            a = acc.get(k)
            if a is None:
                micros = int((minute - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
                a = acc[k] = {
                    "aggregate_id": f"{micros}:{dim}:{key}:{e['source_partition']}",
                    "window_start": minute, "window_end": minute + timedelta(minutes=1), "dimension": dim,
                    "key": key, "source_partition": e["source_partition"], "cost_usd": Decimal(0),
                    "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
                    "reasoning_tokens": 0, "calls": 0, "errors": 0, "retries": 0, "unpriced_calls": 0,
                    "emitted_at": minute + timedelta(minutes=1, seconds=10),
                }
            a["cost_usd"] += e["cost_usd"]
            for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
                a[t] += e[t]
            a["calls"] += 1
            a["errors"] += e["status"] != "ok"
            a["retries"] += e["attempt"] > 1
            a["unpriced_calls"] += e["pricing_status"] == "unpriced"
    return list(acc.values())


@dataclass
class Expected:
    """Independently computed totals (Python, Decimal) of a set of events."""

    cost: Decimal = Decimal(0)
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    per_hour: dict[datetime, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    per_day: dict[Any, Decimal] = field(default_factory=lambda: defaultdict(Decimal))


def expected_totals(events: Iterable[dict[str, Any]]) -> Expected:
    exp = Expected()
    for e in events:
        exp.cost += e["cost_usd"]
        exp.calls += 1
        exp.input_tokens += e["input_tokens"]
        exp.output_tokens += e["output_tokens"]
        exp.per_hour[e["occurred_at"].replace(minute=0, second=0, microsecond=0)] += e["cost_usd"]
        exp.per_day[e["occurred_at"].date()] += e["cost_usd"]
    return exp


def produce(kafka_config: dict[str, Any], topic: str, payloads: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce ``(key, value)`` pairs (idempotent, acks=all) and wait for every acknowledgement."""
    producer = Producer({**kafka_config, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors: list[str] = []
    n = 0
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, key=key, value=value,
                                 on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    assert producer.flush(30) == 0
    assert not errors, errors
    return n


def encode_events(codec: AvroCodec, events: Sequence[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Every third event in Confluent framing, the rest single-object: the sink must read both."""
    out = []
    for i, e in enumerate(events):
        value = (codec.encode_confluent(e, "PricedUsageEvent", CONFLUENT_ID) if i % 3 == 0
                 else codec.encode(e, "PricedUsageEvent"))
        out.append((e["agent_id"].encode(), value))
    return out


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes (then fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def end_offsets(kafka_config: dict[str, Any], topic: str) -> dict[tuple[str, int], int]:
    c = Consumer({**kafka_config, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        md = c.list_topics(topic, timeout=10)
        return {(topic, p): c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in md.topics[topic].partitions}
    finally:
        c.close()


def committed_offsets(kafka_config: dict[str, Any], group: str, topic: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets as the broker has them (a probe consumer that does not join the group)."""
    c = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


class RunningWorker:
    """A SinkWorker running in a daemon thread; ``errors`` holds what ended it."""

    def __init__(self, worker: Any, dlq_producer: Any = None) -> None:
        self.worker = worker
        self.dlq_producer = dlq_producer
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name=worker.name)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as err:  # noqa: BLE001 - inspected by the test
            self.errors.append(err)

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "sink worker did not stop"
        self.close()

    def close(self) -> None:
        self.worker.close()
        if self.dlq_producer is not None:
            self.dlq_producer.flush(10)
            self.dlq_producer.close()
            self.dlq_producer = None


def start_sink(kind: str, ch_client: Any, database: str, kafka_config: dict[str, Any], topics: TopicNames, *,
               group: str, client: Any = None, batch_rows: int = 500, batch_seconds: float = 0.3,
               consumer_wrapper: Callable[[Any], Any] | None = None) -> RunningWorker:
    from sinks.worker_cli import build_dlq_producer, build_sink_worker

    dlq_producer = build_dlq_producer(kafka_config)
    worker = build_sink_worker(
        kind, client=client if client is not None else ch_client, database=database, kafka_config=kafka_config,
        topic=topics.priced if kind == "ledger" else topics.spend, dlq_topic=topics.dlq,
        dlq_producer=dlq_producer, group_id=group, batch_rows=batch_rows,
        batch_seconds=batch_seconds, consumer_wrapper=consumer_wrapper, codec=make_codec(),
    )
    return RunningWorker(worker, dlq_producer)


def caught_up(kafka_config: dict[str, Any], running: RunningWorker, topic: str) -> Callable[[], bool]:
    """True once the worker has committed the end offset of every non-empty partition."""
    ends = {tp: end for tp, end in end_offsets(kafka_config, topic).items() if end > 0}

    def check() -> bool:
        if running.errors:
            raise AssertionError(f"sink worker died: {running.errors[0]!r}")
        return all(running.worker.stats.committed.get(tp, -1) >= end for tp, end in ends.items())

    return check


def ledger_totals(ch: Any, db: str) -> tuple[Decimal, int, int, int, int]:
    """(cost, rows, distinct ids, input, output) of the ledger, read WITHOUT FINAL: duplicates would show."""
    row = ch.query(f"SELECT sum(cost_usd), count(), uniqExact(source, event_id), sum(input_tokens), "
                   f"sum(output_tokens) FROM {db}.usage_ledger").result_rows[0]
    return Decimal(row[0] or 0), int(row[1]), int(row[2]), int(row[3] or 0), int(row[4] or 0)


def rollup_totals(ch: Any, db: str, table: str) -> tuple[Decimal, int, int, int]:
    row = ch.query(f"SELECT sum(cost_usd), sum(calls), sum(input_tokens), sum(output_tokens) "
                   f"FROM {db}.{table}").result_rows[0]
    return Decimal(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0)


def spend_1m_totals(ch: Any, db: str) -> tuple[Decimal, int, int]:
    row = ch.query(f"SELECT sum(cost_usd), sum(calls), count() FROM {db}.spend_1m FINAL "
                   "WHERE dimension = 'team'").result_rows[0]
    return Decimal(row[0] or 0), int(row[1] or 0), int(row[2])
