"""Every metric view on hand-made rows with a known exact Decimal answer (real chdb, migrated database per test)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.integration.ch_fixtures import insert_ledger, insert_rows, ledger_row, utc

pytestmark = pytest.mark.integration

D = Decimal


def naive(moment: datetime) -> datetime:
    """clickhouse-connect returns UTC DateTime64 values as naive datetimes (tz_mode default)."""
    return moment.replace(tzinfo=None)


def rows_of(client: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql).result_rows]


def test_cost_per_task_uses_final_and_corrections(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    t1a = ledger_row("0.10", utc(2024, 5, 1, 10, 0), task_id="T1", status="error", attempt=1)
    t1b = ledger_row("0.25", utc(2024, 5, 1, 10, 1), task_id="T1", status="ok", attempt=2)
    t2 = ledger_row("1.000000000001", utc(2024, 5, 1, 11, 0), task_id="T2", status="timeout")
    no_task = ledger_row("9", utc(2024, 5, 1, 11, 0))
    insert_ledger(ch_client, db, [t1a, t1b, t2, no_task], token="b1")
    # a replay of t1b under another batch token: the ledger holds it twice until a merge; FINAL must hide it
    insert_ledger(ch_client, db, [t1b], token="b2")
    correction = dict(
        t2, row_kind="correction", correction_id="rerate-1", cost_usd=D("-0.5"), cost_input_usd=D("-0.5"),
        input_tokens=0, output_tokens=0, requests=0,
    )
    insert_ledger(ch_client, db, [correction], token="b3")

    got = rows_of(
        ch_client,
        f"SELECT task_id, team, project, agent_id, cost_usd, calls, first_call_at, last_call_at, succeeded "
        f"FROM {db}.v_cost_per_task ORDER BY task_id",
    )
    assert got == [
        ("T1", "team-a", "proj-x", "agent-1", D("0.35"), 2,
         naive(utc(2024, 5, 1, 10, 0)), naive(utc(2024, 5, 1, 10, 1)), True),
        ("T2", "team-a", "proj-x", "agent-1", D("0.500000000001"), 1,
         naive(utc(2024, 5, 1, 11)), naive(utc(2024, 5, 1, 11)), False),
    ]


def test_cost_per_successful_task(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    rows = [
        ledger_row("0.35", utc(2024, 5, 1, 10), task_id="T1", status="ok"),
        ledger_row("0.500000000001", utc(2024, 5, 1, 11), task_id="T2", status="error"),
        ledger_row("0.15", utc(2024, 5, 1, 12), task_id="T3", status="ok"),
        ledger_row("2", utc(2024, 5, 1, 12), task_id="T4", status="error", team="team-b"),
    ]
    insert_ledger(ch_client, db, rows)
    got = rows_of(
        ch_client,
        f"SELECT day, team, project, total_task_cost_usd, tasks, successful_tasks, cost_per_successful_task_usd "
        f"FROM {db}.v_cost_per_successful_task ORDER BY team",
    )
    assert got == [
        # 1.000000000001 / 2 = 0.5000000000005: Decimal(38, 12) division truncates the 13th place
        (date(2024, 5, 1), "team-a", "proj-x", D("1.000000000001"), 3, 2, D("0.500000000000")),
        (date(2024, 5, 1), "team-b", "proj-x", D("2"), 1, 0, None),
    ]


def test_cost_per_agent_day(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    rows = [
        ledger_row("1.25", utc(2024, 5, 1, 0, 0), status="error"),
        ledger_row("2.000000000003", utc(2024, 5, 1, 23, 59, 59), attempt=2, model="gpt-4o-mini"),
        ledger_row("4", utc(2024, 5, 2, 0, 0)),
        ledger_row("0.5", utc(2024, 5, 1, 5), agent_id="agent-2"),
    ]
    insert_ledger(ch_client, db, rows[:2])
    insert_ledger(ch_client, db, rows[2:])  # two blocks: the rollup holds partial rows that sum() must add up
    got = rows_of(
        ch_client,
        f"SELECT day, agent_id, cost_usd, calls, errors, retries, input_tokens "
        f"FROM {db}.v_cost_per_agent_day ORDER BY day, agent_id",
    )
    assert got == [
        (date(2024, 5, 1), "agent-1", D("3.250000000003"), 2, 1, 1, 200),
        (date(2024, 5, 1), "agent-2", D("0.5"), 1, 0, 0, 100),
        (date(2024, 5, 2), "agent-1", D("4"), 1, 0, 0, 100),
    ]


def test_model_cost_distribution(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    rows = [
        ledger_row("1", utc(2024, 5, 1, 1), provider="anthropic", model="claude-sonnet-4"),
        ledger_row("0.5", utc(2024, 5, 1, 2)),
        ledger_row("1.5", utc(2024, 5, 1, 3), agent_id="agent-2"),
        ledger_row("0.7", utc(2024, 5, 2, 3)),
    ]
    insert_ledger(ch_client, db, rows)
    got = rows_of(
        ch_client,
        f"SELECT day, provider, model, cost_usd, calls, day_total_usd, share_pct "
        f"FROM {db}.v_model_cost_distribution ORDER BY day, provider",
    )
    assert got == [
        # 1 / 3 * 100 and 2 / 3 * 100, truncated at 12 places
        (date(2024, 5, 1), "anthropic", "claude-sonnet-4", D("1"), 1, D("3"), D("33.333333333333")),
        (date(2024, 5, 1), "openai", "gpt-4o", D("2"), 2, D("3"), D("66.666666666666")),
        (date(2024, 5, 2), "openai", "gpt-4o", D("0.7"), 1, D("0.7"), D("100")),
    ]


def test_cost_trend(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    rows = [
        ledger_row("10", utc(2024, 3, 31, 12)),
        ledger_row("8", utc(2024, 3, 30, 12)),
        ledger_row("5", utc(2024, 3, 24, 12)),
        ledger_row("4", utc(2024, 2, 29, 12)),  # 2024-03-31 minus one month clamps to the leap day
        ledger_row("3", utc(2024, 3, 31, 12), team="team-b"),
    ]
    insert_ledger(ch_client, db, rows)
    got = rows_of(
        ch_client,
        f"SELECT day, team, cost_usd, prev_day_cost_usd, prev_week_cost_usd, prev_month_cost_usd, "
        f"dod_pct, wow_pct, mom_pct FROM {db}.v_cost_trend WHERE day = '2024-03-31' ORDER BY team",
    )
    assert got == [
        (date(2024, 3, 31), "team-a", D("10"), D("8"), D("5"), D("4"), D("25"), D("100"), D("150")),
        (date(2024, 3, 31), "team-b", D("3"), D("0"), D("0"), D("0"), None, None, None),
    ]
    day_before = rows_of(ch_client, f"SELECT dod_pct, mom_pct FROM {db}.v_cost_trend WHERE day = '2024-03-30'")
    # 03-29 had no spend (no percent from 0); 03-30 minus a month is 02-29: (8 - 4) / 4 = 100 %
    assert day_before == [(None, D("100"))]


def test_waste_percentage(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    insert_ledger(
        ch_client,
        db,
        [ledger_row("4", utc(2024, 5, 1, 9)), ledger_row("2", utc(2024, 5, 1, 9), team="team-b")],
    )
    signal = {
        "signal_id": "s1", "kind": "retry_loop", "detected_at": utc(2024, 5, 1, 10), "occurred_at": utc(2024, 5, 1, 9),
        "team": "team-a", "project": "proj-x", "agent_id": "agent-1", "task_id": "T1", "model": "gpt-4o",
        "avoidable_cost_usd": D("0.5"), "evidence": "{}",
    }
    other = dict(signal, signal_id="s2", kind="duplicate_prompt", avoidable_cost_usd=D("0.25"))
    insert_rows(ch_client, db, "waste_signals", [signal, other])
    # the detector re-raised s1 later (same id): FINAL keeps one
    insert_rows(ch_client, db, "waste_signals", [dict(signal, detected_at=utc(2024, 5, 1, 11))])
    got = rows_of(
        ch_client,
        f"SELECT day, team, cost_usd, avoidable_cost_usd, signals, waste_pct FROM {db}.v_waste_percentage "
        "ORDER BY team",
    )
    assert got == [
        (date(2024, 5, 1), "team-a", D("4"), D("0.75"), 2, D("18.75")),
        (date(2024, 5, 1), "team-b", D("2"), D("0"), 0, D("0")),
    ]


def _period_start(now: datetime, tz: str, period: str) -> datetime:
    local = now.astimezone(ZoneInfo(tz))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start -= timedelta(days=start.weekday())
    elif period == "month":
        start = start.replace(day=1)
    # re-attach the zone so a DST change between now and the period start is honoured
    return start.replace(tzinfo=None).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)


def _budget(policy_id: str, version: int, scope_type: str, scope_value: str, period: str, tz: str, limit: str,
            **extra: Any) -> dict[str, Any]:
    row = {
        "policy_id": policy_id, "version": version, "scope_type": scope_type, "scope_value": scope_value,
        "period": period, "timezone": tz, "limit_usd": D(limit), "mode": "soft", "thresholds": "[]",
        "enabled": True, "deleted": False, "updated_at": utc(2024, 1, 1),
    }
    row.update(extra)
    return row


def test_budget_utilisation_in_each_budgets_zone_and_period(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    now = datetime.now(UTC)
    kolkata_day = _period_start(now, "Asia/Kolkata", "day")
    ny_month = _period_start(now, "America/New_York", "month")
    if (now - max(kolkata_day, ny_month)) < timedelta(seconds=5):
        pytest.skip("a period is rolling over right now")
    rows = [
        ledger_row("1.5", kolkata_day),  # first instant of the Kolkata day: in
        ledger_row("100", kolkata_day - timedelta(seconds=1)),  # last second of the day before: out
        ledger_row("50", kolkata_day, team="team-z"),  # other team: out
        ledger_row("1", ny_month, team="team-t", tags={"env": "prod"}),  # in
        ledger_row("7", ny_month, team="team-t", tags={"env": "dev"}),  # other tag value: out
        ledger_row("9", ny_month - timedelta(seconds=1), team="team-t", tags={"env": "prod"}),  # previous month: out
    ]
    insert_ledger(ch_client, db, rows)
    budgets = [
        _budget("b1", 1, "team", "team-a", "day", "Asia/Kolkata", "10"),
        _budget("b1", 2, "team", "team-a", "day", "Asia/Kolkata", "20"),  # the newer version wins
        _budget("b2", 1, "tag", "env=prod", "month", "America/New_York", "4"),
        _budget("b3", 1, "agent", "agent-9", "week", "UTC", "3"),
        _budget("b4", 1, "team", "team-a", "day", "UTC", "1"),
        _budget("b4", 2, "team", "team-a", "day", "UTC", "1", deleted=True),  # tombstone
        _budget("b5", 1, "team", "team-a", "day", "UTC", "1", enabled=False),
    ]
    insert_rows(ch_client, db, "budgets", budgets)
    got = rows_of(
        ch_client,
        f"SELECT policy_id, version, period, limit_usd, spent_usd, utilisation_pct, period_start_local "
        f"FROM {db}.v_budget_utilisation ORDER BY policy_id",
    )
    kolkata_start = kolkata_day.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M:%S")
    ny_start = ny_month.astimezone(ZoneInfo("America/New_York")).strftime("%Y-%m-%d %H:%M:%S")
    week_start = _period_start(now, "UTC", "week").strftime("%Y-%m-%d %H:%M:%S")
    assert got == [
        ("b1", 2, "day", D("20"), D("1.5"), D("7.5"), kolkata_start),
        ("b2", 1, "month", D("4"), D("1"), D("25"), ny_start),
        ("b3", 1, "week", D("3"), D("0"), D("0"), week_start),
    ]


def test_unpriced_calls_and_tokens_stand_beside_the_dollars(ch_client: Any, ch_database: str) -> None:
    # Issue 15 item 3: unpriced spend is never invisible; a call priced by its report is in the dollars.
    db = ch_database
    now = datetime.now(UTC).replace(microsecond=0)
    day_start = _period_start(now, "UTC", "day")
    if now - day_start < timedelta(seconds=5):
        pytest.skip("the UTC day is rolling over right now")
    unpriced = dict(pricing_status="unpriced", price_source="none", model="atlas-xl", computed_cost_usd=None,
                    unpriced_reason="unknown model 'atlas-xl' for provider 'openai'")  # fmt: skip
    rows = [
        ledger_row("2", day_start),
        ledger_row("0", day_start, input_tokens=1000, output_tokens=300, **unpriced),
        ledger_row("0", day_start + timedelta(seconds=1), input_tokens=500, output_tokens=20, **unpriced),
        ledger_row("0.75", day_start, model="atlas-xl", price_source="reported", reported_cost=D("0.75"),
                   computed_cost_usd=None, cost_basis="reported_if_unpriced"),
    ]
    insert_ledger(ch_client, db, rows)
    insert_rows(ch_client, db, "budgets", [_budget("u1", 1, "team", "team-a", "day", "UTC", "10")])
    got = rows_of(ch_client, f"SELECT policy_id, spent_usd, unpriced_calls, unpriced_input_tokens, "
                             f"unpriced_output_tokens FROM {db}.v_budget_utilisation")  # fmt: skip
    assert got == [("u1", D("2.75"), 2, 1500, 320)]
    got = rows_of(ch_client, f"SELECT provider, model, unpriced_calls, input_tokens, output_tokens, reason, fix "
                             f"FROM {db}.v_unpriced_usage")  # fmt: skip
    assert len(got) == 1 and got[0][:5] == ("openai", "atlas-xl", 2, 1500, 320)
    assert "atlas-xl" in got[0][5] and "price-book override for openai/atlas-xl" in got[0][6]
    got = rows_of(ch_client, f"SELECT sum(unpriced_calls), sum(cost_usd) FROM {db}.v_cost_per_agent_day")
    assert got == [(2, D("2.75"))]
