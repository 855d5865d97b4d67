"""The local broker's JVM command line: the client compiler only by default, KAFKA_OPTS last so it can undo that."""

from __future__ import annotations

from pathlib import Path

import pytest

from finops.stack import KafkaStack


def _cmd(tmp_path: Path) -> list[str]:
    return KafkaStack(tmp_path)._java(tmp_path / "libs", "kafka.Kafka", "server.properties", heap="64m")


def test_the_broker_runs_on_the_client_compiler_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_OPTS", raising=False)
    cmd = _cmd(tmp_path)
    assert "-XX:TieredStopAtLevel=1" in cmd
    assert cmd[cmd.index("-cp") + 2:] == ["kafka.Kafka", "server.properties"]


def test_kafka_opts_come_after_ours_so_they_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_OPTS", "-XX:TieredStopAtLevel=4  -Dfoo='a b'")
    cmd = _cmd(tmp_path)
    ours, theirs = cmd.index("-XX:TieredStopAtLevel=1"), cmd.index("-XX:TieredStopAtLevel=4")
    assert ours < theirs < cmd.index("-cp")  # HotSpot takes the last of a repeated option
    assert "-Dfoo=a b" in cmd  # shell quoting is honoured, as Kafka's scripts do
