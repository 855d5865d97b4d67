"""The rules of ``agent.control.v1``: which control message an agent obeys, and while an obeyed command binds.

Role: the one statement of the trust rules that the agents' guard (:mod:`producers.guard`) enforces and the ops side
(:mod:`alerting.control_state`, the alert worker's audit) reports; both call these functions, so what ``finops
control status`` shows is what agents do. The TypeScript guard (``producers/typescript/src/guard.ts``) mirrors them
and is held to the same scenarios (``producers/typescript/test/fixtures/guard_scenarios.json``).

Guarantee: a message is obeyed only when it decodes to a :class:`~schemas.models.ControlCommand` whose HMAC-SHA256
signature verifies under one of the keys (:func:`schemas.models.verify`), whose message key, when it has one, is the
signed scope, and which is not older (``issued_at``) than the scope's obeyed command; a tombstone is never obeyed.
An obeyed command binds until its signed ``expires_at`` unless it is a ``resume``. See DESIGN §2 and §7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from schemas.errors import FinopsError
from schemas.models import ControlCommand, verify

__all__ = [
    "TOMBSTONE_REASON",
    "ControlDecoder",
    "ControlVerdict",
    "Refusal",
    "binds",
    "control_key",
    "decode_control_message",
    "is_live",
    "judge_control_command",
    "judge_control_message",
]

#: Why a tombstone is ignored (the same words in the TypeScript guard, producers/typescript/src/guard.ts).
TOMBSTONE_REASON = "unsigned tombstone (null value): it cannot be verified, so it changes no state"

#: Why a message is not obeyed. ``stale`` is a genuine command that an equally genuine newer one overrides; every
#: other refusal is an unverifiable message, reported like a forgery.
Refusal = Literal["tombstone", "undecodable", "unknown_key", "bad_signature", "mis_keyed", "stale"]


class ControlDecoder(Protocol):
    """What the rules need of a codec (:class:`schemas.wire.AvroCodec` is one): framed Avro bytes to a record."""

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class ControlVerdict:
    """One control message judged: ``refusal`` is None when a guard obeys ``command``; otherwise why it does not,
    with ``reason`` in words (logged and reported) and ``command`` set whenever the message decoded."""

    command: ControlCommand | None
    refusal: Refusal | None = None
    reason: str = ""

    @property
    def obeyed(self) -> bool:
        return self.refusal is None

    @property
    def unverifiable(self) -> bool:
        """Refused for a reason other than age: a tombstone, undecodable, forged or mis-keyed message."""
        return self.refusal is not None and self.refusal != "stale"


def control_key(scope_type: str, scope_value: str) -> str:
    """The control topic's message key of a scope, and the guard's state key: ``scope_type:scope_value``."""
    return f"{scope_type}:{scope_value}"


def judge_control_command(cmd: ControlCommand, key: str | None, keys: Mapping[str, bytes],
                          current: ControlCommand | None) -> ControlVerdict:
    """``cmd``, received under message ``key`` (None: a message without one), judged against the scope's obeyed
    command ``current``: refused when the signature does not verify under ``keys`` (an unknown key id or any
    changed field), when ``key`` is not the signed scope, or when it was issued before ``current`` (a replayed old
    command); in that order, so a forgery is reported as one whatever its key. A command issued at the same time as
    ``current`` is obeyed (a re-published command is the one already held). Pure."""
    if not verify(cmd, keys):
        if cmd.key_id not in keys:
            return ControlVerdict(cmd, "unknown_key", "unknown signing key id")
        return ControlVerdict(cmd, "bad_signature", "signature does not verify")
    scope = control_key(cmd.scope_type, cmd.scope_value)
    if key is not None and key != scope:
        return ControlVerdict(cmd, "mis_keyed", f"message key {key!r} does not match the signed scope {scope!r}")
    if current is not None and cmd.issued_at < current.issued_at:
        return ControlVerdict(cmd, "stale",
                              f"stale: issued {cmd.issued_at.isoformat()}, older than the current command")
    return ControlVerdict(cmd)


def decode_control_message(value: bytes | None, codec: ControlDecoder) -> ControlCommand | ControlVerdict:
    """The command in one raw control message (framed Avro ``value``, None for a tombstone), or the refusal of a
    message that holds none: a tombstone (it carries no signature, so it is never obeyed) or bytes that do not
    decode to a command. The command is not judged yet (:func:`judge_control_command`)."""
    if value is None:
        return ControlVerdict(None, "tombstone", TOMBSTONE_REASON)
    try:
        return ControlCommand.from_avro_dict(codec.decode(value)[1])
    except FinopsError as err:
        return ControlVerdict(None, "undecodable", f"undecodable control message: {err}")


def judge_control_message(key: str | None, value: bytes | None, keys: Mapping[str, bytes],
                          current: ControlCommand | None, codec: ControlDecoder) -> ControlVerdict:
    """One raw control message under message ``key``: :func:`decode_control_message`, then
    :func:`judge_control_command` against the key's obeyed command ``current``. Pure but for decoding."""
    decoded = decode_control_message(value, codec)
    if isinstance(decoded, ControlVerdict):
        return decoded
    return judge_control_command(decoded, key, keys, current)


def binds(action: str, expires_at: datetime | None, now: datetime) -> bool:
    """True while an obeyed command of ``action`` that expires at ``expires_at`` (None: until replaced) binds its
    scope at ``now``: not a ``resume`` and before its ``expires_at`` (the end of the period that caused it, so a
    rollover releases a scope without any further message). The one statement of the rule, for callers that hold
    the command's fields rather than a :class:`~schemas.models.ControlCommand` (the dashboard's audit rows).
    Timestamps are tz-aware; a naive one raises ``TypeError`` rather than be read in a guessed zone. Pure."""
    return action != "resume" and (expires_at is None or expires_at > now)


def is_live(cmd: ControlCommand, now: datetime) -> bool:
    """True while an obeyed ``cmd`` binds its scope at ``now`` (:func:`binds` of its action and expiry)."""
    return binds(cmd.action, cmd.expires_at, now)
