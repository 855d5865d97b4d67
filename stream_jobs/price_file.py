"""``finops price --file EVENTS.jsonl``: price a file of calls offline (no broker, no ClickHouse), for audits and
backfills.

Role: each input line is a JSON usage event as ``finops emit --json`` takes it, or a provider response
(``adapter``, ``response``, optional ``provider``, ``reported_cost`` and attribution fields; see
:func:`compute_line_event`). Responses go through the same adapters as the SDK (``finops.adapters``), events
through the same :class:`~finops.pricing.engine.Pricer` as the stream job.

Guarantee: one JSON object is written per input line, in order; a line that cannot be read or priced gives
``{"line": N, "error": "..."}`` and makes the exit status 2. See the README, "Pricing".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from finops.pricing.engine import Pricer
from finops.adapters import (
    ProviderUsage,
    normalisation_tags,
    to_usage_fields,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai_chat,
    usage_from_openai_responses,
    usage_from_openrouter,
)
from schemas.errors import FinopsError

__all__ = ["ADAPTERS", "FileSummary", "LineError", "compute_line_event", "price_lines"]

ADAPTERS: tuple[str, ...] = ("openrouter", "openai_chat", "openai_responses", "anthropic", "gemini")
_ATTRIBUTION = ("event_id", "source", "agent_id", "team", "project", "task_id", "tags")
_INT_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
    "web_search_calls", "requests",
)  # fmt: skip
# Where each adapter's body keeps its usage object and its model, to wrap a bare usage object.
_USAGE_KEY = {"gemini": ("usageMetadata", "modelVersion")}


class LineError(FinopsError):
    """One input line cannot be read or priced; the message says why."""


def _when(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1_000_000, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # Python 3.11 reads a trailing Z
        except ValueError as err:
            raise LineError(f"occurred_at {value!r} is not ISO 8601 (e.g. 2025-06-02T09:00:00Z)") from err
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise LineError("occurred_at must be an ISO 8601 string or microseconds since the epoch")


def _money(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, (bool, float)):
        raise LineError(f"{name} must be a decimal string, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as err:
        raise LineError(f"{name} {value!r} is not a decimal number") from err
    if not amount.is_finite() or amount < 0:
        raise LineError(f"{name} must be a finite non-negative amount, got {value!r}")
    return amount


def _adapt(data: Mapping[str, Any], reasoning: Mapping[str, str]) -> ProviderUsage:
    adapter = str(data["adapter"]).strip().lower().replace("-", "_")
    if adapter not in ADAPTERS:
        raise LineError(f"adapter {data['adapter']!r} is not one of {', '.join(ADAPTERS)}")
    response = data.get("response")
    if not isinstance(response, Mapping):
        raise LineError("response must be the provider's response body (or its usage object) as a JSON object")
    usage_key, model_key = _USAGE_KEY.get(adapter, ("usage", "model"))
    if usage_key not in response and (usage_key == "usage" or "usage_metadata" not in response):
        # A bare usage object: wrap it the way the body carries it, with the line's model.
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise LineError("response is a bare usage object: give the model beside it (\"model\": ...)")
        response = {usage_key: response, model_key: data["model"]}
    convention = reasoning.get(str(data.get("source") or ""), "auto")
    if adapter == "openrouter":
        return usage_from_openrouter(response, reasoning=convention)
    if adapter == "openai_chat":
        provider = data.get("provider") or "openai"
        return usage_from_openai_chat(response, provider=str(provider), reasoning=convention)
    if adapter == "openai_responses":
        return usage_from_openai_responses(response, provider=str(data.get("provider") or "openai"))
    if adapter == "anthropic":
        return usage_from_anthropic(response, provider=str(data.get("provider") or "anthropic"))
    return usage_from_gemini(response, provider=str(data.get("provider") or "google"))


def compute_line_event(
    data: Any, *, now: datetime, reasoning: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The usage mapping one input line describes, and the normalisations its adapter applied.

    A line is either a usage event as ``finops emit --json`` takes it (``provider``, ``model``, token counts,
    ``occurred_at``, ...) or a provider response: ``adapter`` (``openrouter``, ``openai_chat``,
    ``openai_responses``, ``anthropic``, ``gemini``), ``response`` (the body, or only its usage object, then with
    ``model`` beside it), optional ``provider`` (for ``openai_chat``: an OpenAI-compatible API under its own name),
    optional ``reported_cost`` (a decimal string, beats the body's) and the attribution fields (``event_id``,
    ``source``, ``occurred_at``, ``agent_id``, ``team``, ``project``, ``task_id``, ``tags``). Responses use the
    per-source reasoning convention of ``FINOPS_PRODUCER_REASONING_CONVENTIONS`` (``reasoning``).

    Raises :class:`LineError` (or the adapter's ``ProviderUsageError``) naming what is wrong."""
    if not isinstance(data, Mapping):
        raise LineError("a line must be a JSON object (a usage event, or {adapter, response, ...})")
    normalisations: tuple[str, ...] = ()
    if "adapter" in data:
        usage = _adapt(data, reasoning or {})
        event: dict[str, Any] = to_usage_fields(usage)
        normalisations = usage.normalisations
        for name in _ATTRIBUTION:
            if data.get(name) is not None:
                event[name] = data[name]
        tags = dict(event.get("tags") or {})
        tags.update(normalisation_tags(usage))
        event["tags"] = tags
        reported = _money(data.get("reported_cost"), "reported_cost")
        if reported is not None:
            event["reported_cost"] = reported
    else:
        event = dict(data)
        for name in ("provider", "model"):
            if not isinstance(event.get(name), str) or not event[name].strip():
                raise LineError(f"a usage event needs {name!r} (a non-empty string), or give adapter and response")
        for name in _INT_FIELDS:
            value = event.get(name)
            if value is None:
                event[name] = 0 if name != "requests" else 1
            elif isinstance(value, bool) or not isinstance(value, int):
                raise LineError(f"{name} must be an integer, got {value!r}")
        event["reported_cost"] = _money(event.get("reported_cost"), "reported_cost")
    event["occurred_at"] = _when(data.get("occurred_at"), now)
    return event, normalisations


@dataclass
class FileSummary:
    """Counts and totals of one run (printed on stderr)."""

    lines: int = 0
    priced: int = 0
    unpriced: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    cost_usd: Decimal = Decimal(0)
    computed_usd: Decimal = Decimal(0)
    reported_usd: Decimal = Decimal(0)
    reported_calls: int = 0
    from_report: int = 0
    unpriced_by_model: dict[str, int] = field(default_factory=dict)
    mismatches_by_model: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        out = [
            (f"{self.lines} lines: {self.priced} priced ({self.from_report} by their reported cost), {self.unpriced} "
             f"unpriced, {len(self.errors)} unreadable"),
            (f"cost_usd ${self.cost_usd:f}; computed ${self.computed_usd:f}; reported ${self.reported_usd:f} on "
             f"{self.reported_calls} calls"),
        ]
        for model, n in sorted(self.unpriced_by_model.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"unpriced: {model}: {n} calls (add a price-book override or set FINOPS_STREAM_COST_BASIS)")
        for model, n in sorted(self.mismatches_by_model.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"mismatch: {model}: {n} calls whose reported cost disagrees (finops pricebook suggest --file)")
        for line, error in self.errors[:20]:
            out.append(f"line {line}: {error}")
        if len(self.errors) > 20:
            out.append(f"... and {len(self.errors) - 20} more unreadable lines")
        return "\n".join(out)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:f}"


def price_lines(
    lines: Iterable[str], pricer: Pricer, *, now: datetime, reasoning: Mapping[str, str] | None = None
) -> Iterator[tuple[dict[str, Any], FileSummary]]:
    """Price each line; yields ``(output object, running summary)`` per input line, in order (blank lines count as
    lines and are reported unreadable). Never raises for a bad line: it becomes ``{"line", "error"}``."""
    summary = FileSummary()
    price = pricer.price
    for number, text in enumerate(lines, start=1):
        summary.lines = number
        try:
            try:
                data = json.loads(text, parse_float=Decimal)
            except ValueError as err:
                raise LineError(f"not JSON: {err}") from err
            event, normalisations = compute_line_event(data, now=now, reasoning=reasoning)
            result = price(event)
        except FinopsError as err:
            summary.errors.append((number, str(err)))
            yield {"line": number, "error": str(err)}, summary
            continue
        name = f"{event['provider']}/{event['model']}"
        reported = event.get("reported_cost")
        if result.pricing_status == "priced":
            summary.priced += 1
            summary.cost_usd += result.cost_usd
            if result.price_source == "reported":
                summary.from_report += 1
        else:
            summary.unpriced += 1
            summary.unpriced_by_model[name] = summary.unpriced_by_model.get(name, 0) + 1
        if result.computed_cost_usd is not None:
            summary.computed_usd += result.computed_cost_usd
        if reported is not None:
            summary.reported_calls += 1
            summary.reported_usd += reported
        if result.cost_mismatch:
            summary.mismatches_by_model[name] = summary.mismatches_by_model.get(name, 0) + 1
        out: dict[str, Any] = {
            "line": number, "event_id": event.get("event_id"),
            "cost_usd": _text(result.cost_usd) if result.pricing_status == "priced" else None,
            "pricing_status": result.pricing_status, "price_source": result.price_source,
            "reported_cost": _text(reported), "mismatch": result.cost_mismatch,
            "computed_cost_usd": _text(result.computed_cost_usd), "cost_basis": result.cost_basis,
            "provider": event["provider"], "model": event["model"],
            "input_tokens": event.get("input_tokens", 0), "output_tokens": event.get("output_tokens", 0),
            "catalogue_version": result.catalogue_version,
        }  # fmt: skip
        if result.unpriced_reason:
            out["unpriced_reason"] = result.unpriced_reason
        if normalisations:
            out["normalisations"] = list(normalisations)
        yield out, summary
