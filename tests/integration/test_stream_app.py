"""The stream worker as users run it (``finops stream run``) against the real broker: the Faust app starts, its
hot-path service prices and windows the usage topic, and the Faust agent consumes the spend topic into the
per-team, per-day table (read back from the table's changelog). SIGTERM stops it cleanly (exit 0), after the hot
path has committed everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops.topics import TopicNames
from stream_jobs.app import compute_team_day_key
from tests.integration.hotpath_child import (
    committed_offsets,
    end_offsets,
    independent_team_totals,
    load_fleet,
    publish_fleet,
    read_all,
    wait_until,
    write_fleet,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _expected_team_days(events: list[dict[str, Any]]) -> dict[str, tuple[Decimal, int]]:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        micros = int(event["occurred_at"].timestamp()) * 1_000_000
        by_key.setdefault(compute_team_day_key(event["team"], micros), []).append(event)
    out: dict[str, tuple[Decimal, int]] = {}
    for key, group in by_key.items():
        [(_, totals)] = independent_team_totals(group).items()
        out[key] = totals
    return out


def _table(bootstrap: str, changelog: str) -> dict[str, tuple[Decimal, int]]:
    if changelog not in _topics(bootstrap):
        return {}
    last: dict[str, Any] = {}
    for msg in read_all(bootstrap, changelog):
        last[json.loads(msg.key())] = json.loads(msg.value()) if msg.value() is not None else None
    return {k: (Decimal(v["cost_usd"]), v["calls"]) for k, v in last.items() if v is not None}


def _topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15).topics)


def test_worker_runs_hot_path_service_and_spend_agent(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.jsonl"
    write_fleet(fleet, events=4000, agents=120, seed=31, rate=20.0)
    events = load_fleet(fleet)
    publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.01, bad_share=0.0, seed=31)
    ends = end_offsets(kafka_bootstrap, topics.usage)
    group = f"hp-app-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
        "FINOPS_KAFKA_USAGE_PARTITIONS": "3",
        "FINOPS_STREAM_GROUP_ID": group,
        "FINOPS_STREAM_IDLE_CLOSE_SECONDS": "1",
        "FINOPS_STREAM_GRACE_SECONDS": "2",
        "FINOPS_DATA_DIR": str(tmp_path / "data"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "finops.cli", "stream", "run"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    changelog = f"{topics.prefix}finops-stream-spend-team-day-changelog"
    expected = _expected_team_days(events)
    try:
        def alive() -> None:
            assert worker.poll() is None, f"the worker exited early: {worker.communicate()[0][-4000:]}"

        def hot_path_done() -> bool:
            alive()
            return committed_offsets(kafka_bootstrap, topics.usage, group) == ends

        wait_until(hot_path_done, 180, "the hot path to commit the whole usage topic", interval=0.5)

        def table_complete() -> bool:
            alive()
            return _table(kafka_bootstrap, changelog) == expected

        wait_until(table_complete, 120, "the spend agent's team-day table to hold every window", interval=0.5)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output[-4000:]
    assert committed_offsets(kafka_bootstrap, topics.usage, group) == ends
