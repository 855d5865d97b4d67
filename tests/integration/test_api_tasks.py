"""``GET /api/tasks`` on real chdb through the real HTTP server: task trees with sub-agents, each call counted once,
scoped to the caller's teams, parameters validated with a 400 that names the parameter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.ch_fixtures import insert_ledger, ledger_row
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    call,
    serving_database,
    seed_fleet,
)

pytestmark = pytest.mark.integration

D = Decimal


def seed_trees(client: Any, database: str, now: datetime) -> None:
    """A payments tree (root, two children, one grandchild; one child also claimed later by another root: a
    diamond) with a search sub-agent below it, a cycle of two in research, and an unpriced sub-agent call.
    Children are inserted before their parents."""
    t0 = now - timedelta(hours=2)

    def row(task: str, cost: str, seconds: int, parent: str = "", team: str = "payments", agent: str = "pay-bot-1",
            **extra: Any) -> dict[str, Any]:
        return ledger_row(cost, t0 + timedelta(seconds=seconds), task_id=task, parent_task_id=parent, team=team,
                          project={"payments": "checkout", "search": "ranking", "research": "lab"}[team],
                          agent_id=agent, **extra)

    children = [
        row("tree-kid-a", "0.200000000000", 10, "tree-root"),
        row("tree-kid-a", "0.050000000000", 40, "tree-other"),  # later claim: the diamond
        row("tree-kid-b", "0.100000000000", 20, "tree-root", agent="pay-bot-2"),
        row("tree-grandkid", "0.025000000000", 30, "tree-kid-a"),
        row("tree-grandkid", "0", 31, "tree-kid-a", pricing_status="unpriced", model="mystery-1", input_tokens=400,
            output_tokens=100),
        row("tree-search-kid", "0.400000000000", 35, "tree-kid-b", team="search", agent="search-ranker"),
        row("loop-b", "0.300000000000", 50, "loop-a", team="research", agent="lab-runner"),
    ]
    parents = [
        row("tree-root", "1.000000000000", 0),
        row("tree-root", "0.500000000000", 60, status="error"),  # the root's last call failed: the tree failed
        row("tree-other", "0.010000000000", 5),
        row("loop-a", "0.700000000000", 45, "loop-b", team="research", agent="lab-runner"),
    ]
    insert_ledger(client, database, children)
    insert_ledger(client, database, parents)


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    fleet = seed_fleet(ch_client, ch_database)
    seed_trees(ch_client, ch_database, fleet.now)
    return fleet


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def by_task(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for tree in body["trees"] for t in tree["tasks"]}


def test_admin_sees_whole_trees_counted_once(ch_client: Any, fleet: Fleet, dash: RunningDashboard) -> None:
    status, body = call(dash.url + "/api/tasks?limit=500", dash.issue("finops_admin"))
    assert status == 200
    tasks = by_task(body)
    root = tasks["tree-root"]
    # own 1.5; below: kid-a 0.25 + grandkid 0.025 + kid-b 0.1 + search-kid 0.4 (kid-a counted once, under the root)
    assert (D(root["own_cost_usd"]), D(root["descendants_cost_usd"]), D(root["total_cost_usd"])) == (
        D("1.5"), D("0.775"), D("2.275"))
    assert (root["sub_agents"], root["height"], root["total_unpriced_calls"], root["total_unpriced_tokens"]) == (
        4, 2, 1, 500)
    assert tasks["tree-kid-a"]["diamond"] and tasks["tree-kid-a"]["parent_task_id"] == "tree-root"
    assert tasks["tree-search-kid"]["depth"] == 2 and tasks["tree-search-kid"]["root_status"] == "error"
    assert D(tasks["tree-other"]["total_cost_usd"]) == D("0.01")
    # loop-a (first call at +45 s) started before loop-b (+50 s): the cycle is broken at loop-a
    assert tasks["loop-a"]["cycle_broken"] and tasks["loop-b"]["parent_task_id"] == "loop-a"
    assert D(tasks["loop-a"]["total_cost_usd"]) == D("1.0") and tasks["loop-b"]["cycle"]
    # every tree of the window, counted once: the summary equals the ledger's task spend in the window
    since = fleet.now.date() - timedelta(days=29)
    ledger = f"{fleet.database}.usage_ledger FINAL"
    ledger_total = ch_client.query(
        f"SELECT sum(cost_usd) FROM {ledger} WHERE task_id IN (SELECT task_id FROM {ledger} WHERE task_id != '' "
        "GROUP BY task_id HAVING toDate(max(occurred_at), 'UTC') >= {d:Date})",
        parameters={"d": since}).result_rows[0][0]
    assert D(body["summary"]["cost_usd"]) == ledger_total
    assert sum(D(tree["tasks"][0]["total_cost_usd"]) for tree in body["trees"]) == ledger_total
    assert body["summary"]["diamonds"] == 1 and body["summary"]["cycles"] == 1


def test_a_developer_sees_only_their_teams_part_of_a_tree(dash: RunningDashboard) -> None:
    status, body = call(dash.url + "/api/tasks?limit=500", dash.issue("developer", "payments"))
    assert status == 200
    tasks = by_task(body)
    assert {t["team"] for t in tasks.values()} == {"payments"}
    assert "tree-search-kid" not in tasks and "loop-a" not in tasks
    assert D(tasks["tree-root"]["total_cost_usd"]) == D("1.875")  # without the search team's 0.4
    status, body = call(dash.url + "/api/tasks?task=tree-search-kid", dash.issue("developer", "payments"))
    assert status == 404 and "among your teams" in body["error"]
    status, body = call(dash.url + "/api/tasks?task=tree-search-kid", dash.issue("developer", "search"))
    assert status == 200 and body["trees"][0]["root_task_id"] == "tree-search-kid"
    assert body["trees"][0]["tasks"][0]["missing_parent"] == "tree-kid-b"  # its parent is outside their teams


def test_one_tree_team_filter_and_limit(dash: RunningDashboard) -> None:
    token = dash.issue("finops_admin")
    status, body = call(dash.url + "/api/tasks?task=tree-grandkid", token)
    assert status == 200 and [t["root_task_id"] for t in body["trees"]] == ["tree-root"]
    assert [t["task_id"] for t in body["trees"][0]["tasks"]] == [
        "tree-root", "tree-kid-a", "tree-grandkid", "tree-kid-b", "tree-search-kid"]
    status, body = call(dash.url + "/api/tasks?team=research", token)
    assert status == 200 and {"loop-a", "loop-b"} <= set(by_task(body))
    assert {t["team"] for t in by_task(body).values()} == {"research"}
    status, body = call(dash.url + "/api/tasks?limit=1", token)
    assert status == 200 and len(body["trees"]) == 1 and body["trees"][0]["root_task_id"] == "tree-root"
    assert body["summary"]["trees"] > 1


@pytest.mark.parametrize("query, parameter", [
    ("days=0", "days"), ("days=91", "days"), ("days=abc", "days"), ("days=-1", "days"), ("days=1.5", "days"),
    ("limit=0", "limit"), ("limit=501", "limit"), ("team=" + "x" * 257, "team"), ("task=" + "y" * 257, "task"),
    ("task=a%01b", "task"), ("depth=3", "depth"),
])
def test_bad_parameters_are_a_400_naming_the_parameter(dash: RunningDashboard, query: str, parameter: str) -> None:
    status, body = call(dash.url + "/api/tasks?" + query, dash.issue("finops_admin"))
    assert status == 400 and body["parameter"] == parameter and f"parameter {parameter}" in body["error"]


def test_no_token_no_trees(dash: RunningDashboard) -> None:
    assert call(dash.url + "/api/tasks")[0] == 401


def test_the_window_is_days(dash: RunningDashboard, ch_client: Any, fleet: Fleet) -> None:
    token = dash.issue("finops_admin")
    old = fleet.now - timedelta(days=10)
    insert_ledger(ch_client, fleet.database, [ledger_row("9.000000000000", old, task_id="old-task", team="payments",
                                                         project="checkout", agent_id="pay-bot-1")])
    assert "old-task" in by_task(call(dash.url + "/api/tasks?days=11&limit=500", token)[1])
    assert "old-task" not in by_task(call(dash.url + "/api/tasks?days=9&limit=500", token)[1])
    assert datetime.now(UTC) > old
