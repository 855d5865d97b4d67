"""Issue 14 item 8: a bad API parameter is a 400 that names it, never a 500 (``month=9999-12`` was an OverflowError).

Every parameter of :data:`dashboard.params.ROUTE_PARAMS` is tried with bad values through the real HTTP server; a
test also checks that the table covers every route the app serves, so a new route cannot skip the checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from dashboard.params import ROUTE_PARAMS, parse_minutes
from tests.integration.test_api_support import RunningDashboard, build_store, call, running_dashboard, seed_fleet

pytestmark = pytest.mark.integration

LONG = "x" * 257
# (method, path with query, the parameter the 400 must name)
BAD: list[tuple[str, str, str]] = [
    ("GET", "/api/reports/chargeback?month=9999-12", "month"),
    ("GET", "/api/reports/chargeback?month=1969-12", "month"),
    ("GET", "/api/reports/chargeback?month=2026-13", "month"),
    ("GET", "/api/reports/chargeback?month=2026-1", "month"),
    ("GET", "/api/reports/chargeback?month=december", "month"),
    ("GET", "/api/reports/chargeback?month=2026-12&month=2026-11", "month"),
    ("GET", "/api/alerts?limit=x", "limit"),
    ("GET", "/api/alerts?limit=0", "limit"),
    ("GET", "/api/alerts?limit=-5", "limit"),
    ("GET", "/api/alerts?limit=1001", "limit"),
    ("GET", "/api/alerts?limit=" + "9" * 40, "limit"),
    ("GET", "/api/alerts?kind=no-such-kind", "kind"),
    ("GET", "/api/alerts?team=" + quote("pay\nments"), "team"),
    ("GET", "/api/alerts?agent=" + LONG, "agent"),
    ("GET", "/api/alerts?limt=5", "limt"),
    ("GET", "/api/agents?team=" + quote("a\x00b"), "team"),
    ("GET", "/api/agents?teem=payments", "teem"),
    ("GET", "/api/overview?month=2026-12", "month"),
    ("GET", "/api/audit?limit=5001", "limit"),
    ("GET", "/api/audit?limit=1.5", "limit"),
    ("GET", "/api/agents/" + LONG, "agent_id"),
    ("GET", "/api/teams/" + quote("pay\tments"), "team"),
    ("GET", "/api/alerts/" + LONG, "alert_id"),
    ("POST", "/api/tokens/" + quote("t\x7f1") + "/revoke", "token_id"),
]


@pytest.fixture(scope="module")
def dash(chdb_url: str, ch_client: Any) -> Iterator[RunningDashboard]:
    """One seeded database and server for the module: the requests here read, and refused ones change nothing."""
    import uuid

    from sinks.migrations import MigrationRunner

    database = f"t_params_{uuid.uuid4().hex[:10]}"
    MigrationRunner(ch_client, database).apply()
    seed_fleet(ch_client, database)
    store = build_store(chdb_url, database)
    try:
        with running_dashboard(store) as running:
            yield running
    finally:
        store.close()
        ch_client.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.mark.parametrize("method, path, parameter", BAD, ids=[f"{m} {p[:60]}" for m, p, _ in BAD])
def test_a_bad_parameter_is_a_400_naming_it(dash: RunningDashboard, method: str, path: str, parameter: str) -> None:
    status, body = call(dash.url + path, dash.issue("finops_admin"), method=method,
                        body={} if method == "POST" else None)
    assert status == 400, body
    assert body["parameter"] == parameter and parameter in body["error"]


def test_good_parameters_still_answer(dash: RunningDashboard) -> None:
    admin = dash.issue("finops_admin")
    for path in ("/api/reports/chargeback?month=2149-05", "/api/reports/chargeback?month=1970-01",
                 "/api/reports/chargeback", "/api/alerts?limit=1000&kind=anomaly&team=payments&agent=pay-bot-1",
                 "/api/alerts?kind=", "/api/audit?limit=5000", "/api/agents?team=payments", "/api/overview"):
        status, body = call(dash.url + path, admin)
        assert status == 200, (path, body)


def test_control_expiry_is_checked_before_anything_is_signed(dash: RunningDashboard) -> None:
    operator = dash.issue("operator", "payments")
    for bad in ("soon", "inf", "nan", -5, 0, True, 10**9):
        status, body = call(dash.url + "/api/control", operator, method="POST", body={
            "scope_type": "agent", "scope_value": "pay-bot-1", "action": "suspend", "reason": "test",
            "expires_in_minutes": bad})
        assert status == 400 and body["parameter"] == "expires_in_minutes", (bad, body)
    assert not dash.publisher.records
    assert parse_minutes("expires_in_minutes", "90") == 90.0


def test_every_route_with_parameters_is_declared(dash: RunningDashboard) -> None:
    """The table must cover every parametrised route the app serves (a new route cannot skip the checks)."""
    app_routes = {r.resource.canonical for r in _app(dash).router.routes() if r.resource is not None}
    with_segments = {c for c in app_routes if "{" in c}
    assert with_segments <= set(ROUTE_PARAMS), with_segments - set(ROUTE_PARAMS)
    assert set(ROUTE_PARAMS) <= app_routes


def _app(dash: RunningDashboard) -> Any:
    from dashboard.server import build_app

    return build_app(dash.config)


def test_month_bounds_cover_december() -> None:
    from datetime import date

    from dashboard.params import month_bounds

    assert month_bounds("2149-05") == (date(2149, 5, 1), date(2149, 6, 1))
    assert month_bounds("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))

