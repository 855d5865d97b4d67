"""The one consume loop: poll, assignment, revocation, pause-resume back-pressure, the flush barrier and commits.

Every consuming role (the hot path, the sinks, detection, the alert worker) is a :class:`Step` plugged into a
:class:`ConsumeLoop`, the shape of arroyo's ``StreamProcessor`` and ``ProcessingStrategy``: the loop owns the
consumer and the per-partition :class:`~finops.kafka.offsets.CommitTracker`; the step owns the processing and says,
through the trackers, what is durable. The guarantee (DESIGN §5): an offset is committed only after the step's flush
barrier (:meth:`Step.join`) returned and only as far as the partition's tracker allows, so a crash anywhere replays
what was not durable. Latency: a batch is flushed at most ``max_batch_wait_s`` (default
``DEFAULT_MAX_BATCH_WAIT_S``) after the consume call that returned its oldest message began, or earlier when
``max_batch_size`` messages are held.
"""

from __future__ import annotations

import gc
import logging
import threading
from abc import ABC, abstractmethod
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from finops.kafka.offsets import CommitTracker
from schemas.errors import FinopsError

__all__ = [
    "DEFAULT_MAX_BATCH_WAIT_S",
    "Assignment",
    "ConsumeLoop",
    "ConsumeLoopError",
    "FlushContext",
    "FlushPolicy",
    "Step",
    "TopicPartitionKey",
    "classify_message_error",
    "tune_gc",
]

log = logging.getLogger(__name__)

#: How long the oldest message of a batch may wait for its flush, unless a role sets its own.
DEFAULT_MAX_BATCH_WAIT_S: Final = 0.25

#: ``(topic, partition)``: how the loop names a partition.
TopicPartitionKey = tuple[str, int]


class ConsumeLoopError(FinopsError):
    """The consume loop cannot go on (the group's committed offsets cannot be read ...). Restart the role: it
    replays from the last commit."""


def tune_gc() -> None:
    """Process-wide garbage-collector settings for a long-running consuming role (the hot path, the sinks); call
    from its entry point once start-up is done, before the loop runs.

    Such a role allocates short-lived tuples and dicts per message (freed by reference counting; cycles are rare)
    while holding a large long-lived heap (modules, schemas, clients, price caches, window cells). A full collection
    walks that whole heap with the GIL held, a pause of every thread of the process (in a sink, every write waits
    it out). ``gc.freeze()`` moves everything alive at start-up out of the collector's sight, and a larger
    young-generation threshold makes collections rarer: less CPU per message and no long pauses. Memory held by a
    rare cycle until the next collection stays small.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def classify_message_error(err: Any) -> Literal["eof", "retriable", "fatal"]:
    """How a consumer error message is to be treated: ``eof`` (end of partition, not an error), ``retriable``
    (librdkafka retries it: log and go on) or ``fatal`` (stop the role). Pure."""
    if err.code() == KafkaError._PARTITION_EOF:
        return "eof"
    if err.fatal():
        return "fatal"
    return "retriable" if err.retriable() else "fatal"


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When the loop runs the flush barrier: once ``max_batch_size`` messages were submitted since the last flush,
    or once the oldest of them has waited ``max_batch_wait_s`` (0: after every non-empty batch)."""

    max_batch_size: int = 10_000
    max_batch_wait_s: float = DEFAULT_MAX_BATCH_WAIT_S

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_wait_s < 0:
            raise FinopsError("a flush policy needs max_batch_size >= 1 and max_batch_wait_s >= 0")

    def due(self, held: int, oldest: float | None, now: float) -> bool:
        """Whether ``held`` messages, the oldest received at ``oldest``, must be flushed at ``now``."""
        return held >= self.max_batch_size or (oldest is not None and now - oldest >= self.max_batch_wait_s)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A partition handed to this consumer, with the group's committed position and the tracker for it.

    ``committed`` is the next offset to read (``None``: the group has no commit); ``known`` is False when the
    committed offsets could not be read from the broker (then ``committed`` and ``metadata`` are ``None``)."""

    topic: str
    partition: int
    committed: int | None
    metadata: str | None
    known: bool
    tracker: CommitTracker


class FlushContext:
    """What :meth:`Step.join` may use while it blocks: stop and revoke signals, and a wait that keeps the consumer
    in its group (it polls the consumer, so rebalance callbacks run; messages it receives are kept for the next
    batch)."""

    def __init__(self, loop: ConsumeLoop) -> None:
        self._loop = loop

    @property
    def stopping(self) -> bool:
        """Whether the loop was asked to stop."""
        return self._loop.stopping

    def take_revoked(self) -> set[TopicPartitionKey]:
        """The partitions revoked (or lost) since the flush began or since the last call; clears them."""
        revoked, self._loop._revoked_in_flush = self._loop._revoked_in_flush, set()
        return revoked

    def should_abort(self) -> bool:
        """True when the step should give up what it is waiting for: stop requested or partitions revoked."""
        return self._loop.stopping or bool(self._loop._revoked_in_flush)

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds``, polling the consumer in short slices; returns early when :meth:`should_abort`."""
        loop = self._loop
        deadline = loop.clock() + seconds
        if loop.step.pause_while_flushing and not loop._paused:
            loop._paused = True
            if loop.trackers:
                loop.consumer.pause(loop._owned())
        while not self.should_abort():
            remaining = deadline - loop.clock()
            if remaining <= 0:
                return
            msg = loop.consumer.poll(min(remaining, 0.1))
            if msg is not None:
                # Fetched just before the pause: its position has advanced, so it must not be dropped.
                loop._carried.append(msg)


class Step(ABC):
    """One consuming role, driven by a :class:`ConsumeLoop` on one thread. Lifecycle (arroyo's names):

    - :meth:`assign` / :meth:`revoke`: partitions arrive with their committed position and tracker, and leave. On a
      revoke the loop first runs the flush barrier and commits (when :attr:`flush_on_revoke`), then calls
      :meth:`revoke`; on a loss it calls :meth:`revoke` with ``lost=True`` and commits nothing (another member may
      own them already). Either way the step must drop the partitions' uncommitted state: their new owner replays
      from the committed offset.
    - :meth:`poll`: at the start of each loop iteration, between batches: periodic work (a catalogue reload, a
      timer); returns True to ask for a flush barrier after this iteration's batch.
    - :meth:`submit`: called once per loop iteration with the consumed batch (possibly empty). Each message's
      offset goes to its partition's tracker (``on_consumed``) and each not-yet-durable output is registered
      (``on_output_pending``). Per-message work lives here; keep it tight.
    - :meth:`join`: the flush barrier: block until every output of what was submitted is durable (produced and
      acknowledged, inserted ...) or failed, and tell the trackers. Return False to commit nothing this time.

    The role that owns the step ends it with :meth:`ConsumeLoop.flush` and :meth:`ConsumeLoop.close`, then
    releases its own clients.

    Guarantee the loop gives: commits happen only after a ``join`` that returned True, only for owned partitions,
    and only as far as :meth:`commit_point` (by default the tracker's ``committable()``) allows.
    """

    #: Back-pressure for a flush that has to wait (a write retrying through an outage): from the join's first
    #: :meth:`FlushContext.wait` until it returns, the whole assignment is paused, so the polls that keep the
    #: consumer in its group fetch nothing. A join that does not wait is not paused: a paused partition loses
    #: librdkafka's prefetched messages and is fetched again on resume, a broker round trip per batch, while the
    #: join's own blocking already stops consumption (the prefetch queue is bounded by ``queued.max.messages.kbytes``).
    pause_while_flushing: ClassVar[bool] = False
    #: Run the flush barrier and commit before revoked partitions are dropped (False: drop them uncommitted).
    flush_on_revoke: ClassVar[bool] = True

    def new_tracker(self, topic: str, partition: int, committed: int | None) -> CommitTracker:
        """The tracker for a newly assigned partition."""
        return CommitTracker(partition, committed)

    def assign(self, assignments: Sequence[Assignment]) -> None:  # noqa: B027 - optional hook
        """Partitions were assigned (incrementally: added to what is owned)."""

    def revoke(self, partitions: Sequence[TopicPartitionKey], *, lost: bool) -> None:  # noqa: B027 - optional hook
        """Partitions were revoked or lost: drop their uncommitted state."""

    @abstractmethod
    def submit(self, messages: Sequence[Any]) -> None:
        """Process one consumed batch (possibly empty)."""

    def poll(self) -> bool:
        """Periodic work between batches; True asks the loop for a flush barrier after the next batch."""
        return False

    @abstractmethod
    def join(self, flush: FlushContext) -> bool:
        """The flush barrier (see the class docstring); True: the trackers are up to date, commit."""

    def commit_point(self, tp: TopicPartitionKey, tracker: CommitTracker) -> tuple[int, str | None] | None:
        """The offset (and offset metadata) to commit for ``tp`` now, or ``None``."""
        offset = tracker.committable()
        return None if offset is None else (offset, None)

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:  # noqa: B027 - optional hook
        """Called after a successful commit of ``offsets``."""


class ConsumeLoop:
    """Drives one consumer and one :class:`Step`: poll the step, consume, submit, and the flush barrier followed by
    a commit when the :class:`FlushPolicy` says so (or the step asks). See :class:`Step` for the guarantee.

    The consumer is created by the caller (manual commits: ``enable.auto.commit`` false) and not yet subscribed.
    Threading: every method except :meth:`request_stop` runs on the thread that calls :meth:`poll_once`.
    """

    def __init__(
        self,
        consumer: Any,
        topics: Sequence[str],
        step: Step,
        *,
        policy: FlushPolicy | None = None,
        consume_batch: int = 1000,
        poll_timeout_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        committed_timeout_s: float = 30.0,
        name: str = "consumer",
    ) -> None:
        self.consumer = consumer
        self.topics = list(topics)
        self.step = step
        self.policy = policy or FlushPolicy()
        self.consume_batch = consume_batch
        self.poll_timeout_s = poll_timeout_s
        self.clock = clock
        self.committed_timeout_s = committed_timeout_s
        self.name = name
        #: The owned partitions and their trackers.
        self.trackers: dict[TopicPartitionKey, CommitTracker] = {}
        #: Successful commit calls so far.
        self.commits = 0
        self._held = 0
        self._oldest: float | None = None
        self._flushing = False
        self._paused = False
        self._revoked_in_flush: set[TopicPartitionKey] = set()
        self._carried: list[Any] = []
        self._stop = threading.Event()
        self._started = False
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe (partitions come through the rebalance callbacks). Idempotent."""
        if self._started:
            return
        self._started = True
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (any thread, signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, max_batches: int | None = None, until: Callable[[], bool] | None = None) -> None:
        """Start, then :meth:`poll_once` until :meth:`request_stop`, ``max_batches`` or ``until()``. Blocks; the
        caller flushes and closes afterwards (:meth:`flush`, :meth:`close`)."""
        self.start()
        batches = 0
        while not self._stop.is_set():
            if max_batches is not None and batches >= max_batches:
                return
            if until is not None and until():
                return
            self.poll_once()
            batches += 1

    def poll_once(self) -> int:
        """One iteration: poll the step, consume (waiting at most until the held batch is due), submit, flush and
        commit if due. Returns the number of messages submitted."""
        policy = self.policy
        wants_flush = self.step.poll()
        started = self.clock()
        timeout = self.poll_timeout_s
        if self._oldest is not None:
            timeout = max(0.0, min(timeout, self._oldest + policy.max_batch_wait_s - started))
        room = max(1, min(self.consume_batch, policy.max_batch_size - self._held))
        messages: list[Any] = self.consumer.consume(room, timeout)
        if self._carried:
            messages = self._carried + messages
            self._carried = []
        if messages:
            if self._oldest is None:
                self._oldest = started
            self._held += len(messages)
        self.step.submit(messages)
        if wants_flush or (self._held and policy.due(self._held, self._oldest, self.clock())):
            self.flush()
        return len(messages)

    def flush(self) -> bool:
        """The flush barrier: :meth:`Step.join` (the assignment paused from its first wait, if the step asks), then
        commit what the trackers allow. Returns whether the step's join allowed the commit. Blocks as long as the
        join does."""
        if self._flushing:
            return False  # a revoke during the join: the join in progress decides
        step = self.step
        self._flushing = True
        self._revoked_in_flush = set()
        try:
            ok = step.join(FlushContext(self))
        finally:
            self._flushing = False
            if self._paused:
                self._paused = False
                if self.trackers:
                    self.consumer.resume(self._owned())
        self._held = len(self._carried)
        self._oldest = self.clock() if self._carried else None
        if ok:
            self.commit()
        return ok

    def commit(self, partitions: Iterable[TopicPartitionKey] | None = None) -> dict[TopicPartitionKey, int]:
        """Commit (synchronously) for the owned ``partitions`` (default all) the offsets the step's
        :meth:`Step.commit_point` gives. A failed commit (KafkaException) is logged and retried at the next flush:
        the previous commit stays valid. Returns what was committed. Call after a flush barrier."""
        offsets: list[TopicPartition] = []
        points: list[tuple[TopicPartitionKey, CommitTracker, int]] = []
        step = self.step
        for tp in list(self.trackers) if partitions is None else partitions:
            tracker = self.trackers.get(tp)
            if tracker is None:
                continue
            point = step.commit_point(tp, tracker)
            if point is None:
                continue
            offset, metadata = point
            if metadata is None:
                offsets.append(TopicPartition(tp[0], tp[1], offset))
            else:
                offsets.append(TopicPartition(tp[0], tp[1], offset, metadata=metadata))
            points.append((tp, tracker, offset))
        if not offsets:
            return {}
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            log.warning("%s: commit failed (%s); the next flush retries, the previous commit stays valid",
                        self.name, err)
            return {}
        for _, tracker, offset in points:
            tracker.mark_committed(offset)
        self.commits += 1
        done = {tp: offset for tp, _, offset in points}
        step.committed(done)
        return done

    def seek(self, tp: TopicPartitionKey, offset: int) -> None:
        """Move the consumer back to ``offset`` of an owned partition (an abandoned batch) with a fresh tracker."""
        tracker = self.trackers.get(tp)
        if tracker is None:
            return
        self.consumer.seek(TopicPartition(tp[0], tp[1], offset))
        self.trackers[tp] = self.step.new_tracker(tp[0], tp[1], tracker.committed)
        self._carried = [m for m in self._carried if (m.topic(), m.partition()) != tp]  # they are read again

    def close(self) -> None:
        """Close the consumer, which revokes the assignment (flush and commit per :attr:`Step.flush_on_revoke`).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.consumer.close()
        finally:
            self.trackers.clear()

    def terminate(self) -> None:
        """After an error: drop the assignment without a flush or commit and close the consumer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        gone = list(self.trackers)
        self.trackers.clear()
        try:
            self.step.revoke(gone, lost=True)
        finally:
            self.consumer.close()

    def _owned(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in sorted(self.trackers)]

    # ---- rebalance callbacks (run inside consume / poll / close) ------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if not partitions:
            return
        known = True
        try:
            committed = consumer.committed(partitions, timeout=self.committed_timeout_s)
        except KafkaException as err:
            log.warning("%s: committed offsets of %s not readable: %s", self.name,
                        sorted(tp.partition for tp in partitions), err)
            committed, known = partitions, False
        assignments: list[Assignment] = []
        for tp in committed:
            offset = tp.offset if known and tp.offset is not None and tp.offset >= 0 else None
            metadata = getattr(tp, "metadata", None) if known else None
            tracker = self.step.new_tracker(tp.topic, tp.partition, offset)
            self.trackers[(tp.topic, tp.partition)] = tracker
            assignments.append(Assignment(tp.topic, tp.partition, offset, metadata, known, tracker))
        if self._paused:
            consumer.pause(partitions)  # keep the back-pressure on partitions assigned during a waiting flush
        self.step.assign(assignments)
        log.info("%s: assigned %s", self.name, sorted((a.topic, a.partition) for a in assignments))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self.trackers]
        if not gone:
            return
        if self._flushing:
            self._revoked_in_flush |= set(gone)
        elif self.step.flush_on_revoke:
            self.flush()  # commit what is safe for the partitions we lose, so their new owner replays little
        self._drop(gone, lost=False)
        log.info("%s: revoked %s", self.name, sorted(gone))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self.trackers]
        if self._flushing:
            self._revoked_in_flush |= set(gone)
        self._drop(gone, lost=True)
        log.warning("%s: lost %s without commit", self.name, sorted(gone))

    def _drop(self, gone: list[TopicPartitionKey], *, lost: bool) -> None:
        self.step.revoke(gone, lost=lost)
        for tp in gone:
            self.trackers.pop(tp, None)
        dropped = set(gone)
        self._carried = [m for m in self._carried if (m.topic(), m.partition()) not in dropped]
