"""Numbered SQL migrations for the ClickHouse schema, and the runner that applies and records them.

Role: files ``infra/clickhouse/migrations/NNNN_<name>.sql`` hold statements against a ``{database}`` placeholder,
each ending with ``;`` at the end of a line; :class:`MigrationRunner` applies the pending ones and records them in
``{database}.schema_migrations``; :func:`render_statements` also renders the cluster variant (snuba's habit:
raw table -> materialized view -> rollup).

Guarantee: statements are idempotent (``IF NOT EXISTS``), so a migration that failed half-way is re-run from its
start (ClickHouse DDL is not transactional); a file whose checksum differs from the recorded one is an error naming
the file: an applied migration is history, and a change needs a new migration. See DESIGN §6.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finops.clickhouse import ClickHouseQueryError, check_identifier, query_errors
from schemas.errors import FinopsError

__all__ = [
    "DEFAULT_MIGRATIONS_DIR",
    "Migration",
    "MigrationChecksumError",
    "MigrationError",
    "MigrationRunner",
    "PlannedMigration",
    "compute_checksum",
    "find_sharded_tables",
    "load_migrations",
    "render_statements",
    "split_statements",
]

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "infra" / "clickhouse" / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
PLACEHOLDER = "{database}"

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_SHARD_BY = re.compile(r"^\s*--\s*shard_by:\s*(?P<expr>.+?)\s*$", re.MULTILINE)
_OBJECT = r"\{database\}\.(?P<table>\w+)"
_CREATE = re.compile(
    r"^(?P<head>CREATE\s+(?P<kind>TABLE|MATERIALIZED\s+VIEW|VIEW|DATABASE)\s+(?:IF\s+NOT\s+EXISTS\s+)?)"
    r"(?P<name>\{database\}(?:\.\w+)?)",
    re.IGNORECASE,
)
_ALTER = re.compile(r"^(?P<head>ALTER\s+TABLE\s+)" + _OBJECT, re.IGNORECASE)
_DROP = re.compile(
    r"^(?P<head>DROP\s+(?P<kind>TABLE|VIEW|DICTIONARY)\s+(?:IF\s+EXISTS\s+)?)" + _OBJECT, re.IGNORECASE
)
_ENGINE = re.compile(
    r"ENGINE\s*=\s*(?P<engine>(?:Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing|Graphite)?MergeTree)\b",
    re.IGNORECASE,
)
_COLUMN_ALTER = re.compile(r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.IGNORECASE)


class MigrationError(FinopsError):
    """A migration file is malformed, or applying it failed; the message names the file."""


class MigrationChecksumError(MigrationError):
    """An applied migration file was changed after it was applied."""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` from its ``NNNN`` prefix, ``checksum`` = SHA-256 of its bytes."""

    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return self.path.name

    def statements(self) -> list[str]:
        """The file's statements, unrendered (``{database}`` placeholder, leading comments kept)."""
        return split_statements(self.sql)


@dataclass(frozen=True)
class PlannedMigration:
    """A migration with the statements rendered for one database (and cluster)."""

    migration: Migration
    statements: tuple[str, ...]


def compute_checksum(data: bytes) -> str:
    """SHA-256 hex digest of a migration file's bytes (any edit, even whitespace, changes it)."""
    return hashlib.sha256(data).hexdigest()


def split_statements(sql: str) -> list[str]:
    """Split a migration's text into statements at ``;`` that ends a line; drop parts that are only comments."""
    statements: list[str] = []
    for chunk in _STATEMENT_END.split(sql):
        if _strip_comments(chunk).strip():
            statements.append(chunk.strip())
    return statements


def load_migrations(directory: Path | str | None = None) -> list[Migration]:
    """Read every ``NNNN_<name>.sql`` in ``directory`` (default: the repository's), ordered by version.

    Raises :class:`MigrationError` for a ``.sql`` file with a bad name, two files with one version, or a file with
    no statement.
    """
    root = Path(directory) if directory is not None else DEFAULT_MIGRATIONS_DIR
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake_name.sql")
        data = path.read_bytes()
        migration = Migration(
            version=int(match["version"]),
            name=match["name"],
            path=path,
            sql=data.decode("utf-8"),
            checksum=compute_checksum(data),
        )
        if migration.version in migrations:
            raise MigrationError(
                f"{path}: version {migration.version} is also used by {migrations[migration.version].path.name}"
            )
        if not migration.statements():
            raise MigrationError(f"{path}: no statement found (each must end with ';' at the end of a line)")
        migrations[migration.version] = migration
    return [migrations[v] for v in sorted(migrations)]


def find_sharded_tables(migrations: Iterable[Migration]) -> dict[str, str]:
    """Tables created with a MergeTree-family engine, mapped to their sharding key (``-- shard_by:`` or ``rand()``).

    These become ``<table>_local`` + Distributed ``<table>`` in the cluster variant.
    """
    sharded: dict[str, str] = {}
    for migration in migrations:
        for statement in migration.statements():
            body = _strip_leading_comments(statement)
            match = _CREATE.match(body)
            if match and match["kind"].upper() == "TABLE" and "." in match["name"] and _ENGINE.search(body):
                table = match["name"].split(".", 1)[1]
                shard_by = _SHARD_BY.search(statement)
                sharded[table] = shard_by["expr"] if shard_by else "rand()"
    return sharded


def render_statements(
    statements: Sequence[str],
    database: str,
    cluster: str | None = None,
    sharded_tables: dict[str, str] | None = None,
) -> list[str]:
    """Render statements for ``database`` (single node) or for ``cluster``.

    The cluster variant is the convention most ClickHouse deployments use, so queries and views keep their
    single-node SQL: every DDL gets ``ON CLUSTER <cluster>``; a MergeTree-family table ``T`` becomes ``T_local``
    with the ``Replicated*`` engine at ``'/clickhouse/tables/{shard}/<database>/T_local', '{replica}'`` (server
    macros), plus ``T`` = ``Distributed(<cluster>, <database>, T_local, <sharding key>)``. The sharding key comes
    from a ``-- shard_by: <expr>`` comment in the statement (``rand()`` if none): tables deduplicated by an id shard
    by a hash of that id, so duplicates meet on one shard and ``FINAL`` through the Distributed table stays exact.
    Materialized views read and write the ``_local`` tables (they fire on the shard that stores the block); plain
    views query the Distributed names; ``schema_migrations`` is replicated to every node (its replication path has
    no ``{shard}``), so whichever node the runner reaches knows what was applied.

    Pure. ``sharded_tables`` (from :func:`find_sharded_tables` over ALL migrations, so a later ALTER knows an
    earlier table) is needed only for the cluster variant. Leading comments are dropped from the output.
    """
    check_identifier(database)
    if cluster is None:
        return [_strip_leading_comments(s).replace(PLACEHOLDER, database) for s in statements]
    check_identifier(cluster, "cluster")
    sharded = dict(sharded_tables or {})
    rendered: list[str] = []
    for statement in statements:
        body = _strip_leading_comments(statement)
        for out in _render_cluster(body, cluster, sharded, database):
            rendered.append(out.replace(PLACEHOLDER, database))
    return rendered


def bootstrap_statements(database: str, cluster: str | None = None) -> list[str]:
    """DDL for the database and the bookkeeping table, run before any migration (not dry runs)."""
    check_identifier(database)
    on_cluster = f" ON CLUSTER {check_identifier(cluster, 'cluster')}" if cluster else ""
    if cluster:
        engine = (
            f"ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{MIGRATIONS_TABLE}', '{{replica}}', "
            "applied_at)"
        )
    else:
        engine = "ReplacingMergeTree(applied_at)"
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}",
        f"CREATE TABLE IF NOT EXISTS {database}.{MIGRATIONS_TABLE}{on_cluster}\n(\n"
        "    version UInt32 COMMENT 'Migration number (the NNNN of the file name)',\n"
        "    name String COMMENT 'Migration name (the file name without number and .sql)',\n"
        "    checksum String COMMENT 'SHA-256 of the file as applied; a later change is refused',\n"
        "    applied_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'When the runner finished applying it, UTC'\n"
        f")\nENGINE = {engine}\nORDER BY version\n"
        "COMMENT 'Migrations applied by sinks.migrations.MigrationRunner'",
    ]


class MigrationRunner:
    """Applies pending migrations to one database through a clickhouse-connect client and records them.

    ``client`` needs no default database (the runner qualifies every name). ``cluster`` selects the cluster
    variant for :meth:`apply`.
    """

    def __init__(
        self,
        client: Any,
        database: str,
        migrations_dir: Path | str | None = None,
        *,
        cluster: str | None = None,
    ) -> None:
        self._client = client
        self.database = check_identifier(database)
        self.migrations_dir = Path(migrations_dir) if migrations_dir is not None else DEFAULT_MIGRATIONS_DIR
        self.cluster = check_identifier(cluster, "cluster") if cluster else None

    def migrations(self) -> list[Migration]:
        """All migration files, ordered by version."""
        return load_migrations(self.migrations_dir)

    def render(self, cluster: str | None = None) -> list[PlannedMigration]:
        """Every migration rendered for this database, single node (``cluster=None``) or cluster. Pure."""
        migrations = self.migrations()
        sharded = find_sharded_tables(migrations)
        return [
            PlannedMigration(m, tuple(render_statements(m.statements(), self.database, cluster, sharded)))
            for m in migrations
        ]

    def applied(self) -> dict[int, tuple[str, str]]:
        """Recorded migrations: version -> (name, checksum). Empty when the bookkeeping table does not exist."""
        exists = self._client.query(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {table:String}",
            parameters={"db": self.database, "table": MIGRATIONS_TABLE},
        ).result_rows[0][0]
        if not exists:
            return {}
        rows = self._client.query(
            f"SELECT version, argMax(name, applied_at), argMax(checksum, applied_at) "
            f"FROM {self.database}.{MIGRATIONS_TABLE} GROUP BY version"
        ).result_rows
        return {int(version): (str(name), str(checksum)) for version, name, checksum in rows}

    def pending(self) -> list[Migration]:
        """Migrations not applied yet, in order.

        Raises :class:`MigrationChecksumError` naming the file when an applied migration's file has changed.
        """
        applied = self.applied()
        pending: list[Migration] = []
        for migration in self.migrations():
            recorded = applied.get(migration.version)
            if recorded is None:
                pending.append(migration)
            elif recorded[1] != migration.checksum:
                raise MigrationChecksumError(
                    f"{migration.path} was changed after it was applied to {self.database} "
                    f"(recorded checksum {recorded[1][:12]}..., file {migration.checksum[:12]}...): restore it "
                    "and put the change in a new migration"
                )
        return pending

    def apply(self, dry_run: bool = False, log: Callable[[str], None] | None = None) -> list[PlannedMigration]:
        """Apply pending migrations in order; return what was applied (or would be, with ``dry_run``).

        ``log`` receives one line per migration and each statement as it is run. A dry run executes nothing (not
        even the bookkeeping DDL). Each migration is recorded only after all its statements succeeded. Raises
        :class:`MigrationChecksumError` before running anything if an applied file changed, and
        :class:`MigrationError` (naming file and statement) when a statement fails.
        """
        emit = log or (lambda _line: None)
        pending = self.pending()
        if not pending:
            return []
        sharded = find_sharded_tables(self.migrations())
        plans = [
            PlannedMigration(m, tuple(render_statements(m.statements(), self.database, self.cluster, sharded)))
            for m in pending
        ]
        if not dry_run:
            for statement in bootstrap_statements(self.database, self.cluster):
                self._execute(statement, "bootstrap")
        for plan in plans:
            emit(f"-- {'would apply' if dry_run else 'applying'} {plan.migration.file_name}")
            for index, statement in enumerate(plan.statements, start=1):
                emit(statement + ";")
                if not dry_run:
                    self._execute(statement, f"{plan.migration.path} statement {index}")
            if not dry_run:
                self._client.insert(
                    f"{self.database}.{MIGRATIONS_TABLE}",
                    [[plan.migration.version, plan.migration.name, plan.migration.checksum]],
                    column_names=["version", "name", "checksum"],
                )
        return plans

    def _execute(self, statement: str, where: str) -> None:
        try:
            with query_errors(where):
                self._client.command(statement)
        except ClickHouseQueryError as err:
            raise MigrationError(f"{where} failed on {self.database}: {err.reason}") from err


# --- rendering helpers ------------------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def _strip_leading_comments(statement: str) -> str:
    lines = statement.strip().splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines).strip()


def _balanced_args(text: str, start: int) -> tuple[str, int] | None:
    """If ``text[start:]`` begins (after spaces) with ``(``, return the text inside the balanced parentheses and the
    index after the closing one. Quotes are respected."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "(":
        return None
    depth, quote, j = 0, "", i
    while j < len(text):
        ch = text[j]
        if quote:
            if ch == "\\":
                j += 1  # skip the escaped character
            elif ch == quote:
                quote = ""
        elif ch in ("'", '"', "`"):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    raise MigrationError(f"unbalanced parentheses in engine clause: {text[start:start + 80]!r}")


def _replicated_engine(body: str, database: str, table: str) -> str:
    match = _ENGINE.search(body)
    assert match is not None
    engine = match["engine"]
    parsed = _balanced_args(body, match.end())
    args, end = (parsed[0].strip(), parsed[1]) if parsed else ("", match.end())
    path = f"'/clickhouse/tables/{{shard}}/{database}/{table}'"
    new_args = ", ".join(a for a in (path, "'{replica}'", args) if a)
    return body[: match.start()] + f"ENGINE = Replicated{engine}({new_args})" + body[end:]


def _local_references(body: str, sharded: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        table = match["table"]
        return f"{PLACEHOLDER}.{table}_local" if table in sharded else match.group(0)

    return re.sub(_OBJECT, repl, body)


def _render_cluster(body: str, cluster: str, sharded: dict[str, str], database: str) -> list[str]:
    on_cluster = f" ON CLUSTER {cluster}"
    create = _CREATE.match(body)
    if create:
        kind = re.sub(r"\s+", " ", create["kind"].upper())
        name = create["name"]
        table = name.split(".", 1)[1] if "." in name else ""
        rest = body[create.end() :]
        if kind == "TABLE" and table in sharded and _ENGINE.search(body):
            local = f"{table}_local"
            local_sql = create["head"] + f"{PLACEHOLDER}.{local}{on_cluster}" + rest
            local_sql = _replicated_engine(local_sql, database, local)
            dist_sql = (
                f"CREATE TABLE IF NOT EXISTS {PLACEHOLDER}.{table}{on_cluster} AS {PLACEHOLDER}.{local}\n"
                f"ENGINE = Distributed('{cluster}', '{database}', '{local}', {sharded[table]})\n"
                f"COMMENT 'Distributed over {table}_local on cluster {cluster}'"
            )
            return [local_sql, dist_sql]
        if kind == "MATERIALIZED VIEW":
            return [create["head"] + name + on_cluster + _local_references(rest, sharded)]
        return [create["head"] + name + on_cluster + rest]
    alter = _ALTER.match(body)
    if alter:
        table, rest = alter["table"], body[alter.end() :]
        if table in sharded:
            out = [alter["head"] + f"{PLACEHOLDER}.{table}_local{on_cluster}" + rest]
            if _COLUMN_ALTER.match(rest):
                out.append(alter["head"] + f"{PLACEHOLDER}.{table}{on_cluster}" + rest)
            return out
        return [alter["head"] + f"{PLACEHOLDER}.{table}{on_cluster}" + rest]
    drop = _DROP.match(body)
    if drop:
        table, rest = drop["table"], body[drop.end() :]
        out = [drop["head"] + f"{PLACEHOLDER}.{table}{on_cluster}" + rest]
        if table in sharded:
            out.append(drop["head"] + f"{PLACEHOLDER}.{table}_local{on_cluster}" + rest)
        return out
    return [body]
