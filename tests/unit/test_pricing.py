"""Pricing against the providers' published prices, exact to the last Decimal place.

Each pin states the date and the per-million prices the provider published for it (the catalogue bundled with
genai-prices, 0.2.3 and 0.2.5 checked, carries the same numbers for these models and dates; where it does not, the
test says so and does not pin that price). A cost is asserted with ``==`` on Decimal: no tolerance anywhere.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

from finops.pricing.engine import InvalidUsageError, Pricer, PriceResult, PricingError, to_genai_usage
from schemas.errors import FinopsError

pytestmark = pytest.mark.unit

M = Decimal(1_000_000)


def usage(provider: str, model: str, at: datetime, **counts: Any) -> dict[str, Any]:
    """A decoded-Avro-like usage dict with every canonical field (zeros unless given)."""
    event: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "occurred_at": at,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "cache_audio_read_tokens": 0,
        "image_tokens": 0,
        "web_search_calls": 0,
        "requests": 1,
        "reported_cost": None,
    }
    event.update(counts)
    return event


def assert_parts_sum(result: PriceResult) -> None:
    parts = (
        result.cost_input_usd,
        result.cost_output_usd,
        result.cost_cache_read_usd,
        result.cost_cache_write_usd,
        result.cost_other_usd,
    )
    assert sum(parts, Decimal(0)) == result.cost_usd
    for value in (result.cost_usd, *parts):
        assert value.as_tuple().exponent == -12, value


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


# --- published prices -------------------------------------------------------------------------------------------


def test_openai_gpt4o_published_2025_06_01(pricer: Pricer) -> None:
    # OpenAI pricing page as of 2025-06-01, gpt-4o (2024-08-06): $2.50 input, $1.25 cached input, $10.00 output
    # per 1M tokens. OpenAI has no cache-write charge: written tokens are ordinary input.
    event = usage(
        "openai", "gpt-4o-2024-08-06", datetime(2025, 6, 1, 12, tzinfo=UTC),
        input_tokens=12_000, cache_read_tokens=4_000, output_tokens=1_500, reasoning_tokens=0,
    )  # fmt: skip
    result = pricer.price(event)
    expected_input = 8_000 * Decimal("2.50") / M
    expected_cached = 4_000 * Decimal("1.25") / M
    expected_output = 1_500 * Decimal("10.00") / M
    assert result.pricing_status == "priced"
    assert result.price_source == "catalogue"
    assert result.cost_input_usd == expected_input == Decimal("0.02")
    assert result.cost_cache_read_usd == expected_cached == Decimal("0.005")
    assert result.cost_output_usd == expected_output == Decimal("0.015")
    assert result.cost_usd == Decimal("0.040000000000")
    assert (result.price_input_mtok, result.price_cache_read_mtok, result.price_output_mtok) == (
        Decimal("2.50"),
        Decimal("1.25"),
        Decimal("10.00"),
    )
    assert result.price_cache_write_mtok is None  # no separate write price: writes are billed as input
    assert_parts_sum(result)


def test_openai_cache_writes_are_billed_as_input(pricer: Pricer) -> None:
    at = datetime(2025, 6, 1, tzinfo=UTC)
    with_writes = pricer.price(usage("openai", "gpt-4o", at, input_tokens=10_000, cache_write_tokens=3_000))
    assert with_writes.cost_usd == 10_000 * Decimal("2.50") / M
    assert with_writes.cost_cache_write_usd == 0


def test_anthropic_claude_sonnet_4_published_2025_07_01(pricer: Pricer) -> None:
    # Anthropic pricing page as of 2025-07-01, Claude Sonnet 4: $3 input, $15 output, $0.30 cache hits,
    # $3.75 5-minute cache writes, $6 1-hour cache writes per 1M tokens.
    event = usage(
        "anthropic", "claude-sonnet-4-20250514", datetime(2025, 7, 1, 9, 30, tzinfo=UTC),
        input_tokens=20_000,  # canonical: uncached 4,000 + cache read 10,000 + cache write 6,000
        cache_read_tokens=10_000,
        cache_write_tokens=6_000,
        cache_write_1h_tokens=2_000,  # so 4,000 5-minute writes
        output_tokens=1_000,
        reasoning_tokens=300,  # part of the 1,000 output tokens, billed as output
    )  # fmt: skip
    result = pricer.price(event)
    assert result.cost_input_usd == 4_000 * Decimal(3) / M == Decimal("0.012")
    assert result.cost_cache_read_usd == 10_000 * Decimal("0.30") / M == Decimal("0.003")
    assert result.cost_cache_write_usd == (4_000 * Decimal("3.75") + 2_000 * Decimal(6)) / M == Decimal("0.027")
    assert result.cost_output_usd == 1_000 * Decimal(15) / M == Decimal("0.015")
    assert result.cost_usd == Decimal("0.057000000000")
    assert (
        result.price_input_mtok,
        result.price_output_mtok,
        result.price_cache_read_mtok,
        result.price_cache_write_mtok,
        result.price_cache_write_1h_mtok,
    ) == (Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6))
    assert_parts_sum(result)


def test_claude_on_bedrock_derives_the_one_hour_write_price(pricer: Pricer) -> None:
    # The catalogue has Bedrock's 5-minute write price ($3.75) for Claude Sonnet 4 but no 1-hour price; Anthropic's
    # rule is 1-hour writes = 2 x base input = $6 per 1M tokens.
    event = usage(
        "aws", "us.anthropic.claude-sonnet-4-20250514-v1:0", datetime(2025, 9, 1, tzinfo=UTC),
        input_tokens=3_000, cache_write_tokens=3_000, cache_write_1h_tokens=1_000,
    )  # fmt: skip
    result = pricer.price(event)
    assert result.price_cache_write_1h_mtok == Decimal(6)
    assert result.cost_cache_write_usd == (2_000 * Decimal("3.75") + 1_000 * Decimal(6)) / M
    assert "2 x input" in pricer.explain(event)


def test_gemini_25_flash_thinking_tokens_are_output(pricer: Pricer) -> None:
    # Google Gemini API pricing as of 2025-10-01, gemini-2.5-flash: $0.30 input (text/image/video), $2.50 output
    # "including thinking tokens", context caching $0.03 (text) per 1M tokens.
    event = usage(
        "google", "gemini-2.5-flash", datetime(2025, 10, 1, tzinfo=UTC),
        input_tokens=10_000, cache_read_tokens=2_000, output_tokens=5_000, reasoning_tokens=4_000,
    )  # fmt: skip
    result = pricer.price(event)
    assert result.cost_output_usd == 5_000 * Decimal("2.50") / M  # thinking neither free nor charged twice
    assert result.cost_input_usd == 8_000 * Decimal("0.30") / M
    assert result.cost_cache_read_usd == 2_000 * Decimal("0.03") / M
    assert result.cost_usd == Decimal("0.014960000000")


def test_gemini_25_flash_audio_input_at_audio_rate(pricer: Pricer) -> None:
    # Same page: audio input $1.00 per 1M tokens; audio is a part of input_tokens.
    event = usage(
        "google", "gemini-2.5-flash", datetime(2025, 10, 1, tzinfo=UTC),
        input_tokens=3_000, input_audio_tokens=1_000, output_tokens=0,
    )  # fmt: skip
    result = pricer.price(event)
    assert result.cost_usd == (2_000 * Decimal("0.30") + 1_000 * Decimal(1)) / M


def test_gemini_25_pro_tier_applies_above_200k_prompt_tokens(pricer: Pricer) -> None:
    # Google Gemini API pricing as of 2025-10-01, gemini-2.5-pro: $1.25 input / $10 output for prompts <= 200k
    # tokens, $2.50 / $15 for prompts > 200k (the whole call pays the higher rate).
    at = datetime(2025, 10, 1, tzinfo=UTC)
    small = pricer.price(usage("google", "gemini-2.5-pro", at, input_tokens=200_000, output_tokens=1_000))
    assert small.cost_usd == (200_000 * Decimal("1.25") + 1_000 * Decimal(10)) / M
    assert (small.price_input_mtok, small.price_output_mtok) == (Decimal("1.25"), Decimal(10))
    large = pricer.price(usage("google", "gemini-2.5-pro", at, input_tokens=200_001, output_tokens=1_000))
    assert large.cost_usd == (200_001 * Decimal("2.50") + 1_000 * Decimal(15)) / M
    assert (large.price_input_mtok, large.price_output_mtok) == (Decimal("2.50"), Decimal(15))


def test_deepseek_chat_cache_hit_vs_miss_and_off_peak(pricer: Pricer) -> None:
    # DeepSeek API pricing as of 2025-06-01 (deepseek-chat, V3): standard hours (UTC 00:30-16:30) $0.27 per 1M
    # input tokens on a cache miss, $0.07 on a cache hit, $1.10 output; off-peak (UTC 16:30-00:30) 50% off:
    # $0.135 / $0.035 / $0.55.
    counts = {"input_tokens": 100_000, "cache_read_tokens": 60_000, "output_tokens": 10_000}
    peak = pricer.price(usage("deepseek", "deepseek-chat", datetime(2025, 6, 1, 10, tzinfo=UTC), **counts))
    assert peak.cost_input_usd == 40_000 * Decimal("0.27") / M  # cache miss
    assert peak.cost_cache_read_usd == 60_000 * Decimal("0.07") / M  # cache hit
    assert peak.cost_output_usd == 10_000 * Decimal("1.10") / M
    assert peak.cost_usd == Decimal("0.026000000000")
    off_peak = pricer.price(usage("deepseek", "deepseek-chat", datetime(2025, 6, 1, 20, tzinfo=UTC), **counts))
    assert off_peak.cost_usd == Decimal("0.013000000000")
    # The boundary is exact to the microsecond, and a non-UTC timestamp is converted first.
    just_before = datetime(2025, 6, 1, 16, 29, 59, 999_999, tzinfo=UTC)
    assert pricer.price(usage("deepseek", "deepseek-chat", just_before, **counts)).cost_usd == peak.cost_usd
    at_switch = datetime(2025, 6, 1, 16, 30, tzinfo=UTC)
    assert pricer.price(usage("deepseek", "deepseek-chat", at_switch, **counts)).cost_usd == off_peak.cost_usd
    berlin_noon = datetime(2025, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    assert pricer.price(usage("deepseek", "deepseek-chat", berlin_noon, **counts)).cost_usd == peak.cost_usd


def test_openai_o3_price_cut_on_2025_06_10(pricer: Pricer) -> None:
    # OpenAI cut o3 from $10 input / $40 output to $2 / $8 per 1M tokens effective 2025-06-10 (UTC dates).
    counts = {"input_tokens": 10_000, "output_tokens": 5_000, "reasoning_tokens": 4_000}
    before = pricer.price(usage("openai", "o3", datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC), **counts))
    after = pricer.price(usage("openai", "o3", datetime(2025, 6, 10, 0, 0, tzinfo=UTC), **counts))
    assert before.cost_usd == (10_000 * Decimal(10) + 5_000 * Decimal(40)) / M == Decimal("0.3")
    assert after.cost_usd == (10_000 * Decimal(2) + 5_000 * Decimal(8)) / M == Decimal("0.06")
    assert (before.price_input_mtok, after.price_input_mtok) == (Decimal(10), Decimal(2))
    # Rates are cached per period, not per result: going back gives the old price again.
    again = pricer.price(usage("openai", "o3", datetime(2025, 1, 1, tzinfo=UTC), **counts))
    assert again.cost_usd == before.cost_usd


def test_web_search_calls_are_other_cost(pricer: Pricer) -> None:
    # Anthropic: web search $10 per 1,000 searches.
    result = pricer.price(
        usage("anthropic", "claude-sonnet-4-20250514", datetime(2025, 7, 1, tzinfo=UTC), web_search_calls=3)
    )
    assert result.cost_other_usd == Decimal("0.03")
    assert result.cost_usd == Decimal("0.030000000000")


# --- unpriced --------------------------------------------------------------------------------------------------------


def test_unknown_model_is_unpriced_never_free(pricer: Pricer) -> None:
    event = usage("acme", "foo-1", datetime(2025, 7, 1, tzinfo=UTC), input_tokens=1_000, output_tokens=1_000)
    result = pricer.price(event)
    assert result.pricing_status == "unpriced"
    assert result.price_source == "none"
    assert result.cost_usd == 0 and result.cost_usd.as_tuple().exponent == -12
    assert result.unpriced_reason is not None
    assert "'foo-1'" in result.unpriced_reason and "'acme'" in result.unpriced_reason
    # The bundled catalogue's version as installed (pyproject allows genai-prices >=0.2.3,<0.3; a fresh install
    # takes the newest), so the reason names the catalogue that was actually asked.
    assert f"genai-prices {genai_prices.__version__}+data." in result.unpriced_reason
    assert result.price_input_mtok is None and result.cost_delta_usd is None and not result.cost_mismatch
    assert "UNPRICED" in pricer.explain(event)


def test_unknown_model_of_known_provider_is_unpriced(pricer: Pricer) -> None:
    result = pricer.price(usage("openai", "gpt-99-ultra", datetime(2025, 7, 1, tzinfo=UTC), input_tokens=5))
    assert result.pricing_status == "unpriced"
    assert result.unpriced_reason is not None and "'gpt-99-ultra'" in result.unpriced_reason


def test_model_priced_only_by_units_we_do_not_carry_is_unpriced(pricer: Pricer) -> None:
    # OpenAI whisper is priced per audio minute; a token-only event would come out $0: flag it instead.
    result = pricer.price(usage("openai", "whisper-1", datetime(2025, 7, 1, tzinfo=UTC), input_tokens=100))
    assert result.pricing_status == "unpriced"
    assert result.unpriced_reason is not None and "does not carry" in result.unpriced_reason


def test_model_listed_without_prices_is_known_and_free(pricer: Pricer) -> None:
    # OpenRouter ':free' variants are listed in the catalogue with an empty price set: known, $0, not "unpriced".
    event = usage("azure", "mai-ds-r1:free", datetime(2025, 7, 1, tzinfo=UTC), input_tokens=1_000, output_tokens=10)
    result = pricer.price(event)
    assert result.pricing_status == "priced" and result.cost_usd == 0 and result.price_source == "catalogue"
    assert "no prices" in pricer.explain(event)


# --- reported cost ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "mismatch"),
    [
        (Decimal("0.040000000000"), False),  # exact
        (Decimal("0.04009"), False),  # $0.00009 off: inside the $0.0001 absolute tolerance
        (Decimal("0.0403"), False),  # $0.0003 off but 0.75%: inside the 1% relative tolerance
        (Decimal("0.0405"), True),  # $0.0005 and 1.25%: outside both
        (Decimal("0.0390"), True),  # under-billing counts too
    ],
)
def test_reported_cost_tolerance(pricer: Pricer, reported: Decimal, mismatch: bool) -> None:
    event = usage(
        "openai", "gpt-4o", datetime(2025, 6, 1, tzinfo=UTC),
        input_tokens=12_000, cache_read_tokens=4_000, output_tokens=1_500, reported_cost=reported,
    )  # fmt: skip
    result = pricer.price(event)
    assert result.cost_usd == Decimal("0.04")
    assert result.cost_delta_usd == reported - Decimal("0.04")
    assert result.cost_mismatch is mismatch


def test_tolerances_are_configurable() -> None:
    strict = Pricer(abs_tolerance=Decimal(0), rel_tolerance=Decimal(0))
    event = usage(
        "openai", "gpt-4o", datetime(2025, 6, 1, tzinfo=UTC),
        input_tokens=1_000_000, reported_cost=Decimal("2.500000000001"),
    )  # fmt: skip
    assert strict.price(event).cost_mismatch is True
    with pytest.raises(PricingError):
        Pricer(abs_tolerance=Decimal("-1"))


# --- input forms, validation, money ------------------------------------------------------------------------------


@dataclass
class UsageObject:
    provider: str
    model: str
    occurred_at: datetime
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    reported_cost: Decimal | None = None


def test_plain_object_and_mapping_give_the_same_result(pricer: Pricer) -> None:
    at = datetime(2025, 6, 1, tzinfo=UTC)
    from_dict = pricer.price(usage("openai", "gpt-4o", at, input_tokens=1_234, output_tokens=567))
    from_obj = pricer.price(UsageObject("openai", "gpt-4o", at, 1_234, 567))
    assert from_dict == from_obj


def test_parts_exceeding_their_whole_are_refused(pricer: Pricer) -> None:
    at = datetime(2025, 7, 1, tzinfo=UTC)
    with pytest.raises(InvalidUsageError, match="cache_read_tokens"):
        pricer.price(usage("anthropic", "claude-sonnet-4", at, input_tokens=100, cache_read_tokens=200))
    with pytest.raises(InvalidUsageError):
        pricer.price(usage("anthropic", "claude-sonnet-4", at, cache_write_tokens=10, cache_write_1h_tokens=20))
    with pytest.raises(InvalidUsageError, match="integers"):
        pricer.price(usage("anthropic", "claude-sonnet-4", at, input_tokens="many"))
    assert issubclass(InvalidUsageError, FinopsError)


def test_time_dependent_price_needs_a_datetime(pricer: Pricer) -> None:
    with pytest.raises(InvalidUsageError, match="occurred_at"):
        pricer.price(usage("openai", "o3", None, input_tokens=1))  # type: ignore[arg-type]


def test_rounding_is_half_even_at_12_places_and_parts_still_sum() -> None:
    # A 1/3 discount makes per-token prices with more than 12 places; rounding must keep sum(parts) == total.
    from finops.pricing.pricebook import parse_price_book

    book = parse_price_book(
        'version: "thirds"\n'
        "overrides:\n"
        "  - provider: self-hosted\n"
        "    model: m\n"
        "    effective_from: 2025-01-01\n"
        "    prices: {input_mtok: 0.0000003333333, output_mtok: 0.0000006666667, cache_read_mtok: 0.0000001111111}\n"
    )
    pricer = Pricer(book)
    for n in (1, 2, 3, 7, 11, 12_345):
        result = pricer.price(
            usage("self-hosted", "m", datetime(2025, 2, 1, tzinfo=UTC), input_tokens=3 * n, cache_read_tokens=n,
                  output_tokens=n)
        )  # fmt: skip
        exact = (2 * n * Decimal("0.0000003333333") + n * Decimal("0.0000001111111") + n * Decimal("0.0000006666667"))
        assert result.cost_usd == (exact / M).quantize(Decimal("1e-12"))
        assert_parts_sum(result)


def test_to_genai_usage_maps_canonical_fields() -> None:
    event = usage(
        "anthropic", "claude-sonnet-4", datetime(2025, 7, 1, tzinfo=UTC),
        input_tokens=100, cache_read_tokens=10, cache_write_tokens=20, cache_write_1h_tokens=5, output_tokens=50,
        reasoning_tokens=7, image_tokens=3, web_search_calls=2,
    )  # fmt: skip
    mapped = to_genai_usage(event)
    # Overlaps the event cannot express (cached image tokens, ...) are stated as 0, as the fast path assumes.
    assert mapped.pop("cache_image_read_tokens") == 0
    assert {k: v for k, v in mapped.items() if v} == {
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_read_tokens": 10,
        "cache_write_tokens": 20,
        "cache_write_5m_tokens": 15,
        "cache_write_1h_tokens": 5,
        "output_reasoning_tokens": 7,
        "input_image_tokens": 3,
        "web_searches": 2,
    }


def test_explain_shows_the_arithmetic(pricer: Pricer) -> None:
    event = usage(
        "anthropic", "claude-sonnet-4-20250514", datetime(2025, 7, 1, tzinfo=UTC),
        input_tokens=20_000, cache_read_tokens=10_000, cache_write_tokens=6_000, cache_write_1h_tokens=2_000,
        output_tokens=1_000, reported_cost=Decimal("0.057"),
    )  # fmt: skip
    text = pricer.explain(event)
    assert ("input_tokens: 4000 [input_tokens - cache_read_tokens - cache_write_tokens] x $3 / 1,000,000 = $0.012"
            in text)
    assert "cache_write_tokens: 4000 [cache_write_tokens - cache_write_1h_tokens] x $3.75" in text
    assert "cache_write_1h_tokens: 2000 [cache_write_1h_tokens] x $6 / 1,000,000 = $0.012" in text
    assert "total cost_usd = $0.057000000000" in text
    assert "within tolerance" in text


# --- speed -----------------------------------------------------------------------------------------------------------


def test_cached_rates_are_fast(pricer: Pricer) -> None:
    """Rates, not results, are cached: each call does the arithmetic. Measured ~4-5 us; the hot path needs < 10 us.
    The bound here is loose (a shared CI core) but far below calc_price's ~100 us."""
    event = usage(
        "anthropic", "claude-sonnet-4-20250514", datetime(2025, 7, 1, tzinfo=UTC),
        input_tokens=20_000, cache_read_tokens=10_000, cache_write_tokens=6_000, cache_write_1h_tokens=2_000,
        output_tokens=1_000, reported_cost=Decimal("0.057"),
    )  # fmt: skip
    pricer.price(event)
    n = 20_000
    per_call_us = min(timeit.repeat(lambda: pricer.price(event), number=n, repeat=3)) / n * 1e6
    print(f"price(): {per_call_us:.2f} us per call")
    assert per_call_us < 30
