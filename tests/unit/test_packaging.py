"""Packaging: the base install is the agent SDK alone, and every third-party package the code imports is declared.

The SDK check imports ``producers.producer`` in a fresh interpreter and maps every module it loaded to the
distribution that ships it: each must be a base dependency or a dependency of one (pip would install exactly
those for ``pip install agent-finops``). The declaration check reads every import statement of the packages.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")
HEAVY = {"chdb", "faust-streaming", "aiokafka", "clickhouse-connect", "aiohttp", "genai-prices"}
# Imported only inside try/except as optional decoders of compressed request bodies (the store endpoint answers
# UNKNOWN_COMPRESSION_METHOD when one is missing); they come with the pipeline's dependencies where present.
OPTIONAL_IMPORTS = {"zstandard", "brotli", "backports"}
# Loaded when present but not needed: fastavro's optional block codecs (it imports them in try/except) and
# setuptools, which an editable install (`make setup`) loads to find the project's packages.
OPTIONAL_DISTRIBUTIONS = {"cramjam", "backports-zstd", "backports.zstd", "setuptools"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


@cache
def _closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions pip installs for these requirement names (their installed dependency tree)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            marker = req.split(";", 1)[1] if ";" in req else ""
            if "extra ==" in marker and not any(f'extra == "{x}"' in marker for x in ("avro", "schemaregistry", "lz4")):
                continue
            if "python_version" in marker and "<" in marker and "3.1" in marker:
                continue  # backports for older Pythons than ours
            todo.append(_name(req))
    return frozenset(seen)


def _distributions_of(modules: set[str]) -> set[str]:
    by_module = md.packages_distributions()
    found: set[str] = set()
    for module in modules:
        for dist in by_module.get(module, []):
            found.add(_name(dist))
    return found


def test_the_base_install_is_the_sdk_alone() -> None:
    base = frozenset(_name(r) for r in _project()["dependencies"])
    assert not base & HEAVY, f"the base install pulls pipeline packages: {sorted(base & HEAVY)}"
    code = ("import json, sys; import producers.producer, producers.guard; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout)) - set(sys.stdlib_module_names) - set(PACKAGES)
    dists = _distributions_of(loaded) - {"agent-finops"} - OPTIONAL_DISTRIBUTIONS
    allowed = _closure(base)
    assert dists <= allowed, (
        f"importing the SDK loads {sorted(dists - allowed)}, which `pip install agent-finops` would not install")
    assert not dists & HEAVY


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_third_party_package_is_declared() -> None:
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "test":
            declared |= {_name(r) for r in requirements if not r.startswith("agent-finops")}
    imported: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" not in path.parts:
                imported |= _imports(path)
    third_party = imported - set(sys.stdlib_module_names) - set(PACKAGES) - OPTIONAL_IMPORTS
    by_module = md.packages_distributions()
    undeclared = {m: by_module.get(m) for m in third_party
                  if not {_name(d) for d in by_module.get(m, [])} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml (module: distributions): {undeclared}"


def test_the_default_data_dir_is_the_working_directorys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finops.settings import load_settings

    monkeypatch.delenv("FINOPS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_settings().data_dir == tmp_path / ".finops"


def test_the_cli_names_the_extra_when_a_part_lacks_its_packages(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    from finops import cli

    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        if name == "sinks.sql_cli":
            raise ModuleNotFoundError("No module named 'chdb'", name="chdb")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    parser = cli.build_parser()
    assert parser.epilog is not None and "sinks (needs chdb)" in parser.epilog
    assert "agent-finops[all]" in parser.epilog


def test_a_missing_module_of_ours_is_a_bug_not_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from finops import cli

    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        if name == "sinks.sql_cli":
            raise ModuleNotFoundError("No module named 'schemas.gone'", name="schemas.gone")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(ModuleNotFoundError, match="schemas.gone"):
        cli.build_parser()
