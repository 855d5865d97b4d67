"""Table names of the governance commands' SQL (their clients come from :func:`finops.clickhouse.open_client`)."""

from __future__ import annotations

from finops.clickhouse import check_identifier

__all__ = ["qualified"]


def qualified(database: str, table: str) -> str:
    """``database.table`` with the database checked as an identifier (identifiers cannot be bound parameters)."""
    return f"{check_identifier(database)}.{check_identifier(table, 'table')}"
