"""Helpers for ClickHouse integration tests: hand-made ledger rows and inserts.

The session-wide chdb client (``ch_client``) and the per-test migrated database (``ch_database``) live in
tests/conftest.py; this module only builds rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

LEDGER_DEFAULTS: dict[str, Any] = {
    "source": "svc",
    "agent_id": "agent-1",
    "team": "team-a",
    "project": "proj-x",
    "provider": "openai",
    "model": "gpt-4o",
    "input_tokens": 100,
    "output_tokens": 50,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "cache_write_1h_tokens": 0,
    "reasoning_tokens": 0,
    "input_audio_tokens": 0,
    "output_audio_tokens": 0,
    "cache_audio_read_tokens": 0,
    "image_tokens": 0,
    "web_search_calls": 0,
    "requests": 1,
    "task_id": "",
    "parent_task_id": "",
    "task_type": "",
    "environment": "prod",
    "attempt": 1,
    "status": "ok",
    "latency_ms": None,
    "prompt_hash": None,
    "reported_cost": None,
    "tags": {},
    "schema_version": 1,
    "cost_usd": Decimal("0"),
    "cost_input_usd": Decimal("0"),
    "cost_output_usd": Decimal("0"),
    "cost_cache_read_usd": Decimal("0"),
    "cost_cache_write_usd": Decimal("0"),
    "cost_other_usd": Decimal("0"),
    "price_input_mtok": None,
    "price_output_mtok": None,
    "price_cache_read_mtok": None,
    "price_cache_write_mtok": None,
    "price_cache_write_1h_mtok": None,
    "pricing_status": "priced",
    "unpriced_reason": None,
    "catalogue_version": "test",
    "price_book_version": None,
    "price_source": "catalogue",
    "cost_delta_usd": None,
    "cost_mismatch": False,
    "late": False,
    "source_topic": "agent.usage.v1",
    "source_partition": 0,
    "source_offset": 0,
    "row_kind": "original",
    "correction_id": "",
}


def utc(*args: int) -> datetime:
    """A timezone-aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def ledger_row(cost: str | Decimal, occurred_at: datetime, **overrides: Any) -> dict[str, Any]:
    """One ledger row with defaults; ``cost`` fills cost_usd (and cost_input_usd, so the parts sum)."""
    row = dict(LEDGER_DEFAULTS)
    row["event_id"] = str(uuid.uuid4())
    row["occurred_at"] = occurred_at
    row["priced_at"] = occurred_at
    row["cost_usd"] = Decimal(cost)
    row["cost_input_usd"] = Decimal(cost)
    row.update(overrides)
    return row


def insert_rows(
    client: Any, database: str, table: str, rows: Sequence[dict[str, Any]], token: str | None = None
) -> None:
    """Insert dict rows (all with the same keys) as one block, optionally with an insert_deduplication_token."""
    if not rows:
        return
    columns = list(rows[0])
    settings = {"insert_deduplication_token": token} if token else None
    client.insert(
        table,
        [[row[c] for c in columns] for row in rows],
        column_names=columns,
        database=database,
        settings=settings,
    )


def insert_ledger(client: Any, database: str, rows: Iterable[dict[str, Any]], token: str | None = None) -> None:
    insert_rows(client, database, "usage_ledger", list(rows), token)
