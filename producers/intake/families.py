"""Which mapping reads which telemetry, and the counting-once rules across one export (pure).

Spans, by family (first match): OpenClaw spans (:mod:`.openclaw`: only ``openclaw.model.usage`` counts), OpenRouter
Broadcast spans (:mod:`.openrouter`: the root generation, not its provider attempts), then OpenTelemetry GenAI spans
(:mod:`.genai`, with its agent-total and wrapper rules). A span is read by one family only.
Log records: Claude Code's ``claude_code.api_request`` (:mod:`.claude_code`), Codex CLI's ``codex.sse_event``
``response.completed`` and Gemini CLI's ``gemini_cli.api_response`` (:mod:`.cli_agents`).
Metrics are never counted (they aggregate the same requests the events and spans report); the receiver decodes
them, adds their token totals to the reconciliation counters (:mod:`.reconcile`) and answers success.

Within one export, calls with the same identity are one call (the first is kept): a tool that sends a span and a
log record for one request, or two instrumentors recording one response id, count once here and, across exports,
by their shared event id downstream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from producers.intake.calls import Call
from producers.intake.claude_code import map_claude_code_log
from producers.intake.cli_agents import map_codex_log, map_gemini_cli_log
from producers.intake.genai import has_usage, map_genai_span, select_call_spans
from producers.intake.openclaw import is_openclaw_span, map_openclaw_span
from producers.intake.openrouter import is_openrouter_span, select_openrouter_calls
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


def _bump(counts: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        counts[reason] = counts.get(reason, 0) + n


def calls_from_spans(spans: Iterable[SpanView]) -> Mapped:
    openclaw: list[SpanView] = []
    openrouter: list[SpanView] = []
    genai: list[SpanView] = []
    for span in spans:
        if is_openclaw_span(span):
            openclaw.append(span)
        elif is_openrouter_span(span):
            openrouter.append(span)
        else:
            genai.append(span)
    selected, skipped = select_call_spans(genai)
    out = Mapped(not_counted=dict(skipped))
    seen: set[str] = set()
    for span in openclaw:
        call = map_openclaw_span(span)
        if call is not None:
            out.add(call, seen)
        elif has_usage(span.attributes):
            _bump(out.not_counted, "agent_total")
    routed, attempts = select_openrouter_calls(openrouter)
    _bump(out.not_counted, "provider_attempt", attempts)
    for call in routed:
        out.add(call, seen)
    for span in selected:
        call = map_genai_span(span)
        if call is not None:
            out.add(call, seen)
    return out


_LOG_MAPPINGS = (map_claude_code_log, map_codex_log, map_gemini_cli_log)


def calls_from_logs(records: Iterable[LogView]) -> Mapped:
    out = Mapped()
    seen: set[str] = set()
    for record in records:
        for mapping in _LOG_MAPPINGS:
            call = mapping(record)
            if call is not None:
                out.add(call, seen)
                break
    return out
