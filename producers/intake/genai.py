"""OpenTelemetry GenAI semantic-convention spans (and the instrumentors that write them) -> :class:`Call`.

Role: :func:`map_genai_span` reads the usage of one span, trying the OTel attribute names first and then the ones
instrumentors still write (OpenLLMetry, OpenLIT); :func:`select_call_spans` picks which spans of an export are
calls (agent and tool operations and wrapper spans are not).

Guarantee: a call counts once: nested spans of one call give one call, and two spans carrying the same
``gen_ai.response.id`` map to one event id across exports; every token normalisation applied is named
(``openlit-anthropic-input-excludes-cache``, ``input-excluded-cache``, ``output-excluded-reasoning``). See the
README, "Connect your agents (no code change)".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from producers.intake.calls import Call, as_count, as_money, as_text, normalise_provider
from producers.intake.otlp import SpanView

__all__ = ["AGGREGATE_OPERATIONS", "has_usage", "map_genai_span", "select_call_spans", "span_status"]

AGGREGATE_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})
_CLIENT = 3  # SpanKind CLIENT
_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")
_OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens")
_CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
_CACHE_WRITE = ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens")
_REASONING = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens")


def _count(attrs: Mapping[str, Any], names: Sequence[str]) -> int | None:
    for name in names:
        value = as_count(attrs.get(name))
        if value is not None:
            return value
    return None


def has_usage(attrs: Mapping[str, Any]) -> bool:
    return _count(attrs, _INPUT) is not None or _count(attrs, _OUTPUT) is not None


def _is_openlit(span: SpanView) -> bool:
    return span.scope.lower().startswith("openlit") or str(span.resource.get("telemetry.sdk.name", "")) == "openlit"


def span_status(span: SpanView) -> str:
    """The usage status of a span: ``ok`` unless the span's status is ERROR; ``error.type`` refines it."""
    if span.status_code != 2 and span.attributes.get("error.type") is None:
        return "ok"
    kind = str(span.attributes.get("error.type") or span.status_message or "").lower()
    if "rate" in kind or "429" in kind:
        return "rate_limited"
    if "timeout" in kind or "timed out" in kind:
        return "timeout"
    if "cancel" in kind:
        return "cancelled"
    return "error"


def map_genai_span(span: SpanView) -> Call | None:
    """The call a GenAI span reports, or None when it carries no token usage.

    Attribute names read, first present wins: input ``gen_ai.usage.input_tokens`` (includes cached input),
    ``gen_ai.usage.prompt_tokens`` (OpenLLMetry, older semconv), ``llm.usage.prompt_tokens``; output
    ``gen_ai.usage.output_tokens``, ``gen_ai.usage.completion_tokens``, ``llm.usage.completion_tokens``; cache read
    ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_read_input_tokens``; cache write
    ``gen_ai.usage.cache_creation.input_tokens``, ``gen_ai.usage.cache_creation_input_tokens``; reasoning
    ``gen_ai.usage.reasoning.output_tokens``, ``gen_ai.usage.reasoning_tokens``; provider ``gen_ai.provider.name``,
    deprecated ``gen_ai.system`` (catalogue ids: ``calls.normalise_provider``); model ``gen_ai.response.model``, else
    ``gen_ai.request.model``; request id ``gen_ai.response.id`` (the identity when present); reported cost
    ``gen_ai.usage.cost`` (OpenLIT), kept beside the computed price.

    Normalisations: ``openlit-anthropic-input-excludes-cache`` (OpenLIT writes Anthropic's raw ``input_tokens``,
    which excludes cache reads and writes: added back), ``input-excluded-cache`` (a reporter whose input is below its
    own cache counts used the exclusive convention: added back), ``output-excluded-reasoning`` (likewise for
    reasoning above output)."""
    attrs = span.attributes
    input_tokens = _count(attrs, _INPUT)
    output_tokens = _count(attrs, _OUTPUT)
    if input_tokens is None and output_tokens is None:
        return None
    inp = input_tokens or 0
    out = output_tokens or 0
    cache_read = _count(attrs, _CACHE_READ) or 0
    cache_write = _count(attrs, _CACHE_WRITE) or 0
    reasoning = _count(attrs, _REASONING) or 0
    provider = normalise_provider(attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system")) or "unknown"
    norms: list[str] = []
    if provider == "anthropic" and _is_openlit(span) and (cache_read or cache_write):
        inp += cache_read + cache_write
        norms.append("openlit-anthropic-input-excludes-cache")
    elif inp < cache_read + cache_write:
        inp += cache_read + cache_write
        norms.append("input-excluded-cache")
    if out < reasoning:
        out += reasoning
        norms.append("output-excluded-reasoning")
    model = as_text(attrs.get("gen_ai.response.model")) or as_text(attrs.get("gen_ai.request.model")) or "unknown"
    response_id = as_text(attrs.get("gen_ai.response.id"))
    identity = f"{provider}:response:{response_id}" if response_id else f"span:{span.trace_id}:{span.span_id}"
    finished = span.end_ns or span.start_ns  # occurred_at is when the call finished (the ledger's contract)
    latency = (span.end_ns - span.start_ns) // 1_000_000 if span.end_ns >= span.start_ns > 0 else None
    return Call(
        family="genai", identity=identity, occurred_at_ns=finished, provider=provider, model=model,
        input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
        reasoning_tokens=reasoning, reported_cost=as_money(attrs.get("gen_ai.usage.cost")),
        status=span_status(span), latency_ms=latency, attributes=attrs, resource=span.resource,
        parent_span_id=span.parent_span_id, normalisations=tuple(norms),
    )


def select_call_spans(spans: Iterable[SpanView]) -> tuple[list[SpanView], dict[str, int]]:
    """The spans of one export that are calls, and how many spans with usage were not counted, by reason
    (``agent_total``, ``wrapper``).

    1. Spans whose ``gen_ai.operation.name`` is an agent or tool operation (``invoke_agent``, ``create_agent``,
       ``execute_tool``, ``invoke_workflow``) are not calls: their usage is the total of the calls under them.
       Except a CLIENT-kind ``invoke_agent`` span (semconv: a remote agent service that bills the call itself and
       has no model spans of ours under it): it is a call, and rule 2 still drops it if a span with usage does sit
       under it in the export.
    2. Of nested spans that both carry usage (a framework span around the provider SDK's span: two instrumentors on
       one call), only the innermost is a call. Across exports rule 2 is backed by the identity: both spans
       carrying the same ``gen_ai.response.id`` map to one event id."""
    spans = list(spans)
    candidates = {}
    skipped = {"agent_total": 0, "wrapper": 0}
    for span in spans:
        if not has_usage(span.attributes):
            continue
        operation = str(span.attributes.get("gen_ai.operation.name", ""))
        if operation in AGGREGATE_OPERATIONS and not (operation == "invoke_agent" and span.kind == _CLIENT):
            skipped["agent_total"] += 1
            continue
        candidates[(span.trace_id, span.span_id)] = span
    if len(candidates) > 1:
        parent_of = {(s.trace_id, s.span_id): s.parent_span_id for s in spans}
        wrappers: set[tuple[str, str]] = set()
        for trace_id, span_id in candidates:
            parent = parent_of.get((trace_id, span_id), "")
            seen = 0
            while parent and seen < 256:  # bounded: a malformed export may contain a cycle
                key = (trace_id, parent)
                if key in candidates:
                    wrappers.add(key)
                parent = parent_of.get(key, "")
                seen += 1
        for key in wrappers:
            del candidates[key]
        skipped["wrapper"] = len(wrappers)
    return list(candidates.values()), {k: v for k, v in skipped.items() if v}
