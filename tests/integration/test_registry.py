"""Agent registry: request, approve, list; unapproved costly agents raise approval alerts (throttle if the policy
says so)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from governance.config import ApprovalPolicy
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.registry import (
    ApprovalError,
    approve_agent,
    build_unapproved_alerts,
    find_unapproved,
    list_agents,
    request_agent,
)
from schemas.models import Alert

pytestmark = pytest.mark.integration

NOW = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
POLICY = ApprovalPolicy(threshold_usd=Decimal(100), team_leads={"search": ("alice",), "*": ("finops-admin",)},
                        on_unapproved="throttle", throttle_rate_per_minute=5)


def _traffic(client: Any, database: str, agent: str, team: str, calls: int) -> Decimal:
    pricer = Pricer()
    rows = [compute_priced_row({"event_id": f"{agent}-{i}", "source": "t", "occurred_at": NOW - timedelta(hours=2,
                                seconds=i), "agent_id": agent, "team": team, "project": "p", "provider": "openai",
                                "model": "gpt-4o-2024-08-06", "input_tokens": 20_000, "output_tokens": 2_000},
                               pricer, priced_at=NOW) for i in range(calls)]
    insert_ledger_rows(client, database, rows)
    return sum((r["cost_usd"] for r in rows), Decimal(0))


def test_request_approve_list(ch_client: Any, ch_database: str) -> None:
    cheap = request_agent(ch_client, ch_database, agent_id="faq-bot", team="search", owner="bob",
                          expected_monthly_cost_usd=Decimal(20), requested_by="bob", policy=POLICY, now=NOW)
    assert cheap.status == "approved"
    costly = request_agent(ch_client, ch_database, agent_id="researcher", team="search", owner="bob",
                           expected_monthly_cost_usd=Decimal(2500), requested_by="bob", policy=POLICY, now=NOW)
    assert costly.status == "requested"
    with pytest.raises(ApprovalError, match="alice"):
        approve_agent(ch_client, ch_database, agent_id="researcher", approver="mallory", policy=POLICY, now=NOW)
    request_agent(ch_client, ch_database, agent_id="lonely", team="nobody-leads", owner="bob",
                  expected_monthly_cost_usd=Decimal(2500), requested_by="bob",
                  policy=ApprovalPolicy(threshold_usd=Decimal(100)), now=NOW)
    with pytest.raises(ApprovalError, match=r"none configured \(approval.team_leads in the governance config: "
                                            r"`--config FILE` or FINOPS_GOVERNANCE_CONFIG"):
        approve_agent(ch_client, ch_database, agent_id="lonely", approver="bob",
                      policy=ApprovalPolicy(threshold_usd=Decimal(100)), now=NOW)
    with pytest.raises(ApprovalError, match="not registered"):
        approve_agent(ch_client, ch_database, agent_id="ghost", approver="alice", policy=POLICY, now=NOW)
    approved = approve_agent(ch_client, ch_database, agent_id="researcher", approver="alice", policy=POLICY,
                             now=NOW + timedelta(minutes=1))
    assert approved.status == "approved" and approved.decided_by == "alice"
    listed = {e.agent_id: e for e in list_agents(ch_client, ch_database, team="search")}
    assert listed["researcher"].status == "approved" and listed["faq-bot"].status == "approved"
    audit = ch_client.query(f"SELECT agent_id, action, actor FROM {ch_database}.agent_approvals ORDER BY at, action"
                            ).result_rows
    assert ("researcher", "approve", "alice") in audit and len(audit) == 4


def test_unapproved_agent_emitting_events_raises_a_throttle_alert(ch_client: Any, ch_database: str) -> None:
    request_agent(ch_client, ch_database, agent_id="pending", team="search", owner="bob",
                  expected_monthly_cost_usd=Decimal(900), requested_by="bob", policy=POLICY, now=NOW)
    request_agent(ch_client, ch_database, agent_id="ok-agent", team="search", owner="bob",
                  expected_monthly_cost_usd=Decimal(900), requested_by="bob", policy=POLICY, now=NOW)
    approve_agent(ch_client, ch_database, agent_id="ok-agent", approver="finops-admin", policy=POLICY, now=NOW)
    _traffic(ch_client, ch_database, "pending", "search", 3)
    _traffic(ch_client, ch_database, "ok-agent", "search", 3)
    spend = _traffic(ch_client, ch_database, "shadow", "growth", 60)      # unregistered, costly run rate
    _traffic(ch_client, ch_database, "tiny", "growth", 0)
    found = {a.agent_id: a for a in find_unapproved(ch_client, ch_database, POLICY, now=NOW)}
    assert set(found) == {"pending", "shadow"}
    assert found["pending"].status == "requested"
    assert found["shadow"].status == "unregistered" and found["shadow"].spend_usd == spend
    alerts = build_unapproved_alerts(list(found.values()), POLICY, now=NOW)
    for alert in alerts:
        model = Alert.model_validate(alert)
        assert model.kind == "approval" and model.actions == ["notify", "throttle"]
        assert model.details["throttle_rate_per_minute"] == "5"
    assert {a["agent_id"] for a in alerts} == {"pending", "shadow"}
    notify_only = build_unapproved_alerts(list(found.values()), ApprovalPolicy(threshold_usd=Decimal(100)), now=NOW)
    assert all(a["actions"] == ["notify"] for a in notify_only)
