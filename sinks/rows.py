"""Avro dicts -> ClickHouse rows for the sink tables (pure: no Kafka, no ClickHouse, no clock).

Role: a :class:`RowSpec` says everything the sink needs to know about one table: the Avro record it accepts, the
columns it writes (in insert order), the mapping of one decoded record to one row, and, for the ledger, the
deduplication key and the time column that narrows the "already stored?" look-up.

Guarantee: the mapping is exact (Decimals pass through unchanged, timestamps stay tz-aware UTC); range checks are
left to ClickHouse, whose refusal makes the writer bisect the batch and dead-letter exactly that row with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from finops.clock import as_utc
from finops.tables import LEDGER_COLUMNS
from schemas.errors import FinopsError

__all__ = [
    "ALERTS",
    "ALERT_COLUMNS",
    "BUDGETS",
    "BUDGET_COLUMNS",
    "LEDGER",
    "SINK_SPECS",
    "SPEND",
    "SPEND_COLUMNS",
    "WASTE",
    "WASTE_COLUMNS",
    "RowMappingError",
    "RowSpec",
    "compute_alert_row",
    "compute_budget_row",
    "compute_budget_rows",
    "compute_budget_tombstone",
    "compute_ledger_row",
    "compute_spend_row",
    "compute_waste_row",
    "ledger_key",
]


class RowMappingError(FinopsError):
    """A decoded record cannot be mapped to a row (a required field is missing or has the wrong shape).

    The sink dead-letters the message with this message as the reason; the producer (the stream's hot path) has to
    be fixed.
    """


# The ledger's "optional text" columns are String DEFAULT '' in the table ('' = absent), so the Avro null becomes
# ''; every other column takes the Avro value as is.
_LEDGER_OPTIONAL_TEXT: tuple[str, ...] = ("task_id", "parent_task_id", "task_type", "environment")
_LEDGER_DEFAULTED: frozenset[str] = frozenset({"computed_cost_usd", "cost_basis"})
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
        if not all(name in record or name in _LEDGER_DEFAULTED for name in LEDGER_COLUMNS):
            raise _missing(record, LEDGER_COLUMNS, "PricedUsageEvent", err) from None
        # A record of the schema before cost_basis (fields with Avro defaults): every cost was computed.
        filled = {
            "computed_cost_usd": record["cost_usd"] if record.get("pricing_status") == "priced" else None,
            "cost_basis": "catalogue",
            **record,
        }
        row = [filled[name] for name in LEDGER_COLUMNS]
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


# ---------------------------------------------------------------------------------------------- governance tables

# alerts: one row per Alert record, columns named after the Avro fields. The optional dimensions are String DEFAULT ''
# in the table ('' = none), so their Avro null becomes ''; amount_usd / limit_usd stay Nullable.
ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id",
    "dedup_key",
    "kind",
    "severity",
    "state",
    "occurred_at",
    "team",
    "project",
    "agent_id",
    "policy_id",
    "model",
    "title",
    "summary",
    "amount_usd",
    "limit_usd",
    "details",
    "actions",
)
_ALERT_OPTIONAL_TEXT: tuple[str, ...] = ("team", "project", "agent_id", "policy_id", "model")
_ALERT_OPTIONAL_INDEXES: tuple[int, ...] = tuple(ALERT_COLUMNS.index(name) for name in _ALERT_OPTIONAL_TEXT)


def compute_alert_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``alerts`` row (values in :data:`ALERT_COLUMNS` order) from a decoded Alert dict.

    Absent optional dimensions become ``''``; ``details`` and ``actions`` are copied (the table's Map and Array).
    Raises :class:`RowMappingError` naming the missing fields.
    """
    try:
        row = [record[name] for name in ALERT_COLUMNS]
    except KeyError as err:
        raise _missing(record, ALERT_COLUMNS, "Alert", err) from None
    for index in _ALERT_OPTIONAL_INDEXES:
        if row[index] is None:
            row[index] = ""
    row[-2] = dict(row[-2])
    row[-1] = list(row[-1])
    return row


def alert_identity(row: Sequence[Any]) -> str:
    """An ``alerts`` row's identity: its ``alert_id`` (one alert state change)."""
    return str(row[0])


# waste_signals: from the Alert-schema records of kind 'waste' on finops.waste.v1 (stream_jobs/waste.py
# build_waste_record). The signal's own columns travel as text in `details`; the dimensions are the Alert fields.
WASTE_COLUMNS: tuple[str, ...] = (
    "signal_id",
    "kind",
    "detected_at",
    "occurred_at",
    "team",
    "project",
    "agent_id",
    "task_id",
    "model",
    "avoidable_cost_usd",
    "evidence",
)
# details keys that must be present; task_id may be absent (= no task, the column's default '').
_WASTE_DETAILS: tuple[str, ...] = ("signal_id", "waste_kind", "occurred_at", "detected_at", "avoidable_cost_usd",
                                   "evidence")


def _parse_instant(text: str, what: str) -> datetime:
    """An ISO 8601 instant with an offset, as a UTC datetime. A value without an offset is refused: the producer
    writes ``isoformat()`` of aware datetimes, so a naive one means another writer whose zone we cannot know."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise RowMappingError(f"waste record cannot be mapped to a row: details[{what!r}] = {text!r} is not an "
                              "ISO 8601 time") from None
    if value.tzinfo is None:
        raise RowMappingError(f"waste record cannot be mapped to a row: details[{what!r}] = {text!r} has no UTC "
                              "offset")
    return value.astimezone(UTC)


def compute_waste_row(record: Mapping[str, Any]) -> list[Any]:
    """One ``waste_signals`` row (values in :data:`WASTE_COLUMNS` order) from a decoded Alert dict of kind
    ``waste``: ``details`` gives ``signal_id``, ``waste_kind`` (-> ``kind``), ``occurred_at``, ``detected_at``,
    ``task_id``, ``avoidable_cost_usd`` (exact decimal text) and ``evidence``; ``team``, ``project``, ``agent_id`` and
    ``model`` come from the Alert fields (null -> ``''``). ``revision`` is not stored: the table keeps the latest
    ``detected_at``, which never decreases with the revision.

    Raises :class:`RowMappingError` for another kind, missing details or an unreadable time or amount.
    """
    kind = record.get("kind")
    if kind != "waste":
        raise RowMappingError(f"waste record cannot be mapped to a row: kind {kind!r} is not 'waste'")
    details = record.get("details")
    if not isinstance(details, Mapping):
        raise RowMappingError("waste record cannot be mapped to a row: missing field(s) details")
    absent = [name for name in _WASTE_DETAILS if name not in details]
    if absent:
        raise RowMappingError(f"waste record cannot be mapped to a row: missing details key(s) {', '.join(absent)}")
    try:
        cost = Decimal(details["avoidable_cost_usd"])
    except (InvalidOperation, TypeError, ValueError):
        cost = Decimal("NaN")
    if not cost.is_finite():
        raise RowMappingError("waste record cannot be mapped to a row: details['avoidable_cost_usd'] = "
                              f"{details['avoidable_cost_usd']!r} is not a decimal amount")
    return [
        details["signal_id"],
        details["waste_kind"],
        _parse_instant(details["detected_at"], "detected_at"),
        _parse_instant(details["occurred_at"], "occurred_at"),
        record.get("team") or "",
        record.get("project") or "",
        record.get("agent_id") or "",
        details.get("task_id") or "",
        record.get("model") or "",
        cost,
        details["evidence"],
    ]


def waste_identity(row: Sequence[Any]) -> str:
    """A ``waste_signals`` row's identity: its ``signal_id`` (revisions of one signal share it)."""
    return str(row[0])


# budgets: a BudgetPolicy per row, plus the table's `deleted` flag (a tombstone on the compacted topic).
BUDGET_COLUMNS: tuple[str, ...] = (
    "policy_id",
    "version",
    "scope_type",
    "scope_value",
    "period",
    "timezone",
    "limit_usd",
    "mode",
    "thresholds",
    "forecast",
    "max_task_cost_usd",
    "max_task_tokens",
    "max_call_tokens",
    "downgrade_model",
    "throttle_rate_per_minute",
    "enabled",
    "deleted",
    "updated_at",
)
_B_VERSION = BUDGET_COLUMNS.index("version")
_B_THRESHOLDS = BUDGET_COLUMNS.index("thresholds")
_B_DELETED = BUDGET_COLUMNS.index("deleted")
_B_UPDATED_AT = BUDGET_COLUMNS.index("updated_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def compute_budget_row(record: Mapping[str, Any]) -> list[Any]:
    """One live ``budgets`` row (values in :data:`BUDGET_COLUMNS` order, ``deleted`` false) from a decoded
    BudgetPolicy dict. ``thresholds`` becomes a JSON array with sorted keys (``[{"actions": [...], "channels":
    [...], "percent": 80}, ...]``), so equal ladders give equal text. Raises :class:`RowMappingError`."""
    columns = tuple(name for name in BUDGET_COLUMNS if name != "deleted")
    try:
        row = [record[name] for name in columns]
        row[_B_THRESHOLDS] = json.dumps([dict(step) for step in row[_B_THRESHOLDS]], sort_keys=True,
                                        separators=(",", ":"))
    except KeyError as err:
        raise _missing(record, columns, "BudgetPolicy", err) from None
    except (TypeError, ValueError) as err:
        raise RowMappingError(f"BudgetPolicy cannot be mapped to a row: thresholds: {err}") from None
    row.insert(_B_DELETED, False)
    return row


def compute_budget_tombstone(key: bytes | None, timestamp_ms: int | None) -> list[Any]:
    """The marker row of a tombstone on the policy topic: ``policy_id`` from the message key, ``deleted`` true,
    ``updated_at`` the message's Kafka timestamp (``None`` if it has none) and every other column ``None``.

    Never inserted as is: :func:`compute_budget_rows` turns it into a copy of the stored policy. Raises
    :class:`RowMappingError` for a tombstone without a key (it deletes nothing we could name).
    """
    if not key:
        raise RowMappingError("BudgetPolicy tombstone without a key: no policy_id to delete")
    try:
        policy_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise RowMappingError("BudgetPolicy tombstone key is not UTF-8 text") from None
    row: list[Any] = [None] * len(BUDGET_COLUMNS)
    row[0] = policy_id
    row[_B_DELETED] = True
    if timestamp_ms is not None and timestamp_ms > 0:
        row[_B_UPDATED_AT] = _EPOCH + timedelta(milliseconds=timestamp_ms)
    return row


def budget_identity(row: Sequence[Any]) -> str:
    """A ``budgets`` row's identity: its ``policy_id`` (the topic's key)."""
    return str(row[0])


def _utc(value: Any) -> Any:
    # ClickHouse may hand back DateTime64(6, 'UTC') naive or aware depending on the client; compare as aware UTC.
    return as_utc(value) if isinstance(value, datetime) else value


def _same_row(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(_utc(x) == _utc(y) for x, y in zip(a, b, strict=True))


def compute_budget_rows(
    rows: Sequence[Sequence[Any]], stored: Mapping[str, Sequence[Any]]
) -> list[tuple[int, list[Any]]]:
    """Fold a batch of policy-topic rows (Kafka order; tombstones as :func:`compute_budget_tombstone` markers) over
    the stored rows (``policy_id -> row`` as ``budgets FINAL`` holds them) into the rows to insert, as
    ``(index in rows of the record that decided it, row)``, at most one per policy. Pure.

    The topic's meaning is "the last value per key wins; a tombstone deletes; a consumer ignores an older version
    than the one it holds" (BudgetPolicy.avsc, stream_jobs/budgets.py). The table keeps the highest ``version``
    (equal versions: the last inserted). Per policy, starting from the stored row:

    * a record with a higher version than the live one replaces it; an equal version replaces it (the later record
      wins, as in the detection engine); a lower one is ignored (a replay, or a stale writer);
    * a tombstone of a live policy becomes a copy of it with ``deleted`` true and ``version`` + 1 (the tombstone
      carries no version, and the deleted row must win); a tombstone of an unknown or deleted policy changes nothing;
    * a record after a deletion re-creates the policy. ``finops policy apply`` restarts a re-added policy at version
      1, below the deleted row's, so the row is written with ``max(version, deleted version + 1)``: the table's
      version then runs ahead of the topic's for that policy, which is the price of a version-keyed table.

    A policy whose folded row equals the stored one, or that is deleted both before and after the batch, is not
    written again: a re-delivered batch inserts nothing.
    """
    state: dict[str, list[Any] | None] = {pid: list(row) for pid, row in stored.items()}
    decided: dict[str, int] = {}
    for index, row in enumerate(rows):
        policy_id = str(row[0])
        held = state.get(policy_id)
        if row[_B_DELETED]:  # tombstone marker
            if held is None or held[_B_DELETED]:
                continue
            gone = list(held)
            gone[_B_DELETED] = True
            gone[_B_VERSION] = int(held[_B_VERSION]) + 1
            if row[_B_UPDATED_AT] is not None:
                gone[_B_UPDATED_AT] = row[_B_UPDATED_AT]
            state[policy_id] = gone
            decided[policy_id] = index
            continue
        version = int(row[_B_VERSION])
        if held is None:
            state[policy_id] = list(row)
        elif held[_B_DELETED]:
            revived = list(row)
            revived[_B_VERSION] = max(version, int(held[_B_VERSION]) + 1)
            state[policy_id] = revived
        elif version >= int(held[_B_VERSION]):
            state[policy_id] = list(row)
        else:
            continue
        decided[policy_id] = index
    out: list[tuple[int, list[Any]]] = []
    for policy_id, index in decided.items():
        final = state[policy_id]
        before = stored.get(policy_id)
        if final is None or (before is not None and _same_row(final, before)):
            continue
        if before is not None and before[_B_DELETED] and final[_B_DELETED]:
            continue  # deleted before and after (a replay that re-added and re-deleted it): nothing to show
        out.append((index, final))
    out.sort(key=lambda pair: pair[0])
    return out


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

    Columns the table fills itself are left out on purpose: ``ingested_at`` (``DEFAULT now64(6)``, the
    ReplacingMergeTree version), and on the ledger ``row_kind`` / ``correction_id`` (``'original'`` / ``''``): the
    sink writes priced events, never re-rating corrections. Negative token counts or costs beyond 26 integer digits
    are not checked here: ClickHouse (or its client) rejects such a row.
    """

    table: str
    schema_name: str
    columns: tuple[str, ...]
    compute_row: Callable[[Mapping[str, Any]], list[Any]]
    key_of: Callable[[Sequence[Any]], tuple[str, str]] | None = None
    time_column: str | None = None
    time_index: int | None = None
    # Governance tables (see the module docstring). latest_of: rows of a batch with equal identity collapse to the
    # last in Kafka order. tombstone_row(key, kafka timestamp ms): a null value is data, not a dead letter.
    # resolve(rows, stored): the rows to insert given the stored rows whose state_key_column matches the batch's.
    latest_of: Callable[[Sequence[Any]], str] | None = None
    tombstone_row: Callable[[bytes | None, int | None], list[Any]] | None = None
    resolve: Callable[[Sequence[Sequence[Any]], Mapping[str, Sequence[Any]]], list[tuple[int, list[Any]]]] | None = (
        None
    )
    state_key_column: str | None = None
    # The table takes Avro containers of its record (sinks/avro_block.py) when this is not None: the leading fields
    # the writer reads from each body (they must be the first columns, in order, so key_of and time_index apply to
    # them as to a row). block_settings are ClickHouse settings of those inserts.
    avro_prefix: tuple[str, ...] | None = None
    block_settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.avro_prefix is not None and self.columns[: len(self.avro_prefix)] != self.avro_prefix:
            raise ValueError(f"{self.table}: avro_prefix {self.avro_prefix} must be the first columns")


LEDGER = RowSpec(
    table="usage_ledger",
    schema_name="PricedUsageEvent",
    columns=LEDGER_COLUMNS,
    compute_row=compute_ledger_row,
    key_of=ledger_key,
    time_column="occurred_at",
    time_index=LEDGER_COLUMNS.index("occurred_at"),
    avro_prefix=("event_id", "source", "occurred_at"),
    # A block never holds two rows of one event (the writer drops in-batch duplicates first), so the collapsing
    # pass ReplacingMergeTree makes over every inserted block finds nothing; skipping it roughly halves the
    # engine's work per row. Duplicates across blocks are still collapsed by merges and FINAL.
    block_settings={"optimize_on_insert": 0},
)
SPEND = RowSpec(
    table="spend_1m",
    schema_name="SpendAggregate",
    columns=SPEND_COLUMNS,
    compute_row=compute_spend_row,
    avro_prefix=(),
)
ALERTS = RowSpec(
    table="alerts",
    schema_name="Alert",
    columns=ALERT_COLUMNS,
    compute_row=compute_alert_row,
    latest_of=alert_identity,
)
WASTE = RowSpec(
    table="waste_signals",
    schema_name="Alert",
    columns=WASTE_COLUMNS,
    compute_row=compute_waste_row,
    latest_of=waste_identity,
)
BUDGETS = RowSpec(
    table="budgets",
    schema_name="BudgetPolicy",
    columns=BUDGET_COLUMNS,
    compute_row=compute_budget_row,
    latest_of=None,  # the fold in compute_budget_rows needs every record of the batch, in order
    tombstone_row=compute_budget_tombstone,
    resolve=compute_budget_rows,
    state_key_column="policy_id",
)

# The sink kinds of `finops sink run --only`, each its own consumer group finops-sink-<kind>.
SINK_SPECS: dict[str, RowSpec] = {
    "ledger": LEDGER,
    "spend": SPEND,
    "alerts": ALERTS,
    "waste": WASTE,
    "budgets": BUDGETS,
}
