"""ControlGuard decisions without a broker: signatures, suspension, expiry, throttle token bucket, downgrade,
stale and forged commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from producers.guard import AgentSuspended, ControlGuard, ForgedCommand, Throttled, TokenBucket
from schemas.models import ControlCommand, sign
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

KEYS = {"k1": b"secret-1"}
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def _cmd(action: str = "suspend", *, scope: tuple[str, str] = ("agent", "bot-1"), issued: float = 0.0,
         expires: float | None = 3600.0, key: bytes = KEYS["k1"], **over: object) -> ControlCommand:
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{issued}", "scope_type": scope[0], "scope_value": scope[1], "action": action,
        "reason": "policy pol-1 at 100%", "issued_by": "policy-engine",
        "issued_at": T0 + timedelta(seconds=issued),
        "expires_at": None if expires is None else T0 + timedelta(seconds=expires),
        "key_id": "", "signature": "", **over})
    return sign(cmd, "k1", key)


def _guard(**kw: object) -> tuple[ControlGuard, FakeClock, list[ForgedCommand]]:
    clock = FakeClock()
    forged: list[ForgedCommand] = []
    guard = ControlGuard(topic="t", keys=KEYS, agent_id="bot-1", team="support", project="triage", clock=clock,
                         on_forged=forged.append, **kw)  # type: ignore[arg-type]
    return guard, clock, forged


def test_suspend_raises_with_reason_and_expiry_then_lapses_at_expiry() -> None:
    guard, clock, _ = _guard()
    guard.check()
    assert guard.apply(_cmd(), key="agent:bot-1")
    with pytest.raises(AgentSuspended) as err:
        guard.check()
    assert err.value.scope == "agent:bot-1" and err.value.reason == "policy pol-1 at 100%"
    assert err.value.expires_at == T0 + timedelta(hours=1) and "policy-engine" in str(err.value)
    clock.t = 3600.0  # the period rolled over
    guard.check()


def test_team_and_project_scopes_apply_and_resume_clears() -> None:
    guard, _, _ = _guard()
    guard.apply(_cmd(scope=("team", "support")))
    with pytest.raises(AgentSuspended, match="team:support"):
        guard.check()
    guard.apply(_cmd("resume", scope=("team", "support"), issued=1.0, expires=None))
    guard.check()
    guard.apply(_cmd(scope=("project", "other")))  # another project: not ours
    guard.check()


def test_forged_and_tampered_commands_are_ignored_counted_and_reported() -> None:
    guard, _, forged = _guard()
    assert not guard.apply(_cmd(key=b"attacker"), key="agent:bot-1")
    tampered = _cmd("throttle", rate_per_minute=5).model_copy(update={"action": "suspend"})
    assert not guard.apply(tampered)
    unknown = _cmd().model_copy(update={"key_id": "k9"})
    assert not guard.apply(unknown)
    guard.check()  # nothing took effect
    assert guard.stats().forged == 3
    assert [f.reason for f in forged] == ["signature does not verify", "signature does not verify",
                                          "unknown signing key id"]
    assert forged[0].scope == "agent:bot-1" and forged[0].action == "suspend"


def test_undecodable_message_and_key_mismatch_are_reported() -> None:
    guard, _, forged = _guard()
    assert not guard.apply_message("agent:bot-1", b"\xc3\x01garbage", partition=0, offset=7)
    assert forged[-1].offset == 7 and forged[-1].reason.startswith("undecodable")
    codec = AvroCodec()
    good = codec.encode(_cmd().to_avro_dict(), "ControlCommand")
    assert not guard.apply_message("agent:someone-else", good)
    assert "does not match" in forged[-1].reason
    assert guard.apply_message("agent:bot-1", good)
    with pytest.raises(AgentSuspended):
        guard.check()


def test_unsigned_tombstone_never_lifts_a_suspension_and_is_reported_as_forged(
        caplog: pytest.LogCaptureFixture) -> None:
    # issue 14 item 2: a null value on `agent:<id>` used to clear the scope, silently.
    guard, clock, forged = _guard()
    assert guard.apply(_cmd(), key="agent:bot-1")
    with caplog.at_level("WARNING", logger="producers.guard"):
        assert not guard.apply_message("agent:bot-1", None, partition=0, offset=12)
    with pytest.raises(AgentSuspended):
        guard.check()
    assert guard.stats().forged == 1 and guard.stats().applied == 1
    assert forged[-1].key == "agent:bot-1" and forged[-1].scope == "agent:bot-1" and forged[-1].offset == 12
    assert "tombstone" in forged[-1].reason
    assert any("IGNORED" in r.getMessage() and "tombstone" in r.getMessage() for r in caplog.records)
    assert not any(KEYS["k1"].decode() in r.getMessage() for r in caplog.records)
    # an older genuine command replayed after the tombstone is still stale: the tombstone erased no history
    assert not guard.apply(_cmd(issued=-5.0), key="agent:bot-1")
    assert guard.stats().stale == 1
    # a tombstone without a key, or on a key with no state, is reported too and changes nothing
    assert not guard.apply_message(None, None)
    assert not guard.apply_message("team:support", None)
    assert guard.stats().forged == 3
    # what does lift it: a signed resume, or the signed expires_at
    clock.t = 3600.0
    guard.check()


def test_older_command_cannot_replace_newer_state() -> None:
    guard, _, _ = _guard()
    guard.apply(_cmd(issued=10.0))
    assert not guard.apply(_cmd("resume", issued=5.0, expires=None))  # a replayed old resume
    assert guard.stats().stale == 1
    with pytest.raises(AgentSuspended):
        guard.check()


def test_throttle_raise_mode_token_bucket() -> None:
    guard, clock, _ = _guard(throttle="raise", throttle_burst=2)
    guard.apply(_cmd("throttle", rate_per_minute=30, expires=None))
    guard.check()
    guard.check()  # burst of 2
    with pytest.raises(Throttled) as err:
        guard.check()
    assert err.value.rate_per_minute == 30 and err.value.retry_after_s == pytest.approx(2.0)
    clock.t += 2.0
    guard.check()
    with pytest.raises(Throttled):
        guard.check()


def test_throttle_block_mode_waits_for_the_next_token() -> None:
    guard, clock, _ = _guard(throttle="block", throttle_burst=1)
    guard.apply(_cmd("throttle", rate_per_minute=60, expires=None))
    starts = []
    for _ in range(4):
        guard.check()
        starts.append(clock.t)
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_throttle_block_mode_gives_up_after_max_block() -> None:
    guard, _, _ = _guard(throttle="block", throttle_burst=1, max_block_s=5.0)
    guard.apply(_cmd("throttle", rate_per_minute=1, expires=None))
    guard.check()
    with pytest.raises(Throttled):
        guard.check()


def test_downgrade_model_most_specific_scope_wins_and_expires() -> None:
    guard, clock, _ = _guard()
    assert guard.downgrade_model("gpt-4o") == "gpt-4o"
    guard.apply(_cmd("downgrade", scope=("team", "support"), target_model="gpt-4o-mini", expires=60.0))
    guard.apply(_cmd("downgrade", scope=("agent", "bot-1"), target_model="gpt-4.1-nano", expires=30.0))
    assert guard.downgrade_model("gpt-4o") == "gpt-4.1-nano"
    guard.check()  # a downgrade does not block calls
    clock.t = 30.0
    assert guard.downgrade_model("gpt-4o") == "gpt-4o-mini"
    clock.t = 60.0
    assert guard.downgrade_model("gpt-4o") == "gpt-4o"


def test_token_bucket_refills_up_to_capacity() -> None:
    bucket = TokenBucket(rate_per_minute=60, capacity=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)


def test_guard_needs_keys() -> None:
    with pytest.raises(Exception, match="verification key"):
        ControlGuard(topic="t", keys={}, agent_id="a")
