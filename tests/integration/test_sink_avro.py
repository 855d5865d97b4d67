"""The block path of the ledger and spend sinks on chdb: Avro containers built from real priced frames land as
exactly the rows the row path writes (every column, Decimals exact), for both framings, mixed writer schemas, a
corrupt body (bisected to the one bad message, which goes to the DLQ) and through the store endpoint (HTTP). On chdb
a container is read with LowCardinality columns as plain types (finops.clickhouse.insert_avro_container): stored
exactly as the raw insert stores it, its temporary file gone afterwards, a quote in the temporary directory's name
harmless."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import struct
from decimal import Decimal, localcontext
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas.loader import load_schema
from schemas.wire import AvroCodec, schema_fingerprint
from sinks.rows import LEDGER, SPEND, SPEND_COLUMNS
from sinks.writer import ClickHouseBatchWriter, DeadLetter, MessageBatch, SinkHaltError, SinkMessage
from tests.integration.test_sink_support import CONFLUENT_ID, make_codec, make_priced, spend_partials

pytestmark = pytest.mark.integration

ROW_LEDGER = dataclasses.replace(LEDGER, avro_prefix=None)  # today's row path, for comparison
ROW_SPEND = dataclasses.replace(SPEND, avro_prefix=None)


class CountingClient:
    """Delegates to a clickhouse-connect client, counting row inserts and Avro container inserts."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.rows = 0
        self.blocks = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self.rows += 1
        return self._client.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self.blocks += 1
        return self._client.raw_insert(*args, **kwargs)

    def command(self, cmd: str, *args: Any, **kwargs: Any) -> Any:
        # On chdb a container is inserted by an INSERT ... SELECT FROM file() statement (insert_avro_container).
        self.blocks += cmd.startswith("INSERT INTO")
        return self._client.command(cmd, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Letters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self, timeout: float) -> None:
        return None


def _edge_events(n: int, seed: int) -> list[dict[str, Any]]:
    """Priced events with the awkward values: nulls and values in every nullable union, extreme Decimals, empty
    and non-ASCII tags, long strings, zero and large counts."""
    rng = random.Random(seed)
    events = [make_priced(i, rng) for i in range(n)]
    for i, e in enumerate(events):
        if i % 4 == 1:
            e["reported_cost"] = Decimal("12345678901234.123456789012")
            e["cost_delta_usd"] = Decimal("-0.000000000001")
            e["cost_mismatch"] = True
            e["price_book_version"] = "pb-2025-06"
            e["prompt_hash"] = "ab" * 32
            e["parent_task_id"] = f"task-{i // 2}"
        if i % 4 == 2:
            e["tags"] = {}
            e["latency_ms"] = None
            e["task_type"] = "résumé ✓"
            e["pricing_status"] = "unpriced"
            e["unpriced_reason"] = "unknown model 'x' of provider 'y'"
            e["price_source"] = "none"
            for name in ("cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd",
                         "cost_cache_write_usd", "cost_other_usd"):
                e[name] = Decimal(0)
            for name in ("price_input_mtok", "price_output_mtok", "price_cache_read_mtok"):
                e[name] = None
        if i % 4 == 3:
            e["tags"] = {"ключ": "значение", "k" * 200: "v" * 256, "": ""}
            e["cost_usd"] = Decimal("99999999999999.999999999999")
            e["input_tokens"] = 2**62
            e["source_offset"] = 2**40
            e["price_cache_write_1h_mtok"] = Decimal("0.000000000001")
            e["computed_cost_usd"] = Decimal("1.5")
            e["cost_basis"] = "reported"
            e["late"] = True
    return events


def _batch(values: list[bytes], topic: str = "priced") -> MessageBatch:
    batch = MessageBatch()
    for offset, value in enumerate(values):
        batch.add(SinkMessage(topic, offset % 3, offset, b"agent", value), now=0.0)
    return batch


def _columns(ch: Any, db: str, table: str) -> list[str]:
    return [name for (name,) in ch.query(f"SELECT name FROM system.columns WHERE database = '{db}' AND table = "
                                         f"'{table}' AND name != 'ingested_at' ORDER BY position").result_rows]


def _stored(ch: Any, db: str, table: str, key: str) -> dict[str, tuple[Any, ...]]:
    cols = _columns(ch, db, table)
    rows = ch.query(f"SELECT {', '.join(cols)} FROM {db}.{table}").result_rows
    index = cols.index(key)
    return {row[index]: tuple(row) for row in rows}


@pytest.fixture
def second_database(ch_client: Any) -> Any:
    from sinks.migrations import MigrationRunner

    name = f"t_rows_{random.getrandbits(40):010x}"
    MigrationRunner(ch_client, name).apply()
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


def test_containers_of_priced_frames_land_as_the_row_path_rows(ch_client: Any, ch_database: str,
                                                                second_database: str) -> None:
    events = _edge_events(400, seed=11)
    codec = make_codec()
    values = [codec.encode(e, "PricedUsageEvent") for e in events]

    blocks = CountingClient(ch_client)
    report = ClickHouseBatchWriter(blocks, ch_database, LEDGER, Letters(), codec=codec).write(_batch(values))
    rows = CountingClient(ch_client)
    ClickHouseBatchWriter(rows, second_database, ROW_LEDGER, Letters(), codec=codec).write(_batch(values))

    assert report.inserted == 400 and report.dead_lettered == 0
    assert (blocks.blocks, blocks.rows) == (1, 0) and (rows.blocks, rows.rows) == (0, 1)
    by_block = _stored(ch_client, ch_database, "usage_ledger", "event_id")
    by_row = _stored(ch_client, second_database, "usage_ledger", "event_id")
    assert len(by_block) == 400 and by_block == by_row  # every column of every row, ingested_at aside
    # ... and both equal the events sent: Decimals exact to 12 places, nulls kept where the column keeps them.
    for e in events:
        stored = dict(zip(_columns(ch_client, ch_database, "usage_ledger"), by_block[e["event_id"]], strict=True))
        for name in ("cost_usd", "reported_cost", "cost_delta_usd", "price_cache_write_1h_mtok", "computed_cost_usd",
                     "input_tokens", "source_offset", "latency_ms", "tags", "cost_basis", "late"):
            sent = e.get(name, {"computed_cost_usd": None, "cost_basis": "catalogue"}.get(name))
            assert stored[name] == sent, (name, e["event_id"])
        assert stored["task_type"] == (e["task_type"] or "") and stored["row_kind"] == "original"
    # The rollups fed by the materialized views saw the same blocks' rows.
    for table in ("spend_hourly", "spend_daily"):
        totals = [ch_client.query(f"SELECT sum(cost_usd), sum(calls) FROM {db}.{table}").result_rows[0]
                  for db in (ch_database, second_database)]
        with localcontext(prec=60):  # 14 integer digits + 12 places, summed: beyond the default 28 digits
            assert totals[0] == totals[1] and Decimal(totals[0][0]) == sum(e["cost_usd"] for e in events)


def test_spend_partials_as_containers_land_as_the_row_path_rows(ch_client: Any, ch_database: str,
                                                                 second_database: str) -> None:
    codec = AvroCodec()
    partials = spend_partials([make_priced(i, random.Random(i)) for i in range(300)],
                              dimensions=("team", "model", "agent", "project"))
    values = [codec.encode(p, "SpendAggregate") for p in partials]
    blocks = CountingClient(ch_client)
    ClickHouseBatchWriter(blocks, ch_database, SPEND, Letters(), codec=codec).write(_batch(values, "spend"))
    ClickHouseBatchWriter(ch_client, second_database, ROW_SPEND, Letters(), codec=codec).write(_batch(values, "spend"))
    assert blocks.blocks == 1 and blocks.rows == 0
    by_block = _stored(ch_client, ch_database, "spend_1m", "aggregate_id")
    assert len(by_block) == len(partials) and by_block == _stored(ch_client, second_database, "spend_1m",
                                                                  "aggregate_id")
    assert list(SPEND_COLUMNS) == _columns(ch_client, ch_database, "spend_1m")


def test_confluent_framed_batch_goes_as_one_container(ch_client: Any, ch_database: str,
                                                      second_database: str) -> None:
    events = _edge_events(120, seed=12)
    codec = make_codec()
    values = [codec.encode_confluent(e, "PricedUsageEvent", CONFLUENT_ID) for e in events]
    blocks = CountingClient(ch_client)
    report = ClickHouseBatchWriter(blocks, ch_database, LEDGER, Letters(), codec=codec).write(_batch(values))
    ClickHouseBatchWriter(ch_client, second_database, ROW_LEDGER, Letters(), codec=codec).write(_batch(values))
    assert report.inserted == 120 and (blocks.blocks, blocks.rows) == (1, 0)
    assert _stored(ch_client, ch_database, "usage_ledger", "event_id") == _stored(
        ch_client, second_database, "usage_ledger", "event_id")


def _old_priced_schema() -> dict[str, Any]:
    """PricedUsageEvent as it was before cost_basis: without its last two fields."""
    schema = load_schema("PricedUsageEvent")
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("computed_cost_usd", "cost_basis")]
    return schema


def test_mixed_writer_schemas_each_land_as_the_row_path_would(ch_client: Any, ch_database: str,
                                                              second_database: str) -> None:
    events = _edge_events(90, seed=13)
    codec = make_codec()
    old = _old_priced_schema()
    old_fp = codec.register_writer_schema(old)
    assert old_fp == schema_fingerprint(old)
    parsed_old = parse_schema(old)
    unknown = dict(old, fields=[*old["fields"], {"name": "extra", "type": "int", "default": 0}])
    values: list[bytes] = []
    for i, e in enumerate(events):
        if i % 3 == 0:
            values.append(codec.encode(e, "PricedUsageEvent"))
        elif i % 3 == 1:
            values.append(codec.encode_confluent(e, "PricedUsageEvent", CONFLUENT_ID))
        else:  # an older producer: the writer schema without the cost_basis fields
            body = io.BytesIO()
            schemaless_writer(body, parsed_old, {k: v for k, v in e.items() if k not in ("computed_cost_usd",
                                                                                         "cost_basis")})
            values.append(b"\xc3\x01" + old_fp + body.getvalue())
    # A writer schema nobody registered: dead-lettered by both paths with the codec's reason.
    values.append(b"\xc3\x01" + schema_fingerprint(unknown) + values[2][10:])
    # Another record on the topic.
    values.append(codec.encode({"alert_id": "a", "dedup_key": "k", "kind": "drift", "severity": "info",
                                "state": "trigger", "occurred_at": events[0]["occurred_at"], "title": "x",
                                "summary": "y"}, "Alert"))

    blocks, block_letters = CountingClient(ch_client), Letters()
    report = ClickHouseBatchWriter(blocks, ch_database, LEDGER, block_letters, codec=codec).write(_batch(values))
    row_letters = Letters()
    ClickHouseBatchWriter(ch_client, second_database, ROW_LEDGER, row_letters, codec=codec).write(_batch(values))

    assert report.inserted == 90 and report.dead_lettered == 2
    # Both framings of the current schema share one container; the old writer's events take one row insert.
    assert (blocks.blocks, blocks.rows) == (1, 1)
    assert _stored(ch_client, ch_database, "usage_ledger", "event_id") == _stored(
        ch_client, second_database, "usage_ledger", "event_id")
    assert [(lt.message.offset, lt.reason) for lt in block_letters.letters] == [
        (lt.message.offset, lt.reason) for lt in row_letters.letters]
    reasons = [lt.reason for lt in block_letters.letters]
    assert reasons[0].startswith("decode: unknown writer schema fingerprint") and "record Alert" in reasons[1]


@pytest.mark.parametrize("where", ["middle", "last"])
def test_corrupt_body_is_bisected_to_the_one_bad_message_which_goes_to_the_dlq(
    ch_client: Any, ch_database: str, where: str
) -> None:
    events = _edge_events(256, seed=14)
    codec = make_codec()
    values = [codec.encode(e, "PricedUsageEvent") for e in events]
    bad = 101 if where == "middle" else 255
    values[bad] = values[bad][:-25]  # a body cut short: the header and prefix are fine, the rest is not
    blocks, letters = CountingClient(ch_client), Letters()
    report = ClickHouseBatchWriter(blocks, ch_database, LEDGER, letters, codec=codec).write(_batch(values))

    assert report.inserted == 255 and report.dead_lettered == 1
    assert [lt.message.offset for lt in letters.letters] == [bad]
    assert letters.letters[0].reason.startswith("decode: single-object PricedUsageEvent body does not decode")
    assert blocks.blocks > 2 and blocks.rows == 0  # bisected in containers; the bad one failed its full decode
    stored = _stored(ch_client, ch_database, "usage_ledger", "event_id")
    assert set(stored) == {e["event_id"] for i, e in enumerate(events) if i != bad}


def test_negative_count_is_refused_by_the_table_and_dead_lettered_with_the_reason(ch_client: Any,
                                                                                   ch_database: str) -> None:
    events = _edge_events(64, seed=15)
    events[7]["output_tokens"] = -3  # Avro long takes it; the UInt64 column's range check does not
    codec = make_codec()
    letters = Letters()
    report = ClickHouseBatchWriter(ch_client, ch_database, LEDGER, letters, codec=codec).write(
        _batch([codec.encode(e, "PricedUsageEvent") for e in events]))
    assert report.inserted == 63 and [lt.message.offset for lt in letters.letters] == [7]
    assert letters.letters[0].reason.startswith("clickhouse:") and "output_tokens" in letters.letters[0].reason
    top = ch_client.query(f"SELECT max(output_tokens) FROM {ch_database}.usage_ledger").result_rows[0][0]
    assert top < 2**63


def test_block_path_through_the_store_endpoint(ch_client: Any, ch_database: str, second_database: str,
                                               store_credentials: Any) -> None:
    import clickhouse_connect

    from sinks.store_server import serve_store

    events = _edge_events(150, seed=16)
    codec = make_codec()
    values = [codec.encode(e, "PricedUsageEvent") for e in events]
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        user, password = store_credentials.for_role(readonly=False)
        http = clickhouse_connect.get_client(host=server.host, port=server.port, database=ch_database,
                                             username=user, password=password)
        counting = CountingClient(http)
        writer = ClickHouseBatchWriter(counting, ch_database, LEDGER, Letters(), codec=codec)
        first = writer.write(_batch(values))
        assert first.inserted == 150 and (counting.blocks, counting.rows) == (1, 0)
        again = writer.write(_batch(values))  # redelivered: the stored-id check answers over HTTP too
        assert (again.inserted, again.duplicates, counting.blocks) == (0, 150, 1)
        http.close()
    ClickHouseBatchWriter(ch_client, second_database, ROW_LEDGER, Letters(), codec=codec).write(_batch(values))
    assert _stored(ch_client, ch_database, "usage_ledger", "event_id") == _stored(
        ch_client, second_database, "usage_ledger", "event_id")


def test_retried_container_is_dropped_by_its_token(ch_client: Any, ch_database: str) -> None:
    events = _edge_events(100, seed=17)
    codec = make_codec()
    batch = _batch([codec.encode(e, "PricedUsageEvent") for e in events])

    class Blind(CountingClient):
        def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
            result = self._client.query(sql, *args, **kwargs)
            if "event_id IN" in sql:
                result.result_rows.clear()
            return result

        def raw_query(self, sql: str, *args: Any, **kwargs: Any) -> Any:  # how the writer asks (sinks/writer.py)
            body = self._client.raw_query(sql, *args, **kwargs)
            return b"" if "event_id IN" in sql else body

    writer = ClickHouseBatchWriter(Blind(ch_client), ch_database, LEDGER, Letters(), codec=codec)
    first, second = writer.write(batch), writer.write(batch)
    assert first.first_token == second.first_token
    count, cost = ch_client.query(f"SELECT count(), sum(cost_usd) FROM {ch_database}.usage_ledger").result_rows[0]
    assert count == 100 and Decimal(cost) == sum(e["cost_usd"] for e in events)
    hourly = ch_client.query(f"SELECT sum(calls) FROM {ch_database}.spend_hourly").result_rows[0][0]
    assert hourly == 100


def _container(events: list[dict[str, Any]]) -> tuple[bytes, tuple[str, ...]]:
    from sinks.avro_block import build_container, build_container_header

    codec = make_codec()
    values = [codec.encode(e, "PricedUsageEvent") for e in events]
    head, sync = build_container_header(load_schema("PricedUsageEvent"))
    return build_container(head, sync, values, [10] * len(values)), tuple(LEDGER.columns)


def test_embedded_container_read_as_plain_types_is_stored_as_the_raw_insert_stores_it(
        ch_client: Any, ch_database: str, second_database: str, tmp_path: Any, monkeypatch: Any) -> None:
    import tempfile

    from finops.clickhouse import insert_avro_container, read_types

    block, columns = _container(_edge_events(200, seed=18))
    declared = dict(ch_client.query(f"SELECT name, type FROM system.columns WHERE database = '{ch_database}' AND "
                                    "table = 'usage_ledger'").result_rows)
    types = read_types(declared)
    assert types["team"] == "String" and declared["team"] == "LowCardinality(String)"
    odd = tmp_path / "it's a \\ dir"
    odd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(odd))
    insert_avro_container(ch_client, f"{ch_database}.usage_ledger", columns, block,
                          settings={"insert_deduplication_token": "plain-types"}, types=types)
    assert list(odd.iterdir()) == []
    insert_avro_container(ch_client, f"{second_database}.usage_ledger", columns, block,
                          settings={"insert_deduplication_token": "raw"}, types=None)
    stored = _stored(ch_client, ch_database, "usage_ledger", "event_id")
    assert len(stored) == 200 and stored == _stored(ch_client, second_database, "usage_ledger", "event_id")
    after = dict(ch_client.query(f"SELECT name, type FROM system.columns WHERE database = '{ch_database}' AND "
                                 "table = 'usage_ledger'").result_rows)
    assert after == declared  # the table keeps its types: only the reading differs
    for table in ("spend_hourly", "spend_daily"):
        q = f"SELECT sum(calls), sum(cost_usd) FROM {{}}.{table}"
        assert ch_client.query(q.format(ch_database)).result_rows == ch_client.query(
            q.format(second_database)).result_rows


def test_embedded_truncated_container_is_refused_as_data_and_leaves_no_file(
        ch_client: Any, ch_database: str, tmp_path: Any, monkeypatch: Any) -> None:
    import tempfile

    from finops.clickhouse import classify_clickhouse_error, insert_avro_container, read_types

    block, columns = _container(_edge_events(20, seed=19))
    types = read_types(dict(ch_client.query(f"SELECT name, type FROM system.columns WHERE database = "
                                            f"'{ch_database}' AND table = 'usage_ledger'").result_rows))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(Exception) as caught:
        insert_avro_container(ch_client, f"{ch_database}.usage_ledger", columns, block[:-30],
                              settings={"insert_deduplication_token": "cut"}, types=types)
    assert classify_clickhouse_error(caught.value, parsing_data=True) == "rejected"
    assert list(tmp_path.iterdir()) == []
    assert ch_client.query(f"SELECT count() FROM {ch_database}.usage_ledger").result_rows[0][0] == 0


_AWKWARD_IDS = ("it's", "a,b", "line\nbreak", "tab\tand\\slash", "résumé ✓", "{ids:String}", "x" * 300, "'); --")


@pytest.mark.parametrize("values", [
    [f"00000000-0000-4000-8000-{i:012d}" for i in range(5000)],  # ids as they come: lines as they are
    ["a", "", "b"],  # an empty value: length-prefixed
    ["a", "b", ""],
    list(_AWKWARD_IDS),
    [],
], ids=["uuids", "empty-inside", "empty-last", "awkward", "none"])
def test_strings_file_reads_back_exactly_the_values(ch_client: Any, values: list[str]) -> None:
    from finops.clickhouse import strings_file

    with strings_file(values) as subquery:
        body = ch_client.raw_query(f"SELECT value FROM {subquery}", fmt="JSONCompactEachRow")
    assert [json.loads(line)[0] for line in bytes(body).splitlines() if line] == values


@pytest.mark.parametrize("through", ["chdb", "endpoint"])
def test_stored_id_check_finds_awkward_ids_exactly(ch_client: Any, ch_database: str, store_credentials: Any,
                                                    through: str) -> None:
    """The stored-id check with ids no UUID looks like (quotes, separators, escapes, non-ASCII, a length past one
    varint byte, SQL): on chdb the set travels as a RowBinary file, through the endpoint as a bound array; either
    way a redelivered batch is found stored, id for id, and a batch of fresh ids is not."""
    import clickhouse_connect

    from sinks.store_server import serve_store

    rng = random.Random(23)
    events = [{**make_priced(i, rng), "event_id": event_id} for i, event_id in enumerate(_AWKWARD_IDS)]
    fresh = [{**make_priced(i, rng), "event_id": event_id + "?"} for i, event_id in enumerate(_AWKWARD_IDS)]
    codec = make_codec()
    batch = _batch([codec.encode(e, "PricedUsageEvent") for e in events])
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        client: Any = ch_client
        if through == "endpoint":
            user, password = store_credentials.for_role(readonly=False)
            client = clickhouse_connect.get_client(host=server.host, port=server.port, database=ch_database,
                                                   username=user, password=password)
        writer = ClickHouseBatchWriter(client, ch_database, LEDGER, Letters(), codec=codec)
        first = writer.write(batch)
        again = writer.write(batch)
        later = MessageBatch()  # fresh events at later offsets (so under another deduplication token)
        for offset, e in enumerate(fresh, start=100):
            later.add(SinkMessage("priced", offset % 3, offset, b"agent", codec.encode(e, "PricedUsageEvent")), now=0.0)
        other = writer.write(later)
    assert (first.inserted, first.duplicates) == (len(events), 0)
    assert (again.inserted, again.duplicates) == (0, len(events))
    assert (other.inserted, other.duplicates) == (len(events), 0)
    stored = {event_id for (event_id,) in ch_client.query(
        f"SELECT event_id FROM {ch_database}.usage_ledger").result_rows}
    assert stored == set(_AWKWARD_IDS) | {e["event_id"] for e in fresh}


def test_a_temporary_directory_with_glob_characters_is_refused_rather_than_inserting_nothing(
        ch_client: Any, ch_database: str, tmp_path: Any, monkeypatch: Any) -> None:
    """chdb reads an insert's temporary file by its path, as a glob when it holds {, *, ? or [: a pattern matching
    nothing reads as empty, so clickhouse-connect's own insert stores nothing and reports success. Every chdb path
    of ours refuses such a TMPDIR with an error that says so, and nothing is stored meanwhile."""
    import tempfile

    from finops.clickhouse import connect, insert_avro_container, strings_file
    from schemas.errors import ConfigError

    globbed = tmp_path / "{a,b}*"
    globbed.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(globbed))
    ch_client.insert(f"{ch_database}.usage_ledger", [], column_names=["event_id"])  # the hazard being guarded
    with pytest.raises(ConfigError, match="TMPDIR"):
        connect(f"chdb://{tmp_path / 'other'}")
    with pytest.raises(ConfigError, match="glob character"), strings_file(["x"]):
        pass
    block, columns = _container(_edge_events(5, seed=24))
    with pytest.raises(ConfigError, match="TMPDIR"):
        insert_avro_container(ch_client, f"{ch_database}.usage_ledger", columns, block, settings={}, types=None)
    codec = make_codec()
    writer = ClickHouseBatchWriter(ch_client, ch_database, LEDGER, Letters(), codec=codec)
    with pytest.raises(SinkHaltError, match="set TMPDIR to a plain path"):  # the sink stops, committing nothing
        writer.write(_batch([codec.encode(e, "PricedUsageEvent") for e in _edge_events(5, seed=25)]))
    assert list(globbed.iterdir()) == []
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert ch_client.query(f"SELECT count() FROM {ch_database}.usage_ledger").result_rows[0][0] == 0


def test_confluent_id_layout() -> None:
    # The 5-byte Confluent header the block path strips: magic 0, then the registry id big-endian.
    value = make_codec().encode_confluent(make_priced(0, random.Random(0)), "PricedUsageEvent", CONFLUENT_ID)
    assert value[:1] == b"\x00" and struct.unpack(">I", value[1:5])[0] == CONFLUENT_ID
