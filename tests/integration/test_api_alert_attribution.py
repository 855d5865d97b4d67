"""An agent-scoped budget's alert reaches the owning team's lead (issue 14 item 5): detection attributes it to the
team the agent's usage came from, so the alerts page, the team and agent pages and the overview agree for them.
Real parts: the budget engine's alert record, the alerts table on chdb, the HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dashboard.store import Store
from schemas.models import BudgetPolicy
from schemas.wire import AvroCodec
from sinks.rows import ALERT_COLUMNS, compute_alert_row
from stream_jobs.budgets import BudgetEngine, SpendEvent
from tests.integration.ch_fixtures import insert_rows
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    build_store,
    call,
    naive,
    running_dashboard,
    seed_fleet,
)

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    return seed_fleet(ch_client, ch_database)


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    store: Store = build_store(chdb_url, fleet.database)
    with running_dashboard(store) as running:
        yield running
    store.close()


def _lab_budget_alerts(fleet: Fleet) -> list[dict[str, Any]]:
    """What detection raises for the seeded agent budget ``bud-lab-day`` (agent lab-runner, 0.05 USD a day) fed with
    lab-runner's usage of today from the seeded ledger (its events carry team research)."""
    engine = BudgetEngine()
    engine.set_policy(BudgetPolicy.model_validate({
        "policy_id": "bud-lab-day", "version": 1, "scope_type": "agent", "scope_value": "lab-runner",
        "period": "day", "timezone": "UTC", "limit_usd": Decimal("0.05"), "mode": "soft",
        "thresholds": [{"percent": 80, "actions": ["notify"]}], "updated_at": fleet.now}), 0)
    today = fleet.now.astimezone(UTC).date()
    alerts: list[dict[str, Any]] = []
    for offset, row in enumerate(r for r in fleet.ledger if r["agent_id"] == "lab-runner"):
        at = row["occurred_at"].replace(tzinfo=UTC)
        if at.date() != today:
            continue
        event = SpendEvent((at - EPOCH) // timedelta(microseconds=1), row["agent_id"], row["team"], row["project"],
                           row["model"], row["cost_usd"], row["input_tokens"], row["output_tokens"], row["task_id"],
                           None, {}, row["event_id"])
        alerts.extend(engine.apply(event, 0, offset))
    return alerts


def test_a_team_lead_sees_their_agents_budget_alert_and_the_pages_agree(dash: RunningDashboard, fleet: Fleet,
                                                                        ch_client: Any) -> None:
    alerts = _lab_budget_alerts(fleet)
    assert [(a["kind"], a["state"], a["team"], a["agent_id"]) for a in alerts] == [
        ("budget_threshold", "trigger", "research", "lab-runner")]
    # through the wire format and the sink's own row mapping, as the alert would travel
    codec = AvroCodec()
    rows = [dict(zip(ALERT_COLUMNS, compute_alert_row(codec.decode(codec.encode(a, "Alert"))[1]), strict=True))
            for a in alerts]
    insert_rows(ch_client, fleet.database, "alerts", [{**r, "occurred_at": naive(r["occurred_at"])} for r in rows])
    (alert,) = alerts

    lead = dash.issue("team_lead", "research", subject="rita")
    page = call(dash.url + "/api/alerts", lead)[1]["alerts"]
    assert alert["alert_id"] in {a["alert_id"] for a in page}
    team_page = call(dash.url + "/api/teams/research", lead)[1]["alerts"]
    agent_page = call(dash.url + "/api/agents/lab-runner", lead)[1]["alerts"]
    assert alert["alert_id"] in {a["alert_id"] for a in team_page}
    assert alert["alert_id"] in {a["alert_id"] for a in agent_page}
    # the overview's hot budgets and the alerts page's budget alerts are the same budgets for this lead
    overview = call(dash.url + "/api/overview", lead)[1]
    hot = {b["policy_id"] for b in overview["budgets"] if Decimal(str(b["utilisation_pct"] or 0)) >= 80}
    alerted = {a["policy_id"] for a in page if a["kind"] == "budget_threshold" and a["state"] == "trigger"}
    assert hot == alerted == {"bud-lab-day"}
    assert overview["budgets_over_80"] == len(alerted)
    # another team's lead sees neither
    other = dash.issue("team_lead", "payments")
    assert alert["alert_id"] not in {a["alert_id"] for a in call(dash.url + "/api/alerts", other)[1]["alerts"]}
