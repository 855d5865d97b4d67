"""finops.clock.as_utc: the one rule for a naive datetime read back from ClickHouse (or typed without an offset):
it is UTC. Callers: the sinks' row comparison, the dashboard's control rows and JSON, the task trees, governance's
FOCUS export and recommendations, the drift CLI's ledger rows, and the CLIs' ISO time parsers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from finops.clock import as_utc
from governance.period import month_period
from governance.recommend import _rec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance", "dashboard")


def test_a_naive_value_is_taken_as_utc_with_its_fields_unchanged() -> None:
    # what clickhouse-connect hands back: the UTC wall time without a zone (here one Europe/Berlin skips)
    naive = datetime(2025, 3, 30, 2, 30, 5, 123456, tzinfo=UTC).replace(tzinfo=None)
    out = as_utc(naive)
    assert out.tzinfo is UTC
    assert out.replace(tzinfo=None) == naive  # attached, never shifted by the host's local offset


def test_an_aware_value_is_converted_to_the_same_instant_in_utc() -> None:
    berlin = datetime(2025, 7, 1, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    plus_two = datetime(2025, 7, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    for value in (berlin, plus_two):
        out = as_utc(value)
        assert out == value and out.tzinfo is UTC
        assert (out.hour, out.date().isoformat()) == (8, "2025-07-01")
    late = as_utc(datetime(2025, 7, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))))
    assert late.date().isoformat() == "2025-07-02"  # the UTC day, which FOCUS and the daily rollups use


def test_a_utc_value_comes_back_as_is_and_another_utc_zone_becomes_datetime_utc() -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert as_utc(at) is at
    zoned = as_utc(datetime(2025, 1, 2, 3, 4, 5, tzinfo=ZoneInfo("UTC")))
    assert zoned.tzinfo is UTC and zoned.isoformat() == "2025-01-02T03:04:05+00:00"


def test_none_stays_none_for_a_null_column() -> None:
    assert as_utc(None) is None


def test_a_recommendation_carries_its_first_call_in_utc() -> None:
    # recommend used to attach UTC to a naive first call only; it now converts an aware one too, as every caller does
    period = month_period(2026, 10)
    dims = ("team", "project", "agent", "model")
    first = datetime(2026, 10, 3, 8, tzinfo=UTC)
    naive = _rec("retry_waste", period, dims, "t", Decimal(0), {}, "q", first.replace(tzinfo=None))
    aware = _rec("retry_waste", period, dims, "t", Decimal(0), {}, "q", first.astimezone(timezone(timedelta(hours=2))))
    none = _rec("retry_waste", period, dims, "t", Decimal(0), {}, "q")
    assert naive.first_at == aware.first_at == first
    assert naive.first_at is not None and aware.first_at is not None
    assert naive.first_at.tzinfo is UTC and aware.first_at.tzinfo is UTC
    assert none.first_at is None


_COPY = re.compile(r"replace\(tzinfo=UTC\)\s+if\s+[\w.\[\]\"']+\.tzinfo\s+is\s+None\s+else\s+[\w.\[\]\"']+"
                   r"\.astimezone\(UTC\)")


def test_the_rule_is_written_once() -> None:
    assert _COPY.search("x = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)")
    found = [f"{path.relative_to(ROOT)}:{source[:match.start()].count(chr(10)) + 1}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if "node_modules" not in path.parts and path != ROOT / "finops" / "clock.py"
             for source in (path.read_text(encoding="utf-8"),) for match in _COPY.finditer(source)]
    assert not found, f"call finops.clock.as_utc instead of writing the naive-means-UTC rule again: {found}"
