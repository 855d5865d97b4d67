"""The bench table: the whole pipeline's capacity is shown as a share of the hot path's one-core rate."""

from __future__ import annotations

from typing import Any

from finops.bench import render


def _result(capacity_source: str) -> dict[str, Any]:
    return {
        "date": "2026-12-02T00:00:00+00:00",
        "machine": {"cpus": 2, "cpu_model": "test", "python": "3.11"},
        "broker": "127.0.0.1:9092",
        "stream": {"hotpath": {"events_per_s": 40_000.0, "peak_rss_mb": 1.0}, "plain": {"events_per_s": 80_000.0}},
        "latency": {"capacity_source": capacity_source, "capacity_events_per_s": 10_000.0, "levels": [],
                    "baseline": [], "peak_rss_mb": {}},
    }


def test_pipeline_capacity_row_is_a_share_of_the_hot_path_rate() -> None:
    table = render(_result("measured: 40,000 events emitted at once"))
    row = next(line for line in table.splitlines() if line.startswith("whole pipeline events/s"))
    assert "10,000" in row and "40,000" in row
    assert " 0.25  the hot path's one-core rate above" in row


def test_no_pipeline_share_when_the_capacity_was_given_not_measured() -> None:
    assert "whole pipeline events/s" not in render(_result("given"))
