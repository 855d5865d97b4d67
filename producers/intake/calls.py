"""What every intake mapping produces (:class:`Call`, one model call) and how a call becomes a usage event.

Role: pure (no I/O, no clock): the shared value helpers, :class:`Attribution` (where team, project, agent and task
come from) and :func:`build_event`.

Guarantee: a call counts once: ``event_id = uuid5(INTAKE_NAMESPACE, identity)`` (:func:`event_id_for`), so a
retried export and two instrumentors recording the same response id give one id; token conventions are normalised
to the canonical ones (DESIGN §3), each normalisation named in the ``intake.normalised`` tag; a call missing team or
project is accepted as ``unattributed`` and tagged ``intake.unattributed``, never dropped.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "INTAKE_NAMESPACE",
    "UNATTRIBUTED",
    "Attribution",
    "Call",
    "as_count",
    "as_money",
    "as_text",
    "build_event",
    "event_id_for",
    "normalise_provider",
]

#: Namespace of intake event ids (uuid5). Changing it changes every id, so a re-sent export would count twice: don't.
INTAKE_NAMESPACE = uuid.UUID("6f1d1c3e-5a0b-5e7c-9b7e-2d4c1f0a8e51")
UNATTRIBUTED = "unattributed"
_MONEY_QUANTUM = Decimal("1e-12")  # Avro decimal(38, 12)

#: OTel GenAI ``gen_ai.provider.name`` (and older ``gen_ai.system``) values -> the pricing catalogue's provider ids.
_PROVIDERS: Mapping[str, str] = {
    "openai": "openai", "azure.ai.openai": "azure", "az.ai.openai": "azure", "azure.ai.inference": "azure",
    "az.ai.inference": "azure", "anthropic": "anthropic", "aws.bedrock": "aws", "gcp.gemini": "google",
    "gcp.vertex_ai": "google", "gcp.gen_ai": "google", "vertex_ai": "google", "gemini": "google", "google": "google",
    "x_ai": "x-ai", "xai": "x-ai", "deepseek": "deepseek", "mistral_ai": "mistral", "mistralai": "mistral",
    "groq": "groq", "cohere": "cohere", "perplexity": "perplexity", "openrouter": "openrouter",
    "together_ai": "together", "together": "together", "fireworks_ai": "fireworks", "cerebras": "cerebras",
}


def normalise_provider(value: Any) -> str | None:
    """The catalogue provider id for a reported provider name (unknown names pass through, lower-cased)."""
    text = as_text(value)
    if text is None:
        return None
    key = text.strip().lower()
    return _PROVIDERS.get(key, key)


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text or None


def as_count(value: Any) -> int | None:
    """A token count from an attribute: int, an integral float (some SDKs record doubles) or a digit string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 and value == int(value) else None
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def as_money(value: Any) -> Decimal | None:
    """A reported cost as an exact Decimal: strings parse exactly; a float (OTLP double) is read through its
    shortest repr, which is the decimal the reporting tool printed. Negative, NaN or infinite: None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return amount.quantize(_MONEY_QUANTUM)


def event_id_for(identity: str) -> str:
    """The event id of a call identity.

    The identity is the tool's own request id when it has one (``gen_ai.response.id``, Claude Code's
    ``request_id``, LiteLLM's ``id``), prefixed with the provider, else ``span:<trace_id>:<span_id>`` or the log
    record's identity. A retried export (same spans, same request ids) gives the same ids, and the hot path and the
    ledger drop the copy; two instrumentors that wrap the same provider call and both record its response id give
    one id, so the call counts once."""
    return str(uuid.uuid5(INTAKE_NAMESPACE, identity))


@dataclass(frozen=True, slots=True)
class Call:
    """One model call read from telemetry, in canonical token semantics, before attribution."""

    family: str  # the mapping that read it: genai, openclaw, claude_code, codex, gemini_cli, openrouter, litellm
    identity: str  # what the event id derives from (event_id_for)
    occurred_at_ns: int
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    reported_cost: Decimal | None = None
    status: str = "ok"
    latency_ms: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    resource: Mapping[str, Any] = field(default_factory=dict)
    parent_span_id: str = ""
    normalisations: tuple[str, ...] = ()


def _lookup(path: str, call: Call) -> str | None:
    where, _, name = path.partition(":")
    if not name:
        where, name = "attr", path
    if where == "resource":
        return as_text(call.resource.get(name))
    if where == "attr":
        return as_text(call.attributes.get(name))
    if where == "span" and name == "parent":
        return call.parent_span_id or None
    return None


def _first(paths: Sequence[str], call: Call) -> str | None:
    for path in paths:
        value = _lookup(path, call)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Attribution:
    """Where team, project, agent, task, parent task and environment come from: ordered lists of paths,
    ``attr:<name>`` (the span's or record's attribute), ``resource:<name>`` (the resource's) or ``span:parent``
    (the parent span id). The first path that has a value wins; then the token's default team / project. A call
    still missing team or project is accepted with the value ``unattributed`` and tagged ``intake.unattributed``,
    so it shows in ``v_unattributed_spend``."""

    team: tuple[str, ...] = ("attr:team.name", "resource:team.name")
    project: tuple[str, ...] = ("attr:project.name", "resource:project.name")
    agent: tuple[str, ...] = ("attr:gen_ai.agent.id", "attr:gen_ai.agent.name", "resource:gen_ai.agent.id",
                              "resource:service.name")
    task: tuple[str, ...] = ("attr:gen_ai.conversation.id", "attr:session.id", "resource:gen_ai.conversation.id")
    parent_task: tuple[str, ...] = ("span:parent",)
    environment: tuple[str, ...] = ("resource:deployment.environment.name", "resource:deployment.environment")

    def resolve(self, call: Call, *, default_team: str = "", default_project: str = "") -> dict[str, Any]:
        """The attribution fields of the event, and the ``intake.unattributed`` tag when something is missing."""
        team = _first(self.team, call) or default_team or None
        project = _first(self.project, call) or default_project or None
        missing = [name for name, value in (("team", team), ("project", project)) if value is None]
        out: dict[str, Any] = {
            "team": team or UNATTRIBUTED,
            "project": project or UNATTRIBUTED,
            "agent_id": _first(self.agent, call) or UNATTRIBUTED,
            "task_id": _first(self.task, call),
            "parent_task_id": _first(self.parent_task, call),
            "environment": _first(self.environment, call),
        }
        if missing:
            out["unattributed"] = ",".join(missing)
        return out


def build_event(call: Call, attribution: Attribution, *, source: str, default_team: str = "",
                default_project: str = "") -> dict[str, Any]:
    """The usage event (a dict for :meth:`producers.producer.UsageProducer.emit`) of one call."""
    who = attribution.resolve(call, default_team=default_team, default_project=default_project)
    tags = {"intake.family": call.family}
    unattributed = who.pop("unattributed", None)
    if unattributed:
        tags["intake.unattributed"] = unattributed
    if call.normalisations:
        tags["intake.normalised"] = ",".join(call.normalisations)
    for key in ("intake.user", "intake.organization"):  # who is behind a coding agent (Claude Code)
        value = as_text(call.attributes.get(key))
        if value:
            tags[key] = value[:256]
    event: dict[str, Any] = {
        "event_id": event_id_for(call.identity),
        "source": source,
        "provider": call.provider,
        "model": call.model,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "cache_read_tokens": call.cache_read_tokens,
        "cache_write_tokens": call.cache_write_tokens,
        "reasoning_tokens": call.reasoning_tokens,
        "status": call.status,
        "latency_ms": call.latency_ms,
        "reported_cost": call.reported_cost,
        "tags": tags,
        **{k: v for k, v in who.items() if v is not None or k in ("task_id",)},
    }
    if event.get("task_id") is None:
        event.pop("task_id", None)
    if call.occurred_at_ns > 0:  # else the producer stamps its clock's now (a record without a time)
        seconds, nanos = divmod(call.occurred_at_ns, 1_000_000_000)
        event["occurred_at"] = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
    return event
