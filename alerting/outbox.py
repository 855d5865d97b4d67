"""The durable outbox: one SQLite file holding what must be delivered, what was, and the per-key state.

Role: one worker's private delivery bookkeeping (row-level updates and an ordered "next pending per destination"
query, which a compacted topic would not give); the alert topic stays the shared truth. It also keeps the
broken-destination flags and the enforcement ledger of :mod:`alerting.enforcement`.

Guarantee (the worker commits a Kafka offset only after :meth:`Outbox.enqueue` returned; details on
:class:`Outbox`): an alert routed to a destination is never lost, never resent after a recorded delivery, delivered
in order per destination, and notified at most once per key per cooldown window (DESIGN §5).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alerting.channels import alert_to_json
from schemas.errors import FinopsError
from schemas.models import Alert, to_micros

__all__ = ["EnqueueResult", "Outbox", "OutboxError", "OutboxItem"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    state TEXT NOT NULL,
    occurred_at_us INTEGER NOT NULL,
    alert_json TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    UNIQUE (alert_id, destination)
);
CREATE INDEX IF NOT EXISTS items_pending ON items (destination, status, seq);
CREATE TABLE IF NOT EXISTS key_state (
    destination TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    last_state TEXT NOT NULL,
    last_occurred_us INTEGER NOT NULL,
    PRIMARY KEY (destination, dedup_key)
);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    broken_reason TEXT
);
CREATE TABLE IF NOT EXISTS enforcement (
    scope TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    rank INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    PRIMARY KEY (scope, dedup_key)
);
"""

ItemStatus = Literal["pending", "sent", "skipped"]


class OutboxError(FinopsError):
    """The outbox file cannot be opened or written (disk full, permissions, corruption)."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    alert_id: str
    destination: str
    dedup_key: str
    state: str
    status: str
    attempts: int
    reason: str | None
    alert_json: str

    def alert(self) -> Alert:
        return Alert.model_validate(json.loads(self.alert_json))

    @property
    def delivery_id(self) -> str:
        """Stable across retries and restarts: what a receiver dedupes on."""
        return f"{self.alert_id}:{self.destination}"


@dataclass(frozen=True)
class EnqueueResult:
    destination: str
    status: ItemStatus | Literal["duplicate"]
    reason: str | None = None


class Outbox:
    """Thread-safe (one connection behind a lock; lanes and the consumer share it). ``changed`` is notified on every
    enqueue so idle lanes wake at once.

    SQLite in WAL mode with ``synchronous=FULL`` makes each transaction durable at commit and needs no second
    consumer. Guarantees:

    - Never lost: an alert routed to a destination is a ``pending`` row before its offset is committed; it stays
      pending through retries, restarts and a broken destination, until it is ``sent`` (or ``skipped`` by design).
    - Never resent after delivery: rows are unique on ``(alert_id, destination)``, so an alert consumed again after a
      crash is ignored and a ``sent`` row is never picked again. The one window left is a crash after the HTTP 2xx
      and before :meth:`mark_sent` commits: that item is sent again on restart (PagerDuty collapses it by
      ``dedup_key``, webhook receivers by ``X-Finops-Delivery``).
    - Order: per destination, rows are delivered in ``seq`` order (consumption order, which is per-key order since
      the alert topic is keyed by dedup_key).
    - Cooldown per key, decided at enqueue time from the alerts' own ``occurred_at`` so a replay decides the same: a
      trigger is ``skipped`` while the key's last accepted trigger on that destination is younger than the cooldown;
      a resolve is ``skipped`` when nothing is open for the key on that destination.

    Broken-destination flags carry a fingerprint of the destination's secrets: rotating the URL or key clears the
    flag at the next start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise OutboxError(f"cannot open the alert outbox {path}: {err}; check the path and free space") from err
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------------ enqueue

    def enqueue(self, batch: Iterable[tuple[Alert, Sequence[str]]], *, cooldown_s: float) -> list[EnqueueResult]:
        """Record each alert for each of its destinations, in one durable transaction; return what happened per
        (alert, destination) in order. Idempotent: an (alert_id, destination) already present is ``duplicate``.
        Raises :class:`OutboxError` when the write fails (then nothing of the batch is written)."""
        cooldown_us = int(cooldown_s * 1_000_000)
        results: list[EnqueueResult] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for alert, destinations in batch:
                    text = json.dumps(alert_to_json(alert), sort_keys=True)
                    occurred = to_micros(alert.occurred_at)
                    for dest in destinations:
                        results.append(self._enqueue_one(alert, dest, text, occurred, cooldown_us))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise OutboxError(f"cannot write the alert outbox {self.path}: {err}") from err
            except BaseException:
                self._rollback()
                raise
            self.changed.notify_all()
        return results

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _enqueue_one(self, alert: Alert, dest: str, text: str, occurred: int, cooldown_us: int) -> EnqueueResult:
        if self._db.execute("SELECT 1 FROM items WHERE alert_id = ? AND destination = ?",
                            (alert.alert_id, dest)).fetchone():
            return EnqueueResult(dest, "duplicate")
        row = self._db.execute("SELECT last_state, last_occurred_us FROM key_state WHERE destination = ? AND "
                               "dedup_key = ?", (dest, alert.dedup_key)).fetchone()
        status: ItemStatus = "pending"
        reason: str | None = None
        if alert.state == "trigger":
            if row is not None and row[0] == "trigger" and occurred - row[1] < cooldown_us:
                status, reason = "skipped", "cooldown: this key was notified less than the cooldown ago"
        elif row is None or row[0] != "trigger":
            status, reason = "skipped", "resolve without an open trigger on this destination"
        self._db.execute(
            "INSERT INTO items (alert_id, destination, dedup_key, state, occurred_at_us, alert_json, status, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (alert.alert_id, dest, alert.dedup_key, alert.state, occurred, text, status, reason))
        if status == "pending":
            self._db.execute(
                "INSERT INTO key_state (destination, dedup_key, last_state, last_occurred_us) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (destination, dedup_key) DO UPDATE SET last_state = excluded.last_state, "
                "last_occurred_us = excluded.last_occurred_us",
                (dest, alert.dedup_key, alert.state, occurred))
        return EnqueueResult(dest, status, reason)

    # ------------------------------------------------------------------------------------------------ lanes

    def next_pending(self, destination: str) -> OutboxItem | None:
        """The oldest pending item of ``destination`` (the lane's head), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, alert_id, destination, dedup_key, state, status, attempts, reason, alert_json "
                "FROM items WHERE destination = ? AND status = 'pending' ORDER BY seq LIMIT 1",
                (destination,)).fetchone()
        return OutboxItem(*row) if row else None

    def mark_sent(self, seq: int, attempts: int) -> None:
        self._update(seq, "sent", attempts, None)

    def record_failure(self, seq: int, attempts: int, reason: str) -> None:
        """Keep the item pending, remembering attempts and the (scrubbed) last error."""
        self._update(seq, "pending", attempts, reason)

    def _update(self, seq: int, status: str, attempts: int, reason: str | None) -> None:
        with self._lock:
            try:
                self._db.execute("UPDATE items SET status = ?, attempts = ?, reason = ? WHERE seq = ?",
                                 (status, attempts, reason, seq))
            except sqlite3.Error as err:
                raise OutboxError(f"cannot update the alert outbox {self.path}: {err}") from err

    def items(self, destination: str | None = None) -> list[OutboxItem]:
        """Every item (optionally of one destination) in seq order: for status displays and tests."""
        query = ("SELECT seq, alert_id, destination, dedup_key, state, status, attempts, reason, alert_json "
                 "FROM items")
        args: tuple[str, ...] = ()
        if destination is not None:
            query += " WHERE destination = ?"
            args = (destination,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [OutboxItem(*row) for row in rows]

    # ------------------------------------------------------------------------------------------------ destinations

    def sync_destinations(self, fingerprints: dict[str, str]) -> list[str]:
        """Record the configured destinations' fingerprints; a broken flag whose fingerprint changed (URL or key
        rotated) is cleared. Returns the names still broken."""
        with self._lock:
            for name, fp in fingerprints.items():
                row = self._db.execute("SELECT fingerprint FROM destinations WHERE name = ?", (name,)).fetchone()
                if row is None:
                    self._db.execute("INSERT INTO destinations (name, fingerprint) VALUES (?, ?)", (name, fp))
                elif row[0] != fp:
                    self._db.execute("UPDATE destinations SET fingerprint = ?, broken_reason = NULL WHERE name = ?",
                                     (fp, name))
        return sorted(self.broken())

    def mark_broken(self, name: str, fingerprint: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO destinations (name, fingerprint, broken_reason) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET fingerprint = excluded.fingerprint, broken_reason = excluded.broken_reason",
                (name, fingerprint, reason))

    def broken(self) -> dict[str, str]:
        """Broken destination name -> reason."""
        with self._lock:
            rows = self._db.execute("SELECT name, broken_reason FROM destinations WHERE broken_reason IS NOT NULL")
            return {name: reason for name, reason in rows.fetchall()}

    # ------------------------------------------------------------------------------------------------ enforcement

    def enforcement_put(self, scope: str, dedup_key: str, rank: int, spec_json: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO enforcement (scope, dedup_key, rank, spec_json) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (scope, dedup_key) DO UPDATE SET rank = excluded.rank, spec_json = excluded.spec_json",
                (scope, dedup_key, rank, spec_json))

    def enforcement_drop(self, scope: str, dedup_key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM enforcement WHERE scope = ? AND dedup_key = ?", (scope, dedup_key))

    def enforcement_active(self, scope: str) -> list[tuple[str, int, str]]:
        """(dedup_key, rank, spec_json) of the enforcements active on ``scope``, strongest first."""
        with self._lock:
            rows = self._db.execute("SELECT dedup_key, rank, spec_json FROM enforcement WHERE scope = ? "
                                    "ORDER BY rank DESC, dedup_key", (scope,)).fetchall()
        return [(r[0], int(r[1]), r[2]) for r in rows]

    def enforcement_scopes(self) -> set[str]:
        """Scopes with at least one active enforcement step."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT DISTINCT scope FROM enforcement").fetchall()}
