"""Helpers for the detection integration and end-to-end tests (no tests here): priced records built with the real
Pricer, a producer of priced events, and a reader that pumps the service while it waits for output."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.wire import AvroCodec

__all__ = ["OutputReader", "make_priced", "price_usage", "produce_priced"]

_CODEC = AvroCodec()


def price_usage(pricer: Any, usage: Mapping[str, Any], *, partition: int = 0, offset: int = 0,
                priced_at: datetime | None = None) -> dict[str, Any]:
    """A PricedUsageEvent dict for a UsageEvent dict, priced by ``finops.pricing.engine.Pricer`` (what the hot path
    produces; used so these tests do not depend on the hot path)."""
    result = pricer.price(usage)
    record = dict(usage)
    for name in ("cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens",
                 "image_tokens", "web_search_calls"):
        record.setdefault(name, 0)
    record.setdefault("requests", 1)
    record.setdefault("schema_version", 1)
    record.setdefault("tags", {})
    for name in ("task_id", "parent_task_id", "task_type", "environment", "latency_ms", "prompt_hash",
                 "reported_cost"):
        record.setdefault(name, None)
    record.setdefault("attempt", 1)
    record.setdefault("status", "ok")
    record.update(result._asdict())
    record.update(late=False, priced_at=priced_at or usage["occurred_at"], source_topic="agent.usage.v1",
                  source_partition=partition, source_offset=offset)
    return record


def make_priced(*, agent_id: str, team: str, occurred_at: datetime, cost: Decimal, project: str = "proj",
                model: str = "gpt-4o", task_id: str | None = None, tags: dict[str, str] | None = None,
                input_tokens: int = 100, output_tokens: int = 10) -> dict[str, Any]:
    """A hand-made priced event with an exact cost (all of it on the input part)."""
    zero = Decimal("0E-12")
    return {
        "event_id": str(uuid.uuid4()), "source": "test", "occurred_at": occurred_at, "agent_id": agent_id,
        "team": team, "project": project, "provider": "openai", "model": model, "input_tokens": input_tokens,
        "output_tokens": output_tokens, "cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0,
        "reasoning_tokens": 0, "input_audio_tokens": 0, "output_audio_tokens": 0, "cache_audio_read_tokens": 0,
        "image_tokens": 0, "web_search_calls": 0, "requests": 1, "task_id": task_id, "parent_task_id": None,
        "task_type": "chat", "environment": "test", "attempt": 1, "status": "ok", "latency_ms": 100,
        "prompt_hash": None, "reported_cost": None, "tags": tags or {}, "schema_version": 1,
        "cost_usd": cost, "cost_input_usd": cost, "cost_output_usd": zero, "cost_cache_read_usd": zero,
        "cost_cache_write_usd": zero, "cost_other_usd": zero, "price_input_mtok": None, "price_output_mtok": None,
        "price_cache_read_mtok": None, "price_cache_write_mtok": None, "price_cache_write_1h_mtok": None,
        "pricing_status": "priced", "unpriced_reason": None, "catalogue_version": "test",
        "price_book_version": None, "price_source": "catalogue", "cost_delta_usd": None, "cost_mismatch": False,
        "late": False, "priced_at": occurred_at, "source_topic": "agent.usage.v1", "source_partition": 0,
        "source_offset": 0,
    }


def produce_priced(kafka_config: Mapping[str, Any], topic: str, records: Iterable[Mapping[str, Any]]) -> int:
    """Encode and produce priced records keyed by agent_id; wait for every acknowledgement. Returns the count."""
    from confluent_kafka import Producer

    producer = Producer({**kafka_config, "enable.idempotence": True, "linger.ms": 50, "compression.type": "lz4",
                         "queue.buffering.max.messages": 500_000})
    count = 0
    for record in records:
        value = _CODEC.encode(record, "PricedUsageEvent")
        while True:
            try:
                producer.produce(topic, key=record["agent_id"].encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0, "priced events not acknowledged"
    return count


class OutputReader:
    """Reads an output topic (Alert-schema records) from the beginning, pumping ``pump`` between reads."""

    def __init__(self, kafka_config: Mapping[str, Any], topic: str) -> None:
        from confluent_kafka import Consumer

        self.records: list[dict[str, Any]] = []
        self._consumer = Consumer({**kafka_config, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._consumer.subscribe([topic])

    def drain(self, timeout: float = 0.05) -> None:
        """Read what is available now (until a read comes back empty)."""
        while True:
            batch = self._consumer.consume(1000, timeout=timeout)
            for msg in batch:
                if msg.error() is None and msg.value() is not None:
                    self.records.append(_CODEC.decode(msg.value())[1])
            if not batch:
                return

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], pump: Callable[[], Any],
                 deadline_s: float = 60.0) -> list[dict[str, Any]]:
        """Pump and read until ``predicate(records)`` holds; AssertionError at the deadline."""
        deadline = time.monotonic() + deadline_s
        while True:
            pump()
            self.drain()
            if predicate(self.records):
                return self.records
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {deadline_s}s; records: "
                                     f"{[(r['kind'], r['state'], r['dedup_key']) for r in self.records][:50]}")

    def close(self) -> None:
        self._consumer.close()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]
