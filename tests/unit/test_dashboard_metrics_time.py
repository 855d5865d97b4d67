"""The metrics endpoint reads ClickHouse's naive datetimes as UTC, whatever zone the caller's ``now`` carries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dashboard.metrics import collect_clickhouse_metrics


class _Store:
    """Answers the ledger stats query the way clickhouse-connect does: DateTime64 values as naive UTC wall times."""

    def __init__(self, last_write: datetime | None) -> None:
        self.last_write = last_write
        self.params: list[Mapping[str, Any]] = []

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        assert "usage_ledger" in sql
        self.params.append(dict(params or {}))
        return [{"last_minute": 3, "last_write": self.last_write, "latency": [0.2, 0.9], "unpriced_last_hour": 0}]


def _naive_utc(hour: int, minute: int, second: int = 0) -> datetime:
    """A DateTime64 value on 2026-12-03 as clickhouse-connect returns it: the UTC wall time, no zone."""
    return datetime(2026, 12, 3, hour, minute, second, tzinfo=UTC).replace(tzinfo=None)


def _age(samples: list[Any]) -> float:
    return float(next(s.value for s in samples if s.name == "finops_sink_last_write_age_seconds"))


@pytest.mark.parametrize("zone", [UTC, timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))])
def test_age_and_query_time_are_utc_for_any_zone(zone: timezone) -> None:
    instant = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
    store = _Store(last_write=_naive_utc(6, 59, 30))  # naive: UTC, 30 s before the instant
    samples = collect_clickhouse_metrics(store, instant.astimezone(zone))
    assert _age(samples) == 30.0
    assert store.params == [{"now": _naive_utc(7, 0)}]


def test_aware_last_write_is_converted_not_relabelled() -> None:
    last = datetime(2026, 12, 3, 1, 59, 0, tzinfo=timezone(timedelta(hours=-5)))  # 06:59 UTC
    samples = collect_clickhouse_metrics(_Store(last_write=last), datetime(2026, 12, 3, 7, 0, tzinfo=UTC))
    assert _age(samples) == 60.0


def test_a_future_write_reads_as_zero_age() -> None:
    samples = collect_clickhouse_metrics(_Store(last_write=_naive_utc(7, 0, 5)),
                                         datetime(2026, 12, 3, 7, 0, tzinfo=UTC))
    assert _age(samples) == 0.0
