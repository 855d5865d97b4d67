"""Negative tests of the embedded store's trust boundary (issue 14, DESIGN §6), by class, against the running engine.

Every class is tried against the store endpoint (clickhouse-connect and raw HTTP) and against ``finops sql`` (through
the endpoint and on the chdb path itself). The classes are enumerated from the engine at test time
(``system.table_functions``, ``system.table_engines``, ``system.functions``, ``system.settings``,
``system.tables``), so a ClickHouse upgrade that adds a function, engine or setting is covered without editing this
file: anything outside the explicit allow-lists of sinks/query_policy.py must be refused.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.query_policy import (
    CLIENT_SETTINGS,
    PURE_CATEGORIES,
    PURE_OTHER_FUNCTIONS,
    PURE_TABLE_FUNCTIONS,
    SYSTEM_TABLES,
    load_query_policy,
)
from sinks.store_server import StoreServer, serve_store

pytestmark = [pytest.mark.security, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ACCESS_DENIED = "497"
AUTH_FAILED = "516"
# Not pure, whatever category the engine files them under.
DANGEROUS_FUNCTIONS = ("file", "url", "chdb", "getSetting", "sleep", "sleepEachRow", "dictGet", "joinGet",
                       "filesystemAvailable", "getServerSetting", "addressToLine", "aiGenerate", "evalMLMethod",
                       "formatRow", "formatQuery", "hostName", "currentUser", "getMacro", "regionToName")


@pytest.fixture(scope="module")
def store(ch_client: Any, store_credentials: Any) -> Iterator[StoreServer]:
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        yield server


@pytest.fixture(scope="module")
def database(ch_client: Any) -> Iterator[str]:
    name = f"sec_{uuid.uuid4().hex[:10]}"
    ch_client.command(f"CREATE DATABASE {name}")
    ch_client.command(f"CREATE TABLE {name}.secrets_like (k String, v String) ENGINE = MergeTree ORDER BY k")
    ch_client.insert(f"{name}.secrets_like", [("token_hash", "abc")], column_names=["k", "v"])
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def catalogue(ch_client: Any) -> dict[str, list[Any]]:
    def names(sql: str) -> list[Any]:
        return [row[0] if len(row) == 1 else row for row in ch_client.query(sql).result_rows]

    return {
        "table_functions": names("SELECT name FROM system.table_functions ORDER BY name"),
        "table_engines": names("SELECT name FROM system.table_engines ORDER BY name"),
        "functions": names("SELECT name, categories, alias_to FROM system.functions ORDER BY name"),
        "settings": names("SELECT name FROM system.settings ORDER BY name"),
        "system_tables": names("SELECT name FROM system.tables WHERE database = 'system' ORDER BY name"),
    }


def _post(store: StoreServer, sql: str | bytes, creds: Any | None, *, reader: bool = False,
          params: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    hdrs = dict(headers or {})
    if creds is not None:
        user, password = creds.for_role(readonly=reader)
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    url = store.url + "/" + ("?" + urllib.parse.urlencode(params) if params else "")
    body = sql.encode() if isinstance(sql, str) else sql
    request = urllib.request.Request(url, data=body, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def _refused(answer: tuple[int, dict[str, str], bytes], code: str = ACCESS_DENIED) -> bool:
    status, headers, _ = answer
    return status == 403 and headers.get("X-ClickHouse-Exception-Code") == code


def _client(store: StoreServer, creds: Any, database: str, *, reader: bool = False) -> Any:
    user, password = creds.for_role(readonly=reader)
    return clickhouse_connect.get_client(host=store.host, port=store.port, username=user, password=password,
                                         database=database)


# ---- credentials ---------------------------------------------------------------------------------------------
def test_every_request_without_valid_credentials_is_refused(
    store: StoreServer, store_credentials: Any, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = store_credentials
    attempts: list[tuple[int, dict[str, str], bytes]] = [
        _post(store, "SELECT * FROM system.one", None),
        _post(store, f"SELECT * FROM {database}.secrets_like", None),
        _post(store, f"DROP TABLE {database}.secrets_like", None),
        _post(store, "SELECT 1", None, headers={"X-ClickHouse-User": creds.writer_user, "X-ClickHouse-Key": "guess"}),
        _post(store, "SELECT 1", None, headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": ""}),
        _post(store, "SELECT 1", None, params={"user": creds.writer_user, "password": creds.reader_password}),
        _post(store, "SELECT 1", None, headers={"X-ClickHouse-User": creds.reader_user,
                                                "X-ClickHouse-Key": creds.writer_password + "x"}),
    ]
    for answer in attempts:
        assert _refused(answer, AUTH_FAILED), answer
        assert b"Authentication failed" in answer[2]
        for secret in (creds.writer_password, creds.reader_password):
            assert secret.encode() not in answer[2]
    with pytest.raises(urllib.error.HTTPError) as caught:  # GET with a query needs credentials as well
        urllib.request.urlopen(f"{store.url}/?query=SELECT%201", timeout=10)
    assert caught.value.code == 403
    with pytest.raises(DatabaseError) as no_login:
        clickhouse_connect.get_client(host=store.host, port=store.port)
    assert no_login.value.code == 516
    # Health checks stay open, as in ClickHouse.
    with urllib.request.urlopen(store.url + "/ping", timeout=10) as response:
        assert response.read() == b"Ok.\n"
    assert creds.writer_password not in caplog.text and creds.reader_password not in caplog.text


def test_secret_files_are_private_and_loose_ones_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from finops.secrets import (
        SecretFileError,
        load_store_credentials,
        secret_path,
        secrets_dir,
    )

    caplog.set_level(logging.DEBUG)
    creds = load_store_credentials(tmp_path)
    assert creds is not None
    assert load_store_credentials(tmp_path) == creds  # generated once, then found
    assert (secrets_dir(tmp_path).stat().st_mode & 0o777) == 0o700
    for name in ("store-writer.password", "store-reader.password"):
        path = secret_path(tmp_path, name)
        assert (path.stat().st_mode & 0o777) == 0o600
    assert creds.writer_password != creds.reader_password and len(creds.writer_password) >= 40
    writer = secret_path(tmp_path, "store-writer.password")
    writer.chmod(0o644)
    with pytest.raises(SecretFileError) as caught:
        load_store_credentials(tmp_path)
    assert str(writer) in str(caught.value) and f"chmod 600 {writer}" in str(caught.value)
    assert creds.writer_password not in str(caught.value) and creds.writer_password not in repr(creds)
    writer.chmod(0o600)
    secrets_dir(tmp_path).chmod(0o755)
    with pytest.raises(SecretFileError, match="chmod 700"):
        load_store_credentials(tmp_path)
    assert creds.writer_password not in caplog.text


# ---- cross-site browser requests ----------------------------------------------------------------------------
def test_cross_site_browser_requests_are_refused(
    store: StoreServer, store_credentials: Any, database: str, ch_client: Any
) -> None:
    insert = f"INSERT INTO {database}.secrets_like (k, v) VALUES ('csrf', 'x')"
    # A page's "simple" text/plain POST (no preflight), with or without guessed credentials, and with valid ones.
    for creds in (None, store_credentials):
        for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                        {"Origin": "null", "Content-Type": "text/plain"},
                        {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
                        {"Sec-Fetch-Site": "same-site"}):
            status, _, _ = _post(store, insert, creds, headers=headers)
            assert status == 403, headers
            status, _, body = _post(store, f"SELECT v FROM {database}.secrets_like", creds, headers=headers)
            assert status == 403 and b"abc" not in body
    assert ch_client.command(f"SELECT count() FROM {database}.secrets_like WHERE k = 'csrf'") == 0
    # Programs send no Origin and keep working.
    assert _post(store, "SELECT 1", store_credentials)[2] == b"1\n"


# ---- table functions, engines, functions ---------------------------------------------------------------------
def test_every_table_function_outside_the_pure_list_is_refused(
    store: StoreServer, store_credentials: Any, catalogue: dict[str, list[Any]]
) -> None:
    impure = [n for n in catalogue["table_functions"] if n not in PURE_TABLE_FUNCTIONS]
    assert {"file", "url", "s3", "remote", "mysql", "postgresql", "executable", "hdfs", "iceberg"} <= set(impure)
    leaked = []
    for name in impure:
        for sql in (f"SELECT * FROM {name}('/etc/passwd', 'LineAsString')",
                    f"SELECT * FROM `{name}`('x')",
                    f"SELECT * FROM {name.upper()}('x')",
                    f"DESCRIBE TABLE {name}('x')",
                    f"SELECT 1 FROM numbers(1) WHERE 1 IN (SELECT 1 FROM {name}('x'))"):
            for reader in (False, True):
                if not _refused(_post(store, sql, store_credentials, reader=reader)):
                    leaked.append((sql, reader))
        if not _refused(_post(store, f"INSERT INTO FUNCTION {name}('/tmp/finops-x', 'CSV') SELECT 1",
                              store_credentials)):
            leaked.append(("INSERT INTO FUNCTION", name))
    assert not leaked, leaked
    for name in PURE_TABLE_FUNCTIONS & set(catalogue["table_functions"]):
        assert name in {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "null", "generateRandom",
                        "generate_series", "generateSeries", "format"}
    assert _post(store, "SELECT count() FROM numbers(10)", store_credentials, reader=True)[2] == b"10\n"


def test_every_table_engine_is_refused_in_create(
    store: StoreServer, store_credentials: Any, catalogue: dict[str, list[Any]], database: str, ch_client: Any
) -> None:
    leaked = [engine for engine in catalogue["table_engines"]
              if not _refused(_post(store, f"CREATE TABLE {database}.e_{engine.lower()} (a String) ENGINE = {engine}",
                                    store_credentials))]
    assert not leaked, leaked
    assert ch_client.command(f"SELECT count() FROM system.tables WHERE database = '{database}'") == 1


def test_every_function_outside_the_pure_list_is_refused(
    store: StoreServer, store_credentials: Any, catalogue: dict[str, list[Any]], ch_client: Any
) -> None:
    policy = load_query_policy(ch_client)
    rows = {name: (category, alias) for name, category, alias in catalogue["functions"]}

    def pure(name: str, depth: int = 0) -> bool:
        category, alias = rows[name]
        if alias and depth < 5 and alias in rows:
            return pure(alias, depth + 1)
        return name in PURE_OTHER_FUNCTIONS or category in PURE_CATEGORIES

    # The policy allows nothing outside the pure categories and the explicit list.
    allowed = [name for name in rows if policy.callable_allowed(name)]
    assert all(pure(name) or name in policy.types for name in allowed), [n for n in allowed if not pure(n)]
    refused = [name for name in rows if not policy.callable_allowed(name)]
    assert not [n for n in DANGEROUS_FUNCTIONS if policy.callable_allowed(n)]
    leaked = []
    for name in refused:
        for sql in (f"SELECT {name}('/etc/passwd')", f"SELECT `{name}`('x')",
                    f"SELECT * APPLY({name}) FROM (SELECT '/etc/passwd' AS p)"):
            if not _refused(_post(store, sql, store_credentials, reader=True)):
                leaked.append(sql)
    assert not leaked, leaked
    # Pure ones still work, with combinators.
    assert _post(store, "SELECT sumIf(number, number > 5), toTypeName(1) FROM numbers(10)", store_credentials,
                 reader=True)[2] == b"30\tUInt8\n"


def test_dictionaries_with_external_sources_cannot_be_created_or_read(
    store: StoreServer, store_credentials: Any, database: str
) -> None:
    for sql in (f"CREATE DICTIONARY {database}.d (k UInt64, v String) PRIMARY KEY k "
                "SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
                "SELECT * FROM dictionary('d')", "SELECT dictGet('d', 'v', 1)", "SELECT * FROM system.dictionaries"):
        assert _refused(_post(store, sql, store_credentials)), sql


# ---- statements ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("statement", [
    "DROP TABLE {db}.secrets_like", "TRUNCATE TABLE {db}.secrets_like", "ALTER TABLE {db}.secrets_like DELETE WHERE 1",
    "RENAME TABLE {db}.secrets_like TO {db}.gone", "CREATE TABLE {db}.x (a Int8) ENGINE = Memory",
    "CREATE VIEW {db}.v AS SELECT * FROM file('/etc/passwd', 'LineAsString')", "DETACH TABLE {db}.secrets_like",
    "ATTACH TABLE {db}.secrets_like", "SYSTEM RELOAD DICTIONARIES", "SYSTEM SHUTDOWN", "KILL QUERY WHERE 1",
    "BACKUP TABLE {db}.secrets_like TO File('/tmp/finops-backup')",
    "RESTORE TABLE {db}.secrets_like FROM Disk('default', 'x')",
    "OPTIMIZE TABLE {db}.secrets_like FINAL", "GRANT ALL ON *.* TO default", "CREATE USER evil",
    "CREATE FUNCTION evil AS x -> x", "SET readonly = 0", "USE system", "EXCHANGE TABLES {db}.a AND {db}.b",
    "UNDROP TABLE {db}.x", "SELECT 1; DROP TABLE {db}.secrets_like", "SELECT 1 INTO OUTFILE '/tmp/finops-out'",
    "INSERT INTO {db}.secrets_like FROM INFILE '/etc/passwd' FORMAT TSV",
    "INSERT INTO {db}.secrets_like (k) VALUES (file('/etc/passwd'))",
    "INSERT INTO {db}.secrets_like SELECT * FROM url('http://127.0.0.1:1/', 'TSV', 'k String, v String')",
    "SELECT $$'$$, file('/etc/passwd'), '$$'", "SELECT 1 /* /* */, file('/etc/passwd') /* */",
    "SELECT 1 FORMAT Template", "SELECT {{t:Identifier}}", "SHOW GRANTS", "SHOW CREATE USER default",
    "SELECT * FROM system.processes", "SELECT * FROM system.users", "SELECT * FROM `system`.`query_log`",
])
def test_statement_classes_are_refused(store: StoreServer, store_credentials: Any, database: str, ch_client: Any,
                                       statement: str) -> None:
    sql = statement.format(db=database)
    for reader in (False, True):
        answer = _post(store, sql, store_credentials, reader=reader)
        assert answer[0] in (403, 501), (sql, answer)
        assert b"root:" not in answer[2]
    assert ch_client.command(f"SELECT count() FROM {database}.secrets_like") == 1
    assert not Path("/tmp/finops-out").exists() and not Path("/tmp/finops-backup").exists()


def test_file_reads_and_writes_fail(store: StoreServer, store_credentials: Any, tmp_path: Path) -> None:
    target = tmp_path / "written.csv"
    for sql in ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd')",
                f"INSERT INTO FUNCTION file('{target}', 'CSV') SELECT 1", f"SELECT 1 INTO OUTFILE '{target}'"):
        client = _client(store, store_credentials, "default")
        with pytest.raises(DatabaseError) as caught:
            client.query(sql) if sql.startswith("SELECT") else client.command(sql)
        assert caught.value.code == 497 and "root:" not in str(caught.value)
    assert not target.exists()


# ---- settings, system tables, readonly -----------------------------------------------------------------------
def test_every_setting_outside_the_client_list_is_refused(
    store: StoreServer, store_credentials: Any, catalogue: dict[str, list[Any]]
) -> None:
    from sinks.store_server import _TRANSPORT_PARAMS

    # HTTP-interface parameters are consumed by the endpoint and never set on the engine (readonly=1 only ever
    # makes a request read-only; a reader's readonly=0 is ignored: see test_readonly_really_means_read_only).
    others = [name for name in catalogue["settings"] if name not in CLIENT_SETTINGS and name not in _TRANSPORT_PARAMS]
    assert {"allow_ddl", "allow_introspection_functions", "user_files_path"} & set(others)
    leaked = [name for name in others
              if not _refused(_post(store, "SELECT 1", store_credentials, params={name: "1"}))]
    assert not leaked, leaked[:20]
    clause = [name for name in catalogue["settings"] if name not in CLIENT_SETTINGS
              and (name.startswith("allow_") or name in ("readonly", "max_execution_time_leaf"))]
    leaked = [name for name in clause if not _refused(_post(store, f"SELECT 1 SETTINGS {name} = 1", store_credentials))]
    assert not leaked, leaked[:20]
    assert _post(store, "SELECT 1", store_credentials, params={"max_result_rows": "5"})[0] == 200


def test_system_tables_outside_the_catalogue_are_refused(
    store: StoreServer, store_credentials: Any, catalogue: dict[str, list[Any]]
) -> None:
    leaked = [t for t in catalogue["system_tables"] if t not in SYSTEM_TABLES
              and not _refused(_post(store, f"SELECT * FROM system.{t} LIMIT 0", store_credentials, reader=True))]
    assert not leaked, leaked
    assert _refused(_post(store, "SELECT * FROM processes", store_credentials, params={"database": "system"}))
    assert _post(store, "SELECT count() > 0 FROM system.functions", store_credentials, reader=True)[2] == b"1\n"


def test_readonly_really_means_read_only(store: StoreServer, store_credentials: Any, database: str,
                                         ch_client: Any) -> None:
    insert = f"INSERT INTO {database}.secrets_like (k, v) VALUES ('ro', 'x')"
    for params in (None, {"readonly": "0"}, {"readonly": "2"}):
        answer = _post(store, insert, store_credentials, reader=True, params=params)
        assert answer[0] == 403, answer
    assert _post(store, insert, store_credentials, params={"readonly": "1"})[0] == 403
    assert ch_client.command(f"SELECT count() FROM {database}.secrets_like WHERE k = 'ro'") == 0
    assert _post(store, insert, store_credentials)[0] == 200  # the writer writes
    ch_client.command(f"DELETE FROM {database}.secrets_like WHERE k = 'ro'")


# ---- finops sql ----------------------------------------------------------------------------------------------
HOSTILE = ["SELECT * FROM file('/etc/passwd', 'LineAsString')", "SELECT file('/etc/passwd')",
           "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')", "SELECT * FROM system.processes",
           "SELECT 1 SETTINGS readonly = 0", "INSERT INTO FUNCTION file('/tmp/finops-sql-x', 'CSV') SELECT 1"]


def _sql_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> int:
    from sinks.sql_cli import register

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser(prog="finops")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("statement", HOSTILE)
def test_finops_sql_through_the_endpoint_refuses_each_class(
    store: StoreServer, chdb_url: str, store_data_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], statement: str,
) -> None:
    from sinks.query import ReadOnlyQueryError

    env = {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
           "FINOPS_DATA_DIR": str(store_data_dir), "FINOPS_CLICKHOUSE_DATABASE": "default"}
    with pytest.raises(ReadOnlyQueryError, match="refused|read-only"):
        _sql_cli(["sql", statement], monkeypatch, env)
    assert "root:" not in capsys.readouterr().out
    assert not Path("/tmp/finops-sql-x").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_finops_sql_on_the_chdb_path_refuses_each_class(tmp_path: Path) -> None:
    """No endpoint answers, nobody holds the path: `finops sql` opens chdb itself and applies the same policy."""
    env = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path), "FINOPS_CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
           "FINOPS_CLICKHOUSE_DATABASE": "default", "FINOPS_CLICKHOUSE_QUERY_URL": f"http://127.0.0.1:{_free_port()}",
           "PYTHONPATH": str(REPO)}
    script = (
        "import sys, json; from sinks.sql_cli import check_in_process; from finops.clickhouse import connect\n"
        "from sinks.query import run_readonly_query\n"
        "c = connect(sys.argv[1], readonly=True); out = {}\n"
        "for q in json.loads(sys.argv[2]):\n"
        "    try:\n        check_in_process(c, q); out[q] = 'ran: ' + repr(run_readonly_query(c, q)[1][:1])\n"
        "    except Exception as e:\n        out[q] = 'refused: ' + str(e)\n"
        "print(json.dumps(out))\n"
    )
    import json

    done = subprocess.run([sys.executable, "-c", script, env["FINOPS_CLICKHOUSE_URL"], json.dumps(HOSTILE)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(v.startswith("refused: finops sql refused") for v in results.values()), results
    # The command itself, end to end.
    cli = subprocess.run([sys.executable, "-m", "finops.cli", "sql", HOSTILE[0]], env=env, capture_output=True,
                         text=True, timeout=180)
    assert cli.returncode != 0 and "root:" not in cli.stdout and "refused" in cli.stderr
    ok = subprocess.run([sys.executable, "-m", "finops.cli", "sql", "SELECT sum(number) AS s FROM numbers(4)",
                         "--format", "csv"], env=env, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0 and ok.stdout == "s\n6\n", ok.stderr


# ---- token issue ---------------------------------------------------------------------------------------------
def _token_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> int:
    from dashboard.cli import register

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FINOPS_ADMIN_TOKEN", raising=False)
    parser = argparse.ArgumentParser(prog="finops")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_token_issue_needs_the_installation_secret_or_an_admin_token(
    store: StoreServer, store_credentials: Any, store_data_dir: Path, chdb_url: str, ch_database: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from dashboard.auth import AuthenticationError, PermissionDeniedError

    owner = {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
             "FINOPS_DATA_DIR": str(store_data_dir), "FINOPS_CLICKHOUSE_DATABASE": ch_database}
    issue = ["token", "issue", "--role", "finops_admin", "--team", "*", "--json", "--subject", "t"]
    assert _token_cli(issue, monkeypatch, owner) == 0
    import json

    admin = json.loads(capsys.readouterr().out)["token"]
    assert _token_cli(["token", "issue", "--role", "developer", "--team", "a", "--json"], monkeypatch, owner) == 0
    developer = json.loads(capsys.readouterr().out)["token"]

    # Someone who holds store write credentials but not the installation's secret file nor an admin token.
    user, password = store_credentials.for_role(readonly=False)
    stranger = {**owner, "FINOPS_DATA_DIR": str(tmp_path),
                "FINOPS_CLICKHOUSE_QUERY_URL": f"http://{user}:{password}@{store.host}:{store.port}"}
    with pytest.raises(PermissionDeniedError, match="needs finops_admin credentials") as caught:
        _token_cli(issue, monkeypatch, stranger)
    assert password not in str(caught.value)
    with pytest.raises(PermissionDeniedError, match="needs a finops_admin token"):
        _token_cli([*issue, "--admin-token", developer], monkeypatch, stranger)
    with pytest.raises(AuthenticationError):
        _token_cli([*issue, "--admin-token", admin[:-2] + "xx"], monkeypatch, stranger)
    with pytest.raises(PermissionDeniedError):
        _token_cli(["token", "revoke", "deadbeef"], monkeypatch, stranger)
    assert _token_cli([*issue, "--admin-token", admin], monkeypatch, stranger) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "finops_admin"
