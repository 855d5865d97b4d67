"""parse_clickhouse_url: the URL forms, the errors and that the password never shows."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from finops.clickhouse import ClickHouseTarget, check_identifier, parse_clickhouse_url

pytestmark = pytest.mark.unit


def test_chdb_path() -> None:
    assert parse_clickhouse_url("chdb:///var/lib/finops/clickhouse") == ClickHouseTarget(
        kind="chdb", path="/var/lib/finops/clickhouse"
    )


def test_http_with_credentials_and_database() -> None:
    target = parse_clickhouse_url("https://bob:p%40ss@ch.example.com:9443/finops")
    got = (target.kind, target.host, target.port, target.secure, target.username, target.password, target.database)
    assert got == ("http", "ch.example.com", 9443, True, "bob", "p@ss", "finops")
    assert "p@ss" not in repr(target) and "***" in repr(target)
    assert target.redacted() == "https://bob:***@ch.example.com:9443/finops"


def test_http_default_ports() -> None:
    assert parse_clickhouse_url("http://localhost").port == 8123
    assert parse_clickhouse_url("https://localhost/").port == 8443


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "is empty"),
        ("chdb://relative/path", "absolute path"),
        ("chdb://", "absolute data directory"),
        ("chdb:///", "absolute data directory"),
        ("mysql://u:topsecret@h/db", "scheme 'mysql'"),
        ("localhost:8123", "scheme"),
        ("http://u:topsecret@/db", "no host"),
        ("http://u:topsecret@h:99999/db", "bad host or port"),
        ("http://u:topsecret@h/a/b", "more than one path segment"),
        ("http://u:topsecret@h/bad-db", "invalid database"),
        ("http://u:topsecret@h/db?secure=1", "query"),
    ],
)
def test_bad_urls_name_the_variable_and_forms_but_not_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_clickhouse_url(url)
    message = str(info.value)
    assert fragment in message
    assert "FINOPS_CLICKHOUSE_URL" in message and "chdb:///abs/path" in message
    assert "topsecret" not in message
    assert info.value.__cause__ is None or "topsecret" not in str(info.value.__cause__)


def test_check_identifier() -> None:
    assert check_identifier("finops_test_1") == "finops_test_1"
    with pytest.raises(ConfigError):
        check_identifier("a" * 65)
