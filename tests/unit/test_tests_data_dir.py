"""Tests that build settings from an explicit environment give them a data directory of their own.

``load_settings({...})`` replaces the whole environment, so without FINOPS_DATA_DIR the settings fall back to the
checkout's ``./.finops``: a catalogue a developer installed there with ``finops prices update`` would then price the
tests' events differently from the bundled catalogue their expected costs come from (seen in the fault suite).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Unit tests of the settings themselves read the fallback on purpose.
CHECKED = ("tests/integration", "tests/faults", "tests/e2e")
CALL = re.compile(r"load_settings\(\s*\{")


def _calls(text: str) -> list[tuple[int, str]]:
    """``(line, argument text)`` of every ``load_settings({...})`` call: the dict literal up to its closing brace."""
    found = []
    for match in CALL.finditer(text):
        depth, i = 0, match.end() - 1
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        found.append((text.count("\n", 0, match.start()) + 1, text[match.end() - 1 : i + 1]))
    return found


def test_the_scanner_reads_a_whole_dict_literal() -> None:
    text = 'x = 1\ns = load_settings({"A": "1",\n    "B": f"{y}"})\n'
    assert _calls(text) == [(2, '{"A": "1",\n    "B": f"{y}"}')]


def test_every_explicit_environment_in_the_pipeline_tests_names_a_data_dir() -> None:
    missing = []
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, argument in _calls(path.read_text(encoding="utf-8")):
                if "FINOPS_DATA_DIR" not in argument:
                    missing.append(f"{path.relative_to(ROOT)}:{line}")
    assert not missing, (
        "load_settings({...}) without FINOPS_DATA_DIR falls back to the checkout's ./.finops (and any catalogue "
        "installed there); add \"FINOPS_DATA_DIR\": isolated_data_dir() (tests/integration/hotpath_child.py) or a "
        f"tmp_path at: {', '.join(missing)}"
    )
