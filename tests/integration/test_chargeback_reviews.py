"""Cost reviews (weekly, monthly) with the Slack digest posted to a local receiver, the review schedule, and the
provider view with projection and discount / commitment what-ifs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from governance.config import RecommendSettings, ReviewSchedule
from governance.ledger import compute_priced_row, insert_ledger_rows
from governance.period import parse_period
from governance.providers import build_provider_view, compute_commit_saving
from governance.providers import render_html as providers_html
from governance.review import build_review, build_slack_digest, compute_next_run, render_html, send_digest
from tests.integration.test_chargeback import replay_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server standing in for a Slack incoming webhook; records the JSON bodies."""
    received: list[dict[str, Any]] = []
    got = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
            got.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000", received
    server.shutdown()
    thread.join(timeout=10)


def test_weekly_review_and_digest(ch_client: Any, ch_database: str,
                                  receiver: tuple[str, list[dict[str, Any]]]) -> None:
    # two weeks of traffic: the week of 2026-10-05 and the one before; the review runs on Monday 2026-10-12
    rows = replay_fleet(ch_client, ch_database, start=datetime(2026, 9, 28, tzinfo=UTC), duration_s=14 * 86400,
                        rate_per_s=0.01, misbehaviours=[{"kind": "retry_loop", "agent_id": "agent-003"}])
    now = datetime(2026, 10, 12, 8, 0, tzinfo=UTC)
    review = build_review(ch_client, ch_database, "weekly", now,
                          recommend=RecommendSettings(min_monthly_saving_usd=Decimal(0)))
    week = [r for r in rows if datetime(2026, 10, 5, tzinfo=UTC) <= r["occurred_at"] < datetime(2026, 10, 12,
                                                                                                   tzinfo=UTC)]
    assert review.period.label == "2026-W41"
    assert review.total_usd == sum((r["cost_usd"] for r in week), Decimal(0))
    assert review.movers and abs(review.movers[0].change_usd) >= abs(review.movers[-1].change_usd)
    assert review.recommendations is not None
    assert any(r.kind == "retry_waste" and r.agent_id == "agent-003" for r in review.recommendations.items)
    page = render_html(review)
    assert "<svg" in page and "Top movers" in page

    url, received = receiver
    digest = build_slack_digest(review)
    assert send_digest(digest, url) == 200
    assert received == [digest]
    assert received[0]["blocks"][0]["type"] == "header" and "2026-W41" in received[0]["text"]
    assert "*Savings found*" in received[0]["blocks"][1]["text"]["text"]


def test_monthly_review_cost_per_successful_task(ch_client: Any, ch_database: str) -> None:
    rows = replay_fleet(ch_client, ch_database, start=datetime(2026, 10, 10, tzinfo=UTC), duration_s=6 * 3600)
    review = build_review(ch_client, ch_database, "monthly", datetime(2026, 11, 1, 8, tzinfo=UTC))
    assert review.period.label == "2026-10"
    tasks = {r["task_id"] for r in rows if r["task_id"]}
    assert review.tasks == len(tasks)
    last: dict[str, tuple[Any, int, str]] = {}
    for r in rows:
        if r["task_id"]:
            key = (r["occurred_at"], r["attempt"])
            if r["task_id"] not in last or key > last[r["task_id"]][:2]:
                last[r["task_id"]] = (r["occurred_at"], r["attempt"], r["status"])
    successful = sum(1 for v in last.values() if v[2] == "ok")
    assert review.successful_tasks == successful
    task_cost = sum((r["cost_usd"] for r in rows if r["task_id"]), Decimal(0))
    assert review.cost_per_successful_task == task_cost / successful
    assert "Six-month trend" in render_html(review)
    digest = build_slack_digest(review)
    assert "per successful task" in digest["blocks"][1]["text"]["text"]


def test_review_schedule() -> None:
    schedule = ReviewSchedule(weekly_weekday=0, weekly_hour=8, monthly_day=1, monthly_hour=8)
    assert compute_next_run(datetime(2026, 10, 7, 12, tzinfo=UTC), "weekly", schedule) == \
        datetime(2026, 10, 12, 8, tzinfo=UTC)
    assert compute_next_run(datetime(2026, 10, 12, 8, tzinfo=UTC), "weekly", schedule) == \
        datetime(2026, 10, 19, 8, tzinfo=UTC)
    assert compute_next_run(datetime(2026, 12, 15, tzinfo=UTC), "monthly", schedule) == \
        datetime(2027, 1, 1, 8, tzinfo=UTC)
    assert compute_next_run(datetime(2026, 12, 1, 7, tzinfo=UTC), "monthly", schedule) == \
        datetime(2026, 12, 1, 8, tzinfo=UTC)


def test_provider_view(ch_client: Any, ch_database: str) -> None:
    pricer = Pricer()
    rows = []
    # openai grows 10 % a month over four months: 1000, 1100, 1210, 1331 calls of a fixed size
    for month, calls in ((7, 1000), (8, 1100), (9, 1210), (10, 1331)):
        for i in range(calls):
            rows.append(compute_priced_row(
                {"event_id": f"o{month}-{i}", "source": "t", "occurred_at": datetime(2026, month, 3, tzinfo=UTC)
                 + timedelta(seconds=i), "agent_id": "a", "team": "t", "project": "p", "provider": "openai",
                 "model": "gpt-4o-mini-2024-07-18", "input_tokens": 10_000, "output_tokens": 500}, pricer,
                priced_at=datetime(2026, 11, 1, tzinfo=UTC)))
    insert_ledger_rows(ch_client, ch_database, rows)
    per_call = rows[0]["cost_usd"]
    view = build_provider_view(ch_client, ch_database, parse_period("2026-10"), months=4,
                               discount_pct=Decimal(10), commit_usd=per_call * 1100, commit_discount_pct=Decimal(20))
    spend = view.provider_months()["openai"]
    assert list(spend.values()) == [per_call * n for n in (1000, 1100, 1210, 1331)]
    growth = view.growth["openai"]
    assert growth is not None and abs(growth - Decimal("0.1")) < Decimal("1e-20")
    [(m1, p1), (m2, p2), (m3, p3)] = view.projection["openai"]
    assert (m1, m2, m3) == ("2026-11", "2026-12", "2027-01")
    assert abs(p1 - per_call * Decimal("1464.1")) <= Decimal("0.01")
    assert view.discount_saving()["openai"] == sum(spend.values(), Decimal(0)) / 10
    assert view.commit_saving()["openai"] == sum(
        (compute_commit_saving(s, per_call * 1100, Decimal(20)) for s in spend.values()), Decimal(0))
    # an unused commitment costs money: 1000 calls against a 1100-call commitment at 20 % off
    assert compute_commit_saving(per_call * 1000, per_call * 1100, Decimal(20)) == per_call * 1000 - per_call * 880
    calls = sum(r.calls for r in view.rows)
    assert calls == len(rows)
    assert providers_html(view).count("<svg") == 2
