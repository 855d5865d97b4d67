"""finops/clickhouse.py is the only module that constructs ClickHouse clients or touches clickhouse-connect's
private API (issue 16 item 2), and it scrubs secrets from the messages it translates.

Tests are not scanned: they also drive the store endpoint with a plain clickhouse-connect client, as a third party
(Grafana, a notebook) would.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finops import clickhouse

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("alerting", "dashboard", "finops", "governance", "producers", "schemas", "sinks", "stream_jobs")
FACTORY = REPO / "finops" / "clickhouse.py"
CONSTRUCTORS = {"get_client", "create_client", "get_async_client", "create_async_client"}


def _client_constructions(path: Path) -> list[str]:
    """Each line of ``path`` that builds a ClickHouse client or session, or reaches clickhouse-connect internals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] == "chdb"
                      or a.name.startswith("clickhouse_connect.driver._") or a.name == "clickhouse_connect.common"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if (node.module.split(".")[0] == "chdb" or node.module.startswith("clickhouse_connect.driver._")
                    or node.module == "clickhouse_connect.common"
                    or (node.module.startswith("clickhouse_connect") and names & CONSTRUCTORS)):
                found.append(f"{where} from {node.module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Attribute):
            base = node.value
            if node.attr == "_backend":
                found.append(f"{where} ._backend")
            elif node.attr in CONSTRUCTORS and isinstance(base, ast.Name) and base.id == "clickhouse_connect":
                found.append(f"{where} clickhouse_connect.{node.attr}")
            elif node.attr == "set_setting" and isinstance(base, ast.Attribute) and base.attr == "common":
                found.append(f"{where} clickhouse_connect.common.set_setting")
    return found


def test_no_clickhouse_client_is_built_outside_the_factory() -> None:
    found = [hit for package in PACKAGES for path in sorted((REPO / package).rglob("*.py")) if path != FACTORY
             for hit in _client_constructions(path)]
    assert not found, "open ClickHouse through finops.clickhouse (connect / open_client / ...): " + "; ".join(found)


def test_the_scan_sees_what_the_factory_does() -> None:
    hits = " ".join(_client_constructions(FACTORY))
    assert "clickhouse_connect.get_client" in hits and "._backend" in hits
    assert "from clickhouse_connect.driver._backend.models import QueryRuntime" in hits


def test_scrub_removes_known_passwords_and_url_credentials() -> None:
    clickhouse._remember("s3cr3t-Pa55")
    text = clickhouse.scrub("auth failed for s3cr3t-Pa55 at http://finops:hunter22@127.0.0.1:8124/db")
    assert "s3cr3t-Pa55" not in text and "hunter22" not in text
    assert text == "auth failed for *** at http://finops:***@127.0.0.1:8124/db"


def test_a_bad_clickhouse_url_never_echoes_its_password() -> None:
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        clickhouse.parse_clickhouse_url("http://u:topsecret@host:notaport/db")
    assert "topsecret" not in str(caught.value) and "FINOPS_CLICKHOUSE_URL" in str(caught.value)


def test_errors_have_one_root() -> None:
    from schemas.errors import FinopsError

    for error in (clickhouse.ClickHouseUnavailableError, clickhouse.StoreBusyError, clickhouse.ClickHouseQueryError):
        assert issubclass(error, clickhouse.ClickHouseError) and issubclass(error, FinopsError)


def test_read_types_reads_low_cardinality_columns_as_their_inner_type_and_keeps_the_rest() -> None:
    from finops.clickhouse import read_types

    declared = {
        "team": "LowCardinality(String)",
        "price_book_version": "LowCardinality(Nullable(String))",
        "occurred_at": "DateTime64(6, 'UTC')",
        "cost_usd": "Decimal(38, 12)",
        "reported_cost": "Nullable(Decimal(38, 12))",
        "tags": "Map(LowCardinality(String), String)",
        "event_id": "String",
    }
    assert read_types(declared) == {
        "team": "String",
        "price_book_version": "Nullable(String)",
        "occurred_at": "DateTime64(6, 'UTC')",
        "cost_usd": "Decimal(38, 12)",
        "reported_cost": "Nullable(Decimal(38, 12))",
        "tags": "Map(LowCardinality(String), String)",  # only a column's own wrapper is read through
        "event_id": "String",
    }
