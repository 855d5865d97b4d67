"""Helpers for the hot path's integration tests, and the child process the kill -9 test runs and kills.

As a program (``python -m tests.integration.hotpath_child --bootstrap B --prefix P --group G``) it runs the hot path
(``build_hot_path`` from settings, exactly as the worker does) until every input partition is committed up to its
end, then closes and exits 0. ``--pause-ms`` throttles it between batches so the parent can kill it mid-stream.

The helpers write a fleet to a JSONL file (the "input file"), publish it with duplicates and malformed events,
read topics back, and compute the expected sums from the file alone (genai-prices' ``calc_price``, not our Pricer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from producers.replay import event_to_json
from producers.simulator import SimulationConfig, generate
from schemas.wire import AvroCodec

Q12 = Decimal("1e-12")


# ---- the input file ---------------------------------------------------------------------------------------------
def write_fleet(path: Path, *, events: int, agents: int, seed: int, rate: float) -> None:
    """Simulate a fleet whose event times end a few minutes before now (recent: the deduper judges them)."""
    span = events / rate
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=span + 600)
    config = SimulationConfig.model_validate(
        {"seed": seed, "agents": agents, "teams": 6, "projects": 12, "duration_s": span * 1.5 + 60,
         "rate_per_s": rate, "start": start}
    )  # fmt: skip
    with path.open("w") as out:
        for event in itertools.islice(generate(config), events):
            out.write(event_to_json(event) + "\n")


def load_fleet(path: Path) -> list[dict[str, Any]]:
    """The events of the input file as UsageEvent field dicts (times as datetimes, costs as Decimals)."""
    events = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        event["occurred_at"] = datetime.fromisoformat(event["occurred_at"])
        if event.get("reported_cost") is not None:
            event["reported_cost"] = Decimal(event["reported_cost"])
        events.append(event)
    return events


def independent_team_totals(events: Iterable[dict[str, Any]]) -> dict[str, tuple[Decimal, int]]:
    """Cost and calls per team of the distinct events, priced by genai-prices' reference ``calc_price``."""
    from genai_prices import Usage, calc_price

    from finops.pricing.engine import to_genai_usage

    totals: dict[str, tuple[Decimal, int]] = {}
    seen: set[str] = set()
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        price = calc_price(
            Usage(**to_genai_usage(event)),
            event["model"],
            provider_id=event["provider"],
            genai_request_timestamp=event["occurred_at"],
        )
        cost, calls = totals.get(event["team"], (Decimal(0), 0))
        totals[event["team"]] = (cost + price.total_price.quantize(Q12, ROUND_HALF_EVEN), calls + 1)
    return totals


# ---- publishing with duplicates and malformed events ---------------------------------------------------------------
@dataclass
class Published:
    """What went onto the usage topic."""

    valid_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    malformed: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset) -> kind
    total: int = 0


def _malformed(kind: str, event: dict[str, Any], codec: AvroCodec) -> bytes:
    if kind == "garbage":
        return b"this is not an avro event"
    if kind == "truncated":
        return codec.encode(event, "UsageEvent")[:40]
    if kind == "cache_over_input":
        return codec.encode({**event, "cache_read_tokens": event["input_tokens"] + 7}, "UsageEvent")
    if kind == "bad_event_id":
        return codec.encode({**event, "event_id": "not-a-uuid"}, "UsageEvent")
    if kind == "negative_tokens":
        return codec.encode({**event, "output_tokens": -3}, "UsageEvent")
    raise ValueError(kind)


MALFORMED_KINDS = ("garbage", "truncated", "cache_over_input", "bad_event_id", "negative_tokens")


def publish_fleet(
    bootstrap: str, topic: str, events: list[dict[str, Any]], *, dup_share: float, bad_share: float, seed: int
) -> Published:
    """Produce the events (key ``agent_id``) plus ``dup_share`` re-sends of earlier events and ``bad_share``
    malformed events; record where each malformed one landed (from the delivery reports)."""
    rng = random.Random(seed)
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    published = Published()
    pending: list[tuple[bytes, bytes]] = []  # (key, value) of re-sends waiting for their turn
    malformed_reports: list[tuple[str, Any]] = []

    def on_malformed(kind: str) -> Any:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            malformed_reports.append((kind, (msg.partition(), msg.offset())))

        return report

    for i, event in enumerate(events):
        key = event["agent_id"].encode()
        value = codec.encode(event, "UsageEvent")
        producer.produce(topic, value, key)
        published.valid_ids.add(event["event_id"])
        if rng.random() < dup_share:
            pending.append((key, value))
        if pending and rng.random() < 0.3:
            dup_key, dup_value = pending.pop(0)  # a re-send of an event already sent (same key: same partition)
            producer.produce(topic, dup_value, dup_key)
            published.duplicates += 1
        if rng.random() < bad_share:
            kind = rng.choice(MALFORMED_KINDS)
            producer.produce(topic, _malformed(kind, event, codec), key, on_delivery=on_malformed(kind))
        if i % 1000 == 0:
            producer.poll(0)
    for dup_key, dup_value in pending:
        producer.produce(topic, dup_value, dup_key)
        published.duplicates += 1
    assert producer.flush(60) == 0
    published.malformed = {where: kind for kind, where in malformed_reports}
    published.total = len(events) + published.duplicates + len(published.malformed)
    return published


# ---- reading back -------------------------------------------------------------------------------------------------
def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in metadata.topics[topic].partitions
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, topic: str, group: str, timeout: float = 30.0) -> dict[int, int]:
    """The group's committed offsets (``-1001`` when none), read without joining the group. Retries while the
    broker answers with a retriable error (a fresh broker's group coordinator is not ready at once)."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}  # fmt: skip
    deadline = time.monotonic() + timeout
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        while True:
            try:
                committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
                return {tp.partition: tp.offset for tp in committed}
            except KafkaException as err:
                error = err.args[0]
                if not (error.retriable() or error.code() in transient) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the coordinator is loading: ask again
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic`` up to its current end offsets (polls with a deadline)."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[Any] = []
    positions = {p: 0 for p in ends}
    deadline = time.monotonic() + timeout
    try:
        while any(positions[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic}: still at {positions}, end {ends}")
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                out.append(msg)
                positions[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
    finally:
        consumer.close()
    return out


def team_totals_from_spend(messages: Iterable[Any]) -> dict[str, tuple[Decimal, int]]:
    """Window totals per team after the downstream dedupe (the last message per aggregate_id)."""
    codec = AvroCodec()
    last: dict[str, dict[str, Any]] = {}
    for msg in messages:
        record = codec.decode(msg.value())[1]
        last[record["aggregate_id"]] = record
    totals: dict[str, tuple[Decimal, int]] = {}
    for record in last.values():
        if record["dimension"] == "team":
            cost, calls = totals.get(record["key"], (Decimal(0), 0))
            totals[record["key"]] = (cost + record["cost_usd"], calls + record["calls"])
    return totals


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


_DATA_DIR: tempfile.TemporaryDirectory[str] | None = None


def isolated_data_dir() -> str:
    """A data directory of this process's own (made on first use, removed at exit), for settings built from an
    explicit environment (``load_settings`` given a dict replaces the whole environment). Without one, FINOPS_DATA_DIR
    falls back to the checkout's ``./.finops``, where ``finops prices update`` may have installed a newer catalogue
    than the bundled one these tests compute their expected costs with."""
    global _DATA_DIR
    if _DATA_DIR is None:
        _DATA_DIR = tempfile.TemporaryDirectory(prefix="finops-test-data-")
    return _DATA_DIR.name


# ---- the child ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--idle-close-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="child %(levelname)s %(name)s: %(message)s")

    from finops.settings import load_settings
    from stream_jobs.hotpath import build_hot_path

    settings = load_settings(
        {"FINOPS_KAFKA_BOOTSTRAP": args.bootstrap, "FINOPS_KAFKA_TOPIC_PREFIX": args.prefix,
         "FINOPS_STREAM_GROUP_ID": args.group, "FINOPS_DATA_DIR": isolated_data_dir()}
    )  # fmt: skip
    hot = build_hot_path(
        settings,
        overrides={"batch_size": args.batch_size, "idle_close_us": int(args.idle_close_s * 1e6),
                   "commit_interval_s": 0.2, "grace_us": 2_000_000},
    )  # fmt: skip
    usage = hot.config.usage_topic
    ends = end_offsets(args.bootstrap, usage)
    last_check = 0.0

    def done() -> bool:
        nonlocal last_check
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)  # throttle (so the parent can kill us mid-stream), not a wait
        now = time.monotonic()
        if now - last_check < 0.2:
            return False
        last_check = now
        committed = hot.stats().committed
        return len(committed) == len(ends) and all(committed.get(p) == end for p, end in ends.items())

    hot.run(until=done)
    print(json.dumps(hot.stats().as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
