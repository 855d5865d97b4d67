"""Ledger rows built the way the hot path builds them: a usage event priced by :class:`finops.pricing.engine.Pricer`
and mapped onto the ``usage_ledger`` columns (:data:`finops.tables.LEDGER_COLUMNS`), plus the re-rating correction
row of :mod:`governance.reprice`.

Why here: re-rating must price exactly as the stream does, and the reports' tests need fleets "replayed with known
prices" into a ledger without running Kafka. Both use :func:`compute_priced_row`; the sink stays the only writer
of *original* rows in production (nothing in the product calls :func:`insert_ledger_rows` for originals).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from finops.pricing.engine import Pricer, PriceResult
from finops.tables import LEDGER_COLUMNS
from governance.store import qualified
from schemas.loader import COUNTED_FIELDS

__all__ = [
    "COST_PARTS",
    "CORRECTION_COLUMNS",
    "TOKEN_FIELDS",
    "compute_priced_row",
    "insert_ledger_rows",
]

#: Count fields of the event (ledger columns); corrections carry 0 for every one of them.
TOKEN_FIELDS: tuple[str, ...] = tuple(name for name in COUNTED_FIELDS if name != "requests")
#: The cost columns; ``cost_usd`` is the sum of the other five.
COST_PARTS: tuple[str, ...] = (
    "cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd", "cost_cache_write_usd", "cost_other_usd",
)
#: Columns of a row written by governance (the ledger's plus the two it defaults for the sink).
CORRECTION_COLUMNS: tuple[str, ...] = (*LEDGER_COLUMNS, "row_kind", "correction_id")

_EVENT_DEFAULTS: dict[str, Any] = {
    **{name: 0 for name in TOKEN_FIELDS},
    "requests": 1,
    "task_id": "",
    "parent_task_id": "",
    "task_type": "",
    "environment": "",
    "attempt": 1,
    "status": "ok",
    "latency_ms": None,
    "prompt_hash": None,
    "reported_cost": None,
    "tags": {},
    "schema_version": 1,
}


def compute_priced_row(
    event: Mapping[str, Any], pricer: Pricer, *, priced_at: datetime, source_topic: str = "agent.usage.v1",
    source_partition: int = 0, source_offset: int = 0,
) -> dict[str, Any]:
    """The ``usage_ledger`` row (an ``original``) for one usage event dict, priced by ``pricer``. Pure apart from
    the pricer's caches. Raises :class:`finops.pricing.engine.InvalidUsageError` for impossible usage."""
    row: dict[str, Any] = dict(_EVENT_DEFAULTS)
    row.update({k: v for k, v in event.items() if v is not None or k in _EVENT_DEFAULTS})
    for name in ("task_id", "parent_task_id", "task_type", "environment"):
        if row.get(name) is None:
            row[name] = ""
    row["event_id"] = str(row["event_id"])
    result: PriceResult = pricer.price(row)
    row.update(result._asdict())
    row["late"] = False
    row["priced_at"] = priced_at
    row["source_topic"] = source_topic
    row["source_partition"] = source_partition
    row["source_offset"] = source_offset
    row["row_kind"] = "original"
    row["correction_id"] = ""
    return {name: row[name] for name in CORRECTION_COLUMNS}


def batch_token(rows: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic insert_deduplication_token for a batch: the same rows give the same token, so a retried
    insert is dropped by the ledger's block deduplication (infra/clickhouse/README.md)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['source']}\x00{row['event_id']}\x00{row['row_kind']}\x00{row['correction_id']}\n".encode())
    return "governance:" + digest.hexdigest()[:32]


def insert_ledger_rows(client: Any, database: str, rows: Iterable[Mapping[str, Any]], *,
                       batch_size: int = 50_000) -> int:
    """Insert ledger rows (dicts over :data:`CORRECTION_COLUMNS`) in batches, each with a deterministic dedup
    token. Returns the number of rows sent. Blocks on each insert; raises the client's error on failure (nothing
    is retried here: re-running the command is safe, see :func:`batch_token`)."""
    table = qualified(database, "usage_ledger")
    db, name = table.split(".")
    sent = 0
    batch: list[Mapping[str, Any]] = []

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        client.insert(
            name, [[row[c] for c in CORRECTION_COLUMNS] for row in batch], column_names=list(CORRECTION_COLUMNS),
            database=db, settings={"insert_deduplication_token": batch_token(batch)},
        )
        sent += len(batch)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            flush()
    flush()
    return sent


def decimal_or_zero(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)
