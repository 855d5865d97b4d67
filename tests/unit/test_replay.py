"""Trace replay: the aider mapping, row errors that name file/line/column, deterministic ids, timing, progress."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from producers.progress import ProgressBar, format_duration, render_progress
from producers.replay import (
    Pacer,
    RawRow,
    RejectsWriter,
    ReplayMapping,
    ReplayRowError,
    event_id_for,
    file_digest,
    load_mapping,
    map_row,
    parse_timing,
    register_commands,
    replay_file,
)
from schemas.errors import ConfigError
from schemas.models import UsageEvent

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
AIDER_MAPPING = ROOT / "infra" / "replay" / "aider.yaml"
AIDER_CSV = Path("/work/shared/data/traces/aider_sample_analytics/message_send.csv")
NOW = datetime(2030, 1, 1, tzinfo=UTC)

needs_aider = pytest.mark.skipif(not AIDER_CSV.exists(), reason="shared aider trace not present")

HEADER = ("time_unix,user_id,derived_session,session_launch_time_unix,main_model,weak_model,editor_model,"
          "edit_format,prompt_tokens,completion_tokens,total_tokens,cost_usd,session_total_cost_usd\n")


def _csv(tmp_path: Path, *rows: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = "1723560043,u1,u1-00002,1723560039,gpt-4o-mini,,,diff,638,25,663,0.0001107,0.0001107"


def _replay(path: Path, mapping: ReplayMapping | None = None, **kwargs: Any) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []
    stats = replay_file(path, mapping or load_mapping(AIDER_MAPPING), events.append, now=NOW, **kwargs)
    return events, stats


# ---- the aider example -----------------------------------------------------------------------------------------
@needs_aider
def test_aider_file_maps_every_row_or_lists_the_reject(tmp_path: Path) -> None:
    rejects = RejectsWriter(tmp_path / "rejects.jsonl")
    events, stats = _replay(AIDER_CSV, rejects=rejects)
    rejects.close()
    assert stats.rows == 5522
    assert stats.events + stats.rejected == stats.rows
    assert stats.events == 5500
    for event in events:
        UsageEvent.model_validate(event)
    # The only rejects are the 22 rows where aider logged main_model 'None'; each names line and column.
    lines = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(lines) == stats.rejected == 22
    for record in lines:
        assert record["row"]["main_model"] == "None"
        assert record["file"] == str(AIDER_CSV)
        assert record["problems"] == [{"column": "main_model", "column_number": 5,
                                       "reason": "model is required but the column is empty or null "
                                                 "('', 'None' count as null)"}]
    assert {e["provider"] for e in events} >= {"openai", "anthropic", "google", "deepseek", "openrouter"}
    assert sum(1 for e in events if e["reported_cost"] is not None) == 5500


@needs_aider
def test_aider_first_row_maps_field_by_field() -> None:
    events, _ = _replay(AIDER_CSV, limit=1)
    assert events == [{
        "event_id": event_id_for(file_digest(AIDER_CSV)[0], 2),
        "source": "aider-analytics",
        "occurred_at": datetime(2024, 8, 13, 14, 40, 43, tzinfo=UTC),
        "agent_id": "52b5cc12-f16d-45f3-b30c-95ab4ae904ee",
        "team": "aider-maintainer",
        "project": "aider",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 638,
        "output_tokens": 25,
        "task_id": "52b5cc12-00002",
        "parent_task_id": None,
        "task_type": "unknown",
        "environment": "dev",
        "status": "ok",
        "prompt_hash": None,
        "reported_cost": Decimal("0.000110700000"),
        "tags": {},
    }]


@pytest.mark.parametrize(("raw", "provider", "model"), [
    ("gpt-4o-mini", "openai", "gpt-4o-mini"),
    ("o3-mini", "openai", "o3-mini"),
    ("o1-preview", "openai", "o1-preview"),
    ("openai/gpt-5.2", "openai", "gpt-5.2"),
    ("claude-3-5-sonnet-20241022", "anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic/claude-3-7-sonnet-20250219", "anthropic", "claude-3-7-sonnet-20250219"),
    ("gemini/gemini-2.5-pro-exp-03-25", "google", "gemini-2.5-pro-exp-03-25"),
    ("gemini-1.5-flash", "google", "gemini-1.5-flash"),
    ("deepseek/deepseek-chat", "deepseek", "deepseek-chat"),
    ("openrouter/anthropic/claude-3.7-sonnet", "openrouter", "anthropic/claude-3.7-sonnet"),
    ("openrouter/REDACTED", "openrouter", "REDACTED"),
    ("fireworks_ai/accounts/fireworks/models/deepseek-v3", "fireworks", "accounts/fireworks/models/deepseek-v3"),
    ("xai/grok-4", "x-ai", "grok-4"),
    ("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0", "aws", "us.anthropic.claude-3-5-haiku-20241022-v1:0"),
    ("ollama/REDACTED", "ollama", "REDACTED"),
])
def test_aider_provider_rules(tmp_path: Path, raw: str, provider: str, model: str) -> None:
    row = RawRow(2, {"time_unix": "1723560043", "user_id": "u", "main_model": raw, "prompt_tokens": "1",
                     "completion_tokens": "1"})
    event = map_row(tmp_path / "x.csv", load_mapping(AIDER_MAPPING), row, digest="d", now=NOW)
    assert (event["provider"], event["model"]) == (provider, model)


def test_model_without_rule_or_prefix_is_an_error_naming_the_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD.replace("gpt-4o-mini", "mystery-model"))
    with pytest.raises(ReplayRowError) as err:
        _replay(path)
    message = str(err.value)
    assert f"{path}:2:" in message
    assert "column 5 (main_model)" in message and "mystery-model" in message
    assert "provider.rules" in message and "--skip-bad" in message


# ---- errors name file, line and column -------------------------------------------------------------------------
def test_bad_token_count_names_file_line_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, GOOD.replace(",638,", ",lots,"), GOOD)
    with pytest.raises(ReplayRowError) as err:
        _replay(path)
    assert err.value.path == path and err.value.line == 3
    assert [(p.column, p.column_number) for p in err.value.problems] == [("prompt_tokens", 9)]
    assert str(err.value).startswith(f"{path}:3: ")
    assert "column 9 (prompt_tokens): input_tokens must be a whole number >= 0, got 'lots'" in str(err.value)


def test_every_problem_of_a_row_is_listed(tmp_path: Path) -> None:
    path = _csv(tmp_path, "yesterday,u1,s,0,gpt-4o,,,diff,-5,1.5,0,-1,0")
    with pytest.raises(ReplayRowError) as err:
        _replay(path)
    columns = [p.column for p in err.value.problems]
    assert columns == ["time_unix", "prompt_tokens", "completion_tokens", "cost_usd"]
    path = _csv(tmp_path, "1723560043,u1,s,0,gpt-4o,,,diff,-5,1,0,0,0", name="neg.csv")
    with pytest.raises(ReplayRowError) as err:
        _replay(path)
    assert [(p.column, p.column_number) for p in err.value.problems] == [("prompt_tokens", 9)]
    assert "input_tokens must be a whole number >= 0, got '-5'" in str(err.value)


def test_rule_broken_across_fields_points_at_the_feeding_column(tmp_path: Path) -> None:
    mapping = load_mapping(AIDER_MAPPING).model_copy(update={"cache_read_tokens": load_mapping(AIDER_MAPPING).
                                                              output_tokens})
    path = _csv(tmp_path, GOOD.replace(",638,25,", ",10,25,"))  # cache read 25 > input 10
    with pytest.raises(ReplayRowError) as err:
        _replay(path, mapping)
    assert err.value.problems[0].column == "completion_tokens"
    assert "cache_read_tokens" in err.value.problems[0].reason


def test_wrong_field_count_and_bad_json_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, "1,2,3")
    with pytest.raises(ReplayRowError, match=r"trace.csv:3: .*row has 3 fields but the header has 13"):
        _replay(path)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"t": 1, "m": "gpt-4o", "i": 1, "o": 2}\n\n{"t": 2, "m": \n', encoding="utf-8")
    mapping = ReplayMapping.model_validate({
        "occurred_at": "t", "model": "m", "input_tokens": "i", "output_tokens": "o",
        "agent_id": {"constant": "a"}, "team": {"constant": "t"}, "project": {"constant": "p"},
        "provider": {"constant": "openai"},
    })
    with pytest.raises(ReplayRowError, match=r"t.jsonl:3: .*invalid JSON"):
        _replay(jsonl, mapping)


def test_jsonl_missing_field_is_named(tmp_path: Path) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"event": {"t": 1.5}, "props": {"model": "claude-3-5-haiku-20241022", "in": 5}}\n')
    mapping = ReplayMapping.model_validate({
        "occurred_at": {"column": "event.t"}, "model": "props.model", "input_tokens": "props.in",
        "output_tokens": "props.out", "agent_id": {"constant": "a"}, "team": {"constant": "t"},
        "project": {"constant": "p"}, "provider": {"rules": [{"match": "claude-*", "provider": "anthropic"}]},
    })
    with pytest.raises(ReplayRowError) as err:
        _replay(jsonl, mapping)
    assert "t.jsonl:1: " in str(err.value)
    assert "field 'props.out': output_tokens is required but the column is missing" in str(err.value)


def test_skip_bad_writes_rejects_with_reasons_and_counts(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, GOOD.replace(",638,", ",x,"), GOOD.replace("gpt-4o-mini", "None"), GOOD)
    rejects = RejectsWriter(tmp_path / "rej.jsonl")
    events, stats = _replay(path, rejects=rejects)
    rejects.close()
    assert (stats.rows, stats.events, stats.rejected) == (4, 2, 2)
    records = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [3, 4]
    assert records[0]["problems"][0]["column"] == "prompt_tokens"
    assert records[1]["problems"][0]["column"] == "main_model"
    assert sum(stats.reject_reasons.values()) == 2


def test_clean_replay_leaves_no_rejects_file(tmp_path: Path) -> None:
    rejects = RejectsWriter(tmp_path / "rej.jsonl")
    _replay(_csv(tmp_path, GOOD), rejects=rejects)
    rejects.close()
    assert not (tmp_path / "rej.jsonl").exists()


# ---- mapping file errors ---------------------------------------------------------------------------------------
def test_mapping_errors_name_file_line_and_key(tmp_path: Path) -> None:
    text = AIDER_MAPPING.read_text().replace("input_tokens: prompt_tokens", "input_tokens: {colum: prompt_tokens}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if row.startswith("input_tokens:"))
    with pytest.raises(ConfigError) as err:
        load_mapping(bad)
    assert f"{bad}:{line}: input_tokens" in str(err.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+: the replay mapping is not valid YAML"):
        load_mapping(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_mapping(tmp_path / "missing.yaml")


# ---- deterministic ids -----------------------------------------------------------------------------------------
def test_ids_are_deterministic_per_file_content_and_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, GOOD.replace("u1", "u2"), GOOD)
    first, _ = _replay(path)
    second, _ = _replay(path)
    assert [e["event_id"] for e in first] == [e["event_id"] for e in second]
    assert len({e["event_id"] for e in first}) == 3  # identical rows on different lines stay distinct
    digest, _ = file_digest(path)
    assert [e["event_id"] for e in first] == [event_id_for(digest, line) for line in (2, 3, 4)]
    # The same content gzipped replays under the same ids; edited content gets new ones.
    gz = tmp_path / "trace.csv.gz"
    with path.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    zipped, _ = _replay(gz)
    assert [e["event_id"] for e in zipped] == [e["event_id"] for e in first]
    edited = _csv(tmp_path, GOOD, GOOD.replace("u1", "u3"), GOOD, name="edited.csv")
    changed, _ = _replay(edited)
    assert not {e["event_id"] for e in changed} & {e["event_id"] for e in first}


def test_limit_and_shift_to(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, GOOD.replace("1723560043", "1723560103"), GOOD)
    target = datetime(2026, 1, 1, tzinfo=UTC)
    events, stats = _replay(path, limit=2, shift_to=target)
    assert stats.rows == 2 and len(events) == 2
    assert [e["occurred_at"] for e in events] == [target, target.replace(minute=1)]


# ---- timing ----------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.mark.parametrize(("text", "scale"), [("fast", None), ("original", 1.0), ("scaled:10x", 10.0),
                                             ("scaled:2.5", 2.5)])
def test_parse_timing(text: str, scale: float | None) -> None:
    assert parse_timing(text) == scale


@pytest.mark.parametrize("bad", ["slow", "scaled:0x", "scaled:x", "scaled:-1"])
def test_parse_timing_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="--timing"):
        parse_timing(bad)


def test_pacer_sleeps_by_scaled_gaps_without_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    released = []
    for t in pacer.pace([0.0, 10.0, 10.0, 40.0, 35.0, 50.0], lambda x: x):
        released.append((t, round(clock.now - 100.0, 6)))
        clock.now += 0.25  # the consumer spends time too: the pacer must not add it on top
    assert released == [(0.0, 0.0), (10.0, 1.0), (10.0, 1.25), (40.0, 4.0), (35.0, 4.25), (50.0, 5.0)]
    assert pacer.slept == pytest.approx(sum(clock.sleeps))


def test_pacer_caps_idle_gaps() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, max_gap=2.0, clock=clock, sleep=clock.sleep)
    assert list(pacer.pace([0.0, 86_400.0, 86_401.0], lambda x: x)) == [0.0, 86_400.0, 86_401.0]
    assert clock.sleeps == [2.0, 1.0]


def test_replay_with_original_timing_uses_the_pacer(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD, GOOD.replace("1723560043", "1723560053"), GOOD.replace("1723560043", "1723560073"))
    clock = FakeClock()
    _, stats = _replay(path, pacer=Pacer(2.0, clock=clock, sleep=clock.sleep))
    assert clock.sleeps == [5.0, 10.0]
    assert stats.slept_s == 15.0


# ---- CLI -------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finops")
    register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


@needs_aider
def test_cli_replays_to_jsonl_with_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    args = _parser().parse_args([
        "replay", str(AIDER_CSV), "--mapping", str(AIDER_MAPPING), "--limit", "100", "--out", str(out),
        "--skip-bad", "--rejects", str(rejects), "--team", "platform", "--agent-from", "derived_session",
    ])
    assert args.func(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = rejects.read_text().splitlines()
    assert len(lines) + len(rejected) == 100 and len(rejected) == 2  # main_model 'None' on two early lines
    assert {e["team"] for e in lines} == {"platform"}
    assert all(e["agent_id"] == e["task_id"] for e in lines)
    err = capsys.readouterr().err
    assert "100 rows -> 98 events" in err and "2 rows REJECTED" in err


def test_cli_refuses_column_and_constant_together(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD)
    args = _parser().parse_args(["replay", str(path), "--mapping", str(AIDER_MAPPING), "--team", "a",
                                 "--team-from", "user_id", "--out", str(tmp_path / "o.jsonl")])
    with pytest.raises(ConfigError, match="--team-from or --team"):
        args.func(args)


# ---- progress bar ----------------------------------------------------------------------------------------------
def test_render_progress() -> None:
    assert render_progress(50, 200, 10.0, label="replay", width=10) == (
        "replay [##........] 50/200  25.0% 5/s ETA 0:30")
    assert render_progress(1234, None, 2.0) == "1,234 617/s elapsed 0:02"
    assert render_progress(0, 10, 0.0).endswith("0/s ETA ?")
    assert format_duration(3725) == "1:02:05"


def test_progress_bar_draws_only_when_forced_or_tty() -> None:
    clock = FakeClock()
    quiet = io.StringIO()
    with ProgressBar(10, stream=quiet, clock=clock) as bar:  # StringIO is no TTY
        bar.update(5)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with ProgressBar(10, stream=loud, force=True, clock=clock, min_interval=1.0) as bar:
        bar.update(1)
        bar.update(1)  # throttled: same instant
        clock.now += 2.0
        bar.update(8)
    frames = loud.getvalue().split("\r")[1:]
    assert len(frames) == 3  # first update, after the interval, final on close
    assert frames[-1].startswith("[##############################] 10/10 100.0%")
    assert loud.getvalue().endswith("\n")
