"""Usage-event rules (model and hot-path dict check agree), other records' rules, control-command signing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.errors import ConfigError, FieldProblem, FinopsError, ValidationFailed
from schemas.models import (
    Alert,
    BudgetPolicy,
    ControlCommand,
    PricedUsageEvent,
    SpendAggregate,
    Threshold,
    UsageEvent,
    check_usage_dict,
    compute_aggregate_id,
    load_example,
    parse_usage_event,
    sign,
    validate_event,
    verify,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def _usage(**changes: Any) -> dict[str, Any]:
    """A valid usage event as an Avro dict (what the codec decodes), with ``changes`` applied."""
    base: dict[str, Any] = load_example("usage_event.json").to_avro_dict()
    base.update(changes)
    return base


def _model_problems(data: dict[str, Any], now: datetime = NOW) -> set[tuple[str, str]]:
    try:
        parse_usage_event(data, now)
    except ValidationFailed as err:
        return {(problem.field, problem.rule) for problem in err.problems}
    return set()


def _dict_problems(data: dict[str, Any], now: datetime = NOW) -> set[tuple[str, str]]:
    return {(problem.field, problem.rule) for problem in check_usage_dict(data, now)}


# (changes, field, rule, words the message must contain)
RULE_CASES: list[tuple[dict[str, Any], str, str, tuple[str, ...]]] = [
    ({"input_tokens": -1, "cache_read_tokens": 0}, "input_tokens", "non_negative", ("-1", ">= 0")),
    ({"output_tokens": -5}, "output_tokens", "non_negative", ("-5",)),
    ({"cache_write_tokens": -2}, "cache_write_tokens", "non_negative", ("-2",)),
    ({"web_search_calls": -1}, "web_search_calls", "non_negative", ("-1",)),
    ({"input_tokens": 1000, "cache_read_tokens": 1200}, "cache_read_tokens", "cache_within_input",
     ("cache_read_tokens (1200) must not exceed input_tokens (1000)", "part of input_tokens")),
    ({"input_tokens": 1000, "cache_read_tokens": 0, "cache_write_tokens": 1001}, "cache_write_tokens",
     "cache_within_input", ("cache_write_tokens (1001)", "input_tokens (1000)")),
    ({"input_tokens": 1000, "cache_read_tokens": 600, "cache_write_tokens": 600}, "cache_write_tokens",
     "cache_within_input", ("600 + 600", "input_tokens (1000)")),
    ({"cache_write_tokens": 100, "cache_write_1h_tokens": 101}, "cache_write_1h_tokens",
     "cache_1h_within_cache_write", ("(101)", "cache_write_tokens (100)")),
    ({"output_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens", "reasoning_within_output",
     ("reasoning_tokens (11)", "output_tokens (10)")),
    ({"input_audio_tokens": 999_999}, "input_audio_tokens", "audio_within_input", ("input_tokens",)),
    ({"output_tokens": 10, "output_audio_tokens": 11}, "output_audio_tokens", "audio_within_output", ("(11)",)),
    ({"cache_read_tokens": 5, "cache_audio_read_tokens": 6}, "cache_audio_read_tokens",
     "cache_audio_within_cache_read", ("cache_read_tokens (5)",)),
    ({"image_tokens": 999_999}, "image_tokens", "image_within_input", ("input_tokens",)),
    ({"agent_id": ""}, "agent_id", "not_blank", ("agent_id",)),
    ({"team": "   "}, "team", "not_blank", ("team",)),
    ({"project": "\t"}, "project", "not_blank", ("project",)),
    ({"provider": ""}, "provider", "not_blank", ("provider",)),
    ({"model": " "}, "model", "not_blank", ("model",)),
    ({"source": ""}, "source", "not_blank", ("source",)),
    ({"occurred_at": NOW + timedelta(minutes=5, seconds=1)}, "occurred_at", "not_in_future",
     ("ahead of the validating clock", "0:05:00")),
    ({"tags": {f"k{i}": "v" for i in range(65)}}, "tags", "tags_max_entries", ("65", "64")),
    ({"tags": {"k" * 257: "v"}}, "tags." + "k" * 40, "tag_key_length", ("257", "256")),
    ({"tags": {"team": "v" * 257}}, "tags.team", "tag_value_length", ("257", "256")),
    ({"status": "exploded"}, "status", "status_allowed", ("'exploded'", "rate_limited")),
    ({"attempt": 0}, "attempt", "attempt_min", ("attempt (0)", ">= 1")),
    ({"latency_ms": -3}, "latency_ms", "non_negative", ("-3",)),
    ({"event_id": "not-a-uuid"}, "event_id", "uuid", ("'not-a-uuid'",)),
    ({"event_id": "0B5F3C1E-6A4D-4D7E-9A51-2F6F0C8E1A01"}, "event_id", "uuid", ("lower-case",)),
]


@pytest.mark.parametrize(("changes", "field", "rule", "words"), RULE_CASES,
                         ids=[f"{case[2]}:{case[1][:20]}" for case in RULE_CASES])
def test_rule_is_refused_naming_the_field(changes: dict[str, Any], field: str, rule: str,
                                         words: tuple[str, ...]) -> None:
    data = _usage(**changes)
    problems = check_usage_dict(data, NOW)
    matching = [problem for problem in problems if problem.field == field and problem.rule == rule]
    assert matching, problems
    for word in words:
        assert word in matching[0].message
    with pytest.raises(ValidationFailed) as caught:
        parse_usage_event(data, NOW)
    assert field in caught.value.fields()
    assert field in str(caught.value)


@pytest.mark.parametrize("changes", [case[0] for case in RULE_CASES] + [
    {},
    {"occurred_at": NOW + timedelta(minutes=5)},  # exactly at the skew limit: accepted
    {"occurred_at": NOW - timedelta(days=400)},  # late events are the stream's business, not a contract breach
    {"tags": {f"k{i}": "v" * 256 for i in range(64)}},
    {"input_tokens": 100, "cache_read_tokens": 60, "cache_write_tokens": 40, "cache_write_1h_tokens": 40},
    {"team": " ", "status": "boom", "attempt": 0, "output_tokens": 1, "reasoning_tokens": 2},
])
def test_model_and_dict_paths_agree(changes: dict[str, Any]) -> None:
    data = _usage(**changes)
    assert _model_problems(data) == _dict_problems(data)


def test_valid_event_has_no_problems_on_either_path() -> None:
    data = _usage()
    assert check_usage_dict(data, NOW) == []
    assert parse_usage_event(data, NOW) == load_example("usage_event.json")


def test_all_problems_are_collected_at_once() -> None:
    data = _usage(team="", model=" ", output_tokens=-1, status="nope", attempt=0,
                  occurred_at=NOW + timedelta(hours=1))
    with pytest.raises(ValidationFailed) as caught:
        parse_usage_event(data, NOW)
    fields = set(caught.value.fields())
    assert {"team", "model", "output_tokens", "status", "attempt", "occurred_at"} <= fields
    text = str(caught.value)
    assert text.count("\n  - ") == len(caught.value.problems)
    assert isinstance(caught.value, FinopsError)


def test_type_errors_are_validation_failed_naming_the_field() -> None:
    with pytest.raises(ValidationFailed) as caught:
        UsageEvent.from_avro_dict(_usage(input_tokens="lots", occurred_at="yesterday"))
    assert {"input_tokens", "occurred_at"} <= set(caught.value.fields())


def test_dict_check_reports_missing_required_fields() -> None:
    data = _usage()
    del data["input_tokens"]
    del data["agent_id"]
    assert {("input_tokens", "required"), ("agent_id", "required")} <= _dict_problems(data)


def test_future_rule_needs_a_clock_and_uses_the_injected_one() -> None:
    future = _usage(occurred_at=NOW + timedelta(hours=1))
    # Without a clock (reading stored events back) the model does not guess one.
    event = UsageEvent.from_avro_dict(future)
    with pytest.raises(ValidationFailed, match="occurred_at"):
        validate_event(event, NOW)
    assert validate_event(event, NOW + timedelta(hours=1)) is event
    with pytest.raises(ValidationFailed, match="not_in_future"):
        UsageEvent.model_validate(future, context={"now": NOW})
    with pytest.raises(TypeError):
        validate_event(event, datetime(2025, 1, 1))  # naive clock is a programming error  # noqa: DTZ001


def test_money_refuses_float_and_excess_scale() -> None:
    with pytest.raises(ValidationFailed, match="reported_cost") as caught:
        UsageEvent.from_avro_dict(_usage(reported_cost=0.1))
    assert "float" in str(caught.value)
    with pytest.raises(ValidationFailed, match="reported_cost"):
        UsageEvent.from_avro_dict(_usage(reported_cost=Decimal("0.0000000000001")))  # 13 decimal places
    assert UsageEvent.from_avro_dict(_usage(reported_cost="0.000000000001")).reported_cost == Decimal("1E-12")


def test_timestamps_must_be_aware_and_become_utc() -> None:
    with pytest.raises(ValidationFailed, match="occurred_at"):
        UsageEvent.from_avro_dict(_usage(occurred_at=datetime(2025, 3, 14, 9, 0)))  # noqa: DTZ001
    event = UsageEvent.from_avro_dict(_usage(occurred_at="2025-03-14T10:00:00+01:00"))
    assert event.occurred_at == datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC


def test_uuid_objects_are_accepted_as_canonical_strings() -> None:
    import uuid

    value = uuid.uuid4()
    assert UsageEvent.from_avro_dict(_usage(event_id=value)).event_id == str(value)


def test_field_problem_str_names_field_and_rule() -> None:
    assert str(FieldProblem("team", "not_blank", "empty")) == "team [not_blank]: empty"


# ---------------------------------------------------------------------------------------------- other records


def _priced(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = load_example("priced_usage_event.json").to_avro_dict()
    base.update(changes)
    return base


def test_priced_event_rules() -> None:
    with pytest.raises(ValidationFailed) as caught:
        PricedUsageEvent.from_avro_dict(_priced(pricing_status="unpriced", unpriced_reason=None,
                                                source_offset=-1, team=""))
    fields = set(caught.value.fields())
    assert {"cost_usd", "unpriced_reason", "source_offset", "team"} <= fields
    with pytest.raises(ValidationFailed, match="cost_parts_sum"):
        PricedUsageEvent.from_avro_dict(_priced(cost_usd=Decimal("1")))
    with pytest.raises(ValidationFailed, match="price_source"):
        PricedUsageEvent.from_avro_dict(_priced(price_source="guess"))


def test_spend_aggregate_id_is_deterministic_and_checked() -> None:
    record = load_example("spend_aggregate.json")
    assert isinstance(record, SpendAggregate)
    assert record.aggregate_id == compute_aggregate_id(record.window_start, "team", "customer-support", 3)
    data = record.to_avro_dict()
    data["aggregate_id"] = "whatever"
    data["window_end"] = data["window_start"]
    with pytest.raises(ValidationFailed) as caught:
        SpendAggregate.from_avro_dict(data)
    assert {"aggregate_id", "window_end"} <= set(caught.value.fields())


def test_alert_closed_sets_are_enforced() -> None:
    data = load_example("alert.json").to_avro_dict()
    good = dict(data)
    data.update(kind="meteor", severity="apocalyptic", state="maybe")
    with pytest.raises(ValidationFailed) as caught:
        Alert.from_avro_dict(data)
    assert set(caught.value.fields()) == {"kind", "severity", "state"}
    # Cross-field rules run once the types are right.
    good.update(title=" ", dedup_key="")
    with pytest.raises(ValidationFailed) as caught:
        Alert.from_avro_dict(good)
    assert set(caught.value.fields()) == {"title", "dedup_key"}


def test_budget_policy_rules_collect_nested_threshold_problems() -> None:
    data = load_example("budget_policy.json").to_avro_dict()
    data.update(
        scope_type="tag", scope_value="no-equals", timezone="Mars/Olympus", version=0, downgrade_model=None,
        throttle_rate_per_minute=None,
        thresholds=[{"percent": 0, "actions": ["throttle"]}, {"percent": 0, "actions": ["downgrade"]}],
    )
    with pytest.raises(ValidationFailed) as caught:
        BudgetPolicy.from_avro_dict(data)
    problems = {(problem.field, problem.rule) for problem in caught.value.problems}
    assert {
        ("scope_value", "tag_scope"),
        ("timezone", "timezone"),
        ("version", "version_min"),
        ("thresholds.0.percent", "percent_range"),
        ("thresholds.1.percent", "distinct_percent"),
        ("throttle_rate_per_minute", "throttle_rate"),
        ("downgrade_model", "downgrade_target"),
    } <= problems
    assert caught.value.record == "BudgetPolicy"


def test_threshold_type_errors_keep_their_path() -> None:
    data = load_example("budget_policy.json").to_avro_dict()
    data["thresholds"] = [{"percent": 50, "actions": ["explode"]}]
    with pytest.raises(ValidationFailed) as caught:
        BudgetPolicy.from_avro_dict(data)
    assert caught.value.fields() == ["thresholds.0.actions.0"]
    with pytest.raises(ValidationFailed, match="percent"):
        Threshold(percent=2000, actions=["notify"])


# ---------------------------------------------------------------------------------------------- signing

KEYS = {"k1": b"secret-one", "k2": b"secret-two"}


def _command() -> ControlCommand:
    command = load_example("control_command.json")
    assert isinstance(command, ControlCommand)
    return command


def test_signed_command_verifies() -> None:
    signed = sign(_command(), "k1", KEYS["k1"])
    assert signed.key_id == "k1" and len(signed.signature) == 64
    assert verify(signed, KEYS)
    # The signed form survives the wire: a decoded, re-validated command still verifies.
    assert verify(ControlCommand.from_avro_dict(signed.to_avro_dict()), KEYS)


@pytest.mark.parametrize(("field", "value"), [
    ("action", "suspend"),
    ("scope_value", "another-team"),
    ("rate_per_minute", 3000),
    ("expires_at", datetime(2030, 1, 1, tzinfo=UTC)),
    ("key_id", "k2"),
    ("policy_id", None),
])
def test_tampered_command_fails_verification(field: str, value: Any) -> None:
    signed = sign(_command(), "k1", KEYS["k1"])
    tampered = signed.model_copy(update={field: value})
    assert not verify(tampered, KEYS)


def test_unknown_key_or_bad_signature_fails() -> None:
    signed = sign(_command(), "k1", KEYS["k1"])
    assert not verify(signed, {"k2": KEYS["k2"]})
    assert not verify(signed.model_copy(update={"signature": "0" * 64}), KEYS)
    assert not verify(signed.model_copy(update={"signature": "é"}), KEYS)
    assert not verify(_command(), KEYS)  # unsigned


def test_canonical_bytes_are_sorted_json_without_signature() -> None:
    signed = sign(_command(), "k1", KEYS["k1"])
    text = signed.canonical_bytes().decode()
    assert "signature" not in text
    assert text.startswith('{"action":"throttle","command_id":')
    assert '"issued_at":1741944426000000' in text  # timestamps as Avro micros, language-neutral


def test_sign_refuses_empty_key_material() -> None:
    with pytest.raises(ConfigError, match="secret"):
        sign(_command(), "k1", b"")
    with pytest.raises(ConfigError, match="key_id"):
        sign(_command(), " ", b"x")


def test_control_command_rules() -> None:
    data = _command().to_avro_dict()
    data.update(action="throttle", rate_per_minute=None, expires_at=data["issued_at"], signature="xyz")
    with pytest.raises(ValidationFailed) as caught:
        ControlCommand.from_avro_dict(data)
    assert {"rate_per_minute", "expires_at", "signature"} <= set(caught.value.fields())
    data = _command().to_avro_dict()
    data.update(action="downgrade", target_model=None)
    with pytest.raises(ValidationFailed, match="target_model"):
        ControlCommand.from_avro_dict(data)


def test_non_string_tag_value_is_a_problem_not_a_crash() -> None:
    from datetime import datetime

    from schemas.models import UsageEvent, check_usage_dict, load_example

    record = UsageEvent.model_validate(load_example("usage_event.json")).to_avro_dict()
    record["tags"] = {"retries": 1}
    problems = check_usage_dict(record, datetime.now(UTC))
    assert [(p.field, p.rule) for p in problems] == [("tags", "type")]


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"input_tokens": -5}, "input_tokens", "non_negative"),
    ({"output_tokens": -1}, "output_tokens", "non_negative"),
    ({"cache_read_tokens": -1}, "cache_read_tokens", "non_negative"),
    ({"cache_write_tokens": "3"}, "cache_write_tokens", "type"),
    ({"input_tokens": None}, "input_tokens", "required"),
])
def test_a_broken_count_is_one_problem_not_a_cascade(changes: dict[str, Any], field: str, rule: str) -> None:
    """Relations (cache/audio/image within input, reasoning within output...) compare valid counts only: one bad
    field is reported once, by its own rule, and not again by each rule that compares another field with it."""
    problems = check_usage_dict(_usage(**changes), NOW)
    assert [(p.field, p.rule) for p in problems] == [(field, rule)], problems
