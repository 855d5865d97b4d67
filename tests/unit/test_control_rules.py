"""The control rules of schemas/control.py, with plain values: which message is obeyed, why one is refused, and
while when an obeyed command binds. The guard and the ops fold are tested on top of these (test_guard.py,
test_control_status.py, tests/security/test_control_commands.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.control import (
    TOMBSTONE_REASON,
    ControlVerdict,
    binds,
    control_key,
    decode_control_message,
    is_live,
    judge_control_command,
    judge_control_message,
)
from schemas.models import ControlCommand, sign
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

KEYS = {"k1": b"secret-1", "k2": b"secret-2"}
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
_codec = AvroCodec()


def _cmd(action: str = "suspend", *, issued: float = 0.0, expires: float | None = 3600.0,
         scope: tuple[str, str] = ("agent", "bot-1"), key_id: str = "k1", secret: bytes = KEYS["k1"]) -> ControlCommand:
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{issued}", "scope_type": scope[0], "scope_value": scope[1], "action": action,
        "reason": "r", "issued_by": "policy-engine", "issued_at": T0 + timedelta(seconds=issued),
        "expires_at": None if expires is None else T0 + timedelta(seconds=expires), "key_id": "", "signature": ""})
    return sign(cmd, key_id, secret)


def _raw(cmd: ControlCommand) -> bytes:
    return _codec.encode(cmd.to_avro_dict(), "ControlCommand")


def test_control_key_is_scope_type_colon_value() -> None:
    assert control_key("team", "support") == "team:support"


def test_a_verified_command_under_its_own_key_or_none_is_obeyed() -> None:
    cmd = _cmd()
    for key in ("agent:bot-1", None):
        verdict = judge_control_command(cmd, key, KEYS, None)
        assert verdict == ControlVerdict(cmd) and verdict.obeyed and not verdict.unverifiable
    # every key of a rotation verifies its own signatures
    assert judge_control_command(_cmd(key_id="k2", secret=KEYS["k2"]), None, KEYS, None).obeyed


@pytest.mark.parametrize(("forged", "refusal", "reason"), [
    (_cmd().model_copy(update={"action": "resume"}), "bad_signature", "signature does not verify"),
    (_cmd().model_copy(update={"expires_at": T0 + timedelta(days=365)}), "bad_signature",
     "signature does not verify"),
    (_cmd(secret=b"attacker"), "bad_signature", "signature does not verify"),
    (_cmd().model_copy(update={"key_id": "k2"}), "bad_signature", "signature does not verify"),
    (_cmd().model_copy(update={"signature": ""}), "bad_signature", "signature does not verify"),
    (_cmd(key_id="k9", secret=b"anything"), "unknown_key", "unknown signing key id"),
    (_cmd().model_copy(update={"key_id": "", "signature": ""}), "unknown_key", "unknown signing key id"),
], ids=["tampered-action", "tampered-expiry", "wrong-secret", "other-key-id", "unsigned", "unknown-key-id",
        "no-key-id"])
def test_a_command_whose_signature_does_not_verify_is_refused_whatever_its_key(
        forged: ControlCommand, refusal: str, reason: str) -> None:
    for key in ("agent:bot-1", "agent:other", None):
        verdict = judge_control_command(forged, key, KEYS, None)
        assert (verdict.command, verdict.refusal, verdict.reason) == (forged, refusal, reason)
        assert verdict.unverifiable and not verdict.obeyed
    assert judge_control_command(_cmd(), "agent:bot-1", {}, None).refusal == "unknown_key"  # no keys: nothing obeyed


def test_a_verified_command_under_another_scopes_key_is_mis_keyed() -> None:
    verdict = judge_control_command(_cmd(), "agent:bot-2", KEYS, None)
    assert verdict.refusal == "mis_keyed" and verdict.unverifiable
    assert verdict.reason == "message key 'agent:bot-2' does not match the signed scope 'agent:bot-1'"


def test_an_older_command_is_stale_and_an_equally_old_one_is_obeyed() -> None:
    current = _cmd(issued=10.0)
    stale = judge_control_command(_cmd("resume", issued=5.0, expires=None), "agent:bot-1", KEYS, current)
    assert stale.refusal == "stale" and not stale.obeyed and not stale.unverifiable
    assert stale.reason.startswith("stale: issued 2025-03-14T09:00:05")
    assert judge_control_command(current, "agent:bot-1", KEYS, current).obeyed  # re-published: the same command
    assert judge_control_command(_cmd("resume", issued=10.0), "agent:bot-1", KEYS, current).obeyed
    assert judge_control_command(_cmd("resume", issued=11.0), "agent:bot-1", KEYS, current).obeyed


def test_signature_is_judged_before_key_and_age() -> None:
    # a forgery is reported as a forgery, even when it is also mis-keyed or older
    forged = _cmd(issued=0.0, secret=b"attacker")
    assert judge_control_command(forged, "agent:bot-2", KEYS, _cmd(issued=10.0)).refusal == "bad_signature"
    assert judge_control_command(_cmd(issued=0.0), "agent:bot-2", KEYS, _cmd(issued=10.0)).refusal == "mis_keyed"


def test_tombstones_and_undecodable_bytes_hold_no_command() -> None:
    assert decode_control_message(None, _codec) == ControlVerdict(None, "tombstone", TOMBSTONE_REASON)
    for junk in (b"", b"\xc3\x01garbage", _raw(_cmd())[:-3], b"\x00\x00\x00\x00\x07abc"):
        verdict = decode_control_message(junk, _codec)
        assert isinstance(verdict, ControlVerdict) and verdict.refusal == "undecodable" and verdict.command is None
        assert verdict.reason.startswith("undecodable control message: ")
    assert decode_control_message(_raw(_cmd()), _codec) == _cmd()


def test_judge_control_message_decodes_then_judges() -> None:
    current = _cmd(issued=10.0)
    assert judge_control_message("agent:bot-1", None, KEYS, current, _codec).refusal == "tombstone"
    assert judge_control_message("agent:bot-1", b"junk", KEYS, current, _codec).refusal == "undecodable"
    assert judge_control_message("agent:bot-1", _raw(_cmd(issued=5.0)), KEYS, current, _codec).refusal == "stale"
    assert judge_control_message("agent:x", _raw(_cmd(issued=20.0)), KEYS, current, _codec).refusal == "mis_keyed"
    obeyed = judge_control_message("agent:bot-1", _raw(_cmd(issued=20.0)), KEYS, current, _codec)
    assert obeyed.obeyed and obeyed.command == _cmd(issued=20.0)


def test_a_command_binds_until_its_expiry_and_a_resume_never_binds() -> None:
    cmd = _cmd(expires=60.0)
    assert is_live(cmd, T0) and is_live(cmd, T0 + timedelta(seconds=59.999999))
    assert not is_live(cmd, T0 + timedelta(seconds=60)) and not is_live(cmd, T0 + timedelta(days=1))
    assert is_live(_cmd(expires=None), T0 + timedelta(days=3650))
    assert not is_live(_cmd("resume", expires=None), T0)
    assert not is_live(_cmd("resume", expires=60.0), T0)


def test_binds_is_the_rule_on_plain_fields_and_refuses_naive_times() -> None:
    expires = T0 + timedelta(seconds=60)
    assert binds("throttle", expires, T0) and not binds("throttle", expires, expires)
    assert binds("suspend", None, T0) and not binds("resume", None, T0) and not binds("resume", expires, T0)
    with pytest.raises(TypeError):  # a naive time's zone would be a guess
        binds("suspend", expires.replace(tzinfo=None), T0)
