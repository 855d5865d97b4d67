"""DestinationSender with an injected clock and transport: pacing, Retry-After, backoff with jitter, broken
destinations, scrubbed errors; and the SQLite outbox: idempotence, cooldown, order, restart."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from alerting.channels import Destination
from alerting.delivery import AttemptRecord, DeliveryPolicy, DestinationSender
from alerting.outbox import Outbox
from finops.http import HttpRequest, HttpResponse, TransportError
from finops.retry import RetryPolicy, compute_backoff, parse_retry_after
from schemas.models import Alert, load_example

pytestmark = pytest.mark.unit

SLACK_URL = "https://hooks.slack.example/services/T000/B000/SECRETPATH"
START = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return START + timedelta(seconds=self.t)

    def sleep(self, seconds: float) -> bool:
        self.t += max(0.0, seconds)
        return True


class FakeTransport:
    """Answers from a script (HttpResponse or an exception) and records when each request was made."""

    def __init__(self, clock: FakeClock, script: list[HttpResponse | Exception]) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[tuple[float, HttpRequest]] = []

    def post(self, request: HttpRequest, timeout: float) -> HttpResponse:
        self.calls.append((self.clock.t, request))
        answer = self.script.pop(0) if self.script else HttpResponse(200)
        if isinstance(answer, Exception):
            self.clock.t += timeout if isinstance(answer, TransportError) and answer.timeout else 0
            raise answer
        return answer


def _alert(n: int = 1, **over: object) -> Alert:
    base = load_example("alert.json")
    assert isinstance(base, Alert)
    return base.model_copy(update={"alert_id": f"a{n}", **over})


def _sender(script: list[HttpResponse | Exception], *, kind: str = "slack",
            policy: DeliveryPolicy | None = None) -> tuple[DestinationSender, FakeTransport, list[AttemptRecord]]:
    clock = FakeClock()
    transport = FakeTransport(clock, script)
    records: list[AttemptRecord] = []
    if kind == "pagerduty":
        dest = Destination("pd", "pagerduty", SecretStr("https://pd.example/v2/enqueue"),
                           routing_key=SecretStr("PDKEYSECRET"))
    else:
        dest = Destination("slack-finops", "slack", SecretStr(SLACK_URL))
    sender = DestinationSender(dest, transport, clock, policy=policy or DeliveryPolicy(timeout_s=2.0),
                               rng=random.Random(7), on_attempt=records.append)
    return sender, transport, records


def test_slack_is_paced_one_message_per_second() -> None:
    sender, transport, _ = _sender([])
    for n in range(3):
        assert sender.send(_alert(n), delivery_id=f"a{n}").result == "sent"
    times = [t for t, _ in transport.calls]
    assert times == [0.0, 1.0, 2.0]


def test_pagerduty_paced_within_rate() -> None:
    sender, transport, _ = _sender([], kind="pagerduty")
    for n in range(3):
        sender.send(_alert(n), delivery_id=f"a{n}")
    assert [t for t, _ in transport.calls] == [0.0, 0.5, 1.0]


def test_429_retry_after_seconds_is_honoured() -> None:
    sender, transport, records = _sender([HttpResponse(429, {"Retry-After": "7"}), HttpResponse(200)])
    outcome = sender.send(_alert(), delivery_id="a1")
    assert outcome.result == "sent" and outcome.attempts == 2
    assert transport.calls[1][0] - transport.calls[0][0] == pytest.approx(7.0)
    assert [(r.attempt, r.status, r.http_status) for r in records] == [(1, "retrying", 429), (2, "sent", 200)]


def test_429_retry_after_http_date_and_cap() -> None:
    now = START
    assert parse_retry_after("Fri, 14 Mar 2025 09:00:30 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    policy = DeliveryPolicy(max_retry_after_s=5.0)
    sender, transport, _ = _sender([HttpResponse(429, {"Retry-After": "86400"}), HttpResponse(200)], policy=policy)
    sender.send(_alert(), delivery_id="a1")
    assert transport.calls[1][0] - transport.calls[0][0] == pytest.approx(5.0)


def test_5xx_and_timeouts_back_off_exponentially_with_jitter_then_succeed() -> None:
    policy = DeliveryPolicy(timeout_s=2.0, backoff_base_s=1.0, backoff_cap_s=8.0)
    script: list[HttpResponse | Exception] = [HttpResponse(500), TransportError("timed out", timeout=True),
                                              HttpResponse(503), HttpResponse(502), HttpResponse(200)]
    sender, transport, records = _sender(script, policy=policy)
    outcome = sender.send(_alert(), delivery_id="a1")
    assert outcome.result == "sent" and outcome.attempts == 5
    gaps = [b[0] - a[0] for a, b in zip(transport.calls, transport.calls[1:], strict=False)]
    # each gap = pacing (1 s minimum interval) or the jittered backoff (+ the 2 s timeout for the hung attempt)
    ceilings = [1.0, 2.0 + 2.0, 4.0, 8.0]
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert 0.99 <= gap <= max(ceiling, 1.0) + 1e-9
    assert [r.http_status for r in records] == [500, None, 503, 502, 200]
    assert records[1].error == "timed out"


def test_full_jitter_stays_within_exponential_ceiling() -> None:
    rng = random.Random(1)
    for retry in range(1, 10):
        for _ in range(50):
            assert 0.0 <= compute_backoff(RetryPolicy(0.5, 10.0), retry, rng) <= min(10.0, 0.5 * 2 ** (retry - 1))


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_permanent_4xx_is_not_retried_and_marks_broken(status: int) -> None:
    sender, transport, records = _sender([HttpResponse(status, body=b"channel_is_archived " + SLACK_URL.encode())])
    outcome = sender.send(_alert(), delivery_id="a1")
    assert outcome.result == "broken" and outcome.http_status == status
    assert len(transport.calls) == 1
    assert records[-1].status == "broken"
    assert "SECRETPATH" not in (outcome.error or "") and "SECRETPATH" not in (records[-1].error or "")


def test_exhausted_attempts_leave_item_for_later() -> None:
    policy = DeliveryPolicy(max_attempts=3, backoff_base_s=0.1)
    sender, transport, _ = _sender([HttpResponse(500)] * 3, policy=policy)
    outcome = sender.send(_alert(), delivery_id="a1", first_attempt=4)
    assert outcome.result == "retry_later" and outcome.attempts == 6
    assert len(transport.calls) == 3


def test_transport_errors_are_scrubbed_of_secrets() -> None:
    err = TransportError(f"connection failed: refused {SLACK_URL}")
    sender, _, records = _sender([err, HttpResponse(200)])
    sender.send(_alert(), delivery_id="a1")
    assert records[0].error is not None and "SECRETPATH" not in records[0].error and "****" in records[0].error
    assert "hooks.slack.example" not in repr(records[0])


# ---------------------------------------------------------------------------------------------------------- outbox


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def test_outbox_is_idempotent_and_ordered(outbox: Outbox) -> None:
    alerts = [_alert(n, dedup_key=f"k{n}") for n in range(3)]
    first = outbox.enqueue([(a, ["slack", "pd"]) for a in alerts], cooldown_s=0)
    assert [r.status for r in first] == ["pending"] * 6
    again = outbox.enqueue([(alerts[1], ["slack"])], cooldown_s=0)
    assert again[0].status == "duplicate"
    head = outbox.next_pending("slack")
    assert head is not None and head.alert_id == "a0" and head.delivery_id == "a0:slack"
    assert head.alert() == alerts[0]
    outbox.mark_sent(head.seq, 1)
    nxt = outbox.next_pending("slack")
    assert nxt is not None and nxt.alert_id == "a1"


def test_outbox_survives_restart_without_resending(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    box.enqueue([(_alert(1, dedup_key="k1"), ["slack"]), (_alert(2, dedup_key="k2"), ["slack"])], cooldown_s=0)
    head = box.next_pending("slack")
    assert head is not None
    box.mark_sent(head.seq, 1)
    box.close()
    reopened = Outbox(path)
    try:
        # the same alerts consumed again after a crash (offset not committed) change nothing
        again = reopened.enqueue([(_alert(1, dedup_key="k1"), ["slack"]), (_alert(2, dedup_key="k2"), ["slack"])],
                                 cooldown_s=0)
        assert [r.status for r in again] == ["duplicate", "duplicate"]
        head = reopened.next_pending("slack")
        assert head is not None and head.alert_id == "a2"  # a1 was delivered: never picked again
        assert [i.status for i in reopened.items("slack")] == ["sent", "pending"]
    finally:
        reopened.close()


def test_outbox_cooldown_per_key_and_resolve_needs_open_trigger(outbox: Outbox) -> None:
    t0 = START

    def at(n: int, seconds: int, state: str = "trigger") -> Alert:
        return _alert(n, dedup_key="k", state=state, occurred_at=t0 + timedelta(seconds=seconds))

    results = outbox.enqueue([
        (_alert(0, dedup_key="never", state="resolve"), ["slack"]),  # nothing open: skipped
        (at(1, 0), ["slack"]),
        (at(2, 60), ["slack"]),  # within the 300 s cooldown: skipped
        (at(3, 120, "resolve"), ["slack"]),
        (at(4, 130), ["slack"]),  # after a resolve: the key is new again
        (at(5, 500), ["slack"]),  # cooldown passed since a4? no: 370 s >= 300 s -> sent
    ], cooldown_s=300)
    assert [r.status for r in results] == ["skipped", "pending", "skipped", "pending", "pending", "pending"]
    assert results[0].reason and "without an open trigger" in results[0].reason
    assert results[2].reason and results[2].reason.startswith("cooldown")


def test_outbox_broken_flag_clears_when_secret_rotates(outbox: Outbox) -> None:
    outbox.sync_destinations({"slack": "fp1"})
    outbox.mark_broken("slack", "fp1", "HTTP 410")
    assert outbox.sync_destinations({"slack": "fp1"}) == ["slack"]
    assert outbox.sync_destinations({"slack": "fp2"}) == []
