"""UsageProducer: validate, encode and publish usage events to Kafka, with a disk spool for broker outages.

Role: the agent SDK's write path. :meth:`UsageProducer.emit` validates first (nothing invalid is sent), then
hands the event to librdkafka's idempotent producer (key ``agent_id``, so one agent's events stay ordered) or, while
the broker is away, to the on-disk spool (:mod:`producers.spool`) that a drainer thread sends later.

Guarantee (DESIGN §5, "Producers"; detailed on :class:`UsageProducer`): at least once across outages and restarts;
every event ends ``delivered``, ``spooled``, ``failed`` or ``refused`` and the caller hears which, once; duplicates
carry the same ``event_id``. Not guaranteed: what librdkafka holds in memory when the process is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.serialization import MessageField, SerializationContext

from finops.clock import utc_now
from finops.kafka.clients import LOG_INTERVAL_S, Role, build_producer
from finops.topics import TopicNames
from producers.spool import Spool, SpoolFull, SpoolRecord
from producers.track import Track
from schemas.errors import EncodeError, FieldProblem, FinopsError, ValidationFailed
from schemas.fastcodec import CheckedEncoder, build_checked_encoder, encode_long
from schemas.loader import load_schema
from schemas.models import USAGE_EVENT_RULES, UsageEvent, check_usage_dict, to_micros, validate_event
from schemas.usage_rules import UsageRule, UsageRules
from schemas.wire import (
    CONFLUENT_HEADER_LEN,
    SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    build_registry_serializer,
)

if TYPE_CHECKING:
    from finops.settings import FinopsSettings

__all__ = [
    "BatchValidationFailed",
    "Delivery",
    "DeliveryFailed",
    "DeliveryStatus",
    "ProducerStats",
    "UsageProducer",
    "sdk_client_id",
    "sdk_producer_settings",
    "complete_usage_record",
    "new_event_id",
    "new_event_ids",
]

log = logging.getLogger(__name__)
_random_bits = random.getrandbits

DeliveryStatus = Literal["delivered", "spooled", "failed", "refused"]
Clock = Callable[[], datetime]

#: Delivery errors after which the message is kept (spooled) and sent again later: the broker was unreachable or
#: slow, or we purged the message ourselves while switching to the spool. Anything else is permanent.
_RETRIABLE_CODES: frozenset[int] = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._DESTROY,
        KafkaError._QUEUE_FULL,
        KafkaError._FATAL,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)

_KNOWN_FIELDS: frozenset[str] = frozenset(UsageEvent.model_fields)
#: produce()'s partition argument for "the partitioner picks" (by key), as confluent-kafka's own default.
_ANY_PARTITION = -1
#: The SDK's own input rules, beside the usage rules (the encoder needs them; a decoded event always has them).
_INPUT_RULES = UsageRules(
    [UsageRule(name, "type", f"{{{name}}} is None or isinstance({{{name}}}, str)",
               functools.partial(lambda name, v: f"{name} must be a string or null (got {v[name]!r})", name))
     for name in ("task_id", "parent_task_id", "task_type", "environment", "prompt_hash")],
    defaults={},
)

# States of the send path (guarded by UsageProducer._lock).
_DIRECT = "direct"  # spool empty: emit hands events to librdkafka
_SWITCHING = "switching"  # the broker went away: librdkafka's messages are being moved to the spool; emit waits
_SPOOLING = "spooling"  # emit appends to the spool; the drainer sends it when the broker is back


class DeliveryFailed(FinopsError):
    """An awaited event could not be delivered nor kept (``failed`` or ``refused``); ``delivery`` says why."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(
            f"usage event {delivery.event_id} was {delivery.status}: {delivery.error}; check the broker and topic "
            "(a permanent error) or the spool bound (FINOPS_PRODUCER_SPOOL_MAX_BYTES)"
        )
        self.delivery = delivery


class BatchValidationFailed(ValidationFailed):
    """Some events of an :meth:`UsageProducer.emit_many` batch are invalid, so none of the batch was sent.

    ``invalid`` maps each bad event's index in the batch to its problems (field names as for one event);
    ``problems`` lists them all with the index as the first path segment (``3.input_tokens``), so ``fields()`` and
    the message name the event and the field. ``size`` is the length of the batch.
    """

    def __init__(self, invalid: Mapping[int, list[FieldProblem]], size: int, record: str = "UsageEvent") -> None:
        self.invalid: dict[int, list[FieldProblem]] = dict(invalid)
        self.size = size
        super().__init__(
            [FieldProblem(f"{index}.{p.field}", p.rule, p.message) for index, ps in self.invalid.items() for p in ps],
            record=record,
        )

    def _render(self) -> str:
        bad = len(self.invalid)
        lines = [f"{self.record} batch refused: {bad} of {self.size} event{'s' if self.size != 1 else ''} "
                 f"{'is' if bad == 1 else 'are'} invalid, so none was sent (fix or drop them and emit the batch "
                 "again):"]
        for index, problems in self.invalid.items():
            lines.extend(f"  - event {index}: {problem}" for problem in problems)
        return "\n".join(lines)

    def indexes(self) -> list[int]:
        """The indexes of the invalid events, in batch order."""
        return list(self.invalid)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one emitted event (:class:`UsageProducer` says what each status means)."""

    event_id: str
    status: DeliveryStatus
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ProducerStats:
    """Counters since construction. ``resent`` counts events sent again after an attempt whose outcome is unknown
    (a message taken back from librdkafka after it may have reached the broker, or an acknowledged record of a
    drained batch that is re-sent because others in it failed): an upper bound of the duplicates (same event_id)."""

    emitted: int = 0
    invalid: int = 0
    delivered: int = 0
    failed: int = 0
    spooled: int = 0
    refused: int = 0
    drained: int = 0
    resent: int = 0
    spool_pending: int = 0
    state: str = _DIRECT


@dataclass
class _Counters:
    emitted: int = 0
    invalid: int = 0
    delivered: int = 0
    failed: int = 0
    spooled: int = 0
    refused: int = 0
    drained: int = 0
    resent: int = 0


def new_event_id() -> str:
    """A random (version 4) UUID string, cheaper than ``str(uuid.uuid4())`` (it is built once per event)."""
    # getrandbits does not release the GIL (os.urandom does, handing the core to the poll thread mid-emit);
    # Mersenne Twister seeded from os.urandom and re-seeded after fork is plenty for uniqueness, and ids are not
    # secrets. The version (4) and variant (10) bits are set on the integer, before it is formatted.
    h = f"{(_random_bits(128) & _UUID_KEEP) | _UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_KEEP = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_SET = (0x4 << 76) | (0x2 << 62)
_UUID_KEEP_BYTES = _UUID_KEEP.to_bytes(16, "big")
_UUID_SET_BYTES = _UUID_SET.to_bytes(16, "big")


def new_event_ids(n: int) -> list[str]:
    """``n`` ids as :func:`new_event_id` makes them, from one random draw (a batch's ids)."""
    if n <= 0:
        return []
    keep = int.from_bytes(_UUID_KEEP_BYTES * n, "big")
    setbits = int.from_bytes(_UUID_SET_BYTES * n, "big")
    hexes = ((_random_bits(128 * n) & keep) | setbits).to_bytes(16 * n, "big").hex().encode()
    # The dashes go in by strided copies (one per hex digit position, each across the whole batch) instead of five
    # slices and a format per id: the per-id work is then one split.
    text = bytearray(_ID_SLOT_FILL * n)
    for digit, position in enumerate(_ID_DIGIT_POSITIONS):
        text[position::_ID_SLOT] = hexes[digit::32]
    return text.decode().split()


#: An id's text in a batch buffer: 36 characters (its dashes in place) and a separator.
_ID_SLOT = 37
_ID_SLOT_FILL = b"-" * 36 + b" "
_ID_DIGIT_POSITIONS = tuple(d + (d >= 8) + (d >= 12) + (d >= 16) + (d >= 20) for d in range(32))


def _complete_usage(record: dict[str, Any], now: datetime, source: str) -> list[FieldProblem]:
    """Fill defaults in place and check what check_usage_dict leaves to the encoder (field names, optional
    types, money). Returns the problems found."""
    problems: list[FieldProblem] = []
    if not _KNOWN_FIELDS.issuperset(record):
        for name in sorted(record.keys() - _KNOWN_FIELDS):
            problems.append(FieldProblem(name, "unknown_field",
                                         f"{name} is not a UsageEvent field (a typo?); known fields are listed "
                                         "in schemas/avro/UsageEvent.avsc"))
    event_id = record.get("event_id")
    if event_id is None:
        record["event_id"] = new_event_id()
    elif isinstance(event_id, uuid.UUID):
        record["event_id"] = str(event_id)
    if record.get("source") is None:
        record["source"] = source
    occurred = record.get("occurred_at")
    if occurred is None:
        record["occurred_at"] = now
    elif isinstance(occurred, str):
        try:
            record["occurred_at"] = datetime.fromisoformat(occurred)
        except ValueError:
            problems.append(FieldProblem("occurred_at", "type",
                                         f"occurred_at {occurred[:40]!r} is not an ISO-8601 timestamp"))
    problems.extend(_INPUT_RULES.diagnose(record, None))
    if record.get("tags", ()) is None:
        record.pop("tags", None)  # the tag map's type is checked by schemas' usage rules
    cost = record.get("reported_cost")
    if cost is not None and not isinstance(cost, Decimal):
        if isinstance(cost, float) or isinstance(cost, bool):
            problems.append(FieldProblem("reported_cost", "type",
                                         "reported_cost must be a Decimal or a decimal string, never a float "
                                         "(money is exact)"))
        else:
            try:
                record["reported_cost"] = Decimal(str(cost))
            except InvalidOperation:
                problems.append(FieldProblem("reported_cost", "type",
                                             f"reported_cost {cost!r} is not a decimal number"))
    return problems


def complete_usage_record(record: dict[str, Any], now: datetime, source: str) -> list[FieldProblem]:
    """Fill ``event_id``, ``source`` and ``occurred_at`` in place when absent and return every problem of the event
    (empty = valid), what :meth:`UsageProducer.prepare` refuses. Pure apart from the new event id; sends nothing.

    One cause, one problem: a field this step already refused (an ``occurred_at`` that is not ISO-8601) is not
    reported again by :func:`~schemas.models.check_usage_dict`."""
    problems = _complete_usage(record, now, source)
    if not problems:
        return check_usage_dict(record, now)
    reported = {problem.field for problem in problems}
    problems.extend(p for p in check_usage_dict(record, now) if p.field not in reported)
    return problems


#: What the slow path converts (a Decimal string, an int cost) and the one-pass path does not: it declines those.
_FAST_ONLY = ("({reported_cost} is None or {reported_cost}.__class__ is _Decimal)",)
#: The one-pass path's guard: the fast forms of the usage rules and of the SDK's input rules, over the fields as
#: given (a field the SDK fills may be absent or None), plus the conversions it leaves to the slow path. It may
#: refuse more (subclasses, a uuid.UUID id, an ISO-8601 string time): those take the slow path, which fills,
#: converts and diagnoses. It never accepts what the slow path refuses, nor gives other bytes:
#: tests/unit/test_producer_fastpath.py compares the two paths on edge cases, examples and traces.
#: The Avro length of a new event id (the 36 characters of a canonical UUID string), before its text.
_ID_HEAD = encode_long(36)
_USAGE_GUARD, _ITEM_GUARDS = USAGE_EVENT_RULES.guard(fills=("event_id", "source", "occurred_at"))
_USAGE_GUARD += [*_INPUT_RULES.guard()[0], *_FAST_ONLY]


def build_usage_fast_path(header: bytes) -> CheckedEncoder:
    """The one-pass path of :meth:`UsageProducer.prepare` for an event dict, generated from the UsageEvent schema:
    ``prepare(event, next_id, source, source_bytes, now, now_micros, now_bytes)`` (``next_id()`` gives a new event
    id, a canonical 36-character UUID string as :func:`new_event_id` and :func:`new_event_ids` make, so its Avro
    length is the constant ``_ID_HEAD``; the ``_bytes`` are the Avro encodings of the value before) returns
    ``(event_id, key, value)``, the very triple the slow path (complete, check, encode) returns, or None when the
    slow path must decide (any doubt, any invalid event). ``header`` frames the value. Never mutates the event."""
    return build_checked_encoder(
        load_schema("UsageEvent"),
        prefix=header,
        params=("next_id", "source", "source_bytes", "now", "now_micros", "now_bytes"),
        guard=_USAGE_GUARD,
        fills={"event_id": ("next_id()", "_ID_HEAD + {event_id}.encode()"), "source": ("source", "source_bytes"),
               "occurred_at": ("now_micros", "now_bytes")},
        returns="({event_id}, {agent_id_utf8}, {body})",
        names={**USAGE_EVENT_RULES.names, "_Decimal": Decimal, "_ID_HEAD": _ID_HEAD},
        item_guards=_ITEM_GUARDS,
        memo=("agent_id", "team", "project", "provider", "model"),  # an agent's attribution repeats
        closed=True,  # an unknown field is a typo the slow path names
    )


def sdk_client_id(source: str) -> str:
    """The ``client.id`` of the usage producer of ``source`` (librdkafka caps it at 200 characters here)."""
    return f"finops-producer-{source}"[:200]


def sdk_producer_settings(*, compression: str = "lz4", linger_ms: int = 20, queue_max_kbytes: int = 32 * 1024,
                          queue_max_messages: int = 100_000, message_timeout_ms: int = 30_000) -> dict[str, Any]:
    """The constructor's tuning arguments as librdkafka settings, applied over the SDK role profile of
    :mod:`finops.kafka.clients` (why each setting: the comments there)."""
    return {"compression.type": compression, "linger.ms": linger_ms, "queue.buffering.max.kbytes": queue_max_kbytes,
            "queue.buffering.max.messages": queue_max_messages, "message.timeout.ms": message_timeout_ms}


class UsageProducer:
    """Publishes usage events to the usage topic.

    Construction starts two daemon threads and opens the spool (raises
    :class:`~producers.spool.SpoolLocked` when another process owns ``spool_dir``); it does not contact the broker.
    ``spool_dir=None`` disables the spool: broker outages then end as ``failed`` deliveries after
    ``message_timeout_ms`` (reported, not silent), for tools that must not write to disk.

    Guarantees (DESIGN §5, "Producers"):

    - Validation first: :meth:`emit` checks the event (``check_usage_dict`` plus the field types the encoder needs)
      before anything reaches Kafka or the spool; an invalid event raises ``ValidationFailed`` naming every broken
      field, and nothing is sent.
    - Batches: :meth:`emit_many` is ``emit`` for a list. It validates every event first (one clock reading) and
      sends none unless all are valid (:class:`BatchValidationFailed` names each bad event's index and fields), then
      encodes each to the bytes ``emit`` would send and hands them over under one lock acquisition; every guarantee
      below holds per event, in list order.
    - Idempotent, acknowledged writes: ``enable.idempotence=true`` (so ``acks=all``, in order per partition,
      retries without duplicates while the producer lives).
    - At least once across outages and restarts. An event ends one way and ``on_delivery`` hears which (a
      :class:`Delivery`), once: ``delivered`` (acknowledged; topic, partition, offset given); ``spooled`` (broker
      unreachable: in the spool, sent in order by this producer or the next one on the same spool directory);
      ``failed`` (a permanent broker error such as message too large, not authorised, unknown topic: logged,
      counted, never retried); ``refused`` (spool full: :class:`~producers.spool.SpoolFull` raised by ``emit``, or
      ``on_spool_full`` called). The drainer moves the spool cursor only after the broker acknowledged a whole
      drained batch, so a crash or new outage mid-batch re-sends part of it: duplicates carry the same event_id and
      are removed downstream (counted in ``stats().resent``).
    - Order: while the spool holds anything, new events go to it too, behind it. When the broker goes away, the
      messages still inside librdkafka are purged (``purge(in_queue, in_flight)``) and spooled in delivery-report
      order before any newer event is accepted (emitters wait for the switch). Per-agent order holds, except that an
      in-flight message the broker did store before the connection broke is sent again later.
    - Bounded memory: librdkafka's queue is capped (``queue.buffering.max.*``); when it is full (``BufferError``),
      all brokers are down (``_ALL_BROKERS_DOWN``) or a message fails retriably (``_MSG_TIMED_OUT``, ``_TRANSPORT``,
      ...), the producer switches to the spool, which is on disk and bounded.
    - Exit: :meth:`close` (also registered with ``atexit``) flushes for up to ``close_timeout`` seconds, then moves
      what librdkafka still holds into the spool, fsyncs it and releases it.

    Not guaranteed: an event librdkafka holds in memory (handed over, not yet acknowledged or spooled) is lost if
    the process is SIGKILLed, OOM-killed or the machine dies in that window (at most ``queue.buffering.max.*``
    events, usually the last ``linger.ms`` plus a round trip). Spooled events survive a process crash at once and a
    power loss after the spool's next fsync (``fsync_interval``).

    Threads: a daemon poll thread serves delivery reports (callbacks fire without the caller polling) and performs
    the switch to the spool; a daemon drainer thread probes the broker and sends spooled events. ``emit`` is safe
    from any thread; :meth:`emit_async` awaits the report from asyncio. Callbacks run on the poll thread (or on the
    emitting thread for ``spooled``): keep them short and do not call :meth:`flush` or :meth:`close` from them.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        source: str,
        spool_dir: Path | str | None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        clock: Clock = utc_now,
        *,
        compression: str = "lz4",
        linger_ms: int = 20,
        kafka_config: Mapping[str, Any] | None = None,
        schema_registry_url: str | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
        on_spool_full: Callable[[SpoolRecord], None] | None = None,
        queue_max_kbytes: int = 32 * 1024,
        queue_max_messages: int = 100_000,
        message_timeout_ms: int = 30_000,
        drain_batch: int = 5000,
        drain_timeout: float = 30.0,
        probe_interval: float = 1.0,
        close_timeout: float = 10.0,
        spool_fsync_interval: float = 1.0,
        register_atexit: bool = True,
    ) -> None:
        if not source or not source.strip():
            raise FinopsError("producer source is empty: set FINOPS_PRODUCER_SOURCE to the emitting service's name")
        self.topic = topic
        self.source = source
        self._clock = clock
        self._on_delivery = on_delivery
        self._on_spool_full = on_spool_full
        self._drain_batch = drain_batch
        self._drain_timeout = drain_timeout
        self._probe_interval = probe_interval
        self._close_timeout = close_timeout

        self._codec = AvroCodec()
        self._header_len = SINGLE_OBJECT_HEADER_LEN
        self._encode: Callable[[Mapping[str, Any]], bytes] = functools.partial(self._codec.encode,
                                                                                schema_name="UsageEvent")
        # The one-pass path for event dicts (same bytes as the slow path; with a registry, the serializer frames).
        fast_path = build_usage_fast_path(SINGLE_OBJECT_MAGIC + self._codec.fingerprint("UsageEvent"))
        self._fast: Callable[..., tuple[str, bytes, bytes] | None] | None = fast_path.prepare
        self._fast_all: Callable[..., list[tuple[str, bytes, bytes] | None]] | None = fast_path.prepare_all
        if schema_registry_url:
            self._encode = self._registry_encoder(schema_registry_url)
            self._header_len = CONFLUENT_HEADER_LEN
            self._fast = self._fast_all = None
        self._source_bytes = encode_long(len(source.encode())) + source.encode()  # its Avro string

        self._producer = build_producer(
            {"bootstrap.servers": bootstrap}, Role.SDK, client_id=sdk_client_id(source),
            overrides={
                **sdk_producer_settings(compression=compression, linger_ms=linger_ms, queue_max_kbytes=queue_max_kbytes,
                                        queue_max_messages=queue_max_messages, message_timeout_ms=message_timeout_ms),
                **(kafka_config or {}),  # the caller's security settings (and any tuning) win
                "error_cb": self._on_error,
                # librdkafka's own log lines (connection refused while the broker is down, ...) go through logging,
                # served by the poll thread, instead of straight to stderr.
                "logger": logging.getLogger("producers.librdkafka"),
            },
        )

        self._spool: Spool | None = (
            Spool(spool_dir, spool_max_bytes, fsync_interval=spool_fsync_interval) if spool_dir is not None else None
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._counters = _Counters()
        # Delivered direct messages; written only by the thread serving delivery reports (lock-free on purpose:
        # this runs once per event). Messages still inside librdkafka are len(self._producer).
        self._delivered = 0
        # The delivery report of a direct message nobody else asked to hear about.
        self._direct_report: Callable[[KafkaError | None, Message], None] = (
            self._on_direct_count if on_delivery is None else self._on_direct_report)
        self._waiters = 0  # threads waiting on _cond (flush, emit during a switch): DRs notify only then
        # A spool left non-empty by an earlier process is drained first; new events queue up behind it.
        self._state = _SPOOLING if self._spool is not None and self._spool.pending else _DIRECT
        self._broker_ok = False
        self._down_said_at: float | None = None  # when the "all brokers down" warning was last logged
        self._closed = False
        self._stop = threading.Event()
        self._drain_wake = threading.Event()
        self._drain_outstanding = 0
        self._drain_failed = 0
        self._drain_done = threading.Condition(threading.Lock())
        self._drain_abort = threading.Event()

        self._poll_thread = threading.Thread(target=self._poll_loop, name="finops-producer-poll", daemon=True)
        self._poll_thread.start()
        self._drain_thread: threading.Thread | None = None
        if self._spool is not None:
            self._drain_thread = threading.Thread(target=self._drain_loop, name="finops-spool-drain", daemon=True)
            self._drain_thread.start()
        self._atexit = register_atexit
        if register_atexit:
            atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: FinopsSettings, *, clock: Clock = utc_now, **overrides: Any) -> UsageProducer:
        """Build from :func:`finops.settings.load_settings` output: FINOPS_KAFKA_* (bootstrap, security, topic
        prefix, schema registry) and FINOPS_PRODUCER_* (source, spool, compression, linger). ``overrides`` are
        passed to the constructor (tests and tools)."""
        kafka = settings.kafka
        prod = settings.producer
        client = kafka.client_config()
        client.pop("bootstrap.servers", None)
        registry = kafka.schema_registry_url.get_secret_value() if kafka.schema_registry_url else None
        kwargs: dict[str, Any] = {
            "bootstrap": kafka.bootstrap,
            "topic": TopicNames(kafka.topic_prefix).usage,
            "source": prod.source,
            "spool_dir": prod.spool_dir or settings.data_dir / "spool",
            "spool_max_bytes": prod.spool_max_bytes,
            "clock": clock,
            "compression": prod.compression,
            "linger_ms": prod.linger_ms,
            "kafka_config": client,
            "schema_registry_url": registry,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def _registry_encoder(self, url: str) -> Callable[[Mapping[str, Any]], bytes]:
        serializer = build_registry_serializer(url, "UsageEvent")
        ctx = SerializationContext(self.topic, MessageField.VALUE)

        def encode(record: Mapping[str, Any]) -> bytes:
            data = serializer(record, ctx)
            assert data is not None
            return data

        return encode

    # ------------------------------------------------------------------------------------------------ building
    def prepare(self, event: UsageEvent | Mapping[str, Any]) -> tuple[str, bytes, bytes]:
        """Validate, complete and encode one event: return ``(event_id, key, value)``. Sends nothing.

        Fills a missing ``event_id`` (random UUID), ``occurred_at`` (the injected clock) and ``source`` (this
        producer's). Raises :class:`ValidationFailed` naming every broken field, or ``EncodeError``.
        """
        now = self._clock()
        if self._fast is not None and now.tzinfo is not None:
            micros = to_micros(now)
            prepared = self._fast(event, new_event_id, self.source, self._source_bytes, now, micros,
                                  encode_long(micros))
            if prepared is not None:
                return prepared
        record, problems = self._record(event, now)
        if problems:
            with self._lock:
                self._counters.invalid += 1
            raise ValidationFailed(problems, record="UsageEvent")
        return str(record["event_id"]), record["agent_id"].encode(), self._encode(record)

    def prepare_many(self, events: Iterable[UsageEvent | Mapping[str, Any]]) -> list[tuple[str, bytes, bytes]]:
        """:meth:`prepare` for a batch: ``(event_id, key, value)`` per event, in order, each the very bytes
        ``prepare`` returns for it. Sends nothing.

        All events are validated against one clock reading before any is encoded. Raises
        :class:`BatchValidationFailed` (naming each invalid event's index and fields; every invalid event counts in
        ``stats().invalid``), or ``EncodeError`` naming the index of the first event that cannot be encoded.
        """
        now = self._clock()
        fast = self._fast_all if now.tzinfo is not None else None  # a naive clock: the slow path says what is wrong
        events = events if isinstance(events, list) else list(events)
        prepared: list[tuple[str, bytes, bytes] | None]
        if fast is not None:
            micros = to_micros(now)
            # One random draw for the batch's new ids (an event that brings its own id leaves one unused).
            prepared = fast(events, iter(new_event_ids(len(events))).__next__, self.source, self._source_bytes,
                            now, micros, encode_long(micros))
        else:
            prepared = [None] * len(events)
        complete = self._record
        slow: list[tuple[int, dict[str, Any]]] = []  # (index, completed record) of valid events the fast path left
        invalid: dict[int, list[FieldProblem]] = {}
        if None in prepared:
            for index, done in enumerate(prepared):
                if done is None:
                    record, problems = complete(events[index], now)
                    if problems:
                        invalid[index] = problems
                    else:
                        slow.append((index, record))
        if invalid:
            with self._lock:
                self._counters.invalid += len(invalid)
            raise BatchValidationFailed(invalid, len(prepared))
        encode = self._encode
        for index, record in slow:
            try:
                prepared[index] = (str(record["event_id"]), record["agent_id"].encode(), encode(record))
            except EncodeError as err:
                raise EncodeError(f"event {index} of the batch (none was sent): {err}") from err
        return prepared  # type: ignore[return-value]  # every slot is filled: fast, slow, or raised

    def _record(self, event: UsageEvent | Mapping[str, Any],
                now: datetime) -> tuple[dict[str, Any], list[FieldProblem]]:
        """The completed Avro record of ``event`` (``occurred_at`` as int micros) and its problems (empty = valid)."""
        if isinstance(event, UsageEvent):
            try:
                validate_event(event, now)
            except ValidationFailed as err:
                return {}, err.problems
            return event.to_avro_dict(), []
        record = dict(event)
        problems = complete_usage_record(record, now, self.source)
        if problems:
            return record, problems
        # fastavro converts an int faster than a datetime; same Avro long.
        occurred = record["occurred_at"]
        record["occurred_at"] = to_micros(occurred) if isinstance(occurred, datetime) else occurred
        return record, problems

    # ------------------------------------------------------------------------------------------------ sending
    def emit(
        self,
        event: UsageEvent | Mapping[str, Any],
        *,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> str:
        """Validate and send one event; return its event_id. Does not wait for the broker.

        ``on_delivery`` (and the producer-wide callback) is called once with the :class:`Delivery`. Blocks only on
        a spool write while the broker is away, or for the few ms of the switch to the spool.
        Raises :class:`ValidationFailed` (nothing sent), :class:`~producers.spool.SpoolFull` when the event can be
        neither sent nor kept (unless ``on_spool_full`` was given), :class:`FinopsError` after :meth:`close`.
        """
        event_id, key, value = self.prepare(event)
        self._submit(event_id, key, value, on_delivery)
        return event_id

    def emit_many(
        self,
        events: Iterable[UsageEvent | Mapping[str, Any]],
        *,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> list[str]:
        """Validate and send a batch of events, in order; return their event_ids. Does not wait for the broker.

        All or nothing before sending: every event is validated first, and when any is invalid
        :class:`BatchValidationFailed` is raised naming each bad event's index and fields and **none** is sent (as
        ``emit`` sends nothing for an invalid event; a caller that retries the corrected batch creates no
        duplicates). Then the events are encoded (each to the bytes ``emit`` would send) and handed to librdkafka
        under one lock acquisition. Per event, everything ``emit`` guarantees holds: one :class:`Delivery` each
        (``on_delivery`` and the producer-wide callback), key = ``agent_id``, list order kept per agent, a switch
        to the spool mid-batch puts the rest of the batch behind what librdkafka held.

        Raises :class:`BatchValidationFailed` or ``EncodeError`` (nothing sent), :class:`FinopsError` after
        :meth:`close`, and :class:`~producers.spool.SpoolFull` when the spool refuses an event (unless
        ``on_spool_full`` was given): the events before it were accepted and are reported as usual; it and the
        ones after it were not (``err.index`` is its position in the batch, ``err.event_id`` its id).
        """
        prepared = self.prepare_many(events)
        self._submit_many(prepared, on_delivery)
        return [event_id for event_id, _, _ in prepared]

    async def emit_async(self, event: UsageEvent | Mapping[str, Any]) -> Delivery:
        """Emit and await the outcome without blocking the event loop on the broker.

        Returns the :class:`Delivery` (``delivered`` or ``spooled``). Raises :class:`ValidationFailed` before
        sending, :class:`DeliveryFailed` for ``failed`` / ``refused``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def resolve(delivery: Delivery) -> None:
            loop.call_soon_threadsafe(_settle, future, delivery)

        try:
            self.emit(event, on_delivery=resolve)
        except SpoolFull as err:
            raise DeliveryFailed(Delivery(err.event_id, "refused", error=str(err))) from err
        delivery = await future
        if delivery.status in ("failed", "refused"):
            raise DeliveryFailed(delivery)
        return delivery

    def track(self, **fields: Any) -> Track:
        """Time a model call and emit its usage on exit (context manager and decorator): see
        :class:`producers.track.Track`."""
        return Track(self, fields)

    def _submit(self, event_id: str, key: bytes, value: bytes,
                on_delivery: Callable[[Delivery], None] | None) -> None:
        with self._lock:
            if self._closed:
                raise FinopsError("the usage producer is closed; create a new one (or emit before close())")
            self._counters.emitted += 1
            if self._state == _SWITCHING and threading.current_thread() is not self._poll_thread:
                self._wait_switch()
            if self._state == _DIRECT:
                callback = (
                    self._direct_report if on_delivery is None
                    else functools.partial(self._on_direct_report_to, on_delivery)
                )
                try:
                    self._producer.produce(self.topic, value, key, _ANY_PARTITION, callback)
                    return
                except BufferError:
                    # librdkafka's bounded queue is full: the broker is down or slower than us. Spool from here
                    # on, behind whatever librdkafka still holds (the switch moves that to the spool first).
                    self._begin_switch("the local send queue is full (broker unreachable or slow)")
                    if threading.current_thread() is not self._poll_thread:
                        self._wait_switch()
            delivery = self._spool_locked(key, value, event_id, int(time.time() * 1000), raise_full=True)
        self._report(delivery, on_delivery)

    def _submit_many(self, prepared: Sequence[tuple[str, bytes, bytes]],
                     on_delivery: Callable[[Delivery], None] | None) -> None:
        """:meth:`_submit` for a batch under one lock acquisition: straight to librdkafka while the state is direct;
        from the first ``BufferError`` on (or when spooling), the rest goes to the spool, after the switch."""
        callback = (
            self._direct_report if on_delivery is None
            else functools.partial(self._on_direct_report_to, on_delivery)
        )
        produce = self._producer.produce
        topic = self.topic
        spooled: list[Delivery] = []
        try:
            with self._lock:
                if self._closed:
                    raise FinopsError("the usage producer is closed; create a new one (or emit before close())")
                self._counters.emitted += len(prepared)
                on_poll_thread = threading.current_thread() is self._poll_thread
                if self._state == _SWITCHING and not on_poll_thread:
                    self._wait_switch()
                done = 0  # handed to librdkafka
                if self._state == _DIRECT:
                    try:
                        for _, key, value in prepared:
                            produce(topic, value, key, _ANY_PARTITION, callback)  # positional: cheaper per call
                            done += 1
                    except BufferError:
                        # As in _submit: librdkafka's queue is full; the rest follows what it holds, via the spool.
                        self._begin_switch("the local send queue is full (broker unreachable or slow)")
                        if not on_poll_thread:
                            self._wait_switch()
                for index in range(done, len(prepared)):
                    event_id, key, value = prepared[index]
                    try:
                        delivery = self._spool_locked(key, value, event_id, int(time.time() * 1000), raise_full=True)
                    except SpoolFull as err:
                        err.index = index
                        # Emitted: the events up to this one (refused, like a single emit); the rest never was.
                        self._counters.emitted -= len(prepared) - index - 1
                        raise
                    spooled.append(delivery)
        finally:
            for delivery in spooled:
                self._report(delivery, on_delivery)

    def _wait_switch(self) -> None:
        """Wait (lock held, released while waiting) until the poll thread finished moving messages to the spool."""
        self._waiters += 1
        try:
            while self._state == _SWITCHING and not self._closed:
                self._cond.wait(0.5)
        finally:
            self._waiters -= 1

    def _spool_locked(self, key: bytes, value: bytes, event_id: str, ts: int, *, raise_full: bool) -> Delivery:
        """Append to the spool (lock held). Returns a ``spooled`` or ``refused``/``failed`` Delivery; raises
        SpoolFull when ``raise_full`` and no on_spool_full callback exists."""
        if self._spool is None:
            self._counters.failed += 1
            return Delivery(event_id, "failed", self.topic, error="broker unreachable and no spool configured")
        try:
            self._spool.append(key, value, event_id, ts)
        except SpoolFull as err:
            self._counters.refused += 1
            if self._on_spool_full is not None:
                self._on_spool_full(SpoolRecord(key, value, event_id, ts, self._spool.cursor))
            elif raise_full:
                raise
            else:
                # Reached from a delivery report: nobody to raise to. Logged loudly and reported as refused.
                log.error("usage event %s lost: %s", event_id, err)
            return Delivery(event_id, "refused", self.topic, error=str(err))
        self._counters.spooled += 1
        if self._state == _DIRECT:
            self._state = _SPOOLING
        self._drain_wake.set()
        return Delivery(event_id, "spooled", self.topic)

    def _report(self, delivery: Delivery, callback: Callable[[Delivery], None] | None) -> None:
        for cb in (callback, self._on_delivery):
            if cb is not None:
                try:
                    cb(delivery)
                except Exception:  # a caller's bug must not stop delivery reports for everyone else
                    log.exception("on_delivery callback raised for event %s", delivery.event_id)

    # ------------------------------------------------------------------------------------------------ reports
    def _event_id_of(self, value: bytes | None) -> str:
        # event_id is the record's first field: a zig-zag varint length then UTF-8, right after the framing header.
        if not value or len(value) <= self._header_len:
            return "?"
        n = value[self._header_len]
        if n & 0x80:
            return "?"
        length = n >> 1
        start = self._header_len + 1
        return value[start : start + length].decode("utf-8", "replace")

    def _on_direct_count(self, err: KafkaError | None, msg: Message) -> None:
        """:meth:`_on_direct_report` when nobody listens for deliveries: a success is only counted (it runs once
        per event, on the poll thread); a failure takes the full path (spool or report)."""
        if err is None:
            self._delivered += 1
            if self._waiters:
                with self._lock:
                    self._cond.notify_all()
            return
        self._on_direct_report(err, msg)

    def _on_direct_report_to(self, callback: Callable[[Delivery], None], err: KafkaError | None, msg: Message) -> None:
        self._on_direct_report(err, msg, callback)

    def _on_direct_report(
        self, err: KafkaError | None, msg: Message, callback: Callable[[Delivery], None] | None = None
    ) -> None:
        """Delivery report of a message handed to librdkafka by emit (runs on the poll thread)."""
        if err is None:
            self._delivered += 1
            if self._waiters:
                with self._lock:
                    self._cond.notify_all()
            if callback is not None or self._on_delivery is not None:
                self._report(
                    Delivery(self._event_id_of(msg.value()), "delivered", msg.topic(), msg.partition(), msg.offset()),
                    callback,
                )
            return
        event_id = self._event_id_of(msg.value())
        with self._lock:
            if err.code() in _RETRIABLE_CODES or err.retriable():
                if self._state == _DIRECT:
                    self._begin_switch(f"a delivery failed with {err.name()}")
                ts_type, ts = msg.timestamp()
                key = msg.key() or b""
                value = msg.value() or b""
                delivery = self._spool_locked(key, value, event_id, ts if ts > 0 else int(time.time() * 1000),
                                              raise_full=False)
                if delivery.status == "spooled":
                    self._counters.resent += 1  # it may have reached the broker already (in flight, or retried)
            else:
                self._counters.failed += 1
                delivery = Delivery(event_id, "failed", msg.topic(), msg.partition(),
                                    error=f"{err.name()}: {err.str()}")
                log.error("usage event %s failed permanently (%s); it is not retried", event_id, delivery.error)
            if self._waiters:
                self._cond.notify_all()
        self._report(delivery, callback)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (poll thread). All brokers down: stop feeding librdkafka, spool instead."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                self._broker_ok = False
                if self._state == _DIRECT:
                    self._begin_switch("all brokers are down")
            self._drain_abort.set()  # a drain batch in flight will not be acknowledged: take it back now
            # librdkafka reports this at every failed reconnect: say it once per LOG_INTERVAL_S, the rest at DEBUG.
            now = time.monotonic()
            if self._down_said_at is None or now - self._down_said_at >= LOG_INTERVAL_S:
                self._down_said_at = now
                log.warning("kafka: all brokers down; usage events go to the spool until the broker is back")
            else:
                log.debug("kafka: all brokers down (still)")
        elif err.fatal():
            log.error("kafka: fatal producer error %s: %s", err.name(), err.str())
        else:
            log.debug("kafka: %s: %s", err.name(), err.str())

    def _begin_switch(self, why: str) -> None:
        # Lock held. Only the state changes here; the poll thread does the purge (it must not happen inside a
        # callback, and emitters must not poll while holding the lock).
        if self._spool is None or self._state != _DIRECT:
            return
        self._state = _SWITCHING
        log.warning("usage producer switching to the spool: %s", why)

    def _finish_switch(self) -> None:
        """Move every message librdkafka holds into the spool (poll thread or close), then let emitters go on."""
        deadline = time.monotonic() + 30.0
        self._producer.purge(in_queue=True, in_flight=True)
        while time.monotonic() < deadline:
            self._producer.poll(0.05)  # serves the purged messages' reports: they append to the spool in order
            if len(self._producer) == 0:  # counts unserved delivery reports too: 0 = all spooled
                break
        with self._lock:
            if len(self._producer) > 0:
                log.error("%d messages still inside librdkafka after the purge; their reports will spool them",
                          len(self._producer))
            if self._state == _SWITCHING:
                self._state = _SPOOLING
            self._cond.notify_all()
        self._drain_wake.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
                if self._state == _SWITCHING:
                    self._finish_switch()
            except Exception:  # the thread must survive anything, or delivery reports stop for good
                log.exception("usage producer poll loop error")

    # ------------------------------------------------------------------------------------------------ draining
    def _probe(self) -> bool:
        """True when a broker answers a metadata request and every partition of the topic has a leader."""
        try:
            md = self._producer.list_topics(self.topic, timeout=min(5.0, max(self._probe_interval, 1.0)))
        except KafkaException:
            return False
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        return all(p.leader >= 0 for p in topic.partitions.values())

    def _drain_loop(self) -> None:
        assert self._spool is not None
        while not self._stop.is_set():
            if self._state != _SPOOLING:
                self._drain_wake.wait(0.5)
                self._drain_wake.clear()
                continue
            try:
                if not self._broker_ok:
                    self._broker_ok = self._probe()
                    if not self._broker_ok:
                        self._stop.wait(self._probe_interval)
                        continue
                    log.info("kafka is reachable again: draining %d spooled usage events", self._spool.pending)
                if not self._drain_once():
                    self._broker_ok = False
                    self._stop.wait(self._probe_interval)
            except Exception:
                log.exception("spool drainer error; retrying")
                self._broker_ok = False
                self._stop.wait(self._probe_interval)

    def _drain_once(self) -> bool:
        """Send the next batch from the spool and commit it once every record is acknowledged.

        Returns False when the batch was not wholly acknowledged (the records are sent again later). When the
        spool is empty, switches back to direct sending (under the lock, so no emit slips in between).
        """
        assert self._spool is not None
        records = self._spool.read(self._drain_batch)
        if not records:
            with self._lock:
                if self._spool.pending == 0 and self._state == _SPOOLING:
                    self._state = _DIRECT
                    log.info("spool drained: usage events go straight to Kafka again")
            return True
        with self._drain_done:
            self._drain_outstanding = len(records)
            self._drain_failed = 0
        self._drain_abort.clear()
        for i, rec in enumerate(records):
            while True:
                try:
                    self._producer.produce(self.topic, rec.value, rec.key, on_delivery=self._on_drain_report,
                                           timestamp=rec.timestamp_ms)
                    break
                except BufferError:
                    self._producer.poll(0.05)
                    if self._stop.is_set():
                        with self._drain_done:
                            self._drain_outstanding -= len(records) - i
                            self._drain_failed += len(records) - i
                        return self._finish_drain(records, self._await_drain())
        return self._finish_drain(records, self._await_drain())

    def _await_drain(self) -> bool:
        deadline = time.monotonic() + self._drain_timeout
        with self._drain_done:
            while (self._drain_outstanding > 0 and time.monotonic() < deadline and not self._stop.is_set()
                   and not self._drain_abort.is_set()):
                self._drain_done.wait(0.1)
            pending = self._drain_outstanding
        if pending > 0:
            # The broker went away mid-batch (or we are closing): take the batch back from librdkafka.
            self._producer.purge(in_queue=True, in_flight=True)
            with self._drain_done:
                end = time.monotonic() + 10.0
                while self._drain_outstanding > 0 and time.monotonic() < end:
                    self._drain_done.wait(0.05)
        with self._drain_done:
            return self._drain_failed == 0 and self._drain_outstanding == 0

    def _finish_drain(self, records: list[SpoolRecord], ok: bool) -> bool:
        assert self._spool is not None
        if ok:
            self._spool.commit(records[-1].end)
            with self._lock:
                self._counters.drained += len(records)
                if self._waiters:
                    self._cond.notify_all()
            return True
        self._spool.rewind()
        with self._drain_done:
            acknowledged = len(records) - self._drain_failed - max(self._drain_outstanding, 0)
        with self._lock:
            # These were stored by the broker but are sent again with the rest of the batch: duplicates with the
            # same event_id, removed downstream.
            self._counters.resent += max(acknowledged, 0)
        return False

    def _on_drain_report(self, err: KafkaError | None, msg: Message) -> None:
        with self._drain_done:
            self._drain_outstanding -= 1
            if err is not None:
                self._drain_failed += 1
                if not (err.code() in _RETRIABLE_CODES or err.retriable()):
                    log.error("spooled usage event %s refused by the broker (%s); it stays in the spool",
                              self._event_id_of(msg.value()), err.name())
            if self._drain_outstanding <= 0:
                self._drain_done.notify_all()

    # ------------------------------------------------------------------------------------------------ lifecycle
    def stats(self) -> ProducerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            values = {f.name: getattr(self._counters, f.name) for f in fields(_Counters)}
            values["delivered"] = self._delivered
            pending = self._spool.pending if self._spool is not None else 0
            return ProducerStats(**values, spool_pending=pending, state=self._state)

    @property
    def spool(self) -> Spool | None:
        """The spool (for inspection and tests)."""
        return self._spool

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every emitted event is acknowledged by the broker, or ``timeout`` seconds pass.

        Returns how many are not acknowledged yet (in librdkafka plus in the spool; spooled ones are safe on disk
        and will be sent later). Blocks on the broker; never call it from a delivery callback.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while True:
                    # While spooling nothing direct is inside librdkafka (only a drain batch, also in the spool).
                    inside = len(self._producer) if self._state != _SPOOLING else 0
                    remaining = inside + (self._spool.pending if self._spool is not None else 0)
                    left = deadline - time.monotonic()
                    if remaining == 0 or left <= 0:
                        return remaining
                    if self._state == _SPOOLING:
                        self._drain_wake.set()
                    self._cond.wait(min(0.1, left))
            finally:
                self._waiters -= 1

    def close(self, timeout: float | None = None) -> int:
        """Flush (up to ``timeout``, default ``close_timeout``), spool what is still unacknowledged, stop the
        threads, fsync and release the spool. Idempotent. Returns the number of events left in the spool."""
        with self._lock:
            if self._closed:
                return self._spool.pending if self._spool is not None else 0
        self.flush(self._close_timeout if timeout is None else timeout)
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._drain_wake.set()
        if self._drain_thread is not None:
            self._drain_thread.join(timeout=self._drain_timeout + 15)
        self._poll_thread.join(timeout=5)
        with self._lock:
            leftover = len(self._producer) if self._state != _SPOOLING else 0
            if leftover and self._spool is not None and self._state == _DIRECT:
                self._state = _SWITCHING
        if leftover and self._spool is not None:
            self._finish_switch()  # librdkafka still holds some: move them into the spool rather than lose them
        elif leftover:
            self._producer.flush(1.0)
        # Anything still inside librdkafka now has no spool to go to: purge it so its report says "failed"
        # (counted and logged) instead of vanishing, then destroy the client so it stops reconnecting.
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.poll(0)
        self._producer.close()
        pending = 0
        if self._spool is not None:
            pending = self._spool.pending
            self._spool.close()
        if self._atexit:
            atexit.unregister(self.close)
        if pending:
            log.warning("usage producer closed with %d events in the spool %s; they are sent by the next producer "
                        "opened on it", pending, self._spool.directory if self._spool else "")
        return pending

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(future: asyncio.Future[Delivery], delivery: Delivery) -> None:
    if not future.done():
        future.set_result(delivery)
