"""Report periods: calendar months and weeks in UTC (the rollups' days are UTC days), parsed from the command line.

Pure: the only "now" is an argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from finops.clock import as_utc
from schemas.errors import ConfigError

__all__ = ["Period", "parse_period", "month_period", "week_period", "previous_month", "DAYS_PER_MONTH"]

#: Average days per month (365.2425 / 12), to turn a period's saving into "per month".
DAYS_PER_MONTH = Decimal("30.436875")

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC with a label for file names and headings."""

    start: datetime
    end: datetime
    label: str

    @property
    def days(self) -> int:
        return max(1, (self.end - self.start).days)

    def per_month(self, amount: Decimal) -> Decimal:
        """``amount`` observed over this period scaled to an average month (a month period is returned as is)."""
        if _MONTH.fullmatch(self.label):
            return amount
        return amount * DAYS_PER_MONTH / Decimal(self.days)

    def day_list(self) -> list[date]:
        return [(self.start + timedelta(days=i)).date() for i in range(self.days)]


def month_period(year: int, month: int) -> Period:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return Period(start, end, f"{year:04d}-{month:02d}")


def previous_month(period: Period, back: int = 1) -> Period:
    """The calendar month ``back`` months before the month containing ``period.start``."""
    index = period.start.year * 12 + period.start.month - 1 - back
    return month_period(index // 12, index % 12 + 1)


def week_period(any_day: date) -> Period:
    """The ISO week (Monday to Monday, UTC) containing ``any_day``."""
    monday = any_day - timedelta(days=any_day.weekday())
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    iso = monday.isocalendar()
    return Period(start, start + timedelta(days=7), f"{iso.year}-W{iso.week:02d}")


def parse_period(text: str | None, *, start: str | None = None, end: str | None = None,
                 now: datetime | None = None) -> Period:
    """``YYYY-MM`` (a UTC calendar month), or ``start``/``end`` dates (``YYYY-MM-DD``, end exclusive), or the
    current month of ``now`` when nothing is given. Raises ConfigError naming the expected forms."""
    if start or end:
        if not (start and end):
            raise ConfigError("give both --from and --to (YYYY-MM-DD, --to exclusive)")
        lo, hi = _instant(start), _instant(end)
        if hi <= lo:
            raise ConfigError(f"--to {end} must be after --from {start}")
        return Period(lo, hi, f"{lo.date().isoformat()}_{hi.date().isoformat()}")
    if text is None:
        if now is None:
            raise ConfigError("--period YYYY-MM is required")
        return month_period(now.year, now.month)
    match = _MONTH.fullmatch(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ConfigError(f"--period {text!r}: expected YYYY-MM (e.g. 2026-10)")
    return month_period(int(match.group(1)), int(match.group(2)))


def _instant(text: str) -> datetime:
    """A date (UTC midnight) or an ISO datetime (converted to UTC; naive means UTC)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise ConfigError(f"{text!r} is not a date (YYYY-MM-DD) or ISO datetime") from err
    return as_utc(value)
