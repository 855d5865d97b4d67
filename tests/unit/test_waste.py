"""Waste detectors on hand-made call sequences: retry loops, duplicate prompts, oversized prompts, runaway burn
rate, each with its avoidable cost; and silence on normal behaviour (a normal retry, unique prompts, cache hits)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

from schemas.models import Alert
from stream_jobs.budgets import SpendEvent
from stream_jobs.waste import WasteConfig, WasteDetectors, build_waste_record, compute_poisson_upper

pytestmark = pytest.mark.unit

S = 1_000_000
T0 = 1_748_854_800 * S


def call(t_s: float, cost: str = "0.01", **changes: Any) -> SpendEvent:
    event = SpendEvent(T0 + int(t_s * S), "agent-1", "team", "proj", "gpt-4o", Decimal(cost), 1000, 100, "task-1",
                       "chat", {}, f"e{t_s}", None, "p1", 1, "ok", 0, Decimal(cost))
    return event._replace(**changes)


def run(detectors: WasteDetectors, events: list[SpendEvent]) -> tuple[list[Any], list[dict[str, Any]]]:
    signals, alerts = [], []
    for event in events:
        s, a = detectors.process(event)
        signals += s
        alerts += a
    return signals, alerts


def test_poisson_upper_quantile() -> None:
    assert compute_poisson_upper(0.0, 1e-6) == 1
    k = compute_poisson_upper(1.0, 1e-6)
    assert k == 10  # P(X >= 10 | 1) ~ 1.1e-7, P(X >= 9) ~ 1.1e-6


def test_a_normal_retry_of_a_failed_call_is_not_a_loop() -> None:
    detectors = WasteDetectors()
    events = [call(0, "0", status="error"), call(2, "0", attempt=2, status="timeout"), call(6, attempt=3)]
    assert run(detectors, events) == ([], [])


def test_retry_loop_fires_once_and_grows_its_avoidable_cost() -> None:
    detectors = WasteDetectors()
    events = [call(i * 3, attempt=i + 1, status="timeout" if i == 0 else "ok") for i in range(6)]
    signals, alerts = run(detectors, events)
    assert [a["details"]["waste_kind"] for a in alerts] == ["retry_loop"]
    # The third call is the first re-send after a successful answer: that is when the loop shows.
    assert alerts[0]["occurred_at"].timestamp() * S == events[2].occurred_at_us
    last = signals[-1]
    assert last.kind == "retry_loop" and last.avoidable_cost_usd == Decimal("0.05")  # all but the first call
    assert len({s.signal_id for s in signals}) == 1 and last.revision > 1
    Alert.from_avro_dict(alerts[0])


def test_repeat_after_a_successful_answer_is_a_loop_at_once() -> None:
    detectors = WasteDetectors()
    _, alerts = run(detectors, [call(0), call(5, attempt=2)])
    assert [a["details"]["waste_kind"] for a in alerts] == ["retry_loop"]


def test_duplicate_prompts_across_tasks_without_cache_hits() -> None:
    detectors = WasteDetectors()
    events = [call(i * 20, "0.02", task_id=f"t{i}", prompt_hash="same") for i in range(5)]
    signals, alerts = run(detectors, events)
    assert [a["details"]["waste_kind"] for a in alerts] == ["duplicate_prompt"]
    assert signals[-1].avoidable_cost_usd == Decimal("0.08")
    # Cache hits and unique prompts are not duplicates.
    quiet = WasteDetectors()
    assert run(quiet, [call(i, task_id=f"t{i}", prompt_hash="same", cache_read_tokens=500) for i in range(5)]) \
        == ([], [])
    assert run(quiet, [call(i, task_id=f"t{i}", prompt_hash=f"p{i}") for i in range(5)]) == ([], [])


def test_oversized_prompt_counts_only_the_excess_input() -> None:
    detectors = WasteDetectors(WasteConfig(oversized_input_tokens=100_000))
    signals, alerts = run(detectors, [call(0, "1.5", input_tokens=150_000, task_id="a", prompt_hash="x"),
                                      call(1, "1.5", input_tokens=150_000, task_id="b", prompt_hash="y")])
    assert len(alerts) == 1  # one alert per agent and day
    assert signals[-1].avoidable_cost_usd == Decimal("1.0")  # 2 x 1.5 x 50k/150k
    record = build_waste_record(signals[-1])
    Alert.from_avro_dict(record)
    assert json.loads(record["details"]["evidence"])["calls"] == 2


def test_runaway_burn_rate_found_quickly_and_steady_noise_ignored() -> None:
    rng = random.Random(1)
    detectors = WasteDetectors()
    events, t, task = [], 0.0, 0
    while t < 3 * 3600:  # three hours of a steady agent: ~1 task a minute, 3 calls each, heavy-tailed costs
        t += rng.expovariate(1 / 60)
        task += 1
        for j in range(3):
            cost = f"{rng.lognormvariate(-6, 1.2):.6f}"
            events.append(call(t + j * 3, cost, task_id=f"t{task}", prompt_hash=f"p{task}-{j}"))
    events.sort(key=lambda e: e.occurred_at_us)
    signals, alerts = run(detectors, events)
    assert alerts == [], "steady noise raised a runaway"
    start = t + 60
    burst = []
    for i in range(40):  # twenty times the task rate
        at = start + i * 3
        burst += [call(at + j, f"{rng.lognormvariate(-6, 1.2):.6f}", task_id=f"r{i}", prompt_hash=f"r{i}-{j}")
                  for j in range(3)]
    burst.sort(key=lambda e: e.occurred_at_us)
    _, alerts = run(detectors, burst)
    runaway = [a for a in alerts if a["details"]["waste_kind"] == "runaway"]
    assert runaway, "the burst was not found"
    delay = (runaway[0]["occurred_at"].timestamp() * S - (T0 + start * S)) / S
    assert delay <= 60


def _steady_then(rng: random.Random, detectors: WasteDetectors, burst_every_s: float) -> tuple[float, list[Any]]:
    """Three steady hours (~1 task a minute, 3 calls each), then tasks every ``burst_every_s`` seconds; returns the
    burst's start and the runaway alerts."""
    events, t, task = [], 0.0, 0
    while t < 3 * 3600:
        t += rng.expovariate(1 / 60)
        task += 1
        events += [call(t + j * 3, f"{rng.lognormvariate(-6, 1.2):.6f}", task_id=f"t{task}", prompt_hash=f"p{task}-{j}")
                   for j in range(3)]
    events.sort(key=lambda e: e.occurred_at_us)
    _, alerts = run(detectors, events)
    assert alerts == []
    start = t + 60
    burst = [call(start + i * burst_every_s + j, f"{rng.lognormvariate(-6, 1.2):.6f}", task_id=f"r{i}",
                  prompt_hash=f"r{i}-{j}") for i in range(40) for j in range(3)]
    burst.sort(key=lambda e: e.occurred_at_us)
    _, alerts = run(detectors, burst)
    return start, [a for a in alerts if a["details"]["waste_kind"] == "runaway"]


def test_a_steep_runaway_is_proven_by_its_first_buckets_not_a_whole_window() -> None:
    start, runaway = _steady_then(random.Random(1), WasteDetectors(), 3.0)  # 20x the task rate
    assert len(runaway) == 1
    delay = (runaway[0]["occurred_at"].timestamp() * S - (T0 + start * S)) / S
    # Seven new tasks in a 20 s window against ~0.3 usual pass every test of that window: no need to wait for 60 s.
    assert delay <= 25
    assert "in the last 20 s" in runaway[0]["summary"]


def test_a_gentler_rise_still_needs_the_whole_window() -> None:
    start, runaway = _steady_then(random.Random(1), WasteDetectors(), 6.0)  # 10x the task rate
    assert len(runaway) == 1
    assert "in the last 60 s" in runaway[0]["summary"]
    delay = (runaway[0]["occurred_at"].timestamp() * S - (T0 + start * S)) / S
    assert 30 < delay <= 60
