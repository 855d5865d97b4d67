"""The control topic's state as the agents' guards see it: each message judged by the control rules, folded per key.

Used by the alert worker (which commands are obeyed, the audit of every control message) and by ``finops control
status``. The rules themselves are :mod:`schemas.control`, the same functions the guard (:mod:`producers.guard`)
calls. Reading is a private, never-committed pass over the compacted topic from the beginning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from finops.clock import utc_now
from finops.kafka.clients import CONNECT_TIMEOUT_S, Role, build_consumer, require_broker
from schemas.control import ControlDecoder, control_key, is_live, judge_control_message
from schemas.models import ControlCommand
from schemas.wire import AvroCodec

__all__ = [
    "compute_control_state",
    "compute_obeyed",
    "read_control_messages",
    "read_control_state",
]


def compute_obeyed(messages: Iterable[tuple[str | None, bytes | None]], keys: Mapping[str, bytes], *,
                   codec: ControlDecoder | None = None) -> dict[str, ControlCommand]:
    """The command a guard holding ``keys`` obeys per key after ``messages`` (Kafka order), decoded with ``codec``
    (a new :class:`~schemas.wire.AvroCodec` by default)."""
    codec = codec or AvroCodec()
    obeyed: dict[str, ControlCommand] = {}
    for raw_key, value in messages:
        if raw_key is None:
            continue
        verdict = judge_control_message(raw_key, value, keys, obeyed.get(raw_key), codec)
        if verdict.command is not None and verdict.obeyed:
            obeyed[raw_key] = verdict.command
    return obeyed


def compute_control_state(messages: Iterable[tuple[str | None, bytes | None]], keys: Mapping[str, bytes],
                          now: datetime, *, codec: ControlDecoder | None = None) -> dict[str, dict[str, Any]]:
    """Fold the control topic's messages (Kafka order) into the state per key, by the guard's rules
    (:func:`schemas.control.judge_control_message`): only a verified command whose key is its scope, not older than
    the one it replaces, is the state; tombstones, forged, mis-keyed, stale and undecodable messages change nothing
    and are counted in ``ignored`` (with the last ``ignored_reason``). A key with no verified command shows its
    latest unverified command flagged ``verified: false`` (so a missing or wrong key is visible), or only the
    ignored count. ``codec`` as for :func:`compute_obeyed`."""
    codec = codec or AvroCodec()
    obeyed: dict[str, ControlCommand] = {}
    unverified: dict[str, ControlCommand] = {}
    ignored: dict[str, tuple[int, str]] = {}
    for raw_key, value in messages:
        key = raw_key if raw_key is not None else "?"
        verdict = judge_control_message(raw_key, value, keys, obeyed.get(key), codec)
        cmd = verdict.command
        if verdict.obeyed and cmd is not None:
            obeyed[key] = cmd
            continue
        # Shown as the key's unverified command only when it is keyed by its own scope (a mis-keyed one is
        # another scope's command, whatever its signature).
        if cmd is not None and verdict.refusal in ("unknown_key", "bad_signature") and (
                raw_key is None or raw_key == control_key(cmd.scope_type, cmd.scope_value)):
            unverified[key] = cmd
        ignored[key] = (ignored.get(key, (0, ""))[0] + 1, verdict.reason)
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
            "live": is_live(shown, now),
            "ignored": count, "ignored_reason": reason,
        }
    return state


def read_control_messages(kafka_config: Mapping[str, Any], topic: str,
                          timeout: float = 15.0) -> list[tuple[str | None, bytes | None]]:
    """Every message of the control topic as ``(key, value)``, read from the beginning to the end of every partition
    (bounded by ``timeout``), in Kafka order per partition. A broker that does not answer within
    :data:`~finops.kafka.clients.CONNECT_TIMEOUT_S` raises :class:`~finops.kafka.clients.BrokerUnreachable`."""
    consumer = build_consumer(kafka_config, Role.READER, f"finops-control-status-{uuid.uuid4().hex[:8]}",
                              overrides={"enable.partition.eof": True})
    messages: list[tuple[str | None, bytes | None]] = []
    try:
        md = require_broker(consumer, kafka_config, what=f"read {topic} from", topic=topic,
                            timeout=min(timeout, CONNECT_TIMEOUT_S))
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
