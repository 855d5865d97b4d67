"""Alerts -> signed control commands: the ladder, scopes, expiry at period end, resume on resolve, rollover tick;
and the operator CLI's authorisation and expiry parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from alerting.control_cli import NotAuthorized, authorize, parse_expiry
from alerting.enforcement import Enforcer, MemoryEnforcementStore, compute_period_end, compute_scope, compute_spec
from schemas.errors import ConfigError
from schemas.models import Alert, verify

pytestmark = pytest.mark.unit

KEYS = {"k1": b"signing-secret"}
T0 = datetime(2025, 3, 14, 9, 27, 6, tzinfo=UTC)


def _alert(**over: object) -> Alert:
    base: dict[str, object] = {
        "alert_id": "a1", "dedup_key": "pol-1:agent=bot-1:100:2025-03", "kind": "budget_threshold",
        "severity": "critical", "state": "trigger", "occurred_at": T0, "team": "support", "project": "triage",
        "agent_id": "bot-1", "policy_id": "pol-1", "title": "bot-1 spent its March budget",
        "summary": "Spend $101.00 of $100.00", "amount_usd": Decimal("101"), "limit_usd": Decimal("100"),
        "details": {"period": "2025-03", "timezone": "UTC", "threshold_percent": "100",
                    "throttle_rate_per_minute": "30", "downgrade_model": "gpt-4o-mini"},
        "actions": ["notify", "suspend"],
    }
    base.update(over)
    return Alert.model_validate(base)


def _enforcer() -> tuple[Enforcer, MemoryEnforcementStore]:
    store = MemoryEnforcementStore()
    return Enforcer(store, key_id="k1", secret=KEYS["k1"], scopes=store.scopes), store


def test_period_end_month_week_day_and_timezone() -> None:
    assert compute_period_end({"period": "2025-03"}) == datetime(2025, 4, 1, tzinfo=UTC)
    assert compute_period_end({"period": "2025-12"}) == datetime(2026, 1, 1, tzinfo=UTC)
    assert compute_period_end({"period": "2025-W11"}) == datetime(2025, 3, 17, tzinfo=UTC)
    assert compute_period_end({"period": "2025-03-14"}) == datetime(2025, 3, 15, tzinfo=UTC)
    # Berlin is UTC+1 in March before the switch: midnight local is 23:00 UTC the day before
    assert compute_period_end({"period": "2025-03-14", "timezone": "Europe/Berlin"}) == \
        datetime(2025, 3, 14, 23, tzinfo=UTC)
    assert compute_period_end({"period_end": "2025-03-14T10:00:00Z"}) == datetime(2025, 3, 14, 10, tzinfo=UTC)
    assert compute_period_end({}) is None


def test_scope_is_explicit_or_most_specific() -> None:
    assert compute_scope(_alert()) == ("agent", "bot-1")
    assert compute_scope(_alert(agent_id=None)) == ("project", "triage")
    assert compute_scope(_alert(agent_id=None, project=None)) == ("team", "support")
    assert compute_scope(_alert(details={"scope_type": "team", "scope_value": "support"})) == ("team", "support")
    assert compute_scope(_alert(agent_id=None, details={"scope_type": "tag", "scope_value": "env=prod"})) is None


def test_strongest_action_wins_and_downgrade_needs_target() -> None:
    spec = compute_spec(_alert(actions=["notify", "throttle", "downgrade"]))
    assert spec is not None and spec.action == "downgrade" and spec.target_model == "gpt-4o-mini"
    spec = compute_spec(_alert(actions=["throttle"]))
    assert spec is not None and spec.action == "throttle" and spec.rate_per_minute == 30
    spec = compute_spec(_alert(actions=["downgrade"], details={"period": "2025-03"}))
    assert spec is not None and spec.action == "throttle" and spec.rate_per_minute == 10
    assert compute_spec(_alert(actions=["notify"])) is None
    assert compute_spec(_alert(kind="anomaly")) is None
    assert compute_spec(_alert(details={"period_end": "2025-03-01T00:00:00Z"})) is None  # period already over


def test_trigger_publishes_signed_suspend_expiring_at_period_end() -> None:
    enforcer, _ = _enforcer()
    [cmd] = enforcer.handle(_alert())
    assert (cmd.scope_type, cmd.scope_value, cmd.action) == ("agent", "bot-1", "suspend")
    assert cmd.expires_at == datetime(2025, 4, 1, tzinfo=UTC)
    assert cmd.issued_by == "policy-engine" and cmd.policy_id == "pol-1" and cmd.issued_at == T0
    assert "policy pol-1" in cmd.reason and "$101.00 of $100.00" in cmd.reason and "2025-03" in cmd.reason
    assert verify(cmd, KEYS)
    assert not verify(cmd.model_copy(update={"action": "resume"}), KEYS)
    # the same alert consumed twice gives the same command id
    again, _ = _enforcer()
    assert again.handle(_alert())[0].command_id == cmd.command_id


def test_resolve_resumes_or_falls_back_to_remaining_step() -> None:
    enforcer, _ = _enforcer()
    enforcer.handle(_alert(alert_id="t80", dedup_key="pol-1:bot-1:80", actions=["throttle"]))
    [suspend] = enforcer.handle(_alert(alert_id="t100", dedup_key="pol-1:bot-1:100"))
    assert suspend.action == "suspend"
    # the limit was raised: the 100% threshold clears, the 80% one still holds -> back to throttle
    [cmd] = enforcer.handle(_alert(alert_id="r100", dedup_key="pol-1:bot-1:100", state="resolve"))
    assert cmd.action == "throttle" and cmd.rate_per_minute == 30 and verify(cmd, KEYS)
    [cmd] = enforcer.handle(_alert(alert_id="r80", dedup_key="pol-1:bot-1:80", state="resolve",
                                   occurred_at=T0 + timedelta(minutes=1)))
    assert cmd.action == "resume" and cmd.reason.startswith("resumed:") and verify(cmd, KEYS)
    # a resolve for a key that never enforced anything does nothing
    assert enforcer.handle(_alert(alert_id="r50", dedup_key="pol-1:bot-1:50", state="resolve")) == []


def test_tick_resumes_scopes_whose_period_ended() -> None:
    enforcer, store = _enforcer()
    enforcer.handle(_alert(details={"period_end": (T0 + timedelta(hours=1)).isoformat()}))
    assert enforcer.tick(T0 + timedelta(minutes=59)) == []
    [cmd] = enforcer.tick(T0 + timedelta(hours=1))
    assert cmd.action == "resume" and "rolled over" in cmd.reason and verify(cmd, KEYS)
    assert store.scopes() == set()
    assert enforcer.tick(T0 + timedelta(hours=2)) == []


def test_operator_key_is_checked_against_the_installations_stored_key(tmp_path: Path) -> None:
    """The reference is the data dir's 0600 key file (generated once), never a variable the caller sets."""
    from finops.secrets import CONTROL_OPERATOR_KEY, secret_path

    stored_file = secret_path(tmp_path, CONTROL_OPERATOR_KEY)
    with pytest.raises(NotAuthorized, match="present this installation's operator key") as missing:
        authorize(None, tmp_path)
    # On a fresh installation the first call creates the key it points at, so `--operator-key "$(cat FILE)"` works.
    assert stored_file.is_file() and f'--operator-key "$(cat {stored_file})"' in str(missing.value)
    assert stored_file.read_text().strip() not in str(missing.value)
    with pytest.raises(NotAuthorized, match="not valid") as caught:
        authorize("op-key", tmp_path)  # a guess does not match the generated key
    stored = stored_file.read_text().strip()
    assert (stored_file.stat().st_mode & 0o777) == 0o600 and len(stored) >= 40
    assert stored not in str(caught.value) and "op-key" not in str(caught.value)
    authorize(stored, tmp_path)
    authorize(stored + "\n", tmp_path)
    with pytest.raises(NotAuthorized, match="not valid"):
        authorize(stored[:-1] + ("A" if stored[-1] != "A" else "B"), tmp_path)


def test_expiry_parsing() -> None:
    now = T0
    assert parse_expiry("2h", now) == now + timedelta(hours=2)
    assert parse_expiry("1d12h", now) == now + timedelta(days=1, hours=12)
    assert parse_expiry("2025-03-15T00:00:00Z", now) == datetime(2025, 3, 15, tzinfo=UTC)
    assert parse_expiry(None, now) is None
    with pytest.raises(ConfigError):
        parse_expiry("tomorrow", now)
    with pytest.raises(ConfigError):
        parse_expiry("2020-01-01T00:00:00Z", now)
