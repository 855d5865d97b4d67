"""Each recommendation kind on a fleet built to need it, with the expected saving computed independently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from governance.config import RecommendSettings
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from governance.recommend import build_recommendations, render_text, to_waste_signals

pytestmark = pytest.mark.integration

OCT = parse_period("2026-10")
T0 = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
GPT4O, MINI, SONNET = "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514"
PRICER = Pricer()
SETTINGS = RecommendSettings(min_monthly_saving_usd=Decimal(0))


class Fleet:
    """Hand-built ledger rows (priced by the catalogue) with running ids and times."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def call(self, agent: str, model: str, *, provider: str = "openai", team: str = "ml", project: str = "bots",
             task: str = "", prompt: str | None = None, attempt: int = 1, status: str = "ok", task_type: str = "",
             input_tokens: int = 1000, output_tokens: int = 100, cache_read: int = 0) -> dict[str, Any]:
        n = len(self.rows)
        event = {"event_id": f"e{n:05d}", "source": "test", "occurred_at": T0 + timedelta(seconds=10 * n),
                 "agent_id": agent, "team": team, "project": project, "provider": provider, "model": model,
                 "input_tokens": input_tokens, "output_tokens": output_tokens, "cache_read_tokens": cache_read,
                 "task_id": task, "prompt_hash": prompt, "attempt": attempt, "status": status,
                 "task_type": task_type}
        row = compute_priced_row(event, PRICER, priced_at=T0)
        assert row["pricing_status"] == "priced"
        self.rows.append(row)
        return row

    def background(self) -> None:
        """Healthy traffic: unique prompts, one call per task, small prompts."""
        for i in range(5):
            self.call("healthy", MINI, task=f"h{i}", prompt=f"hp{i}", task_type="chat")

    def load(self, client: Any, database: str) -> None:
        insert_ledger_rows(client, database, self.rows)


def _only(report: Any, kind: str, agent: str) -> Any:
    found = [r for r in report.items if r.kind == kind and r.agent_id == agent]
    assert len(found) == 1, f"expected one {kind} for {agent}, got {found}"
    return found[0]


def _spend(report: Any) -> None:
    """Total spend is the period's cost; the waste percentage is the view's (nothing recorded yet: zero)."""
    assert report.total_spend_usd == report.waste.cost_usd > 0
    assert report.waste_pct == 0 and report.waste.signals == 0


def test_retry_waste(ch_client: Any, ch_database: str) -> None:
    fleet = Fleet()
    fleet.background()
    wasted = [fleet.call("looper", GPT4O, task="t1", prompt="p1", attempt=a, status="timeout", input_tokens=5000,
                         output_tokens=0) for a in range(1, 5)]
    fleet.call("looper", GPT4O, task="t1", prompt="p1", attempt=5, input_tokens=5000)
    fleet.load(ch_client, ch_database)
    report = build_recommendations(ch_client, ch_database, OCT, SETTINGS, kinds=("retry_waste",))
    rec = _only(report, "retry_waste", "looper")
    assert rec.saving_usd == sum((r["cost_usd"] for r in wasted), Decimal(0)) > 0
    assert rec.monthly_saving_usd == rec.saving_usd  # the period is a calendar month
    assert rec.evidence["max_attempt"] == 5 and rec.evidence["failed_calls"] == 4
    assert rec.sql_command().startswith("finops sql ") and "--param agent=looper" in rec.sql_command()
    assert [r.agent_id for r in report.items] == ["looper"]
    _spend(report)
    # the query shows it: run it as finops sql would
    shown = ch_client.query(rec.query, parameters={"agent": "looper", "lo": OCT.start, "hi": OCT.end})
    assert Decimal(shown.result_rows[0][shown.column_names.index("wasted")]) == rec.saving_usd


def test_caching_duplicate_prompts(ch_client: Any, ch_database: str) -> None:
    fleet = Fleet()
    fleet.background()
    dupes = [fleet.call("dup", MINI, task=f"d{i}", prompt="same-question", input_tokens=2000 + i) for i in range(4)]
    fleet.load(ch_client, ch_database)
    report = build_recommendations(ch_client, ch_database, OCT, SETTINGS, kinds=("caching",))
    rec = _only(report, "caching", "dup")
    assert rec.saving_usd == sum((r["cost_usd"] for r in dupes[1:]), Decimal(0))
    assert rec.evidence["repeats"] == 3
    assert [r.agent_id for r in report.items] == ["dup"]


def test_prompt_bloat(ch_client: Any, ch_database: str) -> None:
    fleet = Fleet()
    fleet.background()
    big = [fleet.call("bloat", GPT4O, task=f"b{i}", prompt=f"bp{i}", input_tokens=n)
           for i, n in enumerate((150_000, 120_000, 90_000))]
    fleet.load(ch_client, ch_database)
    settings = RecommendSettings(prompt_bloat_tokens=100_000, min_monthly_saving_usd=Decimal(0))
    report = build_recommendations(ch_client, ch_database, OCT, settings, kinds=("prompt_bloat",))
    rec = _only(report, "prompt_bloat", "bloat")
    price = big[0]["price_input_mtok"]
    assert rec.saving_usd == (Decimal(50_000 + 20_000) * price / 1_000_000).quantize(Decimal("1e-12"))
    assert rec.evidence["oversized_calls"] == 2 and rec.evidence["largest_prompt_tokens"] == 150_000


def test_prompt_cache_utilisation(ch_client: Any, ch_database: str) -> None:
    fleet = Fleet()
    fleet.background()
    calls = [fleet.call("nocache", SONNET, provider="anthropic", task="c1", prompt=f"cp{i}", input_tokens=n)
             for i, n in enumerate((2000, 3000, 4000))]
    # a well-behaved agent reads its prefix from the cache: nothing to recommend
    fleet.call("cached", SONNET, provider="anthropic", task="c2", prompt="q0", input_tokens=2000)
    fleet.call("cached", SONNET, provider="anthropic", task="c2", prompt="q1", input_tokens=3000, cache_read=2000)
    fleet.load(ch_client, ch_database)
    report = build_recommendations(ch_client, ch_database, OCT, SETTINGS, kinds=("prompt_cache",))
    rec = _only(report, "prompt_cache", "nocache")
    row = calls[0]
    per_token = (row["price_input_mtok"] - row["price_cache_read_mtok"]) / 1_000_000
    assert rec.saving_usd == (Decimal(2000 + 3000) * per_token).quantize(Decimal("1e-12"))
    assert rec.evidence["missed_cacheable_tokens"] == 5000
    assert not [r for r in report.items if r.agent_id == "cached"]


def test_model_tiering(ch_client: Any, ch_database: str) -> None:
    fleet = Fleet()
    fleet.background()
    expensive = [fleet.call("big", GPT4O, task=f"k{i}", prompt=f"kp{i}", task_type="classification",
                            input_tokens=3000 + 10 * i, output_tokens=20) for i in range(12)]
    for i in range(12):
        fleet.call("small", MINI, task=f"s{i}", prompt=f"sp{i}", task_type="classification", input_tokens=2500,
                   output_tokens=15)
    fleet.load(ch_client, ch_database)
    report = build_recommendations(ch_client, ch_database, OCT, SETTINGS, kinds=("model_tiering",))
    rec = _only(report, "model_tiering", "big")
    on_mini = sum((PRICER.price({**r, "model": MINI}).cost_usd for r in expensive), Decimal(0))
    assert rec.saving_usd == sum((r["cost_usd"] for r in expensive), Decimal(0)) - on_mini
    assert rec.evidence["suggested_model"] == MINI
    assert not [r for r in report.items if r.agent_id == "small"]

    # waste signals for v_waste_percentage: sum of savings over spend
    rows = to_waste_signals(report, detected_at=T0)
    ch_client.insert("waste_signals", [list(r.values()) for r in rows], column_names=list(rows[0]),
                     database=ch_database)
    got = ch_client.query(f"SELECT sum(avoidable_cost_usd) FROM {ch_database}.v_waste_percentage").result_rows[0][0]
    assert Decimal(got) == report.saving_usd
    assert "model_tiering" in render_text(report)


def test_evidence_commands_show_only_that_agents_rows(
    ch_client: Any, ch_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    store_credentials: Any, store_data_dir: Any,
) -> None:
    """Issue 14 item 11: every printed `finops sql` evidence command, run as printed, returns rows of its agent only
    (the model-tiering one ignored --param agent and listed the whole fleet's calls)."""
    import argparse
    import json
    import shlex

    from sinks.sql_cli import register
    from sinks.store_server import serve_store

    fleet = Fleet()
    fleet.background()
    for twin in ("a", "b"):  # two agents with the same habits: an unfiltered query shows both
        for a in range(1, 4):
            fleet.call(f"looper-{twin}", GPT4O, task=f"t-{twin}", prompt=f"p-{twin}", attempt=a, status="timeout")
        fleet.call(f"looper-{twin}", GPT4O, task=f"t-{twin}", prompt=f"p-{twin}", attempt=4)
        for i in range(3):
            fleet.call(f"dup-{twin}", MINI, task=f"d-{twin}{i}", prompt=f"same-{twin}", input_tokens=2000 + i)
        for i, n in enumerate((150_000, 120_000)):
            fleet.call(f"bloat-{twin}", GPT4O, task=f"b-{twin}{i}", prompt=f"bp-{twin}{i}", input_tokens=n)
        for i, n in enumerate((2000, 3000, 4000)):
            fleet.call(f"nocache-{twin}", SONNET, provider="anthropic", task=f"c-{twin}", prompt=f"cp-{twin}{i}",
                       input_tokens=n)
        for i in range(12):
            fleet.call(f"big-{twin}", GPT4O, task=f"k-{twin}{i}", prompt=f"kp-{twin}{i}", task_type="classification",
                       input_tokens=3000, output_tokens=20)
    for i in range(12):
        fleet.call("small", MINI, task=f"s{i}", prompt=f"sp{i}", task_type="classification", input_tokens=2500,
                   output_tokens=15)
    fleet.load(ch_client, ch_database)
    settings = RecommendSettings(prompt_bloat_tokens=100_000, min_monthly_saving_usd=Decimal(0))
    report = build_recommendations(ch_client, ch_database, OCT, settings)
    chosen = {r.kind: r for r in report.items if r.agent_id.endswith("-a")}
    assert set(chosen) == {"retry_waste", "caching", "prompt_bloat", "prompt_cache", "model_tiering"}

    with serve_store(ch_client, "127.0.0.1", 0, credentials=store_credentials) as store:
        for key, value in {"FINOPS_CLICKHOUSE_URL": "chdb:///nonexistent-owned-elsewhere",
                           "FINOPS_CLICKHOUSE_QUERY_URL": store.url, "FINOPS_CLICKHOUSE_DATABASE": ch_database,
                           "FINOPS_DATA_DIR": str(store_data_dir)}.items():
            monkeypatch.setenv(key, value)
        for kind, rec in chosen.items():
            argv = shlex.split(rec.sql_command())
            assert argv[:2] == ["finops", "sql"] and f"agent={rec.agent_id}" in argv
            parser = argparse.ArgumentParser(prog="finops")
            register(parser.add_subparsers(dest="command", required=True))
            args = parser.parse_args([*argv[1:], "--format", "json"])
            assert args.func(args) == 0
            rows = json.loads(capsys.readouterr().out)
            assert rows, kind
            assert {row["agent_id"] for row in rows} == {rec.agent_id}, kind
