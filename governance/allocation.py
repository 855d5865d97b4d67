"""Split a shared cost among consuming teams: by usage share, evenly, or by fixed weights. Pure (no I/O, no clock).

The one rule that matters: the shares add up to the shared cost *exactly*. Each share is the exact quotient cut
down to the quantum (default 1e-12 USD, the ledger's scale), and the quanta left over go one each to the largest
cut-off remainders (Hamilton's largest-remainder method; ties broken by the consumer's name so a re-run gives the
same answer). A naive ``round(cost * w / W)`` per team drifts by a few quanta, which a chargeback that must equal
the ledger to the cent cannot afford once there are many teams.

A negative shared cost (a re-rating correction that lowered last month's router bill) is split by the same weights
with the sign kept: the absolute value is split, then negated, so credits are allocated like charges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

from schemas.errors import FinopsError

__all__ = [
    "AllocationError",
    "AllocationMethod",
    "Allocation",
    "QUANTUM",
    "compute_allocation",
    "compute_largest_remainder",
]

#: The ledger's scale: Decimal(38, 12) USD.
QUANTUM = Decimal("1e-12")

AllocationMethod = Literal["usage", "even", "weights"]


class AllocationError(FinopsError):
    """A shared cost cannot be allocated as configured (no consumers, negative or all-zero weights)."""


@dataclass(frozen=True)
class Allocation:
    """One shared cost split among consumers. ``shares`` sum exactly to ``amount``; ``weights`` are the basis used
    (usage cost, calls, 1 per team for even, or the configured weights), kept so the report can show why."""

    rule: str
    method: AllocationMethod
    amount: Decimal
    weights: dict[str, Decimal]
    shares: dict[str, Decimal]


def compute_largest_remainder(amount: Decimal, weights: Mapping[str, Decimal], quantum: Decimal = QUANTUM) -> dict[
    str, Decimal
]:
    """``amount`` split in proportion to ``weights``, every share a multiple of ``quantum``, summing exactly to
    ``amount`` (which must itself be a multiple of ``quantum``).

    Consumers with weight 0 get 0. Raises :class:`AllocationError` when there is no consumer, a weight is negative,
    every weight is 0 while the amount is not, or ``amount`` is not a multiple of ``quantum``.
    """
    if not weights:
        if amount == 0:
            return {}
        raise AllocationError(f"cannot allocate {amount} USD: no consumers")
    negative = sorted(name for name, w in weights.items() if w < 0)
    if negative:
        raise AllocationError(f"negative allocation weight for {', '.join(negative)}")
    total_weight = sum(weights.values(), Decimal(0))
    if total_weight == 0:
        if amount == 0:
            return {name: Decimal(0).quantize(quantum) for name in weights}
        raise AllocationError(f"cannot allocate {amount} USD: every consumer has weight 0")
    units, rest = divmod(abs(amount), quantum)
    if rest != 0:
        raise AllocationError(f"amount {amount} is not a multiple of the allocation quantum {quantum}")
    sign = -1 if amount < 0 else 1
    total_units = int(units)
    floors: dict[str, int] = {}
    remainders: list[tuple[Decimal, str]] = []
    for name, weight in weights.items():
        # Exact rational arithmetic on integers: units * weight / total_weight, split into floor and remainder.
        exact = Decimal(total_units) * weight / total_weight
        floor = int(exact.to_integral_value(rounding=ROUND_FLOOR))
        floors[name] = floor
        remainders.append((exact - floor, name))
    left = total_units - sum(floors.values())
    # Largest remainder first; equal remainders by name, so the answer never depends on dict order.
    remainders.sort(key=lambda item: (-item[0], item[1]))
    for _, name in remainders[:left]:
        floors[name] += 1
    return {name: (quantum * floors[name] * sign).quantize(quantum) for name in weights}


def compute_allocation(
    rule: str,
    amount: Decimal,
    method: AllocationMethod,
    *,
    usage: Mapping[str, Decimal] | None = None,
    consumers: list[str] | None = None,
    weights: Mapping[str, Decimal] | None = None,
    quantum: Decimal = QUANTUM,
) -> Allocation:
    """Allocate ``amount`` (a shared cost) for ``rule`` by ``method``:

    - ``usage``: in proportion to ``usage`` (each consuming team's usage of the period: direct cost, or calls
      tagged for it). Teams with no usage get nothing. If nobody used anything, falls back to ``even``.
    - ``even``: the same share for each of ``consumers`` (default: the teams in ``usage``).
    - ``weights``: in proportion to the configured ``weights``.

    Raises :class:`AllocationError` when the method has no consumers to allocate to.
    """
    basis: dict[str, Decimal]
    used = method
    if method == "usage":
        basis = {team: Decimal(value) for team, value in (usage or {}).items() if value > 0}
        if not basis:
            used = "even"
    if used == "even":
        names = consumers if consumers else sorted((usage or {}).keys())
        basis = {team: Decimal(1) for team in names}
    elif used == "weights":
        if not weights:
            raise AllocationError(f"shared cost {rule!r}: method weights needs weights")
        basis = {team: Decimal(value) for team, value in weights.items()}
    shares = compute_largest_remainder(amount, basis, quantum)
    return Allocation(rule=rule, method=used, amount=amount, weights=basis, shares=shares)
