"""The one place confluent-kafka clients are configured and constructed (DESIGN §5).

:func:`client_config` merges the connection (bootstrap and security, from :class:`~finops.settings.KafkaSettings`
or a mapping that came from it), the defaults of the client kind, the profile of the role and the caller's
overrides. :func:`build_producer`, :func:`build_consumer` and :func:`build_admin` are the only constructors of
``Producer``, ``Consumer`` and ``AdminClient`` in the project (``tests/unit/test_kafka_clients.py`` checks it).
Configs contain secrets: log them through :func:`redacted` only.

librdkafka's own log lines go through Python logging, never straight to stderr: every client built here logs to
its ``logger`` (default :data:`LIBRDKAFKA_LOGGER`) through a :class:`LogThrottle`, so a broker that is down shows one
line per client and facility per :data:`LOG_INTERVAL_S` (the rest at DEBUG) instead of one per reconnect attempt.
The lines are served by the client's ``poll``/``consume``/``flush`` calls. One-shot commands check the broker first
with :func:`require_broker`, which fails within :data:`CONNECT_TIMEOUT_S` with :func:`unreachable_message`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, Final, Protocol

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from schemas.errors import FinopsError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LIBRDKAFKA_LOGGER",
    "LOG_INTERVAL_S",
    "ROLE_BROKER_WAIT_S",
    "BrokerUnreachable",
    "Connection",
    "KafkaConnection",
    "Kind",
    "LogThrottle",
    "Role",
    "SECRET_KEYS",
    "build_admin",
    "build_consumer",
    "build_producer",
    "client_config",
    "redacted",
    "require_broker",
    "unreachable_message",
    "wait_for_broker",
]

log = logging.getLogger(__name__)


class KafkaConnection(Protocol):
    """What :class:`finops.settings.KafkaSettings` offers (not imported: pydantic-settings is not in the SDK)."""

    def client_config(self) -> dict[str, Any]:
        """``bootstrap.servers`` and the SASL/SSL settings, secrets included."""
        ...


Connection = KafkaConnection | Mapping[str, Any]


class Kind(StrEnum):
    """Which confluent-kafka client a config is for."""

    PRODUCER = "producer"
    CONSUMER = "consumer"
    ADMIN = "admin"


class Role(StrEnum):
    """Who the client works for: picks the profile below and the default ``client.id`` (``finops-<role>``)."""

    HOTPATH = "hotpath"  # stream_jobs.hotpath: usage -> priced, windows, DLQ
    SINK = "sink"  # sinks: topic -> ClickHouse, dead letters
    DETECTION = "detection"  # stream_jobs.detection
    ALERTS = "alerts"  # alerting.worker
    CONTROL = "control"  # one-off publishers of control commands, policies and alerts (CLIs)
    DASHBOARD = "dashboard"  # dashboard publisher and metrics probes
    SDK = "sdk"  # producers.producer.UsageProducer
    GUARD = "guard"  # producers.guard: follows the control topic
    BENCH = "bench"  # benchmarks and their baselines
    ADMIN = "admin"  # topic creation, listing, readiness probes
    READER = "reader"  # short-lived readers of offsets, watermarks or a whole topic; never subscribe


# Keys whose values are secrets (never printed; :func:`redacted` masks them).
SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                         "sasl.oauthbearer.client.secret", "ssl.truststore.password"})

# Every producer: acks=all, ordered per partition, no duplicates from librdkafka's own retries (idempotence implies
# max.in.flight<=5 and retries inside message.timeout.ms). acks is spelled out so nobody "tunes" it away.
_PRODUCER: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
# Every consumer: offsets are committed by the code (after the work is safe), never by a timer.
_CONSUMER: dict[str, Any] = {"enable.auto.commit": False}

_PROFILES: dict[tuple[Kind, Role], dict[str, Any]] = {
    (Kind.PRODUCER, Role.HOTPATH): {
        "client.id": "finops-usage-hotpath",
        "compression.type": "lz4",
        # Delivery reports only for failures: success is confirmed by the flush barrier before each commit, which
        # saves a Python callback per message (stream_jobs.hotpath.HotPath._flush).
        "delivery.report.only.error": True,
        # Larger batches cost less CPU per message; the barrier's flush ignores linger, so commits do not wait it.
        "linger.ms": 50,
        "batch.num.messages": 10_000,
        # Bounded queue (RSS): when full, the hot path serves delivery reports before reading more input.
        "queue.buffering.max.kbytes": 64 * 1024,
        "queue.buffering.max.messages": 200_000,
        # An output not delivered in 2 minutes fails the job (after committing what was safe): restart replays it.
        "message.timeout.ms": 120_000,
    },
    (Kind.CONSUMER, Role.HOTPATH): {
        "client.id": "finops-usage-hotpath",
        # Offsets are committed by the CommitTracker rule only.
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Bound the prefetch (RSS): 16 MB of fetched messages per consumer is ~60k events.
        "queued.max.messages.kbytes": 16 * 1024,
        "fetch.max.bytes": 16 * 1024 * 1024,
        "partition.assignment.strategy": "range",
    },
    (Kind.PRODUCER, Role.SINK): {"linger.ms": 5},  # dead letters
    (Kind.CONSUMER, Role.SINK): {
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # ~64 MB of prefetched messages at most per consumer; paused partitions are not fetched at all.
        "queued.max.messages.kbytes": 65536,
        "max.poll.interval.ms": 300000,
        "session.timeout.ms": 45000,
    },
    (Kind.PRODUCER, Role.DETECTION): {"linger.ms": 20, "compression.type": "lz4"},
    (Kind.CONSUMER, Role.DETECTION): {"auto.offset.reset": "earliest",
                                      "partition.assignment.strategy": "cooperative-sticky"},
    (Kind.PRODUCER, Role.ALERTS): {"linger.ms": 5},
    (Kind.CONSUMER, Role.ALERTS): {"auto.offset.reset": "earliest"},
    (Kind.PRODUCER, Role.SDK): {
        "compression.type": "lz4",
        "linger.ms": 20,
        # Bound librdkafka's memory: when full, produce() raises BufferError and the SDK spools instead (the RSS
        # bound of the whole process rests on this, since an outage otherwise grows this queue).
        "queue.buffering.max.kbytes": 32 * 1024,
        "queue.buffering.max.messages": 100_000,
        # A message librdkafka could not deliver in this time comes back as _MSG_TIMED_OUT and goes to the spool,
        # so a long outage moves data to disk instead of holding it in memory.
        "message.timeout.ms": 30_000,
        "socket.keepalive.enable": True,
        # Reconnect quickly once the broker is back (defaults back off up to 10 s).
        "reconnect.backoff.max.ms": 2000,
    },
    # A private, never-committed group that re-reads the compacted control state from the beginning.
    (Kind.CONSUMER, Role.GUARD): {"enable.partition.eof": True, "auto.offset.reset": "earliest"},
}


def client_config(
    connection: Connection,
    kind: Kind,
    role: Role,
    *,
    group_id: str | None = None,
    client_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration of a ``kind`` client working for ``role``.

    ``connection`` is the settings' Kafka section (bootstrap and SASL/SSL from
    :meth:`~finops.settings.KafkaSettings.client_config`) or a mapping built from it. Later layers win: connection,
    kind defaults, role profile, ``client.id``/``group.id``, ``overrides``. Contains secrets: never log it (use
    :func:`redacted`).
    """
    conf: dict[str, Any] = dict(connection if isinstance(connection, Mapping) else connection.client_config())
    if kind is Kind.PRODUCER:
        conf.update(_PRODUCER)
    elif kind is Kind.CONSUMER:
        conf.update(_CONSUMER)
    conf.setdefault("client.id", f"finops-{role.value}")
    conf.update(_PROFILES.get((kind, role), {}))
    if client_id is not None:
        conf["client.id"] = client_id
    if group_id is not None:
        conf["group.id"] = group_id
    conf.update(overrides or {})
    return conf


def redacted(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` with secret values masked (for logs and error messages)."""
    return {k: ("**********" if k in SECRET_KEYS and v is not None else v) for k, v in conf.items()}


#: How long a one-shot command waits for the broker's first answer (its metadata) before it reports the broker
#: unreachable: a reachable broker answers a metadata request in milliseconds.
CONNECT_TIMEOUT_S: Final = 10.0
#: How long a role (stream, detect, alerts, sink) started beside its broker waits for it before it gives up.
ROLE_BROKER_WAIT_S: Final = 30.0
#: A client repeats a librdkafka log line of one facility (a failed reconnect ...) at most once in this interval.
LOG_INTERVAL_S: Final = 30.0
#: The logger of librdkafka's lines for clients built without one of their own.
LIBRDKAFKA_LOGGER: Final = "finops.kafka.librdkafka"
# The format confluent-kafka's log callback passes to ``logger.log``: facility, client name, message.
_LOG_FORMAT: Final = "%s [%s] %s"
_MASK: Final = "**********"


class BrokerUnreachable(FinopsError):
    """The broker did not answer in time: the message names the bootstrap address and how to start one."""


def unreachable_message(bootstrap: str, what: str, err: object) -> str:
    """The one wording of "the broker is not there": ``what`` failed at ``bootstrap`` (reason ``err``), and what to
    do about it."""
    return (f"cannot {what} the broker at {bootstrap} ({err}): is it running? Start the local one with "
            "`finops stack up` (or `make stack-up`), or set FINOPS_KAFKA_BOOTSTRAP to yours")


def require_broker(client: Any, connection: Connection, *, what: str = "reach", topic: str | None = None,
                   timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """The cluster metadata (of ``topic``, or all) from the broker of ``client`` (built from ``connection``), or
    :class:`BrokerUnreachable` after ``timeout`` seconds without an answer. What a one-shot command calls before its
    work, so it fails at once."""
    try:
        return client.list_topics(topic, timeout=timeout)
    except KafkaException as err:
        raise BrokerUnreachable(unreachable_message(_bootstrap(connection), what, err)) from err


def wait_for_broker(client: Any, connection: Connection, *, what: str = "reach", topic: str | None = None,
                    timeout: float = ROLE_BROKER_WAIT_S, interval: float = CONNECT_TIMEOUT_S,
                    clock: Callable[[], float] = time.monotonic) -> Any:
    """:func:`require_broker` for a role starting beside its broker: asks every ``interval`` seconds until
    ``timeout``, one line per unanswered ask saying what it waits for; then :class:`BrokerUnreachable`."""
    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        try:
            return require_broker(client, connection, what=what, topic=topic, timeout=max(0.1, min(interval, left)))
        except BrokerUnreachable:
            left = deadline - clock()
            if left < min(1.0, interval):  # no time left for another ask worth the name
                raise
            log.warning("waiting for the Kafka broker at %s to answer (%.0fs left); start it with `finops stack up` "
                        "or set FINOPS_KAFKA_BOOTSTRAP", _bootstrap(connection), left)


def _bootstrap(connection: Connection) -> str:
    conf = connection if isinstance(connection, Mapping) else connection.client_config()
    return str(conf.get("bootstrap.servers", "?"))


class LogThrottle(logging.Filter):
    """Passes librdkafka's log lines (confluent-kafka's ``"%s [%s] %s"`` records) at most once per ``interval_s``
    per client and facility; the ones in between go out at DEBUG when the logger shows DEBUG, else are dropped, and
    the next line that passes says how many were held back. Masks registered secrets in every such line. Other
    records pass untouched. Thread-safe (librdkafka lines are served by whichever thread polls the client)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (client, facility) -> (passed at, held back)
        self._secrets: set[str] = set()

    def add_secrets(self, values: Iterable[Any]) -> None:
        """Mask these values (a client's SASL password, key ...) wherever a librdkafka line quotes them."""
        with self._lock:
            self._secrets.update(str(v) for v in values if v)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != _LOG_FORMAT or not isinstance(args, tuple) or len(args) != 3:
            return True
        fac, name, text = (str(a) for a in args)
        now = self.clock()
        with self._lock:
            for secret in self._secrets:
                text = text.replace(secret, _MASK)
            key = (name, fac)
            last = self._last.get(key)
            if last is None or now - last[0] >= self.interval_s:
                if len(self._last) > 1024:  # clients come and go: forget the ones quiet for an interval
                    self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval_s}
                self._last[key] = (now, 0)
                held = last[1] if last is not None else 0
                if held:
                    text += f" ({held} more like it in the last {self.interval_s:.0f}s, at DEBUG)"
                record.args = (fac, name, text)
                return True
            self._last[key] = (last[0], last[1] + 1)
        record.args = (fac, name, text)
        if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return True
        return False


_THROTTLE = LogThrottle()


def _with_logger(conf: dict[str, Any], logger: logging.Logger | None) -> dict[str, Any]:
    """``conf`` with its ``logger`` (the caller's, the overrides', else :data:`LIBRDKAFKA_LOGGER`) throttled."""
    chosen = logger or conf.get("logger") or logging.getLogger(LIBRDKAFKA_LOGGER)
    if isinstance(chosen, logging.Logger) and _THROTTLE not in chosen.filters:
        chosen.addFilter(_THROTTLE)
    _THROTTLE.add_secrets(v for k, v in conf.items() if k in SECRET_KEYS)
    return {**conf, "logger": chosen}


def build_producer(
    connection: Connection,
    role: Role,
    *,
    client_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    logger: logging.Logger | None = None,
) -> Producer:
    """A confluent-kafka ``Producer`` for ``role`` (config: :func:`client_config`); does not contact the broker."""
    conf = client_config(connection, Kind.PRODUCER, role, client_id=client_id, overrides=overrides)
    log.debug("kafka producer for %s: %s", role.value, redacted(conf))
    return Producer(_with_logger(conf, logger))


def build_consumer(
    connection: Connection,
    role: Role,
    group_id: str,
    *,
    client_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    logger: logging.Logger | None = None,
) -> Consumer:
    """A confluent-kafka ``Consumer`` of ``group_id`` for ``role`` (config: :func:`client_config`); not subscribed."""
    conf = client_config(connection, Kind.CONSUMER, role, group_id=group_id, client_id=client_id,
                         overrides=overrides)
    log.debug("kafka consumer for %s: %s", role.value, redacted(conf))
    return Consumer(_with_logger(conf, logger))


def build_admin(
    connection: Connection,
    role: Role = Role.ADMIN,
    *,
    overrides: Mapping[str, Any] | None = None,
    logger: logging.Logger | None = None,
) -> AdminClient:
    """A confluent-kafka ``AdminClient`` (config: :func:`client_config`); does not contact the broker."""
    conf = client_config(connection, Kind.ADMIN, role, overrides=overrides)
    log.debug("kafka admin client for %s: %s", role.value, redacted(conf))
    return AdminClient(_with_logger(conf, logger))
