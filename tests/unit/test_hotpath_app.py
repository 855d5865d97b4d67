"""The stream app's pure parts (team-day spend table update) and the ``finops price`` request parsing."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.errors import ConfigError
from stream_jobs.app import compute_team_day_key, compute_team_day_update
from stream_jobs.cli import load_price_request

pytestmark = pytest.mark.unit

DAY0 = int(datetime(2025, 6, 2, tzinfo=UTC).timestamp()) * 1_000_000
MIN = 60_000_000


def partial(minute: int, partition: int, cost: str, calls: int = 1, team: str = "search") -> dict[str, Any]:
    start = DAY0 + minute * MIN
    return {
        "aggregate_id": f"{start}:team:{team}:{partition}", "window_start": datetime.fromtimestamp(start / 1e6, UTC),
        "dimension": "team", "key": team, "source_partition": partition, "cost_usd": Decimal(cost), "calls": calls,
        "unpriced_calls": 0, "errors": 0,
    }  # fmt: skip


def test_key_is_team_and_utc_day() -> None:
    assert compute_team_day_key("search", DAY0 + 1439 * MIN) == "search|2025-06-02"
    assert compute_team_day_key("search", DAY0 + 1440 * MIN) == "search|2025-06-03"


def test_each_partial_is_applied_once_in_any_order() -> None:
    partials = [partial(m, p, f"0.{m:02d}{p}", calls=m + p) for m in (0, 1, 59, 1439) for p in (0, 1, 2)]
    expected_cost = sum((p["cost_usd"] for p in partials), Decimal(0))
    expected_calls = sum(p["calls"] for p in partials)
    rng = random.Random(4)
    for _ in range(5):
        # Every partial delivered twice (a redelivery, a re-emission), in a random order.
        stream = partials * 2
        rng.shuffle(stream)
        value: dict[str, Any] | None = None
        applied = 0
        for p in stream:
            updated = compute_team_day_update(value, p)
            if updated is not None:
                value = json.loads(json.dumps(updated))  # what the JSON changelog gives back
                applied += 1
        assert applied == len(partials)
        assert value is not None
        assert Decimal(value["cost_usd"]) == expected_cost and value["calls"] == expected_calls


def test_load_price_request_defaults_and_refusals() -> None:
    now = datetime(2025, 6, 2, 9, tzinfo=UTC)
    event = load_price_request('{"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "reported_cost": 0.1}',
                               now)  # fmt: skip
    assert event["occurred_at"] == now and event["reported_cost"] == Decimal("0.1")
    event = load_price_request('{"provider": "openai", "model": "gpt-4o", "occurred_at": "2024-01-01T00:00:00Z"}', now)
    assert event["occurred_at"] == datetime(2024, 1, 1, tzinfo=UTC)
    for bad in ("[1]", "{", '{"model": "gpt-4o"}', '{"provider": "openai", "model": "x", "input_tokens": 1.5}',
                '{"provider": "openai", "model": "x", "occurred_at": "yesterday"}'):  # fmt: skip
        with pytest.raises(ConfigError):
            load_price_request(bad, now)


def test_finops_price_explains_or_says_why_unpriced(capsys: pytest.CaptureFixture[str]) -> None:
    from finops.cli import main

    code = main(["price", "--json", '{"provider": "openai", "model": "gpt-4o", "input_tokens": 1000000, '
                                    '"output_tokens": 1000000, "occurred_at": "2025-06-02T09:00:00Z"}'])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "input_tokens: 1000000" in out and "total cost_usd = $12.500000000000" in out
    code = main(["price", "--json", '{"provider": "openai", "model": "atlas-xl-preview", "input_tokens": 5}'])
    out = capsys.readouterr().out
    assert code == 1 and "UNPRICED" in out and "atlas-xl-preview" in out
