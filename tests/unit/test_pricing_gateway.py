"""Gateway-routed models, reported costs as evidence (cost_basis) and gateway token conventions (issue 15, DESIGN §4).

Fixtures are recorded from the documented response shapes (tests/unit/fixtures/responses): OpenRouter's usage
object with ``usage.cost`` and ``prompt_tokens_details.cached_tokens``; an OpenAI-compatible gateway that passes
Gemini's convention through (``completion_tokens_details.reasoning_tokens`` outside ``completion_tokens``).
Costs are asserted with ``==`` on Decimal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.pricing.engine import CostBasisPolicy, Pricer, PricingError, parse_cost_basis
from finops.adapters import (
    ProviderUsageError,
    normalisation_tags,
    parse_reasoning_conventions,
    to_usage_fields,
    usage_from_openai_chat,
    usage_from_openrouter,
)
from schemas.models import check_usage_dict

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
AT = datetime(2025, 12, 2, 9, 0, tzinfo=UTC)


def body(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def event(usage: Any, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        **to_usage_fields(usage), "event_id": "00000000-0000-4000-8000-000000000001", "source": "agent-svc",
        "occurred_at": AT, "agent_id": "a1", "team": "search", "project": "p", "task_id": None,
        "parent_task_id": None, "task_type": None, "environment": None, "attempt": 1, "status": "ok",
        "latency_ms": None, "prompt_hash": None, "tags": normalisation_tags(usage), "schema_version": 1,
    }  # fmt: skip
    record.update(extra)
    return record


def assert_parts_sum(result: Any) -> None:
    parts = (result.cost_input_usd, result.cost_output_usd, result.cost_cache_read_usd, result.cost_cache_write_usd,
             result.cost_other_usd)  # fmt: skip
    assert sum(parts, Decimal(0)) == result.cost_usd
    assert all(p.as_tuple().exponent == -12 for p in (result.cost_usd, *parts))


# ---- 1. gateway-routed models ----------------------------------------------------------------------------------------
def test_openrouter_slug_missing_from_the_catalogue_is_priced_at_the_vendor_entry() -> None:
    usage = usage_from_openrouter(body("openrouter_gemini_routed"))
    record = event(usage, reported_cost=None)
    result = Pricer().price(record)
    # google/gemini-2.0-flash: $0.10 input, $0.025 cache read, $0.40 output per MTok (the catalogue's google entry).
    assert result.pricing_status == "priced"
    assert result.price_source == "catalogue:google via openrouter"
    assert result.cost_input_usd == Decimal(8000) * Decimal("0.1") / 1_000_000
    assert result.cost_cache_read_usd == Decimal(4000) * Decimal("0.025") / 1_000_000
    assert result.cost_output_usd == Decimal(800) * Decimal("0.4") / 1_000_000
    assert result.cost_usd == Decimal("0.00122") == result.computed_cost_usd
    assert_parts_sum(result)


def test_explain_shows_the_gateway_resolution() -> None:
    record = event(usage_from_openrouter(body("openrouter_gemini_routed")), reported_cost=None)
    text = Pricer().explain(record)
    assert "catalogue: google/gemini-2.0-flash via openrouter (gateway)" in text
    assert "answered by: catalogue:google via openrouter" in text
    assert "openrouter has no catalogue entry for 'google/gemini-2.0-flash'" in text


def test_a_gateways_own_entry_wins_over_the_vendor() -> None:
    result = Pricer().price(event(usage_from_openrouter(body("openrouter_cost_reasoning")), reported_cost=None))
    assert result.price_source == "catalogue"  # deepseek/deepseek-r1 is listed under openrouter itself


def test_litellm_style_names_say_the_route() -> None:
    record = {**event(usage_from_openrouter(body("openrouter_gemini_routed")), reported_cost=None),
              "provider": "litellm", "model": "openai/gpt-4o"}  # fmt: skip
    assert Pricer().price(record).price_source == "catalogue:openai via litellm"


def test_unknown_gateway_with_a_vendor_prefix_is_routed_but_a_direct_provider_is_not() -> None:
    base = event(usage_from_openrouter(body("openrouter_gemini_routed")), reported_cost=None)
    routed = Pricer().price({**base, "provider": "acme-gateway", "model": "google/gemini-2.0-flash"})
    assert routed.price_source == "catalogue:google via acme-gateway" and routed.cost_usd == Decimal("0.00122")
    direct = Pricer().price({**base, "provider": "openai", "model": "google/gemini-2.0-flash"})
    assert direct.pricing_status == "unpriced"


# ---- 2. a reported cost is evidence (cost_basis) ---------------------------------------------------------------------
def test_openrouter_usage_cost_is_the_bill_under_defaults_and_exact() -> None:
    usage = usage_from_openrouter(body("openrouter_gemini_routed"))
    assert usage.reported_cost == Decimal("0.00122")
    result = Pricer().price(event(usage))
    assert result.cost_basis == "reported"
    assert result.price_source == "reported"
    assert result.cost_usd == Decimal("0.00122") == result.computed_cost_usd
    assert result.cost_delta_usd == 0 and result.cost_mismatch is False
    assert_parts_sum(result)


def test_reported_basis_keeps_both_costs_and_scales_the_parts_to_the_bill() -> None:
    usage = usage_from_openrouter(body("openrouter_gemini_routed"))
    result = Pricer().price(event(usage, reported_cost=Decimal("0.00244")))  # billed twice the catalogue
    assert result.cost_usd == Decimal("0.00244") and result.computed_cost_usd == Decimal("0.00122")
    assert result.cost_delta_usd == Decimal("0.00122") and result.cost_mismatch is True
    assert result.cost_input_usd == Decimal("0.0016") and result.cost_output_usd == Decimal("0.00064")
    assert result.cost_cache_read_usd == Decimal("0.0002")
    assert_parts_sum(result)


def test_catalogue_basis_keeps_the_computed_cost_authoritative() -> None:
    usage = usage_from_openrouter(body("openrouter_gemini_routed"))
    pricer = Pricer(cost_basis=parse_cost_basis("provider:openrouter=catalogue"))
    result = pricer.price(event(usage, reported_cost=Decimal("0.00244")))
    assert result.cost_usd == Decimal("0.00122") and result.price_source == "catalogue:google via openrouter"
    assert result.cost_basis == "catalogue" and result.cost_mismatch is True


def test_unpriced_model_with_a_report_is_priced_by_the_report_by_default() -> None:
    usage = usage_from_openrouter(body("openrouter_gemini_routed"))
    record = event(usage, provider="openai", model="atlas-xl-preview", reported_cost=Decimal("0.0315"))
    result = Pricer().price(record)
    assert result.pricing_status == "priced" and result.price_source == "reported"
    assert result.cost_basis == "reported_if_unpriced"
    assert result.cost_usd == Decimal("0.0315") == result.cost_other_usd and result.computed_cost_usd is None
    assert result.cost_delta_usd is None
    assert_parts_sum(result)
    assert "reported_cost" in Pricer().explain(record)


def test_catalogue_basis_leaves_an_unknown_model_unpriced_and_names_the_fix() -> None:
    record = event(usage_from_openrouter(body("openrouter_gemini_routed")), provider="openai",
                   model="atlas-xl-preview", reported_cost=Decimal("0.0315"))  # fmt: skip
    pricer = Pricer(cost_basis=parse_cost_basis("source:agent-svc=catalogue"))
    result = pricer.price(record)
    assert result.pricing_status == "unpriced" and result.cost_usd == 0 and result.cost_basis == "catalogue"
    text = pricer.explain(record)
    assert "overrides: [{provider: openai, model: atlas-xl-preview" in text
    assert "FINOPS_STREAM_COST_BASIS provider:openai=reported_if_unpriced" in text


def test_cost_basis_precedence_source_then_provider_then_default() -> None:
    policy = parse_cost_basis("source:svc-a=catalogue, openrouter=reported_if_unpriced, *=reported")
    assert policy.basis_for("svc-a", "openrouter") == "catalogue"
    assert policy.basis_for("svc-b", "OpenRouter") == "reported_if_unpriced"
    assert policy.basis_for("svc-b", "anthropic") == "reported"
    defaults = CostBasisPolicy()
    assert defaults.basis_for("x", "openrouter") == "reported"
    assert defaults.basis_for("x", "anthropic") == "reported_if_unpriced"


@pytest.mark.parametrize("bad", ["openrouter", "provider:openrouter=bill", "team:x=reported"])
def test_bad_cost_basis_setting_names_the_item(bad: str) -> None:
    with pytest.raises(PricingError, match="FINOPS_STREAM_COST_BASIS"):
        parse_cost_basis(bad)


# ---- 6. gateway token conventions ------------------------------------------------------------------------------------
def test_reasoning_exclusive_gateway_is_normalised_named_valid_and_priced_exactly() -> None:
    usage = usage_from_openai_chat(body("gateway_gemini_reasoning_exclusive"), provider="google")
    assert usage.output_tokens == 150 + 900 and usage.reasoning_tokens == 900
    assert usage.normalisations and usage.normalisations[0].startswith("reasoning_exclusive:")
    record = event(usage, reported_cost=None)
    assert check_usage_dict(record, AT) == []  # valid: nothing for the DLQ
    result = Pricer().price(record)
    # gemini-2.5-flash: $0.30 input, $2.50 output (thinking billed as output) per MTok.
    assert result.cost_usd == Decimal(2000) * Decimal("0.3") / 1_000_000 + Decimal(1050) * Decimal("2.5") / 1_000_000
    assert result.cost_usd == Decimal("0.003225")
    assert "normalised: reasoning_exclusive: completion_tokens 150 leaves out reasoning_tokens 900" in Pricer().explain(
        record
    )


def test_declared_exclusive_convention_applies_when_a_call_cannot_show_it() -> None:
    raw = json.loads(body("gateway_gemini_reasoning_exclusive"))
    raw["usage"]["completion_tokens_details"]["reasoning_tokens"] = 100  # <= completion: not visible on the call
    assert usage_from_openai_chat(raw, provider="google").output_tokens == 150  # auto: OpenAI's inclusive reading
    declared = usage_from_openai_chat(raw, provider="google", reasoning="exclusive")
    assert declared.output_tokens == 250 and "declared for this source" in declared.normalisations[0]
    conventions = parse_reasoning_conventions("gw-gemini=exclusive, other=auto")
    assert conventions == {"gw-gemini": "exclusive", "other": "auto"}
    with pytest.raises(ProviderUsageError, match="FINOPS_PRODUCER_REASONING_CONVENTIONS"):
        parse_reasoning_conventions("gw=sometimes")


def test_direct_anthropic_cache_reads_and_writes_stay_exact() -> None:
    # Kept from the recorded Claude Code runs: cache reads and 5-minute writes priced at Anthropic's own entry.
    from finops.adapters import usage_from_anthropic

    usage = usage_from_anthropic(body("anthropic_cache_write_5m_1h"))
    result = Pricer().price(event(usage, reported_cost=None))
    assert result.price_source == "catalogue" and result.cost_basis == "reported_if_unpriced"
    assert_parts_sum(result)


def test_the_sdk_names_the_normalisation_on_the_event_it_tracks() -> None:
    from producers.track import TrackedCall

    call = TrackedCall({"provider": "google", "model": "gemini-2.5-flash", "tags": {"feature": "qa"}})
    call.record_response(body("gateway_gemini_reasoning_exclusive"), provider="openai-chat")  # OpenAI-compatible
    event = call.build("ok", 12)
    assert event["output_tokens"] == 1050 and event["reasoning_tokens"] == 900
    assert event["tags"]["feature"] == "qa" and event["tags"]["finops.normalised"].startswith("reasoning_exclusive")
    raw = json.loads(body("gateway_gemini_reasoning_exclusive"))
    raw["usage"]["completion_tokens_details"]["reasoning_tokens"] = 100
    declared = TrackedCall({"provider": "google", "model": "gemini-2.5-flash"})
    declared.record_response(raw, provider="openai-chat", reasoning="exclusive")
    assert declared.build("ok", 1)["output_tokens"] == 250
