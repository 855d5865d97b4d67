"""Module docstrings stay short and no docstring or comment quotes a measured figure (STYLE habit 7, issue 16).

A module docstring says the role, the guarantee and where DESIGN or the README explain more, in about ten lines;
what explains one class or function lives in that class's or function's docstring. Measured figures (a time per
event, a rate, "N x faster") go stale in a docstring or comment: they belong in the bench output and the README,
which are refreshed. A default is named by its setting or constant (``DEFAULT_MAX_BATCH_WAIT_S``), not by its value
in milliseconds, so it cannot be mistaken for a measurement.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")
#: Parts of a path that are not package modules (the TypeScript SDK's node_modules and test fixtures).
SKIPPED_PARTS = frozenset({"node_modules", "test", "tests"})
MAX_MODULE_DOCSTRING_LINES = 14

#: A number with a time unit (µs, us, ns, ms), a number of events, rows, spans, messages, calls or requests per
#: second, or "N x faster/slower/cheaper". Not matched: unit names alone ("events/s", "CPU µs/event"), settings
#: such as ``linger.ms`` (no number before the unit) and plain durations in seconds or minutes.
FIGURE = re.compile(
    r"(?<![\w.])~?\d[\d,.]*(?:\s?-\s?\d[\d,.]*)?\s?(?:µs|us|ns|ms)\b"
    r"|\d[\d,.]*\s?k?\s?(?:events|rows|spans|msgs?|messages|calls|requests)/s\b"
    r"|\d+(?:\.\d+)?\s?(?:x|×)\s(?:faster|slower|cheaper|quicker)\b"
)


def package_modules() -> list[Path]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
                modules.append(path)
    return modules


def module_docstring_lines(source: str) -> int:
    """Lines of the module docstring as ``inspect.cleandoc`` leaves them (0 without one)."""
    doc = ast.get_docstring(ast.parse(source), clean=True)
    return len(doc.splitlines()) if doc else 0


def figures(source: str) -> list[tuple[int, str, str]]:
    """``(line, where, match)`` of every measured figure in the module's docstrings and comments."""
    found: list[tuple[int, str, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                where = "module docstring" if isinstance(node, ast.Module) else f"docstring of {node.name}"
                line = 1 if isinstance(node, ast.Module) else node.lineno
                found.extend((line, where, m.group(0)) for m in FIGURE.finditer(doc))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.extend((token.start[0], "comment", m.group(0)) for m in FIGURE.finditer(token.string))
    return found


def test_the_package_modules_are_found() -> None:
    modules = package_modules()
    assert len(modules) > 100
    assert ROOT / "stream_jobs" / "hotpath.py" in modules


def test_module_docstrings_are_at_most_fourteen_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in package_modules()
        if (lines := module_docstring_lines(path.read_text(encoding="utf-8"))) > MAX_MODULE_DOCSTRING_LINES
    }
    assert not too_long, (
        f"module docstrings over {MAX_MODULE_DOCSTRING_LINES} lines (keep role, guarantee and a DESIGN/README "
        f"pointer; move the rest next to the code it explains): {too_long}"
    )


def test_no_docstring_or_comment_quotes_a_measured_figure() -> None:
    quoted = [
        f"{path.relative_to(ROOT)}:{line} {where}: {match!r}"
        for path in package_modules()
        for line, where, match in figures(path.read_text(encoding="utf-8"))
    ]
    assert not quoted, (
        "measured figures in docstrings or comments go stale; point at `make bench` / the README instead, and name "
        "defaults by their setting: " + "; ".join(quoted)
    )


@pytest.mark.parametrize(
    "text",
    [
        "a plain consume(1000) loop does the whole job in ~11.5 µs",
        "fastavro spends ~2-4 µs per decimal",
        "(~2 us per event at 100k/s)",
        "the first event compiles its rates (~0.1-1 ms)",
        "the budget is ~20 µs at 40k events/s",
        "byte-identical to fastavro, 1.5-3x faster",
        "~2.5x faster than str(uuid.uuid4())",
        "one sink thread writes 10,179 rows/s",
    ],
)
def test_the_figure_pattern_finds_measured_figures(text: str) -> None:
    assert figures(f"# {text}\n")
    assert figures(f'"""{text}"""\n')


@pytest.mark.parametrize(
    "text",
    [
        "wall-clock events/s and CPU time per event",
        "CPU µs/event is the process's CPU time per event",
        "with the producer's linger.ms it bounds the wait",
        "flushed at most max_batch_wait_s (default DEFAULT_MAX_BATCH_WAIT_S)",
        "a 16 MB prefetch bound; every 5 minutes; 50x its task rate",
        "occurred_at as the raw long (µs)",
    ],
)
def test_the_figure_pattern_leaves_other_text_alone(text: str) -> None:
    assert not figures(f"# {text}\n")
    assert not figures(f'"""{text}"""\n')


def test_a_long_module_docstring_is_counted() -> None:
    assert module_docstring_lines('"""' + "\n".join(["line"] * 15) + '\n"""\n') == 15
    assert module_docstring_lines('"""One line."""\n') == 1
    assert module_docstring_lines("x = 1\n") == 0
