"""Payload shapes of Slack (Block Kit + fallback), PagerDuty Events v2 and the signed webhook; routing rules."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import SecretStr

from alerting.channels import (
    Destination,
    build_pagerduty_event,
    build_request,
    build_slack_message,
    build_webhook_body,
    compute_webhook_signature,
    pagerduty_dedup_key,
    verify_webhook_signature,
)
from alerting.router import build_default_routes, parse_routes
from finops.money import format_usd
from schemas.errors import ConfigError
from schemas.models import Alert, load_example

pytestmark = pytest.mark.unit

DASH = "https://finops.example.com"


def _alert(**over: object) -> Alert:
    base = load_example("alert.json")
    assert isinstance(base, Alert)
    return base.model_copy(update=over)


def test_slack_message_has_fallback_and_blocks_with_who_how_much_budget_action_link() -> None:
    msg = build_slack_message(_alert(), DASH)
    link = f"{DASH}/alerts/alrt-2025-03-14-000117"
    text = msg["text"]
    for fact in ("team customer-support", "$8,012.40 of $10,000.00 (80.1%)", "pol-support-monthly (2025-03) at 80%",
                 "notify, throttle", link):
        assert fact in text
    types = [b["type"] for b in msg["blocks"]]
    assert types == ["header", "section", "section", "actions", "context"]
    header = msg["blocks"][0]["text"]
    assert header["type"] == "plain_text" and header["text"].startswith(":warning: customer-support reached 80%")
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in msg["blocks"][2]["fields"]}
    assert fields["*Who*"] == "team customer-support"
    assert fields["*How much*"] == "$8,012.40 of $10,000.00 (80.1%)"
    assert fields["*Budget / baseline*"] == "pol-support-monthly (2025-03) at 80%"
    assert fields["*Action taken*"] == "notify, throttle"
    assert msg["blocks"][3]["elements"][0]["url"] == link


def test_slack_escapes_mrkdwn_and_respects_block_limits() -> None:
    msg = build_slack_message(_alert(summary="a <b> & c", title="x" * 400), DASH)
    assert msg["blocks"][1]["text"]["text"] == "a &lt;b&gt; &amp; c"
    assert len(msg["blocks"][0]["text"]["text"]) == 150
    assert len(msg["blocks"][2]["fields"]) <= 10


def test_slack_resolve_says_resolved_and_released() -> None:
    msg = build_slack_message(_alert(state="resolve", actions=["notify", "suspend"]), DASH)
    assert msg["text"].startswith("[WARNING] Resolved: ")
    assert "released (resumed)" in msg["text"]
    assert msg["blocks"][0]["text"]["text"].startswith(":white_check_mark:")


def test_pagerduty_trigger_shape() -> None:
    event = build_pagerduty_event(_alert(severity="critical", agent_id="triage-7"), "R0UTINGKEY", DASH)
    assert event["routing_key"] == "R0UTINGKEY"
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "pol-support-monthly:team=customer-support:80:2025-03"
    payload = event["payload"]
    assert payload["summary"] == "customer-support reached 80% of its March budget"
    assert payload["severity"] == "critical"
    assert payload["source"] == "agent-finops"
    assert payload["timestamp"] == "2025-03-14T09:27:06Z"
    assert payload["component"] == "triage-7" and payload["group"] == "customer-support"
    assert payload["class"] == "budget_threshold"
    details = payload["custom_details"]
    assert details["amount_usd"] == "8012.400000000000" and details["limit_usd"] == "10000"
    assert details["actions"] == ["notify", "throttle"] and details["detail.period"] == "2025-03"
    assert event["links"][0]["href"] == f"{DASH}/alerts/alrt-2025-03-14-000117"


def test_pagerduty_resolve_is_key_only_and_long_keys_stay_stable() -> None:
    event = build_pagerduty_event(_alert(state="resolve"), "RK", DASH)
    assert event == {"routing_key": "RK", "event_action": "resolve",
                     "dedup_key": "pol-support-monthly:team=customer-support:80:2025-03"}
    long_key = "p:" + "x" * 400
    short = pagerduty_dedup_key(long_key)
    assert len(short) == 255 and short == pagerduty_dedup_key(long_key) and short != pagerduty_dedup_key(long_key + "y")


def test_pagerduty_summary_truncated_to_1024() -> None:
    event = build_pagerduty_event(_alert(title="t" * 2000), "RK", DASH)
    assert len(event["payload"]["summary"]) == 1024


def test_webhook_signature_verifies_and_refuses_tamper_and_replay() -> None:
    dest = Destination("hook", "webhook", SecretStr("http://127.0.0.1:9/hook"), secret=SecretStr("s3cret"))
    req = build_request(dest, _alert(), dashboard_url=DASH, delivery_id="alrt-1:hook", timestamp=1_700_000_000)
    sig = req.headers["X-Finops-Signature"]
    ts = int(req.headers["X-Finops-Timestamp"])
    assert req.headers["X-Finops-Delivery"] == "alrt-1:hook"
    assert verify_webhook_signature(b"s3cret", ts, req.body, sig, now=ts + 10)
    assert not verify_webhook_signature(b"s3cret", ts, req.body + b" ", sig, now=ts)
    assert not verify_webhook_signature(b"other", ts, req.body, sig, now=ts)
    assert not verify_webhook_signature(b"s3cret", ts, req.body, sig, now=ts + 3600)
    doc = json.loads(req.body)
    assert doc["type"] == "finops.alert" and doc["alert"]["amount_usd"] == "8012.400000000000"
    assert doc["alert"]["occurred_at"] == "2025-03-14T09:27:06Z"
    assert sig == compute_webhook_signature(b"s3cret", ts, build_webhook_body(_alert(), "alrt-1:hook", DASH))


def test_requests_never_show_secrets_in_repr() -> None:
    dest = Destination("pd", "pagerduty", SecretStr("http://127.0.0.1:9/pd"), routing_key=SecretStr("TOPSECRETKEY"))
    req = build_request(dest, _alert(), dashboard_url=DASH, delivery_id="x", timestamp=0)
    assert b"TOPSECRETKEY" in req.body
    assert "TOPSECRETKEY" not in repr(req) and "127.0.0.1:9/pd" not in repr(req)
    assert "TOPSECRETKEY" not in repr(dest)


@pytest.mark.parametrize(("amount", "text"), [(Decimal("8012.405"), "$8,012.41"), (Decimal("0.004"), "$0.00"),
                                              (Decimal("-1.5"), "-$1.50"), (None, "n/a")])
def test_format_usd_is_exact_half_up(amount: Decimal | None, text: str) -> None:
    assert format_usd(amount) == text


# ---------------------------------------------------------------------------------------------------------- routes

ROUTES = {
    "destinations": {
        "slack-finops": {"type": "slack", "url_env": "SLACK_URL"},
        "pd": {"type": "pagerduty", "routing_key_env": "PD_KEY", "url": "http://127.0.0.1:9/pd"},
        "hook": {"type": "webhook", "url_env": "HOOK_URL", "secret_env": "HOOK_SECRET"},
    },
    "routes": [
        {"name": "support-critical", "match": {"team": ["customer-support"], "severity": "critical"},
         "to": ["pd", "slack-finops"], "continue": True},
        {"name": "budgets", "match": {"kind": ["budget_threshold"]}, "to": ["slack-finops", "hook"]},
        {"name": "default", "match": {}, "to": ["hook"]},
    ],
}
ENV = {"SLACK_URL": "http://127.0.0.1:9/slack", "PD_KEY": "k", "HOOK_URL": "http://127.0.0.1:9/hook",
       "HOOK_SECRET": "s"}


def test_routes_match_in_order_with_continue_and_dedupe() -> None:
    table = parse_routes(ROUTES, ENV)
    names = [d.name for d in table.route(_alert(severity="critical"))]
    assert names == ["pd", "slack-finops", "hook"]
    assert [d.name for d in table.route(_alert())] == ["slack-finops", "hook"]
    assert [d.name for d in table.route(_alert(kind="anomaly", team="other"))] == ["hook"]
    assert [d.name for d in table.route(_alert(severity="critical"), exclude=frozenset({"pd"}))] == \
        ["slack-finops", "hook"]
    assert table.destinations["pd"].routing_key is not None
    assert table.destinations["pd"].routing_key.get_secret_value() == "k"


def test_routes_report_every_problem_at_once_without_secrets() -> None:
    bad = {
        "destinations": {"a": {"type": "teams"}, "b": {"type": "slack", "url_env": "MISSING"}},
        "routes": [{"name": "r", "match": {"colour": ["x"]}, "to": ["nope"]}],
    }
    with pytest.raises(ConfigError) as err:
        parse_routes(bad, {})
    text = str(err.value)
    for fact in ("'a': type must be one of", "MISSING (from url_env) is unset", "unknown match dimension 'colour'",
                 "unknown destination 'nope'"):
        assert fact in text


def test_default_routes_page_critical_and_resolves_only() -> None:
    table = build_default_routes(slack_url=SecretStr("http://s"), pagerduty_key=SecretStr("k"))
    assert [d.name for d in table.route(_alert())] == ["slack"]
    assert [d.name for d in table.route(_alert(severity="critical"))] == ["pagerduty", "slack"]
    assert [d.name for d in table.route(_alert(state="resolve"))] == ["pagerduty", "slack"]


def test_example_routes_file_parses() -> None:
    from pathlib import Path

    from alerting.router import load_routes

    path = Path(__file__).resolve().parents[2] / "infra" / "alert_routes.example.yaml"
    env = {"FINOPS_SLACK_FINOPS_URL": "http://s", "FINOPS_SLACK_SUPPORT_URL": "http://s2",
           "FINOPS_PD_FINOPS_KEY": "k", "FINOPS_AUDIT_HOOK_URL": "http://h", "FINOPS_AUDIT_HOOK_SECRET": "x"}
    table = load_routes(path, env)
    assert set(table.destinations) == {"slack-finops", "slack-support", "pd-finops", "audit-hook"}
    assert [d.name for d in table.route(_alert(severity="critical", team="customer-support"))][:2] == \
        ["pd-finops", "slack-support"]
