"""Pure parts of the migration runner: loading, splitting, single-node and cluster rendering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sinks.migrations import (
    MigrationError,
    compute_checksum,
    find_sharded_tables,
    load_migrations,
    render_statements,
    split_statements,
)

pytestmark = pytest.mark.unit

EXAMPLE = """-- header; with a semicolon inside a comment line
-- shard_by: cityHash64(id)
CREATE TABLE IF NOT EXISTS {database}.things
(
    id String COMMENT 'a; b',
    v UInt64 COMMENT 'version'
)
ENGINE = ReplacingMergeTree(v)
ORDER BY id
COMMENT 'things'
;
CREATE TABLE IF NOT EXISTS {database}.sums
(
    k String COMMENT 'key',
    n UInt64 COMMENT 'count'
)
ENGINE = SummingMergeTree((n))
ORDER BY k
COMMENT 'sums'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.sums_mv TO {database}.sums
AS SELECT id AS k, count() AS n FROM {database}.things GROUP BY k
;
CREATE VIEW IF NOT EXISTS {database}.v_things AS SELECT id FROM {database}.things FINAL;
-- only a comment here
"""


def _write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_split_on_semicolon_at_line_end_only() -> None:
    statements = split_statements(EXAMPLE)
    assert len(statements) == 4
    assert "'a; b'" in statements[0]
    assert statements[3].startswith("CREATE VIEW")


def test_load_orders_by_version_and_checksums_bytes(tmp_path: Path) -> None:
    root = _write(tmp_path, {"0002_b.sql": "SELECT 2;\n", "0001_a.sql": "SELECT 1;\n"})
    migrations = load_migrations(root)
    assert [(m.version, m.name) for m in migrations] == [(1, "a"), (2, "b")]
    assert migrations[0].checksum == compute_checksum(b"SELECT 1;\n")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": "SELECT 1;\n"}, "NNNN_lower_snake_name"),
        ({"0001_a.sql": "SELECT 1;\n", "0001_b.sql": "SELECT 2;\n"}, "also used by"),
        ({"0001_empty.sql": "-- nothing\n"}, "no statement"),
    ],
)
def test_load_refuses_bad_files(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        load_migrations(_write(tmp_path, files))


def test_single_node_render_substitutes_database_and_drops_leading_comments(tmp_path: Path) -> None:
    rendered = render_statements(split_statements(EXAMPLE), "fin")
    assert "{database}" not in " ".join(rendered)
    assert rendered[0].startswith("CREATE TABLE IF NOT EXISTS fin.things")
    assert "ReplacingMergeTree(v)" in rendered[0]


def test_cluster_render(tmp_path: Path) -> None:
    migrations = load_migrations(_write(tmp_path, {"0001_x.sql": EXAMPLE}))
    sharded = find_sharded_tables(migrations)
    assert sharded == {"things": "cityHash64(id)", "sums": "rand()"}
    out = render_statements(migrations[0].statements(), "fin", "prod", sharded)
    assert len(out) == 6  # two tables x (local + distributed) + MV + view
    assert all(re.search(r"\bON CLUSTER prod\b", s) for s in out)
    things_local, things, sums_local, sums, mv, view = out
    assert things_local.startswith("CREATE TABLE IF NOT EXISTS fin.things_local ON CLUSTER prod")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/fin/things_local', '{replica}', v)" in things_local
    assert "ENGINE = Distributed('prod', 'fin', 'things_local', cityHash64(id))" in things
    assert "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/fin/sums_local', '{replica}', (n))" in sums_local
    assert "Distributed('prod', 'fin', 'sums_local', rand())" in sums
    assert "TO fin.sums_local" in mv and "FROM fin.things_local" in mv
    assert "FROM fin.things FINAL" in view  # views read the Distributed names: same SQL as one node


def test_cluster_render_of_alter_and_drop_on_sharded_tables() -> None:
    sharded = {"things": "rand()"}
    out = render_statements(
        [
            "ALTER TABLE {database}.things ADD COLUMN IF NOT EXISTS x UInt8 COMMENT 'x'",
            "ALTER TABLE {database}.things MODIFY TTL toDate(ts) + 30",
            "DROP TABLE IF EXISTS {database}.things",
            "CREATE DATABASE IF NOT EXISTS {database}",
        ],
        "fin",
        "prod",
        sharded,
    )
    assert out == [
        "ALTER TABLE fin.things_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS x UInt8 COMMENT 'x'",
        "ALTER TABLE fin.things ON CLUSTER prod ADD COLUMN IF NOT EXISTS x UInt8 COMMENT 'x'",
        "ALTER TABLE fin.things_local ON CLUSTER prod MODIFY TTL toDate(ts) + 30",
        "DROP TABLE IF EXISTS fin.things ON CLUSTER prod",
        "DROP TABLE IF EXISTS fin.things_local ON CLUSTER prod",
        "CREATE DATABASE IF NOT EXISTS fin ON CLUSTER prod",
    ]


@pytest.mark.parametrize("bad", ["fin-db", "1fin", "fin; DROP", ""])
def test_identifiers_are_validated(bad: str) -> None:
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError):
        render_statements(["SELECT 1"], bad)
    with pytest.raises(ConfigError):
        render_statements(["SELECT 1"], "fin", bad or "x y")


def test_repository_migrations_load_and_every_mergetree_table_is_sharded_by_a_key() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    sharded = find_sharded_tables(migrations)
    assert sharded["usage_ledger"] == "cityHash64(source, event_id)"
    assert sharded["spend_1m"] == "cityHash64(aggregate_id)"
