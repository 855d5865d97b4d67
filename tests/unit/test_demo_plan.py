"""The demo fleet's timeline and plan (pure parts of finops/demo.py): a first start anchors the history at the
fleet's start and the live phases when they begin; a restart continues the same phases (same flags, so same event
ids) from their progress files, leaves finished or wholly skipped phases out, and another fleet on the same data
dir is refused before anything starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest

from finops.demo import FleetTimeline, build_fleet_plan, check_timeline, load_timeline, save_timeline
from schemas.errors import FinopsError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FINOPS = ["python", "-m", "finops.cli"]


def _timeline(**changes: object) -> FleetTimeline:
    base = FleetTimeline(origin=T0, agents=8, rate=2.0, history_s=600, incident_s=20)
    return FleetTimeline(**{**base.__dict__, **changes})


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_first_start_anchors_the_live_phases_when_they_begin(tmp_path: Path) -> None:
    timeline = _timeline()
    save_timeline(tmp_path, timeline)
    live = T0 + timedelta(seconds=600 + 42)  # the history took 42 s to send
    plan = list(islice(build_fleet_plan(FINOPS, timeline, tmp_path, skip_before=T0, answer_key=tmp_path / "k",
                                        clock=lambda: live), 4))
    assert [name for name, _ in plan] == ["history", "incident", "steady-0001", "steady-0002"]
    history, incident, steady1, steady2 = (argv for _, argv in plan)
    assert "--fast" in history and _flag(history, "--start") == T0.isoformat()
    assert "--realtime" in incident and _flag(incident, "--start") == live.isoformat()
    assert _flag(incident, "--misbehave") == "runaway:agent-003"
    assert _flag(steady1, "--start") == (live + timedelta(seconds=20)).isoformat()
    assert _flag(steady2, "--start") == (live + timedelta(seconds=20 + 3600)).isoformat()
    assert all(_flag(argv, "--skip-before") is None for _, argv in plan)  # nothing skipped on a first start
    assert all(_flag(argv, "--resume-file") for _, argv in plan)
    # The live start is recorded: a restart plans the very same phases (same flags, same event ids).
    recorded = load_timeline(tmp_path / "timeline.json")
    assert recorded is not None and recorded.live_start == live


def test_a_restart_continues_the_same_phases_and_leaves_finished_ones_out(tmp_path: Path) -> None:
    live = T0 + timedelta(seconds=650)
    timeline = _timeline(live_start=live)
    save_timeline(tmp_path, timeline)
    (tmp_path / "history.progress.json").write_text(json.dumps({"run_id": "x", "done": 9, "finished": True}))
    first = list(islice(build_fleet_plan(FINOPS, timeline, tmp_path, skip_before=T0, answer_key=tmp_path / "k"), 2))
    assert [name for name, _ in first] == ["incident", "steady-0001"]
    assert _flag(first[0][1], "--start") == live.isoformat()

    # Stopped for three hours with at most 70 minutes of catch-up: the incident and the first two steady hours
    # are over and are not run at all; the hour the skip falls in is run with --skip-before.
    skip = live + timedelta(hours=3) - timedelta(minutes=70)
    later = list(islice(build_fleet_plan(FINOPS, timeline, tmp_path, skip_before=skip, answer_key=tmp_path / "k"),
                        2))
    assert [name for name, _ in later] == ["steady-0002", "steady-0003"]
    assert _flag(later[0][1], "--skip-before") == skip.isoformat()
    assert _flag(later[1][1], "--skip-before") is None


def test_another_fleet_on_the_same_data_dir_is_refused_once_it_has_sent_events(tmp_path: Path) -> None:
    save_timeline(tmp_path, _timeline())
    assert check_timeline(tmp_path, _timeline(origin=T0 + timedelta(days=1))) == _timeline()  # same fleet
    # Another fleet that never sent anything: started afresh, its stale progress removed.
    (tmp_path / "history.progress.json").write_text(json.dumps({"run_id": "x", "done": 0, "emitted": 0}))
    assert check_timeline(tmp_path, _timeline(agents=30)) is None
    assert not (tmp_path / "history.progress.json").exists()
    (tmp_path / "history.progress.json").write_text(json.dumps({"run_id": "x", "done": 5, "emitted": 5}))
    with pytest.raises(FinopsError, match="clean data dir"):
        check_timeline(tmp_path, _timeline(agents=30))


def test_a_demo_data_dir_of_a_version_without_a_timeline_is_refused(tmp_path: Path) -> None:
    # Such a start re-sent the last 70 minutes under new ids: refused, with the way out, before anything starts.
    (tmp_path / "demo-policies.yaml").write_text("policies: []\n")
    with pytest.raises(FinopsError, match="earlier version.*clean data dir"):
        check_timeline(tmp_path / "demo-fleet", _timeline())
    assert check_timeline(tmp_path / "other" / "demo-fleet", _timeline()) is None  # a fresh data dir starts
