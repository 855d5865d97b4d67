"""End to end through the real broker: a simulated day of a steady fleet with misbehaving agents injected, priced,
published to the priced topic and judged by the detection service; the simulator's answer key scores the output.

The priced events are made here with ``finops.pricing.engine.Pricer`` (what the hot path does), so this test does not
depend on the hot path being deployed.

Latency is measured in event time. The runaway is timed from its first event after the rate jump (the answer key's
start is the jump itself, and the simulator stamps an event with the call's finish time, so nothing can see the jump
before that event). The retry loop is timed from its first repeated call: a loop is a repetition, so its first call
is indistinguishable from any other call (a timed-out attempt lands 60 s after it was sent), so nothing can see the
loop before its first repeat arrives.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from finops.pricing.engine import Pricer
from finops.topics import TopicNames
from producers.simulator import Misbehaviour, Simulation, SimulationConfig
from stream_jobs.detection import DetectionConfig, DetectionService, waste_topic
from tests.integration.test_detection_support import OutputReader, price_usage, produce_priced

pytestmark = pytest.mark.e2e

RUNAWAY, LOOP, DUPLICATES, OVERSIZED = "agent-007", "agent-012", "agent-020", "agent-025"
EXPECTED_WASTE = {"runaway": "runaway", "retry_loop": "retry_loop", "duplicate_prompts": "duplicate_prompt",
                  "oversized_prompts": "oversized_prompt"}


def _culprit(alert: dict[str, Any]) -> str | None:
    """The agent an alert points at: its agent, or for a team anomaly the agent among its root causes."""
    if alert["agent_id"]:
        return str(alert["agent_id"])
    for part in alert["details"].get("root_cause_dimensions", "").split(","):
        if part.startswith("agent="):
            return part.removeprefix("agent=")
    return None


def test_simulated_day_detects_injected_misbehaviour_only(kafka_config: dict[str, Any], topics: TopicNames) -> None:
    config = SimulationConfig(
        seed=12, agents=30, teams=5, projects=10, rate_per_s=2.0, duration_s=86_400.0,
        misbehaviours=(Misbehaviour(kind="runaway", agent_id=RUNAWAY), Misbehaviour(kind="retry_loop", agent_id=LOOP),
                       Misbehaviour(kind="duplicate_prompts", agent_id=DUPLICATES),
                       Misbehaviour(kind="oversized_prompts", agent_id=OVERSIZED)),
    )
    simulation = Simulation(config)
    pricer = Pricer()
    events: list[dict[str, Any]] = []
    produced = produce_priced(kafka_config, topics.priced,
                              (events.append(e) or price_usage(pricer, e, offset=i)  # type: ignore[func-returns-value]
                               for i, e in enumerate(simulation.events())))
    key = simulation.answer_key
    injections = {i.kind: i for i in key.injections}

    service = DetectionService(kafka_config, topics, DetectionConfig(
        group_id=f"det-{uuid.uuid4().hex[:8]}", start_from="earliest", batch_size=5000, flush_interval_s=2.0))
    service.start()
    alerts = OutputReader(kafka_config, topics.alerts)
    waste = OutputReader(kafka_config, waste_topic(topics))
    # Caught up when every event was read and the detectors' clock has passed the end of the simulated day.
    alerts.wait_for(lambda _: service.stats["events"] >= produced, service.poll_once, deadline_s=600)
    for _ in range(20):
        service.poll_once()  # idle partitions age out of the watermark; the last windows close
    service.close()
    alerts.drain(1.0)
    waste.drain(1.0)
    alerts.close()
    waste.close()

    triggers = [a for a in alerts.records if a["state"] == "trigger"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for alert in triggers:
        kind = alert["details"].get("waste_kind", alert["kind"])
        by_kind.setdefault(kind, []).append(alert)

    def matches(alert: dict[str, Any]) -> bool:
        agent = _culprit(alert)
        at: datetime = alert["occurred_at"]
        return any(agent == inj.agent_id and inj.start - timedelta(minutes=5) <= at
                   <= (inj.end or key.end) + timedelta(minutes=15) for inj in key.injections)

    print(f"\nsimulated day: {produced} events, {len(triggers)} alert triggers, "
          f"{len(waste.records)} waste records; stats {service.stats}, late for anomalies "
          f"{service.anomalies.late_events}")
    for kind, items in sorted(by_kind.items()):
        good = sum(1 for a in items if matches(a))
        print(f"  {kind:18s} alerts {len(items):3d}  precision {good / len(items):.2f}")
    total_good = sum(1 for a in triggers if matches(a))
    precision = total_good / len(triggers) if triggers else 0.0
    found = {inj_kind: any(_culprit(a) == inj.agent_id for a in by_kind.get(EXPECTED_WASTE[inj_kind], []))
             for inj_kind, inj in injections.items()}
    recall = sum(found.values()) / len(found)
    print(f"  overall precision {precision:.2f} ({total_good}/{len(triggers)}), recall {recall:.2f} {found}")

    runaway = min(a["occurred_at"] for a in by_kind["runaway"] if _culprit(a) == RUNAWAY)
    runaway_inj = injections["runaway"]
    runaway_first = min(e["occurred_at"] for e in events if e["event_id"] in set(runaway_inj.event_ids))
    runaway_delay = (runaway - runaway_first).total_seconds()
    loop_inj = injections["retry_loop"]
    loop_times = sorted(e["occurred_at"] for e in events if e["event_id"] in set(loop_inj.event_ids))
    loop_alert = min(a["occurred_at"] for a in by_kind["retry_loop"] if _culprit(a) == LOOP)
    loop_delay = (loop_alert - loop_times[1]).total_seconds()
    print(f"  runaway detected {runaway_delay:.1f} s after its first event "
          f"({(runaway - runaway_inj.start).total_seconds():.1f} s after its rate jump); retry loop {loop_delay:.1f} s "
          f"after its first repeat ({(loop_alert - loop_inj.start).total_seconds():.1f} s after its first call)")

    # Event time, deterministic (seed 12): the first window holding enough evidence, not a whole 60 s one. Not 15 s:
    # by then this agent (about 1.3 tasks a minute) had started 4 tasks, a count its steady peers reach many times a
    # day (README, "How fast a runaway is found").
    assert 0 <= runaway_delay <= 21
    assert 0 <= loop_delay <= 60
    assert found["duplicate_prompts"], "the duplicate prompts are flagged"
    steady_anomalies = [a for a in by_kind.get("anomaly", []) if not matches(a)]
    assert steady_anomalies == [], f"anomalies on steady agents: {[a['title'] for a in steady_anomalies]}"
    assert precision == 1.0 and recall == 1.0
    # Every waste record carries an avoidable cost the sink can land in waste_signals.
    assert waste.records and all(r["kind"] == "waste" and "avoidable_cost_usd" in r["details"] for r in waste.records)
