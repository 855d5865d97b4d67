"""Detection against the real broker and the real ledger (chdb) when priced events are re-sent across a restart:
the same events again at new offsets (what the hot path's replay does) are not counted twice, the budget counter
equals the ledger and no false threshold fires; and a counter above the ledger (re-sends older than the dedupe
rebuild) is lowered to it by reconciliation, once the ledger sink has committed past what the counter counted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.topics import TopicNames
from stream_jobs.detection import ClickHouseLedgerReader, DetectionConfig, DetectionService
from stream_jobs.policies import compute_diff, load_policy_text, load_published_policies, publish_changes
from tests.integration.test_detection_support import OutputReader, make_priced, produce_priced
from tests.integration.test_sink_support import caught_up, start_sink, wait_for

pytestmark = pytest.mark.integration

DAY = datetime(2025, 6, 2, tzinfo=UTC)
POLICY = """
policies:
  - policy_id: search-daily
    scope_type: team
    scope_value: search
    period: day
    timezone: UTC
    limit_usd: 10.00
    mode: hard
    thresholds:
      - {percent: 80, actions: [notify]}
      - {percent: 100, actions: [notify, suspend]}
"""


def _apply_policy(kafka_config: dict[str, Any], topics: TopicNames) -> None:
    wanted = load_policy_text(POLICY, source="test.yaml", now=DAY)
    publish_changes(kafka_config, topics.policies,
                    compute_diff(wanted, load_published_policies(kafka_config, topics.policies)))


def _events() -> list[dict[str, Any]]:
    """$6 of search spend at 01:xx (60 % of the budget), then one event of another team three hours later on the
    same agent (same partition), which moves detection's event-time clock past the settle time of hour 01."""
    spend = [make_priced(agent_id="agent-1", team="search", occurred_at=DAY + timedelta(hours=1, seconds=i),
                         cost=Decimal("0.5")) for i in range(12)]
    clock = make_priced(agent_id="agent-1", team="other", occurred_at=DAY + timedelta(hours=4), cost=Decimal("0.01"))
    return [*spend, clock]


def _service(kafka_config: dict[str, Any], topics: TopicNames, group: str, sink_group: str, ledger: Any,
             **changes: Any) -> DetectionService:
    config = DetectionConfig(group_id=group, start_from="earliest", flush_interval_s=0.2, poll_timeout_s=0.1,
                             idle_partition_s=0.1, reconcile_interval_s=3600, ledger_sink_group=sink_group,
                             **changes)
    service = DetectionService(kafka_config, topics, config, ledger=ledger)
    service.start()
    return service


def _ledger_sum(ch_client: Any, db: str) -> Decimal:
    rows = ch_client.query(f"SELECT sum(cost_usd) FROM {db}.usage_ledger FINAL WHERE team = 'search'").result_rows
    return Decimal(rows[0][0] or 0)


def _budget_triggers(records: list[dict[str, Any]]) -> list[str]:
    return sorted(r["dedup_key"] for r in records if r["kind"] == "budget_threshold" and r["state"] == "trigger")


def _pump_until(service: DetectionService, condition: Any, what: str) -> None:
    def step() -> bool:
        service.poll_once()
        return bool(condition())

    wait_for(step, timeout=60, what=what)


def test_events_re_sent_after_a_restart_are_not_counted_twice(
        kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str) -> None:
    _apply_policy(kafka_config, topics)
    events = _events()
    group, sink_group = f"det-{uuid.uuid4().hex[:8]}", f"sink-{uuid.uuid4().hex[:8]}"
    ledger = ClickHouseLedgerReader(ch_client, ch_database)
    sink = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=sink_group)
    alerts = OutputReader(kafka_config, topics.alerts)
    try:
        produce_priced(kafka_config, topics.priced, events)
        first = _service(kafka_config, topics, group, sink_group, ledger)
        _pump_until(first, lambda: first.stats["events"] == len(events), "the first run counted every event")
        first.close()  # commits: the restart resumes after these offsets

        # The restart: the same priced events arrive again, at new offsets.
        produce_priced(kafka_config, topics.priced, events)
        second = _service(kafka_config, topics, group, sink_group, ledger)
        _pump_until(second, lambda: second.stats["duplicates"] == len(events), "every re-sent event was seen")
        assert second.stats["dedupe_rebuilt"] == len(events), "the dedupe was rebuilt from the applied messages"
        assert second.stats["events"] == 0
        wait_for(caught_up(kafka_config, sink, topics.priced), timeout=60, what="the ledger sink caught up")
        second._reconcile_all()  # noqa: SLF001 - the periodic pass, now
        second.close()

        counter = next(c for c in second.budgets.counters.values() if c.policy_id == "search-daily")
        assert counter.spent == _ledger_sum(ch_client, ch_database) == Decimal("6.0")
        assert second.stats["reconciled_up"] == second.stats["reconciled_down"] == 0
        alerts.drain(0.5)
        assert _budget_triggers(alerts.records) == []  # 60 %: no 80 %, no false 100 % (and no suspension)
    finally:
        sink.stop()
        alerts.close()


def test_reconciliation_lowers_a_counter_above_the_ledger_once_the_sink_has_written_it(
        kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str) -> None:
    _apply_policy(kafka_config, topics)
    events = _events()
    group, sink_group = f"det-{uuid.uuid4().hex[:8]}", f"sink-{uuid.uuid4().hex[:8]}"
    ledger = ClickHouseLedgerReader(ch_client, ch_database)
    alerts = OutputReader(kafka_config, topics.alerts)
    produce_priced(kafka_config, topics.priced, events)
    first = _service(kafka_config, topics, group, sink_group, ledger)
    _pump_until(first, lambda: first.stats["events"] == len(events), "the first run counted every event")
    first.close()
    # Re-sent long after (beyond what the rebuild reads back: here nothing), so the dedupe cannot catch them.
    produce_priced(kafka_config, topics.priced, events)
    second = _service(kafka_config, topics, group, sink_group, ledger, dedupe_rebuild_s=0, dedupe_max_entries=1)
    sink = None
    try:
        _pump_until(second, lambda: second.stats["events"] >= len(events) - 1, "the re-sent events were read")
        counter = next(c for c in second.budgets.counters.values() if c.policy_id == "search-daily")
        assert counter.spent > Decimal("10")  # double counted: over the limit
        alerts.wait_for(lambda r: "search-daily:team=search:100:2025-06-02" in _budget_triggers(r), second.poll_once)

        # The ledger sink has not run: the ledger lags, which must not look like over-counting.
        second._reconcile_all()  # noqa: SLF001
        assert counter.spent > Decimal("10") and second.stats["reconciled_down"] == 0

        sink = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=sink_group)
        wait_for(caught_up(kafka_config, sink, topics.priced), timeout=60, what="the ledger sink caught up")
        second._reconcile_all()  # noqa: SLF001
        assert counter.spent == _ledger_sum(ch_client, ch_database) == Decimal("6.0")
        assert second.stats["reconciled_down"] == 1
        alerts.wait_for(lambda r: {"search-daily:team=search:100:2025-06-02", "search-daily:team=search:80:2025-06-02"}
                        <= {x["dedup_key"] for x in r if x["state"] == "resolve"}, second.poll_once)
    finally:
        second.close()
        if sink is not None:
            sink.stop()
        alerts.close()
