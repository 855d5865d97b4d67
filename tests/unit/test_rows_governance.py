"""Row mappings of the governance sinks (alerts, waste_signals, budgets) on plain values, the budget fold over stored
rows, the writer's governance steps on a fake client, and the specs against the migrations' column lists."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.retry import RetryPolicy
from schemas.models import load_example
from schemas.wire import AvroCodec
from sinks.rows import (
    ALERT_COLUMNS,
    ALERTS,
    BUDGET_COLUMNS,
    BUDGETS,
    SINK_SPECS,
    WASTE,
    WASTE_COLUMNS,
    RowMappingError,
    compute_alert_row,
    compute_budget_row,
    compute_budget_rows,
    compute_budget_tombstone,
    compute_waste_row,
)
from sinks.writer import ClickHouseBatchWriter, DeadLetter, MessageBatch, SinkMessage
from stream_jobs.waste import WasteSignal, build_waste_record

pytestmark = pytest.mark.unit

T = datetime(2025, 3, 14, 9, 27, 6, 123456, tzinfo=UTC)
MIGRATIONS = Path(__file__).resolve().parents[2] / "infra" / "clickhouse" / "migrations"
CODEC = AvroCodec()


def _roundtrip(record: dict[str, Any], schema: str) -> dict[str, Any]:
    """What the sink sees: the record through the real Avro codec (Decimals rescaled, timestamps aware)."""
    name, decoded = CODEC.decode(CODEC.encode(record, schema))
    assert name == schema
    return decoded


def _alert(**changes: Any) -> dict[str, Any]:
    record = load_example("alert.json").to_avro_dict()
    record.update(changes)
    return record


def _signal(**changes: Any) -> WasteSignal:
    values: dict[str, Any] = dict(
        signal_id="retry_loop:agent-7:task-3:abc", kind="retry_loop", occurred_at_us=1_741_944_426_123_456,
        detected_at_us=1_741_944_500_000_001, team="search", project="web", agent_id="agent-7", task_id="task-3",
        model="gpt-4o", avoidable_cost_usd=Decimal("0.123456789012"), evidence={"calls": 4, "event_ids": ["e1"]},
        revision=2,
    )
    values.update(changes)
    return WasteSignal(**values)


def _policy(**changes: Any) -> dict[str, Any]:
    record = load_example("budget_policy.json").to_avro_dict()
    record.update(changes)
    return record


# ---------------------------------------------------------------------------------------------------------- alerts


def test_alert_row_maps_every_field_and_nulls_to_empty_text() -> None:
    record = _roundtrip(_alert(), "Alert")
    row = dict(zip(ALERT_COLUMNS, compute_alert_row(record), strict=True))
    assert row == {
        "alert_id": "alrt-2025-03-14-000117",
        "dedup_key": "pol-support-monthly:team=customer-support:80:2025-03",
        "kind": "budget_threshold",
        "severity": "warning",
        "state": "trigger",
        "occurred_at": datetime(2025, 3, 14, 9, 27, 6, tzinfo=UTC),
        "team": "customer-support",
        "project": "",
        "agent_id": "",
        "policy_id": "pol-support-monthly",
        "model": "",
        "title": "customer-support reached 80% of its March budget",
        "summary": record["summary"],
        "amount_usd": Decimal("8012.4"),
        "limit_usd": Decimal("10000"),
        "details": {"forecast_usd": "14600.00", "period": "2025-03", "threshold_percent": "80"},
        "actions": ["notify", "throttle"],
    }


def test_alert_row_keeps_null_amounts_null_and_names_missing_fields() -> None:
    row = compute_alert_row(_roundtrip(_alert(amount_usd=None, limit_usd=None, details={}, actions=[]), "Alert"))
    assert row[ALERT_COLUMNS.index("amount_usd")] is None and row[ALERT_COLUMNS.index("limit_usd")] is None
    assert row[-2:] == [{}, []]
    record = _alert()
    del record["title"], record["summary"]
    with pytest.raises(RowMappingError, match="Alert cannot be mapped to a row: missing field\\(s\\) title, summary"):
        compute_alert_row(record)


# ----------------------------------------------------------------------------------------------------------- waste


def test_waste_row_from_the_detection_record_is_exact() -> None:
    signal = _signal()
    record = _roundtrip(build_waste_record(signal), "Alert")
    row = dict(zip(WASTE_COLUMNS, compute_waste_row(record), strict=True))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert row == {
        "signal_id": "retry_loop:agent-7:task-3:abc",
        "kind": "retry_loop",
        "detected_at": epoch + timedelta(microseconds=1_741_944_500_000_001),
        "occurred_at": epoch + timedelta(microseconds=1_741_944_426_123_456),
        "team": "search",
        "project": "web",
        "agent_id": "agent-7",
        "task_id": "task-3",
        "model": "gpt-4o",
        "avoidable_cost_usd": Decimal("0.123456789012"),
        "evidence": json.dumps({"calls": 4, "event_ids": ["e1"]}, sort_keys=True),
    }
    assert str(row["avoidable_cost_usd"]) == "0.123456789012"  # from the text, never through a float


def test_waste_row_without_task_or_model_uses_empty_text() -> None:
    row = compute_waste_row(_roundtrip(build_waste_record(_signal(task_id="", model="")), "Alert"))
    assert row[WASTE_COLUMNS.index("task_id")] == "" and row[WASTE_COLUMNS.index("model")] == ""
    record = build_waste_record(_signal())
    del record["details"]["task_id"]
    assert compute_waste_row(record)[WASTE_COLUMNS.index("task_id")] == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(kind="anomaly"), "kind 'anomaly' is not 'waste'"),
        (lambda r: r["details"].pop("avoidable_cost_usd"), "missing details key\\(s\\) avoidable_cost_usd"),
        (lambda r: r["details"].update(avoidable_cost_usd="12,5"), "is not a decimal amount"),
        (lambda r: r["details"].update(avoidable_cost_usd="NaN"), "is not a decimal amount"),
        (lambda r: r["details"].update(detected_at="yesterday"), "is not an ISO 8601 time"),
        (lambda r: r["details"].update(occurred_at="2025-03-14T09:27:06"), "has no UTC offset"),
    ],
)
def test_waste_row_refuses_what_it_cannot_map_exactly(change: Any, reason: str) -> None:
    record = build_waste_record(_signal())
    change(record)
    with pytest.raises(RowMappingError, match=reason):
        compute_waste_row(record)


def test_waste_times_in_another_offset_become_utc() -> None:
    record = build_waste_record(_signal())
    record["details"]["occurred_at"] = "2025-03-14T10:27:06.5+01:00"
    occurred = compute_waste_row(record)[WASTE_COLUMNS.index("occurred_at")]
    assert occurred == datetime(2025, 3, 14, 9, 27, 6, 500000, tzinfo=UTC) and occurred.tzinfo is UTC


# ---------------------------------------------------------------------------------------------------------- budgets


def test_budget_row_maps_every_field_with_thresholds_as_sorted_json() -> None:
    row = dict(zip(BUDGET_COLUMNS, compute_budget_row(_roundtrip(_policy(), "BudgetPolicy")), strict=True))
    assert row == {
        "policy_id": "pol-support-monthly", "version": 3, "scope_type": "team", "scope_value": "customer-support",
        "period": "month", "timezone": "Europe/Berlin", "limit_usd": Decimal("10000"), "mode": "soft",
        "thresholds": (
            '[{"actions":["notify"],"channels":["slack:#support-finops"],"percent":50},'
            '{"actions":["notify","throttle"],"channels":[],"percent":80},'
            '{"actions":["notify","downgrade"],"channels":["slack:#support-finops","pagerduty:finops"],"percent":100},'
            '{"actions":["suspend"],"channels":[],"percent":120}]'
        ),
        "forecast": True, "max_task_cost_usd": Decimal("2.5"), "max_task_tokens": 2_000_000,
        "max_call_tokens": None, "downgrade_model": "gpt-4o-mini", "throttle_rate_per_minute": 30,
        "enabled": True, "deleted": False, "updated_at": datetime(2025, 3, 1, 8, tzinfo=UTC),
    }
    record = _policy()
    del record["limit_usd"]
    with pytest.raises(RowMappingError, match="missing field\\(s\\) limit_usd"):
        compute_budget_row(record)


def test_budget_tombstone_marker() -> None:
    row = dict(zip(BUDGET_COLUMNS, compute_budget_tombstone(b"pol-a", 1_741_944_426_123), strict=True))
    assert row["policy_id"] == "pol-a" and row["deleted"] is True
    assert row["updated_at"] == datetime(2025, 3, 14, 9, 27, 6, 123000, tzinfo=UTC)
    assert {k for k, v in row.items() if v is None} == set(BUDGET_COLUMNS) - {"policy_id", "deleted", "updated_at"}
    assert compute_budget_tombstone(b"pol-a", None)[BUDGET_COLUMNS.index("updated_at")] is None
    for key in (None, b""):
        with pytest.raises(RowMappingError, match="tombstone without a key"):
            compute_budget_tombstone(key, 1)
    with pytest.raises(RowMappingError, match="not UTF-8"):
        compute_budget_tombstone(b"\xff\xfe", 1)


V = BUDGET_COLUMNS.index("version")
DEL = BUDGET_COLUMNS.index("deleted")
LIMIT = BUDGET_COLUMNS.index("limit_usd")
UPD = BUDGET_COLUMNS.index("updated_at")


def _live(policy_id: str, version: int, limit: str = "100") -> list[Any]:
    return compute_budget_row(_policy(policy_id=policy_id, version=version, limit_usd=Decimal(limit)))


def _tomb(policy_id: str, ms: int | None = 1_741_944_426_000) -> list[Any]:
    return compute_budget_tombstone(policy_id.encode(), ms)


def _as_stored(row: list[Any]) -> list[Any]:
    """How ClickHouse hands a row back: naive UTC datetimes, Decimals at scale 12."""
    out = list(row)
    out[UPD] = out[UPD].replace(tzinfo=None)
    out[LIMIT] = out[LIMIT].quantize(Decimal("1e-12"))
    return out


def test_fold_new_policies_and_higher_versions() -> None:
    rows = [_live("a", 1), _live("b", 1), _live("a", 2, "250")]
    out = compute_budget_rows(rows, {})
    assert [(i, r[0], r[V], r[LIMIT]) for i, r in out] == [(1, "b", 1, Decimal("100")), (2, "a", 2, Decimal("250"))]


def test_fold_ignores_an_older_version_and_takes_an_equal_one() -> None:
    stored = {"a": _as_stored(_live("a", 3, "300"))}
    assert compute_budget_rows([_live("a", 2, "999")], stored) == []  # stale: the live version 3 stays
    out = compute_budget_rows([_live("a", 3, "301")], stored)  # equal version, later record: it wins
    assert [(r[V], r[LIMIT]) for _, r in out] == [(3, Decimal("301"))]


def test_fold_writes_nothing_for_a_redelivered_batch() -> None:
    rows = [_live("a", 1), _live("a", 2, "250"), _live("b", 5)]
    first = compute_budget_rows(rows, {})
    stored = {r[0]: _as_stored(r) for _, r in first}
    assert compute_budget_rows(rows, stored) == []
    # the same for a deletion already applied
    stored["a"] = _as_stored(compute_budget_rows([_tomb("a")], stored)[0][1])
    assert compute_budget_rows([_live("a", 2, "250"), _tomb("a")], stored) == []


def test_fold_tombstone_copies_the_live_policy_as_deleted_with_a_higher_version() -> None:
    live = _as_stored(_live("a", 4, "400"))
    out = compute_budget_rows([_tomb("a", 1_741_944_426_000)], {"a": live})
    assert len(out) == 1
    index, row = out[0]
    expected = list(live)
    expected[V], expected[DEL] = 5, True
    expected[UPD] = datetime(2025, 3, 14, 9, 27, 6, tzinfo=UTC)
    assert index == 0 and row == expected
    # without a broker timestamp the deleted copy keeps the live row's time
    assert compute_budget_rows([_tomb("a", None)], {"a": live})[0][1][UPD] == live[UPD]


def test_fold_tombstone_of_an_unknown_or_deleted_policy_changes_nothing() -> None:
    assert compute_budget_rows([_tomb("zzz")], {}) == []
    gone = _as_stored(_live("a", 2))
    gone[DEL] = True
    assert compute_budget_rows([_tomb("a")], {"a": gone}) == []


def test_fold_within_one_batch_last_record_wins() -> None:
    # add, update, delete: one deleted row at version 3 (2 + 1), decided by the tombstone (index 2)
    out = compute_budget_rows([_live("a", 1), _live("a", 2, "250"), _tomb("a")], {})
    assert [(i, r[V], r[DEL], r[LIMIT]) for i, r in out] == [(2, 3, True, Decimal("250"))]
    # a tombstone for a policy added in the same batch, then added again at version 1 (`policy apply` restarts)
    out = compute_budget_rows([_live("a", 1), _tomb("a"), _live("a", 1, "75")], {})
    assert [(i, r[V], r[DEL], r[LIMIT]) for i, r in out] == [(2, 3, False, Decimal("75"))]


def test_fold_readd_after_a_stored_deletion_outranks_it() -> None:
    gone = _as_stored(_live("a", 6))
    gone[V], gone[DEL] = 7, True
    out = compute_budget_rows([_live("a", 1, "55")], {"a": gone})
    assert [(r[V], r[DEL], r[LIMIT]) for _, r in out] == [(8, False, Decimal("55"))]
    # a re-add with a version already above the deleted one keeps its own
    assert compute_budget_rows([_live("a", 9)], {"a": gone})[0][1][V] == 9


# -------------------------------------------------------------------------------------------------------- specs


def _table_columns(table: str) -> dict[str, str]:
    """``column -> declaration`` of ``table`` as the migrations create it."""
    text = "\n".join(p.read_text() for p in sorted(MIGRATIONS.glob("*.sql")))
    match = re.search(rf"CREATE TABLE IF NOT EXISTS \{{database\}}\.{table}\s*\((.*?)\n\)\s*\nENGINE", text, re.S)
    assert match, table
    columns = {}
    for line in match.group(1).splitlines():
        found = re.match(r"\s+(\w+) (.*)", line)
        if found:
            columns[found.group(1)] = found.group(2)
    return columns


@pytest.mark.parametrize("kind", ["alerts", "waste", "budgets"])
def test_spec_columns_are_the_tables_columns(kind: str) -> None:
    spec = SINK_SPECS[kind]
    declared = _table_columns(spec.table)
    assert set(spec.columns) <= set(declared)
    # every column the sink leaves out fills itself (DEFAULT) in the table
    assert all("DEFAULT" in declared[c] for c in set(declared) - set(spec.columns))


def test_sink_run_only_selects_each_kind_with_its_own_group_and_topic() -> None:
    from finops.cli import build_parser
    from finops.topics import TopicNames, sink_group
    from sinks.worker_cli import SINK_KINDS, sink_topic

    parser = build_parser()
    assert parser.parse_args(["sink", "run"]).only is None  # default: every kind
    for kind in SINK_KINDS:
        assert parser.parse_args(["sink", "run", "--only", kind]).only == kind
    with pytest.raises(SystemExit):
        parser.parse_args(["sink", "run", "--only", "nope"])
    topics = TopicNames("p.")
    assert [(sink_group(k), sink_topic(k, topics)) for k in SINK_KINDS] == [
        ("finops-sink-ledger", "p.agent.usage.priced.v1"), ("finops-sink-spend", "p.finops.spend.1m.v1"),
        ("finops-sink-alerts", "p.finops.alerts.v1"), ("finops-sink-waste", "p.finops.waste.v1"),
        ("finops-sink-budgets", "p.finops.policies.v1")]
    assert list(SINK_KINDS) == list(SINK_SPECS)


def test_sink_specs_cover_every_kind() -> None:
    assert list(SINK_SPECS) == ["ledger", "spend", "alerts", "waste", "budgets"]
    assert (ALERTS.schema_name, WASTE.schema_name, BUDGETS.schema_name) == ("Alert", "Alert", "BudgetPolicy")
    assert BUDGETS.tombstone_row is not None and BUDGETS.resolve is not None and BUDGETS.state_key_column
    assert ALERTS.tombstone_row is None and WASTE.tombstone_row is None


# ------------------------------------------------------------------------------------ writer steps on a fake client


class FakeClient:
    """Records inserts and answers the stored-state query with ``stored`` rows."""

    def __init__(self, stored: list[list[Any]] | None = None) -> None:
        self.inserts: list[tuple[str, list[list[Any]], str]] = []
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self.stored = stored or []

    def insert(self, table: str, data: list[list[Any]], *, column_names: list[str], database: str,
               settings: dict[str, Any]) -> None:
        assert column_names == list(SINK_SPECS[{"alerts": "alerts", "waste_signals": "waste",
                                                "budgets": "budgets"}[table]].columns)
        self.inserts.append((table, data, settings["insert_deduplication_token"]))

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        self.queries.append((sql, parameters))

        class Result:
            result_rows = [r for r in self.stored if r[0] in parameters["ids"]]

        return Result()


class Letters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self, timeout: float) -> None:
        return None


def _write(client: FakeClient, kind: str, messages: list[tuple[bytes | None, bytes | None]],
           letters: Letters | None = None) -> Any:
    writer = ClickHouseBatchWriter(client, "db", SINK_SPECS[kind], letters or Letters(), rng=random.Random(0),
                                   retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.05))
    batch = MessageBatch()
    for offset, (key, value) in enumerate(messages):
        batch.add(SinkMessage("t", 0, offset, key, value, (), 1_741_944_426_000 + offset), now=0.0)
    return writer.write(batch, wait=lambda _s: None)


def test_writer_collapses_waste_revisions_to_the_last_and_dead_letters_other_kinds() -> None:
    client, letters = FakeClient(), Letters()
    r1 = build_waste_record(_signal(revision=1, avoidable_cost_usd=Decimal("0.1")))
    r2 = build_waste_record(_signal(revision=2, avoidable_cost_usd=Decimal("0.3")))
    other = build_waste_record(_signal(signal_id="dup:x", kind="duplicate_prompt", avoidable_cost_usd=Decimal("0.1")))
    anomaly = _alert(kind="anomaly")
    report = _write(client, "waste", [(b"k", CODEC.encode(r, "Alert")) for r in (r1, other, r2, anomaly)], letters)
    [(table, rows, _)] = client.inserts
    assert table == "waste_signals"
    assert [(r[0], r[WASTE_COLUMNS.index("avoidable_cost_usd")]) for r in rows] == [
        ("dup:x", Decimal("0.1")), ("retry_loop:agent-7:task-3:abc", Decimal("0.3"))]
    assert (report.inserted, report.duplicates, report.dead_lettered) == (2, 1, 1)
    assert letters.letters[0].message.offset == 3 and "kind 'anomaly' is not 'waste'" in letters.letters[0].reason


def test_writer_turns_a_policy_tombstone_into_a_deleted_row_and_keeps_other_topics_strict() -> None:
    stored = _as_stored(_live("a", 2, "20"))
    client = FakeClient(stored=[stored])
    report = _write(client, "budgets", [
        (b"b", CODEC.encode(_policy(policy_id="b", version=1), "BudgetPolicy")),
        (b"a", None),
        (b"a", None),  # a second tombstone of the same policy changes nothing more
        (None, None),  # a tombstone without a key names no policy: dead letter
    ])
    [(sql, params)] = client.queries
    assert "FROM db.budgets FINAL WHERE policy_id IN" in sql and params == {"ids": ["a", "b"]}
    [(table, rows, _)] = client.inserts
    assert [(r[0], r[V], r[DEL], r[LIMIT]) for r in rows] == [("b", 1, False, Decimal("10000")),
                                                              ("a", 3, True, stored[LIMIT])]
    assert (report.inserted, report.duplicates, report.dead_lettered) == (2, 1, 1)
    # a null value on an ordinary topic stays a dead letter
    letters = Letters()
    assert _write(FakeClient(), "alerts", [(b"k", None)], letters).dead_lettered == 1
    assert "tombstone" in letters.letters[0].reason


def test_writer_skips_the_insert_when_the_policies_are_already_stored() -> None:
    rows = [_as_stored(_live("b", 1))]
    client = FakeClient(stored=rows)
    report = _write(client, "budgets", [(b"b", CODEC.encode(_policy(policy_id="b", version=1, limit_usd=Decimal(100)),
                                                            "BudgetPolicy"))])
    assert client.inserts == [] and (report.inserted, report.duplicates) == (0, 1)
