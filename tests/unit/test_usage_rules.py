"""The usage rules are declared once (schemas.usage_rules) and every side derived from them agrees: for each declared
rule a failing example is refused by the rule's own fast form, by the hot path's fast accept and by the producer's
one-pass path, and the diagnosis (check_usage_dict, UsageProducer.prepare, emit_many) names that field and rule.
A rule added without an example, or changed so its example passes on one side only, fails here.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers import producer as producer_module
from producers.producer import BatchValidationFailed, UsageProducer, new_event_id
from schemas.errors import ConfigError, ValidationFailed
from schemas.fastcodec import encode_long
from schemas.models import USAGE_EVENT_RULES, check_usage_dict, to_micros
from schemas.usage_rules import MAX_TAG_LENGTH, MAX_TAGS, USAGE_RULES, UsageRule, UsageRules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INPUT_RULES: UsageRules = producer_module._INPUT_RULES
#: A valid event as the SDK is given it (its id, source and time filled in later), and completed.
GIVEN: dict[str, Any] = {"agent_id": "a", "team": "t", "project": "p", "provider": "openai", "model": "gpt-4o",
                         "input_tokens": 10, "output_tokens": 5}
COMPLETE: dict[str, Any] = {**GIVEN, "event_id": str(uuid.UUID(int=1, version=4)), "source": "svc",
                            "occurred_at": NOW - timedelta(minutes=1)}
_TEXT = ("source", "agent_id", "team", "project", "provider", "model")
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
           "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
           "web_search_calls", "requests")

#: (field, rule) -> events breaking it (changes to COMPLETE); together they break every declared rule.
EXAMPLES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("event_id", "required"): [{"event_id": 5}],
    ("event_id", "uuid"): [{"event_id": "not-a-uuid"}, {"event_id": "ABCDEFAB-CDEF-4ABC-8DEF-ABCDEFABCDEF"}],
    **{(name, "required"): [{name: 5}] for name in _TEXT},
    **{(name, "not_blank"): [{name: ""}, {name: " \t"}] for name in _TEXT},
    **{(name, "required"): [{name: None}] for name in _COUNTS},
    **{(name, "type"): [{name: "5"}, {name: True}, {name: 5.0}] for name in _COUNTS},
    **{(name, "non_negative"): [{name: -1}] for name in _COUNTS},
    ("cache_read_tokens", "cache_within_input"): [{"cache_read_tokens": 11}],
    ("cache_write_tokens", "cache_within_input"): [{"cache_write_tokens": 11},
                                                   {"cache_read_tokens": 6, "cache_write_tokens": 5}],
    ("cache_write_1h_tokens", "cache_1h_within_cache_write"): [{"cache_write_tokens": 2, "cache_write_1h_tokens": 3}],
    ("reasoning_tokens", "reasoning_within_output"): [{"reasoning_tokens": 6}],
    ("input_audio_tokens", "audio_within_input"): [{"input_audio_tokens": 11}],
    ("output_audio_tokens", "audio_within_output"): [{"output_audio_tokens": 6}],
    ("cache_audio_read_tokens", "cache_audio_within_cache_read"): [{"cache_read_tokens": 2,
                                                                    "cache_audio_read_tokens": 3}],
    ("image_tokens", "image_within_input"): [{"image_tokens": 11}],
    ("attempt", "attempt_min"): [{"attempt": 0}, {"attempt": "1"}],
    ("status", "status_allowed"): [{"status": "weird"}],
    ("latency_ms", "non_negative"): [{"latency_ms": -1}, {"latency_ms": 1.5}],
    ("occurred_at", "required"): [{"occurred_at": 5}],
    ("occurred_at", "timezone"): [{"occurred_at": NOW.replace(tzinfo=None)}],
    ("occurred_at", "not_in_future"): [{"occurred_at": NOW + timedelta(minutes=5, seconds=1)}],
    ("tags", "type"): [{"tags": [("k", "v")]}, {"tags": {"k": 1}}, {"tags": {1: "v"}}],
    ("tags", "tags_max_entries"): [{"tags": {f"k{i}": "v" for i in range(MAX_TAGS + 1)}}],
    ("tags", "tag_key_length"): [{"tags": {"k" * (MAX_TAG_LENGTH + 1): "v"}}],
    ("tags", "tag_value_length"): [{"tags": {"k": "v" * (MAX_TAG_LENGTH + 1)}}],
    # The SDK's input rules.
    **{(name, "type"): [{name: 5}] for name in ("task_id", "parent_task_id", "task_type", "environment",
                                                "prompt_hash")},
}


def _cases() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for (field, rule), changes in EXAMPLES.items():
        for change in changes:
            yield field, rule, change


CASES = list(_cases())
IDS = [f"{field}-{rule}-{index}" for index, (field, rule, _) in enumerate(CASES)]


def _named(problems: list[Any], field: str, rule: str, prefix: str = "") -> bool:
    # An entry rule names the entry (tags.<key>); every other rule names the field.
    return any(p.rule == rule and (p.field == prefix + field or p.field.startswith(f"{prefix}{field}."))
               for p in problems)


def _rules_of(field: str, rule: str) -> tuple[UsageRules, list[int]]:
    for rules in (USAGE_EVENT_RULES, INPUT_RULES):
        found = [i for i, r in enumerate(rules.rules) if (r.field, r.rule) == (field, rule)]
        if found:
            return rules, found
    raise AssertionError(f"no declared rule {field} [{rule}]")


def _fast_refutes(rules: UsageRules, index: int, record: dict[str, Any]) -> bool:
    """The fast form of rules.rules[index] (of the next rule of its chain when it is implied) is false for
    ``record``: for an entry rule, on some entry."""
    rule = rules.rules[index]
    if rule.implied:
        index += 1
        assert (rules.rules[index].chain or rules.rules[index].field) == (rule.chain or rule.field)
        rule = rules.rules[index]
    values = {name: record.get(name, rules.defaults.get(name)) for name in rules.fields}
    env = {"__builtins__": builtins, **rules.names, "now": NOW}
    expression = rules.fast_forms[index].format_map({name: f"_v[{name!r}]" for name in (*rule.fields, "key", "value")})
    if not rule.entries:
        return not eval(expression, {**env, "_v": values})  # noqa: S307 - the rules' own text
    return any(not eval(expression, {**env, "_v": {**values, "key": k, "value": v}})  # noqa: S307
               for k, v in values[rule.field].items())


def test_every_declared_rule_has_an_example_it_breaks() -> None:
    for rules in (USAGE_EVENT_RULES, INPUT_RULES):
        for rule in rules.rules:
            examples = EXAMPLES.get((rule.field, rule.rule))
            assert examples, f"declared rule {rule.field} [{rule.rule}] has no failing example here"
            assert any(rule in rules.broken_rules({**COMPLETE, **change}, NOW) for change in examples), (
                f"no example breaks {rule.field} [{rule.rule}] ({rule.test})")


@pytest.fixture(scope="module")
def producer() -> Iterator[UsageProducer]:
    # Nothing listens on port 1: nothing is sent; the producer only prepares.
    p = UsageProducer("127.0.0.1:1", "agent.usage.v1", "svc", None, clock=lambda: NOW, register_atexit=False)
    yield p
    p.close(timeout=0)


@pytest.mark.parametrize(("field", "rule", "change"), CASES, ids=IDS)
def test_each_side_refuses_the_example_and_names_the_rule(producer: UsageProducer, field: str, rule: str,
                                                          change: dict[str, Any]) -> None:
    record = {**COMPLETE, **change}
    rules, indexes = _rules_of(field, rule)
    # The rule's own fast form refuses it (one of the rules declared under this name).
    assert any(_fast_refutes(rules, i, record) for i in indexes)
    # The hot path: the fast accept doubts it and the diagnosis names field and rule.
    if rules is USAGE_EVENT_RULES:
        assert not USAGE_EVENT_RULES.looks_valid(record, NOW)
        assert _named(check_usage_dict(record, NOW), field, rule)
    # The SDK: the one-pass path declines it, prepare and emit_many refuse it naming field and rule.
    given = {**GIVEN, **change}
    micros = to_micros(NOW)
    assert producer._fast is not None
    assert producer._fast(given, new_event_id, "svc", producer._source_bytes, NOW, micros, encode_long(micros)) is None
    with pytest.raises(ValidationFailed) as one:
        producer.prepare(given)
    assert _named(one.value.problems, field, rule), one.value
    with pytest.raises(BatchValidationFailed) as many:
        producer.emit_many([dict(GIVEN), given])
    assert many.value.indexes() == [1]
    assert _named(many.value.problems, field, rule, prefix="1."), many.value
    assert f"event 1: {field}" in str(many.value) and f"[{rule}]" in str(many.value)
    assert "none was sent" in str(many.value)


def test_the_examples_are_otherwise_valid() -> None:
    assert check_usage_dict(COMPLETE, NOW) == []
    assert USAGE_EVENT_RULES.looks_valid(COMPLETE, NOW)


@pytest.mark.parametrize("test", ["not isinstance({x}, str)", "not (type({x}) is int)",
                                  "isinstance({x}, list)"])
def test_a_type_test_that_the_fast_form_would_widen_is_refused(test: str) -> None:
    with pytest.raises(ConfigError):
        UsageRules([UsageRule("x", "r", test, lambda v: "m")], defaults={})


def test_the_declaration_is_the_one_the_model_uses() -> None:
    assert USAGE_EVENT_RULES.rules == USAGE_RULES
