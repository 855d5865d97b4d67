"""The TypeScript SDK (producers/typescript) against the real broker and the Python pipeline.

Events published from TypeScript are read back by Python, decoded with AvroCodec, validated, priced with
stream_jobs.pricing.Pricer and published as PricedUsageEvents; the real ledger sink worker lands them in ClickHouse
(chdb). This test stands in for the stream's hot path (decode -> price -> publish), which is not in the tree yet.
Also: an invalid event is refused by TypeScript naming the same fields and rules as Python; partitions match
librdkafka's; the TypeScript guard obeys a command Python signed and published on the control topic.

Needs node and the package built: ``npm --prefix producers/typescript ci && npm --prefix producers/typescript test``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from finops.topics import TopicNames
from producers.producer import UsageProducer
from schemas.errors import ValidationFailed
from schemas.models import ControlCommand, PricedUsageEvent, UsageEvent, check_usage_dict, load_example, sign
from schemas.wire import AvroCodec
from stream_jobs.pricing import Pricer
from tests.integration.test_sink_support import caught_up, produce, start_sink, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "producers" / "typescript"
CLI = PACKAGE / "dist" / "test" / "integration" / "cli.js"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the TypeScript SDK's integration test needs Node.js 20+")
    if not CLI.exists():
        if not (PACKAGE / "node_modules").exists():
            pytest.fail("producers/typescript is not installed: run npm --prefix producers/typescript ci first")
        subprocess.run(["npm", "--prefix", str(PACKAGE), "run", "build"], check=True, capture_output=True)
    return node


def _run(command: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    proc = subprocess.run([_node(), str(CLI), json.dumps(command)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"node failed ({proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _events(n: int) -> list[dict[str, Any]]:
    models = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-20241022"), ("openai", "gpt-4o")]
    base = datetime.now(UTC) - timedelta(minutes=5)
    events = []
    for i in range(n):
        provider, model = models[i % len(models)]
        events.append({
            "event_id": str(uuid.uuid4()),
            "occurred_at": (base + timedelta(seconds=i)).isoformat(),
            "agent_id": f"ts-agent-{i % 4}", "team": "ts-team", "project": "ts-project",
            "provider": provider, "model": model,
            "input_tokens": 1000 + i, "output_tokens": 100 + i, "cache_read_tokens": 500 if i % 2 else 0,
            "task_id": f"task-{i // 3}", "reported_cost": "0.001000000000" if i == 0 else None,
            "tags": {"sdk": "typescript", "i": str(i)},
        })
    return events


def _consume_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ts-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list[Any] = []
    try:
        def drained() -> bool:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
            return len(messages) >= count
        wait_for(drained, timeout=60, what=f"{count} messages on {topic}")
    finally:
        consumer.close()
    return messages


def test_typescript_events_are_priced_and_land_in_clickhouse(
    kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str,
) -> None:
    events = _events(12)
    invalid = {**events[0], "event_id": str(uuid.uuid4()), "output_tokens": -1, "team": "  "}
    result = _run({"op": "publish", "bootstrap": kafka_bootstrap, "topic": topics.usage, "source": "ts-agent-svc",
                   "events": events, "invalid": invalid})
    assert [d["status"] for d in result["deliveries"]] == ["delivered"] * len(events)

    # The invalid event was refused in TypeScript with the fields, rules and messages Python reports.
    python_producer = UsageProducer(kafka_bootstrap, topics.usage, "ts-agent-svc", None, register_atexit=False)
    try:
        with pytest.raises(ValidationFailed) as refused:
            python_producer.prepare(dict(invalid))
    finally:
        python_producer.close()
    python_problems = [{"field": p.field, "rule": p.rule, "message": p.message} for p in refused.value.problems]
    assert result["invalid"]["problems"] == python_problems
    assert result["invalid"]["fields"][:2] == ["team", "output_tokens"]

    # Python decodes, validates and prices what TypeScript published; keys and partitions are the SDK's contract.
    codec = AvroCodec()
    pricer = Pricer()
    messages = _consume_all(kafka_bootstrap, topics.usage, len(events))
    assert len(messages) == len(events)
    by_id = {e["event_id"]: e for e in events}
    priced: list[tuple[bytes, bytes]] = []
    now = datetime.now(UTC)
    for msg in messages:
        name, record = codec.decode(msg.value())
        assert name == "UsageEvent"
        assert msg.key() == record["agent_id"].encode()
        assert check_usage_dict(record, now) == []
        sent = by_id[record["event_id"]]
        assert record["source"] == "ts-agent-svc" and record["tags"] == sent["tags"]
        assert record["occurred_at"] == datetime.fromisoformat(sent["occurred_at"])
        UsageEvent.from_avro_dict(record, now=now)
        price = pricer.price(record)
        assert price.pricing_status == "priced", price.unpriced_reason
        assert price.cost_usd > 0
        out = PricedUsageEvent.from_avro_dict({
            **record, **price._asdict(), "priced_at": now, "source_topic": msg.topic(),
            "source_partition": msg.partition(), "source_offset": msg.offset(),
        })
        priced.append((msg.key(), codec.encode(out.to_avro_dict(), "PricedUsageEvent")))
    first = next(m for m in messages if codec.decode(m.value())[1]["event_id"] == events[0]["event_id"])
    assert codec.decode(first.value())[1]["reported_cost"] == Decimal("0.001")

    # Partitions: the TypeScript SDK puts an agent where librdkafka (the Python SDK) does on the same topic.
    ts_partitions = {by_id[d["eventId"]]["agent_id"]: d["partition"] for d in result["deliveries"]}
    assert {m.partition() for m in messages} == set(ts_partitions.values())
    py = Producer({"bootstrap.servers": kafka_bootstrap})
    py_partitions: dict[str, int] = {}

    def on_probe(err: Any, msg: Any) -> None:
        assert err is None, err
        py_partitions[msg.key().decode()] = msg.partition()

    for agent in ts_partitions:
        py.produce(topics.usage, key=agent.encode(), value=b"partition probe", on_delivery=on_probe)
    assert py.flush(30) == 0
    assert py_partitions == ts_partitions

    # The real ledger sink lands the priced events in ClickHouse.
    produce(kafka_config, topics.priced, priced)
    sink = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    try:
        wait_for(caught_up(kafka_config, sink, topics.priced), what="ledger sink to commit the topic's end")
    finally:
        sink.stop()
    rows = ch_client.query(
        f"SELECT event_id, source, agent_id, input_tokens, cost_usd FROM {ch_database}.usage_ledger"
    ).result_rows
    assert {r[0] for r in rows} == set(by_id)
    assert all(r[1] == "ts-agent-svc" and Decimal(r[4]) > 0 for r in rows)
    assert sum(r[3] for r in rows) == sum(e["input_tokens"] for e in events)


def test_typescript_guard_obeys_python_signed_commands(kafka_bootstrap: str, kafka_config: dict[str, Any],
                                                       topics: TopicNames) -> None:
    secret = b"integration-secret"
    codec = AvroCodec()
    base = load_example("control_command.json")
    assert isinstance(base, ControlCommand)
    now = datetime.now(UTC)
    suspend = sign(base.model_copy(update={
        "command_id": "c-suspend", "scope_type": "agent", "scope_value": "ts-agent-0", "action": "suspend",
        "rate_per_minute": None, "issued_at": now, "expires_at": None}), "k1", secret)
    downgrade = sign(base.model_copy(update={
        "command_id": "c-down", "scope_type": "project", "scope_value": "ts-project", "action": "downgrade",
        "rate_per_minute": None, "target_model": "gpt-4o-mini", "issued_at": now, "expires_at": None}), "k1", secret)
    forged = base.model_copy(update={
        "command_id": "c-forged", "scope_type": "team", "scope_value": "ts-team", "action": "suspend",
        "rate_per_minute": None, "issued_at": now, "expires_at": None, "key_id": "k1", "signature": "0" * 64})
    produce(kafka_config, topics.control, [
        (f"{c.scope_type}:{c.scope_value}".encode(), codec.encode(c.to_avro_dict(), "ControlCommand"))
        for c in (suspend, downgrade, forged)
    ])
    result = _run({"op": "guard", "bootstrap": kafka_bootstrap, "topic": topics.control, "keys": {"k1": secret.decode()},
                   "calls": [
                       {"agent_id": "ts-agent-0", "team": "ts-team", "project": "ts-project", "model": "gpt-4o"},
                       {"agent_id": "ts-agent-1", "team": "ts-team", "project": "ts-project", "model": "gpt-4o"},
                       {"agent_id": "ts-agent-1", "team": "ts-team", "project": "other", "model": "gpt-4o"},
                   ]})
    assert result["decisions"] == [
        {"action": "refuse", "command_id": "c-suspend"},
        {"action": "allow", "model": "gpt-4o-mini"},
        {"action": "allow", "model": "gpt-4o"},  # the forged team suspension is not obeyed
    ]
    assert result["stats"]["rejected"] == 1
