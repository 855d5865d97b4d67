"""One-shot ``finops`` commands with no broker listening: a clear error, a non-zero exit status and a quiet stderr.

Each command runs as a real subprocess against a port nothing listens on. It must give up on its own, by its bounded
first contact (``finops.kafka.clients.CONNECT_TIMEOUT_S``), well inside the subprocess timeout below, which is only a
hang guard. librdkafka's reconnect failures go through Python logging, throttled per client
(``tests/unit/test_kafka_clients.py`` tests the throttle; ``tests/unit/test_policies.py`` the policy reader's error).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from finops.secrets import CONTROL_OPERATOR_KEY, load_or_create_secret, secret_path

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEAD = "127.0.0.1:1"
HANG_GUARD_S = 60
# The error line, plus at most a line per client and facility from librdkafka (and a warning of the command's own).
MAX_STDERR_LINES = 5
# name -> the operator key (also given as the SASL password) its run got: secrets no line may show.
SECRETS: dict[str, str] = {}

COMMANDS: dict[str, list[str]] = {
    "policy list": ["policy", "list"],
    "policy apply": ["policy", "apply", str(ROOT / "infra" / "policies.example.yaml")],
    "topics": ["topics"],
    "control status": ["control", "status"],
    "control suspend": ["control", "suspend", "--agent", "bot-1", "--reason", "test"],
}
# What each one says it could not do (the rest of the message is the same for all).
WHAT = {
    "policy list": "cannot read finops.policies.v1 from the broker at",
    "policy apply": "cannot read finops.policies.v1 from the broker at",
    "topics": "cannot list the topics of the broker at",
    "control status": "cannot read agent.control.v1 from the broker at",
    "control suspend": "cannot publish to agent.control.v1 on the broker at",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every command of COMMANDS run at once (they only wait), each with a data dir of its own."""
    running: dict[str, tuple[subprocess.Popen[str], list[str]]] = {}
    for name, argv in COMMANDS.items():
        data_dir = tmp_path_factory.mktemp(name.replace(" ", "-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")}
        SECRETS[name] = load_or_create_secret(secret_path(data_dir, CONTROL_OPERATOR_KEY))
        env.update({"FINOPS_KAFKA_BOOTSTRAP": DEAD, "FINOPS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
                    "FINOPS_CONTROL_OPERATOR_KEY": SECRETS[name], "FINOPS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                    "FINOPS_KAFKA_SASL_MECHANISM": "PLAIN", "FINOPS_KAFKA_SASL_USERNAME": "svc",
                    "FINOPS_KAFKA_SASL_PASSWORD": SECRETS[name]})
        cmd = [sys.executable, "-m", "finops.cli", *argv]
        running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), cmd)
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for name, (proc, cmd) in running.items():
            out, err = proc.communicate(timeout=HANG_GUARD_S)  # raises TimeoutExpired on a hang
            done[name] = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_one_shot_command_fails_clearly_and_quietly_without_a_broker(
        name: str, outcomes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = outcomes[name]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert lines and lines[-1].startswith(f"finops: error: {WHAT[name]} {DEAD} ("), result.stderr
    assert "is it running? Start the local one with `finops stack up`" in lines[-1]
    assert "or set FINOPS_KAFKA_BOOTSTRAP to yours" in lines[-1]
    assert len(lines) <= MAX_STDERR_LINES, result.stderr
    assert not [line for line in lines if line.startswith("%")], "librdkafka printed to stderr itself"
    assert "Traceback" not in result.stderr


def test_no_secret_is_in_any_line(outcomes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    for name, result in outcomes.items():
        secret = SECRETS[name]
        assert secret and secret not in result.stderr and secret not in result.stdout
