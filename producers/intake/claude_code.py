"""Claude Code's ``claude_code.api_request`` log events (OTLP logs, ``OTEL_LOGS_EXPORTER=otlp``) -> :class:`Call`.

Role: :func:`map_claude_code_log` maps one event per model request (the attributes it reads are listed there),
with the named normalisation ``anthropic-input-excludes-cache``: Claude Code reports Anthropic's usage fields, whose
``input_tokens`` excludes cache reads and writes, so canonical input is their sum.

Guarantee: counted once: the identity is ``anthropic:request:<request_id>`` (without one, the session, prompt id,
timestamp and counts, so a re-sent record maps to the same id); Claude Code's metrics describe the same requests
and are never counted.
"""

from __future__ import annotations

import hashlib

from producers.intake.calls import Call, as_count, as_money, as_text
from producers.intake.otlp import LogView

__all__ = ["is_api_request", "map_claude_code_log"]

_EVENT = "claude_code.api_request"


def is_api_request(record: LogView) -> bool:
    if record.event_name == _EVENT or record.body == _EVENT:
        return True
    return record.event_name == "api_request" and record.scope.startswith("com.anthropic.claude_code")


def map_claude_code_log(record: LogView) -> Call | None:
    """The call of one ``claude_code.api_request`` record, or None for any other record.

    Attributes read: ``model``, ``input_tokens``, ``output_tokens``, ``cache_read_tokens``,
    ``cache_creation_tokens``, ``cost_usd``, ``duration_ms``, ``request_id``, ``session.id`` (the task),
    ``organization.id`` (the ``intake.organization`` tag), ``user.account_uuid`` / ``user.email`` (the
    ``intake.user`` tag) and the resource attributes set with ``OTEL_RESOURCE_ATTRIBUTES`` (``team.name``,
    ``project.name``...). Never counted: ``claude_code.cost.usage`` and ``claude_code.token.usage`` metrics."""
    if not is_api_request(record):
        return None
    attrs = record.attributes
    raw_input = as_count(attrs.get("input_tokens")) or 0
    cache_read = as_count(attrs.get("cache_read_tokens")) or 0
    cache_write = as_count(attrs.get("cache_creation_tokens")) or 0
    output = as_count(attrs.get("output_tokens")) or 0
    model = as_text(attrs.get("model")) or "unknown"
    request_id = as_text(attrs.get("request_id"))
    if request_id:
        identity = f"anthropic:request:{request_id}"
    else:
        parts = (attrs.get("session.id"), attrs.get("prompt.id"), attrs.get("event.timestamp"), record.time_ns,
                 model, raw_input, cache_read, cache_write, output)
        identity = "claude_code:" + hashlib.sha256(repr(parts).encode()).hexdigest()
    user = as_text(attrs.get("user.account_uuid")) or as_text(attrs.get("user.email"))
    merged = dict(attrs)
    if user:
        merged.setdefault("intake.user", user)
    organization = as_text(attrs.get("organization.id")) or as_text(record.resource.get("organization.id"))
    if organization:
        merged.setdefault("intake.organization", organization)
    return Call(
        family="claude_code", identity=identity, occurred_at_ns=record.time_ns, provider="anthropic", model=model,
        input_tokens=raw_input + cache_read + cache_write, output_tokens=output, cache_read_tokens=cache_read,
        cache_write_tokens=cache_write, reported_cost=as_money(attrs.get("cost_usd")),
        latency_ms=as_count(attrs.get("duration_ms")), attributes=merged, resource=record.resource,
        normalisations=("anthropic-input-excludes-cache",) if (cache_read or cache_write) else (),
    )
