"""The one clock of agent-finops: wall time (UTC) and monotonic time behind one small interface.

Code that waits, paces or stamps takes a :class:`Clock` (the alert deliveries, the producer guard), so tests drive
whole retry ladders with a fake clock in microseconds; code that only stamps takes :func:`utc_now`. Wall time is
always timezone-aware UTC; durations come from the monotonic clock, never from differences of wall times.
A naive datetime read back from ClickHouse (or written without an offset on a CLI) becomes one with :func:`as_utc`.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol, overload

__all__ = ["Clock", "SystemClock", "as_utc", "utc_now"]


def utc_now() -> datetime:
    """The current wall time, timezone-aware UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime: a naive one is UTC (the zone is attached, the fields stay), an aware one
    is converted with ``astimezone``; None (a NULL column) stays None.

    Why naive means UTC: ClickHouse stores a DateTime / DateTime64 as a UTC instant (Unix time; the column's zone only
    changes how it is rendered as text), and clickhouse-connect and chdb hand it back as a naive datetime holding the
    UTC wall time (or an aware one, depending on the column's zone and the client's settings). Calling
    ``astimezone`` on the naive value would read it as the host's local time and shift it by the host's offset.
    The CLIs read an ISO time written without an offset the same way, so a time means one instant everywhere.
    """
    if value is None or value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Clock(Protocol):
    """Monotonic seconds (durations), wall time (UTC) and an interruptible wait."""

    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; return False if interrupted (shutdown), True otherwise."""
        ...


class SystemClock:
    """Real time; ``sleep`` wakes early when ``stop`` is set so shutdown does not wait out a backoff."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return utc_now()

    def sleep(self, seconds: float) -> bool:
        if seconds <= 0:
            return not self.stop.is_set()
        return not self.stop.wait(seconds)

