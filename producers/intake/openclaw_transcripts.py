"""OpenClaw session transcripts (``~/.openclaw/agents/<agent>/sessions/<session>.jsonl``) -> usage events: the
backfill of what OpenClaw spent before its OTLP export was switched on (``finops intake backfill-openclaw``).

A transcript is JSON lines; the ones that cost money are ``{"type": "message", "id": ..., "timestamp": ...,
"message": {"role": "assistant", "provider": ..., "model": ..., "usage": {"input", "output", "cacheRead",
"cacheWrite", "totalTokens", "cost": {"total", ...}}}}``. OpenClaw's ``usage.input`` *excludes* the cache parts
(normalisation ``openclaw-input-excludes-cache``: input = input + cacheRead + cacheWrite). ``cost.total`` is
OpenClaw's estimate from the user's pricing config and is 0 when no price is configured: a 0 is "not known", not
"free", so it is kept as ``reported_cost`` only when positive.

Ids are ``uuid5(INTAKE_NAMESPACE, "openclaw-transcript:<session>:<message id>")``: stable while the transcript
grows (unlike ``finops replay``'s file-content ids), so backfilling the same sessions again, or after the live
export took over, counts each message once. Agent = the ``agents/<agent>`` directory, task = the session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from producers.intake.calls import (
    as_count,
    as_money,
    as_text,
    event_id_for,
    normalise_provider,
)
from schemas.errors import FinopsError

__all__ = ["TranscriptLineError", "iter_transcript_events", "map_transcript_line"]


class TranscriptLineError(FinopsError):
    """A transcript line that is not JSON: names the file and line."""


def _when(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    text = as_text(value)
    if text:
        try:
            parsed = datetime.fromisoformat(text)  # Python 3.11 reads a trailing Z
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def map_transcript_line(line: Mapping[str, Any], *, agent: str, session: str, team: str = "",
                        project: str = "", source: str = "openclaw-transcripts") -> dict[str, Any] | None:
    """The usage event of one transcript line, or None for lines that are not an assistant message with usage."""
    if line.get("type") != "message":
        return None
    message = line.get("message")
    if not isinstance(message, Mapping) or message.get("role") != "assistant":
        return None
    usage = message.get("usage")
    if not isinstance(usage, Mapping):
        return None
    raw_input = as_count(usage.get("input")) or 0
    cache_read = as_count(usage.get("cacheRead")) or 0
    cache_write = as_count(usage.get("cacheWrite")) or 0
    output = as_count(usage.get("output")) or 0
    if not (raw_input or cache_read or cache_write or output):
        return None
    message_id = as_text(line.get("id")) or as_text(message.get("id"))
    occurred = _when(line.get("timestamp")) or _when(message.get("timestamp"))
    if message_id is None or occurred is None:
        return None
    cost = usage.get("cost")
    total = as_money(cost.get("total")) if isinstance(cost, Mapping) else None
    tags = {"intake.family": "openclaw_transcript"}
    if cache_read or cache_write:
        tags["intake.normalised"] = "openclaw-input-excludes-cache"
    missing = [name for name, value in (("team", team), ("project", project)) if not value]
    if missing:
        tags["intake.unattributed"] = ",".join(missing)
    return {
        "event_id": event_id_for(f"openclaw-transcript:{session}:{message_id}"),
        "source": source, "occurred_at": occurred, "agent_id": agent, "team": team or "unattributed",
        "project": project or "unattributed", "task_id": session,
        "provider": normalise_provider(message.get("provider")) or "unknown",
        "model": as_text(message.get("model")) or "unknown",
        "input_tokens": raw_input + cache_read + cache_write, "output_tokens": output,
        "cache_read_tokens": cache_read, "cache_write_tokens": cache_write,
        "reported_cost": total if total else None,
        "status": "error" if message.get("stopReason") == "error" else "ok", "tags": tags,
    }


def iter_transcript_events(path: Path, *, team: str = "", project: str = "",
                           source: str = "openclaw-transcripts") -> Iterator[dict[str, Any]]:
    """The events of one session file. Agent and session come from ``agents/<agent>/sessions/<session>.jsonl``
    (a ``session`` line's id wins for the session). Raises :class:`TranscriptLineError` for a line that is not
    JSON, except a torn last line (OpenClaw may be writing it), which is skipped."""
    agent = path.parent.parent.name if path.parent.name == "sessions" else "openclaw"
    session = path.stem
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as err:
            if number == len(lines):
                return  # the line OpenClaw is still writing
            raise TranscriptLineError(f"{path}:{number}: not JSON ({err}); is this an OpenClaw session file?") \
                from err
        if not isinstance(line, dict):
            continue
        if line.get("type") == "session" and as_text(line.get("id")):
            session = str(line["id"])
            continue
        event = map_transcript_line(line, agent=agent, session=session, team=team, project=project, source=source)
        if event is not None:
            yield event
