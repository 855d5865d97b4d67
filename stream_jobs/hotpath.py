"""The usage hot path: a confluent-kafka batch consumer that decodes, validates, dedupes, prices and windows every
usage event, at close to plain-consumer speed (``finops bench-stream`` / ``make bench`` measure it).

Role: per batch, ``consume(N)`` -> decode -> validate (``check_usage_dict``) -> dedupe -> price -> count in its
1-minute window -> produce the priced event; then close idle windows and produce them. A plain loop, not Faust
streams (Faust's per-message cost, DESIGN §9): a :class:`~finops.kafka.loop.Step` of the one consume loop
(``finops/kafka/loop.py``: poll, rebalances, the flush barrier, commits), hosted as a service of the Faust app, in
its own consumer group. Latency: an event's priced output leaves within the consume call (``poll_timeout_s``) plus
the producer's ``linger.ms``; the barrier and commit run every ``commit_interval_s``.

Guarantee (DESIGN §5, detailed in :class:`HotPath`): input at least once, committed only per
:class:`~stream_jobs.offsets.WindowCommitTracker`; no exception skips an event (bad input goes to the DLQ); priced
events effectively once in the ledger; closed windows emitted under a deterministic id with the same sums on replay.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Protocol

from confluent_kafka import TopicPartition

from finops.kafka.clients import Role, build_consumer, build_producer
from finops.kafka.loop import (
    Assignment,
    ConsumeLoop,
    FlushContext,
    FlushPolicy,
    Step,
    TopicPartitionKey,
    classify_message_error,
)
from finops.kafka.offsets import CommitTracker
from finops.pricing.catalogue import CatalogueWatcher, build_pricer, catalogue_dir
from finops.pricing.engine import InvalidUsageError, Pricer, PriceResult, unpriced_fix
from finops.topics import TopicNames
from schemas.errors import ConfigError, FinopsError
from schemas.fastcodec import UnsupportedSchemaError, build_fast_codec, encode_long
from schemas.loader import load_schema
from schemas.models import check_usage_dict
from schemas.wire import (
    SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    build_registry_resolver,
    decode_body,
    encode_body,
    parse_record_schema,
    without_uuid,
)
from stream_jobs.dedupe import HOUR_US, Deduper
from stream_jobs.dlq import BadInputLimiter, BadInputLimitExceeded, DeadLetter, Stage
from stream_jobs.offsets import WindowCommitTracker
from stream_jobs.windows import MINUTE_US, ClosedWindow, WindowAggregator

if TYPE_CHECKING:
    from finops.settings import FinopsSettings

__all__ = [
    "JOB_NAME",
    "HotPath",
    "HotPathConfig",
    "HotPathError",
    "HotPathStats",
    "OutputDeliveryError",
    "PricedEncoder",
    "SpendEncoder",
    "build_hot_path",
    "compute_commit_metadata",
    "compute_counter_record",
    "compute_unpriced_alert",
    "load_horizon",
]

log = logging.getLogger(__name__)

#: The job name in counters and logs.
JOB_NAME: Final = "usage-hotpath"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_SCALE12: Final = Decimal(10**12)
_ALERT_NAMESPACE: Final = uuid.UUID("0b8f0f5e-6a8e-5d0c-9d57-4b1e0f6f2a11")
# Offset metadata written with each commit: the replay horizon (see windows.py, "Replay").
_META_PREFIX: Final = "finops-hotpath/1 horizon_us="


class HotPathError(FinopsError):
    """The hot path cannot go on (a Kafka client error, a broken protocol). Restart it: it replays from the last
    safe commit."""


class OutputDeliveryError(HotPathError):
    """The broker refused or timed out an output (priced event, window, DLQ record, alert). What was safe is
    committed; restart the job to produce the failed output again (check the broker and topic first)."""


# ---- Avro primitives (byte-identical to fastavro for these types; tests compare) -----------------------------------
_long: Final = encode_long


def _string(text: str) -> bytes:
    raw = text.encode()
    return _long(len(raw)) + raw


def _decimal12(value: Decimal) -> bytes:
    """Avro ``bytes`` with logicalType decimal, scale 12: two's-complement big-endian unscaled value.

    Precondition: ``value`` has at most 12 decimal places (every cost the Pricer returns is quantized to 12).
    """
    n = int(value * _SCALE12)
    raw = n.to_bytes((n.bit_length() + 8) >> 3, "big", signed=True)
    return _LENGTH[len(raw)] + raw


# Avro length prefixes of short byte strings (a 38-digit decimal needs at most 16 bytes).
_LENGTH: Final = tuple(bytes((2 * i,)) for i in range(64))


_NULL: Final = b"\x00"  # union branch 0 (null)
_BRANCH1: Final = b"\x02"  # union branch 1 (the value)
_FALSE: Final = b"\x00"
_TRUE: Final = b"\x01"
_DEC_ZERO: Final = b"\x02\x00"


def _raw_timestamp(schema: dict[str, Any], field_name: str) -> dict[str, Any]:
    # The same binary (a long), read without the timestamp-micros conversion.
    fields = [dict(f, type="long") if f["name"] == field_name else f for f in schema["fields"]]
    return {**schema, "fields": fields}


#: Decodes an Avro body: ``(data, pos) -> (record, end position)``; raises on malformed input.
RecordDecoder = Callable[[bytes, int], tuple[dict[str, Any], int]]


class PricedEncoder:
    """Builds ``PricedUsageEvent`` single-object bytes from the input's ``UsageEvent`` body and a PriceResult.

    The priced event is not re-encoded: Avro binary of a record is the concatenation of its fields, and
    ``PricedUsageEvent`` starts with exactly the fields of ``UsageEvent`` (checked here), so the priced value is
    ``header + the input's Avro body + the encoded price fields``. The price fields are encoded by hand (fastavro's
    per-decimal cost is high and a priced event has up to 12); the price-set part (unit prices, catalogue and
    price-book versions, source) is the same for every event of a model and period, so its bytes are cached. The
    input is read by the decoder generated from the schema (``schemas.fastcodec``, timestamps as µs) when it
    decodes cleanly; anything else goes to the codec, which names the problem for the DLQ.

    Promises: the bytes decode (with the codec) to the PricedUsageEvent of the input record plus the price fields;
    they are byte-identical to ``AvroCodec.encode`` of the same record (tested). Raises ConfigError at construction
    if the PricedUsageEvent schema no longer starts with the UsageEvent fields (the body reuse would be wrong).
    """

    def __init__(self, codec: AvroCodec) -> None:
        usage = load_schema("UsageEvent")
        priced = load_schema("PricedUsageEvent")
        usage_fields = usage["fields"]
        priced_fields = priced["fields"]
        head = priced_fields[: len(usage_fields)]
        if [(f["name"], json.dumps(f["type"], sort_keys=True)) for f in head] != [
            (f["name"], json.dumps(f["type"], sort_keys=True)) for f in usage_fields
        ]:
            raise ConfigError(
                "PricedUsageEvent no longer starts with the UsageEvent fields in the same order and types; the hot "
                "path's body reuse (stream_jobs/hotpath.py PricedEncoder) must be revised"
            )
        tail_names = [f["name"] for f in priced_fields[len(usage_fields) :]]
        expected_tail = [
            "cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd", "cost_cache_write_usd",
            "cost_other_usd", "price_input_mtok", "price_output_mtok", "price_cache_read_mtok",
            "price_cache_write_mtok", "price_cache_write_1h_mtok", "pricing_status", "unpriced_reason",
            "catalogue_version", "price_book_version", "price_source", "cost_delta_usd", "cost_mismatch", "late",
            "priced_at", "source_topic", "source_partition", "source_offset", "computed_cost_usd", "cost_basis",
        ]  # fmt: skip
        if tail_names != expected_tail:
            raise ConfigError(
                f"PricedUsageEvent price fields changed ({tail_names}); update PricedEncoder in stream_jobs/hotpath.py"
            )
        self.usage_fingerprint = codec.fingerprint("UsageEvent")
        self.usage_header = SINGLE_OBJECT_MAGIC + self.usage_fingerprint
        self.header = SINGLE_OBJECT_MAGIC + codec.fingerprint("PricedUsageEvent")
        self.usage_writer = parse_record_schema(usage)
        # The fast path's reader: uuid as str, and occurred_at as the raw long (µs): fastavro's datetime
        # conversion costs more than building the datetime here, and the windows want the µs anyway.
        self.usage_reader = parse_record_schema(_raw_timestamp(without_uuid(usage), "occurred_at"))
        #: ``(data, pos) -> (record, end)`` for the current UsageEvent body, occurred_at as raw µs: the generated
        #: codec of schemas/fastcodec.py (cheaper than fastavro's reader, see ``make bench``), or fastavro's reader
        #: for a schema the generator does not support.
        self.decode_usage: RecordDecoder = self._fastavro_usage
        try:
            self.decode_usage = build_fast_codec(usage, timestamps="micros").decode
        except UnsupportedSchemaError:
            log.warning("UsageEvent schema not supported by the generated codec; the hot path decodes with fastavro")
        # The price-set part (price_input_mtok .. price_source) written by fastavro itself, once per distinct set.
        segment = [f for f in priced_fields if f["name"] in expected_tail[6:16]]
        self._segment_schema = parse_record_schema(
            {"type": "record", "name": "PriceSetSegment", "namespace": "finops.hotpath", "fields": segment}
        )
        self._segments: dict[tuple[Any, ...], bytes] = {}
        self._bases: dict[str, bytes] = {}

    def _fastavro_usage(self, data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        return decode_body(data, pos, self.usage_reader)

    def usage_body(self, record: Mapping[str, Any]) -> bytes:
        """The Avro body of ``record`` under the current UsageEvent schema (for input that arrived Confluent-framed
        or under an older schema, so its own body is not the current layout)."""
        return encode_body(self.usage_writer, record)

    @staticmethod
    def batch_suffix(priced_at_us: int, source_topic: str, source_partition: int) -> bytes:
        """``priced_at`` + ``source_topic`` + ``source_partition``: the same for a whole batch of one partition."""
        return _long(priced_at_us) + _string(source_topic) + _long(source_partition)

    def segment(self, price: PriceResult) -> bytes:
        key = price[6:16]
        cached = self._segments.get(key)
        if cached is None:
            if len(self._segments) > 20_000:
                self._segments.clear()  # bound: a flood of distinct price sets (it is only a cache)
            fields = dict(zip(PriceResult._fields[6:16], key, strict=True))
            cached = self._segments[key] = encode_body(self._segment_schema, fields)
        return cached

    def encode(self, body: bytes | memoryview, price: PriceResult, late: bool, suffix: bytes, offset: int) -> bytes:
        """The priced event: header + usage ``body`` + price fields + ``late`` + ``suffix`` + ``source_offset`` +
        ``computed_cost_usd`` + ``cost_basis``."""
        segment = self._segments.get(price[6:16]) or self.segment(price)
        out = [self.header, body]
        append = out.append
        scale = _SCALE12
        length = _LENGTH
        # cost_usd and its five parts (decimal, scale 12; inlined _decimal12: 6 calls per event add up).
        for cost in price[:6]:
            if cost:
                n = int(cost * scale)
                raw = n.to_bytes((n.bit_length() + 8) >> 3, "big", signed=True)
                append(length[len(raw)])
                append(raw)
            else:
                append(_DEC_ZERO)
        append(segment)
        delta = price[16]
        append(_NULL if delta is None else _BRANCH1 + _decimal12(delta))
        append(_TRUE if price[17] else _FALSE)
        append(_TRUE if late else _FALSE)
        append(suffix)
        append(_long(offset))
        computed = price[18]
        if computed is None:
            append(_NULL)
        elif computed is price[0]:
            # The same Decimal as cost_usd (the usual case), already encoded right after the body.
            append(_BRANCH1)
            if computed:
                append(out[2])
                append(out[3])
            else:
                append(_DEC_ZERO)
        else:
            append(_BRANCH1 + _decimal12(computed))
        basis = self._bases.get(price[19])
        if basis is None:
            basis = self._bases[price[19]] = _string(price[19])
        append(basis)
        return b"".join(out)


class SpendEncoder:
    """``SpendAggregate`` single-object bytes from a :class:`ClosedWindow` (byte-identical to the codec, tested)."""

    def __init__(self, codec: AvroCodec) -> None:
        names = [f["name"] for f in load_schema("SpendAggregate")["fields"]]
        expected = [
            "aggregate_id", "window_start", "window_end", "dimension", "key", "source_partition", "cost_usd",
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "calls",
            "errors", "retries", "unpriced_calls", "emitted_at",
        ]  # fmt: skip
        if names != expected:
            raise ConfigError(f"SpendAggregate fields changed ({names}); update SpendEncoder in stream_jobs/hotpath.py")
        self.header = SINGLE_OBJECT_MAGIC + codec.fingerprint("SpendAggregate")

    def encode(self, w: ClosedWindow, emitted_at_us: int) -> bytes:
        return b"".join(
            (
                self.header,
                _string(w.aggregate_id),
                _long(w.window_start_us),
                _long(w.window_end_us),
                _string(w.dimension),
                _string(w.key),
                _long(w.partition),
                _decimal12(w.cost_usd),
                _long(w.input_tokens),
                _long(w.output_tokens),
                _long(w.cache_read_tokens),
                _long(w.cache_write_tokens),
                _long(w.reasoning_tokens),
                _long(w.calls),
                _long(w.errors),
                _long(w.retries),
                _long(w.unpriced_calls),
                _long(emitted_at_us),
            )
        )


# ---- configuration -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HotPathConfig:
    """What the hot path needs to know; built from settings by :func:`build_hot_path` (tests build it directly)."""

    usage_topic: str
    priced_topic: str
    dlq_topic: str
    spend_topic: str
    alerts_topic: str
    group_id: str = "finops-usage-hotpath"
    #: Stream counters (JSON, one per window and partition, columns of ClickHouse ``stream_counters``) go here when
    #: set. No topic is declared for them yet; ``stats()`` carries the totals either way.
    counters_topic: str | None = None
    #: Messages per consume call.
    batch_size: int = 1000
    #: The longest a consume call waits for ``batch_size`` messages: with the producer's ``linger.ms`` it bounds an
    #: event's wait for its priced event to leave. Short, because a batch is processed as soon as the call returns:
    #: under load the calls return full anyway, and at a steady rate a long wait only adds latency.
    poll_timeout_s: float = 0.05
    #: The flush barrier (wait for every acknowledgement, then commit) runs when the oldest event since the last
    #: one was read this long ago, or after ``commit_max_events`` events (finops.kafka.loop.FlushPolicy). Outputs
    #: do not wait for it: it bounds how long an offset stays uncommitted, and each one blocks for a broker round
    #: trip, so it is rarer than the outputs' own flush.
    commit_interval_s: float = 1.0
    commit_max_events: int = 100_000
    window_us: int = MINUTE_US
    grace_us: int = 10_000_000
    idle_close_us: int = 30_000_000
    dedupe_window_us: int = 24 * HOUR_US
    #: Per assigned partition (each has its own deduper); build_hot_path splits the worker-wide setting.
    dedupe_max_entries: int = 2_000_000
    dlq_max_ratio: float = 0.5
    dlq_ratio_window: int = 1000
    #: How long on_revoke / close wait for outstanding deliveries before committing what is safe.
    flush_timeout_s: float = 30.0
    #: How often a one-line progress summary is logged (INFO).
    log_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class HotPathStats:
    """A snapshot of the hot path's counters (``HotPath.stats()``); totals since the process started."""

    consumed: int
    priced: int
    unpriced: int
    duplicates: int
    late: int
    dead_lettered: int
    cost_mismatches: int
    cost_usd: Decimal
    windows_emitted: int
    window_messages: int
    counters_emitted: int
    alerts_emitted: int
    commits: int
    batches: int
    assigned: tuple[int, ...]
    committed: dict[int, int | None]
    outstanding: int
    open_windows: int
    dedupe_entries: int
    dedupe_evicted: int
    unpriced_models: dict[str, int]
    dlq_by_stage: dict[str, int]
    #: The latest stream-counter record (``stream_counters`` columns) per assigned partition.
    last_counters: dict[int, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (Decimal as a string)."""
        out = asdict(self)
        out["cost_usd"] = str(self.cost_usd)
        out["assigned"] = list(self.assigned)
        out["committed"] = {str(k): v for k, v in self.committed.items()}
        out["last_counters"] = {str(k): v for k, v in self.last_counters.items()}
        return out


# ---- Kafka client protocols (confluent-kafka in production; fakes in unit tests) ------------------------------------
class _Message(Protocol):
    def error(self) -> Any: ...
    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def topic(self) -> str: ...
    def timestamp(self) -> tuple[int, int]: ...


class _Consumer(Protocol):
    """What the hot path and its loop use of ``confluent_kafka.Consumer`` (unit tests pass a fake)."""

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None: ...
    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...
    def commit(self, *args: Any, **kwargs: Any) -> Any: ...
    def get_watermark_offsets(self, partition: Any, *args: Any, **kwargs: Any) -> Any: ...
    def close(self) -> None: ...


class _Producer(Protocol):
    """What the hot path uses of ``confluent_kafka.Producer`` (unit tests pass a fake)."""

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


# ---- acknowledgement groups ---------------------------------------------------------------------------------------
class _AckGroup:
    """All outputs of one input partition in one batch (priced events, DLQ records, alerts), registered in the
    tracker once at ``offset`` (the lowest input offset with an output). It is every message's ``on_delivery``, which
    librdkafka calls only on failure; success is confirmed by the flush barrier (:meth:`ack`)."""

    __slots__ = ("tracker", "offset", "failed", "on_failure")

    def __init__(self, tracker: CommitTracker, offset: int, on_failure: Callable[[Any], None]) -> None:
        self.tracker = tracker
        self.offset = offset
        self.failed = False
        self.on_failure = on_failure
        tracker.on_output_pending(offset)

    def __call__(self, err: Any, msg: Any) -> None:
        # A delivery report: with delivery.report.only.error, only failures arrive here.
        if err is not None and not self.failed:
            self.failed = True
            self.tracker.on_output_failed(self.offset)
            self.on_failure(err)

    def ack(self) -> None:
        """Every message of the group is acknowledged (called after a flush barrier that left nothing queued)."""
        if not self.failed:
            self.tracker.on_output_acked(self.offset)


class _WindowAck:
    """All messages of one closed time window of one partition (every dimension key, plus its counter record)."""

    __slots__ = ("tracker", "start_us", "failed", "on_failure")

    def __init__(
        self,
        tracker: WindowCommitTracker,
        start_us: int,
        end_us: int,
        min_offset: int,
        on_failure: Callable[[Any], None],
    ) -> None:
        self.tracker = tracker
        self.start_us = start_us
        self.failed = False
        self.on_failure = on_failure
        tracker.on_window_pending(start_us, end_us, min_offset)

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and not self.failed:
            self.failed = True
            self.tracker.on_window_failed(self.start_us)
            self.on_failure(err)

    def ack(self) -> None:
        if not self.failed:
            self.tracker.on_window_acked(self.start_us)


class _PartitionState:
    """Everything the hot path holds for one assigned input partition; dropped on revoke."""

    __slots__ = (
        "partition", "tracker", "windows", "deduper", "dlq_by_window", "dups_by_window", "restored_horizon",
        "next_offset",
    )  # fmt: skip

    def __init__(
        self, partition: int, tracker: WindowCommitTracker, horizon_us: int | None, config: HotPathConfig
    ) -> None:
        self.partition = partition
        self.tracker = tracker
        committed = tracker.committed
        self.windows = WindowAggregator(
            partition,
            size_us=config.window_us,
            grace_us=config.grace_us,
            idle_timeout_us=config.idle_close_us,
            closed_before_us=horizon_us,
        )
        self.deduper = Deduper(window_us=config.dedupe_window_us, max_entries=config.dedupe_max_entries)
        # Reconciliation extras per window start (rare events only: the per-event counts come from the windows).
        self.dlq_by_window: dict[int, int] = {}
        self.dups_by_window: dict[int, int] = {}
        self.restored_horizon = horizon_us
        # The next offset to read (updated per batch, not per event): with the broker's high watermark it tells
        # whether the partition is caught up, the condition for closing its windows by the wall clock.
        self.next_offset = committed


# ---- pure helpers ---------------------------------------------------------------------------------------------------
def compute_commit_metadata(horizon_us: int) -> str:
    """The offset metadata stored with a commit: the replay horizon of the partition's windows."""
    return f"{_META_PREFIX}{horizon_us}"


def load_horizon(metadata: str | None) -> int | None:
    """The replay horizon from commit metadata written by :func:`compute_commit_metadata`, or ``None``."""
    if not metadata or not metadata.startswith(_META_PREFIX):
        return None
    try:
        return int(metadata[len(_META_PREFIX) :])
    except ValueError:
        return None


def compute_unpriced_alert(
    provider: str,
    model: str,
    hour_start_us: int,
    reason: str,
    *,
    team: str | None,
    project: str | None,
    agent_id: str | None,
    first_event_id: str,
    occurred_at_us: int,
) -> dict[str, Any]:
    """The Alert (Avro dict) for an unknown model seen by one team in one event-time hour: dedup key
    ``unpriced_model:<provider>:<model>:<team>:<hour>`` and an ``alert_id`` derived from it, so a replay repeats it
    identically and alerting's per-key dedupe drops the repeat. Per team because the alert is attributed to the
    usage it is about (team, project and agent of the first such event): each team whose agents call the model
    sees it and is routed it, not only the first team seen in the hour."""
    hour = datetime.fromtimestamp(hour_start_us / 1e6, UTC).strftime("%Y-%m-%dT%H")
    dedup_key = f"unpriced_model:{provider}:{model}:{team or ''}:{hour}"
    return {
        "alert_id": str(uuid.uuid5(_ALERT_NAMESPACE, dedup_key)),
        "dedup_key": dedup_key,
        "kind": "unpriced_model",
        "severity": "warning",
        "state": "trigger",
        "occurred_at": _EPOCH + timedelta(microseconds=occurred_at_us),
        "team": team,
        "project": project,
        "agent_id": agent_id,
        "policy_id": None,
        "model": f"{provider}/{model}",
        "title": f"Unpriced model {provider}/{model}",
        "summary": (
            f"Usage of {provider}/{model} cannot be priced: {reason}. Its events are stored as unpriced (cost 0, "
            "flagged, counted in unpriced calls and tokens), not as free. To fix: "
            f"{unpriced_fix(provider, model)}; or fix the model name in the emitting agent. "
            "`finops price --json` explains a single event."
        ),
        "amount_usd": None,
        "limit_usd": None,
        "details": {"provider": provider, "model": model, "hour": hour, "first_event_id": first_event_id},
        "actions": [],
    }


def compute_counter_record(
    *,
    topic: str,
    partition: int,
    window_start_us: int,
    window_end_us: int,
    team_rows: Sequence[ClosedWindow],
    dlq_events: int,
    duplicate_events: int,
    emitted_at_us: int,
) -> dict[str, Any]:
    """One ``stream_counters`` row (ClickHouse, migration 0005) for a closed window of one input partition.

    The per-event counts and the cost come from the window's ``team`` partials (every counted event has exactly one
    team), so the record costs nothing per event. ``events`` = counted + duplicates + dead letters attributed to
    the window (duplicates by event time; dead letters by the Kafka timestamp, since they may have no event time).
    Late events (arriving after their window closed) are in no counter: they are in the ledger only, so the
    reconciliation job may see them as drift of that minute.
    """
    calls = sum(w.calls for w in team_rows)
    unpriced = sum(w.unpriced_calls for w in team_rows)
    cost = sum((w.cost_usd for w in team_rows), Decimal(0))
    first = min((w.min_offset for w in team_rows), default=0)
    last = max((w.max_offset for w in team_rows), default=0)
    return {
        "counter_id": f"{JOB_NAME}:{topic}:{partition}:{window_start_us}",
        "job": JOB_NAME,
        "source_topic": topic,
        "source_partition": partition,
        "window_start_us": window_start_us,
        "window_end_us": window_end_us,
        "first_offset": first,
        "last_offset": last,
        "events": calls + dlq_events + duplicate_events,
        "priced_events": calls,
        "unpriced_events": unpriced,
        "dlq_events": dlq_events,
        "duplicate_events": duplicate_events,
        "cost_usd": str(cost),
        "emitted_at_us": emitted_at_us,
    }


# ---- the hot path ---------------------------------------------------------------------------------------------------
class HotPath(Step):
    """The usage hot path over one consumer and one producer, a step of a :class:`~finops.kafka.loop.ConsumeLoop`
    (see the module docstring for the guarantees).

    Threading: every method except :meth:`stats` and :meth:`request_stop` must be called from one thread (the
    thread that runs :meth:`run`); delivery callbacks run on that thread too, inside ``producer.poll``/``flush``.

    One batch: ``consume(N)`` -> per message: decode (both wire formats) -> validate -> dedupe -> price -> count in
    its 1-minute window -> produce the priced event (key ``agent_id``); decode / validate / price failures go to the
    DLQ with provenance (``stream_jobs/dlq.py``). After the messages: close idle windows, produce closed windows
    (key ``aggregate_id``), stream counters and unpriced-model alerts, feed the bad-input limiter,
    ``producer.poll(0)``. The loop runs the flush barrier and commits once the oldest event since the last one was
    read ``commit_interval_s`` ago (or after ``commit_max_events``); on a revoke it does so first, then the
    partitions' state is dropped; a loss drops it without a commit.

    Guarantees (DESIGN §5):

    - Input: at least once. An offset is committed only per :class:`~stream_jobs.offsets.WindowCommitTracker`: below
      every unacknowledged output, every open window and every closed window that is not final. After a crash,
      rebalance or kill -9 the next owner replays from the committed offset and recomputes the same outputs.
    - No exception skips an event. Bad input (``FinopsError`` from decode / validate / price) becomes a DLQ record
      whose offset is committed only after the DLQ record is acknowledged. Any other exception is a bug: it
      propagates, the job stops, nothing past it is committed. A delivery failure marks the tracker failed: the job
      commits what is safe, stops, and the restart produces the failed output again.
    - Priced events: effectively once in the ledger. A replay re-sends the same ``event_id`` (``priced_at`` and
      ``late`` may differ) and the ledger deduplicates by ``(source, event_id)``.
    - Closed windows: emitted once per aggregator under a deterministic id (``window_start:dimension:key:partition``).
      The commit stores the replay horizon as offset metadata; a restarted aggregator treats final windows as closed
      and rebuilds every other window whole, so a re-emission has the same id and the same sums.
    - The in-stream deduper (``stream_jobs/dedupe.py``) keeps a ``(source, event_id)`` re-sent within the dedupe
      window out of the windows only: a duplicate is still priced and forwarded, so even a hash collision can never
      lose a ledger row. Its state is not persisted: after a restart a duplicate whose original sits before the
      committed offset belongs to a window that was final (it is late, not counted), and an original at or after it
      is replayed before its duplicate, so windows never count a duplicate twice (given the same ``occurred_at``).
    """

    def __init__(
        self,
        config: HotPathConfig,
        pricer: Pricer,
        consumer: _Consumer,
        producer: _Producer,
        *,
        codec: AvroCodec | None = None,
        clock: Callable[[], float] = time.time,
        catalogue_watcher: Any = None,
    ) -> None:
        """Wire the hot path; nothing is subscribed or consumed until :meth:`run` (or :meth:`start`).

        ``catalogue_watcher`` (a :class:`finops.pricing.catalogue.CatalogueWatcher`) is polled between batches, the safe
        point where a new price catalogue takes over: every event of a batch is priced by one Pricer."""
        self.config = config
        self._pricer = pricer
        self._catalogue_watcher = catalogue_watcher
        self._consumer = consumer
        self._producer = producer
        self._codec = codec or AvroCodec()
        self._clock = clock
        self._loop = ConsumeLoop(
            consumer,
            [config.usage_topic],
            self,
            policy=FlushPolicy(config.commit_max_events, config.commit_interval_s),
            consume_batch=config.batch_size,
            poll_timeout_s=config.poll_timeout_s,
            clock=clock,
            name="hot path",
        )
        self._priced_encoder = PricedEncoder(self._codec)
        self._spend_encoder = SpendEncoder(self._codec)
        self._limiter = BadInputLimiter(config.dlq_max_ratio, config.dlq_ratio_window)
        self._states: dict[int, _PartitionState] = {}
        # Ack groups produced since the last flush barrier (see HotPath._flush), and when the first of them was
        # produced (closed windows produced without new input wait for the barrier no longer than input does).
        self._awaiting: list[_AckGroup | _WindowAck] = []
        self._awaiting_since: float | None = None
        # The latest stream-counter record per partition (also in stats(); produced when counters_topic is set).
        self._last_counters: dict[int, dict[str, Any]] = {}
        self._delivery_error: Any = None
        self._last_log = clock()
        self._closed = False
        # (provider, model, hour_start_us) already alerted by this process; hours older than 2 h are forgotten.
        self._alerted: set[tuple[str, str, str, int]] = set()
        # Counters (ints written by the consumer thread only; stats() reads them from any thread).
        self._consumed = 0
        self._priced = 0
        self._unpriced = 0
        self._duplicates = 0
        self._late = 0
        self._dead = 0
        self._mismatches = 0
        self._cost = Decimal(0)
        self._windows_emitted = 0
        self._window_messages = 0
        self._counters_emitted = 0
        self._alerts = 0
        self._batches = 0
        self._unpriced_models: dict[str, int] = {}
        self._dlq_by_stage: dict[str, int] = {"decode": 0, "validate": 0, "price": 0}

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to the usage topic (partitions come through the rebalance callbacks). Idempotent."""
        self._loop.start()

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish its current batch, commit what is safe and return (any thread)."""
        self._loop.request_stop()

    @property
    def stopping(self) -> bool:
        return self._loop.stopping

    def run(self, max_batches: int | None = None, until: Callable[[], bool] | None = None) -> None:
        """Consume and process batches until :meth:`request_stop`, ``max_batches`` or ``until()``; then commit what
        is safe and close the clients.

        Blocks. Raises BadInputLimitExceeded (too much bad input), OutputDeliveryError (an output failed) or
        HotPathError (client error); in every case nothing unsafe was committed and the clients are closed.
        """
        try:
            self._loop.run(max_batches=max_batches, until=until)
        except BaseException:
            self._abort()
            raise
        self.close()

    def poll_once(self) -> int:
        """Consume one batch, process it, and run the flush barrier and commit if due; return the number of
        messages."""
        return self._loop.poll_once()

    def _log_progress(self) -> None:
        s = self.stats()
        log.info(
            "hot path: %d consumed, %d priced, %d unpriced, %d duplicates, %d late, %d dead-lettered, $%s; "
            "partitions %s committed %s; %d open windows, %d window messages; %d dedupe entries (%d evicted)",
            s.consumed, s.priced, s.unpriced, s.duplicates, s.late, s.dead_lettered, s.cost_usd, list(s.assigned),
            s.committed, s.open_windows, s.window_messages, s.dedupe_entries, s.dedupe_evicted,
        )  # fmt: skip

    def close(self) -> None:
        """Flush outputs, commit what is safe, close the consumer (a revoke: state is dropped). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.flush()
        finally:
            self._loop.close()
        self._raise_if_failed()

    def _abort(self) -> None:
        # On an error: commit only what the tracker allows after a bounded flush (never past a failure), close.
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.flush()
        except Exception:  # noqa: BLE001 - already failing; the original error is what matters
            log.exception("hot path: commit during abort failed; the restart replays from the previous commit")
        finally:
            try:
                self._loop.terminate()  # nothing more to commit
            except Exception:  # noqa: BLE001
                log.exception("hot path: consumer close failed during abort")

    # ---- the step (driven by the loop) -------------------------------------------------------------------------
    def new_tracker(self, topic: str, partition: int, committed: int | None) -> CommitTracker:
        return WindowCommitTracker(partition, committed)

    def assign(self, assignments: Sequence[Assignment]) -> None:
        """Fresh state per partition (tracker, window aggregator, deduper) from its committed offset and the replay
        horizon stored with it. Raises HotPathError when the committed offsets could not be read."""
        for a in assignments:
            if not a.known:
                raise HotPathError(f"the committed offsets of {a.topic} could not be read; restart the job")
            horizon = load_horizon(a.metadata)
            if a.committed is not None and horizon is None:
                log.warning(
                    "partition %s: committed offset %s has no replay horizon (committed by another tool?); windows "
                    "that straddle it will be re-emitted as partial sums", a.partition, a.committed
                )
            assert isinstance(a.tracker, WindowCommitTracker)
            self._states[a.partition] = _PartitionState(a.partition, a.tracker, horizon, self.config)

    def revoke(self, partitions: Sequence[TopicPartitionKey], *, lost: bool) -> None:
        """Drop the partitions' state (on a revoke the loop flushed and committed first; on a loss it did not)."""
        for _topic, partition in partitions:
            self._states.pop(partition, None)
            self._limiter.forget(partition)

    def submit(self, messages: Sequence[Any]) -> None:
        self.process(messages)

    def poll(self) -> bool:
        """Between batches: a new price catalogue takes over, the progress line; asks for the barrier when outputs
        produced without new input (closed windows) have waited ``commit_interval_s``."""
        now = self._clock()
        if self._catalogue_watcher is not None:
            reloaded = self._catalogue_watcher.poll(now)
            if reloaded is not None:
                self._pricer = reloaded  # between batches: the next event is the first one the new catalogue prices
        if now - self._last_log >= self.config.log_interval_s:
            self._last_log = now
            self._log_progress()
        since = self._awaiting_since
        return since is not None and now - since >= self.config.commit_interval_s

    def join(self, flush: FlushContext) -> bool:
        """The acknowledgement barrier (:meth:`_flush`); what did not drain stays pending in the trackers."""
        self._flush()
        return True

    def commit_point(self, tp: TopicPartitionKey, tracker: CommitTracker) -> tuple[int, str | None] | None:
        st = self._states.get(tp[1])
        if st is None:
            return None
        position = st.tracker.committable(st.windows.min_open_offset())
        if position is None:
            return None
        return position, compute_commit_metadata(st.tracker.replay_horizon_us(st.windows.polled_before_us))

    # ---- one batch -----------------------------------------------------------------------------------------------
    def process(self, messages: Sequence[Any]) -> None:
        """Process one consumed batch: every message ends as a priced event or a DLQ record (or raises).

        Then close idle windows, emit closed windows, feed the bad-input limiter and serve delivery reports.
        Raises BadInputLimitExceeded, OutputDeliveryError, HotPathError.
        """
        now_s = self._clock()
        now_us = int(now_s * 1_000_000)
        now_dt = datetime.fromtimestamp(now_s, UTC)
        self._batches += 1
        if messages:
            self._process_messages(messages, now_us, now_dt)
        self._close_windows(now_us)
        if self._awaiting and self._awaiting_since is None:
            self._awaiting_since = now_s
        self._producer.poll(0)
        self._raise_if_failed()

    def _process_messages(self, messages: Sequence[Any], now_us: int, now_dt: datetime) -> None:
        # Hot loop: locals for everything used per event (attribute and global look-ups cost in CPython).
        states = self._states
        window_us = self.config.window_us
        priced_topic = self.config.priced_topic
        encoder = self._priced_encoder
        usage_header = encoder.usage_header
        decode_usage = encoder.decode_usage
        header_len = SINGLE_OBJECT_HEADER_LEN
        encode = encoder.encode
        check = check_usage_dict
        price = self._pricer.price
        produce = self._producer.produce
        epoch = _EPOCH
        one_us = _ONE_US

        groups: dict[int, _AckGroup] = {}
        counts: dict[int, int] = {}  # events per partition (good + bad), for the limiter
        bad: dict[int, list[str]] = {}
        st: _PartitionState | None = None
        st_partition = -1
        run_start = 0  # index where the current partition's run of messages began
        group: _AckGroup | None = None
        suffix = b""
        add: Any = None
        seen_or_add: Any = None
        on_consumed: Any = None
        index = offset = consumed = priced_n = unpriced_n = dups = late_n = mismatches = 0
        cost_total = Decimal(0)
        try:
            for index, msg in enumerate(messages):  # noqa: B007 - index is read after the loop
                if msg.error() is not None:
                    self._message_error(msg)
                    continue
                partition = msg.partition()
                if partition != st_partition:
                    if st is not None:
                        counts[st_partition] = counts.get(st_partition, 0) + index - run_start
                        st.next_offset = offset + 1
                    run_start = index
                    st = states.get(partition)
                    if st is None:
                        st_partition = -1
                        continue  # revoked inside this consume(): the new owner reads it from the committed offset
                    st_partition = partition
                    group = groups.get(partition)
                    suffix = encoder.batch_suffix(now_us, msg.topic(), partition)
                    add = st.windows.add
                    seen_or_add = st.deduper.seen_or_add
                    on_consumed = st.tracker.on_consumed
                elif st is None:
                    continue
                offset = msg.offset()
                on_consumed(offset)
                consumed += 1
                value = msg.value()

                # -- decode: the fast path reads the current schema's single-object bytes directly ---------------
                record: dict[str, Any] | None = None
                body: bytes | None = None
                occurred_us = 0
                if value is not None and value.startswith(usage_header):
                    try:
                        decoded, end = decode_usage(value, header_len)
                        if end == len(value):
                            occurred_us = decoded["occurred_at"]
                            decoded["occurred_at"] = epoch + timedelta(0, 0, occurred_us)  # positional: cheaper
                            record = decoded
                            body = value[header_len:]
                    except Exception:  # noqa: BLE001 - the codec below names the problem for the DLQ
                        record = None
                if record is None:
                    try:
                        if value is None:
                            raise _BadInput("decode", "DecodeError", "the message has no value (a tombstone)")
                        name, record = self._codec.decode(value)
                        if name != "UsageEvent":
                            raise _BadInput("decode", "UnknownSchemaError", f"a {name} record on the usage topic")
                    except _BadInput as err:
                        group = self._dead_letter(msg, st, err.stage, err.error, err.reason, groups, now_us, bad)
                        continue
                    except FinopsError as err:
                        group = self._dead_letter(msg, st, "decode", type(err).__name__, str(err), groups, now_us, bad)
                        continue
                    occurred_us = (record["occurred_at"] - epoch) // one_us

                # -- validate ----------------------------------------------------------------------------------------
                problems = check(record, now_dt)
                if problems:
                    reason = "; ".join(str(problem) for problem in problems)
                    group = self._dead_letter(msg, st, "validate", "ValidationFailed", reason, groups, now_us, bad)
                    continue

                # -- price (before dedupe, so a refused event never enters the deduper) ------------------------------
                try:
                    result = price(record)
                except InvalidUsageError as err:
                    group = self._dead_letter(msg, st, "price", type(err).__name__, str(err), groups, now_us, bad)
                    continue
                if group is None:
                    group = groups[partition] = _AckGroup(st.tracker, offset, self._on_delivery_failure)

                cost = result[0]
                is_priced = result[11] == "priced"
                if is_priced:
                    cost_total += cost
                    priced_n += 1
                else:
                    unpriced_n += 1
                    self._note_unpriced(record, result, occurred_us, group)
                if result[17]:
                    mismatches += 1

                # -- dedupe, then the window (a duplicate still goes to the ledger, which drops it by id) -----------
                agent_id = record["agent_id"]
                if seen_or_add(record["source"], record["event_id"], occurred_us):
                    dups += 1
                    late = False
                    start = occurred_us - occurred_us % window_us
                    st.dups_by_window[start] = st.dups_by_window.get(start, 0) + 1
                else:
                    late = not add(
                        occurred_us,
                        agent_id,
                        record["team"],
                        record["project"],
                        f"{record['provider']}/{record['model']}",
                        cost,
                        record["input_tokens"],
                        record["output_tokens"],
                        record["cache_read_tokens"],
                        record["cache_write_tokens"],
                        record["reasoning_tokens"],
                        record["status"] == "ok",
                        record["attempt"],
                        is_priced,
                        offset,
                    )
                    if late:
                        late_n += 1

                # -- produce the priced event (its delivery report comes only on failure) ----------------------------
                if body is None:
                    body = encoder.usage_body(record)
                out = encode(body, result, late, suffix, offset)
                try:
                    produce(priced_topic, out, agent_id, -1, group)
                except BufferError:
                    self._produce_when_room(priced_topic, out, agent_id, group)
            else:
                index = len(messages)
        except BaseException:
            # Never commit past the event that raised (the barrier in _abort acks what was produced before it):
            # the restart must meet it again.
            if st is not None:
                st.tracker.on_output_failed(offset)
            raise
        finally:
            if st is not None:
                counts[st_partition] = counts.get(st_partition, 0) + index - run_start
                st.next_offset = offset + 1
            self._consumed += consumed
            self._priced += priced_n
            self._unpriced += unpriced_n
            self._duplicates += dups
            self._late += late_n
            self._mismatches += mismatches
            self._cost += cost_total
            self._awaiting.extend(groups.values())
        for partition, seen in counts.items():
            reasons = bad.get(partition, [])
            try:
                self._limiter.observe(partition, seen - len(reasons), len(reasons), reasons[:5])
            except BadInputLimitExceeded:
                # Keep this batch uncommitted: after the fix, the restart judges these events again.
                group = groups.get(partition)
                if group is not None:
                    group.tracker.on_output_failed(group.offset)
                raise

    def _message_error(self, msg: Any) -> None:
        err = msg.error()
        kind = classify_message_error(err)
        if kind == "eof":
            return
        if kind == "retriable":
            log.warning("hot path: consumer reported %s (retriable); continuing", err)
            return
        raise HotPathError(f"the consumer of {self.config.usage_topic} failed: {err}; restart the job")

    def _dead_letter(
        self,
        msg: Any,
        st: _PartitionState,
        stage: Stage,
        error: str,
        reason: str,
        groups: dict[int, _AckGroup],
        now_us: int,
        bad: dict[int, list[str]],
    ) -> _AckGroup:
        """Send one refused event to the DLQ with provenance; return the partition's ack group."""
        partition = msg.partition()
        offset = msg.offset()
        letter = DeadLetter(
            topic=msg.topic(),
            partition=partition,
            offset=offset,
            stage=stage,
            error=error,
            reason=reason,
            key=msg.key(),
            value=msg.value(),
            failed_at_us=now_us,
        )
        group = groups.get(partition)
        if group is None:
            group = groups[partition] = _AckGroup(st.tracker, offset, self._on_delivery_failure)
        self._produce(self.config.dlq_topic, letter.value, letter.key, group, headers=letter.headers())
        self._dead += 1
        self._dlq_by_stage[stage] = self._dlq_by_stage.get(stage, 0) + 1
        bad.setdefault(partition, []).append(f"offset {offset} [{stage}] {reason[:300]}")
        # Attribute it to a window for the counters, by the Kafka timestamp (the event time may be unreadable).
        ts_type, ts_ms = msg.timestamp()
        if ts_type != 0 and ts_ms >= 0:
            start = ts_ms * 1000 - (ts_ms * 1000) % self.config.window_us
            st.dlq_by_window[start] = st.dlq_by_window.get(start, 0) + 1
        return group

    def _note_unpriced(
        self, record: Mapping[str, Any], result: PriceResult, occurred_us: int, group: _AckGroup
    ) -> None:
        """Count an unpriced event and, once per provider, model, team and event-time hour, produce an alert naming
        the model (in the event's ack group: its offset is not committed before the alert is acknowledged)."""
        provider = record["provider"]
        model = record["model"]
        name = f"{provider}/{model}"
        self._unpriced_models[name] = self._unpriced_models.get(name, 0) + 1
        hour = occurred_us - occurred_us % HOUR_US
        key = (provider, model, record["team"], hour)
        if key in self._alerted:
            return
        if len(self._alerted) > 10_000:
            newest = max(k[3] for k in self._alerted)
            self._alerted = {k for k in self._alerted if k[3] >= newest - 2 * HOUR_US}
        self._alerted.add(key)
        alert = compute_unpriced_alert(
            provider,
            model,
            hour,
            result.unpriced_reason or "unknown model",
            team=record["team"],
            project=record["project"],
            agent_id=record["agent_id"],
            first_event_id=record["event_id"],
            occurred_at_us=occurred_us,
        )
        self._produce(self.config.alerts_topic, self._codec.encode(alert, "Alert"), alert["dedup_key"], group)
        self._alerts += 1
        log.warning("unpriced model %s/%s: %s", provider, model, result.unpriced_reason)

    def _close_windows(self, now_us: int) -> None:
        cfg = self.config
        encode = self._spend_encoder.encode
        for st in list(self._states.values()):
            if self._caught_up(st):
                # Only a caught-up partition may close windows by the wall clock: while a backlog is read (after
                # a restart, or behind other partitions), a partition can go unserved for longer than the idle
                # timeout, and closing its windows then would make the rest of the backlog late.
                st.windows.close_idle(now_us)
            st.deduper.expire(now_us)
            closed = st.windows.poll_closed()
            if not closed:
                continue
            by_start: dict[int, list[ClosedWindow]] = {}
            for w in closed:
                by_start.setdefault(w.window_start_us, []).append(w)
            for start, rows in by_start.items():
                end = rows[0].window_end_us
                ack = _WindowAck(st.tracker, start, end, min(w.min_offset for w in rows), self._on_delivery_failure)
                produce = self._producer.produce
                for w in rows:
                    value = encode(w, now_us)
                    try:
                        produce(cfg.spend_topic, value, w.aggregate_id, -1, ack)
                    except BufferError:
                        self._produce_when_room(cfg.spend_topic, value, w.aggregate_id, ack)
                self._window_messages += len(rows)
                self._windows_emitted += 1
                counter = compute_counter_record(
                    topic=cfg.usage_topic,
                    partition=st.partition,
                    window_start_us=start,
                    window_end_us=end,
                    team_rows=[w for w in rows if w.dimension == "team"],
                    dlq_events=st.dlq_by_window.pop(start, 0),
                    duplicate_events=st.dups_by_window.pop(start, 0),
                    emitted_at_us=now_us,
                )
                self._last_counters[st.partition] = counter
                if cfg.counters_topic:
                    self._produce(cfg.counters_topic, json.dumps(counter).encode(), counter["counter_id"], ack)
                    self._counters_emitted += 1
                # Only now may a barrier acknowledge the window: if producing failed half-way, the window stays
                # pending and the commit stays below its events, so the restart re-emits it whole.
                self._awaiting.append(ack)
            # Extras of windows that closed without a counted event, and of long-closed windows, are dropped.
            horizon = st.windows.polled_before_us
            for extras in (st.dlq_by_window, st.dups_by_window):
                for start in [s for s in extras if s + cfg.window_us <= horizon]:
                    del extras[start]

    def _caught_up(self, st: _PartitionState) -> bool:
        """Whether this partition has been read up to the broker's high watermark (librdkafka's cached value from
        the last fetch: no broker call). Unknown counts as not caught up."""
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.config.usage_topic, st.partition), cached=True
            )
        except Exception:  # noqa: BLE001 - no cached value yet (KafkaException): judge it not caught up
            return False
        if not isinstance(high, int) or high < 0:
            return False
        return (st.next_offset or 0) >= high

    # ---- producing -------------------------------------------------------------------------------------------------
    def _produce(self, topic: str, value: bytes | None, key: Any, ack: Any, headers: Any = None) -> None:
        try:
            if headers is None:
                self._producer.produce(topic, value, key, -1, ack)
            else:
                self._producer.produce(topic, value, key, on_delivery=ack, headers=headers)
        except BufferError:
            self._produce_when_room(topic, value, key, ack, headers)

    def _produce_when_room(self, topic: str, value: bytes | None, key: Any, ack: Any, headers: Any = None) -> None:
        """librdkafka's queue is full: serve delivery reports until there is room (backpressure on the input)."""
        deadline = time.monotonic() + self.config.flush_timeout_s
        while True:
            self._producer.poll(0.05)
            self._raise_if_failed()
            try:
                if headers is None:
                    self._producer.produce(topic, value, key, -1, ack)
                else:
                    self._producer.produce(topic, value, key, on_delivery=ack, headers=headers)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise OutputDeliveryError(
                        f"the producer queue stayed full for {self.config.flush_timeout_s} s; is the broker reachable?"
                    ) from None

    def _on_delivery_failure(self, err: Any) -> None:
        if self._delivery_error is None:
            self._delivery_error = err
            log.error("hot path: an output was not delivered: %s", err)

    def _raise_if_failed(self) -> None:
        if self._delivery_error is not None:
            raise OutputDeliveryError(
                f"an output could not be delivered ({self._delivery_error}); committed only what came before it. "
                "Restart the job (after checking the broker and topics): it replays and produces it again"
            )

    def _flush(self) -> bool:
        """The barrier: wait until every output produced so far is acknowledged or failed (failures' callbacks run
        inside), then tell the tracker that every group produced before it is acknowledged. Returns whether the
        queue drained; if not, the groups stay pending and the commit stays below them.

        Why a barrier and no per-message callback: the producer runs with ``delivery.report.only.error``, so a
        successful event costs no Python callback; success is learnt here instead. ``producer.flush()`` returns only
        when every message produced before the call is acknowledged (``acks=all``) or failed, serving the failures'
        callbacks first, so after a flush that returns 0 with no failure every earlier output is acknowledged, in
        whatever order the partitions acked them. A failure reaches the tracker through its :class:`_AckGroup`
        (which knows its input partition and lowest offset): the commit stops below it and the job stops. Outputs
        of one input partition in one batch share one group, registered at the lowest input offset that produced an
        output: that holds the commit at most one batch lower than per-message tracking would, never higher. The
        cost is one broker round trip per commit interval (flush ignores ``linger.ms``)."""
        remaining = self._producer.flush(self.config.flush_timeout_s)
        if remaining:
            log.warning("hot path: %d outputs still unacknowledged after %.0f s", remaining,
                        self.config.flush_timeout_s)
            return False
        awaiting, self._awaiting = self._awaiting, []
        self._awaiting_since = None
        for ack in awaiting:
            ack.ack()
        return True

    def commit(self) -> None:
        """The flush barrier, then commit for every assigned partition the offset the tracker allows, with the
        replay horizon as metadata (one flush and one commit round trip; a failed commit is retried at the next)."""
        self._loop.flush()

    # ---- observability ---------------------------------------------------------------------------------------------
    def stats(self) -> HotPathStats:
        """A snapshot of the counters, callable from any thread (the Faust app, a metrics endpoint).

        The consumer thread may change a partition's state while this reads it ("dictionary changed size during
        iteration"); the snapshot is then simply taken again.
        """
        for attempt in range(10):
            try:
                return self._snapshot()
            except RuntimeError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _snapshot(self) -> HotPathStats:
        states = list(self._states.values())
        return HotPathStats(
            consumed=self._consumed,
            priced=self._priced,
            unpriced=self._unpriced,
            duplicates=self._duplicates,
            late=self._late,
            dead_lettered=self._dead,
            cost_mismatches=self._mismatches,
            cost_usd=self._cost,
            windows_emitted=self._windows_emitted,
            window_messages=self._window_messages,
            counters_emitted=self._counters_emitted,
            alerts_emitted=self._alerts,
            commits=self._loop.commits,
            batches=self._batches,
            assigned=tuple(sorted(st.partition for st in states)),
            committed={st.partition: st.tracker.committed for st in states},
            outstanding=sum(st.tracker.outstanding for st in states),
            open_windows=sum(st.windows.open_windows for st in states),
            dedupe_entries=sum(len(st.deduper) for st in states),
            dedupe_evicted=sum(st.deduper.evicted for st in states),
            unpriced_models=dict(self._unpriced_models),
            dlq_by_stage=dict(self._dlq_by_stage),
            last_counters={p: c for p, c in self._last_counters.items() if p in self._states},
        )


class _BadInput(Exception):
    """Internal: a refused event found outside a FinopsError (a tombstone, a foreign record on the topic)."""

    def __init__(self, stage: Stage, error: str, reason: str) -> None:
        super().__init__(reason)
        self.stage: Stage = stage
        self.error = error
        self.reason = reason


# ---- building from settings ------------------------------------------------------------------------------------------
def build_hot_path(
    settings: FinopsSettings,
    *,
    pricer: Pricer | None = None,
    codec: AvroCodec | None = None,
    clock: Callable[[], float] = time.time,
    overrides: Mapping[str, Any] | None = None,
) -> HotPath:
    """The hot path for ``settings`` with real confluent-kafka clients (not yet subscribed).

    ``overrides`` replaces fields of :class:`HotPathConfig` (tests: a short idle close, a small batch).
    Raises ConfigError for a bad price book or settings.
    """
    names = TopicNames(settings.kafka.topic_prefix)
    s = settings.stream
    values: dict[str, Any] = {
        "usage_topic": names.usage,
        "priced_topic": names.priced,
        "dlq_topic": names.dlq,
        "spend_topic": names.spend,
        "alerts_topic": names.alerts,
        "group_id": s.group_id,
        "window_us": s.window_seconds * 1_000_000,
        "grace_us": s.grace_seconds * 1_000_000,
        "idle_close_us": s.idle_close_seconds * 1_000_000,
        "dedupe_window_us": s.dedupe_window_hours * HOUR_US,
        # FINOPS_STREAM_DEDUPE_MAX_ENTRIES bounds the whole worker (~80 bytes per entry), also when it owns every
        # partition: each partition's deduper gets an equal share.
        "dedupe_max_entries": max(1000, s.dedupe_max_entries // settings.kafka.usage_partitions),
        "dlq_max_ratio": s.dlq_max_ratio,
        "dlq_ratio_window": s.dlq_ratio_window,
    }
    values.update(overrides or {})
    config = HotPathConfig(**values)
    if pricer is None:
        pricer = build_pricer(s, settings.core.data_dir)
    book = pricer.price_book
    data_dir = settings.core.data_dir
    watcher = CatalogueWatcher(
        catalogue_dir(s, data_dir), lambda: build_pricer(s, data_dir, price_book=book), pricer.catalogue_version,
        interval_s=s.catalogue_poll_seconds,
    )
    codec = codec or _codec_for(settings)
    consumer = build_consumer(settings.kafka, Role.HOTPATH, config.group_id, logger=log)
    producer = build_producer(settings.kafka, Role.HOTPATH, logger=log)
    return HotPath(config, pricer, consumer, producer, codec=codec, clock=clock, catalogue_watcher=watcher)


def _codec_for(settings: FinopsSettings) -> AvroCodec:
    url = settings.kafka.schema_registry_url
    if url is None:
        return AvroCodec()
    return AvroCodec(resolver=build_registry_resolver(url.get_secret_value()))
