"""The one clock of agent-finops: wall time (UTC) and monotonic time behind one small interface.

Code that waits, paces or stamps takes a :class:`Clock` (the alert deliveries, the producer guard), so tests drive
whole retry ladders with a fake clock in microseconds; code that only stamps takes :func:`utc_now`. Wall time is
always timezone-aware UTC; durations come from the monotonic clock, never from differences of wall times.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "utc_now"]


def utc_now() -> datetime:
    """The current wall time, timezone-aware UTC."""
    return datetime.now(UTC)


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

