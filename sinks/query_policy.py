"""What a client of the embedded store may run: an allow-list decided on a ClickHouse-faithful tokenisation.

Role (DESIGN §6): no client of the store endpoint (nor ``finops sql`` on the chdb path) may reach table functions,
engines, dictionaries or functions that touch files, the network or processes, nor lift the restriction with
settings. A deny-list would let every new ClickHouse function through, so :class:`QueryPolicy` allows only what it
knows (its rules are listed there); the lexer is a pure function of the bytes and :func:`load_query_policy` reads
the engine's catalogue once.

Guarantee: when the tokeniser and ClickHouse could disagree, the answer is no; functions newer than
:data:`REVIEWED_THROUGH` are refused until reviewed, so a chdb upgrade cannot widen the list. tests/security/ checks
every function, table function and engine of the running engine against this policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import FinopsError

__all__ = [
    "CLIENT_SETTINGS",
    "PURE_CATEGORIES",
    "PURE_OTHER_FUNCTIONS",
    "PURE_TABLE_FUNCTIONS",
    "REFUSED_FUNCTIONS",
    "REVIEWED_THROUGH",
    "SYSTEM_TABLES",
    "QueryPolicy",
    "QueryRefusedError",
    "format_allowed",
    "load_query_policy",
    "tokenize",
]

ACCESS_DENIED = 497  # ClickHouse's code for "not enough privileges" (HTTP 403)

#: Table functions that read nothing but their arguments.
PURE_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "null", "generateRandom", "generate_series",
     "generateSeries", "format"}
)
#: Function categories of system.functions whose members compute on their arguments only.
PURE_CATEGORIES = frozenset(
    {"Aggregate Functions", "Type Conversion", "Dates and Times", "Arrays", "String", "Geo", "Hash",
     "String Search", "JSON", "Mathematical", "URL", "Arithmetic", "Geo Polygon", "Map", "Comparison",
     "IP Address", "Tuple", "Time Series", "Distance", "Bitmap", "Random Number", "NumericIndexedVector",
     "Encoding", "UUID", "Bit", "String Splitting", "String Replacement", "Null", "Rounding", "Encryption",
     "Time Window", "Conditional", "Logical", "Financial", "QBit"}
)
#: Members of pure categories that are not pure: a nested engine query, or formats that may read schema files.
REFUSED_FUNCTIONS = frozenset({"chdb", "formatRow", "formatRowNoNewline", "groupFormat"})
#: Category "Other" mixes introspection, files and sleep with harmless helpers; these are the harmless ones.
PURE_OTHER_FUNCTIONS = frozenset(
    {"toTypeName", "toColumnTypeName", "ignore", "materialize", "identity", "bar", "formatReadableSize",
     "formatReadableDecimalSize", "formatReadableQuantity", "formatReadableTimeDelta", "transform",
     "runningDifference", "runningDifferenceStartingWithFirstValue", "neighbor", "finalizeAggregation",
     "currentDatabase", "version", "isConstant", "isDecimalOverflow", "countDigits", "byteSize",
     "defaultValueOfArgumentType", "defaultValueOfTypeName", "rowNumberInBlock", "rowNumberInAllBlocks",
     "blockNumber", "parseTimeDelta", "errorCodeToName", "throwIf", "MACNumToString", "MACStringToNum",
     "MACStringToOUI", "parseReadableSize", "parseReadableSizeOrNull", "parseReadableSizeOrZero", "isNotDistinctFrom"}
)
#: The newest ClickHouse release whose functions were reviewed against the rules above.
REVIEWED_THROUGH = (26, 9)

#: Settings a client may pass (URL parameters or a SETTINGS clause): what clickhouse-connect, Grafana and the
#: product send, none of which reaches files, the network or the restriction itself (readonly, allow_*).
CLIENT_SETTINGS = frozenset(
    {"date_time_input_format", "date_time_output_format", "cast_string_to_dynamic_use_inference",
     "max_execution_time", "max_result_rows", "max_result_bytes", "result_overflow_mode", "max_rows_to_read",
     "max_bytes_to_read", "read_overflow_mode", "timeout_overflow_mode", "max_block_size", "max_threads",
     "session_timezone", "join_use_nulls", "output_format_json_quote_64bit_integers",
     "output_format_json_quote_decimals", "output_format_json_quote_denormals", "output_format_decimal_trailing_zeros",
     "output_format_native_encode_types_in_binary_format", "output_format_arrow_string_as_string",
     "output_format_parquet_string_as_string", "output_format_csv_crlf_end_of_line", "format_csv_delimiter",
     "output_format_pretty_max_rows", "output_format_pretty_color", "output_format_write_statistics",
     "output_format_json_named_tuples_as_objects", "input_format_null_as_default", "insert_deduplicate",
     "insert_deduplication_token", "optimize_on_insert", "async_insert", "wait_for_async_insert", "mutations_sync",
     "final",
     "use_query_cache", "query_cache_ttl", "extremes", "totals_mode", "max_memory_usage", "prefer_column_name_to_alias",
     "aggregate_functions_null_for_empty", "joined_subquery_requires_alias", "allow_experimental_analyzer",
     "enable_analyzer", "log_comment"}
)
#: ``system`` tables a client may read: the catalogue and the store's own health, not users, grants, processes,
#: query logs, disks, dictionaries or anything carrying paths or other sessions' queries.
SYSTEM_TABLES = frozenset(
    {"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "settings", "functions", "table_functions",
     "table_engines", "formats", "data_type_families", "aggregate_function_combinators", "time_zones",
     "databases", "tables", "columns", "parts", "parts_columns", "merges", "mutations", "metrics", "events",
     "asynchronous_metrics", "build_options", "keywords", "collations", "contributors", "licenses", "warnings"}
)

#: Formats that may be written or read by a client: plain encodings, none reading a schema file or a registry.
_FORMAT_PREFIXES = ("TabSeparated", "TSV", "CSV", "JSON", "Pretty", "RowBinary", "CustomSeparated", "LineAsString")
_FORMATS = frozenset(
    {"Native", "TSKV", "Vertical", "Values", "Markdown", "MD", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro",
     "Null", "XML", "RawBLOB", "Raw", "RawWithNames", "RawWithNamesAndTypes", "MsgPack", "BSONEachRow",
     "SQLInsert", "NDJSON", "PrettyNDJSON", "PrettyJSONLines", "PrettyJSONEachRow", "Npy"}
)
# Values as *input* evaluates SQL expressions in the data (input_format_values_interpret_expressions).
_INPUT_REFUSED = frozenset({"Values"})

# Bare words that may precede "(" without being a call.
_PAREN_KEYWORDS = frozenset(
    {"SELECT", "FROM", "JOIN", "IN", "NOT", "AND", "OR", "ON", "USING", "AS", "WITH", "WHERE", "PREWHERE",
     "HAVING", "BY", "VALUES", "EXISTS", "ANY", "ALL", "SOME", "OVER", "WINDOW", "THEN", "ELSE", "WHEN", "CASE",
     "UNION", "INTERSECT", "EXCEPT", "DISTINCT", "LIMIT", "OFFSET", "IS", "LIKE", "ILIKE", "BETWEEN", "INTERVAL",
     "ARRAY", "COLUMNS", "REPLACE", "FILTER", "QUALIFY", "TABLE", "DESCRIBE", "DESC", "EXPLAIN", "FINAL",
     "SAMPLE", "GLOBAL", "ASC", "STEP", "TO", "FILL", "INTERPOLATE", "SETS", "ROLLUP", "CUBE", "DIV", "MOD",
     "TOP", "ORDER", "GROUP", "PARTITION", "ROWS", "RANGE", "PRECEDING", "FOLLOWING", "CURRENT", "ROW",
     "UNBOUNDED", "CROSS", "INNER", "OUTER", "FULL", "SEMI", "ANTI", "ASOF", "PASTE", "NULLS", "FIRST", "LAST",
     "IGNORE", "RESPECT", "END", "LATERAL", "TOTALS", "CLUSTER", "TYPE", "ESTIMATE", "PLAN", "PIPELINE",
     "AST", "SYNTAX", "QUERY", "TREE", "HEADER", "ACTIONS", "INDEXES"}
)
_FORBIDDEN_WORDS = frozenset({"OUTFILE", "INFILE", "FUNCTION", "PARALLEL", "DICTIONARY"})
_SHOW_OBJECTS = frozenset({"TABLES", "DATABASES", "COLUMNS", "CREATE", "FULL", "EXTENDED"})
_SHOW_CREATE = frozenset({"TABLE", "VIEW", "DATABASE", "TEMPORARY"})
_READ_STATEMENTS = frozenset({"SELECT", "WITH", "(", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})


class QueryRefusedError(FinopsError):
    """The statement is outside what the store lets a client run; the message says which part and why."""

    code = ACCESS_DENIED


def format_allowed(name: str, *, for_input: bool = False) -> bool:
    """True if ``name`` is a format a client may use (``for_input``: as the data of an INSERT)."""
    if for_input and name in _INPUT_REFUSED:
        return False
    return name in _FORMATS or name.startswith(_FORMAT_PREFIXES)


# ---- the lexer (pure) -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """One lexical token: ``kind`` is word, qident, string, number, param or punct; ``text`` unquoted for qident."""

    kind: str
    text: str
    end: int


_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(rb"[0-9][0-9A-Za-z_.]*")
_PARAM = re.compile(rb"\{\s*[A-Za-z_][A-Za-z0-9_]*\s*:[^{}]*\}")
_PUNCT = b"()[],;.+-*/%=<>!?:|&^~@"
_WS = b" \t\r\n\f\v"


def _refuse(message: str) -> QueryRefusedError:
    return QueryRefusedError(f"{message}; the finops store allows only reads of its own tables "
                             "(see the README, Security)")


def _quoted(sql: bytes, pos: int) -> tuple[str, int]:
    quote = sql[pos : pos + 1]
    i, out = pos + 1, bytearray()
    while i < len(sql):
        ch = sql[i : i + 1]
        if ch == b"\\":
            out += sql[i + 1 : i + 2]
            i += 2
            continue
        if ch == quote:
            if sql[i + 1 : i + 2] == quote:
                out += quote
                i += 2
                continue
            return out.decode("utf-8", "replace"), i + 1
        out += ch
        i += 1
    raise _refuse("unterminated quoted text")


def tokenize(sql: bytes) -> list[Token]:
    """Tokens of ``sql`` (comments and whitespace dropped); for an INSERT, up to the name of its top-level
    ``FORMAT`` (the data follows, which the engine reads as data, not SQL).

    Raises:
        QueryRefusedError: anything whose reading ClickHouse might not share (heredocs, nested comments, unknown
            characters, unterminated strings).
    """
    tokens: list[Token] = []
    pos, end, depth = 0, len(sql), 0
    while pos < end:
        ch = sql[pos]
        if ch in _WS:
            pos += 1
            continue
        two = sql[pos : pos + 2]
        if two == b"--" or two in (b"# ", b"#!"):
            # Conservative: a comment ends at the first line break of either kind.
            stops = [i for i in (sql.find(b"\n", pos), sql.find(b"\r", pos)) if i >= 0]
            pos = min(stops) + 1 if stops else end
            continue
        if two == b"/*":
            close = sql.find(b"*/", pos + 2)
            if close < 0 or sql.find(b"/*", pos + 2, close) >= 0:
                raise _refuse("unterminated or nested comment")
            pos = close + 2
            continue
        if ch in b"'":
            text, pos = _quoted(sql, pos)
            tokens.append(Token("string", text, pos))
            continue
        if ch in b'`"':
            text, pos = _quoted(sql, pos)
            tokens.append(Token("qident", text, pos))
        elif (m := _WORD.match(sql, pos)) is not None:
            pos = m.end()
            tokens.append(Token("word", m.group().decode(), pos))
        elif (m := _NUMBER.match(sql, pos)) is not None:
            pos = m.end()
            tokens.append(Token("number", m.group().decode(), pos))
        elif ch == ord("{") and (m := _PARAM.match(sql, pos)) is not None:
            pos = m.end()
            tokens.append(Token("param", m.group().decode("utf-8", "replace"), pos))
        elif ch in _PUNCT or ch in b"{}":
            pos += 1
            tokens.append(Token("punct", chr(ch), pos))
            depth += (ch == ord("(")) - (ch == ord(")"))
        else:
            raise _refuse(f"unexpected character {chr(ch)!r} at offset {pos}")
        if (depth == 0 and tokens[0].kind == "word" and tokens[0].text.upper() == "INSERT" and len(tokens) >= 2
                and tokens[-2].kind == "word" and tokens[-2].text.upper() == "FORMAT"
                and tokens[-1].kind in ("word", "qident")):
            break
    return tokens


# ---- the policy ------------------------------------------------------------------------------------------------
def _version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text or "")
    return tuple(int(p) for p in parts[:2]) if parts else None


@dataclass
class QueryPolicy:
    """The decision, built from the engine's catalogue by :func:`load_query_policy` (or by hand in tests).

    * statements: ``SELECT`` / ``WITH`` / ``(`` / ``SHOW TABLES|DATABASES|COLUMNS|CREATE`` / ``DESCRIBE`` /
      ``EXISTS`` / ``EXPLAIN`` for everyone, ``INSERT INTO <table>`` for the writer; no DDL, ``SYSTEM``, ``KILL``,
      ``SET``, ``BACKUP`` ... (migrations run in the store owner's process, never over HTTP);
    * every name followed by ``(`` (bare or quoted) must be an allowed function, aggregate (with combinators), pure
      table function (:data:`PURE_TABLE_FUNCTIONS`), data type or SQL keyword; a name matching a refused function or
      table function in any letter case is refused. Allowed functions come from the engine's ``system.functions``:
      the categories in :data:`PURE_CATEGORIES` (minus :data:`REFUSED_FUNCTIONS`), the pure "Other" functions of
      :data:`PURE_OTHER_FUNCTIONS`, and their aliases; functions introduced after :data:`REVIEWED_THROUGH` are refused;
    * ``APPLY`` (which calls a function named without parentheses) is checked the same way;
    * ``SETTINGS`` clauses and URL settings only from :data:`CLIENT_SETTINGS`; ``FORMAT`` only from
      :func:`format_allowed`; ``system`` tables only from :data:`SYSTEM_TABLES`;
    * ``INTO OUTFILE``, ``FROM INFILE``, ``FUNCTION``, heredocs (``$$``), multi-statements, nested comments and any
      character the lexer does not know are refused.
    """

    functions: frozenset[str]
    functions_ci: frozenset[str]
    aggregates: frozenset[str]
    combinators: tuple[str, ...]
    types: frozenset[str]
    refused_lower: frozenset[str]
    table_functions: frozenset[str] = PURE_TABLE_FUNCTIONS
    settings: frozenset[str] = CLIENT_SETTINGS
    refused_functions: frozenset[str] = field(default_factory=frozenset)

    # -- names -----------------------------------------------------------------------------------------------
    def _aggregate(self, name: str) -> bool:
        if name in self.aggregates:
            return True
        for suffix in self.combinators:
            if name.endswith(suffix) and len(name) > len(suffix) and self._aggregate(name[: -len(suffix)]):
                return True
        return False

    def callable_allowed(self, name: str) -> bool:
        """True if ``name(...)`` may appear in a client's statement (function, aggregate, pure table function or
        type; never a name that is, in any letter case, a refused function or table function)."""
        if name in self.functions or name in self.table_functions or name in self.types:
            return True
        if name.lower() in self.refused_lower:
            return False
        return name.lower() in self.functions_ci or self._aggregate(name)

    def setting_allowed(self, name: str) -> bool:
        return name in self.settings

    # -- statements ------------------------------------------------------------------------------------------
    def check_settings(self, names: Iterable[str]) -> None:
        """Raises :class:`QueryRefusedError` for the first setting a client may not change."""
        for name in names:
            if not self.setting_allowed(name):
                raise _refuse(f"setting {name!r} cannot be changed by a client of the store")

    def check(self, sql: bytes, *, writer: bool) -> None:
        """Refuse ``sql`` unless it is a statement this policy allows (``writer``: INSERT into a table too).

        Raises:
            QueryRefusedError: naming the statement, function, table, setting or format refused.
        """
        tokens = tokenize(sql)
        if not tokens:
            raise _refuse("empty statement")
        first = _upper(tokens[0]) or tokens[0].text
        is_insert = first == "INSERT"
        if is_insert:
            if not writer:
                raise _refuse("INSERT needs the store's writer user (this user is read-only)")
        elif first not in _READ_STATEMENTS:
            raise _refuse(f"{first or tokens[0].text!r} statements are not allowed from clients of the store "
                          "(schema changes run through `finops migrate` in the owner's process)")
        self._check_tokens(tokens, is_insert=is_insert)

    def _check_tokens(self, tokens: list[Token], *, is_insert: bool) -> None:
        exempt: set[int] = set()
        if is_insert:
            i = 1
            if i < len(tokens) and _upper(tokens[i]) == "INTO":
                i += 1
            if i < len(tokens) and _upper(tokens[i]) == "TABLE":
                i += 1
            exempt.add(i)  # the table name, whose "(" opens the column list
            if i + 2 < len(tokens) and tokens[i + 1].text == "." and tokens[i + 1].kind == "punct":
                self._check_table(tokens[i], tokens[i + 2])
                exempt.add(i + 2)
        if _upper(tokens[0]) == "SHOW" and (
            len(tokens) < 2 or _upper(tokens[1]) not in _SHOW_OBJECTS
            or (_upper(tokens[1]) == "CREATE" and len(tokens) > 2 and _upper(tokens[2]) not in _SHOW_CREATE)
        ):
            raise _refuse("only SHOW TABLES, DATABASES, COLUMNS and CREATE TABLE|VIEW|DATABASE are allowed")
        n = len(tokens)
        for i, tok in enumerate(tokens):
            word = _upper(tok) if tok.kind == "word" else ""
            if tok.kind == "punct" and tok.text == ";" and any(t.text != ";" for t in tokens[i + 1 :]):
                raise _refuse("one statement per request")
            if word in _FORBIDDEN_WORDS:
                raise _refuse(f"{word} is not allowed")
            if word == "FORMAT" and i + 1 < n and tokens[i + 1].kind in ("word", "qident") and \
                    not (i + 2 < n and tokens[i + 2].text == "("):
                name = tokens[i + 1].text
                if not format_allowed(name, for_input=is_insert):
                    raise _refuse(f"format {name!r} is not allowed")
            if word == "SETTINGS" and (i == 0 or tokens[i - 1].text != ".") and i + 2 < n and \
                    tokens[i + 2].text == "=":
                self._check_settings_clause(tokens, i + 1)
            if word == "APPLY":
                j = i + 1
                while j < n and tokens[j].text == "(":
                    j += 1
                lambda_arrow = j + 2 < n and tokens[j + 1].text == "-" and tokens[j + 2].text == ">"
                if j < n and tokens[j].kind in ("word", "qident") and not lambda_arrow:
                    self._check_call(tokens[j].text)
            if tok.kind == "param" and re.search(r":\s*Identifier\b", tok.text):
                raise _refuse("query parameters of type Identifier are not allowed")
            if tok.kind in ("word", "qident") and i + 2 < n and tokens[i + 1].text == "." and \
                    tokens[i + 1].kind == "punct" and tokens[i + 2].kind in ("word", "qident") and \
                    (i == 0 or tokens[i - 1].text != "."):
                self._check_table(tok, tokens[i + 2])
            if tok.kind in ("word", "qident") and i + 1 < n and tokens[i + 1].text == "(" and \
                    tokens[i + 1].kind == "punct" and i not in exempt:
                if tok.kind == "word" and word in _PAREN_KEYWORDS and tok.text.lower() not in self.refused_lower:
                    continue
                self._check_call(tok.text)

    def _check_call(self, name: str) -> None:
        if not self.callable_allowed(name):
            raise _refuse(f"function or table function {name!r} is not allowed (it is not on the store's list of "
                          "pure functions)")

    def _check_table(self, database: Token, table: Token) -> None:
        if database.text.lower() == "system" and table.text not in SYSTEM_TABLES:
            raise _refuse(f"system table {table.text!r} is not readable by clients of the store")

    def _check_settings_clause(self, tokens: list[Token], i: int) -> None:
        n = len(tokens)
        while i < n:
            name = tokens[i]
            if name.kind not in ("word", "qident") or i + 1 >= n or tokens[i + 1].text != "=":
                raise _refuse("malformed SETTINGS clause")
            self.check_settings([name.text])
            i += 2
            depth = 0
            while i < n:
                t = tokens[i]
                if t.text in "([" and t.kind == "punct":
                    depth += 1
                elif t.text in ")]" and t.kind == "punct":
                    depth -= 1
                    if depth < 0:
                        return
                elif depth == 0 and t.kind == "punct" and t.text == ",":
                    break
                elif depth == 0 and t.kind == "word" and _upper(t) in ("FORMAT", "SETTINGS"):
                    return
                i += 1
            else:
                return
            i += 1


def _upper(tok: Token) -> str:
    return tok.text.upper() if tok.kind == "word" else ""


def build_query_policy(
    function_rows: Iterable[Mapping[str, Any]], combinators: Iterable[str], types: Iterable[str],
    table_functions: Iterable[str],
) -> QueryPolicy:
    """The policy for an engine's catalogue: ``function_rows`` of system.functions (name, is_aggregate,
    case_insensitive, alias_to, categories, introduced_in), its combinators, data type families and table
    functions. Pure."""
    rows = {str(r["name"]): r for r in function_rows}

    def own_allowed(row: Mapping[str, Any]) -> bool:
        name = str(row["name"])
        if name in REFUSED_FUNCTIONS:
            return False
        version = _version(str(row.get("introduced_in") or ""))
        if version is not None and version > REVIEWED_THROUGH and name not in PURE_OTHER_FUNCTIONS:
            return False
        category = str(row.get("categories") or "")
        if name in PURE_OTHER_FUNCTIONS:
            return True
        return category in PURE_CATEGORIES and (version is not None or bool(row.get("is_aggregate")))

    def allowed(name: str, seen: int = 0) -> bool:
        row = rows.get(name)
        if row is None or seen > 5:
            return False
        target = str(row.get("alias_to") or "")
        if target:
            return target not in REFUSED_FUNCTIONS and allowed(target, seen + 1)
        return own_allowed(row)

    ok = {name for name in rows if allowed(name)}
    ok_ci = {name.lower() for name in ok if rows[name].get("case_insensitive")}
    refused = {name.lower() for name in rows if name not in ok}
    refused |= {name.lower() for name in table_functions if name not in PURE_TABLE_FUNCTIONS}
    aggregates = {name for name in ok if rows[name].get("is_aggregate")}
    # A type name is callable (Decimal(38, 12)) unless it collides with something refused.
    type_names = {t for t in types if t.lower() not in refused}
    return QueryPolicy(
        functions=frozenset(ok - aggregates) | frozenset(aggregates),
        functions_ci=frozenset(ok_ci),
        aggregates=frozenset(aggregates),
        combinators=tuple(sorted(combinators, key=len, reverse=True)),
        types=frozenset(type_names),
        refused_lower=frozenset(refused - {n.lower() for n in PURE_TABLE_FUNCTIONS}),
        refused_functions=frozenset(set(rows) - ok),
    )


def load_query_policy(client: Any) -> QueryPolicy:
    """Read the engine's catalogue through ``client`` (a clickhouse-connect client of the store) and build the
    policy. Blocks for four small queries."""
    fields = ("name", "is_aggregate", "case_insensitive", "alias_to", "categories", "introduced_in")
    result = client.query(f"SELECT {', '.join(fields)} FROM system.functions")
    function_rows = [dict(zip(fields, row, strict=True)) for row in result.result_rows]
    combinators = [r[0] for r in client.query("SELECT name FROM system.aggregate_function_combinators").result_rows]
    types = [r[0] for r in client.query("SELECT name FROM system.data_type_families").result_rows]
    table_functions = [r[0] for r in client.query("SELECT name FROM system.table_functions").result_rows]
    return build_query_policy(function_rows, combinators, types, table_functions)
