"""WindowCommitTracker: the commit rule on hand-made sequences, and property tests with seeded random ack orders."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from stream_jobs.dedupe import Deduper
from stream_jobs.offsets import OffsetTrackingError, WindowCommitTracker
from stream_jobs.windows import MINUTE_US, ClosedWindow, WindowAggregator

pytestmark = pytest.mark.unit

S = 1_000_000
T0 = 1_700_000_040 * S  # a minute boundary


# ---- hand-made sequences ---------------------------------------------------------------------------------------
def test_nothing_consumed_nothing_to_commit() -> None:
    t = WindowCommitTracker(0)
    assert t.committable(None) is None


def test_commit_is_next_offset_to_read_after_all_acked() -> None:
    t = WindowCommitTracker(0)
    for o in (5, 6, 7):
        t.on_consumed(o)
        t.on_output_pending(o)
    assert t.committable(None) == 5  # nothing acked: everything from 5 must be replayed
    t.on_output_acked(6)
    assert t.committable(None) == 5  # acks out of order: 5 still outstanding
    t.on_output_acked(5)
    assert t.committable(None) == 7
    t.on_output_acked(7)
    assert t.committable(None) == 8
    t.mark_committed(8)
    assert t.committable(None) is None  # no progress since the last commit
    assert t.committed == 8


def test_several_outputs_per_input_all_must_be_acked() -> None:
    t = WindowCommitTracker(0)
    t.on_consumed(0)
    t.on_output_pending(0)  # priced event
    t.on_output_pending(0)  # e.g. a DLQ copy
    t.on_output_acked(0)
    assert t.committable(None) == 0
    t.on_output_acked(0)
    assert t.committable(None) == 1
    assert t.outstanding == 0


def test_inputs_without_outputs_do_not_block() -> None:
    t = WindowCommitTracker(0)
    for o in range(10):
        t.on_consumed(o)  # dropped duplicates: no output
    assert t.committable(None) == 10


def test_open_window_holds_the_commit() -> None:
    t = WindowCommitTracker(0)
    for o in range(10):
        t.on_consumed(o)
    assert t.committable(min_open_window_offset=3) == 3


def test_closed_window_pins_its_min_offset_until_acked() -> None:
    t = WindowCommitTracker(0)
    for o in range(20):
        t.on_consumed(o)
    t.on_window_pending(T0, T0 + MINUTE_US, 4)
    t.on_window_pending(T0, T0 + MINUTE_US, 2)  # another dimension key of the same window
    assert t.committable(None) == 2
    t.on_window_acked(T0)
    assert t.committable(None) == 2
    t.on_window_acked(T0)
    assert t.committable(None) == 20
    assert t.replay_horizon_us(T0 + MINUTE_US) == T0 + MINUTE_US


def test_acked_window_stays_pinned_while_an_older_one_is_not() -> None:
    t = WindowCommitTracker(0)
    for o in range(30):
        t.on_consumed(o)
    t.on_window_pending(T0, T0 + MINUTE_US, 10)  # older window, events from offset 10
    t.on_window_pending(T0 + MINUTE_US, T0 + 2 * MINUTE_US, 5)  # newer window, events from offset 5
    t.on_window_acked(T0 + MINUTE_US)
    # The newer one is acked, but replay must rebuild it whole: its events from 5 on are needed.
    assert t.committable(None) == 5
    assert t.replay_horizon_us(T0 + 2 * MINUTE_US) == T0  # the older window must be open after a restart
    t.on_window_acked(T0)
    assert t.committable(None) == 30
    assert t.replay_horizon_us(T0 + 2 * MINUTE_US) == T0 + 2 * MINUTE_US


def test_failure_stops_the_commit_for_good() -> None:
    t = WindowCommitTracker(0)
    for o in range(5):
        t.on_consumed(o)
        t.on_output_pending(o)
    t.on_output_failed(2)
    for o in range(5):
        t.on_output_acked(o)
    assert t.failed
    assert t.committable(None) == 2  # what came before the failure is safe
    t.on_window_pending(T0, T0 + MINUTE_US, 1)
    t.on_window_failed(T0)
    assert t.committable(None) == 1


def test_straggler_output_registered_below_the_tail() -> None:
    t = WindowCommitTracker(0)
    for o in range(10):
        t.on_consumed(o)
    t.on_output_pending(8)
    t.on_output_pending(3)  # produced later for an older input
    assert t.committable(None) == 3
    t.on_output_acked(3)
    assert t.committable(None) == 8
    t.on_output_acked(8)
    assert t.committable(None) == 10


def test_protocol_errors_are_reported() -> None:
    t = WindowCommitTracker(0, committed=10)
    t.on_consumed(10)
    with pytest.raises(OffsetTrackingError):
        t.on_consumed(9)
    with pytest.raises(OffsetTrackingError):
        t.on_output_acked(10)
    t.on_output_pending(11)
    with pytest.raises(OffsetTrackingError):
        t.on_output_pending(5)  # below the committed position
    with pytest.raises(OffsetTrackingError):
        t.on_window_pending(T0, T0 + MINUTE_US, 3)
    with pytest.raises(OffsetTrackingError):
        t.on_window_acked(T0)


# ---- a simulated hot path for property tests --------------------------------------------------------------------
@dataclass(frozen=True)
class Ev:
    offset: int
    event_id: str
    t_us: int
    agent: str
    team: str
    model: str
    cost: Decimal
    ok: bool
    attempt: int


def make_stream(rng: random.Random, n: int) -> list[Ev]:
    """Mostly increasing event times, some out of order (within and beyond the grace), some re-sent duplicates,
    offset gaps."""
    evs: list[Ev] = []
    offset = rng.randrange(0, 1000)
    clock = T0 + rng.randrange(0, MINUTE_US)
    for i in range(n):
        offset += 1 if rng.random() < 0.9 else rng.randrange(2, 5)
        if evs and rng.random() < 0.05:
            first = rng.choice(evs)  # a re-sent copy: same id, same event time
            evs.append(Ev(offset, first.event_id, first.t_us, first.agent, first.team, first.model, first.cost,
                          first.ok, first.attempt))
            continue
        clock += rng.randrange(0, 2 * S)
        t = clock - rng.randrange(0, 90 * S) if rng.random() < 0.15 else clock
        agent = f"a{rng.randrange(6)}"
        evs.append(
            Ev(offset, f"e{i}", t, agent, f"t{int(agent[1:]) % 2}", rng.choice(["m/x", "m/y"]),
               Decimal(rng.randrange(1, 10_000)) / 1000, rng.random() > 0.1, 1 if rng.random() > 0.1 else 2)
        )
    return evs


@dataclass
class Sink:
    """What reached the broker: last write wins per aggregate id (the spend table's ReplacingMergeTree)."""

    windows: dict[str, ClosedWindow] = field(default_factory=dict)
    ledger: set[str] = field(default_factory=set)


@dataclass
class Worker:
    partition: int
    dedupe: Deduper
    agg: WindowAggregator
    tracker: WindowCommitTracker
    inflight: list[tuple[str, int, object]] = field(default_factory=list)
    commits: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def start(cls, committed: tuple[int, int] | None) -> Worker:
        return cls(
            0,
            Deduper(),
            WindowAggregator(0, grace_us=10 * S, closed_before_us=None if committed is None else committed[1]),
            WindowCommitTracker(0, committed=None if committed is None else committed[0]),
        )

    def process(self, batch: list[Ev]) -> None:
        for ev in batch:
            self.tracker.on_consumed(ev.offset)
            if self.dedupe.seen_or_add("src", ev.event_id, ev.t_us):
                continue
            self.tracker.on_output_pending(ev.offset)
            self.inflight.append(("priced", ev.offset, ev.event_id))
            self.agg.add(ev.t_us, ev.agent, ev.team, "p", ev.model, ev.cost, 10, 5, 2, 0, 1, ev.ok, ev.attempt,
                         True, ev.offset)
        for cw in self.agg.poll_closed():
            self.tracker.on_window_pending(cw.window_start_us, cw.window_end_us, cw.min_offset)
            self.inflight.append(("window", cw.window_start_us, cw))

    def ack(self, rng: random.Random, sink: Sink, fraction: float) -> None:
        rng.shuffle(self.inflight)
        k = int(len(self.inflight) * fraction)
        done, self.inflight = self.inflight[:k], self.inflight[k:]
        for kind, ref, payload in done:
            if kind == "priced":
                sink.ledger.add(payload)  # type: ignore[arg-type]
                self.tracker.on_output_acked(ref)
            else:
                assert isinstance(payload, ClosedWindow)
                sink.windows[payload.aggregate_id] = payload
                self.tracker.on_window_acked(ref)

    def commit(self) -> int | None:
        position = self.tracker.committable(self.agg.min_open_offset())
        if position is None:
            return None
        horizon = self.tracker.replay_horizon_us(self.agg.polled_before_us)
        self.check_invariants(position)
        self.tracker.mark_committed(position)
        self.commits.append((position, horizon))
        return position

    def check_invariants(self, position: int) -> None:
        for kind, ref, payload in self.inflight:
            needed = ref if kind == "priced" else payload.min_offset  # type: ignore[attr-defined]
            assert position <= needed, f"commit {position} passes unacked {kind} at {needed}"
        open_min = self.agg.min_open_offset()
        assert open_min is None or position <= open_min, f"commit {position} passes open window at {open_min}"


def batches(rng: random.Random, evs: list[Ev]) -> list[list[Ev]]:
    out, i = [], 0
    while i < len(evs):
        k = rng.randrange(1, 40)
        out.append(evs[i : i + k])
        i += k
    return out


def sentinel(evs: list[Ev]) -> Ev:
    """An event far in the future: its watermark closes every window before it."""
    return Ev(evs[-1].offset + 1, "sentinel", max(e.t_us for e in evs) + 10 * MINUTE_US, "a0", "t0", "m/x",
              Decimal(0), True, 1)


def run_to_end(worker: Worker, evs: list[Ev], sink: Sink, rng: random.Random) -> None:
    for batch in batches(rng, evs):
        worker.process(batch)
        worker.ack(rng, sink, rng.random())
        worker.commit()
    worker.ack(rng, sink, 1.0)
    worker.commit()


@pytest.mark.parametrize("seed", range(60))
def test_commit_never_passes_an_unacked_output_or_an_open_window(seed: int) -> None:
    rng = random.Random(seed)
    evs = make_stream(rng, 400)
    worker = Worker.start(None)
    sink = Sink()
    failed_at: int | None = None
    for batch in batches(rng, evs):
        worker.process(batch)
        worker.ack(rng, sink, rng.random())
        if failed_at is None and worker.inflight and rng.random() < 0.02:
            kind, ref, payload = worker.inflight[0]
            if kind == "priced":
                failed_at = ref
                worker.tracker.on_output_failed(ref)
            else:
                failed_at = payload.min_offset  # type: ignore[attr-defined]
                worker.tracker.on_window_failed(ref)
        position = worker.commit()  # check_invariants runs inside
        if position is not None and failed_at is not None:
            assert position <= failed_at
    committed = [p for p, _ in worker.commits]
    assert committed == sorted(set(committed)), "commits must strictly increase"


@pytest.mark.parametrize("seed", range(60))
def test_crash_and_replay_reproduce_the_same_outputs(seed: int) -> None:
    """Kill the worker after a random batch (unacked outputs are lost), restart from the last commit with the
    stored horizon, replay to the end: the sink must hold exactly what an uninterrupted run produces."""
    rng = random.Random(1000 + seed)
    evs = make_stream(rng, 500)
    evs.append(sentinel(evs))

    reference = Sink()
    run_to_end(Worker.start(None), evs, reference, random.Random(seed))

    sink = Sink()
    first = Worker.start(None)
    parts = batches(rng, evs)
    crash_after = rng.randrange(1, len(parts))
    for batch in parts[:crash_after]:
        first.process(batch)
        first.ack(rng, sink, rng.random())
        first.commit()
    # crash: first.inflight is lost
    last = first.commits[-1] if first.commits else None
    restart_from = last[0] if last else evs[0].offset
    second = Worker.start(last)
    run_to_end(second, [e for e in evs if e.offset >= restart_from], sink, rng)

    assert sink.ledger == reference.ledger
    assert sink.windows.keys() == reference.windows.keys()
    for aggregate_id, expected in reference.windows.items():
        assert sink.windows[aggregate_id] == expected, aggregate_id
