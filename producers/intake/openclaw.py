"""OpenClaw (``@openclaw/diagnostics-otel``, ``diagnostics.otel`` in ``openclaw.json``) -> :class:`Call`.

OpenClaw exports one ``openclaw.model.usage`` span per model call, with ``openclaw.provider``, ``openclaw.model``,
``openclaw.sessionKey`` / ``openclaw.sessionId`` (the task), ``openclaw.channel`` and the counts
``openclaw.tokens.input|output|cache_read|cache_write``. OpenClaw's normalised usage keeps ``input`` *exclusive*
of the cache parts (as Anthropic reports it), so canonical input is their sum: normalisation
``openclaw-input-excludes-cache``. ``openclaw.cost.usd`` (an estimate from the user's pricing config) is kept as
the reported cost when present.

Counted once: only ``openclaw.model.usage`` spans are calls. Other OpenClaw spans that carry usage (a run's
totals, which newer versions also write as ``gen_ai.usage.*``) are agent totals and never counted, and the
``gen_ai.usage.*`` copies on the model-usage span itself are not read a second time by the GenAI mapping.
"""

from __future__ import annotations

from producers.intake.calls import Call, as_count, as_money, as_text, normalise_provider
from producers.intake.genai import span_status
from producers.intake.otlp import SpanView

__all__ = ["MODEL_USAGE_SPAN", "is_openclaw_span", "map_openclaw_span"]

MODEL_USAGE_SPAN = "openclaw.model.usage"


def is_openclaw_span(span: SpanView) -> bool:
    return span.name.startswith("openclaw.") or any(k.startswith("openclaw.") for k in span.attributes)


def map_openclaw_span(span: SpanView) -> Call | None:
    """The call of an ``openclaw.model.usage`` span; None for any other span (run totals are not calls)."""
    if span.name != MODEL_USAGE_SPAN:
        return None
    a = span.attributes
    raw_input = as_count(a.get("openclaw.tokens.input")) or 0
    cache_read = as_count(a.get("openclaw.tokens.cache_read")) or 0
    cache_write = as_count(a.get("openclaw.tokens.cache_write")) or 0
    output = as_count(a.get("openclaw.tokens.output")) or 0
    attrs = dict(a)
    session = as_text(a.get("openclaw.sessionKey")) or as_text(a.get("openclaw.sessionId"))
    if session:
        attrs.setdefault("gen_ai.conversation.id", session)
    latency = (span.end_ns - span.start_ns) // 1_000_000 if span.end_ns >= span.start_ns > 0 else None
    return Call(
        family="openclaw", identity=f"span:{span.trace_id}:{span.span_id}", occurred_at_ns=span.end_ns or span.start_ns,
        provider=normalise_provider(a.get("openclaw.provider")) or "unknown",
        model=as_text(a.get("openclaw.model")) or "unknown", input_tokens=raw_input + cache_read + cache_write,
        output_tokens=output, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
        reported_cost=as_money(a.get("openclaw.cost.usd")), status=span_status(span), latency_ms=latency,
        attributes=attrs, resource=span.resource, parent_span_id=span.parent_span_id,
        normalisations=("openclaw-input-excludes-cache",) if (cache_read or cache_write) else (),
    )
