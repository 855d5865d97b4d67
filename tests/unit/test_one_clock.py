"""One clock (issue 16, STYLE habit 8): the wall clock is read through :mod:`finops.clock` only, so tests can
inject time and every timestamp is timezone-aware UTC."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")
WALL_CLOCK = re.compile(r"\b(?:datetime\.(?:now|utcnow|today)|date\.today)\(")


def wall_clock_reads(source: str) -> list[int]:
    return [number for number, line in enumerate(source.splitlines(), 1)
            if WALL_CLOCK.search(line.split("#", 1)[0])]


def test_the_pattern_finds_every_way_of_reading_the_wall_clock() -> None:
    source = "a = datetime.now(UTC)\nb = datetime.utcnow()\nc = date.today()\nd = datetime.today()\n# datetime.now()\n"
    assert wall_clock_reads(source) == [1, 2, 3, 4]


def test_only_finops_clock_reads_the_wall_clock() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if "node_modules" not in path.parts and path != ROOT / "finops" / "clock.py"
             for line in wall_clock_reads(path.read_text(encoding="utf-8"))]
    assert not found, f"read the wall clock through finops.clock (utc_now, or a Clock passed in): {found}"
