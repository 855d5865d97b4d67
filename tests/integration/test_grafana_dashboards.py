"""Every Grafana panel's SQL (and every template variable's query) runs against ClickHouse with the migrations
applied and a seeded fleet, after the ClickHouse data source plugin's macros are expanded the way the plugin
expands them (grafana/clickhouse-datasource: $__timeFilter, $__dateFilter, $__timeInterval, $__fromTime,
$__toTime, $__interval_s) and the dashboard variables are substituted (team: 'All' and a real selection)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ch_fixtures import insert_rows
from tests.integration.test_api_support import seed_fleet

pytestmark = pytest.mark.integration

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "infra" / "grafana"
DASHBOARDS = sorted(GRAFANA_DIR.glob("*.json"))
PLUGIN = "grafana-clickhouse-datasource"
INTERVAL_S = 3600


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)  # rows hold their panels


def expand(sql: str, database: str, teams: str, start: datetime, end: datetime) -> str:
    """The SQL as the plugin would send it (macros) with the dashboard variables filled in."""
    from_s, to_s = int(start.timestamp()), int(end.timestamp())
    out = sql.replace("${database}", database).replace("${team:singlequote}", teams)
    out = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 >= toDateTime({from_s}) AND \1 <= toDateTime({to_s})", out)
    out = re.sub(r"\$__dateFilter\(([^)]+)\)",
                 rf"\1 >= toDate('{start.date().isoformat()}') AND \1 <= toDate('{end.date().isoformat()}')", out)
    out = re.sub(r"\$__timeInterval\(([^)]+)\)", rf"toStartOfInterval(toDateTime(\1), INTERVAL {INTERVAL_S} second)",
                 out)
    out = out.replace("$__fromTime", f"toDateTime({from_s})").replace("$__toTime", f"toDateTime({to_s})")
    out = out.replace("$__interval_s", str(INTERVAL_S))
    assert "$" not in out, f"unexpanded macro or variable left in: {out}"
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(f"variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["rawSql"]))
    return found


def test_dashboards_are_well_formed() -> None:
    assert [p.name for p in DASHBOARDS] == ["finops-overview.json", "finops-pipeline.json"]
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids and dashboard["title"]
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels(dashboard):
            assert panel["datasource"]["type"] == PLUGIN, f"{path.name}: {panel['title']} is not on ClickHouse"
            assert panel["targets"] and all(t["editorType"] == "sql" and t["rawSql"] for t in panel["targets"])


@pytest.fixture
def seeded(ch_client: Any, ch_database: str) -> str:
    seed_fleet(ch_client, ch_database)
    now = datetime.now(UTC).replace(tzinfo=None)
    insert_rows(ch_client, ch_database, "stream_counters", [{
        "counter_id": "usage-hotpath:agent.usage.v1:0:1", "job": "usage-hotpath", "source_topic": "agent.usage.v1",
        "source_partition": 0, "window_start": now - timedelta(minutes=5), "window_end": now - timedelta(minutes=4),
        "first_offset": 0, "last_offset": 9, "events": 10, "priced_events": 9, "unpriced_events": 1, "dlq_events": 1,
        "duplicate_events": 0, "cost_usd": Decimal("0.5"), "emitted_at": now,
    }])
    insert_rows(ch_client, ch_database, "alert_deliveries", [{
        "alert_id": "al-anomaly-pay", "channel": "slack", "destination_name": "finops-alerts", "attempt": 1,
        "status": "sent", "http_status": 200, "error": None, "delivered_at": now,
    }])
    return ch_database


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
@pytest.mark.parametrize("teams", ["'__all'", "'payments','search'"], ids=["all-teams", "two-teams"])
def test_every_panel_query_runs_and_returns_rows(ch_client: Any, seeded: str, path: Path, teams: str) -> None:
    dashboard = json.loads(path.read_text())
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - timedelta(days=30)
    for where, sql in queries(dashboard):
        rendered = expand(sql, seeded, teams, start, end)
        try:
            rows = ch_client.query(rendered).result_rows
        except Exception as err:  # noqa: BLE001 - name the panel in the failure
            pytest.fail(f"{path.name} {where} failed: {err}\n{rendered}")
        assert rows, f"{path.name} {where} returned no rows on the seeded fleet:\n{rendered}"


def test_panel_numbers_match_the_ledger(ch_client: Any, seeded: str) -> None:
    dashboard = json.loads((GRAFANA_DIR / "finops-overview.json").read_text())
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in panels(dashboard)}
    end = datetime.now(UTC)
    month = ch_client.query(expand(by_title["Spend this month"], seeded, "'payments'", end, end)).result_rows[0][0]
    assert month == ch_client.query(
        f"SELECT sum(cost_usd) FROM {seeded}.usage_ledger FINAL WHERE team = 'payments' "
        "AND toDate(occurred_at, 'UTC') >= toStartOfMonth(today())").result_rows[0][0]
    variable = ch_client.query(expand(queries(dashboard)[0][1], seeded, "", end, end)).result_rows
    assert [r[0] for r in variable] == ["payments", "research", "search"]
