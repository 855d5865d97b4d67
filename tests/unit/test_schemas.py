"""The .avsc files and the pydantic models are one contract: same fields, order, types, nullability, defaults.
Every example validates and round-trips through Avro bytes; old events stay readable."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pydantic
import pytest

import schemas
from schemas.errors import UnknownSchemaError
from schemas.loader import AVRO_DIR, NAMESPACE, SCHEMA_NAMES, load_schema
from schemas.models import (
    EXAMPLES_DIR,
    MODELS,
    AvroRecord,
    PricedUsageEvent,
    UsageEvent,
    avro_schema_of,
    example_record_name,
    load_example,
)
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.glob("*.json"))


def _without_docs(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_docs(item) for key, item in value.items() if key != "doc"}
    if isinstance(value, list):
        return [_without_docs(item) for item in value]
    return value


def _walk_fields(avsc: list[dict[str, Any]], derived: list[dict[str, Any]], path: str) -> list[str]:
    """Differences between two field lists, walking nested records, as readable lines."""
    diffs: list[str] = []
    avsc_names = [field["name"] for field in avsc]
    derived_names = [field["name"] for field in derived]
    if avsc_names != derived_names:
        diffs.append(f"{path}: field names/order differ: avsc {avsc_names} vs model {derived_names}")
        return diffs
    for a_field, m_field in zip(avsc, derived, strict=True):
        where = f"{path}.{a_field['name']}"
        a_type, m_type = a_field["type"], m_field["type"]
        a_items = a_type.get("items") if isinstance(a_type, dict) and a_type.get("type") == "array" else None
        m_items = m_type.get("items") if isinstance(m_type, dict) and m_type.get("type") == "array" else None
        if isinstance(a_items, dict) and a_items.get("type") == "record" and isinstance(m_items, dict):
            if a_items["name"] != m_items["name"]:
                diffs.append(f"{where}: nested record name {a_items['name']} vs {m_items['name']}")
            diffs.extend(_walk_fields(a_items["fields"], m_items["fields"], f"{where}[]"))
        elif _without_docs(a_type) != m_type:
            diffs.append(f"{where}: type {a_type} vs model {m_type}")
        a_nullable = isinstance(a_type, list) and "null" in a_type
        m_nullable = isinstance(m_type, list) and "null" in m_type
        if a_nullable != m_nullable:
            diffs.append(f"{where}: nullability avsc={a_nullable} model={m_nullable}")
        if ("default" in a_field) != ("default" in m_field):
            diffs.append(f"{where}: default present avsc={'default' in a_field} model={'default' in m_field}")
        elif "default" in a_field and a_field["default"] != m_field["default"]:
            diffs.append(f"{where}: default {a_field['default']!r} vs model {m_field['default']!r}")
    return diffs


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_model_mirrors_its_avsc(name: str) -> None:
    avsc = load_schema(name)
    derived = avro_schema_of(MODELS[name])
    assert avsc["name"] == derived["name"] == name
    assert avsc["namespace"] == NAMESPACE
    assert _walk_fields(avsc["fields"], derived["fields"], name) == []


def test_field_walk_detects_a_drift() -> None:
    # The comparison itself must be able to fail: a changed default and a dropped null are both reported.
    avsc = load_schema("UsageEvent")
    derived = avro_schema_of(UsageEvent)
    tampered = copy.deepcopy(avsc["fields"])
    by_name = {field["name"]: field for field in tampered}
    by_name["attempt"]["default"] = 2
    by_name["task_id"]["type"] = "string"
    diffs = _walk_fields(tampered, derived["fields"], "UsageEvent")
    assert any("attempt: default 2" in line for line in diffs)
    assert any("task_id: nullability" in line for line in diffs)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_field_is_documented_and_schema_parses(name: str) -> None:
    schema = load_schema(name)
    fastavro.parse_schema(schema)
    undocumented = [field["name"] for field in schema["fields"] if not str(field.get("doc", "")).strip()]
    assert undocumented == []
    assert (AVRO_DIR / f"{name}.avsc").is_file()


def test_token_semantics_are_documented_on_the_schema() -> None:
    docs = {field["name"]: field["doc"] for field in load_schema("UsageEvent")["fields"]}
    assert "ALL input" in docs["input_tokens"] and "cache" in docs["input_tokens"]
    assert "ALL output" in docs["output_tokens"] and "reasoning" in docs["output_tokens"]
    for part in ("cache_read_tokens", "cache_write_tokens", "input_audio_tokens", "image_tokens"):
        assert "PART of input_tokens" in docs[part], part
    assert "PART of output_tokens" in docs["reasoning_tokens"]
    assert "part of cache_write_tokens" in docs["cache_write_1h_tokens"]


def test_priced_event_carries_every_usage_field_unchanged() -> None:
    usage = load_schema("UsageEvent")["fields"]
    priced = load_schema("PricedUsageEvent")["fields"]
    assert priced[: len(usage)] == usage
    assert issubclass(PricedUsageEvent, UsageEvent)


def test_load_schema_returns_fresh_copies_and_names_unknown_schemas() -> None:
    first = load_schema("Alert")
    first["fields"].clear()
    assert load_schema("io.agentfinops.v1.Alert")["fields"]
    with pytest.raises(UnknownSchemaError, match="'Nope'"):
        load_schema("Nope")


def test_package_exports_resolve() -> None:
    assert schemas.UsageEvent is UsageEvent
    assert schemas.AvroCodec is AvroCodec
    assert callable(schemas.check_usage_dict)
    with pytest.raises(AttributeError):
        schemas.no_such_name  # noqa: B018


def test_every_record_has_an_example() -> None:
    covered = {example_record_name(Path(name)) for name in EXAMPLES}
    assert covered == set(SCHEMA_NAMES)
    assert "usage_event_v0.json" in EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_validates_and_round_trips_through_avro_bytes(example: str) -> None:
    record = load_example(example)
    codec = AvroCodec()
    data = codec.encode(record.to_avro_dict(), record.AVRO_NAME)
    name, decoded = codec.decode(data)
    assert name == record.AVRO_NAME
    again = MODELS[name].from_avro_dict(decoded)
    assert again == record
    # JSON form is stable too: decimals as strings, never floats.
    dumped = json.loads(again.model_dump_json())
    assert not any(isinstance(value, float) for value in dumped.values())


def test_round_trip_keeps_money_exact() -> None:
    record = load_example("priced_usage_event.json")
    assert isinstance(record, PricedUsageEvent)
    codec = AvroCodec()
    _, decoded = codec.decode(codec.encode(record.to_avro_dict(), "PricedUsageEvent"))
    assert decoded["cost_usd"] == Decimal("0.02842")
    assert isinstance(decoded["cost_usd"], Decimal)
    assert decoded["cost_delta_usd"] == record.reported_cost - record.cost_usd  # type: ignore[operator]


def _v0_schema() -> dict[str, Any]:
    """The writer schema of an old producer: today's UsageEvent without the fields the v0 example lacks."""
    present = set(json.loads((EXAMPLES_DIR / "usage_event_v0.json").read_text()))
    schema = load_schema("UsageEvent")
    schema["fields"] = [field for field in schema["fields"] if field["name"] in present]
    return schema


def test_old_v0_event_bytes_decode_with_the_current_reader_schema() -> None:
    v0_schema = _v0_schema()
    assert len(v0_schema["fields"]) < len(load_schema("UsageEvent")["fields"])
    old = AvroCodec({"UsageEvent": v0_schema})
    v0_record = json.loads((EXAMPLES_DIR / "usage_event_v0.json").read_text())
    v0_record["occurred_at"] = load_example("usage_event_v0.json").occurred_at  # type: ignore[attr-defined]
    old_bytes = old.encode(v0_record, "UsageEvent")

    current = AvroCodec()
    current.register_writer_schema(v0_schema)
    name, decoded = current.decode(old_bytes)
    assert name == "UsageEvent"
    assert decoded["attempt"] == 1 and decoded["requests"] == 1 and decoded["cache_read_tokens"] == 0
    assert decoded["reported_cost"] is None and decoded["schema_version"] == 1
    assert UsageEvent.from_avro_dict(decoded) == load_example("usage_event_v0.json")


def test_new_field_with_default_reads_old_bytes() -> None:
    # Backward compatibility as a rule: adding a field with a default must keep today's bytes readable.
    evolved = load_schema("UsageEvent")
    evolved["fields"].append({"name": "carbon_grams", "type": ["null", "double"], "default": None, "doc": "test"})
    today = AvroCodec()
    record = load_example("usage_event.json").to_avro_dict()
    old_bytes = today.encode(record, "UsageEvent")

    tomorrow = AvroCodec({"UsageEvent": evolved})
    tomorrow.register_writer_schema(load_schema("UsageEvent"))
    name, decoded = tomorrow.decode(old_bytes)
    assert name == "UsageEvent"
    assert decoded["carbon_grams"] is None
    assert {key: value for key, value in decoded.items() if key != "carbon_grams"} == record


def test_models_are_immutable_and_refuse_unknown_fields() -> None:
    record = load_example("usage_event.json")
    assert isinstance(record, UsageEvent)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        setattr(record, "team", "other")  # noqa: B010 - assignment must be refused at run time
    data = record.to_avro_dict()
    data["surprise"] = 1
    with pytest.raises(schemas.ValidationFailed, match="surprise"):
        UsageEvent.from_avro_dict(data)


def test_avro_record_subclasses_are_all_registered() -> None:
    assert all(issubclass(model, AvroRecord) for model in MODELS.values())
