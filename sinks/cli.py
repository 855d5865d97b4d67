"""``finops migrate``: apply the ClickHouse schema migrations (DESIGN §6: application code never creates tables).

The handler is thin: settings -> :func:`apply_migrations`, which tests call directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from finops.clickhouse import connect
from schemas.errors import FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["apply_migrations", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``migrate`` to the ``finops`` command line."""
    parser = subparsers.add_parser(
        "migrate",
        help="apply pending ClickHouse schema migrations",
        description="Apply pending migrations from infra/clickhouse/migrations to FINOPS_CLICKHOUSE_URL and record "
        "them in <database>.schema_migrations. Prints each statement; a second run prints 'nothing to apply'.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the pending statements, change nothing")
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        default=None,
        help="render for a ClickHouse cluster: ON CLUSTER NAME, Replicated engines, "
        "<table>_local + Distributed <table>",
    )
    parser.add_argument(
        "--database", metavar="DB", default=None, help="target database (default: FINOPS_CLICKHOUSE_DATABASE)"
    )
    parser.set_defaults(func=_handle_migrate)


def _handle_migrate(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    try:
        settings = load_settings()
    except FinopsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return apply_migrations(
        settings.clickhouse_url(),
        args.database or settings.clickhouse.database,
        dry_run=args.dry_run,
        cluster=args.cluster,
        out=sys.stdout,
    )


def apply_migrations(
    url: str,
    database: str,
    *,
    dry_run: bool = False,
    cluster: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    migrations_dir: Path | str | None = None,
) -> int:
    """Apply (or with ``dry_run`` print) pending migrations; return the exit code (0 ok, 1 failed).

    Prints each migration and statement to ``out`` as it runs, then a summary; "nothing to apply" when none is
    pending. Errors (bad URL, unreachable ClickHouse, changed migration file, failed statement) are printed to
    ``err`` as one message saying what to do; the password never appears.
    """
    from sinks.migrations import MigrationRunner

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    client = None
    try:
        client = connect(url)
        runner = MigrationRunner(client, database, migrations_dir, cluster=cluster)
        plans = runner.apply(dry_run=dry_run, log=lambda line: print(line, file=out))
    except FinopsError as error:
        print(f"error: {error}", file=err)
        return 1
    finally:
        if client is not None:
            client.close()
    if not plans:
        print(f"nothing to apply: {database} is up to date", file=out)
    else:
        verb = "would apply" if dry_run else "applied"
        names = ", ".join(p.migration.file_name for p in plans)
        print(f"{verb} {len(plans)} migration(s) to {database}: {names}", file=out)
    return 0
