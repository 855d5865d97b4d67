"""The ClickHouse client factory: the one place that knows chdb vs a server over HTTP vs the store endpoint.

Role: parse ``FINOPS_CLICKHOUSE_URL`` / ``FINOPS_CLICKHOUSE_QUERY_URL``, pick where a client goes (a server
directly; in embedded mode the store owner's endpoint when it answers, else the chdb path when nobody holds it),
log in with the installation's credentials from ``<data dir>/secrets``, and open read-only (``readonly = 2``) or
writer clients. Guarantee: library errors are translated here, with ``raise ... from err``, into
:class:`ClickHouseError` and its subclasses, and their messages never carry a password. See DESIGN §6.

clickhouse-connect is imported inside the functions that connect: its import has a measured start-up cost
(``python -X importtime -c "import clickhouse_connect"``) that ``finops --help`` would otherwise pay.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from finops.secrets import load_store_credentials, secrets_dir
from schemas.errors import ConfigError, FinopsError

log = logging.getLogger(__name__)

# Imports inside functions: clickhouse-connect (pipeline extra) loads on the first HTTP connect, not
# when `finops --help` imports this module (start-up cost; measure with
# `python -X importtime -c "import clickhouse_connect"`).

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ROLE_STORE_WAIT_S",
    "URL_FORMS",
    "ClickHouseError",
    "ClickHouseFatalError",
    "ClickHouseQueryError",
    "ClickHouseRejectedError",
    "ClickHouseTarget",
    "ClickHouseTransientError",
    "ClickHouseUnavailableError",
    "ErrorKind",
    "StoreBusyError",
    "StoreEndpoint",
    "avro_file_insert_sql",
    "chdb_path_owner",
    "check_identifier",
    "classified_errors",
    "classify_clickhouse_error",
    "column_read_types",
    "connect",
    "endpoint_answers",
    "execute_raw",
    "insert_avro_container",
    "is_embedded",
    "read_types",
    "open_client",
    "open_endpoint_client",
    "open_reader_writer",
    "parse_clickhouse_url",
    "parse_query_url",
    "query_errors",
    "quote_sql_string",
    "scrub",
    "require_plain_temp_dir",
    "strings_file",
]

URL_FORMS = "chdb:///abs/path (embedded) or http(s)://user:password@host:port/database"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8124
_ENV_NAME = "FINOPS_CLICKHOUSE_URL"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# ClickHouse answers "bad credentials" with AUTHENTICATION_FAILED (516) and a missing database with
# UNKNOWN_DATABASE (81); both are fixed in the configuration, not by retrying.
_AUTH_FAILED = 516
_UNKNOWN_DATABASE = 81
# readonly = 2, not 1: both refuse writes and DDL and cannot be lifted by SET, but 1 also refuses per-query
# settings (max_execution_time ...) that the dashboard passes. Checked in tests/integration/test_clickhouse_client.py.
_READONLY_SETTING = 2
_PING_TIMEOUT_S = 1.0
#: How long a long-running role (``serve``, ``alerts run``, ``detect run``) waits for the store endpoint when the
#: embedded store's path is held: started together with the sink, it finds the path locked a moment before the
#: sink's endpoint answers. One-shot commands (``finops sql``, reports) do not wait.
ROLE_STORE_WAIT_S = 60.0
_OWNER_POLL_S = 0.5
_CODE = re.compile(r"Code: (\d+)")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
# Passwords of the clients opened in this process, scrubbed from every message (drivers may echo them).
_SECRETS: set[str] = set()


class ClickHouseError(FinopsError):
    """A ClickHouse operation failed; the message says which and what to do."""


class ClickHouseUnavailableError(ClickHouseError):
    """ClickHouse could not be reached (server down, wrong host/port, chdb path locked by another process)."""


class StoreBusyError(ClickHouseUnavailableError):
    """The embedded store is held by another process and cannot be reached through an endpoint."""


class ClickHouseQueryError(ClickHouseError):
    """ClickHouse failed a statement: ``code`` is ClickHouse's error code (None when it sent none), ``reason`` its
    message with secrets scrubbed."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


ErrorKind = Literal["transient", "rejected", "fatal"]


class ClickHouseTransientError(ClickHouseQueryError):
    """The statement may succeed if sent again later, unchanged: the connection was lost, the server is overloaded
    or restarting, a replica or keeper is away. (An insert retried with its deduplication token cannot double
    count.)"""


class ClickHouseRejectedError(ClickHouseQueryError):
    """ClickHouse, or the client's column serialisers, refused the data of the statement: sent again it fails again,
    but the same statement without the offending rows can succeed."""


class ClickHouseFatalError(ClickHouseQueryError):
    """The table, the statement or the credentials are wrong: neither waiting nor dropping rows helps; fix the
    deployment (migrations, grants, configuration) and restart."""


_KIND_ERRORS: dict[ErrorKind, type[ClickHouseQueryError]] = {
    "transient": ClickHouseTransientError, "rejected": ClickHouseRejectedError, "fatal": ClickHouseFatalError,
}

# ClickHouse error codes worth waiting out: the server is overloaded, restarting or a replica/keeper is away.
# Names as the engine gives them (errorCodeToName), checked in tests/integration/test_clickhouse_errors.py.
TRANSIENT_CODES: Mapping[int, str] = {
    3: "UNEXPECTED_END_OF_FILE",  # connection cut mid-response (but see parsing_data)
    32: "ATTEMPT_TO_READ_AFTER_EOF",
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    173: "CANNOT_ALLOCATE_MEMORY",
    198: "DNS_ERROR",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",  # a replica lost its keeper session
    243: "NOT_ENOUGH_SPACE",  # wait for an operator rather than dead-letter good data
    252: "TOO_MANY_PARTS",
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",
    394: "QUERY_WAS_CANCELLED",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",
    745: "SERVER_OVERLOADED",
    999: "KEEPER_EXCEPTION",
}
# Codes about the table, the statement or the credentials, not the rows: splitting the data would dead-letter
# every good row.
FATAL_CODES: Mapping[int, str] = {
    8: "THERE_IS_NO_COLUMN",
    10: "NOT_FOUND_COLUMN_IN_BLOCK",
    16: "NO_SUCH_COLUMN_IN_TABLE",
    46: "UNKNOWN_FUNCTION",
    47: "UNKNOWN_IDENTIFIER",
    48: "NOT_IMPLEMENTED",
    56: "UNKNOWN_STORAGE",
    60: "UNKNOWN_TABLE",
    62: "SYNTAX_ERROR",
    73: "UNKNOWN_FORMAT",
    81: "UNKNOWN_DATABASE",
    115: "UNKNOWN_SETTING",
    164: "READONLY",
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    194: "REQUIRED_PASSWORD",
    218: "TABLE_IS_DROPPED",
    392: "QUERY_IS_PROHIBITED",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
}
# The end-of-data codes, when they answer an insert whose data ClickHouse parses (FORMAT Avro): the data ended
# early, so the same bytes would fail forever.
_END_OF_DATA_CODES = frozenset({3, 32})


def classify_clickhouse_error(err: BaseException, *, parsing_data: bool = False) -> ErrorKind:
    """Whether a statement that raised ``err`` in clickhouse-connect is worth sending again (``transient``),
    failed over some of its data (``rejected``) or cannot succeed as deployed (``fatal``). Pure.

    A ClickHouse error code, when the error carries one (``Error.code``, from the server's header or message, on
    chdb and over HTTP alike), decides: :data:`TRANSIENT_CODES`, :data:`FATAL_CODES`, any other code is the engine
    refusing the data (type mismatch, unparsable input ...). The HTTP client raises ``OperationalError`` for any
    server error once it has retried, so the type says less than the code. With ``parsing_data`` (the statement
    carries data ClickHouse parses), an end-of-data code means data cut short: rejected. Without a code, by type:
    ``OperationalError`` / ``InterfaceError`` (connection refused, reset, a read cut) and the OS's connection and
    timeout errors are transient; ``DataError`` and the built-in errors the client's serialisers raise for a value
    that does not fit its column (``ValueError``, ``TypeError``, ``ArithmeticError`` ...) are rejected;
    ``ProgrammingError``, ``NotSupportedError`` and ``InternalError`` (an unknown column, a column count that does
    not match, a type the client cannot write) and anything else are fatal.
    """
    import struct

    from clickhouse_connect.driver import exceptions as ch_exc

    code = _clickhouse_code(err)
    if code is not None:
        if parsing_data and code in _END_OF_DATA_CODES:
            return "rejected"
        if code in TRANSIENT_CODES:
            return "transient"
        return "fatal" if code in FATAL_CODES else "rejected"
    if isinstance(err, ch_exc.OperationalError | ch_exc.InterfaceError | ConnectionError | TimeoutError):
        return "transient"
    if isinstance(err, ch_exc.ProgrammingError | ch_exc.NotSupportedError | ch_exc.InternalError):
        return "fatal"
    if isinstance(err, ch_exc.Error):
        return "rejected"  # DataError (client-side serialisation), IntegrityError, a DatabaseError without a code
    if isinstance(err, ValueError | TypeError | ArithmeticError | KeyError | struct.error):
        return "rejected"
    if isinstance(err, OSError):
        return "transient"
    return "fatal"


def _clickhouse_code(err: BaseException) -> int | None:
    """ClickHouse's error code carried by a clickhouse-connect error; None for other errors or when it sent none."""
    from clickhouse_connect.driver import exceptions as ch_exc

    code = getattr(err, "code", None) if isinstance(err, ch_exc.Error) else None
    return code if isinstance(code, int) else None


@contextmanager
def classified_errors(what: str, *, parsing_data: bool = False) -> Iterator[None]:
    """Translate any error raised by the clickhouse-connect call(s) in the block into
    :class:`ClickHouseTransientError`, :class:`ClickHouseRejectedError` or :class:`ClickHouseFatalError`, as
    :func:`classify_clickhouse_error` classes it (``parsing_data`` passed on), with ``code`` (None when ClickHouse
    sent none) and ``reason`` (the error's type and first line, secrets scrubbed); ``raise ... from err``. Keep the
    block to the client calls: whatever it raises is taken for the client's."""
    try:
        yield
    except ClickHouseQueryError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure is classed and re-raised, none is swallowed
        kind = classify_clickhouse_error(err, parsing_data=parsing_data)
        text = scrub(str(err)).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:1000]
        raise _KIND_ERRORS[kind](f"{what} failed ({kind}): {reason}", code=_clickhouse_code(err),
                                 reason=reason) from err


def scrub(text: str) -> str:
    """``text`` without the passwords of this process' clients or of any ``user:password@`` URL in it."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***@", text)


def _remember(password: str | None) -> None:
    if password and len(password) >= 4:  # a very short password would scrub ordinary words
        _SECRETS.add(password)


# ---- URLs ----------------------------------------------------------------------------------------------------
def check_identifier(name: str, what: str = "database") -> str:
    """Return ``name`` if it is a plain ClickHouse identifier; raise :class:`ConfigError` otherwise.

    Identifiers (database names) cannot be bound as query parameters, so they are interpolated into SQL and must be
    restricted to letters, digits and ``_`` (not starting with a digit, at most 64 characters).
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigError(
            f"invalid {what} name {name!r}: expected letters, digits and _ (not starting with a digit, at most 64)"
        )
    return name


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed ``FINOPS_CLICKHOUSE_URL``. The password never appears in ``repr`` or :meth:`redacted`."""

    kind: Literal["chdb", "http"]
    path: str | None = None
    host: str | None = None
    port: int | None = None
    secure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None

    def __repr__(self) -> str:
        masked = "'***'" if self.password else "None"
        return (
            f"ClickHouseTarget(kind={self.kind!r}, path={self.path!r}, host={self.host!r}, port={self.port!r}, "
            f"secure={self.secure!r}, username={self.username!r}, password={masked}, database={self.database!r})"
        )

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``, safe for logs and error messages."""
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        scheme = "https" if self.secure else "http"
        auth = ""
        if self.username:
            auth = self.username + (":***" if self.password else "") + "@"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        db = f"/{self.database}" if self.database else ""
        return f"{scheme}://{auth}{host}:{self.port}{db}"


def _config_error(problem: str) -> ConfigError:
    return ConfigError(f"{_ENV_NAME} {problem}; expected {URL_FORMS}")


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """Parse and validate a ClickHouse URL (pure; no connection).

    Raises :class:`ConfigError` naming ``FINOPS_CLICKHOUSE_URL`` and the accepted forms; the message never contains
    the password (only the scheme or the part that is wrong).
    """
    if not isinstance(url, str) or not url.strip():
        raise _config_error("is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        # urlsplit's message can echo the netloc (and so the password): do not chain its text into ours.
        raise _config_error("is not a valid URL (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        if parts.netloc:
            raise _config_error(
                f"has a chdb location {parts.netloc!r} that is not an absolute path (write chdb:/// + /abs/path)"
            )
        path = unquote(parts.path)
        if not path.startswith("/") or path.strip("/") == "":
            raise _config_error("needs an absolute data directory after chdb://")
        if parts.query or parts.fragment:
            raise _config_error("has a query or fragment, which chdb URLs do not take")
        return ClickHouseTarget(kind="chdb", path=path)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise _config_error(f"has no host (scheme {scheme})")
        if parts.query or parts.fragment:
            raise _config_error("has a query or fragment; put settings in the finops configuration instead")
        secure = scheme == "https"
        database: str | None = None
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) > 1:
            raise _config_error("has more than one path segment (only /database is allowed)")
        if segments:
            database = unquote(segments[0])
            if not _IDENTIFIER.fullmatch(database):
                raise _config_error(f"names an invalid database {database!r}")
        return ClickHouseTarget(
            kind="http",
            host=parts.hostname,
            port=port or (8443 if secure else 8123),
            secure=secure,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            database=database,
        )
    raise _config_error(f"has scheme {parts.scheme!r}" if parts.scheme else "has no scheme")


@dataclass(frozen=True)
class StoreEndpoint:
    """Where a store endpoint listens and, when the URL carries credentials, the one user it accepts."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``http://host:port`` without credentials (safe to print)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def client_url(self) -> str:
        """``http://[user[:password]@]host:port`` for clickhouse-connect (secret: carries the password)."""
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{auth}{host}:{self.port}"

    def users(self) -> dict[str, str] | None:
        """The ``users`` argument of :func:`serve_store` for this URL: its user as an extra writer (None: none)."""
        if self.username is None:
            return None
        return {self.username: self.password or ""}

    def with_credentials(self, username: str, password: str) -> StoreEndpoint:
        """This endpoint with ``username``/``password`` unless the URL named a user itself (explicit wins)."""
        if self.username is not None:
            return self
        return StoreEndpoint(self.host, self.port, username, password)


def parse_query_url(url: str | None) -> StoreEndpoint:
    """Parse ``clickhouse.query_url`` (``http://[user:password@]host:port``); None gives the default endpoint.

    Raises:
        ConfigError: the URL is not ``http://host:port`` (the message never contains the password).
    """
    if not url:
        return StoreEndpoint()
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(
            "FINOPS_CLICKHOUSE_QUERY_URL is not a valid URL (bad host or port); expected http://host:port"
        ) from None
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"FINOPS_CLICKHOUSE_QUERY_URL must be http://[user:password@]host:port (got scheme {parts.scheme!r}); "
            "the store endpoint speaks plain HTTP on a local address"
        )
    return StoreEndpoint(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


# ---- who holds a chdb path ------------------------------------------------------------------------------------
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


# ---- opening clients -----------------------------------------------------------------------------------------
def connect(
    url: str,
    *,
    database: str | None = None,
    readonly: bool = False,
    settings: Mapping[str, Any] | None = None,
    session_ids: bool = True,
) -> Any:
    """Open exactly ``url`` (chdb path or server) and return a synchronous clickhouse-connect ``Client``.

    For the store owner and for tools that are handed a URL (migrations, benches); every other role uses
    :func:`open_client`, which finds the store endpoint. It looks up no credentials, hence no ``data_dir``.
    ``database`` (validated) overrides the URL's and must exist; ``readonly`` applies ``readonly = 2``;
    ``settings`` apply to every query; ``session_ids=False`` sends no session id, so one HTTP client may run
    concurrent queries (a server refuses those within one session). Blocks while connecting.

    Raises:
        ConfigError: a bad URL, bad credentials, a missing database, or (chdb) a TMPDIR with a glob character.
        ClickHouseUnavailableError: ClickHouse cannot be reached, or the chdb path cannot be opened.
    """
    import clickhouse_connect
    from clickhouse_connect.driver import exceptions as ch_exc

    target = parse_clickhouse_url(url)
    if database is not None:
        check_identifier(database)
    db = database if database is not None else target.database
    client_settings: dict[str, Any] = dict(settings or {})
    if readonly:
        client_settings["readonly"] = _READONLY_SETTING
    _remember(target.password)
    try:
        if target.kind == "chdb":
            require_plain_temp_dir()
            return clickhouse_connect.get_client(dsn=f"chdb://{target.path}", database=db, settings=client_settings)
        return clickhouse_connect.get_client(
            host=target.host,
            port=target.port,
            username=target.username or "default",
            password=target.password or "",
            secure=target.secure,
            database=db,
            settings=client_settings,
            autogenerate_session_id=session_ids,
        )
    except ch_exc.DatabaseError as err:
        code = getattr(err, "code", None)
        text = scrub(str(err))
        if code == _AUTH_FAILED or "AUTHENTICATION_FAILED" in text:
            raise ConfigError(
                f"ClickHouse at {target.redacted()} rejected the credentials: check the user and password in "
                f"{_ENV_NAME}"
            ) from err
        if code == _UNKNOWN_DATABASE or "UNKNOWN_DATABASE" in text:
            raise ConfigError(
                f"database {db!r} does not exist at {target.redacted()}: run `finops migrate` first, or fix the "
                "database in the settings"
            ) from err
        if target.kind == "chdb":
            raise ClickHouseUnavailableError(
                f"cannot open embedded ClickHouse at {target.redacted()}: one process may open one chdb data path "
                f"(is another data path open in this process, or the directory unwritable?): {text}"
            ) from err
        raise ClickHouseUnavailableError(
            f"cannot reach ClickHouse at {target.redacted()}: is the server running and {_ENV_NAME} right? ({text})"
        ) from err
    except ch_exc.Error as err:
        raise ClickHouseUnavailableError(
            f"cannot reach ClickHouse at {target.redacted()}: is the server running and {_ENV_NAME} right? "
            f"({scrub(str(err))})"
        ) from err
    except OSError as err:
        raise ClickHouseUnavailableError(
            f"cannot open ClickHouse at {target.redacted()}: {err.strerror or err}"
        ) from err


def endpoint_answers(url: str, timeout: float = _PING_TIMEOUT_S) -> bool:
    """True if a ClickHouse HTTP endpoint at ``url`` answers ``/ping`` with ``Ok.`` (blocks up to ``timeout``)."""
    endpoint = parse_query_url(url)
    try:
        with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=timeout) as response:  # noqa: S310 - http only
            return bool(response.status == 200 and response.read(16).startswith(b"Ok."))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _endpoint_for(query_url: str | None, data_dir: Path | None, *, readonly: bool) -> StoreEndpoint:
    """The store endpoint of ``query_url`` with the credentials a client of this installation uses: the URL's own
    ``user:password@`` when it names one, else the installation's reader (``readonly``) or writer from
    ``<data_dir>/secrets`` (none when they do not exist yet or ``data_dir`` is None).

    Raises:
        SecretFileError: a secret file is readable by others or cannot be read (the message names it).
    """
    endpoint = parse_query_url(query_url)
    if endpoint.username is not None or data_dir is None:
        return endpoint
    credentials = load_store_credentials(data_dir, create=False)
    if credentials is None:
        return endpoint
    return endpoint.with_credentials(*credentials.for_role(readonly=readonly))


def open_endpoint_client(
    query_url: str | None, database: str, *, readonly: bool, data_dir: Path | None, session_ids: bool = True,
) -> Any:
    """A client of the store endpoint at ``query_url``, logged in as the installation's reader (``readonly``) or
    writer from ``<data_dir>/secrets`` unless the URL names a user. Blocks while connecting.

    Raises:
        ConfigError: the endpoint refused the login (the message says where credentials come from), or a bad URL.
        ClickHouseUnavailableError: nothing answers there.
    """
    endpoint = _endpoint_for(query_url, data_dir, readonly=readonly)
    _remember(endpoint.password)
    try:
        return connect(endpoint.client_url(), database=database, readonly=readonly, session_ids=session_ids)
    except ConfigError as err:
        if "rejected the credentials" not in str(err):
            raise
        where = (f"the installation's secrets in {secrets_dir(data_dir)} (readable by the installation's owner "
                 "only)" if data_dir is not None else "no credentials (none were given)")
        if endpoint.username is not None and data_dir is not None:
            where = f"user {endpoint.username!r}"
        raise ConfigError(
            f"the store endpoint at {endpoint.url} refused the login ({where}). Run the command as the user that "
            "runs the system (it reads <data dir>/secrets), with the same FINOPS_DATA_DIR, or put a user and "
            "password in FINOPS_CLICKHOUSE_QUERY_URL=http://user:password@host:port"
        ) from err


def open_client(
    clickhouse_url: str, database: str, query_url: str | None = None, *, readonly: bool,
    data_dir: Path | None, ping_timeout: float = _PING_TIMEOUT_S, session_ids: bool = True, owner_wait: float = 0.0,
) -> tuple[Any, str]:
    """A client for any role but the store owner, and a printable description of where it points.

    1. ``clickhouse_url`` is ``http(s)://``: that server.
    2. It is ``chdb://``: the owner's store endpoint (``query_url``, default http://127.0.0.1:8124) when it answers
       (while the system runs its owner holds the data path), logged in with the secrets of ``data_dir``;
    3. else the chdb path itself when nobody holds it (the system is stopped);
    4. else :class:`StoreBusyError` naming the holder and the endpoint it should serve.

    ``readonly`` applies ``readonly = 2`` and, at the endpoint, logs in as the reader instead of the writer. Blocks
    up to ``ping_timeout`` probing the endpoint, then while connecting. With ``owner_wait`` > 0 (the long-running
    roles pass :data:`ROLE_STORE_WAIT_S`), a path held while nothing answers yet is waited on for up to that many
    seconds: the endpoint once it answers, the path itself if its holder lets go, else step 4.

    Raises:
        ConfigError: bad URL, bad credentials or a missing database; credentials the endpoint refuses.
        StoreBusyError: the chdb path is held by another process and nothing answers at the endpoint.
        ClickHouseUnavailableError: ClickHouse cannot be reached.
    """
    target = parse_clickhouse_url(clickhouse_url)
    if target.kind == "http":
        return (connect(clickhouse_url, database=database, readonly=readonly, session_ids=session_ids),
                target.redacted())
    endpoint = parse_query_url(query_url)
    assert target.path is not None
    if endpoint_answers(endpoint.url, ping_timeout) or _owner_starts_endpoint(
        target.path, endpoint.url, owner_wait, ping_timeout
    ):
        client = open_endpoint_client(query_url, database, readonly=readonly, data_dir=data_dir,
                                      session_ids=session_ids)
        return client, f"{endpoint.url} (store endpoint)"
    owner = chdb_path_owner(target.path)
    if owner is not None:
        raise _busy(target.path, owner, endpoint.url)
    try:
        return connect(clickhouse_url, database=database, readonly=readonly), target.redacted()
    except ClickHouseUnavailableError:
        owner = chdb_path_owner(target.path)
        if owner is not None:  # taken between the check and the open
            raise _busy(target.path, owner, endpoint.url) from None
        raise


def _owner_starts_endpoint(path: str, endpoint_url: str, wait_s: float, ping_timeout: float) -> bool:
    """True once the endpoint answers within ``wait_s`` while ``path`` stays held; False at once when nobody holds
    it or ``wait_s`` is 0, and as soon as its holder lets go (the caller opens the path then) or time is up."""
    owner = chdb_path_owner(path) if wait_s > 0 else None
    if owner is None:
        return False
    who = f"process {owner}" if owner > 0 else "another process"
    log.info("the embedded store at %s is held by %s and its endpoint %s does not answer yet: waiting up to %.0f s "
             "for it (the sink may be starting)", path, who, endpoint_url, wait_s)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(_OWNER_POLL_S)
        if endpoint_answers(endpoint_url, ping_timeout):
            return True
        if chdb_path_owner(path) is None:
            return False
    return False


def open_reader_writer(
    clickhouse_url: str, database: str, query_url: str | None = None, *, data_dir: Path | None,
    owner_wait: float = 0.0,
) -> tuple[Any, Any, str]:
    """A read-only client, a writer at the same place (see :func:`open_client`), and where they point.

    Neither sends session ids, so a thread pool may query one HTTP client concurrently. Raises what
    :func:`open_client` raises.
    """
    reader, where = open_client(clickhouse_url, database, query_url, readonly=True, data_dir=data_dir,
                                session_ids=False, owner_wait=owner_wait)
    try:
        if is_embedded(reader):
            writer = connect(clickhouse_url, database=database)  # the same process' chdb path
        elif parse_clickhouse_url(clickhouse_url).kind == "chdb":
            writer = open_endpoint_client(query_url, database, readonly=False, data_dir=data_dir, session_ids=False)
        else:
            writer = connect(clickhouse_url, database=database, session_ids=False)
    except BaseException:
        reader.close()
        raise
    return reader, writer, where


def _busy(path: str, pid: int, endpoint_url: str) -> StoreBusyError:
    who = f"process {pid}" if pid > 0 else "another process"
    return StoreBusyError(
        f"the embedded store at {path} is held by {who}, and no store endpoint answers at {endpoint_url}. "
        f"Start the store endpoint at {endpoint_url} in that process (the sink role and `make run` serve it; "
        "see FINOPS_CLICKHOUSE_QUERY_URL), or point FINOPS_CLICKHOUSE_QUERY_URL at where it listens, or stop "
        f"{who} to query the path directly."
    )


# ---- using clients -------------------------------------------------------------------------------------------
def is_embedded(client: Any) -> bool:
    """True if ``client`` runs chdb in this process (its calls must be serialised; it bypasses the endpoint)."""
    return str(getattr(client, "uri", "")).startswith("chdb://")


@contextmanager
def query_errors(what: str = "ClickHouse query", error: type[ClickHouseQueryError] = ClickHouseQueryError,
                 ) -> Iterator[None]:
    """Translate a clickhouse-connect error raised in the block into ``error`` (``what failed: reason``), carrying
    ClickHouse's code and its message with secrets scrubbed (snuba's ``ClickhouseError(code, message)``)."""
    from clickhouse_connect.driver import exceptions as ch_exc

    try:
        yield
    except ch_exc.Error as err:
        reason = scrub(str(err)).strip()
        code = getattr(err, "code", None)
        if not isinstance(code, int):
            match = _CODE.search(reason)
            code = int(match.group(1)) if match else None
        raise error(f"{what} failed: {reason}", code=code, reason=reason) from err


def read_types(types: Mapping[str, str]) -> dict[str, str]:
    """The types to read a table's columns as from an Avro container (name -> ClickHouse type), given the table's
    column types (``system.columns``): ``LowCardinality(T)`` is read as ``T``, anything else as it is declared.

    ClickHouse's Avro reader fills a LowCardinality column one value at a time; read as plain ``T``, the insert casts
    each whole column to the table's type in one pass. The stored values are the same (tests/integration/
    test_sink_avro.py compares both forms row for row)."""
    prefix = "LowCardinality("
    return {name: kind[len(prefix):-1] if kind.startswith(prefix) and kind.endswith(")") else kind
            for name, kind in types.items()}


def quote_sql_string(text: str) -> str:
    """``text`` as a ClickHouse string literal (backslash and quote escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def column_read_types(client: Any, database: str, table: str) -> dict[str, str]:
    """:func:`read_types` of ``database.table``'s columns as ``system.columns`` declares them."""
    result = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {table:String}",
        parameters={"db": database, "table": table},
    )
    return read_types({str(name): str(kind) for name, kind in result.result_rows})


def avro_file_insert_sql(table: str, columns: Sequence[str], path: str, types: Mapping[str, str]) -> str:
    """``INSERT INTO table (columns) SELECT columns FROM file(path, 'Avro', structure)``, each column read as
    ``types[column]``: the statement :func:`insert_avro_container` runs on chdb (and the sink bench's engine floor)."""
    names = ", ".join(f"`{name}`" for name in columns)
    structure = ", ".join(f"`{name}` {types[name]}" for name in columns)
    source = f"file({quote_sql_string(path)}, 'Avro', {quote_sql_string(structure)})"
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}"


_GLOB_CHARACTERS = frozenset("*?{}[]")
_TSV_SPECIAL = re.compile(r"[\\\t\r]")  # besides the line break, which is counted


def require_plain_temp_dir() -> None:
    """Raise :class:`ConfigError` unless chdb can be pointed at a private temporary file by its path.

    ClickHouse reads a path given to ``file()`` or ``FROM INFILE`` with ``*``, ``?``, ``{`` or ``[`` in it as a
    glob, and a glob matching nothing reads as empty, silently. clickhouse-connect's chdb backend inserts every row
    batch through such a file in the temporary directory, so with ``TMPDIR`` set to a path holding one of them each
    insert would store nothing and report success (tests/integration/test_sink_avro.py shows it). The names
    ``tempfile`` makes hold none, so only the directory matters."""
    import tempfile

    directory = tempfile.gettempdir()
    if _GLOB_CHARACTERS.intersection(directory):
        raise ConfigError(
            f"the temporary directory {directory!r} has a glob character (* ? {{ }} [ ]) in its path: embedded "
            "ClickHouse would read its insert files as a pattern and store nothing; set TMPDIR to a plain path"
        )


@contextmanager
def strings_file(values: Iterable[str]) -> Iterator[str]:
    """A private temporary file holding ``values`` (plain lines when none needs escaping, else RowBinary strings:
    exact for any text), as the SQL of a one-column subquery that reads it, ``(SELECT value FROM file(path, fmt,
    'value String'))``; removed on exit. For an embedded (chdb) client only: the engine reads the file on this
    machine. A large ``IN`` set this way costs the engine less than the same set as a literal it has to parse.
    Raises :class:`ConfigError` from :func:`require_plain_temp_dir`."""
    import tempfile

    require_plain_temp_dir()

    items = list(values)
    # Lines as they are when no value holds a character TSV escapes (event ids never do): one join, no per-value
    # Python. Otherwise RowBinary, length-prefixed, exact for any text.
    text = "\n".join(items)
    plain = (_TSV_SPECIAL.search(text) is None and text.count("\n") == max(len(items) - 1, 0)
             and "" not in items)
    data = text.encode() if plain else b"".join(_row_binary_string(value) for value in items)
    fmt = "TSV" if plain else "RowBinary"
    handle, path = tempfile.mkstemp(prefix="finops-ids-", suffix=".bin")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        yield f"(SELECT value FROM file({quote_sql_string(path)}, '{fmt}', 'value String'))"
    finally:
        with suppress(OSError):
            os.unlink(path)


def _row_binary_string(value: str) -> bytes:
    data = value.encode()
    size = len(data)
    if size < 0x80:
        return bytes((size,)) + data
    head = bytearray()
    while size >= 0x80:  # unsigned LEB128, as RowBinary writes a String's length
        head.append((size & 0x7F) | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + data


def insert_avro_container(client: Any, table: str, columns: Sequence[str], block: bytes, *,
                          settings: Mapping[str, Any], types: Mapping[str, str] | None = None) -> None:
    """Insert the Avro object container ``block`` into ``columns`` of ``table`` (``database.table``).

    A server (HTTP, or the store endpoint) gets clickhouse-connect's raw insert: ``INSERT INTO t (cols) FORMAT Avro``
    with the bytes as the body. On chdb with ``types`` (each column's type to read it as, :func:`read_types`), the
    container goes to a private temporary file (what the raw insert does there too) read by ``INSERT INTO t (cols)
    SELECT cols FROM file(path, Avro, structure)``, so ClickHouse converts whole columns to the table's types; an
    embedded client without ``types`` takes the raw insert. ``settings`` (the deduplication token ...) apply to the
    insert either way. Raises :class:`ConfigError` from :func:`require_plain_temp_dir` on chdb, and
    clickhouse-connect's errors untranslated (callers classify them).
    """
    embedded = is_embedded(client)
    if embedded:
        require_plain_temp_dir()
    if types is None or not embedded:
        client.raw_insert(table, column_names=list(columns), insert_block=block, fmt="Avro", settings=dict(settings))
        return
    import tempfile

    handle, path = tempfile.mkstemp(prefix="finops-block-", suffix=".avro")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(block)
        client.command(avro_file_insert_sql(table, columns, path, types), settings=dict(settings))
    finally:
        with suppress(OSError):
            os.unlink(path)


def execute_raw(client: Any, sql: str | bytes, bind_params: Mapping[str, str], database: str) -> bytes:
    """Run ``sql`` on a chdb ``client`` with ``param_<name>`` values already in ClickHouse's escaped text form and
    return the engine's formatted output (the store endpoint's request path).

    clickhouse-connect's ``raw_query`` would format the parameters again as Python values, so this uses the chdb
    backend's raw-query seam, a private API of clickhouse-connect (pinned 1.12): kept here so it has one user.
    Raises clickhouse-connect's errors untranslated (the endpoint answers them as ClickHouse would).
    """
    from clickhouse_connect.driver._backend.models import QueryRuntime

    body = client._backend.execute_raw_query(
        sql, dict(bind_params), None, QueryRuntime(database=database, settings={}), None
    )
    return bytes(body or b"")
