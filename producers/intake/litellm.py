"""LiteLLM proxy's ``generic_api`` logging callback (its ``StandardLoggingPayload``) -> :class:`Call`.

Role: :func:`parse_litellm_body` accepts ``log_format: json_array``, ``ndjson`` or a single object;
:func:`map_litellm_payload` maps one payload (the fields it reads are listed there).

Guarantee: usage in OpenAI's convention (prompt includes cached tokens); a payload whose prompt count is below its
own cache counts is made inclusive (normalisation ``input-excluded-cache``). Counted once by ``id``: LiteLLM
retries a failed batch, and the same id maps to the same event id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from producers.intake.calls import Call, as_count, as_money, as_text, normalise_provider
from schemas.errors import FinopsError

__all__ = ["LiteLLMBodyError", "map_litellm_payload", "parse_litellm_body"]

_PROVIDERS = {"vertex_ai": "google", "vertex_ai_beta": "google", "gemini": "google", "bedrock": "aws",
              "bedrock_converse": "aws", "azure": "azure", "azure_ai": "azure", "text-completion-openai": "openai",
              "mistral": "mistral", "xai": "x-ai", "together_ai": "together", "fireworks_ai": "fireworks"}


class LiteLLMBodyError(FinopsError):
    """The body is not a JSON array, an NDJSON stream or a JSON object of logging payloads (HTTP 400)."""


def parse_litellm_body(body: bytes) -> list[dict[str, Any]]:
    """The payloads of a ``generic_api`` request body (json_array, ndjson or one object)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
        items: list[Any] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as err:
                raise LiteLLMBodyError(f"line {n} is not JSON ({err}); send log_format json_array or ndjson") \
                    from err
    else:
        items = doc if isinstance(doc, list) else [doc]
    if not all(isinstance(item, dict) for item in items):
        raise LiteLLMBodyError("every logging payload must be a JSON object")
    return items


def _dig(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _ns(seconds: Any) -> int | None:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return round(seconds * 1_000_000) * 1000
    return None


def map_litellm_payload(payload: Mapping[str, Any]) -> Call | None:
    """The call of one standard logging payload; None when it has no id or no usage.

    Fields read: ``id`` (the identity: ``litellm:<id>``), ``model``, ``custom_llm_provider`` (catalogue id via
    ``calls.normalise_provider``: ``vertex_ai``/``gemini`` -> google, ``bedrock`` -> aws, ...), ``prompt_tokens`` /
    ``completion_tokens``, the usage details of ``response.usage`` (or ``metadata.usage_object``: OpenAI-style
    ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``, Anthropic-style
    ``cache_read_input_tokens`` / ``cache_creation_input_tokens``), ``response_cost`` (the reported cost),
    ``startTime`` / ``endTime`` (epoch seconds), ``status`` (``failure`` -> ``error``),
    ``metadata.user_api_key_team_alias`` (else ``user_api_key_team_id``) as the team, ``end_user`` (else
    ``metadata.user_api_key_alias``) as the agent, ``request_tags`` (a tag ``project:<name>`` names the project; all
    are kept in ``litellm.request_tags``)."""
    call_id = as_text(payload.get("id"))
    inp = as_count(payload.get("prompt_tokens"))
    out = as_count(payload.get("completion_tokens"))
    if call_id is None or (inp is None and out is None):
        return None
    inp = inp or 0
    out = out or 0
    usage = _dig(payload, "response", "usage") or _dig(payload, "metadata", "usage_object") or {}
    cache_read = (as_count(_dig(usage, "prompt_tokens_details", "cached_tokens"))
                  or as_count(_dig(usage, "cache_read_input_tokens")) or 0)
    cache_write = as_count(_dig(usage, "cache_creation_input_tokens")) or 0
    reasoning = as_count(_dig(usage, "completion_tokens_details", "reasoning_tokens")) or 0
    norms: list[str] = []
    if inp < cache_read + cache_write:
        inp += cache_read + cache_write
        norms.append("input-excluded-cache")
    if out < reasoning:
        out += reasoning
        norms.append("output-excluded-reasoning")
    raw_provider = (as_text(payload.get("custom_llm_provider")) or "unknown").lower()
    provider = _PROVIDERS.get(raw_provider) or normalise_provider(raw_provider) or "unknown"
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    tags = [str(t) for t in payload.get("request_tags") or [] if isinstance(t, str | int)]
    attrs: dict[str, Any] = {"litellm.request_tags": ",".join(tags)}
    team = as_text(metadata.get("user_api_key_team_alias")) or as_text(metadata.get("user_api_key_team_id"))
    if team:
        attrs["team.name"] = team
    project = next((t.split(":", 1)[1] for t in tags if t.startswith("project:") and t.split(":", 1)[1]), None)
    if project:
        attrs["project.name"] = project
    agent = as_text(payload.get("end_user")) or as_text(metadata.get("user_api_key_alias"))
    if agent:
        attrs["gen_ai.agent.id"] = agent
    trace = as_text(payload.get("trace_id"))
    if trace:
        attrs["gen_ai.conversation.id"] = trace
    start, end = _ns(payload.get("startTime")), _ns(payload.get("endTime"))
    latency = (end - start) // 1_000_000 if start and end and end >= start else None
    return Call(
        family="litellm", identity=f"litellm:{call_id}", occurred_at_ns=end or start or 0, provider=provider,
        model=as_text(payload.get("model")) or "unknown", input_tokens=inp, output_tokens=out,
        cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning,
        reported_cost=as_money(payload.get("response_cost")),
        status="error" if str(payload.get("status", "")).lower() == "failure" else "ok", latency_ms=latency,
        attributes=attrs, resource={"service.name": "litellm"}, normalisations=tuple(norms),
    )
