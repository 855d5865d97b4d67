"""Output formatting of ``finops sql`` (pure)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from sinks.query import QueryError, format_csv, format_json, format_result, format_table

pytestmark = pytest.mark.unit

COLUMNS = ["team", "cost", "at", "note"]
ROWS = [
    ("payments", Decimal("1.250000000001"), datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC), None),
    ("search-and-recommendations", Decimal("-0.5"), datetime(2025, 1, 2, tzinfo=UTC), "line1\nline2\tend"),
]


def test_table_aligns_columns_and_counts_rows() -> None:
    lines = format_table(COLUMNS, ROWS).splitlines()
    assert lines[0].split() == COLUMNS
    assert set(lines[1].replace(" ", "")) == {"-"}
    # Every data line starts its columns at the header's offsets.
    starts = [lines[0].index(name) for name in COLUMNS]
    for line in lines[2:4]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  " or line[start - 1] == " "
    assert lines[-1] == "(2 rows)"
    # Numbers are right-aligned: the cost cells end in the same column.
    ends = {lines[2].index("1.250000000001") + len("1.250000000001"), lines[3].index("-0.5") + len("-0.5")}
    assert len(ends) == 1


def test_table_shows_null_escapes_control_characters_and_truncates() -> None:
    text = format_table(COLUMNS, ROWS, max_width=12)
    assert "NULL" in text
    assert "\t" not in text and text.count("\n") == 5
    assert "search-and-…" in text  # 12 characters including the ellipsis
    assert "line1\\nline…" in text
    assert "1.2500000000…" not in format_table(COLUMNS, ROWS, max_width=0) and "1.250000000001" in format_table(
        COLUMNS, ROWS, max_width=0
    )


def test_table_singular_and_empty() -> None:
    assert format_table(["n"], [(1,)]).splitlines()[-1] == "(1 row)"
    assert format_table([], []) == "(0 rows)\n"


def test_csv_is_exact_and_null_is_empty() -> None:
    text = format_csv(COLUMNS, ROWS)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == COLUMNS
    assert parsed[1] == ["payments", "1.250000000001", "2025-01-02 03:04:05.000006+00:00", ""]
    assert parsed[2][3] == "line1\nline2\tend"  # CSV quotes instead of truncating or escaping


def test_json_keeps_money_exact_as_strings() -> None:
    records = json.loads(format_json(COLUMNS, ROWS))
    assert records[0] == {"team": "payments", "cost": "1.250000000001", "at": "2025-01-02T03:04:05.000006+00:00",
                          "note": None}
    assert Decimal(records[1]["cost"]) == Decimal("-0.5")
    nested = json.loads(format_json(["m", "d", "u", "b"], [({"k": Decimal("1.1")}, date(2025, 1, 1),
                                                            uuid.UUID(int=1), b"\xff")]))
    assert nested[0]["m"] == {"k": "1.1"} and nested[0]["d"] == "2025-01-01"
    assert nested[0]["u"] == "00000000-0000-0000-0000-000000000001" and nested[0]["b"] == {"base64": "/w=="}


def test_decimals_print_positionally() -> None:
    rows = [(Decimal("0E-12"),), (Decimal("1E-12"),), (Decimal("12345678901234567890.123456789012"),)]
    assert format_csv(["c"], rows) == "c\n0.000000000000\n0.000000000001\n12345678901234567890.123456789012\n"
    assert [r["c"] for r in json.loads(format_json(["c"], rows))][:2] == ["0.000000000000", "0.000000000001"]


def test_dispatch_and_unknown_format() -> None:
    assert format_result(["n"], [(1,)], "csv") == "n\n1\n"
    with pytest.raises(QueryError, match="table, csv, json or vertical"):
        format_result(["n"], [(1,)], "xml")  # type: ignore[arg-type]


# ---- a trailing FORMAT clause (issue 14, item 12) ----------------------------------------------------------------
@pytest.mark.parametrize("sql, requested, expected", [
    ("SELECT 1 FORMAT Vertical", None, ("SELECT 1", "vertical")),
    ("select 1\nformat vertical ;\n", None, ("select 1", "vertical")),
    ("SELECT 1 FORMAT CSVWithNames", "csv", ("SELECT 1", "csv")),
    ("SELECT 'FORMAT Vertical' AS f", None, ("SELECT 'FORMAT Vertical' AS f", "table")),
    ("SELECT format FROM t ORDER BY format", "json", ("SELECT format FROM t ORDER BY format", "json")),
])
def test_split_format_clause_honours_what_it_can_print(sql: str, requested: str | None,
                                                        expected: tuple[str, str]) -> None:
    from sinks.query import split_format_clause

    assert split_format_clause(sql, requested) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("sql, requested", [
    ("SELECT 1 FORMAT JSONEachRow", None),
    ("SELECT 1 FORMAT PrettyCompact;", None),
    ("SELECT 1 FORMAT Vertical", "csv"),
])
def test_split_format_clause_refuses_naming_the_format_option(sql: str, requested: str | None) -> None:
    from sinks.query import split_format_clause

    with pytest.raises(QueryError, match="--format table\\|csv\\|json\\|vertical"):
        split_format_clause(sql, requested)  # type: ignore[arg-type]


def test_vertical_prints_one_block_per_row_like_clickhouse() -> None:
    out = format_result(["team", "cost_usd"], [("payments", Decimal("1.250000000001")), ("search", None)], "vertical")
    assert out == ("Row 1:\n──────\nteam:     payments\ncost_usd: 1.250000000001\n\n"
                   "Row 2:\n──────\nteam:     search\ncost_usd: NULL\n\n(2 rows)\n")
    assert format_result(["a"], [], "vertical") == "(0 rows)\n"
