"""The fault suite's pipeline and reconciliation, built from the integration tests' helpers.

:class:`Pipeline` runs the real roles of the usage path in this process: the hot path exactly as ``finops stream
run`` builds it (``build_hot_path`` from settings, in a thread) and the ledger sink exactly as ``finops sink run``
builds it (``start_sink`` -> ``build_sink_worker``, in a thread) writing to the session's embedded ClickHouse.
Roles a test kills or whose process it needs (the SIGKILLed worker, detection, the alert worker) run as child
processes instead.

:func:`reconcile` compares ClickHouse with the input: every valid event exactly once by ``(source, event_id)``
(read without FINAL, so a duplicate row would show), the summed cost equal to a Decimal total computed
independently from the input with genai-prices' reference ``calc_price``, and every bad event in the DLQ at its
(partition, offset) with a reason header. :func:`report` prints the result and records it on the test
(``record_property``), so the junit XML of CI carries it without ``-s``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from finops.settings import load_settings
from finops.topics import TopicNames
from stream_jobs.dlq import DeadLetter
from stream_jobs.hotpath import build_hot_path
from tests.integration.hotpath_child import (
    independent_team_totals,
    isolated_data_dir,
    load_fleet,
    read_all,
    write_fleet,
)
from tests.integration.test_sink_support import RunningWorker, start_sink, wait_for

__all__ = ["Pipeline", "Reconciled", "fleet", "reconcile", "report"]


def fleet(tmp_path: Path, events: int, *, seed: int, agents: int = 200) -> list[dict[str, Any]]:
    """A simulated fleet of ``events`` recent usage events (the input file of the hot-path tests)."""
    path = tmp_path / f"fleet-{seed}.jsonl"
    write_fleet(path, events=events, agents=agents, seed=seed, rate=20.0)
    return load_fleet(path)


@dataclass
class Pipeline:
    """Hot path + ledger sink on ``topics``, writing into ``database``; ``start`` / ``stop`` each role."""

    kafka_config: dict[str, Any]
    topics: TopicNames
    ch_client: Any
    database: str
    sink_client: Any = None  # a wrapper of ch_client that injects faults (default: ch_client itself)
    hot_overrides: Mapping[str, Any] = field(default_factory=dict)
    group: str = field(default_factory=lambda: f"fault-hp-{uuid.uuid4().hex[:8]}")
    sink_group: str = field(default_factory=lambda: f"fault-sink-{uuid.uuid4().hex[:8]}")
    errors: list[BaseException] = field(default_factory=list)
    hot: Any = None
    sink: RunningWorker | None = None
    _hot_stop: threading.Event = field(default_factory=threading.Event)
    _hot_thread: threading.Thread | None = None

    def settings(self) -> Any:
        return load_settings({"FINOPS_KAFKA_BOOTSTRAP": self.kafka_config["bootstrap.servers"],
                              "FINOPS_KAFKA_TOPIC_PREFIX": self.topics.prefix, "FINOPS_STREAM_GROUP_ID": self.group,
                              "FINOPS_DATA_DIR": isolated_data_dir()})

    def start_hot_path(self) -> None:
        """The hot path in a thread, as the worker runs it, until :meth:`stop`."""
        overrides = {"idle_close_us": 1_000_000, "grace_us": 2_000_000, **self.hot_overrides}
        self.hot = build_hot_path(self.settings(), overrides=overrides)
        self._hot_stop.clear()

        def run() -> None:
            try:
                self.hot.run(until=self._hot_stop.is_set)
            except BaseException as err:  # noqa: BLE001 - reported by check()
                self.errors.append(err)

        self._hot_thread = threading.Thread(target=run, daemon=True, name="fault-hot-path")
        self._hot_thread.start()

    def start_sink(self) -> None:
        """The ledger sink in a thread (small batches: several inserts even for a small test)."""
        self.sink = start_sink("ledger", self.ch_client, self.database, self.kafka_config, self.topics,
                               group=self.sink_group, client=self.sink_client, batch_rows=500, batch_seconds=0.3)

    def start(self) -> Pipeline:
        self.start_sink()
        self.start_hot_path()
        return self

    def check(self) -> None:
        """Fail the test when a role thread died."""
        if self.errors:
            raise AssertionError(f"the hot path died: {self.errors[0]!r}")
        if self.sink is not None and self.sink.errors:
            raise AssertionError(f"the sink died: {self.sink.errors[0]!r}")

    def ledger_rows(self) -> int:
        return int(self.ch_client.query(f"SELECT count() FROM {self.database}.usage_ledger").result_rows[0][0])

    def wait_ledger(self, rows: int, timeout: float = 180.0) -> None:
        """Poll until the ledger holds at least ``rows`` rows (a role dying fails at once)."""
        def enough() -> bool:
            self.check()
            return self.ledger_rows() >= rows

        wait_for(enough, timeout, f"{rows} ledger rows (have {self.ledger_rows()})", interval=0.2)

    def stop(self) -> None:
        self._hot_stop.set()
        if self._hot_thread is not None:
            self._hot_thread.join(60)
        if self.sink is not None:
            self.sink.stop()
            self.sink = None


@dataclass
class Reconciled:
    """What ClickHouse and the DLQ hold against the input."""

    valid: int
    rows: int
    distinct: int
    cost: Decimal
    expected_cost: Decimal
    dead_letters: int
    reasons: dict[str, str]

    def line(self) -> str:
        return (f"{self.valid} valid events -> {self.rows} ledger rows, {self.distinct} distinct (source, event_id); "
                f"cost ${self.cost} = independent ${self.expected_cost}; {self.dead_letters} in the DLQ with reasons")


def reconcile(ch_client: Any, database: str, events: Iterable[dict[str, Any]], *, bootstrap: str,
              topics: TopicNames, bad: Mapping[tuple[int, int], str] | None = None,
              source: str | None = None) -> Reconciled:
    """Assert the ledger and the DLQ against the input; return the numbers.

    ``events`` are the valid input events (duplicates allowed: they count once); ``source`` overrides their
    ``source`` when a producer stamped its own. ``bad`` maps (partition, offset) of each bad input on the usage
    topic to what was wrong with it; each must be in the DLQ at that place with a reason, and nothing else may be.
    """
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        unique.setdefault((source or event["source"], str(event["event_id"])), event)
    expected_cost = sum((c for c, _ in independent_team_totals(unique.values()).values()), Decimal(0))
    rows = ch_client.query(f"SELECT source, event_id, count() FROM {database}.usage_ledger "
                           "GROUP BY source, event_id").result_rows
    stored = {(str(s), str(e)): int(n) for s, e, n in rows}
    missing = set(unique) - set(stored)
    extra = set(stored) - set(unique)
    twice = {k: n for k, n in stored.items() if n > 1}
    assert not missing, f"{len(missing)} valid events never reached ClickHouse, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} ledger rows that are not valid input, e.g. {sorted(extra)[:3]}"
    assert not twice, f"{len(twice)} events stored more than once, e.g. {sorted(twice.items())[:3]}"
    cost = Decimal(ch_client.query(f"SELECT sum(cost_usd) FROM {database}.usage_ledger").result_rows[0][0] or 0)
    assert cost == expected_cost, f"ledger cost {cost} != independently computed {expected_cost}"

    letters = [DeadLetter.from_message(m.headers(), m.key(), m.value()) for m in read_all(bootstrap, topics.dlq)]
    places = {(d.partition, d.offset): d for d in letters}
    reasons: dict[str, str] = {}
    expected_bad = dict(bad or {})
    assert set(places) == set(expected_bad), (
        f"DLQ places {sorted(places)} != bad inputs {sorted(expected_bad)}")
    for where, what in expected_bad.items():
        letter = places[where]
        assert letter.topic == topics.usage and letter.reason, (what, letter)
        reasons[what] = f"{letter.stage}/{letter.error}: {letter.reason[:80]}"
    return Reconciled(valid=len(unique), rows=sum(stored.values()), distinct=len(stored), cost=cost,
                      expected_cost=expected_cost, dead_letters=len(letters), reasons=reasons)


def report(record_property: Callable[[str, object], None], injected: str, reconciled: str) -> None:
    """Print and record what the test injected and what it reconciled (visible with and without ``-s``)."""
    print(f"\ninjected: {injected}\nreconciled: {reconciled}")
    record_property("injected", injected)
    record_property("reconciled", reconciled)


def paced(items: Iterable[Any], per_second: float) -> Iterable[Any]:
    """Yield ``items`` at about ``per_second`` (the load of a fleet, so a fault lands mid-stream)."""
    start = time.monotonic()
    for i, item in enumerate(items):
        due = start + i / per_second
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the input, not waiting for a condition
        yield item
