"""Money shown to people: one formatting of a USD amount for alerts, digests and reports (DESIGN §4: exact).

Amounts are ``Decimal`` end to end; formatting rounds half-up to cents only for display, never for storage.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

__all__ = ["format_usd"]

_CENT = Decimal("0.01")


def format_usd(amount: Decimal | None) -> str:
    """``$8,012.40``: rounded half-up to cents, thousands separated; ``n/a`` for None. Exact (Decimal formatting)."""
    if amount is None:
        return "n/a"
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents):,.2f}"

