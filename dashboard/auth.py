"""Tokens, roles and the caller's scope.

Role: a token is ``fo_<token_id>_<secret>`` (:class:`TokenStore` issues, revokes, lists and checks them); a role
(developer, team_lead, operator, finops_admin; DESIGN §7) says what a caller may do (:func:`role_allows`), and every
read is additionally filtered by the caller's :class:`Scope`.

Guarantee: only ``sha256(secret)`` is stored, so neither the table nor the audit ever holds a usable token;
comparison is constant-time after a look-up by the public ``token_id``, so hashes cannot be probed through timing;
revocation is checked on every request (no cache). README, "Dashboard and API".
"""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from finops import tokens as _tokens
from finops.tokens import compute_token_hash
from schemas.errors import FinopsError

__all__ = [
    "ACTIONS",
    "ROLES",
    "AccessError",
    "AuthenticationError",
    "PermissionDeniedError",
    "Principal",
    "Role",
    "Scope",
    "TokenRecord",
    "TokenStore",
    "compute_token_hash",
    "format_token",
    "parse_token",
    "role_allows",
]

Role = Literal["developer", "team_lead", "operator", "finops_admin"]
ROLES: tuple[Role, ...] = ("developer", "team_lead", "operator", "finops_admin")

Action = Literal["read", "budget.write", "approval.decide", "control.issue", "bills.read", "admin"]
ACTIONS: tuple[Action, ...] = ("read", "budget.write", "approval.decide", "control.issue", "bills.read", "admin")

# The permission matrix, written once. finops_admin is not listed per action: it may do everything.
_ALLOWED: Mapping[Action, frozenset[Role]] = {
    "read": frozenset(ROLES),
    "budget.write": frozenset({"team_lead", "finops_admin"}),
    "approval.decide": frozenset({"team_lead", "finops_admin"}),
    "control.issue": frozenset({"operator", "finops_admin"}),
    # the provider bill next to the ledger: team leads see their teams' projects (the scope filter), admins all
    "bills.read": frozenset({"team_lead", "finops_admin"}),
    "admin": frozenset({"finops_admin"}),
}

ALL_TEAMS = "*"
_PREFIX = "fo"
_NAME_RE = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")


class AccessError(FinopsError):
    """Base of the access errors; ``status`` is the HTTP status the API answers with."""

    status = 403


class AuthenticationError(AccessError):
    """No token, a malformed token, an unknown token or a revoked one (HTTP 401). The message never says which,
    so a caller cannot tell a revoked token from a guessed one."""

    status = 401


class PermissionDeniedError(AccessError):
    """The caller's role may not do this, or the target is outside their teams (HTTP 403)."""

    status = 403


def role_allows(role: str, action: Action) -> bool:
    """Whether ``role`` may perform ``action`` (pure; unknown roles may do nothing).

    ================  ====================================================================================
    developer         read their teams (optionally narrowed to projects)
    team_lead         read their teams; put budgets for them; decide approvals in them; bill vs ledger of
                      their projects
    operator          read their teams; issue control commands (throttle, downgrade, suspend, resume) in them
    finops_admin      everything: every team, policies, approvals, control, reports, tokens, the audit
    ================  ====================================================================================
    """
    return role in _ALLOWED.get(action, frozenset())


@dataclass(frozen=True)
class Scope:
    """What the caller may see: every team (admins, ``teams=['*']``) or a list of teams, optionally narrowed to
    projects. :meth:`params` turns it into the query parameters every scoped SQL statement binds."""

    all_teams: bool
    teams: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()

    def params(self) -> dict[str, Any]:
        """``scope_all`` (UInt8), ``scope_teams`` and ``scope_projects`` (Array(String)) for server-side binding."""
        return {
            "scope_all": 1 if self.all_teams else 0,
            "scope_teams": list(self.teams),
            "scope_projects": list(self.projects),
        }

    def covers(self, team: str, project: str | None = None) -> bool:
        """Whether a row of ``team`` (and ``project``, when given) is visible (pure; mirrors the SQL filter)."""
        if self.all_teams:
            return True
        if team not in self.teams:
            return False
        return project is None or not self.projects or project in self.projects


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    token_id: str
    subject: str
    role: Role
    teams: tuple[str, ...]
    projects: tuple[str, ...] = ()

    @property
    def scope(self) -> Scope:
        if self.role == "finops_admin" or ALL_TEAMS in self.teams:
            return Scope(all_teams=True)
        return Scope(all_teams=False, teams=self.teams, projects=self.projects)

    def require(self, action: Action) -> None:
        """Raise :class:`PermissionDeniedError` unless the role allows ``action``."""
        if not role_allows(self.role, action):
            raise PermissionDeniedError(f"role {self.role} may not {action}")

    def as_json(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id, "subject": self.subject, "role": self.role,
            "teams": list(self.teams), "projects": list(self.projects), "all_teams": self.scope.all_teams,
            "may": [action for action in ACTIONS if role_allows(self.role, action)],
        }


# ---- token text (pure) ------------------------------------------------------------------------------------------
# The token text and its hashing live in the ground layer (finops.tokens), shared with the intake receiver.
def format_token(token_id: str, secret: str) -> str:
    return _tokens.format_token(token_id, secret, _PREFIX)


def parse_token(token: str) -> tuple[str, str]:
    """Split a presented token into ``(token_id, secret)``; raise :class:`AuthenticationError` if malformed."""
    try:
        return _tokens.parse_token(token, _PREFIX)
    except _tokens.TokenTextError:
        raise AuthenticationError("invalid or revoked token") from None


def _check_names(values: Iterable[str], what: str) -> tuple[str, ...]:
    out = tuple(v.strip() for v in values if v.strip())
    for value in out:
        if value != ALL_TEAMS and not _NAME_RE.fullmatch(value):
            raise AccessError(f"invalid {what} name {value!r}: letters, digits and _ . : @ / - (at most 128)")
    return out


# ---- storage ----------------------------------------------------------------------------------------------------
class QueryRunner(Protocol):
    """What the token store needs from the ClickHouse access layer (``dashboard.store.Store``)."""

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


@dataclass(frozen=True)
class TokenRecord:
    """A stored token as listed (no secret, no hash)."""

    token_id: str
    role: str
    teams: tuple[str, ...]
    projects: tuple[str, ...]
    subject: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id, "role": self.role, "teams": list(self.teams), "projects": list(self.projects),
            "subject": self.subject, "created_at": self.created_at, "created_by": self.created_by,
            "revoked_at": self.revoked_at,
        }


_TOKEN_COLUMNS = "token_id, token_hash, role, teams, projects, subject, created_at, created_by, revoked_at"


@dataclass
class TokenStore:
    """Issues, revokes, lists and checks tokens in ``api_tokens`` (through a :class:`QueryRunner`).

    ``token_id`` (12 hex digits) is public and the table's key; ``secret`` is 32 random bytes (url-safe base64) of
    which only ``sha256(secret)`` is stored (``api_tokens.token_hash``). Looking the row up by ``token_id`` and then
    comparing hashes in constant time means an attacker cannot probe hashes through timing of the lookup.
    Revocation is checked on every request: the look-up is a key read of a small table (FINAL over one ORDER BY
    key), cheap next to the dashboard's aggregate queries.
    """

    runner: QueryRunner
    _random: Any = field(default=secrets, repr=False)

    def issue(
        self,
        role: str,
        teams: Sequence[str],
        *,
        subject: str,
        created_by: str,
        now: datetime,
        projects: Sequence[str] = (),
    ) -> tuple[str, TokenRecord]:
        """Store a new token and return ``(token_text, record)``. The token text is shown once and never stored.

        Raises :class:`AccessError` for an unknown role, a missing team (every role but finops_admin needs one) or
        invalid names. Commits: one row in ``api_tokens``.
        """
        if role not in ROLES:
            raise AccessError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        team_list = _check_names(teams, "team")
        project_list = _check_names(projects, "project")
        if not team_list and role != "finops_admin":
            raise AccessError(f"a {role} token needs at least one --team (or --team '*' for every team)")
        subject = subject.strip()
        if not subject:
            raise AccessError("a token needs a subject (who holds it)")
        token_id = self._random.token_hex(6)
        secret = self._random.token_urlsafe(32)
        record = TokenRecord(token_id, role, team_list, project_list, subject, now, created_by)
        self.runner.insert("api_tokens", [{
            "token_id": token_id, "token_hash": compute_token_hash(secret), "role": role,
            "teams": list(team_list), "projects": list(project_list), "subject": subject,
            "created_at": now, "created_by": created_by, "revoked_at": None, "updated_at": now,
        }])
        return format_token(token_id, secret), record

    def _row(self, token_id: str) -> dict[str, Any] | None:
        rows = self.runner.select(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens FINAL WHERE token_id = {{token_id:String}} LIMIT 1",
            {"token_id": token_id},
        )
        return rows[0] if rows else None

    def revoke(self, token_id: str, *, now: datetime) -> bool:
        """Mark ``token_id`` revoked (a new row version). False if it does not exist or was already revoked."""
        row = self._row(token_id)
        if row is None or row["revoked_at"] is not None:
            return False
        updated = dict(row)
        updated["revoked_at"] = now
        updated["updated_at"] = now
        self.runner.insert("api_tokens", [updated])
        return True

    def list(self) -> list[TokenRecord]:
        rows = self.runner.select(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens FINAL ORDER BY created_at, token_id")
        return [_record(row) for row in rows]

    def authenticate(self, token: str) -> Principal:
        """The :class:`Principal` for a presented token; :class:`AuthenticationError` if it is malformed, unknown,
        wrong or revoked (one message for all, so none can be told apart)."""
        token_id, secret = parse_token(token)
        row = self._row(token_id)
        presented = compute_token_hash(secret)
        stored = str(row["token_hash"]) if row is not None else "0" * 64
        if not hmac.compare_digest(presented.encode(), stored.encode()) or row is None or row["revoked_at"] is not None:
            raise AuthenticationError("invalid or revoked token")
        role = str(row["role"])
        if role not in ROLES:
            raise AuthenticationError("invalid or revoked token")
        return Principal(
            token_id=token_id, subject=str(row["subject"]), role=role,
            teams=tuple(row["teams"]), projects=tuple(row["projects"]),
        )


def _record(row: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        token_id=str(row["token_id"]), role=str(row["role"]), teams=tuple(row["teams"]),
        projects=tuple(row["projects"]), subject=str(row["subject"]), created_at=row["created_at"],
        created_by=str(row["created_by"]), revoked_at=row["revoked_at"],
    )


def audit_row(
    principal: Principal | None, action: str, target: str, outcome: str, details: str, now: datetime,
    *, actor: str | None = None,
) -> dict[str, Any]:
    """One ``admin_audit`` row (pure). ``details`` is JSON text without secrets."""
    return {
        "audit_id": str(uuid.uuid4()),
        "at": now,
        "actor": actor if actor is not None else (principal.subject if principal else "anonymous"),
        "actor_token_id": principal.token_id if principal else "",
        "role": principal.role if principal else "cli",
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": details,
    }
