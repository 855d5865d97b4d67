"""The one way agent-finops reaches ClickHouse: :func:`build_client` from a ``FINOPS_CLICKHOUSE_URL``.

Two engines behind one clickhouse-connect ``Client`` (DESIGN §6: the SQL is the same for both):

* ``chdb:///abs/path``: embedded ClickHouse (chdb) on a data directory. One process may open one data path; the
  default path (``chdb://<FINOPS_DATA_DIR>/clickhouse``) is decided by the settings, not here.
* ``http(s)://user:password@host:port/database``: a ClickHouse server or cluster over HTTP(S).

Errors are translated at this boundary: a malformed URL is a :class:`ConfigError` that names the variable and the
forms it accepts (never the password), and a failed connection is a :class:`ClickHouseUnavailableError` that says
what to check.

Read-only clients apply ``readonly = 2``, not ``readonly = 1``. Both reject every write and DDL on chdb and on a
server, and neither can be lifted from the session (``SET readonly = 0`` fails); but ``readonly = 1`` also rejects
any per-query setting (``max_execution_time``, ``max_result_rows`` ...), which is exactly what a dashboard's query
client wants to pass. Verified on chdb 4.4 (ClickHouse 26.9) in tests/integration/test_clickhouse_client.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from schemas.errors import ConfigError, FinopsError


__all__ = [
    "ClickHouseError",
    "ClickHouseTarget",
    "ClickHouseUnavailableError",
    "URL_FORMS",
    "build_client",
    "check_identifier",
    "parse_clickhouse_url",
]

URL_FORMS = "chdb:///abs/path (embedded) or http(s)://user:password@host:port/database"
_ENV_NAME = "FINOPS_CLICKHOUSE_URL"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# ClickHouse answers "bad credentials" with AUTHENTICATION_FAILED (516) and a missing database with
# UNKNOWN_DATABASE (81); both are fixed in the configuration, not by retrying.
_AUTH_FAILED = 516
_UNKNOWN_DATABASE = 81
_READONLY_SETTING = 2


class ClickHouseError(FinopsError):
    """A ClickHouse operation failed; the message says which and what to do."""


class ClickHouseUnavailableError(ClickHouseError):
    """ClickHouse could not be reached (server down, wrong host/port, chdb path locked by another process)."""


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


def build_client(
    url: str,
    *,
    database: str | None = None,
    readonly: bool = False,
    settings: dict[str, Any] | None = None,
) -> Any:
    """Connect to ClickHouse and return a clickhouse-connect ``Client`` (synchronous; the async client does not work
    on chdb).

    ``database`` (validated identifier) overrides the URL's database and becomes the client's default; it must
    exist (the migration runner connects without one and creates it). ``readonly=True`` applies ClickHouse's
    ``readonly = 2`` (see the module docstring). ``settings`` are ClickHouse settings for every query of the client.

    Blocks while connecting (HTTP: one round trip; chdb: opening the engine). Raises :class:`ConfigError` for a bad
    URL, bad credentials or a missing database, :class:`ClickHouseUnavailableError` when ClickHouse cannot be
    reached or the chdb path is held by another data path in this process.
    """
    target = parse_clickhouse_url(url)
    if database is not None:
        check_identifier(database)
    db = database if database is not None else target.database
    client_settings: dict[str, Any] = dict(settings or {})
    if readonly:
        client_settings["readonly"] = _READONLY_SETTING

    import clickhouse_connect  # heavy import kept off `finops --help`
    from clickhouse_connect.driver import exceptions as ch_exc

    try:
        if target.kind == "chdb":
            return clickhouse_connect.get_client(dsn=f"chdb://{target.path}", database=db, settings=client_settings)
        return clickhouse_connect.get_client(
            host=target.host,
            port=target.port,
            username=target.username or "default",
            password=target.password or "",
            secure=target.secure,
            database=db,
            settings=client_settings,
        )
    except ch_exc.DatabaseError as err:
        code = getattr(err, "code", None)
        text = _scrub(str(err), target)
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
            f"({_scrub(str(err), target)})"
        ) from err
    except OSError as err:
        raise ClickHouseUnavailableError(
            f"cannot open ClickHouse at {target.redacted()}: {err.strerror or err}"
        ) from err


def _scrub(text: str, target: ClickHouseTarget) -> str:
    """Remove the password from a library message before it reaches ours (drivers sometimes echo the URL)."""
    if target.password:
        text = text.replace(target.password, "***")
    return text
