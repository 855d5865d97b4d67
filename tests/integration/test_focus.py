"""FOCUS export of a replayed fleet: conforms to the column rules, EffectiveCost equals the ledger, ListCost is the
catalogue price of price-book-priced tokens, corrections are Correction rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from governance.focus import build_focus_rows, render_focus_csv
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from governance.reprice import reprice
from producers.simulator import SimulationConfig, generate
from stream_jobs.pricebook import parse_price_book
from stream_jobs.pricing import Pricer
from tests.unit.test_focus import check_focus_csv

pytestmark = pytest.mark.integration

OCT = parse_period("2026-10")
BOOK = parse_price_book('version: "commit-2026"\ndiscounts:\n  - provider: openai\n    percent_off: 20\n'
                        '    effective_from: 2026-01-01\n')


def _ledger_total(client: Any, database: str) -> Decimal:
    return Decimal(client.query(f"SELECT sum(cost_usd) FROM {database}.usage_ledger FINAL").result_rows[0][0])


def test_focus_export_equals_the_ledger(ch_client: Any, ch_database: str) -> None:
    config = SimulationConfig(seed=5, agents=10, teams=3, projects=4, duration_s=2 * 3600, rate_per_s=0.5,
                              start=datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
                              misbehaviours=[{"kind": "unknown_model", "agent_id": "agent-003"}])
    pricer = Pricer(BOOK)
    rows = [compute_priced_row(e, pricer, priced_at=e["occurred_at"]) for e in generate(config)]
    insert_ledger_rows(ch_client, ch_database, rows)
    in_october = [r for r in rows if r["occurred_at"] < OCT.end]
    assert len(in_october) < len(rows), "the fleet crosses the month boundary"

    focus = build_focus_rows(ch_client, ch_database, OCT)
    assert check_focus_csv(render_focus_csv(focus)) == []
    effective = sum((r["EffectiveCost"] for r in focus), Decimal(0))
    assert effective == sum((r["cost_usd"] for r in in_october), Decimal(0))
    assert sum((r["BilledCost"] for r in focus), Decimal(0)) == effective
    # ListCost: the discounted openai tokens at the public catalogue price (20 % off -> list = cost / 0.8)
    catalogue = Pricer()
    openai = [r for r in in_october if r["price_source"] == "price_book"]
    assert openai
    expected_list = sum((catalogue.price(r).cost_usd for r in openai), Decimal(0))
    focus_list = sum((r["ListCost"] for r in focus if r["x_PriceSource"] == "price_book"), Decimal(0))
    assert focus_list == expected_list
    assert abs(focus_list * Decimal("0.8") - sum((r["cost_usd"] for r in openai), Decimal(0))) < Decimal("1e-9")
    tokens = sum((r["ConsumedQuantity"] for r in focus if r["x_TokenType"] == "output" and r["ConsumedQuantity"]),
                 Decimal(0))
    assert tokens == sum(r["output_tokens"] for r in in_october)

    # after a re-rating, corrections appear as ChargeClass Correction and the export still equals the ledger
    reprice(ch_client, ch_database, OCT.start, OCT.end, Pricer(), now=datetime(2026, 11, 3, tzinfo=UTC))
    after = build_focus_rows(ch_client, ch_database, OCT)
    assert check_focus_csv(render_focus_csv(after)) == []
    assert any(r["ChargeClass"] == "Correction" for r in after)
    october_total = Decimal(ch_client.query(
        f"SELECT sum(cost_usd) FROM {ch_database}.usage_ledger FINAL WHERE occurred_at < {{hi:DateTime64(6, 'UTC')}}",
        parameters={"hi": OCT.end}).result_rows[0][0])
    assert sum((r["EffectiveCost"] for r in after), Decimal(0)) == october_total
