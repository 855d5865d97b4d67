"""The local broker from infra/kafka: up twice is harmless, data survives down/up, the CLI wraps it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from finops.stack import KafkaStack
from finops.topics import TopicNames, ensure_topics

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
         "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    import time

    deadline = time.monotonic() + 60
    while len(got) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg.value())
    consumer.close()
    return got


def test_up_twice_then_down_up_keeps_topics_and_messages(own_kafka: Callable[[], KafkaStack]) -> None:
    stack = own_kafka()
    first = stack.up()
    assert first.running and first.pid
    again = stack.up()  # harmless: same process
    assert again.pid == first.pid

    conf = {"bootstrap.servers": stack.bootstrap}
    created = ensure_topics(conf, prefix="keep.", usage_partitions=2)
    assert TopicNames("keep.").usage in created
    assert ensure_topics(conf, prefix="keep.", usage_partitions=2) == []  # idempotent

    producer = Producer({**conf, "enable.idempotence": True, "acks": "all"})
    for i in range(25):
        producer.produce(TopicNames("keep.").usage, key=b"agent-1", value=f"m{i}".encode())
    assert producer.flush(30) == 0

    assert stack.down() is True
    assert not stack.status().running
    assert stack.down() is False  # already stopped

    stack.up()
    values = _consume_all(stack.bootstrap, TopicNames("keep.").usage, 25)
    assert values == [f"m{i}".encode() for i in range(25)]
    assert ensure_topics(conf, prefix="keep.", usage_partitions=2) == []


def test_cli_stack_up_status_down(tmp_path: Path) -> None:
    from tests.conftest import free_port_pair

    port = free_port_pair()
    env = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path), "FINOPS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
    finops = [sys.executable, "-m", "finops.cli"]
    try:
        up = subprocess.run([*finops, "stack", "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stderr
        assert "started" in up.stdout and "topics: 9 created" in up.stdout
        up2 = subprocess.run([*finops, "stack", "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up2.returncode == 0 and "already running" in up2.stdout and "all present" in up2.stdout
        status = subprocess.run([*finops, "stack", "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0
        assert "running" in status.stdout and "agent.control.v1" in status.stdout
    finally:
        down = subprocess.run([*finops, "stack", "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    status = subprocess.run([*finops, "stack", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "stopped" in status.stdout
