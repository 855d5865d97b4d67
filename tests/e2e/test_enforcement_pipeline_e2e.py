"""End to end through the real broker with nothing hand-published: a simulated agent overspends a hard budget;
Slack and PagerDuty payloads arrive; the agent's guard refuses its next call within 10 s of the breach; at the
period rollover it may call again and PagerDuty receives a resolve.

Every hop is the real code: the agent reports usage with the producer SDK (``UsageProducer``) -> the usage hot path
(``build_hot_path``, via the fault suite's ``Pipeline``) prices it onto the priced topic -> the detection service
(``DetectionService``) counts it against a hard budget published with the policy tooling (``load_policy_text`` ->
``compute_diff`` -> ``publish_changes`` on the compacted policies topic) and emits the budget Alert -> the alert worker
delivers it to a local receiver standing in for Slack and PagerDuty and publishes the signed suspend command -> the
agent's ``ControlGuard`` refuses its next call.

The rollover: budget periods are calendar days (day, week or month) in the policy's time zone, and detection runs
on event time, so the test does not shorten the period: it runs the deployment on a shared simulated clock a little
behind the wall clock (never ahead: the hot path refuses events from the future) that reaches a local midnight
``LEAD_S`` seconds after the agent starts. The policy's zone is the fixed-offset ``Etc/GMT±N`` zone whose midnight
fell in the last hour or so, so the shift is at most about an hour (well inside the hot path's 24 h dedupe window).
The clock is injected into the agent's producer and guard and into the alert worker (whose enforcer releases
expired steps on it); the hot path and detection need none (the hot path validates against the wall clock,
detection runs on the events' time).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from alerting.channels import Destination
from alerting.delivery import DeliveryPolicy
from alerting.enforcement import Enforcer
from alerting.outbox import Outbox
from alerting.router import Route, RoutingTable
from alerting.worker import AlertWorker, WorkerOptions
from finops.clock import SystemClock
from finops.pricing.engine import Pricer
from finops.topics import TopicNames
from producers.guard import AgentSuspended, ControlGuard
from producers.producer import UsageProducer
from schemas.models import UsageEvent, load_example
from stream_jobs.budgets import compute_period
from stream_jobs.detection import DetectionConfig, DetectionService
from stream_jobs.policies import compute_diff, load_policy_text, load_published_policies, publish_changes
from tests.faults.pipeline import Pipeline
from tests.integration.http_receiver import running_receiver
from tests.integration.test_detection_support import OutputReader

pytestmark = pytest.mark.e2e

KEY_ID, SECRET = "k1", b"e2e-pipeline-control-signing-key"
LIMIT = Decimal("0.10")
LEAD_S = 15.0  # simulated seconds from the agent's first call to the period rollover
POLICY_ID = "pol-bot1-hard"
SLACK, PD = "/slack/T1/B1/XYZ", "/pd"
POLICY_YAML = """
policies:
  - policy_id: {policy_id}
    scope_type: agent
    scope_value: bot-1
    period: day
    timezone: {zone}
    limit_usd: {limit}
    mode: hard
    thresholds:
      - {{percent: 100, actions: [notify]}}
"""


def _wait(predicate: Callable[[], bool], timeout: float, what: str, check: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        tick.wait(0.05)


class SimClock:
    """Wall time minus ``shift`` (set once, just before the agent starts): the producer's ``clock()`` and the
    guard's clock (monotonic and sleep stay real); :class:`WorkerClock` shares it with the alert worker."""

    def __init__(self) -> None:
        self.shift = timedelta(0)
        self._idle = threading.Event()

    def __call__(self) -> datetime:
        return self.now()

    def now(self) -> datetime:
        return datetime.now(UTC) - self.shift

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self._idle.wait(max(0.0, seconds))  # the guard's throttle back-off (never set: a plain wait)


class WorkerClock(SystemClock):
    """The alert worker's clock: real sleeps that wake on its stop event, ``now`` from the shared SimClock."""

    def __init__(self, sim: SimClock, stop: threading.Event) -> None:
        super().__init__(stop)
        self.sim = sim

    def now(self) -> datetime:
        return self.sim.now()


def _recent_midnight_zone(latest: datetime) -> tuple[str, datetime]:
    """A fixed-offset zone with a local midnight at the last whole UTC hour at or before ``latest``."""
    midnight = latest.replace(minute=0, second=0, microsecond=0)
    hours = (-midnight.hour) % 24
    if hours > 14:
        hours -= 24  # Etc/GMT zones span UTC-12..UTC+14
    zone = "Etc/UTC" if hours == 0 else (f"Etc/GMT-{hours}" if hours > 0 else f"Etc/GMT+{-hours}")
    return zone, midnight


class SimulatedAgent(threading.Thread):
    """Calls its "model" every 100 ms: asks the guard first, then reports the call's usage through the SDK."""

    def __init__(self, guard: ControlGuard, producer: UsageProducer, clock: SimClock) -> None:
        super().__init__(name="simulated-agent", daemon=True)
        self.guard, self.producer, self.clock = guard, producer, clock
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[tuple[float, datetime, str]] = []  # (monotonic time of the emit, occurred_at, event_id)
        self.refusals: list[tuple[float, AgentSuspended]] = []
        self.errors: list[BaseException] = []
        base = load_example("usage_event.json")
        assert isinstance(base, UsageEvent)
        self.template = base

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self.guard.check()
                except AgentSuspended as err:
                    with self.lock:
                        self.refusals.append((time.monotonic(), err))
                else:
                    event_id = str(uuid.uuid4())
                    occurred = self.clock.now()
                    event = self.template.model_copy(update={
                        "event_id": event_id, "agent_id": "bot-1", "team": "support", "project": "triage",
                        "occurred_at": occurred, "task_id": f"task-{event_id[:8]}",  # distinct work, no waste
                        "prompt_hash": f"sha256:{event_id[:12]}", "reported_cost": None})
                    self.producer.emit(event)
                    with self.lock:
                        self.calls.append((time.monotonic(), occurred, event_id))
                self.stop_event.wait(0.1)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.errors.append(err)

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"the agent died: {self.errors[0]!r}")


def test_agent_usage_through_hot_path_and_detection_suspends_then_releases_at_rollover(
    kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str,
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    # What one call costs, priced independently with the real Pricer; the breaching call is the one whose
    # cumulative cost first reaches the limit.
    template = load_example("usage_event.json")
    assert isinstance(template, UsageEvent)
    per_call = Pricer().price(template.to_avro_dict()).cost_usd
    breach_call = math.ceil(LIMIT / per_call)
    assert breach_call >= 2, "the first call must not breach on its own"

    # The hard budget, through the real policy path, in the zone whose day rolls over at `midnight`.
    zone, midnight = _recent_midnight_zone(datetime.now(UTC) - timedelta(seconds=LEAD_S + 5))
    before = compute_period("day", zone, midnight - timedelta(seconds=1))
    assert before.end == midnight, (zone, before)
    wanted = load_policy_text(POLICY_YAML.format(policy_id=POLICY_ID, zone=zone, limit=LIMIT), source="e2e.yaml",
                              now=datetime.now(UTC))
    publish_changes(kafka_config, topics.policies,
                    compute_diff(wanted, load_published_policies(kafka_config, topics.policies)))
    dedup = f"{POLICY_ID}:agent=bot-1:100:{before.label}"

    sim = SimClock()
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database)
    detection = DetectionService(kafka_config, topics, DetectionConfig(
        group_id=f"det-{uuid.uuid4().hex[:8]}", start_from="earliest", flush_interval_s=0.5, poll_timeout_s=0.1,
        idle_partition_s=1.0))
    detection_errors: list[BaseException] = []

    # The service is passed in, not looked up: the `finally` below deletes the name `detection`.
    def run_detection(service: DetectionService) -> None:
        try:
            service.run()
        except BaseException as err:  # noqa: BLE001 - reported by check()
            detection_errors.append(err)

    with running_receiver() as receiver:
        dests = {
            "slack": Destination("slack", "slack", SecretStr(receiver.url(SLACK)), min_interval_s=0.05),
            "pagerduty": Destination("pagerduty", "pagerduty", SecretStr(receiver.url(PD)),
                                     routing_key=SecretStr("E2EROUTINGKEY")),
        }
        routes = RoutingTable(dests, (Route("budgets", {"kind": frozenset({"budget_threshold"})},
                                            ("slack", "pagerduty")),))
        outbox = Outbox(tmp_path / "outbox.sqlite")
        enforcer = Enforcer(outbox, key_id=KEY_ID, secret=SECRET, scopes=outbox.enforcement_scopes)
        stop_worker = threading.Event()
        options = WorkerOptions(group_id=f"alerts-{topics.prefix}", audit_group_id=f"audit-{topics.prefix}",
                                cooldown_s=0.0, tick_s=0.5,
                                policy=DeliveryPolicy(timeout_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.5,
                                                      retry_later_s=0.5))
        worker = AlertWorker(kafka_config={"bootstrap.servers": kafka_bootstrap}, alerts_topic=topics.alerts,
                             control_topic=topics.control, routes=routes, outbox=outbox, enforcer=enforcer,
                             verify_keys={KEY_ID: SECRET}, options=options, clock=WorkerClock(sim, stop_worker),
                             ch_client=ch_client, ch_database=ch_database)
        worker_thread = threading.Thread(target=worker.run, args=(stop_worker,), name="alert-worker", daemon=True)
        detection_thread = threading.Thread(target=run_detection, args=(detection,), name="detection", daemon=True)
        guard = ControlGuard(bootstrap=kafka_bootstrap, topic=topics.control, keys={KEY_ID: SECRET},
                             agent_id="bot-1", team="support", project="triage", clock=sim)
        usage = UsageProducer(kafka_bootstrap, topics.usage, "e2e-agent", tmp_path / "spool", clock=sim,
                              register_atexit=False)
        agent = SimulatedAgent(guard, usage, sim)
        alerts = OutputReader(kafka_config, topics.alerts)

        def check() -> None:
            pipeline.check()
            agent.check()
            if detection_errors:
                raise AssertionError(f"detection died: {detection_errors[0]!r}")

        try:
            pipeline.start_hot_path()
            detection.start()
            assert detection.budgets.policies[POLICY_ID].timezone == zone, "detection loaded the published policy"
            detection_thread.start()
            worker_thread.start()
            guard.start()
            assert guard.wait_ready(30), "guard did not read the control topic"
            sim.shift = datetime.now(UTC) - (midnight - timedelta(seconds=LEAD_S))
            assert sim.shift > timedelta(0), "the simulated clock must not run ahead of the wall clock"
            setup_s = time.monotonic() - t0
            agent.start()

            # Breach -> refusal, measured from the wall-clock emit of the call that reached the limit.
            _wait(lambda: bool(agent.refusals), 30, "the guard to refuse a call", check)
            with agent.lock:
                calls = list(agent.calls)
            first_refusal, err = agent.refusals[0]
            breach_wall, breach_at, _ = calls[breach_call - 1]
            refusal_after_breach = first_refusal - breach_wall
            assert 0 < refusal_after_breach <= 10.0, f"refused {refusal_after_breach:.2f} s after the breach"
            assert err.scope == "agent:bot-1" and POLICY_ID in err.reason and err.issued_by == "policy-engine"
            assert err.expires_at == midnight, "the suspension lasts until the end of the budget period"
            assert sim.now() < midnight, "refused while the period is still open"

            # Detection's own alert: the budget trigger for this period, at the spend of the breaching call.
            alerts.wait_for(lambda r: any(a["dedup_key"] == dedup and a["state"] == "trigger" for a in r),
                            lambda: None, deadline_s=15)
            trigger_alert = next(a for a in alerts.records if a["dedup_key"] == dedup and a["state"] == "trigger")
            assert trigger_alert["kind"] == "budget_threshold" and "suspend" in trigger_alert["actions"]
            assert trigger_alert["amount_usd"] == per_call * breach_call
            assert trigger_alert["details"]["mode"] == "hard"
            assert trigger_alert["details"]["period_end"] == midnight.isoformat()
            # Stamped with detection's event-time clock (its watermark before the breaching event's batch, so it may
            # be a batch behind the breaching call), inside the period.
            assert calls[0][1] <= trigger_alert["occurred_at"] <= breach_at + timedelta(seconds=1) < midnight

            receiver.wait_for(lambda r: len(r.delivered(SLACK)) >= 1 and len(r.delivered(PD)) >= 1,
                              timeout=15, what="Slack and PagerDuty trigger payloads")
            slack = receiver.delivered(SLACK)[0].json()
            assert "bot-1" in slack["text"] and "suspend" in slack["text"], slack
            trigger = receiver.delivered(PD)[0].json()
            assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "E2EROUTINGKEY"
            assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["component"] == "bot-1"
            delivered_after = {"slack": receiver.delivered(SLACK)[0].at - breach_wall,
                               "pagerduty": receiver.delivered(PD)[0].at - breach_wall}

            # Rollover: the agent calls again from midnight on (and not before); detection sees its new-period
            # events, resolves the period's alert, and PagerDuty receives the resolve.
            _wait(lambda: any(at >= midnight for _, at, _ in agent.calls), LEAD_S + 15,
                  "the agent to call again after the rollover", check)
            with agent.lock:
                after_refusal = [at for wall, at, _ in agent.calls if wall > first_refusal]
            assert after_refusal and all(at >= midnight for at in after_refusal), "a call slipped through"
            resumed_after = (min(at for _, at, _ in agent.calls if at >= midnight) - midnight).total_seconds()
            alerts.wait_for(lambda r: any(a["dedup_key"] == dedup and a["state"] == "resolve" for a in r),
                            lambda: None, deadline_s=20)
            resolve_alert = next(a for a in alerts.records if a["dedup_key"] == dedup and a["state"] == "resolve")
            assert resolve_alert["details"]["reason"] == "period ended"
            receiver.wait_for(lambda r: any(x.json()["event_action"] == "resolve" for x in r.delivered(PD)),
                              timeout=15, what="the PagerDuty resolve")
            resolve = [x.json() for x in receiver.delivered(PD) if x.json()["event_action"] == "resolve"]
            assert resolve == [{"routing_key": "E2EROUTINGKEY", "event_action": "resolve",
                                "dedup_key": trigger["dedup_key"]}]
            published = worker.commands_published  # extended in place; read without the name the finally deletes
            _wait(lambda: any(c.action == "resume" for c in published), 10, "a resume command")
            assert [c.action for c in published][0] == "suspend"
            total_s = time.monotonic() - t0
            print(f"\nzone {zone}, simulated clock {sim.shift.total_seconds():.0f} s behind; setup {setup_s:.1f} s; "
                  f"breach at call {breach_call} (${per_call}/call, limit ${LIMIT}); refusal "
                  f"{refusal_after_breach:.2f} s after the breaching emit; Slack {delivered_after['slack']:.2f} s, "
                  f"PagerDuty {delivered_after['pagerduty']:.2f} s; first call after rollover "
                  f"{resumed_after:.2f} s after midnight; "
                  f"calls {len(agent.calls)}, refusals {len(agent.refusals)}; total {total_s:.1f} s")
        finally:
            agent.stop_event.set()
            agent.join(5)
            detection.request_stop()
            detection_thread.join(30)
            stop_worker.set()
            worker_thread.join(20)
            pipeline.stop()
            guard.close()
            usage.close()
            alerts.close()
            outbox.close()
            pipeline.hot = None
            del worker, detection  # release the librdkafka clients before the session's broker stops

        # Exactly one trigger and one resolve for this budget's period on each channel. Detection may also report
        # other things about the agent (e.g. its burn rate under a loaded CI machine); those are not this budget's.
        # Nor is the next period's: the resumed agent spends $0.10 again in four calls, so whether that legitimate
        # breach is delivered before the test stops depends on timing.
        budget_slack = [r for r in receiver.delivered(SLACK) if dedup in r.body.decode("utf-8", "replace")]
        budget_pd = [r for r in receiver.delivered(PD) if dedup in r.body.decode("utf-8", "replace")]
        others = [r.body[:200] for r in receiver.delivered(SLACK) if r not in budget_slack]
        assert len(budget_pd) == 2 and len(budget_slack) == 2, (len(budget_pd), len(budget_slack), others)
