"""Replay into a real broker: the first 500 aider rows in fast mode through UsageProducer, counted back by consuming
and decoding with AvroCodec; a second replay of the same rows repeats exactly the same event ids."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from finops.topics import TopicNames
from producers.producer import UsageProducer
from producers.replay import RejectsWriter, load_mapping, open_sink, replay_file
from schemas.wire import AvroCodec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AIDER_CSV = Path("/work/shared/data/traces/aider_sample_analytics/message_send.csv")


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Read ``topic`` from the start until ``expected`` messages arrived or ``timeout`` passed; decode each."""
    codec = AvroCodec()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"replay-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    decoded: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(decoded) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                name, record = codec.decode(msg.value())
                assert name.endswith("UsageEvent")
                assert msg.key() == record["agent_id"].encode()
                decoded.append(record)
    finally:
        consumer.close()
    return decoded


@pytest.mark.skipif(not AIDER_CSV.exists(), reason="shared aider trace not present")
def test_replay_500_aider_rows_fast_and_count_them_back(
    kafka_bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    mapping = load_mapping(ROOT / "infra" / "replay" / "aider.yaml")

    def producer() -> UsageProducer:
        return UsageProducer(kafka_bootstrap, topics.usage, "replay-test", spool_dir=tmp_path / "spool",
                             register_atexit=False)

    runs = []
    for attempt in range(2):
        rejects = RejectsWriter(tmp_path / f"rejects{attempt}.jsonl")
        with open_sink(None, source_label="replay", producer_factory=producer) as sink:
            stats = replay_file(AIDER_CSV, mapping, sink.emit, now=datetime.now(UTC), limit=500, rejects=rejects)
        rejects.close()
        assert stats.rows == 500 and stats.events + stats.rejected == 500
        assert sink.lost == 0 and " 0 failed" in sink.report
        runs.append(stats)
    events = runs[0].events
    assert events >= 490  # the few rejects are aider's 'None' model rows, listed in the rejects file

    records = _consume(kafka_bootstrap, topics.usage, expected=2 * events)
    assert len(records) == 2 * events
    ids = [r["event_id"] for r in records]
    # Two replays, one set of ids: the pipeline's dedupe keeps exactly one copy of each row.
    assert len(set(ids)) == events
    assert all(ids.count(i) == 2 for i in set(ids[:50]))
    first = min(records, key=lambda r: r["occurred_at"])
    assert first["source"] == "aider-analytics" and first["model"] == "gpt-4o-mini"
