"""``finops sql`` (read-only SQL from a shell) and ``finops store serve`` (the store endpoint on its own).

Where ``finops sql`` connects (:func:`open_readonly_client`):

1. ``FINOPS_CLICKHOUSE_URL`` is ``http(s)://``: that ClickHouse server, read-only.
2. It is ``chdb://`` (embedded): first the store owner's endpoint (``FINOPS_CLICKHOUSE_QUERY_URL``, default
   http://127.0.0.1:8124), because while the system runs its owner process holds the data path;
3. if nothing answers there, the chdb path itself (nobody owns it: the system is stopped);
4. if the path is held by another process that does not serve the endpoint, an error names the process and the
   endpoint it should serve.

``finops store serve`` runs a process that owns the chdb path and serves the endpoint: for querying a stopped
system from several shells or from Grafana. When the system runs, its owner (the sink role or ``make run``) serves
the endpoint itself and this command refuses to start (the path is taken).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, FinopsError

__all__ = [
    "StoreBusyError", "chdb_path_owner", "check_in_process", "endpoint_answers", "open_client",
    "open_readonly_client", "register", "store_endpoint_for",
]

_PING_TIMEOUT_S = 1.0


class StoreBusyError(FinopsError):
    """The embedded store is held by another process and cannot be reached through an endpoint."""


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


# ---- connection resolution -----------------------------------------------------------------------------------
def endpoint_answers(url: str, timeout: float = _PING_TIMEOUT_S) -> bool:
    """True if a ClickHouse HTTP endpoint at ``url`` answers ``/ping`` with ``Ok.`` (blocks up to ``timeout``)."""
    from sinks.store_server import parse_query_url

    endpoint = parse_query_url(url)
    try:
        with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=timeout) as response:  # noqa: S310 - http only
            return bool(response.status == 200 and response.read(16).startswith(b"Ok."))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def chdb_path_owner(path: str | Path) -> int | None:
    """The pid of the process holding the chdb data directory ``path``, or None if nobody holds it.

    ClickHouse keeps an exclusive ``flock`` on ``<path>/status`` while an engine is open and writes its pid there.
    This process itself is never reported (it may open the path again). Returns -1 when the lock is held but the
    pid cannot be read.
    """
    status = Path(path) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _status_pid(status)
            return None if pid == os.getpid() else (pid if pid is not None else -1)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _status_pid(status: Path) -> int | None:
    try:
        for line in status.read_text(errors="replace").splitlines():
            if line.startswith("PID:"):
                return int(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        return None
    return None


def open_readonly_client(
    clickhouse_url: str, database: str, query_url: str | None = None, *, data_dir: Path | None = None,
    ping_timeout: float = _PING_TIMEOUT_S,
) -> tuple[Any, str]:
    """A read-only clickhouse-connect client for ``finops sql`` and a printable description of where it points.

    See :func:`open_client` (this is it with ``readonly=True``).
    """
    return open_client(clickhouse_url, database, query_url, readonly=True, data_dir=data_dir,
                       ping_timeout=ping_timeout)


def store_endpoint_for(query_url: str | None, data_dir: Path | None, *, readonly: bool) -> Any:
    """The store endpoint of ``query_url`` with the credentials a client of this installation uses: the URL's own
    ``user:password@`` when it names one, else the installation's reader (``readonly``) or writer from
    ``<data_dir>/secrets`` (finops/secrets.py; None when they do not exist yet or ``data_dir`` is None).

    Raises:
        SecretFileError: a secret file is readable by others or cannot be read (the message names it).
    """
    from finops.secrets import load_store_credentials
    from sinks.store_server import parse_query_url

    endpoint = parse_query_url(query_url)
    if endpoint.username is not None or data_dir is None:
        return endpoint
    credentials = load_store_credentials(data_dir, create=False)
    if credentials is None:
        return endpoint
    return endpoint.with_credentials(*credentials.for_role(readonly=readonly))


def open_client(
    clickhouse_url: str, database: str, query_url: str | None = None, *, readonly: bool,
    data_dir: Path | None = None, ping_timeout: float = _PING_TIMEOUT_S,
) -> tuple[Any, str]:
    """A clickhouse-connect client for any role but the store owner, and a printable description of where it points.

    See the module docstring for the order: a server URL directly; in embedded mode the owner's store endpoint when
    it answers, else the chdb path when nobody holds it. ``readonly`` applies ClickHouse's ``readonly`` setting
    (writes such as re-rating corrections or the alert worker's delivery log pass ``False``) and, at the store
    endpoint, logs in as the installation's reader instead of its writer (``data_dir``: where the settings keep the
    installation's secrets, see :func:`store_endpoint_for`). Blocks up to ``ping_timeout`` probing the endpoint,
    then while connecting.

    Raises:
        ConfigError: bad URL, bad credentials or a missing database (from :func:`sinks.clickhouse.build_client`);
            at the store endpoint, credentials it refuses (the message says where they come from).
        StoreBusyError: the chdb path is held by another process and nothing answers at the endpoint.
        ClickHouseUnavailableError: ClickHouse cannot be reached.
    """
    from sinks.clickhouse import ClickHouseUnavailableError, build_client, parse_clickhouse_url
    from sinks.store_server import parse_query_url

    target = parse_clickhouse_url(clickhouse_url)
    if target.kind == "http":
        return build_client(clickhouse_url, database=database, readonly=readonly), target.redacted()
    endpoint = parse_query_url(query_url)
    if endpoint_answers(endpoint.url, ping_timeout):
        return _endpoint_client(store_endpoint_for(query_url, data_dir, readonly=readonly), database,
                                readonly=readonly, data_dir=data_dir), f"{endpoint.url} (store endpoint)"
    assert target.path is not None
    owner = chdb_path_owner(target.path)
    if owner is not None:
        raise _busy(target.path, owner, endpoint.url)
    try:
        return build_client(clickhouse_url, database=database, readonly=readonly), target.redacted()
    except ClickHouseUnavailableError:
        owner = chdb_path_owner(target.path)
        if owner is not None:  # taken between the check and the open
            raise _busy(target.path, owner, endpoint.url) from None
        raise


def _endpoint_client(endpoint: Any, database: str, *, readonly: bool, data_dir: Path | None) -> Any:
    """A clickhouse-connect client of the store endpoint; a refused login says where credentials come from."""
    from sinks.clickhouse import build_client

    try:
        return build_client(endpoint.client_url(), database=database, readonly=readonly)
    except ConfigError as err:
        if "rejected the credentials" not in str(err):
            raise
        from finops.secrets import secrets_dir

        where = (f"the installation's secrets in {secrets_dir(data_dir)} (readable by the installation's owner "
                 "only)" if data_dir is not None else "no credentials (none were given)")
        if endpoint.username is not None and data_dir is not None:
            where = f"user {endpoint.username!r}"
        raise ConfigError(
            f"the store endpoint at {endpoint.url} refused the login ({where}). Run the command as the user that "
            "runs the system (it reads <data dir>/secrets), with the same FINOPS_DATA_DIR, or put a user and "
            "password in FINOPS_CLICKHOUSE_QUERY_URL=http://user:password@host:port"
        ) from None


def _busy(path: str, pid: int, endpoint_url: str) -> StoreBusyError:
    who = f"process {pid}" if pid > 0 else "another process"
    return StoreBusyError(
        f"the embedded store at {path} is held by {who}, and no store endpoint answers at {endpoint_url}. "
        f"Start the store endpoint at {endpoint_url} in that process (the sink role and `make run` serve it; "
        "see FINOPS_CLICKHOUSE_QUERY_URL), or point FINOPS_CLICKHOUSE_QUERY_URL at where it listens, or stop "
        f"{who} to query the path directly."
    )


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
    client, where = open_readonly_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                         data_dir=settings.data_dir)
    try:
        if str(getattr(client, "uri", "")).startswith("chdb://"):
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
    from sinks.clickhouse import build_client, parse_clickhouse_url
    from finops.secrets import load_store_credentials, secrets_dir
    from sinks.store_server import StoreServerError, parse_query_url, serve_store

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
    client = build_client(url)
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
