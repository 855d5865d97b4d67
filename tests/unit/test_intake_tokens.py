"""Intake tokens: hashed at rest (0600 file), one message for every refusal, revocation seen without a restart."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashboard.auth import AuthenticationError, TokenStore
from producers.intake.tokens import IntakeAuthError, IntakeTokenStore

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_issue_authenticate_revoke(tmp_path: Path) -> None:
    store = IntakeTokenStore(tmp_path / "intake" / "tokens.json")
    text, record = store.issue("claude-code", team="platform", project="devex", created_by="me", now=NOW)
    assert text.startswith(f"fi_{record.token_id}_")
    raw = store.path.read_text()
    assert text.split("_", 2)[2] not in raw and record.token_hash in raw  # only the hash is kept
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600

    receiver_view = IntakeTokenStore(store.path)  # the receiver's own instance
    got = receiver_view.authenticate(f"Bearer {text}")
    assert (got.source, got.team, got.project) == ("claude-code", "platform", "devex")
    assert store.revoke(record.token_id, now=NOW) and not store.revoke(record.token_id, now=NOW)
    with pytest.raises(IntakeAuthError, match="invalid or revoked"):
        receiver_view.authenticate(f"Bearer {text}")  # no restart needed
    assert [t.token_id for t in store.list()] == [record.token_id]
    assert "token_hash" not in store.list()[0].as_json()


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer fo_000000000000_" + "A" * 43,
                                    "Bearer fi_000000000000_" + "A" * 43])
def test_missing_malformed_unknown_tokens_get_one_message(tmp_path: Path, header: str | None) -> None:
    store = IntakeTokenStore(tmp_path / "tokens.json")
    store.issue("s", created_by="me", now=NOW)
    with pytest.raises(IntakeAuthError):
        store.authenticate(header)


def test_wrong_secret_of_a_real_id_is_refused(tmp_path: Path) -> None:
    store = IntakeTokenStore(tmp_path / "tokens.json")
    text, _ = store.issue("s", created_by="me", now=NOW)
    with pytest.raises(IntakeAuthError):
        store.authenticate("Bearer " + text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB"))


def test_a_dashboard_token_is_not_an_intake_token_and_back(tmp_path: Path) -> None:
    store = IntakeTokenStore(tmp_path / "tokens.json")
    text, _ = store.issue("s", created_by="me", now=NOW)
    with pytest.raises(AuthenticationError):
        TokenStore(runner=None).authenticate(text)  # type: ignore[arg-type]  # refused before any lookup


def test_invalid_names_are_refused(tmp_path: Path) -> None:
    from schemas.errors import FinopsError

    with pytest.raises(FinopsError, match="invalid source"):
        IntakeTokenStore(tmp_path / "t.json").issue("bad name!", created_by="me", now=NOW)


def test_token_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from finops.cli import main

    monkeypatch.setenv("FINOPS_INTAKE_TOKENS_FILE", str(tmp_path / "tokens.json"))
    assert main(["intake", "token", "issue", "--source", "claude-code", "--team", "platform", "--json"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["token"].startswith("fi_") and issued["team"] == "platform" and "token_hash" not in issued
    assert main(["intake", "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert issued["token_id"] in listing and "active" in listing and issued["token"] not in listing
    assert main(["intake", "token", "revoke", issued["token_id"]]) == 0
    assert main(["intake", "token", "revoke", issued["token_id"]]) == 1
    capsys.readouterr()
    assert main(["intake", "token", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked_at"] is not None
    with pytest.raises(IntakeAuthError):
        IntakeTokenStore(tmp_path / "tokens.json").authenticate(f"Bearer {issued['token']}")


def test_attribution_paths_are_comma_separated_or_json_and_checked() -> None:
    from finops.settings import load_settings
    from producers.intake.cli import build_attribution
    from schemas.errors import ConfigError

    s = load_settings({"FINOPS_INTAKE_TEAM_ATTRIBUTES": "resource:k8s.namespace.name, attr:team",
                       "FINOPS_INTAKE_AGENT_ATTRIBUTES": '["attr:user.email"]'})
    attribution = build_attribution(s)
    assert attribution.team == ("resource:k8s.namespace.name", "attr:team")
    assert attribution.agent == ("attr:user.email",)
    with pytest.raises(ConfigError, match="FINOPS_INTAKE_TEAM_ATTRIBUTES.*not a path"):
        load_settings({"FINOPS_INTAKE_TEAM_ATTRIBUTES": "res:x"})
