"""Enforcement: budget alerts become signed ControlCommands on the compacted ``agent.control.v1``.

Role: the ladder (DESIGN §7) is notify -> throttle -> downgrade -> suspend. The control topic is keyed by
``scope_type:scope_value`` and compacted, so an agent only ever sees the latest command per scope; the
:class:`Enforcer` keeps, per scope, the steps asked for by open alert keys and publishes the strongest of them
(what an alert must carry is on :func:`compute_spec`).

Guarantee: every command is HMAC-SHA256 signed (:func:`schemas.models.sign`), says who issued it, why and when it
expires (the end of the budget period that caused it, so a rollover releases an agent even while this worker is
down); ids are deterministic (UUIDv5 of alert id, scope and action), so an alert consumed twice publishes the same
command.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from finops.clock import as_utc
from finops.money import format_usd
from schemas.control import control_key
from schemas.models import Alert, ControlCommand, sign

__all__ = [
    "ACTION_RANK",
    "EnforcementSpec",
    "EnforcementStore",
    "Enforcer",
    "MemoryEnforcementStore",
    "compute_period_end",
    "compute_scope",
    "compute_spec",
]

log = logging.getLogger(__name__)

EnforcingAction = Literal["throttle", "downgrade", "suspend"]
#: Higher is stronger; a scope's effective command is its strongest active step.
ACTION_RANK: dict[str, int] = {"throttle": 1, "downgrade": 2, "suspend": 3}
_ENFORCING_KINDS = frozenset({"budget_threshold", "budget_forecast", "task_cap", "call_cap"})
_COMMAND_NS = uuid.UUID("4b3c9a52-5f3e-4b8e-9a55-0f6b2f8a1c70")


@dataclass(frozen=True)
class EnforcementSpec:
    """One enforcement step asked for by one alert key (pure data, JSON-serialisable for the store)."""

    scope_type: Literal["agent", "team", "project"]
    scope_value: str
    action: EnforcingAction
    reason: str
    alert_id: str
    occurred_at_us: int
    expires_at_us: int | None
    policy_id: str | None = None
    rate_per_minute: int | None = None
    target_model: str | None = None

    @property
    def scope(self) -> str:
        return control_key(self.scope_type, self.scope_value)

    def expires_at(self) -> datetime | None:
        return None if self.expires_at_us is None else datetime.fromtimestamp(self.expires_at_us / 1e6, UTC)


def compute_scope(alert: Alert) -> tuple[Literal["agent", "team", "project"], str] | None:
    """The control scope an alert enforces on (see :func:`compute_spec`), or None when it has none."""
    stype = alert.details.get("scope_type")
    svalue = alert.details.get("scope_value")
    if alert.kind in ("task_cap", "call_cap") and alert.agent_id:
        # A cap is broken by one agent's task or call: stop that agent, not the policy's whole team.
        return "agent", alert.agent_id
    if stype in ("agent", "team", "project") and svalue:
        return stype, svalue  # type: ignore[return-value]
    if alert.agent_id:
        return "agent", alert.agent_id
    if stype == "tag":
        return None
    if alert.project:
        return "project", alert.project
    if alert.team:
        return "team", alert.team
    return None


_MONTH = re.compile(r"(\d{4})-(\d{2})")
_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def compute_period_end(details: dict[str, str]) -> datetime | None:
    """End of the budget period (UTC) from ``period_end`` or ``period`` + ``timezone``; None when unknown."""
    raw = details.get("period_end")
    if raw:
        try:
            end = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            log.warning("ignoring unparsable details.period_end %r", raw)
        else:
            return as_utc(end)
    label = details.get("period", "")
    try:
        zone = ZoneInfo(details.get("timezone") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    start_next: date | None = None
    if m := _DAY.fullmatch(label):
        start_next = date(int(m[1]), int(m[2]), int(m[3])) + timedelta(days=1)
    elif m := _WEEK.fullmatch(label):
        start_next = date.fromisocalendar(int(m[1]), int(m[2]), 1) + timedelta(weeks=1)
    elif m := _MONTH.fullmatch(label):
        year, month = int(m[1]), int(m[2])
        start_next = date(year + (month == 12), month % 12 + 1, 1)
    if start_next is None:
        return None
    # Calendar-aligned in the policy's zone: midnight local time of the next period's first day.
    return datetime.combine(start_next, time(0), tzinfo=zone).astimezone(UTC)


def _reason(alert: Alert) -> str:
    d = alert.details
    parts = [f"policy {alert.policy_id}" if alert.policy_id else alert.kind]
    if alert.amount_usd is not None:
        spend = format_usd(alert.amount_usd)
        if alert.limit_usd is not None:
            spend += f" of {format_usd(alert.limit_usd)}"
        parts.append(spend)
    if d.get("threshold_percent"):
        parts.append(f"threshold {d['threshold_percent']}%")
    if d.get("period"):
        parts.append(f"period {d['period']}")
    return f"{'; '.join(parts)}: {alert.title}"


def compute_spec(alert: Alert, *, default_rate_per_minute: int = 10) -> EnforcementSpec | None:
    """The enforcement step a *trigger* alert asks for: its strongest enforcing action on its scope. None when the
    alert only notifies, has no enforceable scope, or its period has already ended.

    What the alert must carry (fields of ``Alert`` plus ``details`` keys, all optional but the scope):

    - scope: ``details.scope_type`` / ``details.scope_value`` when given (agent, team or project; detection sets the
      policy's scope there); otherwise the most specific of ``agent_id``, ``project``, ``team``. Task and call caps
      enforce on the agent that broke them. A tag-scoped policy cannot be enforced through the control topic (its
      scopes are agent, team, project); it falls back to ``agent_id`` or is only notified.
    - expiry: ``details.period_end`` (ISO 8601), or ``details.period`` (``2025-03``, ``2025-W11``, ``2025-03-14``)
      with ``details.timezone`` (IANA, default UTC).
    - throttle rate: ``details.throttle_rate_per_minute`` (else the enforcer's default); downgrade target:
      ``details.downgrade_model`` (without it the step falls back to throttle)."""
    if alert.state != "trigger" or alert.kind not in _ENFORCING_KINDS:
        return None
    wanted = [a for a in alert.actions if a in ACTION_RANK]
    if not wanted:
        return None
    scope = compute_scope(alert)
    if scope is None:
        log.warning("alert %s asks for %s but has no agent/team/project scope to enforce on", alert.alert_id,
                    ",".join(wanted))
        return None
    action: EnforcingAction = max(wanted, key=ACTION_RANK.__getitem__)  # type: ignore[arg-type]
    target = alert.details.get("downgrade_model") or None
    if action == "downgrade" and not target:
        log.warning("alert %s asks for a downgrade without details.downgrade_model; throttling instead",
                    alert.alert_id)
        action = "throttle"
    rate: int | None = None
    if action == "throttle":
        try:
            rate = int(alert.details.get("throttle_rate_per_minute") or default_rate_per_minute)
        except ValueError:
            rate = default_rate_per_minute
        rate = max(1, rate)
    end = compute_period_end(alert.details)
    occurred = _micros(alert.occurred_at)
    if end is not None and end <= alert.occurred_at:
        log.warning("alert %s: its period ended at %s, before it occurred; nothing to enforce", alert.alert_id, end)
        return None
    return EnforcementSpec(scope[0], scope[1], action, _reason(alert), alert.alert_id, occurred,
                           None if end is None else _micros(end), alert.policy_id, rate,
                           target if action == "downgrade" else None)


def _micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


class EnforcementStore(Protocol):
    def enforcement_put(self, scope: str, dedup_key: str, rank: int, spec_json: str) -> None: ...

    def enforcement_drop(self, scope: str, dedup_key: str) -> None: ...

    def enforcement_active(self, scope: str) -> list[tuple[str, int, str]]: ...


class MemoryEnforcementStore:
    """In-memory store for tests and tools; the worker uses the durable :class:`alerting.outbox.Outbox`."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[int, str]] = {}

    def enforcement_put(self, scope: str, dedup_key: str, rank: int, spec_json: str) -> None:
        self._rows[(scope, dedup_key)] = (rank, spec_json)

    def enforcement_drop(self, scope: str, dedup_key: str) -> None:
        self._rows.pop((scope, dedup_key), None)

    def enforcement_active(self, scope: str) -> list[tuple[str, int, str]]:
        rows = [(key, rank, spec) for (s, key), (rank, spec) in self._rows.items() if s == scope]
        return sorted(rows, key=lambda r: (-r[1], r[0]))

    def scopes(self) -> set[str]:
        return {s for s, _ in self._rows}


class Enforcer:
    """Turns alerts into signed commands. Not thread-safe (the worker's consumer thread owns it).

    Per scope it keeps the enforcements asked for by open alert keys (one per ``dedup_key``, i.e. per policy
    threshold and period) and publishes the strongest:

    - a trigger with enforcing actions records its step and publishes the scope's strongest active step;
    - a resolve (the period rolled over, the limit was raised) drops that key's step and publishes the strongest
      remaining one, or ``resume`` when none is left; a resolve for a key that never enforced anything does nothing;
    - :meth:`tick` drops steps whose period has ended and resumes the scope, so the topic's state is clean even if no
      resolve ever comes (agents also honour ``expires_at`` themselves).

    Each command carries ``issued_by``, ``reason`` (policy, spend, limit, period) and ``expires_at``; the audit table
    collapses a command published twice by its deterministic id.
    """

    def __init__(self, store: EnforcementStore, *, key_id: str, secret: bytes,
                 issued_by: str = "policy-engine", default_rate_per_minute: int = 10,
                 scopes: Callable[[], set[str]] | None = None) -> None:
        self.store = store
        self.key_id = key_id
        self.secret = secret
        self.issued_by = issued_by
        self.default_rate_per_minute = default_rate_per_minute
        # For tick(): how to list scopes with active steps (the SQLite store answers through this callable).
        self._scopes = scopes

    def handle(self, alert: Alert) -> list[ControlCommand]:
        """The signed commands ``alert`` causes (zero or one), updating the store. Raises ConfigError when the
        signing key is missing (from :func:`schemas.models.sign`)."""
        if alert.state == "trigger":
            spec = compute_spec(alert, default_rate_per_minute=self.default_rate_per_minute)
            if spec is None:
                return []
            self.store.enforcement_put(spec.scope, alert.dedup_key, ACTION_RANK[spec.action],
                                       json.dumps(asdict(spec), sort_keys=True))
            return [self._effective(spec.scope, alert.alert_id, alert.occurred_at, spec.scope_type,
                                    spec.scope_value)]
        scope = compute_scope(alert)
        if scope is None or alert.kind not in _ENFORCING_KINDS:
            return []
        key = control_key(*scope)
        if not any(k == alert.dedup_key for k, _, _ in self.store.enforcement_active(key)):
            return []  # this key never enforced anything (a notify-only threshold)
        self.store.enforcement_drop(key, alert.dedup_key)
        why = (alert.details.get("resolve_reason") or alert.details.get("reason")
               or "the budget condition cleared (period rolled over or the limit was raised)")
        return [self._effective(key, alert.alert_id, alert.occurred_at, scope[0], scope[1], resume_reason=why)]

    def tick(self, now: datetime) -> list[ControlCommand]:
        """Drop steps whose period ended by ``now`` and publish each affected scope's new state."""
        if self._scopes is None:
            return []
        out: list[ControlCommand] = []
        now_us = _micros(now)
        for scope in sorted(self._scopes()):
            active = self.store.enforcement_active(scope)
            expired = [(k, json.loads(s)) for k, _, s in active
                       if json.loads(s).get("expires_at_us") is not None and json.loads(s)["expires_at_us"] <= now_us]
            if not expired:
                continue
            for key, _ in expired:
                self.store.enforcement_drop(scope, key)
            stype, _, svalue = scope.partition(":")
            last = expired[-1][1]
            out.append(self._effective(scope, f"rollover:{last['alert_id']}", now, stype, svalue,
                                       resume_reason="the budget period rolled over"))
        return out

    def _effective(self, scope: str, cause_id: str, issued_at: datetime, scope_type: str, scope_value: str,
                   *, resume_reason: str | None = None) -> ControlCommand:
        active = self.store.enforcement_active(scope)
        if active:
            spec = EnforcementSpec(**json.loads(active[0][2]))
            expires = spec.expires_at()
            if expires is not None and expires <= issued_at:
                expires = None  # cannot expire before it is issued; tick() will resume the scope
            cmd = ControlCommand(
                command_id=str(uuid.uuid5(_COMMAND_NS, f"{cause_id}|{scope}|{spec.action}|{spec.alert_id}")),
                scope_type=spec.scope_type, scope_value=spec.scope_value, action=spec.action,
                rate_per_minute=spec.rate_per_minute, target_model=spec.target_model, reason=spec.reason,
                issued_by=self.issued_by, issued_at=issued_at, expires_at=expires, policy_id=spec.policy_id,
                key_id="", signature="")
        else:
            cmd = ControlCommand(
                command_id=str(uuid.uuid5(_COMMAND_NS, f"{cause_id}|{scope}|resume")),
                scope_type=scope_type, scope_value=scope_value, action="resume",  # type: ignore[arg-type]
                reason=f"resumed: {resume_reason or 'no enforcement left on this scope'}",
                issued_by=self.issued_by, issued_at=issued_at, key_id="", signature="")
        return sign(cmd, self.key_id, self.secret)
