"""Budgets through the real broker: 80 % then 100 % give exactly two triggers for the period across a worker crash
and restart (state topic + offset skip), the next period starts clean (resolves, no trigger), a raised limit
resolves, a policy change is picked up without restart, and a bad policy file changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from finops.topics import TopicNames
from stream_jobs.detection import DetectionConfig, DetectionService
from stream_jobs.policies import (
    PolicyFileError,
    compute_diff,
    load_policy_text,
    load_published_policies,
    publish_changes,
)
from tests.integration.test_detection_support import OutputReader, make_priced, produce_priced

pytestmark = pytest.mark.integration

DAY = datetime(2025, 6, 2, tzinfo=UTC)
POLICY_YAML = """
policies:
  - policy_id: search-daily
    scope_type: team
    scope_value: search
    period: day
    timezone: UTC
    limit_usd: {limit}
    mode: soft
    thresholds:
      - {{percent: 80, actions: [notify]}}
      - {{percent: 100, actions: [notify]}}
"""


def _apply(kafka_config: dict[str, Any], topics: TopicNames, text: str) -> None:
    wanted = load_policy_text(text, source="test.yaml", now=DAY)
    published = load_published_policies(kafka_config, topics.policies)
    publish_changes(kafka_config, topics.policies, compute_diff(wanted, published))


def _service(kafka_config: dict[str, Any], topics: TopicNames, group: str,
             flush_interval_s: float = 0.2) -> DetectionService:
    service = DetectionService(kafka_config, topics, DetectionConfig(
        group_id=group, start_from="earliest", flush_interval_s=flush_interval_s, poll_timeout_s=0.1))
    service.start()
    return service


def _spend(at: datetime, cost: str, n: int = 1) -> list[dict[str, Any]]:
    return [make_priced(agent_id="agent-1", team="search", occurred_at=at + timedelta(seconds=i),
                        cost=Decimal(cost)) for i in range(n)]


def _triggers(records: list[dict[str, Any]], label: str) -> list[str]:
    return [r["dedup_key"] for r in records
            if r["kind"] == "budget_threshold" and r["state"] == "trigger" and r["dedup_key"].endswith(label)]


def test_two_alerts_across_a_crash_and_a_clean_next_period(kafka_config: dict[str, Any], topics: TopicNames) -> None:
    _apply(kafka_config, topics, POLICY_YAML.format(limit="10.00"))
    group = f"det-{uuid.uuid4().hex[:8]}"
    alerts = OutputReader(kafka_config, topics.alerts)
    produced = produce_priced(kafka_config, topics.priced, _spend(DAY + timedelta(hours=1), "0.85", 10))  # 85 %

    # No periodic flush: the state is written once, by hand, below, and no offset is ever committed.
    first = _service(kafka_config, topics, group, flush_interval_s=3600)
    alerts.wait_for(lambda r: len(_triggers(r, ":2025-06-02")) >= 1 and first.stats["events"] >= produced,
                    first.poll_once)
    # Crash after the state was written but before the offsets were committed: the restart replays every event.
    # (Dropping the producer first keeps the consumer's leave-group revoke from committing on close.)
    first._flush(commit=False)
    first._producer = None
    first._consumer.close()
    first._policy_consumer.close()

    produced += produce_priced(kafka_config, topics.priced, _spend(DAY + timedelta(hours=2), "0.50", 4))  # 105 %
    second = _service(kafka_config, topics, group)
    assert second.budgets.counters, "counters are restored from the state topic"
    # stats count every event read: reaching all 14 proves the first 10 were replayed.
    alerts.wait_for(lambda r: len(_triggers(r, ":2025-06-02")) >= 2 and second.stats["events"] >= produced,
                    second.poll_once)
    # Drain a few more polls: nothing else may arrive for the period.
    for _ in range(5):
        second.poll_once()
    alerts.drain(0.5)
    assert sorted(_triggers(alerts.records, ":2025-06-02")) == [
        "search-daily:team=search:100:2025-06-02", "search-daily:team=search:80:2025-06-02"]
    key = next(iter(second.budgets.counters))
    assert second.budgets.counters[key].spent == Decimal("10.50"), "the replayed events were not counted twice"

    # The next period starts clean: the old period's alerts resolve, nothing triggers for the new one.
    produce_priced(kafka_config, topics.priced, _spend(DAY + timedelta(days=1, hours=1), "0.10", 2))
    alerts.wait_for(lambda r: sum(1 for x in r if x["state"] == "resolve") >= 2, second.poll_once)
    second.close()
    resolved = sorted(r["dedup_key"] for r in alerts.records if r["state"] == "resolve")
    assert resolved == ["search-daily:team=search:100:2025-06-02", "search-daily:team=search:80:2025-06-02"]
    assert _triggers(alerts.records, ":2025-06-03") == []
    alerts.close()


def test_policy_changes_apply_without_restart_and_bad_files_change_nothing(
    kafka_config: dict[str, Any], topics: TopicNames,
) -> None:
    _apply(kafka_config, topics, POLICY_YAML.format(limit="1.00"))
    service = _service(kafka_config, topics, f"det-{uuid.uuid4().hex[:8]}")
    alerts = OutputReader(kafka_config, topics.alerts)
    produce_priced(kafka_config, topics.priced, _spend(DAY + timedelta(hours=1), "0.90"))
    alerts.wait_for(lambda r: len(_triggers(r, ":2025-06-02")) == 1, service.poll_once)

    # A file with an error is refused with its line and reason, and the published set stays as it was.
    bad = POLICY_YAML.format(limit="2.00").replace("percent: 100", "percent: 0")
    with pytest.raises(PolicyFileError) as refused:
        load_policy_text(bad, source="bad.yaml", now=DAY)
    assert "bad.yaml:12: policies[0].thresholds[1].percent: percent (0) must be in 1..1000" in str(refused.value)
    assert load_published_policies(kafka_config, topics.policies)["search-daily"].limit_usd == Decimal("1.00")

    # Raising the limit (a new version on the topic) resolves the 80 % alert in the running worker.
    _apply(kafka_config, topics, POLICY_YAML.format(limit="5.00"))
    alerts.wait_for(lambda r: any(x["state"] == "resolve" for x in r), service.poll_once)
    assert service.budgets.policies["search-daily"].version == 2
    service.close()
    alerts.close()
