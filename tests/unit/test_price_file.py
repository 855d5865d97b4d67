"""``finops price --file``: offline pricing of a JSONL file of usage events and provider responses (issue 15 item 7)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.cli import main

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
AT = "2025-12-02T09:00:00Z"


def response(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


def run(tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        **env: str) -> tuple[int, list[dict[str, Any]], str]:  # fmt: skip
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = main(["price", "--file", str(path)])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_every_kind_of_line_is_priced_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    lines = [
        json.dumps({"adapter": "openrouter", "response": response("openrouter_gemini_routed"), "event_id": "or-1",
                    "source": "svc", "occurred_at": AT, "agent_id": "a", "team": "t", "project": "p"}),
        json.dumps({"adapter": "openai_chat", "provider": "google", "event_id": "gw-1", "occurred_at": AT,
                    "response": response("gateway_gemini_reasoning_exclusive")}),
        json.dumps({"provider": "anthropic", "model": "claude-sonnet-4-20250514", "input_tokens": 3000,
                    "output_tokens": 200, "cache_read_tokens": 1000, "event_id": "ev-1", "occurred_at": AT}),
        json.dumps({"adapter": "gemini", "model": "gemini-2.0-flash", "event_id": "bare-1", "occurred_at": AT,
                    "response": {"promptTokenCount": 1000, "candidatesTokenCount": 100}}),
        json.dumps({"provider": "openai", "model": "atlas-xl", "input_tokens": 5, "output_tokens": 5,
                    "event_id": "un-1", "occurred_at": AT}),
        json.dumps({"provider": "openai", "model": "atlas-xl", "input_tokens": 5, "output_tokens": 5,
                    "reported_cost": "0.25", "event_id": "rep-1", "occurred_at": AT}),
    ]  # fmt: skip
    code, out, err = run(tmp_path, lines, capsys, monkeypatch)
    assert code == 0
    assert [o["line"] for o in out] == [1, 2, 3, 4, 5, 6]
    assert [o["event_id"] for o in out] == ["or-1", "gw-1", "ev-1", "bare-1", "un-1", "rep-1"]
    by_id = {o["event_id"]: o for o in out}
    assert by_id["or-1"]["cost_usd"] == "0.001220000000" and by_id["or-1"]["price_source"] == "reported"
    assert by_id["or-1"]["reported_cost"] == "0.00122" and by_id["or-1"]["mismatch"] is False
    assert by_id["gw-1"]["cost_usd"] == "0.003225000000" and by_id["gw-1"]["normalisations"][0].startswith(
        "reasoning_exclusive")
    # claude-sonnet-4: $3 input, $0.30 cache read, $15 output per MTok.
    assert Decimal(by_id["ev-1"]["cost_usd"]) == (2000 * Decimal(3) + 1000 * Decimal("0.3") + 200 * Decimal(15)) / 10**6
    assert Decimal(by_id["bare-1"]["cost_usd"]) == (1000 * Decimal("0.1") + 100 * Decimal("0.4")) / 10**6
    assert by_id["un-1"]["cost_usd"] is None and by_id["un-1"]["pricing_status"] == "unpriced"
    assert by_id["rep-1"]["cost_usd"] == "0.250000000000" and by_id["rep-1"]["price_source"] == "reported"
    assert "6 lines: 5 priced (2 by their reported cost), 1 unpriced, 0 unreadable" in err
    assert "unpriced: openai/atlas-xl: 1 calls" in err


def test_an_unreadable_line_is_named_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    good = json.dumps({"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "occurred_at": AT})
    lines = [good, "{not json", json.dumps({"adapter": "mystery", "response": {}}), good]
    code, out, err = run(tmp_path, lines, capsys, monkeypatch)
    assert code == 2
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert "error" in out[1] and "not JSON" in out[1]["error"]
    assert "adapter 'mystery'" in out[2]["error"]
    assert "line 2: not JSON" in err and "line 3: adapter 'mystery'" in err


def test_the_price_book_and_cost_basis_apply_as_in_the_stream_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    book = tmp_path / "book.yaml"
    book.write_text("version: neg-1\noverrides:\n  - provider: openai\n    model: atlas-xl\n"
                    "    effective_from: 2025-01-01\n    prices: {input_mtok: 1, output_mtok: 2}\n")  # fmt: skip
    line = json.dumps({"provider": "openai", "model": "atlas-xl", "input_tokens": 1_000_000, "output_tokens": 0,
                       "reported_cost": "5", "occurred_at": AT})  # fmt: skip
    code, out, _ = run(tmp_path, [line], capsys, monkeypatch, FINOPS_STREAM_PRICE_BOOK=str(book))
    assert code == 0 and out[0]["cost_usd"] == "1.000000000000" and out[0]["price_source"] == "price_book"
    code, out, _ = run(tmp_path, [line], capsys, monkeypatch, FINOPS_STREAM_PRICE_BOOK=str(book),
                       FINOPS_STREAM_COST_BASIS="*=reported")  # fmt: skip
    assert out[0]["cost_usd"] == "5.000000000000" and out[0]["computed_cost_usd"] == "1.000000000000"
    assert out[0]["mismatch"] is True
