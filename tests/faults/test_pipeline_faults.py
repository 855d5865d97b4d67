"""Faults on the usage path: producer -> broker -> hot path -> ledger sink -> ClickHouse.

Each test injects one fault while a fleet's events flow, then reconciles ClickHouse against the input (every valid
event exactly once by (source, event_id), summed cost equal to an independently computed Decimal total) and the DLQ
against the bad inputs (each at its partition and offset, with a reason).
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from finops.stack import KafkaStack
from finops.topics import TopicNames, ensure_topics
from producers.producer import UsageProducer
from schemas.models import MAX_TAG_LENGTH, MAX_TAGS
from schemas.wire import AvroCodec
from finops.benches.sink import _OutageClient
from tests.faults.pipeline import Pipeline, fleet, paced, reconcile, report
from tests.integration.hotpath_child import committed_offsets, publish_fleet
from tests.integration.test_hotpath import _child
from tests.integration.test_sink_support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

Record = Callable[[str, object], None]


class _CountingOutage(_OutageClient):
    """The sink bench's outage client, counting the inserts it failed (the fault's length is a count of them)."""

    failures = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage.is_set():
            self.failures += 1
        return super().insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage.is_set():
            self.failures += 1
        return super().raw_insert(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage.is_set():
            self.failures += 1
        return super().command(*args, **kwargs)


def test_broker_stopped_and_restarted_mid_stream(own_kafka: Callable[[], KafkaStack], ch_client: Any,
                                                 ch_database: str, tmp_path: Path, record_property: Record) -> None:
    stack = own_kafka()
    stack.up()
    config = {"bootstrap.servers": stack.bootstrap}
    topics = TopicNames(f"f{uuid.uuid4().hex[:8]}.")
    ensure_topics(config, prefix=topics.prefix, usage_partitions=3)
    events = fleet(tmp_path, 3000, seed=31)
    pipeline = Pipeline(config, topics, ch_client, ch_database).start()
    producer = UsageProducer(stack.bootstrap, topics.usage, "fault-broker", tmp_path / "spool",
                             register_atexit=False, probe_interval=0.5)
    errors: list[BaseException] = []

    def emit_all() -> None:
        try:
            for event in paced(events, 250):
                producer.emit(event)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    emitter = threading.Thread(target=emit_all)
    emitter.start()
    try:
        wait_for(lambda: producer.stats().delivered >= 600, 60, "events delivered before the outage")
        pipeline.wait_ledger(300)
        before = producer.stats().delivered
        stack.down(timeout=30)
        wait_for(lambda: producer.stats().spooled >= 200, 60, "events spooled while the broker is down")
        stack.up()
        emitter.join(120)
        assert not errors, errors
        assert producer.flush(120) == 0
        stats = producer.stats()
        pipeline.wait_ledger(len(events), timeout=240)
    finally:
        emitter.join(5)
        producer.close()
        pipeline.stop()
    result = reconcile(ch_client, ch_database, events, bootstrap=stack.bootstrap, topics=topics)
    report(record_property,
           f"broker stopped after {before} deliveries; {stats.spooled} events spooled "
           f"while it was down, then restarted (spool drained {stats.drained}); hot path and sink kept running",
           result.line())


def test_stream_worker_sigkilled_and_restarted(kafka_bootstrap: str, kafka_config: dict[str, Any],
                                              topics: TopicNames, ch_client: Any, ch_database: str,
                                              tmp_path: Path, record_property: Record) -> None:
    events = fleet(tmp_path, 6000, seed=32)
    published = publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.01, bad_share=0.005, seed=32)
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database)
    pipeline.start_sink()
    group = f"fault-kill-{uuid.uuid4().hex[:8]}"
    child = _child(kafka_bootstrap, topics, group, pause_ms=25)
    try:
        def some_committed() -> bool:
            assert child.poll() is None, f"the worker ended before the kill: {child.communicate()[1][-2000:]}"
            return sum(max(o, 0) for o in committed_offsets(kafka_bootstrap, topics.usage, group).values()) > 0

        wait_for(some_committed, 120, "the worker's first commits", interval=0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        at_kill = sum(max(o, 0) for o in committed_offsets(kafka_bootstrap, topics.usage, group).values())
        restarted = _child(kafka_bootstrap, topics, group, pause_ms=0)
        _, err = restarted.communicate(timeout=240)
        assert restarted.returncode == 0, err[-3000:]
        pipeline.wait_ledger(len(published.valid_ids))
    finally:
        for proc in (child,):
            if proc.poll() is None:
                proc.kill()
        pipeline.stop()
    assert child.returncode == -signal.SIGKILL
    result = reconcile(ch_client, ch_database, events, bootstrap=kafka_bootstrap, topics=topics,
                       bad=published.malformed)
    report(record_property,
           f"stream worker SIGKILLed with {at_kill} of {published.total} input offsets committed, then restarted; "
           f"input had {published.duplicates} re-sent duplicates and {len(published.malformed)} malformed events",
           result.line())


def test_clickhouse_failing_for_a_while(kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames,
                                       ch_client: Any, ch_database: str, tmp_path: Path,
                                       record_property: Record) -> None:
    events = fleet(tmp_path, 4000, seed=33)
    flaky = _CountingOutage(ch_client)
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database, sink_client=flaky).start()
    try:
        publish_fleet(kafka_bootstrap, topics.usage, events[:1000], dup_share=0.01, bad_share=0.0, seed=33)
        pipeline.wait_ledger(500)
        flaky.outage.set()  # every insert fails from now on
        publish_fleet(kafka_bootstrap, topics.usage, events[1000:], dup_share=0.01, bad_share=0.0, seed=34)
        # The outage lasts until the sink has failed 4 inserts with data waiting (a condition, not a clock; the
        # writer's backoff grows, so more failures would only make the test wait for its next attempt).
        wait_for(lambda: flaky.failures >= 4, 60, "the sink retrying against the outage", interval=0.05)
        rows_during = pipeline.ledger_rows()
        flaky.outage.clear()
        pipeline.wait_ledger(len(events))
        retries = flaky.failures
    finally:
        flaky.outage.clear()
        pipeline.stop()
    result = reconcile(ch_client, ch_database, events, bootstrap=kafka_bootstrap, topics=topics)
    report(record_property,
           f"ClickHouse inserts failing with {3000} events in flight ({rows_during} rows stored when it failed, "
           f"{retries} failed insert attempts) then recovering; the input carries re-sent duplicates",
           result.line())


def _poison(codec: AvroCodec, good: dict[str, Any]) -> dict[str, bytes]:
    """One value per kind of poison, each built from a valid event so only the poison is wrong."""
    now = datetime.now(UTC)
    body = codec.encode(good, "UsageEvent")
    huge_tags = {f"k{i}": "v" for i in range(MAX_TAGS + 1)}
    return {
        "bad bytes": b"\x7f\xff not avro at all \x13\x37",
        "empty value": b"",
        "truncated avro": body[:25],
        "unknown schema fingerprint": b"\xc3\x01" + bytes(8) + body[10:],
        "confluent framing, no registry": b"\x00\x00\x00\x00\x07" + body[10:],
        "too many tags": codec.encode({**good, "event_id": str(uuid.uuid4()), "tags": huge_tags}, "UsageEvent"),
        "huge tag value": codec.encode({**good, "event_id": str(uuid.uuid4()),
                                        "tags": {"blob": "x" * (MAX_TAG_LENGTH * 400)}}, "UsageEvent"),
        "future timestamp": codec.encode({**good, "event_id": str(uuid.uuid4()),
                                          "occurred_at": now + timedelta(days=1)}, "UsageEvent"),
        "cache tokens over input": codec.encode({**good, "event_id": str(uuid.uuid4()),
                                                 "cache_read_tokens": good["input_tokens"] + 1}, "UsageEvent"),
    }


def test_poison_events_go_to_the_dlq_with_reasons(kafka_bootstrap: str, kafka_config: dict[str, Any],
                                                  topics: TopicNames, ch_client: Any, ch_database: str,
                                                  tmp_path: Path, record_property: Record) -> None:
    events = fleet(tmp_path, 2000, seed=35)
    codec = AvroCodec()
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    bad: dict[tuple[int, int], str] = {}
    try:
        published = publish_fleet(kafka_bootstrap, topics.usage, events[:1000], dup_share=0.0, bad_share=0.0,
                                  seed=35)
        producer = Producer({**kafka_config, "enable.idempotence": True})
        for kind, value in _poison(codec, events[0]).items():
            def on_delivery(err: Any, msg: Any, kind: str = kind) -> None:
                assert err is None, err
                bad[(msg.partition(), msg.offset())] = kind
            producer.produce(topics.usage, value, events[0]["agent_id"].encode(), on_delivery=on_delivery)
        assert producer.flush(30) == 0
        publish_fleet(kafka_bootstrap, topics.usage, events[1000:], dup_share=0.0, bad_share=0.0, seed=36)
        pipeline.wait_ledger(len(events))
        assert pipeline.hot is not None
        wait_for(lambda: pipeline.hot.stats().dead_lettered >= len(bad), 60, "every poison event dead-lettered")
    finally:
        pipeline.stop()
    result = reconcile(ch_client, ch_database, events, bootstrap=kafka_bootstrap, topics=topics, bad=bad)
    report(record_property,
           f"{len(bad)} poison events between {published.total} and {len(events) - 1000} valid ones: "
           + ", ".join(sorted(bad.values())),
           result.line() + "; reasons: " + " | ".join(f"{k} -> {v}" for k, v in sorted(result.reasons.items())))


def test_flood_from_one_agent(kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames,
                             ch_client: Any, ch_database: str, tmp_path: Path, record_property: Record) -> None:
    normal = fleet(tmp_path, 2000, seed=37)
    # One agent sends 4x the rest of the fleet together: every one of its events lands on one partition.
    flood = [{**normal[i % len(normal)], "event_id": str(uuid.uuid4()), "agent_id": "agent-flood"}
             for i in range(8000)]
    events = [e for pair in zip(normal, flood[:2000], strict=True) for e in pair] + flood[2000:]
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    try:
        published = publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.005, bad_share=0.0, seed=37)
        pipeline.wait_ledger(len(events))
        flooded = ch_client.query(f"SELECT count() FROM {ch_database}.usage_ledger "
                                  "WHERE agent_id = 'agent-flood'").result_rows[0][0]
    finally:
        pipeline.stop()
    result = reconcile(ch_client, ch_database, events, bootstrap=kafka_bootstrap, topics=topics)
    assert flooded == len(flood)
    report(record_property,
           f"agent-flood sent {len(flood)} events (one partition) beside {len(normal)} from 200 other agents, "
           f"plus {published.duplicates} re-sends",
           result.line() + f"; agent-flood rows {flooded}")


