"""ClickHouse writers of the alert worker: the delivery log (``alert_deliveries``) and the control audit
(``control_commands``), through a client of :mod:`finops.clickhouse`.

Both buffer rows in memory (lanes append from their threads) and are flushed by the worker's consumer thread, so
one thread talks to ClickHouse (the chdb engine is one process' embedded state). Rows carry the destination's
*name*, never its URL or key; errors were scrubbed by :mod:`alerting.delivery` before they got here.

Durability: these are logs, not the truth. The outbox decides what is delivered; a crash before a flush loses the
buffered log rows of the last moments (the audit follower re-reads the control topic from its committed offset, so
audit rows are rewritten, not lost: it commits only after a flush). Both tables are ReplacingMergeTree on their
natural ids, so a rewritten row collapses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from alerting.delivery import AttemptRecord
from schemas.errors import FinopsError
from schemas.models import ControlCommand

__all__ = ["AUDIT_COLUMNS", "ControlAuditLog", "DELIVERY_COLUMNS", "DeliveryLog", "DeliveryLogError"]

log = logging.getLogger(__name__)

DELIVERY_COLUMNS = ("alert_id", "channel", "destination_name", "attempt", "status", "http_status", "error",
                    "delivered_at")
AUDIT_COLUMNS = ("command_id", "scope_type", "scope_value", "action", "rate_per_minute", "target_model", "reason",
                 "issued_by", "issued_at", "expires_at", "policy_id", "key_id", "signature", "received_at",
                 "verified")


class DeliveryLogError(FinopsError):
    """ClickHouse refused the log rows; the message names the table."""


class _Buffered:
    table = ""
    columns: tuple[str, ...] = ()

    def __init__(self, client: Any, database: str) -> None:
        self._client = client
        self._database = database
        self._rows: list[list[Any]] = []
        self._lock = threading.Lock()

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def _append(self, row: list[Any]) -> None:
        with self._lock:
            self._rows.append(row)

    def flush(self) -> int:
        """Insert the buffered rows; returns how many. On failure the rows stay buffered and
        :class:`DeliveryLogError` is raised (the caller retries on its next flush)."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self._client.insert(self.table, rows, column_names=list(self.columns), database=self._database)
        except Exception as err:  # clickhouse-connect raises its own hierarchy; translate at the boundary
            with self._lock:
                self._rows[:0] = rows
            raise DeliveryLogError(f"cannot write {len(rows)} rows to {self._database}.{self.table}: "
                                   f"{type(err).__name__}: {err}") from err
        return len(rows)


class DeliveryLog(_Buffered):
    """One ``alert_deliveries`` row per attempt and destination."""

    table = "alert_deliveries"
    columns = DELIVERY_COLUMNS

    def record(self, attempt: AttemptRecord) -> None:
        self._append([attempt.alert_id, attempt.channel, attempt.destination_name, attempt.attempt, attempt.status,
                      attempt.http_status, attempt.error, attempt.finished_at])

    def record_skip(self, alert_id: str, channel: str, destination_name: str, reason: str, at: datetime) -> None:
        """An item the outbox skipped (cooldown, resolve without trigger): attempt 0, status ``skipped``."""
        self._append([alert_id, channel, destination_name, 0, "skipped", None, reason, at])


class ControlAuditLog(_Buffered):
    """One ``control_commands`` row per command seen on the control topic, with whether its signature verified."""

    table = "control_commands"
    columns = AUDIT_COLUMNS

    def record(self, cmd: ControlCommand, *, received_at: datetime, verified: bool) -> None:
        self._append([cmd.command_id, cmd.scope_type, cmd.scope_value, cmd.action, cmd.rate_per_minute,
                      cmd.target_model, cmd.reason, cmd.issued_by, cmd.issued_at, cmd.expires_at, cmd.policy_id,
                      cmd.key_id, cmd.signature, received_at, verified])

    def record_many(self, cmds: Sequence[tuple[ControlCommand, bool]], received_at: datetime) -> None:
        for cmd, verified in cmds:
            self.record(cmd, received_at=received_at, verified=verified)
