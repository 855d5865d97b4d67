"""Which ClickHouse a governance command talks to, read-only or writable: ``sinks.sql_cli.open_client``'s rule
(a server; in embedded mode the store owner's endpoint, else the chdb path when nobody holds it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sinks.clickhouse import check_identifier

__all__ = ["open_store_client", "qualified"]


def qualified(database: str, table: str) -> str:
    """``database.table`` with the database checked as an identifier (identifiers cannot be bound parameters)."""
    return f"{check_identifier(database)}.{check_identifier(table, 'table')}"


def open_store_client(
    clickhouse_url: str, database: str, query_url: str | None = None, *, readonly: bool = True,
    data_dir: Path | None = None,
) -> tuple[Any, str]:
    """A clickhouse-connect client and where it points (printable, no password); see :func:`sinks.sql_cli.open_client`.

    Raises ConfigError (bad URL, credentials, missing database), StoreBusyError, ClickHouseUnavailableError.
    """
    from sinks.sql_cli import open_client

    return open_client(clickhouse_url, database, query_url, readonly=readonly, data_dir=data_dir)
