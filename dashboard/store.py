"""How the dashboard reaches ClickHouse: a read-only client for every API read and a writer for tokens and the audit.

Where it connects is decided by :func:`finops.clickhouse.open_reader_writer` (the rule of ``finops sql``): a server
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

from finops.clickhouse import ClickHouseQueryError, is_embedded, open_reader_writer, query_errors

__all__ = ["Store", "StoreQueryError", "open_store"]

# Seconds a dashboard query may run before ClickHouse cancels it.
QUERY_TIMEOUT_S = 20


class StoreQueryError(ClickHouseQueryError):
    """A dashboard query failed in ClickHouse; the message carries ClickHouse's reason (``code``, ``reason``)."""


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
        self._serial = is_embedded(reader)
        self._lock = threading.Lock()

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only SELECT with bound ``params``; rows as dicts. Raises :class:`StoreQueryError`."""
        with query_errors("dashboard query", StoreQueryError):
            if self._serial:
                with self._lock:
                    result = self.reader.query(sql, parameters=dict(params or {}),
                                               settings={"max_execution_time": QUERY_TIMEOUT_S})
            else:
                result = self.reader.query(sql, parameters=dict(params or {}),
                                           settings={"max_execution_time": QUERY_TIMEOUT_S})
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) into ``table`` (a name from this package, never input)."""
        if not rows:
            return
        columns = list(rows[0])
        data = [[row[c] for c in columns] for row in rows]
        with query_errors(f"write to {table}", StoreQueryError):
            if self._serial:
                with self._lock:
                    self.writer.insert(table, data, column_names=columns)
            else:
                self.writer.insert(table, data, column_names=columns)

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
    clickhouse_url: str, database: str, query_url: str | None = None, *, data_dir: Path | None,
    owner_wait: float = 0.0,
) -> Store:
    """Connect the dashboard to ClickHouse (see the module docstring for where). At the store endpoint the reader
    logs in as the installation's read-only user and the writer as its writer (secrets of ``data_dir``).

    Blocks while probing the store endpoint and connecting (and up to ``owner_wait`` seconds for an endpoint whose
    owner holds the path but does not answer yet). Raises the errors of
    :func:`finops.clickhouse.open_client` (ConfigError, StoreBusyError, ClickHouseUnavailableError).
    """
    reader, writer, where = open_reader_writer(clickhouse_url, database, query_url, data_dir=data_dir,
                                               owner_wait=owner_wait)
    return Store(reader, writer, where)
