"""The migration runner and the schema on real chdb: idempotent apply, dry run, checksums, ClickHouse's own parser
for every rendered statement (single node and cluster), comments on every table and column, ``finops migrate``."""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from sinks.cli import apply_migrations
from sinks.migrations import DEFAULT_MIGRATIONS_DIR, MigrationChecksumError, MigrationRunner

pytestmark = pytest.mark.integration


def _fresh_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("cluster", [None, "finops_cluster"])
def test_every_rendered_statement_parses_with_clickhouse(ch_client: Any, cluster: str | None) -> None:
    runner = MigrationRunner(ch_client, "finops")
    statements = [s for plan in runner.render(cluster) for s in plan.statements]
    assert len(statements) >= 20
    for statement in statements:
        # formatQuery runs ClickHouse's parser without executing; a syntax error raises
        formatted = ch_client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
        assert formatted
        if cluster:
            assert f"ON CLUSTER {cluster}" in formatted


def test_apply_twice_applies_nothing_the_second_time(ch_client: Any, ch_database: str) -> None:
    runner = MigrationRunner(ch_client, ch_database)
    assert runner.pending() == []
    assert runner.apply() == []
    recorded = runner.applied()
    assert sorted(recorded) == [m.version for m in runner.migrations()]
    assert all(checksum == m.checksum for m in runner.migrations() for _, checksum in [recorded[m.version]])


def test_dry_run_changes_nothing(ch_client: Any) -> None:
    name = _fresh_name()
    lines: list[str] = []
    plans = MigrationRunner(ch_client, name).apply(dry_run=True, log=lines.append)
    # Every file under infra/clickhouse/migrations, numbered without gaps from 1.
    assert [p.migration.version for p in plans] == list(range(1, len(plans) + 1)) and len(plans) >= 6
    assert any(line.startswith(f"CREATE TABLE IF NOT EXISTS {name}.usage_ledger") for line in lines)
    exists = ch_client.query(
        "SELECT count() FROM system.databases WHERE name = {n:String}", parameters={"n": name}
    ).result_rows[0][0]
    assert exists == 0


def test_changed_applied_file_is_an_error_naming_it(ch_client: Any, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, migrations)
    name = _fresh_name()
    try:
        MigrationRunner(ch_client, name, migrations).apply()
        target = migrations / "0002_spend_1m.sql"
        target.write_text(target.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationChecksumError, match="0002_spend_1m.sql"):
            MigrationRunner(ch_client, name, migrations).pending()
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS {name}")


def test_every_table_and_column_has_a_comment(ch_client: Any, ch_database: str) -> None:
    uncommented_columns = ch_client.query(
        "SELECT c.table, c.name FROM system.columns AS c "
        "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
        "WHERE c.database = {db:String} AND t.engine NOT IN ('View', 'MaterializedView') AND c.comment = ''",
        parameters={"db": ch_database},
    ).result_rows
    assert uncommented_columns == []
    uncommented_tables = ch_client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND comment = ''",
        parameters={"db": ch_database},
    ).result_rows
    assert uncommented_tables == []


def test_ledger_dedup_key_is_the_full_sorting_key(ch_client: Any, ch_database: str) -> None:
    sorting_key, engine = ch_client.query(
        "SELECT sorting_key, engine_full FROM system.tables WHERE database = {db:String} AND name = 'usage_ledger'",
        parameters={"db": ch_database},
    ).result_rows[0]
    assert sorting_key.endswith("source, event_id, row_kind, correction_id")
    assert "ReplacingMergeTree(ingested_at)" in engine and "non_replicated_deduplication_window = 1000" in engine


def test_apply_migrations_prints_then_reports_nothing_to_apply(chdb_url: str, ch_client: Any) -> None:
    name = _fresh_name()
    try:
        dry = io.StringIO()
        assert apply_migrations(chdb_url, name, dry_run=True, out=dry) == 0
        count = len(MigrationRunner(ch_client, name).migrations())
        assert f"would apply {count} migration(s)" in dry.getvalue()
        first, second = io.StringIO(), io.StringIO()
        assert apply_migrations(chdb_url, name, out=first) == 0
        assert "-- applying 0001_usage_ledger.sql" in first.getvalue()
        assert f"applied {count} migration(s) to {name}" in first.getvalue()
        assert apply_migrations(chdb_url, name, out=second) == 0
        assert second.getvalue().strip() == f"nothing to apply: {name} is up to date"
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS {name}")


def test_apply_migrations_reports_errors_without_the_password() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert apply_migrations("http://u:hunter2@127.0.0.1:1/x", "finops", out=out, err=err) == 1
    assert "hunter2" not in err.getvalue() and err.getvalue().startswith("error: cannot reach ClickHouse")
