"""Delivery to one destination: pacing, ``Retry-After``, exponential backoff with jitter, broken destinations.

Role: a :class:`DestinationSender` owns one destination and sends one item at a time (the lane in
:mod:`alerting.worker` feeds it in outbox order, which keeps the order per key): pace, send through the injected
:class:`HttpTransport`, classify the answer (the ladder is on :class:`DestinationSender`).

Guarantee: nothing later overtakes a pending item (after ``max_attempts`` the same head item is tried again later);
a permanent 4xx marks the destination broken and raises a configuration alert instead of retrying; URLs and
routing keys never reach logs, errors or the delivery log. Time comes from an injected :class:`Clock`, so tests
run the whole ladder with a fake clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from alerting.channels import Destination, build_request
from finops.clock import Clock
from finops.http import HttpTransport, TransportError
from finops.retry import RetryPolicy, compute_backoff, parse_retry_after
from schemas.models import Alert

__all__ = [
    "AttemptRecord",
    "DEFAULT_MIN_INTERVAL",
    "DeliveryPolicy",
    "DestinationSender",
    "Outcome",
    "scrub",
]

log = logging.getLogger(__name__)

#: Seconds between requests to one destination, by channel type (Slack: ~1 message/s per webhook; PagerDuty: its
#: Events API limits each routing key, 2/s keeps well inside it; webhooks: our own receivers, lightly paced).
DEFAULT_MIN_INTERVAL: dict[str, float] = {"slack": 1.0, "pagerduty": 0.5, "webhook": 0.1}


@dataclass(frozen=True)
class DeliveryPolicy:
    """Tunables; tests inject small values."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    #: Longest Retry-After honoured; a longer one is capped (and the item retried then), so a hostile or buggy
    #: answer cannot park a lane for a day.
    max_retry_after_s: float = 300.0
    retry_later_s: float = 60.0
    min_interval_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_INTERVAL))

    @property
    def retry(self) -> RetryPolicy:
        """The backoff between rounds, the project's one (:mod:`finops.retry`)."""
        return RetryPolicy(base_seconds=self.backoff_base_s, cap_seconds=self.backoff_cap_s)

    def interval_for(self, destination: Destination) -> float:
        if destination.min_interval_s is not None:
            return destination.min_interval_s
        return self.min_interval_s.get(destination.type, 0.0)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (URL, routing key, signing secret) replaced by ``****``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "****")
    return text


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt, as the delivery log stores it (no secrets: destination by name, error scrubbed)."""

    alert_id: str
    channel: str
    destination_name: str
    attempt: int
    status: Literal["sent", "failed", "retrying", "broken"]
    http_status: int | None
    error: str | None
    finished_at: datetime


@dataclass(frozen=True)
class Outcome:
    """How one item ended: ``sent``; ``broken`` (permanent 4xx: destination disabled); ``retry_later`` (retryable
    failures exhausted the attempts; item stays pending); ``interrupted`` (shutdown; item stays pending)."""

    result: Literal["sent", "broken", "retry_later", "interrupted"]
    attempts: int
    http_status: int | None = None
    error: str | None = None


class DestinationSender:
    """Sends items to one destination with pacing and the retry ladder. Not thread-safe: one lane owns it.

    For each item:

    1. Pace: wait until ``min_interval_s`` has passed since the previous request to this destination (Slack: about
       one message per second per webhook; PagerDuty: within the routing key's event rate).
    2. Send through the transport with a timeout.
    3. Classify: 2xx delivered; 429 wait ``Retry-After`` (seconds or HTTP date; capped), or backoff if absent; 5xx,
       408, timeout, connection: exponential backoff with full jitter, ``uniform(0, min(cap, base * 2^n))``; any
       other 4xx (400, 403, 404, 410 ...): permanent, no retry, the destination is broken (wrong URL, revoked
       webhook, archived channel, bad key) and a configuration alert is raised.
    4. After ``max_attempts`` retryable failures the item stays pending and the sender reports ``retry_later``: the
       lane waits ``retry_later_s`` and tries the same head item again.

    Every attempt is reported to ``on_attempt`` (the delivery log) with the destination name, the HTTP status and an
    error text scrubbed of the destination's secrets (:func:`scrub`). The clock is monotonic for pacing and backoff,
    wall time for the webhook signature, with an interruptible ``sleep``.
    """

    def __init__(self, destination: Destination, transport: HttpTransport, clock: Clock, *,
                 policy: DeliveryPolicy | None = None, dashboard_url: str = "http://127.0.0.1:8080",
                 rng: random.Random | None = None,
                 on_attempt: Callable[[AttemptRecord], None] | None = None) -> None:
        self.destination = destination
        self.transport = transport
        self.clock = clock
        self.policy = policy or DeliveryPolicy()
        self.dashboard_url = dashboard_url
        self.rng = rng or random.Random()
        self.on_attempt = on_attempt
        self._interval = self.policy.interval_for(destination)
        self._next_allowed = float("-inf")

    def _pace(self) -> bool:
        wait = self._next_allowed - self.clock.monotonic()
        return self.clock.sleep(wait) if wait > 0 else True

    def _record(self, alert: Alert, attempt: int, status: Literal["sent", "failed", "retrying", "broken"],
                http_status: int | None, error: str | None) -> None:
        if self.on_attempt is None:
            return
        self.on_attempt(AttemptRecord(alert.alert_id, self.destination.type, self.destination.name, attempt,
                                      status, http_status, error, self.clock.now()))

    def send(self, alert: Alert, *, delivery_id: str, first_attempt: int = 1) -> Outcome:
        """Deliver ``alert`` (blocks through pacing, Retry-After and backoff waits; returns early on shutdown).
        ``first_attempt`` continues the numbering of an item retried after ``retry_later`` or a restart."""
        secrets = self.destination.secrets()
        attempt = first_attempt - 1
        for round_index in range(1, self.policy.max_attempts + 1):
            attempt += 1
            if not self._pace():
                return Outcome("interrupted", attempt - 1)
            request = build_request(self.destination, alert, dashboard_url=self.dashboard_url,
                                    delivery_id=delivery_id, timestamp=int(self.clock.now().timestamp()))
            self._next_allowed = self.clock.monotonic() + self._interval
            wait: float
            try:
                response = self.transport.post(request, self.policy.timeout_s)
            except TransportError as err:
                error = scrub(str(err), secrets)
                wait = compute_backoff(self.policy.retry, round_index, self.rng)
                self._record(alert, attempt, "retrying", None, error)
                log.warning("alert %s to %s: attempt %d: %s; retrying in %.2fs", alert.alert_id,
                            self.destination.name, attempt, error, wait)
                if round_index == self.policy.max_attempts:
                    return Outcome("retry_later", attempt, None, error)
            else:
                status = response.status
                # Our own words only: a response body could echo the request (and a key in it).
                if 200 <= status < 300:
                    self._record(alert, attempt, "sent", status, None)
                    return Outcome("sent", attempt, status)
                if status == 429:
                    retry_after = parse_retry_after(response.header("Retry-After"), self.clock.now())
                    if retry_after is None:
                        wait = compute_backoff(self.policy.retry, round_index, self.rng)
                    else:
                        wait = min(retry_after, self.policy.max_retry_after_s)
                    error = f"HTTP 429 rate limited; waiting {wait:.2f}s" + (
                        " (Retry-After)" if retry_after is not None else " (backoff)")
                    # Retry-After is a floor for the next request to this destination, whatever item it carries.
                    self._next_allowed = max(self._next_allowed, self.clock.monotonic() + wait)
                    wait = 0.0  # pacing waits it out
                elif status >= 500 or status == 408:
                    wait = compute_backoff(self.policy.retry, round_index, self.rng)
                    error = f"HTTP {status} from destination; retrying in {wait:.2f}s"
                else:
                    error = (f"HTTP {status}: destination refused the request permanently "
                             f"({_permanent_hint(self.destination, status)}); destination disabled")
                    self._record(alert, attempt, "broken", status, error)
                    log.error("alert %s to %s: %s", alert.alert_id, self.destination.name, error)
                    return Outcome("broken", attempt, status, error)
                self._record(alert, attempt, "retrying", status, error)
                log.warning("alert %s to %s: attempt %d: %s", alert.alert_id, self.destination.name, attempt, error)
                if round_index == self.policy.max_attempts:
                    return Outcome("retry_later", attempt, status, error)
            if wait > 0 and not self.clock.sleep(wait):
                return Outcome("interrupted", attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns on its last round


def _permanent_hint(destination: Destination, status: int) -> str:
    if destination.type == "slack" and status in (403, 404, 410):
        return "the webhook was revoked, or its channel archived or deleted: create a new webhook"
    if destination.type == "pagerduty" and status == 400:
        return "PagerDuty rejected the event: check the routing key and the integration type (Events API v2)"
    if status in (401, 403):
        return "not authorised: check the credentials"
    if status in (404, 410):
        return "the URL is gone: check the configured URL"
    return "check the destination's configuration"
