"""``finops report tasks``: cost per task across sub-agent trees, each call counted once.

One query reads ``v_task_nodes`` (own cost, calls, unpriced calls and tokens, outcome and parent claims per task,
infra/clickhouse/migrations/0015_task_tree.sql) for the tasks active in the period; :mod:`finops.task_tree` rolls
them up (diamonds, cycles and late parents resolved by its stated rules). A task is in the period when any of its
calls is (``last_call_at >= start`` and ``first_call_at < end``), and its whole own cost counts; a sub-agent whose
parent task ran entirely before the period shows as a root with its parent flagged as not seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

from finops.task_tree import (
    TaskForest,
    compute_task_forest,
    largest_roots,
    node_from_row,
    render_forest_text,
    rollup_as_json,
    summary_as_json,
)
from governance.period import Period
from governance.store import qualified
from schemas.errors import ConfigError

__all__ = ["NODE_COLUMNS", "TaskReport", "build_task_report", "load_task_forest", "render_json", "render_text"]

#: The columns of v_task_nodes the rollup reads.
NODE_COLUMNS: tuple[str, ...] = (
    "task_id", "team", "project", "agent_id", "own_cost_usd", "own_calls", "own_unpriced_calls",
    "own_unpriced_tokens", "status", "first_call_at", "last_call_at", "parent_claims",
)


@dataclass(frozen=True)
class TaskReport:
    period: Period
    team: str
    forest: TaskForest
    roots: tuple[str, ...]  # the trees shown (largest first); the summary line covers these
    task: str = ""  # when given: the one tree shown is the one holding this task


def load_task_forest(client: Any, database: str, period: Period, team: str = "") -> TaskForest:
    """Read the period's tasks (optionally one team's) with one query and roll them up. Blocks on the query;
    raises the client's error."""
    sql = (
        f"SELECT {', '.join(NODE_COLUMNS)} FROM {qualified(database, 'v_task_nodes')} "
        "WHERE last_call_at >= {lo:DateTime64(6, 'UTC')} AND first_call_at < {hi:DateTime64(6, 'UTC')} "
        "AND ({team:String} = '' OR team = {team:String})"
    )
    result = client.query(sql, parameters={"lo": period.start, "hi": period.end, "team": team})
    names = result.column_names
    return compute_task_forest(node_from_row(dict(zip(names, row, strict=True))) for row in result.result_rows)


def build_task_report(client: Any, database: str, period: Period, *, team: str = "", task: str = "",
                      limit: int = 20) -> TaskReport:
    """The period's task trees: the ``limit`` costliest, or the one tree holding ``task``. Raises ConfigError
    when ``task`` is not among the period's tasks."""
    forest = load_task_forest(client, database, period, team)
    if task:
        if task not in forest.tasks:
            raise ConfigError(f"--task {task!r}: no such task in {period.label}"
                              + (f" for team {team}" if team else "") + "; check the id and the period")
        roots: Sequence[str] = (forest.tasks[task].root_task_id,)
    else:
        roots = largest_roots(forest, limit)
    return TaskReport(period, team, forest, tuple(roots), task)


def render_text(report: TaskReport) -> str:
    """The trees shown, then the totals of every tree in the period (not only those shown)."""
    whole = report.forest.summary()
    title = (f"Task trees {report.period.label}" + (f", team {report.team}" if report.team else "")
             + (f": the tree holding {report.task}" if report.task
                else f": {len(report.roots)} of {whole.trees} trees, costliest first")
             + "; own = the task's calls, sub-agents = every task below it, each call counted once")
    text = render_forest_text(report.forest, report.roots, title=title)
    if len(report.roots) < whole.trees:
        per = whole.cost_per_successful_tree_usd
        text += (f"all {whole.trees} trees: {_usd(whole.cost_usd)} over {whole.calls} calls; "
                 f"{whole.successful_trees} succeeded (root outcome); cost per successful task "
                 f"{_usd(per) if per is not None else '-'}\n")
        if whole.unpriced_calls:
            text += f"all trees: {whole.unpriced_calls} unpriced calls, {whole.unpriced_tokens:,} tokens\n"
    return text


def _usd(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.0001'), rounding=ROUND_DOWN)}"


def render_json(report: TaskReport) -> str:
    """The trees shown (each task with its rollup, in tree order) and the period's summary, as JSON (money as
    strings)."""
    trees = [[rollup_as_json(t) for t in report.forest.tree(r)] for r in report.roots]
    body = {"period": report.period.label, "team": report.team or None,
            "summary": summary_as_json(report.forest.summary()), "trees": trees}
    return json.dumps(body, default=str, indent=2) + "\n"
