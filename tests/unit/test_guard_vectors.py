"""Shared control-command scenarios (producers/typescript/test/fixtures/guard_scenarios.json): the Python guard, the
reference, gives the outcomes stored there; the TypeScript guard is held to the same file
(producers/typescript/test/guard_scenarios.test.ts)."""

from __future__ import annotations

import importlib.util
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.guard import AgentSuspended, ControlGuard, ForgedCommand, Throttled

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "producers" / "typescript" / "test" / "fixtures"
DOC: dict[str, Any] = json.loads((FIXTURES / "guard_scenarios.json").read_text(encoding="utf-8"))


class _Clock:
    def __init__(self, base: datetime) -> None:
        self.base = base
        self.at = 0.0

    def monotonic(self) -> float:
        return self.at

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.at)

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the scenarios run the guard with throttle='raise': it must not sleep")


def test_scenarios_file_is_current() -> None:
    # Stale after a scenario change: run .venv/bin/python producers/typescript/test/fixtures/guard_scenarios.py
    spec = importlib.util.spec_from_file_location("ts_fixture_guard_scenarios", FIXTURES / "guard_scenarios.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (FIXTURES / "guard_scenarios.json").read_text(encoding="utf-8") == module.render(), (
        "guard_scenarios.json is stale: run .venv/bin/python producers/typescript/test/fixtures/guard_scenarios.py")


@pytest.mark.parametrize("scenario", DOC["scenarios"], ids=[s["name"] for s in DOC["scenarios"]])
def test_python_guard_gives_the_stored_outcomes(scenario: dict[str, Any]) -> None:
    clock = _Clock(datetime.fromtimestamp(DOC["base_us"] / 1_000_000, UTC))
    forged: list[ForgedCommand] = []
    who = DOC["who"]
    guard = ControlGuard(topic="unused", keys={DOC["key_id"]: DOC["secret"].encode()}, agent_id=who["agent_id"],
                         team=who["team"], project=who["project"], throttle="raise", clock=clock,
                         on_forged=forged.append)
    for i, step in enumerate(scenario["steps"]):
        clock.at = float(step["at"])
        where = f"{scenario['name']} step {i}: {step}"
        if "message" in step:
            m = step["message"]
            value = None if m["avro_hex"] is None else bytes.fromhex(m["avro_hex"])
            guard.apply_message(m["key"], value)
        elif "check" in step:
            expect = step["check"]
            if expect["expect"] == "allow":
                guard.check()
            elif expect["expect"] == "suspended":
                with pytest.raises(AgentSuspended) as refused:
                    guard.check()
                assert (refused.value.command_id, refused.value.scope) == (expect["command_id"], expect["scope"]), where
            else:
                with pytest.raises(Throttled) as throttled:
                    guard.check()
                assert throttled.value.scope == expect["scope"], where
                assert math.isclose(throttled.value.retry_after_s, expect["wait_s"], abs_tol=1e-6), where
        elif "downgrade" in step:
            assert guard.downgrade_model(step["downgrade"]["requested"]) == step["downgrade"]["expect"], where
        else:
            got = guard.stats()
            assert {"applied": got.applied, "forged": got.forged, "stale": got.stale} == step["stats"], where
            assert len(forged) == got.forged, where
