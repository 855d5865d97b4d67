"""The whole usage path, producer SDK -> broker -> hot path -> sinks -> ClickHouse, with the ledger sink killed in
the middle of a batch (after its insert, before its commit) and restarted with another batch size.

Afterwards the ledger, the hourly and daily rollups, the 1-minute spend partials and every metric view that is a
function of the ledger agree *exactly* (Decimal equality) with totals computed independently from the input:
each simulated event priced on its own by genai-prices' reference ``calc_price``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.topics import TopicNames
from producers.producer import UsageProducer
from tests.faults.pipeline import Pipeline, fleet
from tests.integration.hotpath_child import Q12
from tests.integration.test_sink_support import caught_up, start_sink, wait_for
from tests.integration.test_sink_worker import CrashOnCommit, _Crash

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _reference_cost(event: dict[str, Any]) -> Decimal:
    from genai_prices import Usage, calc_price

    from finops.pricing.engine import to_genai_usage

    price = calc_price(Usage(**to_genai_usage(event)), event["model"], provider_id=event["provider"],
                       genai_request_timestamp=event["occurred_at"])
    return price.total_price.quantize(Q12, ROUND_HALF_EVEN)


def _sums(rows: list[tuple[Any, ...]]) -> dict[Any, Decimal]:
    return {tuple(r[:-1]) if len(r) > 2 else r[0]: Decimal(r[-1]) for r in rows if Decimal(r[-1]) != 0}


def test_fleet_through_producer_jobs_and_sink_with_a_sink_restart_mid_batch(
    kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str, tmp_path: Path
) -> None:
    events = fleet(tmp_path, 3000, seed=5, agents=60)
    producer = UsageProducer(bootstrap=kafka_config["bootstrap.servers"], topic=topics.usage, source="e2e",
                             spool_dir=tmp_path / "spool", register_atexit=False)
    for event in events:
        producer.emit(event)
    assert producer.flush(60) == 0
    producer.close()

    # Independent expectations, from the input file alone.
    expected: dict[str, dict[Any, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    calls_by_day: dict[Any, int] = defaultdict(int)
    for event in events:
        cost = _reference_cost(event)
        hour = event["occurred_at"].replace(minute=0, second=0, microsecond=0, tzinfo=None)
        day = event["occurred_at"].date()
        expected["total"][None] += cost
        expected["team"][event["team"]] += cost
        expected["agent_day"][(day, event["agent_id"])] += cost
        expected["model"][(event["provider"], event["model"])] += cost
        expected["hour_team"][(hour, event["team"])] += cost
        if event.get("task_id"):
            expected["task"][event["task_id"]] += cost
        calls_by_day[day] += 1

    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database)
    pipeline.start_hot_path()
    group = f"e2e-sink-{uuid.uuid4().hex[:6]}"
    crashing: list[CrashOnCommit] = []

    def crash_on_third_commit(consumer: Any) -> CrashOnCommit:
        crashing.append(CrashOnCommit(consumer, crash_at=3))
        return crashing[-1]

    first = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=group, batch_rows=400,
                       consumer_wrapper=crash_on_third_commit)
    first.thread.join(180)
    assert first.errors and isinstance(first.errors[0], _Crash), first.errors
    first.close()

    second = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=group, batch_rows=257)
    spend = start_sink("spend", ch_client, ch_database, kafka_config, topics, group=f"{group}-spend")
    try:
        def everything_landed() -> bool:
            pipeline.check()
            rows = ch_client.query(f"SELECT count() FROM {ch_database}.usage_ledger").result_rows[0][0]
            return int(rows) >= len(events) and caught_up(kafka_config, second, topics.priced)()

        wait_for(everything_landed, 240, "every event in the ledger and the sink caught up")
        pipeline.stop()  # the hot path closes and flushes its open windows before it returns
        wait_for(caught_up(kafka_config, spend, topics.spend), 120, "the spend sink to catch up")
    finally:
        second.stop()
        spend.stop()
        pipeline.stop()
    assert second.worker.stats.duplicates > 0, "the restart re-delivered nothing: the crash was not mid-stream"

    db = ch_database
    q = lambda sql: ch_client.query(sql).result_rows  # noqa: E731
    # Ledger: every event exactly once (no FINAL: a duplicate row would show), cost to the 12th decimal.
    count, distinct, total = q(f"SELECT count(), uniqExact(source, event_id), sum(cost_usd) FROM {db}.usage_ledger")[0]
    assert (count, distinct) == (len(events), len(events))
    assert Decimal(total) == expected["total"][None]
    # Rollups fed by materialized views: not one retried or re-delivered batch counted twice.
    assert _sums(q(f"SELECT toDateTime(hour), team, sum(cost_usd) FROM {db}.spend_hourly GROUP BY 1, 2")) == \
        {k: v for k, v in expected["hour_team"].items() if v}
    assert _sums(q(f"SELECT day, agent_id, sum(cost_usd) FROM {db}.spend_daily GROUP BY 1, 2")) == \
        {k: v for k, v in expected["agent_day"].items() if v}
    assert {d: int(n) for d, n in q(f"SELECT day, sum(calls) FROM {db}.spend_daily GROUP BY day")} == calls_by_day
    # 1-minute partials from the stream, summed across partitions (FINAL collapses re-emitted windows).
    assert _sums(q(f"SELECT key, sum(cost_usd) FROM {db}.spend_1m FINAL WHERE dimension = 'team' GROUP BY key")) == \
        {k: v for k, v in expected["team"].items() if v}
    # Metric views.
    assert _sums(q(f"SELECT day, agent_id, sum(cost_usd) FROM {db}.v_cost_per_agent_day GROUP BY 1, 2")) == \
        {k: v for k, v in expected["agent_day"].items() if v}
    assert _sums(q(f"SELECT provider, model, sum(cost_usd) FROM {db}.v_model_cost_distribution GROUP BY 1, 2")) == \
        {k: v for k, v in expected["model"].items() if v}
    assert _sums(q(f"SELECT task_id, cost_usd FROM {db}.v_cost_per_task")) == \
        {k: v for k, v in expected["task"].items() if v}
    trend = _sums(q(f"SELECT team, sum(cost_usd) FROM {db}.v_cost_trend GROUP BY team"))
    assert trend == {k: v for k, v in expected["team"].items() if v}
    per_task_total = Decimal(q(f"SELECT sum(total_task_cost_usd) FROM {db}.v_cost_per_successful_task")[0][0])
    assert per_task_total == sum(expected["task"].values(), Decimal(0))
    shares = q(f"SELECT day, sum(share_pct) FROM {db}.v_model_cost_distribution GROUP BY day")
    for _, share in shares:  # each day's shares add up to 100 % (truncated at 12 places per model)
        assert Decimal("99.99999999") <= Decimal(share) <= Decimal(100)
