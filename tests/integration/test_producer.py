"""UsageProducer through the session broker: round trip, validation before send, async, track()."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from finops.topics import TopicNames
from producers.producer import Delivery, UsageProducer
from schemas.errors import ValidationFailed
from tests.integration.test_producer_support import read_topic, sample_event, topic_message_count

pytestmark = pytest.mark.integration

FIXED_NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _producer(kafka_bootstrap: str, topic: str, spool: Path, **kw: Any) -> UsageProducer:
    return UsageProducer(kafka_bootstrap, topic, "test-svc", spool, clock=lambda: FIXED_NOW,
                         register_atexit=False, **kw)


def test_events_arrive_keyed_by_agent_with_ids_and_times_filled(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    deliveries: list[Delivery] = []
    lock = threading.Lock()

    def on_delivery(d: Delivery) -> None:
        with lock:
            deliveries.append(d)

    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool", on_delivery=on_delivery) as producer:
        ids = [producer.emit(sample_event(i)) for i in range(500)]
        assert producer.flush(30) == 0
        stats = producer.stats()
    assert stats.delivered == 500 and stats.spooled == 0 and stats.failed == 0
    assert sorted(d.event_id for d in deliveries) == sorted(ids)
    assert {d.status for d in deliveries} == {"delivered"}
    got = read_topic(kafka_bootstrap, topics.usage, until=lambda out: len(out) >= 500)
    assert sorted(str(e["event_id"]) for _, e in got) == sorted(ids)
    for key, event in got:
        assert key == event["agent_id"].encode()
        assert event["source"] == "test-svc"
        assert event["occurred_at"] == FIXED_NOW
    # per-agent order is emit order
    by_agent: dict[str, list[int]] = {}
    for _, event in got:
        by_agent.setdefault(event["agent_id"], []).append(int(event["tags"]["seq"]))
    assert all(seq == sorted(seq) for seq in by_agent.values())


def test_emit_many_delivers_every_event_once_in_order_per_agent(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    deliveries: list[Delivery] = []
    lock = threading.Lock()

    def on_delivery(d: Delivery) -> None:
        with lock:
            deliveries.append(d)

    events = [sample_event(i) for i in range(2000)]
    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool") as producer:
        ids = producer.emit_many(events[:1500], on_delivery=on_delivery)
        ids += producer.emit_many(events[1500:], on_delivery=on_delivery)
        assert producer.flush(30) == 0
        stats = producer.stats()
    assert stats.emitted == stats.delivered == 2000 and stats.spooled == 0 and stats.failed == 0
    assert len(set(ids)) == 2000
    assert sorted(d.event_id for d in deliveries) == sorted(ids)  # one report per event
    assert {d.status for d in deliveries} == {"delivered"}
    got = read_topic(kafka_bootstrap, topics.usage, until=lambda out: len(out) >= 2000)
    assert len(got) == 2000 and sorted(str(e["event_id"]) for _, e in got) == sorted(ids)
    by_agent: dict[str, list[int]] = {}
    for key, event in got:
        assert key == event["agent_id"].encode() and event["source"] == "test-svc"
        by_agent.setdefault(event["agent_id"], []).append(int(event["tags"]["seq"]))
    # Each agent's events are on one partition in batch order (every agent's events span both calls).
    assert len(by_agent) == 7
    assert all(seq == sorted(seq) and len(seq) > 250 for seq in by_agent.values())


def test_a_bad_event_in_a_batch_keeps_the_whole_batch_off_the_topic(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool") as producer:
        batch = [sample_event(i) for i in range(10)]
        batch[4] = sample_event(4, input_tokens=-5)
        with pytest.raises(ValidationFailed) as info:
            producer.emit_many(batch)
        assert info.value.fields() == ["4.input_tokens"]
        producer.emit(sample_event(99))  # a marker: once it is in, anything sent before it is too
        assert producer.flush(30) == 0
    got = read_topic(kafka_bootstrap, topics.usage, until=lambda out: len(out) >= 1)
    assert [e["tags"]["seq"] for _, e in got] == ["99"]
    assert topic_message_count(kafka_bootstrap, topics.usage) == 1


INVALID = [
    ("negative token count", {"input_tokens": -5}, "input_tokens"),
    ("cache read above input", {"input_tokens": 10, "cache_read_tokens": 11}, "cache_read_tokens"),
    ("reasoning above output", {"output_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens"),
    ("empty agent_id", {"agent_id": ""}, "agent_id"),
    ("timestamp far in the future", {"occurred_at": FIXED_NOW + timedelta(hours=2)}, "occurred_at"),
    ("oversized tag map", {"tags": {f"k{i}": "v" for i in range(65)}}, "tags"),
    ("unknown field (typo)", {"cache_read_token": 5}, "cache_read_token"),
    ("float money", {"reported_cost": 0.25}, "reported_cost"),
]


def test_each_invalid_event_is_refused_naming_the_field_and_none_reaches_the_topic(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool") as producer:
        for what, override, field in INVALID:
            with pytest.raises(ValidationFailed) as info:
                producer.emit(sample_event(1, **override))
            assert field in info.value.fields(), what
            assert field in str(info.value), what
        producer.emit(sample_event(2))  # a valid marker after them: once it is in, anything sent before is too
        assert producer.flush(30) == 0
        assert producer.stats().invalid == len(INVALID)
    got = read_topic(kafka_bootstrap, topics.usage, until=lambda out: len(out) >= 1)
    assert len(got) == 1 and got[0][1]["tags"] == {"seq": "2"}
    assert topic_message_count(kafka_bootstrap, topics.usage) == 1


def test_emit_async_awaits_the_broker_acknowledgement(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    async def main(producer: UsageProducer) -> list[Delivery]:
        return await asyncio.gather(*(producer.emit_async(sample_event(i)) for i in range(50)))

    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool") as producer:
        deliveries = asyncio.run(main(producer))
    assert {d.status for d in deliveries} == {"delivered"}
    assert all(d.offset is not None and d.offset >= 0 for d in deliveries)


class RateLimitError(Exception):
    """Named like the provider SDKs' 429 error."""


def test_track_times_the_call_reads_usage_and_sets_status(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    openai_body = {
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300,
                  "prompt_tokens_details": {"cached_tokens": 1024}},
    }
    with _producer(kafka_bootstrap, topics.usage, tmp_path / "spool") as producer:
        attribution = dict(agent_id="a1", team="t", project="p", provider="openai", model="gpt-4o")
        with producer.track(**attribution, task_id="T1") as call:
            call.record_response(openai_body)
        with pytest.raises(RateLimitError):
            with producer.track(**attribution, task_id="T2"):
                raise RateLimitError("429")

        @producer.track(**attribution, task_id="T3")
        def ask() -> dict[str, Any]:
            return openai_body

        assert ask() is openai_body
        assert producer.flush(30) == 0
    got = {e["task_id"]: e for _, e in read_topic(kafka_bootstrap, topics.usage, until=lambda o: len(o) >= 3)}
    assert got["T1"]["status"] == "ok" and got["T1"]["input_tokens"] == 1200
    assert got["T1"]["cache_read_tokens"] == 1024 and got["T1"]["model"] == "gpt-4o-2024-08-06"
    assert got["T1"]["latency_ms"] is not None and got["T1"]["latency_ms"] >= 0
    assert got["T2"]["status"] == "rate_limited" and got["T2"]["tags"] == {"finops.usage_missing": "true"}
    assert got["T3"]["output_tokens"] == 300
