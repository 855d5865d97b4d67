"""Provider view for contract talks: spend, tokens and calls by provider and model per month, growth, a projection
for the next quarter, and what a discount or a committed-use agreement would have saved.

Role: :func:`build_provider_view` reads ``spend_daily`` (summed without FINAL; it carries re-rating corrections,
calls counted on original rows only) by UTC calendar month; :func:`compute_projection` and
:func:`compute_commit_saving` are pure.

Guarantee: the projection is deliberately simple and its assumption is stated in the report, because a negotiation
needs an order of magnitude with its assumption, not a forecast model. See the README, "Reports, recommendations
and re-rating".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from governance import html as h
from governance.html import money, pct
from governance.period import Period, month_period, previous_month
from governance.store import qualified

__all__ = ["ProviderView", "build_provider_view", "compute_commit_saving", "compute_projection", "render_html",
           "render_text"]

_ZERO = Decimal(0)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class ModelMonth:
    provider: str
    model: str
    month: str
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    calls: int


@dataclass
class ProviderView:
    months: list[str]
    rows: list[ModelMonth]
    discount_pct: Decimal | None = None
    commit_usd: Decimal | None = None
    commit_discount_pct: Decimal | None = None
    projection: dict[str, list[tuple[str, Decimal]]] = field(default_factory=dict)
    growth: dict[str, Decimal | None] = field(default_factory=dict)

    def provider_months(self) -> dict[str, dict[str, Decimal]]:
        out: dict[str, dict[str, Decimal]] = defaultdict(lambda: {m: _ZERO for m in self.months})
        for r in self.rows:
            out[r.provider][r.month] += r.cost_usd
        return dict(sorted(out.items()))

    def discount_saving(self) -> dict[str, Decimal]:
        if self.discount_pct is None:
            return {}
        return {p: sum(v.values(), _ZERO) * self.discount_pct / 100 for p, v in self.provider_months().items()}

    def commit_saving(self) -> dict[str, Decimal]:
        if self.commit_usd is None:
            return {}
        rate = self.commit_discount_pct or _ZERO
        # Only months in which the provider was used: before the first use there was nothing to commit to.
        return {p: sum((compute_commit_saving(s, self.commit_usd, rate) for s in v.values() if s > 0), _ZERO)
                for p, v in self.provider_months().items()}


def compute_commit_saving(spend: Decimal, commit: Decimal, discount_pct: Decimal) -> Decimal:
    """What a month with ``spend`` would have saved under a commitment of ``commit`` at ``discount_pct`` off.

    The commitment is paid whatever the use: ``cost = C x (1 - D/100) + max(0, spend - C)`` (use beyond it at the
    current rate) and ``saved = spend - cost``, negative when the commitment is not used up. A flat discount of D %
    saves ``spend x D / 100``."""
    cost = commit * (1 - discount_pct / 100) + max(_ZERO, spend - commit)
    return spend - cost


def compute_projection(history: list[Decimal], labels: list[str], *, months: int = 3) -> tuple[
    Decimal | None, list[tuple[str, Decimal]]
]:
    """(monthly growth rate or None, [(month label, projected spend)]) for the ``months`` after ``labels[-1]``.

    The months continue the recent growth, the geometric mean of the last (up to three) month-over-month ratios,
    compounded from the last full month; with less than two months of history the projection is flat."""
    ratios = [b / a for a, b in zip(history[-4:-1], history[-3:], strict=False) if a > 0 and b > 0]
    growth: Decimal | None = None
    if ratios:
        product = Decimal(1)
        for r in ratios:
            product *= r
        growth = product ** (Decimal(1) / len(ratios)) - 1
    last = history[-1] if history else _ZERO
    y, m = int(labels[-1][:4]), int(labels[-1][5:7])
    base = month_period(y, m)
    out = []
    for k in range(1, months + 1):
        label = previous_month(base, -k).label
        value = last * (1 + growth) ** k if growth is not None else last
        out.append((label, value.quantize(_CENT, ROUND_HALF_UP)))
    return growth, out


def build_provider_view(client: Any, database: str, last: Period, *, months: int = 6,
                        discount_pct: Decimal | None = None, commit_usd: Decimal | None = None,
                        commit_discount_pct: Decimal | None = None) -> ProviderView:
    """The ``months`` calendar months ending with ``last``. Read-only; blocks on one query."""
    first = previous_month(last, months - 1)
    labels = [previous_month(last, back).label for back in range(months - 1, -1, -1)]
    rows = client.query(
        "SELECT provider, model, toStartOfMonth(day) AS month, sum(cost_usd), sum(input_tokens), "
        f"sum(output_tokens), sum(calls) FROM {qualified(database, 'spend_daily')} "
        "WHERE day >= {lo:Date} AND day < {hi:Date} GROUP BY provider, model, month ORDER BY provider, model, month",
        parameters={"lo": first.start.date(), "hi": last.end.date()},
    ).result_rows
    view = ProviderView(labels, [
        ModelMonth(str(p), str(m), f"{mo.year:04d}-{mo.month:02d}", Decimal(c), int(i), int(o), int(n))
        for p, m, mo, c, i, o, n in rows
    ], discount_pct, commit_usd, commit_discount_pct)
    for provider, by_month in view.provider_months().items():
        growth, projection = compute_projection([by_month[m] for m in labels], labels)
        view.growth[provider] = growth
        view.projection[provider] = projection
    return view


def _growth_pct(growth: Decimal | None) -> str:
    return "n/a" if growth is None else pct(growth * 100)


def render_text(view: ProviderView) -> str:
    lines = [f"providers {view.months[0]} .. {view.months[-1]}"]
    for provider, by_month in view.provider_months().items():
        growth = view.growth.get(provider)
        lines.append(f"  {provider}: " + "  ".join(f"{m} {money(v)}" for m, v in by_month.items()))
        lines.append(f"    growth {pct(growth * 100) if growth is not None else 'n/a'}/month; next quarter "
                     + ", ".join(f"{m} {money(v)}" for m, v in view.projection.get(provider, [])))
        for r in (r for r in view.rows if r.provider == provider and r.month == view.months[-1]):
            lines.append(f"    {r.model}: {money(r.cost_usd)}  {r.input_tokens + r.output_tokens:,} tokens  "
                         f"{r.calls:,} calls")
    for provider, saved in view.discount_saving().items():
        lines.append(f"  a {view.discount_pct}% discount on {provider} would have saved {money(saved)}")
    for provider, saved in view.commit_saving().items():
        lines.append(f"  committing {money(view.commit_usd)}/month to {provider} at {view.commit_discount_pct}% off "
                     f"would have saved {money(saved)}")
    return "\n".join(lines) + "\n"


def render_html(view: ProviderView) -> str:
    by_provider = view.provider_months()
    body = [h.line_chart("Monthly spend by provider", view.months,
                         {p: list(v.values()) for p, v in by_provider.items()})]
    proj_labels = [m for m, _ in next(iter(view.projection.values()), [])]
    if proj_labels:
        body.append(h.line_chart("Projection for the next quarter (recent growth continued)",
                                 [view.months[-1], *proj_labels],
                                 {p: [by_provider[p][view.months[-1]], *(v for _, v in view.projection[p])]
                                  for p in by_provider}, height=220))
    body.append("<h2>Spend, tokens and calls by provider and model</h2>")
    body.append(h.table(["provider", "model", "month", "cost", "input tokens", "output tokens", "calls"],
                        [(r.provider, r.model, r.month, h.money(r.cost_usd), f"{r.input_tokens:,}",
                          f"{r.output_tokens:,}", f"{r.calls:,}") for r in view.rows], numeric=(3, 4, 5, 6)))
    body.append("<h2>Growth and what-ifs</h2>")
    discount, commit = view.discount_saving(), view.commit_saving()
    body.append(h.table(["provider", "growth / month", "discount saving", "commitment saving"],
                        [(p, _growth_pct(view.growth.get(p)),
                          h.money(discount.get(p)), h.money(commit.get(p))) for p in by_provider],
                        numeric=(1, 2, 3)))
    return h.page("Provider view", f"{view.months[0]} to {view.months[-1]} (UTC months)", body)
