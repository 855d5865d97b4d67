"""The control topic's state as the agents' guards see it: each message judged by the guard's rules, folded per key.

Used by the alert worker (which commands are obeyed, the audit of every control message) and by ``finops control
status``. Reading is a private, never-committed pass over the compacted topic from the beginning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from finops.clock import utc_now
from finops.kafka.clients import Role, build_consumer
from schemas.errors import FinopsError
from schemas.models import ControlCommand, verify
from schemas.wire import AvroCodec

if TYPE_CHECKING:
    from schemas.models import ControlCommand

__all__ = [
    "TOMBSTONE_REASON",
    "compute_control_state",
    "compute_obeyed",
    "judge_control_message",
    "read_control_messages",
    "read_control_state",
]


TOMBSTONE_REASON = "unsigned tombstone (null value): it cannot be verified, so it changes no state"


def judge_control_message(raw_key: str | None, value: bytes | None, keys: Mapping[str, bytes],
                          current: ControlCommand | None, codec: Any) -> tuple[ControlCommand | None, str | None]:
    """One control message judged by the guard's rules (:class:`producers.guard.ControlGuard`): ``(command, None)``
    when a guard holding ``keys`` obeys it (verified, its key is its scope, not older than ``current``, the key's
    obeyed command); otherwise ``(command or None, why it is ignored)``: a tombstone, undecodable, mis-keyed,
    forged or stale. Pure but for decoding."""
    if value is None:
        return None, TOMBSTONE_REASON
    try:
        cmd = ControlCommand.from_avro_dict(codec.decode(value)[1])
    except FinopsError as err:
        return None, f"undecodable control message: {err}"
    scope = f"{cmd.scope_type}:{cmd.scope_value}"
    if raw_key is not None and raw_key != scope:
        return cmd, f"message key {raw_key!r} does not match the signed scope {scope!r}"
    if not verify(cmd, keys):
        return cmd, "unknown signing key id" if cmd.key_id not in keys else "signature does not verify"
    if current is not None and cmd.issued_at < current.issued_at:
        return cmd, f"stale: issued {cmd.issued_at.isoformat()}, older than the current command"
    return cmd, None


def compute_obeyed(messages: Iterable[tuple[str | None, bytes | None]],
                   keys: Mapping[str, bytes]) -> dict[str, ControlCommand]:
    """The command a guard holding ``keys`` obeys per key after ``messages`` (Kafka order)."""
    codec = AvroCodec()
    obeyed: dict[str, ControlCommand] = {}
    for raw_key, value in messages:
        if raw_key is None:
            continue
        cmd, why = judge_control_message(raw_key, value, keys, obeyed.get(raw_key), codec)
        if cmd is not None and why is None:
            obeyed[raw_key] = cmd
    return obeyed


def compute_control_state(messages: Iterable[tuple[str | None, bytes | None]], keys: Mapping[str, bytes],
                          now: datetime) -> dict[str, dict[str, Any]]:
    """Fold the control topic's messages (Kafka order) into the state per key, by the guard's rules
    (:func:`judge_control_message`): only a verified command whose key is its scope, not older than the one it
    replaces, is the state; tombstones, forged, mis-keyed and undecodable messages change nothing and are counted
    in ``ignored`` (with the last ``ignored_reason``). A key with no verified command shows its latest unverified
    command flagged ``verified: false`` (so a missing or wrong key is visible), or only the ignored count."""
    codec = AvroCodec()
    obeyed: dict[str, ControlCommand] = {}
    unverified: dict[str, ControlCommand] = {}
    ignored: dict[str, tuple[int, str]] = {}
    for raw_key, value in messages:
        key = raw_key if raw_key is not None else "?"
        cmd, why = judge_control_message(raw_key, value, keys, obeyed.get(key), codec)
        if why is None and cmd is not None:
            obeyed[key] = cmd
            continue
        if cmd is not None and why in ("unknown signing key id", "signature does not verify"):
            unverified[key] = cmd
        ignored[key] = (ignored.get(key, (0, ""))[0] + 1, why or "")
    state: dict[str, dict[str, Any]] = {}
    for key in sorted(set(obeyed) | set(unverified) | set(ignored)):
        count, reason = ignored.get(key, (0, None))
        shown = obeyed.get(key) or unverified.get(key)
        if shown is None:
            state[key] = {"error": reason, "verified": False, "live": False, "ignored": count,
                          "ignored_reason": reason}
            continue
        state[key] = {
            "action": shown.action, "rate_per_minute": shown.rate_per_minute, "target_model": shown.target_model,
            "reason": shown.reason, "issued_by": shown.issued_by, "issued_at": shown.issued_at.isoformat(),
            "expires_at": shown.expires_at.isoformat() if shown.expires_at else None,
            "command_id": shown.command_id, "verified": key in obeyed,
            "live": shown.action != "resume" and (shown.expires_at is None or shown.expires_at > now),
            "ignored": count, "ignored_reason": reason,
        }
    return state


def read_control_messages(kafka_config: Mapping[str, Any], topic: str,
                          timeout: float = 15.0) -> list[tuple[str | None, bytes | None]]:
    """Every message of the control topic as ``(key, value)``, read from the beginning to the end of every partition
    (bounded by ``timeout``), in Kafka order per partition."""
    consumer = build_consumer(kafka_config, Role.READER, f"finops-control-status-{uuid.uuid4().hex[:8]}",
                              overrides={"enable.partition.eof": True})
    messages: list[tuple[str | None, bytes | None]] = []
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(parts) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            failure = msg.error()
            if failure is not None:
                if failure.code() == KafkaError._PARTITION_EOF:
                    done.add(int(msg.partition() or 0))
                continue
            raw_key = msg.key()
            messages.append((raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else None,
                             msg.value()))
    finally:
        consumer.close()
    return messages


def read_control_state(kafka_config: dict[str, Any], topic: str, keys: dict[str, bytes],
                       timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """The control topic's current state per key (:func:`read_control_messages` folded by
    :func:`compute_control_state`): what a guard holding ``keys`` obeys."""
    return compute_control_state(read_control_messages(kafka_config, topic, timeout), keys, utc_now())
