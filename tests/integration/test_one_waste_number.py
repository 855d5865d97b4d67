"""Issue 14 item 10: one definition of waste percentage and of an anomaly, one number on every page.

On one seeded fleet (the dashboard's, plus a critical runaway alert and the findings `finops recommend --record`
stores), the waste percentage of `finops recommend`, of the API's overview and of ``v_waste_percentage`` are the
same exact Decimal, computed here once more from the base tables; and the overview's anomaly count is the number of
anomaly alerts the alerts feed shows, the runaway one included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Any

import pytest

from governance.config import RecommendSettings
from governance.period import parse_period
from governance.recommend import build_recommendations, load_waste, render_text, to_waste_signals
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    call,
    naive,
    serving_database,
    seed_fleet,
)

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    fleet = seed_fleet(ch_client, ch_database)
    start_of_day = fleet.now.replace(hour=0, minute=0, second=0, microsecond=0)
    at = max(fleet.now - timedelta(minutes=2), start_of_day + timedelta(seconds=2))
    # the waste detector's runaway alert (stream_jobs/waste.py): kind waste, waste_kind runaway, critical
    ch_client.insert("alerts", [[
        "waste:runaway:pay-bot-2:1:trigger", "waste:runaway:pay-bot-2:1", "waste", "critical", "trigger", naive(at),
        "payments", "refunds", "pay-bot-2", "", "gpt-4o", "Runaway spend: pay-bot-2 burning 9x its usual rate",
        "pay-bot-2 spent $1.2 in the last 60 s against a norm of $0.13.", D("1.07"), None,
        {"waste_kind": "runaway", "signal_id": "runaway:pay-bot-2:1", "avoidable_cost_usd": "1.07"},
        ["notify", "throttle"],
    ]], column_names=["alert_id", "dedup_key", "kind", "severity", "state", "occurred_at", "team", "project",
                      "agent_id", "policy_id", "model", "title", "summary", "amount_usd", "limit_usd", "details",
                      "actions"], database=ch_database)
    return fleet


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def _truncated_pct(part: Decimal, whole: Decimal) -> Decimal:
    """part * 100 / whole truncated at 12 places (the views' convention), with enough precision to be exact."""
    with localcontext() as ctx:
        ctx.prec = 80
        return (part * 100 / whole).quantize(D("1e-12"), rounding=ROUND_DOWN)


def _one(client: Any, sql: str, **params: Any) -> Any:
    return client.query(sql, parameters=params).result_rows[0][0]


def test_recommend_the_api_and_the_view_show_one_waste_percentage(ch_client: Any, fleet: Fleet,
                                                                  dash: RunningDashboard) -> None:
    db = fleet.database
    period = parse_period(None, now=fleet.now)  # this calendar month: what the overview shows
    settings = RecommendSettings(min_monthly_saving_usd=D(0))
    report = build_recommendations(ch_client, db, period, settings)
    if report.items:  # as `finops recommend --record` does: the findings become waste signals
        rows = to_waste_signals(report, detected_at=datetime.now(UTC))
        ch_client.insert("waste_signals", [list(r.values()) for r in rows], column_names=list(rows[0]), database=db)
    recorded = load_waste(ch_client, db, period)
    report.waste = recorded

    # independently, from the base tables: this month's waste signals over this month's ledger spend
    month_start, today = period.start.date(), fleet.now.date()
    avoidable = D(_one(ch_client, f"SELECT sum(avoidable_cost_usd) FROM {db}.waste_signals FINAL "
                                  "WHERE toDate(occurred_at, 'UTC') BETWEEN {a:Date} AND {b:Date}",
                       a=month_start, b=today))
    spend = D(_one(ch_client, f"SELECT sum(cost_usd) FROM {db}.usage_ledger FINAL "
                              "WHERE toDate(occurred_at, 'UTC') BETWEEN {a:Date} AND {b:Date}", a=month_start, b=today))
    assert avoidable >= D("0.038") and spend > 0
    expected = _truncated_pct(avoidable, spend)

    # the view, summed over the month's rows
    view = ch_client.query(f"SELECT sum(cost_usd), sum(avoidable_cost_usd) FROM {db}.v_waste_percentage "
                           "WHERE day >= {a:Date} AND day <= {b:Date}", parameters={"a": month_start, "b": today})
    view_cost, view_avoidable = view.result_rows[0]
    assert (D(view_cost), D(view_avoidable)) == (spend, avoidable)
    # the API's overview
    status, overview = call(dash.url + "/api/overview", dash.issue("finops_admin"))
    assert status == 200
    api_pct = D(overview["waste"]["waste_pct"])

    assert report.waste_pct == api_pct == expected
    assert D(overview["waste"]["avoidable_usd"]) == recorded.avoidable_usd == avoidable
    assert report.total_spend_usd == D(overview["month_usd"]) == spend
    assert f"waste {expected.quantize(D('0.1'))}" in render_text(report).replace("%", "")

    # the waste page (30 days) reads the same definition over its window
    status, recs = call(dash.url + "/api/recommendations", dash.issue("finops_admin"))
    since = today - timedelta(days=29)
    cost_30 = D(_one(ch_client, f"SELECT sum(cost_usd) FROM {db}.usage_ledger FINAL "
                                "WHERE toDate(occurred_at, 'UTC') BETWEEN {a:Date} AND {b:Date}", a=since, b=today))
    avoidable_30 = D(_one(ch_client, f"SELECT sum(avoidable_cost_usd) FROM {db}.waste_signals FINAL "
                                     "WHERE toDate(occurred_at, 'UTC') BETWEEN {a:Date} AND {b:Date}",
                          a=since, b=today))
    assert D(recs["waste"]["waste_pct"]) == _truncated_pct(avoidable_30, cost_30)

    # scoped: a payments lead sees payments' waste over payments' spend, by the same definition
    status, scoped = call(dash.url + "/api/overview", dash.issue("team_lead", "payments"))
    pay_avoidable = D(_one(ch_client, f"SELECT sum(avoidable_cost_usd) FROM {db}.waste_signals FINAL "
                                      "WHERE team = 'payments' AND toDate(occurred_at, 'UTC') BETWEEN {a:Date} AND "
                                      "{b:Date}", a=month_start, b=today))
    assert D(scoped["waste"]["waste_pct"]) == _truncated_pct(pay_avoidable, D(scoped["month_usd"]))


def test_anomaly_count_matches_the_alerts_feed(fleet: Fleet, dash: RunningDashboard) -> None:
    admin = dash.issue("finops_admin")
    status, overview = call(dash.url + "/api/overview", admin)
    assert status == 200
    status, feed = call(dash.url + "/api/alerts?limit=1000", admin)
    month_start = fleet.now.date().replace(day=1).isoformat()
    this_month = [a for a in feed["alerts"] if a["occurred_at"][:10] >= month_start and a["state"] == "trigger"]
    runaway = [a for a in this_month if a["alert_id"] == "waste:runaway:pay-bot-2:1:trigger"]
    assert runaway and runaway[0]["severity"] == "critical"
    anomalies = [a for a in this_month if a["kind"] == "anomaly"] + runaway
    assert overview["anomalies"]["count"] == len(anomalies) == 3
    assert {a["alert_id"] for a in overview["anomalies"]["recent"]} == {a["alert_id"] for a in anomalies}
    # a team's lead counts their team's anomalies, from the same rows
    status, scoped = call(dash.url + "/api/overview", dash.issue("team_lead", "payments"))
    assert scoped["anomalies"]["count"] == len([a for a in anomalies if a["team"] == "payments"]) == 2
