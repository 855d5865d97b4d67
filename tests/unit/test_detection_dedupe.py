"""Detection dedupes priced events by (source, event_id) before any detector sees them: a copy re-sent at another
offset (the hot path's replay after a restart) is neither counted in a budget nor seen by the waste detectors.
Pure wiring: the service's Kafka clients are replaced by in-memory fakes (the broker version is
tests/integration/test_detection_dedupe.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.topics import TopicNames
from schemas.models import BudgetPolicy
from schemas.wire import AvroCodec
from stream_jobs.detection import DetectionConfig, DetectionService
from tests.integration.test_detection_support import make_priced

pytestmark = pytest.mark.unit

CODEC = AvroCodec()
T = datetime(2025, 6, 2, 9, tzinfo=UTC)


class _Msg:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._p, self._o, self._v = partition, offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v


class _Consumer:
    def __init__(self) -> None:
        self.queue: list[_Msg] = []

    def consume(self, n: int, timeout: float = 0) -> list[_Msg]:
        out, self.queue = self.queue[:n], self.queue[n:]
        return out


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    def produce(self, topic: str, key: bytes, value: bytes | None, on_delivery: Any = None) -> None:
        self.sent.append((topic, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def _service() -> tuple[DetectionService, _Consumer, _Producer]:
    service = DetectionService({}, TopicNames(""), DetectionConfig(flush_interval_s=1e9), wall_clock=lambda: 0.0,
                               epoch_clock=lambda: T.timestamp())
    consumer, producer = _Consumer(), _Producer()
    service._consumer, service._policy_consumer, service._producer = consumer, _Consumer(), producer
    service.budgets.set_policy(BudgetPolicy.model_validate({
        "policy_id": "pol", "version": 1, "scope_type": "team", "scope_value": "search", "period": "day",
        "timezone": "UTC", "limit_usd": Decimal("10"), "mode": "hard",
        "thresholds": [{"percent": 100, "actions": ["notify", "suspend"]}], "updated_at": T}), 0)
    return service, consumer, producer


def test_a_re_sent_event_at_a_new_offset_is_counted_once() -> None:
    service, consumer, producer = _service()
    events = [make_priced(agent_id="agent-1", team="search", occurred_at=T + timedelta(seconds=i),
                          cost=Decimal("3")) for i in range(3)]  # $9 of $10
    values = [CODEC.encode(e, "PricedUsageEvent") for e in events]
    consumer.queue = [_Msg(0, offset, value) for offset, value in enumerate(values)]
    service.poll_once()
    # The same three events again, later in the partition (offsets 3-5): the offset check alone would count them.
    consumer.queue = [_Msg(0, 3 + offset, value) for offset, value in enumerate(values)]
    service.poll_once()
    (counter,) = service.budgets.counters.values()
    assert counter.spent == Decimal("9")
    assert (service.stats["events"], service.stats["duplicates"]) == (3, 3)
    assert not [topic for topic, _ in producer.sent if topic.endswith("alerts.v1")]  # no false 100 % (suspend)


def test_an_event_id_of_another_source_is_another_event() -> None:
    service, consumer, _ = _service()
    first = make_priced(agent_id="agent-1", team="search", occurred_at=T, cost=Decimal("1"))
    other = {**first, "source": "another-service"}
    consumer.queue = [_Msg(0, 0, CODEC.encode(first, "PricedUsageEvent")),
                      _Msg(0, 1, CODEC.encode(other, "PricedUsageEvent"))]
    service.poll_once()
    (counter,) = service.budgets.counters.values()
    assert counter.spent == Decimal("2") and service.stats["duplicates"] == 0
