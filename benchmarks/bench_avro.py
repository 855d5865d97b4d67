"""Avro body encode/decode cost: fastavro (schemaless writer/reader, precompiled schemas) vs the generated codec of
:mod:`schemas.fastcodec`, for UsageEvent and PricedUsageEvent, plus the framed ``AvroCodec`` calls the producer, the
stream hot path and the ClickHouse sink make.

Records: 1,000 varied ones per schema built from the examples (token counts from 0 to millions, optional fields
set or null, tags, decimals of several sizes), cycled, so the numbers are not one lucky shape. Each figure is the
best of several repeats (this machine is shared; the best repeat is the least disturbed). Run:
``python -m benchmarks.bench_avro`` (performance is measured here, never asserted in tests).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from decimal import Decimal
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.fastcodec import build_fast_codec
from schemas.loader import load_schema
from schemas.models import load_example
from schemas.wire import AvroCodec, _parse_for_reading

RECORDS = 1_000
LOOPS = 20_000
REPEATS = 5


def make_records(name: str, example: str, seed: int) -> list[dict[str, Any]]:
    """``RECORDS`` variations of an example record (same schema, varied values)."""
    rng = random.Random(seed)
    base = load_example(example).to_avro_dict()
    out = []
    for i in range(RECORDS):
        rec = dict(base)
        rec["event_id"] = f"{rng.getrandbits(128):032x}"
        rec["input_tokens"] = rng.choice([0, 12, 850, 12_000, 180_000, 2_000_000])
        rec["output_tokens"] = rng.randrange(0, 20_000)
        rec["cache_read_tokens"] = rng.choice([0, 0, 512, rec["input_tokens"] // 2])
        rec["task_id"] = None if i % 3 == 0 else f"task-{rng.randrange(10**6)}"
        rec["latency_ms"] = None if i % 4 == 0 else rng.randrange(50, 60_000)
        rec["tags"] = {} if i % 2 else {"feature": "search", "tier": f"t{i % 5}"}
        if name == "PricedUsageEvent":
            for key in ("cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd"):
                rec[key] = Decimal(rng.choice([0, rng.randrange(1, 10**6), rng.randrange(10**9, 10**13)])).scaleb(-12)
            rec["source_offset"] = rng.randrange(10**9)
        out.append(rec)
    return out


def per_op_us(fn: Callable[[Any], Any], items: list[Any]) -> float:
    """Best-of-``REPEATS`` microseconds per call of ``fn`` over ``items`` (cycled), with the cyclic garbage
    collector paused as timeit does (its pauses land on whichever row is running and blur the comparison)."""
    n = len(items)
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(REPEATS):
            start = time.perf_counter()
            for i in range(LOOPS):
                fn(items[i % n])
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best / LOOPS * 1e6


def main() -> None:
    codec = AvroCodec()
    rows: list[tuple[str, str, float, float]] = []
    for name, example in (("UsageEvent", "usage_event.json"), ("PricedUsageEvent", "priced_usage_event.json")):
        schema = load_schema(name)
        writer = parse_schema(schema)
        reader = _parse_for_reading(schema)  # as AvroCodec reads: uuid as str
        fast = build_fast_codec(schema)
        fast_micros = build_fast_codec(schema, timestamps="micros")
        records = make_records(name, example, seed=len(name))
        bodies = [fast.encode(r) for r in records]
        framed = [codec.encode(r, name) for r in records]

        def fa_encode(rec: dict[str, Any], writer: Any = writer) -> bytes:
            out = BytesIO()
            schemaless_writer(out, writer, rec)
            return out.getvalue()

        def fa_decode(body: bytes, reader: Any = reader) -> Any:
            return schemaless_reader(BytesIO(body), reader, None)

        fa_enc = per_op_us(fa_encode, records)
        fa_dec = per_op_us(fa_decode, bodies)
        rows.append((name, "encode body", fa_enc, per_op_us(fast.encode, records)))
        rows.append((name, "decode body (datetime)", fa_dec, per_op_us(fast.decode, bodies)))
        rows.append((name, "decode body (micros)", fa_dec, per_op_us(fast_micros.decode, bodies)))
        def framed_encode(rec: dict[str, Any], name: str = name) -> bytes:
            return codec.encode(rec, name)

        rows.append((name, "AvroCodec.encode (framed)", fa_enc, per_op_us(framed_encode, records)))
        rows.append((name, "AvroCodec.decode (framed)", fa_dec, per_op_us(codec.decode, framed)))

    print(f"Avro codec, µs per record (best of {REPEATS} x {LOOPS:,} calls over {RECORDS:,} varied records)")
    print("AvroCodec rows compare the framed call with fastavro's bare body (what AvroCodec called before).")
    print()
    header = f"{'record':<18} {'operation':<27} {'fastavro':>9} {'generated':>10} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for record, op, base, new in rows:
        print(f"{record:<18} {op:<27} {base:>9.2f} {new:>10.2f} {base / new:>8.1f}x")


if __name__ == "__main__":
    main()
