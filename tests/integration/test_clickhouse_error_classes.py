"""Real errors of the embedded engine (chdb) come out of the ClickHouse boundary in the right class, and the sink's
writer acts on that class: a refused row is dead-lettered without a retry, a missing table halts at once, a lost
connection (clickhouse-connect's OperationalError, as the fault and bench tests inject it) is retried until the
same batch lands, exactly once."""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from finops.clickhouse import (
    FATAL_CODES,
    TRANSIENT_CODES,
    ClickHouseFatalError,
    ClickHouseRejectedError,
    classified_errors,
)
from finops.retry import RetryPolicy
from sinks.rows import LEDGER
from sinks.writer import ClickHouseBatchWriter, MessageBatch, SinkHaltError, SinkMessage
from tests.integration.test_sink_support import make_codec, make_priced
from tests.unit.test_writer import Letters

pytestmark = pytest.mark.integration

_AVRO_ROW = {"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "int"}]}
_AVRO_TEXT_N = {"type": "record", "name": "R",
                "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "string"}]}


def _container(schema: dict[str, Any], records: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records)
    return out.getvalue()


@pytest.fixture
def table(ch_client: Any) -> Iterator[str]:
    db = f"t_{uuid.uuid4().hex[:12]}"
    ch_client.command(f"CREATE DATABASE {db}")
    ch_client.command(f"CREATE TABLE {db}.t (id String, n UInt8) ENGINE = MergeTree ORDER BY id")
    yield f"{db}.t"
    ch_client.command(f"DROP DATABASE IF EXISTS {db}")


def test_the_code_tables_name_the_engines_codes(ch_client: Any) -> None:
    codes = {**TRANSIENT_CODES, **FATAL_CODES}
    rows = ch_client.query("SELECT number, errorCodeToName(number) FROM numbers(1200) WHERE has({codes:Array(UInt64)}, "
                           "number)", parameters={"codes": sorted(codes)}).result_rows
    assert {int(code): name for code, name in rows} == codes


@pytest.mark.parametrize("case", ["server-type-mismatch", "client-type-mismatch", "cut-short-container",
                                  "insert-select-type-mismatch"])
def test_refused_data_is_rejected(ch_client: Any, table: str, case: str) -> None:
    def run() -> None:
        if case == "server-type-mismatch":  # ClickHouse parses an Avro string for the UInt8 column
            ch_client.raw_insert(table, column_names=["id", "n"], fmt="Avro",
                                 insert_block=_container(_AVRO_TEXT_N, [{"id": "a", "n": "many"}]))
        elif case == "client-type-mismatch":  # the client's serialiser cannot write 300 as UInt8
            ch_client.insert(table, [["a", 300]], column_names=["id", "n"])
        elif case == "cut-short-container":
            block = _container(_AVRO_ROW, [{"id": "x" * 64, "n": 1}])
            ch_client.raw_insert(table, column_names=["id", "n"], fmt="Avro", insert_block=block[:-30])
        else:
            ch_client.command(f"INSERT INTO {table} SELECT 'a', 'many'")

    with pytest.raises(ClickHouseRejectedError) as caught, classified_errors(f"inserting into {table}",
                                                                              parsing_data=True):
        run()
    assert caught.value.__cause__ is not None
    if case != "client-type-mismatch":
        assert caught.value.code is not None and caught.value.code not in TRANSIENT_CODES  # the engine's code
    assert ch_client.query(f"SELECT count() FROM {table}").result_rows[0][0] == 0


@pytest.mark.parametrize("case", ["unknown-table", "unknown-column", "unknown-database", "syntax"])
def test_errors_of_the_table_or_statement_are_fatal(ch_client: Any, table: str, case: str) -> None:
    db = table.split(".")[0]
    with pytest.raises(ClickHouseFatalError) as caught, classified_errors("writing"):
        if case == "unknown-table":
            ch_client.raw_insert(f"{db}.no_such_table", column_names=["id", "n"], fmt="Avro",
                                 insert_block=_container(_AVRO_ROW, [{"id": "a", "n": 1}]))
        elif case == "unknown-column":  # the client looks the columns up first: a ProgrammingError, no code
            ch_client.insert(table, [["a", 1]], column_names=["id", "no_such_column"])
        elif case == "unknown-database":
            ch_client.query("SELECT 1 FROM no_such_database_xyz.t")
        else:
            ch_client.query("SELEC 1")
    assert caught.value.__cause__ is not None


class _LosesConnection:
    """Delegates to the chdb client; the first ``failures`` inserts raise clickhouse-connect's OperationalError."""

    def __init__(self, client: Any, failures: int) -> None:
        self._client = client
        self.failures = failures
        self.attempts = 0

    def _maybe_fail(self) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise OperationalError("simulated: connection refused (ClickHouse restarting)")

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        return self._client.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        return self._client.raw_insert(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:  # the block path's insert on chdb
        self._maybe_fail()
        return self._client.command(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _ledger_batch(events: list[dict[str, Any]]) -> tuple[MessageBatch, Any]:
    codec = make_codec()
    batch = MessageBatch()
    for offset, event in enumerate(events):
        batch.add(SinkMessage("priced", offset % 3, offset, b"agent", codec.encode(event, "PricedUsageEvent")),
                  now=0.0)
    return batch, codec


def _writer(client: Any, database: str, codec: Any, letters: Letters) -> ClickHouseBatchWriter:
    return ClickHouseBatchWriter(client, database, LEDGER, letters, codec=codec, rng=random.Random(0),
                                 retry=RetryPolicy(base_seconds=0.001, cap_seconds=0.002))


def test_the_writer_retries_a_lost_connection_until_the_same_batch_lands_once(ch_client: Any,
                                                                               ch_database: str) -> None:
    rng = random.Random(21)
    batch, codec = _ledger_batch([make_priced(i, rng) for i in range(50)])
    flaky, waits = _LosesConnection(ch_client, failures=3), []
    report = _writer(flaky, ch_database, codec, Letters()).write(batch, wait=waits.append)
    assert (report.retries, len(waits), flaky.attempts, report.inserted, report.dead_lettered) == (3, 3, 4, 50, 0)
    stored = ch_client.query(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.usage_ledger").result_rows[0]
    assert tuple(stored) == (50, 50)


def test_the_writer_dead_letters_a_row_the_table_refuses_without_retrying(ch_client: Any,
                                                                         ch_database: str) -> None:
    rng = random.Random(22)
    events = [make_priced(i, rng) for i in range(40)]
    events[11]["output_tokens"] = -5  # an Avro long the UInt64 column refuses: a permanent error of one row
    batch, codec = _ledger_batch(events)
    letters = Letters()
    report = _writer(ch_client, ch_database, codec, letters).write(batch, wait=lambda s: pytest.fail("retried"))
    assert (report.retries, report.inserted, [lt.message.offset for lt in letters.letters]) == (0, 39, [11])
    assert letters.letters[0].reason.startswith("clickhouse: ")


def test_the_writer_halts_at_once_on_a_missing_table(ch_client: Any) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    ch_client.command(f"CREATE DATABASE {db}")  # no migrations: the ledger table does not exist
    try:
        rng = random.Random(23)
        batch, codec = _ledger_batch([make_priced(i, rng) for i in range(10)])
        letters = Letters()
        counting = _LosesConnection(ch_client, failures=0)
        with pytest.raises(SinkHaltError, match="cannot fix") as halted:
            _writer(counting, db, codec, letters).write(batch, wait=lambda s: pytest.fail("retried"))
        assert isinstance(halted.value.__cause__, ClickHouseFatalError) and halted.value.__cause__.code == 60
        assert counting.attempts <= 1 and letters.letters == []
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS {db}")
