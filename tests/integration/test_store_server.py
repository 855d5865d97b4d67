"""The store endpoint with the real clickhouse-connect HTTP client and plain HTTP (urllib), over the session's chdb
store (chdb allows one data path per process, so the endpoint fronts ``ch_client``'s path; each test has its own
database). Clients log in with the session's installation credentials (``store_credentials``); DDL runs on the
owner's client, as ``finops migrate`` does: the endpoint refuses it (tests/security/ tries every class)."""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.store_server import StoreServer, StoreServerError, serve_store

pytestmark = pytest.mark.integration

TABLE_DDL = """
CREATE TABLE {db}.calls (
    id UInt32,
    cost Decimal(38, 12),
    at DateTime64(6, 'UTC'),
    tags Map(String, String),
    note Nullable(String),
    model LowCardinality(String)
) ENGINE = MergeTree ORDER BY id
"""

ROWS = [
    (1, Decimal("0.000000000001"), datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), {"team": "a"}, None, "gpt-4o"),
    (
        2,
        Decimal("12345678901234567890.123456789012"),
        datetime(2025, 6, 30, 23, 59, 59, 1, tzinfo=UTC),
        {},
        "tab\there 'quoted' \\ back",
        "claude",
    ),
    (3, Decimal("-7.500000000000"), datetime(2024, 2, 29, 0, 0, 0, tzinfo=UTC), {"k": "v", "x": ""}, "", "gpt-4o"),
]


@pytest.fixture
def database(ch_client: Any) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    ch_client.command(f"CREATE DATABASE {name}")
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


CREDENTIALS: Any = None


@pytest.fixture
def store(ch_client: Any, store_credentials: Any) -> Iterator[StoreServer]:
    global CREDENTIALS
    CREDENTIALS = store_credentials
    server = serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials)
    with server:
        yield server


def _client(store: StoreServer, database: str, *, reader: bool = False, **kwargs: Any) -> Any:
    user, password = CREDENTIALS.for_role(readonly=reader)
    return clickhouse_connect.get_client(host=store.host, port=store.port, database=database, username=user,
                                         password=password, **kwargs)


def _auth() -> dict[str, str]:
    return {"X-ClickHouse-User": CREDENTIALS.writer_user, "X-ClickHouse-Key": CREDENTIALS.writer_password}


def _post(url: str, body: bytes, headers: dict[str, str] | None = None, *, auth: bool = True
          ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers={**(_auth() if auth else {}), **(headers or {})},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def _as_utc(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # clickhouse-connect returns a column's DateTime64 naive when its zone is the server's (UTC here); make the
    # comparison about the instant.
    return [tuple(v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for v in r)
            for r in rows]


def test_ping_and_bare_get_answer_ok(store: StoreServer) -> None:
    for path in ("/ping", "/"):
        with urllib.request.urlopen(store.url + path, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b"Ok.\n"
    client = _client(store, "default")
    assert client.ping() is True


def test_types_round_trip_exactly_through_http(store: StoreServer, database: str, ch_client: Any) -> None:
    client = _client(store, database)  # compress=True by default: inserts arrive lz4-compressed
    ch_client.command(TABLE_DDL.format(db=database))
    summary = client.insert("calls", ROWS[:2])
    assert summary.written_rows == 2
    plain = _client(store, database, compress=False)
    plain.insert("calls", ROWS[2:])

    got = client.query("SELECT id, cost, at, tags, note, model FROM calls ORDER BY id").result_rows
    assert _as_utc(got) == ROWS
    assert [r[1] for r in got] == [r[1] for r in ROWS]  # Decimal equality, exact to 12 places
    # The rows landed in the owner's store: its own client sees them.
    direct = ch_client.query(f"SELECT id, cost FROM {database}.calls ORDER BY id").result_rows
    assert direct == [(r[0], r[1]) for r in ROWS]
    # Column types survive (LowCardinality, Nullable, Map, DateTime64 with its zone).
    types = dict(client.query("SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'calls'",
                              parameters={"db": database}).result_rows)
    assert types["model"] == "LowCardinality(String)" and types["at"] == "DateTime64(6, 'UTC')"


def test_server_side_binding_keeps_hostile_values_as_values(store: StoreServer, database: str, ch_client: Any) -> None:
    client = _client(store, database)
    ch_client.command(TABLE_DDL.format(db=database))
    client.insert("calls", ROWS)
    hostile = "x' OR 1=1 --"
    server_bound = client.query("SELECT count() FROM calls WHERE model = {m:String}", parameters={"m": hostile})
    assert server_bound.result_rows == [(0,)]
    client_bound = client.query("SELECT count() FROM calls WHERE model = %(m)s", parameters={"m": hostile})
    assert client_bound.result_rows == [(0,)]
    server_bound = client.query("SELECT count() FROM calls WHERE model = {m:String}", parameters={"m": "gpt-4o"})
    assert server_bound.result_rows == [(2,)]
    # Escaped text form passes through untouched: backslash, tab, quote, NULL.
    tricky = "a\\b\tc'd"
    echoed = client.query("SELECT {s:String} AS s, {n:Nullable(String)} IS NULL", parameters={"s": tricky, "n": None})
    assert echoed.result_rows == [(tricky, 1)]


def test_long_parameters_travel_form_encoded(store: StoreServer, database: str) -> None:
    client = _client(store, database, form_encode_query_params=True)
    value = "é" * 5000
    got = client.query("SELECT {v:String}, lengthUTF8({w:String})", parameters={"v": value, "w": value})
    assert got.result_rows == [(value, 5000)]


def test_errors_surface_as_clickhouse_errors(store: StoreServer, database: str) -> None:
    client = _client(store, database)
    with pytest.raises(DatabaseError) as caught:
        client.query("SELECT * FROM no_such_table")
    assert "Code: 60" in str(caught.value) and "UNKNOWN_TABLE" in str(caught.value)
    assert caught.value.code == 60

    status, headers, body = _post(f"{store.url}/?database={database}", b"SELECT * FROM no_such_table")
    assert status == 404  # ClickHouse's status for UNKNOWN_TABLE
    assert headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception:")

    status, headers, body = _post(f"{store.url}/", b"SELECT (1")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "62"

    with pytest.raises(DatabaseError, match="NOT_IMPLEMENTED"):
        client.command("SET max_threads = 1")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {db}.calls (id, cost, at, model) VALUES (9, 1, now(), 'm')",
        "CREATE TABLE {db}.other (a Int8) ENGINE = Memory",
        "DROP TABLE {db}.calls",
        "ALTER TABLE {db}.calls ADD COLUMN z Int8",
        "TRUNCATE TABLE {db}.calls",
    ],
)
def test_readonly_setting_refuses_writes(store: StoreServer, database: str, statement: str, ch_client: Any) -> None:
    """Read-only clients (the reader user, ``readonly=1``, a GET) write nothing: the policy refuses the statement
    (ACCESS_DENIED, 497) or the read-only handle does (READONLY, 164); DDL is refused for the writer too."""
    writer = _client(store, database)
    ch_client.command(TABLE_DDL.format(db=database))
    writer.insert("calls", ROWS)
    for reader in (_client(store, database, settings={"readonly": 1}), _client(store, database, reader=True)):
        with pytest.raises(DatabaseError) as caught:
            reader.command(statement.format(db=database))
        assert caught.value.code in (164, 497)
        assert reader.query("SELECT count() FROM calls").result_rows == [(3,)]
    # Per-request readonly on an otherwise writable client, and a GET, are refused too.
    with pytest.raises(DatabaseError, match="READONLY|ACCESS_DENIED"):
        writer.command(statement.format(db=database), settings={"readonly": 1})
    user, password = CREDENTIALS.for_role(readonly=False)
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(
            f"{store.url}/?" + urllib.parse.urlencode({"query": statement.format(db=database), "user": user,
                                                       "password": password}), timeout=10
        )
    assert http_err.value.headers["X-ClickHouse-Exception-Code"] in ("164", "497")
    if statement.startswith("INSERT"):
        assert b"method GET implies readonly" in http_err.value.read()
    # Read-only requests leave nothing behind: the writable path still writes.
    writer.insert("calls", [(4, Decimal("1"), ROWS[0][2], {}, None, "m")])
    assert writer.query("SELECT count() FROM calls").result_rows == [(4,)]


def test_readonly_client_cannot_insert_rows(store: StoreServer, database: str, ch_client: Any) -> None:
    ch_client.command(TABLE_DDL.format(db=database))
    for reader in (_client(store, database, settings={"readonly": 1}), _client(store, database, reader=True)):
        with pytest.raises(DatabaseError, match="READONLY|ACCESS_DENIED"):
            reader.insert("calls", ROWS)
    assert ch_client.command(f"SELECT count() FROM {database}.calls") == 0


def test_settings_apply_to_one_request_only(store: StoreServer, database: str) -> None:
    client = _client(store, database)
    setting = "SELECT value FROM system.settings WHERE name = 'max_result_rows'"
    assert client.query(setting, settings={"max_result_rows": 12345}).result_rows == [("12345",)]
    assert client.query(setting).result_rows == [("0",)]
    with pytest.raises(DatabaseError) as caught:
        client.query("SELECT number FROM numbers(10)", settings={"max_result_rows": 2, "result_overflow_mode": "throw"})
    assert caught.value.code == 396  # TOO_MANY_ROWS_OR_BYTES


def test_curl_like_formats(store: StoreServer, database: str, ch_client: Any) -> None:
    client = _client(store, database)
    ch_client.command(TABLE_DDL.format(db=database))
    client.insert("calls", ROWS)
    base = f"{store.url}/?database={database}"

    status, headers, body = _post(base, b"SELECT id, cost, model FROM calls ORDER BY id FORMAT JSONEachRow")
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONEachRow"
    records = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3] and records[1]["model"] == "claude"
    assert headers["X-ClickHouse-Timezone"] and headers["X-ClickHouse-Query-Id"]
    assert json.loads(headers["X-ClickHouse-Summary"])["result_bytes"] == str(len(body))

    _, headers, body = _post(base + "&default_format=CSV", b"SELECT id, model FROM calls ORDER BY id")
    assert headers["X-ClickHouse-Format"] == "CSV" and body == b'1,"gpt-4o"\n2,"claude"\n3,"gpt-4o"\n'
    _, _, body = _post(base, b"SELECT id FROM calls ORDER BY id")  # default: TabSeparated
    assert body == b"1\n2\n3\n"
    _, headers, body = _post(base, b"SELECT count() AS n FROM calls FORMAT JSON")
    assert headers["Content-Type"].startswith("application/json") and json.loads(body)["data"] == [{"n": 3}]

    # A plain-HTTP insert: statement in the query parameter, rows in the body.
    insert = urllib.parse.urlencode(
        {"database": database, "query": "INSERT INTO calls (id, cost, at, model) FORMAT JSONEachRow"})
    status, headers, _ = _post(f"{store.url}/?{insert}",
                               b'{"id":7,"cost":"0.1","at":"2025-01-01 00:00:00","model":"m"}\n')
    assert status == 200 and json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "1"
    assert client.query("SELECT cost FROM calls WHERE id = 7").result_rows == [(Decimal("0.1"),)]


def test_authentication_is_required_and_never_echoes_the_password(
    ch_client: Any, database: str, store_credentials: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-pass"
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials, users={"finops": secret}) as server:
        good = clickhouse_connect.get_client(
            host=server.host, port=server.port, username="finops", password=secret, database=database
        )
        assert good.query("SELECT 1").result_rows == [(1,)]
        with pytest.raises(DatabaseError) as caught:
            clickhouse_connect.get_client(host=server.host, port=server.port, username="finops", password="wrong")
        assert caught.value.code == 516 and "wrong" not in str(caught.value)
        with pytest.raises(DatabaseError) as caught:  # no credentials at all: ClickHouse's "default" user
            clickhouse_connect.get_client(host=server.host, port=server.port)
        assert caught.value.code == 516
        status, headers, body = _post(f"{server.url}/", b"SELECT 1", auth=False)
        assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "516"
        assert body.startswith(b"Code: 516. DB::Exception: default: Authentication failed")
        status, _, body = _post(f"{server.url}/", b"SELECT 2",
                                {"X-ClickHouse-User": "finops", "X-ClickHouse-Key": secret}, auth=False)
        assert (status, body) == (200, b"2\n")
        basic = "Basic " + base64.b64encode(f"finops:{secret}".encode()).decode()
        assert _post(f"{server.url}/", b"SELECT 3", {"Authorization": basic}, auth=False)[2] == b"3\n"
        reader = "Basic " + base64.b64encode(
            f"{store_credentials.reader_user}:{store_credentials.reader_password}".encode()).decode()
        assert _post(f"{server.url}/", b"SELECT 4", {"Authorization": reader}, auth=False)[2] == b"4\n"
        wrong = "Basic " + base64.b64encode(f"{store_credentials.reader_user}:{secret}".encode()).decode()
        assert _post(f"{server.url}/", b"SELECT 5", {"Authorization": wrong}, auth=False)[0] == 403
        with urllib.request.urlopen(server.url + "/ping", timeout=10) as response:  # health checks need no login
            assert response.read() == b"Ok.\n"
    assert secret not in caplog.text
    assert store_credentials.reader_password not in caplog.text
    assert store_credentials.writer_password not in caplog.text


def test_concurrent_clients_get_their_own_answers(store: StoreServer, database: str) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            client = _client(store, database)
            for i in range(10):
                got = client.query("SELECT {n:UInt32} * 1000 + {i:UInt32}", parameters={"n": n, "i": i}).result_rows
                assert got == [(n * 1000 + i,)]
                settings = {"readonly": 1} if n % 2 else None
                got = client.query("SELECT value FROM system.settings WHERE name = 'readonly'", settings=settings)
                assert got.result_rows == [("2" if n % 2 else "0",)]
        except BaseException as err:  # noqa: BLE001 - collected and re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_port_in_use_is_a_clear_error(ch_client: Any, store: StoreServer, store_credentials: Any) -> None:
    with pytest.raises(StoreServerError, match="cannot listen on"):
        serve_store(ch_client, "127.0.0.1", store.port, credentials=store_credentials)


def test_stop_closes_the_port(ch_client: Any, store_credentials: Any) -> None:
    server = serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials).start()
    url = server.url
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/ping", timeout=5)
    # The owner's client is untouched by the endpoint's handles closing.
    assert ch_client.query("SELECT 1").result_rows == [(1,)]


def test_error_code_numbers_match_the_engine(ch_client: Any) -> None:
    """The codes hard-coded for ClickHouse's status mapping are the engine's own (errorCodeToName)."""
    from sinks import store_server as ss

    names = {ss.SYNTAX_ERROR: "SYNTAX_ERROR", ss.NOT_IMPLEMENTED: "NOT_IMPLEMENTED", ss.READONLY: "READONLY",
             ss.AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED", ss.QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
             ss.UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD", ss.BAD_ARGUMENTS: "BAD_ARGUMENTS",
             ss.UNSUPPORTED_MEDIA_TYPE: "UNSUPPORTED_MEDIA_TYPE", ss.STD_EXCEPTION: "STD_EXCEPTION",
             60: "UNKNOWN_TABLE", 81: "UNKNOWN_DATABASE", 194: "REQUIRED_PASSWORD", 497: "ACCESS_DENIED"}
    got = dict(ch_client.query(
        "SELECT number, errorCodeToName(number) FROM numbers(2000) WHERE number IN {c:Array(UInt32)}",
        parameters={"c": list(names)}).result_rows)
    assert got == names
