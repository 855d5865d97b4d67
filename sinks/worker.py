"""The sink run loop: consume one topic, batch by size or time, write through the batch writer, then commit.

Role: one :class:`SinkWorker` per table and consumer group ``finops-sink-<kind>`` (``ledger``, ``spend``,
``alerts``, ``waste``, ``budgets``), auto-commit off. While a batch is written the worker pauses its assignment and
keeps polling: a ClickHouse outage neither grows memory nor evicts the consumer from its group.

Guarantee (DESIGN §5): per batch, write then commit (:mod:`sinks.writer`: at-least-once delivery, effectively-once
rows); after a revoke this worker never writes a row of a partition it no longer owns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


class SinkWorker:
    """Consumes ``topic`` with ``consumer`` and writes batches through ``writer``.

    The consumer is created by the caller (so tests can wrap it) and must not be subscribed yet; the worker
    subscribes in :meth:`run` and closes it in :meth:`close`. Groups and topics: ``ledger`` over
    ``agent.usage.priced.v1``, ``spend`` over ``finops.spend.1m.v1``, ``alerts`` over ``finops.alerts.v1``, ``waste``
    over ``finops.waste.v1``, ``budgets`` over the compacted ``finops.policies.v1``.

    Backpressure: while a batch is being written the worker pauses its whole assignment. librdkafka then stops
    fetching (its prefetch queue is bounded by ``queued.max.messages.kbytes``), so a ClickHouse outage does not grow
    the process's memory; between retries the worker keeps calling ``poll`` so the consumer stays in its group (no
    ``max.poll.interval.ms`` eviction) and rebalance callbacks still run.

    Rebalance: on revoke (or loss) the worker DROPS the uncommitted messages of the revoked partitions instead of
    flushing them. Flushing inside the callback would hold the whole group's rebalance hostage to ClickHouse (during
    an outage, indefinitely); dropping costs the new owner at most one batch of re-reading, and the re-read is
    harmless: the ledger drops ids it already stores and the dedup token drops a repeated insert. A revoke during a
    write waiting to retry abandons that write for the revoked partitions (the rest is written as a new, smaller
    insert with its own token).
    """

    def __init__(
        self,
        consumer: Any,
        writer: ClickHouseBatchWriter,
        topic: str,
        *,
        max_batch_rows: int = 10_000,
        max_batch_seconds: float = 1.0,
        poll_timeout: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_batch_seconds <= 0:
            raise FinopsError("max_batch_rows must be >= 1 and max_batch_seconds > 0")
        self._consumer = consumer
        self._writer = writer
        self._topic = topic
        self._max_rows = max_batch_rows
        self._max_seconds = max_batch_seconds
        self._poll_timeout = poll_timeout
        self._clock = clock
        self.name = name or f"sink-{writer.spec.table}"
        self.stats = SinkStats()
        self._batch = MessageBatch()
        self._assignment: set[tuple[str, int]] = set()
        self._revoked_in_flush: set[tuple[str, int]] = set()
        self._flushing = False
        self._stop = threading.Event()
        self._closed = False

    # ------------------------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread- and signal-safe). A write waiting to retry is abandoned uncommitted."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until :meth:`stop`; on the way out flush the batch in hand once (unless the write is failing:
        then it is left uncommitted for the next run). Blocks. Raises :class:`SinkHaltError` from the writer and
        :class:`SinkWorkerError` for fatal consumer errors; commits offsets after every successful write."""
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("%s: consuming %s", self.name, self._topic)
        while not self._stop.is_set():
            room = self._max_rows - len(self._batch)
            messages = self._consumer.consume(num_messages=min(room, 1000), timeout=self._poll_timeout)
            self._add(messages)
            if self._batch_ready():
                self._flush()
        if len(self._batch):
            self._flush()

    def close(self) -> None:
        """Leave the group and close the consumer (idempotent). Uncommitted messages are re-read by the next owner."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except Exception as err:  # noqa: BLE001 - closing must not mask the error that ended the run
            log.warning("%s: closing the consumer failed: %s", self.name, err)

    # ------------------------------------------------------------------------------------------- batching

    def _add(self, messages: Sequence[Any]) -> None:
        now = self._clock()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise SinkWorkerError(f"{self.name}: fatal consumer error: {err.str()}")
                log.warning("%s: consumer error (librdkafka retries it): %s", self.name, err.str())
                continue
            tp = (msg.topic(), msg.partition())
            if tp not in self._assignment:
                continue  # fetched before a revoke: its new owner reads it
            headers = tuple(msg.headers() or ())
            ts_type, ts_ms = msg.timestamp()
            timestamp_ms = ts_ms if ts_type != 0 else None  # 0 = TIMESTAMP_NOT_AVAILABLE
            self._batch.add(SinkMessage(tp[0], tp[1], msg.offset(), msg.key(), msg.value(), headers, timestamp_ms),
                            now)
            self.stats.consumed += 1

    def _batch_ready(self) -> bool:
        n = len(self._batch)
        return n >= self._max_rows or (n > 0 and self._batch.age(self._clock()) >= self._max_seconds)

    def _flush(self) -> None:
        """Write the batch with the assignment paused, then commit. On abandonment nothing is committed."""
        batch, self._batch = self._batch, MessageBatch()
        paused = [self._tp(tp) for tp in sorted(self._assignment)]
        self._flushing = True
        self._revoked_in_flush = set()
        if paused:
            self._consumer.pause(paused)
        try:
            report = self._write(batch)
        finally:
            self._flushing = False
            still_owned = [self._tp(tp) for tp in sorted(self._assignment)]
            if still_owned:
                self._consumer.resume(still_owned)
        if report is not None:
            self._commit(batch)
            self._account(report)

    def _write(self, batch: MessageBatch) -> WriteReport | None:
        while True:
            try:
                return self._writer.write(batch, wait=self._wait, should_abort=self._should_abort)
            except BatchAbandonedError:
                revoked, self._revoked_in_flush = self._revoked_in_flush, set()
                if self._stop.is_set():
                    # Shutting down during an outage: leave the batch uncommitted; the next run reads it again.
                    self.stats.abandoned += 1
                    log.warning("%s: stopping with %d unwritten message(s) uncommitted", self.name, len(batch))
                    self._seek_back(batch)
                    return None
                dropped = batch.drop_partitions(revoked)
                log.info("%s: revoked during a retry: dropped %d message(s) of %s", self.name, dropped, revoked)
                if not len(batch):
                    return None

    def _should_abort(self) -> bool:
        return self._stop.is_set() or bool(self._revoked_in_flush)

    def _wait(self, seconds: float) -> None:
        """Wait between write attempts while staying in the group: poll the paused consumer in short slices (which
        also runs rebalance callbacks). Returns early on stop or revoke."""
        deadline = self._clock() + seconds
        while not self._should_abort():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            msg = self._consumer.poll(min(remaining, 0.1))
            if msg is not None:
                # librdkafka may hand out a message fetched just before the pause: keep it for the next batch
                # (its position has advanced, so dropping it would lose it until a restart).
                self._add([msg])

    def _seek_back(self, batch: MessageBatch) -> None:
        # The consumer's position is past the abandoned messages; a stopping worker is about to close, and a
        # close without commit re-reads from the committed offset anyway. Seeking keeps a caller that calls
        # run() again on the same worker correct as well.
        from confluent_kafka import TopicPartition

        for (topic, partition), (first, _) in batch.partition_ranges().items():
            if (topic, partition) in self._assignment:
                try:
                    self._consumer.seek(TopicPartition(topic, partition, first))
                except Exception as err:  # noqa: BLE001 - best effort; the committed offset is the safety net
                    log.debug("%s: seek back failed: %s", self.name, err)

    def _commit(self, batch: MessageBatch) -> None:
        """Commit the batch's offsets (synchronously) for the partitions this worker still owns.

        A failed commit is logged, not raised: the rows are already in ClickHouse and a re-read is deduplicated.
        """
        from confluent_kafka import KafkaException

        offsets = {tp: nxt for tp, nxt in batch.commit_offsets().items() if tp in self._assignment}
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=[self._tp(tp, nxt) for tp, nxt in sorted(offsets.items())],
                                  asynchronous=False)
        except KafkaException as err:
            log.warning("%s: commit failed (batch is stored; the next owner re-reads and dedupes it): %s",
                        self.name, err)
            return
        self.stats.committed.update(offsets)

    def _account(self, report: WriteReport) -> None:
        self.stats.batches += 1
        self.stats.inserted += report.inserted
        self.stats.duplicates += report.duplicates
        self.stats.dead_lettered += report.dead_lettered
        self.stats.retries += report.retries
        log.debug("%s: batch of %d: %d inserted, %d duplicates, %d dead-lettered, %d retries", self.name,
                  report.messages, report.inserted, report.duplicates, report.dead_lettered, report.retries)

    # ------------------------------------------------------------------------------------------- rebalance

    @staticmethod
    def _tp(tp: tuple[str, int], offset: int | None = None) -> Any:
        from confluent_kafka import TopicPartition

        return TopicPartition(tp[0], tp[1]) if offset is None else TopicPartition(tp[0], tp[1], offset)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        # Cooperative assignment: these partitions are added to what we already own.
        new = {(p.topic, p.partition) for p in partitions}
        self._assignment |= new
        if self._flushing and partitions:
            consumer.pause(partitions)  # keep backpressure on partitions assigned mid-write
        log.info("%s: assigned %s", self.name, sorted(new))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._assignment -= gone
        if self._flushing:
            self._revoked_in_flush |= gone
        dropped = self._batch.drop_partitions(gone)
        log.info("%s: revoked %s (dropped %d uncommitted message(s))", self.name, sorted(gone), dropped)
