"""Cost reviews: weekly for operators, monthly for leadership; as HTML and as a Slack digest through the alerting
channels, on a schedule the running system keeps (``finops report review --weekly --schedule``).

Role: :func:`build_review` gathers the weekly review (anomalies, budgets at risk, top movers, waste) or the
monthly one (trend, cost per task and per successful task, budget utilisation, savings found); :func:`render_html`
and :func:`build_slack_digest` (pure, within Slack's limits) present it; :func:`send_digest` posts it.

Guarantee: read-only on the ledger; the digest is not an alert, so it does not go through the alert outbox. See
the README, "Reports, recommendations and re-rating".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from finops.http import HttpRequest, UrllibTransport
from finops.money import format_usd
from governance import html as h
from governance.chargeback import BudgetLine, load_budgets, load_daily, load_ledger_lines, load_monthly
from governance.config import RecommendSettings, ReviewSchedule
from governance.period import Period, month_period, previous_month, week_period
from governance.recommend import RecommendationReport, build_recommendations
from governance.store import qualified
from schemas.errors import FinopsError

__all__ = ["Review", "build_review", "build_slack_digest", "compute_next_run", "render_html", "send_digest"]

Cadence = Literal["weekly", "monthly"]
_ZERO = Decimal(0)
_WHERE = "occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')}"


@dataclass(frozen=True)
class Mover:
    team: str
    agent_id: str
    previous_usd: Decimal
    current_usd: Decimal

    @property
    def change_usd(self) -> Decimal:
        return self.current_usd - self.previous_usd


@dataclass
class Review:
    cadence: Cadence
    period: Period
    total_usd: Decimal
    previous_total_usd: Decimal
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[BudgetLine] = field(default_factory=list)
    at_risk: list[tuple[BudgetLine, Decimal]] = field(default_factory=list)
    movers: list[Mover] = field(default_factory=list)
    recommendations: RecommendationReport | None = None
    daily: dict[str, list[Any]] = field(default_factory=dict)
    monthly: dict[str, list[Any]] = field(default_factory=dict)
    tasks: int = 0
    successful_tasks: int = 0
    task_cost_usd: Decimal = _ZERO

    @property
    def cost_per_task(self) -> Decimal | None:
        return None if self.tasks == 0 else self.task_cost_usd / self.tasks

    @property
    def cost_per_successful_task(self) -> Decimal | None:
        return None if self.successful_tasks == 0 else self.task_cost_usd / self.successful_tasks


def compute_next_run(now: datetime, cadence: Cadence, schedule: ReviewSchedule) -> datetime:
    """The next time (strictly after ``now``, UTC) the review of ``cadence`` is due. Pure."""
    now = now.astimezone(UTC)
    if cadence == "weekly":
        day = now.date() + timedelta(days=(schedule.weekly_weekday - now.weekday()) % 7)
        at = datetime(day.year, day.month, day.day, schedule.weekly_hour, tzinfo=UTC)
        return at if at > now else at + timedelta(days=7)
    at = datetime(now.year, now.month, schedule.monthly_day, schedule.monthly_hour, tzinfo=UTC)
    if at > now:
        return at
    nxt = previous_month(month_period(now.year, now.month), -1).start
    return nxt.replace(day=schedule.monthly_day, hour=schedule.monthly_hour)


def _total(client: Any, database: str, period: Period) -> Decimal:
    rows = client.query(f"SELECT sum(cost_usd) FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE}",
                        parameters={"lo": period.start, "hi": period.end}).result_rows
    return Decimal(rows[0][0] or 0)


def _movers(client: Any, database: str, current: Period, previous: Period, limit: int = 5) -> list[Mover]:
    rows = client.query(
        "SELECT team, agent_id, sumIf(cost_usd, occurred_at < {mid:DateTime64(6, 'UTC')}), "
        "sumIf(cost_usd, occurred_at >= {mid:DateTime64(6, 'UTC')}) "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE} GROUP BY team, agent_id",
        parameters={"lo": previous.start, "mid": current.start, "hi": current.end},
    ).result_rows
    movers = [Mover(str(t), str(a), Decimal(p), Decimal(c)) for t, a, p, c in rows]
    return sorted(movers, key=lambda m: (-abs(m.change_usd), m.agent_id))[:limit]


def _anomalies(client: Any, database: str, period: Period) -> list[dict[str, Any]]:
    rows = client.query(
        "SELECT occurred_at, team, agent_id, title, amount_usd, limit_usd FROM "
        f"{qualified(database, 'v_anomaly_alerts')} WHERE {_WHERE} "
        "ORDER BY occurred_at", parameters={"lo": period.start, "hi": period.end},
    ).result_rows
    return [{"at": r[0], "team": r[1], "agent_id": r[2], "title": r[3], "actual": r[4], "expected": r[5]}
            for r in rows]


def _tasks(client: Any, database: str, period: Period) -> tuple[int, int, Decimal]:
    rows = client.query(
        "SELECT count(), countIf(ok), sum(cost) FROM (SELECT task_id, sum(cost_usd) AS cost, "
        "argMaxIf(status, (occurred_at, attempt), row_kind = 'original') = 'ok' AS ok "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE} AND task_id != '' GROUP BY task_id)",
        parameters={"lo": period.start, "hi": period.end},
    ).result_rows
    return int(rows[0][0]), int(rows[0][1]), Decimal(rows[0][2] or 0)


def build_review(client: Any, database: str, cadence: Cadence, now: datetime, *,
                 recommend: RecommendSettings | None = None) -> Review:
    """The review due at ``now``: the last full ISO week (weekly) or calendar month (monthly). Read-only.

    Weekly (the ISO week before ``now``, UTC): anomalies (``v_anomaly_alerts`` raised in the week), budgets at risk
    (this month's team / project / agent budgets at >= 80 % or heading past their limit at the month's burn rate),
    top movers (agents whose spend changed most against the week before) and waste (``finops recommend`` for the
    week). Monthly (the calendar month before ``now``): the trend (daily spend and six months), cost per task and
    per successful task (all tasks' cost carried by the successful ones, as ``v_cost_per_successful_task`` defines
    it), budget utilisation, and the savings found (recommendations, per month)."""
    now = now.astimezone(UTC)
    if cadence == "weekly":
        period = week_period((now - timedelta(days=7)).date())
        previous = week_period((now - timedelta(days=14)).date())
    else:
        period = previous_month(month_period(now.year, now.month))
        previous = previous_month(period)
    review = Review(cadence, period, _total(client, database, period), _total(client, database, previous))
    review.recommendations = build_recommendations(client, database, period, recommend)
    if cadence == "weekly":
        review.anomalies = _anomalies(client, database, period)
        review.movers = _movers(client, database, period, previous)
        month = month_period(now.year, now.month)
        budgets = load_budgets(client, database, month, load_ledger_lines(client, database, month))
        elapsed = Decimal(max(1.0, (now - month.start).total_seconds())) / Decimal(
            (month.end - month.start).total_seconds())
        for b in budgets:
            projected = b.actual_usd / elapsed
            if b.limit_usd > 0 and (b.actual_usd >= b.limit_usd * Decimal("0.8") or projected > b.limit_usd):
                review.at_risk.append((b, projected.quantize(Decimal("0.01"))))
        review.budgets = budgets
    else:
        review.daily = load_daily(client, database, period)
        review.monthly = load_monthly(client, database, period)
        review.budgets = load_budgets(client, database, period, load_ledger_lines(client, database, period))
        review.tasks, review.successful_tasks, review.task_cost_usd = _tasks(client, database, period)
    return review


def render_html(review: Review) -> str:
    change = review.total_usd - review.previous_total_usd
    body = ["<div class=\"cards\">", h.card("spend", h.money(review.total_usd)),
            h.card("vs previous", h.money(change, signed=True), "bad" if change > 0 else "ok")]
    rec = review.recommendations
    if rec is not None:
        body.append(h.card("savings found / month", h.money(rec.monthly_saving_usd)))
        body.append(h.card("waste", h.pct(rec.waste_pct)))
    if review.cadence == "monthly":
        body.append(h.card("cost per task", h.money(review.cost_per_task)))
        body.append(h.card("cost per successful task", h.money(review.cost_per_successful_task)))
    body.append("</div>")
    if review.cadence == "weekly":
        body.append("<h2>Anomalies</h2>")
        body.append(h.table(["when", "team", "agent", "what", "actual", "expected"],
                            [(f"{a['at']:%Y-%m-%d %H:%M}", a["team"], a["agent_id"], a["title"], h.money(a["actual"]),
                              h.money(a["expected"])) for a in review.anomalies], numeric=(4, 5)))
        body.append("<h2>Budgets at risk (this month)</h2>")
        body.append(h.table(["scope", "limit", "spent", "projected month end"],
                            [(f"{b.scope_type} {b.scope_value}", h.money(b.limit_usd), h.money(b.actual_usd),
                              h.money(p)) for b, p in review.at_risk], numeric=(1, 2, 3)))
        body.append("<h2>Top movers (agents, week over week)</h2>")
        body.append(h.bar_chart("Change in spend by agent", [(f"{m.team}/{m.agent_id}", abs(m.change_usd))
                                                             for m in review.movers]))
        body.append(h.table(["team", "agent", "previous week", "this week", "change"],
                            [(m.team, m.agent_id, h.money(m.previous_usd), h.money(m.current_usd),
                              h.money(m.change_usd, signed=True)) for m in review.movers], numeric=(2, 3, 4)))
    else:
        if review.daily:
            labels = [d.strftime("%m-%d") for d, _ in next(iter(review.daily.values()))]
            body.append(h.line_chart("Daily spend by team", labels,
                                     {t: [c for _, c in v] for t, v in review.daily.items()}))
        if review.monthly:
            labels = [m for m, _ in next(iter(review.monthly.values()))]
            body.append(h.line_chart("Six-month trend by team", labels,
                                     {t: [c for _, c in v] for t, v in review.monthly.items()}, height=220))
        body.append("<h2>Budget utilisation</h2>")
        if review.budgets:
            body.append(h.bullet_chart("Budget versus actual", [(f"{b.scope_type} {b.scope_value}", b.actual_usd,
                                                                 b.limit_usd) for b in review.budgets]))
        body.append(h.table(["scope", "limit", "actual", "utilisation"],
                            [(f"{b.scope_type} {b.scope_value}", h.money(b.limit_usd), h.money(b.actual_usd),
                              h.pct(b.utilisation_pct)) for b in review.budgets], numeric=(1, 2, 3)))
    body.append("<h2>Waste and savings found</h2>")
    if rec is not None:
        body.append(h.table(["kind", "team", "agent", "finding", "saving / month"],
                            [(r.kind, r.team, r.agent_id, r.title, h.money(r.monthly_saving_usd))
                             for r in rec.items[:15]], numeric=(4,)))
    who = "operators" if review.cadence == "weekly" else "leadership"
    return h.page(f"{review.cadence.capitalize()} cost review {review.period.label}",
                  f"for {who}; {review.period.start:%Y-%m-%d} to {review.period.end:%Y-%m-%d} (UTC)", body)


def build_slack_digest(review: Review, report_url: str | None = None) -> dict[str, Any]:
    """The review as a Slack incoming-webhook payload (``text`` fallback + Block Kit). Pure."""
    rec = review.recommendations
    change = review.total_usd - review.previous_total_usd
    head = (f"{review.cadence.capitalize()} cost review {review.period.label}: {format_usd(review.total_usd)} "
            f"({'+' if change >= 0 else '-'}{format_usd(abs(change))} vs previous)")
    lines: list[str] = []
    if review.cadence == "weekly":
        lines.append(f"*Anomalies*: {len(review.anomalies)}")
        for b, projected in review.at_risk[:5]:
            lines.append(f"*Budget at risk*: {b.scope_type} {b.scope_value} {format_usd(b.actual_usd)} of "
                         f"{format_usd(b.limit_usd)}, heading to {format_usd(projected)}")
        for m in review.movers[:5]:
            lines.append(f"*Mover*: {m.team}/{m.agent_id} {'+' if m.change_usd >= 0 else '-'}"
                         f"{format_usd(abs(m.change_usd))}")
    else:
        cpt = review.cost_per_task
        cps = review.cost_per_successful_task
        lines.append(f"*Tasks*: {review.tasks:,} ({review.successful_tasks:,} successful); cost per task "
                     f"{format_usd(cpt)}, per successful task {format_usd(cps)}")
        for b in review.budgets[:5]:
            lines.append(f"*Budget*: {b.scope_type} {b.scope_value} {b.utilisation_pct}% of {format_usd(b.limit_usd)}")
    if rec is not None:
        lines.append(f"*Savings found*: {format_usd(rec.monthly_saving_usd)}/month "
                     f"(waste {rec.waste_pct.quantize(Decimal('0.1')) if rec.waste_pct is not None else 'n/a'}%)")
        for r in rec.items[:3]:
            lines.append(f"  - {r.kind}: {r.team}/{r.agent_id} {format_usd(r.monthly_saving_usd)}/month")
    text = "\n".join(lines)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:2900]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": text or "nothing to report"}},
    ]
    if report_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{report_url}|Full report>"}]})
    return {"text": head, "blocks": blocks}


def send_digest(payload: dict[str, Any], webhook_url: str, *, timeout: float = 10.0, transport: Any = None) -> int:
    """POST the digest to a Slack incoming webhook with the alerting package's transport. Returns the HTTP status;
    raises FinopsError for a non-2xx answer (the URL is a secret and never appears in the message)."""
    request = HttpRequest(url=webhook_url, body=json.dumps(payload).encode(),
                          headers={"Content-Type": "application/json"})
    response = (transport or UrllibTransport()).post(request, timeout)
    if not 200 <= response.status < 300:
        raise FinopsError(f"the Slack destination answered HTTP {response.status} to the review digest")
    return int(response.status)
