"""Wire formats: single-object and Confluent framing both decode; errors name what was wrong."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest

from schemas.errors import ConfigError, DecodeError, EncodeError, UnknownSchemaError
from schemas.loader import SCHEMA_NAMES, load_schema
from schemas.models import UsageEvent, load_example
from schemas.wire import (
    AvroCodec,
    build_registry_client,
    build_registry_deserializer,
    build_registry_resolver,
    build_registry_serializer,
    framing_of,
    schema_fingerprint,
)

pytestmark = pytest.mark.unit


def _rabin_reference(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


@pytest.fixture(scope="module")
def usage() -> dict[str, Any]:
    return load_example("usage_event.json").to_avro_dict()


def test_single_object_header_is_magic_plus_little_endian_fingerprint(codec: AvroCodec,
                                                                     usage: dict[str, Any]) -> None:
    data = codec.encode(usage, "UsageEvent")
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(load_schema("UsageEvent")))
    expected = _rabin_reference(canonical.encode()).to_bytes(8, "little")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected == codec.fingerprint("UsageEvent") == schema_fingerprint(load_schema("UsageEvent"))
    # The body is plain Avro binary any reader can decode with the schema.
    body = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(load_schema("UsageEvent")))
    assert isinstance(body, dict)
    assert body["agent_id"] == usage["agent_id"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_record_round_trips_single_object(codec: AvroCodec, name: str) -> None:
    examples = {
        "UsageEvent": "usage_event.json", "PricedUsageEvent": "priced_usage_event.json",
        "SpendAggregate": "spend_aggregate.json", "Alert": "alert.json",
        "ControlCommand": "control_command.json", "BudgetPolicy": "budget_policy.json",
    }
    record = load_example(examples[name]).to_avro_dict()
    decoded_name, decoded = codec.decode(codec.encode(record, name))
    assert decoded_name == name
    assert decoded == record


def test_confluent_framing_decodes_through_the_resolver(usage: dict[str, Any]) -> None:
    schemas_by_id = {42: load_schema("UsageEvent")}
    codec = AvroCodec(resolver=schemas_by_id.__getitem__)
    data = codec.encode_confluent(usage, "UsageEvent", 42)
    assert data[:5] == b"\x00" + struct.pack(">I", 42)
    assert framing_of(data) == "confluent"
    assert codec.decode(data) == ("UsageEvent", usage)


def test_resolver_may_return_json_text_and_is_called_once_per_id(usage: dict[str, Any]) -> None:
    calls: list[int] = []

    def resolve(schema_id: int) -> str:
        calls.append(schema_id)
        return json.dumps(load_schema("UsageEvent"))

    codec = AvroCodec(resolver=resolve)
    data = codec.encode_confluent(usage, "UsageEvent", 7)
    for _ in range(3):
        assert codec.decode(data)[1] == usage
    assert calls == [7]


def test_unknown_fingerprint_is_named_in_hex(codec: AvroCodec, usage: dict[str, Any]) -> None:
    data = bytearray(codec.encode(usage, "UsageEvent"))
    data[2:10] = bytes.fromhex("0102030405060708")
    with pytest.raises(UnknownSchemaError, match="0102030405060708"):
        codec.decode(bytes(data))


def test_unknown_schema_id_is_named(usage: dict[str, Any]) -> None:
    registry: dict[int, str] = {}
    codec = AvroCodec(resolver=registry.__getitem__)
    data = AvroCodec().encode_confluent(usage, "UsageEvent", 31337)
    with pytest.raises(UnknownSchemaError, match="31337"):
        codec.decode(data)
    with pytest.raises(UnknownSchemaError, match=r"schema id 31337.*FINOPS_SCHEMA_REGISTRY_URL"):
        AvroCodec().decode(data)  # no resolver configured at all


@pytest.mark.parametrize("cut", [1, 5, 9, 11, 40, -1])
def test_truncated_single_object_is_a_decode_error(codec: AvroCodec, usage: dict[str, Any], cut: int) -> None:
    data = codec.encode(usage, "UsageEvent")
    with pytest.raises(DecodeError, match="truncated|does not decode|framing"):
        codec.decode(data[:cut])


@pytest.mark.parametrize("cut", [3, 4, 6, -1])
def test_truncated_confluent_is_a_decode_error(usage: dict[str, Any], cut: int) -> None:
    codec = AvroCodec(resolver={9: load_schema("UsageEvent")}.__getitem__)
    data = codec.encode_confluent(usage, "UsageEvent", 9)
    with pytest.raises(DecodeError, match="truncated|does not decode"):
        codec.decode(data[:cut])


def test_trailing_bytes_and_garbage_are_decode_errors(codec: AvroCodec, usage: dict[str, Any]) -> None:
    data = codec.encode(usage, "UsageEvent")
    with pytest.raises(DecodeError, match="2 trailing bytes"):
        codec.decode(data + b"\x00\x00")
    with pytest.raises(DecodeError, match=r"7b22.*neither"):
        codec.decode(b'{"json": true}')
    with pytest.raises(DecodeError, match="empty"):
        codec.decode(b"")
    # A valid header claiming UsageEvent in front of another record's body.
    alert = codec.encode(load_example("alert.json").to_avro_dict(), "Alert")
    with pytest.raises(DecodeError):
        codec.decode(data[:10] + alert[10:])


def test_encode_errors_name_the_schema(codec: AvroCodec, usage: dict[str, Any]) -> None:
    broken = dict(usage)
    broken["input_tokens"] = "many"
    with pytest.raises(EncodeError, match="UsageEvent"):
        codec.encode(broken, "UsageEvent")
    with pytest.raises(UnknownSchemaError, match="Nope"):
        codec.encode(usage, "Nope")


def test_explicit_reader_schema_resolves_old_writer(usage: dict[str, Any]) -> None:
    evolved = load_schema("UsageEvent")
    evolved["fields"].append({"name": "region", "type": "string", "default": "eu"})
    codec = AvroCodec()
    data = codec.encode(usage, "UsageEvent")
    name, decoded = codec.decode(data, reader_schema=evolved)
    assert name == "UsageEvent"
    assert decoded["region"] == "eu"
    # Parsed once per reader schema object and reused.
    assert codec.decode(data, reader_schema=evolved)[1] == decoded
    assert codec.decode(data, reader_schema="UsageEvent")[1] == usage


def test_register_writer_schema_refuses_an_incompatible_reader(usage: dict[str, Any]) -> None:
    current = load_schema("UsageEvent")
    current["fields"].append({"name": "must_have", "type": "string"})
    codec = AvroCodec({"UsageEvent": current})
    with pytest.raises(ConfigError, match="must_have"):
        codec.register_writer_schema(load_schema("UsageEvent"))
    with pytest.raises(UnknownSchemaError):
        codec.register_writer_schema(load_schema("Alert"))


def test_confluent_writer_older_than_current_is_resolved(usage: dict[str, Any]) -> None:
    evolved = load_schema("UsageEvent")
    evolved["fields"].append({"name": "region", "type": "string", "default": "eu"})
    old_writer = load_schema("UsageEvent")
    data = AvroCodec(resolver={1: old_writer}.__getitem__).encode_confluent(usage, "UsageEvent", 1)
    codec = AvroCodec({"UsageEvent": evolved}, resolver={1: old_writer}.__getitem__)
    assert codec.decode(data)[1]["region"] == "eu"


def test_event_id_decodes_as_canonical_string(codec: AvroCodec, usage: dict[str, Any]) -> None:
    _, decoded = codec.decode(codec.encode(usage, "UsageEvent"))
    assert decoded["event_id"] == "0b5f3c1e-6a4d-4d7e-9a51-2f6f0c8e1a01"


# ------------------------------------------------------------------------------------------- registry glue


def test_registry_builders_construct_without_contacting_anything() -> None:
    assert build_registry_serializer("http://registry.invalid:8081", "UsageEvent") is not None
    assert build_registry_deserializer("http://registry.invalid:8081", "UsageEvent") is not None
    assert callable(build_registry_resolver("http://registry.invalid:8081"))
    with pytest.raises(ConfigError, match="FINOPS_SCHEMA_REGISTRY_URL"):
        build_registry_client("registry:8081")
    with pytest.raises(UnknownSchemaError):
        build_registry_serializer("http://registry.invalid:8081", "Nope")


def test_confluent_serializer_bytes_decode_with_our_codec() -> None:
    # confluent-kafka's in-process mock registry: a real AvroSerializer, no network.
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = build_registry_client("mock://test-wire")
    serializer = build_registry_serializer("mock://test-wire", "UsageEvent", client=client)
    deserializer = build_registry_deserializer("mock://test-wire", "UsageEvent", client=client)
    event = load_example("usage_event.json")
    assert isinstance(event, UsageEvent)
    context = SerializationContext("agent.usage.v1", MessageField.VALUE)
    data = serializer(event, context)
    assert data is not None and data[:1] == b"\x00"

    codec = AvroCodec(resolver=build_registry_resolver("mock://test-wire", client=client))
    name, decoded = codec.decode(data)
    assert name == "UsageEvent"
    assert type(event).from_avro_dict(decoded) == event
    assert deserializer(data, context)["agent_id"] == event.agent_id  # type: ignore[index]
