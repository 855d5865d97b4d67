"""Health and metrics of the pipeline itself, in the Prometheus text exposition format (version 0.0.4).

Role: served unauthenticated at ``/metrics`` (scrapers carry no bearer token): consumer lag per group and
partition and DLQ depth (:func:`collect_kafka_metrics`), ledger throughput and sink latency
(:func:`collect_clickhouse_metrics`), rendered by :func:`render_prometheus`.

Guarantee: it holds no team, agent or cost figures, only the pipeline's own vital signs; a source that cannot be
reached is reported as ``finops_up{component=...} 0`` and its metrics left out, while the endpoint itself answers
(a failed scrape would hide which part is down).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from finops.clock import as_utc
from finops.kafka.clients import Role, build_consumer

log = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "MetricSample",
    "collect_clickhouse_metrics",
    "collect_kafka_metrics",
    "render_prometheus",
]

# Metric names declared once (arroyo's metric_defs habit): name -> (type, help).
METRICS: Mapping[str, tuple[str, str]] = {
    "finops_up": ("gauge", "1 when the component answered this scrape, 0 when it did not"),
    "finops_consumer_lag_messages": (
        "gauge", "High watermark minus the group's committed offset, per consumer group, topic and partition"),
    "finops_dlq_messages": ("gauge", "Messages retained in the dead-letter topic, per partition"),
    "finops_events_per_second": ("gauge", "Ledger rows the sink wrote per second over the last 60 seconds"),
    "finops_ledger_rows_last_minute": ("gauge", "Ledger rows the sink wrote in the last 60 seconds"),
    "finops_sink_last_write_age_seconds": ("gauge", "Seconds since the sink last wrote a ledger row"),
    "finops_sink_latency_seconds": (
        "gauge", "Event time to stored (ingested_at - occurred_at) over the last 5 minutes, by quantile"),
    "finops_unpriced_events_last_hour": ("gauge", "Ledger rows stored as unpriced in the last hour"),
    "finops_scrape_duration_seconds": ("gauge", "Seconds this scrape took to collect"),
}


@dataclass(frozen=True)
class MetricSample:
    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render_prometheus(samples: Iterable[MetricSample]) -> str:
    """Samples as Prometheus text: one ``# HELP`` / ``# TYPE`` per metric, samples grouped under it (pure)."""
    grouped: dict[str, list[MetricSample]] = {}
    for sample in samples:
        if sample.name not in METRICS:
            raise KeyError(f"metric {sample.name!r} is not declared in METRICS")
        grouped.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name in METRICS:
        if name not in grouped:
            continue
        kind, text = METRICS[name]
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in grouped[name]:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{name}{{{labels}}} {_number(sample.value)}" if labels else f"{name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


class Runner(Protocol):
    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


_LEDGER_STATS = (
    "SELECT countIf(ingested_at >= {now:DateTime64(6, 'UTC')} - INTERVAL 60 SECOND) AS last_minute, "
    "max(ingested_at) AS last_write, "
    "quantilesExactIf(0.5, 0.99)(toFloat64(dateDiff('microsecond', occurred_at, ingested_at)) / 1e6, "
    "ingested_at >= {now:DateTime64(6, 'UTC')} - INTERVAL 300 SECOND) AS latency, "
    "countIf(pricing_status = 'unpriced' AND ingested_at >= {now:DateTime64(6, 'UTC')} - INTERVAL 3600 SECOND) "
    "AS unpriced_last_hour "
    "FROM usage_ledger WHERE ingested_at >= {now:DateTime64(6, 'UTC')} - INTERVAL 1 DAY"
)


def collect_clickhouse_metrics(db: Runner, now: datetime) -> list[MetricSample]:
    """Ledger throughput and sink latency. Never raises: a failure is ``finops_up 0``.

    Throughput: ledger rows ingested in the last minute / 60 (by ``ingested_at``, what the sink wrote). Latency: now
    - max(ingested_at) (how long since the sink last wrote) and the p50 / p99 of ``ingested_at - occurred_at`` over
    the last five minutes (event time to stored).

    Reads only the last day of ``usage_ledger`` by ``ingested_at`` (the sink's write time; no FINAL: a duplicate
    written twice was written twice)."""
    now_utc = as_utc(now).replace(tzinfo=None)  # the query's parameter and last_write are naive UTC
    try:
        row = db.select(_LEDGER_STATS, {"now": now_utc})[0]
    except Exception as err:  # noqa: BLE001 - the metrics endpoint reports, it does not fail
        log.warning("metrics: ClickHouse did not answer: %s", err)
        return [MetricSample("finops_up", 0, {"component": "clickhouse"})]
    samples = [
        MetricSample("finops_up", 1, {"component": "clickhouse"}),
        MetricSample("finops_ledger_rows_last_minute", float(row["last_minute"])),
        MetricSample("finops_events_per_second", float(row["last_minute"]) / 60.0),
        MetricSample("finops_unpriced_events_last_hour", float(row["unpriced_last_hour"])),
    ]
    last_write = row["last_write"]
    if row["last_minute"] or (last_write is not None and last_write.year > 1970):
        age = (now_utc - as_utc(last_write).replace(tzinfo=None)).total_seconds()
        samples.append(MetricSample("finops_sink_last_write_age_seconds", max(age, 0.0)))
    latency = row["latency"] or []
    if latency and not any(math.isnan(v) for v in latency):
        samples.append(MetricSample("finops_sink_latency_seconds", float(latency[0]), {"quantile": "0.5"}))
        samples.append(MetricSample("finops_sink_latency_seconds", float(latency[1]), {"quantile": "0.99"}))
    return samples


def collect_kafka_metrics(
    kafka_config: Mapping[str, Any], groups: Mapping[str, Sequence[str]], dlq_topic: str, timeout: float = 5.0,
) -> list[MetricSample]:
    """Consumer lag of ``groups`` (group id -> topics it reads) and DLQ depth. Never raises.

    Blocks up to about ``timeout`` seconds per broker call. Opens one short-lived consumer per group (without
    subscribing, so it never joins or rebalances the group) and closes it.

    Lag is the group's committed offsets (``Consumer.committed``, which reads offsets without joining the group)
    against each partition's high watermark; DLQ depth is high - low watermark of ``agent.usage.dlq.v1`` per
    partition (what is still retained).
    """
    samples: list[MetricSample] = []
    try:
        probe = build_consumer(kafka_config, Role.DASHBOARD, "finops-metrics-probe")
        try:
            metadata = probe.list_topics(timeout=timeout)
            dlq = metadata.topics.get(dlq_topic)
            if dlq is not None and dlq.error is None:
                for partition in sorted(dlq.partitions):
                    low, high = probe.get_watermark_offsets(TopicPartition(dlq_topic, partition), timeout=timeout)
                    samples.append(MetricSample("finops_dlq_messages", float(max(high - low, 0)),
                                                {"topic": dlq_topic, "partition": str(partition)}))
            for group, group_topics in groups.items():
                partitions = [
                    TopicPartition(topic, p)
                    for topic in group_topics
                    if topic in metadata.topics and metadata.topics[topic].error is None
                    for p in sorted(metadata.topics[topic].partitions)
                ]
                if not partitions:
                    continue
                member = build_consumer(kafka_config, Role.DASHBOARD, group)
                try:
                    committed = member.committed(partitions, timeout=timeout)
                    for tp in committed:
                        low, high = member.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                                 timeout=timeout)
                        # No commit yet (negative offset): everything retained is still to be read.
                        position = tp.offset if tp.offset >= 0 else low
                        samples.append(MetricSample(
                            "finops_consumer_lag_messages", float(max(high - position, 0)),
                            {"group": group, "topic": tp.topic, "partition": str(tp.partition)}))
                finally:
                    member.close()
        finally:
            probe.close()
    except KafkaException as err:
        log.warning("metrics: Kafka did not answer: %s", err)
        return [MetricSample("finops_up", 0, {"component": "kafka"})]
    return [MetricSample("finops_up", 1, {"component": "kafka"}), *samples]
