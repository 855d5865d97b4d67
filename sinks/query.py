"""Read-only ad-hoc queries (``finops sql``) and how their results are printed.

Role: :func:`run_readonly_query` runs one statement with ClickHouse's own read-only enforcement on any
clickhouse-connect client; :func:`format_result` prints it as a table, vertically, as CSV or JSON (pure);
:func:`split_format_clause` maps a user's trailing ``FORMAT x`` onto an output format (or refuses it naming
``--format``), since the client asks ClickHouse for its own wire format.

Guarantee: the engine, not a parser of ours, decides what is a write, so every write fails with READONLY,
translated into :class:`ReadOnlyQueryError`; money stays exact (``Decimal`` printed with ``str``, a JSON string in
JSON, never a float).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from finops.clickhouse import ClickHouseQueryError, is_embedded, query_errors
from schemas.errors import FinopsError

__all__ = [
    "OutputFormat",
    "QueryError",
    "ReadOnlyQueryError",
    "format_csv",
    "format_json",
    "format_result",
    "format_table",
    "format_vertical",
    "run_readonly_query",
    "split_format_clause",
]

OutputFormat = Literal["table", "csv", "json", "vertical"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json", "vertical")
# ClickHouse output formats our formatters reproduce (looked up case-insensitively).
_CLICKHOUSE_FORMATS: dict[str, OutputFormat] = {"vertical": "vertical", "csvwithnames": "csv"}
# `FORMAT <name>` as the statement's last clause (an optional `;` and blanks after it). A FORMAT inside a string
# literal or a comment never ends the statement this way, except in a trailing comment, which is rare enough.
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*\Z", re.IGNORECASE)
READONLY_CODE = 164  # ClickHouse READONLY
ACCESS_DENIED_CODE = 497  # ClickHouse ACCESS_DENIED: the store endpoint's policy (sinks/query_policy.py) refused it
_READONLY_LEVEL = "2"  # see finops/clickhouse.py: 1 would also refuse per-query settings


class QueryError(FinopsError):
    """A read-only query failed; the message carries ClickHouse's reason."""


class ReadOnlyQueryError(QueryError):
    """The statement would change data or schema, which ``finops sql`` never does."""


def run_readonly_query(
    client: Any, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` read-only and return ``(column_names, rows)``.

    ``params`` are bound by clickhouse-connect: ``{name:Type}`` placeholders server-side (values never become SQL),
    ``%(name)s`` client-side with quoting. Blocks for the query. Commits nothing, by construction: a chdb client
    must have been opened read-only (``connect(url, readonly=True)``: its session is ``readonly = 2`` and
    cannot be lifted), an HTTP client gets ``readonly = 2`` on the request unless its session is already read-only;
    INSERT, CREATE, DROP, ALTER, TRUNCATE, SYSTEM, OPTIMIZE ... all fail with READONLY.

    Raises:
        QueryError: ``client`` is a chdb client not opened read-only (nothing is run), or ClickHouse failed the
            query (its message is included).
        ReadOnlyQueryError: the statement writes (ClickHouse answered READONLY).
    """
    session = str(client.get_client_setting("readonly") or "0")
    settings: dict[str, str] = {}
    if session in ("", "0"):
        if is_embedded(client):
            # On chdb a per-query readonly is applied with SET and cannot be restored afterwards (ClickHouse refuses
            # to lift readonly), so it would silently turn the caller's client read-only for good.
            raise QueryError(
                "run_readonly_query needs a read-only chdb client: open it with connect(url, readonly=True)"
            )
        settings["readonly"] = _READONLY_LEVEL
    try:
        with query_errors("the query"):
            result = client.query(sql, parameters=dict(params) if params else None, settings=settings or None)
    except ClickHouseQueryError as err:
        code = err.code
        text = _clickhouse_message(err.reason)
        if code == READONLY_CODE or "(READONLY)" in text:
            raise ReadOnlyQueryError(
                "finops sql is read-only; ClickHouse refused the statement because it would change data or schema "
                f"({text}). Change the schema with `finops migrate`; data arrives through the pipeline."
            ) from err
        if code == ACCESS_DENIED_CODE or "(ACCESS_DENIED)" in text:
            raise ReadOnlyQueryError(
                "finops sql is read-only and reaches only the store's own tables and pure functions; the store "
                f"refused the statement ({text})"
            ) from err
        if code is None:
            raise QueryError(f"the query could not be run: {text}") from err
        raise QueryError(f"the query failed: {text}") from err
    return list(result.column_names), [tuple(row) for row in result.result_rows]


def split_format_clause(sql: str, requested: OutputFormat | None = None) -> tuple[str, OutputFormat]:
    """``sql`` without a trailing ``FORMAT <name>`` clause, and the output format to print it in (pure).

    ``requested`` is the ``--format`` the user gave (None: not given, the table). A trailing ``FORMAT Vertical`` or
    ``FORMAT CSVWithNames`` is honoured (the same output as ``--format vertical`` / ``csv``); any other trailing
    FORMAT, or one that contradicts ``requested``, is refused.

    Raises:
        QueryError: the FORMAT clause cannot be honoured; the message says to use ``--format``.
    """
    match = _TRAILING_FORMAT.search(sql)
    if match is None:
        return sql, requested or "table"
    name = match.group(1)
    choices = "|".join(OUTPUT_FORMATS)
    fmt = _CLICKHOUSE_FORMATS.get(name.lower())
    if fmt is None:
        raise QueryError(
            f"finops sql prints its own output formats, so the query cannot end in FORMAT {name}: remove the FORMAT "
            f"clause and use --format {choices} (FORMAT Vertical and FORMAT CSVWithNames are understood)"
        )
    if requested is not None and requested != fmt:
        raise QueryError(f"the query ends in FORMAT {name} but --format {requested} was given: use one of them "
                         f"(--format {choices})")
    return sql[: match.start()].rstrip(), fmt


def _clickhouse_message(text: str) -> str:
    """ClickHouse's own message without clickhouse-connect's wrapper and the request URL."""
    idx = text.find("Code: ")
    if idx >= 0:
        text = text[idx:]
    cut = text.rfind(" (for url ")
    return (text[:cut] if cut > 0 else text).strip()


# ---- formatting (pure) ---------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    """One value as text for the table and CSV (exact for Decimal; ISO 8601 for times)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time, uuid.UUID, IPv4Address, IPv6Address)):
        return str(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _decimal(value: Decimal) -> str:
    # Positional notation, every stored digit kept: str() would print Decimal(38, 12) zero as 0E-12.
    return format(value, "f")


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy: Decimal as string (exact), times ISO 8601, bytes as UTF-8 (base64 if not text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (date, time, uuid.UUID, IPv4Address, IPv6Address)):
        return str(value)
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def _cell(value: Any, max_width: int) -> str:
    text = _text(value)
    # Control characters would break the alignment: show them escaped, as clickhouse-client does.
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if max_width > 0 and len(text) > max_width:
        text = text[: max(1, max_width - 1)] + "…"
    return text


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 40
) -> str:
    """An aligned text table with a header rule and a row count; cells longer than ``max_width`` characters
    (0 = no limit) end in ``…``; numbers are right-aligned."""
    header = [_cell(c, max_width) for c in columns]
    body = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in body:
        for i, text in enumerate(row):
            if i < len(widths):
                widths[i] = max(widths[i], len(text))
            else:
                widths.append(len(text))
    right = [bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows if i < len(r)) for i in range(len(widths))]

    def line(cells: Sequence[str], align: Sequence[bool]) -> str:
        parts = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=False)]
        return "  ".join(parts).rstrip()

    out = [line(header, [False] * len(header)), "  ".join("-" * w for w in widths)] if header else []
    out.extend(line(row, right) for row in body)
    count = len(rows)
    out.append(f"({count} row{'s' if count != 1 else ''})")
    return "\n".join(out) + "\n"


def format_vertical(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """One block per row, as ClickHouse's ``Vertical``: ``Row n:``, a rule, then ``name: value`` per column (names
    padded so the values align); values are not truncated, control characters escaped, then the row count."""
    width = max((len(c) for c in columns), default=0)
    out: list[str] = []
    for n, row in enumerate(rows, 1):
        head = f"Row {n}:"
        if n > 1:
            out.append("")
        out.extend([head, "─" * len(head)])
        out.extend(f"{(name + ':').ljust(width + 1)} {_cell(value, 0)}".rstrip()
                   for name, value in zip(columns, row, strict=False))
    if rows:
        out.append("")
    count = len(rows)
    out.append(f"({count} row{'s' if count != 1 else ''})")
    return "\n".join(out) + "\n"


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV with a header row; NULL is an empty field, Decimal exact, no truncation."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _text(v) for v in row])
    return buffer.getvalue()


def format_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A JSON array with one object per row (keys in column order); Decimal as a string so money stays exact."""
    records = [{name: _jsonable(value) for name, value in zip(columns, row, strict=False)} for row in rows]
    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def format_result(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: OutputFormat = "table", *, max_width: int = 40
) -> str:
    """Dispatch to :func:`format_table`, :func:`format_vertical`, :func:`format_csv` or :func:`format_json`.

    Table: aligned, long cells truncated, NULL shown as ``NULL``; vertical: one ``name: value`` line per column, as
    ClickHouse's ``Vertical``.

    Raises:
        QueryError: an unknown format name.
    """
    if fmt == "table":
        return format_table(columns, rows, max_width=max_width)
    if fmt == "csv":
        return format_csv(columns, rows)
    if fmt == "json":
        return format_json(columns, rows)
    if fmt == "vertical":
        return format_vertical(columns, rows)
    raise QueryError(f"unknown output format {fmt!r}: use table, csv, json or vertical")
