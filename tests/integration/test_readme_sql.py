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


def test_readme_has_one_example_per_metric_view() -> None:
    text = "\n".join(_examples())
    for view in ("v_cost_per_task", "v_cost_per_successful_task", "v_cost_per_agent_day",
                 "v_model_cost_distribution", "v_budget_utilisation", "v_cost_trend", "v_waste_percentage"):
        assert view in text, view


@pytest.mark.parametrize("sql", _examples())
def test_readme_sql_example_runs(sql: str, chdb_url: str, ch_database: str) -> None:
    from sinks.clickhouse import build_client

    client = build_client(chdb_url, database=ch_database, readonly=True)  # as `finops sql` runs it
    client.query(sql)  # runs (an empty database has no rows; the columns are checked below)
    described = [row[0] for row in client.query(f"DESCRIBE ({sql})").result_rows]
    selected = sql.split("SELECT", 1)[1].split(" FROM ", 1)[0]
    assert [c.strip().split(" AS ")[-1] for c in selected.split(",")] == described
