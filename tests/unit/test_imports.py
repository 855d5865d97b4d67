"""Imports sit at the top of a module (issue 16): a package module imports inside a function only when it is in
ALLOWED below, with the reason, and then says so once in a ``# Imports inside functions:`` comment that names the
reason and the command that measures it.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")
MARKER = "# Imports inside functions:"

STARTUP = ("start-up cost of a CLI command: `finops --help` imports every module of finops.cli.COMMAND_MODULES "
           "(and what they import at the top), so a handler's role dependencies load in the handler "
           "(measure: python -X importtime -m finops.cli --help)")

#: module (path from the repository root) -> why it imports inside functions.
ALLOWED: dict[str, str] = {
    "finops/cli.py": STARTUP,
    "finops/bench.py": STARTUP,
    "finops/demo.py": STARTUP,
    "finops/benches/stream.py": STARTUP + "; finops.bench imports it at the top for its register()",
    "finops/benches/intake.py": STARTUP + "; its handler loads opentelemetry-proto (the intake extra)",
    "finops/clickhouse.py": STARTUP + "; the CLI modules import it at the top, clickhouse-connect (pipeline extra) "
                            "loads on the first HTTP connect",
    "schemas/wire.py": ("optional extra not in the base install: the Schema Registry client (confluent-kafka's "
                        "schemaregistry extra) loads only when a registry is configured; the SDK import checked by "
                        "tests/unit/test_packaging.py must not load it"),
    "producers/cli.py": STARTUP,
    "producers/intake/cli.py": STARTUP,
    "producers/replay.py": STARTUP + "; producers.cli imports it at the top for its register()",
    "producers/simulator.py": STARTUP + "; producers.cli imports it at the top for its register()",
    "stream_jobs/cli.py": STARTUP,
    "stream_jobs/detection_cli.py": STARTUP,
    "sinks/cli.py": STARTUP,
    "sinks/sql_cli.py": STARTUP,
    "sinks/worker_cli.py": STARTUP,
    "sinks/store_server.py": ("optional extra not in the base install: the decoders of compressed request bodies "
                              "(zstandard or backports.zstd, lz4, brotli) may be absent; the endpoint answers "
                              "UNKNOWN_COMPRESSION_METHOD then"),
    "alerting/control_cli.py": STARTUP,
    "governance/cli.py": STARTUP,
    "governance/bills_cli.py": STARTUP,
    "dashboard/cli.py": STARTUP,
    "finops/benches/sink.py": STARTUP + "; finops.bench imports it at the top for its register()",
    "finops/benches/producer.py": STARTUP + "; finops.bench imports it at the top for its register()",
}


def package_modules() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "node_modules" not in path.parts]


def imports_in_functions(source: str) -> list[int]:
    """Line numbers of the import statements inside a function or method (nested ones included, each once)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(inner.lineno for inner in ast.walk(node) if isinstance(inner, ast.Import | ast.ImportFrom))
    return sorted(lines)


def marker_comments(source: str) -> int:
    return sum(1 for token in tokenize.generate_tokens(io.StringIO(source).readline)
               if token.type == tokenize.COMMENT and token.string.startswith(MARKER))


def test_package_modules_import_at_the_top_unless_allowed() -> None:
    found = {}
    for path in package_modules():
        lines = imports_in_functions(path.read_text(encoding="utf-8"))
        if lines and path.relative_to(ROOT).as_posix() not in ALLOWED:
            found[path.relative_to(ROOT).as_posix()] = lines
    assert not found, (
        f"imports inside functions (module: lines): {found}. Move them to the top of the module; if a measured "
        "start-up cost, an optional extra or an unbreakable cycle says otherwise, list the module in ALLOWED with "
        f"its reason and say so in a '{MARKER}' comment")


def test_every_allowed_module_still_imports_in_functions_and_says_why() -> None:
    stale, silent = [], []
    for name in ALLOWED:
        source = (ROOT / name).read_text(encoding="utf-8")
        if not imports_in_functions(source):
            stale.append(name)
        if marker_comments(source) != 1:
            silent.append(name)
    assert not stale, f"no import inside a function any more; drop them from ALLOWED: {stale}"
    assert not silent, f"say why once, in one '{MARKER}' comment naming the reason and its command: {silent}"


def test_the_walk_finds_an_import_in_a_function_and_leaves_the_top_alone() -> None:
    source = ("import os\n\n"
              "def f():\n    import json\n    return json\n\n"
              "class C:\n    async def g(self):\n        def h():\n            from os import path\n        return h\n")
    assert imports_in_functions(source) == [4, 10]
    top = "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import json\n"
    assert imports_in_functions(top) == []
