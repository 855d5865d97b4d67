"""The one retry policy of agent-finops: exponential backoff with full jitter, and ``Retry-After`` parsing.

Used by every loop that retries a remote call: the sinks' ClickHouse inserts, the alert deliveries (Slack,
PagerDuty, webhooks) and the provider bill fetches. Pure: the random source and the current time are passed in,
so tests draw the waits deterministically.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import datetime

from finops.clock import as_utc

__all__ = ["RetryPolicy", "compute_backoff", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog): ``uniform(0, min(cap, base * 2**(n-1)))``.

    Full jitter spreads the retries of many workers hit by the same outage, so they do not return in lockstep.
    """

    base_seconds: float = 0.2
    cap_seconds: float = 30.0


def compute_backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based). Pure given ``rng``; never negative, never above
    the cap, and never below a tenth of the exponential step (so a burst of zero waits cannot spin)."""
    step = min(policy.cap_seconds, policy.base_seconds * float(2 ** max(0, attempt - 1)))
    jittered: float = rng.uniform(0.0, step)
    return max(step / 10.0, jittered)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent/unparsable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (as_utc(when) - now).total_seconds())
