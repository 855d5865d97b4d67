"""Agent-side SDK: build, validate and publish usage events; the enforcement guard (the provider adapters it
uses are shared with the price command, so they live in the ground: ``finops.adapters``).

Kept import-light on purpose: importing ``producers`` must not pull in Kafka or Avro. Import submodules
(``producers.producer``, ...) directly.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.producer import Delivery, DeliveryFailed, ProducerStats, UsageProducer
    from producers.spool import Spool, SpoolFull
    from producers.track import Track, TrackedCall

__all__ = ["Delivery", "DeliveryFailed", "ProducerStats", "Spool", "SpoolFull", "Track", "TrackedCall",
           "UsageProducer"]

# Lazy exports (PEP 562): `from producers import UsageProducer` works, yet `import producers` stays light.
_LAZY = {
    "UsageProducer": "producers.producer", "Delivery": "producers.producer", "DeliveryFailed": "producers.producer",
    "ProducerStats": "producers.producer", "Spool": "producers.spool", "SpoolFull": "producers.spool",
    "Track": "producers.track", "TrackedCall": "producers.track",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'producers' has no attribute {name!r}")
    return getattr(import_module(module), name)
