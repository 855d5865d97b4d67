"""Avro containers from framed bodies (sinks/avro_block.py): read back by fastavro's container reader exactly as the
codec decodes each frame, for both framings; the prefix reader; zig-zag longs."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from finops.benches.sink import build_bench_event
from schemas.errors import DecodeError
from schemas.fastcodec import encode_long
from schemas.loader import load_schema
from schemas.wire import AvroCodec
from sinks.avro_block import PrefixReader, build_container, build_container_header, compute_frame_header

pytestmark = pytest.mark.unit


def _events(n: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    return [build_bench_event(i, rng, datetime(2025, 6, 1, tzinfo=UTC)) for i in range(n)]


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 2**31, -(2**31), 2**63 - 1, -(2**63)])
def test_encode_long_is_avro_long(value: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    assert encode_long(value) == out.getvalue()


def test_container_of_both_framings_reads_back_as_the_codec_decodes_each_frame() -> None:
    codec = AvroCodec(resolver={9: load_schema("PricedUsageEvent")}.__getitem__)
    events = _events(50)
    frames = [codec.encode(e, "PricedUsageEvent") if i % 2 else codec.encode_confluent(e, "PricedUsageEvent", 9)
              for i, e in enumerate(events)]
    headers = [compute_frame_header(f) for f in frames]
    assert [len(h or b"") for h in headers] == [5 if i % 2 == 0 else 10 for i in range(50)]
    name, schema = codec.container_schema(frames[0])
    assert name == "PricedUsageEvent" and schema == load_schema("PricedUsageEvent")
    assert codec.container_schema(frames[1])[1] == schema
    head, sync = build_container_header(schema)
    blob = build_container(head, sync, frames, [len(h or b"") for h in headers])
    assert blob == build_container(*build_container_header(schema), frames, [len(h or b"") for h in headers])
    read = list(fastavro.reader(io.BytesIO(blob)))
    decoded = [codec.decode(f)[1] for f in frames]
    assert len(read) == 50
    for got, want in zip(read, decoded, strict=True):
        assert {k: (str(v) if k == "event_id" else v) for k, v in got.items()} == want


def test_container_schema_is_none_for_an_older_writer() -> None:
    codec = AvroCodec()
    old = load_schema("PricedUsageEvent")
    old["fields"] = old["fields"][:-2]
    fp = codec.register_writer_schema(old)
    assert codec.container_schema(b"\xc3\x01" + fp + b"body") == ("PricedUsageEvent", None)


def test_frame_header_needs_a_whole_header() -> None:
    assert compute_frame_header(b"\xc3\x01" + b"x" * 7) is None
    assert compute_frame_header(b"\x00\x01") is None
    assert compute_frame_header(b"garbage") is None
    assert compute_frame_header(b"\x00\x00\x00\x00\x07body") == b"\x00\x00\x00\x00\x07"


def test_prefix_reader_reads_the_leading_fields_and_refuses_a_cut_body() -> None:
    codec = AvroCodec()
    event = _events(1)[0]
    frame = codec.encode(event, "PricedUsageEvent")
    reader = PrefixReader(load_schema("PricedUsageEvent"), ("event_id", "source", "occurred_at"))
    assert reader.read(frame, 10) == [event["event_id"], event["source"], event["occurred_at"]]
    with pytest.raises(DecodeError):
        reader.read(frame[:30], 10)
    with pytest.raises(DecodeError, match="cannot be read as a prefix"):
        PrefixReader(load_schema("PricedUsageEvent"), ("tags",))
    assert PrefixReader(load_schema("SpendAggregate"), ()).read(b"anything", 0) == []


@pytest.mark.parametrize("length", [0, 1, 63, 64, 200, 70_000])
def test_prefix_reader_reads_strings_of_one_and_many_length_bytes(length: int) -> None:
    codec = AvroCodec()
    event = {**_events(1)[0], "event_id": "e" * length, "source": "s" * (length // 2 + 1),
             "occurred_at": datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)}  # a negative timestamp
    frame = codec.encode(event, "PricedUsageEvent")
    reader = PrefixReader(load_schema("PricedUsageEvent"), ("event_id", "source", "occurred_at"))
    assert reader.read(frame, 10) == [event["event_id"], event["source"], event["occurred_at"]]
    with pytest.raises(DecodeError):
        reader.read(frame[:10] + b"\xff" * 11, 10)  # a varint longer than ten bytes


def test_prefix_reader_agrees_with_the_full_decoder_and_refuses_every_cut_of_its_prefix() -> None:
    codec = AvroCodec()
    reader = PrefixReader(load_schema("PricedUsageEvent"), ("event_id", "source", "occurred_at"))
    for event in _events(50):
        frame = codec.encode(event, "PricedUsageEvent")
        record = codec.decode(frame)[1]
        assert reader.read(frame, 10) == [record["event_id"], record["source"], record["occurred_at"]]
    frame = codec.encode(_events(1)[0], "PricedUsageEvent")
    needed = 10 + 1 + 36 + 1 + len(_events(1)[0]["source"]) + 8  # header, event_id, source, occurred_at
    for cut in range(10, needed):
        with pytest.raises(DecodeError):
            reader.read(frame[:cut], 10)
    assert reader.read(frame[:needed], 10)[0] == _events(1)[0]["event_id"]  # nothing after the prefix is read


def test_prefix_reader_refuses_an_id_that_is_not_utf8() -> None:
    event = _events(1)[0]
    frame = bytearray(AvroCodec().encode(event, "PricedUsageEvent"))
    frame[11] = 0xFF  # the first byte of event_id's text
    with pytest.raises(DecodeError):
        PrefixReader(load_schema("PricedUsageEvent"), ("event_id", "source", "occurred_at")).read(bytes(frame), 10)


def test_prefix_reader_gives_timestamps_as_the_bodys_microseconds_when_asked() -> None:
    codec = AvroCodec()
    schema = load_schema("PricedUsageEvent")
    micros = PrefixReader(schema, ("event_id", "source", "occurred_at"), timestamps="micros")
    moments = PrefixReader(schema, ("event_id", "source", "occurred_at"))
    for moment in (datetime(2025, 6, 1, 12, 0, 0, 123_456, tzinfo=UTC),
                   datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)):
        frame = codec.encode({**_events(1)[0], "occurred_at": moment}, "PricedUsageEvent")
        event_id, source, at = micros.read(frame, 10)
        assert at == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert [event_id, source] == moments.read(frame, 10)[:2] and isinstance(at, int)
        with pytest.raises(DecodeError):
            micros.read(frame[:30], 10)
