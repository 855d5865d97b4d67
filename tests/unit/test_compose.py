"""infra/docker-compose.yml runs the roles `make run` starts, keeps ClickHouse on the compose network, refuses to
start without its secrets, and is valid for Docker Compose (checked with Debian's docker-compose when installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from finops.demo import build_roles

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
SECRETS = ("CLICKHOUSE_PASSWORD", "FINOPS_CONTROL_SIGNING_KEY")
needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                   reason="Debian's docker-compose is not installed")


def _services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]  # type: ignore[no-any-return]


def _command_words(argv: list[str]) -> tuple[str, ...]:
    """The sub-command path of a finops argv (``detect run`` of ``detect run --from-earliest``)."""
    words: list[str] = []
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    return tuple(words)


def _compose_config(*, without: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update({name: f"test-{name.lower()}" for name in SECRETS if name != without})
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_compose_runs_every_role_that_make_run_starts() -> None:
    """The roles come from finops.demo.build_roles (what `make run` starts), not from a list copied here."""
    roles = build_roles(["finops"], dashboard_port=8080, query_port=None, intake_port=4318)
    assert {r.name for r in roles} >= {"sink", "stream", "detect", "alerts", "dashboard", "intake"}
    services = _services()
    by_command = {_command_words(list(svc.get("command") or [])): name for name, svc in services.items()}
    missing = [r.name for r in roles if _command_words(r.argv[1:]) not in by_command]
    assert not missing, f"roles `make run` starts that infra/docker-compose.yml does not: {missing}"
    assert {"kafka", "clickhouse", "init"} <= set(services)
    for role in roles:
        service = services[by_command[_command_words(role.argv[1:])]]
        env = service["environment"]
        assert env["FINOPS_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["FINOPS_CLICKHOUSE_URL"].startswith("http://")  # a server: no embedded path shared by roles
        assert set(service["depends_on"]) >= {"kafka", "clickhouse"}


def test_clickhouse_and_kafka_stay_on_the_compose_network() -> None:
    services = _services()
    for name in ("clickhouse", "kafka"):
        assert "ports" not in services[name], f"{name} is published on the host"
        assert services[name].get("network_mode") != "host"


def test_compose_has_no_default_for_any_secret() -> None:
    """Every use of a secret is ``${NAME:?message}``: compose refuses to start without it, never a default."""
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not used"
        assert all(use.startswith(":?") for use in uses), f"{name} has a default or no check: {uses}"


@needs_compose
def test_compose_config_is_valid_and_refuses_to_start_without_the_password() -> None:
    done = _compose_config()
    assert done.returncode == 0, done.stderr
    for name in SECRETS:
        refused = _compose_config(without=name)
        assert refused.returncode != 0, f"compose config accepted a missing {name}"
        assert f"set {name}" in refused.stderr, refused.stderr


@needs_compose
def test_resolved_config_publishes_only_the_authenticated_http_roles() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update({name: "x" for name in SECRETS})
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          timeout=60, env=env, check=True)
    resolved = yaml.safe_load(done.stdout)["services"]
    assert sorted(name for name, svc in resolved.items() if svc.get("ports")) == ["dashboard", "intake"]


def test_image_contains_every_package_the_roles_import() -> None:
    """The Dockerfile copies each package pyproject installs (the dashboard and governance were missing)."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in include["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", DOCKERFILE.read_text(), flags=re.MULTILINE))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
