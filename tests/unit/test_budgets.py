"""Budget logic on hand-made events: calendar periods in time zones, counters keyed by period, offset dedupe,
threshold crossings with stable dedup keys, resolves on rollover and limit raise, forecast, task and call caps,
reconciliation and state round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.errors import FinopsError
from schemas.models import Alert, BudgetPolicy
from stream_jobs.budgets import (
    BudgetCounter,
    BudgetEngine,
    SpendEvent,
    compute_forecast,
    compute_period,
    counter_key,
)

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def policy(**changes: Any) -> BudgetPolicy:
    data: dict[str, Any] = {
        "policy_id": "pol", "version": 1, "scope_type": "team", "scope_value": "search", "period": "day",
        "timezone": "UTC", "limit_usd": Decimal("10"), "mode": "soft",
        "thresholds": [{"percent": 80, "actions": ["notify"]}, {"percent": 100, "actions": ["notify"]}],
        "updated_at": datetime(2025, 1, 1, tzinfo=UTC),
    }
    data.update(changes)
    return BudgetPolicy.model_validate(data)


def spend(at: datetime, cost: str, **changes: Any) -> SpendEvent:
    base = SpendEvent(us(at), "agent-1", "search", "proj", "gpt-4o", Decimal(cost), 100, 10, "task-1", "chat", {},
                      "e1")
    return base._replace(**changes)


def triggers(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["dedup_key"] for a in alerts if a["state"] == "trigger"]


# ---- periods ---------------------------------------------------------------------------------------------------


def test_day_week_month_are_calendar_aligned_in_the_zone() -> None:
    at = datetime(2025, 3, 14, 23, 30, tzinfo=UTC)  # already the 15th in Berlin
    day = compute_period("day", "Europe/Berlin", at)
    assert (day.start, day.end, day.label) == (datetime(2025, 3, 14, 23, tzinfo=UTC),
                                               datetime(2025, 3, 15, 23, tzinfo=UTC), "2025-03-15")
    week = compute_period("week", "UTC", at)  # Friday -> Monday 10th .. Monday 17th, ISO week 11
    assert (week.start, week.end, week.label) == (datetime(2025, 3, 10, tzinfo=UTC),
                                                  datetime(2025, 3, 17, tzinfo=UTC), "2025-W11")
    month = compute_period("month", "America/New_York", datetime(2025, 12, 31, 12, tzinfo=UTC))
    assert month.label == "2025-12" and month.end == datetime(2026, 1, 1, 5, tzinfo=UTC)


def test_a_dst_day_is_23_hours_long() -> None:
    day = compute_period("day", "Europe/Berlin", datetime(2025, 3, 30, 12, tzinfo=UTC))
    assert day.end - day.start == timedelta(hours=23)


def test_forecast_extrapolates_the_average_burn_rate() -> None:
    day = compute_period("day", "UTC", datetime(2025, 1, 1, tzinfo=UTC))
    assert compute_forecast(Decimal("3"), day, day.start_us + 6 * 3600 * 1_000_000) == Decimal("12")


# ---- thresholds ------------------------------------------------------------------------------------------------


def test_each_threshold_fires_once_per_period_with_a_stable_key() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    t0 = datetime(2025, 6, 2, 10, tzinfo=UTC)
    fired: list[dict[str, Any]] = []
    for offset, cost in enumerate(["5", "3.5", "0.5", "1.5", "4"]):
        fired += engine.apply(spend(t0 + timedelta(minutes=offset), cost), partition=0, offset=offset)
    assert triggers(fired) == ["pol:team=search:80:2025-06-02", "pol:team=search:100:2025-06-02"]
    for alert in fired:
        Alert.from_avro_dict(alert)  # every alert is a valid Alert record
    assert fired[1]["severity"] == "critical" and fired[0]["severity"] == "warning"


def test_one_event_crossing_two_thresholds_fires_both_and_hard_mode_suspends() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(mode="hard"), 0)
    fired = engine.apply(spend(datetime(2025, 6, 2, tzinfo=UTC), "12"), 0, 0)
    assert triggers(fired) == ["pol:team=search:80:2025-06-02", "pol:team=search:100:2025-06-02"]
    assert "suspend" in fired[1]["actions"] and "suspend" not in fired[0]["actions"]


def test_replayed_offsets_are_not_counted_again() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    at = datetime(2025, 6, 2, 9, tzinfo=UTC)
    engine.apply(spend(at, "2"), 0, 10)
    engine.apply(spend(at, "2"), 1, 10)  # another partition, same offset number: counted
    engine.apply(spend(at, "2"), 0, 10)  # replay
    engine.apply(spend(at, "2"), 0, 9)  # older replay
    (counter,) = engine.counters.values()
    assert counter.spent == Decimal("4")


def test_new_period_starts_at_zero_and_rollover_resolves() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    day1 = datetime(2025, 6, 2, 20, tzinfo=UTC)
    assert len(triggers(engine.apply(spend(day1, "9"), 0, 0))) == 1
    next_day = datetime(2025, 6, 3, 0, 1, tzinfo=UTC)
    resolved = engine.advance(us(next_day))
    assert [(a["state"], a["dedup_key"]) for a in resolved] == [("resolve", "pol:team=search:80:2025-06-02")]
    assert engine.apply(spend(next_day, "1"), 0, 1) == []
    new = engine.counters[counter_key("pol", us(datetime(2025, 6, 3, tzinfo=UTC)))]
    assert new.spent == Decimal("1")
    # A late event of the closed day still counts there but raises nothing.
    assert engine.apply(spend(day1, "5"), 0, 2, now_us=us(next_day)) == []


def test_raising_the_limit_resolves_and_lowering_it_triggers() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    at = datetime(2025, 6, 2, 9, tzinfo=UTC)
    engine.apply(spend(at, "8.5"), 0, 0)
    raised = engine.set_policy(policy(version=2, limit_usd=Decimal("20")), us(at))
    assert [(a["state"], a["dedup_key"]) for a in raised] == [("resolve", "pol:team=search:80:2025-06-02")]
    assert engine.set_policy(policy(version=1, limit_usd=Decimal("1")), us(at)) == []  # older version ignored
    lowered = engine.set_policy(policy(version=3, limit_usd=Decimal("8")), us(at))
    assert triggers(lowered) == ["pol:team=search:80:2025-06-02", "pol:team=search:100:2025-06-02"]
    assert len({a["alert_id"] for a in raised + lowered}) == 3  # a re-trigger gets a new id


def test_forecast_fires_once_after_the_minimum_elapsed_share() -> None:
    engine = BudgetEngine(forecast_min_elapsed=0.25)
    engine.set_policy(policy(forecast=True, thresholds=[{"percent": 100, "actions": ["notify"]}]), 0)
    start = datetime(2025, 6, 2, tzinfo=UTC)
    assert engine.apply(spend(start + timedelta(hours=1), "3"), 0, 0) == []  # too early to extrapolate
    fired = engine.apply(spend(start + timedelta(hours=7), "0.5"), 0, 1)
    assert [a["kind"] for a in fired] == ["budget_forecast"]
    assert Decimal(fired[0]["details"]["forecast_usd"]) == Decimal("12")
    assert engine.apply(spend(start + timedelta(hours=8), "0.1"), 0, 2) == []


def test_tag_scope_and_caps() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(scope_type="tag", scope_value="tier=gold", max_task_cost_usd=Decimal("1"),
                             max_call_tokens=1000, limit_usd=Decimal("100")), 0)
    at = datetime(2025, 6, 2, tzinfo=UTC)
    assert engine.apply(spend(at, "5"), 0, 0) == []  # no tag: out of scope
    gold = {"tier": "gold"}
    assert engine.apply(spend(at, "0.6", tags=gold), 0, 1) == []
    capped = engine.apply(spend(at, "0.6", tags=gold, input_tokens=2000), 0, 2)
    assert sorted(a["kind"] for a in capped) == ["call_cap", "task_cap"]
    assert engine.apply(spend(at, "0.6", tags=gold, input_tokens=2000), 0, 3) == []  # once per task / period


def test_reconcile_raises_a_counter_to_the_ledger_only_for_settled_hours() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    at = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    engine.apply(spend(at, "1"), 0, 0)
    key = next(iter(engine.counters))
    hour9, hour10 = us(datetime(2025, 6, 2, 9, tzinfo=UTC)), us(datetime(2025, 6, 2, 10, tzinfo=UTC))
    added, removed, short, alerts = engine.reconcile(key, {hour9: Decimal("9"), hour10: Decimal("50")},
                                                     settled_before_us=hour10 + 1, now_us=hour10)
    assert (added, removed, short) == (Decimal("8"), Decimal("0"), Decimal("0"))  # hour 10 is not settled yet
    assert triggers(alerts) == ["pol:team=search:80:2025-06-02"]
    added, removed, short, _ = engine.reconcile(key, {hour9: Decimal("2")}, hour10, hour10)
    # Without ``lower`` the ledger may only lag: not lowered, the shortfall reported.
    assert (added, removed, short) == (Decimal("0"), Decimal("0"), Decimal("7"))
    assert engine.counters[key].spent == Decimal("9")


def test_reconcile_lowers_a_counter_above_the_ledger_and_resolves_what_it_no_longer_reaches() -> None:
    # A re-sent event counted twice (after a restart, at another offset) pushed the counter over 100 %.
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    at = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    engine.apply(spend(at, "6"), 0, 0)
    fired = engine.apply(spend(at, "6"), 0, 1)  # the same event again: 12 of 10
    assert triggers(fired) == ["pol:team=search:80:2025-06-02", "pol:team=search:100:2025-06-02"]
    key = next(iter(engine.counters))
    hour9, hour10 = us(datetime(2025, 6, 2, 9, tzinfo=UTC)), us(datetime(2025, 6, 2, 10, tzinfo=UTC))
    added, removed, short, alerts = engine.reconcile(key, {hour9: Decimal("6")}, hour10, hour10, lower=True)
    assert (added, removed, short) == (Decimal("0"), Decimal("6"), Decimal("0"))
    assert engine.counters[key].spent == Decimal("6")  # the ledger's amount
    # 60 % now: both thresholds resolve (a suspension from the false 100 % is lifted), and none re-fires.
    assert sorted(a["dedup_key"] for a in alerts if a["state"] == "resolve") == [
        "pol:team=search:100:2025-06-02", "pol:team=search:80:2025-06-02"]
    assert triggers(alerts) == []
    # The correction is part of the persisted state: a restored counter keeps it.
    ((_, state),) = engine.take_dirty()
    assert BudgetCounter.from_state(state).spent == Decimal("6")
    # A second pass finds nothing to correct.
    assert engine.reconcile(key, {hour9: Decimal("6")}, hour10, hour10, lower=True)[:3] == (
        Decimal("0"), Decimal("0"), Decimal("0"))


def test_counter_state_round_trips_and_dirty_keys_are_handed_out_once() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy(), 0)
    engine.apply(spend(datetime(2025, 6, 2, tzinfo=UTC), "9"), 2, 41)
    ((key, state),) = engine.take_dirty()
    assert engine.take_dirty() == []
    restored = BudgetEngine()
    restored.set_policy(policy(), 0)
    restored.restore(key, state)
    assert restored.counters[key] == BudgetCounter.from_state(state)
    # The restored fired set and offsets hold: no second alert, no double count.
    assert restored.apply(spend(datetime(2025, 6, 2, tzinfo=UTC), "9"), 2, 41) == []
    assert restored.counters[key].spent == Decimal("9")


def test_unpriced_calls_are_counted_and_breach_a_policy_that_says_so() -> None:
    # Issue 15 item 3: unknown cost is not no cost. 'count' (default) counts unpriced calls beside the dollars;
    # 'breach' (fail-safe for hard budgets) treats the period as at its limit, so a hard budget suspends.
    day = datetime(2025, 6, 2, tzinfo=UTC)
    counting = BudgetEngine()
    counting.set_policy(policy(mode="hard"), 0)
    assert counting.apply(spend(day, "0", priced=False, event_id="u1"), 0, 0) == []
    ((_, counter),) = counting.counters.items()
    assert counter.unpriced == 1 and counter.spent == 0
    assert BudgetCounter.from_state(counter.to_state()).unpriced == 1

    breaching = BudgetEngine()
    breaching.set_policy(policy(mode="hard", unpriced="breach"), 0)
    assert breaching.apply(spend(day, "1"), 0, 0) == []  # 10 % of the limit: nothing yet
    fired = breaching.apply(spend(day, "0", priced=False, event_id="u2"), 0, 1)
    assert triggers(fired) == ["pol:team=search:80:2025-06-02", "pol:team=search:100:2025-06-02"]
    assert "suspend" in fired[1]["actions"]
    assert fired[1]["details"]["unpriced_calls"] == "1" and "treated as at the limit" in fired[1]["summary"]
    assert BudgetPolicy.model_validate({**policy().model_dump(), "unpriced": "breach"}).unpriced == "breach"
    with pytest.raises(FinopsError, match="unpriced"):
        BudgetPolicy.model_validate({**policy().model_dump(), "unpriced": "ignore"})


def test_detection_reads_the_pricing_status_of_a_priced_event() -> None:
    from stream_jobs.detection import build_spend_event

    zero = Decimal("0E-12")
    record = {"occurred_at": datetime(2025, 6, 2, tzinfo=UTC), "agent_id": "a", "team": "t", "project": "p",
              "model": "m", "cost_usd": zero, "input_tokens": 1, "output_tokens": 1, "event_id": "e",
              "cost_input_usd": zero, "cost_cache_read_usd": zero, "cost_cache_write_usd": zero,
              "pricing_status": "unpriced"}  # fmt: skip
    assert build_spend_event(record).priced is False
    assert build_spend_event({**record, "pricing_status": "priced"}).priced is True
