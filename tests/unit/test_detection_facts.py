"""Detection decodes only the fields its detectors read (``SPEND_FIELDS``, through ``AvroCodec.projection``): the
SpendEvent built from them equals the one built from the whole decoded record, for the examples and for seeded
random priced records (nulls, empty and full maps, edge counts and decimals), in both framings; and a priced event
with a reported cost still reaches the drift watcher whole (price drift reads prices and counts beyond the facts)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from collections.abc import Mapping
from typing import Any

import pytest

from finops.topics import TopicNames
from schemas.loader import load_schema
from schemas.models import load_example
from schemas.wire import AvroCodec
from stream_jobs.detection import (
    SPEND_FIELDS,
    DetectionConfig,
    DetectionService,
    build_spend_event,
    build_spend_event_of,
)
from tests.unit.test_detection_dedupe import _Consumer, _Msg, _Producer
from tests.unit.test_fastcodec import _random_record

pytestmark = pytest.mark.unit


def _same_event(got: Any, want: Any) -> None:
    assert got == want
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)
        if isinstance(w, Decimal):
            assert g.as_tuple() == w.as_tuple()


def test_the_projected_facts_equal_the_facts_of_the_whole_record() -> None:
    codec = AvroCodec({"PricedUsageEvent": load_schema("PricedUsageEvent")}, resolver={3: load_schema(
        "PricedUsageEvent")}.__getitem__)
    facts = codec.projection("PricedUsageEvent", SPEND_FIELDS, timestamps="micros")
    schema = load_schema("PricedUsageEvent")
    rng = random.Random("detection-facts")
    records = [load_example(name).to_avro_dict()
               for name in ("priced_usage_event.json", "priced_usage_event_unpriced.json")]
    records += [_random_record(rng, schema, schema.get("namespace")) for _ in range(500)]
    for record in records:
        for data in (codec.encode(record, "PricedUsageEvent"), codec.encode_confluent(record, "PricedUsageEvent", 3)):
            values = facts.decode(data)
            whole = codec.decode(data)[1]
            _same_event(build_spend_event_of(values), build_spend_event(whole))
            assert values[SPEND_FIELDS.index("source")] == whole["source"]
            assert values[SPEND_FIELDS.index("reported_cost")] == whole["reported_cost"]


def test_reported_costs_reach_the_drift_watcher_whole() -> None:
    t = datetime(2025, 6, 2, 9, tzinfo=UTC)
    service = DetectionService({}, TopicNames(""), DetectionConfig(flush_interval_s=1e9), wall_clock=lambda: 0.0,
                               epoch_clock=lambda: t.timestamp())
    service._consumer, service._policy_consumer, service._producer = _Consumer(), _Consumer(), _Producer()
    seen: list[Mapping[str, Any]] = []

    def observe(record: Mapping[str, Any]) -> list[dict[str, Any]]:
        seen.append(record)
        return []

    service.drift.observe = observe  # type: ignore[method-assign]
    codec = AvroCodec()
    base = load_example("priced_usage_event.json").to_avro_dict()
    records = [{**base, "event_id": f"00000000-0000-4000-8000-{i:012d}", "occurred_at": t + timedelta(seconds=i),
                "reported_cost": None if i % 2 else Decimal("0.5")} for i in range(6)]
    service.submit([_Msg(0, i, codec.encode(r, "PricedUsageEvent")) for i, r in enumerate(records)])
    assert service.stats["events"] == 6 and service.stats["bad_records"] == 0
    assert seen == [codec.decode(codec.encode(r, "PricedUsageEvent"))[1] for r in records[::2]]


def test_detection_waits_for_a_starting_store_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started together with the sink, detection waits for the store endpoint instead of running without its
    ledger reader (no reconciliation, no baseline seeding) when the path is held a moment before it answers."""
    from finops.clickhouse import ROLE_STORE_WAIT_S
    from finops.settings import load_settings
    from schemas.errors import FinopsError
    from stream_jobs import detection

    seen: dict[str, object] = {}

    def refuse(*args: object, **kwargs: object) -> tuple[object, str]:
        seen.update(kwargs)
        raise FinopsError("store busy")

    monkeypatch.setattr(detection, "open_client", refuse)
    assert detection.build_ledger_reader(load_settings({"FINOPS_DATA_DIR": "/nonexistent"})) is None
    assert seen["owner_wait"] == ROLE_STORE_WAIT_S and seen["readonly"] is True
