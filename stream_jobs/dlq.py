"""Dead letters of the usage hot path: bad input as data with provenance, and the limit that halts a bad deploy.

Model: getsentry/arroyo ``arroyo/dlq.py`` (``DlqLimit`` / ``DlqLimitState``): an event that cannot be decoded,
validated or priced is *data*, not an exception to swallow. It goes to ``agent.usage.dlq.v1`` unchanged (same key,
the raw value bytes) with headers that say where it came from and why it was refused, so it can be inspected,
fixed and replayed. And because a broken producer deploy would otherwise move its whole traffic into the DLQ
quietly, :class:`BadInputLimiter` stops the job loudly once the share of bad events in a window of events passes a
limit: a human decides, instead of the pipeline "succeeding" on garbage.

Pure module: no Kafka client import (headers are plain ``(str, bytes)`` pairs as confluent-kafka takes and gives
them), no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from schemas.errors import FinopsError

__all__ = [
    "HEADER_ERROR",
    "HEADER_FAILED_AT",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_STAGE",
    "HEADER_TOPIC",
    "MAX_REASON_CHARS",
    "BadInputLimitExceeded",
    "BadInputLimiter",
    "DeadLetter",
    "DeadLetterFormatError",
    "Stage",
]

#: Where the event failed: ``decode`` (framing, unknown schema, Avro body), ``validate`` (usage rules),
#: ``price`` (usage the pricer refuses, e.g. parts larger than their whole); ``sink`` is written by the ClickHouse
#: sinks (a row ClickHouse refused) and only read here.
Stage = Literal["decode", "validate", "price", "sink"]
_STAGES: Final = frozenset({"decode", "validate", "price", "sink"})

# Header names shared with the sinks' dead letters on the same topic (sinks/writer.py KafkaDeadLetterSink, stage
# ``sink``): one topic, one provenance contract. ``error`` and ``failed_at_us`` are the hot path's additions.
HEADER_TOPIC: Final = "original_topic"
HEADER_PARTITION: Final = "original_partition"
HEADER_OFFSET: Final = "original_offset"
HEADER_STAGE: Final = "stage"
HEADER_ERROR: Final = "error"
HEADER_REASON: Final = "reason"
HEADER_FAILED_AT: Final = "failed_at_us"
_HEADERS: Final = frozenset(
    {HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET, HEADER_STAGE, HEADER_ERROR, HEADER_REASON, HEADER_FAILED_AT}
)

#: Reasons are capped so a pathological message (a 1 MB string in a field) cannot make a 1 MB header.
MAX_REASON_CHARS: Final = 4000


class DeadLetterFormatError(FinopsError):
    """A DLQ message lacks a provenance header or carries a malformed one (not written by this module)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused input event: where it was read, why it was refused, and its original key and value.

    ``error`` is the class name of the error (``DecodeError``, ``ValidationFailed``, ``InvalidUsageError`` ...) and
    ``reason`` the message for people (for validation: every broken rule, ``field [rule]: message; ...``).
    ``failed_at_us`` is the worker's wall clock (µs since the epoch) when it was refused.
    """

    topic: str
    partition: int
    offset: int
    stage: Stage
    error: str
    reason: str
    key: bytes | None
    value: bytes | None
    failed_at_us: int

    def headers(self) -> list[tuple[str, bytes]]:
        """The provenance headers of the DLQ message (the value and key are the original ones)."""
        return [
            (HEADER_TOPIC, self.topic.encode()),
            (HEADER_PARTITION, str(self.partition).encode()),
            (HEADER_OFFSET, str(self.offset).encode()),
            (HEADER_STAGE, self.stage.encode()),
            (HEADER_ERROR, self.error.encode()),
            (HEADER_REASON, compute_reason_text(self.reason).encode()),
            (HEADER_FAILED_AT, str(self.failed_at_us).encode()),
        ]

    @classmethod
    def from_message(
        cls, headers: Sequence[tuple[str, bytes | None]] | None, key: bytes | None, value: bytes | None
    ) -> DeadLetter:
        """Read a DLQ message back (tests, tooling, replays).

        Raises:
            DeadLetterFormatError: a provenance header is missing or malformed.
        """
        found: dict[str, str] = {}
        for name, raw in headers or ():
            if name in _HEADERS and raw is not None:
                found[name] = raw.decode("utf-8", "replace")
        missing = [
            name
            for name in (HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET, HEADER_STAGE, HEADER_REASON)
            if name not in found
        ]
        if missing:
            raise DeadLetterFormatError(f"DLQ message lacks provenance header(s) {', '.join(missing)}")
        stage = found[HEADER_STAGE]
        if stage not in _STAGES:
            raise DeadLetterFormatError(f"DLQ header {HEADER_STAGE}={stage!r} is not one of {sorted(_STAGES)}")
        try:
            partition = int(found[HEADER_PARTITION])
            offset = int(found[HEADER_OFFSET])
            failed_at = int(found.get(HEADER_FAILED_AT, "0"))
        except ValueError as err:
            raise DeadLetterFormatError(f"DLQ header is not an integer: {err}") from err
        return cls(
            topic=found[HEADER_TOPIC],
            partition=partition,
            offset=offset,
            stage=stage,  # type: ignore[arg-type]  # checked against _STAGES above
            error=found.get(HEADER_ERROR, ""),
            reason=found[HEADER_REASON],
            key=key,
            value=value,
            failed_at_us=failed_at,
        )


def compute_reason_text(reason: str) -> str:
    """``reason`` capped at :data:`MAX_REASON_CHARS` characters, saying how much was cut."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    cut = len(reason) - MAX_REASON_CHARS
    return f"{reason[:MAX_REASON_CHARS]} ... [{cut} more characters]"


class BadInputLimitExceeded(FinopsError):
    """Too large a share of one partition's recent events was bad: the job stops instead of dead-lettering a whole
    broken deploy. Nothing after the last safe commit is committed, so after the producer is fixed (or the limit is
    raised with ``FINOPS_STREAM_DLQ_MAX_RATIO``) a restart re-reads and re-judges those events."""

    def __init__(self, partition: int, bad: int, seen: int, max_ratio: float, window: int, examples: Iterable[str]):
        self.partition = partition
        self.bad = bad
        self.seen = seen
        self.max_ratio = max_ratio
        self.window = window
        self.examples = list(examples)
        shown = "\n  ".join(self.examples) or "(no reason recorded)"
        super().__init__(
            f"input partition {partition}: {bad} of the last {seen} events were bad (limit: more than "
            f"{max_ratio:.0%} of a window of {window} events); stopping instead of dead-lettering a broken deploy. "
            f"Fix the producer (recent reasons below), or raise FINOPS_STREAM_DLQ_MAX_RATIO if this traffic is "
            f"expected, then restart: events after the last commit are judged again.\n  {shown}"
        )


class _Window:
    __slots__ = ("seen", "bad", "examples")

    def __init__(self) -> None:
        self.seen = 0
        self.bad = 0
        self.examples: list[str] = []


class BadInputLimiter:
    """Counts bad and good events per input partition in tumbling windows of ``window_events`` events and raises
    :class:`BadInputLimitExceeded` when a window holds more than ``max_ratio`` of bad events.

    Judged per partition (as arroyo's ``DlqLimitState``): events are keyed by agent, so a broken producer usually
    owns a few partitions, and a per-partition count sees it even when the fleet-wide share is small. The check is
    ``bad > max_ratio * max(seen, window_events)``: it fires as soon as the window cannot end below the limit any
    more (fail fast), never on the first few events of a window (a handful of bad events at start-up is not a
    deploy), and never at ``max_ratio == 1``.

    Cheap on the hot path: called once per partition per batch with the batch's counts, not per event.
    Not thread-safe (consumer thread only).
    """

    __slots__ = ("max_ratio", "window_events", "_windows")

    def __init__(self, max_ratio: float, window_events: int) -> None:
        """Raises FinopsError unless ``0 < max_ratio <= 1`` and ``window_events >= 1``."""
        if not 0 < max_ratio <= 1:
            raise FinopsError(f"the bad-input ratio limit must be in (0, 1], got {max_ratio}")
        if window_events < 1:
            raise FinopsError(f"the bad-input window must hold at least one event, got {window_events}")
        self.max_ratio = max_ratio
        self.window_events = window_events
        self._windows: dict[int, _Window] = {}

    def observe(self, partition: int, good: int, bad: int, reasons: Sequence[str] = ()) -> None:
        """Add one batch's counts for ``partition`` (``reasons``: a few of the batch's DLQ reasons, for the error).

        Raises:
            BadInputLimitExceeded: the partition's current window holds more than ``max_ratio`` bad events.
        """
        window = self._windows.get(partition)
        if window is None:
            window = self._windows[partition] = _Window()
        window.seen += good + bad
        if bad:
            window.bad += bad
            if len(window.examples) < 5:
                window.examples.extend(reasons[: 5 - len(window.examples)])
            if window.bad > self.max_ratio * max(window.seen, self.window_events):
                raise BadInputLimitExceeded(
                    partition, window.bad, window.seen, self.max_ratio, self.window_events, window.examples
                )
        if window.seen >= self.window_events:
            self._windows[partition] = _Window()

    def forget(self, partition: int) -> None:
        """Drop the counts of a revoked partition (its new owner judges the replay afresh)."""
        self._windows.pop(partition, None)

    def current(self, partition: int) -> tuple[int, int]:
        """``(bad, seen)`` in the partition's current window (a gauge for stats)."""
        window = self._windows.get(partition)
        return (0, 0) if window is None else (window.bad, window.seen)
