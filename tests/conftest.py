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
import socket
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
    from finops.clickhouse import connect

    return connect(chdb_url)


@pytest.fixture
def ch_database(ch_client: Any, chdb_url: str) -> Iterator[str]:
    """A fresh database with every migration applied, dropped after the test."""
    from sinks.migrations import MigrationRunner

    name = f"t_{uuid.uuid4().hex[:12]}"
    MigrationRunner(ch_client, name).apply()
    yield name
    ch_client.command(f"DROP DATABASE IF EXISTS {name}")


# ---- test tiers --------------------------------------------------------------------------------------------
# A test without one of these markers is a unit test: pure logic, no services. It may not open a network
# connection (loopback included): a test that needs a broker, an HTTP server or a store endpoint says so with its
# marker, so `pytest -m unit` stays fast and runs anywhere. Unix-domain sockets (multiprocessing) are not networks.
# The guard sits on Python's socket module (urllib3, http.client, asyncio, aiokafka, clickhouse-connect); librdkafka
# opens its sockets in C, so a confluent-kafka client is caught only where it is handed a broker from a fixture.
SERVICE_MARKERS = frozenset({"integration", "e2e", "faults"})
_NETWORK_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})


class NetworkInUnitTestError(AssertionError):
    """A test of the unit tier tried to open a network connection."""


@pytest.fixture(autouse=True)
def _unit_tests_open_no_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if any(request.node.get_closest_marker(name) for name in SERVICE_MARKERS):
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    test = request.node.nodeid

    def refuse(sock: socket.socket, address: Any) -> None:
        raise NetworkInUnitTestError(
            f"{test} opened a network connection to {address!r} without an integration/e2e/faults marker: "
            "mark the test (pytestmark = pytest.mark.integration) or keep it off the network")

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in _NETWORK_FAMILIES:
            refuse(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if sock.family in _NETWORK_FAMILIES:
            refuse(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(scope="session")
def store_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding this test session's installation secrets (<data dir>/secrets, 0600), as `make run` has."""
    from finops.secrets import load_store_credentials

    data_dir = tmp_path_factory.mktemp("installation")
    load_store_credentials(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def store_credentials(store_data_dir: Path) -> Any:
    """The store endpoint's writer and reader credentials of :func:`store_data_dir`."""
    from finops.secrets import load_store_credentials

    return load_store_credentials(store_data_dir, create=False)
