"""The README documents every setting and gives the two set-up commands CI relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

import finops.settings as fs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_configuration_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for cls in (fs.CoreSettings, *fs._SECTIONS.values()):
        prefix = cls.model_config.get("env_prefix", "")
        for field, info in cls.model_fields.items():
            env = fs._env_name(prefix, field, info)
            if f"`{env}`" not in readme:
                missing.append(env)
    assert missing == [], f"README configuration reference lacks: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
