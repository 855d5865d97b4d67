"""connect against real chdb: read-only enforcement and translated errors."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import ConfigError
from finops.clickhouse import ClickHouseUnavailableError, connect

pytestmark = pytest.mark.integration


def test_readonly_client_reads_but_cannot_write_alter_or_lift_readonly(
    chdb_url: str, ch_client: Any, ch_database: str
) -> None:
    reader = connect(chdb_url, database=ch_database, readonly=True)
    try:
        assert reader.query("SELECT count() FROM usage_ledger").result_rows == [(0,)]
        # per-query settings still work (the reason for readonly = 2 rather than 1)
        assert reader.query("SELECT 1", settings={"max_execution_time": 5}).result_rows == [(1,)]
        for statement in (
            "INSERT INTO usage_ledger (event_id) VALUES ('x')",
            "CREATE TABLE evil (a UInt8) ENGINE = Memory",
            "DROP TABLE usage_ledger",
            "SET readonly = 0",
        ):
            with pytest.raises(Exception, match="(?i)readonly"):
                reader.command(statement)
        with pytest.raises(Exception, match="(?i)readonly"):
            reader.insert("budgets", [["p", 1]], column_names=["policy_id", "version"])
    finally:
        reader.close()
    # the writer's session is unaffected
    assert ch_client.query(f"SELECT count() FROM {ch_database}.budgets").result_rows == [(0,)]


def test_missing_database_says_run_migrate(chdb_url: str, ch_client: Any) -> None:
    with pytest.raises(ConfigError, match="finops migrate"):
        connect(chdb_url, database="no_such_db_here")


def test_unreachable_server_is_translated_and_hides_the_password() -> None:
    with pytest.raises(ClickHouseUnavailableError) as info:
        connect("http://alice:s3cret-pw@127.0.0.1:1/finops")
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "127.0.0.1:1" in message and "FINOPS_CLICKHOUSE_URL" in message


def test_bad_database_identifier_is_refused_before_connecting(chdb_url: str) -> None:
    with pytest.raises(ConfigError, match="invalid database"):
        connect(chdb_url, database="x; DROP DATABASE y")
