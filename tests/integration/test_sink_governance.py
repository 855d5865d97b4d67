"""The governance sinks against a real broker and chdb: alerts -> alerts, waste records (as detection writes them)
-> waste_signals, the compacted policy topic (update, stale version, tombstone, disabled) -> budgets; the tables and
the views v_budget_utilisation / v_waste_percentage hold exactly the expected Decimals, and still do after the same
records are delivered twice (a fresh consumer group re-reading every offset, and the same bytes produced again)."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer

from finops.topics import TopicNames
from schemas.wire import AvroCodec
from stream_jobs.waste import WasteSignal, build_waste_record
from tests.integration.test_sink_support import (
    RunningWorker,
    caught_up,
    make_codec,
    make_priced,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

Q12 = Decimal("1e-12")
KINDS = ("ledger", "alerts", "waste", "budgets")


def _us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _start(kind: str, ch: Any, db: str, kafka_config: dict[str, Any], topics: TopicNames,
           group: str) -> RunningWorker:
    from sinks.worker_cli import build_dlq_producer, build_sink_worker, sink_topic

    dlq_producer = build_dlq_producer(kafka_config)
    worker = build_sink_worker(
        kind, client=ch, database=db, kafka_config=kafka_config, topic=sink_topic(kind, topics),
        dlq_topic=topics.dlq, dlq_producer=dlq_producer, group_id=group, batch_rows=500, batch_seconds=0.3,
        codec=make_codec(),
    )
    return RunningWorker(worker, dlq_producer)


def _run_until_caught_up(ch: Any, db: str, kafka_config: dict[str, Any], topics: TopicNames,
                         groups: dict[str, str]) -> dict[str, RunningWorker]:
    """Run one sink per kind (group ``groups[kind]``) until each has committed its topic's end, then stop them."""
    from sinks.worker_cli import sink_topic

    running = {kind: _start(kind, ch, db, kafka_config, topics, groups[kind]) for kind in KINDS}
    try:
        for kind, worker in running.items():
            wait_for(caught_up(kafka_config, worker, sink_topic(kind, topics)), timeout=90,
                     what=f"the {kind} sink to commit its topic's end")
    finally:
        for worker in running.values():
            worker.stop()
    return running


def _policy(policy_id: str, version: int, scope_type: str, scope_value: str, limit: str, *,
            enabled: bool = True) -> dict[str, Any]:
    return {
        "policy_id": policy_id, "version": version, "scope_type": scope_type, "scope_value": scope_value,
        "period": "month", "timezone": "UTC", "limit_usd": Decimal(limit), "mode": "soft",
        "thresholds": [{"percent": 80, "actions": ["notify"], "channels": []}], "forecast": False,
        "max_task_cost_usd": None, "max_task_tokens": None, "max_call_tokens": None, "downgrade_model": None,
        "throttle_rate_per_minute": None, "enabled": enabled,
        "updated_at": datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=version),
    }


def _alert(alert_id: str, dedup_key: str, kind: str, state: str, at: datetime, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "alert_id": alert_id, "dedup_key": dedup_key, "kind": kind, "severity": "warning", "state": state,
        "occurred_at": at, "team": None, "project": None, "agent_id": None, "policy_id": None, "model": None,
        "title": f"{kind} {state}", "summary": f"summary of {alert_id}", "amount_usd": None, "limit_usd": None,
        "details": {}, "actions": [],
    }
    record.update(extra)
    return record


def _signal(signal_id: str, team: str, at: datetime, cost: str, revision: int) -> WasteSignal:
    return WasteSignal(
        signal_id=signal_id, kind="retry_loop", occurred_at_us=_us(at), detected_at_us=_us(at) + revision * 1_000_000,
        team=team, project="proj-0", agent_id="agent-1", task_id="task-1", model="gpt-4o",
        avoidable_cost_usd=Decimal(cost), evidence={"calls": 2 + revision}, revision=revision,
    )


@pytest.fixture
def period_start() -> Iterator[datetime]:
    """The current UTC month's events window start; skips when a month boundary is too close to be stable."""
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    start = max(month_start, now - timedelta(hours=1))
    if now - start < timedelta(minutes=2) or next_month - now < timedelta(minutes=10):
        pytest.skip("the UTC month is rolling over right now; v_budget_utilisation's period would move")
    yield start


def test_governance_sinks_land_exact_rows_and_views_also_when_delivered_twice(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames, period_start: datetime
) -> None:
    ch, db = ch_client, ch_database
    codec = AvroCodec()
    rng = random.Random(7)
    events = [make_priced(i, rng, start=period_start, span_minutes=1) for i in range(90)]
    day = period_start.date()

    policies: list[tuple[bytes, bytes | None]] = [
        (b"pol-search", codec.encode(_policy("pol-search", 1, "team", "search", "100"), "BudgetPolicy")),
        (b"pol-support", codec.encode(_policy("pol-support", 1, "team", "support", "10"), "BudgetPolicy")),
        (b"pol-proj", codec.encode(_policy("pol-proj", 3, "project", "proj-1", "1000"), "BudgetPolicy")),
        (b"pol-off", codec.encode(_policy("pol-off", 1, "team", "billing", "5", enabled=False), "BudgetPolicy")),
        (b"pol-search", codec.encode(_policy("pol-search", 2, "team", "search", "50"), "BudgetPolicy")),  # update
        (b"pol-support", None),  # tombstone: deleted
        (b"pol-proj", codec.encode(_policy("pol-proj", 2, "project", "proj-1", "1"), "BudgetPolicy")),  # stale
    ]
    at = period_start
    alerts = [
        _alert("a-1", "pol-search:team=search:80:m", "budget_threshold", "trigger", at, team="search",
               policy_id="pol-search", amount_usd=Decimal("40.123456789012"), limit_usd=Decimal("50"),
               details={"threshold_percent": "80"}, actions=["notify", "throttle"]),
        _alert("a-2", "pol-search:team=search:80:m", "budget_threshold", "resolve", at + timedelta(seconds=30),
               team="search", policy_id="pol-search"),
        _alert("a-3", "anomaly:agent-3", "anomaly", "trigger", at, agent_id="agent-3", model="gpt-4o",
               amount_usd=Decimal("7.000000000001")),
    ]
    waste = [
        build_waste_record(_signal("loop-1", "search", at, "0.100000000001", 1)),
        build_waste_record(_signal("loop-2", "search", at, "0.050000000000", 1)),
        build_waste_record(_signal("loop-1", "search", at, "0.350000000003", 2)),  # newer revision of loop-1
        build_waste_record(_signal("loop-3", "support", at, "0.200000000000", 1)),
    ]
    not_waste = _alert("x-1", "anomaly:x", "anomaly", "trigger", at)  # wrong kind on the waste topic: DLQ

    # (key, value) per topic; Any because a tombstone's value is None, which `produce` passes through to Kafka
    payloads: dict[str, list[tuple[Any, Any]]] = {
        topics.priced: [(e["agent_id"].encode(), codec.encode(e, "PricedUsageEvent")) for e in events],
        topics.alerts: [(a["dedup_key"].encode(), codec.encode(a, "Alert")) for a in alerts],
        topics.waste: [(w["dedup_key"].encode(), codec.encode(w, "Alert")) for w in waste]
        + [(b"x", codec.encode(not_waste, "Alert"))],
        topics.policies: policies,
    }
    for topic, pairs in payloads.items():
        produce(kafka_config, topic, pairs)

    # ---- expected values, computed independently in Decimal
    team_cost: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for e in events:
        team_cost[(e["occurred_at"].date(), e["team"])] += e["cost_usd"]
    search = sum((e["cost_usd"] for e in events if e["team"] == "search"), Decimal(0))
    proj1 = sum((e["cost_usd"] for e in events if e["project"] == "proj-1"), Decimal(0))

    def pct(part: Decimal, whole: Decimal) -> Decimal:
        return (part * 100 / whole).quantize(Q12, rounding=ROUND_DOWN)  # ClickHouse truncates at scale 12

    expected_budgets = [
        ("pol-proj", 3, "project", "proj-1", Decimal("1000"), proj1, pct(proj1, Decimal(1000))),
        ("pol-search", 2, "team", "search", Decimal("50"), search, pct(search, Decimal(50))),
    ]
    waste_search = Decimal("0.350000000003") + Decimal("0.050000000000")
    waste_support = Decimal("0.200000000000")
    expected_waste = {
        (d, team): (cost, {"search": waste_search, "support": waste_support}.get(team, Decimal(0)),
                    {"search": 2, "support": 1}.get(team, 0) if d == day else 0,
                    pct({"search": waste_search, "support": waste_support}.get(team, Decimal(0)), cost)
                    if d == day else Decimal(0))
        for (d, team), cost in team_cost.items()
    }
    expected_alerts = [
        ("a-1", "pol-search:team=search:80:m", "budget_threshold", "trigger", "search", "", "", "pol-search", "",
         Decimal("40.123456789012"), Decimal("50"), {"threshold_percent": "80"}, ["notify", "throttle"]),
        ("a-2", "pol-search:team=search:80:m", "budget_threshold", "resolve", "search", "", "", "pol-search", "",
         None, None, {}, []),
        ("a-3", "anomaly:agent-3", "anomaly", "trigger", "", "", "agent-3", "", "gpt-4o", Decimal("7.000000000001"),
         None, {}, []),
    ]

    def check() -> None:
        got_alerts = ch.query(
            f"SELECT alert_id, dedup_key, kind, state, team, project, agent_id, policy_id, model, amount_usd, "
            f"limit_usd, details, actions FROM {db}.alerts FINAL ORDER BY alert_id").result_rows
        assert [tuple(r) for r in got_alerts] == expected_alerts

        got_waste = ch.query(
            f"SELECT signal_id, kind, team, task_id, model, avoidable_cost_usd, occurred_at, evidence "
            f"FROM {db}.waste_signals FINAL ORDER BY signal_id").result_rows
        assert [(r[0], r[1], r[2], r[3], r[4], r[5], r[6].replace(tzinfo=UTC), r[7]) for r in got_waste] == [
            ("loop-1", "retry_loop", "search", "task-1", "gpt-4o", Decimal("0.350000000003"), at, '{"calls": 4}'),
            ("loop-2", "retry_loop", "search", "task-1", "gpt-4o", Decimal("0.05"), at, '{"calls": 3}'),
            ("loop-3", "retry_loop", "support", "task-1", "gpt-4o", Decimal("0.2"), at, '{"calls": 3}'),
        ]
        view_waste = ch.query(
            f"SELECT day, team, cost_usd, avoidable_cost_usd, signals, waste_pct FROM {db}.v_waste_percentage"
        ).result_rows
        assert {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in view_waste} == expected_waste

        got_budgets = ch.query(
            f"SELECT policy_id, version, deleted, enabled, limit_usd FROM {db}.budgets FINAL ORDER BY policy_id"
        ).result_rows
        by_id = {r[0]: tuple(r[1:]) for r in got_budgets}
        assert set(by_id) == {"pol-off", "pol-proj", "pol-search", "pol-support"}
        assert by_id["pol-search"] == (2, False, True, Decimal(50))
        assert by_id["pol-proj"] == (3, False, True, Decimal(1000))  # the stale version 2 did not win
        assert by_id["pol-off"] == (1, False, False, Decimal(5))
        # the tombstone: the deleted copy outranks version 1 (its exact version may grow on a re-delivery)
        assert by_id["pol-support"][1:] == (True, True, Decimal(10)) and by_id["pol-support"][0] >= 2
        view_budgets = ch.query(
            f"SELECT policy_id, version, scope_type, scope_value, limit_usd, spent_usd, utilisation_pct, "
            f"period_start_local FROM {db}.v_budget_utilisation ORDER BY policy_id").result_rows
        month = period_start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        assert [tuple(r) for r in view_budgets] == [
            (*b, month.strftime("%Y-%m-%d %H:%M:%S")) for b in expected_budgets]

    # 1. first delivery
    groups = {kind: f"g-{kind}-{uuid.uuid4().hex[:6]}" for kind in KINDS}
    first = _run_until_caught_up(ch, db, kafka_config, topics, groups)
    check()
    assert first["waste"].worker.stats.dead_lettered == 1
    assert sum(w.worker.stats.dead_lettered for k, w in first.items() if k != "waste") == 0
    assert _dlq_reasons(kafka_config, topics.dlq) == ["mapping: waste record cannot be mapped to a row: kind "
                                                      "'anomaly' is not 'waste'"]

    # 2. every offset delivered again (a lost commit): fresh groups re-read the topics from the start
    again = _run_until_caught_up(ch, db, kafka_config, topics, {k: f"{g}-again" for k, g in groups.items()})
    check()
    assert sum(w.worker.stats.consumed for w in again.values()) == sum(len(p) for p in payloads.values())

    # 3. the same bytes produced again (a producer retry or a replaying job): new offsets, same records
    for topic, pairs in payloads.items():
        produce(kafka_config, topic, pairs)
    _run_until_caught_up(ch, db, kafka_config, topics, groups)
    check()


def _dlq_reasons(kafka_config: dict[str, Any], topic: str) -> list[str]:
    """The ``reason`` headers of the DLQ topic (read from the start until one letter arrived)."""
    consumer = Consumer({**kafka_config, "group.id": f"dlq-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    reasons: list[str] = []
    try:
        consumer.subscribe([topic])

        def read() -> bool:
            for msg in consumer.consume(100, timeout=0.2):
                if msg.error() is None:
                    reason = dict(msg.headers() or [])["reason"]
                    reasons.append(reason.decode() if isinstance(reason, bytes) else str(reason))
            return bool(reasons)

        wait_for(read, timeout=30, what="the dead letter")
    finally:
        consumer.close()
    return reasons
