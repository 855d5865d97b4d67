"""`make bench` on a fresh clone: with no broker configured the bench starts its own and stops it afterwards."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient

from finops.bench import bench_broker

pytestmark = pytest.mark.integration


def test_starts_and_stops_its_own_broker_when_none_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINOPS_KAFKA_BOOTSTRAP", raising=False)
    with bench_broker() as bootstrap:
        assert os.environ["FINOPS_KAFKA_BOOTSTRAP"] == bootstrap
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
        assert metadata.brokers, "the bench's own broker answers metadata requests"
    assert "FINOPS_KAFKA_BOOTSTRAP" not in os.environ
    gone = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 1000})
    with pytest.raises(Exception, match="(?i)transport|timed out|failed"):
        gone.list_topics(timeout=3).brokers  # noqa: B018 - the call is the assertion


def test_uses_the_configured_broker_as_is(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str) -> None:
    monkeypatch.setenv("FINOPS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    with bench_broker() as bootstrap:
        assert bootstrap == kafka_bootstrap
    assert os.environ["FINOPS_KAFKA_BOOTSTRAP"] == kafka_bootstrap
