"""Shared-cost allocation: shares sum exactly to the shared cost (largest remainder), by usage, evenly, by weights."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pytest

from governance.allocation import AllocationError, compute_allocation, compute_largest_remainder
from governance.chargeback import CostLine, compute_chargeback
from governance.config import load_governance_config, parse_governance_config
from governance.period import parse_period
from schemas.errors import ConfigError

pytestmark = pytest.mark.unit

Q = Decimal("1e-12")


def test_thirds_sum_exactly_and_the_largest_remainder_gets_the_quantum() -> None:
    shares = compute_largest_remainder(Decimal("1.000000000000"), {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)})
    assert sum(shares.values()) == Decimal("1")
    assert sorted(shares.values()) == [Decimal("0.333333333333")] * 2 + [Decimal("0.333333333334")]
    assert shares["a"] == Decimal("0.333333333334")  # equal remainders: ties broken by name


def test_cents_quantum() -> None:
    shares = compute_largest_remainder(Decimal("100.00"), {"x": Decimal(2), "y": Decimal(1), "z": Decimal(1)},
                                       Decimal("0.01"))
    assert shares == {"x": Decimal("50.00"), "y": Decimal("25.00"), "z": Decimal("25.00")}
    shares = compute_largest_remainder(Decimal("0.10"), {"x": Decimal(1), "y": Decimal(1), "z": Decimal(1)},
                                       Decimal("0.01"))
    assert sum(shares.values()) == Decimal("0.10") and max(shares.values()) == Decimal("0.04")


@pytest.mark.parametrize("seed", range(20))
def test_random_weights_always_sum_exactly(seed: int) -> None:
    rng = random.Random(seed)
    amount = Decimal(rng.randrange(-10**15, 10**15)) * Q
    weights = {f"t{i}": Decimal(rng.randrange(0, 10**9)) / 1000 for i in range(rng.randrange(1, 40))}
    weights["t0"] += 1  # at least one positive weight
    shares = compute_largest_remainder(amount, weights)
    assert sum(shares.values()) == amount
    total = sum(weights.values())
    for team, share in shares.items():
        assert abs(share - amount * weights[team] / total) < Q  # every share within one quantum of exact
        assert share == share.quantize(Q)


def test_negative_amount_keeps_the_sign() -> None:
    shares = compute_largest_remainder(Decimal("-0.000000000010"), {"a": Decimal(3), "b": Decimal(1)})
    assert shares == {"a": Decimal("-0.000000000008"), "b": Decimal("-0.000000000002")}


def test_errors() -> None:
    with pytest.raises(AllocationError, match="no consumers"):
        compute_largest_remainder(Decimal(1), {})
    with pytest.raises(AllocationError, match="negative"):
        compute_largest_remainder(Decimal(1), {"a": Decimal(-1)})
    with pytest.raises(AllocationError, match="weight 0"):
        compute_largest_remainder(Decimal(1), {"a": Decimal(0)})
    with pytest.raises(AllocationError, match="multiple of"):
        compute_largest_remainder(Decimal("0.0000000000001"), {"a": Decimal(1)})
    assert compute_largest_remainder(Decimal(0), {}) == {}


def test_methods() -> None:
    usage = {"a": Decimal("30"), "b": Decimal("10"), "idle": Decimal(0)}
    by_usage = compute_allocation("r", Decimal("8"), "usage", usage=usage)
    assert by_usage.shares == {"a": Decimal("6"), "b": Decimal("2")} and by_usage.method == "usage"
    even = compute_allocation("r", Decimal("9"), "even", consumers=["a", "b", "c"])
    assert set(even.shares.values()) == {Decimal(3)}
    nobody = compute_allocation("r", Decimal("4"), "usage", usage={}, consumers=["a", "b"])
    assert nobody.method == "even" and nobody.shares == {"a": Decimal(2), "b": Decimal(2)}
    weighted = compute_allocation("r", Decimal("10"), "weights", weights={"a": Decimal(4), "b": Decimal(1)})
    assert weighted.shares == {"a": Decimal(8), "b": Decimal(2)}


def _line(team: str, agent: str, cost: str) -> CostLine:
    return CostLine(team, f"{team}-p", agent, "openai", "gpt-4o", 1, 10, 1, 0, Decimal(cost))


def test_chargeback_moves_shared_lines_to_consumers_and_balances() -> None:
    config = parse_governance_config(
        "shared_costs:\n  - name: router\n    agents: [router]\n    method: usage\n")
    lines = [_line("platform", "router", "0.000000000010"), _line("a", "x", "1"), _line("b", "y", "2"),
             _line("platform", "ops", "3")]
    total = sum((line.cost_usd for line in lines), Decimal(0))
    report = compute_chargeback("chargeback", parse_period("2026-10"), lines, config, ledger_total_usd=total)
    assert report.balanced and report.total_usd == total
    shares = report.allocation_sets[0].shares
    assert sum(shares.values()) == Decimal("0.000000000010")
    assert shares == {"a": Decimal("0.000000000002"), "b": Decimal("0.000000000003"),
                      "platform": Decimal("0.000000000005")}
    show = compute_chargeback("showback", parse_period("2026-10"), lines, config, ledger_total_usd=total)
    assert show.balanced and not show.allocations
    assert show.team_totals()["platform"]["total"] == Decimal("3.000000000010")
    off = compute_chargeback("chargeback", parse_period("2026-10"), lines, config, ledger_total_usd=total + 1)
    assert not off.balanced


def test_config_errors_and_example_file() -> None:
    with pytest.raises(ConfigError, match="weights"):
        parse_governance_config("shared_costs:\n  - name: r\n    agents: [x]\n    method: weights\n")
    with pytest.raises(ConfigError, match="at least one"):
        parse_governance_config("shared_costs:\n  - name: r\n")
    with pytest.raises(ConfigError, match="unique"):
        parse_governance_config("shared_costs:\n  - {name: r, agents: [x]}\n  - {name: r, agents: [y]}\n")
    config = parse_governance_config("approval:\n  threshold_usd: 0.1\n")
    assert config.approval.threshold_usd == Decimal("0.1")  # exact, never through float
    example = load_governance_config(Path(__file__).resolve().parents[2] / "infra" / "governance.example.yaml")
    assert example.shared_costs and example.approval.team_leads
