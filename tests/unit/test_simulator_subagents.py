"""Sub-agent trees in the simulator: ``subagent_depth`` nests sub-agents (deterministic by seed) and leaves every
earlier config's events unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from producers.simulator import SimulationConfig, generate

pytestmark = pytest.mark.unit


def cfg(**fields: Any) -> SimulationConfig:
    return SimulationConfig.model_validate(fields)


def _depths(events: list[dict[str, Any]]) -> dict[str, int]:
    parent = {e["task_id"]: e["parent_task_id"] or "" for e in events}
    depth: dict[str, int] = {}
    for task, first_up in parent.items():
        d, up = 0, first_up
        while up:
            d, up = d + 1, parent.get(up, "")  # a parent from the warm-up is not in the stream
        depth[task] = d
    return depth


def test_nested_subagents_reach_the_configured_depth_and_no_further() -> None:
    config = cfg(seed=5, agents=10, duration_s=1800.0, rate_per_s=10.0, subagent_depth=3)
    events = list(generate(config))
    depths = _depths(events)
    assert max(depths.values()) == 3
    assert sum(1 for d in depths.values() if d >= 2) >= 3
    assert events == list(generate(config)), "same seed, same events"


def test_default_depth_keeps_children_only_and_the_old_ids() -> None:
    base = cfg(seed=5, agents=10, duration_s=900.0, rate_per_s=10.0)
    assert max(_depths(list(generate(base))).values()) == 1
    # the field is left out of the fingerprint at its default: ids of runs made before it existed are kept
    # (17def56f6cda02ea is this config's run id computed by the simulator before subagent_depth existed)
    assert cfg(seed=7, agents=20, duration_s=1800.0).run_id == "17def56f6cda02ea"
    assert base.run_id == cfg(seed=5, agents=10, duration_s=900.0, rate_per_s=10.0,
                                           subagent_depth=1).run_id
    assert base.run_id != cfg(seed=5, agents=10, duration_s=900.0, rate_per_s=10.0,
                                           subagent_depth=2).run_id
