"""Chargeback / showback on a simulated fleet replayed into the ledger with known prices (genai-prices catalogue)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from governance.chargeback import build_chargeback, render_csv, render_html
from governance.config import parse_governance_config
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from producers.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)


def replay_fleet(client: Any, database: str, **overrides: Any) -> list[dict[str, Any]]:
    """Simulate, price with the catalogue, insert; return the ledger rows (the known truth)."""
    config = SimulationConfig(**{"seed": 11, "agents": 12, "teams": 4, "projects": 6, "duration_s": 3 * 3600,
                                 "rate_per_s": 0.5, "start": START, **overrides})
    pricer = Pricer()
    rows = [compute_priced_row(e, pricer, priced_at=e["occurred_at"], source_offset=i)
            for i, e in enumerate(generate(config))]
    insert_ledger_rows(client, database, rows)
    return rows


def _insert_budget(client: Any, database: str, policy_id: str, scope_type: str, scope_value: str,
                   limit: str) -> None:
    client.insert(
        "budgets",
        [[policy_id, 1, scope_type, scope_value, "month", "UTC", Decimal(limit), "soft", "[]", False, None, None, None,
          None, None, True, False, START]],
        column_names=["policy_id", "version", "scope_type", "scope_value", "period", "timezone", "limit_usd", "mode",
                      "thresholds", "forecast", "max_task_cost_usd", "max_task_tokens", "max_call_tokens",
                      "downgrade_model", "throttle_rate_per_minute", "enabled", "deleted", "updated_at"],
        database=database,
    )


GOVERNANCE = """
shared_costs:
  - name: llm-router
    agents: [agent-001]
    method: usage
"""


def test_chargeback_equals_the_ledger_and_allocation_sums_to_shared_cost(ch_client: Any, ch_database: str) -> None:
    rows = replay_fleet(ch_client, ch_database)
    ledger_total = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert ledger_total > 0
    shared_team = next(r["team"] for r in rows if r["agent_id"] == "agent-001")
    shared_cost = sum((r["cost_usd"] for r in rows if r["agent_id"] == "agent-001"), Decimal(0))
    assert shared_cost > 0
    direct: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        if r["agent_id"] != "agent-001":
            direct[r["team"]] += r["cost_usd"]

    config = parse_governance_config(GOVERNANCE)
    report = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config)

    assert report.ledger_total_usd == ledger_total
    assert report.total_usd == ledger_total  # exact, hence also to the cent
    assert report.balanced
    [alloc] = report.allocation_sets
    assert alloc.amount == shared_cost
    assert sum(alloc.shares.values(), Decimal(0)) == shared_cost
    # usage share: each consuming team's direct cost over all direct cost
    direct_total = sum(direct.values(), Decimal(0))
    for team, share in alloc.shares.items():
        assert abs(share - shared_cost * direct[team] / direct_total) <= Decimal("1e-12") * len(direct)
    totals = report.team_totals()
    for team, value in totals.items():
        assert value["direct"] == direct[team]
        assert value["total"] == direct[team] + alloc.shares.get(team, Decimal(0))
    assert shared_team in totals

    # showback: same spend, nothing allocated, shared cost stays with its owner
    show = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config, mode="showback")
    assert show.total_usd == ledger_total and not show.allocations
    assert show.team_totals()[shared_team]["total"] == direct[shared_team] + shared_cost

    # CSV: cost + allocation rows sum to the total; HTML has its charts
    parsed = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert sum((Decimal(r["cost_usd"]) for r in parsed if r["record"] in ("cost", "allocation")), Decimal(0)) == \
        ledger_total
    page = render_html(report)
    assert page.count("<svg") >= 3 and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_team_filter_weights_even_budgets_and_unpriced(ch_client: Any, ch_database: str) -> None:
    rows = replay_fleet(ch_client, ch_database, misbehaviours=[{"kind": "unknown_model", "agent_id": "agent-005"}])
    teams = sorted({r["team"] for r in rows})
    shared_cost = sum((r["cost_usd"] for r in rows if r["agent_id"] == "agent-002"), Decimal(0))
    config = parse_governance_config(
        "shared_costs:\n"
        "  - name: embeddings\n    agents: [agent-002]\n    method: weights\n"
        f"    weights: {{{teams[0]}: 3, {teams[1]}: 1}}\n"
    )
    report = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config)
    [alloc] = report.allocation_sets
    assert set(alloc.shares) == {teams[0], teams[1]}
    assert sum(alloc.shares.values(), Decimal(0)) == shared_cost
    assert abs(alloc.shares[teams[0]] - shared_cost * 3 / 4) <= Decimal("1e-12")
    assert report.total_usd == report.ledger_total_usd

    # one team's bill: its direct spend plus its share
    mine = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config, team_filter=teams[0])
    assert set(mine.team_totals()) == {teams[0]}
    assert mine.total_usd == report.team_totals()[teams[0]]["total"]

    even = parse_governance_config(
        f"shared_costs:\n  - name: embeddings\n    agents: [agent-002]\n    method: even\n"
        f"    consumers: [{', '.join(teams[:3])}]\n")
    report_even = build_chargeback(ch_client, ch_database, parse_period("2026-10"), even)
    shares = report_even.allocation_sets[0].shares
    assert sum(shares.values(), Decimal(0)) == shared_cost
    assert max(shares.values()) - min(shares.values()) <= Decimal("1e-12")

    # unpriced calls are listed, with the unknown model
    unpriced_rows = [r for r in rows if r["pricing_status"] == "unpriced"]
    assert unpriced_rows
    assert sum(u.calls for u in report.unpriced) == len(unpriced_rows)
    assert {u.model for u in report.unpriced} == {unpriced_rows[0]["model"]}

    # budget versus actual for a team
    _insert_budget(ch_client, ch_database, "b-team", "team", teams[0], "10")
    with_budget = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config)
    [budget] = with_budget.budgets
    team_spend = sum((r["cost_usd"] for r in rows if r["team"] == teams[0]), Decimal(0))
    assert budget.actual_usd == team_spend and budget.limit_usd == Decimal("10")


def test_consumer_tag_usage_share(ch_client: Any, ch_database: str) -> None:
    base = dict(source="svc", provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=1000, output_tokens=100)
    events = []
    for i, consumer in enumerate(["search"] * 3 + ["support"] * 1):
        events.append({**base, "event_id": f"r{i}", "occurred_at": START + timedelta(minutes=i), "agent_id": "router",
                       "team": "platform", "project": "gateway", "tags": {"consumer_team": consumer}})
    for i, team in enumerate(["search", "support"]):
        events.append({**base, "event_id": f"d{i}", "occurred_at": START + timedelta(minutes=10 + i),
                       "agent_id": f"{team}-bot", "team": team, "project": team})
    pricer = Pricer()
    rows = [compute_priced_row(e, pricer, priced_at=START) for e in events]
    insert_ledger_rows(ch_client, ch_database, rows)
    config = parse_governance_config(
        "shared_costs:\n  - name: router\n    agents: [router]\n    method: usage\n    consumer_tag: consumer_team\n")
    report = build_chargeback(ch_client, ch_database, parse_period("2026-10"), config)
    [alloc] = report.allocation_sets
    shared = sum((r["cost_usd"] for r in rows if r["agent_id"] == "router"), Decimal(0))
    assert alloc.weights == {"search": Decimal(3), "support": Decimal(1)}
    assert alloc.shares["search"] == shared * 3 / 4
    assert sum(alloc.shares.values(), Decimal(0)) == shared
    assert "platform" not in report.team_totals()
