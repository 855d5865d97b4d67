"""Batch writer logic with a fake ClickHouse client: tokens, backoff, how it acts on each error class (the classes
themselves: test_clickhouse_errors.py), bisection, retry, abort."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from clickhouse_connect.driver import exceptions as ch_exc

from finops.retry import RetryPolicy, compute_backoff
from schemas.wire import AvroCodec
from sinks.rows import SPEND
from sinks.writer import (
    BatchAbandonedError,
    ClickHouseBatchWriter,
    DeadLetter,
    MessageBatch,
    SinkHaltError,
    SinkMessage,
    compute_dedup_token,
)

pytestmark = pytest.mark.unit

T = datetime(2025, 1, 1, tzinfo=UTC)


def _aggregate(i: int, cost: str = "1.5") -> dict[str, Any]:
    return {
        "aggregate_id": f"{i}:team:t:0", "window_start": T, "window_end": T, "dimension": "team", "key": "t",
        "source_partition": 0, "cost_usd": Decimal(cost), "input_tokens": i, "output_tokens": 1,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "calls": 1, "errors": 0,
        "retries": 0, "unpriced_calls": 0, "emitted_at": T,
    }


def _batch(n: int, *, bad: set[int] = frozenset(), garbage: set[int] = frozenset()) -> MessageBatch:  # type: ignore[assignment]
    codec = AvroCodec()
    batch = MessageBatch()
    for i in range(n):
        value = b"\x00\x01" if i in garbage else codec.encode(_aggregate(i, "666" if i in bad else "1.5"),
                                                                   "SpendAggregate")
        batch.add(SinkMessage("spend", i % 2, 100 + i, None, value), now=float(i))
    return batch


class FakeClient:
    """Records inserts; rejects any insert containing a cost of 666; fails transiently ``transient`` times.

    Takes row inserts (``insert``) and Avro container inserts (``raw_insert``, read back with fastavro's container
    reader, so a container the writer built wrongly fails here), both recorded as rows."""

    def __init__(self, transient: int = 0, error: Exception | None = None) -> None:
        self.inserts: list[tuple[list[list[Any]], str]] = []
        self.attempts = 0
        self.transient = transient
        self.error = error

    def insert(self, table: str, data: list[list[Any]], *, column_names: list[str], database: str,
               settings: dict[str, Any]) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        if self.transient:
            self.transient -= 1
            raise ch_exc.DatabaseError("Code: 252. Too many parts", code=252)
        cost = column_names.index("cost_usd")
        if any(row[cost] == Decimal(666) for row in data):
            raise ch_exc.DataError("Unable to create native array for column `cost_usd`")
        self.inserts.append((data, settings["insert_deduplication_token"]))

    def raw_insert(self, table: str, column_names: list[str], *, insert_block: bytes, fmt: str,
                   settings: dict[str, Any]) -> None:
        assert fmt == "Avro" and table == "db.spend_1m"
        records = list(fastavro.reader(io.BytesIO(insert_block)))
        self.insert(table, [[r[name] for name in column_names] for r in records], column_names=column_names,
                    database="db", settings=settings)


class Letters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self, timeout: float) -> None:
        return None


def _writer(client: FakeClient, letters: Letters | None = None) -> ClickHouseBatchWriter:
    return ClickHouseBatchWriter(client, "db", SPEND, letters or Letters(), rng=random.Random(0),
                                 retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.05))


def test_token_is_deterministic_order_independent_and_content_exact() -> None:
    ranges = {("t", 0): (10, 20), ("t", 1): (5, 7)}
    rows = [("t", 0, 10), ("t", 1, 5), ("t", 0, 11)]
    token = compute_dedup_token("usage_ledger", ranges, rows)
    assert token == compute_dedup_token("usage_ledger", dict(reversed(list(ranges.items()))), reversed(rows))
    assert token != compute_dedup_token("usage_ledger", ranges, rows[:2])  # a subset is a different insert
    assert token != compute_dedup_token("spend_1m", ranges, rows)
    assert token != compute_dedup_token("usage_ledger", {("t", 0): (10, 21), ("t", 1): (5, 7)}, rows)


def test_token_is_the_sha256_of_the_documented_text() -> None:
    # The bytes hashed are fixed (a batch retried across an upgrade keeps its token): the table, each partition's
    # range, "#", then every row's provenance in sorted order, over topics, partitions and repeated offsets.
    rng = random.Random(3)
    rows = [(topic, partition, rng.randrange(10**9)) for topic in ("b", "a") for partition in (2, 0, 11)
            for _ in range(40)]
    rows += [rows[0], rows[7]]
    rng.shuffle(rows)
    ranges = {("b", 2): (4, 9), ("a", 11): (0, 1)}
    text = "usage_ledger" + "".join(f"|{t}:{p}:{lo}-{hi}" for (t, p), (lo, hi) in sorted(ranges.items())) + "#"
    text += "".join(f"{t}:{p}:{o}," for t, p, o in sorted(rows))
    assert compute_dedup_token("usage_ledger", ranges, rows) == hashlib.sha256(text.encode()).hexdigest()
    assert compute_dedup_token("usage_ledger", {}, []) == hashlib.sha256(b"usage_ledger#").hexdigest()


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=8.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        step = min(8.0, 0.5 * 2 ** (attempt - 1))
        waits = {compute_backoff(policy, attempt, rng) for _ in range(50)}
        assert all(step / 10 <= w <= step for w in waits)
        assert len(waits) > 40  # jitter: not lockstep


def test_batch_offsets_and_revoked_partitions() -> None:
    batch = _batch(6)
    assert batch.partition_ranges() == {("spend", 0): (100, 104), ("spend", 1): (101, 105)}
    assert batch.commit_offsets() == {("spend", 0): 105, ("spend", 1): 106}
    assert batch.age(3.5) == 3.5
    assert batch.drop_partitions([("spend", 1)]) == 3
    assert batch.commit_offsets() == {("spend", 0): 105}


def test_clean_batch_is_one_insert_with_the_batch_token() -> None:
    client = FakeClient()
    batch = _batch(10)
    report = _writer(client).write(batch)
    assert (report.inserted, report.dead_lettered, report.inserts, len(client.inserts)) == (10, 0, 1, 1)
    expected = compute_dedup_token("spend_1m", batch.partition_ranges(),
                                   [(m.topic, m.partition, m.offset) for m in batch.messages])
    assert client.inserts[0][1] == expected == report.first_token


def test_transient_errors_retry_the_same_insert_and_wait_between() -> None:
    client = FakeClient(transient=3)
    waits: list[float] = []
    report = _writer(client).write(_batch(8), wait=waits.append)
    assert report.retries == 3 and len(waits) == 3 and client.attempts == 4
    assert len(client.inserts) == 1 and report.inserted == 8


def test_bisection_isolates_rejected_rows_and_dead_letters_them_with_the_reason() -> None:
    client = FakeClient()
    letters = Letters()
    report = _writer(client, letters).write(_batch(64, bad={5, 40}, garbage={9}))
    assert report.inserted == 61 and report.dead_lettered == 3
    assert sum(len(data) for data, _ in client.inserts) == 61
    assert len({token for _, token in client.inserts}) == len(client.inserts)  # each sub-insert its own token
    reasons = {letter.message.offset - 100: letter.reason for letter in letters.letters}
    assert set(reasons) == {5, 9, 40}
    assert reasons[5].startswith("clickhouse: DataError") and "cost_usd" in reasons[5]
    assert reasons[9].startswith("decode:")


def test_a_batch_rejected_entirely_halts_instead_of_emptying_into_the_dlq() -> None:
    letters = Letters()
    with pytest.raises(SinkHaltError, match="every one of 4 rows"):
        _writer(FakeClient(), letters).write(_batch(4, bad={0, 1, 2, 3}))
    assert letters.letters == []


def test_table_errors_halt_without_bisecting() -> None:
    client = FakeClient(error=ch_exc.DatabaseError("Code: 60. Table db.spend_1m does not exist", code=60))
    with pytest.raises(SinkHaltError, match="cannot fix"):
        _writer(client).write(_batch(16))
    assert client.attempts == 1


def test_abort_during_a_retry_wait_abandons_the_batch() -> None:
    client = FakeClient(transient=100)
    calls = {"n": 0}

    def should_abort() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(BatchAbandonedError):
        _writer(client).write(_batch(4), wait=lambda _s: None, should_abort=should_abort)
    assert client.inserts == [] and client.attempts <= 3


def test_record_of_another_schema_is_dead_lettered() -> None:
    codec = AvroCodec()
    alert = {"alert_id": str(uuid.uuid4()), "dedup_key": "k", "kind": "drift", "severity": "info",
             "state": "trigger", "occurred_at": T, "title": "x", "summary": "y"}
    batch = _batch(3)
    batch.add(SinkMessage("spend", 0, 200, None, codec.encode(alert, "Alert")), now=0.0)
    letters = Letters()
    report = _writer(FakeClient(), letters).write(batch)
    assert report.inserted == 3 and [lt.reason for lt in letters.letters] == ["decode: record Alert on a "
                                                                              "SpendAggregate topic"]
