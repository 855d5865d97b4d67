"""ControlGuard on a real broker: reads the compacted topic's current state at start, follows new commands, ignores
and reports forged ones; and ``finops control`` publishes operator commands it obeys."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from alerting import control_cli
from alerting.worker import publish_commands
from finops.topics import TopicNames
from producers.guard import AgentSuspended, ControlGuard, ForgedCommand
from schemas.errors import FinopsError
from schemas.models import ControlCommand, sign
from schemas.wire import AvroCodec

pytestmark = pytest.mark.integration

KEYS = {"k1": b"control-signing-secret"}


def _cmd(action: str, scope: tuple[str, str], *, key: bytes = KEYS["k1"], **over: Any) -> ControlCommand:
    now = datetime.now(UTC)
    cmd = ControlCommand.model_validate({
        "command_id": f"c-{action}-{time.monotonic_ns()}", "scope_type": scope[0], "scope_value": scope[1],
        "action": action, "reason": "test", "issued_by": "tester", "issued_at": now,
        "expires_at": now + timedelta(hours=1), "key_id": "", "signature": "", **over})
    return sign(cmd, "k1", key)


def _wait(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    done = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        done.wait(0.05)


def _suspended(guard: ControlGuard) -> bool:
    try:
        guard.check()
    except AgentSuspended:
        return True
    return False


def test_guard_reads_current_state_then_follows_and_ignores_forgeries(kafka_bootstrap: str,
                                                                      topics: TopicNames) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    codec = AvroCodec()
    # state before the agent starts: team throttled, then agent suspended (and an older key overwritten)
    publish_commands(producer, topics.control, [_cmd("throttle", ("team", "support"), rate_per_minute=600),
                                                _cmd("suspend", ("agent", "bot-1"))], codec)
    forged: list[ForgedCommand] = []
    guard = ControlGuard(bootstrap=kafka_bootstrap, topic=topics.control, keys=KEYS, agent_id="bot-1",
                         team="support", project="triage", on_forged=forged.append, throttle="raise")
    with guard:
        assert guard.wait_ready(30)
        with pytest.raises(AgentSuspended):
            guard.check()
        assert set(guard.active()) == {"team:support", "agent:bot-1"}

        publish_commands(producer, topics.control, [_cmd("resume", ("agent", "bot-1"), expires_at=None)], codec)
        _wait(lambda: not _suspended(guard), what="resume applied")

        # a forged suspend (wrong key) is ignored, counted and reported
        publish_commands(producer, topics.control, [_cmd("suspend", ("agent", "bot-1"), key=b"attacker")], codec)
        _wait(lambda: guard.stats().forged == 1, what="forgery reported")
        guard.check()
        assert forged[0].scope == "agent:bot-1" and forged[0].reason == "signature does not verify"
        assert forged[0].offset is not None


def test_operator_cli_suspends_and_resumes_with_operator_key(kafka_bootstrap: str, topics: TopicNames,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FINOPS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("FINOPS_KAFKA_TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("FINOPS_CONTROL_SIGNING_KEY", KEYS["k1"].decode())
    monkeypatch.setenv("FINOPS_CONTROL_KEY_ID", "k1")
    monkeypatch.setenv("FINOPS_CONTROL_OPERATOR_KEY", "op-secret")
    monkeypatch.delenv("FINOPS_OPERATOR_KEY", raising=False)
    parser = argparse.ArgumentParser(prog="finops")
    control_cli.register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return int(args.func(args))

    with pytest.raises(FinopsError, match="operator role required"):
        run("control", "suspend", "--team", "support", "--reason", "incident 42")
    with pytest.raises(FinopsError, match="not valid"):
        run("control", "suspend", "--team", "support", "--reason", "x", "--operator-key", "guess")

    guard = ControlGuard(bootstrap=kafka_bootstrap, topic=topics.control, keys=KEYS, agent_id="bot-1",
                         team="support")
    with guard:
        assert guard.wait_ready(30)
        monkeypatch.setenv("FINOPS_OPERATOR_KEY", "op-secret")
        assert run("control", "suspend", "--team", "support", "--reason", "incident 42", "--expires", "2h",
                   "--operator", "alice") == 0
        _wait(lambda: _suspended(guard), what="operator suspension")
        with pytest.raises(AgentSuspended) as err:
            guard.check()
        assert err.value.reason == "incident 42" and err.value.issued_by == "operator:alice"
        assert err.value.expires_at is not None
        assert run("control", "status", "--team", "support", "--json") == 0
        assert '"action": "suspend"' in capsys.readouterr().out
        assert run("control", "resume", "--team", "support", "--reason", "incident over") == 0
        _wait(lambda: not _suspended(guard), what="operator resume")
