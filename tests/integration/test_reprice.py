"""Re-rating with a corrected price book: correction rows, exact movement of totals, a diff naming the rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from finops.pricing.pricebook import parse_price_book
from governance.chargeback import build_chargeback
from governance.config import GovernanceConfig
from governance.period import parse_period
from governance.reprice import render_diff, render_diff_csv, reprice
from tests.integration.test_chargeback import replay_fleet

pytestmark = pytest.mark.integration

OCT = parse_period("2026-10")
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
BOOK = """
version: "2026-10.fix1"
overrides:
  - provider: openai
    model: gpt-4o-mini
    effective_from: 2026-10-01
    prices: {input_mtok: "0.10", output_mtok: "0.50", cache_read_mtok: "0.05"}
"""


def _ledger_total(client: Any, database: str) -> Decimal:
    return Decimal(client.query(f"SELECT sum(cost_usd) FROM {database}.usage_ledger FINAL").result_rows[0][0])


def test_price_book_correction_moves_totals_by_exactly_the_difference(ch_client: Any, ch_database: str) -> None:
    rows = replay_fleet(ch_client, ch_database, misbehaviours=[{"kind": "unknown_model", "agent_id": "agent-004"}])
    book = parse_price_book(BOOK)
    corrected = Pricer(book)
    expected: dict[str, Decimal] = {}
    for row in rows:
        new = corrected.price(row).cost_usd
        if new != row["cost_usd"]:
            expected[row["event_id"]] = new - row["cost_usd"]
    assert expected, "the fleet must use gpt-4o-mini"
    before = _ledger_total(ch_client, ch_database)
    chargeback_before = build_chargeback(ch_client, ch_database, OCT, GovernanceConfig())

    dry = reprice(ch_client, ch_database, OCT.start, OCT.end, corrected, now=NOW, dry_run=True)
    assert dry.written == 0 and _ledger_total(ch_client, ch_database) == before
    assert {c.event_id for c in dry.changes} == set(expected)

    result = reprice(ch_client, ch_database, OCT.start, OCT.end, corrected, now=NOW)
    difference = sum(expected.values(), Decimal(0))
    assert result.delta_usd == difference
    assert result.written == len(expected)
    assert result.exact is True
    assert _ledger_total(ch_client, ch_database) - before == difference
    # the originals stay; corrections are extra rows
    counts = dict(ch_client.query(
        f"SELECT row_kind, count() FROM {ch_database}.usage_ledger FINAL GROUP BY row_kind").result_rows)
    assert counts == {"original": len(rows), "correction": len(expected)}
    # the diff report says which rows changed
    report = render_diff(result, limit=len(expected))
    for event_id in expected:
        assert event_id in report
    assert "exactly the difference" in report
    assert render_diff_csv(result).count("\n") == len(expected) + 1
    # the chargeback follows the ledger (rollups too: the corrections flowed through the materialized views)
    after = build_chargeback(ch_client, ch_database, OCT, GovernanceConfig())
    assert after.total_usd == chargeback_before.total_usd + difference == after.ledger_total_usd
    rollup = Decimal(ch_client.query(f"SELECT sum(cost_usd) FROM {ch_database}.spend_daily").result_rows[0][0])
    assert rollup == before + difference
    calls = ch_client.query(f"SELECT sum(calls) FROM {ch_database}.spend_daily").result_rows[0][0]
    assert calls == len(rows)

    # same prices again: nothing to write
    again = reprice(ch_client, ch_database, OCT.start, OCT.end, corrected, now=NOW)
    assert again.changes == [] and again.written == 0 and again.exact is True

    # back to the catalogue, then the fixed book again: every step exact, no correction overwrites another
    back = reprice(ch_client, ch_database, OCT.start, OCT.end, Pricer(), now=NOW)
    assert _ledger_total(ch_client, ch_database) == before and back.exact is True
    forth = reprice(ch_client, ch_database, OCT.start, OCT.end, corrected, now=NOW)
    assert forth.exact is True and _ledger_total(ch_client, ch_database) == before + difference


def test_unpriced_model_priced_by_the_book_leaves_the_unpriced_list(ch_client: Any, ch_database: str) -> None:
    rows = replay_fleet(ch_client, ch_database, misbehaviours=[{"kind": "unknown_model", "agent_id": "agent-004"}])
    unknown = next(r for r in rows if r["pricing_status"] == "unpriced")
    before = build_chargeback(ch_client, ch_database, OCT, GovernanceConfig())
    assert before.unpriced
    book = parse_price_book(
        'version: "add-model"\noverrides:\n'
        f'  - provider: {unknown["provider"]}\n    model: {unknown["model"]}\n    effective_from: 2026-01-01\n'
        '    prices: {input_mtok: "1", output_mtok: "2"}\n')
    result = reprice(ch_client, ch_database, OCT.start, OCT.end, Pricer(book), now=NOW)
    unpriced_rows = [r for r in rows if r["pricing_status"] == "unpriced"]
    assert len(result.changes) == len(unpriced_rows)
    assert all(c.old_status == "unpriced" and c.new_status == "priced" for c in result.changes)
    expected = sum((Decimal(r["input_tokens"]) * 1 + Decimal(r["output_tokens"]) * 2 for r in unpriced_rows),
                   Decimal(0)) / 1_000_000
    assert result.delta_usd == expected and result.exact
    after = build_chargeback(ch_client, ch_database, OCT, GovernanceConfig())
    assert after.unpriced == []
    assert after.total_usd == before.total_usd + expected
