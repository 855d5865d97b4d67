"""Every SQL statement the dashboard API runs, each filtered by the caller's scope.

Rules this module keeps (and tests/integration/test_api_rbac.py checks):
* Every statement is a constant string. Request values reach ClickHouse only as ``{name:Type}`` parameters bound
  by the server (clickhouse-connect ``parameters=``); nothing from a request is formatted into SQL text.
* Every read of team data carries :data:`SCOPE` (or :data:`BUDGET_SCOPE`) with the caller's ``scope_*`` parameters
  (:meth:`dashboard.auth.Scope.params`), so filtering happens in ClickHouse, not after the fact in Python.
* Tables are unqualified: they resolve to the client's database (settings, never a request).
* Money stays Decimal; ratios are computed here with Decimal (12 places, like the views), never with floats.
* Days are UTC days (the rollups' days). ``now`` is passed in, so tests pin the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

from dashboard.auth import Scope
from finops.clock import as_utc
from finops.task_tree import compute_task_forest, largest_roots, node_from_row, rollup_as_json, summary_as_json
from schemas.control import binds

__all__ = [
    "BUDGET_SCOPE",
    "SCOPE",
    "TREND_DAYS",
    "agent_control",
    "agent_detail",
    "agent_owner",
    "agents",
    "alert_detail",
    "alerts",
    "approvals",
    "audit",
    "bill_vs_ledger",
    "budgets",
    "chargeback",
    "models",
    "overview",
    "recommendations",
    "task_trees",
    "team_detail",
    "teams",
    "waste",
]

TREND_DAYS = 30
_PLACES = Decimal("0.000000000001")
ZERO = Decimal(0)

# The row filter every team-data query carries. `team` / `project` are columns of the queried table.
SCOPE = (
    "({scope_all:UInt8} = 1 OR (team IN {scope_teams:Array(String)} "
    "AND (empty({scope_projects:Array(String)}) OR project IN {scope_projects:Array(String)})))"
)
# Budgets have no team column: a budget is visible when its scope is a visible team, or a project or agent that
# has spend in a visible team. Tag budgets cut across teams and are for finops admins only.
BUDGET_SCOPE = (
    "({scope_all:UInt8} = 1"
    " OR (scope_type = 'team' AND has({scope_teams:Array(String)}, scope_value))"
    " OR (scope_type = 'project' AND scope_value IN (SELECT DISTINCT project FROM spend_daily WHERE " + SCOPE + "))"
    " OR (scope_type = 'agent' AND scope_value IN (SELECT DISTINCT agent_id FROM spend_daily WHERE " + SCOPE + ")))"
)


class Runner(Protocol):
    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


def ratio(amount: Decimal | None, count: int | Decimal | None) -> Decimal | None:
    """``amount / count`` truncated at 12 places (the views' convention); None when there is nothing to divide."""
    if amount is None or not count:
        return None
    return (Decimal(amount) / Decimal(count)).quantize(_PLACES, rounding=ROUND_DOWN)


def _days(now: datetime) -> dict[str, date]:
    today = now.date()
    return {
        "today": today,
        "month_start": today.replace(day=1),
        "since": today - timedelta(days=TREND_DAYS - 1),
    }


def _params(scope: Scope, now: datetime, **extra: Any) -> dict[str, Any]:
    return {**scope.params(), **_days(now), **extra}


def _fill_trend(rows: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """One point per UTC day of the trend window; a day without rows had no spend (0), which the chart shows."""
    by_day = {row["day"]: row["cost_usd"] for row in rows}
    start = _days(now)["since"]
    return [
        {"day": start + timedelta(days=i), "cost_usd": by_day.get(start + timedelta(days=i), ZERO)}
        for i in range(TREND_DAYS)
    ]


# ---- organisation overview ----------------------------------------------------------------------------------------
_SPEND_NOW = (
    "SELECT sumIf(cost_usd, day = {today:Date}) AS today_usd, sum(cost_usd) AS month_usd, "
    "sumIf(calls, day = {today:Date}) AS calls_today, sum(calls) AS calls_month, "
    "sumIf(unpriced_calls, day = {today:Date}) AS unpriced_today, sum(unpriced_calls) AS unpriced_month "
    "FROM spend_daily WHERE day >= {month_start:Date} AND day <= {today:Date} AND " + SCOPE
)
_TREND = (
    "SELECT day, sum(cost_usd) AS cost_usd FROM spend_daily "
    "WHERE day >= {since:Date} AND day <= {today:Date} AND " + SCOPE + " GROUP BY day ORDER BY day"
)
_BY_TEAM = (
    "SELECT team, sumIf(cost_usd, day = {today:Date}) AS today_usd, "
    "sumIf(cost_usd, day >= {month_start:Date}) AS month_usd, uniqExact(agent_id) AS agents "
    "FROM spend_daily WHERE day >= least({since:Date}, {month_start:Date}) AND day <= {today:Date} AND " + SCOPE
    + " GROUP BY team ORDER BY month_usd DESC, team"
)
# Anomalies and waste come from the views that define them (migration 0011), the same ones `finops recommend`, the
# reviews and Grafana read, so every page shows one number.
_ANOMALY_COUNT = (
    "SELECT count() AS anomalies FROM v_anomaly_alerts WHERE occurred_at >= {month_start:Date} "
    "AND toDate(occurred_at, 'UTC') <= {today:Date} AND " + SCOPE
)
_ANOMALIES = (
    "SELECT alert_id, kind, state, occurred_at, team, project, agent_id, model, title, summary, amount_usd, limit_usd, "
    "severity FROM v_anomaly_alerts WHERE occurred_at >= {month_start:Date} "
    "AND toDate(occurred_at, 'UTC') <= {today:Date} AND " + SCOPE + " ORDER BY occurred_at DESC, alert_id LIMIT 10"
)
# The waste percentage of a span of UTC days [{lo}, {hi}]: summed avoidable cost over summed cost of the view's rows
# (the view's own formula at a coarser grain), computed by ClickHouse in Decimal like the view.
_WASTE = (
    "SELECT sum(w.cost_usd) AS cost_usd, sum(w.avoidable_cost_usd) AS avoidable_usd, sum(w.signals) AS signals, "
    "if(sum(w.cost_usd) = 0, NULL, sum(w.avoidable_cost_usd) * 100 / sum(w.cost_usd)) AS waste_pct "
    "FROM v_waste_by_project AS w WHERE w.day >= {lo:Date} AND w.day <= {hi:Date} AND " + SCOPE
)


def waste(db: Runner, scope: Scope, lo: date, hi: date) -> dict[str, Any]:
    """Cost, avoidable cost, signals and waste percentage (None without spend) of UTC days ``lo`` to ``hi``
    (inclusive) in scope, from ``v_waste_by_project``."""
    row = db.select(_WASTE, {**scope.params(), "lo": lo, "hi": hi})[0]
    return {"cost_usd": row["cost_usd"] or ZERO, "avoidable_usd": row["avoidable_usd"] or ZERO,
            "signals": row["signals"], "waste_pct": row["waste_pct"], "from": lo, "to": hi}


def overview(db: Runner, scope: Scope, now: datetime) -> dict[str, Any]:
    """Spend today and this month, the 30-day trend, teams, budget utilisation, anomalies and waste percentage."""
    params = _params(scope, now)
    spend = db.select(_SPEND_NOW, params)[0]
    month_waste = waste(db, scope, params["month_start"], params["today"])
    month = spend["month_usd"] or ZERO
    budget_rows = budgets(db, scope)
    return {
        "as_of": now,
        "today_usd": spend["today_usd"] or ZERO,
        "month_usd": month,
        "calls_today": spend["calls_today"],
        "calls_month": spend["calls_month"],
        # Unpriced calls beside the dollars: their cost is unknown, never $0 and never invisible (DESIGN §4).
        "unpriced_calls_today": spend["unpriced_today"],
        "unpriced_calls_month": spend["unpriced_month"],
        "trend": _fill_trend(db.select(_TREND, params), now),
        "teams": db.select(_BY_TEAM, params),
        "budgets": budget_rows,
        "budgets_over_80": sum(1 for b in budget_rows if (b["utilisation_pct"] or ZERO) >= 80),
        "anomalies": {"count": db.select(_ANOMALY_COUNT, params)[0]["anomalies"],
                      "recent": db.select(_ANOMALIES, params)},
        "waste": month_waste,
    }


def teams(db: Runner, scope: Scope, now: datetime) -> list[dict[str, Any]]:
    """Teams in scope with spend today / this month and how many agents spent in the last 30 days."""
    return db.select(_BY_TEAM, _params(scope, now))


# ---- team view ----------------------------------------------------------------------------------------------------
_TEAM_TREND = (
    "SELECT day, sum(cost_usd) AS cost_usd FROM spend_daily "
    "WHERE team = {team:String} AND day >= {since:Date} AND day <= {today:Date} AND " + SCOPE
    + " GROUP BY day ORDER BY day"
)
_AGENTS = (
    "SELECT agent_id, team, project, sumIf(cost_usd, day = {today:Date}) AS today_usd, "
    "sumIf(cost_usd, day >= {month_start:Date}) AS month_usd, sum(cost_usd) AS last_30d_usd, "
    "sum(calls) AS calls_30d, max(day) AS last_active_day "
    "FROM spend_daily WHERE day >= least({since:Date}, {month_start:Date}) AND day <= {today:Date} "
    "AND ({team:String} = '' OR team = {team:String}) AND " + SCOPE
    + " GROUP BY agent_id, team, project ORDER BY month_usd DESC, agent_id LIMIT 500"
)
_PROJECTS = (
    "SELECT project, sumIf(cost_usd, day >= {month_start:Date}) AS month_usd, sum(cost_usd) AS last_30d_usd "
    "FROM spend_daily WHERE team = {team:String} AND day >= least({since:Date}, {month_start:Date}) "
    "AND day <= {today:Date} AND " + SCOPE + " GROUP BY project ORDER BY month_usd DESC, project"
)


def team_detail(db: Runner, scope: Scope, team: str, now: datetime) -> dict[str, Any] | None:
    """One team's trend, agents, projects, budgets and recent alerts; None when the team is not visible (outside
    the caller's scope, or no spend in the window for an admin)."""
    if not scope.covers(team):
        return None
    params = _params(scope, now, team=team)
    agent_rows = db.select(_AGENTS, params)
    trend_rows = db.select(_TEAM_TREND, params)
    if not agent_rows and not trend_rows:
        return None
    agent_ids = {row["agent_id"] for row in agent_rows}
    projects = db.select(_PROJECTS, params)
    project_names = {row["project"] for row in projects}
    team_budgets = [
        b for b in budgets(db, scope)
        if (b["scope_type"] == "team" and b["scope_value"] == team)
        or (b["scope_type"] == "project" and b["scope_value"] in project_names)
        or (b["scope_type"] == "agent" and b["scope_value"] in agent_ids)
    ]
    return {
        "team": team,
        "as_of": now,
        "today_usd": sum((r["today_usd"] for r in agent_rows), ZERO),
        "month_usd": sum((r["month_usd"] for r in agent_rows), ZERO),
        "trend": _fill_trend(trend_rows, now),
        "agents": agent_rows,
        "projects": projects,
        "budgets": team_budgets,
        "alerts": alerts(db, scope, now, team=team, limit=20),
    }


def agents(db: Runner, scope: Scope, now: datetime, team: str = "") -> list[dict[str, Any]]:
    """Agents in scope (optionally of one team) with today's, this month's and 30 days' spend."""
    return db.select(_AGENTS, _params(scope, now, team=team))


# ---- agent view ---------------------------------------------------------------------------------------------------
_AGENT_OWNER = (
    "SELECT team, project, sum(cost_usd) AS cost_usd FROM spend_daily "
    "WHERE agent_id = {agent_id:String} AND " + SCOPE + " GROUP BY team, project ORDER BY cost_usd DESC LIMIT 1"
)
_AGENT_DAYS = (
    "SELECT day, sum(cost_usd) AS cost_usd, sum(calls) AS calls, sum(errors) AS errors, sum(retries) AS retries "
    "FROM spend_daily WHERE agent_id = {agent_id:String} AND day >= {since:Date} AND day <= {today:Date} AND "
    + SCOPE + " GROUP BY day ORDER BY day"
)
_AGENT_MODELS = (
    "SELECT provider, model, sum(calls) AS calls, sum(cost_usd) AS cost_usd, "
    "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens FROM spend_daily "
    "WHERE agent_id = {agent_id:String} AND day >= {since:Date} AND day <= {today:Date} AND " + SCOPE
    + " GROUP BY provider, model ORDER BY cost_usd DESC, model"
)
_AGENT_TASKS = (
    "SELECT task_id, project, cost_usd, calls, first_call_at, last_call_at, succeeded FROM v_cost_per_task "
    "WHERE agent_id = {agent_id:String} AND toDate(last_call_at, 'UTC') >= {since:Date} AND " + SCOPE
    + " ORDER BY last_call_at DESC, task_id LIMIT 25"
)
_AGENT_TASK_SUMMARY = (
    "SELECT count() AS tasks, sum(cost_usd) AS cost_usd, countIf(succeeded) AS successful_tasks "
    "FROM v_cost_per_task WHERE agent_id = {agent_id:String} AND toDate(last_call_at, 'UTC') >= {since:Date} AND "
    + SCOPE
)
_CONTROL_COLUMNS = (
    "SELECT command_id, scope_type, scope_value, action, rate_per_minute, target_model, reason, issued_by, "
    "issued_at, expires_at, verified FROM control_commands FINAL "
    "WHERE ((scope_type = 'agent' AND scope_value = {agent_id:String}) "
    "OR (scope_type = 'team' AND scope_value = {team:String}) "
    "OR (scope_type = 'project' AND scope_value = {project:String})) "
)
# The audit keeps every command seen on the topic, forged ones flagged; the state is the newest verified command
# per scope (agents obey no other), so forged rows can neither set it nor push it out of the history's window.
_CONTROL = _CONTROL_COLUMNS + "ORDER BY issued_at DESC, command_id LIMIT 20"
_CONTROL_OBEYED = (_CONTROL_COLUMNS + "AND verified "
                   "ORDER BY issued_at DESC, command_id DESC LIMIT 1 BY scope_type, scope_value")
_SEVERITY = {"resume": 0, "throttle": 1, "downgrade": 2, "suspend": 3}


def agent_owner(db: Runner, scope: Scope, agent_id: str) -> tuple[str, str] | None:
    """``(team, project)`` of a visible agent (the one it spent most under); None when not visible."""
    rows = db.select(_AGENT_OWNER, {**scope.params(), "agent_id": agent_id})
    return (rows[0]["team"], rows[0]["project"]) if rows else None


def compute_control_state(commands: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """The control state an agent is under (pure), from its scopes' verified ``commands`` (audit rows with tz-aware
    ``issued_at`` / ``expires_at``, as :func:`agent_control` reads them; the caller leaves out forged ones, which
    agents ignore): per scope the latest command counts; whether it still binds is the guard's rule
    (:func:`schemas.control.binds`: a resume or an expired command releases); of the binding ones the most
    restrictive (suspend > downgrade > throttle) wins. A naive timestamp raises ``TypeError``."""
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for cmd in sorted(commands, key=lambda c: c["issued_at"]):
        latest[(cmd["scope_type"], cmd["scope_value"])] = cmd
    active = [cmd for cmd in latest.values() if binds(cmd["action"], cmd["expires_at"], now)]
    if not active:
        return {"state": "normal", "command": None}
    worst = max(active, key=lambda c: (_SEVERITY.get(c["action"], 0), c["issued_at"]))
    return {"state": worst["action"], "command": dict(worst)}


def _control_rows(db: Runner, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``control_commands`` with ``issued_at`` and ``expires_at`` as tz-aware UTC datetimes."""
    return [{**row, "issued_at": as_utc(row["issued_at"]), "expires_at": as_utc(row["expires_at"])}
            for row in db.select(sql, params)]


def agent_control(db: Runner, agent_id: str, team: str, project: str, now: datetime) -> dict[str, Any]:
    """The control state of an agent of ``team`` and ``project`` at the tz-aware ``now`` (:func:`compute_control_state`
    of the newest verified command per scope) and the newest commands of its scopes as audited, forged ones flagged
    ``verified: false`` (``history``)."""
    params = {"agent_id": agent_id, "team": team, "project": project}
    return {**compute_control_state(_control_rows(db, _CONTROL_OBEYED, params), now),
            "history": _control_rows(db, _CONTROL, params)}


def agent_detail(db: Runner, scope: Scope, agent_id: str, now: datetime) -> dict[str, Any] | None:
    """Cost per task and per day, models used, recent alerts and control state of one agent; None when the agent
    is not visible to the caller."""
    owner = agent_owner(db, scope, agent_id)
    if owner is None:
        return None
    team, project = owner
    params = _params(scope, now, agent_id=agent_id, team=team, project=project)
    days = db.select(_AGENT_DAYS, params)
    summary = db.select(_AGENT_TASK_SUMMARY, params)[0]
    by_day = {row["day"]: row for row in days}
    start = _days(now)["since"]
    per_day = []
    for i in range(TREND_DAYS):
        day = start + timedelta(days=i)
        row = by_day.get(day)
        per_day.append({"day": day, "cost_usd": row["cost_usd"] if row else ZERO,
                        "calls": row["calls"] if row else 0, "errors": row["errors"] if row else 0})
    month_start = _days(now)["month_start"]
    return {
        "agent_id": agent_id,
        "team": team,
        "project": project,
        "as_of": now,
        "today_usd": by_day[now.date()]["cost_usd"] if now.date() in by_day else ZERO,
        "month_usd": sum((r["cost_usd"] for r in days if r["day"] >= month_start), ZERO),
        "per_day": per_day,
        "models": [dict(r, cost_per_call=ratio(r["cost_usd"], r["calls"])) for r in db.select(_AGENT_MODELS, params)],
        "tasks": db.select(_AGENT_TASKS, params),
        "task_summary": {
            "tasks": summary["tasks"],
            "successful_tasks": summary["successful_tasks"],
            "cost_usd": summary["cost_usd"] or ZERO,
            "cost_per_task_usd": ratio(summary["cost_usd"], summary["tasks"]),
            "cost_per_successful_task_usd": ratio(summary["cost_usd"], summary["successful_tasks"]),
        },
        "alerts": alerts(db, scope, now, agent_id=agent_id, limit=20),
        "control": agent_control(db, agent_id, team, project, now),
    }


# ---- model comparison ---------------------------------------------------------------------------------------------
_MODELS = (
    "SELECT provider, model, sum(calls) AS calls, sum(cost_usd) AS cost_usd FROM spend_daily "
    "WHERE day >= {since:Date} AND day <= {today:Date} AND " + SCOPE
    + " GROUP BY provider, model ORDER BY cost_usd DESC, model"
)
_MODEL_TASKS = (
    "SELECT provider, model, uniqExact(task_id) AS tasks, sum(cost_usd) AS task_cost_usd FROM usage_ledger FINAL "
    "WHERE task_id != '' AND occurred_at >= {since:Date} AND toDate(occurred_at, 'UTC') <= {today:Date} AND "
    + SCOPE + " GROUP BY provider, model"
)
# The detectors write the suggested cheaper model into the evidence JSON; both key spellings are accepted.
_ALTERNATIVES = (
    "SELECT model, if(JSONExtractString(evidence, 'suggested_model') != '', JSONExtractString(evidence, "
    "'suggested_model'), JSONExtractString(evidence, 'cheaper_model')) AS suggested_model, "
    "count() AS signals, sum(avoidable_cost_usd) AS avoidable_usd FROM waste_signals FINAL "
    "WHERE kind = 'model_tiering' AND occurred_at >= {since:Date} AND " + SCOPE
    + " GROUP BY model, suggested_model ORDER BY avoidable_usd DESC, model"
)


def models(db: Runner, scope: Scope, now: datetime) -> dict[str, Any]:
    """Cost per call and per task by model (30 days) and the cheaper alternatives the detectors found."""
    params = _params(scope, now)
    per_task = {(r["provider"], r["model"]): r for r in db.select(_MODEL_TASKS, params)}
    out = []
    for row in db.select(_MODELS, params):
        task = per_task.get((row["provider"], row["model"]))
        out.append({
            **row,
            "cost_per_call": ratio(row["cost_usd"], row["calls"]),
            "tasks": task["tasks"] if task else 0,
            "cost_per_task": ratio(task["task_cost_usd"], task["tasks"]) if task else None,
        })
    return {"as_of": now, "models": out, "alternatives": db.select(_ALTERNATIVES, params)}


# ---- task trees (sub-agents) ----------------------------------------------------------------------------------------
# One row per task in scope active since the day; finops.task_tree rolls them up (each call counted once). A sub-agent
# task outside the caller's teams is not read, so a tree shows the part of it the caller may see.
_TASK_NODES = (
    "SELECT task_id, team, project, agent_id, own_cost_usd, own_calls, own_unpriced_calls, own_unpriced_tokens, "
    "status, first_call_at, last_call_at, parent_claims FROM v_task_nodes "
    "WHERE toDate(last_call_at, 'UTC') >= {tasks_since:Date} AND ({team:String} = '' OR team = {team:String}) AND "
    + SCOPE
)


def task_trees(db: Runner, scope: Scope, now: datetime, *, days: int = 30, team: str = "", task: str = "",
               limit: int = 50) -> dict[str, Any] | None:
    """Task trees of the last ``days`` UTC days in scope: the ``limit`` costliest (or the one holding ``task``),
    each task with its own, sub-agent and total cost, depth and sub-agent count; the summary covers every tree.
    None when ``task`` is given but not visible."""
    params = {**scope.params(), "team": team, "tasks_since": now.date() - timedelta(days=days - 1)}
    forest = compute_task_forest(node_from_row(row) for row in db.select(_TASK_NODES, params))
    if task:
        if task not in forest.tasks:
            return None
        roots = [forest.tasks[task].root_task_id]
    else:
        roots = largest_roots(forest, limit)
    return {
        "as_of": now,
        "days": days,
        "team": team or None,
        "summary": summary_as_json(forest.summary()),
        "trees": [{"root_task_id": root, "tasks": [rollup_as_json(t) for t in forest.tree(root)]} for root in roots],
    }


# ---- budgets, alerts, recommendations, approvals -----------------------------------------------------------------
_BUDGETS = (
    "SELECT policy_id, version, scope_type, scope_value, period, timezone, mode, limit_usd, period_start_local, "
    "period_end_local, spent_usd, utilisation_pct, unpriced_calls, unpriced_input_tokens, unpriced_output_tokens "
    "FROM v_budget_utilisation WHERE " + BUDGET_SCOPE
    + " ORDER BY utilisation_pct DESC, policy_id"
)
_ALERTS = (
    "SELECT alert_id, dedup_key, kind, severity, state, occurred_at, team, project, agent_id, policy_id, model, "
    "title, summary, amount_usd, limit_usd, actions FROM alerts FINAL "
    "WHERE occurred_at >= {alerts_since:Date} AND ({kind:String} = '' OR kind = {kind:String}) "
    "AND ({team:String} = '' OR team = {team:String}) AND ({agent_id:String} = '' OR agent_id = {agent_id:String}) "
    "AND " + SCOPE + " ORDER BY occurred_at DESC, alert_id LIMIT {limit:UInt32}"
)
_RECOMMENDATIONS = (
    "SELECT kind, team, project, agent_id, model, if(JSONExtractString(evidence, 'suggested_model') != '', "
    "JSONExtractString(evidence, 'suggested_model'), JSONExtractString(evidence, 'cheaper_model')) "
    "AS suggested_model, count() AS signals, sum(avoidable_cost_usd) AS avoidable_usd, "
    "max(detected_at) AS last_detected_at, any(evidence) AS example_evidence FROM waste_signals FINAL "
    "WHERE occurred_at >= {since:Date} AND " + SCOPE
    + " GROUP BY kind, team, project, agent_id, model, suggested_model "
    "ORDER BY avoidable_usd DESC, kind, agent_id LIMIT 200"
)
_APPROVALS = (
    "SELECT alert_id, dedup_key, state, occurred_at, team, project, agent_id, policy_id, title, summary, "
    "amount_usd, limit_usd FROM alerts FINAL WHERE kind = 'approval' AND occurred_at >= {since:Date} AND " + SCOPE
    + " ORDER BY occurred_at DESC, alert_id LIMIT 200"
)
_DECISIONS = (
    "SELECT target, argMax(details, at) AS details, argMax(actor, at) AS actor, max(at) AS decided_at "
    "FROM admin_audit WHERE action = 'approval.decide' AND outcome = 'ok' AND target IN {ids:Array(String)} "
    "GROUP BY target"
)
ALERT_RETENTION_DAYS = 90


def budgets(db: Runner, scope: Scope) -> list[dict[str, Any]]:
    """Enabled budgets the caller may see, with spend in the current period and utilisation (percent)."""
    return db.select(_BUDGETS, scope.params())


def alerts(
    db: Runner, scope: Scope, now: datetime, *, kind: str = "", team: str = "", agent_id: str = "", limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest alert state changes in scope (90 days), optionally of one kind, team or agent."""
    params = {
        **scope.params(), "kind": kind, "team": team, "agent_id": agent_id, "limit": max(1, min(limit, 1000)),
        "alerts_since": now.date() - timedelta(days=ALERT_RETENTION_DAYS),
    }
    return db.select(_ALERTS, params)


def recommendations(db: Runner, scope: Scope, now: datetime) -> dict[str, Any]:
    """Waste signals grouped into recommendations (30 days), biggest saving first, with totals per kind."""
    params = _params(scope, now)
    rows = db.select(_RECOMMENDATIONS, params)
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row["kind"]] = totals.get(row["kind"], ZERO) + row["avoidable_usd"]
    return {
        "as_of": now,
        "recommendations": rows,
        "totals": [{"kind": k, "avoidable_usd": v} for k, v in sorted(totals.items(), key=lambda kv: -kv[1])],
        "avoidable_usd": sum(totals.values(), ZERO),
        "waste": waste(db, scope, params["since"], params["today"]),
    }


def approvals(db: Runner, scope: Scope, now: datetime) -> list[dict[str, Any]]:
    """Approval requests in scope (30 days) with the decision taken on each, if any."""
    rows = db.select(_APPROVALS, _params(scope, now))
    if not rows:
        return []
    decisions = {
        d["target"]: d for d in db.select(_DECISIONS, {"ids": [r["alert_id"] for r in rows]})
    }
    out = []
    for row in rows:
        decision = decisions.get(row["alert_id"])
        out.append({**row, "decision": decision["details"] if decision else None,
                    "decided_by": decision["actor"] if decision else None})
    return out


_ALERT = (
    "SELECT alert_id, dedup_key, kind, severity, state, occurred_at, team, project, agent_id, policy_id, model, "
    "title, summary, amount_usd, limit_usd, details, actions FROM alerts FINAL "
    "WHERE alert_id = {alert_id:String} AND " + SCOPE + " ORDER BY occurred_at DESC LIMIT 1"
)
# The other state changes of the same condition (trigger, re-trigger, resolve), visible under the same scope.
_ALERT_HISTORY = (
    "SELECT alert_id, state, severity, occurred_at, title, amount_usd, limit_usd FROM alerts FINAL "
    "WHERE dedup_key = {dedup_key:String} AND " + SCOPE + " ORDER BY occurred_at, alert_id LIMIT 200"
)
# Where it was sent: channel, the destination's configured name and the outcome (the table holds no secrets).
_ALERT_DELIVERIES = (
    "SELECT alert_id, channel, destination_name, attempt, status, http_status, delivered_at FROM alert_deliveries "
    "FINAL WHERE alert_id IN {ids:Array(String)} ORDER BY delivered_at, channel, destination_name, attempt LIMIT 500"
)


def alert_detail(db: Runner, scope: Scope, alert_id: str) -> dict[str, Any] | None:
    """One alert (the page its notifications link to): every column, the state changes of its dedup key and its
    deliveries; None when there is no such alert among the caller's teams (the same answer for both cases)."""
    rows = db.select(_ALERT, {**scope.params(), "alert_id": alert_id})
    if not rows:
        return None
    alert = rows[0]
    history = db.select(_ALERT_HISTORY, {**scope.params(), "dedup_key": alert["dedup_key"]})
    ids = sorted({alert_id, *(h["alert_id"] for h in history)})
    return {"alert": alert, "history": history, "deliveries": db.select(_ALERT_DELIVERIES, {"ids": ids})}


def alert_in_scope(db: Runner, scope: Scope, alert_id: str) -> dict[str, Any] | None:
    rows = db.select(
        "SELECT alert_id, kind, team, project, agent_id FROM alerts FINAL WHERE alert_id = {alert_id:String} AND "
        + SCOPE + " LIMIT 1",
        {**scope.params(), "alert_id": alert_id},
    )
    return rows[0] if rows else None


def project_in_scope(db: Runner, scope: Scope, project: str) -> bool:
    rows = db.select(
        "SELECT count() AS n FROM spend_daily WHERE project = {project:String} AND " + SCOPE,
        {**scope.params(), "project": project},
    )
    return bool(rows and rows[0]["n"])


_SCOPE_TEAMS = {
    "project": "SELECT DISTINCT team, project FROM spend_daily WHERE project = {value:String} ORDER BY team, project",
    "agent": "SELECT DISTINCT team, project FROM spend_daily WHERE agent_id = {value:String} ORDER BY team, project",
}


def scope_attribution(db: Runner, scope_type: str, scope_value: str) -> list[tuple[str, str]] | None:
    """Every ``(team, project)`` a budget scope covers, over all teams (an ownership check must see the teams the
    caller cannot): a team is its own (``project`` empty); a project or an agent covers the teams and projects it
    has spend under (empty when it has none yet). None for a tag scope, which cuts across teams."""
    if scope_type == "team":
        return [(scope_value, "")]
    sql = _SCOPE_TEAMS.get(scope_type)
    if sql is None:
        return None
    return [(r["team"], r["project"]) for r in db.select(sql, {"value": scope_value})]


def budget_scope(db: Runner, policy_id: str) -> tuple[str, str] | None:
    """``(scope_type, scope_value)`` of the newest stored version of ``policy_id`` (a deleted one too: its id still
    names that owner's budget history), None when no version is stored."""
    rows = db.select("SELECT scope_type, scope_value FROM budgets WHERE policy_id = {policy_id:String} "
                     "ORDER BY version DESC LIMIT 1", {"policy_id": policy_id})
    return (rows[0]["scope_type"], rows[0]["scope_value"]) if rows else None


def next_budget_version(db: Runner, policy_id: str) -> int:
    rows = db.select("SELECT max(version) AS v FROM budgets WHERE policy_id = {policy_id:String}",
                     {"policy_id": policy_id})
    return int(rows[0]["v"] or 0) + 1 if rows else 1


# ---- admin --------------------------------------------------------------------------------------------------------
_AUDIT = (
    "SELECT audit_id, at, actor, actor_token_id, role, action, target, outcome, details FROM admin_audit "
    "ORDER BY at DESC, audit_id LIMIT {limit:UInt32}"
)
_CHARGEBACK = (
    "SELECT team, project, sum(cost_usd) AS cost_usd, sum(calls) AS calls, sum(input_tokens) AS input_tokens, "
    "sum(output_tokens) AS output_tokens FROM spend_daily WHERE day >= {start:Date} AND day < {end:Date} "
    "GROUP BY team, project ORDER BY team, project"
)


def audit(db: Runner, limit: int = 200) -> list[dict[str, Any]]:
    """The newest admin audit entries (finops admins only; the caller checks the role)."""
    return db.select(_AUDIT, {"limit": max(1, min(limit, 5000))})


def chargeback(db: Runner, start: date, end: date) -> list[dict[str, Any]]:
    """Showback per team and project for ``[start, end)`` UTC days (finops admins only)."""
    return db.select(_CHARGEBACK, {"start": start, "end": end})


# ---- bill vs ledger (finops bills reconcile) ---------------------------------------------------------------------
_BILL_WHERE = " FROM v_bill_reconciliation AS r WHERE period = {period:String} AND " + SCOPE
# r.<column> inside the aggregates: the result names repeat the column names, and ClickHouse would otherwise read
# sum(x) AS x's inner x as the alias (an aggregate inside an aggregate)
_BILL_SUMMARY = (
    "SELECT provider, sum(r.bill_usd) AS bill_usd, sum(r.ledger_usd) AS ledger_usd, "
    "sumIf(r.attributed_usd, r.status = 'matched') AS matched_usd, sum(r.attributed_usd) AS attributed_usd, "
    "sumIf(r.unattributed_usd, r.status != 'matched') AS unattributed_usd, "
    "sumIf(r.over_reported_usd, r.status != 'matched') AS over_reported_usd, count() AS cells, "
    "countIf(r.status != 'matched') AS gaps, max(r.run_at) AS run_at" + _BILL_WHERE
    + " GROUP BY provider ORDER BY provider"
)
_BILL_TEAMS = (
    "SELECT team, sum(r.bill_usd) AS bill_usd, sum(r.attributed_usd) AS attributed_usd" + _BILL_WHERE
    + " GROUP BY team ORDER BY attributed_usd DESC, team"
)
_BILL_CELLS = (
    "SELECT day, provider, model, account_id, api_keys, team, project, status, bill_usd, ledger_usd, gap_usd, "
    "unattributed_usd, over_reported_usd, bill_input_tokens, ledger_input_tokens, bill_output_tokens, "
    "ledger_output_tokens" + _BILL_WHERE
    + " ORDER BY status = 'matched', abs(gap_usd) DESC, day, provider, model, account_id LIMIT {limit:UInt32}"
)


def bill_vs_ledger(db: Runner, scope: Scope, period: str, *, limit: int = 200) -> dict[str, Any]:
    """The latest reconciliation of ``period`` (YYYY-MM) in scope: per provider the bill, the ledger, matched,
    unattributed and over-reported spend and the attributed share; per team its attributed part of the bill; the
    cells, gaps first (biggest first). A team lead's scope holds only their projects' cells (unattributed spend has
    no team, so only admins see it)."""
    params = {**scope.params(), "period": period, "limit": limit}
    providers = db.select(_BILL_SUMMARY, params)
    for row in providers:
        share = ratio(row["attributed_usd"], row["bill_usd"])
        row["attributed_pct"] = None if share is None else share * 100
    totals = {k: sum((r[k] for r in providers), ZERO) for k in
              ("bill_usd", "ledger_usd", "matched_usd", "attributed_usd", "unattributed_usd", "over_reported_usd")}
    teams = db.select(_BILL_TEAMS, params)
    for row in teams:
        share = ratio(row["attributed_usd"], totals["bill_usd"])
        row["share_pct"] = None if share is None else share * 100
    return {"period": period, "totals": totals, "providers": providers, "teams": teams,
            "cells": db.select(_BILL_CELLS, params)}
