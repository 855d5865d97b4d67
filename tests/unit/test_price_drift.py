"""Price drift: exact rate solving from reported costs and ``finops pricebook suggest`` (issue 15 item 4).

The fixture (tests/unit/fixtures/drift/anthropic_price_cut.jsonl) is 14 Anthropic Messages API bodies of
claude-sonnet-4 with the cost the client recorded: at the catalogue's prices until 2025-11-30, then at cut prices
(input $1.25, cache read $0.125, 5-minute write $1.5625, 1-hour write $2.50, output $6.25 per MTok) from 2025-12-01.

The tiered fixture (tests/unit/fixtures/drift/gemini_tiered_price_cut.jsonl) is 15 Gemini generateContent bodies of
gemini-2.5-pro, whose catalogue prices are tiered above 200,000 input tokens (input 1.25 / 2.5, cache read 0.125 /
0.25, output 10 / 15 per MTok). Costs were computed by hand with genai-prices' cliff rule (input_tokens > 200000:
every token of the unit at the tier rate): at the catalogue's prices until 2025-11-30, then at 1.05 / 2.1, 0.105 /
0.21, 8.4 / 12.6 from 2025-12-01, with calls below, exactly at (200,000: base) and just above (200,001) the threshold.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.cli import main
from finops.pricing.engine import Pricer
from finops.pricing.pricebook import parse_price_book
from schemas.models import Alert
from stream_jobs.drift import (
    DriftCall,
    compute_drift,
    compute_price_drift_alert,
    render_price_book,
    solve_price_set,
    solve_rates,
)
from stream_jobs.price_file import compute_line_event

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parent / "fixtures" / "drift" / "anthropic_price_cut.jsonl"
TIERED_FIXTURE = Path(__file__).parent / "fixtures" / "drift" / "gemini_tiered_price_cut.jsonl"
CUT = {"input_mtok": Decimal("1.25"), "cache_read_mtok": Decimal("0.125"), "cache_write_mtok": Decimal("1.5625"),
       "cache_write_1h_mtok": Decimal("2.5"), "output_mtok": Decimal("6.25")}  # fmt: skip
NOW = datetime(2025, 12, 4, tzinfo=UTC)


def events(fixture: Path = FIXTURE) -> list[dict[str, Any]]:
    return [compute_line_event(json.loads(line, parse_float=Decimal), now=NOW)[0]
            for line in fixture.read_text().splitlines()]  # fmt: skip


def calls(pricer: Pricer) -> list[DriftCall]:
    out = []
    for event in events():
        result = pricer.price(event)
        out.append(DriftCall.from_event(event, result.computed_cost_usd, result.cost_mismatch,
                                        {"input_mtok": result.price_input_mtok}))  # fmt: skip
    return out


def test_suggest_from_a_file_gives_the_exact_rates_and_date_and_the_book_reproduces_every_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    assert main(["pricebook", "suggest", "--file", str(FIXTURE), "--version", "cut-1"]) == 0
    captured = capsys.readouterr()
    assert "DRIFT: anthropic/claude-sonnet-4-20250514 (claude-code): 7 of 14 reported calls disagree" in captured.err
    book = parse_price_book(captured.out, "suggested.yaml")
    assert book.version == "cut-1"
    (override,) = book.overrides
    assert override.provider == "anthropic" and override.model == "claude-sonnet-4-20250514"
    assert override.effective_from == datetime(2025, 12, 1, tzinfo=UTC)
    assert override.prices.as_dict() == CUT
    assert "reproduces every call within 1e-9 USD" in captured.out

    pricer = Pricer(book)
    for event in events():
        result = pricer.price(event)
        assert abs(result.computed_cost_usd - event["reported_cost"]) <= Decimal("1e-9"), event["event_id"]
        assert result.cost_mismatch is False


def test_a_call_the_rates_cannot_explain_is_reported_with_its_residual() -> None:
    drifted = [c for c in calls(Pricer()) if c.disagrees]
    odd = drifted[3]
    drifted[3] = DriftCall(odd.provider, odd.model, odd.source, odd.occurred_at, odd.event_id, odd.counts,
                           odd.reported + Decimal("0.000003"), odd.computed, True)  # fmt: skip
    _rates, residual, exact, problem = solve_rates(drifted)
    assert not exact and residual > Decimal("1e-9")
    assert problem is not None and "largest residual" in problem


def test_columns_that_always_move_together_are_underdetermined_not_guessed() -> None:
    at = datetime(2025, 12, 1, tzinfo=UTC)
    same_mix = [DriftCall("p", "m", "s", at + timedelta(minutes=i), f"e{i}", (100 * i, 0, 0, 0, 200 * i),
                          Decimal(i) / 1000, None, True) for i in range(1, 5)]  # fmt: skip
    rates, _, exact, problem = solve_rates(same_mix)
    assert rates == {} and not exact and problem is not None and "output_mtok" in problem


def test_an_unpriced_model_with_reports_is_solved_and_alerted_with_the_fix() -> None:
    at = datetime(2025, 12, 2, 8, tzinfo=UTC)
    mixes = [(1000, 0, 0, 0, 10), (10, 0, 0, 0, 1000), (500, 0, 0, 0, 500), (700, 0, 0, 0, 3)]
    rows = [DriftCall("openai", "atlas-xl", "svc", at + timedelta(hours=i), f"a{i}", mix,
                      (mix[0] * Decimal("0.4") + mix[4] * Decimal("1.6")) / 1_000_000, None, True)
            for i, mix in enumerate(mixes)]  # fmt: skip
    (suggestion,) = compute_drift(rows)
    assert suggestion.drifting and suggestion.exact
    assert suggestion.rates == {"input_mtok": Decimal("0.4"), "output_mtok": Decimal("1.6")}
    assert suggestion.effective_from_text == "2025-12-02"
    text = render_price_book([suggestion], version="v")
    assert parse_price_book(text).overrides[0].prices.as_dict() == suggestion.rates
    alert = Alert.from_avro_dict(compute_price_drift_alert(suggestion, text, NOW))
    assert alert.kind == "price_drift" and alert.model == "openai/atlas-xl"
    assert "input_mtok: 0.4" in alert.summary and "finops reprice" in alert.summary
    assert alert.dedup_key == "price_drift:openai:atlas-xl:svc:2025-12-02"


def test_agreeing_calls_earlier_that_day_make_the_effective_date_a_timestamp() -> None:
    at = datetime(2025, 12, 2, 8, tzinfo=UTC)
    agree = DriftCall("p", "m", "s", at, "ok", (1000, 0, 0, 0, 10), Decimal("0.001"), Decimal("0.001"), False)
    drift = [DriftCall("p", "m", "s", at + timedelta(hours=i), f"d{i}", (1000 * i, 0, 0, 0, 7 * i + i * i),
                       Decimal(2 * i) / 1000 + Decimal(7 * i + i * i) / 10**6, None, True)
             for i in range(1, 4)]  # fmt: skip
    (suggestion,) = compute_drift([agree, *drift])
    assert suggestion.effective_from_text == "2025-12-02T09:00:00Z"


def test_too_few_disagreeing_calls_is_no_drift() -> None:
    (suggestion,) = compute_drift(calls(Pricer()), min_share=Decimal("0.9"))
    assert not suggestion.drifting
    assert "overrides: []" in render_price_book([suggestion], version="v")


def test_the_watcher_on_the_priced_stream_raises_one_alert_per_model_and_date() -> None:
    from stream_jobs.drift import DriftWatcher

    pricer = Pricer()
    watcher = DriftWatcher(min_calls=3, check_every=2)
    alerts: list[dict[str, Any]] = []
    for _ in range(3):  # the same calls seen again (a replay, or the same traffic every day): still one alert
        for event in events():
            result = pricer.price(event)
            alerts += watcher.observe({**event, **result._asdict()})
    assert watcher.observe({**events()[0], "reported_cost": None}) == []
    (alert,) = alerts
    parsed = Alert.from_avro_dict(alert)
    assert parsed.kind == "price_drift" and parsed.dedup_key.endswith(":claude-code:2025-12-01")
    assert "input_mtok: 1.25" in parsed.summary and "output_mtok: 6.25" in parsed.summary
    assert parsed.details["effective_from"] == "2025-12-01"


# --- tiered prices ---------------------------------------------------------------------------------------------------

TIER_CUT = {
    "input_mtok": (Decimal("1.05"), ((200_000, Decimal("2.1")),)),
    "cache_read_mtok": (Decimal("0.105"), ((200_000, Decimal("0.21")),)),
    "output_mtok": (Decimal("8.4"), ((200_000, Decimal("12.6")),)),
}


def tiered_calls(pricer: Pricer, keep: Any = lambda event: True) -> list[DriftCall]:
    out = []
    for event in events(TIERED_FIXTURE):
        if keep(event):
            result = pricer.price(event)
            out.append(DriftCall.from_event(event, result.computed_cost_usd, result.cost_mismatch,
                                            {"input_mtok": result.price_input_mtok}, pricer.price_tiers(event)))
    return out  # fmt: skip


def test_tiered_drift_solves_one_rate_per_tier_with_the_catalogue_thresholds() -> None:
    (suggestion,) = compute_drift(tiered_calls(Pricer()))
    assert suggestion.drifting and suggestion.exact and suggestion.undetermined == []
    assert suggestion.effective_from_text == "2025-12-01" and suggestion.disagreeing == 12
    assert suggestion.tiers == {"input_mtok": (200_000,), "cache_read_mtok": (200_000,), "output_mtok": (200_000,)}
    assert suggestion.rates == {key: base for key, (base, _) in TIER_CUT.items()}
    assert suggestion.tier_rates == {key: dict(tiers) for key, (_, tiers) in TIER_CUT.items()}
    assert suggestion.max_residual == 0
    # The same calls as one flat price set (what the solver did before tiers) cannot be reproduced.
    flat = solve_price_set([c for c in tiered_calls(Pricer()) if c.disagrees])
    assert not flat.exact and flat.problem is not None and "largest residual" in flat.problem


def test_suggest_prints_a_tiered_entry_that_reprices_every_call_through_the_book(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    assert main(["pricebook", "suggest", "--file", str(TIERED_FIXTURE), "--version", "tiers-1"]) == 0
    captured = capsys.readouterr()
    assert "DRIFT: google/gemini-2.5-pro (vertex-proxy): 12 of 15 reported calls disagree" in captured.err
    assert "NOT DETERMINED" not in captured.out + captured.err
    book_path = tmp_path / "suggested.yaml"
    book_path.write_text(captured.out)
    book = parse_price_book(captured.out, "suggested.yaml")
    (override,) = book.overrides
    assert (override.provider, override.model) == ("google", "gemini-2.5-pro")
    assert override.effective_from == datetime(2025, 12, 1, tzinfo=UTC)
    got = {key: (value.base, tuple((t.start, t.price) for t in value.tiers))
           for key, value in override.prices.as_dict().items() if not isinstance(value, Decimal)}  # fmt: skip
    assert got == TIER_CUT and set(override.prices.as_dict()) == set(TIER_CUT)

    # Loaded as FINOPS_STREAM_PRICE_BOOK, finops price --file reprices every call to its reported cost.
    monkeypatch.setenv("FINOPS_STREAM_PRICE_BOOK", str(book_path))
    assert main(["price", "--file", str(TIERED_FIXTURE)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 15
    for line in out:
        assert abs(Decimal(line["cost_usd"]) - Decimal(line["reported_cost"])) <= Decimal("1e-9"), line["event_id"]
        assert line["mismatch"] is False
    assert {line["price_source"] for line in out[3:]} == {"price_book"}
    # ... and so does the Pricer the stream job builds from the same book (the same compiled rates).
    pricer = Pricer(book)
    for event in events(TIERED_FIXTURE):
        assert abs(pricer.price(event).computed_cost_usd - event["reported_cost"]) <= Decimal("1e-9")


def test_a_tier_no_call_reaches_is_not_determinable_and_not_invented() -> None:
    below = tiered_calls(Pricer(), keep=lambda event: event["input_tokens"] <= 200_000)
    (suggestion,) = compute_drift(below)
    assert suggestion.drifting and suggestion.exact
    assert suggestion.rates == {key: base for key, (base, _) in TIER_CUT.items()}
    assert suggestion.tier_rates == {}
    assert sorted(suggestion.undetermined) == [
        f"{key} above 200000 input tokens: no call reaches that tier"
        for key in ("cache_read_mtok", "input_mtok", "output_mtok")
    ]
    text = render_price_book([suggestion], version="v")
    assert "# NOT DETERMINED: input_mtok above 200000 input tokens" in text
    # The entry keeps the catalogue's tier rate, marked, so calls above the threshold are not priced at the base.
    assert "- {start: 200000, price: 2.5}  # NOT DETERMINED: no call above 200000 input tokens" in text
    (override,) = parse_price_book(text).overrides
    input_price = override.prices.as_dict()["input_mtok"]
    assert not isinstance(input_price, Decimal) and input_price.tiers[0].price == Decimal("2.5")
    alert = Alert.from_avro_dict(compute_price_drift_alert(suggestion, text, NOW))
    assert "input_mtok>200000" not in alert.details and alert.details["input_mtok"] == "1.05"


def test_the_watcher_solves_tiers_when_given_the_pricer_s_thresholds() -> None:
    from stream_jobs.drift import DriftWatcher

    pricer = Pricer()
    watcher = DriftWatcher(min_calls=3, check_every=15, tiers_for=pricer.price_tiers)
    alerts: list[dict[str, Any]] = []
    for event in events(TIERED_FIXTURE):
        alerts += watcher.observe({**event, **pricer.price(event)._asdict()})
    (alert,) = alerts
    parsed = Alert.from_avro_dict(alert)
    assert parsed.details["exact"] == "true"
    assert parsed.details["input_mtok"] == "1.05" and parsed.details["input_mtok>200000"] == "2.1"
    assert parsed.details["output_mtok>200000"] == "12.6"


def test_a_model_with_fewer_calls_than_min_calls_is_not_reported_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    few = tmp_path / "few.jsonl"
    few.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:2]))
    assert main(["pricebook", "suggest", "--file", str(few)]) == 0
    err = capsys.readouterr().err
    assert "not judged: anthropic/claude-sonnet-4-20250514 (claude-code): " in err, err
    assert "(fewer than --min-calls 3)" in err and "ok:" not in err
