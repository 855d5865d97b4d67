"""Access to the Avro schema files in ``schemas/avro/`` (one ``<RecordName>.avsc`` per record).

The .avsc files are the contract; the pydantic models in :mod:`schemas.models` mirror them and a unit test walks
both to keep them equal.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from schemas.errors import UnknownSchemaError

__all__ = ["AVRO_DIR", "NAMESPACE", "SCHEMA_NAMES", "load_schema", "schema_path"]

NAMESPACE = "io.agentfinops.v1"
AVRO_DIR = Path(__file__).resolve().parent / "avro"

#: Every top-level record we publish, in dependency-free order (nested records such as Threshold live inside).
SCHEMA_NAMES: tuple[str, ...] = (
    "UsageEvent",
    "PricedUsageEvent",
    "SpendAggregate",
    "Alert",
    "ControlCommand",
    "BudgetPolicy",
)


#: The counted fields of a usage event (tokens by type, web-search calls, requests), in schema order: the one list
#: that adapters, pricing and validation share (token semantics: schemas/avro/UsageEvent.avsc).
COUNTED_FIELDS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "cache_audio_read_tokens",
    "image_tokens",
    "web_search_calls",
    "requests",
)

def schema_path(name: str) -> Path:
    """Return the path of the .avsc file of record ``name`` (simple or ``io.agentfinops.v1.``-qualified).

    Raises :class:`UnknownSchemaError` when ``name`` is not one of :data:`SCHEMA_NAMES`.
    """
    simple = name.removeprefix(NAMESPACE + ".")
    if simple not in SCHEMA_NAMES:
        raise UnknownSchemaError(f"schema name {name!r} is not one of ours; use one of {', '.join(SCHEMA_NAMES)}")
    return AVRO_DIR / f"{simple}.avsc"


@cache
def _schema_text(name: str) -> str:
    return schema_path(name).read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """Return the Avro schema of record ``name`` as a fresh JSON dict (callers may mutate it freely).

    Raises :class:`UnknownSchemaError` for a name that is not ours.
    """
    loaded: dict[str, Any] = json.loads(_schema_text(name.removeprefix(NAMESPACE + ".")))
    return loaded
