"""The hot path's commit rule: the ground layer's :class:`~finops.kafka.offsets.CommitTracker` plus closed windows.

Rule (DESIGN §5): commit an input offset only when every output derived from the events before it is acknowledged
and no open window still needs them. On top of the generic rule (consumed, outstanding outputs, failures, the open
windows' floor ``WindowAggregator.min_open_offset()``), a *closed* window that is not final pins its lowest input
offset: its messages depend on the whole offset range of its events. A window is final once all its messages are
acknowledged and every window that started earlier is final too (windows are emitted in start order, so finality
moves forward like a watermark). The close horizon stored with the commit
(:meth:`WindowCommitTracker.replay_horizon_us`) treats exactly the final windows as closed, so a replay rebuilds every
other window whole.
"""

from __future__ import annotations

from finops.kafka.offsets import CommitTracker, OffsetTrackingError

__all__ = ["OffsetTrackingError", "WindowCommitTracker"]


class _WindowState:
    """Outstanding messages of one emitted time window (all its dimension keys)."""

    __slots__ = ("end_us", "min_offset", "outstanding", "failed")

    def __init__(self, end_us: int, min_offset: int) -> None:
        self.end_us = end_us
        self.min_offset = min_offset
        self.outstanding = 0
        self.failed = False


class WindowCommitTracker(CommitTracker):
    """A :class:`CommitTracker` that also holds the commit below closed windows that are not final.

    Per batch, besides the generic protocol: for each ``ClosedWindow`` produced after
    ``WindowAggregator.poll_closed()``: ``on_window_pending(start, end, min_offset)``, then ``on_window_acked`` or
    ``on_window_failed``. ``committable(agg.min_open_offset())`` and ``replay_horizon_us(agg.polled_before_us)``,
    taken together, give the offset and the metadata to commit.
    """

    __slots__ = ("_windows",)

    def __init__(self, partition: int, committed: int | None = None) -> None:
        super().__init__(partition, committed)
        self._windows: dict[int, _WindowState] = {}

    def on_window_pending(self, window_start_us: int, window_end_us: int, min_offset: int) -> None:
        """Record one produced message of the closed window starting at ``window_start_us`` whose events start at
        input offset ``min_offset`` (call once per ``ClosedWindow``)."""
        state = self._windows.get(window_start_us)
        if state is None:
            committed = self.committed
            if committed is not None and min_offset < committed:
                raise OffsetTrackingError(
                    f"partition {self.partition}: window at {window_start_us} needs offset {min_offset}, "
                    f"below the committed {committed}"
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

    def _pinned(self) -> int | None:
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

    def committable(self, min_open_window_offset: int | None = None) -> int | None:
        """The offset to commit now; ``min_open_window_offset`` is ``WindowAggregator.min_open_offset()`` taken
        after the latest ``poll_closed()`` and after the windows it returned were registered here."""
        return super().committable(min_open_window_offset)

    def replay_horizon_us(self, polled_before_us: int) -> int:
        """The close horizon to store with a commit (as offset metadata) and restore into the next aggregator.

        It is the aggregator's ``polled_before_us`` lowered to the start of the oldest window that is not final,
        so that after a restart every window that was final counts as closed (its replayed events are late and it
        is not re-emitted as a partial) and every other window is open and rebuilt whole from the replay.
        """
        self._pinned()
        if not self._windows:
            return polled_before_us
        return min(polled_before_us, min(self._windows))

    @property
    def outstanding(self) -> int:
        """Outputs produced and not yet acknowledged (priced events, DLQ records and window messages)."""
        return super().outstanding + sum(state.outstanding for state in self._windows.values())
