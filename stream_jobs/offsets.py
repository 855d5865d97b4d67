"""The offset-commit rule of the usage hot path, per input partition, as pure bookkeeping.

Rule (DESIGN §5): commit an input offset only when every output derived from the events before it is acknowledged
by the broker and no open window still needs them. A crash then replays from the committed position and
recomputes the same outputs; nothing derived from an uncommitted event can have been lost. The terms of the rule
are listed on :class:`CommitTracker`.

Not thread-safe: confluent-kafka serves delivery callbacks on the thread that calls ``producer.poll()``/``flush()``,
which is the consumer thread of the hot path.
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush

from schemas.errors import FinopsError

__all__ = ["CommitTracker", "OffsetTrackingError"]


class OffsetTrackingError(FinopsError):
    """The hot path broke the tracker's protocol (an ack for nothing pending, offsets going backwards, an output
    registered below the committed position). This is a bug in the caller, not bad input: stop the worker; the
    replay from the last safe commit is correct."""


class _WindowState:
    """Outstanding messages of one emitted time window (all its dimension keys)."""

    __slots__ = ("end_us", "min_offset", "outstanding", "failed")

    def __init__(self, end_us: int, min_offset: int) -> None:
        self.end_us = end_us
        self.min_offset = min_offset
        self.outstanding = 0
        self.failed = False


class CommitTracker:
    """Tracks one input partition's consumed offsets and produced outputs and says which offset may be committed.

    Kafka convention: the committed value ``P`` is the next offset to read ("everything ``< P`` is done"). ``P`` is
    the least of (1) the last consumed offset + 1; (2) the lowest offset with an outstanding (produced, not yet
    acknowledged) output, anything registered with :meth:`on_output_pending`; (3) ``min_open_window_offset``, the
    lowest offset of a window the aggregator has not handed out yet; (4) the lowest input offset of every emitted
    window that is not final: a window's messages are registered at its ``min_offset``, and a window is final once
    all its messages are acknowledged and every window that started earlier is final too (finality moves forward
    like a watermark, so the close horizon of :meth:`replay_horizon_us` treats exactly the final windows as closed
    and every other window is replayed whole); (5) the offset of the first failed output
    (:meth:`on_output_failed`): never commit past a failure; the caller stops, closes and restarts.

    Cost: :meth:`on_consumed`, :meth:`on_output_pending` and :meth:`on_output_acked` are O(1) (a dict counter plus a
    deque of offsets, cleaned lazily); :meth:`committable` is amortized O(1) per output plus the number of windows
    awaiting finality.

    Usage per batch: ``on_consumed(offset)`` for each message; ``on_output_pending(offset)`` for each output
    produced for it (priced event, DLQ record); for each ``ClosedWindow`` produced after
    ``WindowAggregator.poll_closed()``: ``on_window_pending(start, end, min_offset)``. Delivery callbacks call
    ``on_output_acked``/``on_window_acked`` or the ``..._failed`` twins. Then ``committable(agg.min_open_offset())``
    and ``replay_horizon_us(agg.polled_before_us)``, taken together, give the offset and the metadata to commit;
    after the commit succeeded, ``mark_committed(offset)``.
    """

    __slots__ = (
        "partition",
        "_committed",
        "_next_to_consume",
        "_pending",
        "_order",
        "_order_tail",
        "_stragglers",
        "_failed_at",
        "_windows",
    )

    def __init__(self, partition: int, committed: int | None = None) -> None:
        """Start tracking ``partition`` from the committed position ``committed`` (``None``: nothing committed)."""
        self.partition = partition
        self._committed = committed
        self._next_to_consume: int | None = None
        self._pending: dict[int, int] = {}
        # Offsets with outputs, in registration order; registrations come in consumption order, so the deque is
        # sorted and its left end is the lowest candidate. Entries whose count reached 0 are dropped lazily.
        self._order: deque[int] = deque()
        self._order_tail = -1
        # Outputs registered below the deque's tail (unusual: an output produced late for an older input).
        self._stragglers: list[int] = []
        self._failed_at: int | None = None
        self._windows: dict[int, _WindowState] = {}

    # ---- per event -------------------------------------------------------------------------------------------
    def on_consumed(self, offset: int) -> None:
        """Record that ``offset`` was read. Offsets must increase (gaps are fine: compaction, transaction markers)."""
        if self._next_to_consume is not None and offset < self._next_to_consume:
            raise OffsetTrackingError(
                f"partition {self.partition}: offset {offset} consumed after {self._next_to_consume - 1}; "
                "after a seek build a new tracker"
            )
        self._next_to_consume = offset + 1

    def on_output_pending(self, offset: int) -> None:
        """Record one produced, not yet acknowledged output derived from input ``offset``."""
        pending = self._pending
        count = pending.get(offset)
        if count is not None:
            pending[offset] = count + 1
            return
        pending[offset] = 1
        if offset >= self._order_tail:
            self._order.append(offset)
            self._order_tail = offset
        else:
            if self._committed is not None and offset < self._committed:
                del pending[offset]
                raise OffsetTrackingError(
                    f"partition {self.partition}: output for offset {offset} below the committed {self._committed}"
                )
            heappush(self._stragglers, offset)

    def on_output_acked(self, offset: int) -> None:
        """Record that one output of input ``offset`` was acknowledged by the broker."""
        pending = self._pending
        count = pending.get(offset)
        if count is None:
            raise OffsetTrackingError(f"partition {self.partition}: ack for offset {offset} with nothing pending")
        if count == 1:
            del pending[offset]
        else:
            pending[offset] = count - 1

    def on_output_failed(self, offset: int) -> None:
        """Record that an output of input ``offset`` could not be delivered; no commit will ever pass ``offset``."""
        if self._failed_at is None or offset < self._failed_at:
            self._failed_at = offset

    # ---- closed windows --------------------------------------------------------------------------------------
    def on_window_pending(self, window_start_us: int, window_end_us: int, min_offset: int) -> None:
        """Record one produced message of the closed window starting at ``window_start_us`` whose events start at
        input offset ``min_offset`` (call once per ``ClosedWindow``)."""
        state = self._windows.get(window_start_us)
        if state is None:
            if self._committed is not None and min_offset < self._committed:
                raise OffsetTrackingError(
                    f"partition {self.partition}: window at {window_start_us} needs offset {min_offset}, "
                    f"below the committed {self._committed}"
                )
            state = self._windows[window_start_us] = _WindowState(window_end_us, min_offset)
        elif min_offset < state.min_offset:
            state.min_offset = min_offset
        state.outstanding += 1

    def on_window_acked(self, window_start_us: int) -> None:
        """Record that one message of the window starting at ``window_start_us`` was acknowledged."""
        state = self._windows.get(window_start_us)
        if state is None or state.outstanding <= 0:
            raise OffsetTrackingError(
                f"partition {self.partition}: ack for window {window_start_us} with nothing pending"
            )
        state.outstanding -= 1

    def on_window_failed(self, window_start_us: int) -> None:
        """Record that a message of the window starting at ``window_start_us`` could not be delivered."""
        state = self._windows.get(window_start_us)
        if state is None:
            raise OffsetTrackingError(f"partition {self.partition}: failure for unknown window {window_start_us}")
        state.failed = True
        self.on_output_failed(state.min_offset)

    # ---- commit ----------------------------------------------------------------------------------------------
    def _settle_windows(self) -> int | None:
        """Drop final windows; return the lowest input offset any remaining window pins, or ``None``."""
        windows = self._windows
        if not windows:
            return None
        pin: int | None = None
        settling = True
        for start in sorted(windows):
            state = windows[start]
            if settling and state.outstanding == 0 and not state.failed:
                del windows[start]
                continue
            # The first unfinished window stops finality: later ones, even acknowledged, stay pinned.
            settling = False
            if pin is None or state.min_offset < pin:
                pin = state.min_offset
        return pin

    def committable(self, min_open_window_offset: int | None) -> int | None:
        """The offset to commit now (next offset to read), or ``None`` if it would not move past the last commit.

        ``min_open_window_offset`` is ``WindowAggregator.min_open_offset()`` taken after the latest
        ``poll_closed()`` and after the windows it returned were registered here. Never blocks; never returns an
        offset past an unacknowledged or failed output, past an open or non-final window's lowest offset, or past
        what was consumed.
        """
        if self._next_to_consume is None:
            return None
        position = self._next_to_consume
        pending = self._pending
        order = self._order
        while order and order[0] not in pending:
            order.popleft()
        if order and order[0] < position:
            position = order[0]
        stragglers = self._stragglers
        while stragglers and stragglers[0] not in pending:
            heappop(stragglers)
        if stragglers and stragglers[0] < position:
            position = stragglers[0]
        if min_open_window_offset is not None and min_open_window_offset < position:
            position = min_open_window_offset
        pinned = self._settle_windows()
        if pinned is not None and pinned < position:
            position = pinned
        if self._failed_at is not None and self._failed_at < position:
            position = self._failed_at
        if self._committed is not None and position <= self._committed:
            return None
        return position

    def replay_horizon_us(self, polled_before_us: int) -> int:
        """The close horizon to store with a commit (as offset metadata) and restore into the next aggregator.

        It is the aggregator's ``polled_before_us`` lowered to the start of the oldest window that is not final,
        so that after a restart every window that was final counts as closed (its replayed events are late and it
        is not re-emitted as a partial) and every other window is open and rebuilt whole from the replay.
        """
        self._settle_windows()
        if not self._windows:
            return polled_before_us
        return min(polled_before_us, min(self._windows))

    def mark_committed(self, offset: int) -> None:
        """Record that ``offset`` was committed (call from the commit's success path)."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    # ---- state for tests, metrics and shutdown -----------------------------------------------------------------
    @property
    def committed(self) -> int | None:
        """The last offset recorded by :meth:`mark_committed` (or given at construction)."""
        return self._committed

    @property
    def failed(self) -> bool:
        """Whether any output failed: the caller must stop after committing what is safe, and restart."""
        return self._failed_at is not None

    @property
    def outstanding(self) -> int:
        """Outputs produced and not yet acknowledged (priced events, DLQ records and window messages)."""
        return sum(self._pending.values()) + sum(state.outstanding for state in self._windows.values())
