"""The agent-side enforcement guard: obey ``agent.control.v1`` before every model call.

Role: :class:`ControlGuard` follows the compacted control topic in a daemon thread (read whole at start, then
followed); before each model call the agent calls :meth:`ControlGuard.check`, which raises :class:`AgentSuspended`
for a live ``suspend``, waits or raises :class:`Throttled` for a live ``throttle``, and
:meth:`ControlGuard.downgrade_model` names the cheaper model of a live ``downgrade``.

Guarantee: only a command whose HMAC-SHA256 signature verifies changes a scope's state, and never one older than the
state it would replace; a tombstone never clears a scope; a command lapses at its signed ``expires_at``. Forged
commands are counted and reported, not obeyed. See DESIGN §7 and the README, "Budgets, anomalies, waste and
enforcement".
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from finops.clock import Clock, SystemClock
from finops.kafka.clients import Role, build_consumer
from schemas.control import ControlVerdict, control_key, decode_control_message, is_live, judge_control_command
from schemas.errors import FinopsError
from schemas.models import ControlCommand
from schemas.wire import AvroCodec

__all__ = [
    "AgentSuspended",
    "ControlGuard",
    "ForgedCommand",
    "GuardNotReady",
    "GuardStats",
    "ScopeState",
    "Throttled",
    "TokenBucket",
]

log = logging.getLogger(__name__)

_SCOPE_ORDER = ("agent", "project", "team")


class AgentSuspended(FinopsError):
    """The agent (or its team or project) is suspended: do not make the model call."""

    def __init__(self, scope: str, reason: str, issued_by: str, expires_at: datetime | None, command_id: str) -> None:
        self.scope = scope
        self.reason = reason
        self.issued_by = issued_by
        self.expires_at = expires_at
        self.command_id = command_id
        until = f"until {expires_at.isoformat()}" if expires_at else "until resumed"
        super().__init__(f"model calls are suspended for {scope} {until}: {reason} (issued by {issued_by}, "
                         f"command {command_id})")


class Throttled(FinopsError):
    """The throttle allows no call now; retry after ``retry_after_s`` seconds."""

    def __init__(self, scope: str, rate_per_minute: int, retry_after_s: float) -> None:
        self.scope = scope
        self.rate_per_minute = rate_per_minute
        self.retry_after_s = retry_after_s
        super().__init__(f"{scope} is throttled to {rate_per_minute} calls/min; next call allowed in "
                         f"{retry_after_s:.2f}s")


class GuardNotReady(FinopsError):
    """The guard has not read the control topic's current state yet (broker unreachable?) and fails closed."""


@dataclass(frozen=True)
class ForgedCommand:
    """An ignored control message: where it was and why it was refused (the signature is not reproduced)."""

    key: str | None
    partition: int | None
    offset: int | None
    reason: str
    command_id: str | None = None
    scope: str | None = None
    action: str | None = None
    issued_by: str | None = None


@dataclass
class GuardStats:
    applied: int = 0
    forged: int = 0
    stale: int = 0
    suspended_checks: int = 0
    throttled_checks: int = 0


@dataclass(frozen=True)
class ScopeState:
    command: ControlCommand
    partition: int | None = None
    offset: int | None = None

    def live(self, now: datetime) -> bool:
        return is_live(self.command, now)


@dataclass
class TokenBucket:
    """``rate_per_minute`` tokens per minute, at most ``capacity`` saved up; starts full."""

    rate_per_minute: int
    capacity: int
    tokens: float = field(init=False)
    updated: float = field(default=float("nan"))

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)

    def take(self, now: float) -> float:
        """Take a token if one is there and return 0; otherwise return the seconds until one is due."""
        if math.isnan(self.updated):
            self.updated = now
        per_second = self.rate_per_minute / 60.0
        self.tokens = min(float(self.capacity), self.tokens + (now - self.updated) * per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / per_second


class ControlGuard:
    """Follows the control topic for one agent and answers "may I call the model now?".

    Thread-safe: the follower thread applies commands; any thread may call :meth:`check`.

    At start it reads every partition from the beginning (compaction leaves the latest command per
    ``scope_type:scope_value``: the current state), then keeps following. :meth:`check`: a live ``suspend`` on the
    agent, its team or its project raises :class:`AgentSuspended` (reason, issuer, expiry); a live ``throttle`` takes
    a token from a bucket refilled at ``rate_per_minute`` (the strictest of the agent's scopes) and without one
    blocks until one is due (``throttle="block"``, bounded by ``max_block_s``) or raises :class:`Throttled` with the
    wait (``throttle="raise"``). A command is live until its ``expires_at`` (the end of the budget period that caused
    it), so a rollover releases the agent even when no ``resume`` arrives; a signed ``resume`` clears it at once.

    Trust: a command is obeyed only if its signature verifies under one of ``keys`` (key id -> secret; several during
    a rotation). A forged, tampered or undecodable command is ignored, counted (``stats().forged``), logged and
    handed to ``on_forged``. An older command (``issued_at``) than the state it would replace is ignored too, so a
    captured old ``resume`` cannot lift a newer suspension. A tombstone carries no signature, so anyone who can write
    to the topic could send one: it is treated exactly like a forged command. Cleanup needs no tombstone: the guard
    enforces ``expires_at`` itself, and the enforcer publishes a signed ``resume`` when a period ends
    (:meth:`alerting.enforcement.Enforcer.tick`) or the condition clears (or ``finops control resume``). A forged,
    replayed or null message still occupies its key on the compacted topic, so the alert worker answers each one by
    re-publishing the key's genuine live command (``alerting/worker.py``); restrict writes with ACLs too (the
    signature stops obedience, not writes).

    Before the first catch-up (the end of every partition reached once) ``check`` waits up to ``start_timeout_s``,
    then fails open with a warning (the agent keeps working while the broker is unreachable) or, with
    ``fail_closed=True``, raises :class:`GuardNotReady`.
    """

    def __init__(
        self,
        *,
        topic: str,
        keys: Mapping[str, bytes],
        agent_id: str,
        team: str | None = None,
        project: str | None = None,
        bootstrap: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        throttle: Literal["block", "raise"] = "block",
        max_block_s: float = 60.0,
        throttle_burst: int | None = None,
        on_forged: Callable[[ForgedCommand], None] | None = None,
        clock: Clock | None = None,
        start_timeout_s: float = 10.0,
        fail_closed: bool = False,
        poll_interval_s: float = 0.1,
    ) -> None:
        if not keys:
            raise FinopsError("ControlGuard needs at least one verification key (key id -> secret); without one "
                              "every command would be ignored")
        self.topic = topic
        self.keys = dict(keys)
        self.agent_id = agent_id
        self.team = team
        self.project = project
        self.throttle_mode = throttle
        self.max_block_s = max_block_s
        self.throttle_burst = throttle_burst
        self.on_forged = on_forged
        self.clock: Clock = clock or SystemClock()
        self.start_timeout_s = start_timeout_s
        self.fail_closed = fail_closed
        self.poll_interval_s = poll_interval_s
        self._kafka: dict[str, Any] = dict(kafka_config or {})
        if bootstrap:
            self._kafka["bootstrap.servers"] = bootstrap
        self._lock = threading.Lock()
        self._state: dict[str, ScopeState] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._stats = GuardStats()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_not_ready = False
        self._codec: Any = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> ControlGuard:
        """Start following the topic (returns at once; :meth:`wait_ready` waits for the current state)."""
        if self._thread is not None:
            return self
        if "bootstrap.servers" not in self._kafka:
            raise FinopsError("ControlGuard needs bootstrap= or kafka_config with bootstrap.servers")
        self._codec = AvroCodec()
        self._thread = threading.Thread(target=self._follow, name=f"control-guard-{self.agent_id}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ControlGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the topic's current state has been read (every partition's end reached once)."""
        return self._ready.wait(timeout)

    def _follow(self) -> None:
        # A private, never-committed group: every start re-reads the compacted state from the beginning.
        consumer = build_consumer(self._kafka, Role.GUARD, f"finops-guard-{self.agent_id}-{uuid.uuid4().hex[:8]}")
        try:
            partitions: list[int] = []
            while not self._stop.is_set() and not partitions:
                try:
                    md = consumer.list_topics(self.topic, timeout=5)
                    meta = md.topics.get(self.topic)
                    if meta is not None and meta.error is None:
                        partitions = sorted(meta.partitions)
                except Exception as err:  # noqa: BLE001 - broker not there yet: keep trying, report
                    log.warning("control guard: cannot read metadata of %s: %s", self.topic, err)
                if not partitions:
                    self._stop.wait(1.0)
            if self._stop.is_set():
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                msg = consumer.poll(self.poll_interval_s)
                if msg is None:
                    continue
                failure = msg.error()
                if failure is not None:
                    if failure.code() == KafkaError._PARTITION_EOF:
                        at_end.add(int(msg.partition() or 0))
                        if not self._ready.is_set() and at_end >= set(partitions):
                            self._ready.set()
                    else:
                        log.warning("control guard: consumer error: %s", failure)
                    continue
                raw_key = msg.key()
                key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else None
                self.apply_message(key, msg.value(), partition=msg.partition(), offset=msg.offset())
        finally:
            consumer.close()

    # ------------------------------------------------------------------------------------------------ apply

    def apply_message(self, key: str | None, value: bytes | None, *, partition: int | None = None,
                      offset: int | None = None) -> bool:
        """Apply one raw control message (Avro bytes, or None for a tombstone). True when it changed the state.
        Public so tests and other transports can feed the guard. A tombstone never changes the state (it cannot be
        verified, see the class docstring): it is reported as forged and False is returned."""
        if self._codec is None:
            self._codec = AvroCodec()
        decoded = decode_control_message(value, self._codec)
        if isinstance(decoded, ControlVerdict):
            tombstone_scope = key if decoded.refusal == "tombstone" and key and ":" in key else None
            self._forged(ForgedCommand(key, partition, offset, decoded.reason, scope=tombstone_scope))
            return False
        return self.apply(decoded, key=key, partition=partition, offset=offset)

    def apply(self, cmd: ControlCommand, *, key: str | None = None, partition: int | None = None,
              offset: int | None = None) -> bool:
        """Apply a decoded command if the control rules (:func:`schemas.control.judge_control_command`) obey it:
        its signature verifies, ``key`` (when given) is its scope, it is not older than the scope's state. True
        when it changed the state."""
        scope = control_key(cmd.scope_type, cmd.scope_value)
        with self._lock:
            current = self._state.get(scope)
            verdict = judge_control_command(cmd, key, self.keys, current.command if current is not None else None)
            if verdict.refusal == "stale" and current is not None:
                self._stats.stale += 1
                log.info("control guard: ignoring %s for %s issued %s, older than the current %s", cmd.action,
                         scope, cmd.issued_at.isoformat(), current.command.issued_at.isoformat())
                return False
            if verdict.obeyed:
                self._state[scope] = ScopeState(cmd, partition, offset)
                if current is None or current.command.command_id != cmd.command_id:
                    self._buckets.pop(scope, None)  # a new throttle starts a fresh bucket
                self._stats.applied += 1
        if not verdict.obeyed:
            self._forged(ForgedCommand(key, partition, offset, verdict.reason, cmd.command_id, scope,
                                       cmd.action, cmd.issued_by))
            return False
        if self._applies_to_me(cmd):
            log.warning("control: %s %s (%s) issued by %s, expires %s", cmd.action, scope, cmd.reason,
                        cmd.issued_by, cmd.expires_at.isoformat() if cmd.expires_at else "never")
        return True

    def _applies_to_me(self, cmd: ControlCommand) -> bool:
        return (cmd.scope_type, cmd.scope_value) in self._my_scopes()

    def _my_scopes(self) -> list[tuple[str, str]]:
        values = {"agent": self.agent_id, "project": self.project, "team": self.team}
        return [(stype, values[stype]) for stype in _SCOPE_ORDER if values[stype]]  # type: ignore[misc]

    def _forged(self, forged: ForgedCommand) -> None:
        log.warning("control guard: IGNORED control message (key %s, partition %s, offset %s, command %s, "
                    "action %s, issued_by %s): %s", forged.key, forged.partition, forged.offset, forged.command_id,
                    forged.action, forged.issued_by, forged.reason)
        if self.on_forged is not None:
            try:
                self.on_forged(forged)
            except Exception:  # noqa: BLE001 - a reporting callback must not stop the follower
                log.exception("control guard: on_forged callback failed")
        # Counted last: whoever sees stats().forged move can rely on the report having been made.
        with self._lock:
            self._stats.forged += 1

    # ------------------------------------------------------------------------------------------------ decisions

    def stats(self) -> GuardStats:
        with self._lock:
            return GuardStats(**vars(self._stats))

    def active(self) -> dict[str, ControlCommand]:
        """The live commands that apply to this agent, by scope key."""
        now = self.clock.now()
        with self._lock:
            return {f"{t}:{v}": s.command for t, v in self._my_scopes()
                    if (s := self._state.get(f"{t}:{v}")) is not None and s.live(now)}

    def _await_ready(self) -> None:
        if self._ready.is_set() or self._thread is None:
            return
        if self._ready.wait(self.start_timeout_s):
            return
        if self.fail_closed:
            raise GuardNotReady(f"the control topic {self.topic} was not read within {self.start_timeout_s}s; "
                                "refusing model calls (fail_closed); check the Kafka connection")
        if not self._warned_not_ready:
            self._warned_not_ready = True
            log.warning("control guard: control topic %s not read within %.1fs; allowing calls (fail open)",
                        self.topic, self.start_timeout_s)

    def check(self) -> None:
        """Raise :class:`AgentSuspended` if a live suspension applies; take a throttle token (blocking up to
        ``max_block_s`` or raising :class:`Throttled`, per the ``throttle`` option). Returns when the call may go.
        """
        self._await_ready()
        deadline = self.clock.monotonic() + self.max_block_s
        while True:
            wait, scope, rate = self._decide()
            if wait <= 0:
                return
            if self.throttle_mode == "raise" or self.clock.monotonic() + wait > deadline:
                with self._lock:
                    self._stats.throttled_checks += 1
                raise Throttled(scope, rate, wait)
            # Sleep in short steps so a suspension or resume that arrives meanwhile is seen.
            self.clock.sleep(min(wait, 0.5))

    def _decide(self) -> tuple[float, str, int]:
        now = self.clock.now()
        with self._lock:
            live = [(f"{t}:{v}", s.command) for t, v in self._my_scopes()
                    if (s := self._state.get(f"{t}:{v}")) is not None and s.live(now)]
            for scope, cmd in live:
                if cmd.action == "suspend":
                    self._stats.suspended_checks += 1
                    raise AgentSuspended(scope, cmd.reason, cmd.issued_by, cmd.expires_at, cmd.command_id)
            throttles = [(scope, cmd) for scope, cmd in live if cmd.action == "throttle" and cmd.rate_per_minute]
            if not throttles:
                return 0.0, "", 0
            # Every applicable throttle must allow the call: take from each bucket, report the longest wait.
            mono = self.clock.monotonic()
            longest, which, rate = 0.0, "", 0
            for scope, cmd in throttles:
                bucket = self._buckets.get(scope)
                per_min = int(cmd.rate_per_minute or 1)
                if bucket is None or bucket.rate_per_minute != per_min:
                    burst = self.throttle_burst or max(1, per_min // 10)
                    bucket = self._buckets[scope] = TokenBucket(per_min, burst)
                peek = _peek(bucket, mono)
                if peek > longest:
                    longest, which, rate = peek, scope, per_min
            if longest > 0:
                return longest, which, rate
            for scope, _ in throttles:
                self._buckets[scope].take(mono)
            return 0.0, "", 0

    def downgrade_model(self, requested: str) -> str:
        """The model to call instead of ``requested``: the target of a live downgrade on this agent's scopes (the
        most specific scope wins), else ``requested``."""
        now = self.clock.now()
        with self._lock:
            for t, v in self._my_scopes():
                state = self._state.get(f"{t}:{v}")
                if state is not None and state.live(now) and state.command.action == "downgrade" \
                        and state.command.target_model:
                    return state.command.target_model
        return requested


def _peek(bucket: TokenBucket, now: float) -> float:
    """Seconds until ``bucket`` has a token, without taking it."""
    if math.isnan(bucket.updated):
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) * 60.0 / bucket.rate_per_minute
    tokens = min(float(bucket.capacity), bucket.tokens + (now - bucket.updated) * bucket.rate_per_minute / 60.0)
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / bucket.rate_per_minute
