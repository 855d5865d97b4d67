"""Batch writer: Kafka messages -> one ClickHouse insert -> offsets the worker may commit.

Role (snuba's InsertBatchWriter, OpenMeter's sink ``flush``): split / decode -> drop ids already stored -> INSERT
(retried, same token) -> dead letters flushed -> (worker) COMMIT offsets. The ledger and spend tables hand
ClickHouse the Avro bytes (the block path, DESIGN §6), the rest decode rows in Python; a refused row is bisected out
to the DLQ, and a table-level error halts the sink (:class:`ClickHouseBatchWriter`).

Guarantee (DESIGN §5): offsets are committed only after ClickHouse acknowledged the insert and the dead-letter
producer acknowledged every rejected message, so delivery is at least once; it is effectively once for the ledger
and its rollups through a deterministic insert token, a stored-id check and ``ReplacingMergeTree``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from finops.clickhouse import (
    ClickHouseQueryError,
    ClickHouseRejectedError,
    ClickHouseTransientError,
    check_identifier,
    classified_errors,
    column_read_types,
    insert_avro_container,
    is_embedded,
    strings_file,
)
from finops.retry import RetryPolicy, compute_backoff
from schemas.errors import DecodeError, FinopsError
from schemas.models import from_micros, to_micros
from schemas.wire import AvroCodec
from sinks.avro_block import PrefixReader, build_container, build_container_header, compute_frame_header
from sinks.rows import RowMappingError, RowSpec

__all__ = [
    "BatchAbandonedError",
    "ClickHouseBatchWriter",
    "DeadLetter",
    "DeadLetterSink",
    "KafkaDeadLetterSink",
    "MessageBatch",
    "SinkHaltError",
    "SinkMessage",
    "WriteReport",
    "compute_dedup_token",
]

log = logging.getLogger(__name__)

# Event ids a stored-id query may carry as a literal as they are (UUID text), and how many characters of them.
_PLAIN_ID = re.compile(r"[0-9A-Za-z_.:\-]{1,128}")
_LITERAL_BUDGET = 200_000


class SinkHaltError(FinopsError):
    """The sink must stop: the table is wrong or unreachable for good, or a whole batch was rejected (a bad deploy).
    Nothing of the batch was committed; fix the cause and restart, the batch is read again."""


class BatchAbandonedError(FinopsError):
    """The batch was given up before it was written (shutdown or partitions revoked during a retry wait).

    Nothing was committed for it; whoever owns its partitions next reads it again, and the dedupe layers make the
    re-read safe even if an earlier attempt had in fact been stored.
    """


class SinkMessage(NamedTuple):
    """One consumed Kafka message, kept with its provenance until the batch is committed (immutable; a tuple, which
    the worker builds per message at a fraction of a frozen dataclass's cost)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    # The broker's timestamp (ms since the epoch), None when absent; stamps a policy tombstone's deletion time.
    timestamp_ms: int | None = None


@dataclass(slots=True)
class MessageBatch:
    """Messages of one flush, in arrival order, with the time the first one arrived (for the time trigger)."""

    messages: list[SinkMessage] = field(default_factory=list)
    started_at: float | None = None

    def add(self, message: SinkMessage, now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        self.messages.append(message)

    def __len__(self) -> int:
        return len(self.messages)

    def age(self, now: float) -> float:
        return 0.0 if self.started_at is None else now - self.started_at

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the messages of ``partitions`` (revoked: the new owner re-reads them). Returns how many."""
        gone = set(partitions)
        if not gone:
            return 0
        before = len(self.messages)
        self.messages = [m for m in self.messages if (m.topic, m.partition) not in gone]
        if not self.messages:
            self.started_at = None
        return before - len(self.messages)

    def partition_ranges(self) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (first offset, last offset)`` of the messages in the batch."""
        offsets: dict[tuple[str, int], list[int]] = {}
        for m in self.messages:
            tp = (m.topic, m.partition)
            seen = offsets.get(tp)
            if seen is None:
                offsets[tp] = [m.offset]
            else:
                seen.append(m.offset)
        return {tp: (min(seen), max(seen)) for tp, seen in offsets.items()}

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        """``(topic, partition) -> next offset to read`` (last offset + 1, Kafka's commit convention)."""
        return {tp: last + 1 for tp, (_, last) in self.partition_ranges().items()}


def compute_dedup_token(
    table: str,
    ranges: Mapping[tuple[str, int], tuple[int, int]],
    included: Iterable[tuple[str, int, int]],
) -> str:
    """The ``insert_deduplication_token`` of an insert: sha256 of the table, each partition's (first, last) offset
    range of the batch, and the (topic, partition, offset) of every row inserted. Pure and order-independent.

    The row offsets are in the token because ClickHouse deduplicates by token alone: a re-delivered batch that
    inserts a different subset (the stored-id check dropped rows an earlier attempt stored) must get a different
    token, or ClickHouse would drop rows it never saw.

    Kafka offsets name immutable bytes, so equal tokens mean equal inserts: a retry is recognised, and a different
    subset of the same batch (after dedupe or bisection) is not mistaken for it.
    """
    # The text hashed is the table, "|topic:partition:first-last" per partition, "#", then "topic:partition:offset,"
    # per row in sorted order, built per partition with C-level joins (one digest of the whole text).
    by_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in included:
        by_partition.setdefault((topic, partition), []).append(offset)
    text = [table]
    text.extend(f"|{topic}:{partition}:{first}-{last}" for (topic, partition), (first, last) in sorted(ranges.items()))
    text.append("#")
    for (topic, partition), offsets in sorted(by_partition.items()):
        prefix = f"{topic}:{partition}:"
        text.append(prefix + f",{prefix}".join(map(str, sorted(offsets))) + ",")
    return hashlib.sha256("".join(text).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the sink will not write, with the reason (decode, mapping or ClickHouse's rejection)."""

    message: SinkMessage
    reason: str


class DeadLetterSink(Protocol):
    """Where rejected messages go. ``send`` may buffer; ``flush`` blocks until every sent letter is acknowledged
    and raises when one was not (the batch is then retried, never committed without its dead letters)."""

    def send(self, letter: DeadLetter) -> None: ...

    def flush(self, timeout: float) -> None: ...


class DeadLetterDeliveryError(FinopsError):
    """The DLQ topic did not acknowledge a dead letter; the batch is not committed and will be retried."""


class KafkaDeadLetterSink:
    """Dead letters to a Kafka topic (``agent.usage.dlq.v1``): original key and raw value, provenance in headers
    ``original_topic``, ``original_partition``, ``original_offset``, ``reason`` and ``stage`` (``sink``), as
    arroyo's DLQ keeps them: bad input is data, with where it came from and why it was refused."""

    def __init__(self, producer: Any, topic: str) -> None:
        """``producer`` is a confluent-kafka Producer (idempotent, acks=all)."""
        self._producer = producer
        self._topic = topic
        self._failures: list[str] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def send(self, letter: DeadLetter) -> None:
        m = letter.message
        headers = [
            ("original_topic", m.topic.encode()),
            ("original_partition", str(m.partition).encode()),
            ("original_offset", str(m.offset).encode()),
            ("reason", letter.reason.encode("utf-8", "replace")[:4096]),
            ("stage", b"sink"),
        ]
        while True:
            try:
                self._producer.produce(
                    self._topic, value=m.value, key=m.key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.1)

    def flush(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeadLetterDeliveryError(
                f"dead-letter topic {self._topic} did not acknowledge {remaining} letter(s)"
                + (f"; errors: {'; '.join(failures[:3])}" if failures else "")
            )


@dataclass(slots=True)
class WriteReport:
    """What one :meth:`ClickHouseBatchWriter.write` did."""

    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    inserts: int = 0
    retries: int = 0
    first_token: str | None = None


@dataclass(slots=True)
class _Row:
    """One message on its way to ClickHouse. Row path (``frame`` None): ``values`` is the whole row. Block path:
    ``values`` holds only the spec's ``avro_prefix`` fields (the first columns, so ``key_of`` and ``time_index``
    read them as from a row; a timestamp as its int of microseconds since the epoch) and the body,
    ``message.value[start:]``, goes to ClickHouse as it is."""

    message: SinkMessage
    values: Sequence[Any]
    start: int = 0
    frame: _Frame | None = None


@dataclass(frozen=True, slots=True)
class _Frame:
    """What the block path knows about one writer schema: its prefix reader, the container header (with the schema
    JSON) and sync marker, and the columns of the insert (the schema's fields that are table columns)."""

    prefix: PrefixReader
    head: bytes
    sync: bytes
    columns: tuple[str, ...]


def _describe(err: BaseException) -> str:
    # The first line of a ClickHouse message names the code and the problem; the rest is a stack trace. A classed
    # error of the boundary is described by the client's error it translates (its type names the failure).
    if isinstance(err, ClickHouseQueryError) and err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    cause = err.__cause__
    if cause is not None and str(cause):
        text = f"{text} ({type(cause).__name__}: {str(cause).splitlines()[0]})"
    return f"{type(err).__name__}: {text}"[:1000]


class ClickHouseBatchWriter:
    """Writes one :class:`MessageBatch` into one table; the caller commits the offsets after :meth:`write` returns.

    Not thread-safe: one writer per worker thread (the ClickHouse client may be shared).

    Two paths into the insert. The ledger and spend tables (``RowSpec.avro_prefix``) take the BLOCK PATH (DESIGN §6:
    sinks hand ClickHouse the bytes): messages framed with the current schema of the table's record keep their Avro
    bodies, which are concatenated into one Avro object container per writer schema and inserted with ``FORMAT
    Avro`` (sinks/avro_block.py); Python reads only each body's leading fields (the ledger's ``event_id``,
    ``source``, ``occurred_at``) for the checks below, and the columns the table adds come from its DEFAULTs.
    Everything else (an older writer schema, a bad header, another record) and the governance tables take the ROW
    PATH: decode and map in Python (sinks/rows.py), insert rows. A container ClickHouse refuses is bisected like a
    row insert; a single refused message is handed to the row path, whose decoder or insert dead-letters it with the
    reason.

    Effectively once for the ledger and the hourly and daily rollups its materialized views feed, by three layers:

    (a) a deterministic ``insert_deduplication_token`` per insert (:func:`compute_dedup_token`): a retried insert of
        the same batch is dropped by ClickHouse's block deduplication BEFORE the materialized views fire (the ledger
        and the rollup targets keep ``non_replicated_deduplication_window``; checked on chdb in
        tests/integration/test_sink_worker.py);
    (b) the ledger is deduplicated by ``(source, event_id)``: before the first attempt the writer asks which ids of
        the batch are already stored (bounded by the batch's occurred_at range) and drops them, as OpenMeter's sink
        does, so an event re-delivered in a different batch composition is not inserted again and the rollups do
        not count it twice. The filtered rows and the token are fixed for the batch's lifetime: every retry sends
        byte-for-byte the same insert;
    (c) ``ReplacingMergeTree`` on ``(..., source, event_id)`` collapses whatever slips through (read with FINAL);
        for ``spend_1m`` this is the dedupe (a re-emitted window has the same aggregate_id and replaces the old one).

    The governance tables (``alerts``, ``waste_signals``, ``budgets``; no materialized view reads them) rely on (a)
    and (c) only, by their natural id. Their specs add two pure steps before the insert (sinks/rows.py): rows of a
    batch with the same identity collapse to the last in Kafka order (``latest_of``), and ``budgets`` folds the batch
    over the stored rows of its policy ids (``resolve``, looked up once before the first attempt). A tombstone on the
    compacted policy topic is a deletion there (``tombstone_row``), not a dead letter. Those three tables have no
    ``non_replicated_deduplication_window`` (on chdb and single servers the token is then not checked), so a retried
    insert can store a duplicate row until a merge; it is identical by id and FINAL hides it.

    Failures: transient ClickHouse errors (connection, timeouts, too many parts, memory limit ...) -> exponential
    backoff with full jitter, retry the SAME insert, nothing committed meanwhile; the wait is delegated to the caller
    (:class:`~sinks.worker.SinkWorker` pauses its partitions and keeps polling: the backpressure). A row ClickHouse
    (or its client) rejects -> the insert is bisected until the offending rows are isolated; they go to the
    dead-letter topic with the reason, the rest is inserted. A batch whose every row is rejected, or an error about
    the table rather than the data (unknown table, no access ...) -> :class:`SinkHaltError`: a bad deploy must stop
    the sink, not empty the topic into the DLQ.
    """

    def __init__(
        self,
        client: Any,
        database: str,
        spec: RowSpec,
        dead_letters: DeadLetterSink,
        *,
        codec: Any = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        dlq_timeout: float = 30.0,
    ) -> None:
        """``client`` is a clickhouse-connect client; ``database`` holds the migrated tables; ``codec`` decodes
        both wire framings (default :class:`schemas.wire.AvroCodec` over our schemas)."""
        if codec is None:
            codec = AvroCodec()
        self._client = client
        self._database = check_identifier(database)
        self._spec = spec
        self._dead_letters = dead_letters
        self._codec = codec
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._dlq_timeout = dlq_timeout
        self._table = f"{self._database}.{spec.table}"
        # Block path (spec.avro_prefix): framing header -> its writer schema's frame (None: row path), and the
        # frames by container header, so both framings of one schema share one container.
        self._frames: dict[bytes, _Frame | None] = {}
        self._frames_by_head: dict[bytes, _Frame] = {}
        # On chdb, the types the block path reads the table's columns as (finops.clickhouse.read_types), looked up
        # in system.columns at the first block insert; a server takes the raw insert and needs none.
        self._read_types: dict[str, str] | None = None
        self._embedded = is_embedded(client)

    @property
    def spec(self) -> RowSpec:
        return self._spec

    def write(
        self,
        batch: MessageBatch,
        *,
        wait: Callable[[float], None] = time.sleep,
        should_abort: Callable[[], bool] = lambda: False,
    ) -> WriteReport:
        """Decode, dedupe, insert and dead-letter ``batch``; return when all of it is durable.

        Blocks through transient ClickHouse and DLQ failures, calling ``wait(seconds)`` between attempts (the
        worker polls Kafka with its partitions paused meanwhile). Raises :class:`BatchAbandonedError` when
        ``should_abort()`` turns true during a retry (nothing more is written for the batch), and
        :class:`SinkHaltError` for an error retrying or bisecting cannot fix. Commits nothing itself.
        """
        report = WriteReport(messages=len(batch))
        if self._spec.avro_prefix is not None:
            rows, letters = self._split(batch.messages)
        else:
            rows, letters = self._decode(batch.messages)
        rows = self._dedupe_in_batch(rows, report)
        rows = self._keep_latest(rows, report)
        if rows and self._spec.resolve is not None:
            # Fixed for the batch's lifetime, like the stored-id check below: every retry sends the same rows.
            stored = self._retrying(lambda: self._stored_state(rows), report, wait, should_abort)
            resolved = self._spec.resolve([row.values for row in rows], stored)
            report.duplicates += len(rows) - len(resolved)
            rows = [_Row(rows[index].message, values) for index, values in resolved]
        if rows and self._spec.key_of is not None:
            stored = self._retrying(lambda: self._stored_keys(rows), report, wait, should_abort)
            if stored:
                key_of = self._spec.key_of
                kept = [row for row in rows if key_of(row.values) not in stored]
                report.duplicates += len(rows) - len(kept)
                rows = kept
        ranges = batch.partition_ranges()
        groups: dict[bytes, list[_Row]] = {}
        plain: list[_Row] = []
        for row in rows:
            if row.frame is None:
                plain.append(row)
            else:
                groups.setdefault(row.frame.head, []).append(row)
        for group in groups.values():  # one Avro container insert per writer schema (normally one)
            self._insert_blocks_or_bisect(group, ranges, letters, report, wait, should_abort, whole_batch=True)
        if plain:
            self._insert_or_bisect(plain, ranges, letters, report, wait, should_abort, whole_batch=True)
        if letters:
            for letter in letters:
                self._dead_letters.send(letter)
            self._retrying(lambda: self._dead_letters.flush(self._dlq_timeout), report, wait, should_abort)
            report.dead_lettered = len(letters)
            log.warning("dead-lettered %d of %d message(s) from %s: first reason: %s",
                        len(letters), len(batch), self._spec.table, letters[0].reason)
        return report

    # ------------------------------------------------------------------------------------------------ stages

    def _decode(self, messages: Sequence[SinkMessage]) -> tuple[list[_Row], list[DeadLetter]]:
        rows: list[_Row] = []
        letters: list[DeadLetter] = []
        for message in messages:
            self._decode_one(message, rows, letters)
        return rows, letters

    def _decode_one(self, message: SinkMessage, rows: list[_Row], letters: list[DeadLetter]) -> None:
        """The row path: decode and map one message into ``rows``, or say why not in ``letters``."""
        if message.value is None:
            tombstone_row = self._spec.tombstone_row
            if tombstone_row is None:
                letters.append(DeadLetter(message, "decode: empty value (tombstone) on a data topic"))
                return
            try:  # a compacted topic's deletion: the spec makes a marker row of it
                rows.append(_Row(message, tombstone_row(message.key, message.timestamp_ms)))
            except RowMappingError as err:
                letters.append(DeadLetter(message, f"mapping: {err}"))
            return
        expected = self._spec.schema_name
        try:
            name, record = self._codec.decode(message.value)
            if name != expected:
                letters.append(DeadLetter(message, f"decode: record {name} on a {expected} topic"))
                return
            rows.append(_Row(message, self._spec.compute_row(record)))
        except RowMappingError as err:
            letters.append(DeadLetter(message, f"mapping: {err}"))
        except FinopsError as err:  # DecodeError / UnknownSchemaError from the codec
            letters.append(DeadLetter(message, f"decode: {err}"))

    def _split(self, messages: Sequence[SinkMessage]) -> tuple[list[_Row], list[DeadLetter]]:
        """The block path's first stage: a message framed with the current schema of the spec's record keeps its
        bytes and gets only its prefix fields read; anything else (another writer schema, another record, a bad
        header or prefix, a tombstone) takes the row path, whose decoder accepts it or names the problem."""
        rows: list[_Row] = []
        letters: list[DeadLetter] = []
        frames = self._frames
        append = rows.append
        # The header of the previous message and its frame: a batch is nearly always of one writer schema.
        last_header: bytes | None = None
        last_frame: _Frame | None = None
        for message in messages:
            value = message.value
            if value is None:
                self._decode_one(message, rows, letters)
                continue
            if last_header is not None and value.startswith(last_header):
                header, frame = last_header, last_frame
            else:
                named = compute_frame_header(value)
                if named is None:
                    self._decode_one(message, rows, letters)
                    continue
                found = frames.get(named, _UNSEEN)
                frame = self._frame_for(value, named) if found is _UNSEEN else found
                header = last_header = named
                last_frame = frame
            if frame is None:
                self._decode_one(message, rows, letters)
                continue
            start = len(header)
            try:
                prefix = frame.prefix.read_tuple(value, start)
            except DecodeError:
                self._decode_one(message, rows, letters)
                continue
            append(_Row(message, prefix, start, frame))
        return rows, letters

    def _frame_for(self, value: bytes, header: bytes) -> _Frame | None:
        """The :class:`_Frame` of the writer schema ``header`` names, or None when its messages take the row path.
        Cached per header when the codec knew the schema (an unknown one is asked again, as the row path does)."""
        container_schema = getattr(self._codec, "container_schema", None)
        if container_schema is None:
            return None
        try:
            name, schema = container_schema(value)
        except FinopsError:
            return None  # unknown or bad header: the row path dead-letters it with the codec's reason
        frame: _Frame | None = None
        prefix_names = self._spec.avro_prefix
        fields = {f.get("name") for f in (schema or {}).get("fields", [])}
        if (name == self._spec.schema_name and schema is not None and prefix_names is not None
                and all(column in fields for column in self._spec.columns)):
            try:
                # Timestamps as the body's microseconds: only the batch's least and greatest are ever converted.
                prefix = PrefixReader(schema, prefix_names, timestamps="micros")
            except FinopsError:
                prefix = None
            if prefix is not None:
                head, sync = build_container_header(schema)
                known = self._frames_by_head.get(head)
                frame = known or _Frame(prefix, head, sync, tuple(self._spec.columns))
                self._frames_by_head[head] = frame
        self._frames[header] = frame
        return frame

    def _dedupe_in_batch(self, rows: list[_Row], report: WriteReport) -> list[_Row]:
        key_of = self._spec.key_of
        if key_of is None:
            return rows
        keys = [key_of(row.values) for row in rows]
        if len(set(keys)) == len(keys):
            return rows  # the common case: no key twice
        seen: set[Any] = set()
        kept: list[_Row] = []
        for row, key in zip(rows, keys, strict=True):
            if key not in seen:  # the first of each key is kept (arrival order)
                seen.add(key)
                kept.append(row)
        report.duplicates += len(rows) - len(kept)
        return kept

    def _keep_latest(self, rows: list[_Row], report: WriteReport) -> list[_Row]:
        """Rows whose ``latest_of`` identity recurs later in the batch are superseded (counted as duplicates): one
        identity lives in one partition, so arrival order is Kafka order and the last row is the newest."""
        latest_of = self._spec.latest_of
        if latest_of is None:
            return rows
        last = {latest_of(row.values): index for index, row in enumerate(rows)}
        kept = [row for index, row in enumerate(rows) if last[latest_of(row.values)] == index]
        report.duplicates += len(rows) - len(kept)
        return kept

    def _stored_state(self, rows: Sequence[_Row]) -> dict[str, list[Any]]:
        """The stored rows (all columns, as FINAL collapses them) whose ``state_key_column`` is one of the batch's,
        by that key. One query; the key column is the table's sorting key, so it reads only those granules."""
        column = self._spec.state_key_column
        assert column is not None
        key_index = self._spec.columns.index(column)
        ids = sorted({str(row.values[key_index]) for row in rows})
        with classified_errors(f"reading the stored state of {self._table}"):
            result = self._client.query(
                f"SELECT {', '.join(self._spec.columns)} FROM {self._table} FINAL "
                f"WHERE {column} IN {{ids:Array(String)}}",
                parameters={"ids": ids},
            )
        return {str(values[key_index]): list(values) for values in result.result_rows}

    def _stored_keys(self, rows: Sequence[_Row]) -> set[tuple[str, str]]:
        """Which ``(source, event_id)`` of ``rows`` the ledger already holds (originals only; corrections share the
        event id but are other rows). Bounded by the batch's occurred_at range, so only its partitions are read."""
        assert self._spec.key_of is not None and self._spec.time_index is not None
        key_of, time_index = self._spec.key_of, self._spec.time_index
        # Block-path rows hold occurred_at as microseconds, row-path rows as a datetime.
        micros = [t if t.__class__ is int else to_micros(t) for t in (row.values[time_index] for row in rows)]
        ids = {key_of(row.values)[1] for row in rows}
        bounds = {"lo": from_micros(min(micros)), "hi": from_micros(max(micros))}
        # The id set is the selective condition (and the one the bloom-filter index serves): PREWHERE reads the
        # event_id column first and the other columns only of the rows it keeps.
        sql = (
            f"SELECT DISTINCT source, event_id FROM {self._table} PREWHERE event_id IN {{ids}} "
            f"WHERE {self._spec.time_column} >= {{lo:DateTime64(6, 'UTC')}} "
            f"AND {self._spec.time_column} <= {{hi:DateTime64(6, 'UTC')}} AND row_kind = 'original'"
        )
        if self._embedded:
            # On chdb the id set goes to the engine as a file it reads (any id exactly as it is), one query.
            with strings_file(ids) as subquery:
                return self._stored_pairs(sql.replace("{ids}", subquery), bounds)
        stored: set[tuple[str, str]] = set()
        # On a server, UUID-text ids travel as ONE string literal split by the engine: a bound array costs the
        # client µs per id to escape and a literal array costs the parser as much. Chunks keep each query under
        # ClickHouse's max_query_size (256 KiB); ids with other characters are bound (and escaped) as before.
        plain = sorted(i for i in ids if _PLAIN_ID.fullmatch(i))
        chunks: list[tuple[str, dict[str, Any]]] = []
        step = max(1, _LITERAL_BUDGET // (max((len(i) for i in plain), default=1) + 1))
        for lo in range(0, len(plain), step):
            literal = ",".join(plain[lo : lo + step])
            chunks.append((sql.replace("{ids}", f"splitByChar(',', '{literal}')"), bounds))
        if len(plain) < len(ids):
            others = sorted(i for i in ids if not _PLAIN_ID.fullmatch(i))
            chunks.append((sql.replace("{ids}", "{ids:Array(String)}"), {**bounds, "ids": others}))
        for query, parameters in chunks:
            stored |= self._stored_pairs(query, parameters)
        return stored

    def _stored_pairs(self, query: str, parameters: Mapping[str, Any]) -> set[tuple[str, str]]:
        # A raw query: the usual answer is no row, and clickhouse-connect's query() scans the SQL (up to a quarter
        # MiB of ids) with several regular expressions and builds a result object before the engine answers.
        with classified_errors(f"reading the stored ids of {self._table}"):
            body = self._client.raw_query(query, parameters=dict(parameters), fmt="JSONCompactEachRow")
        stored: set[tuple[str, str]] = set()
        for line in bytes(body).splitlines():
            if line:
                source, event_id = json.loads(line)
                stored.add((str(source), str(event_id)))
        return stored

    def _insert_or_bisect(
        self,
        rows: list[_Row],
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        letters: list[DeadLetter],
        report: WriteReport,
        wait: Callable[[float], None],
        should_abort: Callable[[], bool],
        *,
        whole_batch: bool = False,
    ) -> None:
        token = self._token(rows, ranges, report)
        try:
            self._retrying(lambda: self._insert(rows, token, report), report, wait, should_abort, rejectable=True)
            report.inserted += len(rows)
            return
        except _Rejected as rejected:
            if len(rows) == 1:
                letters.append(DeadLetter(rows[0].message, f"clickhouse: {rejected.reason}"))
                return
            reason = rejected.reason
        # Bisect: each half is a smaller, deterministic insert with its own token; the good half goes in, the bad
        # half is split again until the offending rows stand alone (2*log2(n) extra inserts per bad row).
        middle = len(rows) // 2
        before = len(letters)
        self._insert_or_bisect(rows[:middle], ranges, letters, report, wait, should_abort)
        self._insert_or_bisect(rows[middle:], ranges, letters, report, wait, should_abort)
        if whole_batch and len(letters) - before == len(rows):
            raise SinkHaltError(
                f"ClickHouse rejected every one of {len(rows)} rows of a batch for {self._table} ({reason}); "
                "this looks like a schema or deploy problem, not bad data: the sink stops without committing"
            )

    def _insert_blocks_or_bisect(
        self,
        rows: list[_Row],
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        letters: list[DeadLetter],
        report: WriteReport,
        wait: Callable[[float], None],
        should_abort: Callable[[], bool],
        *,
        whole_batch: bool = False,
    ) -> int:
        """Insert ``rows`` (one writer schema) as one Avro container; when ClickHouse refuses it, bisect as
        :meth:`_insert_or_bisect` does, and hand a refused single message to the row path (full decode, then a row
        insert), which inserts it or dead-letters it with the decoder's or ClickHouse's reason. Returns how many
        rows ClickHouse refused; every row refused (none inserted) halts the sink, as on the row path."""
        token = self._token(rows, ranges, report)
        frame = rows[0].frame
        assert frame is not None
        # Built once: every retry sends byte-for-byte the same insert under the same token.
        block = build_container(frame.head, frame.sync, [r.message.value or b"" for r in rows], [r.start for r in rows])
        settings = {**self._spec.block_settings, "insert_deduplication_token": token}
        try:
            self._retrying(lambda: self._insert_block(frame, block, settings, report), report, wait, should_abort,
                           rejectable=True)
            report.inserted += len(rows)
            return 0
        except _Rejected as rejected:
            reason = rejected.reason
        if len(rows) == 1:
            return self._insert_row_path(rows[0].message, ranges, letters, report, wait, should_abort)
        middle = len(rows) // 2
        inserted_before = report.inserted
        refused = self._insert_blocks_or_bisect(rows[:middle], ranges, letters, report, wait, should_abort)
        refused += self._insert_blocks_or_bisect(rows[middle:], ranges, letters, report, wait, should_abort)
        if whole_batch and refused and report.inserted == inserted_before:
            raise SinkHaltError(
                f"ClickHouse rejected every one of {refused} rows of a batch for {self._table} ({reason}); "
                "this looks like a schema or deploy problem, not bad data: the sink stops without committing"
            )
        return refused

    def _insert_row_path(
        self,
        message: SinkMessage,
        ranges: Mapping[tuple[str, int], tuple[int, int]],
        letters: list[DeadLetter],
        report: WriteReport,
        wait: Callable[[float], None],
        should_abort: Callable[[], bool],
    ) -> int:
        """One message ClickHouse refused as Avro, through the row path. Returns 1 if ClickHouse refused the row
        too, 0 if it was inserted or did not decode (then it is a decode or mapping letter, not a refusal)."""
        decoded: list[_Row] = []
        self._decode_one(message, decoded, letters)
        if not decoded:
            return 0
        before = len(letters)
        self._insert_or_bisect(decoded, ranges, letters, report, wait, should_abort)
        return len(letters) - before

    def _token(self, rows: Sequence[_Row], ranges: Mapping[tuple[str, int], tuple[int, int]],
               report: WriteReport) -> str:
        """The deterministic deduplication token of an insert of ``rows`` (the first one is reported)."""
        token = compute_dedup_token(
            self._spec.table, ranges, [r.message[:3] for r in rows]  # (topic, partition, offset)
        )
        if report.first_token is None:
            report.first_token = token
        return token

    def _insert_block(self, frame: _Frame, block: bytes, settings: dict[str, Any], report: WriteReport) -> None:
        report.inserts += 1
        # ClickHouse parses the container: an "unexpected end" then means a body shorter than its schema says.
        types = self._column_read_types() if self._embedded else None
        if types is not None and not all(column in types for column in frame.columns):
            types = None  # a column the table lacks: the raw insert lets ClickHouse name it
        with classified_errors(f"inserting an Avro container into {self._table}", parsing_data=True):
            insert_avro_container(self._client, self._table, frame.columns, block, settings=settings, types=types)

    def _column_read_types(self) -> dict[str, str]:
        if self._read_types is None:
            with classified_errors(f"reading the column types of {self._table}"):
                self._read_types = column_read_types(self._client, self._database, self._spec.table)
        return self._read_types

    def _insert(self, rows: Sequence[_Row], token: str, report: WriteReport) -> None:
        report.inserts += 1
        data = [row.values for row in rows]
        with classified_errors(f"inserting rows into {self._table}"):
            self._client.insert(
                self._spec.table,
                data,
                column_names=list(self._spec.columns),
                database=self._database,
                settings={"insert_deduplication_token": token},
            )

    def _retrying(
        self,
        operation: Callable[[], Any],
        report: WriteReport,
        wait: Callable[[float], None],
        should_abort: Callable[[], bool],
        *,
        rejectable: bool = False,
    ) -> Any:
        """Run ``operation`` until it succeeds, retrying (backoff, same arguments) what the ClickHouse boundary
        classed transient (:class:`~finops.clickhouse.ClickHouseTransientError`) and an unacknowledged dead letter.
        Raises :class:`_Rejected` for refused rows when ``rejectable``, :class:`SinkHaltError` for everything else,
        :class:`BatchAbandonedError` when ``should_abort`` says so during a wait."""
        attempt = 0
        while True:
            try:
                return operation()
            except (BatchAbandonedError, SinkHaltError):
                raise
            except (ClickHouseTransientError, DeadLetterDeliveryError) as err:
                attempt += 1
                report.retries += 1
                delay = compute_backoff(self._retry, attempt, self._rng)
                log.warning("transient failure on %s (attempt %d), retrying the same batch in %.2fs: %s",
                            self._table, attempt, delay, _describe(err))
                if should_abort():
                    raise BatchAbandonedError(f"batch for {self._table} abandoned during retry") from err
                wait(delay)
                if should_abort():
                    raise BatchAbandonedError(f"batch for {self._table} abandoned during retry") from err
            except ClickHouseRejectedError as err:
                if rejectable:
                    raise _Rejected(_describe(err)) from err
                raise SinkHaltError(
                    f"writing {self._table} failed with an error retrying cannot fix: {_describe(err)}"
                ) from err
            except Exception as err:  # noqa: BLE001 - fatal ClickHouse errors and bugs halt; nothing is swallowed
                raise SinkHaltError(
                    f"writing {self._table} failed with an error retrying cannot fix: {_describe(err)}"
                ) from err


_UNSEEN: Any = object()  # a framing header the block path has not looked up yet


class _Rejected(Exception):
    """Internal: ClickHouse refused the rows of one insert (a value problem); carries the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
