"""The hot path's fast UsageEvent decoder (schemas.fastcodec, timestamps as µs) must decode exactly as fastavro does
with the same read schema, and on corrupted bytes either fail (the codec then names the problem) or agree with
fastavro: the hot path may never accept something differently from every other consumer."""

from __future__ import annotations

import random
import string
from decimal import Context, Decimal
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.loader import load_schema
from schemas.wire import AvroCodec, without_uuid
from stream_jobs.hotpath import PricedEncoder, _raw_timestamp

pytestmark = pytest.mark.unit

READ_SCHEMA = _raw_timestamp(without_uuid(load_schema("UsageEvent")), "occurred_at")
PARSED = parse_schema(READ_SCHEMA)
DECODE = PricedEncoder(AvroCodec()).decode_usage
EXACT = Context(prec=38)


def _text(rng: random.Random) -> str:
    alphabet = string.printable + "éß漢字🙂\u0000"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 40, 70, 300])))


def _long(rng: random.Random, bits: int = 64) -> int:
    return rng.choice([0, 1, -1, 63, 64, -64, -65, 127, 128, 2**31 - 1, -(2**31), rng.randrange(-(2 ** (bits - 1)),
                                                                                                  2 ** (bits - 1))])


def random_record(rng: random.Random) -> dict[str, Any]:
    """A record of the read schema with random values (not usage rules: any value the Avro types allow)."""
    record: dict[str, Any] = {}
    for field in READ_SCHEMA["fields"]:
        kind = field["type"]
        if isinstance(kind, list):
            inner = kind[1]
            if rng.random() < 0.5:
                record[field["name"]] = None
                continue
            kind = inner
        if kind in ("long",):
            record[field["name"]] = _long(rng)
        elif kind == "int":
            record[field["name"]] = _long(rng, 32)
        elif kind == "string" or (isinstance(kind, dict) and kind.get("type") == "string"):
            record[field["name"]] = _text(rng)
        elif isinstance(kind, dict) and kind.get("logicalType") == "decimal":
            unscaled = rng.choice([0, 1, -1, rng.randrange(-(10**38) + 1, 10**38), rng.randrange(-(10**15), 10**15)])
            record[field["name"]] = Decimal(unscaled).scaleb(-12, EXACT)
        elif isinstance(kind, dict) and kind.get("type") == "map":
            record[field["name"]] = {_text(rng): _text(rng) for _ in range(rng.choice([0, 1, 3, 70]))}
        else:
            raise AssertionError(f"test does not know {kind}")
    return record


def encode(record: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, PARSED, record)
    return out.getvalue()


def fastavro_decode(data: bytes) -> tuple[dict[str, Any], int]:
    stream = BytesIO(data)
    record: Any = schemaless_reader(stream, PARSED, None)
    return record, stream.tell()


def test_the_hot_path_uses_the_generated_decoder() -> None:
    encoder = PricedEncoder(AvroCodec())
    assert getattr(encoder.decode_usage, "__self__", None) is not encoder  # not the fastavro fallback


def test_random_records_decode_exactly_as_fastavro() -> None:
    rng = random.Random(1)
    for _ in range(1500):
        data = encode(random_record(rng))
        assert DECODE(data, 0) == fastavro_decode(data)


def test_map_blocks_with_negative_counts_decode_as_fastavro() -> None:
    # Writers may split a map into blocks and give a negative count followed by the block's byte size.
    rng = random.Random(2)
    record = random_record(rng)
    record["tags"] = {}
    head = encode(record)
    empty_map = b"\x00"
    tail = encode({**record})[len(head) :]
    assert tail == b""
    prefix = head[: len(head) - len(empty_map) - len(encode_schema_version(record))]
    block = b"".join(_string(k) + _string(v) for k, v in (("a", "1"), ("b", "2")))
    blocks = _zigzag(-2) + _zigzag(len(block)) + block + _zigzag(1) + _string("c") + _string("3") + b"\x00"
    data = prefix + blocks + encode_schema_version(record)
    decoded, end = DECODE(data, 0)
    assert (decoded, end) == fastavro_decode(data)
    assert decoded["tags"] == {"a": "1", "b": "2", "c": "3"}


def encode_schema_version(record: dict[str, Any]) -> bytes:
    return _zigzag(record["schema_version"])


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _zigzag(len(raw)) + raw


def test_corrupted_bytes_are_refused_or_decoded_exactly_as_fastavro() -> None:
    rng = random.Random(3)
    accepted = 0
    for _ in range(2500):
        data = bytearray(encode(random_record(rng)))
        for _ in range(rng.choice([1, 2, 5])):
            mutation = rng.random()
            if mutation < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif mutation < 0.75 and data:
                del data[rng.randrange(len(data)) :]
            else:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        raw = bytes(data)
        try:
            mine = DECODE(raw, 0)
        except Exception:  # noqa: BLE001, S112 - refusing is always allowed: the codec decides then
            continue
        if mine[1] != len(raw):
            continue  # trailing bytes: the hot path refuses these too
        accepted += 1
        assert mine == fastavro_decode(raw)
    assert accepted > 100  # the comparison ran on a fair number of accepted corruptions
