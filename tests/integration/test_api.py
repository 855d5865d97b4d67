"""The dashboard API on a seeded fleet: every number it returns equals what ClickHouse says (read independently from
the ledger), plus /healthz, /metrics and the `finops token` commands. Real chdb, real HTTP server."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest

from tests.integration.test_api_support import (
    RunningDashboard,
    Fleet,
    build_store,
    call,
    serving_database,
    seed_fleet,
)

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    return seed_fleet(ch_client, ch_database)


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def one(client: Any, sql: str, **params: Any) -> Any:
    return client.query(sql, parameters=params).result_rows[0][0]


def test_overview_numbers_match_the_ledger(ch_client: Any, fleet: Fleet, dash: RunningDashboard) -> None:
    db = fleet.database
    status, body = call(dash.url + "/api/overview", dash.issue("finops_admin"))
    assert status == 200
    today = datetime.fromisoformat(body["as_of"].replace("Z", "+00:00")).date()
    ledger = f"{db}.usage_ledger FINAL"
    assert D(body["today_usd"]) == one(ch_client, f"SELECT sum(cost_usd) FROM {ledger} "
                                                  "WHERE toDate(occurred_at, 'UTC') = {d:Date}", d=today)
    assert D(body["month_usd"]) == one(ch_client, f"SELECT sum(cost_usd) FROM {ledger} WHERE toDate(occurred_at, "
                                                  "'UTC') BETWEEN toStartOfMonth({d:Date}) AND {d:Date}", d=today)
    assert body["calls_today"] == one(ch_client, f"SELECT count() FROM {ledger} "
                                                 "WHERE toDate(occurred_at, 'UTC') = {d:Date}", d=today)
    # trend: 30 days ending today, zero-filled, summing to the ledger over the same days
    assert len(body["trend"]) == 30 and body["trend"][-1]["day"] == today.isoformat()
    assert sum(D(p["cost_usd"]) for p in body["trend"]) == one(
        ch_client, f"SELECT sum(cost_usd) FROM {ledger} WHERE toDate(occurred_at, 'UTC') "
                   "BETWEEN {d:Date} - 29 AND {d:Date}", d=today)
    assert {t["team"] for t in body["teams"]} == {"payments", "search", "research"}
    assert body["anomalies"]["count"] == 2
    # waste percentage: avoidable (0.027 + 0.011) over this month's spend
    month = D(body["month_usd"])
    assert D(body["waste"]["avoidable_usd"]) == D("0.038")
    assert D(body["waste"]["waste_pct"]) == (D("0.038") * 100 / month).quantize(D("1e-12"), rounding=ROUND_DOWN)
    # budgets: the view's own numbers, every budget for an admin (tag budgets included)
    view = {r[0]: (r[1], r[2]) for r in ch_client.query(
        f"SELECT policy_id, spent_usd, utilisation_pct FROM {db}.v_budget_utilisation").result_rows}
    assert {b["policy_id"]: (D(b["spent_usd"]), D(b["utilisation_pct"])) for b in body["budgets"]} == view
    assert len(view) == 4
    # unpriced calls beside the dollars (issue 15): the rollup's count, and each budget's from the view
    assert body["unpriced_calls_month"] == one(
        ch_client, f"SELECT countIf(pricing_status = 'unpriced') FROM {ledger} WHERE toDate(occurred_at, 'UTC') "
                   "BETWEEN toStartOfMonth({d:Date}) AND {d:Date}", d=today)
    unpriced = {r[0]: r[1] for r in ch_client.query(
        f"SELECT policy_id, unpriced_calls FROM {db}.v_budget_utilisation").result_rows}
    assert {b["policy_id"]: b["unpriced_calls"] for b in body["budgets"]} == unpriced


def test_team_agent_and_model_views(ch_client: Any, fleet: Fleet, dash: RunningDashboard) -> None:
    db = fleet.database
    token = dash.issue("finops_admin")
    status, team = call(dash.url + "/api/teams/payments", token)
    assert status == 200
    assert {a["agent_id"] for a in team["agents"]} == {"pay-bot-1", "pay-bot-2"}
    assert {b["policy_id"] for b in team["budgets"]} == {"bud-payments-month"}
    assert {a["alert_id"] for a in team["alerts"]} == {"al-anomaly-pay", "al-approval-pay"}

    status, agent = call(dash.url + "/api/agents/pay-bot-2", token)
    assert status == 200 and (agent["team"], agent["project"]) == ("payments", "refunds")
    tasks = ch_client.query(
        f"SELECT task_id, cost_usd, calls, succeeded FROM {db}.v_cost_per_task WHERE agent_id = 'pay-bot-2' "
        "AND toDate(last_call_at, 'UTC') >= today() - 29").result_rows
    assert {(t["task_id"], D(t["cost_usd"]), t["calls"], t["succeeded"]) for t in agent["tasks"]} == set(tasks)
    total, n, ok = sum(t[1] for t in tasks), len(tasks), sum(1 for t in tasks if t[3])
    assert D(agent["task_summary"]["cost_per_task_usd"]) == (total / n).quantize(D("1e-12"), rounding=ROUND_DOWN)
    assert D(agent["task_summary"]["cost_per_successful_task_usd"]) == (total / ok).quantize(
        D("1e-12"), rounding=ROUND_DOWN)
    assert 0 < ok < n, "the seeded fleet has failed tasks for pay-bot-2"
    assert sum(D(p["cost_usd"]) for p in agent["per_day"]) == one(
        ch_client, f"SELECT sum(cost_usd) FROM {db}.usage_ledger FINAL WHERE agent_id = 'pay-bot-2' "
                   "AND toDate(occurred_at, 'UTC') >= today() - 29")
    assert agent["control"]["state"] == "normal"
    status, pay1 = call(dash.url + "/api/agents/pay-bot-1", token)
    assert pay1["control"]["state"] == "throttle" and pay1["control"]["command"]["rate_per_minute"] == 10
    assert [a["alert_id"] for a in pay1["alerts"]] == ["al-anomaly-pay"]

    status, models = call(dash.url + "/api/models", token)
    expected = {r[0]: (r[1], r[2]) for r in ch_client.query(
        f"SELECT model, count(), sum(cost_usd) FROM {db}.usage_ledger FINAL "
        "WHERE toDate(occurred_at, 'UTC') >= today() - 29 GROUP BY model").result_rows}
    got = {m["model"]: (m["calls"], D(m["cost_usd"])) for m in models["models"]}
    assert got == expected
    for m in models["models"]:
        assert D(m["cost_per_call"]) == (D(m["cost_usd"]) / m["calls"]).quantize(D("1e-12"), rounding=ROUND_DOWN)
    assert models["alternatives"] == [{"model": "gpt-4o", "suggested_model": "gpt-4o-mini", "signals": 1,
                                       "avoidable_usd": "0.027000000000"}]


def test_alerts_feed_filters_and_recommendations(fleet: Fleet, dash: RunningDashboard) -> None:
    token = dash.issue("finops_admin")
    status, body = call(dash.url + "/api/alerts?kind=anomaly", token)
    assert status == 200 and {a["alert_id"] for a in body["alerts"]} == {"al-anomaly-pay", "al-anomaly-lab"}
    status, body = call(dash.url + "/api/alerts?limit=2", token)
    assert [a["alert_id"] for a in body["alerts"]] == ["al-anomaly-pay", "al-budget-search"]  # newest first
    status, body = call(dash.url + "/api/alerts?limit=x", token)
    assert status == 400
    status, rec = call(dash.url + "/api/recommendations", token)
    assert [(r["kind"], r["agent_id"], r["avoidable_usd"]) for r in rec["recommendations"]] == [
        ("model_tiering", "pay-bot-1", "0.027000000000"), ("retry_loop", "search-ranker", "0.011000000000")]
    assert rec["avoidable_usd"] == "0.038000000000"


def test_health_and_metrics(fleet: Fleet, dash: RunningDashboard) -> None:
    status, health = call(dash.url + "/healthz")
    assert status == 200 and health["clickhouse"] is True
    status, text = call(dash.url + "/metrics")
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert lines['finops_up{component="clickhouse"}'] == "1"
    # the seeded rows were written moments ago: all of them count in the last minute
    assert int(lines["finops_ledger_rows_last_minute"]) == len(fleet.ledger)
    assert float(lines["finops_events_per_second"]) == pytest.approx(len(fleet.ledger) / 60)
    assert 0 <= float(lines["finops_sink_last_write_age_seconds"]) < 120
    # seeded events occurred up to 45 days before they were stored
    assert float(lines['finops_sink_latency_seconds{quantile="0.99"}']) > 86400
    assert "finops_scrape_duration_seconds" in lines


def test_metrics_report_kafka_lag_and_dlq(ch_client: Any, ch_database: str, chdb_url: str,
                                          kafka_config: dict[str, Any], topics: Any) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer(kafka_config)
    for _ in range(5):
        producer.produce(topics.usage, key=b"a", value=b"x", partition=0)
    for _ in range(3):
        producer.produce(topics.dlq, key=b"a", value=b"bad", partition=0)
    assert producer.flush(30) == 0
    group = f"g-{topics.prefix}"
    committer = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topics.usage, 0, 2)], asynchronous=False)
    committer.close()
    from dashboard.metrics import collect_kafka_metrics

    samples = collect_kafka_metrics(kafka_config, {group: (topics.usage,)}, topics.dlq)
    by_key = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert by_key[("finops_up", (("component", "kafka"),))] == 1
    assert by_key[("finops_consumer_lag_messages",
                   (("group", group), ("partition", "0"), ("topic", topics.usage)))] == 3
    assert by_key[("finops_dlq_messages", (("partition", "0"), ("topic", topics.dlq)))] == 3
    down = collect_kafka_metrics({"bootstrap.servers": "127.0.0.1:1"}, {}, topics.dlq, timeout=1)
    assert [(s.name, s.value) for s in down] == [("finops_up", 0)]


def test_token_commands(ch_database: str, chdb_url: str, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from dashboard import cli
    from dashboard.auth import TokenStore
    from finops.tokens import parse_token

    monkeypatch.setenv("FINOPS_CLICKHOUSE_URL", chdb_url)
    monkeypatch.setenv("FINOPS_CLICKHOUSE_DATABASE", ch_database)
    # nothing listens here, so the command opens the chdb path itself (as `finops sql` does)
    monkeypatch.setenv("FINOPS_CLICKHOUSE_QUERY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        code = args.func(args)
        return code, capsys.readouterr().out

    code, out = run("token", "issue", "--role", "developer", "--team", "payments", "--subject", "ana")
    token = out.strip()
    assert code == 0 and token.startswith("fo_")
    store = build_store(chdb_url, ch_database)
    try:
        principal = TokenStore(store).authenticate(token)
        assert (principal.role, principal.teams, principal.subject) == ("developer", ("payments",), "ana")
        code, out = run("token", "list")
        assert principal.token_id in out and "active" in out and parse_token(token)[1] not in out
        assert run("token", "revoke", principal.token_id) == (0, f"token {principal.token_id} revoked\n")
        assert run("token", "revoke", principal.token_id)[0] == 1
        from dashboard.auth import AuthenticationError

        with pytest.raises(AuthenticationError):
            TokenStore(store).authenticate(token)
        actions = [r["action"] for r in store.select("SELECT action FROM admin_audit ORDER BY at")]
        assert actions == ["token.issue", "token.revoke"]
    finally:
        store.close()


def test_open_store_uses_the_store_owners_endpoint(ch_client: Any, ch_database: str, chdb_url: str,
                                                   store_credentials: Any, store_data_dir: Any) -> None:
    """Embedded mode while another role owns the chdb path: reads and token writes go through its endpoint, and the
    reader is read-only in ClickHouse itself."""
    from dashboard.auth import TokenStore
    from dashboard.store import StoreQueryError, open_store
    from sinks.store_server import serve_store

    server = serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials).start()
    try:
        store = open_store(chdb_url, ch_database, server.url, data_dir=store_data_dir)
        try:
            assert store.where == f"{server.url} (store endpoint)"
            tokens = TokenStore(store)
            token, record = tokens.issue("operator", ["*"], subject="ops", created_by="t", now=datetime.now(UTC))
            assert tokens.authenticate(token).scope.all_teams
            with pytest.raises(StoreQueryError, match="READONLY|readonly|ACCESS_DENIED"):
                store.select("INSERT INTO api_tokens (token_id) VALUES ('x')")
        finally:
            store.close()
    finally:
        server.stop()
