"""Task trees through real chdb SQL: a simulated fleet with nested sub-agents (plus a diamond, a cycle, a
correction, unpriced calls, and children inserted before their parents) read from ``v_task_nodes`` and rolled up;
totals equal the ledger's (no call counted twice, none left out) and every task's total equals a brute-force walk
over the simulator's own parent links. Also ``finops report tasks`` end to end through the store endpoint."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from finops.task_tree import TaskForest
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from governance.tasks import build_task_report, load_task_forest, render_text
from producers.simulator import SimulationConfig, generate
from sinks.store_server import StoreServer, serve_store
from tests.integration.ch_fixtures import insert_ledger, ledger_row, utc

pytestmark = pytest.mark.integration

D = Decimal
START = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)
PERIOD = parse_period("2026-10")


def _fleet_rows() -> list[dict[str, Any]]:
    config = SimulationConfig.model_validate({
        "seed": 23, "agents": 14, "teams": 3, "projects": 5, "duration_s": 2 * 3600, "rate_per_s": 1.5,
        "start": START, "subagent_depth": 3,
        "misbehaviours": [{"kind": "unknown_model", "agent_id": "agent-004"}],
    })
    pricer = Pricer()
    return [compute_priced_row(e, pricer, priced_at=e["occurred_at"], source_offset=i)
            for i, e in enumerate(generate(config))]


def _first(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    return min((r for r in rows if r["task_id"] == task), key=lambda r: (r["occurred_at"], r["event_id"]))


@pytest.fixture(scope="module")
def fleet(ch_client: Any) -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """One migrated database with the fleet (module scope: the fleet takes a while to price)."""
    import uuid

    from sinks.migrations import MigrationRunner

    database = f"t_{uuid.uuid4().hex[:12]}"
    MigrationRunner(ch_client, database).apply()
    rows = _fleet_rows()
    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["task_id"]:
            tasks[row["task_id"]].append(row)
    parent = {t: calls[0]["parent_task_id"] for t, calls in tasks.items()}
    # grandchildren whose whole line was emitted, with two calls or more (a second claim needs a later call)
    depth2 = [t for t, p in parent.items() if p in parent and parent[p] in parent and len(tasks[t]) > 1]
    assert len(depth2) >= 2, "the fleet must hold trees two levels deep"
    grandchild = depth2[0]
    other = next(t for t in depth2 if parent[parent[t]] != parent[parent[grandchild]])
    child = parent[grandchild]
    root = parent[child]
    # A diamond: the grandchild's LAST call also names another task's root; its first claim (the true parent) wins.
    foreign_root = next(t for t, p in parent.items() if not p and t != root)
    last = max(tasks[grandchild], key=lambda r: (r["occurred_at"], r["event_id"]))
    last["parent_task_id"] = foreign_root
    # A cycle: a late call of the OTHER line's root names its own grandchild as parent (root -> gc -> child -> root);
    # the root started first, so the cycle is broken there and the tree keeps its shape.
    other_root = parent[parent[other]]
    late = max(tasks[other_root], key=lambda r: (r["occurred_at"], r["event_id"]))
    late["parent_task_id"] = other
    # A re-rating correction on one of the root's calls (cost moves, calls do not).
    original = _first(rows, root)
    correction = {**original, "row_kind": "correction", "correction_id": "fix-1", "requests": 0,
                  "cost_usd": D("0.010000000000"), "cost_input_usd": D("0.010000000000"),
                  "cost_output_usd": D(0), "cost_cache_read_usd": D(0), "cost_cache_write_usd": D(0),
                  "cost_other_usd": D(0), **{k: 0 for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                              "cache_write_tokens", "reasoning_tokens")}}
    # Children land before their parents: every sub-agent call first, the roots' calls after.
    subs = [r for r in rows if r["parent_task_id"]]
    tops = [r for r in rows if not r["parent_task_id"]]
    insert_ledger_rows(ch_client, database, subs)
    insert_ledger_rows(ch_client, database, [*tops, correction])
    facts = {"root": root, "child": child, "grandchild": grandchild, "foreign_root": foreign_root,
             "cycle_root": other_root, "cycle_gc": other, "true_parent": parent, "correction": correction}
    yield database, [*rows, correction], facts
    ch_client.command(f"DROP DATABASE IF EXISTS {database}")


def _ledger(ch_client: Any, database: str, sql: str) -> Any:
    return ch_client.query(sql.replace("LEDGER", f"{database}.usage_ledger FINAL")).result_rows[0]


def test_fleet_totals_equal_the_ledger_and_a_brute_force_walk(ch_client: Any, fleet: Any) -> None:
    database, rows, facts = fleet
    forest: TaskForest = load_task_forest(ch_client, database, PERIOD)
    roots = [forest.tasks[r] for r in forest.roots]
    cost, calls, unpriced = _ledger(ch_client, database, "SELECT sum(cost_usd), countIf(row_kind = 'original'), "
                                    "countIf(row_kind = 'original' AND pricing_status = 'unpriced') FROM LEDGER "
                                    "WHERE task_id != ''")
    assert sum((r.total_cost_usd for r in roots), D(0)) == cost
    assert sum(r.total_calls for r in roots) == calls
    assert sum(r.total_unpriced_calls for r in roots) == unpriced > 0
    unpriced_tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows
                          if r["pricing_status"] == "unpriced" and r["row_kind"] == "original")
    assert sum(r.total_unpriced_tokens for r in roots) == unpriced_tokens
    assert sum(1 for t in forest.tasks.values() if t.depth >= 2) >= 2

    # Independently: own cost per task from the rows we inserted, the simulator's parent links (a parent from the
    # warm-up, never emitted, makes a root), and each task's total = own cost of every task it is an ancestor of.
    own: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row["task_id"]:
            own[row["task_id"]] += row["cost_usd"]
    true_parent = {t: (p if p in own else "") for t, p in facts["true_parent"].items()}
    total: dict[str, Decimal] = defaultdict(Decimal)
    subtree: dict[str, int] = defaultdict(int)
    for task, cost_of_task in own.items():
        up, first = task, True
        while up:
            total[up] += cost_of_task
            subtree[up] += 0 if first else 1
            up, first = true_parent[up], False
    for task, rollup in forest.tasks.items():
        assert rollup.own_cost_usd == own[task], task
        assert rollup.total_cost_usd == total[task], task
        assert rollup.sub_agents == subtree[task], task
        assert rollup.parent_task_id == true_parent[task], task
    assert set(forest.roots) == {t for t, p in true_parent.items() if not p}


def test_fleet_diamond_cycle_and_correction_are_resolved_and_flagged(ch_client: Any, fleet: Any) -> None:
    database, _rows, facts = fleet
    forest = load_task_forest(ch_client, database, PERIOD)
    gc = forest.tasks[facts["grandchild"]]
    assert gc.diamond and gc.claimed_parents == (facts["child"], facts["foreign_root"])
    assert (gc.parent_task_id, gc.root_task_id, gc.depth) == (facts["child"], facts["root"], 2)
    cycle_root = forest.tasks[facts["cycle_root"]]
    assert cycle_root.cycle_broken and cycle_root.depth == 0 and forest.tasks[facts["cycle_gc"]].cycle
    assert forest.summary().cycles == 1 and forest.summary().diamonds == 1
    # the view's own chosen parent agrees with the rollup wherever no cycle was broken and the parent was seen
    view = dict(ch_client.query(f"SELECT task_id, parent_task_id FROM {database}.v_task_nodes").result_rows)
    for task, rollup in forest.tasks.items():
        if not (rollup.cycle_broken or rollup.missing_parent):
            assert view[task] == rollup.parent_task_id, task
    assert view[facts["cycle_root"]] == facts["cycle_gc"]


def test_successful_task_cost_uses_the_root_outcome(ch_client: Any, fleet: Any) -> None:
    database, _rows, _facts = fleet
    forest = load_task_forest(ch_client, database, PERIOD)
    status = dict(ch_client.query(f"SELECT task_id, status FROM {database}.v_task_nodes").result_rows)
    for task in forest.tasks.values():
        assert task.root_status == status[task.root_task_id]
    summary = forest.summary()
    assert summary.successful_trees == sum(1 for r in forest.roots if status[r] == "ok")
    assert summary.cost_per_successful_tree_usd == (summary.cost_usd / summary.successful_trees).quantize(
        D("1e-12"), rounding="ROUND_DOWN")


def test_team_filter_and_one_tree(ch_client: Any, fleet: Any) -> None:
    database, _rows, facts = fleet
    team = _first(_rows, facts["root"])["team"]
    report = build_task_report(ch_client, database, PERIOD, team=team, task=facts["grandchild"])
    assert report.roots == (facts["root"],)
    assert {t.team for t in report.forest.tasks.values()} == {team}
    text = render_text(report)
    assert facts["grandchild"] in text and f"diamond: also claimed by {facts['foreign_root']}" in text


def test_hand_built_tree_with_a_late_parent_through_sql(ch_client: Any, ch_database: str) -> None:
    """The view and rollup on a small tree inserted child-first, with an unpriced call and a corrected one."""
    t0 = utc(2026, 11, 3, 10)
    kid_calls = [
        ledger_row("0.200000000000", t0 + timedelta(seconds=5), task_id="kid", parent_task_id="root"),
        ledger_row("0", t0 + timedelta(seconds=6), task_id="kid", parent_task_id="root", pricing_status="unpriced",
                   model="mystery-1", input_tokens=700, output_tokens=300, status="error"),
    ]
    insert_ledger(ch_client, ch_database, kid_calls)
    before = load_task_forest(ch_client, ch_database, parse_period("2026-11"))
    assert before.roots == ("kid",) and before.tasks["kid"].missing_parent == "root"
    insert_ledger(ch_client, ch_database, [ledger_row("1.000000000000", t0, task_id="root")])
    after = load_task_forest(ch_client, ch_database, parse_period("2026-11"))
    root = after.tasks["root"]
    assert (root.own_cost_usd, root.descendants_cost_usd, root.total_cost_usd) == (D(1), D("0.2"), D("1.2"))
    assert (root.total_calls, root.total_unpriced_calls, root.total_unpriced_tokens, root.sub_agents) == (3, 1, 1000, 1)
    assert after.tasks["kid"].status == "error" and after.tasks["kid"].root_status == "ok"


# ---- the command ---------------------------------------------------------------------------------------------
@pytest.fixture
def store(ch_client: Any, store_credentials: Any, store_data_dir: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreServer]:
    # The endpoint requires the installation's credentials, which the command finds in FINOPS_DATA_DIR.
    monkeypatch.setenv("FINOPS_DATA_DIR", str(store_data_dir))
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        yield server


def _run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> int:
    from governance.cli import register

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser(prog="finops")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_report_tasks_command(chdb_url: str, store: StoreServer, fleet: Any, ch_client: Any,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    database, _rows, facts = fleet
    env = {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
           "FINOPS_CLICKHOUSE_DATABASE": database}
    assert _run_cli(["report", "tasks", "--period", "2026-10", "--json", "--limit", "500"], monkeypatch, env) == 0
    body = json.loads(capsys.readouterr().out)
    cost = _ledger(ch_client, database, "SELECT sum(cost_usd) FROM LEDGER WHERE task_id != ''")[0]
    assert D(body["summary"]["cost_usd"]) == cost
    shown = [tree[0] for tree in body["trees"]]
    assert len(shown) == min(500, body["summary"]["trees"])
    assert [D(t["total_cost_usd"]) for t in shown] == sorted((D(t["total_cost_usd"]) for t in shown), reverse=True)
    assert _run_cli(["report", "tasks", "--period", "2026-10", "--task", facts["grandchild"]], monkeypatch, env) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[2].startswith(facts["root"]) and any(facts["grandchild"] in line for line in lines)
