"""The chosen Kafka version works with both clients we ship: confluent-kafka (librdkafka) and aiokafka (Faust's).

An Avro usage event, lz4-compressed by an idempotent confluent-kafka producer, is read back by a confluent-kafka
consumer and by aiokafka (which needs its lz4 extra for that); and aiokafka's own produce is read by
confluent-kafka. If a broker upgrade drops a protocol version one of them needs, this fails first.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from finops.topics import TopicNames
from schemas.wire import AvroCodec

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def _example_event() -> dict:
    from schemas.models import UsageEvent

    path = sorted(EXAMPLE.glob("usage_event.json"))[0]
    return UsageEvent.model_validate(json.loads(path.read_text())).to_avro_dict()


def test_avro_event_through_broker_with_confluent_kafka_and_aiokafka(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    codec = AvroCodec()
    record = _example_event()
    payload = codec.encode(record, "UsageEvent")

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all", "compression.type": "lz4"}
    )
    producer.produce(topics.usage, key=record["agent_id"].encode(), value=payload)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"smoke-{topics.prefix}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topics.usage])
    got = None
    deadline = time.monotonic() + 60
    while got is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got = msg
    consumer.close()
    assert got is not None, "confluent-kafka consumer received nothing"
    name, decoded = codec.decode(got.value())
    assert name.endswith("UsageEvent") and decoded["event_id"] == record["event_id"]
    assert decoded["input_tokens"] == record["input_tokens"]

    async def with_aiokafka() -> tuple[bytes, bytes]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        aio_consumer = AIOKafkaConsumer(
            topics.usage, bootstrap_servers=kafka_bootstrap, group_id=f"aio-{topics.prefix}",
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await aio_consumer.start()
        try:
            first = await asyncio.wait_for(aio_consumer.getone(), timeout=60)
        finally:
            await aio_consumer.stop()
        aio_producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="lz4", acks="all")
        await aio_producer.start()
        try:
            await aio_producer.send_and_wait(topics.dlq, payload, key=b"from-aiokafka")
        finally:
            await aio_producer.stop()
        return first.value, first.key

    value, key = asyncio.run(with_aiokafka())
    assert key == record["agent_id"].encode()
    assert codec.decode(value)[1]["event_id"] == record["event_id"]

    back = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"back-{topics.prefix}", "auto.offset.reset": "earliest"}
    )
    back.subscribe([topics.dlq])
    echoed = None
    deadline = time.monotonic() + 60
    while echoed is None and time.monotonic() < deadline:
        msg = back.poll(0.5)
        if msg is not None and not msg.error():
            echoed = msg
    back.close()
    assert echoed is not None and echoed.key() == b"from-aiokafka" and echoed.value() == payload
