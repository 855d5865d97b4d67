"""``GET /api/bills`` on real chdb through the real HTTP server: the latest reconciliation of a month, matched and
unattributed spend per provider, the team share of the bill, scoped (finops admins all, team leads their teams'
projects, other roles 403), parameters validated with a 400 that names the parameter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from governance.bills import (
    BillLine,
    ProviderReport,
    compute_reconciliation,
    load_reconciliation_inputs,
    store_reconciliation,
    store_report,
)
from governance.period import month_period
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    call,
    serving_database,
    seed_fleet,
)

pytestmark = pytest.mark.integration

D = Decimal
SHADOW = D("4.200000000000")


def seed_bill(client: Any, database: str, now: datetime) -> str:
    """A provider bill for the fleet's current month equal to the ledger per day, provider, model and project
    (the project as the account), plus one shadow key's spend nobody instrumented; reconciled and stored. Returns
    the month."""
    period = month_period(now.year, now.month)
    rows = client.query(
        f"SELECT toDate(occurred_at), provider, model, project, sum(cost_usd) FROM {database}.usage_ledger FINAL "
        "WHERE occurred_at >= {lo:DateTime64(6)} AND occurred_at < {hi:DateTime64(6)} "
        "GROUP BY 1, 2, 3, 4", parameters={"lo": period.start.replace(tzinfo=None),
                                            "hi": period.end.replace(tzinfo=None)}).result_rows
    reports: dict[str, ProviderReport] = {}
    for day, provider, model, project, cost in rows:
        report = reports.setdefault(provider, ProviderReport(provider))
        report.bills.append(BillLine(day, D(cost), account_id=project, model=model))
    first = min(rows)[0]
    target = reports[min(reports)]
    target.bills.append(BillLine(first, SHADOW, account_id="wrkspc_shadow", api_key_id="key-shadow",
                                 model="shadow-model"))
    for report in reports.values():
        report.days |= set(period.day_list())
        store_report(client, database, report, origin="test", now=now)
    bills, ledger = load_reconciliation_inputs(client, database, period)
    result = compute_reconciliation(period.label, bills, ledger, {}, tolerance_usd=D("0.01"), tolerance_pct=D(0))
    store_reconciliation(client, database, result, now=now)
    return period.label


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    fleet = seed_fleet(ch_client, ch_database)
    seed_bill(ch_client, ch_database, fleet.now)
    return fleet


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def _ledger_month(ch_client: Any, fleet: Fleet, team: str | None = None) -> Decimal:
    month = fleet.now.strftime("%Y-%m")
    sql = (f"SELECT sum(cost_usd) FROM {fleet.database}.usage_ledger FINAL WHERE formatDateTime(occurred_at, "
           "'%Y-%m') = {m:String} AND ({t:String} = '' OR team = {t:String})")
    return D(ch_client.query(sql, parameters={"m": month, "t": team or ""}).result_rows[0][0])


def test_admin_sees_the_whole_bill_and_the_unattributed_key(ch_client: Any, fleet: Fleet,
                                                            dash: RunningDashboard) -> None:
    status, body = call(dash.url + "/api/bills", dash.issue("finops_admin"))
    assert status == 200, body
    ledger = _ledger_month(ch_client, fleet)
    totals = {k: D(v) for k, v in body["totals"].items()}
    assert totals["ledger_usd"] == totals["matched_usd"] == ledger
    assert totals["bill_usd"] == ledger + SHADOW and totals["unattributed_usd"] == SHADOW
    gap = body["cells"][0]  # gaps first
    assert (gap["status"], gap["account_id"], gap["api_keys"], gap["team"], D(gap["gap_usd"])) == (
        "unattributed", "wrkspc_shadow", ["key-shadow"], "", SHADOW)
    shares = {t["team"]: D(t["share_pct"]) for t in body["teams"]}
    assert shares[""] == 0  # the shadow key's spend is attributed to no team
    # the teams' shares add up to the part of the bill the ledger explains (each truncated at 12 places)
    assert abs(sum(shares.values()) - ledger / (ledger + SHADOW) * 100) < D("1e-9")
    assert len(shares) == 4


def test_team_lead_sees_their_projects_and_developer_is_refused(ch_client: Any, fleet: Fleet,
                                                               dash: RunningDashboard) -> None:
    status, body = call(dash.url + "/api/bills", dash.issue("team_lead", "payments"))
    assert status == 200
    assert {c["team"] for c in body["cells"]} == {"payments"}
    assert D(body["totals"]["bill_usd"]) == _ledger_month(ch_client, fleet, "payments")
    assert D(body["totals"]["unattributed_usd"]) == 0
    status, body = call(dash.url + "/api/bills", dash.issue("developer", "payments"))
    assert status == 403
    status, body = call(dash.url + "/api/bills", dash.issue("operator", "payments"))
    assert status == 403


@pytest.mark.parametrize("query, parameter", [("month=2026-13", "month"), ("month=abc", "month"),
                                              ("limit=0", "limit"), ("provider=openai", "provider")])
def test_bad_parameters_are_a_400_naming_the_parameter(dash: RunningDashboard, query: str, parameter: str) -> None:
    status, body = call(dash.url + "/api/bills?" + query, dash.issue("finops_admin"))
    assert status == 400 and body["parameter"] == parameter


def test_another_month_is_empty(dash: RunningDashboard) -> None:
    status, body = call(dash.url + "/api/bills?month=2001-01", dash.issue("finops_admin"))
    assert status == 200 and body["providers"] == [] and D(body["totals"]["bill_usd"]) == 0
