"""Coding-agent CLIs' OTLP log events -> :class:`Call`: Codex CLI and Gemini CLI (Claude Code has its own module).

Role: :func:`map_codex_log` reads Codex's ``codex.sse_event`` / ``response.completed`` records (provider
``openai``), :func:`map_gemini_cli_log` Gemini CLI's ``gemini_cli.api_response`` records (provider ``google``);
each documents the fields it reads and how they map onto the canonical counts.

Guarantee: counted once: neither tool sends a provider request id in these events, so the identity is a hash of
the record's own content (tool, session/conversation, prompt id, timestamp, counts, model) and a re-sent record
maps to the same id. Both tools' metrics (token and cost counters) describe the same requests and are never counted.
"""

from __future__ import annotations

import hashlib

from producers.intake.calls import Call, as_count, as_text
from producers.intake.otlp import LogView

__all__ = ["map_codex_log", "map_gemini_cli_log"]


def _identity(tool: str, record: LogView, *keys: str) -> str:
    parts = (tool, record.time_ns, *(repr(record.attributes.get(k)) for k in keys))
    return f"{tool}:" + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _name(record: LogView) -> str:
    return record.event_name or (record.body if isinstance(record.body, str) else "")


def map_codex_log(record: LogView) -> Call | None:
    """The call of a Codex ``codex.sse_event`` / ``response.completed`` record, else None.

    Codex CLI (``[otel]`` in ``~/.codex/config.toml``): the ``response.completed`` event carries the request's
    usage: ``input_token_count`` (OpenAI: includes cached input), ``cached_token_count``, ``output_token_count``
    (includes reasoning), ``reasoning_token_count``, plus ``model``, ``conversation.id`` (the task) and
    ``duration_ms``."""
    a = record.attributes
    if _name(record) != "codex.sse_event" or str(a.get("event.kind", "")) != "response.completed":
        return None
    inp = as_count(a.get("input_token_count")) or 0
    cached = as_count(a.get("cached_token_count")) or 0
    out = as_count(a.get("output_token_count")) or 0
    reasoning = as_count(a.get("reasoning_token_count")) or 0
    attrs = dict(a)
    conversation = as_text(a.get("conversation.id"))
    if conversation:
        attrs.setdefault("gen_ai.conversation.id", conversation)
    return Call(
        family="codex", identity=_identity("codex", record, "conversation.id", "event.timestamp", "model",
                                           "input_token_count", "cached_token_count", "output_token_count",
                                           "reasoning_token_count"),
        occurred_at_ns=record.time_ns, provider="openai", model=as_text(a.get("model")) or "unknown",
        input_tokens=max(inp, cached), output_tokens=max(out, reasoning), cache_read_tokens=cached,
        reasoning_tokens=reasoning, latency_ms=as_count(a.get("duration_ms")), attributes=attrs,
        resource=record.resource,
    )


def map_gemini_cli_log(record: LogView) -> Call | None:
    """The call of a ``gemini_cli.api_response`` record, else None.

    Gemini CLI (``telemetry`` in ``.gemini/settings.json``): ``model``, ``input_token_count`` (Gemini's prompt count:
    includes cached content), ``cached_content_token_count``, ``output_token_count`` (candidates only),
    ``thoughts_token_count``, ``duration_ms``, ``prompt_id``, ``session.id``. Gemini bills thoughts as output, so
    canonical output = output + thoughts and reasoning = thoughts (normalisation
    ``gemini-thoughts-outside-output``)."""
    if _name(record) != "gemini_cli.api_response":
        return None
    a = record.attributes
    inp = as_count(a.get("input_token_count")) or 0
    cached = as_count(a.get("cached_content_token_count")) or 0
    out = as_count(a.get("output_token_count")) or 0
    thoughts = as_count(a.get("thoughts_token_count")) or 0
    status_code = as_count(a.get("status_code"))
    status = "ok" if status_code in (None, 200) else ("rate_limited" if status_code == 429 else "error")
    return Call(
        family="gemini_cli", identity=_identity("gemini_cli", record, "session.id", "prompt_id", "event.timestamp",
                                                "model", "input_token_count", "output_token_count",
                                                "thoughts_token_count"),
        occurred_at_ns=record.time_ns, provider="google", model=as_text(a.get("model")) or "unknown",
        input_tokens=max(inp, cached), output_tokens=out + thoughts, cache_read_tokens=cached,
        reasoning_tokens=thoughts, status=status, latency_ms=as_count(a.get("duration_ms")), attributes=dict(a),
        resource=record.resource, normalisations=("gemini-thoughts-outside-output",) if thoughts else (),
    )
