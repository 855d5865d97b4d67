"""Avro dicts -> ClickHouse rows for the sink tables (pure: no Kafka, no ClickHouse, no clock).

A :class:`RowSpec` says everything the sink needs to know about one table: the Avro record it accepts, the columns
it writes (in insert order), the function that maps one decoded record to one row, and, for the ledger, the
deduplication key ``(source, event_id)`` and the time column that narrows the "already stored?" look-up.

Columns the table fills itself are left out on purpose: ``ingested_at`` (``DEFAULT now64(6)``, the
ReplacingMergeTree version), and on the ledger ``row_kind`` / ``correction_id`` (``'original'`` / ``''``): the sink
writes priced events, never re-rating corrections.

The mapping is exact: Decimals pass through unchanged (ClickHouse ``Decimal(38, 12)``), timestamps stay tz-aware
UTC datetimes. Range checks (negative token counts, costs beyond 26 integer digits) are NOT done here: ClickHouse
(or its client) rejects such a row, and the writer bisects the batch and dead-letters exactly that row with
ClickHouse's reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import FinopsError

__all__ = [
    "LEDGER",
    "LEDGER_COLUMNS",
    "SPEND",
    "SPEND_COLUMNS",
    "RowMappingError",
    "RowSpec",
    "compute_ledger_row",
    "compute_spend_row",
    "ledger_key",
]


class RowMappingError(FinopsError):
    """A decoded record cannot be mapped to a row (a required field is missing or has the wrong shape).

    The sink dead-letters the message with this message as the reason; the producer (the stream's hot path) has to
    be fixed.
    """


# Ledger columns in insert order. The "optional text" columns are String DEFAULT '' in the table ('' = absent), so
# the Avro null becomes ''; every other column takes the Avro value as is.
_LEDGER_OPTIONAL_TEXT: tuple[str, ...] = ("task_id", "parent_task_id", "task_type", "environment")
LEDGER_COLUMNS: tuple[str, ...] = (
    "event_id",
    "source",
    "occurred_at",
    "agent_id",
    "team",
    "project",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "cache_audio_read_tokens",
    "image_tokens",
    "web_search_calls",
    "requests",
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
)
_EVENT_ID_INDEX = LEDGER_COLUMNS.index("event_id")
_OPTIONAL_TEXT_INDEXES: tuple[int, ...] = tuple(LEDGER_COLUMNS.index(name) for name in _LEDGER_OPTIONAL_TEXT)

SPEND_COLUMNS: tuple[str, ...] = (
    "aggregate_id",
    "window_start",
    "window_end",
    "dimension",
    "key",
    "source_partition",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "calls",
    "errors",
    "retries",
    "unpriced_calls",
    "emitted_at",
)


def _missing(record: Mapping[str, Any], columns: Sequence[str], what: str, err: Exception) -> RowMappingError:
    absent = [name for name in columns if name not in record]
    detail = f"missing field(s) {', '.join(absent)}" if absent else f"{type(err).__name__}: {err}"
    return RowMappingError(f"{what} cannot be mapped to a row: {detail}")


def compute_ledger_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``usage_ledger`` row (values in :data:`LEDGER_COLUMNS` order) from a decoded PricedUsageEvent dict.

    ``event_id`` becomes text (fastavro may return a ``uuid.UUID`` for the uuid logical type); absent optional task
    fields become ``''``. Raises :class:`RowMappingError` naming the missing fields.
    """
    try:
        row = [record[name] for name in LEDGER_COLUMNS]
    except KeyError as err:
        raise _missing(record, LEDGER_COLUMNS, "PricedUsageEvent", err) from None
    event_id = row[_EVENT_ID_INDEX]
    if not isinstance(event_id, str):
        row[_EVENT_ID_INDEX] = str(event_id)
    for index in _OPTIONAL_TEXT_INDEXES:
        if row[index] is None:
            row[index] = ""
    return row


def compute_spend_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``spend_1m`` row (values in :data:`SPEND_COLUMNS` order) from a decoded SpendAggregate dict.

    Raises :class:`RowMappingError` naming the missing fields.
    """
    try:
        return [record[name] for name in SPEND_COLUMNS]
    except KeyError as err:
        raise _missing(record, SPEND_COLUMNS, "SpendAggregate", err) from None


def ledger_key(row: Sequence[Any]) -> tuple[str, str]:
    """The ledger's deduplication key ``(source, event_id)`` of a row built by :func:`compute_ledger_row`."""
    return (row[1], row[0])


@dataclass(frozen=True, slots=True)
class RowSpec:
    """How one sink table is written.

    ``schema_name`` is the only Avro record accepted on the table's topic (anything else is dead-lettered).
    ``key_of`` (ledger only) gives the identity the sink checks against the stored rows before inserting, and
    ``time_column`` / ``time_index`` the event-time column that bounds that look-up to the batch's time range (so
    ClickHouse prunes partitions instead of scanning the table).
    """

    table: str
    schema_name: str
    columns: tuple[str, ...]
    compute_row: Callable[[Mapping[str, Any]], list[Any]]
    key_of: Callable[[Sequence[Any]], tuple[str, str]] | None = None
    time_column: str | None = None
    time_index: int | None = None


LEDGER = RowSpec(
    table="usage_ledger",
    schema_name="PricedUsageEvent",
    columns=LEDGER_COLUMNS,
    compute_row=compute_ledger_row,
    key_of=ledger_key,
    time_column="occurred_at",
    time_index=LEDGER_COLUMNS.index("occurred_at"),
)
SPEND = RowSpec(
    table="spend_1m",
    schema_name="SpendAggregate",
    columns=SPEND_COLUMNS,
    compute_row=compute_spend_row,
)
