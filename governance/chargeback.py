"""Chargeback and showback per team and project: cost by agent and model, shared costs allocated to the teams that
consume them, budget versus actual, and the calls that could not be priced.

Role: :func:`build_chargeback` reads ``usage_ledger FINAL`` over the period (UTC), originals and re-rating
corrections; chargeback allocates shared costs to the consuming teams (the bill a team would pay), showback shows
the same spend without the allocation (FinOps Foundation terms).

Guarantee: a report equals the ledger to the cent: every ledger row lands in exactly one cost line, shared lines are
moved, never copied (:mod:`governance.allocation`, shares summing exactly), and
:attr:`ChargebackReport.ledger_total_usd` is queried independently so the report states whether it matches.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from governance import html as h
from governance.allocation import Allocation, compute_allocation
from governance.config import GovernanceConfig
from governance.html import money
from governance.period import Period, previous_month
from governance.store import qualified

__all__ = [
    "AllocationLine",
    "BudgetLine",
    "ChargebackReport",
    "CostLine",
    "UnpricedLine",
    "build_chargeback",
    "compute_chargeback",
    "load_ledger_lines",
    "render_csv",
]

Mode = Literal["chargeback", "showback"]
_ZERO = Decimal(0)
_PERIOD_WHERE = "occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')}"


@dataclass(frozen=True)
class CostLine:
    """Spend of one team / project / agent / provider / model in the period (corrections included)."""

    team: str
    project: str
    agent_id: str
    provider: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    unpriced_calls: int
    cost_usd: Decimal
    #: The shared-cost rule this line belongs to (moved to consumers in chargeback), or None for direct spend.
    shared_rule: str | None = None


@dataclass(frozen=True)
class AllocationLine:
    """The part of shared cost ``rule`` charged to ``team`` and the basis (weight) it was computed from."""

    rule: str
    method: str
    owner_teams: tuple[str, ...]
    team: str
    weight: Decimal
    share_usd: Decimal


@dataclass(frozen=True)
class BudgetLine:
    """A budget compared with the ledger spend of its scope in the report period."""

    policy_id: str
    scope_type: str
    scope_value: str
    budget_period: str
    limit_usd: Decimal
    actual_usd: Decimal
    scaled: bool

    @property
    def utilisation_pct(self) -> Decimal | None:
        return None if self.limit_usd == 0 else (self.actual_usd * 100 / self.limit_usd).quantize(Decimal("0.1"))

    @property
    def remaining_usd(self) -> Decimal:
        return self.limit_usd - self.actual_usd


@dataclass(frozen=True)
class UnpricedLine:
    """Calls of one agent and model that are still unpriced (no re-rating priced them); they are NOT $0."""

    team: str
    project: str
    agent_id: str
    provider: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    first_at: datetime
    last_at: datetime
    reason: str


@dataclass
class ChargebackReport:
    """Everything the CSV, the HTML page and the terminal summary show."""

    mode: Mode
    period: Period
    team_filter: str | None
    lines: list[CostLine]
    allocations: list[AllocationLine]
    allocation_sets: list[Allocation]
    budgets: list[BudgetLine]
    unpriced: list[UnpricedLine]
    #: team -> [(UTC day, cost)] for the period (direct spend, for the trend chart)
    daily: dict[str, list[tuple[date, Decimal]]]
    #: team -> [(month label, cost)] for the six months up to the period (history for the trend chart)
    monthly: dict[str, list[tuple[str, Decimal]]]
    ledger_total_usd: Decimal
    notes: list[str] = field(default_factory=list)

    def _visible(self, team: str) -> bool:
        return self.team_filter is None or team == self.team_filter

    @property
    def charged_lines(self) -> list[CostLine]:
        """Lines a team pays for directly: in chargeback the shared lines are left out (they are allocated)."""
        return [
            line for line in self.lines
            if self._visible(line.team) and not (self.mode == "chargeback" and line.shared_rule is not None)
        ]

    def team_totals(self) -> dict[str, dict[str, Decimal]]:
        """team -> {direct, allocated, total} (showback: allocated is 0 and shared lines count as direct)."""
        out: dict[str, dict[str, Decimal]] = defaultdict(lambda: {"direct": _ZERO, "allocated": _ZERO, "total": _ZERO})
        for line in self.charged_lines:
            out[line.team]["direct"] += line.cost_usd
            out[line.team]["total"] += line.cost_usd
        for alloc in self.allocations:
            if self._visible(alloc.team):
                out[alloc.team]["allocated"] += alloc.share_usd
                out[alloc.team]["total"] += alloc.share_usd
        return dict(sorted(out.items()))

    def project_totals(self) -> dict[tuple[str, str], Decimal]:
        out: dict[tuple[str, str], Decimal] = defaultdict(lambda: _ZERO)
        for line in self.charged_lines:
            out[(line.team, line.project)] += line.cost_usd
        return dict(sorted(out.items()))

    @property
    def total_usd(self) -> Decimal:
        """What the report charges in total (all teams: equals the ledger; one team: that team's bill)."""
        return sum((t["total"] for t in self.team_totals().values()), _ZERO)

    @property
    def shared_total_usd(self) -> Decimal:
        return sum((line.cost_usd for line in self.lines if line.shared_rule is not None), _ZERO)

    @property
    def balanced(self) -> bool:
        """True when the fleet-wide report equals the ledger exactly (always checked, also with a team filter)."""
        direct = sum((line.cost_usd for line in self.lines), _ZERO)
        if self.mode == "showback":
            return direct == self.ledger_total_usd
        unshared = sum((line.cost_usd for line in self.lines if line.shared_rule is None), _ZERO)
        allocated = sum((a.share_usd for a in self.allocations), _ZERO)
        return direct == self.ledger_total_usd and unshared + allocated == self.ledger_total_usd


# ---------------------------------------------------------------------------------------------------- pure part


def compute_chargeback(
    mode: Mode,
    period: Period,
    lines: Iterable[CostLine],
    config: GovernanceConfig,
    *,
    tagged_usage: Mapping[str, Mapping[str, Decimal]] | None = None,
    team_filter: str | None = None,
    ledger_total_usd: Decimal,
    budgets: list[BudgetLine] | None = None,
    unpriced: list[UnpricedLine] | None = None,
    daily: dict[str, list[tuple[date, Decimal]]] | None = None,
    monthly: dict[str, list[tuple[str, Decimal]]] | None = None,
) -> ChargebackReport:
    """Classify ``lines`` as shared or direct by ``config`` and, in chargeback mode, allocate each shared cost.

    ``tagged_usage`` is rule name -> team -> calls tagged for that team (for rules with a ``consumer_tag``). Pure.
    Raises AllocationError when a shared cost has nobody to go to.
    """
    classified: list[CostLine] = []
    for line in lines:
        rule = config.shared_rule_for(line.team, line.project, line.agent_id)
        classified.append(_with_rule(line, rule.name if rule else None))
    allocations: list[AllocationLine] = []
    sets: list[Allocation] = []
    notes: list[str] = []
    if mode == "chargeback":
        direct_by_team: dict[str, Decimal] = defaultdict(lambda: _ZERO)
        for line in classified:
            if line.shared_rule is None:
                direct_by_team[line.team] += line.cost_usd
        for rule in config.shared_costs:
            own = [line for line in classified if line.shared_rule == rule.name]
            amount = sum((line.cost_usd for line in own), _ZERO)
            if not own:
                continue
            owners = tuple(sorted({line.team for line in own}))
            consumers = list(rule.consumers)
            if rule.method == "usage" and rule.consumer_tag:
                usage = dict((tagged_usage or {}).get(rule.name, {}))
                if consumers:
                    usage = {t: v for t, v in usage.items() if t in consumers}
                if not usage:
                    notes.append(f"{rule.name}: no calls tagged {rule.consumer_tag}; split by direct cost instead")
                    usage = _direct_usage(direct_by_team, consumers)
            else:
                usage = _direct_usage(direct_by_team, consumers)
            if not usage and not consumers:
                # Nobody else spent anything: the owners consume their own service.
                usage = {team: Decimal(1) for team in owners}
                notes.append(f"{rule.name}: no consuming team had direct spend; charged to its owners")
            result = compute_allocation(
                rule.name, amount, rule.method, usage=usage, consumers=consumers or sorted(usage),
                weights=rule.weights,
            )
            sets.append(result)
            for team, share in sorted(result.shares.items()):
                allocations.append(
                    AllocationLine(rule.name, result.method, owners, team, result.weights.get(team, _ZERO), share)
                )
    return ChargebackReport(
        mode=mode, period=period, team_filter=team_filter, lines=classified, allocations=allocations,
        allocation_sets=sets, budgets=budgets or [], unpriced=unpriced or [], daily=daily or {},
        monthly=monthly or {}, ledger_total_usd=ledger_total_usd, notes=notes,
    )


def _direct_usage(direct_by_team: Mapping[str, Decimal], consumers: list[str]) -> dict[str, Decimal]:
    return {
        team: cost for team, cost in direct_by_team.items() if cost > 0 and (not consumers or team in consumers)
    }


def _with_rule(line: CostLine, rule: str | None) -> CostLine:
    return CostLine(
        line.team, line.project, line.agent_id, line.provider, line.model, line.calls, line.input_tokens,
        line.output_tokens, line.unpriced_calls, line.cost_usd, rule,
    )


# ---------------------------------------------------------------------------------------------------- queries


def _params(period: Period) -> dict[str, Any]:
    return {"lo": period.start, "hi": period.end}


def load_ledger_lines(client: Any, database: str, period: Period) -> list[CostLine]:
    """Cost lines of the period from ``usage_ledger FINAL`` (originals and corrections). Blocks on the query."""
    sql = (
        "SELECT team, project, agent_id, provider, model, countIf(row_kind = 'original') AS calls, "
        "sum(input_tokens), sum(output_tokens), "
        "countIf(row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced, sum(cost_usd) "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_PERIOD_WHERE} "
        "GROUP BY team, project, agent_id, provider, model ORDER BY team, project, agent_id, provider, model"
    )
    return [
        CostLine(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]),
                 Decimal(r[9]))
        for r in client.query(sql, parameters=_params(period)).result_rows
    ]


def load_ledger_total(client: Any, database: str, period: Period) -> Decimal:
    """``sum(cost_usd)`` of the period straight from the ledger (the number the report must equal)."""
    rows = client.query(
        f"SELECT sum(cost_usd) FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_PERIOD_WHERE}",
        parameters=_params(period),
    ).result_rows
    return Decimal(rows[0][0] or 0)


def load_tagged_usage(client: Any, database: str, period: Period, config: GovernanceConfig) -> dict[
    str, dict[str, Decimal]
]:
    """For each shared rule with a ``consumer_tag``: team -> calls of the rule's rows tagged for that team."""
    out: dict[str, dict[str, Decimal]] = {}
    for rule in config.shared_costs:
        if rule.method != "usage" or not rule.consumer_tag:
            continue
        rows = client.query(
            "SELECT team, project, agent_id, tags[{tag:String}] AS consumer, countIf(row_kind = 'original') "
            f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_PERIOD_WHERE} "
            "GROUP BY team, project, agent_id, consumer",
            parameters={**_params(period), "tag": rule.consumer_tag},
        ).result_rows
        usage: dict[str, Decimal] = defaultdict(lambda: _ZERO)
        for team, project, agent_id, consumer, calls in rows:
            if consumer and config.shared_rule_for(team, project, agent_id) is rule:
                usage[str(consumer)] += Decimal(int(calls))
        out[rule.name] = dict(usage)
    return out


def load_budgets(client: Any, database: str, period: Period, lines: list[CostLine]) -> list[BudgetLine]:
    """Enabled team / project / agent budgets with the scope's ledger spend in the period.

    Spend is before allocation (budgets are enforced on what a scope's own agents spend). A budget whose period is a
    day or a week is scaled to the report period (limit x days / period days) and marked as such."""
    rows = client.query(
        "SELECT policy_id, scope_type, scope_value, period, limit_usd "
        f"FROM {qualified(database, 'budgets')} FINAL WHERE NOT deleted AND enabled "
        "AND scope_type IN ('team', 'project', 'agent') ORDER BY scope_type, scope_value, policy_id"
    ).result_rows
    spend: dict[tuple[str, str], Decimal] = defaultdict(lambda: _ZERO)
    for line in lines:
        spend[("team", line.team)] += line.cost_usd
        spend[("project", line.project)] += line.cost_usd
        spend[("agent", line.agent_id)] += line.cost_usd
    out: list[BudgetLine] = []
    for policy_id, scope_type, scope_value, budget_period, limit in rows:
        limit_usd = Decimal(limit)
        scaled = False
        if budget_period == "day":
            limit_usd, scaled = limit_usd * period.days, True
        elif budget_period == "week":
            limit_usd, scaled = (limit_usd * period.days / 7).quantize(Decimal("1e-12")), True
        elif budget_period == "month" and not _is_month(period):
            limit_usd = (limit_usd * period.days / 30).quantize(Decimal("1e-12"))
            scaled = True
        out.append(BudgetLine(str(policy_id), str(scope_type), str(scope_value), str(budget_period), limit_usd,
                              spend[(str(scope_type), str(scope_value))], scaled))
    return out


def _is_month(period: Period) -> bool:
    return len(period.label) == 7 and period.label[4] == "-"


def load_unpriced(client: Any, database: str, period: Period) -> list[UnpricedLine]:
    """Original rows still unpriced: not priced later by a re-rating correction."""
    ledger = qualified(database, "usage_ledger")
    rows = client.query(
        "SELECT team, project, agent_id, provider, model, count(), sum(input_tokens), sum(output_tokens), "
        "min(occurred_at), max(occurred_at), any(ifNull(unpriced_reason, '')) "
        f"FROM {ledger} FINAL WHERE {_PERIOD_WHERE} AND row_kind = 'original' AND pricing_status = 'unpriced' "
        "AND (source, event_id) NOT IN ("
        f"  SELECT source, event_id FROM {ledger} FINAL WHERE {_PERIOD_WHERE} "
        "   AND row_kind = 'correction' AND pricing_status = 'priced') "
        "GROUP BY team, project, agent_id, provider, model ORDER BY count() DESC, team, agent_id",
        parameters=_params(period),
    ).result_rows
    return [
        UnpricedLine(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]),
                     r[8], r[9], str(r[10]))
        for r in rows
    ]


def load_daily(client: Any, database: str, period: Period) -> dict[str, list[tuple[date, Decimal]]]:
    """team -> cost per UTC day of the period, every day present (0 when nothing was spent)."""
    rows = client.query(
        "SELECT team, toDate(occurred_at, 'UTC') AS day, sum(cost_usd) "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_PERIOD_WHERE} GROUP BY team, day",
        parameters=_params(period),
    ).result_rows
    by_team: dict[str, dict[date, Decimal]] = defaultdict(dict)
    for team, day, cost in rows:
        by_team[str(team)][day] = Decimal(cost)
    days = period.day_list()
    return {team: [(d, values.get(d, _ZERO)) for d in days] for team, values in sorted(by_team.items())}


def load_monthly(client: Any, database: str, period: Period, months: int = 6) -> dict[str, list[tuple[str, Decimal]]]:
    """team -> cost per calendar month for the ``months`` months ending with the period's (from ``spend_daily``,
    which carries corrections too; SummingMergeTree, so summed without FINAL)."""
    first = previous_month(period, months - 1)
    rows = client.query(
        "SELECT team, toStartOfMonth(day) AS month, sum(cost_usd) "
        f"FROM {qualified(database, 'spend_daily')} "
        "WHERE day >= {lo:Date} AND day < {hi:Date} GROUP BY team, month",
        parameters={"lo": first.start.date(), "hi": period.end.date()},
    ).result_rows
    labels = [previous_month(period, back).label for back in range(months - 1, -1, -1)]
    by_team: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for team, month, cost in rows:
        by_team[str(team)][f"{month.year:04d}-{month.month:02d}"] = Decimal(cost)
    return {team: [(m, values.get(m, _ZERO)) for m in labels] for team, values in sorted(by_team.items())}


def build_chargeback(
    client: Any,
    database: str,
    period: Period,
    config: GovernanceConfig,
    *,
    mode: Mode = "chargeback",
    team_filter: str | None = None,
) -> ChargebackReport:
    """Query the ledger, budgets and rollups for ``period`` and compute the report. Read-only; blocks on queries."""
    lines = load_ledger_lines(client, database, period)
    return compute_chargeback(
        mode, period, lines, config,
        tagged_usage=load_tagged_usage(client, database, period, config) if mode == "chargeback" else None,
        team_filter=team_filter,
        ledger_total_usd=load_ledger_total(client, database, period),
        budgets=load_budgets(client, database, period, lines),
        unpriced=load_unpriced(client, database, period),
        daily=load_daily(client, database, period),
        monthly=load_monthly(client, database, period),
    )


# ---------------------------------------------------------------------------------------------------- CSV


CSV_COLUMNS: tuple[str, ...] = (
    "period", "mode", "record", "team", "project", "agent_id", "provider", "model", "shared_rule", "calls",
    "input_tokens", "output_tokens", "unpriced_calls", "cost_usd", "weight", "limit_usd", "utilisation_pct",
)


def render_csv(report: ChargebackReport) -> str:
    """One CSV with a ``record`` column: ``cost`` (a team / project / agent / model line), ``allocation`` (a team's
    share of a shared cost; ``agent_id`` is empty, ``shared_rule`` names it), ``shared`` (in chargeback, a shared
    line that was allocated, for transparency: not part of any team's total), ``budget`` and ``unpriced``.
    Amounts are exact (12 decimal places): summing ``cost`` and ``allocation`` rows gives the report total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    base = [report.period.label, report.mode]
    visible = report._visible
    for line in report.lines:
        if not visible(line.team):
            continue
        record = "shared" if report.mode == "chargeback" and line.shared_rule is not None else "cost"
        writer.writerow([*base, record, line.team, line.project, line.agent_id, line.provider, line.model,
                         line.shared_rule or "", line.calls, line.input_tokens, line.output_tokens,
                         line.unpriced_calls, line.cost_usd, "", "", ""])
    for alloc in report.allocations:
        if visible(alloc.team):
            writer.writerow([*base, "allocation", alloc.team, "", "", "", "", alloc.rule, "", "", "", "",
                             alloc.share_usd, alloc.weight, "", ""])
    for budget in report.budgets:
        team = budget.scope_value if budget.scope_type == "team" else ""
        if report.team_filter is not None and budget.scope_type == "team" and team != report.team_filter:
            continue
        writer.writerow([*base, "budget", team, budget.scope_value if budget.scope_type == "project" else "",
                         budget.scope_value if budget.scope_type == "agent" else "", "", "", budget.policy_id, "",
                         "", "", "", budget.actual_usd, "", budget.limit_usd, budget.utilisation_pct or ""])
    for u in report.unpriced:
        if visible(u.team):
            writer.writerow([*base, "unpriced", u.team, u.project, u.agent_id, u.provider, u.model, "", u.calls,
                             u.input_tokens, u.output_tokens, u.calls, "", "", "", ""])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- HTML, text


def render_html(report: ChargebackReport) -> str:
    """The report as one self-contained HTML page with its charts (see :mod:`governance.html`)."""
    scope = f" for team {report.team_filter}" if report.team_filter else ""
    title = f"{report.mode.capitalize()} {report.period.label}{scope}"
    subtitle = (
        f"{report.period.start:%Y-%m-%d} to {report.period.end:%Y-%m-%d} (UTC, end exclusive); "
        + ("shared costs allocated to the consuming teams" if report.mode == "chargeback"
           else "showback: each team's own spend, shared costs not allocated")
    )
    totals = report.team_totals()
    unpriced_calls = sum(u.calls for u in report.unpriced if report._visible(u.team))
    body = [
        "<div class=\"cards\">",
        h.card("total charged" if report.mode == "chargeback" else "total spend", h.money(report.total_usd)),
        h.card("ledger total (all teams)", h.money(report.ledger_total_usd)),
        h.card("matches the ledger", "yes" if report.balanced else "NO", "ok" if report.balanced else "bad"),
        h.card("shared costs", h.money(report.shared_total_usd)),
        h.card("unpriced calls", str(unpriced_calls), "bad" if unpriced_calls else "ok"),
        "</div>",
    ]
    daily = {t: v for t, v in report.daily.items() if report._visible(t)}
    if daily:
        labels = [d.strftime("%m-%d") for d, _ in next(iter(daily.values()))]
        body.append(h.line_chart("Daily spend by team (ledger, UTC days)", labels,
                                 {t: [c for _, c in v] for t, v in daily.items()}))
    monthly = {t: v for t, v in report.monthly.items() if report._visible(t)}
    if monthly:
        labels = [m for m, _ in next(iter(monthly.values()))]
        body.append(h.line_chart("Monthly spend by team (last six months)", labels,
                                 {t: [c for _, c in v] for t, v in monthly.items()}, height=240))
    body.append("<h2>By team</h2>")
    body.append(h.bar_chart("Cost by team", [(t, v["total"]) for t, v in
                                             sorted(totals.items(), key=lambda kv: -kv[1]["total"])]))
    body.append(h.table(["team", "direct", "allocated shared", "total"],
                        [(t, h.money(v["direct"]), h.money(v["allocated"]), h.money(v["total"]))
                         for t, v in totals.items()], numeric=(1, 2, 3)))
    body.append("<h2>By team and project</h2>")
    body.append(h.table(["team", "project", "cost"],
                        [(t, p, h.money(c)) for (t, p), c in report.project_totals().items()], numeric=(2,)))
    if report.mode == "chargeback":
        body.append("<h2>Shared-cost allocation</h2>")
        for alloc in report.allocation_sets:
            body.append(f"<p><b>{h.esc(alloc.rule)}</b>: {h.esc(h.money(alloc.amount))} by "
                        f"{h.esc(alloc.method)}{' share' if alloc.method == 'usage' else ''}; shares sum to "
                        f"{h.esc(h.money(sum(alloc.shares.values(), _ZERO)))} exactly.</p>")
            body.append(h.table(["team", "weight", "share"],
                                [(t, alloc.weights.get(t, _ZERO), h.money(s)) for t, s in sorted(alloc.shares.items())
                                 if report._visible(t)], numeric=(1, 2)))
        if not report.allocation_sets:
            body.append("<p class=\"note\">No shared costs in this period (or none configured).</p>")
        for note in report.notes:
            body.append(f"<p class=\"note\">{h.esc(note)}</p>")
    body.append("<h2>Budget versus actual</h2>")
    budgets = [b for b in report.budgets if report.team_filter is None or b.scope_type != "team"
               or b.scope_value == report.team_filter]
    if budgets:
        body.append(h.bullet_chart("Budget versus actual", [(f"{b.scope_type} {b.scope_value}", b.actual_usd,
                                                             b.limit_usd) for b in budgets]))
    body.append(h.table(["scope", "budget period", "limit (this period)", "actual", "utilisation", "remaining"],
                        [(f"{b.scope_type} {b.scope_value}", b.budget_period + (" (scaled)" if b.scaled else ""),
                          h.money(b.limit_usd), h.money(b.actual_usd), h.pct(b.utilisation_pct),
                          h.money(b.remaining_usd)) for b in budgets], numeric=(2, 3, 4, 5)))
    body.append("<h2>Cost by agent and model</h2>")
    body.append(h.table(
        ["team", "project", "agent", "provider", "model", "calls", "input tok", "output tok", "cost", "shared"],
        [(line.team, line.project, line.agent_id, line.provider, line.model, f"{line.calls:,}",
          f"{line.input_tokens:,}", f"{line.output_tokens:,}", h.money(line.cost_usd), line.shared_rule or "")
         for line in sorted(report.lines, key=lambda x: -x.cost_usd) if report._visible(line.team)],
        numeric=(5, 6, 7, 8)))
    body.append("<h2>Unpriced calls</h2><p class=\"note\">Calls whose model neither the catalogue nor the price book "
                "knows. They are not $0: add the model to the price book and run <code>finops reprice</code>.</p>")
    body.append(h.table(["team", "project", "agent", "provider", "model", "calls", "input tok", "output tok",
                         "first", "last", "reason"],
                        [(u.team, u.project, u.agent_id, u.provider, u.model, u.calls, f"{u.input_tokens:,}",
                          f"{u.output_tokens:,}", f"{u.first_at:%Y-%m-%d %H:%M}", f"{u.last_at:%Y-%m-%d %H:%M}",
                          u.reason) for u in report.unpriced if report._visible(u.team)], numeric=(5, 6, 7)))
    return h.page(title, subtitle, body)


def render_text(report: ChargebackReport) -> str:
    """A terminal summary: totals per team, the allocation, and whether the report equals the ledger."""
    lines = [f"{report.mode} {report.period.label}" + (f" team {report.team_filter}" if report.team_filter else "")]
    for team, v in report.team_totals().items():
        lines.append(f"  {team:<24} direct {money(v['direct']):>14}  allocated {money(v['allocated']):>12}  "
                     f"total {money(v['total']):>14}")
    lines.append(f"  {'total':<24} {money(report.total_usd)} (ledger {money(report.ledger_total_usd)}, "
                 f"{'matches' if report.balanced else 'DOES NOT MATCH'})")
    for alloc in report.allocation_sets:
        shares = ", ".join(f"{t} {money(s)}" for t, s in sorted(alloc.shares.items()))
        lines.append(f"  shared {alloc.rule}: {money(alloc.amount)} by {alloc.method} -> {shares}")
    unpriced = sum(u.calls for u in report.unpriced if report._visible(u.team))
    if unpriced:
        lines.append(f"  unpriced calls: {unpriced} (see the report's unpriced section)")
    return "\n".join(lines) + "\n"
