"""Shared fixtures: a real Kafka broker and a real ClickHouse (chdb) for the whole session.

Kafka, in order of preference (snuba's and arroyo's test tiers):
1. ``FINOPS_KAFKA_BOOTSTRAP`` when set: a broker someone else runs;
2. a Docker engine that answers: testcontainers' KafkaContainer;
3. otherwise the local broker from infra/kafka (``finops.stack``), started on free ports in a temporary home and
   stopped at the end of the session.
Each test gets its own topics (a unique topic prefix) and its own ClickHouse database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from finops.stack import KafkaStack, free_port_pair
from finops.topics import TopicNames, ensure_topics


def _docker_answers() -> bool:
    if os.environ.get("FINOPS_TESTS_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker for the whole session."""
    env = os.environ.get("FINOPS_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    port = free_port_pair()
    stack = KafkaStack(tmp_path_factory.mktemp("kafka"), port=port, controller_port=port + 1)
    stack.up()
    try:
        yield stack.bootstrap
    finally:
        stack.down()


@pytest.fixture(scope="session")
def kafka_config(kafka_bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": kafka_bootstrap}


@pytest.fixture
def topics(kafka_config: dict[str, Any]) -> TopicNames:
    """This test's own copy of every declared topic (3 partitions for the usage topics)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    ensure_topics(kafka_config, prefix=prefix, usage_partitions=3)
    return TopicNames(prefix)


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Callable[[], KafkaStack]]:
    """A factory for a broker of the test's own, which the test may stop, kill and restart."""
    stacks: list[KafkaStack] = []

    def make() -> KafkaStack:
        port = free_port_pair()
        stack = KafkaStack(tmp_path / f"kafka{len(stacks)}", port=port, controller_port=port + 1, heap="384m")
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.down(timeout=20)


# ---- ClickHouse --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded ClickHouse data path for the session (chdb allows one path per process)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def ch_client(chdb_url: str) -> Any:
    from sinks.clickhouse import build_client

    return build_client(chdb_url)


@pytest.fixture
def ch_database(ch_client: Any, chdb_url: str) -> Iterator[str]:
    """A fresh database with every migration applied, dropped after the test."""
    from sinks.migrations import MigrationRunner

    name = f"t_{uuid.uuid4().hex[:12]}"
    MigrationRunner(ch_client, name).apply()
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")
