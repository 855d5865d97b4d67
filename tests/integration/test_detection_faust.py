"""The Faust wiring: ``register_detection`` adds a service that runs the detection loop on its own thread when the
worker starts and stops it with the worker; an alert proves the loop ran against the real broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import faust
import pytest

from finops.settings import load_settings
from finops.topics import TopicNames
import stream_jobs.detection as detection
from stream_jobs.detection import register_detection
from stream_jobs.policies import compute_diff, load_policy_text, publish_changes
from tests.integration.hotpath_child import isolated_data_dir
from tests.integration.test_detection_support import OutputReader, make_priced, produce_priced

pytestmark = pytest.mark.integration

POLICY = """
policies:
  - {policy_id: tiny, scope_type: agent, scope_value: a1, period: day, limit_usd: 1, mode: soft,
     thresholds: [{percent: 50, actions: [notify]}]}
"""


def test_registered_service_runs_the_loop_and_stops(kafka_config: dict[str, Any], kafka_bootstrap: str,
                                                     topics: TopicNames, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2025, 6, 2, 10, tzinfo=UTC)
    publish_changes(kafka_config, topics.policies,
                    compute_diff(load_policy_text(POLICY, source="p.yaml", now=now), {}))
    produce_priced(kafka_config, topics.priced,
                   [make_priced(agent_id="a1", team="t", occurred_at=now, cost=Decimal("0.75"))])
    settings = load_settings({"FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
                              "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
                              # No ClickHouse here: the service must run without reconciliation.
                              "FINOPS_CLICKHOUSE_URL": "http://127.0.0.1:9/finops",
                              "FINOPS_DATA_DIR": isolated_data_dir()})
    app = faust.App("detection-wiring-test", broker=f"kafka://{kafka_bootstrap}")
    register_detection(app, settings)
    (service_class,) = app._extra_services
    service = service_class()
    # A brand-new group starts at the newest offset in production; this test's event was produced first, so let
    # the service read from the start of the topic.
    monkeypatch.setattr(detection, "build_detection_config", lambda s: detection.DetectionConfig(
        group_id=f"wiring-{topics.prefix}", start_from="earliest"))
    alerts = OutputReader(kafka_config, topics.alerts)
    try:
        asyncio.run(service.on_start())
        alerts.wait_for(lambda r: any(a["dedup_key"] == "tiny:agent=a1:50:2025-06-02" for a in r), lambda: None)
    finally:
        asyncio.run(service.on_stop())
        alerts.close()
    assert not service._thread.is_alive()
