"""The consume loop's pure logic against a fake consumer and an injected clock: assignment, revocation and loss,
the flush policy (size, and age of the oldest message), pause-resume during a flush, and commits that go no further
than the trackers allow. The four roles on a real broker: tests/integration, tests/faults, tests/e2e."""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from finops.kafka.loop import (
    Assignment,
    ConsumeLoop,
    FlushContext,
    FlushPolicy,
    Step,
    TopicPartitionKey,
    classify_message_error,
    tune_gc,
)
from finops.kafka.offsets import CommitTracker

pytestmark = pytest.mark.unit

TOPIC = "t.in"


class Msg:
    def __init__(self, partition: int, offset: int, topic: str = TOPIC) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class FakeConsumer:
    """Hands out queued batches; keeps commits, pauses and the consume timeouts it was asked for."""

    def __init__(self, committed: Mapping[int, int] | None = None) -> None:
        self.batches: list[list[Msg]] = []
        self.polled: list[Msg | None] = []
        self.group_committed = dict(committed or {})
        self.callbacks: dict[str, Any] = {}
        self.commits: list[dict[int, tuple[int, str | None]]] = []
        self.paused: set[int] = set()
        self.pause_log: list[tuple[str, list[int]]] = []
        self.timeouts: list[float] = []
        self.asked: list[int] = []
        self.fail_commit = False
        self.on_poll: Any = None
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def assign_now(self, *partitions: int) -> None:
        self.callbacks["assign"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def revoke_now(self, *partitions: int, lost: bool = False) -> None:
        self.callbacks["lost" if lost else "revoke"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            if tp.partition in self.group_committed:
                out.append(TopicPartition(tp.topic, tp.partition, self.group_committed[tp.partition],
                                          metadata=f"meta-{tp.partition}"))
            else:
                out.append(TopicPartition(tp.topic, tp.partition, -1001))
        return out

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        self.timeouts.append(timeout)
        self.asked.append(num_messages)
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout: float) -> Msg | None:
        if self.on_poll is not None:
            self.on_poll()
        return self.polled.pop(0) if self.polled else None

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        if self.fail_commit:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.commits.append({tp.partition: (tp.offset, tp.metadata) for tp in offsets})

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}
        self.pause_log.append(("pause", sorted(tp.partition for tp in partitions)))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}
        self.pause_log.append(("resume", sorted(tp.partition for tp in partitions)))

    def close(self) -> None:
        self.closed = True
        self.revoke_now(*sorted(p for _, p in loop_of(self).trackers))


_LOOPS: dict[int, ConsumeLoop] = {}


def loop_of(consumer: FakeConsumer) -> ConsumeLoop:
    return _LOOPS[id(consumer)]


class RecordingStep(Step):
    """Each message is one output, durable only when ``join`` says so (``durable``); records every call."""

    def __init__(self) -> None:
        self.loop: ConsumeLoop | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.pending: list[tuple[CommitTracker, int]] = []
        self.durable = True
        self.join_allows_commit = True
        self.during_join: Any = None
        self.wants_flush = False

    def assign(self, assignments: Sequence[Assignment]) -> None:
        self.calls.append(("assign", [(a.partition, a.committed, a.metadata, a.known) for a in assignments]))

    def revoke(self, partitions: Sequence[TopicPartitionKey], *, lost: bool) -> None:
        self.calls.append(("revoke", sorted(p for _, p in partitions), lost))

    def submit(self, messages: Sequence[Any]) -> None:
        assert self.loop is not None
        for msg in messages:
            tracker = self.loop.trackers.get((msg.topic(), msg.partition()))
            if tracker is None:
                continue
            tracker.on_consumed(msg.offset())
            tracker.on_output_pending(msg.offset())
            self.pending.append((tracker, msg.offset()))
        if messages:
            self.calls.append(("submit", [(m.partition(), m.offset()) for m in messages]))

    def poll(self) -> bool:
        return self.wants_flush

    def join(self, flush: FlushContext) -> bool:
        self.calls.append(("join",))
        if self.during_join is not None:
            self.during_join(flush)
        if self.durable:
            for tracker, offset in self.pending:
                tracker.on_output_acked(offset)
            self.pending = []
        return self.join_allows_commit

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.calls.append(("committed", dict(offsets)))


class PausingStep(RecordingStep):
    pause_while_flushing = True
    flush_on_revoke = False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def build(step: RecordingStep | None = None, *, size: int = 100, wait: float = 0.25,
          committed: Mapping[int, int] | None = None) -> tuple[ConsumeLoop, FakeConsumer, RecordingStep, Clock]:
    consumer = FakeConsumer(committed)
    step = step or RecordingStep()
    clock = Clock()
    loop = ConsumeLoop(consumer, [TOPIC], step, policy=FlushPolicy(size, wait), consume_batch=50, poll_timeout_s=0.2,
                       clock=clock)
    step.loop = loop
    _LOOPS[id(consumer)] = loop
    loop.start()
    return loop, consumer, step, clock


# ---- assignment, revocation, loss --------------------------------------------------------------------------------
def test_assign_builds_a_tracker_per_partition_from_the_group_commit() -> None:
    loop, consumer, step, _ = build(committed={1: 40})
    consumer.assign_now(0, 1)
    assert step.calls == [("assign", [(0, None, None, True), (1, 40, "meta-1", True)])]
    assert set(loop.trackers) == {(TOPIC, 0), (TOPIC, 1)}
    assert loop.trackers[(TOPIC, 1)].committed == 40 and loop.trackers[(TOPIC, 0)].committed is None


def test_revoke_flushes_and_commits_before_the_step_drops_the_partitions() -> None:
    loop, consumer, step, _ = build()
    consumer.assign_now(0, 1)
    consumer.batches = [[Msg(0, 0), Msg(0, 1), Msg(1, 0)]]
    loop.poll_once()
    consumer.revoke_now(0)
    names = [c[0] for c in step.calls]
    assert names == ["assign", "submit", "join", "committed", "revoke"]
    assert consumer.commits == [{0: (2, None), 1: (1, None)}]
    assert step.calls[-1] == ("revoke", [0], False)
    assert set(loop.trackers) == {(TOPIC, 1)}


def test_lost_partitions_are_dropped_without_a_flush_or_a_commit() -> None:
    loop, consumer, step, _ = build()
    consumer.assign_now(0, 1)
    consumer.batches = [[Msg(0, 0), Msg(1, 0)]]
    loop.poll_once()
    consumer.revoke_now(0, 1, lost=True)
    assert ("join",) not in step.calls and consumer.commits == []
    assert step.calls[-1] == ("revoke", [0, 1], True)
    assert loop.trackers == {}


def test_a_step_that_does_not_flush_on_revoke_drops_uncommitted() -> None:
    loop, consumer, step, _ = build(PausingStep())
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    consumer.revoke_now(0)
    assert ("join",) not in step.calls and consumer.commits == []
    assert step.calls[-1] == ("revoke", [0], False)


def test_a_message_of_a_revoked_partition_is_not_tracked() -> None:
    loop, consumer, step, _ = build(size=1)
    consumer.assign_now(0)
    consumer.batches = [[Msg(1, 7)]]  # fetched before a revoke of partition 1
    loop.poll_once()
    assert consumer.commits == []


# ---- the flush policy ----------------------------------------------------------------------------------------------
def test_flush_when_the_oldest_message_has_waited_max_batch_wait() -> None:
    loop, consumer, step, clock = build(wait=0.25)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()  # the consume began at 100.0: the batch is due at 100.25
    assert ("join",) not in step.calls
    clock.now = 100.1
    consumer.batches = [[Msg(0, 1)]]
    loop.poll_once()
    assert consumer.timeouts[-1] == pytest.approx(0.15)  # the consume waits no longer than the oldest may
    assert ("join",) not in step.calls  # a newer message does not restart the wait
    clock.now = 100.25
    loop.poll_once()
    assert step.calls.count(("join",)) == 1
    assert consumer.commits == [{0: (2, None)}]
    assert consumer.timeouts[-1] == 0.0
    clock.now = 100.3
    loop.poll_once()  # nothing held: a full consume timeout, no flush
    assert consumer.timeouts[-1] == 0.2 and step.calls.count(("join",)) == 1


def test_flush_when_the_batch_is_big_and_consume_asks_only_for_the_room() -> None:
    loop, consumer, step, _ = build(size=3, wait=60)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0), Msg(0, 1)]]
    loop.poll_once()
    assert ("join",) not in step.calls
    consumer.batches = [[Msg(0, 2)]]
    loop.poll_once()
    assert consumer.asked == [3, 1]
    assert ("join",) in step.calls and consumer.commits == [{0: (3, None)}]


def test_zero_wait_flushes_after_every_non_empty_batch() -> None:
    loop, consumer, step, _ = build(wait=0)
    consumer.assign_now(0)
    loop.poll_once()
    assert ("join",) not in step.calls
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert consumer.commits == [{0: (1, None)}]


def test_the_step_can_ask_for_a_flush() -> None:
    loop, consumer, step, _ = build(wait=60)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    step.wants_flush = True
    loop.poll_once()
    assert consumer.commits == [{0: (1, None)}]


# ---- commits follow the trackers -----------------------------------------------------------------------------------
def test_commit_goes_no_further_than_the_oldest_output_not_durable() -> None:
    loop, consumer, step, _ = build(wait=0, committed={0: 0})
    consumer.assign_now(0)
    step.durable = False
    consumer.batches = [[Msg(0, 0), Msg(0, 1)]]
    loop.poll_once()
    assert consumer.commits == []  # offset 0's output is pending: nothing may be committed
    tracker, offset = step.pending.pop(0)
    tracker.on_output_acked(offset)
    loop.flush()
    assert consumer.commits == [{0: (1, None)}]  # offset 1's output is still pending
    step.durable = True
    loop.flush()
    assert consumer.commits[-1] == {0: (2, None)}
    loop.flush()
    assert len(consumer.commits) == 2  # nothing new: no commit call


def test_a_join_that_refuses_commits_nothing() -> None:
    loop, consumer, step, _ = build(wait=0)
    consumer.assign_now(0)
    step.join_allows_commit = False
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert consumer.commits == [] and loop.trackers[(TOPIC, 0)].committed is None


def test_a_failed_commit_leaves_the_tracker_uncommitted_and_the_next_flush_retries() -> None:
    loop, consumer, step, _ = build(wait=0)
    consumer.assign_now(0)
    consumer.fail_commit = True
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert loop.trackers[(TOPIC, 0)].committed is None and loop.commits == 0
    consumer.fail_commit = False
    loop.flush()
    assert consumer.commits == [{0: (1, None)}] and loop.trackers[(TOPIC, 0)].committed == 1


def test_commit_point_may_add_metadata_and_hold_the_offset() -> None:
    class Holding(RecordingStep):
        def commit_point(self, tp: TopicPartitionKey, tracker: CommitTracker) -> tuple[int, str | None] | None:
            offset = tracker.committable(1)  # something of the step's own still needs offset 1
            return None if offset is None else (offset, "horizon=5")

    loop, consumer, step, _ = build(Holding(), wait=0)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0), Msg(0, 1), Msg(0, 2)]]
    loop.poll_once()
    assert consumer.commits == [{0: (1, "horizon=5")}]


# ---- pause / resume during a flush -------------------------------------------------------------------------------
def test_the_assignment_is_paused_from_a_pausing_steps_first_wait_until_its_flush_ends() -> None:
    loop, consumer, step, _ = build(PausingStep(), wait=0)
    consumer.assign_now(0, 1)
    seen: list[set[int]] = []

    def join(flush: FlushContext) -> None:
        seen.append(set(consumer.paused))
        flush.wait(0)  # a retry wait
        seen.append(set(consumer.paused))
        flush.wait(0)
        seen.append(set(consumer.paused))

    step.during_join = join
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert seen == [set(), {0, 1}, {0, 1}] and consumer.paused == set()
    assert consumer.pause_log == [("pause", [0, 1]), ("resume", [0, 1])]


def test_a_pausing_step_whose_flush_does_not_wait_keeps_its_prefetch() -> None:
    # Pausing discards librdkafka's prefetched messages: a write that succeeds at once must not pay a re-fetch.
    loop, consumer, step, _ = build(PausingStep(), wait=0)
    consumer.assign_now(0, 1)
    consumer.batches = [[Msg(0, 0)], [Msg(0, 1)]]
    loop.poll_once()
    loop.poll_once()
    assert consumer.pause_log == []
    assert consumer.commits[-1] == {0: (2, None)}


def test_a_step_that_does_not_pause_is_never_paused() -> None:
    loop, consumer, step, _ = build(wait=0)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert consumer.pause_log == []


def test_wait_during_a_flush_keeps_polling_and_a_partition_assigned_meanwhile_is_paused_too() -> None:
    loop, consumer, step, clock = build(PausingStep(), wait=0)
    consumer.assign_now(0)

    def assign_then_tick() -> None:
        if (TOPIC, 1) not in loop.trackers:
            consumer.assign_now(1)
        clock.now += 0.1

    consumer.on_poll = assign_then_tick
    consumer.polled = [Msg(0, 1)]  # fetched just before the pause
    step.during_join = lambda flush: flush.wait(0.5)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert ("pause", [1]) in consumer.pause_log and consumer.paused == set()
    assert consumer.commits == [{0: (1, None)}]
    # The message polled during the wait is submitted with the next batch, not lost.
    consumer.on_poll = step.during_join = None
    loop.poll_once()
    assert step.calls[-3] == ("submit", [(0, 1)])


def test_a_revoke_during_a_flush_aborts_the_wait_and_is_reported_to_the_join() -> None:
    loop, consumer, step, clock = build(PausingStep(), wait=0)
    consumer.assign_now(0, 1)
    consumer.on_poll = lambda: consumer.revoke_now(1)
    report: list[Any] = []

    def join(flush: FlushContext) -> None:
        flush.wait(30)  # returns early: the revoke aborts it
        report.append((flush.should_abort(), flush.take_revoked(), flush.should_abort()))

    step.during_join = join
    consumer.batches = [[Msg(0, 0), Msg(1, 0)]]
    loop.poll_once()
    assert report == [(True, {(TOPIC, 1)}, False)]
    assert consumer.commits == [{0: (1, None)}]  # only what is still owned
    assert ("resume", [0]) in consumer.pause_log


def test_stop_aborts_a_waiting_flush() -> None:
    loop, consumer, step, _ = build(PausingStep(), wait=0)
    consumer.assign_now(0)
    loop.request_stop()
    waited: list[bool] = []
    step.during_join = lambda flush: (flush.wait(30), waited.append(flush.stopping))
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    assert waited == [True]


# ---- ends ----------------------------------------------------------------------------------------------------------
def test_close_revokes_through_the_step_and_terminate_commits_nothing() -> None:
    loop, consumer, step, _ = build(wait=60)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    loop.close()
    assert consumer.closed and consumer.commits == [{0: (1, None)}] and loop.trackers == {}

    loop, consumer, step, _ = build(wait=60)
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 0)]]
    loop.poll_once()
    loop.terminate()
    assert consumer.closed and consumer.commits == [] and step.calls[-1] == ("revoke", [0], True)


def test_run_stops_on_request_after_max_batches_or_until() -> None:
    loop, consumer, _, _ = build()
    loop.run(max_batches=3)
    assert len(consumer.timeouts) == 3
    loop.run(until=lambda: len(consumer.timeouts) >= 5)
    assert len(consumer.timeouts) == 5
    loop.request_stop()
    loop.run()
    assert len(consumer.timeouts) == 5


def test_a_seek_back_gives_the_partition_a_fresh_tracker() -> None:
    loop, consumer, _, _ = build(wait=0, committed={0: 3})
    seeks: list[Any] = []
    consumer.seek = lambda tp: seeks.append((tp.partition, tp.offset))  # type: ignore[attr-defined]
    consumer.assign_now(0)
    consumer.batches = [[Msg(0, 3), Msg(0, 4)]]
    loop.poll_once()
    loop.seek((TOPIC, 0), 4)
    assert seeks == [(0, 4)]
    tracker = loop.trackers[(TOPIC, 0)]
    tracker.on_consumed(4)  # offsets going back are fine on the new tracker
    assert tracker.committed == 5


def test_the_flush_policy_rejects_nonsense() -> None:
    with pytest.raises(Exception, match="max_batch_size"):
        FlushPolicy(0, 1.0)
    assert FlushPolicy(10, 0.25).due(10, None, 0.0)
    assert not FlushPolicy(10, 0.25).due(1, 5.0, 5.2)
    assert FlushPolicy(10, 0.25).due(1, 5.0, 5.25)


def test_message_errors_are_classified_as_librdkafka_reports_them() -> None:
    assert classify_message_error(KafkaError(KafkaError._PARTITION_EOF)) == "eof"
    assert classify_message_error(KafkaError(KafkaError._TRANSPORT, retriable=True)) == "retriable"
    assert classify_message_error(KafkaError(KafkaError._FATAL, fatal=True)) == "fatal"
    assert classify_message_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)) == "fatal"


def test_tune_gc_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    alive = [[i] for i in range(1000)]  # start-up state the collector must stop scanning
    try:
        tune_gc()
        assert gc.get_freeze_count() >= frozen + len(alive)
        assert gc.get_threshold() == (20_000, 50, 100)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
