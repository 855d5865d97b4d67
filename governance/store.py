"""Which ClickHouse a governance command talks to, read-only or writable.

Reads reuse :func:`sinks.sql_cli.open_readonly_client` (server, else the store owner's endpoint, else the chdb
path). Writes (re-rating corrections, the agent registry) need a client without ``readonly``; the order is the same:

1. ``FINOPS_CLICKHOUSE_URL`` is ``http(s)://``: that server;
2. embedded, and the store owner's endpoint answers: through it (its writer handle takes POSTed statements);
3. embedded and nobody holds the path: the chdb path itself;
4. held by a process that serves no endpoint: :class:`sinks.sql_cli.StoreBusyError` naming it.

The helper lives here rather than in ``sinks/sql_cli.py`` (another engineer's module); it mirrors
``open_readonly_client`` exactly except for ``readonly``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from schemas.errors import ConfigError
from sinks.clickhouse import check_identifier

__all__ = ["open_store_client", "qualified"]


def qualified(database: str, table: str) -> str:
    """``database.table`` with the database checked as an identifier (identifiers cannot be bound parameters)."""
    return f"{check_identifier(database)}.{check_identifier(table, 'table')}"


def open_store_client(
    clickhouse_url: str, database: str, query_url: str | None = None, *, readonly: bool = True
) -> tuple[Any, str]:
    """A clickhouse-connect client and where it points (printable, no password). See the module docstring.

    Raises ConfigError (bad URL, credentials, missing database), StoreBusyError, ClickHouseUnavailableError.
    """
    from sinks.clickhouse import ClickHouseUnavailableError, build_client, parse_clickhouse_url
    from sinks.sql_cli import _busy, chdb_path_owner, endpoint_answers, open_readonly_client
    from sinks.store_server import parse_query_url

    if readonly:
        return open_readonly_client(clickhouse_url, database, query_url)
    target = parse_clickhouse_url(clickhouse_url)
    if target.kind == "http":
        return build_client(clickhouse_url, database=database), target.redacted()
    endpoint = parse_query_url(query_url)
    if endpoint_answers(endpoint.url):
        auth = ""
        if endpoint.username is not None:
            auth = quote(endpoint.username, safe="") + (
                ":" + quote(endpoint.password, safe="") if endpoint.password is not None else ""
            ) + "@"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return build_client(f"http://{auth}{host}:{endpoint.port}", database=database), (
            f"{endpoint.url} (store endpoint)"
        )
    if target.path is None:  # pragma: no cover - parse_clickhouse_url guarantees a path for chdb
        raise ConfigError("chdb URL without a path")
    owner = chdb_path_owner(target.path)
    if owner is not None:
        raise _busy(target.path, owner, endpoint.url)
    try:
        return build_client(clickhouse_url, database=database), target.redacted()
    except ClickHouseUnavailableError:
        owner = chdb_path_owner(target.path)
        if owner is not None:
            raise _busy(target.path, owner, endpoint.url) from None
        raise
