"""`finops simulate --resume-file`: a run stopped part-way and started again with the same flags sends each event of
the sequence exactly once, in order; a resume file of other flags is refused; --skip-before drops old events."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.checkpoint import ProgressCheckpoint, SimulationProgress, load_progress
from producers.replay import JsonlSink
from producers.replay import event_to_json
from producers.simulator import config_from_args, generate, register_commands
from schemas.errors import ConfigError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 3, tzinfo=UTC)

FLAGS = ["simulate", "--agents", "6", "--teams", "2", "--projects", "3", "--duration", "5m", "--rate", "4/s",
         "--seed", "11", "--start", "2026-03-02T10:00:00Z"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finops")
    register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(extra: list[str]) -> int:
    args = _parser().parse_args([*FLAGS, *extra])
    return int(args.func(args))


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Ctrl-C arrives while the sink takes event number ``count + 1``."""
    real = JsonlSink.emit
    seen = {"n": 0}

    def emit(self: JsonlSink, event: dict[str, Any]) -> None:
        if seen["n"] == count:
            raise KeyboardInterrupt
        seen["n"] += 1
        real(self, event)

    monkeypatch.setattr(JsonlSink, "emit", emit)


def test_a_stopped_run_resumes_where_it_left_off_and_sends_each_event_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resume = tmp_path / "progress.json"
    expected = [event_to_json(e) for e in generate(config_from_args(_parser().parse_args(FLAGS), None))]  # type: ignore[arg-type]
    assert len(expected) > 600

    _interrupt_after(monkeypatch, 250)
    with pytest.raises(KeyboardInterrupt):
        _run(["--out", str(tmp_path / "a.jsonl"), "--resume-file", str(resume)])
    saved = json.loads(resume.read_text())
    assert (saved["done"], saved["emitted"], saved["finished"]) == (250, 250, False)

    monkeypatch.undo()
    assert _run(["--out", str(tmp_path / "b.jsonl"), "--resume-file", str(resume)]) == 0
    first = (tmp_path / "a.jsonl").read_text().splitlines()
    second = (tmp_path / "b.jsonl").read_text().splitlines()
    assert first + second == expected  # nothing twice, nothing missing, same order and ids
    assert json.loads(resume.read_text())["finished"] is True

    # A third start has nothing left to send.
    assert _run(["--out", str(tmp_path / "c.jsonl"), "--resume-file", str(resume)]) == 0
    assert (tmp_path / "c.jsonl").read_text() == ""


def test_a_resume_file_of_other_flags_is_refused(tmp_path: Path) -> None:
    resume = tmp_path / "progress.json"
    assert _run(["--out", str(tmp_path / "a.jsonl"), "--resume-file", str(resume)]) == 0
    args = _parser().parse_args([*FLAGS[:-2], "--start", "2026-03-02T11:00:00Z", "--out",
                                 str(tmp_path / "b.jsonl"), "--resume-file", str(resume)])
    with pytest.raises(ConfigError, match="belongs to simulation .* the flags"):
        args.func(args)


def test_skip_before_drops_old_events_and_the_resume_file_remembers_them(tmp_path: Path) -> None:
    resume = tmp_path / "progress.json"
    events = list(generate(config_from_args(_parser().parse_args(FLAGS), NOW)))
    cut = events[0]["occurred_at"] + timedelta(minutes=2)
    assert _run(["--out", str(tmp_path / "a.jsonl"), "--resume-file", str(resume),
                 "--skip-before", cut.isoformat()]) == 0
    sent = (tmp_path / "a.jsonl").read_text().splitlines()
    assert sent == [event_to_json(e) for e in events if e["occurred_at"] >= cut]
    progress = load_progress(resume, json.loads(resume.read_text())["run_id"])
    assert progress.skipped == len(events) - len(sent) > 0
    assert progress.done == len(events) and progress.emitted == len(sent)


def test_progress_is_saved_only_when_the_sink_says_everything_is_safe(tmp_path: Path) -> None:
    now = [0.0]
    unsafe = [3]
    checkpoint = ProgressCheckpoint(tmp_path / "p.json", SimulationProgress("run"), flush=lambda: unsafe[0],
                                    interval_s=1.0, clock=lambda: now[0])
    events: list[dict[str, Any]] = [{"occurred_at": NOW + timedelta(seconds=i)} for i in range(5)]
    for event in checkpoint.resume(events):
        checkpoint.emitted(event)
    now[0] = 2.0
    checkpoint.maybe_save()
    assert not (tmp_path / "p.json").exists()  # 3 events not acknowledged yet: nothing recorded
    unsafe[0] = 0
    now[0] = 4.0
    checkpoint.maybe_save()
    assert json.loads((tmp_path / "p.json").read_text())["done"] == 5


def test_an_unreadable_resume_file_names_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        load_progress(bad, "run")
