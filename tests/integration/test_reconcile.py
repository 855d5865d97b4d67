"""Reconciliation on data written by the real sinks: no drift when consistent; drift (and a drift alert on
finops.alerts.v1) when a row disappears from the ledger."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer

from finops.alerts import publish_alerts
from finops.topics import TopicNames
from schemas.models import Alert
from schemas.wire import AvroCodec
from sinks.reconcile import build_drift_alert, ceil_to, compute_reconciliation, floor_to
from tests.integration.test_sink_support import (
    BASE_TIME,
    caught_up,
    encode_events,
    make_codec,
    make_priced,
    produce,
    spend_partials,
    start_sink,
    wait_for,
)

pytestmark = pytest.mark.integration


def _write_stream_counters(ch: Any, db: str, events: list[dict[str, Any]]) -> None:
    """What the hot path's counters would say for these events (per source partition and minute)."""
    acc: dict[tuple[int, datetime], list[Any]] = defaultdict(lambda: [0, Decimal(0), None, None])
    for e in events:
        k = (e["source_partition"], e["occurred_at"].replace(second=0, microsecond=0))
        a = acc[k]
        a[0] += 1
        a[1] += e["cost_usd"]
        a[2] = e["source_offset"] if a[2] is None else min(a[2], e["source_offset"])
        a[3] = e["source_offset"] if a[3] is None else max(a[3], e["source_offset"])
    rows = [
        [f"usage-hotpath:agent.usage.v1:{p}:{w.timestamp()}", "usage-hotpath", "agent.usage.v1", p, w,
         w + timedelta(minutes=1), lo, hi, n, n, 0, 0, 0, cost, w + timedelta(minutes=2)]
        for (p, w), (n, cost, lo, hi) in acc.items()
    ]
    ch.insert("stream_counters", rows, database=db, column_names=[
        "counter_id", "job", "source_topic", "source_partition", "window_start", "window_end", "first_offset",
        "last_offset", "events", "priced_events", "unpriced_events", "dlq_events", "duplicate_events", "cost_usd",
        "emitted_at"])


def test_reconcile_finds_no_drift_then_reports_and_alerts_a_deleted_ledger_row(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    rng = random.Random(11)
    events = [make_priced(i, rng) for i in range(600)]
    codec = make_codec()
    produce(kafka_config, topics.priced, encode_events(codec, events))
    produce(kafka_config, topics.spend, [(p["aggregate_id"].encode(), codec.encode(p, "SpendAggregate"))
                                         for p in spend_partials(events)])
    ledger = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    spend = start_sink("spend", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    try:
        wait_for(caught_up(kafka_config, ledger, topics.priced), what="ledger sink")
        wait_for(caught_up(kafka_config, spend, topics.spend), what="spend sink")
    finally:
        ledger.stop()
        spend.stop()
    _write_stream_counters(ch_client, ch_database, events)

    # A range that is not hour-aligned: each check widens it to its own buckets and compares like with like.
    start, end = BASE_TIME - timedelta(minutes=7), BASE_TIME + timedelta(minutes=95, seconds=30)
    report = compute_reconciliation(ch_client, ch_database, start, end)
    assert [c.name for c in report.comparisons] == ["spend_hourly", "spend_daily", "spend_1m", "stream_counters"]
    assert all(c.observed is not None for c in report.comparisons)
    assert not report.drift, report.render()
    total = sum((e["cost_usd"] for e in events), Decimal(0))
    assert all(c.ledger.cost_usd == total and c.ledger.calls == 600 for c in report.comparisons)
    assert "no drift" in report.render()

    victim = events[123]
    ch_client.command(
        f"ALTER TABLE {ch_database}.usage_ledger DELETE WHERE event_id = {{id:String}}",
        parameters={"id": victim["event_id"]}, settings={"mutations_sync": 2},
    )
    drifted = compute_reconciliation(ch_client, ch_database, start, end)
    assert drifted.drift
    assert {c.name for c in drifted.drifting()} == {"spend_hourly", "spend_daily", "spend_1m", "stream_counters"}
    for c in drifted.comparisons:
        diffs = c.differences()
        assert diffs["cost_usd"] == victim["cost_usd"]  # exact: the source still has what the ledger lost
        assert diffs["calls"] == 1
        if "input_tokens" in diffs:
            assert diffs["input_tokens"] == victim["input_tokens"]
    table = drifted.render()
    assert "DRIFT" in table and str(victim["cost_usd"].normalize()) in table

    alert = build_drift_alert(drifted, datetime.now(UTC))
    publish_alerts(kafka_config, topics.alerts, [alert])
    consumer = Consumer({**kafka_config, "group.id": f"a-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.alerts])
    got: list[Any] = []
    try:
        def read() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
            return bool(got)
        wait_for(read, what="the drift alert")
    finally:
        consumer.close()
    name, decoded = AvroCodec().decode(got[0].value())
    assert name == "Alert" and got[0].key() == alert["dedup_key"].encode()
    model = Alert.from_avro_dict(decoded)  # valid by the shared contract, not just decodable
    assert model.kind == "drift" and model.state == "trigger"
    assert decoded["details"]["spend_hourly.cost_usd"] == f"+{victim['cost_usd'].normalize()}"
    assert decoded["dedup_key"] == f"reconcile:drift:{start:%Y-%m-%dT%H:%M:%SZ}:{end:%Y-%m-%dT%H:%M:%SZ}"


def test_bucket_alignment_is_exact() -> None:
    t = datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert floor_to(t, timedelta(hours=1)) == datetime(2025, 3, 31, 23, tzinfo=UTC)
    assert ceil_to(t, timedelta(days=1)) == datetime(2025, 4, 1, tzinfo=UTC)
    aligned = datetime(2025, 4, 1, tzinfo=UTC)
    assert ceil_to(aligned, timedelta(minutes=1)) == aligned == floor_to(aligned, timedelta(days=1))
