"""The sink step: consume one topic on the one consume loop (finops/kafka/loop.py), batch by size or by the age
of the oldest message (``DEFAULT_MAX_BATCH_WAIT_S`` by default), write through the batch writer, then commit.

Role: one :class:`SinkWorker` per table and consumer group ``finops-sink-<kind>`` (``ledger``, ``spend``,
``alerts``, ``waste``, ``budgets``), auto-commit off. While a write waits to retry, the worker pauses its assignment
and keeps polling: a ClickHouse outage neither grows memory nor evicts the consumer from its group.

Guarantee (DESIGN §5): per batch, write then commit (:mod:`sinks.writer`: at-least-once delivery, effectively-once
rows); after a revoke this worker never writes a row of a partition it no longer owns. Latency: a message waits at
most ``max_batch_seconds`` after the consume call that returned it began, then the write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finops.kafka.loop import (
    DEFAULT_MAX_BATCH_WAIT_S,
    Assignment,
    ConsumeLoop,
    FlushContext,
    FlushPolicy,
    Step,
    TopicPartitionKey,
    classify_message_error,
)
from finops.kafka.offsets import CommitTracker
from schemas.errors import FinopsError
from sinks.writer import BatchAbandonedError, ClickHouseBatchWriter, MessageBatch, SinkMessage, WriteReport

__all__ = ["SinkStats", "SinkWorker", "SinkWorkerError"]

log = logging.getLogger(__name__)


class SinkWorkerError(FinopsError):
    """The consumer hit an error it cannot continue from (fatal librdkafka error, unknown topic ...)."""


@dataclass(slots=True)
class SinkStats:
    """Running totals of a worker (read by tests, the CLI's exit log and the benchmark)."""

    consumed: int = 0
    batches: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    abandoned: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class SinkWorker(Step):
    """Consumes ``topic`` with ``consumer`` and writes batches through ``writer``: a step of a
    :class:`~finops.kafka.loop.ConsumeLoop`.

    The consumer is created by the caller (so tests can wrap it) and must not be subscribed yet; the worker
    subscribes in :meth:`run` and closes it in :meth:`close`. Groups and topics: ``ledger`` over
    ``agent.usage.priced.v1``, ``spend`` over ``finops.spend.1m.v1``, ``alerts`` over ``finops.alerts.v1``, ``waste``
    over ``finops.waste.v1``, ``budgets`` over the compacted ``finops.policies.v1``.

    Guarantee: a batch's offsets are committed only after the writer returned (rows and dead letters durable), and
    only for partitions still owned.

    Backpressure: a write that has to wait for a retry pauses the whole assignment (``pause_while_flushing``) until
    it ends; librdkafka then stops fetching, so a ClickHouse outage does not grow the process's memory, and between
    retries the loop keeps calling ``poll`` so the consumer stays in its group (no ``max.poll.interval.ms``
    eviction) and rebalance callbacks still run. A write that succeeds at once is not paused: pausing would discard
    the prefetched messages (a re-fetch per batch); the prefetch queue is bounded by ``queued.max.messages.kbytes``.

    Rebalance: on revoke (or loss) the worker DROPS the uncommitted messages of the revoked partitions instead of
    flushing them (``flush_on_revoke`` False). Flushing inside the callback would hold the whole group's rebalance
    hostage to ClickHouse (during an outage, indefinitely); dropping costs the new owner at most one batch of
    re-reading, and the re-read is harmless: the ledger drops ids it already stores and the dedup token drops a
    repeated insert. A revoke during a write waiting to retry abandons that write for the revoked partitions (the
    rest is written as a new, smaller insert with its own token).
    """

    pause_while_flushing = True
    flush_on_revoke = False

    def __init__(
        self,
        consumer: Any,
        writer: ClickHouseBatchWriter,
        topic: str,
        *,
        max_batch_rows: int = 10_000,
        max_batch_seconds: float = DEFAULT_MAX_BATCH_WAIT_S,
        poll_timeout: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_batch_seconds <= 0:
            raise FinopsError("max_batch_rows must be >= 1 and max_batch_seconds > 0")
        self._writer = writer
        self._topic = topic
        self._clock = clock
        self.name = name or f"sink-{writer.spec.table}"
        self.stats = SinkStats()
        self._batch = MessageBatch()
        # The tracker registration of each partition of the batch in hand: one pending output at its first offset,
        # acknowledged when the batch is written, so nothing consumed after it (fetched during a write) is committed.
        self._held: dict[TopicPartitionKey, tuple[CommitTracker, int]] = {}
        self._loop = ConsumeLoop(consumer, [topic], self, policy=FlushPolicy(max_batch_rows, max_batch_seconds),
                                 consume_batch=1000, poll_timeout_s=poll_timeout, clock=clock, name=self.name)
        self._closed = False

    # ------------------------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread- and signal-safe). A write waiting to retry is abandoned uncommitted."""
        self._loop.request_stop()

    @property
    def stopping(self) -> bool:
        return self._loop.stopping

    def run(self) -> None:
        """Consume until :meth:`stop`; on the way out flush the batch in hand once (unless the write is failing:
        then it is left uncommitted for the next run). Blocks. Raises :class:`SinkHaltError` from the writer and
        :class:`SinkWorkerError` for fatal consumer errors; commits offsets after every successful write."""
        log.info("%s: consuming %s", self.name, self._topic)
        self._loop.run()
        if len(self._batch):
            self._loop.flush()

    def close(self) -> None:
        """Leave the group and close the consumer (idempotent). Uncommitted messages are re-read by the next owner."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.close()
        except Exception as err:  # noqa: BLE001 - closing must not mask the error that ended the run
            log.warning("%s: closing the consumer failed: %s", self.name, err)

    # ------------------------------------------------------------------------------------------- the step

    def submit(self, messages: Sequence[Any]) -> None:
        if not messages:
            return
        now = self._clock()
        trackers = self._loop.trackers
        held = self._held
        batch = self._batch
        append = batch.messages.append
        added = 0
        try:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if classify_message_error(err) == "fatal":
                        raise SinkWorkerError(f"{self.name}: fatal consumer error: {err.str()}")
                    log.warning("%s: consumer error (librdkafka retries it): %s", self.name, err.str())
                    continue
                topic, partition = tp = (msg.topic(), msg.partition())
                tracker = trackers.get(tp)
                if tracker is None:
                    continue  # fetched before a revoke: its new owner reads it
                offset = msg.offset()
                tracker.on_consumed(offset)
                if tp not in held:
                    tracker.on_output_pending(offset)
                    held[tp] = (tracker, offset)
                headers = msg.headers()
                ts_type, ts_ms = msg.timestamp()
                append(SinkMessage(topic, partition, offset, msg.key(), msg.value(), tuple(headers) if headers else (),
                                   ts_ms if ts_type != 0 else None))  # timestamp type 0: TIMESTAMP_NOT_AVAILABLE
                added += 1
        finally:
            if added:
                if batch.started_at is None:
                    batch.started_at = now
                self.stats.consumed += added

    def join(self, flush: FlushContext) -> bool:
        """Write the batch in hand (a retry wait pauses the assignment), then tell the trackers. On abandonment
        (stop during a failing write) nothing is acknowledged, so nothing is committed."""
        batch, self._batch = self._batch, MessageBatch()
        held, self._held = self._held, {}
        if not len(batch):
            return True
        report = self._write(batch, flush)
        if report is None:
            return False
        owned = self._loop.trackers
        for tp, (tracker, offset) in held.items():
            if owned.get(tp) is tracker:
                tracker.on_output_acked(offset)
        self._account(report)
        return True

    def revoke(self, partitions: Sequence[TopicPartitionKey], *, lost: bool) -> None:
        gone = set(partitions)
        for tp in gone:
            self._held.pop(tp, None)
        dropped = self._batch.drop_partitions(gone)
        log.info("%s: %s %s (dropped %d uncommitted message(s))", self.name, "lost" if lost else "revoked",
                 sorted(gone), dropped)

    def assign(self, assignments: Sequence[Assignment]) -> None:
        log.info("%s: assigned %s", self.name, sorted((a.topic, a.partition) for a in assignments))

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.stats.committed.update(offsets)

    # ------------------------------------------------------------------------------------------- writing

    def _write(self, batch: MessageBatch, flush: FlushContext) -> WriteReport | None:
        while True:
            try:
                return self._writer.write(batch, wait=flush.wait, should_abort=flush.should_abort)
            except BatchAbandonedError:
                revoked = flush.take_revoked()
                if flush.stopping:
                    # Shutting down during an outage: leave the batch uncommitted; the next run reads it again.
                    self.stats.abandoned += 1
                    log.warning("%s: stopping with %d unwritten message(s) uncommitted", self.name, len(batch))
                    self._seek_back(batch)
                    return None
                dropped = batch.drop_partitions(revoked)
                log.info("%s: revoked during a retry: dropped %d message(s) of %s", self.name, dropped, revoked)
                if not len(batch):
                    return None

    def _seek_back(self, batch: MessageBatch) -> None:
        # The consumer's position is past the abandoned messages; a stopping worker is about to close, and a
        # close without commit re-reads from the committed offset anyway. Seeking keeps a caller that calls
        # run() again on the same worker correct as well.
        for tp, (first, _) in batch.partition_ranges().items():
            try:
                self._loop.seek(tp, first)
            except Exception as err:  # noqa: BLE001 - best effort; the committed offset is the safety net
                log.debug("%s: seek back failed: %s", self.name, err)

    def _account(self, report: WriteReport) -> None:
        self.stats.batches += 1
        self.stats.inserted += report.inserted
        self.stats.duplicates += report.duplicates
        self.stats.dead_lettered += report.dead_lettered
        self.stats.retries += report.retries
        log.debug("%s: batch of %d: %d inserted, %d duplicates, %d dead-lettered, %d retries", self.name,
                  report.messages, report.inserted, report.duplicates, report.dead_lettered, report.retries)
