"""The TypeScript SDK (producers/typescript) against the real broker and the Python pipeline.

Events published from TypeScript go through the real stream hot path (``stream_jobs.hotpath.build_hot_path``, as
``finops stream run`` builds it) and the real ledger sink into ClickHouse (chdb), both run in threads by
``tests.faults.pipeline.Pipeline``; each lands once with the cost ``finops.pricing.engine.Pricer`` gives it.
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

from finops.pricing.engine import Pricer
from finops.topics import TopicNames
from producers.producer import UsageProducer
from schemas.errors import ValidationFailed
from schemas.models import ControlCommand, UsageEvent, check_usage_dict, load_example, sign
from schemas.wire import AvroCodec
from tests.faults.pipeline import Pipeline
from tests.integration.test_sink_support import produce, wait_for

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


def test_typescript_events_go_through_the_hot_path_into_clickhouse(
    kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str,
) -> None:
    events = _events(12)
    invalid = {**events[0], "event_id": str(uuid.uuid4()), "output_tokens": -1, "team": "  "}
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    try:
        result = _run({"op": "publish", "bootstrap": kafka_bootstrap, "topic": topics.usage, "source": "ts-agent-svc",
                       "events": events, "invalid": invalid})
        assert [d["status"] for d in result["deliveries"]] == ["delivered"] * len(events)
        # The real hot path (decode -> validate -> price -> publish) and ledger sink land what TypeScript sent.
        pipeline.wait_ledger(len(events), timeout=120)
        pipeline.check()
    finally:
        pipeline.stop()

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

    # What TypeScript put on the usage topic decodes and validates in Python; keys are the agent ids.
    codec = AvroCodec()
    pricer = Pricer()
    messages = _consume_all(kafka_bootstrap, topics.usage, len(events))
    assert len(messages) == len(events)
    by_id = {e["event_id"]: e for e in events}
    expected_cost: dict[str, Decimal] = {}
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
        expected_cost[record["event_id"]] = Decimal(price.cost_usd)
        if record["event_id"] == events[0]["event_id"]:
            assert record["reported_cost"] == Decimal("0.001")
    assert set(expected_cost) == set(by_id)

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

    # The ledger: every TypeScript event exactly once (read without FINAL), priced as the Python Pricer prices it.
    rows = ch_client.query(
        f"SELECT event_id, source, agent_id, input_tokens, cost_usd, pricing_status FROM {ch_database}.usage_ledger"
    ).result_rows
    ids = [str(r[0]) for r in rows]
    assert sorted(ids) == sorted(by_id), "each TypeScript event must land exactly once"
    for event_id, source, agent_id, input_tokens, cost_usd, status in rows:
        sent = by_id[str(event_id)]
        assert source == "ts-agent-svc" and agent_id == sent["agent_id"]
        assert input_tokens == sent["input_tokens"]
        assert status == "priced"
        assert Decimal(cost_usd) == expected_cost[str(event_id)], (event_id, cost_usd, expected_cost[str(event_id)])


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
    result = _run({"op": "guard", "bootstrap": kafka_bootstrap, "topic": topics.control,
                   "keys": {"k1": secret.decode()},
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


def test_typescript_emit_many_delivers_every_event_once_in_order_per_agent(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    events = _events(250)  # as much as one command line holds
    refused = [dict(e, event_id=str(uuid.uuid4())) for e in _events(5)]
    refused[3]["output_tokens"] = -1
    result = _run({"op": "publish", "bootstrap": kafka_bootstrap, "topic": topics.usage, "source": "ts-batch-svc",
                   "events": events, "batch": True, "invalidBatch": refused})
    # A bad event keeps its whole batch off the topic, and the error names its index and field.
    assert result["invalidBatch"]["indexes"] == [3] and result["invalidBatch"]["fields"] == ["3.output_tokens"]
    assert "1 of 5 events is invalid, so none was sent" in result["invalidBatch"]["message"]
    deliveries = result["deliveries"]
    assert [d["eventId"] for d in deliveries] == [e["event_id"] for e in events]  # one Delivery each, batch order
    assert {d["status"] for d in deliveries} == {"delivered"}
    assert result["stats"]["emitted"] == len(events)

    messages = _consume_all(kafka_bootstrap, topics.usage, len(events))
    codec = AvroCodec()
    decoded = [(m.partition(), m.offset(), codec.decode(m.value())[1]) for m in messages]
    assert sorted(r["event_id"] for _, _, r in decoded) == sorted(e["event_id"] for e in events)
    by_agent: dict[str, list[tuple[int, int, int]]] = {}
    for partition, offset, record in decoded:
        assert record["source"] == "ts-batch-svc"
        by_agent.setdefault(record["agent_id"], []).append((partition, offset, int(record["tags"]["i"])))
    assert len(by_agent) == 4
    for seen in by_agent.values():
        assert len({p for p, _, _ in seen}) == 1  # one agent, one partition
        in_offset_order = [i for _, _, i in sorted(seen)]
        assert in_offset_order == sorted(in_offset_order)  # in the order of the batch
