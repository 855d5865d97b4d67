"""Delivery against a real local HTTP receiver (200, 429 + Retry-After, 500, 410, hang): every alert delivered
once, in order per key, with the documented payload shapes; 429 honoured; a 410 disables the destination and
raises a configuration alert; a restart resends nothing; the delivery log in ClickHouse names destinations only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from alerting.channels import Destination, verify_webhook_signature
from alerting.delivery import DeliveryPolicy
from alerting.delivery_log import DeliveryLog
from alerting.outbox import Outbox
from alerting.router import Route, RoutingTable
from alerting.worker import Dispatcher
from schemas.models import Alert
from tests.integration.http_receiver import GONE, HANG, SERVER_ERROR, HttpReceiver, rate_limited, running_receiver

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
FAST = DeliveryPolicy(timeout_s=0.5, max_attempts=6, backoff_base_s=0.05, backoff_cap_s=0.2,
                      retry_later_s=0.2, min_interval_s={"slack": 0.05, "pagerduty": 0.05, "webhook": 0.0})
HOOK_SECRET = "hook-signing-secret"
PD_KEY = "PDROUTINGKEY0123456789"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as r:
        yield r


def _table(receiver: HttpReceiver, *, slack_interval: float | None = None) -> RoutingTable:
    dests = {
        "slack-finops": Destination("slack-finops", "slack", SecretStr(receiver.url("/slack/T0/B0/SECRETPATH")),
                                    min_interval_s=slack_interval),
        "pd": Destination("pd", "pagerduty", SecretStr(receiver.url("/pd")), routing_key=SecretStr(PD_KEY)),
        "hook": Destination("hook", "webhook", SecretStr(receiver.url("/hook")), secret=SecretStr(HOOK_SECRET)),
        "slack-ops": Destination("slack-ops", "slack", SecretStr(receiver.url("/slack/ops/SECRET2"))),
    }
    routes = (
        Route("config", {"kind": frozenset({"config"})}, ("slack-ops",)),
        Route("all", {}, ("slack-finops", "pd", "hook")),
    )
    return RoutingTable(dests, routes)


def _alert(n: int, key: str, state: str = "trigger", minutes: int = 0) -> Alert:
    return Alert(alert_id=f"alert-{n}", dedup_key=key, kind="budget_threshold", severity="critical", state=state,
                 occurred_at=T0 + timedelta(minutes=minutes), team="support", agent_id="bot-1", policy_id="pol-1",
                 title=f"bot-1 budget alert {n}", summary=f"summary {n}", actions=["notify", "suspend"],
                 details={"period": "2025-03"})


def _dispatcher(tmp_path: Path, receiver: HttpReceiver, **kw: Any) -> Dispatcher:
    return Dispatcher(_table(receiver), Outbox(tmp_path / "outbox.sqlite"), policy=FAST, cooldown_s=0.0, **kw)


def test_each_alert_delivered_once_in_order_with_payload_shapes(tmp_path: Path, receiver: HttpReceiver) -> None:
    # Trouble on every destination: rate limiting, a 500, a hang; all must still deliver once, in order.
    receiver.script("/slack/T0/B0/SECRETPATH", rate_limited("1"), SERVER_ERROR)
    receiver.script("/pd", SERVER_ERROR, rate_limited("0"))
    receiver.script("/hook", HANG)
    dispatcher = _dispatcher(tmp_path, receiver)
    alerts = [_alert(1, "k1"), _alert(2, "k2"), _alert(3, "k1", "resolve", 5), _alert(4, "k2", "resolve", 6)]
    dispatcher.start()
    try:
        dispatcher.dispatch(alerts)
        receiver.wait_for(lambda r: all(len(r.delivered(p)) == 4 for p in ("/slack/T0/B0/SECRETPATH", "/pd",
                                                                          "/hook")),
                          timeout=20, what="4 deliveries per destination")
    finally:
        dispatcher.stop()

    slack = [r.json() for r in receiver.delivered("/slack/T0/B0/SECRETPATH")]
    assert [m["blocks"][0]["text"]["text"] for m in slack] == [
        ":rotating_light: bot-1 budget alert 1", ":rotating_light: bot-1 budget alert 2",
        ":white_check_mark: Resolved: bot-1 budget alert 3", ":white_check_mark: Resolved: bot-1 budget alert 4"]
    assert all("text" in m and "/alerts/alert-" in m["text"] for m in slack)

    pd = [r.json() for r in receiver.delivered("/pd")]
    assert [(e["event_action"], e["dedup_key"]) for e in pd] == [("trigger", "k1"), ("trigger", "k2"),
                                                                 ("resolve", "k1"), ("resolve", "k2")]
    assert pd[0]["routing_key"] == PD_KEY and pd[0]["payload"]["severity"] == "critical"
    assert set(pd[0]["payload"]) >= {"summary", "source", "severity", "custom_details", "timestamp"}

    hooks = receiver.delivered("/hook")
    assert [h.json()["alert"]["alert_id"] for h in hooks] == ["alert-1", "alert-2", "alert-3", "alert-4"]
    for h in hooks:
        assert verify_webhook_signature(HOOK_SECRET.encode(), int(h.headers["X-Finops-Timestamp"]), h.body,
                                        h.headers["X-Finops-Signature"], now=int(time.time()))
    # the hung request was retried after the client's timeout: one 2xx per alert, and the same delivery id
    assert [h.headers["X-Finops-Delivery"] for h in receiver.requests("/hook")][:2] == ["alert-1:hook"] * 2

    # the 429's Retry-After (1 s) separated the rate-limited request from the next one
    slack_reqs = receiver.requests("/slack/T0/B0/SECRETPATH")
    assert slack_reqs[0].status == 429
    assert slack_reqs[1].at - slack_reqs[0].at >= 0.95
    assert all(item.status == "sent" for item in dispatcher.outbox.items())


def test_410_disables_destination_and_raises_config_alert(tmp_path: Path, receiver: HttpReceiver) -> None:
    receiver.script("/slack/T0/B0/SECRETPATH", GONE)
    dispatcher = _dispatcher(tmp_path, receiver)
    dispatcher.start()
    try:
        dispatcher.dispatch([_alert(1, "k1")])
        receiver.wait_for(lambda r: len(r.delivered("/slack/ops/SECRET2")) == 1, what="config alert on slack-ops")
        dispatcher.dispatch([_alert(2, "k2")])
        receiver.wait_for(lambda r: len(r.delivered("/pd")) == 2, what="pd keeps working")
    finally:
        dispatcher.stop()
    # exactly one request to the gone webhook: no retry after the 410, nothing sent while disabled
    assert len(receiver.requests("/slack/T0/B0/SECRETPATH")) == 1
    config = receiver.delivered("/slack/ops/SECRET2")[0].json()
    assert "slack-finops" in config["text"] and "disabled" in config["text"]
    assert "SECRETPATH" not in config["text"] and "SECRETPATH" not in str(config["blocks"])
    assert dispatcher.outbox.broken().keys() == {"slack-finops"}
    # the undelivered Slack alerts are kept (pending), not lost
    assert [i.status for i in dispatcher.outbox.items("slack-finops")] == ["pending", "pending"]


def test_restart_never_resends_and_delivers_what_was_left(tmp_path: Path, receiver: HttpReceiver) -> None:
    table = _table(receiver)
    only_pd = RoutingTable(table.destinations, (Route("pd", {}, ("pd",)),))
    first = Dispatcher(only_pd, Outbox(tmp_path / "o.sqlite"), policy=FAST, cooldown_s=0.0)
    first.start()
    first.dispatch([_alert(1, "k1")])
    receiver.wait_for(lambda r: len(r.delivered("/pd")) == 1, what="first delivery")
    first.stop()
    # enqueued while no lane runs (the worker died before delivering), then the same alerts replayed from Kafka
    first.dispatch([_alert(2, "k2")])
    first.outbox.close()

    second = Dispatcher(only_pd, Outbox(tmp_path / "o.sqlite"), policy=FAST, cooldown_s=0.0)
    replay = second.dispatch([_alert(1, "k1"), _alert(2, "k2")])
    assert [r.status for _, r in replay] == ["duplicate", "duplicate"]
    second.start()
    try:
        receiver.wait_for(lambda r: len(r.delivered("/pd")) == 2, what="the left-over delivery")
    finally:
        second.stop()
    assert [r.json()["dedup_key"] for r in receiver.delivered("/pd")] == ["k1", "k2"]


def test_slack_pacing_about_one_per_second(tmp_path: Path, receiver: HttpReceiver) -> None:
    table = _table(receiver, slack_interval=0.3)
    only_slack = RoutingTable(table.destinations, (Route("s", {}, ("slack-finops",)),))
    dispatcher = Dispatcher(only_slack, Outbox(tmp_path / "o.sqlite"), policy=FAST, cooldown_s=0.0)
    dispatcher.start()
    try:
        dispatcher.dispatch([_alert(n, f"k{n}") for n in range(4)])
        receiver.wait_for(lambda r: len(r.delivered("/slack/T0/B0/SECRETPATH")) == 4, what="4 slack posts")
    finally:
        dispatcher.stop()
    times = [r.at for r in receiver.requests("/slack/T0/B0/SECRETPATH")]
    assert all(b - a >= 0.28 for a, b in zip(times, times[1:], strict=False))


def test_delivery_log_rows_in_clickhouse_without_secrets(tmp_path: Path, receiver: HttpReceiver, ch_client: Any,
                                                         ch_database: str) -> None:
    receiver.script("/pd", SERVER_ERROR)
    log = DeliveryLog(ch_client, ch_database)
    dispatcher = _dispatcher(tmp_path, receiver, delivery_log=log)
    dispatcher.start()
    try:
        dispatcher.dispatch([_alert(1, "k1"), _alert(2, "k1")])  # the second: cooldown 0 -> delivered too
        dispatcher.dispatch([_alert(3, "never", "resolve")])  # nothing open for the key: skipped
        receiver.wait_for(lambda r: len(r.delivered("/pd")) == 2 and len(r.delivered("/hook")) == 2,
                          what="deliveries")
        deadline = time.monotonic() + 10
        while log.pending() < 8 and time.monotonic() < deadline:  # 2x3 sent + 1 retry + 3 skips, logged
            with dispatcher.outbox.changed:
                dispatcher.outbox.changed.wait(0.05)
    finally:
        dispatcher.stop()
    log.flush()
    rows = ch_client.query(
        f"SELECT alert_id, channel, destination_name, attempt, status, http_status, ifNull(error, '') "
        f"FROM {ch_database}.alert_deliveries ORDER BY alert_id, destination_name, attempt").result_rows
    first_pd = next(r for r in rows if r[0] == "alert-1" and r[2] == "pd")
    assert first_pd[:6] == ("alert-1", "pagerduty", "pd", 1, "retrying", 500)
    assert first_pd[6].startswith("HTTP 500 from destination; retrying in")
    assert ("alert-1", "pagerduty", "pd", 2, "sent", 200, "") in rows
    assert ("alert-3", "slack", "slack-finops", 0, "skipped", None,
            "resolve without an open trigger on this destination") in rows
    text = repr(rows)
    for secret in ("SECRETPATH", PD_KEY, HOOK_SECRET, "127.0.0.1"):
        assert secret not in text
