"""The dashboard shows what an agent's guard obeys: one command, judged by the guard (:class:`ControlGuard`, on the
ControlCommand) and by the dashboard (:func:`dashboard.queries.agent_control`, on the command's audit row as
ClickHouse returns it, timestamps naive), binds at the same instants. Both go through
:func:`schemas.control.binds`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.queries import agent_control, compute_control_state
from producers.guard import ControlGuard
from schemas.models import ControlCommand, sign

pytestmark = pytest.mark.unit

KEYS = {"k1": b"secret-1"}
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


class _FixedClock:
    def monotonic(self) -> float:
        return 0.0

    def now(self) -> datetime:
        return NOW

    def sleep(self, seconds: float) -> bool:
        return True


class _AuditRows:
    """A dashboard store holding ``rows`` of ``control_commands``: every select answers them, as ClickHouse does
    (DateTime64 values naive)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        assert "control_commands" in sql
        return [dict(row) for row in self.rows]


def _cmd(action: str, issued: timedelta, expires: timedelta | None) -> ControlCommand:
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{issued.total_seconds()}", "scope_type": "agent", "scope_value": "bot-1",
        "action": action, "reason": "r", "issued_by": "policy-engine", "issued_at": NOW + issued,
        "expires_at": None if expires is None else NOW + expires, "key_id": "", "signature": ""})
    return sign(cmd, "k1", KEYS["k1"])


def _audit_row(cmd: ControlCommand) -> dict[str, Any]:
    row = cmd.model_dump()
    for name in ("issued_at", "expires_at"):
        row[name] = None if row[name] is None else row[name].replace(tzinfo=None)
    return {**row, "verified": True}


def _guard_live(commands: list[ControlCommand]) -> set[str]:
    guard = ControlGuard(topic="t", keys=KEYS, agent_id="bot-1", team="support", project="triage",
                         clock=_FixedClock())
    for cmd in commands:
        assert guard.apply(cmd, key="agent:bot-1")
    return {cmd.command_id for cmd in guard.active().values()}


def _dashboard_live(commands: list[ControlCommand]) -> set[str]:
    control = agent_control(_AuditRows([_audit_row(c) for c in commands]), "bot-1", "support", "triage", NOW)
    return set() if control["command"] is None else {control["command"]["command_id"]}


SUSPEND = timedelta(minutes=-30)
CASES = {
    "expired one second ago": ([_cmd("suspend", SUSPEND, timedelta(seconds=-1))], False),
    "expires at now": ([_cmd("suspend", SUSPEND, timedelta(0))], False),
    "expires in one second": ([_cmd("suspend", SUSPEND, timedelta(seconds=1))], True),
    "no expiry": ([_cmd("suspend", SUSPEND, None)], True),
    "resumed": ([_cmd("suspend", SUSPEND, timedelta(hours=1)), _cmd("resume", timedelta(minutes=-1), None)], False),
    "a resume that has not expired": ([_cmd("resume", timedelta(minutes=-1), timedelta(hours=1))], False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_guard_and_dashboard_judge_a_command_alike(name: str) -> None:
    commands, binds = CASES[name]
    guard, dashboard = _guard_live(commands), _dashboard_live(commands)
    assert guard == dashboard
    assert bool(guard) is binds


def test_compute_control_state_refuses_naive_timestamps() -> None:
    row = _audit_row(_cmd("suspend", SUSPEND, timedelta(seconds=1)))
    with pytest.raises(TypeError):
        compute_control_state([row], NOW)
