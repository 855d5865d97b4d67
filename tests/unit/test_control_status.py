"""``finops control status`` folds the control topic by the guard's rules: what it shows is what agents obey."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerting.control_state import compute_control_state
from schemas.models import ControlCommand, sign
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

KEYS = {"k1": b"secret-1"}
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
_codec = AvroCodec()


def _raw(action: str, issued: float, *, scope: str = "agent:bot-1", key: bytes = KEYS["k1"]) -> bytes:
    stype, svalue = scope.split(":", 1)
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{issued}", "scope_type": stype, "scope_value": svalue, "action": action,
        "reason": "r", "issued_by": "policy-engine", "issued_at": T0 + timedelta(seconds=issued),
        "expires_at": T0 + timedelta(hours=1), "key_id": "", "signature": ""})
    return _codec.encode(sign(cmd, "k1", key).to_avro_dict(), "ControlCommand")


def test_a_tombstone_after_a_genuine_suspend_leaves_it_shown_live_and_is_counted() -> None:
    # issue 14 item 2: status popped the key on a tombstone and said "no control commands"
    state = compute_control_state([("agent:bot-1", _raw("suspend", 0)), ("agent:bot-1", None)], KEYS,
                                  T0 + timedelta(seconds=1))
    row = state["agent:bot-1"]
    assert (row["action"], row["verified"], row["live"], row["ignored"]) == ("suspend", True, True, 1)
    assert "tombstone" in row["ignored_reason"]


def test_forged_mis_keyed_and_stale_messages_do_not_replace_the_obeyed_command() -> None:
    messages: list[tuple[str | None, bytes | None]] = [
        ("agent:bot-1", _raw("suspend", 10)),
        ("agent:bot-1", _raw("resume", 20, key=b"attacker")),       # forged
        ("agent:bot-1", _raw("resume", 20, scope="agent:bot-2")),   # mis-keyed
        ("agent:bot-1", _raw("resume", 5)),                         # genuine but older: stale
        ("agent:bot-1", b"\xc3\x01garbage"),                        # undecodable
    ]
    row = compute_control_state(messages, KEYS, T0)["agent:bot-1"]
    assert (row["action"], row["command_id"], row["verified"], row["ignored"]) == ("suspend", "c-suspend-10", True, 4)
    # a later genuine resume is the state
    row = compute_control_state([*messages, ("agent:bot-1", _raw("resume", 30))], KEYS, T0)["agent:bot-1"]
    assert (row["action"], row["live"]) == ("resume", False)


def test_without_the_key_the_latest_command_is_shown_unverified_and_a_lone_tombstone_is_reported() -> None:
    state = compute_control_state([("agent:bot-1", _raw("suspend", 0)), ("team:t", None)], {}, T0)
    assert (state["agent:bot-1"]["action"], state["agent:bot-1"]["verified"]) == ("suspend", False)
    assert state["team:t"]["verified"] is False and state["team:t"]["ignored"] == 1
    assert "tombstone" in state["team:t"]["error"]
