"""End to end through the real broker: a simulated agent overspends a hard budget; Slack and PagerDuty payloads
arrive at a local receiver; the agent's guard refuses its next call within 10 s of the breach; at the period rollover
it may call again and PagerDuty receives a resolve; a forged control command is ignored by the guard and reported
(and audited as unverified).

The budget alert is published by this test exactly as ``stream_jobs.budgets`` shapes it (same dedup key form and
details: scope, period, period_end, threshold, mode), so the test exercises the alerting side whether or not the
detection service runs here. The period is a few seconds long so the rollover happens inside the test.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from alerting.channels import Destination
from alerting.delivery import DeliveryPolicy
from alerting.enforcement import Enforcer
from alerting.outbox import Outbox
from alerting.router import Route, RoutingTable
from alerting.worker import AlertWorker, WorkerOptions, publish_alert, publish_commands
from finops.topics import TopicNames
from producers.guard import AgentSuspended, ControlGuard, ForgedCommand
from producers.producer import UsageProducer
from schemas.models import Alert, ControlCommand, UsageEvent, load_example, sign
from schemas.wire import AvroCodec
from tests.integration.http_receiver import running_receiver

pytestmark = pytest.mark.e2e

KEY_ID, SECRET = "k1", b"e2e-control-signing-key"
LIMIT = Decimal("2.00")
PRICE_PER_CALL = Decimal("0.40")
PERIOD_S = 8.0


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        tick.wait(0.05)


class SimulatedAgent(threading.Thread):
    """Calls its "model" every 100 ms, asking the guard first and reporting usage through the SDK."""

    def __init__(self, guard: ControlGuard, producer: UsageProducer) -> None:
        super().__init__(name="simulated-agent", daemon=True)
        self.guard = guard
        self.producer = producer
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[float] = []  # wall-clock (time.time) of each allowed call
        self.refusals: list[tuple[float, AgentSuspended]] = []
        self.spent = Decimal(0)
        base = load_example("usage_event.json")
        assert isinstance(base, UsageEvent)
        self.template = base

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.guard.check()
            except AgentSuspended as err:
                with self.lock:
                    self.refusals.append((time.time(), err))
            else:
                event = self.template.model_copy(update={
                    "event_id": str(uuid.uuid4()), "agent_id": "bot-1", "team": "support", "project": "triage",
                    "occurred_at": datetime.now(UTC)})
                self.producer.emit(event)
                with self.lock:
                    self.calls.append(time.time())
                    self.spent += PRICE_PER_CALL
            self.stop_event.wait(0.1)


def _budget_alert(state: str, breach: datetime, period_end: datetime, spent: Decimal) -> Alert:
    label = breach.strftime("%Y-%m-%dT%H%M%S")
    dedup = f"pol-bot1-hard:agent=bot-1:100:{label}"
    return Alert(
        alert_id=f"{dedup}:{state}:1", dedup_key=dedup, kind="budget_threshold",
        severity="critical" if state == "trigger" else "info", state=state,
        occurred_at=breach if state == "trigger" else period_end, team="support", project="triage",
        agent_id="bot-1", policy_id="pol-bot1-hard",
        title=("agent=bot-1 reached 100% of its budget" if state == "trigger"
               else "agent=bot-1: 100% alert of the budget resolved"),
        summary=f"Spent ${spent} of ${LIMIT} (hard).", amount_usd=spent, limit_usd=LIMIT,
        details={"period": label, "threshold_percent": "100", "period_start": breach.isoformat(),
                 "period_end": period_end.isoformat(), "mode": "hard", "scope_type": "agent", "scope_value": "bot-1",
                 **({"reason": "period ended"} if state == "resolve" else {})},
        actions=["notify", "suspend"],
    )


def test_overspend_suspends_agent_notifies_and_releases_at_rollover(
    kafka_bootstrap: str, topics: TopicNames, ch_client: Any, ch_database: str, tmp_path: Path
) -> None:
    codec = AvroCodec()
    with running_receiver() as receiver:
        dests = {
            "slack": Destination("slack", "slack", SecretStr(receiver.url("/slack/T1/B1/XYZ")), min_interval_s=0.05),
            "pagerduty": Destination("pagerduty", "pagerduty", SecretStr(receiver.url("/pd")),
                                     routing_key=SecretStr("E2EROUTINGKEY")),
        }
        routes = RoutingTable(dests, (Route("all", {}, ("slack", "pagerduty")),))
        outbox = Outbox(tmp_path / "outbox.sqlite")
        enforcer = Enforcer(outbox, key_id=KEY_ID, secret=SECRET, scopes=outbox.enforcement_scopes)
        options = WorkerOptions(group_id=f"alerts-{topics.prefix}", audit_group_id=f"audit-{topics.prefix}",
                                cooldown_s=0.0, tick_s=0.5,
                                policy=DeliveryPolicy(timeout_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.5,
                                                      retry_later_s=0.5))
        worker = AlertWorker(kafka_config={"bootstrap.servers": kafka_bootstrap}, alerts_topic=topics.alerts,
                             control_topic=topics.control, routes=routes, outbox=outbox, enforcer=enforcer,
                             verify_keys={KEY_ID: SECRET}, options=options, ch_client=ch_client,
                             ch_database=ch_database)
        stop_worker = threading.Event()
        worker_thread = threading.Thread(target=worker.run, args=(stop_worker,), name="alert-worker", daemon=True)

        forged: list[ForgedCommand] = []
        guard = ControlGuard(bootstrap=kafka_bootstrap, topic=topics.control, keys={KEY_ID: SECRET},
                             agent_id="bot-1", team="support", project="triage", on_forged=forged.append)
        usage = UsageProducer(kafka_bootstrap, topics.usage, "e2e-agent", tmp_path / "spool", register_atexit=False)
        agent = SimulatedAgent(guard, usage)
        detection = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        try:
            worker_thread.start()
            guard.start()
            assert guard.wait_ready(30), "guard did not read the control topic"
            agent.start()

            # "detection": watch the agent's spend until it overspends the hard budget, then alert
            _wait(lambda: agent.spent > LIMIT, 30, "the agent to overspend")
            breach = datetime.now(UTC)
            period_end = breach + timedelta(seconds=PERIOD_S)
            with agent.lock:
                spent = agent.spent
            publish_alert(detection, topics.alerts, _budget_alert("trigger", breach, period_end, spent), codec)

            _wait(lambda: bool(agent.refusals), 10, "the guard to refuse a call within 10 s of the breach")
            first_refusal, err = agent.refusals[0]
            assert first_refusal - breach.timestamp() <= 10.0
            assert err.scope == "agent:bot-1" and "pol-bot1-hard" in err.reason and err.issued_by == "policy-engine"
            assert err.expires_at == period_end
            calls_at_refusal = len(agent.calls)

            receiver.wait_for(lambda r: len(r.delivered("/slack/T1/B1/XYZ")) >= 1 and len(r.delivered("/pd")) >= 1,
                              timeout=15, what="Slack and PagerDuty trigger payloads")
            slack = receiver.delivered("/slack/T1/B1/XYZ")[0].json()
            assert "agent bot-1" in slack["text"] and "suspend" in slack["text"] and "$2.00" in slack["text"]
            trigger = receiver.delivered("/pd")[0].json()
            assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "E2EROUTINGKEY"
            assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["component"] == "bot-1"

            # a forged resume (attacker's key) must not release the agent
            now = datetime.now(UTC)
            fake = sign(ControlCommand(command_id="forged-1", scope_type="agent", scope_value="bot-1",
                                       action="resume", reason="let me out", issued_by="policy-engine",
                                       issued_at=now, key_id="", signature=""), KEY_ID, b"not-the-key")
            publish_commands(detection, topics.control, [fake], codec)
            _wait(lambda: guard.stats().forged >= 1, 15, "the guard to report the forged command")
            assert forged[0].command_id == "forged-1" and forged[0].reason == "signature does not verify"
            if datetime.now(UTC) < period_end - timedelta(seconds=0.5):
                with pytest.raises(AgentSuspended):
                    guard.check()
            assert len(agent.calls) == calls_at_refusal or time.time() >= period_end.timestamp()

            # rollover: the guard lets the agent call again; detection resolves, PagerDuty gets the resolve
            _wait(lambda: any(t >= period_end.timestamp() for t in agent.calls), PERIOD_S + 10,
                  "the agent to call again after the rollover")
            assert all(not (first_refusal < t < period_end.timestamp() - 0.2) for t in agent.calls)
            publish_alert(detection, topics.alerts, _budget_alert("resolve", breach, period_end, spent), codec)
            receiver.wait_for(lambda r: any(x.json()["event_action"] == "resolve" for x in r.delivered("/pd")),
                              timeout=15, what="the PagerDuty resolve")
            resolve = [x.json() for x in receiver.delivered("/pd") if x.json()["event_action"] == "resolve"]
            assert resolve == [{"routing_key": "E2EROUTINGKEY", "event_action": "resolve",
                                "dedup_key": trigger["dedup_key"]}]
            published = worker.commands_published  # extended in place; read without the name the finally deletes
            _wait(lambda: any(c.action == "resume" for c in published), 10, "a resume command")
            assert worker.audit_log is not None
            _wait(lambda: ch_client.query(
                f"SELECT count() FROM {ch_database}.control_commands WHERE action = 'resume' AND verified"
            ).result_rows[0][0] >= 1, 15, "the audit rows")
        finally:
            agent.stop_event.set()
            agent.join(5)
            stop_worker.set()
            worker_thread.join(20)
            guard.close()
            usage.close()
            outbox.close()
            detection.flush(5)
            del worker, detection  # release the librdkafka clients before the session's broker stops

        audit = ch_client.query(
            f"SELECT command_id, action, verified, issued_by FROM {ch_database}.control_commands FINAL "
            "ORDER BY issued_at").result_rows
        actions = {(row[1], row[2]) for row in audit}
        assert ("suspend", True) in actions and ("resume", True) in actions
        assert ("forged-1", "resume", False, "policy-engine") in audit
        deliveries = ch_client.query(
            f"SELECT destination_name, status FROM {ch_database}.alert_deliveries").result_rows
        assert ("slack", "sent") in deliveries and ("pagerduty", "sent") in deliveries
        assert "E2EROUTINGKEY" not in repr(deliveries)
        # every alert delivered once per destination: trigger + resolve to each
        assert len(receiver.delivered("/pd")) == 2 and len(receiver.delivered("/slack/T1/B1/XYZ")) == 2
