"""Every role that reaches the store passes the data dir, so it logs in with the installation's credentials.

Issue 14 item 1: the store endpoint refuses requests without them; a command that forgets ``data_dir=`` works
against a stopped system (it opens the chdb path) and fails with AUTHENTICATION_FAILED while the system runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
OPENERS = {"open_client", "open_endpoint_client", "open_reader_writer", "open_store"}
PACKAGES = ("alerting", "dashboard", "finops", "governance", "producers", "sinks", "stream_jobs")


def test_every_store_client_opener_gets_the_data_dir() -> None:
    missing = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in OPENERS and not any(k.arg == "data_dir" for k in node.keywords):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno} {name}(...)")
    assert not missing, "pass data_dir=settings.data_dir: " + ", ".join(missing)
