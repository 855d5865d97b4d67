"""The ClickHouse tables more than one part reads or writes, as the parts agree on them: column orders.

The parts meet on tables (DESIGN §1): the ledger sink inserts priced events into ``usage_ledger``, governance
reads them back and appends re-rating corrections to the same table. The DDL itself lives in the migrations under
``infra/``; what is here is the part of it that code must agree on, checked against the Avro schema and the
migrated table by the tests (``tests/unit/test_rows.py``).
"""

from __future__ import annotations

from schemas.loader import COUNTED_FIELDS

__all__ = ["LEDGER_COLUMNS"]

#: ``usage_ledger`` columns in insert order: every PricedUsageEvent field, in the schema's order. The table's own
#: columns (``row_kind``, ``correction_id``, ``ingested_at``) are left to their defaults by the sink.
LEDGER_COLUMNS: tuple[str, ...] = (
    "event_id",
    "source",
    "occurred_at",
    "agent_id",
    "team",
    "project",
    "provider",
    "model",
    *COUNTED_FIELDS,
    "task_id",
    "parent_task_id",
    "task_type",
    "environment",
    "attempt",
    "status",
    "latency_ms",
    "prompt_hash",
    "reported_cost",
    "tags",
    "schema_version",
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_usd",
    "cost_other_usd",
    "price_input_mtok",
    "price_output_mtok",
    "price_cache_read_mtok",
    "price_cache_write_mtok",
    "price_cache_write_1h_mtok",
    "pricing_status",
    "unpriced_reason",
    "catalogue_version",
    "price_book_version",
    "price_source",
    "cost_delta_usd",
    "cost_mismatch",
    "late",
    "priced_at",
    "source_topic",
    "source_partition",
    "source_offset",
    "computed_cost_usd",
    "cost_basis",
)
