"""UsageProducer without a broker: validation before anything is sent, defaults filled, ids, CLI parsing."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producers.cli import build_event, register
from producers.producer import BatchValidationFailed, UsageProducer, new_event_id
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


def test_all_brokers_down_is_said_once_per_interval_through_an_outage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka reports _ALL_BROKERS_DOWN at every failed reconnect: one warning per LOG_INTERVAL_S, the rest at
    DEBUG, and the producer spools either way."""
    import producers.producer as module
    from confluent_kafka import KafkaError
    from finops.kafka.clients import LOG_INTERVAL_S

    p = UsageProducer("127.0.0.1:1", "t", "s", tmp_path / "spool", register_atexit=False)
    p.close(timeout=0)  # stops its poll thread, whose real reports of the dead port would mix in
    p._down_said_at = None
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN)
    with caplog.at_level(logging.DEBUG, logger=module.__name__):
        caplog.clear()
        for step in range(20):  # a report every 2 s, for 40 s
            now[0] = 1000.0 + 2 * step
            p._on_error(down)
    said = [r for r in caplog.records if "all brokers down" in r.getMessage() and r.name == module.__name__]
    warnings = [r.created for r in said if r.levelno == logging.WARNING]
    assert len(said) == 20 and len(warnings) == 2  # at 0 s and once LOG_INTERVAL_S has passed
    assert LOG_INTERVAL_S <= 38
    assert not p._broker_ok


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


_EMIT_OK = ("--team", "search", "--project", "docs", "--provider", "openai", "--model", "gpt-4o",
            "--input-tokens", "10", "--output-tokens", "5")


def _emit_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
               *argv: str) -> tuple[int, list[str], str]:
    """``finops emit ...`` through the CLI's main function, against an unreachable broker; returns (exit code, the
    problem lines of the error, stderr)."""
    from finops.cli import main

    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FINOPS_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    code = main(["emit", *argv, "--timeout", "1"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("  - ")], err


def test_emit_with_one_bad_flag_reports_that_flag_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--agent", "", *_EMIT_OK)
    assert code == 2
    assert len(problems) == 1, err
    assert problems[0].startswith("  - --agent (agent_id) [not_blank]"), err
    assert "broker" not in err and "spool" not in err  # refused before any connection


def test_emit_with_a_negative_count_reports_no_follow_on_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a if a != "10" else "-5" for a in _EMIT_OK]
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--agent", "a1", *argv)
    assert code == 2
    assert problems == [("  - --input-tokens (input_tokens) [non_negative]: input_tokens (-5) must be >= 0: "
                         "counts cannot be negative")], err
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--agent", "a1", *_EMIT_OK,
                                     "--occurred-at", "yesterday")
    assert code == 2 and len(problems) == 1 and problems[0].startswith("  - --occurred-at (occurred_at) [type]"), err


def test_emit_names_the_json_field_and_a_missing_fields_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    event = {"agent_id": 5, "team": "t", "project": "p", "provider": "openai", "model": "m", "input_tokens": 1,
             "output_tokens": 1}
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--json", json.dumps(event))
    assert code == 2
    assert len(problems) == 1 and problems[0].startswith("  - --json field agent_id [required]"), err
    # a flag overrides the JSON field, and the error names the flag
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--json", json.dumps(event), "--agent", " ")
    assert code == 2 and len(problems) == 1 and problems[0].startswith("  - --agent (agent_id) [not_blank]"), err
    # nobody gave the team: the error names the flag that sets it
    code, problems, err = _emit_main(monkeypatch, tmp_path, capsys, "--agent", "a1",
                                     *[a for a in _EMIT_OK if a not in ("--team", "search")])
    assert code == 2 and len(problems) == 1 and problems[0].startswith("  - --team (team) [required]"), err


# ---------------------------------------------------------------------------------------------------- emit_many
class _Spy:
    """The librdkafka producer with a record of what was handed to it (its len() also counts queued log and error
    events, so it cannot say what was produced)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.produced: list[tuple[bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *args: Any, **kwargs: Any) -> None:
        self.real.produce(topic, value, key, *args, **kwargs)
        self.produced.append((key, value))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __len__(self) -> int:
        return len(self.real)


def _spied(producer: Any) -> _Spy:
    spy = _Spy(producer._producer)
    producer._producer = spy
    return spy


def _batch(n: int) -> list[dict[str, Any]]:
    return [_event(agent_id=f"agent-{i % 3}", input_tokens=10 + i, task_id=f"task-{i}", event_id=str(uuid.uuid4()),
                   tags={"seq": str(i)}) for i in range(n)]


def test_prepare_many_gives_the_bytes_prepare_gives_each_event(producer: Any) -> None:
    events = _batch(50) + [_event(reported_cost="0.0125", latency_ms=7, occurred_at="2026-03-01T11:00:00+00:00",
                                  event_id=str(uuid.uuid4()))]
    assert producer.prepare_many(events) == [producer.prepare(e) for e in events]


def test_prepare_many_fills_ids_times_and_source_once_per_event(producer: Any) -> None:
    prepared = producer.prepare_many([_event(), _event(agent_id="b")])
    codec = AvroCodec()
    decoded = [codec.decode(value)[1] for _, _, value in prepared]
    assert [key for _, key, _ in prepared] == [b"a", b"b"]
    assert [str(d["event_id"]) for d in decoded] == [eid for eid, _, _ in prepared]
    assert prepared[0][0] != prepared[1][0]
    assert all(d["occurred_at"] == NOW and d["source"] == "unit-svc" for d in decoded)


def test_prepare_many_takes_models_and_dicts(producer: Any) -> None:
    from schemas.models import UsageEvent

    model = UsageEvent.from_avro_dict(dict(_event(event_id=str(uuid.uuid4()), source="m", occurred_at=NOW)))
    plain = _event(event_id=str(uuid.uuid4()))
    assert producer.prepare_many([model, plain]) == [producer.prepare(model), producer.prepare(plain)]


def test_prepare_many_does_not_change_the_callers_events(producer: Any) -> None:
    events = _batch(3)
    before = [dict(e) for e in events]
    producer.prepare_many(events)
    assert events == before


def test_emit_many_refuses_the_whole_batch_naming_each_bad_index_and_field(producer: Any) -> None:
    events = _batch(10)
    events[3]["input_tokens"] = -1
    events[7]["agent_id"] = " "
    events[7]["reported_cost"] = 0.5
    spy = _spied(producer)
    with pytest.raises(BatchValidationFailed) as info:
        producer.emit_many(events)
    err = info.value
    assert err.indexes() == [3, 7]
    assert [p.field for p in err.invalid[3]] == ["input_tokens"]
    assert {p.field for p in err.invalid[7]} == {"agent_id", "reported_cost"}
    assert "3.input_tokens" in err.fields() and "7.agent_id" in err.fields()
    assert "2 of 10 events are invalid, so none was sent" in str(err)
    assert "event 3: input_tokens [non_negative]" in str(err)
    assert isinstance(err, ValidationFailed)  # `except ValidationFailed` catches a bad batch too
    stats = producer.stats()
    assert stats.invalid == 2 and stats.emitted == 0  # nothing handed over: the good eight were not sent either
    assert spy.produced == []


def test_emit_many_names_the_same_problems_as_emit(producer: Any) -> None:
    bad = _event(cache_read_tokens=11, occurred_at=datetime(2026, 3, 1, 13, tzinfo=UTC))
    with pytest.raises(ValidationFailed) as single:
        producer.emit(bad)
    with pytest.raises(BatchValidationFailed) as batch:
        producer.emit_many([_event(), bad])
    assert batch.value.invalid == {1: single.value.problems}


def test_emit_many_hands_every_event_over_in_order(producer: Any) -> None:
    events = _batch(20)
    spy = _spied(producer)
    ids = producer.emit_many(events)
    assert ids == [e["event_id"] for e in events]
    assert producer.stats().emitted == 20
    assert spy.produced == [(key, value) for _, key, value in producer.prepare_many(events)]


def test_emit_many_of_nothing_sends_nothing(producer: Any) -> None:
    assert producer.emit_many([]) == []
    assert producer.stats().emitted == 0


def test_emit_many_after_close_is_refused(tmp_path: Path) -> None:
    p = UsageProducer("127.0.0.1:1", "t", "s", tmp_path / "spool", register_atexit=False)
    p.close(timeout=0)
    with pytest.raises(FinopsError, match="closed"):
        p.emit_many([_event()])


def test_emit_many_names_the_event_that_cannot_be_encoded_and_sends_none(producer: Any) -> None:
    from decimal import Decimal

    from schemas.errors import EncodeError

    spy = _spied(producer)
    # Valid by the rules, but Avro decimal(38, 12) cannot hold 13 decimal places: the encoder refuses it.
    odd = _event(reported_cost=Decimal("0.0000000000001"))
    with pytest.raises(EncodeError, match=r"event 2 of the batch \(none was sent\)"):
        producer.emit_many([_event(), _event(), odd, _event()])
    assert producer.stats().emitted == 0 and spy.produced == []


class _SpoolingProducer:
    """A UsageProducer opened on a spool that still holds events: emit reports "spooled" at once (the new event
    goes behind them); flush is the drainer sending the whole spool when ``broker_up``."""

    topic = "agent.usage.v1"

    def __init__(self, broker_up: bool) -> None:
        self.broker_up = broker_up
        self.pending = 3
        self.flushed: list[float] = []

    def emit(self, event: dict[str, Any], on_delivery: Any) -> str:
        from producers.producer import Delivery

        self.pending += 1
        on_delivery(Delivery(event_id="e1", status="spooled"))
        return "e1"

    def flush(self, timeout: float) -> int:
        self.flushed.append(timeout)
        if self.broker_up:
            self.pending = 0
        return self.pending

    def close(self, timeout: float | None = None) -> int:
        return self.pending


@pytest.mark.parametrize("broker_up", [True, False])
def test_emit_sends_what_waits_in_its_spool_when_the_broker_is_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], broker_up: bool) -> None:
    from finops.cli import main
    from producers.producer import UsageProducer

    fake = _SpoolingProducer(broker_up)
    monkeypatch.setattr(UsageProducer, "from_settings", staticmethod(lambda *a, **k: fake))
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path))
    code = main(["emit", "--agent", "a1", *_EMIT_OK, "--timeout", "1"])
    out = capsys.readouterr().out
    assert len(fake.flushed) == 1 and 0 < fake.flushed[0] <= 1  # waited for the drainer, within --timeout
    if broker_up:
        assert code == 0 and "delivered to agent.usage.v1 through the spool" in out, out
    else:
        assert code == 3 and fake.pending == 4
        assert "spooled: the broker is unreachable (the spool was not sent within --timeout 1s)" in out, out
