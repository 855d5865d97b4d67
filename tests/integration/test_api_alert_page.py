"""Issue 14 item 4: the dashboard link every alert notification carries opens that alert.

A real alert (the budget detector's id shape, with ':' and characters a URL must encode), stored through the sink's
own row mapping, linked by the channel's own :func:`alerting.channels.alert_link`, followed through the real HTTP
server: the owning team's token gets the page and the alert, another team's gets 404, no token 401 (the API) or the
login page that returns to the link (the page).
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from alerting.channels import alert_link, build_pagerduty_event, build_slack_message
from schemas.models import Alert
from sinks.rows import ALERT_COLUMNS, compute_alert_row
from tests.integration.test_api_support import Fleet, RunningDashboard, call, serving_database, seed_fleet

pytestmark = pytest.mark.integration

# The budget detector's shape (stream_jobs/budgets.py: f"{dedup}:{state}:{seq}"), plus a policy id with characters
# that must be percent-encoded in a path: '/', ' ', '#', '?', '&' and '%'.
DEDUP = "budget:pay/ments month #1?&%:team:payments:80:2026-12"


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    return seed_fleet(ch_client, ch_database)


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def _store_alert(ch_client: Any, database: str, state: str, seq: int, at: datetime) -> Alert:
    alert = Alert.model_validate({
        "alert_id": f"{DEDUP}:{state}:{seq}", "dedup_key": DEDUP, "kind": "budget_threshold",
        "severity": "critical" if state == "trigger" else "info", "state": state, "occurred_at": at,
        "team": "payments", "project": "checkout", "agent_id": "pay-bot-1", "policy_id": "pay/ments month #1?&%",
        "title": "payments monthly budget at 80%", "summary": "payments spent $1.20 of $1.50 (80%).",
        "amount_usd": Decimal("1.2"), "limit_usd": Decimal("1.5"),
        "details": {"period": "month", "threshold_percent": "80"}, "actions": ["notify", "throttle"],
    })
    ch_client.insert("alerts", [compute_alert_row(alert.to_avro_dict())], column_names=list(ALERT_COLUMNS),
                     database=database)
    return alert


def _get_without_redirect(url: str, token: str | None = None) -> tuple[int, str]:
    """Status and Location of a GET, not following redirects (a browser without a session is sent to log in)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location", "")
    finally:
        conn.close()


def test_an_alerts_link_opens_that_alert_for_its_team_only(ch_client: Any, fleet: Fleet,
                                                            dash: RunningDashboard) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    trigger = _store_alert(ch_client, fleet.database, "trigger", 1, now - timedelta(minutes=3))
    _store_alert(ch_client, fleet.database, "resolve", 1, now - timedelta(minutes=1))
    link = alert_link(trigger, dash.url)
    # the link every channel sends is this one
    slack = build_slack_message(trigger, dash.url)
    assert slack["blocks"][3]["elements"][0]["url"] == link and link in slack["text"]
    assert build_pagerduty_event(trigger, "rk", dash.url)["links"][0]["href"] == link
    path = urlsplit(link).path
    assert ":" not in path.split("/alerts/", 1)[1] and unquote(path.split("/alerts/", 1)[1]) == trigger.alert_id

    payments = dash.issue("team_lead", "payments")
    # the page: the dashboard shell, answered 200 because the alert is visible
    status, page = call(link, payments)
    assert status == 200 and "app.js" in page
    # what the page shows: the alert, by the same path under /api
    status, body = call(f"{dash.url}/api{path}", payments)
    assert status == 200, body
    alert = body["alert"]
    assert alert["alert_id"] == trigger.alert_id and alert["dedup_key"] == DEDUP
    assert (alert["team"], alert["agent_id"], alert["kind"], alert["severity"]) == (
        "payments", "pay-bot-1", "budget_threshold", "critical")
    assert (Decimal(alert["amount_usd"]), Decimal(alert["limit_usd"])) == (Decimal("1.2"), Decimal("1.5"))
    assert alert["details"] == {"period": "month", "threshold_percent": "80"}
    assert alert["actions"] == ["notify", "throttle"]
    assert [(h["state"], h["alert_id"]) for h in body["history"]] == [
        ("trigger", f"{DEDUP}:trigger:1"), ("resolve", f"{DEDUP}:resolve:1")]

    # another team's token: not found, on the page and in the API (the same answer as for a missing alert)
    search = dash.issue("team_lead", "search")
    assert call(link, search)[0] == 404
    status, body = call(f"{dash.url}/api{path}", search)
    assert status == 404 and "among your teams" in body["error"]
    assert call(f"{dash.url}/api/alerts/no-such-alert", payments)[0] == 404
    # a finops admin sees every team's alert
    assert call(f"{dash.url}/api{path}", dash.issue("finops_admin"))[0] == 200

    # no token: the API says 401; the page sends the browser to log in and back to exactly this link
    assert call(f"{dash.url}/api{path}")[0] == 401
    status, location = _get_without_redirect(link)
    assert status == 302
    target = urlsplit(location)
    assert target.path == "/login" and parse_qs(target.query)["next"] == [path]
    assert _get_without_redirect(link, search)[0] == 404
