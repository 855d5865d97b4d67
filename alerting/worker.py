"""The alert worker: consume alerts, enforce, enqueue deliveries, commit; deliver in lanes; audit the control topic.

Role: :meth:`AlertWorker.run_once` (a step of the one consume loop, ``finops/kafka/loop.py``) consumes
``finops.alerts.v1``, turns budget alerts into signed commands, routes every alert into the outbox and commits;
:class:`DeliveryLane` threads, one per destination, deliver the outbox in order, so a slow or broken destination
delays only its own lane; the worker also follows the control topic into the audit table.

Guarantee (DESIGN §5): offsets are committed only after the commands are acknowledged and the alerts are in the
outbox, so a crash replays the batch and the outbox and deterministic command ids make the replay harmless; a
forged or stale control message is answered by re-publishing the key's genuine command.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alerting.channels import Destination
from alerting.control_state import compute_obeyed, read_control_messages
from alerting.delivery import AttemptRecord, DeliveryPolicy, DestinationSender
from alerting.delivery_log import ControlAuditLog, DeliveryLog, DeliveryLogError
from alerting.enforcement import Enforcer
from alerting.outbox import EnqueueResult, Outbox
from alerting.router import RoutingTable
from finops.clock import Clock, SystemClock
from finops.http import HttpTransport, UrllibTransport
from finops.kafka.clients import Role, build_consumer, build_producer
from finops.kafka.loop import ConsumeLoop, FlushContext, FlushPolicy, Step
from schemas.control import control_key, is_live, judge_control_message
from schemas.errors import FinopsError
from schemas.models import Alert, ControlCommand, verify
from schemas.wire import AvroCodec

__all__ = [
    "AlertWorker",
    "ControlPublishError",
    "DeliveryLane",
    "Dispatcher",
    "WorkerOptions",
    "build_config_alert",
    "publish_alert",
    "publish_commands",
]

log = logging.getLogger(__name__)


class ControlPublishError(FinopsError):
    """A control command (or alert) was not acknowledged by Kafka; nothing was committed, the batch replays."""


# ------------------------------------------------------------------------------------------------------ publishing


def publish_commands(producer: Any, topic: str, cmds: Sequence[ControlCommand], codec: Any, *,
                     timeout: float = 30.0) -> None:
    """Produce ``cmds`` keyed ``scope_type:scope_value`` and wait for every acknowledgement.
    Raises :class:`ControlPublishError` naming the failed commands."""
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.key().decode() if msg.key() else '?'}: {err}")

    for cmd in cmds:
        producer.produce(topic, key=control_key(cmd.scope_type, cmd.scope_value).encode("utf-8"),
                         value=codec.encode(cmd.to_avro_dict(), "ControlCommand"), on_delivery=on_delivery)
    left = producer.flush(timeout) if cmds else 0
    if left or failures:
        raise ControlPublishError(f"control commands not acknowledged by Kafka ({left} still queued; "
                                  f"{'; '.join(failures) or 'timeout'}); check the broker and topic {topic}")


def publish_alert(producer: Any, topic: str, alert: Alert, codec: Any, *, timeout: float = 30.0) -> None:
    """Produce one alert keyed by its dedup key and wait for the acknowledgement (raises ControlPublishError)."""
    failures: list[str] = []
    producer.produce(topic, key=alert.dedup_key.encode("utf-8"), value=codec.encode(alert.to_avro_dict(), "Alert"),
                     on_delivery=lambda err, _msg: failures.append(str(err)) if err is not None else None)
    if producer.flush(timeout) or failures:
        raise ControlPublishError(f"alert {alert.alert_id} not acknowledged by Kafka: {'; '.join(failures)}")


def build_config_alert(destination: Destination, reason: str, http_status: int | None, now: datetime) -> Alert:
    """The ``config`` alert raised when a destination is disabled (names the destination, never its URL)."""
    return Alert(
        alert_id=f"config-{uuid.uuid4()}",
        dedup_key=f"config:destination:{destination.name}:broken",
        kind="config", severity="critical", state="trigger", occurred_at=now,
        title=f"Alert destination {destination.name} ({destination.type}) is disabled",
        summary=(f"Deliveries to {destination.name} stopped: {reason}. Alerts for it are kept in the outbox and "
                 "sent once its URL or key is replaced (restart the alert worker after changing it)."),
        details={"destination": destination.name, "channel": destination.type,
                 "http_status": str(http_status) if http_status is not None else ""},
        actions=["notify"],
    )


# ------------------------------------------------------------------------------------------------------ lanes


class DeliveryLane(threading.Thread):
    """Sends one destination's outbox items in order until stopped.

    When the destination answers a permanent 4xx, the lane marks it broken in the outbox and the worker publishes a
    ``config`` alert to the alerts topic, which is routed (like every alert) to the destinations that still work.
    """

    def __init__(self, destination: Destination, outbox: Outbox, sender: DestinationSender, stop: threading.Event,
                 *, retry_later_s: float, on_broken: Callable[[Destination, str, int | None], None]) -> None:
        super().__init__(name=f"alert-lane-{destination.name}", daemon=True)
        self.destination = destination
        self.outbox = outbox
        self.sender = sender
        self.stop_event = stop
        self.retry_later_s = retry_later_s
        self.on_broken = on_broken

    def run(self) -> None:
        name = self.destination.name
        while not self.stop_event.is_set():
            try:
                if name in self.outbox.broken():
                    self._idle(1.0)
                    continue
                item = self.outbox.next_pending(name)
                if item is None:
                    self._idle(0.5)
                    continue
                outcome = self.sender.send(item.alert(), delivery_id=item.delivery_id,
                                           first_attempt=item.attempts + 1)
                if outcome.result == "sent":
                    self.outbox.mark_sent(item.seq, outcome.attempts)
                    continue
                self.outbox.record_failure(item.seq, outcome.attempts, outcome.error or outcome.result)
                if outcome.result == "broken":
                    self.outbox.mark_broken(name, self.destination.fingerprint(), outcome.error or "permanent 4xx")
                    self.on_broken(self.destination, outcome.error or "permanent 4xx", outcome.http_status)
                elif outcome.result == "retry_later":
                    self.stop_event.wait(self.retry_later_s)
            except Exception:  # noqa: BLE001 - a lane must survive a bad item or a transient outbox error
                log.exception("alert lane %s: unexpected error; continuing in 1s", name)
                self.stop_event.wait(1.0)

    def _idle(self, seconds: float) -> None:
        with self.outbox.changed:
            self.outbox.changed.wait(seconds)


class Dispatcher:
    """Routing + outbox + one delivery lane per destination. Usable without Kafka (tests, tools)."""

    def __init__(self, routes: RoutingTable, outbox: Outbox, *, transport: HttpTransport | None = None,
                 clock: Clock | None = None, policy: DeliveryPolicy | None = None,
                 dashboard_url: str = "http://127.0.0.1:8080", cooldown_s: float = 300.0,
                 delivery_log: DeliveryLog | None = None,
                 on_broken: Callable[[Alert], None] | None = None) -> None:
        self.routes = routes
        self.outbox = outbox
        self.stop_event = threading.Event()
        self.clock: Clock = clock or SystemClock(self.stop_event)
        self.transport = transport or UrllibTransport()
        self.policy = policy or DeliveryPolicy()
        self.dashboard_url = dashboard_url
        self.cooldown_s = cooldown_s
        self.delivery_log = delivery_log
        # How a config alert is raised: the worker publishes it to the alerts topic; standalone, it is dispatched.
        self._raise = on_broken or (lambda alert: self.dispatch([alert]))
        self.lanes: dict[str, DeliveryLane] = {}
        self.attempts: list[AttemptRecord] = []  # recent attempts, for tests and `status`
        self._attempts_lock = threading.Lock()
        still_broken = outbox.sync_destinations({d.name: d.fingerprint() for d in routes.destinations.values()})
        for name in still_broken:
            log.error("alert destination %s is still disabled (%s); replace its URL or key to re-enable it", name,
                      outbox.broken()[name])

    def _on_attempt(self, record: AttemptRecord) -> None:
        with self._attempts_lock:
            self.attempts.append(record)
            del self.attempts[:-1000]
        if self.delivery_log is not None:
            self.delivery_log.record(record)

    def _on_broken(self, destination: Destination, reason: str, http_status: int | None) -> None:
        alert = build_config_alert(destination, reason, http_status, self.clock.now())
        log.error("alert destination %s disabled: %s; raising config alert %s", destination.name, reason,
                  alert.alert_id)
        try:
            self._raise(alert)
        except Exception:  # noqa: BLE001 - the lane must continue; the failure is logged loudly
            log.exception("could not raise the config alert for destination %s", destination.name)

    def start(self) -> None:
        for dest in self.routes.destinations.values():
            sender = DestinationSender(dest, self.transport, self.clock, policy=self.policy,
                                       dashboard_url=self.dashboard_url, on_attempt=self._on_attempt)
            lane = DeliveryLane(dest, self.outbox, sender, self.stop_event, retry_later_s=self.policy.retry_later_s,
                                on_broken=self._on_broken)
            self.lanes[dest.name] = lane
            lane.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()
        for lane in self.lanes.values():
            lane.join(timeout)

    def dispatch(self, alerts: Iterable[Alert]) -> list[tuple[Alert, EnqueueResult]]:
        """Route and durably enqueue ``alerts`` (one transaction). Returns each (alert, result)."""
        batch: list[tuple[Alert, list[str]]] = []
        broken = frozenset(self.outbox.broken())
        for alert in alerts:
            # A config alert about a broken destination must not be routed to it; other alerts still queue for a
            # broken destination (kept until it is repaired: never lost).
            exclude = broken if alert.kind == "config" else frozenset()
            dests = [d.name for d in self.routes.route(alert, exclude=exclude)]
            if not dests:
                log.warning("alert %s (%s, %s, team %s) matches no route; it is not notified", alert.alert_id,
                            alert.kind, alert.severity, alert.team)
            batch.append((alert, dests))
        results = self.outbox.enqueue(batch, cooldown_s=self.cooldown_s)
        out: list[tuple[Alert, EnqueueResult]] = []
        flat = [(alert, d) for alert, dests in batch for d in dests]
        for (alert, dest_name), result in zip(flat, results, strict=True):
            out.append((alert, result))
            if result.status == "skipped" and self.delivery_log is not None:
                dest = self.routes.destinations[dest_name]
                self.delivery_log.record_skip(alert.alert_id, dest.type, dest.name, result.reason or "skipped",
                                              self.clock.now())
        return out


# ------------------------------------------------------------------------------------------------------ worker


@dataclass(frozen=True)
class WorkerOptions:
    group_id: str = "finops-alerts"
    audit_group_id: str = "finops-control-audit"
    batch_size: int = 100
    poll_timeout_s: float = 0.2
    tick_s: float = 1.0
    cooldown_s: float = 300.0
    publish_timeout_s: float = 30.0
    dashboard_url: str = "http://127.0.0.1:8080"
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)


class AlertWorker(Step):
    """Wires Kafka, the enforcer, the dispatcher and the ClickHouse logs. ``run`` blocks until :meth:`stop`.

    As a step of its :class:`~finops.kafka.loop.ConsumeLoop`: :meth:`submit` does steps 1-3 of :meth:`run_once`
    synchronously, so :meth:`join` has nothing left to wait for and the loop commits after every non-empty batch;
    :meth:`poll` (between batches) does step 5. A revoke commits what was processed; nothing else is held.
    """

    def __init__(self, *, kafka_config: Mapping[str, Any], alerts_topic: str, control_topic: str,
                 routes: RoutingTable, outbox: Outbox, enforcer: Enforcer, verify_keys: Mapping[str, bytes],
                 options: WorkerOptions | None = None, transport: HttpTransport | None = None,
                 clock: Clock | None = None, ch_client: Any = None, ch_database: str | None = None) -> None:
        self.options = options or WorkerOptions()
        self.alerts_topic = alerts_topic
        self.control_topic = control_topic
        self.enforcer = enforcer
        self.verify_keys = dict(verify_keys)
        self.codec = AvroCodec()
        base = dict(kafka_config)
        self.producer_config = base
        self.producer = build_producer(base, Role.ALERTS)
        self.consumer = build_consumer(base, Role.ALERTS, self.options.group_id)
        self.audit_consumer = build_consumer(base, Role.ALERTS, self.options.audit_group_id)
        self.delivery_log = DeliveryLog(ch_client, ch_database or "finops") if ch_client is not None else None
        self.audit_log = ControlAuditLog(ch_client, ch_database or "finops") if ch_client is not None else None
        self.dispatcher = Dispatcher(routes, outbox, transport=transport, clock=clock, policy=self.options.policy,
                                     dashboard_url=self.options.dashboard_url, cooldown_s=self.options.cooldown_s,
                                     delivery_log=self.delivery_log, on_broken=self._raise_config_alert)
        self.clock = self.dispatcher.clock
        self._loop = ConsumeLoop(self.consumer, [alerts_topic], self,
                                 policy=FlushPolicy(self.options.batch_size, 0.0),
                                 consume_batch=self.options.batch_size, poll_timeout_s=self.options.poll_timeout_s,
                                 clock=self.clock.monotonic, name="alert worker")
        self._alerts_in_batch = 0
        self._next_tick = 0.0
        self.invalid_alerts = 0
        self.commands_published: list[ControlCommand] = []
        self.forged_seen = 0
        self.reasserted = 0
        # key -> the command guards obey there (read from the topic at start, then followed by the audit).
        self._obeyed: dict[str, ControlCommand] = {}

    def _raise_config_alert(self, alert: Alert) -> None:
        publish_alert(self.producer, self.alerts_topic, alert, self.codec, timeout=self.options.publish_timeout_s)

    def start(self) -> None:
        self._load_obeyed()
        self._loop.start()
        self.audit_consumer.subscribe([self.control_topic])
        self.dispatcher.start()

    def _load_obeyed(self) -> None:
        """What guards obey per key now (the whole compacted topic), so an unverifiable message the audit meets
        after a restart can still be answered (:meth:`_reassert`). Best effort: without it, only commands audited
        since the start are re-asserted."""
        try:
            messages = read_control_messages(self.producer_config, self.control_topic,
                                             timeout=self.options.publish_timeout_s)
        except Exception as err:  # noqa: BLE001 - reported; the audit keeps following the topic
            log.warning("control audit: could not read the current control state of %s: %s", self.control_topic, err)
            return
        self._obeyed = compute_obeyed(messages, self.verify_keys, codec=self.codec)

    def stop(self) -> None:
        """Stop lanes, flush logs, close clients (reverse order of start)."""
        self.dispatcher.stop()
        self._flush_logs()
        self.audit_consumer.close()
        self._loop.close()
        self.producer.flush(10)

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.stop()

    def run_once(self) -> int:
        """One iteration. Returns the number of alerts consumed.

        In this order, because each step's guarantee needs the previous:

        1. consume a batch from ``finops.alerts.v1`` (group ``finops-alerts``, manual commits);
        2. enforcement: the :class:`~alerting.enforcement.Enforcer` turns budget alerts into signed commands,
           published to the compacted ``agent.control.v1`` and acknowledged (``flush``) first, so agents stop quickly;
        3. route each alert (:mod:`alerting.router`) and write it to the outbox for its destinations, one SQLite
           transaction (:meth:`~alerting.outbox.Outbox.enqueue`);
        4. commit the batch's offsets (the loop flushes after every non-empty batch): only now, so a crash before it
           replays the batch, and the outbox (unique per alert and destination) and the deterministic command ids
           make the replay harmless;
        5. (:meth:`poll`, before the next batch) flush the delivery log, follow the control topic into the audit
           table (commit after the insert), and every ``tick_s`` let the enforcer release scopes whose period ended.
           A tombstone, forged, mis-keyed or replayed (stale) message on a key is reported and answered by
           re-publishing the key's genuine live command, so compaction cannot leave the unverifiable message as the
           key's only value (:meth:`_reassert`).
        """
        self._alerts_in_batch = 0
        self._loop.poll_once()
        return self._alerts_in_batch

    def submit(self, msgs: Sequence[Any]) -> None:
        """Steps 1-3: decode, enforce (commands acknowledged), route into the outbox."""
        alerts: list[Alert] = []
        trackers = self._loop.trackers
        for msg in msgs:
            if msg.error() is not None:
                log.warning("alerts consumer: %s", msg.error())
                continue
            tracker = trackers.get((msg.topic(), msg.partition()))
            if tracker is not None:
                tracker.on_consumed(msg.offset())
            value = msg.value()
            if value is None:
                log.warning("alerts consumer: empty message skipped")
                continue
            try:
                _, record = self.codec.decode(value)
                alerts.append(Alert.from_avro_dict(record))
            except FinopsError as err:
                # No DLQ for alerts: an undecodable alert is a producer bug; it is logged with its provenance.
                self.invalid_alerts += 1
                log.error("skipping undecodable alert at %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(),
                          err)
        if alerts:
            cmds = [cmd for alert in alerts for cmd in self.enforcer.handle(alert)]
            publish_commands(self.producer, self.control_topic, cmds, self.codec,
                             timeout=self.options.publish_timeout_s)
            self.commands_published.extend(cmds)
            for cmd in cmds:
                log.info("control: published %s %s:%s (%s)", cmd.action, cmd.scope_type, cmd.scope_value,
                         cmd.command_id)
            self.dispatcher.dispatch(alerts)
        self._alerts_in_batch = len(alerts)

    def join(self, flush: FlushContext) -> bool:
        """Step 4's precondition: the commands are acknowledged and the outbox holds the batch (both in submit)."""
        return True

    def poll(self) -> bool:
        """Step 5, between batches: release expired scopes every ``tick_s``, audit the control topic, flush logs."""
        if self.clock.monotonic() >= self._next_tick:
            self._next_tick = self.clock.monotonic() + self.options.tick_s
            expired = self.enforcer.tick(self.clock.now())
            if expired:
                publish_commands(self.producer, self.control_topic, expired, self.codec,
                                 timeout=self.options.publish_timeout_s)
                self.commands_published.extend(expired)
        self._audit_once()
        self._flush_logs()
        return False

    def _audit_once(self) -> None:
        """Audit the control messages since the last call: every command into the audit table (``verified``
        false for forged ones); tombstones, forged, mis-keyed and undecodable messages counted and logged; and
        each of those answered by :meth:`_reassert`. Commits after the audit rows are written."""
        msgs = self.audit_consumer.consume(self.options.batch_size, 0)
        if not msgs:
            return
        now = self.clock.now()
        suspect: dict[str, str] = {}
        for msg in msgs:
            if msg.error() is not None:
                continue
            raw_key = msg.key()
            key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else None
            verdict = judge_control_message(key, msg.value(), self.verify_keys,
                                            self._obeyed.get(key) if key else None, self.codec)
            cmd, why = verdict.command, verdict.reason
            if verdict.obeyed:
                if key is not None and cmd is not None:
                    self._obeyed[key] = cmd
            else:
                if verdict.unverifiable:
                    # Unverifiable: guards ignore it (producers/guard.py); report it like a forgery. (A stale
                    # genuine command is ignored too, not forged; compaction would let it win all the same.)
                    self.forged_seen += 1
                    if cmd is None:
                        log.warning("control audit: IGNORED control message for key %r at offset %d: %s", key,
                                    msg.offset(), why)
                    else:
                        log.warning("control audit: command %s for %s:%s IGNORED (key_id %r, issued_by %r): %s",
                                    cmd.command_id, cmd.scope_type, cmd.scope_value, cmd.key_id, cmd.issued_by,
                                    why)
                if key is not None:
                    suspect[key] = why
            if cmd is not None and self.audit_log is not None:
                self.audit_log.record(cmd, received_at=now, verified=verify(cmd, self.verify_keys))
        if self.audit_log is not None:
            try:
                self.audit_log.flush()
            except DeliveryLogError as err:
                log.error("control audit not written (will retry): %s", err)
                return
        self._reassert(suspect, now)
        self.audit_consumer.commit(asynchronous=False)

    def _reassert(self, suspect: Mapping[str, str], now: datetime) -> None:
        """Re-publish the genuine live command of each key that just received an unverifiable message.

        Guards already ignore such a message, but the topic is compacted: once the cleaner runs, the unverifiable
        message would be the key's only value and a guard starting later would never see the genuine command (a
        tombstone would even erase the key). Re-publishing the obeyed command (same id, same signature) makes it the
        key's latest value again; guards treat the repeat as the command they hold. Nothing is re-published for a
        key whose state is a resume or has expired (the unverifiable message cannot make a guard obey anything).
        A failure is logged and retried with the next unverifiable message, not fatal: agents are not affected."""
        again = [cmd for key, cmd in self._obeyed.items() if key in suspect and is_live(cmd, now)]
        if not again:
            return
        try:
            publish_commands(self.producer, self.control_topic, again, self.codec,
                             timeout=self.options.publish_timeout_s)
        except ControlPublishError as err:
            log.error("control audit: could not re-assert %d command(s) over unverifiable messages: %s",
                      len(again), err)
            return
        self.reasserted += len(again)
        for cmd in again:
            log.warning("control audit: re-published the genuine %s %s:%s (%s) over an unverifiable message (%s)",
                        cmd.action, cmd.scope_type, cmd.scope_value, cmd.command_id,
                        suspect[control_key(cmd.scope_type, cmd.scope_value)])

    def _flush_logs(self) -> None:
        for writer in (self.delivery_log, self.audit_log):
            if writer is None:
                continue
            try:
                writer.flush()
            except DeliveryLogError as err:
                log.error("%s (will retry)", err)
