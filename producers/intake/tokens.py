"""Intake bearer tokens: one per source, hashed at rest, revocable, each naming a default team and project.

A token is ``fi_<token_id>_<secret>`` (:mod:`finops.tokens`: only ``sha256(secret)`` is kept, compared in constant
time; the ``fi`` prefix means a dashboard token is never an intake token and the other way round). The store is a
JSON file (default ``<data dir>/intake/tokens.json``) written atomically (temp file, fsync, rename) with mode 0600
under an exclusive lock, so ``finops intake token issue|revoke`` may run while receivers serve. A receiver re-reads
the file when its identity (inode, size, mtime) changes, checked on every request: a revocation is refused from the
next request on, with no restart. The intake role needs no ClickHouse for this, as an agent-side role should not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from finops.tokens import TokenTextError, hashes_match, new_token, parse_token
from schemas.errors import FinopsError

__all__ = ["INTAKE_TOKEN_PREFIX", "IntakeAuthError", "IntakeToken", "IntakeTokenStore"]

INTAKE_TOKEN_PREFIX = "fi"
_NAME_RE = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")
_FORMAT_VERSION = 1


class IntakeAuthError(FinopsError):
    """No token, a malformed, unknown, wrong or revoked one (HTTP 401); the message never says which."""


@dataclass(frozen=True)
class IntakeToken:
    """A stored token (never the secret). ``source`` becomes the events' ``source``; ``team`` / ``project`` are the
    attribution used when the telemetry carries none ("" = none: such calls are counted as unattributed)."""

    token_id: str
    source: str
    team: str
    project: str
    created_at: str
    created_by: str
    token_hash: str = ""
    revoked_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("token_hash")
        return out


def _check_name(value: str, what: str, *, required: bool) -> str:
    value = value.strip()
    if not value and not required:
        return ""
    if not _NAME_RE.fullmatch(value):
        raise FinopsError(f"invalid {what} {value!r}: letters, digits and _ . : @ / - (1 to 128 characters)")
    return value


class IntakeTokenStore:
    """Issue, revoke, list and check intake tokens in one JSON file (module docstring: format and guarantees)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._identity: tuple[int, int, int] | None = None
        self._by_id: dict[str, IntakeToken] = {}

    # ---- file ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, IntakeToken]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            rows = doc["tokens"]
            return {str(r["token_id"]): IntakeToken(**r) for r in rows}
        except (ValueError, KeyError, TypeError) as err:
            raise FinopsError(f"{self.path}: not an intake token file ({err}); restore it from a backup or remove "
                              "it and issue new tokens with `finops intake token issue`") from err

    def _write(self, tokens: dict[str, IntakeToken]) -> None:
        doc = {"version": _FORMAT_VERSION, "tokens": [asdict(t) for t in tokens.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps(doc, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # ---- administration -----------------------------------------------------------------------------------------
    def issue(self, source: str, *, team: str = "", project: str = "", created_by: str,
              now: datetime) -> tuple[str, IntakeToken]:
        """Store a new token and return ``(token_text, record)``; the text is shown once and never stored."""
        source = _check_name(source, "source", required=True)
        team = _check_name(team, "team", required=False)
        project = _check_name(project, "project", required=False)
        text, token_id, token_hash = new_token(INTAKE_TOKEN_PREFIX)
        record = IntakeToken(token_id=token_id, source=source, team=team, project=project,
                             created_at=now.isoformat(), created_by=created_by, token_hash=token_hash)
        with self._exclusive():
            tokens = self._read()
            tokens[token_id] = record
            self._write(tokens)
        return text, record

    def revoke(self, token_id: str, *, now: datetime) -> bool:
        """Mark ``token_id`` revoked. False if it does not exist or already was."""
        with self._exclusive():
            tokens = self._read()
            record = tokens.get(token_id)
            if record is None or record.revoked_at is not None:
                return False
            tokens[token_id] = replace(record, revoked_at=now.isoformat())
            self._write(tokens)
        return True

    def list(self) -> list[IntakeToken]:
        return sorted(self._read().values(), key=lambda t: (t.created_at, t.token_id))

    # ---- checking -----------------------------------------------------------------------------------------------
    def _current(self) -> dict[str, IntakeToken]:
        try:
            st = self.path.stat()
            identity: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            identity = None
        with self._lock:
            if identity != self._identity:
                self._by_id = self._read() if identity is not None else {}
                self._identity = identity
            return self._by_id

    def authenticate(self, authorization: str | None) -> IntakeToken:
        """The token record for an ``Authorization: Bearer fi_...`` header value; :class:`IntakeAuthError` when it is
        missing, malformed, unknown, wrong or revoked (one message for all)."""
        if not authorization:
            raise IntakeAuthError("missing bearer token")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise IntakeAuthError("invalid or revoked token")
        try:
            token_id, secret = parse_token(value, INTAKE_TOKEN_PREFIX)
        except TokenTextError:
            raise IntakeAuthError("invalid or revoked token") from None
        record = self._current().get(token_id)
        if not hashes_match(secret, record.token_hash if record is not None else None) or record is None \
                or record.revoked_at is not None:
            raise IntakeAuthError("invalid or revoked token")
        return record
