"""The usage hot path through the real broker: a fleet with 1 % duplicates and 0.5 % malformed events, and the same
fleet with the worker killed (SIGKILL) in the middle of the stream and restarted.

After the downstream dedupe (priced events by event_id; spend partials by aggregate_id keeping the last) every valid
event is priced exactly once at the reference price, the DLQ holds every malformed event with its provenance and
reason, and the window totals per team equal the sums computed from the input file alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import ROUND_HALF_EVEN
from pathlib import Path
from typing import Any

import pytest

from finops.settings import load_settings
from finops.topics import TopicNames
from schemas.wire import AvroCodec
from stream_jobs.dlq import DeadLetter
from stream_jobs.hotpath import build_hot_path
from tests.integration.hotpath_child import (
    Q12,
    Published,
    committed_offsets,
    end_offsets,
    isolated_data_dir,
    independent_team_totals,
    load_fleet,
    publish_fleet,
    read_all,
    team_totals_from_spend,
    wait_until,
    write_fleet,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _fleet(tmp_path: Path, events: int, seed: int) -> list[dict[str, Any]]:
    path = tmp_path / "fleet.jsonl"
    write_fleet(path, events=events, agents=300, seed=seed, rate=20.0)
    return load_fleet(path)


def _check_outputs(bootstrap: str, topics: TopicNames, events: list[dict[str, Any]], published: Published) -> None:
    codec = AvroCodec()
    # Priced: after the dedupe by event_id, each valid event exactly once, at the reference price.
    from genai_prices import Usage, calc_price

    from finops.pricing.engine import to_genai_usage

    priced: dict[str, dict[str, Any]] = {}
    copies: Counter[str] = Counter()
    for msg in read_all(bootstrap, topics.priced):
        record = codec.decode(msg.value())[1]
        copies[record["event_id"]] += 1
        first = priced.setdefault(record["event_id"], record)
        assert record["cost_usd"] == first["cost_usd"], "a replay priced an event differently"
    assert set(priced) == published.valid_ids
    assert len(copies) == len(events)
    for event in events[:: max(1, len(events) // 500)]:  # the reference price, on a sample (calc_price is slow)
        reference = calc_price(Usage(**to_genai_usage(event)), event["model"], provider_id=event["provider"],
                               genai_request_timestamp=event["occurred_at"]).total_price  # fmt: skip
        assert priced[event["event_id"]]["cost_usd"] == reference.quantize(Q12, ROUND_HALF_EVEN)

    # DLQ: every malformed event, with provenance and a reason; nothing else.
    letters = [DeadLetter.from_message(m.headers(), m.key(), m.value()) for m in read_all(bootstrap, topics.dlq)]
    by_place = {(d.partition, d.offset): d for d in letters}
    assert set(by_place) == set(published.malformed)
    for where, kind in published.malformed.items():
        letter = by_place[where]
        assert letter.topic == topics.usage and letter.reason
        assert letter.stage == ("decode" if kind in ("garbage", "truncated") else "validate"), (kind, letter)

    # Windows: team totals equal the sums computed from the input file.
    assert team_totals_from_spend(read_all(bootstrap, topics.spend)) == independent_team_totals(events)


def test_fleet_with_duplicates_and_malformed_events_is_priced_once_and_windowed_exactly(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    events = _fleet(tmp_path, 20_000, seed=21)
    published = publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.01, bad_share=0.005, seed=21)
    assert published.duplicates >= 100 and len(published.malformed) >= 50

    settings = load_settings(
        {"FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap, "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
         "FINOPS_STREAM_GROUP_ID": f"hp-{uuid.uuid4().hex[:8]}",
         "FINOPS_DATA_DIR": isolated_data_dir()}
    )  # fmt: skip
    hot = build_hot_path(settings, overrides={"idle_close_us": 1_000_000, "grace_us": 2_000_000})
    ends = end_offsets(kafka_bootstrap, topics.usage)
    deadline = time.monotonic() + 180

    def done() -> bool:
        if time.monotonic() > deadline:
            raise AssertionError(f"hot path did not finish: {hot.stats()}")
        committed = hot.stats().committed
        return len(committed) == len(ends) and all(committed.get(p) == end for p, end in ends.items())

    hot.run(until=done)
    stats = hot.stats()
    assert stats.consumed == published.total
    assert stats.dead_lettered == len(published.malformed)
    assert stats.duplicates == published.duplicates
    assert stats.late == 0
    _check_outputs(kafka_bootstrap, topics, events, published)


def _child(bootstrap: str, topics: TopicNames, group: str, *, pause_ms: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.hotpath_child", "--bootstrap", bootstrap, "--prefix",
         topics.prefix, "--group", group, "--pause-ms", str(pause_ms), "--batch-size", "200"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.faults
def test_kill_9_mid_stream_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    events = _fleet(tmp_path, 30_000, seed=22)
    published = publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.01, bad_share=0.005, seed=22)
    ends = end_offsets(kafka_bootstrap, topics.usage)
    group = f"hp-kill-{uuid.uuid4().hex[:8]}"

    child = _child(kafka_bootstrap, topics, group, pause_ms=25)
    try:
        def some_committed() -> bool:
            assert child.poll() is None, f"the child ended before it was killed: {child.communicate()[1][-3000:]}"
            committed = committed_offsets(kafka_bootstrap, topics.usage, group)
            return sum(max(o, 0) for o in committed.values()) > 0

        wait_until(some_committed, 120, "the first commits of the child")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    at_kill = committed_offsets(kafka_bootstrap, topics.usage, group)
    assert sum(max(o, 0) for o in at_kill.values()) < sum(ends.values()), "killed after the end: not mid-stream"

    restarted = _child(kafka_bootstrap, topics, group, pause_ms=0)
    try:
        out, err = restarted.communicate(timeout=240)
    finally:
        if restarted.poll() is None:
            restarted.kill()
    assert restarted.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    # The restart replayed from the committed offsets (nothing was skipped past them) ...
    assert stats["consumed"] >= sum(ends.values()) - sum(max(o, 0) for o in at_kill.values())
    assert stats["late"] == 0  # the replayed windows were rebuilt whole, not cut short by a wall-clock close
    assert committed_offsets(kafka_bootstrap, topics.usage, group) == ends
    # ... and after the downstream dedupe nothing is lost or counted twice.
    _check_outputs(kafka_bootstrap, topics, events, published)


def test_a_second_worker_joining_mid_stream_shares_the_load_and_changes_no_total(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    import threading

    events = _fleet(tmp_path, 20_000, seed=23)
    published = publish_fleet(kafka_bootstrap, topics.usage, events, dup_share=0.01, bad_share=0.005, seed=23)
    ends = end_offsets(kafka_bootstrap, topics.usage)
    group = f"hp-two-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        {"FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap, "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
         "FINOPS_STREAM_GROUP_ID": group, "FINOPS_DATA_DIR": isolated_data_dir()}
    )  # fmt: skip
    finished = threading.Event()
    errors: list[BaseException] = []
    workers = []

    def start(batch_size: int) -> Any:
        hot = build_hot_path(settings, overrides={"idle_close_us": 1_000_000, "grace_us": 2_000_000,
                                                  "batch_size": batch_size, "commit_interval_s": 0.2})  # fmt: skip

        def until() -> bool:
            if batch_size < 500:
                time.sleep(0.02)  # throttle the first worker so the second joins while the stream runs
            return finished.is_set()

        def target() -> None:
            try:
                hot.run(until=until)
            except BaseException as err:  # noqa: BLE001 - reported by the test thread
                errors.append(err)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        workers.append((hot, thread))
        return hot

    first = start(batch_size=100)
    wait_until(lambda: sum(max(o, 0) for o in committed_offsets(kafka_bootstrap, topics.usage, group).values()) > 0,
               120, "the first worker's first commits")  # fmt: skip
    second = start(batch_size=1000)
    try:
        wait_until(lambda: bool(second.stats().assigned) or bool(errors), 120, "the rebalance")
        at_rebalance = committed_offsets(kafka_bootstrap, topics.usage, group)
        assert sum(max(o, 0) for o in at_rebalance.values()) < sum(ends.values()), "joined after the end"
        wait_until(lambda: committed_offsets(kafka_bootstrap, topics.usage, group) == ends or bool(errors), 240,
                   "both workers to commit the whole topic", interval=0.3)  # fmt: skip
    finally:
        finished.set()
        for _, thread in workers:
            thread.join(60)
    assert not errors, errors
    assert first.stats().consumed + second.stats().consumed >= published.total
    _check_outputs(kafka_bootstrap, topics, events, published)
