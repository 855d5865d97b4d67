"""Dead letters (provenance headers) and the bad-input limiter that halts a broken deploy."""

from __future__ import annotations

import pytest

from schemas.errors import FinopsError
from stream_jobs.dlq import (
    HEADER_REASON,
    MAX_REASON_CHARS,
    BadInputLimiter,
    BadInputLimitExceeded,
    DeadLetter,
    DeadLetterFormatError,
)

pytestmark = pytest.mark.unit


def letter(**overrides: object) -> DeadLetter:
    values: dict[str, object] = {
        "topic": "agent.usage.v1", "partition": 4, "offset": 123456789, "stage": "validate",
        "error": "ValidationFailed", "reason": "input_tokens [non_negative]: input_tokens (-1) must be >= 0",
        "key": b"agent-7", "value": b"\xc3\x01raw", "failed_at_us": 1_748_858_400_000_000,
    }  # fmt: skip
    values.update(overrides)
    return DeadLetter(**values)  # type: ignore[arg-type]


def test_headers_carry_provenance_and_read_back() -> None:
    original = letter()
    headers = original.headers()
    assert dict(headers)["original_topic"] == b"agent.usage.v1"
    assert dict(headers)["original_partition"] == b"4"
    assert dict(headers)["original_offset"] == b"123456789"
    assert DeadLetter.from_message(headers, original.key, original.value) == original


def test_a_huge_reason_is_capped_and_says_so() -> None:
    headers = dict(letter(reason="x" * (MAX_REASON_CHARS + 500)).headers())
    reason = headers[HEADER_REASON].decode()
    assert reason.startswith("x" * MAX_REASON_CHARS) and reason.endswith("[500 more characters]")


def test_missing_or_malformed_headers_are_refused() -> None:
    headers = letter().headers()
    with pytest.raises(DeadLetterFormatError, match="original_offset"):
        DeadLetter.from_message([h for h in headers if h[0] != "original_offset"], None, None)
    with pytest.raises(DeadLetterFormatError, match="not an integer"):
        DeadLetter.from_message([(k, b"four" if k == "original_partition" else v) for k, v in headers], None, None)
    with pytest.raises(DeadLetterFormatError, match="stage"):
        DeadLetter.from_message([(k, b"bogus" if k == "stage" else v) for k, v in headers], None, None)
    with pytest.raises(DeadLetterFormatError):
        DeadLetter.from_message(None, None, None)


def test_limiter_trips_once_the_window_cannot_end_below_the_limit() -> None:
    limiter = BadInputLimiter(max_ratio=0.5, window_events=100)
    limiter.observe(0, good=0, bad=50, reasons=["garbage"])  # 50 of at least 100: not above half yet
    with pytest.raises(BadInputLimitExceeded) as raised:
        limiter.observe(0, good=0, bad=1, reasons=["more garbage"])
    err = raised.value
    assert (err.partition, err.bad, err.seen) == (0, 51, 51)
    assert "garbage" in str(err) and "FINOPS_STREAM_DLQ_MAX_RATIO" in str(err)
    assert isinstance(err, FinopsError)


def test_limiter_judges_each_partition_and_each_window_alone() -> None:
    limiter = BadInputLimiter(max_ratio=0.1, window_events=100)
    for _ in range(20):  # 10 bad in every window of 100: exactly at the limit, never above
        limiter.observe(0, good=90, bad=10)
    limiter.observe(1, good=0, bad=10)  # another partition starts its own window
    assert limiter.current(1) == (10, 10)
    limiter.forget(1)
    assert limiter.current(1) == (0, 0)
    with pytest.raises(BadInputLimitExceeded):
        limiter.observe(0, good=80, bad=11)


def test_limiter_at_ratio_one_never_trips() -> None:
    limiter = BadInputLimiter(max_ratio=1.0, window_events=10)
    for _ in range(5):
        limiter.observe(3, good=0, bad=1000)


@pytest.mark.parametrize(("ratio", "window"), [(0.0, 10), (1.5, 10), (0.5, 0)])
def test_limiter_refuses_nonsense_limits(ratio: float, window: int) -> None:
    with pytest.raises(FinopsError):
        BadInputLimiter(ratio, window)


def test_reads_the_sinks_dead_letters_on_the_same_topic() -> None:
    # What sinks/writer.py KafkaDeadLetterSink writes (no error / failed_at headers).
    headers = [("original_topic", b"agent.usage.priced.v1"), ("original_partition", b"2"),
               ("original_offset", b"77"), ("reason", b"Decimal out of range"), ("stage", b"sink")]  # fmt: skip
    letter = DeadLetter.from_message(headers, b"k", b"v")
    assert (letter.topic, letter.partition, letter.offset, letter.stage, letter.error) == (
        "agent.usage.priced.v1", 2, 77, "sink", ""
    )  # fmt: skip
