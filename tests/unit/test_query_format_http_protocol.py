"""The store endpoint's pure protocol pieces: request assembly, INSERT heads, output formats, bodies."""

from __future__ import annotations

import gzip
import zlib

import pytest

from finops.clickhouse import parse_query_url
from schemas.errors import ConfigError
from sinks.store_server import (
    _STATUS_BY_CODE,
    AUTHENTICATION_FAILED,
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    READONLY,
    SYNTAX_ERROR,
    UNKNOWN_COMPRESSION_METHOD,
    ClickHouseHTTPError,
    build_request,
    decompress_body,
    first_keyword,
    output_format,
    parse_insert_head,
    parse_multipart,
)

pytestmark = pytest.mark.unit


def test_query_param_and_body_concatenate_like_clickhouse() -> None:
    req = build_request("POST", {"query": "INSERT INTO t FORMAT CSV", "database": "d"}, {}, b"1,2\n")
    assert req.sql == b"INSERT INTO t FORMAT CSV\n1,2\n" and req.database == "d" and not req.readonly
    assert build_request("POST", {}, {}, b"SELECT 1").sql == b"SELECT 1"
    assert build_request("GET", {"query": "SELECT 1"}, {}, b"").readonly  # GET implies readonly
    with pytest.raises(ClickHouseHTTPError) as caught:
        build_request("POST", {}, {}, b"  \n")
    assert caught.value.code == SYNTAX_ERROR and caught.value.status == 400


def test_settings_params_and_transport_parameters_are_separated() -> None:
    req = build_request(
        "POST",
        {"param_x": "a\\tb", "max_threads": "2", "readonly": "1", "session_id": "s", "enable_http_compression": "1",
         "wait_end_of_query": "1", "client_protocol_version": "54405", "default_format": "JSON", "query_id": "q1"},
        {},
        b"SELECT {x:String}",
    )
    assert req.bind_params == {"param_x": "a\\tb"}
    assert req.settings == {"max_threads": "2"}
    assert req.readonly and req.default_format == "JSON" and req.query_id == "q1" and req.database == "default"
    assert not build_request("POST", {"readonly": "0"}, {}, b"SELECT 1").readonly
    with pytest.raises(ClickHouseHTTPError):
        build_request("POST", {"bad name; DROP": "1"}, {}, b"SELECT 1")


def test_form_fields_carry_query_and_params() -> None:
    body = (
        b"--B\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\nSELECT {v:String}\r\n"
        b"--B\r\nContent-Disposition: form-data; name=\"param_v\"\r\n\r\nhello\r\n--B--\r\n"
    )
    fields = parse_multipart("multipart/form-data; boundary=B", body)
    req = build_request("POST", {}, {}, body, form_fields=fields)
    assert req.sql == b"SELECT {v:String}" and req.bind_params == {"param_v": "hello"}
    files = b"--B\r\nContent-Disposition: form-data; name=\"t\"; filename=\"t.csv\"\r\n\r\n1\r\n--B--\r\n"
    with pytest.raises(ClickHouseHTTPError) as caught:
        parse_multipart("multipart/form-data; boundary=B", files)
    assert caught.value.code == NOT_IMPLEMENTED


def test_insert_head_as_clickhouse_connect_writes_it() -> None:
    data = b"\x02\x03\n\x00binary"
    sql = b"INSERT INTO `db`.`t` (`id`, `we``ird`, \"x\") FORMAT Native\n" + data
    head = parse_insert_head(sql)
    assert head is not None
    assert (head.table, head.columns, head.fmt) == ("`db`.`t`", ("id", "we`ird", "x"), "Native")
    assert sql[head.data_offset :] == data


def test_insert_head_variants() -> None:
    head = parse_insert_head(b"  -- c\n insert into table t format JSONEachRow  \r\n{}")
    assert head is not None and head.table == "t" and head.columns is None and head.fmt == "JSONEachRow"
    assert parse_insert_head(b"INSERT INTO t VALUES (1)") is None
    assert parse_insert_head(b"INSERT INTO t SELECT 1") is None
    assert parse_insert_head(b"INSERT INTO FUNCTION file('x') FORMAT CSV\n1") is None
    assert parse_insert_head(b"SELECT 1") is None


def test_first_keyword_and_output_format() -> None:
    assert first_keyword(b"/* x */ -- y\n select 1") == "SELECT"
    assert first_keyword(b"(SELECT 1) UNION ALL (SELECT 2)") == "("
    assert output_format(b"SELECT 1\n FORMAT Native", "TabSeparated") == ("Native", True)
    assert output_format(b"SELECT 1 FORMAT JSON SETTINGS max_threads=1", "TSV") == ("JSON", True)
    assert output_format(b"SELECT 'FORMAT CSV'", "TSV") == ("TSV", False)
    assert output_format(b"SELECT format FROM t", "TSV") == ("TSV", False)
    assert output_format(b"SELECT * FROM (SELECT 1 FORMAT CSV)", "TSV") == ("TSV", False)


def test_request_bodies_decompress() -> None:
    payload = b"SELECT 1"
    assert decompress_body(gzip.compress(payload), "gzip") == payload
    assert decompress_body(zlib.compress(payload), "deflate") == payload
    assert decompress_body(payload, None) == payload
    with pytest.raises(ClickHouseHTTPError) as caught:
        decompress_body(payload, "snappy")
    assert caught.value.code == UNKNOWN_COMPRESSION_METHOD
    with pytest.raises(ClickHouseHTTPError):
        decompress_body(b"not gzip", "gzip")


def test_error_bodies_and_statuses_follow_clickhouse() -> None:
    err = ClickHouseHTTPError(AUTHENTICATION_FAILED, "u: Authentication failed")
    assert err.status == 403
    assert err.body == "Code: 516. DB::Exception: u: Authentication failed. (AUTHENTICATION_FAILED)"
    assert ClickHouseHTTPError(60, "Code: 60. DB::Exception: x. (UNKNOWN_TABLE)").status == 404
    assert ClickHouseHTTPError(READONLY, "r").status == 500  # ClickHouse does not map READONLY
    assert _STATUS_BY_CODE[QUERY_IS_TOO_LARGE] == 413 and _STATUS_BY_CODE[NOT_IMPLEMENTED] == 501


def test_query_url_parsing() -> None:
    endpoint = parse_query_url("http://finops:p%40ss@127.0.0.1:9000")
    assert (endpoint.host, endpoint.port, endpoint.users()) == ("127.0.0.1", 9000, {"finops": "p@ss"})
    assert "p@ss" not in repr(endpoint) and endpoint.url == "http://127.0.0.1:9000"
    assert parse_query_url(None).url == "http://127.0.0.1:8124" and parse_query_url(None).users() is None
    with pytest.raises(ConfigError, match="http://"):
        parse_query_url("https://x:1")
