"""OpenRouter Broadcast traces (OpenRouter settings -> Observability -> OpenTelemetry Collector) -> :class:`Call`.

Role: Broadcast sends, per request, a generation span with GenAI attributes plus OpenRouter metadata under
``trace.metadata.openrouter.*``, and one child span per provider attempt; :func:`select_openrouter_calls` maps the
generations. The call is OpenRouter's: ``provider="openrouter"``, ``model`` the slug that served it, and
``gen_ai.usage.total_cost`` is the bill (``reported_cost``; DESIGN §4 makes OpenRouter's report authoritative).

Guarantee: counted once: provider attempts are not counted, and the identity is the generation's response id (else
the root's span id, never the trace id alone), so an attempt exported alone later maps to the same event id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from producers.intake.calls import Call, as_money, as_text
from producers.intake.genai import map_genai_span
from producers.intake.otlp import SpanView

__all__ = ["is_openrouter_span", "select_openrouter_calls"]

_META = "trace.metadata.openrouter."


def is_openrouter_span(span: SpanView) -> bool:
    service = str(span.resource.get("service.name", "")).lower()
    if service == "openrouter" or span.scope.lower().startswith("openrouter"):
        return True
    return any(k.startswith(_META) for k in span.attributes)


def _to_call(span: SpanView) -> Call | None:
    base = map_genai_span(span)
    if base is None:
        return None
    response_id = as_text(span.attributes.get("gen_ai.response.id"))
    identity = (f"openrouter:response:{response_id}" if response_id
                else f"openrouter:span:{span.trace_id}:{span.span_id}")
    model = as_text(span.attributes.get("gen_ai.response.model")) or base.model
    cost = as_money(span.attributes.get("gen_ai.usage.total_cost"))
    return replace(base, family="openrouter", identity=identity, provider="openrouter", model=model,
                   reported_cost=cost if cost is not None else base.reported_cost)


def select_openrouter_calls(spans: Iterable[SpanView]) -> tuple[list[Call], int]:
    """The calls of OpenRouter spans of one export (the generations: spans without a parent in the export), and
    how many provider-attempt spans were not counted.

    Attributes: ``gen_ai.request.model`` / ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` /
    ``output_tokens``, ``gen_ai.usage.total_cost`` in USD, ``gen_ai.provider.name`` (a display name of the upstream);
    cache and reasoning counts are read with the GenAI mapping's names (OpenAI-style inclusive counts). The identity
    is ``gen_ai.response.id``, which the root and its attempts share, else the root's span id: never the trace id
    alone, because an app that propagates its trace context to OpenRouter puts several generations in one trace."""
    spans = list(spans)
    ids = {(s.trace_id, s.span_id) for s in spans}
    calls: list[Call] = []
    attempts = 0
    for span in spans:
        if span.parent_span_id and (span.trace_id, span.parent_span_id) in ids:
            attempts += 1  # a provider attempt under its generation span
            continue
        call = _to_call(span)
        if call is not None:
            calls.append(call)
    return calls, attempts
