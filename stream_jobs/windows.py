"""Tumbling spend windows for the usage hot path: pure window math and one aggregator per source partition.

Role: quix-streams' time windows (a window closes when the partition's event-time watermark passes its end plus a
grace period) and faust's window ranges as pure functions of timestamps: plain Python on integer microseconds
since the epoch, the wall clock passed in, money as ``Decimal``; no Kafka, Faust or ClickHouse import.

Guarantee: windows are epoch-aligned, so every worker and every replay cuts the same ones; a closed window never
reopens (a late event is counted in no window, and the caller still sends it to the ledger, flagged late); a
replay from the committed offset re-emits every window under the same ``aggregate_id`` with the same sums
(:class:`WindowAggregator`). See DESIGN §5.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, NamedTuple

__all__ = [
    "DIMENSIONS",
    "MINUTE_US",
    "ClosedWindow",
    "WindowAggregator",
    "compute_closes_at",
    "window_end",
    "window_start",
]

MINUTE_US: Final = 60_000_000
DIMENSIONS: Final = ("agent", "team", "project", "model")

# "Nothing closed yet" / "nothing seen yet": far below any real epoch-microsecond timestamp, still a small int.
_NEVER: Final = -(1 << 62)
_ZERO: Final = Decimal(0)

# A cell is a plain list (in-place ``c[i] += x`` is the cheapest mutable accumulator in CPython) with a fixed
# layout: [cost_usd: Decimal, input, output, cache_read, cache_write, reasoning, calls, errors, retries, unpriced,
# min_offset, max_offset: int]. Typed as list[Any] because a list cannot say "Decimal, then ints".
_Cell = list[Any]
_COST, _IN, _OUT, _CR, _CW, _REASON, _CALLS, _ERRORS, _RETRIES, _UNPRICED, _MIN_OFF, _MAX_OFF = range(12)


def window_start(ts_us: int, size_us: int) -> int:
    """The start of the tumbling window of ``size_us`` holding ``ts_us``: the largest multiple of ``size_us``
    that is ``<= ts_us`` (floor semantics, also for timestamps before the epoch)."""
    return ts_us - ts_us % size_us


def window_end(ts_us: int, size_us: int) -> int:
    """The exclusive end of the tumbling window holding ``ts_us``."""
    return ts_us - ts_us % size_us + size_us


def compute_closes_at(start_us: int, size_us: int, grace_us: int) -> int:
    """The watermark at which window ``[start_us, start_us + size_us)`` closes: ``start + size + grace``."""
    return start_us + size_us + grace_us


class ClosedWindow(NamedTuple):
    """The final partial aggregate of one ``(window, dimension, key, source partition)``.

    ``aggregate_id`` is ``f"{window_start_us}:{dimension}:{key}:{partition}"`` and is the same on every
    re-emission of the same window (the sink deduplicates on it). ``min_offset`` / ``max_offset`` are the lowest
    and highest input offsets that contributed. ``cost_usd`` sums priced events only; unpriced events add nothing
    to it and are counted in ``unpriced_calls`` (an unknown model is never $0). ``partition`` is the Avro
    ``source_partition``. A ``NamedTuple`` rather than a frozen dataclass: thousands are built per minute and a
    tuple is several times cheaper to build; it is just as immutable.
    """

    aggregate_id: str
    window_start_us: int
    window_end_us: int
    dimension: str
    key: str
    partition: int
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    calls: int
    errors: int
    retries: int
    unpriced_calls: int
    min_offset: int
    max_offset: int


class _OpenWindow:
    """One open time window: fine-grained cells keyed by (agent_id, team, project, model)."""

    __slots__ = ("cells", "min_offset")

    def __init__(self, first_offset: int) -> None:
        self.cells: dict[tuple[str, str, str, str], _Cell] = {}
        # Offsets reach add() in increasing order (one Kafka partition), so the first offset is the lowest.
        self.min_offset = first_offset


class WindowAggregator:
    """Tumbling-window spend aggregates of ONE source partition.

    Vocabulary (microseconds): a window is ``[start, start + size)`` with ``start`` a multiple of ``size``. The
    watermark is the largest event time seen. The close horizon ``closed_before_us`` is a window boundary below
    which every window is closed; it only grows, and is the largest boundary ``<=`` the greatest of (a) ``watermark
    - grace``, (b) ``now_wall - idle_timeout - grace`` from :meth:`close_idle` on a quiet partition and (c) the
    horizon restored at start-up. An event is late when ``window_end(event_time) <= closed_before_us`` as it is
    added.

    One aggregator per source partition because usage events are keyed by ``agent_id`` (an agent's events are
    ordered within one partition) and the partition's offsets give the commit rule (``stream_jobs/offsets.py``)
    something to hold on to. Each closed window is a partial for ``(window, dimension, key, partition)``; the sink
    sums partials over partitions. State is dropped on revoke; the replay rebuilds it.

    Per event, :meth:`add` does one modulo, one tuple key ``(agent_id, team, project, model)`` and one dict lookup,
    then in-place list updates; the four dimensions are rolled up from those cells only when a window closes, so the
    per-event work does not grow with the number of dimensions.

    Replay: after a crash the hot path restarts at the committed offset ``P`` with empty state. The commit stores, as
    offset metadata, the close horizon from ``WindowCommitTracker.replay_horizon_us(aggregator.polled_before_us)``, and
    the new aggregator is built with ``closed_before_us=`` that value: replayed events of windows already emitted and
    acknowledged are late (not re-emitted as partial sums under the same id), and every window not yet safely emitted
    has all its events at offsets ``>= P`` and is rebuilt whole. Only the ``late`` flag of a replayed priced event can
    differ (if a wall-clock idle close moved the horizon); the ledger deduplicates by event id either way.

    Promises:

    - :meth:`add` counts an event in its window unless the event is late, and says which; it never blocks and
      never raises on a late or out-of-order event.
    - A window, once closed, never receives another event; :meth:`poll_closed` hands each closed window out
      exactly once per aggregator, as one :class:`ClosedWindow` per (dimension, key), in window order.
    - :meth:`min_open_offset` is the lowest input offset of any window not yet handed out by :meth:`poll_closed`
      (open, or closed but not polled): an input offset ``>=`` the commit position must still be replayable for it.

    Preconditions (not checked per event, for speed): offsets passed to :meth:`add` increase (they come from one
    partition in order), and event times are validated upstream (a timestamp far in the future moves the watermark
    and closes every window of the partition early; the validator should refuse or clamp future ``occurred_at``).

    Not thread-safe: the hot path calls it from the consumer thread only.
    """

    __slots__ = (
        "partition",
        "size_us",
        "grace_us",
        "idle_timeout_us",
        "_windows",
        "_watermark_us",
        "_horizon_us",
        "_idle_seen_watermark_us",
        "_idle_since_wall_us",
        "_cur_start",
        "_cur_cells",
        "_polled_before_us",
    )

    def __init__(
        self,
        partition: int,
        *,
        size_us: int = MINUTE_US,
        grace_us: int = 10_000_000,
        idle_timeout_us: int = 30_000_000,
        closed_before_us: int | None = None,
    ) -> None:
        """Build an empty aggregator for source ``partition``.

        ``grace_us`` is how long after a window's end (in event time) events may still join it; ``idle_timeout_us``
        is how long (wall clock) a partition must show no watermark progress before :meth:`close_idle` closes
        windows by the wall clock. ``closed_before_us`` restores the close horizon stored with the last commit
        (rounded down to a window boundary); ``None`` for a partition without one.
        """
        if size_us <= 0:
            raise ValueError(f"size_us must be positive, got {size_us}")
        if grace_us < 0 or idle_timeout_us < 0:
            raise ValueError("grace_us and idle_timeout_us must not be negative")
        self.partition = partition
        self.size_us = size_us
        self.grace_us = grace_us
        self.idle_timeout_us = idle_timeout_us
        self._windows: dict[int, _OpenWindow] = {}
        self._watermark_us = _NEVER
        # Kept unaligned internally (one subtraction per watermark advance); lateness only ever compares it with
        # aligned window ends, so "end <= horizon" and "end <= aligned(horizon)" agree.
        self._horizon_us = _NEVER if closed_before_us is None else window_start(closed_before_us, size_us)
        self._polled_before_us = window_start(self._horizon_us, size_us)
        self._idle_seen_watermark_us = _NEVER
        self._idle_since_wall_us: int | None = None
        # Cache of the window the previous event went to; _NEVER is never a real window start.
        self._cur_start = _NEVER
        self._cur_cells: dict[tuple[str, str, str, str], _Cell] = {}

    # ---- hot path --------------------------------------------------------------------------------------------
    def add(
        self,
        event_time_us: int,
        agent_id: str,
        team: str,
        project: str,
        model: str,
        cost_usd: Decimal,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        reasoning_tokens: int,
        status_ok: bool,
        attempt: int,
        priced: bool,
        offset: int,
    ) -> bool:
        """Count one (deduplicated) event in its window; return ``False`` if it is late and was NOT counted.

        ``model`` is the model dimension key as the sink expects it (``provider/model``). ``cost_usd`` is ignored
        when ``priced`` is false (the event counts in ``unpriced_calls``). ``offset`` is the event's input offset.
        Late means ``window_end(event_time_us) <= closed_before_us``; see the class docstring.
        """
        size = self.size_us
        start = event_time_us - event_time_us % size
        if start + size <= self._horizon_us:
            return False
        if start == self._cur_start:
            # Most events fall into the same window as the one before: skip the dict lookup.
            cells = self._cur_cells
        else:
            window = self._windows.get(start)
            if window is None:
                window = self._windows[start] = _OpenWindow(offset)
            cells = self._cur_cells = window.cells
            self._cur_start = start
        if event_time_us > self._watermark_us:
            self._watermark_us = event_time_us
            # The event's own window cannot close here: its end + grace > event_time_us.
            if event_time_us - self.grace_us > self._horizon_us:
                self._horizon_us = event_time_us - self.grace_us
        key = (agent_id, team, project, model)
        cell = cells.get(key)
        if cell is None:
            cells[key] = [
                cost_usd if priced else _ZERO,
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                reasoning_tokens,
                1,
                0 if status_ok else 1,
                1 if attempt > 1 else 0,
                0 if priced else 1,
                offset,
                offset,
            ]
            return True
        if priced:
            cell[_COST] += cost_usd
        else:
            cell[_UNPRICED] += 1
        cell[_IN] += input_tokens
        cell[_OUT] += output_tokens
        if cache_read_tokens:
            cell[_CR] += cache_read_tokens
        if cache_write_tokens:
            cell[_CW] += cache_write_tokens
        if reasoning_tokens:
            cell[_REASON] += reasoning_tokens
        cell[_CALLS] += 1
        if not status_ok:
            cell[_ERRORS] += 1
        if attempt > 1:
            cell[_RETRIES] += 1
        cell[_MAX_OFF] = offset
        return True

    # ---- closing ---------------------------------------------------------------------------------------------
    def close_idle(self, now_wall_us: int) -> bool:
        """Close windows by the wall clock on a quiet partition; return ``True`` if the horizon moved.

        Rule: once the partition's watermark has not moved for ``idle_timeout_us`` of wall-clock time (measured
        between calls of this method), every window with ``end + grace <= now_wall_us - idle_timeout_us`` closes.
        Call it once per consumed batch for every assigned partition (also those that returned no message).

        Trade-off: without it, the last window of a partition that goes quiet would wait for the next event, maybe
        for hours, and budgets and anomaly detection would be blind. The price: an event that arrives after such a
        close (a producer whose clock lags the worker's by more than ``idle_timeout + grace``, or a spool flushed
        after an outage) is late, so it reaches the ledger but not its 1-minute window, and the window total stays
        low (the reconciliation job sees the gap; hourly and daily rollups come from the ledger and are complete).
        The quiet check protects a lagging consumer: while a backlog is being read, the watermark moves and no
        window is closed by the wall clock. A consumer that is stalled for ``idle_timeout_us`` with a backlog
        pending would still close by the wall clock; call this only for partitions whose lag is 0 if the
        consumer can tell. Wall-clock closes are not reproduced on replay (see the class docstring).
        """
        if self._watermark_us != self._idle_seen_watermark_us or self._idle_since_wall_us is None:
            self._idle_seen_watermark_us = self._watermark_us
            self._idle_since_wall_us = now_wall_us
            return False
        if now_wall_us - self._idle_since_wall_us < self.idle_timeout_us:
            return False
        candidate = now_wall_us - self.idle_timeout_us - self.grace_us
        if window_start(candidate, self.size_us) <= window_start(self._horizon_us, self.size_us):
            return False
        self._horizon_us = candidate
        return True

    def poll_closed(self) -> list[ClosedWindow]:
        """Hand out every window closed since the last call, oldest window first, one entry per (dimension, key).

        Each window is handed out once; the caller produces it and registers it with the commit tracker *before*
        asking for a commit position, because from now on :meth:`min_open_offset` no longer covers it.
        """
        horizon = self._horizon_us
        size = self.size_us
        self._polled_before_us = window_start(horizon, size)
        due = sorted(start for start in self._windows if start + size <= horizon)
        out: list[ClosedWindow] = []
        for start in due:
            out.extend(self._roll_up(start, self._windows.pop(start)))
            if start == self._cur_start:
                self._cur_start = _NEVER
                self._cur_cells = {}
        return out

    def _roll_up(self, start: int, window: _OpenWindow) -> list[ClosedWindow]:
        # Roll the fine cells up to the four dimensions. Runs once per cell per window, not per event; grouping
        # first and summing columns with zip/sum keeps the loops in C (faster than per-field adds).
        by_agent: dict[str, list[_Cell]] = {}
        by_team: dict[str, list[_Cell]] = {}
        by_project: dict[str, list[_Cell]] = {}
        by_model: dict[str, list[_Cell]] = {}
        for (agent_id, team, project, model), cell in window.cells.items():
            # Unrolled on purpose: a loop over the four (groups, key) pairs costs a tuple per cell.
            group = by_agent.get(agent_id)
            if group is None:
                by_agent[agent_id] = [cell]
            else:
                group.append(cell)
            group = by_team.get(team)
            if group is None:
                by_team[team] = [cell]
            else:
                group.append(cell)
            group = by_project.get(project)
            if group is None:
                by_project[project] = [cell]
            else:
                group.append(cell)
            group = by_model.get(model)
            if group is None:
                by_model[model] = [cell]
            else:
                group.append(cell)
        end = start + self.size_us
        partition = self.partition
        out: list[ClosedWindow] = []
        for dimension, groups in zip(DIMENSIONS, (by_agent, by_team, by_project, by_model), strict=True):
            for key in sorted(groups):
                cells = groups[key]
                if len(cells) == 1:
                    values: _Cell = cells[0]
                else:
                    columns = list(zip(*cells, strict=True))
                    values = [sum(column) for column in columns[:_MIN_OFF]]
                    values.append(min(columns[_MIN_OFF]))
                    values.append(max(columns[_MAX_OFF]))
                out.append(
                    ClosedWindow(
                        f"{start}:{dimension}:{key}:{partition}", start, end, dimension, key, partition, *values
                    )
                )
        return out

    # ---- state for the commit rule and metrics -----------------------------------------------------------------
    def min_open_offset(self) -> int | None:
        """The lowest input offset of any window not yet handed out by :meth:`poll_closed`, or ``None``."""
        if not self._windows:
            return None
        return min(window.min_offset for window in self._windows.values())

    @property
    def closed_before_us(self) -> int:
        """The close horizon as a window boundary: every window ending at or before it is closed (an event for it
        is late). Before anything closed it is a large negative number."""
        return window_start(self._horizon_us, self.size_us)

    @property
    def polled_before_us(self) -> int:
        """The close horizon as of the last :meth:`poll_closed`: every window ending at or before it was handed
        out (or never had an event). Store ``WindowCommitTracker.replay_horizon_us(this)`` with each commit and pass it
        back as ``closed_before_us`` after a restart; unlike :attr:`closed_before_us` it never covers a window
        that closed but was not yet emitted, whatever the order of calls."""
        return self._polled_before_us

    @property
    def watermark_us(self) -> int | None:
        """The largest event time added so far, or ``None`` before the first event."""
        return None if self._watermark_us == _NEVER else self._watermark_us

    @property
    def open_windows(self) -> int:
        """How many windows are held (open or closed but not yet polled): a gauge for dashboards."""
        return len(self._windows)
