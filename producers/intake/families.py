"""Which mapping reads which telemetry, and the counting-once rules across one export (pure).

Spans: OpenTelemetry GenAI spans (:mod:`producers.intake.genai`, with its agent-total and wrapper rules).
Log records: Claude Code's ``claude_code.api_request`` (:mod:`producers.intake.claude_code`).
Metrics are never counted (they aggregate the same requests the events and spans report); the receiver decodes
them, counts their data points and answers success, so exporters do not retry them.

Within one export, calls with the same identity are one call (the first is kept): a tool that sends a span and a
log record for one request, or two instrumentors recording one response id, count once here and, across exports,
by their shared event id downstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from producers.intake.calls import Call
from producers.intake.claude_code import map_claude_code_log
from producers.intake.genai import map_genai_span, select_call_spans
from producers.intake.otlp import LogView, SpanView

__all__ = ["Mapped", "calls_from_logs", "calls_from_spans"]


@dataclass
class Mapped:
    """The calls of one export, and the items with usage that were deliberately not counted, by reason."""

    calls: list[Call] = field(default_factory=list)
    not_counted: dict[str, int] = field(default_factory=dict)

    def add(self, call: Call, seen: set[str]) -> None:
        if call.identity in seen:
            self.not_counted["same_identity"] = self.not_counted.get("same_identity", 0) + 1
            return
        seen.add(call.identity)
        self.calls.append(call)


def calls_from_spans(spans: Iterable[SpanView]) -> Mapped:
    selected, skipped = select_call_spans(spans)
    out = Mapped(not_counted=dict(skipped))
    seen: set[str] = set()
    for span in selected:
        call = map_genai_span(span)
        if call is not None:
            out.add(call, seen)
    return out


def calls_from_logs(records: Iterable[LogView]) -> Mapped:
    out = Mapped()
    seen: set[str] = set()
    for record in records:
        call = map_claude_code_log(record)
        if call is not None:
            out.add(call, seen)
    return out
