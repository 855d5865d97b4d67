"""Support for the dashboard tests (no tests here): a seeded fleet in ClickHouse, a running `finops serve` app on a
free port, a recording publisher and a small HTTP client. Used by tests/integration/test_api*.py and
tests/e2e/test_dashboard_browser.py.

The fleet is hand-made ledger rows (tests/integration/ch_fixtures.py) placed relative to the real clock, because
``v_budget_utilisation`` evaluates budgets at ClickHouse's ``now()``: three teams, five agents, three models, tasks
that succeed and fail, budgets of every scope type, alerts, waste signals and a control command.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from dashboard.auth import TokenStore
from dashboard.server import DashboardConfig, build_app
from dashboard.store import Store
from tests.integration.ch_fixtures import insert_ledger, insert_rows, ledger_row

D = Decimal
TEAMS = ("payments", "search", "research")
# agent -> (team, project)
AGENTS: dict[str, tuple[str, str]] = {
    "pay-bot-1": ("payments", "checkout"),
    "pay-bot-2": ("payments", "refunds"),
    "search-ranker": ("search", "ranking"),
    "search-crawler": ("search", "crawl"),
    "lab-runner": ("research", "lab"),
}
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@dataclass
class Fleet:
    """What was seeded, and when 'now' was."""

    database: str
    now: datetime
    ledger: list[dict[str, Any]] = field(default_factory=list)


def _today_moment(now: datetime, minutes_ago: int) -> datetime:
    """A moment earlier today (UTC) - never yesterday, even just after midnight."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return max(now - timedelta(minutes=minutes_ago), start + timedelta(seconds=1))


def seed_fleet(client: Any, database: str, now: datetime | None = None) -> Fleet:
    """Insert the demo fleet into ``database`` (migrated) and return what was inserted."""
    now = now or datetime.now(UTC)
    fleet = Fleet(database, now)
    rows: list[dict[str, Any]] = []
    costs = {"gpt-4o": D("0.031250000000"), "gpt-4o-mini": D("0.001875000000"), "claude-sonnet-4": D("0.018000000000")}
    day_offsets = (0, 1, 2, 4, 9, 20, 45)  # 45 days back lies outside the 30-day trend
    for a_index, (agent, (team, project)) in enumerate(AGENTS.items()):
        for d_index, days_ago in enumerate(day_offsets):
            when = (_today_moment(now, 30 + a_index) if days_ago == 0
                    else now - timedelta(days=days_ago, minutes=a_index))
            for call in range(1 + (a_index + d_index) % 3):
                provider, model = MODELS[(a_index + call + d_index) % len(MODELS)]
                task = f"{agent}-t{d_index}"
                status = "error" if (a_index == 1 and call == 0 and d_index % 2 == 0) else "ok"
                rows.append(ledger_row(
                    costs[model] * (a_index + 1) + D("0.000000000007") * call, when + timedelta(seconds=call),
                    agent_id=agent, team=team, project=project, provider=provider, model=model, task_id=task,
                    status=status, attempt=1 + call % 2, input_tokens=1000 * (call + 1), output_tokens=200,
                    source_offset=len(rows),
                ))
    insert_ledger(client, database, rows, token=f"seed-{uuid.uuid4().hex}")
    fleet.ledger = rows

    budgets = [
        ("bud-payments-month", "team", "payments", "month", "UTC", D("1.5"), "soft"),
        ("bud-ranking-week", "project", "ranking", "week", "Europe/Berlin", D("0.2"), "hard"),
        ("bud-lab-day", "agent", "lab-runner", "day", "UTC", D("0.05"), "soft"),
        ("bud-tag-cost-center", "tag", "cost_center=42", "month", "UTC", D("10"), "soft"),
    ]
    insert_rows(client, database, "budgets", [
        {"policy_id": p, "version": 1, "scope_type": st, "scope_value": sv, "period": per, "timezone": tz,
         "limit_usd": lim, "mode": mode, "thresholds": '[{"percent": 80, "actions": ["notify"]}]',
         "forecast": False, "max_task_cost_usd": None, "max_task_tokens": None, "max_call_tokens": None,
         "downgrade_model": None, "throttle_rate_per_minute": None, "enabled": True, "deleted": False,
         "updated_at": naive(now)}
        for p, st, sv, per, tz, lim, mode in budgets
    ])

    def alert(alert_id: str, kind: str, severity: str, team: str, agent: str, title: str, minutes: int,
              amount: str | None = None) -> dict[str, Any]:
        project = AGENTS[agent][1] if agent else ""
        return {"alert_id": alert_id, "dedup_key": f"{kind}:{team or 'org'}:{agent}", "kind": kind,
                "severity": severity, "state": "trigger", "occurred_at": naive(_today_moment(now, minutes)),
                "team": team, "project": project, "agent_id": agent, "policy_id": "", "model": "", "title": title,
                "summary": f"{title} (seeded)", "amount_usd": D(amount) if amount else None, "limit_usd": None,
                "details": {}, "actions": ["notify"]}

    insert_rows(client, database, "alerts", [
        alert("al-anomaly-pay", "anomaly", "warning", "payments", "pay-bot-1", "pay-bot-1 spends 4x its baseline", 5,
              "0.42"),
        alert("al-budget-search", "budget_threshold", "critical", "search", "search-ranker",
              "ranking weekly budget at 100%", 6, "0.21"),
        alert("al-anomaly-lab", "anomaly", "info", "research", "lab-runner", "lab-runner burst", 7, "0.05"),
        alert("al-approval-pay", "approval", "warning", "payments", "pay-bot-2", "pay-bot-2 asks to exceed its cap", 8),
        alert("al-unpriced", "unpriced_model", "warning", "", "", "unpriced model mystery-1", 9),
    ])
    insert_rows(client, database, "waste_signals", [
        {"signal_id": "ws-tier-pay", "kind": "model_tiering", "detected_at": naive(now),
         "occurred_at": naive(_today_moment(now, 20)), "team": "payments", "project": "checkout",
         "agent_id": "pay-bot-1", "task_id": "pay-bot-1-t0", "model": "gpt-4o", "avoidable_cost_usd": D("0.027"),
         "evidence": json.dumps({"suggested_model": "gpt-4o-mini", "calls": 3})},
        {"signal_id": "ws-retry-search", "kind": "retry_loop", "detected_at": naive(now),
         "occurred_at": naive(_today_moment(now, 21)), "team": "search", "project": "ranking",
         "agent_id": "search-ranker", "task_id": "search-ranker-t0", "model": "claude-sonnet-4",
         "avoidable_cost_usd": D("0.011"), "evidence": json.dumps({"repeats": 4})},
    ])
    insert_rows(client, database, "control_commands", [
        {"command_id": "cmd-throttle-pay1", "scope_type": "agent", "scope_value": "pay-bot-1", "action": "throttle",
         "rate_per_minute": 10, "target_model": None, "reason": "anomaly al-anomaly-pay", "issued_by": "policy-engine",
         "issued_at": naive(now - timedelta(minutes=4)), "expires_at": None, "policy_id": None, "key_id": "k1",
         "signature": "0" * 64, "received_at": naive(now - timedelta(minutes=4)), "verified": True},
    ])
    return fleet


@dataclass
class Published:
    topic: str
    key: str
    value: bytes


class RecordingPublisher:
    """Stands in for Kafka: keeps what was published."""

    def __init__(self) -> None:
        self.records: list[Published] = []

    def publish(self, topic: str, key: str, value: bytes) -> None:
        self.records.append(Published(topic, key, value))


def build_store(chdb_url: str, database: str) -> Store:
    from finops.clickhouse import connect

    return Store(connect(chdb_url, database=database, readonly=True),
                 connect(chdb_url, database=database), where="test chdb")


@dataclass
class RunningDashboard:
    url: str
    config: DashboardConfig
    publisher: RecordingPublisher

    def issue(self, role: str, *teams: str, subject: str = "tester", projects: tuple[str, ...] = ()) -> str:
        token, _ = TokenStore(self.config.store).issue(role, teams, subject=subject, created_by="test",
                                                       now=datetime.now(UTC), projects=projects)
        return token


@contextmanager
def running_dashboard(store: Store, *, refresh_seconds: float = 5.0,
                      kafka_config: Mapping[str, Any] | None = None) -> Iterator[RunningDashboard]:
    """Serve the app on a free port from a background thread's event loop; stop it on exit."""
    from aiohttp import web

    publisher = RecordingPublisher()
    config = DashboardConfig(store=store, publisher=publisher, signing_secret=b"test-signing-secret",
                             refresh_seconds=refresh_seconds, kafka_config=kafka_config)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(config), access_log=None)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as err:  # noqa: BLE001 - reported to the waiting test
            holder["error"] = err
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="dashboard-test", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("dashboard did not start within 30 s")
    if "error" in holder:
        raise holder["error"]
    try:
        yield RunningDashboard(f"http://127.0.0.1:{holder['port']}", config, publisher)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextmanager
def serving_database(chdb_url: str, database: str, *, refresh_seconds: float = 5.0) -> Iterator[RunningDashboard]:
    """The dashboard over a test store of ``database`` (see :func:`build_store`); the store is closed on exit."""
    store = build_store(chdb_url, database)
    try:
        with running_dashboard(store, refresh_seconds=refresh_seconds) as running:
            yield running
    finally:
        store.close()


def call(url: str, token: str | None = None, *, method: str = "GET", body: Any = None,
         headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request; returns ``(status, parsed JSON or text)`` for any status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local test server
            status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    text = raw.decode("utf-8")
    return status, json.loads(text) if "json" in ctype else text
