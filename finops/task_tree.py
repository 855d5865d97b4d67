"""Cost per task across sub-agent trees, each call counted once: the pure rollup behind ``finops report tasks``,
``GET /api/tasks`` and the dashboard's Tasks page.

Role: :func:`compute_task_forest` takes one :class:`TaskNode` per task (its own cost, calls, tokens, outcome and the
parents its calls claimed, as the ``v_task_nodes`` view returns them) and builds the forest from the whole set at
once, never in arrival order; diamonds, missing parents and cycles are resolved deterministically and flagged.

Guarantee: every task lies in exactly one tree and every call is counted once (the sum over roots equals the sum of
every task's own cost); a tree's outcome is its root's; unpriced calls count as calls and tokens, never as $0
(DESIGN §4). Money is Decimal; no ClickHouse, Kafka or Faust import. README, "Cost per task across sub-agent trees".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from finops.clock import as_utc
from schemas.errors import FinopsError

__all__ = [
    "ParentClaim",
    "TaskForest",
    "TaskNode",
    "TaskRollup",
    "TaskTreeError",
    "TreeSummary",
    "compute_task_forest",
    "largest_roots",
    "node_from_row",
    "render_forest_text",
    "rollup_as_json",
    "summary_as_json",
]

ZERO = Decimal(0)
_PLACES = Decimal("0.000000000001")
_NEVER = datetime.max.replace(tzinfo=UTC)


class TaskTreeError(FinopsError):
    """The task rows cannot form a forest (the same task id twice); the message names the task."""


@dataclass(frozen=True, slots=True)
class ParentClaim:
    """A parent a task's calls named: at the first call (time, event id) that named it."""

    parent_task_id: str
    first_seen_at: datetime
    first_event_id: str = ""

    def order(self) -> tuple[datetime, str, str]:
        return (as_utc(self.first_seen_at), self.first_event_id, self.parent_task_id)


@dataclass(frozen=True, slots=True)
class TaskNode:
    """One task's own numbers (its calls only, no sub-agent) and the parents it claims."""

    task_id: str
    own_cost_usd: Decimal = ZERO
    own_calls: int = 0
    own_unpriced_calls: int = 0
    own_unpriced_tokens: int = 0
    status: str = "ok"
    first_call_at: datetime | None = None
    last_call_at: datetime | None = None
    parent_claims: tuple[ParentClaim, ...] = ()
    team: str = ""
    project: str = ""
    agent_id: str = ""


@dataclass(frozen=True, slots=True)
class TaskRollup:
    """One task within its tree. ``descendants_*`` cover every task below it (its sub-agents, theirs, ...), each
    once; ``total_* = own_* + descendants_*``. ``depth`` is 0 for a root; ``height`` the levels below it (0 for a
    leaf); ``sub_agents`` the number of descendant tasks."""

    task_id: str
    team: str
    project: str
    agent_id: str
    status: str
    first_call_at: datetime | None
    last_call_at: datetime | None
    parent_task_id: str
    root_task_id: str
    root_status: str
    depth: int
    height: int
    sub_agents: int
    children: tuple[str, ...]
    own_cost_usd: Decimal
    descendants_cost_usd: Decimal
    total_cost_usd: Decimal
    own_calls: int
    total_calls: int
    own_unpriced_calls: int
    total_unpriced_calls: int
    own_unpriced_tokens: int
    total_unpriced_tokens: int
    claimed_parents: tuple[str, ...]
    diamond: bool
    cycle: bool
    cycle_broken: bool
    missing_parent: str

    @property
    def root_succeeded(self) -> bool:
        return self.root_status == "ok"

    @property
    def is_root(self) -> bool:
        return self.depth == 0


@dataclass(frozen=True, slots=True)
class TreeSummary:
    """Totals over a forest (or some of its trees). ``cost_per_successful_tree_usd`` divides ALL trees' cost by
    the trees whose root succeeded (failed work makes success dearer, as in ``v_cost_per_successful_task``)."""

    trees: int
    successful_trees: int
    tasks: int
    sub_agent_tasks: int
    cost_usd: Decimal
    sub_agent_cost_usd: Decimal
    calls: int
    unpriced_calls: int
    unpriced_tokens: int
    diamonds: int
    cycles: int
    missing_parents: int
    max_depth: int

    @property
    def cost_per_tree_usd(self) -> Decimal | None:
        return _ratio(self.cost_usd, self.trees)

    @property
    def cost_per_successful_tree_usd(self) -> Decimal | None:
        return _ratio(self.cost_usd, self.successful_trees)


@dataclass(frozen=True)
class TaskForest:
    """Every task's rollup, keyed by task id, and the roots in (first call, task id) order."""

    tasks: Mapping[str, TaskRollup]
    roots: tuple[str, ...]
    cycles: tuple[tuple[str, ...], ...] = field(default=())

    def tree(self, root_task_id: str) -> list[TaskRollup]:
        """The tree under ``root_task_id`` in pre-order (children by first call, then id)."""
        out: list[TaskRollup] = []
        stack = [root_task_id]
        while stack:
            task = self.tasks[stack.pop()]
            out.append(task)
            stack.extend(reversed(task.children))
        return out

    def summary(self, roots: Iterable[str] | None = None) -> TreeSummary:
        """Totals over the trees of ``roots`` (default: all)."""
        chosen = [self.tasks[r] for r in (self.roots if roots is None else roots)]
        members = [t for r in chosen for t in self.tree(r.task_id)]
        return TreeSummary(
            trees=len(chosen),
            successful_trees=sum(1 for r in chosen if r.status == "ok"),
            tasks=len(members),
            sub_agent_tasks=sum(r.sub_agents for r in chosen),
            cost_usd=sum((r.total_cost_usd for r in chosen), ZERO),
            sub_agent_cost_usd=sum((r.descendants_cost_usd for r in chosen), ZERO),
            calls=sum(r.total_calls for r in chosen),
            unpriced_calls=sum(r.total_unpriced_calls for r in chosen),
            unpriced_tokens=sum(r.total_unpriced_tokens for r in chosen),
            diamonds=sum(1 for t in members if t.diamond),
            cycles=sum(1 for t in members if t.cycle_broken),
            missing_parents=sum(1 for t in members if t.missing_parent),
            max_depth=max((r.height for r in chosen), default=0),
        )


def _ratio(amount: Decimal, count: int) -> Decimal | None:
    return None if not count else (amount / count).quantize(_PLACES, rounding=ROUND_DOWN)


def _start_key(node: TaskNode) -> tuple[datetime, str]:
    return (as_utc(node.first_call_at) if node.first_call_at is not None else _NEVER, node.task_id)


def compute_task_forest(nodes: Iterable[TaskNode]) -> TaskForest:
    """Roll every task up with the sub-agent tasks below it. Pure; runs in O(n log n) for n tasks without recursion
    (a chain of any depth is fine). Raises :class:`TaskTreeError` when a task id appears twice.

    The rules, each deterministic, so a parent that arrived after its children changes nothing:

    * Diamond (calls of one task name different parents): the chosen parent is the claim seen first, ordered by
      ``(first_seen_at, first_event_id, parent_task_id)``; the task is flagged ``diamond`` and keeps the others.
    * Missing parent (the chosen parent is not in the set: not arrived yet, outside the window or the caller's
      teams): the task is a root of its own tree, flagged ``missing_parent``. The other claims are not tried, so a
      tree's shape does not depend on who is looking.
    * Cycle (following chosen parents comes back to a task): the member that started first (earliest
      ``first_call_at``, then ``task_id``) drops its parent edge and becomes the root; every member is flagged
      ``cycle`` and the root ``cycle_broken``.

    A tree's outcome is its root's (``root_status``), so the cost per successful task charges sub-agent spend to
    the task that spawned it."""
    index: dict[str, TaskNode] = {}
    for node in nodes:
        if node.task_id in index:
            raise TaskTreeError(f"task {node.task_id!r} appears twice in the task rows; each task must be one row "
                                "(read them from v_task_nodes, which groups by task_id)")
        index[node.task_id] = node

    # 1. one parent per task: the claim seen first (diamonds); a parent not in the set makes a root
    parent: dict[str, str] = {}
    missing: dict[str, str] = {}
    claimed: dict[str, tuple[str, ...]] = {}
    for task_id, node in index.items():
        claims = sorted(node.parent_claims, key=ParentClaim.order)
        distinct: list[str] = []
        for claim in claims:
            if claim.parent_task_id and claim.parent_task_id not in distinct:
                distinct.append(claim.parent_task_id)
        claimed[task_id] = tuple(distinct)
        if not distinct:
            parent[task_id] = ""
        elif distinct[0] in index:
            parent[task_id] = distinct[0]
        else:
            parent[task_id], missing[task_id] = "", distinct[0]

    # 2. break cycles: walk up from every task; a walk that meets its own path has found a cycle
    state: dict[str, int] = {}  # 1 = on the current walk, 2 = done
    in_cycle: set[str] = set()
    broken: set[str] = set()
    cycles: list[tuple[str, ...]] = []
    for start in sorted(index, key=lambda t: _start_key(index[t])):
        path: list[str] = []
        current = start
        while current and state.get(current, 0) == 0:
            state[current] = 1
            path.append(current)
            current = parent[current]
        if current and state.get(current) == 1:
            members = path[path.index(current):]
            head = min(members, key=lambda t: _start_key(index[t]))
            parent[head] = ""
            in_cycle.update(members)
            broken.add(head)
            cycles.append(tuple(sorted(members, key=lambda t: _start_key(index[t]))))
        for task_id in path:
            state[task_id] = 2

    # 3. children, roots and a breadth-first order (depth, root); every task is now reached from exactly one root
    children: dict[str, list[str]] = {t: [] for t in index}
    for task_id, p in parent.items():
        if p:
            children[p].append(task_id)
    for kids in children.values():
        kids.sort(key=lambda t: _start_key(index[t]))
    roots = sorted((t for t, p in parent.items() if not p), key=lambda t: _start_key(index[t]))
    depth: dict[str, int] = {}
    root_of: dict[str, str] = {}
    order: list[str] = []
    for root in roots:
        depth[root], root_of[root] = 0, root
        queue = [root]
        while queue:
            nxt: list[str] = []
            for task_id in queue:
                order.append(task_id)
                for child in children[task_id]:
                    depth[child], root_of[child] = depth[task_id] + 1, root
                    nxt.append(child)
            queue = nxt
    if len(order) != len(index):  # pragma: no cover - step 2 guarantees it; a bug here must not lose money
        raise TaskTreeError(f"{len(index) - len(order)} tasks were not reached from a root")

    # 4. accumulate from the leaves up (reverse breadth-first order: every child before its parent)
    desc_cost: dict[str, Decimal] = dict.fromkeys(index, ZERO)
    desc_calls: dict[str, int] = dict.fromkeys(index, 0)
    desc_unpriced: dict[str, int] = dict.fromkeys(index, 0)
    desc_tokens: dict[str, int] = dict.fromkeys(index, 0)
    desc_tasks: dict[str, int] = dict.fromkeys(index, 0)
    height: dict[str, int] = dict.fromkeys(index, 0)
    for task_id in reversed(order):
        p = parent[task_id]
        if not p:
            continue
        node = index[task_id]
        desc_cost[p] += node.own_cost_usd + desc_cost[task_id]
        desc_calls[p] += node.own_calls + desc_calls[task_id]
        desc_unpriced[p] += node.own_unpriced_calls + desc_unpriced[task_id]
        desc_tokens[p] += node.own_unpriced_tokens + desc_tokens[task_id]
        desc_tasks[p] += 1 + desc_tasks[task_id]
        height[p] = max(height[p], height[task_id] + 1)

    tasks: dict[str, TaskRollup] = {}
    for task_id in order:
        node = index[task_id]
        tasks[task_id] = TaskRollup(
            task_id=task_id, team=node.team, project=node.project, agent_id=node.agent_id, status=node.status,
            first_call_at=node.first_call_at, last_call_at=node.last_call_at, parent_task_id=parent[task_id],
            root_task_id=root_of[task_id], root_status=index[root_of[task_id]].status, depth=depth[task_id],
            height=height[task_id], sub_agents=desc_tasks[task_id], children=tuple(children[task_id]),
            own_cost_usd=node.own_cost_usd, descendants_cost_usd=desc_cost[task_id],
            total_cost_usd=node.own_cost_usd + desc_cost[task_id], own_calls=node.own_calls,
            total_calls=node.own_calls + desc_calls[task_id], own_unpriced_calls=node.own_unpriced_calls,
            total_unpriced_calls=node.own_unpriced_calls + desc_unpriced[task_id],
            own_unpriced_tokens=node.own_unpriced_tokens,
            total_unpriced_tokens=node.own_unpriced_tokens + desc_tokens[task_id],
            claimed_parents=claimed[task_id], diamond=len(claimed[task_id]) > 1, cycle=task_id in in_cycle,
            cycle_broken=task_id in broken, missing_parent=missing.get(task_id, ""),
        )
    return TaskForest(tasks=tasks, roots=tuple(roots), cycles=tuple(cycles))


def node_from_row(row: Mapping[str, Any]) -> TaskNode:
    """A :class:`TaskNode` from one ``v_task_nodes`` row (a dict; ``parent_claims`` as (parent, at, event id)
    tuples, the way clickhouse-connect returns Array(Tuple))."""
    return TaskNode(
        task_id=str(row["task_id"]),
        own_cost_usd=Decimal(row["own_cost_usd"]),
        own_calls=int(row["own_calls"]),
        own_unpriced_calls=int(row["own_unpriced_calls"]),
        own_unpriced_tokens=int(row["own_unpriced_tokens"]),
        status=str(row["status"]),
        first_call_at=row.get("first_call_at"),
        last_call_at=row.get("last_call_at"),
        parent_claims=tuple(ParentClaim(str(p), at, str(ev)) for p, at, ev in row.get("parent_claims") or ()),
        team=str(row.get("team", "")),
        project=str(row.get("project", "")),
        agent_id=str(row.get("agent_id", "")),
    )


def rollup_as_json(task: TaskRollup) -> dict[str, Any]:
    """One rollup as a JSON-ready dict (money stays Decimal: the caller's encoder writes it as a string)."""
    return {
        "task_id": task.task_id, "team": task.team, "project": task.project, "agent_id": task.agent_id,
        "status": task.status, "first_call_at": task.first_call_at, "last_call_at": task.last_call_at,
        "parent_task_id": task.parent_task_id, "root_task_id": task.root_task_id, "root_status": task.root_status,
        "root_succeeded": task.root_succeeded, "depth": task.depth, "height": task.height,
        "sub_agents": task.sub_agents, "own_cost_usd": task.own_cost_usd,
        "descendants_cost_usd": task.descendants_cost_usd, "total_cost_usd": task.total_cost_usd,
        "own_calls": task.own_calls, "total_calls": task.total_calls,
        "own_unpriced_calls": task.own_unpriced_calls, "total_unpriced_calls": task.total_unpriced_calls,
        "own_unpriced_tokens": task.own_unpriced_tokens, "total_unpriced_tokens": task.total_unpriced_tokens,
        "claimed_parents": list(task.claimed_parents), "diamond": task.diamond, "cycle": task.cycle,
        "cycle_broken": task.cycle_broken, "missing_parent": task.missing_parent or None,
    }


def summary_as_json(summary: TreeSummary) -> dict[str, Any]:
    return {
        "trees": summary.trees, "successful_trees": summary.successful_trees, "tasks": summary.tasks,
        "sub_agent_tasks": summary.sub_agent_tasks, "cost_usd": summary.cost_usd,
        "sub_agent_cost_usd": summary.sub_agent_cost_usd, "calls": summary.calls,
        "unpriced_calls": summary.unpriced_calls, "unpriced_tokens": summary.unpriced_tokens,
        "diamonds": summary.diamonds, "cycles": summary.cycles, "missing_parents": summary.missing_parents,
        "max_depth": summary.max_depth, "cost_per_tree_usd": summary.cost_per_tree_usd,
        "cost_per_successful_tree_usd": summary.cost_per_successful_tree_usd,
    }


def largest_roots(forest: TaskForest, limit: int) -> list[str]:
    """The ``limit`` roots with the highest total cost (then the most calls, then task id)."""
    ranked = sorted(forest.roots, key=lambda r: (-forest.tasks[r].total_cost_usd, -forest.tasks[r].total_calls, r))
    return ranked[:max(0, limit)]


def _money(value: Decimal, unpriced_calls: int, calls: int) -> str:
    """4 places; a cost made only of unpriced calls is 'unpriced', never $0.0000; partly unpriced gets a '+'."""
    if calls and unpriced_calls == calls and not value:
        return "unpriced"
    text = f"${value.quantize(Decimal('0.0001'), rounding=ROUND_DOWN)}"
    return text + ("+" if unpriced_calls else "")


def _flags(task: TaskRollup) -> str:
    flags = []
    if task.diamond:
        flags.append("diamond: also claimed by " + ", ".join(task.claimed_parents[1:]))
    if task.cycle_broken:
        flags.append("cycle broken here")
    elif task.cycle:
        flags.append("in a cycle")
    if task.missing_parent:
        flags.append(f"parent {task.missing_parent} not seen")
    if task.own_unpriced_calls:
        flags.append(f"{task.own_unpriced_calls} unpriced calls, {task.own_unpriced_tokens:,} tokens")
    return "  [" + "; ".join(flags) + "]" if flags else ""


def render_forest_text(forest: TaskForest, roots: Sequence[str], *, title: str = "") -> str:
    """The trees of ``roots`` as an indented table (the ``finops report tasks`` output), then their totals."""
    lines = [title] if title else []
    name_width = 36
    lines.append(f"{'task':<{name_width}} {'agent':<16} {'own':>11} {'sub-agents':>11} {'total':>11} "
                 f"{'calls':>6} {'depth':>5} {'subs':>4}  outcome")
    for root in roots:
        members = forest.tree(root)
        # the tree-drawing prefix of each member: whether each ancestor still has siblings below it
        last_child: dict[str, bool] = {}
        for task in members:
            for i, child in enumerate(task.children):
                last_child[child] = i == len(task.children) - 1
        for task in members:
            prefix = ""
            if task.depth:
                ancestors: list[str] = []
                up = task.parent_task_id
                while up and forest.tasks[up].depth > 0:
                    ancestors.append(up)
                    up = forest.tasks[up].parent_task_id
                prefix = "".join("   " if last_child[a] else "│  " for a in reversed(ancestors))
                prefix += "└─ " if last_child[task.task_id] else "├─ "
            name = (prefix + task.task_id)[:name_width]
            descendants = (_money(task.descendants_cost_usd, task.total_unpriced_calls - task.own_unpriced_calls,
                                  task.total_calls - task.own_calls) if task.sub_agents else "-")
            lines.append(
                f"{name:<{name_width}} {task.agent_id[:16]:<16} "
                f"{_money(task.own_cost_usd, task.own_unpriced_calls, task.own_calls):>11} "
                f"{descendants:>11} "
                f"{_money(task.total_cost_usd, task.total_unpriced_calls, task.total_calls):>11} "
                f"{task.total_calls:>6} {task.depth:>5} {task.sub_agents:>4}  {task.status}{_flags(task)}")
    s = forest.summary(roots)
    per_success = s.cost_per_successful_tree_usd
    lines.append("")
    lines.append(f"{s.trees} trees, {s.tasks} tasks ({s.sub_agent_tasks} sub-agent tasks), {s.calls} calls: "
                 f"${s.cost_usd.quantize(Decimal('0.0001'), rounding=ROUND_DOWN)} "
                 f"(sub-agents ${s.sub_agent_cost_usd.quantize(Decimal('0.0001'), rounding=ROUND_DOWN)}); "
                 f"{s.successful_trees} succeeded (root outcome), cost per successful task "
                 + (f"${per_success.quantize(Decimal('0.0001'), rounding=ROUND_DOWN)}" if per_success is not None
                    else "-"))
    if s.unpriced_calls:
        lines.append(f"unpriced: {s.unpriced_calls} calls, {s.unpriced_tokens:,} tokens (not in the cost above, "
                     "not $0: add the model to the price book)")
    if s.diamonds or s.cycles or s.missing_parents:
        lines.append(f"resolved: {s.diamonds} diamonds (first parent seen kept), {s.cycles} cycles (broken at the "
                     f"task that started first), {s.missing_parents} parents not seen (the child is a root)")
    return "\n".join(lines) + "\n"
