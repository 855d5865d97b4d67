"""The synthetic fleet: deterministic, valid, realistic in shape, and misbehaving exactly as its answer key says."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from pydantic import ValidationError

from producers.simulator import (
    MAX_NORMAL_ATTEMPTS,
    MODEL_MIXES,
    NORMAL_MAX_INPUT_TOKENS,
    OVERSIZED_INPUT_RANGE,
    UNKNOWN_MODEL,
    AnswerKey,
    Misbehaviour,
    Simulation,
    SimulationConfig,
    SimulationError,
    config_from_args,
    generate,
    parse_duration,
    parse_rate,
    register_commands,
)
from producers.replay import event_to_json
from schemas.errors import ConfigError, FinopsError
from schemas.models import UsageEvent, check_usage_dict
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

# A validating clock far after any simulated time, so only the future-time rule is irrelevant here.
LATER = datetime(2030, 1, 1, tzinfo=UTC)

ALL_KINDS = ("retry_loop:agent-003", "runaway:agent-005", "duplicate_prompts:agent-007",
             "unknown_model:agent-009", "oversized_prompts:agent-011")


def _config(**overrides: Any) -> SimulationConfig:
    values: dict[str, Any] = {"agents": 20, "teams": 4, "projects": 6, "duration_s": 900.0, "rate_per_s": 10.0}
    values.update(overrides)
    return SimulationConfig(**values)


@pytest.fixture(scope="module")
def misbehaving() -> tuple[list[dict[str, Any]], AnswerKey]:
    sim = Simulation(_config(duration_s=1800.0, misbehaviours=tuple(Misbehaviour.parse(t) for t in ALL_KINDS)))
    events = list(sim.events())
    return events, sim.answer_key


@pytest.fixture(scope="module")
def normal() -> list[dict[str, Any]]:
    return list(generate(_config(duration_s=1800.0)))


# ---- determinism ---------------------------------------------------------------------------------------------
def test_same_config_same_events() -> None:
    config = _config(misbehaviours=(Misbehaviour.parse("runaway:agent-002"),))
    first = list(generate(config))
    second = list(generate(SimulationConfig.model_validate_json(config.model_dump_json())))
    assert len(first) > 1000
    assert first == second


def test_other_seed_other_events_and_ids() -> None:
    a = list(generate(_config(seed=1)))
    b = list(generate(_config(seed=2)))
    assert [e["input_tokens"] for e in a[:200]] != [e["input_tokens"] for e in b[:200]]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in b}


def test_events_in_event_time_order_within_the_run(normal: list[dict[str, Any]]) -> None:
    config = _config(duration_s=1800.0)
    times = [e["occurred_at"] for e in normal]
    assert times == sorted(times)
    assert times[0] >= config.start
    assert times[-1] < config.start + timedelta(seconds=1800)


def test_answer_key_only_after_the_run() -> None:
    sim = Simulation(_config())
    events = sim.events()
    next(events)
    with pytest.raises(SimulationError):
        _ = sim.answer_key
    list(events)
    assert sim.answer_key.events > 0
    with pytest.raises(SimulationError):
        list(sim.events())


# ---- validity --------------------------------------------------------------------------------------------------
def test_every_event_is_valid(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, _ = misbehaving
    invalid = [(e["event_id"], check_usage_dict(e, LATER)) for e in events if check_usage_dict(e, LATER)]
    assert invalid == []
    assert len({e["event_id"] for e in events}) == len(events)
    codec = AvroCodec()
    for event in events[::50]:
        model = UsageEvent.model_validate(event)
        name, decoded = codec.decode(codec.encode(model.to_avro_dict(), "UsageEvent"))
        assert decoded["event_id"] == event["event_id"]


def test_normal_models_are_priced_by_the_catalogue_and_the_unknown_one_is_not() -> None:
    for mix in MODEL_MIXES:
        for provider, model, _ in mix:
            price = calc_price(Usage(input_tokens=1000, output_tokens=100), model_ref=model, provider_id=provider)
            assert price.total_price > 0
    with pytest.raises(LookupError):
        calc_price(Usage(input_tokens=1000, output_tokens=100), model_ref=UNKNOWN_MODEL[1],
                   provider_id=UNKNOWN_MODEL[0])


# ---- shape -----------------------------------------------------------------------------------------------------
def test_rate_and_fleet_shape(normal: list[dict[str, Any]]) -> None:
    config = _config(duration_s=1800.0)
    rate = len(normal) / config.duration_s
    assert 0.75 * config.rate_per_s <= rate <= 1.25 * config.rate_per_s
    assert len({e["agent_id"] for e in normal}) == config.agents
    assert len({e["team"] for e in normal}) == config.teams
    assert 2 <= len({e["project"] for e in normal}) <= config.projects
    assert len({e["provider"] for e in normal}) >= 2
    per_agent = Counter(e["agent_id"] for e in normal)
    # Log-normal activity: the busiest agent does several times the median's work.
    assert max(per_agent.values()) >= 2 * statistics.median(per_agent.values())


def test_short_runs_start_at_the_steady_rate() -> None:
    # The warm-up before `start` means even the first minute is at the configured rate, not ramping up.
    config = _config(agents=40, duration_s=60.0, rate_per_s=50.0)
    events = list(generate(config))
    assert 0.7 * 3000 <= len(events) <= 1.3 * 3000
    first_ten_seconds = [e for e in events if e["occurred_at"] < config.start + timedelta(seconds=10)]
    assert len(first_ten_seconds) >= 0.6 * 500


def test_token_distributions_within_bounds(normal: list[dict[str, Any]]) -> None:
    ok = [e for e in normal if e["status"] == "ok"]
    inputs = [e["input_tokens"] for e in ok]
    outputs = [e["output_tokens"] for e in ok]
    # Medians of the fitted traces span ~300 (BurstGPT) to ~7,000 (Mooncake) input and ~13 to ~350 output tokens;
    # agent context growth pushes input up, so the bounds are loose but exclude a broken generator.
    assert 300 <= statistics.median(inputs) <= 20_000
    assert 10 <= statistics.median(outputs) <= 1_000
    assert max(inputs) <= NORMAL_MAX_INPUT_TOKENS
    assert min(inputs) >= 1
    cached = sum(e["cache_read_tokens"] for e in normal) / sum(e["input_tokens"] for e in normal)
    assert 0.2 <= cached <= 0.9
    assert any(e["cache_write_tokens"] for e in normal if e["provider"] == "anthropic")
    assert not any(e["cache_write_tokens"] for e in normal if e["provider"] != "anthropic")
    assert any(e["reasoning_tokens"] for e in normal if e["model"].startswith("o3-mini"))


def test_failures_retries_and_subagents(normal: list[dict[str, Any]]) -> None:
    statuses = Counter(e["status"] for e in normal)
    failed = 1 - statuses["ok"] / len(normal)
    assert 0.01 <= failed <= 0.08
    assert {"error", "timeout", "rate_limited"} <= set(statuses)
    assert max(e["attempt"] for e in normal) <= MAX_NORMAL_ATTEMPTS
    by_call: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in normal:
        by_call[(event["task_id"], event["prompt_hash"])].append(event)
    retried = [calls for calls in by_call.values() if len(calls) > 1]
    assert retried
    for calls in retried:
        first = calls[0]["attempt"]  # a call begun in the warm-up may enter the stream at a later attempt
        assert [c["attempt"] for c in calls] == list(range(first, first + len(calls)))
        assert all(c["status"] != "ok" for c in calls[:-1])  # only a failed attempt is retried
    # Normal prompt hashes never repeat across tasks: duplicate-prompt detection must see none.
    tasks_per_hash: dict[str, set[str]] = defaultdict(set)
    for event in normal:
        tasks_per_hash[event["prompt_hash"]].add(event["task_id"])
    assert max(len(t) for t in tasks_per_hash.values()) == 1
    tasks = {e["task_id"] for e in normal}
    children = [e for e in normal if e["parent_task_id"] is not None]
    assert children
    # A parent seen nowhere must have run in the warm-up before the start: its children show up early.
    config = _config(duration_s=1800.0)
    orphans = [e for e in children if e["parent_task_id"] not in tasks]
    assert all(e["occurred_at"] < config.start + timedelta(minutes=10) for e in orphans)
    assert len(orphans) < 0.1 * len(children)
    assert Counter(e["task_id"] for e in normal).most_common(1)[0][1] > 3


# ---- misbehaviour ----------------------------------------------------------------------------------------------
def _injection(key: AnswerKey, kind: str) -> Any:
    return next(i for i in key.injections if i.kind == kind)


def _check_bounds(injection: Any, events: list[dict[str, Any]]) -> None:
    assert injection.event_ids and len(set(injection.event_ids)) == len(injection.event_ids)
    times = [e["occurred_at"] for e in events]
    assert injection.end == max(times)
    if injection.kind == "runaway":
        assert injection.start <= min(times)
    else:
        assert injection.start == min(times)
    assert injection.task_ids == list(dict.fromkeys(e["task_id"] for e in events))
    assert all(e["agent_id"] == injection.agent_id for e in events)


def test_answer_key_lists_five_injections(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    assert sorted(i.kind for i in key.injections) == sorted(t.split(":")[0] for t in ALL_KINDS)
    assert key.events == len(events)
    by_id = {e["event_id"]: e for e in events}
    for injection in key.injections:
        assert all(i in by_id for i in injection.event_ids)
        _check_bounds(injection, [by_id[i] for i in injection.event_ids])
    # Every event belongs to at most one injection.
    all_ids = [i for inj in key.injections for i in inj.event_ids]
    assert len(all_ids) == len(set(all_ids))


def test_retry_loop_is_exactly_the_key(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    injection = _injection(key, "retry_loop")
    looping = [e for e in events if e["prompt_hash"] == injection.details["prompt_hash"]]
    assert [e["event_id"] for e in looping] == injection.event_ids
    assert len(injection.task_ids) == 1
    assert [e["attempt"] for e in looping] == list(range(1, len(looping) + 1))
    assert len(looping) == injection.details["attempts_planned"] > MAX_NORMAL_ATTEMPTS * 3
    assert all(e["input_tokens"] > 0 for e in looping)  # billed, so waste is measurable
    others = [e for e in events if e["prompt_hash"] != injection.details["prompt_hash"]]
    assert max(e["attempt"] for e in others) <= MAX_NORMAL_ATTEMPTS


def test_duplicate_prompts_are_exactly_the_key(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    injection = _injection(key, "duplicate_prompts")
    dupes = [e for e in events if e["prompt_hash"] == injection.details["prompt_hash"]]
    assert [e["event_id"] for e in dupes] == injection.event_ids
    assert len(dupes) == injection.details["repeats_planned"] >= 20
    assert len(injection.task_ids) == len(dupes)  # a new task each time: not a retry
    assert all(e["cache_read_tokens"] == 0 and e["attempt"] == 1 and e["status"] == "ok" for e in dupes)
    assert {e["input_tokens"] for e in dupes} == {injection.details["input_tokens"]}
    assert len({(e["provider"], e["model"]) for e in dupes}) == 1


def test_unknown_model_is_exactly_the_key(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    injection = _injection(key, "unknown_model")
    unknown = [e for e in events if (e["provider"], e["model"]) == UNKNOWN_MODEL]
    assert [e["event_id"] for e in unknown] == injection.event_ids
    assert len(unknown) >= 10
    agent_after = [e for e in events if e["agent_id"] == injection.agent_id and e["occurred_at"] >= injection.start]
    # From the switch on, the agent's new tasks all use the unknown model (older tasks may still finish).
    assert len(unknown) >= 0.8 * len(agent_after)


def test_oversized_prompts_are_exactly_the_key(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    injection = _injection(key, "oversized_prompts")
    by_id = {e["event_id"]: e for e in events}
    keyed = [by_id[i] for i in injection.event_ids]
    big = [e for e in events if e["input_tokens"] > NORMAL_MAX_INPUT_TOKENS]
    # Failed attempts (error, rate_limited) of the oversized tasks bill no tokens but are still the agent's doing.
    assert [e["event_id"] for e in big] == [e["event_id"] for e in keyed if e["input_tokens"] > 0]
    assert all(OVERSIZED_INPUT_RANGE[0] <= e["input_tokens"] <= OVERSIZED_INPUT_RANGE[1] for e in big)
    assert len(big) >= 5


def test_runaway_spend_rate_jumps(misbehaving: tuple[list[dict[str, Any]], AnswerKey]) -> None:
    events, key = misbehaving
    injection = _injection(key, "runaway")
    config = _config(duration_s=1800.0)
    agent = [e for e in events if e["agent_id"] == injection.agent_id]
    before = [e for e in agent if e["occurred_at"] < injection.start]
    after = [e for e in agent if e["occurred_at"] >= injection.start]
    span_before = (injection.start - config.start).total_seconds()
    span_after = (config.start + timedelta(seconds=config.duration_s) - injection.start).total_seconds()

    def tokens(rows: list[dict[str, Any]]) -> int:
        return sum(e["input_tokens"] + 4 * e["output_tokens"] for e in rows)

    assert (tokens(after) / span_after) >= 8 * (tokens(before) / span_before)
    keyed = set(injection.event_ids)
    assert keyed <= {e["event_id"] for e in after}
    assert len(keyed) >= 0.9 * len(after)  # tasks begun before the jump may still finish after it
    assert injection.details["factor"] == config.runaway_factor


# ---- config and CLI --------------------------------------------------------------------------------------------
def test_misbehaviour_parsing_and_config_errors() -> None:
    assert Misbehaviour.parse("retry-loop:agent-003") == Misbehaviour(kind="retry_loop", agent_id="agent-003")
    with pytest.raises(ConfigError, match="KIND:AGENT"):
        Misbehaviour.parse("meltdown:agent-001")
    with pytest.raises(ValidationError, match="not in the fleet"):
        _config(misbehaviours=(Misbehaviour.parse("runaway:agent-999"),))
    with pytest.raises(ValidationError, match="more than one misbehaviour"):
        _config(misbehaviours=(Misbehaviour.parse("runaway:agent-001"), Misbehaviour.parse("retry-loop:agent-001")))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0),
                                                 ("1h30m", 5400.0), ("2d", 172800.0), ("500ms", 0.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "per_second"), [("20", 20.0), ("20/s", 20.0), ("1200/m", 20.0),
                                                   ("72000/h", 20.0)])
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("bad", ["", "1x", "h", "-5m", "0"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["fast", "20/week", "-1/s", "0"])
def test_parse_rate_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="rate"):
        parse_rate(bad)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finops")
    register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_config_errors_are_finops_errors() -> None:
    args = _parser().parse_args(["simulate", "--agents", "5", "--runaway", "agent-050"])
    with pytest.raises(FinopsError, match="agent-050"):
        config_from_args(args, LATER)
    args = _parser().parse_args(["simulate", "--start", "2025-01-01T00:00:00"])
    with pytest.raises(ConfigError, match="time zone"):
        config_from_args(args, LATER)


def test_cli_flags_build_the_config() -> None:
    args = _parser().parse_args([
        "simulate", "--agents", "12", "--teams", "3", "--projects", "4", "--duration", "10m", "--rate", "600/m",
        "--seed", "3", "--misbehave", "runaway:agent-002", "--retry-loop", "agent-004", "--fast",
    ])
    config = config_from_args(args, LATER)
    assert (config.agents, config.teams, config.projects, config.duration_s, config.rate_per_s, config.seed) == (
        12, 3, 4, 600.0, 10.0, 3)
    assert {(m.kind, m.agent_id) for m in config.misbehaviours} == {("runaway", "agent-002"),
                                                                    ("retry_loop", "agent-004")}
    realtime = config_from_args(_parser().parse_args(["simulate", "--realtime"]), LATER)
    assert realtime.start == LATER


def test_cli_writes_jsonl_and_answer_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, key_path = tmp_path / "events.jsonl", tmp_path / "key.json"
    args = _parser().parse_args([
        "simulate", "--agents", "8", "--teams", "2", "--projects", "3", "--duration", "10m", "--rate", "5/s",
        "--duplicate-prompts", "agent-002", "--answer-key", str(key_path), "--out", str(out),
    ])
    assert args.func(args) == 0
    lines = out.read_text().splitlines()
    key = AnswerKey.model_validate_json(key_path.read_text())
    assert len(lines) == key.events > 1000
    first = json.loads(lines[0])
    assert UsageEvent.model_validate(first).agent_id == first["agent_id"]
    ids = {json.loads(line)["event_id"] for line in lines}
    assert set(key.injections[0].event_ids) <= ids
    assert "duplicate_prompts on agent-002" in capsys.readouterr().err
    # The file is exactly what the generator yields, so a second run reproduces it byte for byte.
    config = config_from_args(args, LATER)
    assert lines == [event_to_json(e) for e in generate(config)]
