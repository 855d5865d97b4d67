"""Helpers shared by the producer integration tests (no tests here): sample events, reading a topic back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.wire import AvroCodec


def sample_event(i: int = 0, **over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "agent_id": f"agent-{i % 7}",
        "team": "payments",
        "project": "invoices",
        "provider": "openai",
        "model": "gpt-4o-2024-08-06",
        "input_tokens": 1000 + i,
        "output_tokens": 200,
        "cache_read_tokens": 100,
        "task_id": f"task-{i // 10}",
        "tags": {"seq": str(i)},
    }
    event.update(over)
    return event


def read_topic(
    bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool], timeout: float = 60.0
) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Consume ``topic`` from the beginning until ``until(decoded)`` holds or ``timeout`` passes (then return
    what was read). Each item: (key, decoded UsageEvent dict)."""
    codec = AvroCodec()
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error: {err}")
                value = msg.value()
                assert value is not None
                out.append((msg.key(), codec.decode(value)[1]))
            if until(out):
                break
    finally:
        consumer.close()
    return out


def topic_message_count(bootstrap: str, topic: str) -> int:
    """Number of messages in ``topic`` (sum of high watermarks; the topic is fresh, so low = 0)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:8]}"})
    try:
        md = consumer.list_topics(topic, timeout=10)
        total = 0
        for p in md.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
