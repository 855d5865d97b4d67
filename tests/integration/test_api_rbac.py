"""Roles and scoping through the real API: a developer sees only their teams, a team lead cannot issue control
commands, a revoked token is refused, crafted filter values never reach the SQL text, writes are audited."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from dashboard.store import Store
from tests.integration.ch_fixtures import insert_ledger, ledger_row
from tests.integration.test_api_support import (
    AGENTS,
    Fleet,
    RunningDashboard,
    build_store,
    call,
    running_dashboard,
    seed_fleet,
)

pytestmark = pytest.mark.integration

CRAFTED = (
    "payments' OR '1'='1",
    "' OR 1=1 --",
    "payments') OR (1=1",
    "x\\' OR team != '",
    "search'; DROP TABLE usage_ledger; --",
    "{scope_all:UInt8}",
)


class SpyStore(Store):
    """Records every SQL text and its parameters, so a test can prove request values were bound, not formatted."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.reader, inner.writer, inner.where)
        self.statements: list[tuple[str, dict[str, Any]]] = []

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        self.statements.append((sql, dict(params or {})))
        return super().select(sql, params)


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    return seed_fleet(ch_client, ch_database)


@pytest.fixture
def spy(fleet: Fleet, chdb_url: str) -> Iterator[SpyStore]:
    store = SpyStore(build_store(chdb_url, fleet.database))
    yield store
    store.close()


@pytest.fixture
def dash(spy: SpyStore) -> Iterator[RunningDashboard]:
    with running_dashboard(spy) as running:
        yield running


def audit(store: Store) -> list[tuple[str, str, str, str]]:
    return [(r["role"], r["action"], r["target"], r["outcome"])
            for r in store.select("SELECT role, action, target, outcome FROM admin_audit ORDER BY at, audit_id")]


def test_developer_reads_only_their_teams(dash: RunningDashboard) -> None:
    dev = dash.issue("developer", "payments", subject="ana")
    status, body = call(dash.url + "/api/agents", dev)
    assert status == 200 and {a["agent_id"] for a in body["agents"]} == {"pay-bot-1", "pay-bot-2"}
    for other in ("search-ranker", "lab-runner"):
        status, body = call(dash.url + f"/api/agents/{other}", dev)
        assert status == 404 and "among your teams" in body["error"]
    assert call(dash.url + "/api/teams/search", dev)[0] == 404
    assert call(dash.url + "/api/agents?team=search", dev)[1] == {"agents": []}
    status, overview = call(dash.url + "/api/overview", dev)
    assert [t["team"] for t in overview["teams"]] == ["payments"]
    admin_teams = {t["team"]: t for t in call(dash.url + "/api/teams", dash.issue("finops_admin"))[1]["teams"]}
    assert overview["month_usd"] == admin_teams["payments"]["month_usd"]
    assert overview["anomalies"]["count"] == 1
    assert {a["team"] for a in call(dash.url + "/api/alerts", dev)[1]["alerts"]} == {"payments"}
    assert {b["policy_id"] for b in call(dash.url + "/api/budgets", dev)[1]["budgets"]} == {"bud-payments-month"}
    recs = call(dash.url + "/api/recommendations", dev)[1]["recommendations"]
    assert {r["team"] for r in recs} == {"payments"}
    models = call(dash.url + "/api/models", dev)[1]["models"]
    assert sum(m["calls"] for m in models) == sum(
        a["calls_30d"] for a in call(dash.url + "/api/agents", dev)[1]["agents"])
    # admin-only reads
    for path in ("/api/audit", "/api/tokens", "/api/reports/chargeback"):
        assert call(dash.url + path, dev)[0] == 403


def test_project_narrowed_developer(dash: RunningDashboard) -> None:
    dev = dash.issue("developer", "payments", projects=("refunds",))
    assert {a["agent_id"] for a in call(dash.url + "/api/agents", dev)[1]["agents"]} == {"pay-bot-2"}
    assert call(dash.url + "/api/agents/pay-bot-1", dev)[0] == 404


def test_developer_page_for_another_teams_agent_shows_no_data(dash: RunningDashboard) -> None:
    dev = dash.issue("developer", "payments")
    # pages are a static shell; without a session they redirect to the login page
    status, text = call(dash.url + "/agents/search-ranker")
    assert status == 200 and "Paste the token" in text
    status, text = call(dash.url + "/agents/search-ranker", dev)
    assert status == 200 and "search-ranker" not in text  # the shell carries no data; the API refuses it


def test_team_lead_cannot_issue_control_commands_operator_can(dash: RunningDashboard, spy: SpyStore) -> None:
    from schemas.models import ControlCommand, verify
    from schemas.wire import AvroCodec

    lead = dash.issue("team_lead", "payments", subject="lead")
    command = {"scope_type": "agent", "scope_value": "pay-bot-1", "action": "suspend", "reason": "runaway"}
    status, body = call(dash.url + "/api/control", lead, method="POST", body=command)
    assert status == 403 and "may not control.issue" in body["error"]
    assert dash.publisher.records == []

    operator = dash.issue("operator", "payments", subject="ops")
    status, body = call(dash.url + "/api/control", operator, method="POST",
                        body={**command, "scope_value": "search-ranker"})
    assert status == 403 and "outside your teams" in body["error"]
    status, body = call(dash.url + "/api/control", operator, method="POST", body=command)
    assert status == 202
    [record] = dash.publisher.records
    assert (record.topic, record.key) == ("agent.control.v1", "agent:pay-bot-1")
    name, decoded = AvroCodec().decode(record.value)
    published = ControlCommand.from_avro_dict(decoded)
    assert name == "ControlCommand" and published.command_id == body["command_id"]
    assert published.action == "suspend" and published.issued_by == "ops"
    assert verify(published, {"k1": b"test-signing-secret"})
    status, body = call(dash.url + "/api/control", operator, method="POST",
                        body={**command, "action": "throttle"})
    assert status == 400 and "rate_per_minute" in body["error"]
    assert audit(spy) == [
        ("team_lead", "control.issue", "agent:pay-bot-1", "denied"),
        ("operator", "control.issue", "agent:search-ranker", "denied"),
        ("operator", "control.issue", "agent:pay-bot-1", "ok"),
    ]


def test_budgets_and_approvals_by_role(dash: RunningDashboard, spy: SpyStore) -> None:
    from schemas.models import BudgetPolicy
    from schemas.wire import AvroCodec

    lead = dash.issue("team_lead", "payments", subject="lead")
    dev = dash.issue("developer", "payments", subject="dev")
    policy = {"policy_id": "bud-payments-month", "scope_type": "team", "scope_value": "payments", "period": "month",
              "limit_usd": "25", "mode": "soft", "thresholds": [{"percent": 80, "actions": ["notify"]}]}
    assert call(dash.url + "/api/budgets", dev, method="POST", body=policy)[0] == 403
    status, body = call(dash.url + "/api/budgets", lead, method="POST",
                        body={**policy, "scope_value": "search", "policy_id": "steal"})
    assert status == 403
    status, body = call(dash.url + "/api/budgets", lead, method="POST", body={**policy, "limit_usd": 2.5})
    assert status == 400 and "never a float" in body["error"]
    status, body = call(dash.url + "/api/budgets", lead, method="POST", body=policy)
    assert status == 202 and body["version"] == 2  # the seeded policy is version 1
    _, decoded = AvroCodec().decode(dash.publisher.records[-1].value)
    assert BudgetPolicy.from_avro_dict(decoded).limit_usd == 25

    assert call(dash.url + "/api/approvals/al-approval-pay", dev, method="POST", body={"decision": "approve"})[0] == 403
    other_lead = dash.issue("team_lead", "search")
    assert call(dash.url + "/api/approvals/al-approval-pay", other_lead, method="POST",
                body={"decision": "approve"})[0] == 404
    status, body = call(dash.url + "/api/approvals/al-approval-pay", lead, method="POST",
                        body={"decision": "approve", "note": "one-off migration"})
    assert status == 200
    [approval] = call(dash.url + "/api/approvals", lead)[1]["approvals"]
    assert approval["decided_by"] == "lead" and '"decision":"approve"' in approval["decision"]
    assert call(dash.url + "/api/approvals", other_lead)[1]["approvals"] == []
    outcomes = [(role, action, outcome) for role, action, _, outcome in audit(spy)]
    assert outcomes == [
        ("developer", "budget.put", "denied"), ("team_lead", "budget.put", "denied"),
        ("team_lead", "budget.put", "ok"), ("developer", "approval.decide", "denied"),
        ("team_lead", "approval.decide", "denied"), ("team_lead", "approval.decide", "ok"),
    ]


def test_team_lead_cannot_take_over_or_widen_another_teams_budget(dash: RunningDashboard, spy: SpyStore,
                                                                  fleet: Fleet, ch_client: Any) -> None:
    # issue 14 item 3: POSTing another team's policy_id with one's own team as scope took that budget over.
    lead = dash.issue("team_lead", "payments", subject="lead")
    base = {"period": "month", "limit_usd": "100000", "mode": "soft",
            "thresholds": [{"percent": 80, "actions": ["notify"]}]}
    refused = [
        ({"policy_id": "bud-ranking-week", "scope_type": "team", "scope_value": "payments"}, "project:ranking"),
        ({"policy_id": "bud-lab-day", "scope_type": "agent", "scope_value": "pay-bot-1"}, "agent:lab-runner"),
        ({"policy_id": "bud-tag-cost-center", "scope_type": "team", "scope_value": "payments"},
         "tag:cost_center=42"),
    ]
    for target, existing in refused:
        status, body = call(dash.url + "/api/budgets", lead, method="POST", body={**base, **target})
        assert status == 403, (target, body)
        assert f"exists with scope {existing}, which is outside your teams" in body["error"]
    assert dash.publisher.records == []
    denied = spy.select("SELECT target, details FROM admin_audit WHERE outcome = 'denied' ORDER BY at, audit_id")
    assert [r["target"] for r in denied] == ["bud-ranking-week", "bud-lab-day", "bud-tag-cost-center"]
    assert '"existing_scope":"project:ranking"' in denied[0]["details"]

    # within their own teams a lead may re-scope their budget; the owner may move theirs; an admin may do anything
    status, _ = call(dash.url + "/api/budgets", lead, method="POST",
                     body={**base, "policy_id": "bud-payments-month", "scope_type": "project",
                           "scope_value": "checkout"})
    assert status == 202
    search_lead = dash.issue("team_lead", "search")
    status, _ = call(dash.url + "/api/budgets", search_lead, method="POST",
                     body={**base, "policy_id": "bud-ranking-week", "scope_type": "team", "scope_value": "search"})
    assert status == 202
    status, _ = call(dash.url + "/api/budgets", dash.issue("finops_admin"), method="POST",
                     body={**base, "policy_id": "bud-lab-day", "scope_type": "team", "scope_value": "payments"})
    assert status == 202
    assert [r.key for r in dash.publisher.records] == ["bud-payments-month", "bud-ranking-week", "bud-lab-day"]

    # a project another team also spends under is not the lead's alone: no new budget on it either
    insert_ledger(ch_client, fleet.database, [ledger_row("0.01", fleet.now - timedelta(minutes=1),
                                                         agent_id="pay-bot-1", team="payments", project="ranking")])
    status, body = call(dash.url + "/api/budgets", lead, method="POST",
                        body={**base, "policy_id": "pay-ranking", "scope_type": "project", "scope_value": "ranking"})
    assert status == 403 and "outside your teams" in body["error"]
    # ... and its owner's lead no longer owns it wholly either (the shared project's budget is an admin's)
    status, body = call(dash.url + "/api/budgets", search_lead, method="POST",
                        body={**base, "policy_id": "bud-ranking-week", "scope_type": "team", "scope_value": "search"})
    assert status == 403 and "exists with scope project:ranking" in body["error"]


def test_revoked_token_is_refused(dash: RunningDashboard, spy: SpyStore) -> None:
    dev = dash.issue("developer", "payments")
    admin = dash.issue("finops_admin", subject="root")
    assert call(dash.url + "/api/me", dev)[0] == 200
    token_id = dev.split("_")[1]
    assert call(dash.url + f"/api/tokens/{token_id}/revoke", dev, method="POST")[0] == 403
    status, body = call(dash.url + f"/api/tokens/{token_id}/revoke", admin, method="POST")
    assert status == 200 and body["revoked"] is True
    status, body = call(dash.url + "/api/me", dev)
    assert status == 401 and body["error"] == "invalid or revoked token"
    assert call(dash.url + "/api/overview", dev)[0] == 401
    assert call(dash.url + "/api/me", "fo_" + token_id + "_" + "A" * 43)[0] == 401
    assert call(dash.url + "/api/me")[0] == 401
    assert ("finops_admin", "token.revoke", token_id, "ok") in audit(spy)


def test_cookie_session_and_csrf(dash: RunningDashboard) -> None:
    operator = dash.issue("operator", "payments")
    status, me = call(dash.url + "/api/session", method="POST", body={"token": operator})
    assert status == 200 and me["role"] == "operator"
    cookie = {"Cookie": f"finops_token={operator}"}
    command = {"scope_type": "agent", "scope_value": "pay-bot-1", "action": "resume", "reason": "ok again"}
    status, body = call(dash.url + "/api/control", method="POST", body=command, headers=cookie)
    assert status == 403 and "X-Finops-Request" in body["error"]
    status, _ = call(dash.url + "/api/control", method="POST", body=command,
                     headers={**cookie, "X-Finops-Request": "1"})
    assert status == 202
    assert call(dash.url + "/api/session", method="POST", body={"token": "nope"})[0] == 401


def _filter_requests(dash: RunningDashboard, value: str) -> list[tuple[int, Any]]:
    """The same filtered requests with ``value`` in every filter position, as a developer and as an admin."""
    from urllib.parse import quote

    dev = dash.issue("developer", "payments")
    admin = dash.issue("finops_admin")
    q = quote(value, safe="")
    return [
        call(dash.url + f"/api/agents?team={q}", dev),
        call(dash.url + f"/api/alerts?team={q}&kind=anomaly&agent={q}", dev),
        call(dash.url + f"/api/agents/{q}", dev),
        call(dash.url + f"/api/teams/{q}", dev),
        call(dash.url + f"/api/agents?team={q}", admin),
        call(dash.url + f"/api/alerts?team={q}&kind=anomaly&agent={q}", admin),
        call(dash.url + f"/api/agents/{q}", admin),
    ]


@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_filter_values_cannot_change_the_sql(dash: RunningDashboard, spy: SpyStore, crafted: str) -> None:
    spy.statements.clear()
    benign = _filter_requests(dash, "no-such-team")
    benign_sql = [sql for sql, _ in spy.statements]
    spy.statements.clear()
    answers = _filter_requests(dash, crafted)
    crafted_statements = list(spy.statements)
    # the same answers as for a plain unknown name: nothing, for the developer and the admin alike
    assert [status for status, _ in answers] == [status for status, _ in benign] == [200, 200, 404, 404, 200, 200, 404]
    assert answers[0][1] == answers[4][1] == {"agents": []}
    assert answers[1][1] == answers[5][1] == {"alerts": []}
    # every SQL text sent is one of the texts a plain value produces: the value only travels as a bound
    # parameter (a value aiohttp's router already refuses in a path, such as one with braces, sends fewer)
    assert {sql for sql, _ in crafted_statements} <= set(benign_sql)
    assert any(crafted in params.values() for _, params in crafted_statements)
    # an alert kind is one of a fixed list (dashboard.params): a crafted one is refused before any SQL runs
    spy.statements.clear()
    status, body = call(dash.url + f"/api/alerts?kind={quote(crafted, safe='')}", dash.issue("finops_admin"))
    assert status == 400 and body["parameter"] == "kind"
    assert not [sql for sql, _ in spy.statements if "FROM alerts" in sql]
    # and the ledger is untouched
    assert set(AGENTS) == {r["agent_id"] for r in spy.select("SELECT DISTINCT agent_id FROM usage_ledger")}
