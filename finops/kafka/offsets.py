"""Which input offset a consumer may commit, per partition, as pure bookkeeping (DESIGN §5: commit an offset only
when every output derived from the messages before it is durable).

Kafka convention: the committed value ``P`` is the next offset to read, so "everything ``< P`` is done".
:class:`CommitTracker` computes ``P`` as the least of the last consumed offset + 1, the lowest offset with an
outstanding output (registered, not yet acknowledged), the offset of the first failed output (never committed past)
and a floor the caller passes (e.g. the lowest offset an open window still needs). Subclasses add pins of their own
(:meth:`CommitTracker._pinned`; the hot path's closed windows: ``stream_jobs/offsets.py``). Not thread-safe: one
consumer thread drives it (confluent-kafka serves delivery callbacks on the thread that polls the producer).
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush

from schemas.errors import FinopsError

__all__ = ["CommitTracker", "OffsetTrackingError"]


class OffsetTrackingError(FinopsError):
    """A consumer broke the tracker's protocol (an ack for nothing pending, offsets going backwards, an output
    registered below the committed position). This is a bug in the caller, not bad input: stop the worker; the
    replay from the last safe commit is correct."""


class CommitTracker:
    """Tracks one input partition's consumed offsets and outstanding outputs and says which offset may be committed.

    Protocol: ``on_consumed(offset)`` for each message read (increasing offsets); ``on_output_pending(offset)`` for
    each output (or group of outputs) derived from it, then ``on_output_acked`` or ``on_output_failed`` once it is
    durable or lost; ``committable(floor)`` gives the offset to commit; after the commit succeeded,
    ``mark_committed(offset)``. :meth:`on_consumed`, :meth:`on_output_pending` and :meth:`on_output_acked` are O(1)
    (a dict counter plus a deque of offsets in registration order, cleaned lazily).
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

    # ---- per message -----------------------------------------------------------------------------------------
    def on_consumed(self, offset: int) -> None:
        """Record that ``offset`` was read. Offsets must increase (gaps are fine: compaction, transaction markers)."""
        if self._next_to_consume is not None and offset < self._next_to_consume:
            raise OffsetTrackingError(
                f"partition {self.partition}: offset {offset} consumed after {self._next_to_consume - 1}; "
                "after a seek build a new tracker"
            )
        self._next_to_consume = offset + 1

    def on_output_pending(self, offset: int) -> None:
        """Record one output derived from input ``offset`` that is not durable yet."""
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
        """Record that one output of input ``offset`` is durable (acknowledged by the broker, inserted ...)."""
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

    # ---- commit ----------------------------------------------------------------------------------------------
    def _pinned(self) -> int | None:
        """The lowest offset a subclass's own bookkeeping still needs (``None``: nothing). Called by committable."""
        return None

    def committable(self, floor: int | None = None) -> int | None:
        """The offset to commit now (next offset to read), or ``None`` if it would not move past the last commit.

        ``floor`` is an offset the caller still needs (e.g. the lowest offset of an open window). Never blocks;
        never returns an offset past an outstanding or failed output, past ``floor``, past a subclass pin, or past
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
        if floor is not None and floor < position:
            position = floor
        pinned = self._pinned()
        if pinned is not None and pinned < position:
            position = pinned
        if self._failed_at is not None and self._failed_at < position:
            position = self._failed_at
        if self._committed is not None and position <= self._committed:
            return None
        return position

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
    def next_to_consume(self) -> int | None:
        """The offset after the last one consumed (``None``: nothing consumed since the tracker was built)."""
        return self._next_to_consume

    @property
    def failed(self) -> bool:
        """Whether any output failed: the caller must stop after committing what is safe, and restart."""
        return self._failed_at is not None

    @property
    def outstanding(self) -> int:
        """Outputs registered and not yet acknowledged."""
        return sum(self._pending.values())
