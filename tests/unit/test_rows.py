"""Row mapping: Avro dicts -> ledger / spend rows, exact and in column order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from finops.tables import LEDGER_COLUMNS
from schemas.errors import FinopsError
from schemas.loader import load_schema
from sinks.rows import (
    LEDGER,
    SPEND,
    SPEND_COLUMNS,
    RowMappingError,
    compute_ledger_row,
    compute_spend_row,
    ledger_key,
)

pytestmark = pytest.mark.unit

T = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _priced() -> dict:
    schema = load_schema("PricedUsageEvent")
    record: dict = {}
    for f in schema["fields"]:
        record[f["name"]] = f.get("default", None)
    record.update(
        event_id=uuid.UUID("12345678-1234-4234-8234-123456789abc"), source="svc", occurred_at=T, agent_id="a",
        team="t", project="p", provider="openai", model="gpt-4o", input_tokens=10, output_tokens=2,
        cost_usd=Decimal("0.000000000001"), cost_input_usd=Decimal(0), cost_output_usd=Decimal(0),
        cost_cache_read_usd=Decimal(0), cost_cache_write_usd=Decimal(0), cost_other_usd=Decimal(0),
        pricing_status="priced", catalogue_version="v", price_source="catalogue", priced_at=T,
        source_topic="agent.usage.v1", source_partition=4, source_offset=99, task_type="chat",
    )
    return record


def test_ledger_columns_are_the_avro_fields_the_table_takes() -> None:
    avro = [f["name"] for f in load_schema("PricedUsageEvent")["fields"]]
    # Every Avro field is written, in the schema's order; the table's own columns (row_kind, correction_id,
    # ingested_at) are left to their defaults.
    assert list(LEDGER_COLUMNS) == avro
    assert list(SPEND_COLUMNS) == [f["name"] for f in load_schema("SpendAggregate")["fields"]]


def test_ledger_row_maps_uuid_to_text_and_absent_task_fields_to_empty() -> None:
    row = compute_ledger_row(_priced())
    values = dict(zip(LEDGER_COLUMNS, row, strict=True))
    assert values["event_id"] == "12345678-1234-4234-8234-123456789abc"
    assert values["task_id"] == "" and values["parent_task_id"] == "" and values["environment"] == ""
    assert values["task_type"] == "chat"
    assert values["latency_ms"] is None and values["reported_cost"] is None  # Nullable columns keep NULL
    assert values["cost_usd"] == Decimal("0.000000000001") and isinstance(values["cost_usd"], Decimal)
    assert values["occurred_at"] == T and values["tags"] == {}
    assert ledger_key(row) == ("svc", "12345678-1234-4234-8234-123456789abc")


def test_missing_field_is_a_mapping_error_naming_it() -> None:
    record = _priced()
    del record["team"]
    del record["cost_usd"]
    with pytest.raises(RowMappingError, match="team, .*cost_usd") as info:
        compute_ledger_row(record)
    assert isinstance(info.value, FinopsError)
    with pytest.raises(RowMappingError, match="aggregate_id"):
        compute_spend_row({})


def test_spend_row_is_exact_and_ordered() -> None:
    record = {name: i for i, name in enumerate(SPEND_COLUMNS)}
    record["cost_usd"] = Decimal("12345678901234567890123456.123456789012")
    row = compute_spend_row(record)
    assert row[SPEND_COLUMNS.index("cost_usd")] == Decimal("12345678901234567890123456.123456789012")
    assert row[0] == 0 and len(row) == len(SPEND_COLUMNS)


def test_specs_name_tables_and_schemas() -> None:
    assert (LEDGER.table, LEDGER.schema_name, LEDGER.time_column) == ("usage_ledger", "PricedUsageEvent", "occurred_at")
    assert LEDGER.time_index is not None and LEDGER_COLUMNS[LEDGER.time_index] == "occurred_at"
    assert (SPEND.table, SPEND.schema_name, SPEND.key_of) == ("spend_1m", "SpendAggregate", None)
