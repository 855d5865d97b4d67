"""The demo's dashboard token across restarts, against a real store (chdb through the real `finops token`
commands): a restart reuses the token while it is active instead of issuing another finops_admin token, a
revoked one is replaced, and any other active demo admin token (left by an earlier start) is revoked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finops.demo import TOKEN_SUBJECT, demo_token
from finops.stack import free_port_pair

pytestmark = pytest.mark.integration

FINOPS = [sys.executable, "-m", "finops.cli"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    out = {**os.environ, "FINOPS_DATA_DIR": str(tmp_path / "data"),
           "FINOPS_CLICKHOUSE_URL": f"chdb://{tmp_path / 'data' / 'clickhouse'}",
           "FINOPS_CLICKHOUSE_QUERY_URL": f"http://127.0.0.1:{free_port_pair()}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "data" / "logs").mkdir(parents=True)
    done = subprocess.run([*FINOPS, "migrate"], env=out, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


def _active_demo_tokens(env: dict[str, str]) -> list[dict[str, Any]]:
    done = subprocess.run([*FINOPS, "token", "list", "--json"], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return [r for r in json.loads(done.stdout) if r["subject"] == TOKEN_SUBJECT and r["revoked_at"] is None
            and r["role"] == "finops_admin"]


def test_restarts_reuse_the_demo_token_and_leave_no_other_admin_token_active(env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    data, logs = tmp_path / "data", tmp_path / "data" / "logs"
    token_file = data / "demo-token"
    first, how = demo_token(FINOPS, env, token_file, logs)
    assert first is not None and how == "new"
    assert token_file.read_text().strip() == first
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    second, how = demo_token(FINOPS, env, token_file, logs)
    assert second == first and how.startswith("reused")
    assert [r["token_id"] for r in _active_demo_tokens(env)] == [first.split("_")[1]]

    # A demo token leaked by an earlier start (the old behaviour issued one per start), and the token file lost:
    # a new token is issued and every other active demo admin token is revoked.
    leaked = subprocess.run([*FINOPS, "token", "issue", "--role", "finops_admin", "--team", "*", "--subject",
                             TOKEN_SUBJECT], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert leaked.stdout.strip().startswith("fo_")
    token_file.unlink()
    third, how = demo_token(FINOPS, env, token_file, logs)
    assert third is not None and third != first and "revoked the previous demo tokens" in how
    assert [r["token_id"] for r in _active_demo_tokens(env)] == [third.split("_")[1]]
