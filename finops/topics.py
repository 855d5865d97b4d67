"""Every Kafka topic of agent-finops, declared once: name, partitions, retention, cleanup policy.

``finops stack up`` and every worker call :func:`ensure_topics` at start; it creates what is missing and leaves
existing topics alone (Kafka topic creation is idempotent only if "already exists" is treated as success).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from finops.kafka.clients import CONNECT_TIMEOUT_S, build_admin, wait_for_broker
from schemas.errors import FinopsError

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic declaration. ``partitions=None`` means "the configured usage partition count"."""

    base_name: str
    doc: str
    partitions: int | None = None
    retention_ms: int | None = 7 * DAY_MS
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        conf = {"cleanup.policy": self.cleanup_policy, **self.extra}
        if self.retention_ms is not None:
            conf["retention.ms"] = str(self.retention_ms)
        else:
            conf["retention.ms"] = "-1"
        return conf


USAGE = TopicSpec("agent.usage.v1", "raw usage events from agents (UsageEvent, key agent_id)")
PRICED = TopicSpec("agent.usage.priced.v1", "priced usage events (PricedUsageEvent, key agent_id)")
DLQ = TopicSpec("agent.usage.dlq.v1", "bad input with provenance headers", retention_ms=30 * DAY_MS)
SPEND = TopicSpec("finops.spend.1m.v1", "closed 1-minute spend windows (SpendAggregate)")
ALERTS = TopicSpec("finops.alerts.v1", "alert events (Alert, key dedup_key)", partitions=3, retention_ms=30 * DAY_MS)
POLICIES = TopicSpec(
    "finops.policies.v1",
    "budget policies as code (BudgetPolicy, key policy_id, tombstone deletes)",
    partitions=1,
    retention_ms=None,
    cleanup_policy="compact",
    extra={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
)
CONTROL = TopicSpec(
    "agent.control.v1",
    "enforcement commands agents obey (ControlCommand, key scope_type:scope_value)",
    partitions=1,
    retention_ms=None,
    cleanup_policy="compact",
    extra={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
)

WASTE = TopicSpec(
    "finops.waste.v1", "waste signals (Alert records of kind waste, key signal_id)", partitions=3,
    retention_ms=30 * DAY_MS,
)
DETECTION_STATE = TopicSpec(
    "finops.detection.state.v1",
    "detection budget counters (JSON, key counter key; compacted, tombstone deletes)",
    partitions=1,
    retention_ms=None,
    cleanup_policy="compact",
    extra={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
)

ALL_TOPICS: tuple[TopicSpec, ...] = (USAGE, PRICED, DLQ, SPEND, ALERTS, POLICIES, CONTROL, WASTE, DETECTION_STATE)


def sink_group(kind: str) -> str:
    """The consumer group of sink ``kind`` (``finops-sink-<kind>``): each sink table is its own group."""
    return f"finops-sink-{kind}"


# Consumer groups that other parts watch (the dashboard's lag panel, detection waiting for the ledger sink) are
# declared here beside the topics, so a rename cannot leave a reader watching a group nobody consumes with.
LEDGER_SINK_GROUP = sink_group("ledger")
SPEND_SINK_GROUP = sink_group("spend")


@dataclass(frozen=True)
class TopicNames:
    """Concrete topic names under a prefix (``FINOPS_KAFKA_TOPIC_PREFIX``; tests use one per test)."""

    prefix: str = ""

    def name(self, spec: TopicSpec) -> str:
        return f"{self.prefix}{spec.base_name}"

    @property
    def usage(self) -> str:
        return self.name(USAGE)

    @property
    def priced(self) -> str:
        return self.name(PRICED)

    @property
    def dlq(self) -> str:
        return self.name(DLQ)

    @property
    def spend(self) -> str:
        return self.name(SPEND)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def policies(self) -> str:
        return self.name(POLICIES)

    @property
    def control(self) -> str:
        return self.name(CONTROL)

    @property
    def waste(self) -> str:
        return self.name(WASTE)

    @property
    def detection_state(self) -> str:
        return self.name(DETECTION_STATE)


def ensure_topics(
    client_config: dict[str, Any],
    *,
    prefix: str = "",
    usage_partitions: int = 6,
    replication_factor: int = 1,
    timeout: float = 30.0,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> list[str]:
    """Create the declared topics that do not exist yet; return the names created.

    Blocks until the broker answers or ``timeout`` passes; a broker that does not answer within ``connect_timeout``
    (one-shot commands: :data:`~finops.kafka.clients.CONNECT_TIMEOUT_S`; a role starting beside its broker waits
    :data:`~finops.kafka.clients.ROLE_BROKER_WAIT_S`, a line per ask) raises
    :class:`~finops.kafka.clients.BrokerUnreachable`. Raises FinopsError naming the topic and the broker's
    reason when a creation fails for any reason but "already exists".
    """

    admin = build_admin(client_config)
    existing = set(wait_for_broker(admin, client_config, what="list the topics of", timeout=connect_timeout).topics)
    names = TopicNames(prefix)
    wanted = [
        NewTopic(
            names.name(spec),
            num_partitions=spec.partitions or usage_partitions,
            replication_factor=replication_factor,
            config=spec.config(),
        )
        for spec in ALL_TOPICS
        if names.name(spec) not in existing
    ]
    if not wanted:
        return []
    created: list[str] = []
    for topic, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result()
            created.append(topic)
        except KafkaException as err:
            if err.args and err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by another worker: that is success
            raise FinopsError(f"cannot create topic {topic}: {err}") from err
    if created:
        log.info("created topics: %s", ", ".join(sorted(created)))
    return created
