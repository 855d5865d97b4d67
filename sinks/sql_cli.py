"""``finops sql`` (read-only SQL from a shell) and ``finops store serve`` (the store endpoint on its own).

``finops sql`` connects read-only where :func:`finops.clickhouse.open_client` says: a server directly; in embedded
mode the store owner's endpoint when the system runs, else the chdb path itself (then the endpoint's query policy is
applied here).

``finops store serve`` runs a process that owns the chdb path and serves the endpoint: for querying a stopped
system from several shells or from Grafana. When the system runs, its owner (the sink role or ``make run``) serves
the endpoint itself and this command refuses to start (the path is taken).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from finops.clickhouse import (
    StoreBusyError,
    chdb_path_owner,
    connect,
    is_embedded,
    open_client,
    parse_clickhouse_url,
    parse_query_url,
)
from finops.secrets import load_store_credentials, secrets_dir
from schemas.errors import ConfigError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["check_in_process", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sql`` and ``store serve`` to the ``finops`` command line."""
    sql = subparsers.add_parser(
        "sql",
        help="run one read-only SQL query against the analytics store",
        description="Run one read-only query (ClickHouse readonly: writes and DDL are refused) against "
        "FINOPS_CLICKHOUSE_URL; in embedded mode through the store owner's endpoint (FINOPS_CLICKHOUSE_QUERY_URL) "
        "when the system runs. Bind values with {name:Type} placeholders and --param name=value.",
    )
    sql.add_argument("query", help='the statement, e.g. "SELECT team, sum(cost_usd) FROM usage_ledger GROUP BY team"')
    sql.add_argument("--format", choices=("table", "csv", "json", "vertical"), default=None,
                     help="output format (table); a trailing FORMAT Vertical / CSVWithNames in the query is understood")
    sql.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a query parameter for a {NAME:Type} placeholder (repeatable)",
    )
    sql.add_argument("--database", default=None, help="database (default FINOPS_CLICKHOUSE_DATABASE)")
    sql.add_argument("--max-width", type=int, default=40, help="truncate table cells to this width (0: never)")
    sql.set_defaults(func=_handle_sql)

    store = subparsers.add_parser("store", help="the embedded analytics store")
    store_sub = store.add_subparsers(dest="store_cmd", required=True, metavar="{serve}")
    serve = store_sub.add_parser(
        "serve",
        help="own the embedded store and serve its ClickHouse HTTP endpoint until interrupted",
        description="Open the chdb data path of FINOPS_CLICKHOUSE_URL and serve a ClickHouse-HTTP-compatible "
        "endpoint (default from FINOPS_CLICKHOUSE_QUERY_URL, else 127.0.0.1:8124) so other processes query it "
        "with clickhouse-connect or curl. Only for a stopped system: a running system's owner serves it already.",
    )
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (default 8124)")
    serve.set_defaults(func=_handle_store_serve)


# ---- handlers --------------------------------------------------------------------------------------------------
def _parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param {pair!r}: expected NAME=VALUE (e.g. --param team=payments)")
        params[name.strip()] = value
    return params


def _handle_sql(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from sinks.query import format_result, run_readonly_query, split_format_clause

    query, fmt = split_format_clause(args.query, args.format)  # before connecting: a refusal needs no store
    settings = load_settings()
    params = _parse_params(args.param)
    database = args.database or settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url, readonly=True,
                                data_dir=settings.data_dir)
    try:
        if is_embedded(client):
            # On the chdb path itself nobody else checks the statement: apply the store endpoint's policy here.
            check_in_process(client, query)
        columns, rows = run_readonly_query(client, query, params)
    finally:
        client.close()
    sys.stdout.write(format_result(columns, rows, fmt, max_width=args.max_width))
    if fmt == "table":
        print(f"-- {where}, database {database}", file=sys.stderr)
    return 0


def check_in_process(client: Any, sql: str) -> None:
    """Apply :mod:`sinks.query_policy` (the store endpoint's allow-list) to ``sql`` on a chdb ``client``.

    Raises:
        ReadOnlyQueryError: the statement reaches something the store refuses to clients (files, network,
            processes, settings, DDL); the message names it.
    """
    from sinks.query import ReadOnlyQueryError
    from sinks.query_policy import QueryRefusedError, load_query_policy

    try:
        load_query_policy(client).check(sql.encode("utf-8", "surrogateescape"), writer=False)
    except QueryRefusedError as err:
        raise ReadOnlyQueryError(f"finops sql refused the statement: {err}") from None


def _handle_store_serve(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from sinks.store_server import StoreServerError, serve_store

    settings = load_settings()
    url = settings.clickhouse_url()
    target = parse_clickhouse_url(url)
    if target.kind != "chdb" or target.path is None:
        raise StoreServerError(
            "finops store serve fronts an embedded store (FINOPS_CLICKHOUSE_URL=chdb:///abs/path); a ClickHouse "
            f"server has its own HTTP interface: query {target.redacted()} directly"
        )
    endpoint = parse_query_url(settings.clickhouse.query_url)
    host = args.host or endpoint.host
    port = endpoint.port if args.port is None else args.port
    owner = chdb_path_owner(target.path)
    if owner is not None:
        raise StoreBusyError(
            f"the embedded store at {target.path} is already held by "
            f"{'process ' + str(owner) if owner > 0 else 'another process'}; that process serves the store "
            f"endpoint (check {endpoint.url}/ping), so nothing needs to be started here"
        )
    credentials = load_store_credentials(settings.data_dir)
    assert credentials is not None
    client = connect(url)
    try:
        server = serve_store(client, host, port, credentials=credentials, users=endpoint.users())
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.start()
            print(f"store endpoint: serving {target.path} at {server.url} (Ctrl-C to stop); users "
                  f"{credentials.writer_user} and {credentials.reader_user} (read-only), passwords in "
                  f"{secrets_dir(settings.data_dir)}", flush=True)
            stop.wait()
        finally:
            server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("store endpoint: stopped", flush=True)
    finally:
        client.close()
    return 0
