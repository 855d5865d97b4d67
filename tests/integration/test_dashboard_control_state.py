"""The dashboard's control state of an agent comes from verified commands only: a forged command in the audit table
(one an agent's guard ignores, recorded ``verified = false``) neither sets the state nor, in numbers, pushes the
genuine command out of view; it stays visible, flagged, in the history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.queries import agent_control
from dashboard.store import Store
from finops.clickhouse import connect

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def _row(command_id: str, action: str, minutes_ago: float, *, verified: bool, scope: tuple[str, str] = (
        "agent", "bot-1"), rate: int | None = None, expires_in: float | None = None) -> dict[str, Any]:
    issued = (NOW - timedelta(minutes=minutes_ago)).replace(tzinfo=None)
    return {"command_id": command_id, "scope_type": scope[0], "scope_value": scope[1], "action": action,
            "rate_per_minute": rate, "target_model": None, "reason": "r", "issued_by": "policy-engine",
            "issued_at": issued, "expires_at": None if expires_in is None else issued + timedelta(minutes=expires_in),
            "policy_id": None, "key_id": "k1", "signature": "0" * 64, "received_at": issued, "verified": verified}


def test_forged_commands_neither_set_nor_hide_the_state(chdb_url: str, ch_database: str) -> None:
    client = connect(chdb_url, database=ch_database)
    store = Store(client, client, "test")
    try:
        store.insert("control_commands", [_row("genuine-throttle", "throttle", 30, verified=True, rate=10)])
        assert agent_control(store, "bot-1", "support", "triage", NOW)["state"] == "throttle"
        # newer forgeries: a suspend of the agent, a resume of it, a suspend of its team, and a flood of them
        forged = [_row("forged-suspend", "suspend", 20, verified=False),
                  _row("forged-resume", "resume", 10, verified=False),
                  _row("forged-team", "suspend", 5, verified=False, scope=("team", "support"))]
        forged += [_row(f"forged-{i}", "resume", 1 + i / 100, verified=False) for i in range(30)]
        store.insert("control_commands", forged)
        control = agent_control(store, "bot-1", "support", "triage", NOW)
        assert control["state"] == "throttle" and control["command"]["command_id"] == "genuine-throttle"
        assert control["history"] and all(h["verified"] is False for h in control["history"])
        # a genuine newer command does take effect
        store.insert("control_commands", [_row("genuine-suspend", "suspend", 0.5, verified=True,
                                               scope=("team", "support"), expires_in=60)])
        control = agent_control(store, "bot-1", "support", "triage", NOW)
        assert control["state"] == "suspend" and control["command"]["command_id"] == "genuine-suspend"
        assert control["history"][0]["command_id"] == "genuine-suspend" and control["history"][0]["verified"]
    finally:
        client.close()
