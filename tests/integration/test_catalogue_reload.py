"""``finops prices update`` from a real HTTP server, recorded in ClickHouse, hot-reloaded by a hot path on the real
broker: the catalogue version on the priced events changes at one offset per partition (issue 15 item 5)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from finops.cli import main
from finops.pricing.engine import catalogue_version
from finops.settings import load_settings
from finops.topics import TopicNames
from schemas.wire import AvroCodec
from stream_jobs.hotpath import build_hot_path
from tests.integration.hotpath_child import end_offsets, read_all

pytestmark = pytest.mark.integration

SNAPSHOT = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "catalogue" / "genai_prices_snapshot.json"


class _Quiet(SimpleHTTPRequestHandler):
    # The parameter's name is BaseHTTPRequestHandler's, which this overrides.
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def served() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(SNAPSHOT.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{SNAPSHOT.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _event(i: int, at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "source": "svc", "occurred_at": at, "agent_id": f"agent-{i % 9}",
        "team": "t", "project": "p", "provider": "openai", "model": "gpt-4o", "input_tokens": 1_000_000,
        "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0,
        "reasoning_tokens": 0, "input_audio_tokens": 0, "output_audio_tokens": 0, "cache_audio_read_tokens": 0,
        "image_tokens": 0, "web_search_calls": 0, "requests": 1, "task_id": None, "parent_task_id": None,
        "task_type": None, "environment": None, "attempt": 1, "status": "ok", "latency_ms": None,
        "prompt_hash": None, "reported_cost": None, "tags": {}, "schema_version": 1,
    }  # fmt: skip


def _publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for event in events:
        producer.produce(topic, codec.encode(event, "UsageEvent"), event["agent_id"].encode())
    assert producer.flush(60) == 0


def test_update_from_a_url_is_recorded_and_hot_reloaded_at_one_offset(
    served: str, kafka_bootstrap: str, topics: TopicNames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], ch_client: Any, ch_database: str, chdb_url: str,
) -> None:  # fmt: skip
    env = {
        "FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap, "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
        "FINOPS_STREAM_GROUP_ID": f"cat-{uuid.uuid4().hex[:8]}", "FINOPS_DATA_DIR": str(tmp_path / "data"),
        "FINOPS_STREAM_CATALOGUE_POLL_SECONDS": "0.05", "FINOPS_CLICKHOUSE_URL": chdb_url,
        "FINOPS_CLICKHOUSE_DATABASE": ch_database,
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = datetime.now(UTC) - timedelta(minutes=5)
    first = [_event(i, at + timedelta(milliseconds=i)) for i in range(600)]
    second = [_event(i, at + timedelta(seconds=1, milliseconds=i)) for i in range(600)]
    _publish(kafka_bootstrap, topics.usage, first)
    ends = end_offsets(kafka_bootstrap, topics.usage)

    hot = build_hot_path(load_settings(env), overrides={"batch_size": 50, "idle_close_us": 1_000_000})
    state = {"updated": False}
    deadline = time.monotonic() + 120

    def until() -> bool:
        if time.monotonic() > deadline:
            raise AssertionError(f"hot path did not finish: {hot.stats()}")
        committed = hot.stats().committed
        if not state["updated"]:
            if len(committed) == len(ends) and all(committed.get(p) == e for p, e in ends.items()):
                assert main(["prices", "update", "--from", served]) == 0
                state["updated"] = True
                _publish(kafka_bootstrap, topics.usage, second)
                ends.update(end_offsets(kafka_bootstrap, topics.usage))
            return False
        return all(committed.get(p) == e for p, e in ends.items())

    hot.run(until=until)
    out = capsys.readouterr().out
    pointer = json.loads((tmp_path / "data" / "prices" / "current.json").read_text())
    new_version = pointer["version"]
    assert f"recorded {new_version} in price_catalogue_versions" in out

    rows = ch_client.query(
        f"SELECT catalogue_version, details FROM {ch_database}.price_catalogue_versions FINAL"
    ).result_rows
    assert [(v, json.loads(d)["source"]) for v, d in rows] == [(new_version, served)]

    codec = AvroCodec()
    by_partition: dict[int, list[tuple[int, str, Decimal]]] = {}
    for msg in read_all(kafka_bootstrap, topics.priced):
        record = codec.decode(msg.value())[1]
        by_partition.setdefault(record["source_partition"], []).append(
            (record["source_offset"], record["catalogue_version"], record["cost_usd"]))
    old_ids = {e["event_id"] for e in first}
    assert sum(len(v) for v in by_partition.values()) == len(first) + len(second)
    for rows_of_partition in by_partition.values():
        rows_of_partition.sort()
        versions = [v for _, v, _ in rows_of_partition]
        switches = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
        assert len(switches) == 1, versions  # one offset where the version changes, per partition
        assert set(versions[: switches[0]]) == {catalogue_version()}
        assert set(versions[switches[0]:]) == {new_version}
        assert all(cost == Decimal(2) for _, _, cost in rows_of_partition[switches[0]:])
    assert len(old_ids) == len(first)
