"""The store endpoint: a small ClickHouse-HTTP-interface-compatible server in front of an embedded (chdb) store.

Role (DESIGN §6): a chdb data path can be opened by one process only, and clickhouse-connect's async client does not
work on chdb. So the store owner (the sink role, or the all-in-one ``make run`` process) calls :func:`serve_store`,
and every other role (dashboard, detection's reconciliation, ``finops sql``, Grafana, curl) uses the same SQL and
clickhouse-connect code as against a ClickHouse server (``FINOPS_CLICKHOUSE_URL=http://127.0.0.1:8124/finops``).
What of the HTTP interface is implemented, and what is not, is listed on :class:`StoreServer`.

Guarantee: this endpoint is a trust boundary: every request but ``/ping`` is authenticated, reader requests always
run read-only, every statement passes :mod:`sinks.query_policy` first, DDL never comes over HTTP, and browser
requests from other sites are refused before anything is read.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from finops.clickhouse import DEFAULT_HOST, DEFAULT_PORT, connect, execute_raw, is_embedded, quote_sql_string
from finops.secrets import StoreCredentials
from schemas.errors import FinopsError
from sinks.query_policy import ACCESS_DENIED, QueryPolicy, QueryRefusedError, format_allowed, load_query_policy

# Imports inside functions: the decoders of compressed request bodies (zstandard or backports.zstd,
# lz4, brotli) are optional and may be absent (decompress_body answers UNKNOWN_COMPRESSION_METHOD).

__all__ = [
    "DEFAULT_QUERY_URL",
    "StoreServer",
    "StoreServerError",
    "serve_store",
]

log = logging.getLogger(__name__)

DEFAULT_QUERY_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
# A request body larger than this is refused with QUERY_IS_TOO_LARGE before it is read into memory. Sink batches
# are written by the owner itself; what comes over HTTP is queries and the odd manual insert.
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024

# ClickHouse error codes used here (names as in ClickHouse's ErrorCodes.cpp; values checked against
# errorCodeToName() of the embedded engine in tests/integration/test_store_server.py).
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
BAD_ARGUMENTS = 36
READONLY = 164
UNKNOWN_COMPRESSION_METHOD = 89
QUERY_IS_TOO_LARGE = 229
AUTHENTICATION_FAILED = 516
UNSUPPORTED_MEDIA_TYPE = 779
STD_EXCEPTION = 1001

_ERROR_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    READONLY: "READONLY",
    UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD",
    QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    ACCESS_DENIED: "ACCESS_DENIED",
    UNSUPPORTED_MEDIA_TYPE: "UNSUPPORTED_MEDIA_TYPE",
    STD_EXCEPTION: "STD_EXCEPTION",
}

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by code.
_STATUS_BY_CODE: dict[int, int] = {194: 401}
_STATUS_BY_CODE.update(dict.fromkeys((192, 193, 516, 512, ACCESS_DENIED), 403))
_STATUS_BY_CODE.update(
    dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168, 223, 62, 117, 53, 321),
        400,
    )
)
_STATUS_BY_CODE.update(dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404))
_STATUS_BY_CODE.update({229: 413, 48: 501, 209: 503, 76: 503, 381: 411, 159: 408, 439: 503, 779: 415})

# URL parameters that belong to the HTTP interface, not to the engine: they are consumed here or ignored, never
# SET on a handle (the engine would reject some and the rest only make sense for a server's HTTP layer).
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
        "session_timeout", "session_check", "close_session", "compress", "decompress", "buffer_size",
        "wait_end_of_query", "client_protocol_version", "role", "stacktrace", "readonly",
        "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close", "add_http_cors_header", "http_zlib_compression_level",
        "http_native_compression_disable_checksumming_on_decompress", "http_response_buffer_size",
        "http_wait_end_of_query", "output_format_enable_streaming",
    }
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Statements whose answer is a result set: ClickHouse reports X-ClickHouse-Format for them (clickhouse-connect's
# command() uses the header to tell "empty result" from "no result").
_RESULT_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "("})
_CONTENT_TYPES = {
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Parquet": "application/octet-stream",
    "Arrow": "application/octet-stream",
    "ArrowStream": "application/octet-stream",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
}


class StoreServerError(FinopsError):
    """The store endpoint could not start (port in use, not an embedded store); the message says what to do."""


class ClickHouseHTTPError(Exception):
    """An error to answer the way ClickHouse does (internal to the request path; never escapes the handler)."""

    def __init__(self, code: int, message: str, *, status: int | None = None) -> None:
        self.code = code
        self.status = status or _STATUS_BY_CODE.get(code, 500)
        self.body = message if message.startswith("Code: ") else (
            f"Code: {code}. DB::Exception: {message}. ({_ERROR_NAMES.get(code, 'UNKNOWN')})"
        )
        super().__init__(self.body)


# ---- request parsing (pure) -----------------------------------------------------------------------------------
@dataclass
class StoreRequest:
    """One HTTP request reduced to what the engine needs."""

    sql: bytes
    bind_params: dict[str, str]
    settings: dict[str, str]
    database: str
    default_format: str
    readonly: bool
    query_id: str
    via_get: bool


def build_request(
    method: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    form_fields: Mapping[str, str] | None = None,
) -> StoreRequest:
    """Assemble the statement, bound parameters, settings and routing of one request (ClickHouse's rules).

    ``params`` are the decoded URL parameters (last value wins), ``headers`` keyed by lower-case name, ``body`` already
    decompressed and de-chunked; ``form_fields`` the text fields of a multipart body (which then is not SQL).

    Raises:
        ClickHouseHTTPError: empty query (SYNTAX_ERROR), an invalid setting name (BAD_ARGUMENTS).
    """
    fields = dict(form_fields or {})
    merged: dict[str, str] = dict(params)
    merged.update({k: v for k, v in fields.items() if k.startswith("param_")})
    query = fields.get("query", merged.get("query", ""))
    if form_fields is not None:
        sql = query.encode()
    elif query and body:
        # ClickHouse concatenates the query parameter, a newline and the body (INSERT ... FORMAT x + data).
        sql = query.encode() + b"\n" + body
    else:
        sql = query.encode() if query else body
    if not sql.strip():
        raise ClickHouseHTTPError(SYNTAX_ERROR, "Empty query")
    settings: dict[str, str] = {}
    bind: dict[str, str] = {}
    for key, value in merged.items():
        if key.startswith("param_"):
            bind[key] = value
        elif key not in _TRANSPORT_PARAMS:
            if not _SETTING_NAME.match(key):
                raise ClickHouseHTTPError(BAD_ARGUMENTS, f"Invalid setting name {key!r}")
            settings[key] = value
    via_get = method.upper() == "GET"
    readonly = via_get or merged.get("readonly", "0").strip() not in ("", "0")
    database = merged.get("database") or headers.get("x-clickhouse-database") or "default"
    default_format = merged.get("default_format") or headers.get("x-clickhouse-format") or "TabSeparated"
    query_id = merged.get("query_id") or str(uuid.uuid4())
    return StoreRequest(sql, bind, settings, database, default_format, readonly, query_id, via_get)


# A minimal SQL lexer: enough to find the first keyword, an INSERT's head and a top-level FORMAT clause without
# being fooled by strings, quoted identifiers or comments.
_WS = b" \t\r\n\f\v"
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_$]*")


def _skip_trivia(sql: bytes, pos: int) -> int:
    end = len(sql)
    while pos < end:
        if sql[pos] in _WS:
            pos += 1
        elif sql.startswith(b"--", pos) or sql.startswith(b"#!", pos) or sql.startswith(b"# ", pos):
            nl = sql.find(b"\n", pos)
            pos = end if nl < 0 else nl + 1
        elif sql.startswith(b"/*", pos):
            close = sql.find(b"*/", pos + 2)
            pos = end if close < 0 else close + 2
        else:
            break
    return pos


def _quoted_end(sql: bytes, pos: int) -> int:
    """End (exclusive) of the quoted token starting at ``pos``; -1 if unterminated."""
    quote = sql[pos : pos + 1]
    i = pos + 1
    end = len(sql)
    while i < end:
        ch = sql[i : i + 1]
        if ch == b"\\":
            i += 2
            continue
        if ch == quote:
            if sql[i + 1 : i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return -1


_UNESCAPE = {b"n": "\n", b"t": "\t", b"r": "\r", b"0": "\0", b"b": "\b", b"f": "\f", b"a": "\a", b"v": "\v"}


def _unquote_identifier(token: bytes) -> str:
    if token[:1] not in (b"`", b'"'):
        return token.decode()
    quote, inner, out, i = token[:1], token[1:-1], [], 0
    while i < len(inner):
        ch = inner[i : i + 1]
        if ch == b"\\" and i + 1 < len(inner):
            nxt = inner[i + 1 : i + 2]
            out.append(_UNESCAPE.get(nxt, nxt.decode("utf-8", "surrogateescape")))
            i += 2
        elif ch == quote and inner[i + 1 : i + 2] == quote:
            out.append(quote.decode())
            i += 2
        else:
            out.append(inner[i : i + 1].decode("utf-8", "surrogateescape"))
            i += 1
    return "".join(out).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _identifier(sql: bytes, pos: int) -> tuple[bytes, int] | None:
    if sql[pos : pos + 1] in (b"`", b'"'):
        end = _quoted_end(sql, pos)
        return (sql[pos:end], end) if end > 0 else None
    match = _WORD.match(sql, pos)
    return (match.group(), match.end()) if match else None


def first_keyword(sql: bytes) -> str:
    """The statement's first keyword in upper case (``(`` for a parenthesised query, ``""`` if none)."""
    pos = _skip_trivia(sql, 0)
    if sql[pos : pos + 1] == b"(":
        return "("
    match = _WORD.match(sql, pos)
    return match.group().decode().upper() if match else ""


@dataclass(frozen=True)
class InsertHead:
    """``INSERT INTO <table> [(<columns>)] FORMAT <fmt>`` and where its data starts."""

    table: str
    columns: tuple[str, ...] | None
    fmt: str
    data_offset: int


def parse_insert_head(sql: bytes) -> InsertHead | None:
    """Parse the head of an ``INSERT ... FORMAT`` statement; None for any other statement (VALUES, SELECT, SETTINGS
    or a table function), which then runs as a whole.

    The data starts after the format name, its horizontal whitespace and one line break, as in ClickHouse's parser.
    """
    pos = _skip_trivia(sql, 0)
    words: list[str] = []
    for expected in ("INSERT", "INTO"):
        match = _WORD.match(sql, pos)
        if not match or match.group().upper().decode() != expected:
            return None
        words.append(expected)
        pos = _skip_trivia(sql, match.end())
    match = _WORD.match(sql, pos)
    if match and match.group().upper() == b"TABLE":
        pos = _skip_trivia(sql, match.end())
    elif match and match.group().upper() == b"FUNCTION":
        return None
    table_start = pos
    ident = _identifier(sql, pos)
    if ident is None:
        return None
    pos = ident[1]
    if sql[pos : pos + 1] == b".":
        ident = _identifier(sql, pos + 1)
        if ident is None:
            return None
        pos = ident[1]
    table = sql[table_start:pos].decode("utf-8", "replace")
    pos = _skip_trivia(sql, pos)
    columns: list[str] | None = None
    if sql[pos : pos + 1] == b"(":
        columns = []
        pos = _skip_trivia(sql, pos + 1)
        while True:
            ident = _identifier(sql, pos)
            if ident is None:
                return None
            columns.append(_unquote_identifier(ident[0]))
            pos = _skip_trivia(sql, ident[1])
            if sql[pos : pos + 1] == b",":
                pos = _skip_trivia(sql, pos + 1)
                continue
            if sql[pos : pos + 1] == b")":
                pos = _skip_trivia(sql, pos + 1)
                break
            return None
    match = _WORD.match(sql, pos)
    if not match or match.group().upper() != b"FORMAT":
        return None
    pos = _skip_trivia(sql, match.end())
    fmt = _WORD.match(sql, pos)
    if not fmt:
        return None
    pos = fmt.end()
    while pos < len(sql) and sql[pos] in b" \t\f":
        pos += 1
    if sql[pos : pos + 1] == b"\r":
        pos += 1
    if sql[pos : pos + 1] == b"\n":
        pos += 1
    return InsertHead(table, tuple(columns) if columns is not None else None, fmt.group().decode(), pos)


def output_format(sql: bytes, default_format: str) -> tuple[str, bool]:
    """The format the answer will be in and whether the statement names it itself (a top-level ``FORMAT x``
    followed by the end of the statement or ``SETTINGS``)."""
    pos, depth, end, found = 0, 0, len(sql), None
    while True:
        pos = _skip_trivia(sql, pos)
        if pos >= end:
            break
        ch = sql[pos : pos + 1]
        if ch in (b"'", b"`", b'"'):
            close = _quoted_end(sql, pos)
            if close < 0:
                break
            pos = close
        elif ch == b"(":
            depth, pos = depth + 1, pos + 1
        elif ch == b")":
            depth, pos = depth - 1, pos + 1
        elif (match := _WORD.match(sql, pos)) is not None:
            pos = match.end()
            if depth == 0 and match.group().upper() == b"FORMAT":
                after = _skip_trivia(sql, pos)
                name = _WORD.match(sql, after)
                if name:
                    tail = _skip_trivia(sql, name.end())
                    nxt = _WORD.match(sql, tail)
                    if tail >= end or sql[tail : tail + 1] == b";" or (nxt and nxt.group().upper() == b"SETTINGS"):
                        found = name.group().decode()
        else:
            pos += 1
    return (found, True) if found else (default_format, False)


def _strip_statement_end(sql: bytes) -> bytes:
    """Drop trailing whitespace and ``;`` so a FORMAT clause can be appended (a trailing comment is fine: the
    appended clause starts on a new line)."""
    return sql.rstrip(_WS + b";")


def decompress_body(body: bytes, encoding: str | None) -> bytes:
    """Undo a request's Content-Encoding (what clickhouse-connect and curl may send).

    Raises:
        ClickHouseHTTPError: UNKNOWN_COMPRESSION_METHOD for an encoding this process cannot decode.
    """
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    try:
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if enc == "deflate":
            return zlib.decompress(body)
        if enc == "zstd":
            try:
                from backports import zstd
            except ImportError:
                import zstandard as zstd  # type: ignore[no-redef]
            return bytes(zstd.decompress(body))
        if enc == "lz4":
            import lz4.frame

            return bytes(lz4.frame.decompress(body))
        if enc == "br":
            import brotli

            return bytes(brotli.decompress(body))
    except ImportError:
        pass
    except Exception as err:  # noqa: BLE001 - any decoder failure is the client's bad body
        raise ClickHouseHTTPError(
            UNKNOWN_COMPRESSION_METHOD, f"Cannot decompress the request body ({enc}): {err}"
        ) from err
    raise ClickHouseHTTPError(
        UNKNOWN_COMPRESSION_METHOD,
        f"Unknown or unavailable Content-Encoding {enc!r}; send gzip, deflate, zstd or lz4, or no compression",
    )


def parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (clickhouse-connect's form-encoded query and params).

    Raises:
        ClickHouseHTTPError: NOT_IMPLEMENTED for file parts (external data tables).
    """
    message = BytesParser(policy=HTTP_POLICY).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None or not name:
            raise ClickHouseHTTPError(
                NOT_IMPLEMENTED, "External data tables are not supported by the finops store endpoint"
            )
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        fields[str(name)] = raw.decode("utf-8", "surrogateescape")
    return fields


# ---- the engine side -----------------------------------------------------------------------------------------
@dataclass
class EngineAnswer:
    """What one request produced."""

    body: bytes
    fmt: str | None
    summary: dict[str, str]


def _database_error(err: Exception) -> ClickHouseHTTPError:
    code = getattr(err, "code", None)
    message = str(err).strip()
    idx = message.find("Code: ")
    if idx > 0:
        message = message[idx:]
    return ClickHouseHTTPError(int(code) if code else STD_EXCEPTION, message or type(err).__name__)


class StoreEngine:
    """One chdb handle of the endpoint, its lock, and the session settings currently applied on it.

    Settings are applied as deltas (SET what a request changes, ``SET x = DEFAULT`` what it no longer sends) so
    the usual clickhouse-connect request (the same few settings every time) costs no extra engine calls; the
    ``SETTINGS``-clause-and-restore path of the chdb backend costs five per request and cannot restore
    ``readonly``.
    """

    def __init__(self, client: Any, *, name: str) -> None:
        self._client = client
        self._name = name
        self._lock = threading.Lock()
        self._applied: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self._name

    def _apply_settings_locked(self, settings: Mapping[str, str]) -> None:
        for key in [k for k in self._applied if k not in settings]:
            self._set_locked(key, None)
        for key, value in settings.items():
            if self._applied.get(key) != value:
                self._set_locked(key, value)

    def _set_locked(self, key: str, value: str | None) -> None:
        # Setting names cannot be bound as parameters; they are checked against _SETTING_NAME in build_request.
        literal = "DEFAULT" if value is None else quote_sql_string(value)
        try:
            self._client.command(f"SET {key} = {literal}", use_database=False)
        except Exception as err:  # clickhouse-connect DatabaseError: answer it as ClickHouse would
            raise _database_error(err) from err
        if value is None:
            self._applied.pop(key, None)
        else:
            self._applied[key] = value

    def run(self, request: StoreRequest) -> EngineAnswer:
        """Run one request on this handle (blocks while another request holds it).

        Raises:
            ClickHouseHTTPError: the engine refused or failed the statement (ClickHouse's code and message).
        """
        keyword = first_keyword(request.sql)
        if keyword in ("SET", "USE"):
            raise ClickHouseHTTPError(
                NOT_IMPLEMENTED,
                f"{keyword} statements are not supported by the finops store endpoint (it keeps no sessions); "
                "pass settings as URL parameters or in a SETTINGS clause and qualify tables with their database",
            )
        insert = parse_insert_head(request.sql) if keyword == "INSERT" else None
        started = time.perf_counter_ns()
        with self._lock:
            self._apply_settings_locked(request.settings)
            try:
                if insert is not None:
                    return self._insert_locked(request, insert, started)
                return self._query_locked(request, keyword, started)
            except ClickHouseHTTPError:
                raise
            except Exception as err:  # clickhouse-connect errors carry ClickHouse's code and message
                raise _database_error(err) from err

    def _insert_locked(self, request: StoreRequest, head: InsertHead, started: int) -> EngineAnswer:
        self._client.database = request.database
        summary = self._client.raw_insert(
            head.table, head.columns, request.sql[head.data_offset :], fmt=head.fmt
        ).summary
        written = str(summary.get("written_rows", "0"))
        return EngineAnswer(b"", None, _summary(started, written_rows=written,
                                                written_bytes=str(summary.get("written_bytes", "0"))))

    def _query_locked(self, request: StoreRequest, keyword: str, started: int) -> EngineAnswer:
        fmt, named = output_format(request.sql, request.default_format)
        sql = request.sql
        produces_result = keyword in _RESULT_KEYWORDS
        if produces_result and not named:
            sql = _strip_statement_end(sql) + b"\n FORMAT " + fmt.encode()
        try:
            text: str | bytes = sql.decode()
        except UnicodeDecodeError:
            text = sql  # binary bound values: the engine takes bytes
        # The HTTP request carries param_<name> values already in ClickHouse's escaped text form (see execute_raw).
        body = execute_raw(self._client, text, request.bind_params, request.database)
        return EngineAnswer(body, fmt if produces_result else None, _summary(started, result_bytes=str(len(body))))

    def close(self) -> None:
        """Close this handle (the owner's own client is never closed here)."""
        with self._lock:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing twice or a dead handle is not worth failing a stop
                log.debug("closing the %s handle failed", self._name, exc_info=True)


def _summary(started: int, **values: str) -> dict[str, str]:
    summary = {
        "read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0",
        "total_rows_to_read": "0", "result_rows": "0", "result_bytes": "0",
    }
    summary.update(values)
    summary["elapsed_ns"] = str(time.perf_counter_ns() - started)
    return summary


# ---- HTTP ----------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools its connections
    # Headers and body leave in separate writes; with Nagle on, the client's delayed ACK would add a wait per request.
    disable_nagle_algorithm = True
    server: _StoreHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The stdlib logs the request line, whose URL may hold user=/password= parameters: never log it.
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        store = self.server.store
        parts = urlsplit(self.path)
        path = parts.path or "/"
        if path.rstrip("/") == "/ping" or (path.endswith("/ping") and method == "GET"):
            self._drain_body()
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            body = self._read_body()
            if method == "GET" and not params.get("query") and not body:
                self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if path not in ("/", ""):
                raise ClickHouseHTTPError(
                    NOT_IMPLEMENTED, f"There is no handle {path}; use / for queries and /ping", status=404
                )
            headers = {key.lower(): value for key, value in self.headers.items()}
            store.check_origin(headers)
            writer = store.authenticate(headers, params)
            body = decompress_body(body, self.headers.get("Content-Encoding"))
            ctype = self.headers.get("Content-Type", "")
            form = parse_multipart(ctype, body) if ctype.lower().startswith("multipart/form-data") else None
            request = build_request(method, params, headers, body, form_fields=form)
            request.query_id = query_id
            if not writer:
                request.readonly = True
            answer = store.execute(request)
        except Exception as exc:  # noqa: BLE001 - every failure is answered; a bug is also logged with its trace
            err = exc if isinstance(exc, ClickHouseHTTPError) else None
            if err is None:
                log.exception("store endpoint: request %s failed unexpectedly", query_id)
                err = ClickHouseHTTPError(STD_EXCEPTION, f"Internal error of the finops store endpoint: {exc!r}")
            log.debug("store request %s failed with code %s", query_id, err.code)
            self._send(
                err.status,
                err.body.encode("utf-8", "replace") + b"\n",
                {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(err.code),
                    "X-ClickHouse-Query-Id": query_id,
                    "X-ClickHouse-Server-Display-Name": store.display_name,
                },
            )
            return
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": store.display_name,
            "X-ClickHouse-Timezone": request.settings.get("session_timezone") or store.timezone,
            "X-ClickHouse-Summary": json.dumps(answer.summary, separators=(",", ":")),
            "Content-Type": "text/plain; charset=UTF-8",
        }
        if answer.fmt is not None:
            headers["X-ClickHouse-Format"] = answer.fmt
            headers["Content-Type"] = _CONTENT_TYPES.get(
                answer.fmt, "application/json; charset=UTF-8" if answer.fmt.startswith("JSON")
                else "text/plain; charset=UTF-8"
            )
        self._send(200, answer.body, headers)

    def _drain_body(self) -> None:
        try:
            self._read_body()
        except ClickHouseHTTPError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        limit = self.server.store.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    raise ClickHouseHTTPError(BAD_ARGUMENTS, "Malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    self.close_connection = True
                    raise ClickHouseHTTPError(QUERY_IS_TOO_LARGE, f"Request body is larger than {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True
            raise ClickHouseHTTPError(QUERY_IS_TOO_LARGE, f"Request body is larger than {limit} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _StoreHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: StoreServer) -> None:
        self.store = store
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class StoreServer:
    """A running (after :meth:`start`) ClickHouse-HTTP endpoint over an embedded store. Build it with
    :func:`serve_store`; use as a context manager or call :meth:`stop`.

    Implemented of the ClickHouse HTTP interface (enough for clickhouse-connect's sync client and for curl):

    * ``GET /ping`` and ``GET /`` without a query answer ``Ok.\\n`` (never authenticated, like ClickHouse).
    * The query comes from the ``query`` URL parameter and/or the POST body (``query + "\\n" + body``, ClickHouse's
      concatenation rule), or from a ``multipart/form-data`` body (clickhouse-connect's form encoding for long
      parameters). ``param_<name>`` values are server-side bound exactly as sent (ClickHouse's escaped text form).
    * Every other non-transport URL parameter is a ClickHouse setting for that request only. ``readonly=1|2`` (and
      any ``GET``, as in ClickHouse) runs on a handle whose session is ``readonly = 2``, so every write and DDL
      fails with READONLY (164) and cannot be lifted (finops/clickhouse.py says why 2 and not 1).
    * ``database`` (parameter or ``X-ClickHouse-Database``), ``default_format`` (or ``X-ClickHouse-Format``;
      TabSeparated without either); the engine's output for the format is passed through unchanged.
    * ``INSERT INTO t [(cols)] FORMAT f`` followed by data goes through the chdb client's ``raw_insert``; other
      INSERTs (``VALUES``, ``SELECT``) run as statements.
    * Request bodies may be compressed (gzip, deflate, zstd, lz4, br: clickhouse-connect compresses inserts by
      default); answers never are (``enable_http_compression`` is accepted and ignored).
    * Errors are answered as ClickHouse does (status from exceptionCodeToHTTPStatus, body ``Code: N.
      DB::Exception: ...``, ``X-ClickHouse-Exception-Code``), so clickhouse-connect raises its usual
      ``DatabaseError``; the headers it reads (``X-ClickHouse-Summary``, ``-Format``, ``-Timezone``, ``-Query-Id``,
      ``-Server-Display-Name``) are sent.
    * Authentication: the installation's users from ``<data dir>/secrets`` (finops/secrets.py), ``finops_writer``
      and ``finops_reader`` (always read-only), plus the user a ``FINOPS_CLICKHOUSE_QUERY_URL`` with
      ``user:password@`` names, as a writer; credentials as ClickHouse accepts them (basic auth,
      ``X-ClickHouse-User``/``X-ClickHouse-Key``, ``user``/``password`` parameters), compared in constant time,
      never logged or echoed. A wrong or missing one is AUTHENTICATION_FAILED (516, HTTP 403).
    * Every statement passes :mod:`sinks.query_policy` (reads of the store's tables, pure functions and table
      functions, INSERT for the writer, allow-listed client settings); anything else is ACCESS_DENIED (497, 403).
    * A request with an ``Origin`` not in ``allowed_origins`` (none by default) or ``Sec-Fetch-Site:
      cross-site|same-site`` is answered 403 first, so a web page cannot use the endpoint even with a "simple"
      ``text/plain`` POST.

    Not implemented (NOT_IMPLEMENTED, 501): sessions (``SET``, ``USE``; pass settings as URL parameters or a
    ``SETTINGS`` clause, ``session_id`` is ignored), external data tables, ClickHouse's ``compress``/``decompress``
    block format. Results are materialised before they are sent (no streaming): page a huge result with ``LIMIT``.

    Concurrency: two handles of its own on the owner's data path (chdb allows many handles on the one path a process
    holds), a writer and a reader (session ``readonly = 2``), each guarded by a lock and keeping its session
    settings between requests (:class:`StoreEngine`), so the owner's own client never sees a ``USE`` or ``SET`` from
    here. Requests on the reader and the writer run in parallel; requests on one handle queue.
    """

    def __init__(
        self,
        writer: StoreEngine,
        reader: StoreEngine,
        host: str,
        port: int,
        *,
        credentials: StoreCredentials,
        policy: QueryPolicy,
        users: Mapping[str, str] | None = None,
        allowed_origins: frozenset[str] = frozenset(),
        timezone: str = "UTC",
        display_name: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        """Bind the listening socket (so a port in use fails here, not in the thread).

        Raises:
            StoreServerError: the address cannot be bound.
        """
        self._writer = writer
        self._reader = reader
        # user -> (password, may write)
        self._users: dict[str, tuple[str, bool]] = {
            credentials.writer_user: (credentials.writer_password, True),
            credentials.reader_user: (credentials.reader_password, False),
        }
        for name, password in (users or {}).items():
            self._users[name] = (password, True)
        self._policy = policy
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.timezone = timezone
        self.display_name = display_name or socket.gethostname()
        self.max_body_bytes = max_body_bytes
        self._thread: threading.Thread | None = None
        try:
            self._httpd = _StoreHTTPServer((host, port), self)
        except OSError as err:
            raise StoreServerError(
                f"cannot listen on {host}:{port} ({err.strerror or err}): another store endpoint may already run "
                f"there (try: curl http://{host}:{port}/ping), or choose another port with --port or "
                "FINOPS_CLICKHOUSE_QUERY_URL"
            ) from err
        bound = self._httpd.server_address
        self.host, self.port = str(bound[0]), int(bound[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the endpoint (the value for FINOPS_CLICKHOUSE_QUERY_URL)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StoreServer:
        """Serve requests on a background (daemon) thread; returns self. Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="finops-store-endpoint",
                daemon=True,
            )
            self._thread.start()
            log.info("store endpoint listening on %s (users %s)", self.url, ", ".join(sorted(self._users)))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, wait up to ``timeout`` for the serving thread, close the socket and this
        server's own engine handles (the owner's client stays open). Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._httpd.server_close()
        self._reader.close()
        self._writer.close()

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse a browser request from another site (``headers`` keyed by lower-case name).

        A browser adds ``Origin`` to cross-origin POSTs (also the "simple" ``text/plain`` ones that need no
        preflight) and ``Sec-Fetch-Site`` to every request; clickhouse-connect, curl and Grafana's backend send
        neither. Raises ClickHouseHTTPError (ACCESS_DENIED, HTTP 403).
        """
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self._allowed_origins:
            raise ClickHouseHTTPError(
                ACCESS_DENIED, "Requests from web pages (Origin header) are refused by the finops store endpoint"
            )
        if headers.get("sec-fetch-site", "").strip().lower() in ("cross-site", "same-site"):
            raise ClickHouseHTTPError(
                ACCESS_DENIED, "Cross-site browser requests are refused by the finops store endpoint")

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> bool:
        """Check the request's credentials (``headers`` keyed by lower-case name); True if the user may write.

        Raises:
            ClickHouseHTTPError: AUTHENTICATION_FAILED (516, HTTP 403), as ClickHouse answers; the message names
                the user, never the password.
        """
        user, password = "default", ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "default", ""
        elif headers.get("x-clickhouse-user"):
            user, password = headers.get("x-clickhouse-user", ""), headers.get("x-clickhouse-key", "")
        elif "user" in params:
            user, password = params["user"], params.get("password", "")
        entry = self._users.get(user)
        # Compare even for an unknown user, so the answer's timing does not say which users exist.
        expected, may_write = entry if entry is not None else ("\x00" * 43, False)
        if not hmac.compare_digest(expected.encode(), password.encode()) or entry is None:
            log.warning("store endpoint: authentication failed for user %r", user[:64])
            raise ClickHouseHTTPError(
                AUTHENTICATION_FAILED,
                f"{user[:64]}: Authentication failed: password is incorrect, or there is no user with such name. "
                "The finops store endpoint needs this installation's credentials (<data dir>/secrets, see the "
                "README, Security)",
            )
        return may_write

    def check_request(self, request: StoreRequest) -> None:
        """Apply :mod:`sinks.query_policy` to a parsed request: database, format, settings and statement.

        Raises:
            ClickHouseHTTPError: ACCESS_DENIED (497, HTTP 403) naming what is refused.
        """
        try:
            if request.database.lower() in ("system", "information_schema"):
                raise QueryRefusedError(f"database {request.database!r} cannot be the default database of a request")
            if not format_allowed(request.default_format):
                raise QueryRefusedError(f"format {request.default_format!r} is not allowed")
            self._policy.check_settings(request.settings)
            if first_keyword(request.sql) not in ("SET", "USE"):  # answered NOT_IMPLEMENTED by the engine side
                self._policy.check(request.sql, writer=not request.readonly)
        except QueryRefusedError as err:
            hint = (" For queries over HTTP, method GET implies readonly. You should use method POST for modifying "
                    "queries.") if request.via_get and first_keyword(request.sql) == "INSERT" else ""
            raise ClickHouseHTTPError(ACCESS_DENIED, str(err) + hint) from None

    def execute(self, request: StoreRequest) -> EngineAnswer:
        """Run a parsed request on the reader (read-only requests) or the writer handle.

        Raises:
            ClickHouseHTTPError: as :meth:`StoreEngine.run`; a GET refused as read-only says to use POST.
        """
        self.check_request(request)
        engine = self._reader if request.readonly else self._writer
        try:
            return engine.run(request)
        except ClickHouseHTTPError as err:
            if err.code == READONLY and request.via_get:
                err.body += (
                    " For queries over HTTP, method GET implies readonly. You should use method POST for modifying "
                    "queries."
                )
            raise


def serve_store(
    client: Any,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    credentials: StoreCredentials,
    users: Mapping[str, str] | None = None,
    allowed_origins: frozenset[str] = frozenset(),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> StoreServer:
    """Build the store endpoint for the owner's chdb ``client``; call :meth:`StoreServer.start` to serve.

    Opens two handles of its own on the client's data path (a writer and a ``readonly = 2`` reader) so requests
    never change the owner client's database or settings; binds ``host:port`` (``port=0`` picks a free port, see
    :attr:`StoreServer.port`). ``credentials`` are the installation's writer and reader
    (:func:`finops.secrets.load_store_credentials`); ``users`` maps further user names to passwords (writers, e.g.
    the user of a FINOPS_CLICKHOUSE_QUERY_URL); ``allowed_origins`` the browser origins allowed (none by default).
    Reads the engine's function catalogue once for :mod:`sinks.query_policy`.

    Blocks while opening the handles. Raises :class:`StoreServerError` if ``client`` is not a chdb client on a data
    directory or the address cannot be bound.
    """
    path = getattr(client, "path", None)
    if not is_embedded(client) or not isinstance(path, str) or not os.path.isabs(path):
        raise StoreServerError(
            "the store endpoint fronts an embedded store: pass the owner's chdb client "
            "(finops.clickhouse.connect('chdb:///abs/path')); a ClickHouse server has its own HTTP interface"
        )
    # The endpoint's own engine handles on the owner's path (chdb allows several in the process that holds it).
    writer = StoreEngine(connect(f"chdb://{path}"), name="writer")
    try:
        reader = StoreEngine(connect(f"chdb://{path}", readonly=True), name="reader")
    except BaseException:
        writer.close()
        raise
    try:
        timezone = str(reader._client.command("SELECT timezone()", use_database=False))
        policy = load_query_policy(reader._client)
        return StoreServer(
            writer, reader, host, port, credentials=credentials, policy=policy, users=users,
            allowed_origins=allowed_origins, timezone=timezone, max_body_bytes=max_body_bytes,
        )
    except BaseException:
        reader.close()
        writer.close()
        raise
