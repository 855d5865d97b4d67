"""The organisation price book: loading, errors that name file/line/field, and how it overlays the catalogue."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from finops.pricing.pricebook import DiscountEntry, PriceBookError, load_price_book, parse_price_book
from schemas.errors import FinopsError

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "pricebooks"
EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "pricebook.example.yaml"
M = Decimal(1_000_000)


def usage(provider: str, model: str, at: datetime, **counts: Any) -> dict[str, Any]:
    return {"provider": provider, "model": model, "occurred_at": at, "requests": 1, **counts}


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(load_price_book(FIXTURES / "valid.yaml"))


# --- loading ---------------------------------------------------------------------------------------------------------


def test_valid_book_loads_exact_decimals_and_utc_dates() -> None:
    book = load_price_book(FIXTURES / "valid.yaml")
    assert book.version == "test-2025-07"
    assert book.source == str(FIXTURES / "valid.yaml")
    llama = book.overrides[0]
    assert llama.prices.input_mtok == Decimal("0.1")  # a YAML float, read from its text
    assert str(llama.prices.input_mtok) == "0.1"
    assert llama.effective_from == datetime(2025, 1, 1, tzinfo=UTC)
    mini = book.discounts[1]
    assert (mini.provider, mini.model) == ("openai", "gpt-4o-mini")  # names compared lower-case
    assert mini.effective_to == datetime(2025, 7, 15, 10, 0, tzinfo=UTC)  # +02:00 converted
    assert mini.multiplier == Decimal("0.70")


def test_example_book_documents_and_loads() -> None:
    book = load_price_book(EXAMPLE)
    assert book.version == "2025-07-01.1"
    assert book.overrides and book.discounts
    text = EXAMPLE.read_text()
    for key in ("effective_from", "effective_to", "percent_off", "cache_write_1h_mtok", "web_searches_kcount",
                "requests_kcount", "input_audio_mtok", "note", "description"):  # fmt: skip
        assert key in text, key


def test_field_errors_name_file_line_and_field() -> None:
    path = FIXTURES / "bad_fields.yaml"
    with pytest.raises(PriceBookError) as info:
        load_price_book(path)
    found = {(p.line, p.field) for p in info.value.problems}
    assert found == {
        (7, "overrides.0.prices.input_mtok"),  # negative price
        (9, "overrides.1.model"),  # missing: points at the entry
        (15, "discounts.0.percent_off"),  # 150%
        (16, "discounts.0.effective_from"),  # not a date
        (17, "discounts.0.colour"),  # unknown key
    }
    message = str(info.value)
    assert f"{path}:7: overrides.0.prices.input_mtok: must be a finite, non-negative number" in message
    assert f"{path}:17: discounts.0.colour" in message
    assert isinstance(info.value, FinopsError)


def test_bad_yaml_names_the_line() -> None:
    with pytest.raises(PriceBookError) as info:
        load_price_book(FIXTURES / "bad_yaml.yaml")
    assert info.value.problems[0].line == 5
    assert "bad YAML" in str(info.value) and "bad_yaml.yaml:5" in str(info.value)


def test_overlapping_entries_of_one_scope_are_refused() -> None:
    with pytest.raises(PriceBookError) as info:
        load_price_book(FIXTURES / "overlapping.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.field) == (7, "discounts.1")
    assert "overlaps discounts.0 (line 3)" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("overrides: []\n", 1, "version", "Field required"),
        ("version: 2025.07\n", 1, "version", "must be a string"),
        ('version: "a"\nversion: "b"\n', 2, "version", "duplicate key (first at line 1)"),
        ("- just\n- a list\n", 1, "", "must be a mapping"),
        (
            'version: "x"\noverrides:\n  - provider: p\n    model: m\n    effective_from: 2025-01-01\n'
            '    prices: {cache_read_mtok: "0.1"}\n',
            6, "overrides.0.prices", "Missing ancestor price for cache_read_tokens: input_tokens",
        ),
        (
            'version: "x"\ndiscounts:\n  - provider: p\n    percent_off: 5\n    effective_from: 2025-02-01\n'
            "    effective_to: 2025-01-01\n",
            3, "discounts.0", "effective_to must be after effective_from",
        ),
        ('version: "x"\noverrides:\n  - provider: p\n    model: m\n    effective_from: 2025-01-01\n    prices: {}\n',
         6, "overrides.0.prices", "at least one price"),
    ],
)  # fmt: skip
def test_each_rule_names_its_line(text: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(PriceBookError) as info:
        parse_price_book(text, "inline.yaml")
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (line, field)
    assert fragment in problem.message


def test_missing_file_is_a_price_book_error(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="cannot read"):
        load_price_book(tmp_path / "nope.yaml")


def test_float_from_python_is_refused() -> None:
    with pytest.raises(ValueError):
        DiscountEntry(provider="openai", percent_off=12.5, effective_from=datetime(2025, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]


# --- overlay on the catalogue ---------------------------------------------------------------------------------------


def test_override_prices_a_self_hosted_model(pricer: Pricer) -> None:
    result = pricer.price(
        usage("self-hosted", "llama-internal", datetime(2025, 7, 1, tzinfo=UTC), input_tokens=10_000,
              output_tokens=2_000)
    )  # fmt: skip
    assert result.pricing_status == "priced"
    assert result.price_source == "price_book"
    assert result.price_book_version == "test-2025-07"
    assert result.cost_usd == (10_000 * Decimal("0.1") + 2_000 * Decimal("0.4")) / M == Decimal("0.0018")
    assert result.price_input_mtok == Decimal("0.1")


def test_custom_model_before_its_override_is_unpriced(pricer: Pricer) -> None:
    result = pricer.price(usage("self-hosted", "llama-internal", datetime(2024, 12, 31, 23, 59, tzinfo=UTC),
                                input_tokens=10))  # fmt: skip
    assert result.pricing_status == "unpriced"
    assert result.unpriced_reason is not None
    assert "'llama-internal'" in result.unpriced_reason and "test-2025-07" in result.unpriced_reason
    assert "no override active" in result.unpriced_reason


def test_override_is_effective_dated_and_matches_the_catalogue_id(pricer: Pricer) -> None:
    # The book names the catalogue id claude-sonnet-4-0; events carry the dated API id.
    counts = {"input_tokens": 20_000, "cache_read_tokens": 10_000, "cache_write_tokens": 6_000,
              "cache_write_1h_tokens": 2_000, "output_tokens": 1_000}  # fmt: skip
    inside = pricer.price(usage("anthropic", "claude-sonnet-4-20250514", datetime(2025, 7, 31, 23, 59, tzinfo=UTC),
                                **counts))  # fmt: skip
    assert inside.price_source == "price_book"
    assert inside.cost_usd == (
        4_000 * Decimal("2.70") + 10_000 * Decimal("0.27") + 4_000 * Decimal("3.375") + 2_000 * Decimal("5.40")
        + 1_000 * Decimal("13.50")
    ) / M  # fmt: skip
    after = pricer.price(usage("anthropic", "claude-sonnet-4-20250514", datetime(2025, 8, 1, tzinfo=UTC), **counts))
    assert after.price_source == "catalogue"
    assert after.cost_usd == Decimal("0.057")  # list price again (see test_pricing)
    before = pricer.price(usage("anthropic", "claude-sonnet-4-20250514", datetime(2025, 6, 30, tzinfo=UTC), **counts))
    assert before.cost_usd == after.cost_usd


def test_provider_discount_applies_to_catalogue_prices(pricer: Pricer) -> None:
    counts = {"input_tokens": 12_000, "cache_read_tokens": 4_000, "output_tokens": 1_500}
    list_price = Decimal("0.04")  # gpt-4o at list (test_pricing)
    before = pricer.price(usage("openai", "gpt-4o", datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC), **counts))
    assert (before.cost_usd, before.price_source) == (list_price, "catalogue")
    during = pricer.price(usage("openai", "gpt-4o", datetime(2025, 7, 1, tzinfo=UTC), **counts))
    assert during.price_source == "price_book"
    assert during.cost_usd == list_price * Decimal("0.85") == Decimal("0.034")
    assert (during.price_input_mtok, during.price_output_mtok) == (Decimal("2.125"), Decimal("8.5"))


def test_model_discount_beats_provider_discount_until_it_ends(pricer: Pricer) -> None:
    counts = {"input_tokens": 1_000_000}  # gpt-4o-mini list: $0.15 per 1M input
    model_level = pricer.price(usage("openai", "gpt-4o-mini", datetime(2025, 7, 15, 9, 59, tzinfo=UTC), **counts))
    assert model_level.cost_usd == Decimal("0.15") * Decimal("0.70")
    provider_level = pricer.price(usage("openai", "gpt-4o-mini", datetime(2025, 7, 15, 10, 0, tzinfo=UTC), **counts))
    assert provider_level.cost_usd == Decimal("0.15") * Decimal("0.85")


def test_discount_scales_tiers(pricer: Pricer) -> None:
    # gemini-2.5-pro > 200k prompt tokens: $2.50 list, 20% off -> $2.00.
    result = pricer.price(usage("google", "gemini-2.5-pro", datetime(2025, 7, 2, tzinfo=UTC), input_tokens=250_000))
    assert result.price_input_mtok == Decimal("2.00")
    assert result.cost_usd == Decimal("0.5")


def test_override_beats_discount_and_explain_says_why() -> None:
    book = parse_price_book(
        'version: "v"\n'
        "overrides:\n"
        "  - provider: openai\n"
        "    model: gpt-4o\n"
        "    effective_from: 2025-07-01\n"
        '    prices: {input_mtok: "1", output_mtok: "4"}\n'
        '    note: "MSA 42"\n'
        "discounts:\n"
        "  - provider: openai\n"
        "    percent_off: 50\n"
        "    effective_from: 2025-01-01\n"
    )
    pricer = Pricer(book)
    event = usage("openai", "gpt-4o", datetime(2025, 7, 2, tzinfo=UTC), input_tokens=1_000_000, cache_read_tokens=0)
    assert pricer.price(event).cost_usd == Decimal(1)
    text = pricer.explain(event)
    assert "override openai/gpt-4o from price book v" in text and "MSA 42" in text
    earlier = pricer.price(dict(event, occurred_at=datetime(2025, 6, 1, tzinfo=UTC)))
    assert earlier.cost_usd == Decimal("1.25")  # list $2.50 at 50% off
    assert "50% off openai (all models)" in pricer.explain(dict(event, occurred_at=datetime(2025, 6, 1, tzinfo=UTC)))


def test_no_book_means_no_book_version() -> None:
    result = Pricer().price(usage("openai", "gpt-4o", datetime(2025, 7, 2, tzinfo=UTC), input_tokens=1))
    assert result.price_book_version is None and result.price_source == "catalogue"


# --- tiered prices (genai-prices' TieredPrices form and cliff rule) -------------------------------------------------

TIERED = """\
version: "tiered-1"
overrides:
  - provider: google
    model: gemini-2.5-pro
    effective_from: 2025-12-01
    prices:
      input_mtok: {base: 1.05, tiers: [{start: 200000, price: 2.1}, {start: 500000, price: 3}]}
      cache_read_mtok:
        base: 0.105
        tiers:
          - {start: 200000, price: 0.21}
      output_mtok: 8.4
"""


@pytest.mark.parametrize(
    ("input_tokens", "expected"),
    [
        # at the threshold: base on everything (the tier needs input_tokens strictly greater than start)
        (200_000, (200_000 - 50_000) * Decimal("1.05") + 50_000 * Decimal("0.105") + 1_000 * Decimal("8.4")),
        # one token above: ALL input tokens at the tier rate (cliff), cache reads at their tier, output flat
        (200_001, (200_001 - 50_000) * Decimal("2.1") + 50_000 * Decimal("0.21") + 1_000 * Decimal("8.4")),
        # above the second start: its rate wins for input; cache reads stay at their only tier
        (600_000, (600_000 - 50_000) * Decimal("3") + 50_000 * Decimal("0.21") + 1_000 * Decimal("8.4")),
    ],
)  # fmt: skip
def test_tiered_override_prices_like_hand_computation(input_tokens: int, expected: Decimal) -> None:
    pricer = Pricer(parse_price_book(TIERED, "tiered.yaml"))
    at = datetime(2025, 12, 2, tzinfo=UTC)
    result = pricer.price(usage("google", "gemini-2.5-pro", at, input_tokens=input_tokens, cache_read_tokens=50_000,
                                output_tokens=1_000))  # fmt: skip
    assert result.price_source == "price_book"
    assert result.cost_usd == (expected / M).quantize(Decimal("1e-12"))
    tier_rate = {200_000: Decimal("1.05"), 200_001: Decimal("2.1"), 600_000: Decimal("3")}[input_tokens]
    assert result.price_input_mtok == tier_rate
    assert pricer.price_tiers(usage("google", "gemini-2.5-pro", at)) == {
        "input_mtok": (Decimal("1.05"), ((200_000, Decimal("2.1")), (500_000, Decimal("3")))),
        "cache_read_mtok": (Decimal("0.105"), ((200_000, Decimal("0.21")),)),
    }
    text = pricer.explain(usage("google", "gemini-2.5-pro", at, input_tokens=input_tokens, cache_read_tokens=50_000,
                                output_tokens=1_000))  # fmt: skip
    assert f"total cost_usd = ${result.cost_usd:f}" in text


def test_tiered_override_equals_genai_prices_on_the_same_tiers() -> None:
    from genai_prices import Usage
    from genai_prices.types import ModelPrice

    book = parse_price_book(TIERED, "tiered.yaml")
    pricer = Pricer(book)
    reference = ModelPrice(**book.overrides[0].prices.as_genai())
    at = datetime(2025, 12, 2, tzinfo=UTC)
    for n in (0, 1, 199_999, 200_000, 200_001, 499_999, 500_000, 500_001, 2_000_000):
        cached = n // 3
        ours = pricer.price(usage("google", "gemini-2.5-pro", at, input_tokens=n, cache_read_tokens=cached,
                                  output_tokens=777))  # fmt: skip
        theirs = reference.calc_price(Usage(input_tokens=n, cache_read_tokens=cached, output_tokens=777))
        assert ours.cost_usd == theirs["total_price"].quantize(Decimal("1e-12")), n


@pytest.mark.parametrize(
    ("prices", "field", "fragment"),
    [
        ("{input_mtok: {base: 1, tiers: [{start: 5, price: 2}, {start: 5, price: 3}]}}",
         "overrides.0.prices.input_mtok.tiers", "strictly ascending"),
        ("{input_mtok: {base: 1, tiers: [{start: 2.5e5, price: 2}]}}", "overrides.0.prices.input_mtok.tiers.0.start",
         "whole number"),
        ("{input_mtok: {base: 1, tiers: [{start: 100, price: -2}]}}", "overrides.0.prices.input_mtok.tiers.0.price",
         "non-negative"),
        ("{input_mtok: {base: 1, tiers: []}}", "overrides.0.prices.input_mtok.tiers", "at least one tier"),
        ("{input_mtok: {base: 1, tiers: [{start: 100, price: 2, upto: 9}]}}",
         "overrides.0.prices.input_mtok.tiers.0.upto", "Extra inputs"),
    ],
)  # fmt: skip
def test_bad_tiers_name_their_field(prices: str, field: str, fragment: str) -> None:
    head = 'version: "x"\noverrides:\n  - provider: p\n    model: m\n    effective_from: 2025-01-01\n'
    text = f"{head}    prices: {prices}\n"
    with pytest.raises(PriceBookError) as info:
        parse_price_book(text, "inline.yaml")
    assert [(p.line, p.field) for p in info.value.problems if fragment in p.message] == [(6, field)], (
        info.value.problems
    )
