"""Tokens, roles and scopes (pure: a fake runner stands in for ClickHouse)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dashboard.auth import (
    ROLES,
    AccessError,
    AuthenticationError,
    Principal,
    Scope,
    TokenStore,
    compute_token_hash,
    format_token,
    parse_token,
    role_allows,
)
from dashboard.metrics import MetricSample, render_prometheus
from dashboard.queries import SCOPE, compute_control_state, ratio

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


class FakeRunner:
    """api_tokens in a dict, answering the two statements TokenStore sends (latest row per token_id = FINAL)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.statements: list[tuple[str, dict[str, Any]]] = []

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        self.statements.append((sql, dict(params or {})))
        if "WHERE token_id = {token_id:String}" in sql:
            row = self.rows.get(str((params or {})["token_id"]))
            return [dict(row)] if row else []
        return [dict(r) for r in self.rows.values()]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        assert table == "api_tokens"
        for row in rows:
            self.rows[row["token_id"]] = dict(row)


def test_permission_matrix() -> None:
    assert all(role_allows(role, "read") for role in ROLES)
    assert [r for r in ROLES if role_allows(r, "control.issue")] == ["operator", "finops_admin"]
    assert [r for r in ROLES if role_allows(r, "budget.write")] == ["team_lead", "finops_admin"]
    assert [r for r in ROLES if role_allows(r, "approval.decide")] == ["team_lead", "finops_admin"]
    assert [r for r in ROLES if role_allows(r, "admin")] == ["finops_admin"]
    assert not role_allows("root", "read")


def test_token_text_round_trip_and_malformed_tokens_refused() -> None:
    assert parse_token(format_token("0123456789ab", "s" * 43)) == ("0123456789ab", "s" * 43)
    for bad in ("", "fo_", "Bearer x", "fo_0123456789ab", "fo_XYZ456789ab_" + "s" * 43, "fo_0123456789ab_short",
                "fo_0123456789ab_" + "s" * 43 + "' OR 1=1 --"):
        with pytest.raises(AuthenticationError):
            parse_token(bad)


def test_issue_stores_only_the_hash_and_authenticates() -> None:
    runner = FakeRunner()
    store = TokenStore(runner)
    token, record = store.issue("developer", ["payments"], subject="ana", created_by="test", now=NOW)
    token_id, secret = parse_token(token)
    stored = runner.rows[token_id]
    assert stored["token_hash"] == compute_token_hash(secret)
    assert secret not in repr(stored)
    assert record.teams == ("payments",)
    principal = store.authenticate(token)
    assert principal == Principal(token_id, "ana", "developer", ("payments",), ())
    assert principal.scope == Scope(all_teams=False, teams=("payments",))


def test_wrong_secret_unknown_and_revoked_tokens_are_refused_alike() -> None:
    runner = FakeRunner()
    store = TokenStore(runner)
    token, record = store.issue("team_lead", ["search"], subject="bo", created_by="test", now=NOW)
    token_id, secret = parse_token(token)
    messages = set()
    for bad in (format_token(token_id, "x" * 43), format_token("ffffffffffff", secret)):
        with pytest.raises(AuthenticationError) as err:
            store.authenticate(bad)
        messages.add(str(err.value))
    assert store.revoke(token_id, now=NOW + timedelta(minutes=1))
    assert not store.revoke(token_id, now=NOW + timedelta(minutes=2)), "a second revoke changes nothing"
    with pytest.raises(AuthenticationError) as err:
        store.authenticate(token)
    messages.add(str(err.value))
    assert messages == {"invalid or revoked token"}
    assert [r.revoked_at for r in store.list()] == [NOW + timedelta(minutes=1)]


def test_token_lookup_binds_the_id_as_a_parameter() -> None:
    runner = FakeRunner()
    TokenStore(runner).revoke("abc' OR 1=1", now=NOW)
    sql, params = runner.statements[-1]
    assert "abc'" not in sql and params == {"token_id": "abc' OR 1=1"}


@pytest.mark.parametrize(
    ("role", "teams", "message"),
    [("root", ["a"], "unknown role"), ("developer", [], "needs at least one --team"),
     ("developer", ["a b"], "invalid team name"), ("developer", ["x'; DROP"], "invalid team name")],
)
def test_issue_refuses_bad_input(role: str, teams: list[str], message: str) -> None:
    with pytest.raises(AccessError, match=message):
        TokenStore(FakeRunner()).issue(role, teams, subject="s", created_by="t", now=NOW)


def test_scopes() -> None:
    admin = Principal("a", "admin", "finops_admin", ())
    star = Principal("o", "ops", "operator", ("*",))
    dev = Principal("d", "dev", "developer", ("payments",), ("checkout",))
    assert admin.scope.all_teams and star.scope.all_teams
    assert admin.scope.params() == {"scope_all": 1, "scope_teams": [], "scope_projects": []}
    assert dev.scope.params() == {"scope_all": 0, "scope_teams": ["payments"], "scope_projects": ["checkout"]}
    assert dev.scope.covers("payments") and dev.scope.covers("payments", "checkout")
    assert not dev.scope.covers("payments", "refunds") and not dev.scope.covers("search")
    assert re.findall(r"\{(\w+):", SCOPE) == ["scope_all", "scope_teams", "scope_projects", "scope_projects"]


def test_control_state_latest_per_scope_most_restrictive_wins() -> None:
    def cmd(scope: str, action: str, minutes: int, expires: int | None = None) -> dict[str, Any]:
        at = NOW - timedelta(minutes=minutes)
        return {"scope_type": scope, "scope_value": "x", "action": action, "issued_at": at, "reason": "r",
                "issued_by": "op", "expires_at": at + timedelta(minutes=expires) if expires else None}

    assert compute_control_state([], NOW)["state"] == "normal"
    assert compute_control_state([cmd("agent", "suspend", 10), cmd("agent", "resume", 5)], NOW)["state"] == "normal"
    assert compute_control_state([cmd("agent", "throttle", 10), cmd("team", "suspend", 20)], NOW)["state"] == "suspend"
    assert compute_control_state([cmd("agent", "suspend", 10, expires=5)], NOW)["state"] == "normal"


def test_ratio_truncates_like_the_views() -> None:
    assert ratio(Decimal("1"), 3) == Decimal("0.333333333333")
    assert ratio(Decimal("1"), 0) is None and ratio(None, 3) is None


def test_prometheus_text() -> None:
    text = render_prometheus([
        MetricSample("finops_up", 1, {"component": "clickhouse"}),
        MetricSample("finops_consumer_lag_messages", 7, {"group": 'g"1', "topic": "t", "partition": "0"}),
        MetricSample("finops_sink_latency_seconds", 0.25, {"quantile": "0.5"}),
    ])
    assert "# TYPE finops_up gauge\nfinops_up{component=\"clickhouse\"} 1\n" in text
    assert 'finops_consumer_lag_messages{group="g\\"1",partition="0",topic="t"} 7' in text
    assert 'finops_sink_latency_seconds{quantile="0.5"} 0.25' in text
    with pytest.raises(KeyError):
        render_prometheus([MetricSample("undeclared", 1)])
