"""Agent registry and the approval of costly agent deployments.

Role: agents are registered with an owner, a team and an expected monthly cost (:func:`request_agent`); one at or
above the policy's ``threshold_usd`` needs a team lead's approval (:func:`approve_agent`), and ``finops agent
check`` raises an ``approval`` alert, optionally with a ``throttle`` action, for each active agent that needs
approval and lacks it (:func:`find_unapproved`).

Guarantee: state lives in ``agent_registry`` (latest version per agent, read with FINAL) and every action is
appended to ``agent_approvals`` (the audit); versions come from the injected clock, bumped past the stored version,
so a decision is never lost to clock skew.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from governance.config import ApprovalPolicy
from governance.period import DAYS_PER_MONTH
from governance.store import qualified
from schemas.errors import FinopsError

__all__ = [
    "ApprovalError",
    "RegistryEntry",
    "UnapprovedAgent",
    "approve_agent",
    "build_unapproved_alerts",
    "find_unapproved",
    "list_agents",
    "request_agent",
]

_COLUMNS = ("agent_id", "team", "owner", "expected_monthly_cost_usd", "status", "requested_by", "requested_at",
            "decided_by", "decided_at", "note", "version")


class ApprovalError(FinopsError):
    """A registry action was refused (unknown agent, approver not a lead of the team, bad input)."""


@dataclass(frozen=True)
class RegistryEntry:
    agent_id: str
    team: str
    owner: str
    expected_monthly_cost_usd: Decimal
    status: str
    requested_by: str
    requested_at: datetime
    decided_by: str
    decided_at: datetime | None
    note: str
    version: int


@dataclass(frozen=True)
class UnapprovedAgent:
    """An agent that emitted events without the approval it needs."""

    agent_id: str
    team: str
    status: str  # requested, rejected or unregistered
    spend_usd: Decimal
    projected_monthly_usd: Decimal
    expected_monthly_cost_usd: Decimal | None
    calls: int
    reason: str


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def get_agent(client: Any, database: str, agent_id: str) -> RegistryEntry | None:
    rows = client.query(
        f"SELECT {', '.join(_COLUMNS)} FROM {qualified(database, 'agent_registry')} FINAL "
        "WHERE agent_id = {agent:String}", parameters={"agent": agent_id},
    ).result_rows
    return _entry(rows[0]) if rows else None


def _entry(row: Any) -> RegistryEntry:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["expected_monthly_cost_usd"] = Decimal(values["expected_monthly_cost_usd"])
    values["version"] = int(values["version"])
    return RegistryEntry(**values)


def list_agents(client: Any, database: str, *, team: str | None = None, status: str | None = None) -> list[
    RegistryEntry
]:
    """Registered agents (latest state), optionally of one team and/or status."""
    rows = client.query(
        f"SELECT {', '.join(_COLUMNS)} FROM {qualified(database, 'agent_registry')} FINAL "
        "WHERE ({team:String} = '' OR team = {team:String}) AND ({status:String} = '' OR status = {status:String}) "
        "ORDER BY team, agent_id",
        parameters={"team": team or "", "status": status or ""},
    ).result_rows
    return [_entry(r) for r in rows]


def _write(client: Any, database: str, entry: RegistryEntry, action: str, actor: str, at: datetime) -> None:
    db = qualified(database, "agent_registry").split(".")[0]
    client.insert("agent_registry", [[getattr(entry, c) for c in _COLUMNS]], column_names=list(_COLUMNS), database=db)
    client.insert(
        "agent_approvals",
        [[entry.agent_id, action, actor, entry.team, entry.expected_monthly_cost_usd, entry.note, at]],
        column_names=["agent_id", "action", "actor", "team", "expected_monthly_cost_usd", "note", "at"], database=db,
    )


def request_agent(client: Any, database: str, *, agent_id: str, team: str, owner: str, expected_monthly_cost_usd:
                  Decimal, requested_by: str, policy: ApprovalPolicy, now: datetime, note: str = "") -> RegistryEntry:
    """Register (or re-register) an agent. Below the policy threshold it is approved at once; at or above it waits
    for a team lead (status ``requested``). Writes the registry and the audit; raises ApprovalError for bad input."""
    if not agent_id.strip() or not team.strip() or not owner.strip():
        raise ApprovalError("agent, team and owner must not be empty")
    if expected_monthly_cost_usd < 0:
        raise ApprovalError("the expected monthly cost must not be negative")
    previous = get_agent(client, database, agent_id)
    version = max(_us(now), previous.version + 1 if previous else 0)
    needs = expected_monthly_cost_usd >= policy.threshold_usd
    entry = RegistryEntry(
        agent_id=agent_id, team=team, owner=owner, expected_monthly_cost_usd=expected_monthly_cost_usd,
        status="requested" if needs else "approved", requested_by=requested_by, requested_at=now,
        decided_by="" if needs else "auto: below the approval threshold", decided_at=None if needs else now,
        note=note, version=version,
    )
    _write(client, database, entry, "request", requested_by, now)
    return entry


def approve_agent(client: Any, database: str, *, agent_id: str, approver: str, policy: ApprovalPolicy,
                  now: datetime, reject: bool = False, note: str = "") -> RegistryEntry:
    """Approve (or reject) a registered agent. Only a lead of the agent's team (or a ``*`` approver) may decide.
    Raises ApprovalError naming who may approve."""
    entry = get_agent(client, database, agent_id)
    if entry is None:
        raise ApprovalError(f"agent {agent_id} is not registered: `finops agent request` it first")
    allowed = policy.approvers(entry.team)
    if approver not in allowed:
        raise ApprovalError(
            f"{approver} may not approve agents of team {entry.team}; "
            f"approvers: {', '.join(allowed) or 'none configured'}"
            " (approval.team_leads in the governance config: `--config FILE` or FINOPS_GOVERNANCE_CONFIG, as in "
            "infra/governance.example.yaml)")
    decided = RegistryEntry(
        agent_id=entry.agent_id, team=entry.team, owner=entry.owner,
        expected_monthly_cost_usd=entry.expected_monthly_cost_usd, status="rejected" if reject else "approved",
        requested_by=entry.requested_by, requested_at=entry.requested_at, decided_by=approver, decided_at=now,
        note=note or entry.note, version=max(_us(now), entry.version + 1),
    )
    _write(client, database, decided, "reject" if reject else "approve", approver, now)
    return decided


def find_unapproved(client: Any, database: str, policy: ApprovalPolicy, *, now: datetime,
                    window: timedelta = timedelta(hours=24)) -> list[UnapprovedAgent]:
    """Agents with events in ``[now - window, now)`` that need approval and lack it.

    That is: registered but still requested or rejected, or not registered at all while the observed spend,
    projected to a month, reaches ``threshold_usd`` (approvers are ``approval.team_leads`` in governance.yaml; ``*``
    lists approvers for every team; cheaper agents are approved on request). With ``on_unapproved: throttle`` the
    alert also carries the ``throttle`` action (and the rate), which the enforcement ladder turns into a signed
    control command that the agent's SDK guard obeys."""
    rows = client.query(
        "SELECT l.agent_id, any(l.team), sum(l.cost_usd), countIf(l.row_kind = 'original'), "
        "any(r.status), any(r.expected_monthly_cost_usd), any(r.agent_id) != '' "
        f"FROM {qualified(database, 'usage_ledger')} AS l FINAL "
        f"LEFT JOIN (SELECT agent_id, status, expected_monthly_cost_usd FROM {qualified(database, 'agent_registry')} "
        "FINAL) AS r ON r.agent_id = l.agent_id "
        "WHERE l.occurred_at >= {lo:DateTime64(6, 'UTC')} AND l.occurred_at < {hi:DateTime64(6, 'UTC')} "
        "GROUP BY l.agent_id ORDER BY l.agent_id SETTINGS join_use_nulls = 0",
        parameters={"lo": now - window, "hi": now},
    ).result_rows
    scale = DAYS_PER_MONTH * Decimal(86_400) / Decimal(int(window.total_seconds()))
    out: list[UnapprovedAgent] = []
    for agent_id, team, spend, calls, status, expected, registered in rows:
        spend_usd = Decimal(spend)
        projected = (spend_usd * scale).quantize(Decimal("0.01"))
        if registered:
            expected_usd = Decimal(expected)
            if status == "approved" or expected_usd < policy.threshold_usd and projected < policy.threshold_usd:
                continue
            reason = (f"registered with expected {expected_usd} USD/month but {status}, not approved"
                      if expected_usd >= policy.threshold_usd else
                      f"registered below the threshold but spending at {projected} USD/month, still {status}")
            out.append(UnapprovedAgent(str(agent_id), str(team), str(status), spend_usd, projected, expected_usd,
                                       int(calls), reason))
        elif projected >= policy.threshold_usd:
            out.append(UnapprovedAgent(str(agent_id), str(team), "unregistered", spend_usd, projected, None,
                                       int(calls), f"not registered and spending at {projected} USD/month"))
    return out


def build_unapproved_alerts(found: list[UnapprovedAgent], policy: ApprovalPolicy, *, now: datetime) -> list[
    dict[str, Any]
]:
    """``approval`` Alerts (Avro dicts for finops.alerts.v1), one per agent and UTC day (the dedup key), so the
    alerting service notifies once a day per agent, not on every check. Pure."""
    day = now.astimezone(UTC).date().isoformat()
    alerts = []
    for agent in found:
        dedup_key = f"approval:agent:{agent.agent_id}:unapproved:{day}"
        actions = ["notify", "throttle"] if policy.on_unapproved == "throttle" else ["notify"]
        details = {"status": agent.status, "calls": str(agent.calls), "spend_usd": str(agent.spend_usd),
                   "projected_monthly_usd": str(agent.projected_monthly_usd),
                   "threshold_usd": str(policy.threshold_usd),
                   "approvers": ", ".join(policy.approvers(agent.team))}
        if "throttle" in actions:
            details["throttle_rate_per_minute"] = str(policy.throttle_rate_per_minute)
        alerts.append({
            "alert_id": str(uuid.UUID(hashlib.sha256(f"{dedup_key}@{now.isoformat()}".encode()).hexdigest()[:32])),
            "dedup_key": dedup_key,
            "kind": "approval",
            "severity": "warning",
            "state": "trigger",
            "occurred_at": now,
            "team": agent.team,
            "project": None,
            "agent_id": agent.agent_id,
            "policy_id": None,
            "model": None,
            "title": f"Unapproved agent {agent.agent_id} ({agent.team}) is running",
            "summary": (f"{agent.agent_id} {agent.reason}. Approval is needed from {agent.team}'s team lead: "
                        f"`finops agent request` then `finops agent approve --agent {agent.agent_id} --by <lead>`."),
            "amount_usd": agent.projected_monthly_usd,
            "limit_usd": policy.threshold_usd,
            "details": details,
            "actions": actions,
        })
    return alerts
