"""agent-finops contracts: Avro schemas, the pydantic models that mirror them, wire formats and the error root.

Cheap to import: the errors and :func:`load_schema` load eagerly; models (pydantic) and the codec (fastavro) load on
first attribute access, so ``import schemas.errors`` from a CLI does not pay for them.

Public API::

    schemas.load_schema(name) -> dict                 schemas.SCHEMA_NAMES, schemas.NAMESPACE
    schemas.models.UsageEvent, PricedUsageEvent, SpendAggregate, Alert, ControlCommand, BudgetPolicy, Threshold
    schemas.models.check_usage_dict(d, now)           hot-path validation without a model
    schemas.models.validate_event / parse_usage_event / sign / verify / compute_aggregate_id
    schemas.wire.AvroCodec                            single-object + Confluent framing
    schemas.errors.FinopsError and subclasses
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from schemas.errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    FieldProblem,
    FinopsError,
    UnknownSchemaError,
    ValidationFailed,
)
from schemas.loader import NAMESPACE, SCHEMA_NAMES, load_schema, schema_path

if TYPE_CHECKING:
    from schemas.models import (
        Alert,
        BudgetPolicy,
        ControlCommand,
        PricedUsageEvent,
        SpendAggregate,
        Threshold,
        UsageEvent,
        check_usage_dict,
        parse_usage_event,
        validate_event,
    )
    from schemas.wire import AvroCodec

_LAZY = {
    "Alert": "schemas.models",
    "BudgetPolicy": "schemas.models",
    "ControlCommand": "schemas.models",
    "PricedUsageEvent": "schemas.models",
    "SpendAggregate": "schemas.models",
    "Threshold": "schemas.models",
    "UsageEvent": "schemas.models",
    "check_usage_dict": "schemas.models",
    "parse_usage_event": "schemas.models",
    "validate_event": "schemas.models",
    "AvroCodec": "schemas.wire",
}

__all__ = [
    "NAMESPACE",
    "SCHEMA_NAMES",
    "Alert",
    "AvroCodec",
    "BudgetPolicy",
    "ConfigError",
    "ControlCommand",
    "DecodeError",
    "EncodeError",
    "FieldProblem",
    "FinopsError",
    "PricedUsageEvent",
    "SpendAggregate",
    "Threshold",
    "UnknownSchemaError",
    "UsageEvent",
    "ValidationFailed",
    "check_usage_dict",
    "load_schema",
    "parse_usage_event",
    "schema_path",
    "validate_event",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
