"""No import cycle between the top-level packages, with ``finops`` split into the two layers it holds.

The import-linter contracts in ``pyproject.toml`` (run by ``make lint``) check the layers, the parts' independence
and cycles among the modules of each package; this test checks what they leave open: a cycle through several
top-level packages. ``finops`` holds both the ground (the kernel) and the shell (the command, the demo, the
benches), so it is split here the way the exhaustive contract declares it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")


def _finops_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c.get("containers") == ["finops"])
    return [{name.strip() for name in layer.replace("|", ":").split(":")} for layer in contract["layers"]]


def _component(module: str, shell: set[str]) -> str:
    top, _, rest = module.partition(".")
    if top != "finops" or not rest:
        return top
    return "finops (shell)" if rest.split(".")[0] in shell else "finops (ground)"


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_finops_is_declared_as_shell_above_ground() -> None:
    layers = _finops_layers()
    assert len(layers) == 3 and {"cli", "demo", "bench"} <= layers[0] | layers[1] and "settings" in layers[2]


def test_no_import_cycle_between_top_level_packages() -> None:
    shell = set().union(*_finops_layers()[:2])
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = _component(importer, shell), _component(imported, shell)
            if a != b:
                edges.setdefault(a, set()).add(b)
    assert "finops (ground)" in edges and "producers" in edges  # the graph is real, not empty
    assert _find_cycle(edges) is None, f"import cycle between packages: {' -> '.join(_find_cycle(edges) or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}}) is None
