"""The projected decoder (schemas/fastcodec.py ``build_projected_decoder``) and its framed form
(schemas/wire.py ``AvroProjection``) against the full decode: for the same bytes, the fields asked for have exactly
the values the full decoder (and so fastavro) returns, Decimals digit for digit, and the body ends at the same
position.

Records: seeded random records of every schema of schemas/avro and of a schema with nested records, arrays, maps of
arrays, unions of every generated type and runs of booleans, doubles and longs (the runs the decoder skips at once),
with edge values; random field subsets, both timestamp modes. Bodies: every truncation, mutated bytes, Java-style
blocks with a byte size. Framed: single-object and Confluent, an older writer schema (resolved to the current one),
a writer whose field type changed (the codec's fastavro path decides), the wrong record, an unknown writer.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.errors import ConfigError, DecodeError, UnknownSchemaError
from schemas.fastcodec import (
    FastCodec,
    Timestamps,
    UnsupportedSchemaError,
    build_fast_codec,
    build_projected_decoder,
    encode_long,
)
from schemas.loader import SCHEMA_NAMES, load_schema
from schemas.models import load_example
from schemas.wire import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec, schema_fingerprint
from tests.unit.test_fastcodec import _random_record

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
MODES: tuple[Timestamps, ...] = ("datetime", "micros")

WIDE: dict[str, Any] = {
    "type": "record", "name": "Wide", "namespace": "t",
    "fields": [
        {"name": "a", "type": "long"},
        {"name": "flag", "type": "boolean"},
        {"name": "other_flag", "type": "boolean"},
        {"name": "ratio", "type": "double"},
        {"name": "small", "type": "float"},
        {"name": "nothing", "type": "null"},
        {"name": "c1", "type": "long"}, {"name": "c2", "type": "int"}, {"name": "c3", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "maybe_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": None},
        {"name": "money", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}},
        {"name": "maybe_money",
         "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}]},
        {"name": "maybe_long", "type": ["null", "long"]},
        {"name": "maybe_int", "type": ["null", "int"]},
        {"name": "maybe_text", "type": ["null", "string"]},
        {"name": "maybe_bool", "type": ["null", "boolean"]},
        {"name": "maybe_double", "type": ["null", "double"]},
        {"name": "maybe_bytes", "type": ["null", "bytes"]},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": "long"}, {"name": "label", "type": ["null", "string"]},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ]}},
        {"name": "inners", "type": {"type": "array", "items": "Inner"}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "series", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
        {"name": "d1", "type": "long"}, {"name": "d2", "type": "long"},
        {"name": "tail", "type": "string"},
    ],
}


class Full:
    """The full decode of one schema: the generated codec (equal to fastavro, tests/unit/test_fastcodec.py) and
    fastavro itself, both timestamp modes."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.writer = parse_schema(schema)
        self.codec: dict[str, FastCodec] = {mode: build_fast_codec(schema, timestamps=mode) for mode in MODES}

    def encode(self, record: dict[str, Any]) -> bytes:
        out = BytesIO()
        schemaless_writer(out, self.writer, record)
        return out.getvalue()


def _equal(got: Any, want: Any) -> bool:
    """Equal values of the same types, Decimals digit for digit, a NaN (from mutated bytes) equal to a NaN."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return got == want or (math.isnan(got) and math.isnan(want))
    if isinstance(want, Decimal):
        return got.as_tuple() == want.as_tuple() and str(got) == str(want)
    if isinstance(want, dict):
        return list(got) == list(want) and all(_equal(got[k], want[k]) for k in want)
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(_equal(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)


def _same(got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
    assert _equal(got, want), (got, want)


def _check(full: Full, body: bytes, fields: tuple[str, ...], mode: Timestamps = "datetime") -> None:
    """The projection of ``fields`` returns what the full decode returns for them, and ends where it ends."""
    record, end = full.codec[mode].decode(body)
    projected = build_projected_decoder(full.schema, fields, timestamps=mode)
    values, got_end = projected.decode(body)
    assert got_end == end
    _same(values, tuple(record[name] for name in fields))


def _subsets(rng: random.Random, names: list[str], n: int) -> list[tuple[str, ...]]:
    out = [(), tuple(names), (names[0],), (names[-1],)]
    for _ in range(n):
        chosen = rng.sample(names, rng.randrange(1, len(names) + 1))
        out.append(tuple(chosen))  # in random order: the tuple follows the order asked, not the schema's
    return out


@pytest.mark.parametrize("name", [*SCHEMA_NAMES, "Wide"])
def test_projections_equal_the_full_decode_for_random_records(name: str) -> None:
    schema = WIDE if name == "Wide" else load_schema(name)
    full = Full(schema)
    rng = random.Random(f"projection-{name}")
    names = [field["name"] for field in schema["fields"]]
    subsets = _subsets(rng, names, 12)
    decoders = {(fields, mode): build_projected_decoder(schema, fields, timestamps=mode)
                for fields in subsets for mode in MODES}
    compared = 0
    for _ in range(300):
        record = _random_record(rng, schema, schema.get("namespace"))
        body = full.encode(record)
        for mode in MODES:
            want, end = full.codec[mode].decode(body)
            for fields in rng.sample(subsets, 4):
                values, got_end = decoders[(fields, mode)].decode(body)
                assert got_end == end
                _same(values, tuple(want[field] for field in fields))
                compared += 1
    assert compared == 300 * 2 * 4


def test_projections_of_a_body_inside_a_larger_buffer_and_a_memoryview() -> None:
    full = Full(WIDE)
    record = _random_record(random.Random(3), WIDE, "t")
    body = full.encode(record)
    framed = b"\xc3\x01" + bytes(8) + body
    projected = build_projected_decoder(WIDE, ("tail", "money", "at"))
    want = full.codec["datetime"].decode(body)[0]
    assert projected.decode(memoryview(framed), 10) == ((want["tail"], want["money"], want["at"]), len(framed))


def test_long_runs_with_large_values_and_java_blocks_with_byte_sizes() -> None:
    # The skipped run c1..c3 is tested at once only when every value is one byte; large ones take the long way.
    # Maps and arrays written in blocks with a negative count and a byte size (Java writers) are skipped item by item.
    full = Full(WIDE)
    rng = random.Random(4)
    base = _random_record(rng, WIDE, "t")
    for c in (0, 63, 64, -65, 2**20, -(2**40), 2**63 - 1, -(2**63)):
        record = {**base, "c1": 1, "c2": c if -(2**31) <= c < 2**31 else 7, "c3": c, "d1": c, "d2": 0}
        body = full.encode(record)
        for fields in (("a",), ("tail",), ("c2",), ("name", "d2")):
            _check(full, body, fields)
    inner = {"type": "record", "name": "Blocks", "fields": [
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
        {"name": "s", "type": "string"},
    ]}
    codec = build_fast_codec(inner)
    item = encode_long(2) + encode_long(5) + encode_long(-300) + b"\x00"  # one block of [5, -300]
    entry = encode_long(1) + b"k" + encode_long(-2) + encode_long(len(encode_long(5) + encode_long(-300)))
    entry += encode_long(5) + encode_long(-300) + b"\x00"  # the same array as a sized block
    body = (encode_long(-2) + encode_long(len(entry) + len(item) + 2) + entry + encode_long(1) + b"j" + item
            + b"\x00" + encode_long(2) + b"ok")
    record, end = codec.decode(body)
    assert record == {"m": {"k": [5, -300], "j": [5, -300]}, "s": "ok"} and end == len(body)
    assert record == schemaless_reader(BytesIO(body), parse_schema(inner), None)
    assert build_projected_decoder(inner, ("s",)).decode(body) == (("ok",), len(body))


def test_an_array_of_nulls_is_skipped_by_its_count() -> None:
    # Not in WIDE: a mutated count makes any decoder of null items loop for as long as the count says.
    schema = {"type": "record", "name": "N", "fields": [{"name": "nulls", "type": {"type": "array", "items": "null"}},
                                                         {"name": "s", "type": "string"}]}
    full = Full(schema)
    for record in ({"nulls": [], "s": ""}, {"nulls": [None] * 70, "s": "x"}):
        _check(full, full.encode(record), ("s",))
        _check(full, full.encode(record), ("nulls",))


def test_every_truncation_is_a_decode_error() -> None:
    full = Full(WIDE)
    rng = random.Random(5)
    bodies = [full.encode(_random_record(rng, WIDE, "t")) for _ in range(5)]
    for fields in ((), ("a",), ("tail",), ("inner", "tags")):
        projected = build_projected_decoder(WIDE, fields)
        for body in bodies:
            for cut in range(len(body)):
                with pytest.raises(DecodeError):
                    projected.decode(body[:cut])


def test_mutated_bodies_decode_as_the_full_decoder_reads_them() -> None:
    # Where the full decoder reads a mutated body, the projection reads it too, to the same values and end. (The
    # projection may read bodies the full decoder refuses: it does not look inside the values it skips.)
    full = Full(WIDE)
    rng = random.Random(6)
    bodies = [full.encode(_random_record(rng, WIDE, "t")) for _ in range(20)]
    compared = 0
    for _ in range(3000):
        mutable = bytearray(rng.choice(bodies))
        for _ in range(rng.randrange(1, 4)):
            mutable[rng.randrange(len(mutable))] = rng.getrandbits(8)
        data = bytes(mutable)
        try:
            want, end = full.codec["datetime"].decode(data)
        except DecodeError:
            continue
        fields = tuple(rng.sample([f["name"] for f in WIDE["fields"]], rng.randrange(0, 6)))
        values, got_end = build_projected_decoder(WIDE, fields).decode(data)
        assert got_end == end
        _same(values, tuple(want[name] for name in fields))
        compared += 1
    assert compared > 100


def test_bad_union_indexes_and_lengths_are_decode_errors() -> None:
    schema = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "string"]},
                                                         {"name": "s", "type": "string"}]}
    projected = build_projected_decoder(schema, ("s",))
    with pytest.raises(DecodeError, match="union branch"):
        projected.decode(b"\x04" + b"\x02a")
    with pytest.raises(DecodeError, match="negative length"):
        projected.decode(b"\x02\x01a")
    with pytest.raises(DecodeError):
        projected.decode(b"\x00" + b"\x02")  # a string past the end
    long_schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"},
                                                              {"name": "s", "type": "string"}]}
    with pytest.raises(DecodeError, match="varint longer than 10 bytes"):
        build_projected_decoder(long_schema, ("s",)).decode(b"\xff" * 10 + b"\x01\x00")
    with pytest.raises(DecodeError):
        build_fast_codec(long_schema).decode(b"\xff" * 10 + b"\x01\x00")  # refused by the full decoder too


def test_what_a_projection_refuses() -> None:
    schema = load_schema("PricedUsageEvent")
    with pytest.raises(ConfigError, match="twice"):
        build_projected_decoder(schema, ("team", "team"))
    with pytest.raises(ConfigError, match="no field nope"):
        build_projected_decoder(schema, ("team", "nope"))
    with pytest.raises(ConfigError, match="timestamps"):
        build_projected_decoder(schema, ("team",), timestamps="seconds")  # type: ignore[arg-type]
    older = {**schema, "fields": [f for f in schema["fields"] if f["name"] != "cost_basis"]}
    changed = {**schema, "fields": [{**f, "type": "int"} if f["name"] == "input_tokens" else f
                                    for f in schema["fields"]]}
    assert build_projected_decoder(older, ("cost_basis",), reader=schema).decode(
        build_fast_codec(older).encode(load_example("priced_usage_event.json").to_avro_dict()))[0] == ("catalogue",)
    with pytest.raises(UnsupportedSchemaError, match="input_tokens"):
        build_projected_decoder(changed, ("input_tokens",), reader=schema)
    build_projected_decoder(changed, ("team",), reader=schema)  # a changed field not asked for is only skipped
    required = {**schema, "fields": [*schema["fields"], {"name": "new", "type": "long"}]}
    with pytest.raises(ConfigError, match="no default"):
        build_projected_decoder(schema, ("new",), reader=required)
    with pytest.raises(UnsupportedSchemaError):
        build_projected_decoder({"type": "record", "name": "E", "fields": [
            {"name": "e", "type": {"type": "enum", "name": "En", "symbols": ["A"]}}]}, ())


# ------------------------------------------------------------------------------------------- framed (AvroCodec)

PRICED_FIELDS = ("occurred_at", "agent_id", "cost_usd", "tags", "cache_read_tokens", "cost_basis", "task_id",
                 "reported_cost", "computed_cost_usd", "source")


def _priced(rng: random.Random, n: int) -> list[dict[str, Any]]:
    schema = load_schema("PricedUsageEvent")
    return [_random_record(rng, schema, schema.get("namespace")) for _ in range(n)]


def _picked(codec: AvroCodec, data: bytes, fields: tuple[str, ...], micros: bool) -> tuple[Any, ...]:
    """The fields of the codec's full decode of ``data`` (timestamps as micros when asked)."""
    _, record = codec.decode(data)
    values = tuple(record[name] for name in fields)
    return tuple((v - EPOCH) // MICRO if micros and isinstance(v, datetime) else v for v in values)


@pytest.mark.parametrize("timestamps", MODES)
def test_framed_projection_resolves_every_writer_as_the_codec_does(timestamps: Timestamps) -> None:
    current = load_schema("PricedUsageEvent")
    # An older producer (without the last fields and the cache counts), and one whose input_tokens was an int.
    older = {**current, "fields": [f for f in current["fields"]
                                   if f["name"] not in ("computed_cost_usd", "cost_basis", "cache_read_tokens",
                                                        "tags")]}
    promoted = {**current, "fields": [{**f, "type": "int"} if f["name"] == "input_tokens" else f
                                      for f in current["fields"]]}
    registry = {7: current, 8: older}
    codec = AvroCodec(resolver=registry.__getitem__)
    codec.register_writer_schema(older)
    codec.register_writer_schema(promoted)
    writers = {"older": parse_schema(older), "promoted": parse_schema(promoted)}
    fields_sets = [PRICED_FIELDS, ("input_tokens", "team"), ("team",)]
    projections = [codec.projection("PricedUsageEvent", fields, timestamps=timestamps) for fields in fields_sets]
    rng = random.Random(f"framed-{timestamps}")
    checked = 0
    for record in _priced(rng, 150):
        if not -(2**31) <= record["input_tokens"] < 2**31:
            record["input_tokens"] = 7
        messages = [codec.encode(record, "PricedUsageEvent"),
                    codec.encode_confluent(record, "PricedUsageEvent", 7)]
        for label, fp_schema in (("older", older), ("promoted", promoted)):
            out = BytesIO()
            schemaless_writer(out, writers[label], record)
            messages.append(SINGLE_OBJECT_MAGIC + schema_fingerprint(fp_schema) + out.getvalue())
        out = BytesIO()
        schemaless_writer(out, writers["older"], record)
        messages.append(CONFLUENT_MAGIC + (8).to_bytes(4, "big") + out.getvalue())
        for data in messages:
            for fields, projection in zip(fields_sets, projections, strict=True):
                _same(projection.decode(data), _picked(codec, data, fields, timestamps == "micros"))
                checked += 1
    assert checked == 150 * 5 * 3


def test_framed_projection_errors_are_the_codecs() -> None:
    codec = AvroCodec()
    projection = codec.projection("PricedUsageEvent", ("team", "cost_usd"))
    data = codec.encode(load_example("priced_usage_event.json").to_avro_dict(), "PricedUsageEvent")
    assert projection.decode(data) == (codec.decode(data)[1]["team"], codec.decode(data)[1]["cost_usd"])
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError, match="does not decode|truncated"):
            projection.decode(data[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        projection.decode(data + b"\x00")
    with pytest.raises(UnknownSchemaError, match="fingerprint"):
        projection.decode(SINGLE_OBJECT_MAGIC + bytes(8) + data[10:])
    with pytest.raises(DecodeError, match="neither"):
        projection.decode(b"\x07" + data[1:])
    alert = codec.encode(load_example("alert.json").to_avro_dict(), "Alert")
    with pytest.raises(DecodeError, match="not a PricedUsageEvent"):
        projection.decode(alert)
    with pytest.raises(UnknownSchemaError):
        codec.projection("Nope", ("team",))
    with pytest.raises(ConfigError, match="no field"):
        codec.projection("PricedUsageEvent", ("team", "nope"))
