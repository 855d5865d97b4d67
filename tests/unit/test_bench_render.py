"""The bench table: the whole pipeline's capacity is shown as a share of the hot path's one-core rate."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

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


def test_cpu_per_event_line_names_each_process_and_the_machine_share() -> None:
    result = _result("measured: 100,000 events emitted at once")
    result["latency"]["capacity_events"] = 100_000
    result["latency"]["capacity_cpu"] = {"seconds": 10.0, "cpu_s": {"sink": 3.0, "broker": 4.5, "machine": 15.0}}
    line = next(x for x in render(result).splitlines() if "CPU µs per event, capacity burst" in x)
    assert "sink 30, broker 45;" in line  # CPU seconds / events, in µs
    assert "machine busy 75 % of 2 CPUs over 10.0 s" in line  # 15 CPU s over 10 s on 2 CPUs
    assert "machine 150" not in line  # the machine total is a share, not a process


def test_cpu_line_shows_the_brokers_jit_compiling_as_part_of_the_broker_not_as_a_process() -> None:
    result = _result("measured: 100,000 events emitted at once")
    result["latency"]["capacity_events"] = 100_000
    result["latency"]["capacity_cpu"] = {"seconds": 10.0, "cpu_s": {"sink": 3.0, "broker": 4.5,
                                                                    "broker JIT compiler": 1.2, "machine": 15.0}}
    line = next(x for x in render(result).splitlines() if "CPU µs per event, capacity burst" in x)
    assert "sink 30, broker 45 (JIT compiler 12 of it);" in line
    assert "broker JIT compiler 12" not in line


def test_capacity_burst_says_how_many_stream_batches_and_sink_inserts_carried_it() -> None:
    result = _result("measured: 100,000 events emitted at once")
    result["latency"]["capacity_events"] = 100_000
    result["latency"]["capacity_cpu"] = {"seconds": 10.0, "cpu_s": {"sink": 3.0, "machine": 15.0},
                                         "stream_batches": 180, "sink_inserts": 16}
    lines = render(result).splitlines()
    at = next(i for i, x in enumerate(lines) if "CPU µs per event, capacity burst" in x)
    assert lines[at + 1] == "  180 stream batches, 16 sink inserts (6,250 rows each on average)"


def test_jit_cpu_of_a_process_without_compiler_threads_is_zero_and_of_a_gone_one_none() -> None:
    from finops.bench import _jit_threads_s

    assert _jit_threads_s(os.getpid()) == {}  # a Python process has no HotSpot compiler threads
    assert _jit_threads_s(2**22 + 12345) is None


def test_jit_share_counts_per_thread_so_a_compiler_thread_that_ends_cannot_make_it_negative(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import finops.bench as bench

    reads = iter([{"10": 5.0, "11": 3.0}, {"11": 3.5, "12": 0.25}])  # thread 10 ended, 12 started meanwhile
    monkeypatch.setattr(bench, "_jit_threads_s", lambda _pid: next(reads))
    used = bench._CpuMeter({"broker": os.getpid()}).stop()
    assert used["cpu_s"]["broker JIT compiler"] == 0.75  # 0.5 of thread 11 and 0.25 of thread 12


def test_cpu_meter_counts_this_process_and_leaves_out_a_process_that_is_gone() -> None:
    from finops.bench import _CpuMeter

    meter = _CpuMeter({"self": os.getpid(), "gone": 2**22 + 12345})
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn CPU the meter must see
        pass
    used = meter.stop()
    assert "gone" not in used["cpu_s"]
    assert used["cpu_s"]["self"] >= 0.15
    assert used["cpu_s"]["load generator (bench process)"] >= 0.15
    assert used["cpu_s"]["machine"] >= 0.15


def test_queryable_legs_line_sits_under_the_level_rows_with_each_legs_quantiles() -> None:
    result = _result("measured: 100,000 events emitted at once")

    def q(p50: float, p99: float) -> dict[str, float]:
        return {"n": 100, "p50": p50, "p99": p99, "max": p99}

    result["latency"]["levels"] = [{
        "percent": 50, "achieved_events_per_s": 5_000.0, "events": 50_000, "queryable_ms": q(436.0, 1177.0),
        "queryable_legs": {"to_priced_ms": q(31.0, 212.0), "priced_to_queryable_ms": q(401.0, 1012.0),
                           "stream_batches": 812, "sink_inserts": 40},
        "alert_ms": {"n": 3, "p50": 500.0, "max": 600.0}, "slack_posts_per_breach": {"a": 2}}]
    lines = render(result).splitlines()
    p99 = next(i for i, x in enumerate(lines) if x.startswith("event->queryable p99 ms @50%"))
    legs = lines[p99 + 1]
    assert legs.startswith("  of which emit->priced")
    assert "(SDK+broker+stream) p50 / p99 31 / 212 ms" in legs
    assert "(priced topic+sink+insert) 401 / 1,012 ms" in legs
    assert "812 stream batches, 40 sink inserts" in legs


def test_no_legs_line_for_a_result_without_them() -> None:
    result = _result("measured: 100,000 events emitted at once")
    result["latency"]["levels"] = [{
        "percent": 50, "achieved_events_per_s": 5_000.0, "events": 50_000,
        "queryable_ms": {"n": 1, "p50": 1.0, "p99": 1.0, "max": 1.0},
        "alert_ms": {"n": 0, "p50": None, "max": None}, "slack_posts_per_breach": {}}]
    assert "of which" not in render(result)
