"""The ledger reader against a real (embedded) ClickHouse: budget spend per hour by scope (team and tag) and the
per-window history that seeds anomaly baselines, and a budget counter reconciled from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.models import BudgetPolicy
from finops.tables import LEDGER_COLUMNS
from sinks.rows import compute_ledger_row
from stream_jobs.budgets import BudgetEngine
from stream_jobs.detection import ClickHouseLedgerReader
from tests.integration.test_detection_support import make_priced

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T9 = datetime(2025, 6, 2, 9, tzinfo=UTC)


def us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def _policy(scope_type: str, scope_value: str) -> BudgetPolicy:
    return BudgetPolicy.model_validate({
        "policy_id": "p", "version": 1, "scope_type": scope_type, "scope_value": scope_value, "period": "day",
        "limit_usd": Decimal("1"), "mode": "soft", "thresholds": [{"percent": 100, "actions": ["notify"]}],
        "updated_at": T9})


def test_budget_hours_window_history_and_reconcile(ch_client: Any, ch_database: str) -> None:
    records = [
        make_priced(agent_id="a1", team="search", occurred_at=T9 + timedelta(minutes=1), cost=Decimal("0.25"),
                    tags={"tier": "gold"}),
        make_priced(agent_id="a1", team="search", occurred_at=T9 + timedelta(minutes=7), cost=Decimal("0.50")),
        make_priced(agent_id="a2", team="search", occurred_at=T9 + timedelta(hours=1, minutes=2),
                    cost=Decimal("0.125"), tags={"tier": "gold"}),
        make_priced(agent_id="b1", team="other", occurred_at=T9 + timedelta(minutes=3), cost=Decimal("9")),
    ]
    ch_client.insert(f"{ch_database}.usage_ledger", [compute_ledger_row(r) for r in records],
                     column_names=list(LEDGER_COLUMNS))
    reader = ClickHouseLedgerReader(ch_client, ch_database)
    day_end = us(T9 + timedelta(hours=15))

    team = reader.budget_hours(_policy("team", "search"), us(T9 - timedelta(hours=9)), day_end)
    assert team == {us(T9): Decimal("0.75"), us(T9 + timedelta(hours=1)): Decimal("0.125")}
    assert reader.budget_hours(_policy("tag", "tier=gold"), us(T9), day_end) == {
        us(T9): Decimal("0.25"), us(T9 + timedelta(hours=1)): Decimal("0.125")}

    history = reader.window_history(us(T9), day_end, 300)
    assert ("agent", "a1", "search", us(T9), Decimal("0.25")) in history
    assert ("agent", "a1", "search", us(T9 + timedelta(minutes=5)), Decimal("0.5")) in history
    assert ("team", "search", "search", us(T9), Decimal("0.25")) in history

    # A counter that saw nothing (the worker started late) is raised to the ledger for the settled hour only.
    engine = BudgetEngine()
    policy = _policy("team", "search")
    engine.set_policy(policy, 0)
    key, counter = engine.counter_for(policy, us(T9))
    added, removed, short, alerts = engine.reconcile(key, team, settled_before_us=us(T9 + timedelta(hours=1)),
                                                     now_us=us(T9 + timedelta(hours=1)))
    assert (added, removed, short, alerts) == (Decimal("0.75"), Decimal("0"), Decimal("0"), [])
    assert counter.spent == Decimal("0.75")
