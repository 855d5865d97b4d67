"""Sink workers against a real broker and chdb: exact totals, restart before commit, ClickHouse outage with
backpressure, dead letters, and the two dedupe layers (token; stored-id check) proven separately."""

from __future__ import annotations

import random
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer

from finops.topics import TopicNames
from sinks.rows import LEDGER
from sinks.writer import ClickHouseBatchWriter, DeadLetter, MessageBatch, SinkMessage
from tests.integration.test_sink_support import (
    encode_events,
    expected_totals,
    ledger_totals,
    make_codec,
    make_priced,
    produce,
    rollup_totals,
    spend_1m_totals,
    spend_partials,
    start_sink,
    caught_up,
    committed_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration


def _assert_exact(ch: Any, db: str, events: list[dict[str, Any]]) -> None:
    exp = expected_totals(events)
    cost, rows, ids, inp, out = ledger_totals(ch, db)
    assert (cost, rows, ids, inp, out) == (exp.cost, exp.calls, exp.calls, exp.input_tokens, exp.output_tokens)
    for table in ("spend_hourly", "spend_daily"):
        assert rollup_totals(ch, db, table) == (exp.cost, exp.calls, exp.input_tokens, exp.output_tokens), table
    hourly = dict(ch.query(f"SELECT hour, sum(cost_usd) FROM {db}.spend_hourly GROUP BY hour").result_rows)
    assert {h.replace(tzinfo=None): Decimal(v) for h, v in hourly.items()} == {
        h.replace(tzinfo=None): v for h, v in exp.per_hour.items()
    }
    daily = dict(ch.query(f"SELECT day, sum(cost_usd) FROM {db}.spend_daily GROUP BY day").result_rows)
    assert {d: Decimal(v) for d, v in daily.items()} == dict(exp.per_day)


def test_sinks_write_exact_totals_from_both_framings(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    rng = random.Random(1)
    events = [make_priced(i, rng) for i in range(1500)]
    codec = make_codec()
    produce(kafka_config, topics.priced, encode_events(codec, events))
    partials = spend_partials(events)
    produce(kafka_config, topics.spend, [(p["aggregate_id"].encode(), codec.encode(p, "SpendAggregate"))
                                         for p in partials])

    ledger = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    spend = start_sink("spend", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    try:
        wait_for(caught_up(kafka_config, ledger, topics.priced), what="ledger sink to commit the topic's end")
        wait_for(caught_up(kafka_config, spend, topics.spend), what="spend sink to commit the topic's end")
    finally:
        ledger.stop()
        spend.stop()

    _assert_exact(ch_client, ch_database, events)
    exp = expected_totals(events)
    assert spend_1m_totals(ch_client, ch_database) == (
        exp.cost, exp.calls, sum(1 for p in partials if p["dimension"] == "team"))
    assert ledger.worker.stats.dead_lettered == 0 and spend.worker.stats.dead_lettered == 0
    # Decimal(38, 12) round trip of every single cost, not only of the sums.
    stored = dict(ch_client.query(f"SELECT event_id, cost_usd FROM {ch_database}.usage_ledger").result_rows)
    assert {e["event_id"]: e["cost_usd"] for e in events} == {k: Decimal(v) for k, v in stored.items()}


class _Crash(Exception):
    """Simulated process death between the ClickHouse write and the offset commit."""


class CrashOnCommit:
    """Delegates to a confluent-kafka Consumer; the ``crash_at``-th commit raises instead of committing."""

    def __init__(self, consumer: Any, crash_at: int) -> None:
        self._consumer = consumer
        self._crash_at = crash_at
        self.commits = 0

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.commits += 1
        if self.commits == self._crash_at:
            raise _Crash("killed after insert, before commit")
        return self._consumer.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_restart_before_commit_with_other_batch_composition_counts_each_event_once(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    rng = random.Random(2)
    events = [make_priced(i, rng) for i in range(1200)]
    produce(kafka_config, topics.priced, encode_events(make_codec(), events))
    group = f"g-{uuid.uuid4().hex[:6]}"
    wrappers: list[CrashOnCommit] = []

    def crashing(consumer: Any) -> CrashOnCommit:
        wrappers.append(CrashOnCommit(consumer, crash_at=2))
        return wrappers[-1]

    first = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=group, batch_rows=300,
                       consumer_wrapper=crashing)
    first.thread.join(60)
    assert first.errors and isinstance(first.errors[0], _Crash)
    first.close()
    written_by_first = ledger_totals(ch_client, ch_database)[1]
    committed = committed_offsets(kafka_config, group, topics.priced)
    # The crash left rows in ClickHouse whose offsets are not committed: they will be delivered again.
    assert written_by_first > sum(max(o, 0) for o in committed.values())

    # A new worker with another batch size: the re-delivered events arrive in different batches (new tokens), so
    # only the stored-id check stands between them and a double count in the rollups.
    second = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=group, batch_rows=170)
    try:
        wait_for(caught_up(kafka_config, second, topics.priced), what="restarted sink to catch up")
    finally:
        second.stop()
    assert second.worker.stats.duplicates > 0
    _assert_exact(ch_client, ch_database, events)


class _BlindClient:
    """Delegates to the chdb client but answers the ledger's "which ids are stored?" query with nothing, so only
    the insert_deduplication_token can stop a retried batch."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        result = self._client.query(sql, *args, **kwargs)
        if "event_id IN" in sql:
            result.result_rows.clear()
        return result

    def raw_query(self, sql: str, *args: Any, **kwargs: Any) -> Any:  # how the writer asks (sinks/writer.py)
        body = self._client.raw_query(sql, *args, **kwargs)
        return b"" if "event_id IN" in sql else body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _ListDeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self, timeout: float) -> None:
        return None


def test_retried_identical_batch_is_dropped_by_its_token_before_the_views(ch_client: Any, ch_database: str) -> None:
    rng = random.Random(3)
    events = [make_priced(i, rng) for i in range(400)]
    codec = make_codec()
    batch = MessageBatch()
    for offset, (key, value) in enumerate(encode_events(codec, events)):
        batch.add(SinkMessage("priced", offset % 3, offset, key, value), now=0.0)
    blind = _BlindClient(ch_client)
    result = blind.query(f"SELECT event_id FROM {ch_database}.usage_ledger WHERE event_id IN ('x')")
    assert result.result_rows == []
    assert blind.raw_query(f"SELECT event_id FROM {ch_database}.usage_ledger WHERE event_id IN ('x')") == b""
    writer = ClickHouseBatchWriter(blind, ch_database, LEDGER, _ListDeadLetters(), codec=codec)

    first = writer.write(batch)
    second = writer.write(batch)  # a retry after a lost acknowledgement, with the id check blinded
    assert first.first_token == second.first_token and first.inserted == second.inserted == 400
    _assert_exact(ch_client, ch_database, events)


class FlakyClient:
    """Delegates to the chdb client; its inserts (``insert``, ``raw_insert``, and ``command``, which carries the block
    path's INSERT on chdb) raise a transient error while ``outage`` is set."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.outage = threading.Event()
        self.failures = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage.is_set():
            from clickhouse_connect.driver.exceptions import OperationalError

            self.failures += 1
            raise OperationalError("simulated: connection refused (ClickHouse restarting)")
        return self._client.insert(*args, **kwargs)

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.outage.is_set():
            from clickhouse_connect.driver.exceptions import OperationalError

            self.failures += 1
            raise OperationalError("simulated: connection refused (ClickHouse restarting)")
        return self._client.raw_insert(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:  # the block path's insert on chdb
        if self.outage.is_set():
            from clickhouse_connect.driver.exceptions import OperationalError

            self.failures += 1
            raise OperationalError("simulated: connection refused (ClickHouse restarting)")
        return self._client.command(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.faults
def test_clickhouse_outage_retries_same_batch_commits_nothing_and_applies_backpressure(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    rng = random.Random(4)
    events = [make_priced(i, rng) for i in range(800)]
    encoded = encode_events(make_codec(), events)
    flaky = FlakyClient(ch_client)
    flaky.outage.set()
    group = f"g-{uuid.uuid4().hex[:6]}"
    produce(kafka_config, topics.priced, encoded[:400])
    running = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=group, client=flaky,
                         batch_rows=1000, batch_seconds=0.3)
    try:
        wait_for(lambda: flaky.failures >= 2, what="the first failed inserts")
        consumed_in_outage = running.worker.stats.consumed
        assert 0 < consumed_in_outage <= 400
        produce(kafka_config, topics.priced, encoded[400:])  # more data arrives while ClickHouse is down
        wait_for(lambda: flaky.failures >= 5, timeout=90, what="more retries of the same batch")
        # Nothing committed while nothing was written ...
        assert all(offset < 0 for offset in committed_offsets(kafka_config, group, topics.priced).values())
        assert ledger_totals(ch_client, ch_database)[1] == 0
        # ... and the paused consumer did not read ahead into memory (backpressure), while staying in the group.
        assert running.worker.stats.consumed == consumed_in_outage
        assert not running.errors
        flaky.outage.clear()
        wait_for(caught_up(kafka_config, running, topics.priced), what="sink to catch up after the outage")
    finally:
        running.stop()
    assert running.worker.stats.retries >= 5
    _assert_exact(ch_client, ch_database, events)


def test_rejected_rows_and_undecodable_bytes_go_to_the_dlq_with_reason(
    ch_client: Any, ch_database: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    rng = random.Random(5)
    events = [make_priced(i, rng) for i in range(300)]
    bad_ids = set()
    for i in (40, 211):
        events[i]["input_tokens"] = -5  # Avro long accepts it; ClickHouse's UInt64 column does not
        bad_ids.add(events[i]["event_id"])
    payloads = encode_events(make_codec(), events)
    payloads.insert(150, (b"agent-1", b"\xc3\x01garbage-not-avro"))
    produce(kafka_config, topics.priced, payloads)

    running = start_sink("ledger", ch_client, ch_database, kafka_config, topics, group=f"g-{uuid.uuid4().hex[:6]}",
                         batch_rows=1000, batch_seconds=0.5)
    try:
        wait_for(caught_up(kafka_config, running, topics.priced), what="sink to catch up")
    finally:
        running.stop()
    good = [e for e in events if e["event_id"] not in bad_ids]
    _assert_exact(ch_client, ch_database, good)
    assert running.worker.stats.dead_lettered == 3

    consumer = Consumer({**kafka_config, "group.id": f"dlq-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.dlq])
    letters: list[Any] = []
    try:
        def read() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                letters.append(msg)
            return len(letters) >= 3
        wait_for(read, what="three dead letters")
    finally:
        consumer.close()
    headers = [dict(m.headers()) for m in letters]
    assert all(h["original_topic"] == topics.priced.encode() and h["stage"] == b"sink" for h in headers)
    reasons = sorted(h["reason"].decode() for h in headers)
    assert sum(r.startswith("clickhouse:") and "input_tokens" in r for r in reasons) == 2, reasons
    assert sum(r.startswith("decode:") for r in reasons) == 1, reasons
    # Provenance points at the original message: its raw bytes are what the DLQ carries.
    garbage = next(m for m in letters if dict(m.headers())["reason"].startswith(b"decode:"))
    assert garbage.value() == b"\xc3\x01garbage-not-avro"
    assert int(dict(garbage.headers())["original_offset"]) >= 0
