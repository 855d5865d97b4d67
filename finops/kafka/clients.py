"""The one place confluent-kafka clients are configured and constructed (DESIGN §5).

:func:`client_config` merges the connection (bootstrap and security, from :class:`~finops.settings.KafkaSettings`
or a mapping that came from it), the defaults of the client kind, the profile of the role and the caller's
overrides. :func:`build_producer`, :func:`build_consumer` and :func:`build_admin` are the only constructors of
``Producer``, ``Consumer`` and ``AdminClient`` in the project (``tests/unit/test_kafka_clients.py`` checks it).
Configs contain secrets: log them through :func:`redacted` only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

__all__ = [
    "Connection",
    "KafkaConnection",
    "Kind",
    "Role",
    "SECRET_KEYS",
    "build_admin",
    "build_consumer",
    "build_producer",
    "client_config",
    "redacted",
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
    return Producer(conf, logger=logger) if logger is not None else Producer(conf)


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
    return Consumer(conf, logger=logger) if logger is not None else Consumer(conf)


def build_admin(
    connection: Connection,
    role: Role = Role.ADMIN,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> AdminClient:
    """A confluent-kafka ``AdminClient`` (config: :func:`client_config`); does not contact the broker."""
    conf = client_config(connection, Kind.ADMIN, role, overrides=overrides)
    log.debug("kafka admin client for %s: %s", role.value, redacted(conf))
    return AdminClient(conf)
