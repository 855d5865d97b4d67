"""An alert destination down: budget breaches flow producer -> broker -> hot path -> sink (ledger) and hot path ->
``finops detect run`` -> ``finops alerts run`` -> a Slack stand-in that answers 500 to its first requests.

Reconciled: every valid event exactly once in ClickHouse at the independently computed cost, and every alert on
the alerts topic delivered to the destination exactly once (one 2xx per alert id), each breach alerted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from finops.topics import TopicNames
from schemas.wire import AvroCodec
from tests.faults.pipeline import Pipeline, fleet, reconcile, report
from tests.integration.hotpath_child import publish_fleet, read_all
from tests.integration.http_receiver import SERVER_ERROR, HttpReceiver, running_receiver
from tests.integration.test_sink_support import committed_offsets, end_offsets, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SLACK = "/slack/T0/B0/fault"
BREACH_AGENTS = ("breach-1", "breach-2", "breach-3")


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as r:
        yield r


def _policies() -> str:
    lines = ["policies:"]
    for agent in BREACH_AGENTS:
        lines += [f"  - policy_id: fault-{agent}", "    scope_type: agent", f"    scope_value: {agent}",
                  "    period: day", "    timezone: UTC", "    limit_usd: 1", "    mode: soft",
                  "    thresholds:", "      - {percent: 100, actions: [notify]}"]
    return "\n".join(lines) + "\n"


def _finops(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "finops.cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_alert_destination_down_delivers_each_alert_once(kafka_bootstrap: str, kafka_config: dict[str, Any],
                                                        topics: TopicNames, ch_client: Any, ch_database: str,
                                                        tmp_path: Path, receiver: HttpReceiver,
                                                        record_property: Callable[[str, object], None]) -> None:
    run = uuid.uuid4().hex[:8]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix, "FINOPS_DATA_DIR": str(tmp_path),
           # The alert worker's own embedded ClickHouse (delivery log); the session's path is held by this process.
           "FINOPS_CLICKHOUSE_URL": f"chdb://{tmp_path / 'alerts-ch'}",
           "FINOPS_CLICKHOUSE_QUERY_URL": "http://127.0.0.1:1",
           "FINOPS_ALERTING_SLACK_WEBHOOK_URL": receiver.url(SLACK),
           "FINOPS_CONTROL_SIGNING_KEY": "fault-signing-key"}
    for step in (["migrate"], ["policy", "apply", str(tmp_path / "policies.yaml")]):
        if step[0] == "policy":
            (tmp_path / "policies.yaml").write_text(_policies())
        done = subprocess.run([sys.executable, "-m", "finops.cli", *step], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # The destination is down for its first four requests (500s), then answers.
    receiver.script(SLACK, SERVER_ERROR, SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
    group = f"fault-alerts-{run}"
    roles = [
        _finops(["detect", "run", "--no-clickhouse", "--from-earliest"], env, tmp_path / "detect.log"),
        _finops(["alerts", "run", "--group", group, "--cooldown", "0"], env, tmp_path / "alerts.log"),
    ]
    events = fleet(tmp_path, 1500, seed=41)
    now = datetime.now(UTC)
    breaches = [{**events[i], "event_id": str(uuid.uuid4()), "agent_id": agent, "occurred_at": now,
                 "provider": "openai", "model": "gpt-4o-2024-08-06", "input_tokens": 1_000_000,
                 "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 100, "reasoning_tokens": 0}
                for i, agent in enumerate(BREACH_AGENTS)]
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    try:
        publish_fleet(kafka_bootstrap, topics.usage, events[:700] + breaches + events[700:], dup_share=0.0,
                      bad_share=0.0, seed=41)

        def alerted() -> bool:
            for proc, name in zip(roles, ("detect", "alerts"), strict=True):
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
            bodies = [r.body.decode() for r in receiver.delivered(SLACK)]
            return all(any(agent in body for body in bodies) for agent in BREACH_AGENTS)

        wait_for(alerted, 180, "a delivered Slack post for every breach", interval=0.2)
        pipeline.wait_ledger(len(events) + len(breaches))
        # Settled: the alert worker has committed every alert on the topic (delivered or handed to the outbox).
        ends = end_offsets(kafka_config, topics.alerts)
        wait_for(lambda: all(committed_offsets(kafka_config, group, topics.alerts).get(tp, -1) >= end
                             for tp, end in ends.items() if end > 0), 60, "the alert worker's commits")
        wait_for(lambda: len(receiver.delivered(SLACK)) >= sum(ends.values()), 60, "every alert delivered")
    finally:
        pipeline.stop()
        for proc in roles:
            proc.terminate()
            proc.wait(30)
    codec = AvroCodec()
    alerts = [codec.decode(m.value())[1] for m in read_all(kafka_bootstrap, topics.alerts)]
    bodies = [json.loads(r.body) for r in receiver.delivered(SLACK)]
    texts = [json.dumps(b) for b in bodies]
    delivered = Counter(a["alert_id"] for a in alerts for t in texts
                        if quote(a["alert_id"], safe="") in t or a["alert_id"] in t)
    assert alerts, "no alert reached the alerts topic"
    assert {a["alert_id"]: delivered[a["alert_id"]] for a in alerts} == {a["alert_id"]: 1 for a in alerts}
    assert len(bodies) == len(alerts), "a post that matches no alert (or a second post of one)"
    breach_alerts = {a["agent_id"] for a in alerts if a["kind"] == "budget_threshold"}
    assert breach_alerts == set(BREACH_AGENTS)
    failed = len(receiver.requests(SLACK, status=500))
    result = reconcile(ch_client, ch_database, events + breaches, bootstrap=kafka_bootstrap, topics=topics)
    report(record_property,
           f"Slack destination answering 500 to its first {failed} requests while {len(BREACH_AGENTS)} budget "
           f"breaches (1M-token gpt-4o calls against $1 budgets) flowed with {len(events)} fleet events",
           result.line() + f"; {len(alerts)} alerts on the topic, each delivered exactly once "
           f"({len(bodies)} accepted posts, {failed} refused), one per breached budget")
