"""Every SQL example in the README runs against a migrated database (documentation that cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def _examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)\n```", README.read_text(), flags=re.S)


def _selected(sql: str) -> list[str]:
    """The output names of the SELECT list: split at top-level commas (not those inside a call), the alias wins."""
    selected = sql.split("SELECT", 1)[1].split(" FROM ", 1)[0]
    items, depth, current = [], 0, ""
    for char in selected:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip().split(" AS ")[-1] for item in items]


def test_readme_has_one_example_per_metric_view() -> None:
    text = "\n".join(_examples())
    for view in ("v_cost_per_task", "v_cost_per_successful_task", "v_cost_per_agent_day",
                 "v_model_cost_distribution", "v_budget_utilisation", "v_cost_trend", "v_waste_percentage"):
        assert view in text, view


@pytest.mark.parametrize("sql", _examples())
def test_readme_sql_example_runs(sql: str, chdb_url: str, ch_database: str) -> None:
    from finops.clickhouse import connect

    client = connect(chdb_url, database=ch_database, readonly=True)  # as `finops sql` runs it
    client.query(sql)  # runs (an empty database has no rows; the columns are checked below)
    described = [row[0] for row in client.query(f"DESCRIBE ({sql})").result_rows]
    assert _selected(sql) == described


def test_cost_per_successful_task_example_has_one_row_per_day_and_team(
    ch_client: Any, chdb_url: str, ch_database: str
) -> None:
    """Issue 14 item 11: the example returned one row per project, i.e. two rows for a team with two projects."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from finops.clickhouse import connect
    from tests.integration.ch_fixtures import insert_ledger, ledger_row

    day = datetime(2026, 11, 3, 10, tzinfo=UTC).replace(tzinfo=None)
    rows = [
        # team a: project p1 one task ok ($1), project p2 one failed ($2) and one ok ($3)
        ledger_row("1", day, team="a", project="p1", task_id="t1", status="ok"),
        ledger_row("2", day, team="a", project="p2", task_id="t2", status="error"),
        ledger_row("3", day + timedelta(minutes=1), team="a", project="p2", task_id="t3", status="ok"),
        # team b: one project, its only task failed
        ledger_row("5", day, team="b", project="p3", task_id="t4", status="error"),
    ]
    insert_ledger(ch_client, ch_database, rows)
    (sql,) = [s for s in _examples() if "v_cost_per_successful_task" in s]
    client = connect(chdb_url, database=ch_database, readonly=True)
    result = client.query(sql).result_rows
    assert [(r[0].isoformat(), r[1]) for r in result] == [("2026-11-03", "a"), ("2026-11-03", "b")]
    assert [tuple(r[2:]) for r in result] == [(3, 2, Decimal("3")), (1, 0, None)]  # $6 over 2 successful tasks
