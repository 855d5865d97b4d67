"""A tiny, dependency-free progress bar for long CLI runs (``finops replay``, ``finops simulate``).

It draws one line on stderr, rewritten in place with ``\\r``: done / total, percent, rate and ETA. It draws only
when the stream is a terminal (or when forced), so piped output and CI logs stay clean; when it does not draw,
every method is a cheap no-op. Redraws are throttled (default 10 per second) because a replay can move 100k events a
second and a terminal write per event would dominate the run.

The clock is injected (``clock``, default :func:`time.monotonic`) so tests need no sleeps, and the formatting is a
pure function (:func:`render_progress`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["ProgressBar", "format_duration", "render_progress"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour) for a non-negative number of seconds; ``?`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative or infinite: no estimate
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_progress(done: int, total: int | None, elapsed: float, *, label: str = "", width: int = 30) -> str:
    """One progress line (without ``\\r``): ``label [#####.....] done/total pct rate/s ETA m:ss``.

    With an unknown ``total`` the bar and ETA are omitted (count and rate only). Pure; never raises for
    ``elapsed == 0`` (the rate is then shown as 0/s).
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    prefix = f"{label} " if label else ""
    if total is None or total <= 0:
        return f"{prefix}{done:,} {rate:,.0f}/s elapsed {format_duration(elapsed)}"
    fraction = min(1.0, done / total)
    filled = int(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    eta = (total - done) / rate if rate > 0 else float("inf")
    if done >= total:
        eta = 0.0
    return (f"{prefix}[{bar}] {done:,}/{total:,} {fraction * 100:5.1f}% {rate:,.0f}/s "
            f"ETA {format_duration(eta)}")


class ProgressBar:
    """Progress on ``stream`` (default stderr), drawn only if ``force`` is true or, when ``force`` is None, the stream
    is a TTY.

    Use as a context manager or call :meth:`close`; ``close`` ends the line so later output starts clean. Not
    thread-safe: one writer per bar.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        label: str = "",
        stream: TextIO | None = None,
        force: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.1,
        width: int = 30,
    ) -> None:
        self.total = total
        self.label = label
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if force is None:
            isatty = getattr(self.stream, "isatty", None)
            force = bool(isatty()) if callable(isatty) else False
        self.enabled: bool = force
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._last_draw: float | None = None
        self._min_interval = min_interval
        self._width = width
        self._closed = False
        self._drawn_length = 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw if the throttle interval has passed."""
        self.done += n
        if not self.enabled:
            return
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self._min_interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        line = render_progress(self.done, self.total, now - self._started, label=self.label, width=self._width)
        # Pad with spaces so a shorter line fully covers the previous one.
        padding = " " * max(0, self._drawn_length - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._drawn_length = len(line)
        self._last_draw = now

    def close(self) -> None:
        """Draw the final state and end the line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
