"""OpenClaw transcripts backfill: assistant messages with usage -> canonical events with stable ids."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from finops.cli import main
from producers.intake.openclaw_transcripts import (
    TranscriptLineError,
    iter_transcript_events,
)
from schemas.models import check_usage_dict

pytestmark = pytest.mark.unit

LINES = [
    {"type": "session", "version": 3, "id": "sess-42", "timestamp": "2026-11-30T10:00:00.000Z", "cwd": "/w"},
    {"type": "message", "id": "m1", "parentId": None, "timestamp": "2026-11-30T10:00:01.000Z",
     "message": {"role": "user", "content": [{"type": "text", "text": "hi"}]}},
    {"type": "message", "id": "m2", "parentId": "m1", "timestamp": "2026-11-30T10:00:05.000Z",
     "message": {"role": "assistant", "provider": "anthropic", "model": "claude-sonnet-4-20250514",
                 "usage": {"input": 3, "output": 250, "cacheRead": 12000, "cacheWrite": 500, "totalTokens": 12753,
                           "cost": {"input": 0.000009, "output": 0.00375, "cacheRead": 0.0036,
                                    "cacheWrite": 0.001875, "total": 0.009234}},
                 "stopReason": "stop"}},
    {"type": "message", "id": "m3", "timestamp": 1796000000000,
     "message": {"role": "assistant", "provider": "openai", "model": "gpt-4o-mini-2024-07-18",
                 "usage": {"input": 900, "output": 40, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 940,
                           "cost": {"total": 0}}}},
    {"type": "custom", "customType": "model-snapshot"},
]


def _write(tmp_path: Path, lines: list[dict], extra: str = "") -> Path:
    path = tmp_path / "agents" / "main" / "sessions" / "sess-42.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + extra)
    return path


def test_assistant_messages_become_canonical_events(tmp_path: Path) -> None:
    path = _write(tmp_path, LINES, extra='{"type": "message", "id": "m4", "mess')  # torn last line: skipped
    events = list(iter_transcript_events(path, team="platform"))
    assert len(events) == 2
    a, b = events
    assert (a["agent_id"], a["task_id"], a["provider"], a["input_tokens"], a["cache_read_tokens"],
            a["cache_write_tokens"], a["output_tokens"]) == ("main", "sess-42", "anthropic", 12503, 12000, 500, 250)
    assert a["reported_cost"] == Decimal("0.009234000000")
    assert a["tags"] == {"intake.family": "openclaw_transcript", "intake.normalised": "openclaw-input-excludes-cache",
                         "intake.unattributed": "project"}
    assert b["reported_cost"] is None  # cost.total 0 means "no price configured", not free
    assert (b["team"], b["project"]) == ("platform", "unattributed")
    assert all(check_usage_dict(e, None) == [] for e in events)
    # The transcript grows: the ids of the messages already there do not change.
    grown = _write(tmp_path / "again", [*LINES, {**LINES[3], "id": "m5"}])
    again = list(iter_transcript_events(grown, team="platform"))
    assert [e["event_id"] for e in again[:2]] == [e["event_id"] for e in events] and len(again) == 3


def test_a_broken_line_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, LINES[:2], extra="not json\n" + json.dumps(LINES[2]) + "\n")
    with pytest.raises(TranscriptLineError, match=r"sess-42.jsonl:3"):
        list(iter_transcript_events(path))


def test_the_command_writes_the_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, LINES)
    out = tmp_path / "events.jsonl"
    assert main(["intake", "backfill-openclaw", str(path), "--team", "t", "--project", "p", "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["team"], e["project"], e["model"]) for e in written] == \
        [("t", "p", "claude-sonnet-4-20250514"), ("t", "p", "gpt-4o-mini-2024-07-18")]
    assert "2 events" in capsys.readouterr().err


def test_a_missing_file_or_an_unmatched_glob_is_named_and_nothing_is_published(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, LINES)
    out = tmp_path / "events.jsonl"
    glob = str(tmp_path / "none" / "agents" / "*" / "sessions" / "*.jsonl")  # a shell passes an unmatched glob as is
    code = main(["intake", "backfill-openclaw", str(path), glob, "--team", "t", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no such session file: {glob}" in err and "Nothing was published" in err
    assert "Traceback" not in err and not out.exists()
