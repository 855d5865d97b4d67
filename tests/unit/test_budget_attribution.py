"""Budget alerts carry the attribution of what they are about (issue 14 item 5): an agent's budget alerts name the
team and project the agent's spend came from, a project's its team, a tag's only an unambiguous team; through
triggers, forecasts, resolves at rollover, and a restart (the counter's state keeps it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.models import Alert, BudgetPolicy
from stream_jobs.budgets import BudgetCounter, BudgetEngine, SpendEvent, compute_attribution

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = datetime(2025, 6, 2, tzinfo=UTC)


def us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def policy(scope_type: str, scope_value: str, **changes: Any) -> BudgetPolicy:
    return BudgetPolicy.model_validate({
        "policy_id": "pol", "version": 1, "scope_type": scope_type, "scope_value": scope_value, "period": "day",
        "timezone": "UTC", "limit_usd": Decimal("10"), "mode": "soft",
        "thresholds": [{"percent": 80, "actions": ["notify"]}], "updated_at": DAY, **changes})


def spend(hours: float, cost: str, *, agent: str = "bot-1", team: str = "payments", project: str = "checkout",
          tags: dict[str, str] | None = None) -> SpendEvent:
    return SpendEvent(us(DAY + timedelta(hours=hours)), agent, team, project, "gpt-4o", Decimal(cost), 100, 10,
                      "task-1", "chat", tags or {}, "e1")


def who(alert: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    Alert.from_avro_dict(alert)  # still a valid Alert record
    return alert["team"], alert["project"], alert["agent_id"]


def test_agent_budget_alerts_carry_the_agents_team_and_project_through_trigger_forecast_and_rollover() -> None:
    engine = BudgetEngine(forecast_min_elapsed=0.25)
    engine.set_policy(policy("agent", "bot-1", forecast=True), 0)
    assert engine.apply(spend(1, "1"), 0, 0) == []
    forecast = engine.apply(spend(7, "2"), 0, 1)
    assert [(a["kind"], who(a)) for a in forecast] == [("budget_forecast", ("payments", "checkout", "bot-1"))]
    (trigger,) = [a for a in engine.apply(spend(8, "6"), 0, 2) if a["kind"] == "budget_threshold"]
    assert who(trigger) == ("payments", "checkout", "bot-1")
    assert trigger["details"]["scope_type"] == "agent" and "teams" not in trigger["details"]
    # the resolve at rollover comes from the clock, not from an event: the counter remembers the attribution
    resolved = engine.advance(us(DAY + timedelta(days=1, minutes=1)))
    assert {(a["kind"], a["state"]) for a in resolved} == {("budget_threshold", "resolve"),
                                                           ("budget_forecast", "resolve")}
    assert {who(a) for a in resolved} == {("payments", "checkout", "bot-1")}


def test_attribution_survives_a_restart_and_an_old_state_without_it_loads() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy("agent", "bot-1"), 0)
    engine.apply(spend(1, "7"), 0, 0)
    ((key, state),) = engine.take_dirty()
    assert state is not None
    restarted = BudgetEngine()
    restarted.set_policy(policy("agent", "bot-1"), 0)
    restarted.restore(key, state)
    assert restarted.counters[key].teams == {"payments": Decimal("7")}
    (trigger,) = restarted.apply(spend(2, "1"), 0, 1)
    assert who(trigger) == ("payments", "checkout", "bot-1")
    old = {k: v for k, v in state.items() if k not in ("teams", "projects")}
    assert BudgetCounter.from_state(old).teams == {}


def test_project_and_tag_budgets_and_an_agent_that_spent_under_two_teams() -> None:
    engine = BudgetEngine()
    engine.set_policy(policy("project", "checkout"), 0)
    engine.apply(spend(1, "3", agent="bot-2", team="search"), 0, 0)
    (trigger,) = engine.apply(spend(2, "6"), 0, 1)
    # payments spent most under the project: its lead sees the alert; the details name every team
    assert who(trigger) == ("payments", "checkout", None)
    assert trigger["details"]["teams"] == "payments,search"

    tag = BudgetEngine()
    tag.set_policy(policy("tag", "tier=gold"), 0)
    (one_team,) = tag.apply(spend(1, "9", tags={"tier": "gold"}), 0, 0)
    assert who(one_team) == ("payments", "checkout", None)  # no agent_id: a tag budget enforces on no agent
    zero = Decimal(0)
    gold = policy("tag", "tier=gold")
    assert compute_attribution(gold, {"payments": zero, "search": zero}, {"checkout": zero}) == {
        "project": "checkout"}  # a tag across teams stays organisation-wide
    assert compute_attribution(policy("agent", "bot-1"), {"payments": Decimal(1), "search": Decimal(2)},
                               {}) == {"team": "search"}
    assert compute_attribution(policy("agent", "bot-1"), {"b": Decimal(1), "a": Decimal(1)}, {}) == {"team": "a"}
    assert compute_attribution(policy("team", "payments"), {"payments": Decimal(1)}, {"x": Decimal(1)}) == {}
