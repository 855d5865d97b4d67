"""Errors of a real chdb engine and of a real HTTP endpoint come out of finops.clickhouse as the project's errors,
carrying ClickHouse's code, with the cause chained and no password in the message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finops.clickhouse import ClickHouseQueryError, connect, open_endpoint_client, query_errors
from schemas.errors import ConfigError
from sinks.store_server import StoreServer, serve_store

pytestmark = pytest.mark.integration

UNKNOWN_FUNCTION = 46
UNKNOWN_TABLE = 60
FUNCTION_THROW_IF_VALUE_IS_NON_ZERO = 395


@pytest.fixture
def database(ch_client: Any) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    ch_client.command(f"CREATE DATABASE {name}")
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def store(ch_client: Any, store_credentials: Any) -> Iterator[StoreServer]:
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        yield server


def test_a_chdb_error_is_a_query_error_with_its_code(chdb_url: str, database: str) -> None:
    client = connect(chdb_url, database=database, readonly=True)
    try:
        with pytest.raises(ClickHouseQueryError) as caught, query_errors("ledger read"):
            client.query("SELECT no_such_function_xyz(1)")
    finally:
        client.close()
    err = caught.value
    assert err.code == UNKNOWN_FUNCTION and "no_such_function_xyz" in err.reason
    assert str(err).startswith("ledger read failed: ") and err.__cause__ is not None


def test_an_endpoint_error_is_a_query_error_without_the_password(
    store: StoreServer, store_credentials: Any, store_data_dir: Path, database: str,
) -> None:
    client = open_endpoint_client(store.url, database, readonly=True, data_dir=store_data_dir)
    password = store_credentials.reader_password
    try:
        with pytest.raises(ClickHouseQueryError) as caught, query_errors():
            client.query("SELECT * FROM no_such_table_xyz")
        assert caught.value.code == UNKNOWN_TABLE and "no_such_table_xyz" in caught.value.reason
        # A message that carries the password (here ClickHouse echoes it back) is scrubbed.
        with pytest.raises(ClickHouseQueryError) as echoed, query_errors():
            client.query("SELECT throwIf(1, {p:String})", parameters={"p": password})
    finally:
        client.close()
    assert echoed.value.code == FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    assert password not in str(echoed.value) and password not in echoed.value.reason and "***" in str(echoed.value)


def test_a_refused_endpoint_login_is_a_config_error_without_the_password(store: StoreServer, database: str) -> None:
    url = f"http://finops:not-the-password-42@{store.host}:{store.port}"
    with pytest.raises(ConfigError, match="refused the login") as caught:
        open_endpoint_client(url, database, readonly=True, data_dir=None)
    assert "not-the-password-42" not in str(caught.value) and caught.value.__cause__ is not None
