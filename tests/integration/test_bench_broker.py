"""`make bench` on a fresh clone: with no broker configured the bench starts its own and stops it afterwards."""

from __future__ import annotations

import argparse
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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell pinned from not")
def test_the_producer_bench_gives_the_cpu_set_back(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`bench all` runs the producer bench in-process before starting the latency part's roles, which inherit the
    process's CPU set: left pinned, every role would share one core (the pipeline measured at half the machine)."""
    from finops.benches.producer import run_bench

    monkeypatch.setenv("FINOPS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    before = os.sched_getaffinity(0)
    assert run_bench(argparse.Namespace(events=2_000, topic=None, cpu=min(before))) == 0
    assert "pinned to CPU" in capsys.readouterr().err  # it did pin while it ran
    assert os.sched_getaffinity(0) == before
