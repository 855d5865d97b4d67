"""Provider bills through real HTTP and real chdb SQL: a local server serves recorded-shaped pages of each provider's
cost and usage reports (two pages, a 429 with Retry-After, a 401), the import lands them idempotently, and the
reconciliation of a simulated fleet against a bill built from it is exact, while an extra key's usage is named as
exactly that key's unattributed spend."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from finops.pricing.engine import Pricer
from governance.bills import (
    BillsAuthError,
    FetchConfig,
    compute_reconciliation,
    fetch_report,
    load_reconciliation_inputs,
    parse_report_pages,
    store_reconciliation,
    store_report,
)
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from producers.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

D = Decimal
KEY = "sk-admin-test-secret-0123456789"
PERIOD = parse_period("2026-11")
DAY1 = datetime(2026, 11, 2, tzinfo=UTC)
DAY2 = datetime(2026, 11, 3, tzinfo=UTC)

OPENAI_COSTS = [
    {"object": "page", "data": [{"object": "bucket", "start_time": int(DAY1.timestamp()),
                                 "end_time": int(DAY2.timestamp()), "results": [
        {"object": "organization.costs.result", "amount": {"value": 1.25, "currency": "usd"},
         "line_item": "gpt-4o-2024-08-06, input", "project_id": "proj_checkout"},
        {"object": "organization.costs.result", "amount": {"value": 0.000123456789, "currency": "usd"},
         "line_item": "gpt-4o-2024-08-06, output", "project_id": "proj_checkout"}]}],
     "has_more": True, "next_page": "page-2"},
    {"object": "page", "data": [{"object": "bucket", "start_time": int(DAY2.timestamp()),
                                 "end_time": int(DAY2.timestamp()) + 86400, "results": [
        {"object": "organization.costs.result", "amount": {"value": 3.5, "currency": "usd"},
         "line_item": "gpt-4o-mini-2024-07-18, input", "project_id": None}]}],
     "has_more": False, "next_page": None},
]
OPENAI_USAGE = [
    {"object": "page", "data": [{"object": "bucket", "start_time": int(DAY1.timestamp()),
                                 "end_time": int(DAY2.timestamp()), "results": [
        {"object": "organization.usage.completions.result", "input_tokens": 1000, "output_tokens": 500,
         "input_cached_tokens": 800, "num_model_requests": 5, "project_id": "proj_checkout", "user_id": None,
         "api_key_id": "key_abc", "model": "gpt-4o-2024-08-06", "batch": None}]}],
     "has_more": False, "next_page": None},
]
ANTHROPIC_COSTS = [
    {"data": [{"starting_at": "2026-11-02T00:00:00Z", "ending_at": "2026-11-03T00:00:00Z", "results": [
        {"currency": "USD", "amount": "123.45", "workspace_id": "wrkspc_a", "description": "Claude Sonnet 4 Usage",
         "cost_type": "tokens", "context_window": "0-200k", "model": "claude-sonnet-4-20250514",
         "service_tier": "standard", "token_type": "uncached_input_tokens"}]}],
     "has_more": True, "next_page": "p2"},
    {"data": [{"starting_at": "2026-11-03T00:00:00Z", "ending_at": "2026-11-04T00:00:00Z", "results": [
        {"currency": "USD", "amount": "0.5", "workspace_id": None, "description": "Web search",
         "cost_type": "web_search", "context_window": None, "model": None, "service_tier": None,
         "token_type": None}]}],
     "has_more": False, "next_page": None},
]
ANTHROPIC_USAGE = [
    {"data": [{"starting_at": "2026-11-02T00:00:00Z", "ending_at": "2026-11-03T00:00:00Z", "results": [
        {"uncached_input_tokens": 100, "cache_creation": {"ephemeral_1h_input_tokens": 5,
                                                          "ephemeral_5m_input_tokens": 20},
         "cache_read_input_tokens": 300, "output_tokens": 70, "server_tool_use": {"web_search_requests": 0},
         "api_key_id": "apikey_01", "workspace_id": "wrkspc_a", "model": "claude-sonnet-4-20250514",
         "service_tier": "standard", "context_window": "0-200k"}]}],
     "has_more": False, "next_page": None},
]
OPENROUTER = {
    "2026-11-02": {"data": [{"date": "2026-11-02", "model": "openai/gpt-4.1",
                             "model_permaslug": "openai/gpt-4.1-2025-04-14",
                             "endpoint_id": "550e8400", "provider_name": "OpenAI", "usage": 0.015,
                             "byok_usage_inference": 0, "requests": 5, "prompt_tokens": 50,
                             "completion_tokens": 125, "reasoning_tokens": 25}]},
}


class _Provider(BaseHTTPRequestHandler):
    """Serves the pages above; the first request of each path answers 429 with Retry-After; a wrong key 401."""

    routes: ClassVar[dict[str, Any]] = {}
    seen: ClassVar[list[str]] = []
    throttled: ClassVar[set[str]] = set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        return

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        key = self.headers.get("x-api-key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        type(self).seen.append(self.path)
        if key != KEY:
            return self._send(401, {"error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        if url.path not in type(self).throttled:
            type(self).throttled.add(url.path)
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return None
        pages = type(self).routes.get(url.path)
        if pages is None:
            return self._send(404, {"error": "no route"})
        if isinstance(pages, dict):  # OpenRouter: one response per date
            return self._send(200, pages.get(query.get("date", [""])[0], {"data": []}))
        index = 1 if query.get("page") else 0
        return self._send(200, pages[index])

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def provider_server() -> Iterator[str]:
    _Provider.routes = {
        "/v1/organization/costs": OPENAI_COSTS, "/v1/organization/usage/completions": OPENAI_USAGE,
        "/v1/organizations/cost_report": ANTHROPIC_COSTS,
        "/v1/organizations/usage_report/messages": ANTHROPIC_USAGE, "/api/v1/activity": OPENROUTER,
    }
    _Provider.seen, _Provider.throttled = [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fetch(provider: Any, url: str, key: str = KEY) -> tuple[Any, list[float]]:
    waits: list[float] = []
    report = fetch_report(provider, PERIOD, FetchConfig(base_url=url, key=key, max_retries=3), sleep=waits.append)
    return report, waits


def test_openai_pages_retry_and_land_idempotently(provider_server: str, ch_client: Any, ch_database: str) -> None:
    report, waits = _fetch("openai", provider_server)
    assert waits == [0.0, 0.0]  # one 429 per endpoint, waited as its Retry-After said
    assert any("page=page-2" in p for p in _Provider.seen)
    assert [b.amount_usd for b in report.bills] == [D("1.25"), D("0.000123456789"), D("3.5")]  # exact, no float
    assert report.bills[0].model == "gpt-4o-2024-08-06" and report.bills[0].account_id == "proj_checkout"
    usage = report.usage[0]
    assert (usage.input_tokens, usage.cache_read_tokens, usage.api_key_id) == (1000, 800, "key_abc")
    assert len(report.days) == 30
    now = datetime(2026, 12, 1, tzinfo=UTC)
    store_report(ch_client, ch_database, report, origin="api", now=now)
    store_report(ch_client, ch_database, report, origin="api", now=datetime(2026, 12, 2, tzinfo=UTC))
    total = ch_client.query(f"SELECT sum(amount_usd), count() FROM {ch_database}.v_provider_bills").result_rows[0]
    assert total == (D("4.750123456789"), 3)  # the second import replaced the first, it did not add
    # a re-import that no longer holds a line drops it
    recorded = json.loads(json.dumps(OPENAI_COSTS[:1]), parse_float=D)  # as a recorded file reads: no float
    smaller = parse_report_pages("openai", recorded, [], "t")
    smaller.days |= set(PERIOD.day_list())
    store_report(ch_client, ch_database, smaller, origin="api", now=datetime(2026, 12, 3, tzinfo=UTC))
    total = ch_client.query(f"SELECT sum(amount_usd) FROM {ch_database}.v_provider_bills").result_rows[0][0]
    assert total == D("1.250123456789")


def test_anthropic_cents_cache_fields_and_paging(provider_server: str) -> None:
    report, waits = _fetch("anthropic", provider_server)
    assert waits == [0.0, 0.0]
    assert [b.amount_usd for b in report.bills] == [D("1.2345"), D("0.005")]  # cents, converted exactly
    assert report.bills[0].account_id == "wrkspc_a" and report.bills[1].cost_type == "web_search"
    u = report.usage[0]
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens) == (425, 300, 25, 70)
    assert u.api_key_id == "apikey_01"


def test_openrouter_activity_per_day(provider_server: str) -> None:
    report, _ = _fetch("openrouter", provider_server)
    assert [(b.day, b.model, b.amount_usd) for b in report.bills] == [(date(2026, 11, 2), "openai/gpt-4.1",
                                                                      D("0.015"))]
    assert sum(1 for p in _Provider.seen if p.startswith("/api/v1/activity")) == 31  # 30 days + the 429


def test_401_names_the_setting_never_the_key(provider_server: str) -> None:
    for provider, setting in (("openai", "FINOPS_BILLS_OPENAI_ADMIN_KEY"),
                              ("anthropic", "FINOPS_BILLS_ANTHROPIC_ADMIN_KEY"),
                              ("openrouter", "FINOPS_BILLS_OPENROUTER_MANAGEMENT_KEY")):
        with pytest.raises(BillsAuthError) as err:
            _fetch(provider, provider_server, key="sk-wrong-key-zzz")
        assert setting in str(err.value) and "401" in str(err.value)
        assert "sk-wrong-key-zzz" not in str(err.value)


# ---- a simulated fleet against a bill built from it -----------------------------------------------------------
def _fleet(ch_client: Any, database: str) -> list[dict[str, Any]]:
    config = SimulationConfig.model_validate({
        "seed": 7, "agents": 10, "teams": 3, "projects": 4, "duration_s": 26 * 3600, "rate_per_s": 0.05,
        "start": datetime(2026, 11, 4, 6, 0, tzinfo=UTC)})
    pricer = Pricer()
    rows = [compute_priced_row(e, pricer, priced_at=e["occurred_at"], source_offset=i)
            for i, e in enumerate(generate(config))]
    insert_ledger_rows(ch_client, database, rows)
    return rows


def _bill_pages(rows: list[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Anthropic-shaped and OpenAI-shaped report pages holding exactly the fleet's spend and tokens, with the ledger
    project as workspace / project id and one API key per project."""
    cost: dict[tuple[str, date, str, str], Decimal] = defaultdict(Decimal)
    tokens: dict[tuple[str, date, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["provider"] not in ("openai", "anthropic"):
            continue
        k = (r["provider"], r["occurred_at"].astimezone(UTC).date(), r["model"], r["project"])
        cost[k] += r["cost_usd"]
        tokens[k][0] += r["input_tokens"]
        tokens[k][1] += r["output_tokens"]
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for provider in ("openai", "anthropic"):
        days = sorted({k[1] for k in cost if k[0] == provider})
        costs, usage = [], []
        for day in days:
            keys = [k for k in cost if k[0] == provider and k[1] == day]
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if provider == "openai":
                costs.append({"data": [{"start_time": int(start.timestamp()), "results": [
                    {"amount": {"value": cost[k], "currency": "usd"}, "line_item": f"{k[2]}, input",
                     "project_id": k[3]} for k in keys]}]})
                usage.append({"data": [{"start_time": int(start.timestamp()), "results": [
                    {"input_tokens": tokens[k][0], "output_tokens": tokens[k][1], "model": k[2],
                     "project_id": k[3], "api_key_id": f"key-{k[3]}"} for k in keys]}]})
            else:
                costs.append({"data": [{"starting_at": start.isoformat(), "results": [
                    {"amount": str(cost[k] * 100), "currency": "USD", "model": k[2], "workspace_id": k[3],
                     "cost_type": "tokens"} for k in keys]}]})
                usage.append({"data": [{"starting_at": start.isoformat(), "results": [
                    {"uncached_input_tokens": tokens[k][0], "output_tokens": tokens[k][1], "model": k[2],
                     "workspace_id": k[3], "api_key_id": f"key-{k[3]}"} for k in keys]}]})
        out[provider] = (costs, usage)
    return out


def test_fleet_reconciles_exactly_and_an_extra_key_is_unattributed(ch_client: Any, ch_database: str) -> None:
    rows = _fleet(ch_client, ch_database)
    pages = _bill_pages(rows)
    assert pages["openai"][0] and pages["anthropic"][0], "the fleet must use both providers"
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for provider, (costs, usage) in pages.items():
        store_report(ch_client, ch_database, parse_report_pages(provider, costs, usage), origin="test", now=now)
    bills, ledger = load_reconciliation_inputs(ch_client, ch_database, PERIOD)
    report = compute_reconciliation("2026-11", bills, ledger, {}, tolerance_usd=D(0), tolerance_pct=D(0))
    expected = sum((r["cost_usd"] for r in rows if r["provider"] in ("openai", "anthropic")), D(0))
    totals = report.totals()
    assert totals["bill_usd"] == totals["ledger_usd"] == totals["matched_usd"] == expected
    assert {c.status for c in report.cells} == {"matched"} and report.unattributed_by_key() == {}
    assert all(c.bill_input_tokens == c.ledger_input_tokens for c in report.cells)

    # The same bill plus one key the fleet never reported (a shadow workspace): exactly its spend is unattributed.
    costs, usage = pages["anthropic"]
    day = datetime(2026, 11, 4, tzinfo=UTC).isoformat()
    extra_costs = [*costs, {"data": [{"starting_at": day, "results": [
        {"amount": "1234.5", "currency": "USD", "model": "claude-sonnet-4-20250514", "workspace_id": "wrkspc_shadow"}
    ]}]}]
    extra_usage = [*usage, {"data": [{"starting_at": day, "results": [
        {"uncached_input_tokens": 90000, "output_tokens": 1000, "model": "claude-sonnet-4-20250514",
         "workspace_id": "wrkspc_shadow", "api_key_id": "key-shadow"}]}]}]
    store_report(ch_client, ch_database, parse_report_pages("anthropic", extra_costs, extra_usage), origin="test",
                 now=datetime(2026, 12, 2, tzinfo=UTC))
    bills, ledger = load_reconciliation_inputs(ch_client, ch_database, PERIOD)
    report = compute_reconciliation("2026-11", bills, ledger, {}, tolerance_usd=D("0.01"), tolerance_pct=D(0))
    assert report.unattributed_by_key() == {"key-shadow": D("12.345")}
    (gap,) = report.gaps()
    assert (gap.status, gap.account_id, gap.api_keys, gap.unattributed_usd) == (
        "unattributed", "wrkspc_shadow", ("key-shadow",), D("12.345"))
    assert report.totals()["over_reported_usd"] == 0

    store_reconciliation(ch_client, ch_database, report, now=datetime(2026, 12, 2, tzinfo=UTC))
    share = ch_client.query(
        f"SELECT provider, sum(attributed_usd), sum(bill_usd), sum(share_of_bill) FROM {ch_database}.v_bill_attribution"
        " WHERE period = '2026-11' GROUP BY provider ORDER BY provider").result_rows
    anthropic = next(r for r in share if r[0] == "anthropic")
    assert anthropic[2] - anthropic[1] == D("12.345")
    assert abs(float(anthropic[3]) - float(anthropic[1] / anthropic[2])) < 1e-9


# ---- the commands, through the store endpoint ---------------------------------------------------------------------
@pytest.fixture
def store(ch_client: Any, store_credentials: Any, store_data_dir: Any,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from sinks.store_server import serve_store

    monkeypatch.setenv("FINOPS_DATA_DIR", str(store_data_dir))  # the endpoint's credentials live there
    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as server:
        yield server


def _cli(argv: list[str]) -> int:
    import argparse

    from governance.bills_cli import register

    parser = argparse.ArgumentParser(prog="finops")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_import_reconcile_and_demo_seed_commands(chdb_url: str, store: Any, ch_client: Any, ch_database: str,
                                                 tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
                       "FINOPS_CLICKHOUSE_DATABASE": ch_database}.items():
        monkeypatch.setenv(key, value)
    rows = _fleet(ch_client, ch_database)
    costs, usage = _bill_pages(rows)["openai"]
    recorded = tmp_path / "openai.json"
    recorded.write_text(json.dumps({"costs": costs, "usage": usage}, default=str))
    activity = tmp_path / "openrouter.csv"
    activity.write_text("date,model,usage,prompt_tokens,completion_tokens,requests,api_key_hash\n"
                        "2026-11-04,openai/gpt-4.1,0.25,100,20,2,hash-unknown\n")
    assert _cli(["bills", "import", "--provider", "openai", "--from", str(recorded)]) == 0
    assert _cli(["bills", "import", "--provider", "openrouter", "--from", str(activity)]) == 0
    capsys.readouterr()
    # the OpenRouter key is not instrumented: a drift, exit 1 (alerts off here: no broker in this test)
    assert _cli(["bills", "reconcile", "--period", "2026-11", "--no-alert"]) == 1
    out = capsys.readouterr().out
    assert "Unattributed spend by key / account (not instrumented):\n  hash-unknown: 0.250000 USD" in out
    openai_total = sum((r["cost_usd"] for r in rows if r["provider"] == "openai"), D(0))
    stored = ch_client.query(
        f"SELECT provider, sum(bill_usd), sum(attributed_usd) FROM {ch_database}.v_bill_reconciliation "
        "GROUP BY provider ORDER BY provider").result_rows
    assert stored == [("openai", openai_total, openai_total), ("openrouter", D("0.25"), D(0))]

    assert _cli(["bills", "demo-seed", "--period", "2026-11"]) == 0
    anthropic_total = sum((r["cost_usd"] for r in rows if r["provider"] == "anthropic"), D(0))
    share = {p: (b, a) for p, b, a in ch_client.query(
        f"SELECT provider, sum(bill_usd), sum(attributed_usd) FROM {ch_database}.v_bill_attribution "
        "WHERE period = '2026-11' GROUP BY provider").result_rows}
    # the demo bill is the ledger plus 3 % on one uninstrumented key per provider (re-imports replaced the file's)
    assert share["anthropic"] == (anthropic_total + (anthropic_total * 3 / 100).quantize(D("0.01")), anthropic_total)
    assert share["openai"][1] == openai_total


def test_reconcile_publishes_one_bill_drift_alert_per_provider(chdb_url: str, store: Any, ch_client: Any,
                                                               ch_database: str, kafka_bootstrap: str,
                                                               topics: Any, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import uuid

    from confluent_kafka import Consumer

    from schemas.models import Alert
    from schemas.wire import AvroCodec
    from tests.integration.test_sink_support import wait_for

    for key, value in {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
                       "FINOPS_CLICKHOUSE_DATABASE": ch_database, "FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
                       "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix}.items():
        monkeypatch.setenv(key, value)
    report = parse_report_pages("anthropic", json.loads(json.dumps(ANTHROPIC_COSTS), parse_float=D),
                                json.loads(json.dumps(ANTHROPIC_USAGE), parse_float=D))
    store_report(ch_client, ch_database, report, origin="test", now=datetime(2026, 12, 1, tzinfo=UTC))
    assert _cli(["bills", "reconcile", "--period", "2026-11"]) == 1  # nothing in the ledger: all unattributed
    assert "published 1 bill_drift alert(s)" in capsys.readouterr().err
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"b-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.alerts])
    got: list[Any] = []
    try:
        def read() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
            return bool(got)
        wait_for(read, what="the bill_drift alert")
    finally:
        consumer.close()
    name, decoded = AvroCodec().decode(got[0].value())
    alert = Alert.from_avro_dict(decoded)
    assert name == "Alert" and got[0].key() == b"bill_drift:anthropic:2026-11"
    # 1.2345 USD of tokens in wrkspc_a; the 0.005 USD web-search line is within the 0.01 USD tolerance
    assert alert.kind == "bill_drift" and alert.amount_usd == D("1.2345")
    assert "apikey_01" in alert.summary and KEY not in alert.summary


def test_import_api_command_reads_key_and_base_url_from_settings(
        provider_server: str, chdb_url: str, store: Any, ch_client: Any, ch_database: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from finops.cli import main

    for key, value in {"FINOPS_CLICKHOUSE_URL": chdb_url, "FINOPS_CLICKHOUSE_QUERY_URL": store.url,
                       "FINOPS_CLICKHOUSE_DATABASE": ch_database, "FINOPS_BILLS_ANTHROPIC_BASE_URL": provider_server,
                       "FINOPS_BILLS_ANTHROPIC_ADMIN_KEY": KEY, "FINOPS_BILLS_MAX_RETRY_WAIT_SECONDS": "0.01"}.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("DEBUG"):
        assert _cli(["bills", "import", "--provider", "anthropic", "--api", "--period", "2026-11"]) == 0
    assert "imported anthropic (api): 2 cost lines (1.2395 USD), 1 usage lines, 30 days" in capsys.readouterr().out
    assert KEY not in caplog.text and "429" in caplog.text  # the retry is logged, the key never
    total = ch_client.query(f"SELECT sum(amount_usd) FROM {ch_database}.v_provider_bills").result_rows[0][0]
    assert total == D("1.2395")

    monkeypatch.setenv("FINOPS_BILLS_ANTHROPIC_ADMIN_KEY", "sk-ant-admin-wrong")
    assert main(["bills", "import", "--provider", "anthropic", "--api", "--period", "2026-11"]) == 2
    err = capsys.readouterr().err
    assert "FINOPS_BILLS_ANTHROPIC_ADMIN_KEY" in err and "401" in err and "sk-ant-admin-wrong" not in err
    monkeypatch.delenv("FINOPS_BILLS_ANTHROPIC_ADMIN_KEY")
    assert main(["bills", "import", "--provider", "anthropic", "--api"]) == 2
    assert "--api needs FINOPS_BILLS_ANTHROPIC_ADMIN_KEY" in capsys.readouterr().err
