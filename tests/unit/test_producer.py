"""UsageProducer without a broker: validation before anything is sent, defaults filled, ids, CLI parsing."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producers.cli import build_event, register
from producers.producer import UsageProducer, new_event_id
from schemas.errors import FinopsError, ValidationFailed
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def producer(tmp_path: Path) -> Any:
    # Nothing listens on port 1: nothing can be sent, which is the point of these tests.
    p = UsageProducer("127.0.0.1:1", "agent.usage.v1", "unit-svc", None, clock=lambda: NOW, register_atexit=False)
    yield p
    p.close(timeout=0)


def _event(**over: Any) -> dict[str, Any]:
    base = {"agent_id": "a", "team": "t", "project": "p", "provider": "openai", "model": "gpt-4o",
            "input_tokens": 10, "output_tokens": 5}
    base.update(over)
    return base


def test_prepare_fills_id_time_source_and_encodes_single_object(producer: Any) -> None:
    event_id, key, value = producer.prepare(_event())
    assert key == b"a"
    assert value[:2] == b"\xc3\x01"
    _, decoded = AvroCodec().decode(value)
    assert str(decoded["event_id"]) == event_id
    assert decoded["occurred_at"] == NOW and decoded["source"] == "unit-svc"


def test_caller_values_are_kept(producer: Any) -> None:
    eid = str(uuid.uuid4())
    _, _, value = producer.prepare(_event(event_id=eid, source="other", occurred_at="2026-03-01T11:00:00+00:00"))
    decoded = AvroCodec().decode(value)[1]
    assert str(decoded["event_id"]) == eid and decoded["source"] == "other"
    assert decoded["occurred_at"] == datetime(2026, 3, 1, 11, tzinfo=UTC)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"cache_read_tokens": 11}, "cache_read_tokens"),
        ({"reasoning_tokens": 6}, "reasoning_tokens"),
        ({"agent_id": " "}, "agent_id"),
        ({"occurred_at": datetime(2026, 3, 1, 13, tzinfo=UTC)}, "occurred_at"),
        ({"tags": {str(i): "v" for i in range(65)}}, "tags"),
        ({"input_token": 3}, "input_token"),
        ({"reported_cost": 0.1}, "reported_cost"),
        ({"task_id": 7}, "task_id"),
    ],
)
def test_invalid_events_raise_naming_the_field_and_count(producer: Any, override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        producer.emit(_event(**override))
    assert field in info.value.fields()
    stats = producer.stats()
    assert stats.invalid == 1 and stats.emitted == 0


def test_new_event_id_is_a_v4_uuid() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_emit_after_close_is_refused(tmp_path: Path) -> None:
    p = UsageProducer("127.0.0.1:1", "t", "s", tmp_path / "spool", register_atexit=False)
    p.close(timeout=0)
    with pytest.raises(FinopsError, match="closed"):
        p.emit(_event())


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["emit", *argv])


def test_cli_event_from_flags_and_json_flags_win() -> None:
    args = _parse("--json", '{"agent_id": "j", "team": "t", "input_tokens": 1, "reported_cost": 0.0021}',
                  "--agent", "flag-agent", "--output-tokens", "7", "--tag", "a=1", "--tag", "b=x=y")
    event = build_event(args)
    assert event["agent_id"] == "flag-agent" and event["team"] == "t"
    assert event["output_tokens"] == 7 and event["input_tokens"] == 1
    assert event["tags"] == {"a": "1", "b": "x=y"}
    assert str(event["reported_cost"]) == "0.0021"  # parsed as Decimal, never float


def test_cli_rejects_a_malformed_tag() -> None:
    with pytest.raises(FinopsError, match="KEY=VALUE"):
        build_event(_parse("--tag", "novalue"))
