"""The detection service: a confluent-kafka batch consumer of priced events that runs the budget, anomaly and waste
detectors, plus ``register_detection(app, settings)`` to run it inside the Faust worker.

Role: decode, call the pure modules (``budgets``, ``anomaly``, ``waste``) on plain tuples, route the results. A
batch consumer, not a Faust agent: the detectors need per-call fields that only the high-volume priced topic
carries, and Faust's per-message cost is too high for it (DESIGN §9). In: ``agent.usage.priced.v1`` and
``finops.policies.v1``; out: ``finops.alerts.v1``, ``finops.waste.v1``, ``finops.detection.state.v1``.

Guarantee (DESIGN §5, detailed in :class:`DetectionService`): counters are persisted before input offsets are
committed, so after a crash a budget threshold fires once; alert ids are deterministic, so anything re-sent for a
replayed span carries the same id; ClickHouse stays the truth for amounts (reconciliation).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import mode
from confluent_kafka import TopicPartition

from finops.clickhouse import ROLE_STORE_WAIT_S, check_identifier, open_client
from finops.kafka.clients import ROLE_BROKER_WAIT_S, Role, build_consumer, build_producer
from finops.kafka.loop import Assignment, ConsumeLoop, FlushContext, FlushPolicy, Step, TopicPartitionKey
from finops.pricing.catalogue import build_pricer
from finops.topics import LEDGER_SINK_GROUP, TopicNames, ensure_topics
from schemas.errors import FinopsError
from schemas.models import BudgetPolicy
from schemas.wire import AvroCodec
from stream_jobs.anomaly import AnomalyConfig, AnomalyDetector, build_anomaly_alert
from stream_jobs.budgets import BudgetEngine, SpendEvent
from stream_jobs.dedupe import HOUR_US, Deduper
from stream_jobs.drift import DriftWatcher
from stream_jobs.policies import decode_policy, read_compacted_topic
from stream_jobs.waste import WasteConfig, WasteDetectors, WasteSignal, build_waste_record

if TYPE_CHECKING:
    from finops.settings import FinopsSettings

__all__ = [
    "ClickHouseLedgerReader",
    "DetectionConfig",
    "DetectionError",
    "DetectionService",
    "LedgerReader",
    "SPEND_FIELDS",
    "build_spend_event",
    "build_spend_event_of",
    "register_detection",
    "state_topic",
    "waste_topic",
]

log = logging.getLogger(__name__)

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_META_KEY = "meta:watermark"


class DetectionError(FinopsError):
    """The detection service cannot continue (Kafka refused a write, a topic is missing); restart it after fixing
    the cause: the replay from the last commit is correct."""


def waste_topic(topics: TopicNames) -> str:
    return topics.waste


def state_topic(topics: TopicNames) -> str:
    return topics.detection_state


# --------------------------------------------------------------------------------------------------------------------
# Configuration and the ledger
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionConfig:
    """How the service runs. ``start_from`` applies to a consumer group without committed offsets: ``latest``
    (production: history comes from the ledger) or ``earliest`` (replays, tests)."""

    group_id: str = "finops-detection"
    start_from: str = "latest"
    batch_size: int = 2000
    poll_timeout_s: float = 0.2
    flush_interval_s: float = 1.0
    reconcile_interval_s: float = 300.0
    settle_s: int = 600
    idle_partition_s: float = 5.0
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    waste: WasteConfig = field(default_factory=WasteConfig)
    seed_hours: int = 48
    #: The event-id dedupe (one per priced partition): event-time window, entry cap, and the produce-time span
    #: read back at assignment to rebuild it.
    dedupe_window_us: int = 24 * HOUR_US
    dedupe_max_entries: int = 1_000_000
    dedupe_rebuild_s: float = 3600.0
    #: The consumer group of the ledger sink (docs/CONTRACTS.md): its committed offsets say which priced events
    #: the ledger holds, which lets reconciliation lower a counter safely. None: never lower.
    ledger_sink_group: str | None = LEDGER_SINK_GROUP


class LedgerReader(Protocol):
    """What the service reads from ClickHouse (the ledger is the truth for amounts)."""

    def budget_hours(self, policy: BudgetPolicy, start_us: int, end_us: int) -> dict[int, Decimal]:
        """Spend per event-time hour (hour start, UTC us) of the policy's scope in ``[start_us, end_us)``."""
        ...

    def window_history(self, since_us: int, until_us: int,
                       window_s: int) -> list[tuple[str, str, str, int, Decimal]]:
        """``(kind, key, team, window_start_us, spend)`` per agent and team window in ``[since_us, until_us)``."""
        ...


def _dt(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class ClickHouseLedgerReader:
    """:class:`LedgerReader` over clickhouse-connect (chdb, a server, or the store endpoint). Parameterised SQL;
    column names come from a fixed map, never from input."""

    _SCOPE_SQL = {"team": "team = {v:String}", "project": "project = {v:String}", "agent": "agent_id = {v:String}",
                  "tag": "tags[{k:String}] = {v:String}"}

    def __init__(self, client: Any, database: str) -> None:
        check_identifier(database)
        self._client = client
        self._db = database

    def budget_hours(self, policy: BudgetPolicy, start_us: int, end_us: int) -> dict[int, Decimal]:
        params: dict[str, Any] = {"start": _dt(start_us), "end": _dt(end_us), "v": policy.scope_value}
        if policy.scope_type == "tag":
            params["k"], _, params["v"] = policy.scope_value.partition("=")
        sql = (f"SELECT toUnixTimestamp(toStartOfHour(occurred_at)) AS h, sum(cost_usd) AS c "
               f"FROM {self._db}.usage_ledger FINAL "
               f"WHERE occurred_at >= {{start:DateTime64(6)}} AND occurred_at < {{end:DateTime64(6)}} "
               f"AND {self._SCOPE_SQL[policy.scope_type]} GROUP BY h")
        rows = self._client.query(sql, parameters=params).result_rows
        return {int(h) * _US: Decimal(c) for h, c in rows}

    def window_history(self, since_us: int, until_us: int,
                       window_s: int) -> list[tuple[str, str, str, int, Decimal]]:
        params = {"since": _dt(since_us), "until": _dt(until_us), "w": window_s}
        out: list[tuple[str, str, str, int, Decimal]] = []
        for kind, column in (("agent", "agent_id"), ("team", "team")):
            sql = (f"SELECT {column}, any(team), "
                   f"toUnixTimestamp(toStartOfInterval(occurred_at, toIntervalSecond({{w:UInt32}}))) AS ws, "
                   f"sum(cost_usd) FROM {self._db}.usage_ledger FINAL "
                   f"WHERE occurred_at >= {{since:DateTime64(6)}} AND occurred_at < {{until:DateTime64(6)}} "
                   f"GROUP BY {column}, ws")
            for key, team, ws, cost in self._client.query(sql, parameters=params).result_rows:
                out.append((kind, str(key), str(team), int(ws) * _US, Decimal(cost)))
        return out


# --------------------------------------------------------------------------------------------------------------------
# Event conversion
# --------------------------------------------------------------------------------------------------------------------


#: The PricedUsageEvent fields detection reads, in the order :func:`build_spend_event_of` takes them: the detectors'
#: facts, then the dedupe's ``source`` and price drift's gate ``reported_cost``. Only these are decoded
#: (:meth:`AvroCodec.projection`); an event with a reported cost is decoded whole for the drift watcher, which reads
#: the prices and counts too.
SPEND_FIELDS = ("occurred_at", "agent_id", "team", "project", "model", "cost_usd", "input_tokens", "output_tokens",
                "task_id", "task_type", "tags", "event_id", "parent_task_id", "prompt_hash", "attempt", "status",
                "cache_read_tokens", "cost_input_usd", "cost_cache_read_usd", "cost_cache_write_usd",
                "pricing_status", "source", "reported_cost")
_SOURCE = SPEND_FIELDS.index("source")
_REPORTED = SPEND_FIELDS.index("reported_cost")
#: What the dedupe rebuild reads of each priced message.
_DEDUPE_FIELDS = ("source", "event_id", "occurred_at")


def build_spend_event_of(values: Sequence[Any]) -> SpendEvent:
    """:func:`build_spend_event` of the values of :data:`SPEND_FIELDS` (``occurred_at`` as int micros), as a
    ``projection(..., SPEND_FIELDS, timestamps="micros")`` of the codec decodes them."""
    (ts, agent_id, team, project, model, cost, input_tokens, output_tokens, task_id, task_type, tags, event_id,
     parent_task_id, prompt_hash, attempt, status, cache_read_tokens, cost_input, cost_cache_read, cost_cache_write,
     pricing_status, _source, _reported) = values
    return SpendEvent(
        ts, agent_id, team, project, model, cost, input_tokens, output_tokens, task_id, task_type, tags or {},
        event_id, parent_task_id, prompt_hash, attempt, status, cache_read_tokens,
        cost_input + cost_cache_read + cost_cache_write, pricing_status == "priced",
    )


def build_spend_event(record: Mapping[str, Any]) -> SpendEvent:
    """The facts of a decoded PricedUsageEvent the detectors read (one tuple per event, built once)."""
    occurred: datetime = record["occurred_at"]
    ts = (occurred - _EPOCH) // timedelta(microseconds=1)
    return SpendEvent(
        ts, record["agent_id"], record["team"], record["project"], record["model"], record["cost_usd"],
        record["input_tokens"], record["output_tokens"], record.get("task_id"), record.get("task_type"),
        record.get("tags") or {}, record["event_id"], record.get("parent_task_id"), record.get("prompt_hash"),
        record.get("attempt", 1), record.get("status", "ok"), record.get("cache_read_tokens", 0),
        record["cost_input_usd"] + record["cost_cache_read_usd"] + record["cost_cache_write_usd"],
        record.get("pricing_status", "priced") == "priced",
    )


# --------------------------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------------------------


class DetectionService(Step):
    """Run with :meth:`start` then :meth:`poll_once` in a loop (or :meth:`run`); :meth:`close` flushes and commits.
    A step of a :class:`~finops.kafka.loop.ConsumeLoop` over the priced topic.

    Blocks only inside Kafka calls (bounded by ``poll_timeout_s`` and flush). Not thread-safe: one thread drives it;
    :meth:`request_stop` may be called from any thread.

    Topics: in ``agent.usage.priced.v1`` (group ``finops-detection``) and ``finops.policies.v1`` (read whole at
    start, then followed: policy changes apply without restart); out ``finops.alerts.v1`` (Alert, key dedup_key),
    ``finops.waste.v1`` (Alert-schema records of kind ``waste`` whose ``details`` carry the ``waste_signals``
    columns, key signal_id; :func:`build_waste_record`) and ``finops.detection.state.v1`` (compacted JSON budget
    counters keyed by counter key). Anomalies run here too, on the same events, because root cause needs model /
    task type / project per agent, which the 1-minute SpendAggregate partials do not carry together.

    State: budget counters go to the compacted state topic, each with the highest input offset applied per
    partition and its fired thresholds. Chosen over rebuilding from ClickHouse at start because the dedupe offsets
    and the fired set must move with the amount, and the ledger lags the stream, so a rebuild from it could fire a
    threshold twice or miss one. ClickHouse is still the truth for amounts: counters are reconciled against the
    ledger at start and every ``reconcile_interval_s`` in both directions (:meth:`BudgetEngine.reconcile`), lowered
    only once the ledger sink's committed offsets are past everything the counter counted. Anomaly baselines
    (seeded from the ledger) and waste-detector state are rebuilt, not persisted.

    Dedupe by event id, as the ledger does: the same priced event can arrive twice at different offsets (a hot-path
    replay, a producer re-send), which the offset check cannot see. Every event passes a deduper per priced
    partition (``stream_jobs/dedupe.py``, keyed ``(source, event_id)``) before any detector; a duplicate is counted
    in ``stats["duplicates"]`` and skipped. On assignment the deduper is rebuilt from the partition (see
    :meth:`_rebuild_dedupe`); what is older passes and reconciliation corrects it.

    Event time: the clock is the low watermark of the active partitions (the least of each partition's latest event
    time, ignoring partitions silent for ``idle_partition_s`` of wall time; a partition assigned but not heard from
    yet holds the clock for that long), so a partition that is behind never lets a window close early. Wall time
    paces only flush and reconcile.
    """

    def __init__(
        self,
        client_config: Mapping[str, Any],
        topics: TopicNames,
        config: DetectionConfig | None = None,
        *,
        ledger: LedgerReader | None = None,
        wall_clock: Callable[[], float] = time.monotonic,
        epoch_clock: Callable[[], float] = time.time,
        drift_tiers: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        self.config = config or DetectionConfig()
        self.topics = topics
        self._client_config = dict(client_config)
        self._ledger = ledger
        self._wall = wall_clock
        self._epoch = epoch_clock
        self._dedupers: dict[int, Deduper] = {}
        self._sink_offsets_reader: Any = None
        self._sink_offsets: dict[int, int] | None = None
        self._codec = AvroCodec()
        self._facts = self._codec.projection("PricedUsageEvent", SPEND_FIELDS, timestamps="micros")
        self.budgets = BudgetEngine()
        self.anomalies = AnomalyDetector(self.config.anomaly)
        self.waste = WasteDetectors(self.config.waste)
        # Price drift (stream_jobs/drift.py): reported costs that consistently disagree with the catalogue.
        # drift_tiers gives a tiered model's thresholds (Pricer.price_tiers), so its drift is solved per tier.
        self.drift = DriftWatcher(tiers_for=drift_tiers)
        # The flush barrier runs every flush_interval_s (poll asks for it even without new input: counters change
        # when the clock advances); the policy's age bound is the same interval.
        self._loop = ConsumeLoop(None, [topics.priced], self,
                                 policy=FlushPolicy(1 << 62, self.config.flush_interval_s),
                                 consume_batch=self.config.batch_size, poll_timeout_s=self.config.poll_timeout_s,
                                 clock=wall_clock, name="detection")
        self._policy_consumer: Any = None
        self._producer: Any = None
        self._failures: list[str] = []
        self._partition_ts: dict[int, int] = {}
        self._partition_seen_wall: dict[int, float] = {}
        self._assigned_wall: dict[int, float] = {}
        self._watermark_us: int | None = None
        self._last_flush = 0.0
        self._last_reconcile = 0.0
        self._last_advance_us = 0
        self._started = False
        self.stats = {"events": 0, "alerts": 0, "waste_records": 0, "bad_records": 0, "policies": 0,
                      "duplicates": 0, "dedupe_rebuilt": 0, "reconciled_up": 0, "reconciled_down": 0}

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create own topics, restore counters from the state topic, load the policies (whole topic), seed the
        anomaly baselines from the ledger, subscribe to the priced topic. Raises DetectionError."""
        # Every worker creates what is missing.
        ensure_topics(dict(self._client_config), prefix=self.topics.prefix, connect_timeout=ROLE_BROKER_WAIT_S)
        self._restore_state()
        self._producer = build_producer(self._client_config, Role.DETECTION)
        self._policy_consumer = build_consumer(self._client_config, Role.READER, f"{self.config.group_id}-policies",
                                               overrides={"auto.offset.reset": "earliest"})
        self._load_policies()
        self._seed_anomalies()
        self._consumer = build_consumer(self._client_config, Role.DETECTION, self.config.group_id,
                                        overrides={"auto.offset.reset": self.config.start_from})
        self._loop.start()
        self._last_flush = self._last_reconcile = self._wall()
        self._started = True
        self._reconcile_all()
        log.info("detection started: %d policies, %d counters restored", len(self.budgets.policies),
                 len(self.budgets.counters))

    @property
    def _consumer(self) -> Any:
        """The priced-topic consumer (the loop drives it)."""
        return self._loop.consumer

    @_consumer.setter
    def _consumer(self, consumer: Any) -> None:
        self._loop.consumer = consumer

    def request_stop(self) -> None:
        self._loop.request_stop()

    def run(self) -> None:
        """Poll until :meth:`request_stop`; then close (flush and commit)."""
        try:
            self._loop.run()
        finally:
            self.close()

    def close(self) -> None:
        """Flush outputs and state, commit, and close the clients (idempotent)."""
        if not self._started:
            return
        self._started = False
        try:
            self._flush(commit=True)
        finally:
            try:
                self._loop.close()  # the revoke flushes and commits again, then the partitions' state goes
            finally:
                for client in (self._policy_consumer, self._sink_offsets_reader):
                    if client is not None:
                        client.close()
                self._policy_consumer = self._sink_offsets_reader = None

    # -- the loop -----------------------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """One batch: policy updates, priced events, clock advance; flush/commit and reconcile when due.
        Returns the number of priced messages read."""
        return self._loop.poll_once()

    def poll(self) -> bool:
        """Between batches: policy updates; asks for the flush barrier every ``flush_interval_s``."""
        self._poll_policies(0.0)
        return self._wall() - self._last_flush >= self.config.flush_interval_s

    def submit(self, messages: Sequence[Any]) -> None:
        """Priced events through the dedupe and the detectors, then the clock advance and reconcile when due."""
        now_wall = self._wall()
        count = 0
        trackers = self._loop.trackers
        topic = self.topics.priced
        facts = self._facts.decode
        for msg in messages:
            if msg.error() is not None:
                code = msg.error().code()
                if getattr(msg.error(), "fatal", lambda: False)():
                    raise DetectionError(f"consumer error: {msg.error()}")
                log.warning("consumer error (code %s): %s", code, msg.error())
                continue
            partition, offset = msg.partition(), msg.offset()
            tracker = trackers.get((topic, partition))
            if tracker is not None:  # else fetched before a revoke: processed, never committed here
                tracker.on_consumed(offset)
            try:
                value = msg.value()
                values = facts(value)
                event = build_spend_event_of(values)
                # Drift reads prices and counts of reported calls only (the rest return at once): those alone whole.
                record = None if values[_REPORTED] is None else self._codec.decode(value)[1]
            except (FinopsError, KeyError, TypeError, AttributeError) as err:
                # The hot path validated these; a bad one here is counted and skipped (it reached the ledger
                # through the sink's own DLQ handling, not ours to route).
                self.stats["bad_records"] += 1
                log.warning("undecodable priced record at %s/%s: %s", partition, offset, err)
                continue
            ts = event.occurred_at_us
            if ts > self._partition_ts.get(partition, -1):
                self._partition_ts[partition] = ts
            self._partition_seen_wall[partition] = now_wall
            if self._deduper(partition).seen_or_add(values[_SOURCE], event.event_id, ts):
                self.stats["duplicates"] += 1  # counted once already (the ledger drops it by id too)
                continue
            count += 1
            alerts = self.budgets.apply(event, partition, offset, self._watermark_us or ts)
            if alerts:  # mostly none: the emit calls are skipped, the order of what is emitted is kept
                self._emit_alerts(alerts)
            signals, alerts = self.waste.process(event)
            if signals:
                self._emit_waste(signals)
            if alerts:
                self._emit_alerts(alerts)
            if record is not None:
                self._emit_alerts(self.drift.observe(record))
            if event.cost_usd:
                self.anomalies.observe(ts, event.cost_usd, event.agent_id, event.team, event.project, event.model,
                                       event.task_type)
        self.stats["events"] += count
        if messages:
            now_epoch_us = int(self._epoch() * _US)
            for deduper in self._dedupers.values():
                deduper.expire(now_epoch_us)
        self._advance_clock(now_wall)
        self._producer.poll(0)
        if self._ledger is not None and now_wall - self._last_reconcile >= self.config.reconcile_interval_s:
            self._reconcile_all()
            self._last_reconcile = now_wall

    def _advance_clock(self, now_wall: float) -> None:
        if not self._partition_ts:
            return
        idle = self.config.idle_partition_s
        active: list[int] = []
        for partition, assigned_at in self._assigned_wall.items():
            seen = self._partition_seen_wall.get(partition)
            if seen is None:
                if now_wall - assigned_at < idle:
                    return  # assigned but not heard from yet: its backlog may be older, hold the clock
                continue  # quiet since assignment: nothing to wait for
            if now_wall - seen < idle:
                active.append(self._partition_ts[partition])
        low = min(active) if active else max(self._partition_ts.values())
        if self._watermark_us is not None and low <= self._watermark_us:
            return
        self._watermark_us = low
        if low - self._last_advance_us < _US:
            return
        self._last_advance_us = low
        self._emit_alerts(self.budgets.advance(low))
        for anomaly in self.anomalies.advance(low):
            self._emit_alerts([build_anomaly_alert(anomaly)])
        signals, alerts = self.waste.advance(low)
        self._emit_waste(signals)
        self._emit_alerts(alerts)

    # -- outputs ------------------------------------------------------------------------------------------------

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()} key {msg.key()!r}: {err}")

    def _produce(self, topic: str, key: str, value: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, on_delivery=self._report)
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain, then retry

    def _emit_alerts(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            self._produce(self.topics.alerts, alert["dedup_key"], self._codec.encode(alert, "Alert"))
            self.stats["alerts"] += 1

    def _emit_waste(self, signals: list[WasteSignal]) -> None:
        for signal in signals:
            record = build_waste_record(signal)
            self._produce(waste_topic(self.topics), signal.signal_id, self._codec.encode(record, "Alert"))
            self.stats["waste_records"] += 1

    def _flush(self, *, commit: bool) -> None:
        """The flush barrier (:meth:`join`), then, with ``commit``, the loop commits what was consumed."""
        if commit:
            self._loop.flush()
        else:
            self.join(None)

    def join(self, flush: FlushContext | None) -> bool:
        """Persist changed counters, wait for every acknowledgement; the loop commits input offsets only after.

        Every ``flush_interval_s``: (1) alerts and waste records produced while processing, (2) changed counters
        written to the state topic, (3) ``producer.flush()`` waits for every acknowledgement, (4) only then the input
        offsets are committed. A crash replays from the last commit; restored counters skip offsets they applied.
        Returns False (commit nothing) without a producer; raises DetectionError when an output failed."""
        self._last_flush = self._wall()
        if self._producer is None:
            return False
        for key, state in self.budgets.take_dirty():
            value = None if state is None else json.dumps(state, sort_keys=True).encode()
            self._produce(state_topic(self.topics), key, value)
        if self._watermark_us is not None:
            self._produce(state_topic(self.topics), _META_KEY,
                          json.dumps({"watermark_us": self._watermark_us}).encode())
        remaining = self._producer.flush(30.0)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DetectionError(f"{remaining} output(s) unacknowledged, failures: {'; '.join(failures[:5])}; "
                                 "not committing: restart replays from the last commit")
        return True

    def _deduper(self, partition: int) -> Deduper:
        deduper = self._dedupers.get(partition)
        if deduper is None:
            deduper = self._dedupers[partition] = Deduper(window_us=self.config.dedupe_window_us,
                                                          max_entries=self.config.dedupe_max_entries)
        return deduper

    def assign(self, assignments: Sequence[Assignment]) -> None:
        """Hold the clock for the new partitions and rebuild their dedupe from what was applied before the commit."""
        now = self._wall()
        for a in assignments:
            self._assigned_wall[a.partition] = now
        if not all(a.known for a in assignments):
            # Without the commit there is nothing to rebuild from.
            log.warning("dedupe not rebuilt for %s (committed offsets unreadable): re-sent events older than this "
                        "start pass once; reconciliation corrects them", [a.partition for a in assignments])
            return
        for a in assignments:
            self._dedupers.pop(a.partition, None)
            if a.committed:
                self.stats["dedupe_rebuilt"] += self._rebuild_dedupe(a.partition, a.committed)

    def _rebuild_dedupe(self, partition: int, end: int) -> int:
        """Remember the event ids of the priced messages of ``partition`` produced up to ``dedupe_rebuild_s``
        before the one at ``end - 1`` (at most ``dedupe_max_entries``), i.e. what this group applied last before
        the restart. Returns how many were read; blocks on the broker (bounded by its timeouts)."""
        topic = self.topics.priced
        reader = build_consumer(self._client_config, Role.READER, f"{self.config.group_id}-dedupe-rebuild")
        deduper = self._deduper(partition)
        keys = self._codec.projection("PricedUsageEvent", _DEDUPE_FIELDS, timestamps="micros")
        read = 0
        try:
            low, _ = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            reader.assign([TopicPartition(topic, partition, end - 1)])
            last = [m for m in reader.consume(1, timeout=10) if m.error() is None]
            if not last:
                return 0
            since_ms = max(0, last[0].timestamp()[1] - int(self.config.dedupe_rebuild_s * 1000))
            found = reader.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=30)
            start = found[0].offset if found and found[0].offset >= 0 else end - 1
            start = max(start, low, end - self.config.dedupe_max_entries)
            reader.assign([TopicPartition(topic, partition, start)])
            position, deadline = start, time.monotonic() + 120
            while position < end and time.monotonic() < deadline:
                for msg in reader.consume(1000, timeout=1.0):
                    offset, value = msg.offset(), msg.value()
                    if msg.error() is not None or offset is None or value is None:
                        continue
                    position = offset + 1
                    if offset >= end:
                        continue  # not applied yet: it is replayed, and remembered then
                    try:
                        source, event_id, occurred = keys.decode(value)
                        deduper.seen_or_add(source, event_id, occurred)
                        read += 1
                    except (FinopsError, KeyError, TypeError, AttributeError):
                        continue  # it was counted as a bad record when it was applied
        finally:
            reader.close()
        log.info("dedupe of %s/%d rebuilt from %d messages before offset %d", topic, partition, read, end)
        return read

    def revoke(self, partitions: Sequence[TopicPartitionKey], *, lost: bool) -> None:
        """Drop the partitions' dedupe and clock state (on a revoke the loop flushed and committed first); counters
        stay: their offsets guard a later replay."""
        for _topic, partition in partitions:
            self._dedupers.pop(partition, None)
            self._partition_ts.pop(partition, None)
            self._assigned_wall.pop(partition, None)
            self._partition_seen_wall.pop(partition, None)

    # -- state, policies, ledger --------------------------------------------------------------------------------

    def _read_compacted(self, topic: str) -> dict[str, bytes | None]:
        try:
            return read_compacted_topic(self._client_config, topic, timeout=60.0)
        except FinopsError as err:
            raise DetectionError(f"cannot restore from {topic}: {err}") from err

    def _restore_state(self) -> None:
        for key, value in self._read_compacted(state_topic(self.topics)).items():
            if value is None:
                continue
            state = json.loads(value)
            if key == _META_KEY:
                self._watermark_us = int(state["watermark_us"])
            elif key.startswith("budget:"):
                self.budgets.restore(key, state)

    def _apply_policy_record(self, key: str, value: bytes | None) -> None:
        now = self._watermark_us or int(time.time() * _US)
        try:
            policy = decode_policy(self._codec, value)
        except FinopsError as err:
            # `finops policy apply` never publishes an invalid policy; a bad record (another writer, old code) is
            # refused and the running version of that policy stays.
            self.stats["bad_records"] += 1
            log.error("refused policy record %r: %s; keeping the running version", key, err)
            return
        self.stats["policies"] += 1
        if policy is None:
            self._emit_alerts(self.budgets.remove_policy(key, now))
            return
        new = policy.policy_id not in self.budgets.policies
        self._emit_alerts(self.budgets.set_policy(policy, now))
        if new and self._started:
            self._reconcile_policy(policy)

    def _load_policies(self) -> None:
        for key, value in self._read_compacted(self.topics.policies).items():
            self._apply_policy_record(key, value)
        meta = self._policy_consumer.list_topics(self.topics.policies, timeout=30)
        parts = list(meta.topics[self.topics.policies].partitions)
        ends = []
        for p in parts:
            _, high = self._policy_consumer.get_watermark_offsets(TopicPartition(self.topics.policies, p), timeout=30)
            ends.append(TopicPartition(self.topics.policies, p, high))
        self._policy_consumer.assign(ends)  # follow from here: the history was just applied

    def _poll_policies(self, timeout: float) -> None:
        for msg in self._policy_consumer.consume(100, timeout=timeout):
            if msg.error() is not None:
                log.warning("policy topic error: %s", msg.error())
                continue
            self._apply_policy_record((msg.key() or b"").decode(), msg.value())

    def _seed_anomalies(self) -> None:
        if self._ledger is None:
            return
        until = self._watermark_us or int(time.time() * _US)
        since = until - self.config.seed_hours * 3600 * _US
        try:
            rows = self._ledger.window_history(since, until, self.config.anomaly.window_s)
        except Exception as err:  # noqa: BLE001 - the ledger being down must not stop budgets; learn online
            log.warning("anomaly baselines not seeded from ClickHouse (%s); learning online", err)
            return
        series: dict[tuple[str, str], list[tuple[int, Decimal]]] = {}
        teams: dict[tuple[str, str], str] = {}
        for kind, key, team, start, cost in rows:
            series.setdefault((kind, key), []).append((start, cost))
            teams[(kind, key)] = team
        for (kind, key), windows in series.items():
            self.anomalies.seed(kind, key, windows, until, team=teams[(kind, key)])
        log.info("anomaly baselines seeded for %d entities", len(series))

    def _reconcile_policy(self, policy: BudgetPolicy) -> None:
        if self._ledger is None or not policy.enabled:
            return
        now = self._watermark_us or int(time.time() * _US)
        key, counter = self.budgets.counter_for(policy, now)
        settled = now - self.config.settle_s * _US
        try:
            hours = self._ledger.budget_hours(policy, counter.period.start_us, settled)
        except Exception as err:  # noqa: BLE001 - reconciliation is best effort; counting goes on
            log.warning("reconciliation of %s skipped: %s", policy.policy_id, err)
            return
        result = self.budgets.reconcile(key, hours, settled, now, lower=self._ledger_holds(counter.offsets))
        if result.added:
            self.stats["reconciled_up"] += 1
            log.info("reconciled %s: +%s from the ledger (events this counter never saw)", key, result.added)
        if result.removed:
            self.stats["reconciled_down"] += 1
            log.warning("reconciled %s: -%s to the ledger (counted but not in the ledger: re-sent events)", key,
                        result.removed)
        if result.short:
            log.info("reconcile %s: the ledger is %s below the counter but behind it; not lowered yet", key,
                     result.short)
        self._emit_alerts(result.alerts)

    def _reconcile_all(self) -> None:
        self._sink_offsets = self._ledger_sink_offsets()
        for policy in list(self.budgets.policies.values()):
            self._reconcile_policy(policy)

    def _ledger_sink_offsets(self) -> dict[int, int] | None:
        """The ledger sink group's committed offset per priced partition, None when unknown."""
        group = self.config.ledger_sink_group
        if group is None or self._ledger is None:
            return None
        try:
            if self._sink_offsets_reader is None:
                # Reads the group's commits only: never subscribes, so it never joins (or disturbs) that group.
                self._sink_offsets_reader = build_consumer(self._client_config, Role.READER, group)
            reader = self._sink_offsets_reader
            topic = self.topics.priced
            parts = reader.list_topics(topic, timeout=10).topics[topic].partitions
            committed = reader.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            reader.poll(0)  # serves its queued librdkafka log lines; it is never assigned, so no message comes
        except Exception as err:  # noqa: BLE001 - unknown means "do not lower", nothing worse
            log.warning("ledger sink offsets unknown (%s): counters are not lowered this time", err)
            return None
        return {tp.partition: tp.offset for tp in committed}

    def _ledger_holds(self, counted: Mapping[int, int]) -> bool:
        """True when the ledger sink has committed past every offset in ``counted`` (partition -> highest offset
        a counter applied): the ledger then holds everything that counter counted."""
        sink = self._sink_offsets
        if sink is None or not counted:
            return False
        return all(sink.get(partition, -1) > offset for partition, offset in counted.items())


# --------------------------------------------------------------------------------------------------------------------
# Faust wiring
# --------------------------------------------------------------------------------------------------------------------


def build_detection_config(settings: FinopsSettings) -> DetectionConfig:
    """Detection settings from the global settings (defaults where the settings have no knob yet)."""
    return DetectionConfig(group_id="finops-detection")


def build_drift_tiers(settings: FinopsSettings) -> Callable[[Mapping[str, Any]], Any] | None:
    """The tier thresholds for price-drift solving: ``Pricer.price_tiers`` of the Pricer the settings describe (price
    book and active catalogue, as at start). None (and a warning) when it cannot be built: drift is then solved as
    one flat price set per model, and a tiered model shows a residual instead of its tier rates."""
    try:
        return build_pricer(settings.stream, settings.core.data_dir).price_tiers
    except FinopsError as err:
        log.warning("no tier thresholds for price drift (%s): tiered models are solved as flat price sets", err)
        return None


def build_ledger_reader(settings: FinopsSettings) -> LedgerReader | None:
    """A read-only ledger reader: the ClickHouse server, or the store endpoint in embedded mode. None (and a
    warning) when ClickHouse cannot be reached: detection runs without reconciliation rather than not at all."""
    try:
        client, where = open_client(settings.clickhouse_url(), settings.clickhouse.database,
                                    settings.clickhouse.query_url, readonly=True, data_dir=settings.data_dir,
                                    owner_wait=ROLE_STORE_WAIT_S)
    except FinopsError as err:
        log.warning("ClickHouse not reachable (%s): no reconciliation or baseline seeding", err)
        return None
    log.info("detection reads the ledger at %s", where)
    return ClickHouseLedgerReader(client, settings.clickhouse.database)


def register_detection(app: Any, settings: FinopsSettings) -> None:
    """Run the detection service inside a Faust worker: a ``mode.Service`` started and stopped with the app that
    drives :class:`DetectionService` on its own thread (the consumer loop blocks; the event loop must not)."""
    topics = TopicNames(settings.kafka.topic_prefix)
    client_config = settings.kafka.client_config()

    class DetectionFaustService(mode.Service):
        """Starts the batch consumer thread on worker start; requests stop and joins it on worker stop."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._service: DetectionService | None = None
            self._thread: threading.Thread | None = None

        async def on_start(self) -> None:
            service = DetectionService(client_config, topics, build_detection_config(settings),
                                       ledger=build_ledger_reader(settings), drift_tiers=build_drift_tiers(settings))
            self._service = service

            def target() -> None:
                try:
                    service.start()
                    service.run()
                except Exception:  # noqa: BLE001 - logged; the worker's supervisor restarts the process
                    log.exception("detection service stopped with an error")

            self._thread = threading.Thread(target=target, name="finops-detection", daemon=True)
            self._thread.start()

        async def on_stop(self) -> None:
            if self._service is not None:
                self._service.request_stop()
            if self._thread is not None:
                self._thread.join(timeout=60)

    app.service(DetectionFaustService)
