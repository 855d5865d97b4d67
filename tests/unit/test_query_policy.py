"""The store's query allow-list as pure logic (a hand-built catalogue); tests/security/ runs it on the real engine."""

from __future__ import annotations

import pytest

from sinks.query_policy import QueryRefusedError, build_query_policy, tokenize

pytestmark = pytest.mark.unit

ROWS = [
    {"name": "sum", "is_aggregate": 1, "case_insensitive": 1, "alias_to": "", "categories": "Aggregate Functions",
     "introduced_in": "1.1.0"},
    {"name": "lower", "is_aggregate": 0, "case_insensitive": 1, "alias_to": "", "categories": "String",
     "introduced_in": "1.1.0"},
    {"name": "lcase", "is_aggregate": 0, "case_insensitive": 1, "alias_to": "lower", "categories": "",
     "introduced_in": ""},
    {"name": "file", "is_aggregate": 0, "case_insensitive": 0, "alias_to": "", "categories": "Other",
     "introduced_in": "21.3.0"},
    {"name": "brandNew", "is_aggregate": 0, "case_insensitive": 0, "alias_to": "", "categories": "String",
     "introduced_in": "99.1.0"},
    {"name": "CAST", "is_aggregate": 0, "case_insensitive": 1, "alias_to": "", "categories": "Type Conversion",
     "introduced_in": "1.1.0"},
    {"name": "toTypeName", "is_aggregate": 0, "case_insensitive": 0, "alias_to": "", "categories": "Other",
     "introduced_in": "1.1.0"},
]
POLICY = build_query_policy(ROWS, ["If", "State"], ["Decimal", "Nullable", "String"],
                            ["file", "url", "numbers", "remote"])


@pytest.mark.parametrize("sql", [
    "SELECT sum(x), sumIf(x, y), SUM(x), lcase(s), LOWER(s), toTypeName(1) FROM t",
    "SELECT CAST(x AS Nullable(Decimal(38, 12))) FROM numbers(3) WHERE s = {s:String}",
    "SELECT 'file(1)' AS `file`, \"x\" -- file('/etc/passwd')\nFROM t",
    "INSERT INTO t (a, b) FORMAT Native\n\x00\x01garbage$$",
])
def test_allowed(sql: str) -> None:
    POLICY.check(sql.encode("latin-1"), writer=True)


@pytest.mark.parametrize("sql, why", [
    ("SELECT file('x')", "'file'"), ("SELECT FILE('x')", "'FILE'"), ("SELECT `file`('x')", "'file'"),
    ("SELECT * FROM url('http://x')", "'url'"), ("SELECT * FROM REMOTE('h', t)", "'REMOTE'"),
    ("SELECT brandNew('x')", "'brandNew'"), ("SELECT unknownFn(1)", "'unknownFn'"),
    ("SELECT * APPLY(file) FROM t", "'file'"), ("SELECT 1 INTO OUTFILE 'x'", "OUTFILE"),
    ("SELECT $$x$$", "'\\$'"), ("SELECT 1 /* /* */ */", "nested"), ("SELECT 1; SELECT 2", "one statement"),
    ("SELECT 1 SETTINGS readonly = 0", "'readonly'"), ("DROP TABLE t", "'DROP'"), ("SET a = 1", "'SET'"),
    ("SELECT 1 FORMAT Protobuf", "'Protobuf'"), ("SELECT * FROM system.users", "'users'"),
    ("SELECT 'unterminated", "unterminated"), ("SELECT {t:Identifier}", "Identifier"),
    ("INSERT INTO t FORMAT Values (file('x'))", "'Values'"), ("SELECT 1 -- c\r, file('x')", "'file'"),
])
def test_refused(sql: str, why: str) -> None:
    with pytest.raises(QueryRefusedError, match=why):
        POLICY.check(sql.encode(), writer=True)


def test_reader_cannot_insert() -> None:
    with pytest.raises(QueryRefusedError, match="writer"):
        POLICY.check(b"INSERT INTO t VALUES (1)", writer=False)


def test_insert_data_is_not_lexed_as_sql() -> None:
    tokens = tokenize(b"INSERT INTO t FORMAT RowBinary\n'\x00\x01 file(")
    assert [t.text for t in tokens] == ["INSERT", "INTO", "t", "FORMAT", "RowBinary"]
