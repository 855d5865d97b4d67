"""infra/docker-compose.yml is valid for Docker Compose (checked with Debian's docker-compose when installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"


def test_compose_declares_every_role() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"kafka", "clickhouse", "init", "stream", "sink", "alerts", "dashboard"} <= set(services)
    for role in ("stream", "sink", "alerts", "dashboard"):
        env = services[role]["environment"]
        assert env["FINOPS_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["FINOPS_CLICKHOUSE_URL"].startswith("http://")  # a server: no embedded path shared by roles


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_config_is_valid() -> None:
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
