"""The usage hot path against in-memory fakes of the consumer and producer (the real broker: tests/integration).

The fakes keep librdkafka's contract where the hot path relies on it: a consumer hands out messages per partition in
offset order and keeps committed offsets with their metadata; a producer with ``delivery.report.only.error`` calls a
message's ``on_delivery`` only when it fails, and ``flush`` returns only when nothing is queued.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from finops.pricing.engine import InvalidUsageError, Pricer
from producers.simulator import SimulationConfig, generate
from schemas.models import Alert
from schemas.wire import AvroCodec
from stream_jobs.dlq import BadInputLimitExceeded, DeadLetter
from stream_jobs.hotpath import (
    HotPath,
    HotPathConfig,
    OutputDeliveryError,
    PricedEncoder,
    SpendEncoder,
    compute_commit_metadata,
    compute_unpriced_alert,
    load_horizon,
)
from stream_jobs.windows import ClosedWindow

pytestmark = pytest.mark.unit

CODEC = AvroCodec()
NOW = datetime(2025, 6, 2, 10, 30, tzinfo=UTC)
START = NOW - timedelta(hours=1)
USAGE = "t.agent.usage.v1"


# ---- fakes ------------------------------------------------------------------------------------------------------
class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        self._p, self._o, self._k, self._v, self._ts = partition, offset, key, value, ts_ms

    def error(self) -> None:
        return None

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def topic(self) -> str:
        return USAGE

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


@dataclass
class FakeLog:
    """A topic's partitions and its group's committed offsets: survives a 'crash' of the consumer object."""

    partitions: dict[int, list[FakeMessage]] = field(default_factory=dict)
    committed: dict[int, tuple[int, str | None]] = field(default_factory=dict)

    def append(self, partition: int, key: bytes | None, value: bytes | None, ts_ms: int = 0) -> int:
        messages = self.partitions.setdefault(partition, [])
        offset = len(messages)
        messages.append(FakeMessage(partition, offset, key, value, ts_ms or int(NOW.timestamp() * 1000)))
        return offset

    def end(self) -> dict[int, int]:
        return {p: len(m) for p, m in self.partitions.items()}


class FakeConsumer:
    def __init__(self, log: FakeLog, chunk: int = 37) -> None:
        self.log = log
        self.chunk = chunk  # messages per partition per consume(), to interleave partitions
        self.positions: dict[int, int] = {}
        self.callbacks: dict[str, Any] = {}
        self.closed = False
        self.stalled = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            offset, meta = self.log.committed.get(tp.partition, (-1001, None))
            if meta is None:
                out.append(TopicPartition(USAGE, tp.partition, offset))
            else:
                out.append(TopicPartition(USAGE, tp.partition, offset, metadata=meta))
        return out

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self.positions:
            tps = [TopicPartition(USAGE, p) for p in sorted(self.log.partitions)]
            for tp in tps:
                self.positions[tp.partition] = max(self.log.committed.get(tp.partition, (0, None))[0], 0)
            self.callbacks["assign"](self, tps)
        batch: list[FakeMessage] = []
        while len(batch) < num_messages:
            progressed = False
            for p in sorted(self.positions):
                pos = self.positions[p]
                take = self.log.partitions[p][pos : pos + min(self.chunk, num_messages - len(batch))]
                if take:
                    progressed = True
                    batch.extend(take)
                    self.positions[p] = pos + len(take)
            if not progressed:
                break
        return batch

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        if self.stalled:
            return (0, len(self.log.partitions[tp.partition]) + 1000)  # a backlog the consumer has not seen yet
        return (0, len(self.log.partitions[tp.partition]))

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        for tp in offsets:
            self.log.committed[tp.partition] = (tp.offset, tp.metadata)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.callbacks["revoke"](self, [TopicPartition(USAGE, p) for p in self.positions])

    def exhausted(self) -> bool:
        return bool(self.positions) and all(self.positions[p] >= len(self.log.partitions[p]) for p in self.positions)


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: Any
    headers: Any
    callback: Any


class FakeProducer:
    """Keeps every produced message (a broker that stores everything); ``fail`` decides which deliveries fail."""

    def __init__(self, fail: Callable[[Produced], bool] | None = None) -> None:
        self.messages: list[Produced] = []
        self.queued: list[Produced] = []
        self.fail = fail or (lambda m: False)
        self.hold = False  # True: flush leaves messages queued (a slow broker)

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, partition: int = -1,
                on_delivery: Any = None, headers: Any = None) -> None:  # fmt: skip
        message = Produced(topic, value, key, headers, on_delivery)
        self.queued.append(message)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        if self.hold:
            return len(self.queued)
        queued, self.queued = self.queued, []
        for message in queued:
            if self.fail(message):
                message.callback(RuntimeError(f"delivery to {message.topic} failed"), None)
            else:
                self.messages.append(message)
        return 0

    def __len__(self) -> int:
        return len(self.queued)

    def of(self, topic: str) -> list[Produced]:
        return [m for m in self.messages if m.topic == topic]


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


def config(**overrides: Any) -> HotPathConfig:
    values: dict[str, Any] = {
        "usage_topic": USAGE, "priced_topic": "t.priced", "dlq_topic": "t.dlq", "spend_topic": "t.spend",
        "alerts_topic": "t.alerts", "batch_size": 100, "commit_interval_s": 0.0, "idle_close_us": 5_000_000,
        "grace_us": 2_000_000, "dlq_ratio_window": 50,
    }  # fmt: skip
    values.update(overrides)
    return HotPathConfig(**values)


# ---- fleets -------------------------------------------------------------------------------------------------------
def fleet(n: int, *, agents: int = 40, seed: int = 3, rate: float = 20.0) -> list[dict[str, Any]]:
    cfg = SimulationConfig.model_validate(
        {"seed": seed, "agents": agents, "teams": 4, "projects": 6, "duration_s": 3000, "rate_per_s": rate,
         "start": START}
    )  # fmt: skip
    return list(itertools.islice(generate(cfg), n))


def partition_of(agent_id: str, partitions: int = 3) -> int:
    return zlib.crc32(agent_id.encode()) % partitions


def fill(log: FakeLog, events: Iterable[dict[str, Any]], partitions: int = 3) -> None:
    for p in range(partitions):
        log.partitions.setdefault(p, [])
    for event in events:
        log.append(partition_of(event["agent_id"], partitions), event["agent_id"].encode(),
                   CODEC.encode(event, "UsageEvent"))  # fmt: skip


def run_to_end(hp: HotPath, consumer: FakeConsumer, clock: Clock, *, close: bool = True) -> None:
    """Process everything, then let the wall clock pass so quiet partitions close their last windows."""
    hp.start()
    while not consumer.exhausted():
        hp.poll_once()
        clock.now += 0.01
    for _ in range(3):  # close_idle needs two looks at a quiet partition, idle_close apart
        clock.now += hp.config.idle_close_us / 1e6 + hp.config.grace_us / 1e6 + 1
        hp.poll_once()
    if close:
        hp.close()


def decoded(messages: Iterable[Produced]) -> list[dict[str, Any]]:
    return [CODEC.decode(m.value)[1] for m in messages if m.value is not None]


def team_totals(spend: list[dict[str, Any]]) -> dict[str, tuple[Decimal, int]]:
    last: dict[str, dict[str, Any]] = {}
    for record in spend:
        last[record["aggregate_id"]] = record  # downstream keeps the last per aggregate_id
    totals: dict[str, tuple[Decimal, int]] = {}
    for record in last.values():
        if record["dimension"] == "team":
            cost, calls = totals.get(record["key"], (Decimal(0), 0))
            totals[record["key"]] = (cost + record["cost_usd"], calls + record["calls"])
    return totals


def expected_team_totals(events: Iterable[dict[str, Any]]) -> dict[str, tuple[Decimal, int]]:
    pricer = Pricer()
    totals: dict[str, tuple[Decimal, int]] = {}
    seen: set[tuple[str, str]] = set()
    for event in events:
        if (event["source"], event["event_id"]) in seen:
            continue
        seen.add((event["source"], event["event_id"]))
        cost, calls = totals.get(event["team"], (Decimal(0), 0))
        totals[event["team"]] = (cost + pricer.price(event).cost_usd, calls + 1)
    return totals


# ---- encoders -------------------------------------------------------------------------------------------------------
def test_priced_encoder_is_byte_identical_to_the_codec() -> None:
    encoder = PricedEncoder(CODEC)
    pricer = Pricer()
    events = fleet(400)
    events[1] = {**events[1], "provider": "openai", "model": "atlas-xl-preview"}  # unpriced
    rng = random.Random(5)
    for i, event in enumerate(events):
        event = dict(event)
        if i % 3 == 0:
            event["reported_cost"] = Decimal(rng.choice(["0.01", "-0.5", "123.456789012345"]))
        raw = CODEC.encode(event, "UsageEvent")
        _, record = CODEC.decode(raw)
        price = pricer.price(record)
        suffix = encoder.batch_suffix(1_748_858_400_000_000 + i, USAGE, i % 3)
        fast = encoder.encode(raw[10:], price, i % 2 == 0, suffix, 10**i % 2**40)
        slow_body = encoder.encode(encoder.usage_body(record), price, i % 2 == 0, suffix, 10**i % 2**40)
        reference = {**record, **price._asdict(), "late": i % 2 == 0,
                     "priced_at": datetime.fromtimestamp(0, UTC) + timedelta(microseconds=1_748_858_400_000_000 + i),
                     "source_topic": USAGE, "source_partition": i % 3, "source_offset": 10**i % 2**40}  # fmt: skip
        assert fast == slow_body == CODEC.encode(reference, "PricedUsageEvent")


def test_spend_encoder_is_byte_identical_to_the_codec() -> None:
    encoder = SpendEncoder(CODEC)
    for cost in (Decimal("0E-12"), Decimal("-1.000000000001"), Decimal("99999999999.123456789012"), Decimal("0.5")):
        w = ClosedWindow("60000000:model:openai/gpt-4o:2", 60_000_000, 120_000_000, "model", "openai/gpt-4o", 2, cost,
                         1, 2**40, 3, 4, 5, 6, 7, 8, 9, 10, 11)  # fmt: skip
        record = {"aggregate_id": w.aggregate_id, "window_start": datetime.fromtimestamp(60, UTC),
                  "window_end": datetime.fromtimestamp(120, UTC), "dimension": "model", "key": "openai/gpt-4o",
                  "source_partition": 2, "cost_usd": cost, "input_tokens": 1, "output_tokens": 2**40,
                  "cache_read_tokens": 3, "cache_write_tokens": 4, "reasoning_tokens": 5, "calls": 6, "errors": 7,
                  "retries": 8, "unpriced_calls": 9, "emitted_at": NOW}  # fmt: skip
        assert encoder.encode(w, int(NOW.timestamp() * 1e6)) == CODEC.encode(record, "SpendAggregate")


def test_commit_metadata_round_trip() -> None:
    assert load_horizon(compute_commit_metadata(1_748_858_400_000_000)) == 1_748_858_400_000_000
    assert load_horizon(None) is None
    assert load_horizon("written by someone else") is None


# ---- one run --------------------------------------------------------------------------------------------------------
def build(log: FakeLog, producer: FakeProducer, clock: Clock, *, pricer: Any = None, **overrides: Any) -> tuple[
    HotPath, FakeConsumer
]:  # fmt: skip
    consumer = FakeConsumer(log)
    hp = HotPath(config(**overrides), pricer or Pricer(), consumer, producer, codec=CODEC, clock=clock)
    return hp, consumer


def test_every_event_is_priced_once_or_dead_lettered_and_windows_match_independent_sums() -> None:
    events = fleet(1500)
    log = FakeLog()
    fill(log, events)
    # 1 % duplicates (re-sent later, same key, so same partition) and malformed events of every kind.
    rng = random.Random(11)
    duplicates = rng.sample(events, 15)
    fill(log, duplicates)
    bad_values: list[tuple[bytes | None, str]] = [
        (b"not avro at all", "decode"),
        (CODEC.encode(events[0], "UsageEvent")[:25], "decode"),
        (None, "decode"),
        (CODEC.encode({**events[1], "cache_read_tokens": events[1]["input_tokens"] + 1}, "UsageEvent"), "validate"),
        (CODEC.encode({**events[2], "event_id": "not-a-uuid"}, "UsageEvent"), "validate"),
        (CODEC.encode({**events[3], "occurred_at": NOW + timedelta(hours=3)}, "UsageEvent"), "validate"),
        (CODEC.encode(compute_unpriced_alert("a", "b", 0, "x", team=None, project=None, agent_id=None,
                                             first_event_id="e", occurred_at_us=0), "Alert"), "decode"),
    ]  # fmt: skip
    malformed: dict[tuple[int, int], str] = {}
    for value, stage in bad_values:
        p = rng.randrange(3)
        malformed[(p, log.append(p, b"bad-key", value))] = stage
    fill(log, events[1500:])
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)

    priced = decoded(producer.of("t.priced"))
    assert len(priced) == len(events) + len(duplicates)
    by_id: dict[str, dict[str, Any]] = {}
    for record in priced:
        by_id.setdefault(record["event_id"], record)
    assert set(by_id) == {e["event_id"] for e in events}
    pricer = Pricer()
    for event in events:
        assert by_id[event["event_id"]]["cost_usd"] == pricer.price(event).cost_usd
        assert by_id[event["event_id"]]["source_topic"] == USAGE

    letters = [DeadLetter.from_message(m.headers, m.key, m.value) for m in producer.of("t.dlq")]
    assert {(d.partition, d.offset): d.stage for d in letters} == malformed
    assert all(d.reason and d.topic == USAGE and d.key == b"bad-key" for d in letters)

    assert team_totals(decoded(producer.of("t.spend"))) == expected_team_totals(events)
    assert log.committed and {p: o for p, (o, _) in log.committed.items()} == log.end()

    stats = hp.stats()
    assert (stats.consumed, stats.duplicates, stats.dead_lettered) == (
        len(events) + len(duplicates) + len(bad_values), len(duplicates), len(bad_values)
    )  # fmt: skip
    assert stats.dlq_by_stage == {"decode": 4, "validate": 3, "price": 0}


def test_duplicates_reach_the_ledger_but_not_the_windows() -> None:
    events = fleet(300)
    log = FakeLog()
    fill(log, events + events[:50])
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)
    assert len(producer.of("t.priced")) == 350
    assert team_totals(decoded(producer.of("t.spend"))) == expected_team_totals(events)
    assert hp.stats().duplicates == 50


def test_late_event_is_priced_flagged_late_and_left_out_of_windows() -> None:
    events = fleet(400)
    last = events[-1]["occurred_at"]
    late = {**events[0], "event_id": "00000000-0000-4000-8000-000000000001", "agent_id": events[-1]["agent_id"],
            "occurred_at": last - timedelta(minutes=10)}  # fmt: skip
    log = FakeLog()
    fill(log, [*events, late])
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)
    flagged = [r for r in decoded(producer.of("t.priced")) if r["late"]]
    assert [r["event_id"] for r in flagged] == [late["event_id"]]
    assert team_totals(decoded(producer.of("t.spend"))) == expected_team_totals(events)
    assert hp.stats().late == 1


def test_unknown_model_is_unpriced_counted_and_alerted_once_per_model_team_and_hour() -> None:
    events = fleet(200)
    base = events[-1]["occurred_at"]
    unknown = [
        {**events[i], "event_id": f"00000000-0000-4000-8000-{i:012d}", "provider": "openai",
         "model": "atlas-xl-preview", "occurred_at": base + timedelta(seconds=i)}
        for i in range(3)
    ] + [{**events[5], "event_id": "00000000-0000-4000-8000-000000000099", "provider": "openai",
          "model": "atlas-xl-preview", "occurred_at": base + timedelta(hours=1)}]  # fmt: skip
    log = FakeLog()
    fill(log, [*events, *unknown])
    producer = FakeProducer()
    clock = Clock(base + timedelta(hours=1, minutes=1))
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)

    alerts = [Alert.from_avro_dict(a) for a in decoded(producer.of("t.alerts"))]
    hours = [(base.replace(minute=0, second=0, microsecond=0) + timedelta(hours=h)).strftime("%Y-%m-%dT%H")
             for h in (0, 1)]  # fmt: skip
    # once per team and hour (issue 14 item 5: each team whose agents call the model sees its alert)
    first, later = unknown[:3], unknown[3:]
    expected = {(e["team"], hours[0]) for e in first} | {(e["team"], hours[1]) for e in later}
    assert len(expected) > 2  # the fixture's calls come from more than one team
    assert sorted(a.dedup_key for a in alerts) == sorted(
        f"unpriced_model:openai:atlas-xl-preview:{t}:{h}" for t, h in expected)
    assert {(a.team, a.dedup_key.rsplit(":", 1)[1]) for a in alerts} == expected
    assert all(a.kind == "unpriced_model" and a.model == "openai/atlas-xl-preview" for a in alerts)
    assert all("atlas-xl-preview" in a.summary and "unpriced" in a.summary for a in alerts)
    unpriced = [r for r in decoded(producer.of("t.priced")) if r["pricing_status"] == "unpriced"]
    assert len(unpriced) == 4 and all(r["cost_usd"] == 0 and r["unpriced_reason"] for r in unpriced)
    spend = decoded(producer.of("t.spend"))
    assert sum(r["unpriced_calls"] for r in spend if r["dimension"] == "team") == 4
    assert hp.stats().unpriced_models == {"openai/atlas-xl-preview": 4}


def test_reported_cost_beyond_tolerance_is_kept_and_flagged() -> None:
    events = fleet(50)
    pricer = Pricer()
    off = {**events[0], "reported_cost": pricer.price(events[0]).cost_usd + Decimal("0.5")}
    close = {**events[1], "reported_cost": pricer.price(events[1]).cost_usd}
    log = FakeLog()
    fill(log, [off, close, *events[2:]])
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)
    by_id = {r["event_id"]: r for r in decoded(producer.of("t.priced"))}
    assert by_id[off["event_id"]]["cost_mismatch"] is True
    assert by_id[off["event_id"]]["reported_cost"] == off["reported_cost"]
    assert by_id[off["event_id"]]["cost_delta_usd"] == Decimal("0.5")
    assert by_id[close["event_id"]]["cost_mismatch"] is False
    assert hp.stats().cost_mismatches == 1


def test_confluent_framed_input_is_priced_like_single_object() -> None:
    events = fleet(30)
    schema_id = 42
    from schemas.loader import load_schema

    codec = AvroCodec(resolver={schema_id: load_schema("UsageEvent")}.__getitem__)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events:
        log.append(0, event["agent_id"].encode(), codec.encode_confluent(event, "UsageEvent", schema_id))
    producer = FakeProducer()
    clock = Clock(NOW)
    consumer = FakeConsumer(log)
    hp = HotPath(config(), Pricer(), consumer, producer, codec=codec, clock=clock)
    run_to_end(hp, consumer, clock)
    priced = decoded(producer.of("t.priced"))
    assert [r["event_id"] for r in priced] == [e["event_id"] for e in events]
    assert not producer.of("t.dlq")


# ---- failures: nothing is skipped, nothing unsafe is committed -------------------------------------------------------
def test_failed_output_stops_the_job_and_the_commit_stays_below_it() -> None:
    events = fleet(600)
    log = FakeLog()
    fill(log, events)
    failed_offsets: list[tuple[int, int]] = []

    def fail(message: Produced) -> bool:
        if message.topic == "t.priced" and not failed_offsets:
            record = CODEC.decode(message.value)[1]  # type: ignore[arg-type]
            if record["source_offset"] >= 100:
                failed_offsets.append((record["source_partition"], record["source_offset"]))
                return True
        return False

    producer = FakeProducer(fail)
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    with pytest.raises(OutputDeliveryError):
        run_to_end(hp, consumer, clock)
    partition, offset = failed_offsets[0]
    assert log.committed.get(partition, (0, None))[0] <= offset


def test_commit_waits_for_the_flush_barrier() -> None:
    events = fleet(300)
    log = FakeLog()
    fill(log, events)
    producer = FakeProducer()
    producer.hold = True  # the broker acknowledges nothing
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, flush_timeout_s=0.0)
    hp.start()
    while not consumer.exhausted():
        hp.poll_once()
    assert log.committed == {} or all(o == 0 for o, _ in log.committed.values())
    producer.hold = False
    clock.now += 100
    for _ in range(3):
        clock.now += 100
        hp.poll_once()
    assert {p: o for p, (o, _) in log.committed.items()} == log.end()


def test_bad_input_limit_stops_loudly_instead_of_dead_lettering_a_deploy() -> None:
    events = fleet(100)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events[:40]:
        log.append(0, b"k", CODEC.encode(event, "UsageEvent"))
    for i in range(100):
        log.append(0, b"k", b"garbage from a broken deploy %d" % i)
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, dlq_max_ratio=0.5, dlq_ratio_window=50)
    with pytest.raises(BadInputLimitExceeded) as raised:
        run_to_end(hp, consumer, clock)
    assert raised.value.partition == 0 and "garbage" not in str(raised.value) or "offset" in str(raised.value)
    # Nothing after the good events may be committed: a fixed deploy re-judges the bad ones.
    assert log.committed.get(0, (0, None))[0] <= 40


def test_unexpected_error_propagates_and_nothing_past_it_is_committed() -> None:
    events = fleet(300)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events:
        log.append(0, b"k", CODEC.encode(event, "UsageEvent"))
    real = Pricer()
    calls = itertools.count()

    class BrokenPricer:
        def price(self, usage: Any) -> Any:
            if next(calls) == 250:
                raise RuntimeError("a bug in pricing")
            return real.price(usage)

    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, pricer=BrokenPricer())
    with pytest.raises(RuntimeError, match="a bug in pricing"):
        run_to_end(hp, consumer, clock)
    assert log.committed.get(0, (0, None))[0] <= 250


def test_pricing_refusal_goes_to_the_dlq_with_stage_price() -> None:
    events = fleet(20)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events:
        log.append(0, b"k", CODEC.encode(event, "UsageEvent"))
    real = Pricer()

    class RefusingPricer:
        def price(self, usage: Any) -> Any:
            if usage["event_id"] == events[7]["event_id"]:
                raise InvalidUsageError("usage parts exceed their whole")
            return real.price(usage)

    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, pricer=RefusingPricer())
    run_to_end(hp, consumer, clock)
    [letter] = [DeadLetter.from_message(m.headers, m.key, m.value) for m in producer.of("t.dlq")]
    assert (letter.stage, letter.offset, letter.error) == ("price", 7, "InvalidUsageError")
    assert len(producer.of("t.priced")) == 19


# ---- rebalance and crash: the replay recomputes the same outputs ----------------------------------------------------
def test_revoke_commits_what_is_safe_and_drops_state() -> None:
    events = fleet(500)
    log = FakeLog()
    fill(log, events)
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    hp.start()
    for _ in range(3):
        hp.poll_once()
    assert hp.stats().assigned == (0, 1, 2)
    consumer.callbacks["revoke"](consumer, [TopicPartition(USAGE, 1)])
    assert hp.stats().assigned == (0, 2)
    assert 1 in log.committed and load_horizon(log.committed[1][1]) is not None


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_a_crash_anywhere_replays_to_the_same_outputs(seed: int) -> None:
    """Run A goes through; run B dies (no close, no revoke) after a random number of batches with a random share of
    its outputs acknowledged, and a new instance resumes from the committed offsets and their horizons. After the
    downstream dedupe (priced by event_id, spend by aggregate_id keeping the last) the outputs are the same."""
    rng = random.Random(seed)
    events = fleet(1200, seed=seed, rate=2.0)  # ~10 one-minute windows: commits move while the stream runs
    dups = rng.sample(events[:800], 12)  # re-sends of events already sent (a "duplicate from the future" would
    # move the watermark and make the events between late, which is the window rule, not a replay question)

    def fresh_log() -> FakeLog:
        log = FakeLog()
        fill(log, events[:800])
        fill(log, dups)
        fill(log, events[800:])
        return log

    log_a, producer_a, clock_a = fresh_log(), FakeProducer(), Clock(NOW)
    hp_a, consumer_a = build(log_a, producer_a, clock_a)
    run_to_end(hp_a, consumer_a, clock_a)

    log_b, producer_b, clock_b = fresh_log(), FakeProducer(), Clock(NOW)
    hp_b, consumer_b = build(log_b, producer_b, clock_b)
    hp_b.start()
    for _ in range(rng.randrange(3, 11)):
        hp_b.poll_once()
        clock_b.now += 0.01
    # kill -9: whatever was still queued may or may not have reached the broker.
    producer_b.messages.extend(m for m in producer_b.queued if rng.random() < 0.5)
    producer_b.queued.clear()
    assert any(o > 0 for o, _ in log_b.committed.values()), "the crash should come after some commits"
    hp_b2, consumer_b2 = build(log_b, producer_b, clock_b)
    run_to_end(hp_b2, consumer_b2, clock_b)

    spend_a, spend_b = decoded(producer_a.of("t.spend")), decoded(producer_b.of("t.spend"))
    last_a = {r["aggregate_id"]: _without_emitted(r) for r in spend_a}
    last_b = {r["aggregate_id"]: _without_emitted(r) for r in spend_b}
    assert last_b == last_a
    # Every re-emission of an id carried the same sums (keeping the first would do as well as keeping the last).
    for record in spend_b:
        assert _without_emitted(record) == last_b[record["aggregate_id"]]
    assert team_totals(spend_b) == expected_team_totals(events)
    priced_b = {r["event_id"]: r["cost_usd"] for r in decoded(producer_b.of("t.priced"))}
    assert priced_b == {r["event_id"]: r["cost_usd"] for r in decoded(producer_a.of("t.priced"))}


def _without_emitted(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "emitted_at"}


def test_stats_are_a_json_friendly_snapshot() -> None:
    events = fleet(200)
    log = FakeLog()
    fill(log, events)
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock, close=False)
    snapshot = hp.stats()
    as_dict = snapshot.as_dict()
    assert as_dict["consumed"] == 200 and as_dict["cost_usd"] == str(snapshot.cost_usd)
    assert snapshot.windows_emitted > 0 and snapshot.open_windows == 0
    counters = snapshot.last_counters
    assert set(counters) <= {0, 1, 2} and counters
    for partition, counter in counters.items():
        assert counter["counter_id"] == f"usage-hotpath:{USAGE}:{partition}:{counter['window_start_us']}"
        assert counter["events"] >= counter["priced_events"] > 0


def _iter_batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def test_windows_close_by_the_wall_clock_only_when_the_partition_is_caught_up() -> None:
    events = fleet(300)
    log = FakeLog()
    fill(log, events)
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock)
    consumer.stalled = True  # the broker says more is waiting: a backlog is being read
    hp.start()
    while not consumer.exhausted():
        hp.poll_once()
    for _ in range(3):
        clock.now += 3600
        hp.poll_once()
    assert hp.stats().open_windows > 0  # an hour of wall clock, and still no idle close while behind
    consumer.stalled = False
    for _ in range(3):
        clock.now += 10
        hp.poll_once()
    assert hp.stats().open_windows == 0
    assert team_totals(decoded(producer.of("t.spend"))) == expected_team_totals(events)


def test_an_error_on_the_first_event_after_everything_closed_is_not_committed_past() -> None:
    """The sharp case: every earlier window is closed, emitted and acknowledged, so no open window holds the commit
    back; only the failure mark keeps the commit at the event that raised."""
    events = fleet(200)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events:
        log.append(0, b"k", CODEC.encode(event, "UsageEvent"))
    real = Pricer()
    poison = {**events[-1], "event_id": "00000000-0000-4000-8000-00000000dead",
              "occurred_at": events[-1]["occurred_at"] + timedelta(minutes=5)}  # fmt: skip

    class PoisonedPricer:
        def price(self, usage: Any) -> Any:
            if usage["event_id"] == poison["event_id"]:
                raise RuntimeError("a bug met by one event")
            return real.price(usage)

    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, pricer=PoisonedPricer())
    run_to_end(hp, consumer, clock, close=False)
    assert log.committed[0][0] == 200 and hp.stats().open_windows == 0
    poison_offset = log.append(0, b"k", CODEC.encode(poison, "UsageEvent"))
    with pytest.raises(RuntimeError, match="a bug met by one event"):
        hp.run()
    assert log.committed[0][0] == poison_offset  # the restart reads the poison event again


def test_bad_input_limit_leaves_the_tripping_batch_uncommitted() -> None:
    events = fleet(120)
    log = FakeLog()
    log.partitions = {0: []}
    for event in events:
        log.append(0, b"k", CODEC.encode(event, "UsageEvent"))
    producer = FakeProducer()
    clock = Clock(NOW)
    hp, consumer = build(log, producer, clock, dlq_ratio_window=20, batch_size=30)
    run_to_end(hp, consumer, clock, close=False)
    assert log.committed[0][0] == 120
    for i in range(30):
        log.append(0, b"k", b"broken deploy %d" % i)
    with pytest.raises(BadInputLimitExceeded):
        hp.run()
    assert log.committed[0][0] == 120


def test_unpriced_model_with_a_reported_cost_moves_windows_and_a_budget() -> None:
    # Issue 15: a call whose cost is known from its report is never unpriced (cost_basis reported_if_unpriced,
    # the default): the report is cost_usd in the ledger, the windows and the budget counters.
    from schemas.models import BudgetPolicy
    from stream_jobs.budgets import BudgetEngine
    from stream_jobs.detection import build_spend_event

    events = fleet(40)
    base = events[-1]["occurred_at"]
    reported = [
        {**events[i], "event_id": f"00000000-0000-4000-8000-{i:012d}", "provider": "openai", "team": "solo",
         "model": "atlas-xl-preview", "occurred_at": base + timedelta(seconds=i), "reported_cost": Decimal("0.4")}
        for i in range(3)
    ]  # fmt: skip
    log = FakeLog()
    fill(log, [*events, *reported])
    producer = FakeProducer()
    clock = Clock(base + timedelta(minutes=1))
    hp, consumer = build(log, producer, clock)
    run_to_end(hp, consumer, clock)

    priced = {r["event_id"]: r for r in decoded(producer.of("t.priced"))}
    for event in reported:
        row = priced[event["event_id"]]
        assert row["pricing_status"] == "priced" and row["price_source"] == "reported"
        assert row["cost_usd"] == Decimal("0.4") and row["computed_cost_usd"] is None
        assert row["cost_basis"] == "reported_if_unpriced"
    assert not decoded(producer.of("t.alerts"))  # nothing unpriced to alert about
    assert team_totals(decoded(producer.of("t.spend")))["solo"] == (Decimal("1.2"), 3)

    engine = BudgetEngine()
    policy = BudgetPolicy.model_validate({
        "policy_id": "solo-day", "version": 1, "scope_type": "team", "scope_value": "solo", "period": "day",
        "limit_usd": Decimal(1), "mode": "hard", "thresholds": [{"percent": 100, "actions": ["notify"]}],
        "updated_at": base})  # fmt: skip
    engine.set_policy(policy, 0)
    alerts: list[dict[str, Any]] = []
    for offset, event in enumerate(reported):
        alerts += engine.apply(build_spend_event(priced[event["event_id"]]), 0, offset)
    assert sum((c.spent for c in engine.counters.values()), Decimal(0)) == Decimal("1.2")
    assert any(a["kind"] == "budget_threshold" for a in alerts)
