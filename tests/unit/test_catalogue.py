"""``finops prices update`` / ``prices status`` and the catalogue hot reload (issue 15 item 5).

The snapshot (tests/unit/fixtures/catalogue/genai_prices_snapshot.json) is in genai-prices' own data format (the
provider array of its ``data.json``): gpt-4o cut to $2 / $1 / $8 from 2025-11-15, claude-sonnet-4 at $1.25 / $6.25.
The URL case (a real HTTP server) and the real broker are in tests/integration/test_catalogue_reload.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from finops.cli import main
from finops.pricing.catalogue import (
    CatalogueError,
    CatalogueWatcher,
    build_pricer,
    install_catalogue,
)
from finops.pricing.engine import catalogue_version

pytestmark = pytest.mark.unit

SNAPSHOT = Path(__file__).parent / "fixtures" / "catalogue" / "genai_prices_snapshot.json"
AT = datetime(2025, 12, 1, 9, tzinfo=UTC)
GPT4O = {"provider": "openai", "model": "gpt-4o", "occurred_at": AT, "input_tokens": 1_000_000, "output_tokens": 0}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FINOPS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data" / "prices"


def test_status_shows_the_catalogue_and_warns_when_it_is_old(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    install_catalogue(str(SNAPSHOT), env, now=datetime.now(UTC))
    assert main(["prices", "status", "--json"]) == 0
    captured = capsys.readouterr()
    status = json.loads(captured.out)
    assert status["version"].startswith("genai-prices-data.") and status["source"] == str(SNAPSHOT.resolve())
    assert status["data_date"] == "2025-11-15" and status["stale"] is True
    assert "older than 30 days" in captured.err
    monkeypatch.setenv("FINOPS_STREAM_CATALOGUE_MAX_AGE_DAYS", str((datetime.now(UTC).date() - AT.date()).days + 30))
    assert main(["prices", "status"]) == 0
    captured = capsys.readouterr()
    assert "data date 2025-11-15" in captured.out and "warning" not in captured.err


def test_a_file_genai_prices_cannot_load_is_refused_and_the_current_catalogue_stays(env: Path, tmp_path: Path) -> None:
    install_catalogue(str(SNAPSHOT), env, now=datetime.now(UTC))
    current = (env / "current.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "openai", "models": [{"id": "x", "prices": {"input_mtok": "cheap"}}]}]))
    with pytest.raises(CatalogueError, match="cannot load"):
        install_catalogue(str(bad), env, now=datetime.now(UTC))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{nope")
    with pytest.raises(CatalogueError, match="not JSON"):
        install_catalogue(str(garbage), env, now=datetime.now(UTC))
    with pytest.raises(CatalogueError, match="cannot read"):
        install_catalogue(str(tmp_path / "missing.json"), env, now=datetime.now(UTC))
    assert (env / "current.json").read_text() == current


def test_the_watcher_hands_over_a_new_pricer_only_when_the_version_changes(env: Path) -> None:
    from finops.settings import load_settings

    settings = load_settings()
    first = build_pricer(settings.stream, settings.core.data_dir)
    watcher = CatalogueWatcher(env, lambda: build_pricer(settings.stream, settings.core.data_dir),
                               first.catalogue_version, interval_s=1.0)  # fmt: skip
    assert watcher.poll(0.0) is None  # nothing installed
    install_catalogue(str(SNAPSHOT), env, now=datetime.now(UTC))
    assert watcher.poll(0.5) is None  # not yet time to look
    new = watcher.poll(2.0)
    assert new is not None and new.catalogue_version.startswith("genai-prices-data.")
    assert watcher.poll(10.0) is None  # same version: nothing to do
    (env / "current.json").write_text("{broken")
    assert watcher.poll(20.0) is None  # a broken pointer keeps the running catalogue
    assert watcher.version == new.catalogue_version


def test_the_hot_path_switches_catalogue_between_batches_at_one_offset(env: Path) -> None:
    from finops.settings import load_settings
    from stream_jobs.hotpath import HotPath
    from tests.unit.test_hotpath import (
        CODEC,
        Clock,
        FakeConsumer,
        FakeLog,
        FakeProducer,
        config,
        decoded,
    )

    settings = load_settings()
    log = FakeLog()
    for i in range(300):
        event = {**_usage(i), "occurred_at": AT + timedelta(seconds=i)}
        log.append(0, b"a1", CODEC.encode(event, "UsageEvent"))
    producer = FakeProducer()
    clock = Clock(AT + timedelta(minutes=10))
    pricer = build_pricer(settings.stream, settings.core.data_dir)
    watcher = CatalogueWatcher(env, lambda: build_pricer(settings.stream, settings.core.data_dir),
                               pricer.catalogue_version, interval_s=0.001)  # fmt: skip
    consumer = FakeConsumer(log)
    hp = HotPath(config(batch_size=100), pricer, consumer, producer, codec=CODEC, clock=clock,
                 catalogue_watcher=watcher)  # fmt: skip
    hp.start()
    hp.poll_once()
    install_catalogue(str(SNAPSHOT), env, now=datetime.now(UTC))
    while not consumer.exhausted():
        clock.now += 1
        hp.poll_once()
    hp.close()
    versions = [(r["source_offset"], r["catalogue_version"], r["cost_usd"]) for r in decoded(producer.of("t.priced"))]
    versions.sort()
    switches = [i for i in range(1, len(versions)) if versions[i][1] != versions[i - 1][1]]
    assert len(switches) == 1
    offset = versions[switches[0]][0]
    assert offset % 37 == 0 or offset == 100  # a batch boundary of the fake consumer
    assert {v for _, v, _ in versions[:switches[0]]} == {catalogue_version()}
    assert all(c == Decimal(2) for _, _, c in versions[switches[0]:])  # gpt-4o at the snapshot's $2 / MTok


def _usage(i: int) -> dict[str, object]:
    return {
        "event_id": f"00000000-0000-4000-8000-{i:012d}", "source": "svc", "agent_id": "a1", "team": "t",
        "project": "p", "provider": "openai", "model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 0,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "reasoning_tokens": 0,
        "input_audio_tokens": 0, "output_audio_tokens": 0, "cache_audio_read_tokens": 0, "image_tokens": 0,
        "web_search_calls": 0, "requests": 1, "task_id": None, "parent_task_id": None, "task_type": None,
        "environment": None, "attempt": 1, "status": "ok", "latency_ms": None, "prompt_hash": None,
        "reported_cost": None, "tags": {}, "schema_version": 1,
    }  # fmt: skip
