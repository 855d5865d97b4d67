"""``finops sql``: read-only enforcement on the chdb and HTTP paths, where it connects, and the command itself
(also from a separate process, through the store endpoint, while this process owns the chdb path)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from sinks.query import QueryError, ReadOnlyQueryError, run_readonly_query
from finops.clickhouse import StoreBusyError, chdb_path_owner, open_client
from sinks.sql_cli import register
from sinks.store_server import StoreServer, serve_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WRITES = [
    "INSERT INTO spend (team, cost) VALUES ('evil', 1)",
    "CREATE TABLE other (a Int8) ENGINE = Memory",
    "DROP TABLE spend",
    "ALTER TABLE spend ADD COLUMN z Int8",
]


@pytest.fixture
def database(ch_client: Any) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    ch_client.command(f"CREATE DATABASE {name}")
    ch_client.command(f"CREATE TABLE {name}.spend (team String, cost Decimal(38, 12)) ENGINE = MergeTree ORDER BY team")
    ch_client.insert(
        f"{name}.spend", [("payments", Decimal("1.250000000001")), ("search", Decimal("0.5"))],
        column_names=["team", "cost"],
    )
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def store(ch_client: Any, store_credentials: Any) -> Iterator[StoreServer]:
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        server.credentials = store_credentials  # type: ignore[attr-defined]
        yield server


def _writer(store: StoreServer, database: str) -> Any:
    creds = store.credentials  # type: ignore[attr-defined]
    return clickhouse_connect.get_client(host=store.host, port=store.port, database=database,
                                         username=creds.writer_user, password=creds.writer_password)


def _count(ch_client: Any, database: str) -> int:
    return int(ch_client.command(f"SELECT count() FROM {database}.spend"))


@pytest.mark.parametrize("statement", WRITES)
def test_chdb_readonly_client_refuses_writes(chdb_url: str, ch_client: Any, database: str, statement: str) -> None:
    from finops.clickhouse import connect

    client = connect(chdb_url, database=database, readonly=True)
    try:
        with pytest.raises(ReadOnlyQueryError, match="finops sql is read-only"):
            run_readonly_query(client, statement)
        columns, rows = run_readonly_query(
            client, "SELECT team, cost FROM spend WHERE team = {t:String}", {"t": "payments"}
        )
        assert (columns, rows) == (["team", "cost"], [("payments", Decimal("1.250000000001"))])
    finally:
        client.close()
    assert _count(ch_client, database) == 2
    assert int(ch_client.command(f"EXISTS TABLE {database}.other")) == 0


@pytest.mark.parametrize("statement", WRITES)
def test_http_readonly_refuses_writes(store: StoreServer, ch_client: Any, database: str, statement: str) -> None:
    # A writable HTTP client: run_readonly_query adds readonly to the request itself.
    client = _writer(store, database)
    with pytest.raises(ReadOnlyQueryError, match="finops sql is read-only"):
        run_readonly_query(client, statement)
    assert run_readonly_query(client, "SELECT count() FROM spend")[1] == [(2,)]
    assert _count(ch_client, database) == 2
    # And the client was not changed by it: it still writes when asked directly.
    client.command("INSERT INTO spend (team, cost) VALUES ('ok', 0)")
    assert _count(ch_client, database) == 3


def test_hostile_parameter_returns_no_rows(store: StoreServer, database: str) -> None:
    client = _writer(store, database)
    _, rows = run_readonly_query(client, "SELECT * FROM spend WHERE team = {t:String}", {"t": "x' OR 1=1 --"})
    assert rows == []


def test_writable_chdb_client_is_refused_before_running(ch_client: Any) -> None:
    with pytest.raises(QueryError, match="readonly=True"):
        run_readonly_query(ch_client, "SELECT 1")
    assert ch_client.command("SELECT getSetting('readonly')") == 0


def test_query_errors_carry_clickhouse_message(store: StoreServer, database: str) -> None:
    client = _writer(store, database)
    with pytest.raises(QueryError, match="UNKNOWN_TABLE") as caught:
        run_readonly_query(client, "SELECT * FROM nope")
    assert "for url" not in str(caught.value)


def test_connects_through_the_endpoint_when_it_answers(chdb_url: str, store: StoreServer, database: str,
                                                      store_data_dir: Path) -> None:
    client, where = open_client(chdb_url, database, store.url, readonly=True, data_dir=store_data_dir)
    try:
        assert "store endpoint" in where and str(client.uri).startswith("http")
        assert run_readonly_query(client, "SELECT count() FROM spend")[1] == [(2,)]
        with pytest.raises(ReadOnlyQueryError):
            run_readonly_query(client, WRITES[0])
    finally:
        client.close()


def test_opens_the_path_when_no_endpoint_answers(chdb_url: str, database: str, free_port: int) -> None:
    client, where = open_client(chdb_url, database, f"http://127.0.0.1:{free_port}", readonly=True,
                                data_dir=None, ping_timeout=0.5)
    try:
        assert where.startswith("chdb://") and str(client.uri).startswith("chdb://")
        assert run_readonly_query(client, "SELECT count() FROM spend")[1] == [(2,)]
    finally:
        client.close()


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _held(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the chdb path ``path`` (as a running sink does) until the block ends or it is
    told to let go (a line on its stdin)."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, chdb; c = chdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.readline()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while chdb_path_owner(path) is None:
            assert time.monotonic() < deadline, "the holder never locked its chdb path"
            time.sleep(0.05)
        assert chdb_path_owner(path) == holder.pid
        yield holder
    finally:
        _release(holder)
    assert chdb_path_owner(path) is None


def _release(holder: subprocess.Popen[str]) -> None:
    if holder.poll() is None:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)


def test_path_held_by_another_process_names_the_endpoint(tmp_path: Path, free_port: int) -> None:
    path = tmp_path / "owned"
    with _held(path) as holder:
        endpoint = f"http://127.0.0.1:{free_port}"
        with pytest.raises(StoreBusyError) as caught:
            open_client(f"chdb://{path}", "default", endpoint, readonly=True, data_dir=None, ping_timeout=0.5)
        message = str(caught.value)
        assert f"process {holder.pid}" in message and f"Start the store endpoint at {endpoint}" in message
        # A role that waits gives up the same way when the endpoint never comes.
        with pytest.raises(StoreBusyError, match=f"process {holder.pid}"):
            open_client(f"chdb://{path}", "default", endpoint, readonly=True, data_dir=None, ping_timeout=0.2,
                        owner_wait=1.0)


def test_a_role_started_with_the_sink_waits_for_its_endpoint(
    tmp_path: Path, free_port: int, ch_client: Any, database: str, store_credentials: Any, store_data_dir: Path,
) -> None:
    """The path is held before the endpoint answers (the sink opens its store, then serves it): a role that waits
    connects through the endpoint once it is up instead of exiting."""
    path = tmp_path / "owned"
    endpoint = f"http://127.0.0.1:{free_port}"
    stop = threading.Event()

    def serve_late() -> None:
        time.sleep(1.5)
        with serve_store(ch_client, "127.0.0.1", free_port, credentials=store_credentials):
            stop.wait(60)

    with _held(path):
        server = threading.Thread(target=serve_late, daemon=True)
        server.start()
        try:
            client, where = open_client(f"chdb://{path}", database, endpoint, readonly=True,
                                        data_dir=store_data_dir, ping_timeout=0.5, owner_wait=30.0)
            try:
                assert where == f"{endpoint} (store endpoint)"
                assert run_readonly_query(client, "SELECT count() FROM spend")[1] == [(2,)]
            finally:
                client.close()
        finally:
            stop.set()
            server.join(30)


def test_a_waiting_role_opens_the_path_when_its_holder_lets_go(tmp_path: Path, free_port: int) -> None:
    # The waiting role is a process of its own: chdb opens one data path per process, and this one may hold the
    # suite's.
    path = tmp_path / "owned"
    role = ("import sys; from finops.clickhouse import open_client\n"
            "c, where = open_client(sys.argv[1], 'default', sys.argv[2], readonly=True, data_dir=None,"
            " ping_timeout=0.2, owner_wait=30.0)\n"
            "print(where, c.query('SELECT 41 + 1').result_rows, flush=True)")
    with _held(path) as holder:
        waiting = subprocess.Popen(
            [sys.executable, "-c", role, f"chdb://{path}", f"http://127.0.0.1:{free_port}"], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)
        assert waiting.poll() is None, "the role did not wait for the held path: " + waiting.communicate()[1]
        _release(holder)
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.split()[0] == f"chdb://{path}" and "[(42,)]" in out


def _run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> int:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser(prog="finops")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_sql_command_prints_json_and_table(
    chdb_url: str, store: StoreServer, database: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], store_data_dir: Path,
) -> None:
    env = {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
           "FINOPS_CLICKHOUSE_DATABASE": database, "FINOPS_DATA_DIR": str(store_data_dir)}
    sql = "SELECT team, cost FROM spend WHERE team != {skip:String} ORDER BY team"
    assert _run_cli(["sql", sql, "--format", "json", "--param", "skip=none"], monkeypatch, env) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"team": "payments", "cost": "1.250000000001"}, {"team": "search", "cost": "0.500000000000"}
    ]
    assert _run_cli(["sql", sql, "--param", "skip=search"], monkeypatch, env) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[2].split() == ["payments", "1.250000000001"] and "(1 row)" in out.out
    with pytest.raises(ReadOnlyQueryError):
        _run_cli(["sql", WRITES[2]], monkeypatch, env)


def test_sql_command_understands_a_trailing_format_clause(
    chdb_url: str, store: StoreServer, database: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], store_data_dir: Path,
) -> None:
    """Issue 14 item 12: `FORMAT Vertical` was a syntax error (clickhouse-connect appends its own FORMAT)."""
    env = {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
           "FINOPS_CLICKHOUSE_DATABASE": database, "FINOPS_DATA_DIR": str(store_data_dir)}
    assert _run_cli(["sql", "SELECT team, cost FROM spend ORDER BY team LIMIT 1 FORMAT Vertical"], monkeypatch,
                    env) == 0
    assert capsys.readouterr().out == "Row 1:\n──────\nteam: payments\ncost: 1.250000000001\n\n(1 row)\n"
    assert _run_cli(["sql", "SELECT team FROM spend ORDER BY team", "--format", "vertical"], monkeypatch, env) == 0
    assert capsys.readouterr().out.count("Row ") == 2
    with pytest.raises(QueryError, match="use --format"):
        _run_cli(["sql", "SELECT team FROM spend FORMAT JSONEachRow"], monkeypatch, env)


def test_sql_from_another_process_goes_through_the_owner(chdb_url: str, store: StoreServer, database: str,
                                                        store_data_dir: Path) -> None:
    """The real situation: this process owns the chdb path; a shell's `finops sql` must use the endpoint."""
    script = (
        "import argparse, sys; from sinks.sql_cli import register; p = argparse.ArgumentParser(); "
        "register(p.add_subparsers(dest='c', required=True)); a = p.parse_args(sys.argv[1:]); "
        "from schemas.errors import FinopsError\n"
        "try:\n    sys.exit(a.func(a))\n"
        "except FinopsError as e:\n    print('finops: error:', e, file=sys.stderr); sys.exit(2)\n"
    )
    env = {**os.environ, "FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
           "FINOPS_CLICKHOUSE_DATABASE": database, "PYTHONPATH": str(REPO), "FINOPS_DATA_DIR": str(store_data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", script, "sql", "SELECT sum(cost) AS total FROM spend", "--format", "csv"],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "total\n1.750000000001\n"
    refused = subprocess.run([sys.executable, "-c", script, "sql", "DROP TABLE spend"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "finops sql is read-only" in refused.stderr
