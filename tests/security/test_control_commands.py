"""Negative tests of the control topic's trust boundary (DESIGN §2, §7): whoever can write to ``agent.control.v1``
without the signing key cannot change what an agent does.

Each hostile message (tampered, unsigned, signed with a wrong or unknown key, mis-keyed, expired, replayed, a
tombstone, garbage) is sent after each genuine starting state, to the agent's guard (producers/guard.py, through
``apply_message`` as the follower thread does) and to the ops side's fold (alerting/control_state.py, what ``finops
control status`` and the alert worker believe agents obey). Neither may move: the guard's decisions and the obeyed
command stay what the genuine history made them, and both sides agree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerting.control_state import compute_control_state, compute_obeyed
from producers.guard import AgentSuspended, ControlGuard, ForgedCommand, Throttled
from schemas.models import ControlCommand, sign
from schemas.wire import AvroCodec

pytestmark = pytest.mark.security

KEYS = {"k1": b"the-real-signing-secret"}
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
NOW_S = 100.0  # the guard's wall clock, seconds after T0: after the starts, before most expiries
AGENT = "agent:bot-1"
_codec = AvroCodec()


class _Clock:
    """Wall time stays at ``NOW_S`` (expiry is judged there); monotonic time is moved by the test to refill buckets."""

    def __init__(self) -> None:
        self.mono = 0.0

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return T0 + timedelta(seconds=NOW_S)

    def sleep(self, seconds: float) -> None:
        raise AssertionError("throttle='raise': the guard must not sleep")


def _cmd(action: str, issued: float, *, expires: float | None = 3600.0, scope: str = AGENT,
         key_id: str = "k1", secret: bytes = KEYS["k1"], **over: Any) -> ControlCommand:
    stype, svalue = scope.split(":", 1)
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{issued}-{svalue}", "scope_type": stype, "scope_value": svalue, "action": action,
        "rate_per_minute": 6 if action == "throttle" else None,
        "target_model": "small-model" if action == "downgrade" else None,
        "reason": "policy pol-1 at 100%", "issued_by": "policy-engine", "issued_at": T0 + timedelta(seconds=issued),
        "expires_at": None if expires is None else T0 + timedelta(seconds=expires),
        "key_id": "", "signature": "", **over})
    return sign(cmd, key_id, secret)


def _raw(cmd: ControlCommand) -> bytes:
    return _codec.encode(cmd.to_avro_dict(), "ControlCommand")


# Genuine histories (Kafka order) an agent can be in when the hostile message arrives; each key's commands are older
# than every hostile one, so only the trust rules can refuse those.
STARTS: dict[str, list[ControlCommand]] = {
    "free": [],
    "lapsed": [_cmd("suspend", 5.0, expires=60.0)],
    "suspended": [_cmd("throttle", 2.0), _cmd("resume", 4.0, expires=None), _cmd("suspend", 10.0)],
    "throttled": [_cmd("suspend", 3.0), _cmd("resume", 5.0, expires=None), _cmd("throttle", 10.0)],
    "downgraded": [_cmd("suspend", 5.0), _cmd("downgrade", 10.0)],
    "resumed": [_cmd("suspend", 5.0), _cmd("resume", 10.0, expires=None)],
    "team-suspended": [_cmd("suspend", 5.0, scope="team:support"), _cmd("resume", 6.0, scope="team:support"),
                       _cmd("suspend", 10.0, scope="team:support"), _cmd("throttle", 8.0)],
}

_genuine_resume = _cmd("resume", 50.0, expires=None)
_genuine_suspend = _cmd("suspend", 50.0)


def _tampered(**update: Any) -> Callable[[], tuple[str | None, bytes | None]]:
    return lambda: (AGENT, _raw(_genuine_suspend.model_copy(update=update)))


# Each builds one message from someone without the signing key (key, value).
HOSTILE: dict[str, Callable[[], tuple[str | None, bytes | None]]] = {
    "tampered-resume-from-suspend": lambda: (AGENT, _raw(_genuine_suspend.model_copy(update={"action": "resume"}))),
    "tampered-action": _tampered(action="throttle", rate_per_minute=1),
    "tampered-scope": lambda: ("agent:bot-9", _raw(_cmd("suspend", 50.0, scope="agent:bot-9").model_copy(
        update={"scope_value": "bot-1"}))),
    "tampered-expiry": lambda: (AGENT, _raw(_cmd("suspend", 50.0, expires=60.0).model_copy(
        update={"expires_at": T0 + timedelta(days=30)}))),
    "tampered-issued-at": lambda: (AGENT, _raw(_cmd("resume", 1.0, expires=None).model_copy(
        update={"issued_at": T0 + timedelta(seconds=90)}))),
    "tampered-target-model": lambda: (AGENT, _raw(_cmd("downgrade", 50.0).model_copy(
        update={"target_model": "attacker-model"}))),
    "unsigned-suspend": lambda: (AGENT, _raw(_genuine_suspend.model_copy(update={"key_id": "", "signature": ""}))),
    "unsigned-resume": lambda: (AGENT, _raw(_genuine_resume.model_copy(update={"signature": ""}))),
    "wrong-secret-suspend": lambda: (AGENT, _raw(_cmd("suspend", 50.0, secret=b"attacker"))),
    "wrong-secret-resume": lambda: (AGENT, _raw(_cmd("resume", 50.0, expires=None, secret=b"attacker"))),
    "unknown-key-id-resume": lambda: (AGENT, _raw(_cmd("resume", 50.0, expires=None, key_id="k-attacker",
                                                       secret=b"attacker"))),
    "signature-moved-to-other-key-id": lambda: (AGENT, _raw(_genuine_resume.model_copy(update={"key_id": "k2"}))),
    "signature-of-another-command": lambda: (AGENT, _raw(_cmd("resume", 50.0, expires=None).model_copy(
        update={"signature": _genuine_suspend.signature}))),
    "genuine-other-agents-resume-under-this-key": lambda: (AGENT, _raw(_cmd("resume", 50.0, expires=None,
                                                                              scope="agent:bot-2"))),
    "genuine-other-agents-suspend-under-this-key": lambda: (AGENT, _raw(_cmd("suspend", 50.0, scope="agent:bot-2"))),
    "tombstone": lambda: (AGENT, None),
    "tombstone-without-key": lambda: (None, None),
    "garbage": lambda: (AGENT, b"\xc3\x01" + b"\xff" * 40),
    "truncated": lambda: (AGENT, _raw(_genuine_resume)[:-4]),
    "empty": lambda: (AGENT, b""),
}

# Genuine but expired on arrival: such a suspend, throttle or downgrade never binds the agent.
EXPIRED = {
    "expired-suspend": _cmd("suspend", 50.0, expires=90.0),
    "expired-throttle": _cmd("throttle", 50.0, expires=90.0),
    "expired-downgrade": _cmd("downgrade", 50.0, expires=90.0),
}


def _guard() -> tuple[ControlGuard, _Clock, list[ForgedCommand]]:
    clock = _Clock()
    forged: list[ForgedCommand] = []
    guard = ControlGuard(topic="unused", keys=KEYS, agent_id="bot-1", team="support", project="triage",
                         throttle="raise", throttle_burst=1, clock=clock, on_forged=forged.append)
    return guard, clock, forged


def _decisions(guard: ControlGuard, clock: _Clock) -> tuple[str, str, str]:
    """What the agent may do now: two calls in a row after the throttle buckets refilled (allowed, suspended by
    which command, or throttled on which scope), and the model it calls instead of ``big-model``."""
    clock.mono += 3600.0
    outcomes: list[str] = []
    for _ in range(2):
        try:
            guard.check()
            outcomes.append("allow")
        except AgentSuspended as err:
            outcomes.append(f"suspended by {err.command_id}")
        except Throttled as err:
            outcomes.append(f"throttled on {err.scope}")
    return outcomes[0], outcomes[1], guard.downgrade_model("big-model")


def _guard_view(obeyed: dict[str, ControlCommand]) -> dict[str, ControlCommand]:
    """The obeyed commands that bind this agent now, as :meth:`ControlGuard.active` reports them."""
    mine = (AGENT, "project:triage", "team:support")
    return {k: c for k, c in obeyed.items() if k in mine and c.action != "resume"
            and (c.expires_at is None or c.expires_at > T0 + timedelta(seconds=NOW_S))}


def _start(name: str) -> tuple[ControlGuard, _Clock, list[tuple[str | None, bytes | None]], list[ForgedCommand]]:
    guard, clock, forged = _guard()
    history: list[tuple[str | None, bytes | None]] = []
    for cmd in STARTS[name]:
        key, value = f"{cmd.scope_type}:{cmd.scope_value}", _raw(cmd)
        assert guard.apply_message(key, value)
        history.append((key, value))
    assert guard.active() == _guard_view(compute_obeyed(history, KEYS, codec=_codec))
    return guard, clock, history, forged


EXPECTED = {
    "free": ("allow", "allow", "big-model"),
    "lapsed": ("allow", "allow", "big-model"),
    "suspended": ("suspended by c-suspend-10.0-bot-1",) * 2 + ("big-model",),
    "throttled": ("allow", "throttled on agent:bot-1", "big-model"),
    "downgraded": ("allow", "allow", "small-model"),
    "resumed": ("allow", "allow", "big-model"),
    "team-suspended": ("suspended by c-suspend-10.0-support",) * 2 + ("big-model",),
}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_a_forged_control_message_changes_no_agents_state(start: str, hostile: str) -> None:
    guard, clock, history, forged = _start(start)
    before, before_active = _decisions(guard, clock), guard.active()
    assert before == EXPECTED[start]
    key, value = HOSTILE[hostile]()

    assert not guard.apply_message(key, value, partition=0, offset=99)
    assert _decisions(guard, clock) == before and guard.active() == before_active
    assert (guard.stats().applied, guard.stats().forged, guard.stats().stale) == (len(history), 1, 0)
    assert len(forged) == 1 and forged[0].offset == 99

    # the ops side believes exactly what the guard does, and counts the message as ignored
    obeyed = compute_obeyed([*history, (key, value)], KEYS, codec=_codec)
    assert obeyed == compute_obeyed(history, KEYS, codec=_codec) and _guard_view(obeyed) == guard.active()
    state = compute_control_state([*history, (key, value)], KEYS, T0 + timedelta(seconds=NOW_S), codec=_codec)
    for k, cmd in obeyed.items():
        assert (state[k]["command_id"], state[k]["verified"]) == (cmd.command_id, True)
    assert state[key if key is not None else "?"]["ignored"] == 1


@pytest.mark.parametrize("start", [name for name, history in STARTS.items() if history])
def test_a_replayed_genuine_command_changes_no_agents_state(start: str) -> None:
    # a captured command sent again later: an older one is stale, the current one is the state already held
    for replayed in STARTS[start]:
        guard, clock, history, forged = _start(start)
        before, before_active = _decisions(guard, clock), guard.active()
        key, value = f"{replayed.scope_type}:{replayed.scope_value}", _raw(replayed)
        guard.apply_message(key, value, partition=0, offset=99)
        assert _decisions(guard, clock) == before and guard.active() == before_active, replayed.command_id
        assert guard.stats().forged == 0 and not forged
        assert compute_obeyed([*history, (key, value)], KEYS, codec=_codec) == compute_obeyed(history, KEYS,
                                                                                                codec=_codec)


def test_replayed_old_resume_on_a_fresh_guard_that_saw_a_suspend_first_stays_refused() -> None:
    # the compacted topic re-read from the start by a new guard: order, not arrival time, decides
    guard, _, _ = _guard()
    assert guard.apply_message(AGENT, _raw(_cmd("suspend", 10.0)))
    assert not guard.apply_message(AGENT, _raw(_cmd("resume", 9.999999, expires=None)))
    with pytest.raises(AgentSuspended):
        guard.check()


@pytest.mark.parametrize("name", list(EXPIRED))
def test_an_expired_command_never_binds_the_agent(name: str) -> None:
    guard, clock, _ = _guard()
    cmd = EXPIRED[name]
    guard.apply_message(AGENT, _raw(cmd))
    assert _decisions(guard, clock) == ("allow", "allow", "big-model") and guard.active() == {}
    state = compute_control_state([(AGENT, _raw(cmd))], KEYS, T0 + timedelta(seconds=NOW_S), codec=_codec)
    assert state[AGENT]["live"] is False


def test_a_genuine_newer_command_still_takes_effect_after_hostile_messages() -> None:
    # the refusals above are not a guard that refuses everything
    guard, clock, history, _ = _start("suspended")
    for build in HOSTILE.values():
        key, value = build()
        guard.apply_message(key, value)
        history.append((key, value))
    assert guard.stats().forged == len(HOSTILE)
    assert guard.apply_message(AGENT, _raw(_genuine_resume))
    assert _decisions(guard, clock) == ("allow", "allow", "big-model")
    obeyed = compute_obeyed([*history, (AGENT, _raw(_genuine_resume))], KEYS, codec=_codec)
    assert obeyed[AGENT] == _genuine_resume
