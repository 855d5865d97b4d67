"""How the ClickHouse boundary (finops/clickhouse.py) classes clickhouse-connect's errors for a writer: retry
(transient), split the data (rejected) or stop (fatal), decided on the exception's type and ClickHouse's error code,
with real exception instances as the client builds them (chdb's and the HTTP backend's error builders included)."""

from __future__ import annotations

import struct
from decimal import Decimal, InvalidOperation

import pytest
from clickhouse_connect.driver import exceptions as ch_exc
from clickhouse_connect.driver._backend.httpcommon import build_http_error

from finops.clickhouse import (
    FATAL_CODES,
    TRANSIENT_CODES,
    ClickHouseFatalError,
    ClickHouseQueryError,
    ClickHouseRejectedError,
    ClickHouseTransientError,
    classified_errors,
    classify_clickhouse_error,
)

pytestmark = pytest.mark.unit


def _http(code: int | None, body: str, *, status: int = 500, retried: bool = False) -> ch_exc.DatabaseError:
    """The error clickhouse-connect's HTTP backend raises for a failed response (its own builder)."""
    return build_http_error(status, None if code is None else str(code), body, True, "http://ch:8123/", retried)


def _decimal_error() -> InvalidOperation:
    try:
        Decimal("not a number")
    except InvalidOperation as err:
        return err
    raise AssertionError("Decimal accepted garbage")


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        # no code: the type decides
        (ch_exc.OperationalError("Error HTTPConnectionPool: connection refused"), "transient"),
        (ch_exc.OperationalError("Failed to read response data from server"), "transient"),
        (ch_exc.StreamFailureError("stream failed"), "transient"),
        (ch_exc.InterfaceError("connection lost"), "transient"),
        (ConnectionResetError(), "transient"),
        (TimeoutError("read timed out"), "transient"),
        (BrokenPipeError(), "transient"),
        (ch_exc.DataError("Unable to create native array for column `n`: error"), "rejected"),
        (ch_exc.IntegrityError("duplicate"), "rejected"),
        (OverflowError("int too big to convert"), "rejected"),
        (_decimal_error(), "rejected"),
        (ValueError("bad value"), "rejected"),
        (TypeError("expected str"), "rejected"),
        (struct.error("argument out of range"), "rejected"),
        (UnicodeEncodeError("ascii", "é", 0, 1, "no"), "rejected"),
        (ch_exc.ProgrammingError("Unrecognized column 'zz' in table p.t"), "fatal"),
        (ch_exc.ProgrammingError("Insert data column count does not match column names"), "fatal"),
        (ch_exc.NotSupportedError("Object deserialization not supported"), "fatal"),
        (ch_exc.InternalError("Can not parse ClickHouse data type: Foo"), "fatal"),
        (RuntimeError("bug"), "fatal"),
        # a code decides, whatever the type
        (ch_exc.DatabaseError("Code: 252. Too many parts", code=252), "transient"),
        (ch_exc.DatabaseError("Code: 241. Memory limit exceeded", code=241), "transient"),
        (ch_exc.DatabaseError("Code: 159. Timeout", code=159), "transient"),
        (ch_exc.DatabaseError("Code: 53. Type mismatch", code=53), "rejected"),
        (ch_exc.DatabaseError("Code: 44. Type UInt8 is not compatible with Avro string", code=44), "rejected"),
        (ch_exc.DatabaseError("Code: 1001. avro::Exception EOF reached", code=1001), "rejected"),
        (ch_exc.DatabaseError("Code: 60. Unknown table", code=60), "fatal"),
        (ch_exc.DatabaseError("Code: 497. Access denied", code=497), "fatal"),
        (ch_exc.DatabaseError("Code: 62. Syntax error", code=62), "fatal"),
        (ch_exc.DatabaseError("The ClickHouse server returned an error", code=516), "fatal"),  # detail suppressed
        # the HTTP backend: OperationalError for any server error once it retried; the code still decides
        (_http(53, "Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)", retried=True), "rejected"),
        (_http(60, "Code: 60. DB::Exception: Table db.x does not exist. (UNKNOWN_TABLE)", retried=True), "fatal"),
        (_http(252, "Code: 252. DB::Exception: Too many parts. (TOO_MANY_PARTS)"), "transient"),
        (_http(None, "Bad Gateway", status=502, retried=True), "transient"),
        (ch_exc.StreamFailureError("Code: 27. Cannot parse input", code=27), "rejected"),
    ],
)
def test_classify_clickhouse_error(err: BaseException, kind: str) -> None:
    assert classify_clickhouse_error(err) == kind


def test_the_http_builder_gives_the_types_and_codes_classified_above() -> None:
    # the premise of the HTTP cases: after a retry the backend changes the type, not the code
    first, retried = _http(53, "Code: 53. x", retried=False), _http(53, "Code: 53. x", retried=True)
    assert type(first) is ch_exc.DatabaseError and type(retried) is ch_exc.OperationalError
    assert first.code == retried.code == 53


def test_end_of_data_is_transient_on_a_connection_and_rejected_while_clickhouse_parses_the_data() -> None:
    for code in (3, 32):
        err = ch_exc.DatabaseError(f"Code: {code}. Unexpected end of file", code=code)
        assert classify_clickhouse_error(err) == "transient"
        assert classify_clickhouse_error(err, parsing_data=True) == "rejected"
    assert classify_clickhouse_error(ch_exc.DatabaseError("x", code=252), parsing_data=True) == "transient"
    assert classify_clickhouse_error(ch_exc.OperationalError("refused"), parsing_data=True) == "transient"


def test_the_code_tables_do_not_overlap() -> None:
    assert not set(TRANSIENT_CODES) & set(FATAL_CODES)


@pytest.mark.parametrize(
    ("err", "error_type", "code"),
    [
        (ch_exc.OperationalError("connection refused"), ClickHouseTransientError, None),
        (ch_exc.DatabaseError("Code: 252. Too many parts\nstack trace", code=252), ClickHouseTransientError, 252),
        (ch_exc.DataError("Unable to create native array for column `cost_usd`"), ClickHouseRejectedError, None),
        (OverflowError("int too big"), ClickHouseRejectedError, None),
        (ch_exc.DatabaseError("Code: 60. Unknown table", code=60), ClickHouseFatalError, 60),
        (ch_exc.ProgrammingError("Unrecognized column 'zz'"), ClickHouseFatalError, None),
    ],
)
def test_classified_errors_translates_with_the_code_the_first_line_and_the_cause(
        err: Exception, error_type: type[ClickHouseQueryError], code: int | None) -> None:
    with pytest.raises(error_type) as caught, classified_errors("inserting rows into db.t"):
        raise err
    translated = caught.value
    assert translated.__cause__ is err and translated.code == code
    assert translated.reason == f"{type(err).__name__}: {str(err).splitlines()[0]}"
    assert str(translated).startswith("inserting rows into db.t failed (")
    assert "stack trace" not in str(translated)


def test_classified_errors_passes_parsing_data_on_and_leaves_translated_errors_alone() -> None:
    with pytest.raises(ClickHouseRejectedError), classified_errors("insert", parsing_data=True):
        raise ch_exc.DatabaseError("Code: 32. Attempt to read after eof", code=32)
    already = ClickHouseFatalError("x", code=60)
    with pytest.raises(ClickHouseFatalError) as caught, classified_errors("insert"):
        raise already
    assert caught.value is already
