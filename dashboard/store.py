"""How the dashboard reaches ClickHouse: a read-only client for every API read and a writer for tokens and the audit.

Where it connects is decided by ``sinks.sql_cli.open_readonly_client`` (the same rule as ``finops sql``): a server
URL directly; in embedded mode the store owner's endpoint when it answers (the sink role or ``make run`` hold the
chdb path), else the chdb path itself. The writer follows the reader to the same place. Reads run with ClickHouse's
``readonly = 2`` (writes and DDL refused by the engine) and a per-query ``max_execution_time``, so a heavy page
cannot pin the store.

Every statement is a constant SQL text with ``{name:Type}`` placeholders bound server-side by ClickHouse
(clickhouse-connect ``parameters=``); table names are unqualified and resolve to the client's database, so no
identifier is ever built from input.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.errors import FinopsError

__all__ = ["Store", "StoreQueryError", "open_store"]

# Seconds a dashboard query may run before ClickHouse cancels it.
QUERY_TIMEOUT_S = 20


class StoreQueryError(FinopsError):
    """A dashboard query failed in ClickHouse; the message carries ClickHouse's reason."""


class Store:
    """A reader and a writer client with one small API: :meth:`select` returns dict rows, :meth:`insert` writes.

    Thread-safe: the server runs queries on a thread pool. chdb handles are not safe to share between threads, so
    calls on a chdb client are serialised by a lock; HTTP clients run concurrently (no session ids, see
    :func:`open_store`).
    """

    def __init__(self, reader: Any, writer: Any, where: str) -> None:
        self.reader = reader
        self.writer = writer
        self.where = where
        self._serial = str(getattr(reader, "uri", "")).startswith("chdb://")
        self._lock = threading.Lock()

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only SELECT with bound ``params``; rows as dicts. Raises :class:`StoreQueryError`."""
        from clickhouse_connect.driver import exceptions as ch_exc

        try:
            if self._serial:
                with self._lock:
                    result = self.reader.query(sql, parameters=dict(params or {}),
                                               settings={"max_execution_time": QUERY_TIMEOUT_S})
            else:
                result = self.reader.query(sql, parameters=dict(params or {}),
                                           settings={"max_execution_time": QUERY_TIMEOUT_S})
        except ch_exc.Error as err:
            raise StoreQueryError(f"dashboard query failed: {err}") from err
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) into ``table`` (a name from this package, never input)."""
        from clickhouse_connect.driver import exceptions as ch_exc

        if not rows:
            return
        columns = list(rows[0])
        data = [[row[c] for c in columns] for row in rows]
        try:
            if self._serial:
                with self._lock:
                    self.writer.insert(table, data, column_names=columns)
            else:
                self.writer.insert(table, data, column_names=columns)
        except ch_exc.Error as err:
            raise StoreQueryError(f"write to {table} failed: {err}") from err

    def ping(self) -> bool:
        try:
            self.select("SELECT 1 AS ok")
            return True
        except StoreQueryError:
            return False

    def close(self) -> None:
        for client in (self.writer, self.reader):
            try:
                client.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass


def open_store(
    clickhouse_url: str, database: str, query_url: str | None = None, *, data_dir: Path | None = None
) -> Store:
    """Connect the dashboard to ClickHouse (see the module docstring for where). At the store endpoint the reader
    logs in as the installation's read-only user and the writer as its writer (secrets of ``data_dir``).

    Blocks while probing the store endpoint and connecting. Raises the errors of
    :func:`sinks.sql_cli.open_readonly_client` (ConfigError, StoreBusyError, ClickHouseUnavailableError).
    """
    import clickhouse_connect.common

    from sinks.clickhouse import build_client
    from sinks.sql_cli import open_readonly_client, store_endpoint_for

    # A session id makes a ClickHouse server refuse concurrent queries of one client ("session is locked"); the
    # dashboard keeps no session state, so it runs without one and its thread pool can query in parallel.
    clickhouse_connect.common.set_setting("autogenerate_session_id", False)
    reader, where = open_readonly_client(clickhouse_url, database, query_url, data_dir=data_dir)
    if where.endswith("(store endpoint)"):
        endpoint = store_endpoint_for(query_url, data_dir, readonly=False)
        writer = build_client(endpoint.client_url(), database=database)
    else:
        writer = build_client(clickhouse_url, database=database)
    return Store(reader, writer, where)
