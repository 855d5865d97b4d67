"""Publish Alert records from a command and wait for the broker: the one way a CLI raises an alert.

``finops reconcile`` (ledger drift), ``finops bills reconcile`` (bill drift), ``finops agents check`` (unapproved
agents) and ``finops pricebook suggest --alert`` (price drift) publish to ``finops.alerts.v1``, where the alert
worker routes them like any detector's. Single-object Avro, key = ``dedup_key``; an alert is published only when
the broker acknowledged it, otherwise the command fails and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finops.kafka.clients import Connection, Role, build_producer, require_broker
from schemas.errors import FinopsError
from schemas.wire import AvroCodec

__all__ = ["publish_alerts"]


def publish_alerts(connection: Connection, topic: str, alerts: Sequence[Mapping[str, Any]], *,
                   timeout: float = 15.0) -> None:
    """Publish ``alerts`` (Alert dicts) to ``topic`` and wait for every acknowledgement.

    Blocks up to ``timeout`` seconds; a broker that does not answer within
    :data:`~finops.kafka.clients.CONNECT_TIMEOUT_S` raises :class:`~finops.kafka.clients.BrokerUnreachable`. Raises
    FinopsError naming the topic when the broker does not acknowledge them all in time or refuses one.
    """
    codec = AvroCodec()
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = build_producer(connection, Role.CONTROL)
    require_broker(producer, connection, what=f"publish to {topic} on")
    for alert in alerts:
        producer.produce(topic, key=alert["dedup_key"].encode(), value=codec.encode(alert, "Alert"),
                         on_delivery=delivered)
    if producer.flush(timeout) or failures:
        raise FinopsError(f"{len(alerts)} alert(s) not acknowledged by {topic}: {'; '.join(failures) or 'timeout'}")
