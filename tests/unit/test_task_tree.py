"""Cost per task across sub-agent trees (finops.task_tree): hand-built diamonds, cycles, late parents, deep chains
and forests against totals worked out by hand, plus random trees against a brute-force ancestor walk."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from finops.task_tree import (
    ParentClaim,
    TaskNode,
    TaskTreeError,
    compute_task_forest,
    largest_roots,
    node_from_row,
    render_forest_text,
)

pytestmark = pytest.mark.unit

D = Decimal
T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def node(task_id: str, cost: str, *parents: tuple[str, float] | tuple[str, float, str], start: float = 0.0,
         calls: int = 1, status: str = "ok", unpriced: int = 0, tokens: int = 0) -> TaskNode:
    claims = tuple(ParentClaim(p[0], at(p[1]), p[2] if len(p) > 2 else f"ev-{task_id}-{p[0]}")
                   for p in parents)
    return TaskNode(task_id=task_id, own_cost_usd=D(cost), own_calls=calls, own_unpriced_calls=unpriced,
                    own_unpriced_tokens=tokens, status=status, first_call_at=at(start), last_call_at=at(start + 1),
                    parent_claims=claims, agent_id="agent-1", team="team-a", project="proj-x")


def test_diamond_keeps_the_parent_seen_first_and_counts_the_subtree_once() -> None:
    # C is claimed by R2 at t=5 and by R1 at t=3: R1 was seen first. G hangs below C.
    forest = compute_task_forest([
        node("R1", "1.00", start=0), node("R2", "2.00", start=1),
        node("C", "0.50", ("R2", 5), ("R1", 3), start=3), node("G", "0.25", ("C", 8), start=8),
    ])
    r1, r2, c, g = (forest.tasks[t] for t in ("R1", "R2", "C", "G"))
    assert (r1.own_cost_usd, r1.descendants_cost_usd, r1.total_cost_usd) == (D("1.00"), D("0.75"), D("1.75"))
    assert (r1.sub_agents, r1.height, r1.depth) == (2, 2, 0)
    assert (r2.total_cost_usd, r2.sub_agents) == (D("2.00"), 0)
    assert (c.parent_task_id, c.depth, c.diamond, c.claimed_parents) == ("R1", 1, True, ("R1", "R2"))
    assert (g.root_task_id, g.depth, g.diamond) == ("R1", 2, False)
    assert forest.roots == ("R1", "R2")
    assert sum(forest.tasks[r].total_cost_usd for r in forest.roots) == D("3.75")
    assert forest.summary().diamonds == 1


def test_diamond_claims_at_the_same_moment_are_decided_by_event_id() -> None:
    forest = compute_task_forest([
        node("P", "1"), node("Q", "1"), node("C", "1", ("Q", 2, "ev-a"), ("P", 2, "ev-b"), start=2),
    ])
    assert forest.tasks["C"].parent_task_id == "Q"


def test_cycle_is_broken_at_the_task_that_started_first_and_each_call_counts_once() -> None:
    # A -> C -> B -> A (parent pointers); B started first, so B loses its parent and is the root: B > C > A.
    # D hangs off A; S names itself (a cycle of one).
    forest = compute_task_forest([
        node("A", "0.10", ("C", 6), start=6), node("B", "0.20", ("A", 1), start=1),
        node("C", "0.40", ("B", 3), start=3), node("D", "0.80", ("A", 9), start=9),
        node("S", "1.60", ("S", 2), start=2),
    ])
    b, c, a, d, s = (forest.tasks[t] for t in "BCADS")
    assert forest.roots == ("B", "S")
    assert (b.parent_task_id, b.cycle, b.cycle_broken) == ("", True, True)
    assert (c.parent_task_id, c.depth, a.parent_task_id, a.depth, d.depth) == ("B", 1, "C", 2, 3)
    assert (c.cycle, a.cycle, d.cycle) == (True, True, False)
    assert (b.total_cost_usd, b.sub_agents, b.height) == (D("1.50"), 3, 3)
    assert (a.total_cost_usd, c.total_cost_usd) == (D("0.90"), D("1.30"))
    assert (s.cycle_broken, s.total_cost_usd, s.sub_agents) == (True, D("1.60"), 0)
    assert forest.cycles == (("B", "C", "A"), ("S",))
    assert forest.summary().cycles == 2
    assert sum(forest.tasks[r].total_cost_usd for r in forest.roots) == D("3.10")


def test_a_parent_arriving_after_its_children_changes_nothing() -> None:
    rows = [node("root", "1", start=0), node("kid-1", "2", ("root", 4), start=4),
            node("kid-2", "4", ("root", 5), start=5), node("grandkid", "8", ("kid-1", 7), start=7)]
    expected = compute_task_forest(rows)
    assert expected.tasks["root"].total_cost_usd == D(15) and expected.tasks["root"].sub_agents == 3
    for order in itertools.permutations(rows):
        assert compute_task_forest(order).tasks == expected.tasks


def test_a_parent_not_seen_yet_makes_a_flagged_root_that_joins_its_tree_once_the_parent_lands() -> None:
    child = node("kid", "2", ("late-root", 4), start=4)
    alone = compute_task_forest([child])
    assert alone.roots == ("kid",) and alone.tasks["kid"].missing_parent == "late-root"
    joined = compute_task_forest([child, node("late-root", "1", start=0)])
    assert joined.roots == ("late-root",) and joined.tasks["late-root"].total_cost_usd == D(3)
    assert joined.tasks["kid"].missing_parent == ""


def test_a_deep_chain_needs_no_recursion() -> None:
    depth = 5000
    rows = [node("t0", "0.001", start=0)] + [
        node(f"t{i}", "0.001", (f"t{i - 1}", i), start=i) for i in range(1, depth)]
    random.Random(3).shuffle(rows)
    forest = compute_task_forest(rows)
    root = forest.tasks["t0"]
    assert (root.total_cost_usd, root.sub_agents, root.height) == (D("5.000"), depth - 1, depth - 1)
    assert forest.tasks[f"t{depth - 1}"].depth == depth - 1
    assert forest.tasks["t2500"].total_cost_usd == D("2.500")


def test_root_outcome_decides_success_and_unpriced_calls_are_counted_not_zero() -> None:
    forest = compute_task_forest([
        node("ok-root", "1.00", start=0), node("ok-kid", "0", ("ok-root", 1), start=1, calls=2, unpriced=2,
                                               tokens=900, status="error"),
        node("bad-root", "3.00", start=2, status="timeout"), node("bad-kid", "0.50", ("bad-root", 3), start=3),
    ])
    assert forest.tasks["ok-kid"].root_status == "ok" and forest.tasks["bad-kid"].root_status == "timeout"
    ok_root = forest.tasks["ok-root"]
    assert (ok_root.total_cost_usd, ok_root.total_calls, ok_root.total_unpriced_calls,
            ok_root.total_unpriced_tokens) == (D("1.00"), 3, 2, 900)
    summary = forest.summary()
    assert (summary.trees, summary.successful_trees, summary.cost_usd) == (2, 1, D("4.50"))
    assert summary.cost_per_successful_tree_usd == D("4.5")  # all trees' cost over the one that succeeded
    assert (summary.unpriced_calls, summary.unpriced_tokens) == (2, 900)
    text = render_forest_text(forest, forest.roots)
    kid_line = next(line for line in text.splitlines() if "ok-kid" in line)
    assert "unpriced" in kid_line and "$0.0000 " not in kid_line
    assert "unpriced: 2 calls, 900 tokens" in text


def test_forest_text_draws_the_tree() -> None:
    forest = compute_task_forest([
        node("R", "1", start=0), node("A", "1", ("R", 1), start=1), node("A1", "1", ("A", 2), start=2),
        node("B", "1", ("R", 3), start=3), node("X", "2", start=4),
    ])
    names = [line.split()[0:2] for line in render_forest_text(forest, largest_roots(forest, 10)).splitlines()[1:6]]
    assert names == [["R", "agent-1"], ["├─", "A"], ["│", "└─"], ["└─", "B"], ["X", "agent-1"]]


def test_the_same_task_twice_is_refused_by_name() -> None:
    with pytest.raises(TaskTreeError, match="'dup'"):
        compute_task_forest([node("dup", "1"), node("dup", "2")])


def test_node_from_row_reads_a_view_row() -> None:
    row = {"task_id": "C", "own_cost_usd": D("0.75"), "own_calls": 3, "own_unpriced_calls": 1,
           "own_unpriced_tokens": 10, "status": "ok", "first_call_at": at(3),
           "last_call_at": at(9), "team": "team-a", "project": "p", "agent_id": "a",
           "parent_claims": [("Q", at(3), "e3"), ("R", at(5), "e2")]}
    n = node_from_row(row)
    assert n.parent_claims[0] == ParentClaim("Q", at(3), "e3") and n.own_calls == 3


@pytest.mark.parametrize("seed", range(20))
def test_random_forests_match_a_brute_force_ancestor_walk(seed: int) -> None:
    """Random trees with extra later parent claims (diamonds): every task's total is the own cost of every task it
    is an ancestor of, found by walking up the known true parents; the roots' totals sum to the ledger."""
    rng = random.Random(seed)
    true_parent: dict[str, str] = {}
    rows: list[TaskNode] = []
    for i in range(rng.randint(1, 120)):
        task = f"t{i:03d}"
        parent = f"t{rng.randrange(i):03d}" if i and rng.random() < 0.7 else ""
        true_parent[task] = parent
        claims: list[tuple[str, float, str]] = [(parent, i, f"e{i:03d}a")] if parent else []
        if parent and rng.random() < 0.2:  # a later, false claim by another earlier task
            claims.append((f"t{rng.randrange(i):03d}", i + 0.5, f"e{i:03d}b"))
        cost = D(rng.randint(0, 10_000)) / 1000
        rows.append(node(task, str(cost), *claims, start=i, calls=rng.randint(1, 5)))
    rng.shuffle(rows)
    forest = compute_task_forest(rows)
    own = {n.task_id: n.own_cost_usd for n in rows}
    for task in own:
        expected = D(0)
        for other, cost in own.items():
            up = other
            while up and up != task:
                up = true_parent[up]
            if up == task:
                expected += cost
        assert forest.tasks[task].total_cost_usd == expected, task
    assert sum(forest.tasks[r].total_cost_usd for r in forest.roots) == sum(own.values())
    assert set(forest.roots) == {t for t, p in true_parent.items() if not p}
