"""A specialised Avro binary codec generated from a record schema, byte-identical to fastavro and faster (measured
by ``python -m benchmarks.bench_avro``).

Role: fastavro interprets the schema on every call; for our wide, flat records that per-field interpretation is
most of the cost. :func:`generate_source` writes one straight-line ``encode``/``decode`` per record and
:func:`build_fast_codec` compiles it once; :attr:`FastCodec.source` keeps the text for reading and debugging.

Guarantee: where the generated code succeeds its bytes and values equal fastavro's (tests/unit/test_fastcodec.py);
what it does not handle it refuses (:class:`EncodeError`, :class:`DecodeError`, :class:`UnsupportedSchemaError`)
and :class:`schemas.wire.AvroCodec` falls back to fastavro, which stays the authority. See DESIGN §3.
"""

from __future__ import annotations

import builtins
import decimal
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastavro.write import LOGICAL_WRITERS

from schemas.errors import ConfigError, DecodeError, EncodeError

__all__ = [
    "CheckedEncoder",
    "FastCodec",
    "ProjectedDecoder",
    "Timestamps",
    "UnsupportedSchemaError",
    "build_checked_encoder",
    "build_fast_codec",
    "build_projected_decoder",
    "encode_long",
    "generate_source",
]

#: How timestamp-micros fields are decoded: tz-aware UTC ``datetime`` (fastavro's choice) or raw ``int`` micros.
Timestamps = Literal["datetime", "micros"]

Encoder = Callable[[Mapping[str, Any]], bytes]
Decoder = Callable[..., tuple[dict[str, Any], int]]


class UnsupportedSchemaError(ConfigError):
    """The schema uses a type the generator does not handle; use fastavro for it."""


# ------------------------------------------------------------------------------------------------ runtime helpers
# Shared by every generated module (bound as its globals, so a lookup is one dict hit, no attribute access).
# The techniques of the generated code, each chosen by measurement (python -m benchmarks.bench_avro):
# - varints from tables: _ZZ[n] is the zigzag varint of 0 <= n < 2**14; larger values are assembled from two
#   16384-entry tables of 14-bit chunks, no per-byte loop;
# - the encoder collects every field's bytes in locals and joins them once (b"".join of a tuple);
# - the decoder reads 1- to 3-byte varints inline, timestamps (8-byte varints) with one struct unpack and shifts,
#   longer ones in a helper loop; short strings via a one-byte length table, one slice and .decode(); one dict
#   display builds the result;
# - decimals are encoded as fastavro does (two's complement, big-endian, (bit_length of the magnitude + 8) // 8
#   bytes, so a negative power of 256 gets a leading 0xFF), via Decimal.quantize to the scale in a context that
#   traps rounding (more fractional digits than the scale are refused, as fastavro refuses them) and scaleb to the
#   unscaled integer; decoded as Decimal(unscaled).scaleb(-scale) in a context of the schema's precision, the very
#   Decimal fastavro builds (same digits and exponent); 1-byte values come from a table.

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def _uvarint_slow(z: int) -> bytes:
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


#: _U[z]: varint of 0 <= z < 2**14 (1-2 bytes). _C[z]: the same 14 bits as two bytes that both carry the
#: continuation bit, the low chunk of a longer varint. _ZZ[n]: zigzag varint of 0 <= n < 2**14 (n's zigzag is 2n).
_U: list[bytes] = [_uvarint_slow(z) for z in range(1 << 14)]
_C: list[bytes] = [bytes(((z & 0x7F) | 0x80, (z >> 7) | 0x80)) for z in range(1 << 14)]
_ZZ: list[bytes] = [_uvarint_slow(n << 1) for n in range(1 << 14)]


def _uvarint(z: int) -> bytes:
    """Varint of 0 <= z < 2**64, 14 bits per table lookup (a timestamp takes four lookups instead of eight loops)."""
    if z < 0x4000:
        return _U[z]
    if z < 0x10000000:
        return _C[z & 0x3FFF] + _U[z >> 14]
    if z < 0x40000000000:
        return _C[z & 0x3FFF] + _C[(z >> 14) & 0x3FFF] + _U[z >> 28]
    if z < 0x100000000000000:
        return _C[z & 0x3FFF] + _C[(z >> 14) & 0x3FFF] + _C[(z >> 28) & 0x3FFF] + _U[z >> 42]
    return _C[z & 0x3FFF] + _C[(z >> 14) & 0x3FFF] + _C[(z >> 28) & 0x3FFF] + _C[(z >> 42) & 0x3FFF] + _U[z >> 56]


def encode_long(n: int) -> bytes:
    """Avro ``int`` / ``long`` of an integer the caller knows is in int64: the project's one zig-zag varint
    encoder for code that assembles Avro bytes itself (the hot path's outputs, the sinks' containers)."""
    z = (n << 1) ^ (n >> 63)
    return _U[z] if z < 0x4000 else _uvarint(z)


def _zz(n: Any) -> bytes:
    """Zigzag varint of an Avro int/long outside the table. Refuses non-integers (fastavro truncates floats; the
    caller falls back to it) and values outside int64 (fastavro raises OverflowError)."""
    if n.__class__ is not int:
        if not isinstance(n, int):
            raise TypeError(f"an integer is required, got {type(n).__name__}")
        n = int(n)
    if n < _INT64_MIN or n > _INT64_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    return _uvarint((n << 1) ^ (n >> 63))


def _zz_strict(n: Any, lo: int, hi: int) -> bytes:
    """Zigzag varint of an int union branch: fastavro picks the branch only for a true int (not bool) in range."""
    if n.__class__ is not int or n < lo or n > hi:
        raise TypeError(f"{n!r} does not match the union's {'int' if hi == _INT32_MAX else 'long'} branch")
    return _ZZ[n] if 0 <= n < 0x4000 else _uvarint((n << 1) ^ (n >> 63))


def _rlong(buf: bytes, pos: int) -> tuple[int, int]:
    """Zigzag varint at ``pos`` of any length up to 10 bytes -> (value, next pos). IndexError when truncated."""
    b = buf[pos]
    n = b & 0x7F
    shift = 7
    pos += 1
    while b & 0x80:
        b = buf[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if shift > 70:  # fastavro would read on; no valid long is longer
            raise DecodeError(f"varint longer than 10 bytes ending at offset {pos}")
    n &= 0xFFFFFFFFFFFFFFFF  # as fastavro's unsigned 64-bit accumulator
    return (n >> 1) ^ -(n & 1), pos


def _rsized(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Length prefix at ``pos`` -> (length, start, end) of the data; DecodeError for a negative length."""
    n, pos = _rlong(buf, pos)
    if n < 0:
        raise DecodeError(f"negative length {n} before offset {pos}")
    return n, pos, pos + n


#: _ZD[z]: the value of zigzag z < 2**14 (a 1- or 2-byte varint's payload). _SL[byte]: the length a one-byte
#: length prefix denotes, -1 when the byte starts a longer varint or a negative length.
_ZD: list[int] = [(z >> 1) ^ -(z & 1) for z in range(1 << 14)]
_SL: list[int] = [b >> 1 if b < 128 and not b & 1 else -1 for b in range(256)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)
# fastavro's own logical-type hooks, for the inputs the fast paths leave to fastavro's semantics.
_prepare_timestamp_micros: Callable[[Any, Any], Any] = LOGICAL_WRITERS["long-timestamp-micros"]
_prepare_uuid: Callable[[Any, Any], Any] = LOGICAL_WRITERS["string-uuid"]
_prepare_bytes_decimal: Callable[[Any, Any], Any] = LOGICAL_WRITERS["bytes-decimal"]


def _ts_micros(value: Any) -> int:
    """Microseconds since the epoch of a timestamp-micros value that is not already an int: an aware datetime is
    converted exactly (same integer as fastavro's days/seconds/microseconds sum); anything else (naive datetime:
    local time via mktime) goes through fastavro's own hook so the result matches."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        micros: int = (value - _EPOCH) // _ONE_MICRO
        return micros
    prepared: int = _prepare_timestamp_micros(value, None)
    return prepared


def _ts_micros_strict(value: Any) -> int:
    """A timestamp-micros union branch: fastavro picks it for an int (not bool) or a datetime only."""
    if value.__class__ is int:
        return int(value)
    if isinstance(value, datetime):
        return _ts_micros(value)
    raise TypeError(f"{value!r} does not match the union's timestamp-micros branch")


def _uuid_str(value: Any) -> str:
    prepared = _prepare_uuid(value, None)
    if not isinstance(prepared, str):
        raise TypeError(f"must be string, got {type(prepared).__name__}")
    return prepared


# Decimal encode: quantize to the schema scale in a context that traps any rounding (Rounded fires even when only
# zeros are dropped, exactly fastavro's "exponent + scale < 0" refusal) and is otherwise unbounded.
_QUANTIZE_CTX = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.Rounded, decimal.Inexact, decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)


def _decimal_slow(value: Any, schema: Mapping[str, Any]) -> bytes:
    """Decimals outside the fast path (beyond ``10**precision`` unscaled, subclasses, raw bytes): fastavro's own
    hook, so byte length and refusals are fastavro's."""
    prepared = _prepare_bytes_decimal(value, schema)
    if prepared.__class__ is not bytes:
        raise TypeError(f"a Decimal or bytes is required, got {type(prepared).__name__}")
    return bytes(prepared)


_Decimal = decimal.Decimal
_from_bytes = int.from_bytes
_DOUBLE = struct.Struct("<d")
_U8 = struct.Struct("<8B").unpack_from
_FLOAT = struct.Struct("<f")


def _decimal_table(scale: int, ctx: decimal.Context) -> list[decimal.Decimal]:
    """Decoded Decimals of every 1-byte unscaled value (zero costs, counts in the low range are common)."""
    return [_Decimal(_from_bytes(bytes((b,)), "big", signed=True)).scaleb(-scale, ctx) for b in range(256)]


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class _Emitter:
    """Accumulates generated lines, unique local names and the constants the generated module needs."""

    timestamps: Timestamps
    lines: list[str] = field(default_factory=list)
    consts: dict[str, Any] = field(default_factory=dict)
    counter: int = 0
    named: dict[str, dict[str, Any]] = field(default_factory=dict)
    record_fns: dict[str, tuple[str, str]] = field(default_factory=dict)  # full name -> (encode fn, decode fn)
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    const_keys: dict[tuple[Any, ...], str] = field(default_factory=dict)

    def const(self, prefix: str, key: tuple[Any, ...], make: Callable[[], Any]) -> str:
        """The global name of a constant of the generated module (made once per ``key``, shared by fields)."""
        name = self.const_keys.get(key)
        if name is None:
            name = self.fresh(prefix)
            self.const_keys[key] = name
            self.consts[name] = make()
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Types:
    """Normalises schema nodes into (kind, info) pairs and tracks named records (for references)."""

    def __init__(self, emitter: _Emitter) -> None:
        self.e = emitter

    def norm(self, schema: Any, namespace: str | None) -> tuple[str, Any]:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema, None
            full = _full_name(schema, namespace)
            if full in self.e.named:
                return "record", full
            if schema in self.e.named:
                return "record", schema
            raise UnsupportedSchemaError(f"named type {schema!r} is not a record the generator knows")
        if isinstance(schema, list):
            branches = [self.norm(branch, namespace) for branch in schema]
            if len(branches) == 2 and branches[0][0] == "null" and branches[1][0] not in ("null", "union"):
                if branches[1][0] in ("map", "array", "record"):
                    raise UnsupportedSchemaError("unions with a map, array or record branch are not generated")
                return "optional", branches[1]
            raise UnsupportedSchemaError(f"only [\"null\", X] unions are generated, not {schema!r}")
        if not isinstance(schema, Mapping):
            raise UnsupportedSchemaError(f"unexpected schema node {schema!r}")
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if kind == "record" or kind == "error":
            full = _full_name(str(schema["name"]), schema.get("namespace", namespace))
            self.e.named[full] = dict(schema)
            return "record", full
        if kind == "map":
            return "map", self.norm(schema["values"], namespace)
        if kind == "array":
            return "array", self.norm(schema["items"], namespace)
        if kind == "bytes" and logical == "decimal":
            precision = schema.get("precision")
            scale = schema.get("scale", 0)
            if not isinstance(precision, int) or not isinstance(scale, int) or scale < 0 or scale > precision:
                raise UnsupportedSchemaError(f"decimal with precision {precision!r} and scale {scale!r}")
            return "decimal", (precision, scale, {"precision": precision, "scale": scale})
        if kind == "long" and logical == "timestamp-micros":
            return "timestamp", None
        if kind == "string" and logical == "uuid":
            return "uuid", None
        if isinstance(kind, str) and kind in _PRIMITIVES:
            if logical is not None and f"{kind}-{logical}" in LOGICAL_WRITERS:
                # A logical type fastavro converts (date, time-millis, fixed decimal ...) that is not generated;
                # unknown logical types are ignored by fastavro (and here): the base type is written.
                raise UnsupportedSchemaError(f"logicalType {logical!r} on {kind} is not generated")
            return kind, None
        if isinstance(kind, (list, Mapping)) or (isinstance(kind, str) and kind not in _PRIMITIVES):
            return self.norm(kind, namespace)  # {"type": {...}}, {"type": [...]} or {"type": "Name"}
        raise UnsupportedSchemaError(f"type {kind!r} is not generated")


# ---------------------------------------------------------------------------------------------------- encoder


def _enc_value(e: _Emitter, t: _Types, kind: tuple[str, Any], value: str, ind: int, out: list[str],
               item_check: str | None = None, item_memo: str | None = None, *, non_negative: bool = False) -> None:
    """Emit code that encodes the expression ``value`` (a local name) of type ``kind``; appends to ``out`` the local
    names holding its bytes, in order. ``item_check`` (maps, checked encoders only: ``{key}``/``{value}`` stand for
    an entry) makes the function return None on an entry that fails it. ``item_memo`` (with ``item_check``, a map of
    strings) names the global dict that remembers a map's bytes by its entries (see :func:`_enc_memo_map`).
    ``non_negative``: ``value`` is known to be an exact int >= 0 (checked before), so an int skips the sign test."""
    k, info = kind
    if k == "null":
        out.append('b""')
    elif k == "boolean":
        name = e.fresh("x")
        e.emit(ind, f'{name} = b"\\x01" if {value} else b"\\x00"')  # fastavro: truthiness
        out.append(name)
    elif k in ("int", "long"):
        name = e.fresh("x")
        # A float passes the comparison and fails the list index (TypeError): refused, fastavro decides.
        # Up to 2**27 (two table bytes for the low 14 bits of the zigzag, one lookup for the rest) inline.
        low = "" if non_negative else "0 <= "
        e.emit(ind, f"{name} = _ZZ[{value}] if {low}{value} < 16384 else (_C[({value} << 1) & 16383] + "
                    f"_U[{value} >> 13] if {low}{value} < 134217728 else _zz({value}))")
        out.append(name)
    elif k == "timestamp":
        name = e.fresh("x")
        e.emit(ind, f"if {value}.__class__ is not int:")
        e.emit(ind + 1, f"{value} = _ts_micros({value})")
        e.emit(ind, f"{name} = _zz({value})")
        out.append(name)
    elif k == "float" or k == "double":
        name = e.fresh("x")
        e.emit(ind, f"{name} = {'_FLOAT' if k == 'float' else '_DOUBLE'}.pack({value})")
        out.append(name)
    elif k in ("string", "uuid"):
        data, size = e.fresh("s"), e.fresh("x")
        if k == "uuid":
            e.emit(ind, f"if {value}.__class__ is not str:")
            e.emit(ind + 1, f"{value} = _uuid_str({value})")
        else:
            # fastavro refuses non-str for strings ("must be string"); .encode would accept other objects with one.
            e.emit(ind, f"if {value}.__class__ is not str and not isinstance({value}, str):")
            e.emit(ind + 1, "raise TypeError('must be string')")
        e.emit(ind, f"{data} = {value}.encode()")
        e.emit(ind, f"{size} = len({data})")
        e.emit(ind, f"{size} = _ZZ[{size}] if {size} < 16384 else _zz({size})")
        out.extend((size, data))
    elif k == "bytes":
        data, size = e.fresh("s"), e.fresh("x")
        e.emit(ind, f"{data} = bytes({value}) if {value}.__class__ is not bytes else {value}")
        e.emit(ind, f"{size} = len({data})")
        e.emit(ind, f"{size} = _ZZ[{size}] if {size} < 16384 else _zz({size})")
        out.extend((size, data))
    elif k == "decimal":
        precision, scale, schema = info
        quantum = e.const("_Q", ("quantum", scale), lambda: _Decimal(1).scaleb(-scale))
        limit = e.const("_LIM", ("limit", precision), lambda: 10**precision)
        sch = e.const("_DSCH", ("schema", precision, scale), lambda: schema)
        data, size, n = e.fresh("s"), e.fresh("x"), e.fresh("n")
        e.emit(ind, f"if {value}.__class__ is _Decimal:")
        # quantize fixes the exponent at -scale (or raises), scaleb makes the coefficient the integer value.
        e.emit(ind + 1, f"{n} = int({value}.quantize({quantum}, None, _QUANTIZE_CTX).scaleb({scale}, _QUANTIZE_CTX))")
        e.emit(ind + 1, f"if -{limit} < {n} < {limit}:")
        e.emit(ind + 2, f'{data} = {n}.to_bytes(({n}.bit_length() + 8) >> 3, "big", signed=True)')
        e.emit(ind + 1, "else:")
        e.emit(ind + 2, f"{data} = _decimal_slow({value}, {sch})")
        e.emit(ind, "else:")
        e.emit(ind + 1, f"{data} = _decimal_slow({value}, {sch})")
        e.emit(ind, f"{size} = _ZZ[len({data})] if len({data}) < 16384 else _zz(len({data}))")
        out.extend((size, data))
    elif k == "optional":
        _enc_optional(e, t, info, value, ind, out)
    elif k == "map" and item_check is not None and item_memo is not None and info == ("string", None):
        _enc_memo_map(e, t, value, ind, out, item_check, item_memo)
    elif k == "map":
        name = e.fresh("x")
        parts, key, item, count = e.fresh("p"), e.fresh("k"), e.fresh("w"), e.fresh("n")
        # fastavro writes any empty sized value as an empty map, and needs .items() only when there are entries.
        e.emit(ind, f"{count} = len({value})")
        e.emit(ind, f"if {count}:")
        e.emit(ind + 1, f"{parts} = [_ZZ[{count}] if {count} < 16384 else _zz({count})]")
        e.emit(ind + 1, f"for {key}, {item} in {value}.items():")
        if item_check is not None:
            e.emit(ind + 2, f"if not ({item_check.format(key=key, value=item)}):")
            e.emit(ind + 3, "return None")
        inner: list[str] = []
        _enc_value(e, t, ("string", None), key, ind + 2, inner)
        _enc_value(e, t, info, item, ind + 2, inner)
        e.emit(ind + 2, f"{parts} += ({', '.join(inner)},)")
        e.emit(ind + 1, f'{parts}.append(b"\\x00")')
        e.emit(ind + 1, f'{name} = b"".join({parts})')
        e.emit(ind, "else:")
        e.emit(ind + 1, f'{name} = b"\\x00"')
        out.append(name)
    elif k == "array":
        name = e.fresh("x")
        parts, item, count = e.fresh("p"), e.fresh("w"), e.fresh("n")
        e.emit(ind, f"{count} = len({value})")
        e.emit(ind, f"if {count}:")
        e.emit(ind + 1, f"{parts} = [_ZZ[{count}] if {count} < 16384 else _zz({count})]")
        e.emit(ind + 1, f"for {item} in {value}:")
        inner = []
        _enc_value(e, t, info, item, ind + 2, inner)
        e.emit(ind + 2, f"{parts} += ({', '.join(inner)},)" if len(inner) > 1 else f"{parts}.append({inner[0]})")
        e.emit(ind + 1, f'{parts}.append(b"\\x00")')
        e.emit(ind + 1, f'{name} = b"".join({parts})')
        e.emit(ind, "else:")
        e.emit(ind + 1, f'{name} = b"\\x00"')
        out.append(name)
    elif k == "record":
        name = e.fresh("x")
        fn = _record_fns(e, info)[0]
        e.emit(ind, f"{name} = {fn}({value})")
        out.append(name)
    else:  # pragma: no cover - norm() only yields the kinds above
        raise UnsupportedSchemaError(f"cannot encode {k}")


def _enc_memo_map(e: _Emitter, t: _Types, value: str, ind: int, out: list[str], item_check: str,
                  memo: str) -> None:
    """A checked map of strings, remembered by its entries: the bytes of a map whose entries equal (as a tuple of
    ``(key, value)`` pairs, in order) those of a map checked and encoded before are that map's bytes, once each entry
    is an exact ``str`` (a subclass could compare equal to another value: it is refused, as ``item_check`` refuses
    it); a miss checks and encodes the entries as the plain map path does and remembers the bytes (up to
    ``_MEMO_MAX`` maps). Tags repeat across an agent's events, and their loop was the costliest step of an event."""
    name, entries = e.fresh("x"), e.fresh("t")
    parts, key, item, count = e.fresh("p"), e.fresh("k"), e.fresh("w"), e.fresh("n")
    e.emit(ind, f"{count} = len({value})")
    e.emit(ind, f"if {count}:")
    e.emit(ind + 1, f"{entries} = tuple({value}.items())")
    e.emit(ind + 1, f"{name} = {memo}_get({entries})")
    e.emit(ind + 1, f"if {name} is None:")
    e.emit(ind + 2, f"{parts} = [_ZZ[{count}] if {count} < 16384 else _zz({count})]")
    e.emit(ind + 2, f"for {key}, {item} in {entries}:")
    e.emit(ind + 3, f"if not ({item_check.format(key=key, value=item)}):")
    e.emit(ind + 4, "return None")
    inner: list[str] = []
    _enc_value(e, t, ("string", None), key, ind + 3, inner)
    _enc_value(e, t, ("string", None), item, ind + 3, inner)
    e.emit(ind + 3, f"{parts} += ({', '.join(inner)},)")
    e.emit(ind + 2, f'{parts}.append(b"\\x00")')
    e.emit(ind + 2, f'{name} = b"".join({parts})')
    e.emit(ind + 2, f"if len({memo}) < _MEMO_MAX:")
    e.emit(ind + 3, f"{memo}[{entries}] = {name}")
    e.emit(ind + 1, "else:")
    e.emit(ind + 2, f"for {key}, {item} in {entries}:")
    e.emit(ind + 3, f"if {key}.__class__ is not str or {item}.__class__ is not str:")
    e.emit(ind + 4, "return None")
    e.emit(ind, "else:")
    e.emit(ind + 1, f'{name} = b"\\x00"')
    out.append(name)


def _enc_optional(e: _Emitter, t: _Types, kind: tuple[str, Any], value: str, ind: int, out: list[str]) -> None:
    """["null", X]: branch 0 for None; branch 1 only for values fastavro's union matching would pick X for."""
    branch = e.fresh("x")
    k, info = kind
    # Slots of X, set to b"" when null, so the join stays one flat tuple.
    e.emit(ind, f"if {value} is None:")
    e.emit(ind + 1, f'{branch} = b"\\x00"')
    start = len(e.lines)
    e.emit(ind, "else:")
    e.emit(ind + 1, f'{branch} = b"\\x02"')
    inner: list[str] = []
    if k in ("int", "long"):
        name = e.fresh("x")
        lo, hi = (_INT32_MIN, _INT32_MAX) if k == "int" else (_INT64_MIN, _INT64_MAX)
        # A small exact int inline (what _zz_strict returns for it); anything else through _zz_strict's checks.
        e.emit(ind + 1, f"{name} = _ZZ[{value}] if {value}.__class__ is int and 0 <= {value} < 16384 "
                        f"else _zz_strict({value}, {lo}, {hi})")
        inner.append(name)
    elif k == "timestamp":
        name = e.fresh("x")
        e.emit(ind + 1, f"{name} = _zz(_ts_micros_strict({value}))")
        inner.append(name)
    elif k == "boolean":
        name = e.fresh("x")
        e.emit(ind + 1, f"if {value} is not True and {value} is not False:")
        e.emit(ind + 2, "raise TypeError('does not match the union')")
        e.emit(ind + 1, f'{name} = b"\\x01" if {value} else b"\\x00"')
        inner.append(name)
    elif k in ("float", "double"):
        e.emit(ind + 1, f"if {value}.__class__ is not float and {value}.__class__ is not int:")
        e.emit(ind + 2, "raise TypeError('does not match the union')")
        _enc_value(e, t, kind, value, ind + 1, inner)
    elif k == "decimal":
        e.emit(ind + 1, f"if not isinstance({value}, (_Decimal, bytes)):")
        e.emit(ind + 2, "raise TypeError('does not match the union')")
        _enc_value(e, t, kind, value, ind + 1, inner)
    else:  # string (str only, as fastavro's union match), uuid (str or UUID, after fastavro's hook), bytes
        _enc_value(e, t, kind, value, ind + 1, inner)
    # Insert the null-branch assignments of X's slots before the else.
    nulls = ["    " * (ind + 1) + f'{slot} = b""' for slot in inner if slot.isidentifier()]
    e.lines[start:start] = nulls
    out.append(branch)
    out.extend(inner)


# ---------------------------------------------------------------------------------------------------- decoder


def _dec_varint(e: _Emitter, target: str, ind: int) -> None:
    """Emit code reading a zigzag varint into ``target``: 1- and 2-byte encodings inline through the ``_ZD`` table,
    3-byte ones (token counts up to a million) inline with shifts, longer ones via ``_rlong``."""
    e.emit(ind, "b = buf[pos]")
    e.emit(ind, "if b < 128:")
    e.emit(ind + 1, "pos += 1")
    e.emit(ind + 1, f"{target} = _ZD[b]")
    e.emit(ind, "else:")
    e.emit(ind + 1, "c = buf[pos + 1]")
    e.emit(ind + 1, "if c < 128:")
    e.emit(ind + 2, "pos += 2")
    e.emit(ind + 2, f"{target} = _ZD[(b & 127) | (c << 7)]")
    e.emit(ind + 1, "else:")
    e.emit(ind + 2, "d = buf[pos + 2]")
    e.emit(ind + 2, "if d < 128:")
    e.emit(ind + 3, "pos += 3")
    e.emit(ind + 3, "b = (b & 127) | (c & 127) << 7 | d << 14")
    e.emit(ind + 3, f"{target} = (b >> 1) ^ -(b & 1)")
    e.emit(ind + 2, "else:")
    e.emit(ind + 3, f"{target}, pos = _rlong(buf, pos)")


def _dec_sized(e: _Emitter, target: str, ind: int, expr: str) -> None:
    """Emit code reading a length-prefixed value (string, bytes) as ``expr`` of the slice ``buf[pos:end]``. A length
    below 64 (one prefix byte, ``_SL`` table: -1 for anything else) is inline; the rest goes through ``_rsized``."""
    e.emit(ind, "n = _SL[buf[pos]]")
    e.emit(ind, "if n >= 0:")
    e.emit(ind + 1, "pos += 1")
    e.emit(ind + 1, "end = pos + n")
    e.emit(ind + 1, f"{target} = {expr.format('buf[pos:end]')}")
    e.emit(ind + 1, "pos = end")
    e.emit(ind, "else:")
    e.emit(ind + 1, "n, pos, end = _rsized(buf, pos)")
    e.emit(ind + 1, f"{target} = {expr.format('buf[pos:end]')}")
    e.emit(ind + 1, "pos = end")


def _dec_timestamp(e: _Emitter, target: str, ind: int) -> None:
    """Emit code reading a timestamp-micros long. Timestamps of our era are 8-byte varints: unpack the eight bytes at
    once (struct, small ints) and assemble the 7-bit groups with shifts, no per-byte loop; any other length (or
    fewer than 8 bytes left) goes through _rlong."""
    e.emit(ind, "if len(buf) - pos >= 8:")
    e.emit(ind + 1, "b0, b1, b2, b3, b4, b5, b6, b7 = _U8(buf, pos)")
    e.emit(ind + 1, "if b0 & b1 & b2 & b3 & b4 & b5 & b6 & 128 and b7 < 128:")
    e.emit(ind + 2, "pos += 8")
    e.emit(ind + 2, (
        "b0 = (b0 & 127) | (b1 & 127) << 7 | (b2 & 127) << 14 | (b3 & 127) << 21 | (b4 & 127) << 28 "
        "| (b5 & 127) << 35 | (b6 & 127) << 42 | b7 << 49"
    ))
    e.emit(ind + 2, f"{target} = (b0 >> 1) ^ -(b0 & 1)")
    e.emit(ind + 1, "else:")
    e.emit(ind + 2, f"{target}, pos = _rlong(buf, pos)")
    e.emit(ind, "else:")
    e.emit(ind + 1, f"{target}, pos = _rlong(buf, pos)")


def _dec_value(e: _Emitter, t: _Types, kind: tuple[str, Any], target: str, ind: int) -> None:
    """Emit code decoding a value of ``kind`` at ``buf[pos]`` into the local ``target``, advancing ``pos``."""
    k, info = kind
    if k == "null":
        e.emit(ind, f"{target} = None")
    elif k == "boolean":
        e.emit(ind, f"{target} = buf[pos] != 0")  # fastavro: any non-zero byte is True
        e.emit(ind, "pos += 1")
    elif k in ("int", "long"):
        _dec_varint(e, target, ind)
    elif k == "timestamp":
        _dec_timestamp(e, target, ind)
        if e.timestamps == "datetime":
            e.emit(ind, f"{target} = _EPOCH + _timedelta(0, 0, {target})")
    elif k == "float" or k == "double":
        size = 4 if k == "float" else 8
        e.emit(ind, f"{target} = {'_FLOAT' if k == 'float' else '_DOUBLE'}.unpack_from(buf, pos)[0]")
        e.emit(ind, f"pos += {size}")
    elif k in ("string", "uuid"):
        _dec_sized(e, target, ind, "{}.decode()")
    elif k == "bytes":
        _dec_sized(e, target, ind, "{}")
    elif k == "decimal":
        precision, scale, _ = info
        ctx = e.const("_DCTX", ("context", precision), lambda: decimal.Context(prec=precision))
        table = e.const("_DTAB", ("table", precision, scale), lambda: _decimal_table(scale, e.consts[ctx]))
        # 1-byte unscaled values (zero above all) from the table; the rest as fastavro: int, then scaleb in a context
        # of the schema's precision (same rounding, same exponent, so the same Decimal).
        e.emit(ind, "if buf[pos] == 2:")
        e.emit(ind + 1, f"{target} = {table}[buf[pos + 1]]")
        e.emit(ind + 1, "pos += 2")
        e.emit(ind, "else:")
        _dec_sized(e, target, ind + 1, f'_Decimal(_from_bytes({{}}, "big", signed=True)).scaleb(-{scale}, {ctx})')
    elif k == "optional":
        e.emit(ind, "b = buf[pos]")
        e.emit(ind, "pos += 1")
        e.emit(ind, "if b == 0:")
        e.emit(ind + 1, f"{target} = None")
        e.emit(ind, "elif b == 2:")
        _dec_value(e, t, info, target, ind + 1)
        e.emit(ind, "else:")
        e.emit(ind + 1, "raise _DecodeError(f'union branch byte {b:#04x} at offset {pos - 1} is not 0 or 1')")
    elif k in ("map", "array"):
        fn = _container_decoder(e, t, kind)
        # An empty container (one zero byte) is the common case: skip the call.
        e.emit(ind, "if buf[pos] == 0:")
        e.emit(ind + 1, "pos += 1")
        e.emit(ind + 1, f"{target} = {{}}" if k == "map" else f"{target} = []")
        e.emit(ind, "else:")
        e.emit(ind + 1, f"{target}, pos = {fn}(buf, pos)")
    elif k == "record":
        fn = _record_fns(e, info)[1]
        e.emit(ind, f"{target}, pos = {fn}(buf, pos)")
    else:  # pragma: no cover
        raise UnsupportedSchemaError(f"cannot decode {k}")


def _container_decoder(e: _Emitter, t: _Types, kind: tuple[str, Any]) -> str:
    """Generate (into the pending function list) a decoder of a map or array, with blocks of any sign."""
    k, info = kind
    key = ("container", repr(kind))
    if key in e.const_keys:  # the same container type elsewhere in the schema: one decoder
        return e.const_keys[key]
    fn = e.fresh("_dec_" + k)
    e.const_keys[key] = fn
    saved, e.lines = e.lines, []
    e.emit(0, f"def {fn}(buf, pos):")
    e.emit(1, "out = {}" if k == "map" else "out = []")
    e.emit(1, "append = out.append" if k == "array" else "pass")
    e.emit(1, "while True:")
    e.emit(2, "count, pos = _rlong(buf, pos)")
    e.emit(2, "if count == 0:")
    e.emit(3, "return out, pos")
    e.emit(2, "if count < 0:  # a block with its byte size (Java writers may emit it): size not needed")
    e.emit(3, "count = -count")
    e.emit(3, "_, pos = _rlong(buf, pos)")
    e.emit(2, "for _ in range(count):")
    if k == "map":
        _dec_value(e, t, ("string", None), "key", 3)
        _dec_value(e, t, info, "value", 3)
        e.emit(3, "out[key] = value")
    else:
        _dec_value(e, t, info, "value", 3)
        e.emit(3, "append(value)")
    e.pending.append((fn, {"source": "\n".join(e.lines)}))
    e.lines = saved
    return fn


def _record_fns(e: _Emitter, full: str) -> tuple[str, str]:
    """(encode fn, decode fn) names of a named record used inside another type, generated on first use (a record
    may refer to itself: the functions call each other by global name, so recursion works)."""
    existing = e.record_fns.get(full)
    if existing is not None:
        return existing
    short = full.rsplit(".", 1)[-1]
    names = (e.fresh(f"_enc_{short}_"), e.fresh(f"_dec_{short}_"))
    e.record_fns[full] = names
    schema = e.named[full]
    namespace = full.rsplit(".", 1)[0] if "." in full else None
    saved, e.lines = e.lines, []
    e.emit(0, f"def {names[0]}(rec):")
    _record_encoder(e, _Types(e), schema, namespace, 1, "return")
    e.pending.append((names[0], {"source": "\n".join(e.lines)}))
    e.lines = []
    e.emit(0, f"def {names[1]}(buf, pos):")
    _record_decoder(e, _Types(e), schema, namespace, 1, "return")
    e.pending.append((names[1], {"source": "\n".join(e.lines)}))
    e.lines = saved
    return names


def _fields(t: _Types, schema: Mapping[str, Any], namespace: str | None) -> list[tuple[str, tuple[str, Any], Any]]:
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise UnsupportedSchemaError(f"record {schema.get('name')!r} has no field list")
    return [(str(fld["name"]), t.norm(fld["type"], namespace), fld) for fld in fields]


def _default_expr(e: _Emitter, default: Any) -> str:
    if default is None or isinstance(default, (bool, int, float, str)):
        return repr(default)
    # {} and [] defaults: one shared object per module, only ever read.
    return e.const("_DEF", ("default", repr(default)), lambda: default)


def _record_encoder(
    e: _Emitter, t: _Types, schema: Mapping[str, Any], namespace: str | None, ind: int, result: str
) -> None:
    """Emit the statements encoding ``rec``, ending with ``<result> <bytes expression>``."""
    slots: list[str] = []
    for index, (name, kind, fld) in enumerate(_fields(t, schema, namespace)):
        value = f"v{index}"
        # As fastavro: a missing field takes its default; a missing nullable field without one is null; any other
        # missing field is an error (KeyError here, "no value and no default" from fastavro).
        if "default" in fld:
            e.emit(ind, f"{value} = rec.get({name!r}, {_default_expr(e, fld['default'])})")
        elif kind[0] == "optional":
            e.emit(ind, f"{value} = rec.get({name!r})")
        else:
            e.emit(ind, f"{value} = rec[{name!r}]")
        _enc_value(e, t, kind, value, ind, slots)
    e.emit(ind, f"{result} b\"\".join(({', '.join(slots)},))" if slots else f'{result} b""')


def _record_decoder(
    e: _Emitter, t: _Types, schema: Mapping[str, Any], namespace: str | None, ind: int, result: str
) -> None:
    """Emit the statements decoding a record at ``buf[pos]``, ending with ``<result> (dict display), pos``."""
    names = []
    for index, (name, kind, _fld) in enumerate(_fields(t, schema, namespace)):
        _dec_value(e, t, kind, f"f{index}", ind)
        names.append(f"{name!r}: f{index}")
    e.emit(ind, f"{result} {{{', '.join(names)}}}, pos")


def _entry_points(e: _Emitter, t: _Types, schema: Mapping[str, Any]) -> None:
    """The public ``encode``/``decode`` of the top record: its fields inline (no extra call), errors translated."""
    full = _full_name(str(schema["name"]), schema.get("namespace"))
    namespace = full.rsplit(".", 1)[0] if "." in full else None
    e.emit(0, "def encode(rec):")
    e.emit(1, '"""Avro binary body of ``rec``; raises EncodeError for anything it does not encode."""')
    e.emit(1, "try:")
    _record_encoder(e, t, schema, namespace, 2, "return")
    e.emit(1, "except Exception as err:")
    e.emit(2, 'raise _EncodeError(f"{type(err).__name__}: {err}") from err')
    e.emit(0, "")
    e.emit(0, "")
    e.emit(0, "def decode(buf, pos=0):")
    e.emit(1, '"""(record, position after it) of the Avro body at ``buf[pos:]``; raises DecodeError when malformed')
    e.emit(1, 'or truncated (trailing bytes are the caller\'s call)."""')
    e.emit(1, "if buf.__class__ is not bytes:")
    e.emit(2, "buf = bytes(buf)")
    e.emit(1, "try:")
    _record_decoder(e, t, schema, namespace, 2, "rec =")
    e.emit(1, "except _DecodeError:")
    e.emit(2, "raise")
    e.emit(1, "except (IndexError, ValueError, OverflowError, ArithmeticError, struct_error) as err:")
    e.emit(2, 'raise _DecodeError(f"{type(err).__name__}: {err} (input of {len(buf)} bytes)") from err')
    e.emit(1, "if rec[1] > len(buf):  # a string or bytes slice ran past the end")
    e.emit(2, 'raise _DecodeError(f"truncated: the record needs {rec[1]} bytes, the input has {len(buf)}")')
    e.emit(1, "return rec")


def _start(schema: Mapping[str, Any], timestamps: Timestamps) -> tuple[_Emitter, _Types, str]:
    """The emitter, the type table and the record's full name for generating code of ``schema``; raises
    ConfigError for an unknown ``timestamps`` mode and UnsupportedSchemaError for a schema that is not a record."""
    if timestamps not in ("datetime", "micros"):
        raise ConfigError(f"timestamps must be 'datetime' or 'micros', not {timestamps!r}")
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise UnsupportedSchemaError("the generator takes a record schema (a JSON object with type record)")
    e = _Emitter(timestamps)
    t = _Types(e)
    return e, t, t.norm(dict(schema), None)[1]


def _generate(schema: Mapping[str, Any], timestamps: Timestamps) -> tuple[str, dict[str, Any]]:
    e, t, full = _start(schema, timestamps)
    _entry_points(e, t, schema)
    header = [
        f"# Generated by schemas.fastcodec for record {full} (timestamps={timestamps!r}). Do not edit: regenerate.",
        "# Module globals: the helpers of schemas.fastcodec, and these constants made at generation:",
        *(f"#   {name} = {_describe(value)}" for name, value in e.consts.items()),
    ]
    helpers = [source for _, item in e.pending for source in (item["source"], "", "")]
    source = "\n".join([*header, "", "", *e.lines, "", "", *helpers])
    return source, e.consts


def _describe(value: Any) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"<table of {len(value)} {type(value[0]).__name__}>"
    if isinstance(value, decimal.Context):
        return f"decimal.Context(prec={value.prec})"
    return repr(value)


def generate_source(schema: Mapping[str, Any], *, timestamps: Timestamps = "datetime") -> str:
    """The Python source of the encoder and decoder :func:`build_fast_codec` would compile for ``schema`` (a record
    schema as JSON dict, raw or fastavro-parsed). Raises :class:`UnsupportedSchemaError` for a type not generated."""
    return _generate(schema, timestamps)[0]


@dataclass(frozen=True, slots=True)
class FastCodec:
    """A compiled codec of one record schema.

    ``encode(record) -> bytes`` writes the Avro binary body (no framing); ``decode(buf, pos=0) -> (dict, end)``
    reads one body starting at ``pos`` and returns the position after it (the caller decides whether trailing bytes
    are an error). Both are plain functions with no per-call setup; thread-safe (no shared mutable state).

    Values (as :class:`schemas.wire.AvroCodec` via fastavro): ``timestamps="datetime"`` decodes timestamp-micros to
    tz-aware UTC datetimes, ``"micros"`` keeps the int (the hot path wants ints); encoding accepts either. uuid
    strings decode to ``str`` (``uuid.UUID`` accepted on encode); decimals decode to ``Decimal`` (encode accepts
    ``Decimal`` or already-encoded ``bytes``).

    Errors: ``decode`` raises :class:`DecodeError` for truncated, malformed or trailing input (never IndexError) and
    is stricter than fastavro on garbage (a union index other than 0/1, a varint over 10 bytes). ``encode`` raises
    :class:`EncodeError` for anything it does not encode and is stricter than fastavro on odd inputs (a float in a
    long field, an int subclass in a union), so :class:`AvroCodec` re-encodes a refused record with fastavro.

    Supported: null, boolean, int, long, float, double, string (+uuid), bytes (+decimal), long + timestamp-micros,
    unions of null and one other non-container type, maps, arrays, records (nested, named references); anything
    else raises :class:`UnsupportedSchemaError` at generation.
    """

    name: str
    timestamps: Timestamps
    source: str
    encode: Encoder
    decode: Decoder


def _runtime_globals() -> dict[str, Any]:
    """The helpers every generated module sees as globals."""
    return {
        "_ZZ": _ZZ,
        "_U": _U,
        "_C": _C,
        "_zz": _zz,
        "_zz_strict": _zz_strict,
        "_rlong": _rlong,
        "_rsized": _rsized,
        "_skip_long": _skip_long,
        "_NO8": _NO8,
        "_ZD": _ZD,
        "_U8": _U8,
        "_SL": _SL,
        "_ts_micros": _ts_micros,
        "_ts_micros_strict": _ts_micros_strict,
        "_uuid_str": _uuid_str,
        "_decimal_slow": _decimal_slow,
        "_QUANTIZE_CTX": _QUANTIZE_CTX,
        "_Decimal": _Decimal,
        "_from_bytes": _from_bytes,
        "_EPOCH": _EPOCH,
        "_timedelta": timedelta,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        "_DecodeError": DecodeError,
        "_EncodeError": EncodeError,
        "struct_error": struct.error,
    }


def build_fast_codec(schema: Mapping[str, Any], *, timestamps: Timestamps = "datetime") -> FastCodec:
    """Generate, compile and return the codec of record ``schema``. Costs a few milliseconds: call once per schema
    (at codec construction), not per message. Raises :class:`UnsupportedSchemaError` when the schema uses a type
    the generator does not handle (keep fastavro for that schema)."""
    source, consts = _generate(schema, timestamps)
    namespace: dict[str, Any] = {**_runtime_globals(), **consts}
    full = _full_name(str(schema.get("name")), schema.get("namespace"))
    exec(compile(source, f"<fastcodec {full}>", "exec"), namespace)  # noqa: S102 - our own generated source
    return FastCodec(
        name=full,
        timestamps=timestamps,
        source=source,
        encode=namespace["encode"],
        decode=namespace["decode"],
    )


# ------------------------------------------------------------------------------------------------ projected decoder
# A decoder of some top-level fields of a record: the fields asked for are decoded by the very statements of the full
# decoder; the others are skipped by their framing only (a varint to its last byte, a string, bytes or decimal by its
# length, a union by its branch index and then the branch, a map or array item by item, a record field by field), so
# no Decimal, datetime, str or dict is built for a value nobody reads.


#: What a timestamp skip unpacks when fewer than 8 bytes are left: fails the 8-byte test, so _skip_long decides.
_NO8 = (0,) * 8


def _skip_long(buf: bytes, pos: int) -> int:
    """The position after the varint at ``pos``, which :func:`_rlong` would read (at most 10 bytes; DecodeError for
    a longer one, IndexError when truncated)."""
    last = pos + 9
    while buf[pos] & 0x80:
        if pos == last:
            raise DecodeError(f"varint longer than 10 bytes ending at offset {pos + 2}")
        pos += 1
    return pos + 1


def _skip_value(e: _Emitter, t: _Types, kind: tuple[str, Any], ind: int) -> None:
    """Emit code advancing ``pos`` past a value of ``kind`` at ``buf[pos]`` without building it: what the full
    decoder would read, checked only where its framing says how far to go (lengths, union indexes, varints)."""
    k, info = kind
    if k == "null":
        e.emit(ind, "pass")
    elif k == "boolean":
        e.emit(ind, "pos += 1")
    elif k == "float" or k == "double":
        e.emit(ind, f"pos += {4 if k == 'float' else 8}")
    elif k == "timestamp":
        # Timestamps of our era are 8-byte varints: one unpack and one test, as the decoder reads them.
        e.emit(ind, "b0, b1, b2, b3, b4, b5, b6, b7 = _U8(buf, pos) if len(buf) - pos >= 8 else _NO8")
        e.emit(ind, "if b0 & b1 & b2 & b3 & b4 & b5 & b6 & 128 and b7 < 128:")
        e.emit(ind + 1, "pos += 8")
        e.emit(ind, "else:")
        e.emit(ind + 1, "pos = _skip_long(buf, pos)")
    elif k in ("int", "long"):
        e.emit(ind, "if buf[pos] < 128:")
        e.emit(ind + 1, "pos += 1")
        e.emit(ind, "elif buf[pos + 1] < 128:")
        e.emit(ind + 1, "pos += 2")
        e.emit(ind, "else:")
        e.emit(ind + 1, "pos = _skip_long(buf, pos)")
    elif k in ("string", "uuid", "bytes", "decimal"):
        e.emit(ind, "n = _SL[buf[pos]]")
        e.emit(ind, "if n >= 0:")
        e.emit(ind + 1, "pos += n + 1")
        e.emit(ind, "else:")
        e.emit(ind + 1, "pos = _rsized(buf, pos)[2]")
    elif k == "optional":
        e.emit(ind, "b = buf[pos]")
        e.emit(ind, "pos += 1")
        e.emit(ind, "if b == 2:")
        _skip_value(e, t, info, ind + 1)
        e.emit(ind, "elif b:")
        e.emit(ind + 1, "raise _DecodeError(f'union branch byte {b:#04x} at offset {pos - 1} is not 0 or 1')")
    elif k in ("map", "array"):
        fn = _container_skipper(e, t, kind)
        e.emit(ind, "if buf[pos] == 0:")
        e.emit(ind + 1, "pos += 1")
        e.emit(ind, "else:")
        e.emit(ind + 1, f"pos = {fn}(buf, pos)")
    elif k == "record":
        e.emit(ind, f"pos = {_record_skipper(e, info)}(buf, pos)")
    else:  # pragma: no cover - norm() only yields the kinds above
        raise UnsupportedSchemaError(f"cannot skip {k}")


def _container_skipper(e: _Emitter, t: _Types, kind: tuple[str, Any]) -> str:
    """Generate (into the pending functions) a skipper of a map or array. Item by item even for a block that states
    its byte size, as the full decoder reads it: a wrong size then cannot make the two disagree."""
    k, info = kind
    key = ("container skip", repr(kind))
    if key in e.const_keys:
        return e.const_keys[key]
    fn = e.fresh("_skip_" + k)
    e.const_keys[key] = fn
    saved, e.lines = e.lines, []
    e.emit(0, f"def {fn}(buf, pos):")
    e.emit(1, "while True:")
    e.emit(2, "count, pos = _rlong(buf, pos)")
    e.emit(2, "if count == 0:")
    e.emit(3, "return pos")
    e.emit(2, "if count < 0:")
    e.emit(3, "count = -count")
    e.emit(3, "_, pos = _rlong(buf, pos)")
    e.emit(2, "for _ in range(count):")
    if k == "map":
        _skip_value(e, t, ("string", None), 3)
    _skip_value(e, t, info, 3)
    e.pending.append((fn, {"source": "\n".join(e.lines)}))
    e.lines = saved
    return fn


def _record_skipper(e: _Emitter, full: str) -> str:
    """The name of the skipper of a named record, generated on first use (recursive records call it by name)."""
    key = ("record skip", full)
    if key in e.const_keys:
        return e.const_keys[key]
    fn = e.fresh(f"_skip_{full.rsplit('.', 1)[-1]}_")
    e.const_keys[key] = fn
    schema = e.named[full]
    namespace = full.rsplit(".", 1)[0] if "." in full else None
    saved, e.lines = e.lines, []
    e.emit(0, f"def {fn}(buf, pos):")
    for _name, kind, _fld in _fields(_Types(e), schema, namespace):
        _skip_value(e, _Types(e), kind, 1)
    e.emit(1, "return pos")
    e.pending.append((fn, {"source": "\n".join(e.lines)}))
    e.lines = saved
    return fn


def _has_record(kind: tuple[str, Any]) -> bool:
    k, info = kind
    if k == "record":
        return True
    return k in ("optional", "map", "array") and _has_record(info)


def _projection_plan(
    t: _Types, schema: Mapping[str, Any], fields: Sequence[str], reader: Mapping[str, Any] | None
) -> tuple[list[tuple[str, tuple[str, Any]]], dict[str, Any]]:
    """The writer's fields (name, kind) in body order, and the values of the fields asked for that the writer does
    not have (the reader's defaults). Raises ConfigError / UnsupportedSchemaError as build_projected_decoder says."""
    full = t.norm(dict(schema), None)[1]
    namespace = full.rsplit(".", 1)[0] if "." in full else None
    writer = [(name, kind) for name, kind, _ in _fields(t, schema, namespace)]
    if len(set(fields)) != len(fields):
        raise ConfigError(f"fields {list(fields)} name a field twice")
    have = dict(writer)
    absent: dict[str, Any] = {}
    if reader is None:
        unknown = [name for name in fields if name not in have]
        if unknown:
            raise ConfigError(f"record {full} has no field {', '.join(unknown)}")
        return writer, absent
    rt = _Types(_Emitter(t.e.timestamps))
    reader_full = rt.norm(dict(reader), None)[1]
    reader_ns = reader_full.rsplit(".", 1)[0] if "." in reader_full else None
    reader_fields = {name: (kind, fld) for name, kind, fld in _fields(rt, reader, reader_ns)}
    for name in fields:
        if name not in reader_fields:
            raise ConfigError(f"reader record {reader_full} has no field {name}")
        kind, fld = reader_fields[name]
        if name not in have:
            if "default" not in fld:
                raise ConfigError(f"field {name} of {reader_full} is not written by {full} and has no default")
            absent[name] = fld["default"]  # as written in the schema: what fastavro's resolution returns
        elif have[name] != kind or _has_record(kind):
            # A promotion, a new union or a nested record that may have changed: fastavro's resolution decides.
            raise UnsupportedSchemaError(f"field {name} is {have[name][0]} in {full} and {kind[0]} in the reader")
    return writer, absent


def _projected_entry(e: _Emitter, t: _Types, schema: Mapping[str, Any], fields: Sequence[str],
                     reader: Mapping[str, Any] | None, prefix: bool = False) -> None:
    """The ``decode`` of a projection: fields asked for decoded, the others skipped, the tuple in asked order; with
    ``prefix``, nothing after the last field asked for is read."""
    writer, absent = _projection_plan(t, schema, fields, reader)
    wanted = set(fields)
    if prefix:
        writer = writer[: max((i for i, (name, _) in enumerate(writer) if name in wanted), default=-1) + 1]
    local: dict[str, str] = {}
    for name, value in absent.items():
        local[name] = e.fresh("_ABS")
        e.consts[local[name]] = value  # the default object itself, as fastavro's resolution hands it out
    e.emit(0, "def decode(buf, pos=0):")
    e.emit(1, '"""(values of the projected fields, position after the body at ``buf[pos:]``); raises DecodeError')
    e.emit(1, 'when the framing of the body is malformed or truncated (skipped values are not checked)."""')
    e.emit(1, "if buf.__class__ is not bytes:")
    e.emit(2, "buf = bytes(buf)")
    e.emit(1, "try:")
    step = 0  # consecutive fixed-size skips (booleans, floats) collapse into one addition
    index = 0
    while index < len(writer):
        name, kind = writer[index]
        fixed = {"boolean": 1, "float": 4, "double": 8, "null": 0}.get(kind[0]) if name not in wanted else None
        if fixed is not None:
            step += fixed
            index += 1
            continue
        if step:
            e.emit(2, f"pos += {step}")
            step = 0
        run = 0  # skipped int/long fields in a row: mostly small counts, one byte each, tested at once
        while (index + run < len(writer) and writer[index + run][0] not in wanted
               and writer[index + run][1][0] in ("int", "long")):
            run += 1
        if run > 1:
            e.emit(2, f"if max(buf[pos:pos + {run}]) < 128:")
            e.emit(3, f"pos += {run}")
            e.emit(2, "else:")
            for _ in range(run):
                _skip_value(e, t, ("long", None), 3)
            index += run
            continue
        if name in wanted:
            local[name] = f"f{index}"
            _dec_value(e, t, kind, f"f{index}", 2)
        else:
            _skip_value(e, t, kind, 2)
        index += 1
    if step:
        e.emit(2, f"pos += {step}")
    e.emit(2, "pass")
    e.emit(1, "except _DecodeError:")
    e.emit(2, "raise")
    e.emit(1, "except (IndexError, ValueError, OverflowError, ArithmeticError, struct_error) as err:")
    e.emit(2, 'raise _DecodeError(f"{type(err).__name__}: {err} (input of {len(buf)} bytes)") from err')
    e.emit(1, "if pos > len(buf):  # a skipped or sliced value ran past the end")
    e.emit(2, 'raise _DecodeError(f"truncated: the record needs {pos} bytes, the input has {len(buf)}")')
    e.emit(1, f"return ({''.join(local[name] + ', ' for name in fields)}), pos")


@dataclass(frozen=True, slots=True)
class ProjectedDecoder:
    """A compiled decoder of some fields of one writer schema (see :func:`build_projected_decoder`).

    ``decode(buf, pos=0) -> (values, end)``: ``values`` is the tuple of ``fields`` in that order, each equal to what
    :class:`FastCodec`'s ``decode`` (same ``timestamps``) returns for it; ``end`` the position after the body.
    Raises :class:`DecodeError` where the body's framing is broken (a truncation, a union index other than 0/1, a
    negative length, an over-long varint). A skipped value is read no further than its framing, so a body whose
    unread strings are not UTF-8, say, decodes here and not in the full decoder. Thread-safe.
    """

    name: str
    fields: tuple[str, ...]
    timestamps: Timestamps
    source: str
    decode: Callable[..., tuple[tuple[Any, ...], int]]


def build_projected_decoder(
    schema: Mapping[str, Any],
    fields: Sequence[str],
    *,
    timestamps: Timestamps = "datetime",
    reader: Mapping[str, Any] | None = None,
    prefix: bool = False,
) -> ProjectedDecoder:
    """Generate and compile a decoder of the top-level ``fields`` of bodies written with record ``schema`` (the
    writer schema: the body's layout), skipping every other field. ``reader`` (e.g. the current version of an older
    writer's record) resolves as fastavro does for the cases it can mirror exactly: a field only the reader has takes
    the reader's default as the schema writes it; a field both have must have the same type in both.

    Raises :class:`UnsupportedSchemaError` for a type the generator does not handle, or a field whose type differs
    between writer and reader, or one holding a nested record when a reader is given (read those with fastavro);
    :class:`ConfigError` for a field asked for twice, one that neither schema has, or one only the reader has
    without a default. With ``prefix`` the body is read only up to the end of the last field asked for, and ``end``
    is that position (the sink reads a record's leading fields and hands the rest to ClickHouse). Costs a few
    milliseconds: build once per writer schema."""
    e, t, full = _start(schema, timestamps)
    names = tuple(fields)
    _projected_entry(e, t, schema, names, reader, prefix)
    header = [
        f"# Generated by schemas.fastcodec ({'prefix' if prefix else 'projected'} decoder) for record {full}, "
        f"fields {list(names)} "
        f"(timestamps={timestamps!r}). Do not edit: regenerate.",
        *(f"#   {name} = {_describe(value)}" for name, value in e.consts.items()),
    ]
    helpers = [source for _, item in e.pending for source in (item["source"], "", "")]
    source = "\n".join([*header, "", "", *e.lines, "", "", *helpers])
    namespace: dict[str, Any] = {**_runtime_globals(), **e.consts}
    exec(compile(source, f"<fastcodec projection {full}>", "exec"), namespace)  # noqa: S102 - our own source
    return ProjectedDecoder(name=full, fields=names, timestamps=timestamps, source=source,
                            decode=namespace["decode"])


# ------------------------------------------------------------------------------------------------ checked encoder
# One generated function per record *shape* (the tuple of keys an event dict has, in order): absent fields are
# constants (their defaults' bytes, computed once when the shape is first seen), present ones are read, checked and
# encoded; a shape is compiled on first sight and cached (bounded; beyond the bound the generic function runs).

_MAX_SHAPES = 256


@dataclass(frozen=True, slots=True)
class CheckedEncoder:
    """A compiled one-pass check-fill-encode function of one record schema (see :func:`build_checked_encoder`).

    ``prepare(rec, *params)`` returns the ``returns`` expression (by default the framed bytes) when ``rec`` passes
    the guard and encodes, else ``None``: never raises, never mutates ``rec``. ``None`` means "not sure": the caller
    takes its slow path, which either accepts the record (with the same bytes) or says what is wrong.
    ``prepare_all(recs, *params)`` is the list of ``prepare`` results. ``source`` is the generic function's text;
    ``shape_source(keys)`` the text of the function specialised to a dict's keys.
    """

    name: str
    source: str
    prepare: Callable[..., Any]
    prepare_all: Callable[..., list[Any]]
    shape_source: Callable[[tuple[str, ...]], str]


@dataclass(frozen=True)
class _CheckedSpec:
    schema: Mapping[str, Any]
    params: tuple[str, ...]
    guard: tuple[str, ...]
    fills: Mapping[str, tuple[str, str | None]]
    returns: str
    names: Mapping[str, Any]
    memo: tuple[str, ...] = ()
    item_guards: Mapping[str, str] = field(default_factory=dict)
    closed: bool = False


def _decided(part: str, env: Mapping[str, Any]) -> bool | None:
    """The value of a guard part that reads only constants (an absent field's default, the module's globals),
    evaluated once at generation; None when it reads anything else (it is then tested at run time)."""
    try:
        return bool(eval(compile(part, "<guard>", "eval"), {"__builtins__": builtins, **env}))  # noqa: S307 - ours
    except Exception:  # noqa: BLE001 - a local, a parameter, or a failure the run-time test reports as None
        return None


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
#: Entries of a checked encoder's memo (encoded runs of string fields, by their values); beyond it, no new entries.
_MEMO_MAX = 4096


def _memo_fields(spec: _CheckedSpec, fields: list[tuple[str, tuple[str, Any], Any]], here: set[str],
                 present: tuple[str, ...] | None) -> tuple[str, ...]:
    """The memoised run of this shape: ``spec.memo`` when the shape has all of it, unfilled, as consecutive string
    fields of the schema; else none."""
    if not spec.memo or present is None or not set(spec.memo) <= here or set(spec.memo) & set(spec.fills):
        return ()
    names = [name for name, _, _ in fields]
    start = names.index(spec.memo[0])
    run = fields[start : start + len(spec.memo)]
    if tuple(name for name, _, _ in run) != spec.memo or any(kind[0] != "string" for _, kind, _ in run):
        raise ConfigError(f"memo {spec.memo} is not a run of consecutive string fields of the record")
    return spec.memo


def _memo_run(e: _Emitter, t: _Types, fields: list[tuple[str, tuple[str, Any], Any]], memo: tuple[str, ...],
              local: Mapping[str, str], parts: list[str], check: Callable[[list[str], int], None],
              slots: list[str], utf8: Sequence[str]) -> dict[str, str]:
    """Emit the memoised encoding of the run ``memo``: a hit is the bytes of the same values checked and encoded
    before; a miss checks the guard parts about them only, encodes them and remembers the bytes. The UTF-8 bytes of
    the fields in ``utf8`` are remembered beside them; returns their locals by field name."""
    key = f"({', '.join(local[name] for name in memo)},)"
    e.emit(2, f"mk = {key}")
    e.emit(2, "m = _MEMO_get(mk)")
    e.emit(2, "if m is None:")
    check(parts, 3)
    inner: list[str] = []
    kinds = {name: kind for name, kind, _ in fields}
    texts: dict[str, str] = {}
    for name in memo:
        _enc_value(e, t, kinds[name], local[name], 3, inner)
        texts[name] = inner[-1]  # a string's slots are (length, UTF-8 bytes)
    kept = [name for name in memo if name in utf8]
    joined = f"b\"\".join(({', '.join(inner)},))"
    e.emit(3, f"m = ({joined}, {''.join(texts[name] + ', ' for name in kept)})" if kept else f"m = {joined}")
    e.emit(3, "if len(_MEMO) < _MEMO_MAX:")
    e.emit(4, "_MEMO[mk] = m")
    if not kept:
        slots.append("m")
        return {}
    names = {name: f"u{local[name]}" for name in kept}
    e.emit(2, f"mb, {''.join(names[name] + ', ' for name in kept)}= m")
    slots.append("mb")
    return names


_UTF8 = re.compile(r"\{(\w+)_utf8\}")


def _map_memo_name(field_name: str) -> str:
    """The global of a checked encoder that remembers the bytes of map field ``field_name`` (``<it>_get`` is its
    bound ``get``): one per field, since each has its own entry test."""
    return f"_MAP_MEMO_{field_name}"


_LOCAL = r"v\d+"
_NON_POSITIVE_LE = re.compile(rf"\((0|-\d+)\) <= ({_LOCAL})")
_PLUS_ZERO_LE = re.compile(rf"(?:({_LOCAL}) \+ \(0\)|\(0\) \+ ({_LOCAL})) <= ({_LOCAL})")


def _given_whole(text: str, proven: set[str]) -> str | None:
    """A formatted guard part simplified by what the rest of the guard proves (``proven``: locals that are exact
    ints >= 0 whenever the whole guard holds, so only then do the two forms need to agree): None when the part then
    always holds (``(0) <= v8``: an absent field's default against such an int), else the part, its ``+ (0)`` of such
    an int dropped (``v10 + (0) <= v8`` is ``v10 <= v8``, then deduplicated). Any other text is kept as it is."""
    if not proven:
        return text
    le = _NON_POSITIVE_LE.fullmatch(text)
    if le is not None and le.group(2) in proven:
        return None
    plus = _PLUS_ZERO_LE.fullmatch(text)
    if plus is not None and (plus.group(1) or plus.group(2)) in proven:
        return f"{plus.group(1) or plus.group(2)} <= {plus.group(3)}"
    return text


def _checked_function(spec: _CheckedSpec, fn: str, present: tuple[str, ...] | None) -> tuple[str, dict[str, Any]]:
    """Source of one checked function (generic when ``present`` is None) and the constants it needs; raises
    :class:`UnsupportedSchemaError`, or ``LookupError`` when the shape lacks a required field (no function then)."""
    e = _Emitter("datetime")
    t = _Types(e)
    full = t.norm(dict(spec.schema), None)[1]
    namespace = full.rsplit(".", 1)[0] if "." in full else None
    fields = _fields(t, spec.schema, namespace)
    known = {name for name, _, _ in fields}
    unknown = sorted(set(spec.fills) - known)
    if unknown:
        raise ConfigError(f"fills name fields {', '.join(unknown)} that record {full} does not have")
    here = known if present is None else set(present)
    local: dict[str, str] = {}
    const_runs: list[list[tuple[str, tuple[str, Any], str]]] = []  # runs of absent fields: (name, kind, literal)
    plan: list[tuple[str, Any]] = []  # ("field", index) | ("const", run index)
    e.emit(0, f"def {fn}(rec{''.join(', ' + p for p in spec.params)}):")
    e.emit(1, "try:")
    if spec.closed and present is None:  # a shape's keys were checked against the schema when it was compiled
        e.emit(2, "if not _FIELDS.issuperset(rec):")
        e.emit(3, "return None")
    for index, (name, kind, fld) in enumerate(fields):
        value = f"v{index}"
        if name in here:
            local[name] = value
            if present is not None:
                e.emit(2, f"{value} = rec[{name!r}]")  # the shape says it is there
            elif "default" in fld and name not in spec.fills:
                e.emit(2, f"{value} = rec.get({name!r}, {_default_expr(e, fld['default'])})")
            elif kind[0] == "optional" or name in spec.fills:
                e.emit(2, f"{value} = rec.get({name!r})")
            else:
                e.emit(2, f"{value} = rec[{name!r}]")
            plan.append(("field", index))
        elif name in spec.fills:
            local[name] = "None"  # the guard sees an absent filled field as None
            plan.append(("fill", index))
        else:
            if "default" in fld:
                literal = _default_expr(e, fld["default"])
            elif kind[0] == "optional":
                literal = "None"
            else:
                raise LookupError(name)
            local[name] = f"({literal})"
            if plan and plan[-1][0] == "const":
                const_runs[-1].append((name, kind, literal))
            else:
                const_runs.append([(name, kind, literal)])
                plan.append(("const", len(const_runs) - 1))
    memo = _memo_fields(spec, fields, here, present)
    main = [part for part in spec.guard
            if not memo or not _PLACEHOLDER.findall(part) or not set(_PLACEHOLDER.findall(part)) <= set(memo)]
    main += [f"{{{name}}}.__class__ is str" for name in memo]  # a memo hit is then an exact string match
    absent = known - here
    # Fields the main guard proves exact non-negative ints (it runs before anything else is read or encoded).
    whole = {name for name in here if local.get(name, "").isidentifier()
             and f"{{{name}}}.__class__ is int" in main and f"{{{name}}} >= 0" in main}
    proven = {local[name] for name in whole}

    def check(parts: list[str], ind: int) -> None:
        kept: list[str] = []
        for part in parts:
            text = _given_whole(part.format_map(local), proven)
            if text is None:
                continue
            # In a shape, a part about absent fields only is decided here: dropped when it holds, and when it
            # fails the shape never passes.
            fixed = set(_PLACEHOLDER.findall(part)) <= absent and present is not None
            decided = _decided(text, {**_runtime_globals(), **spec.names, **e.consts}) if fixed else None
            if decided is False:
                kept = ["False"]
                break
            if decided is None and text not in kept:  # the same test twice decides nothing new
                kept.append(text)
        if kept:
            e.emit(ind, f"if not ({' and '.join(f'({part})' for part in kept)}):")
            e.emit(ind + 1, "return None")

    check(main, 2)
    slots: list[str] = ["_PREFIX"]
    finals = dict(local)
    utf8 = _UTF8.findall(spec.returns)
    for name in utf8:
        finals[f"{name}_utf8"] = f"{local[name]}.encode()"  # unless the memo has the bytes (below)
    for step, ref in plan:
        if step == "const":
            slots.append(f"_K{ref}")
            continue
        if memo and fields[ref][0] in memo:
            if fields[ref][0] == memo[0]:
                texts = _memo_run(e, t, fields, memo, local, [p for p in spec.guard if p not in main], check,
                                  slots, utf8)
                finals.update({f"{name}_utf8": value for name, value in texts.items()})
            continue
        name, kind, _fld = fields[ref]
        value = f"v{ref}"
        finals[name] = value
        expr, encoded = spec.fills.get(name, (None, None))
        if step == "fill" and encoded is not None:
            e.emit(2, f"{value} = {expr}")
            slots.append(encoded.replace(f"{{{name}}}", value))
            continue
        if step == "fill":
            e.emit(2, f"{value} = {expr}")
        elif expr is not None:
            e.emit(2, f"if {value} is None:")
            e.emit(3, f"{value} = {expr}")
        entry_check = spec.item_guards.get(name) if kind[0] == "map" else None
        _enc_value(e, t, kind, value, 2, slots, entry_check,
                   _map_memo_name(name) if entry_check is not None else None, non_negative=name in whole)
    body = f"b\"\".join(({', '.join(slots)},))"
    e.emit(2, f"return {spec.returns.format_map({**finals, 'body': body})}")
    e.emit(1, "except Exception:  # anything odd: the caller's slow path decides (and explains)")
    e.emit(2, "return None")
    # The absent fields' bytes: the same generated statements, run once on the defaults at module execution.
    for ref, run in enumerate(const_runs):
        e.emit(0, "")
        e.emit(0, f"def _make_K{ref}():")
        parts: list[str] = []
        for offset, (_name, kind, literal) in enumerate(run):
            e.emit(1, f"c{offset} = {literal}")
            _enc_value(e, t, kind, f"c{offset}", 1, parts)
        e.emit(1, f"return b\"\".join(({', '.join(parts)},))")
        e.emit(0, "")
        e.emit(0, f"_K{ref} = _make_K{ref}()")
    helpers = [source for _, item in e.pending for source in (item["source"], "", "")]
    header = [f"# Generated by schemas.fastcodec (checked encoder) for record {full}"
              f"{'' if present is None else ', shape ' + repr(present)}. Do not edit: regenerate.",
              *(f"#   {name} = {_describe(value)}" for name, value in e.consts.items())]
    return "\n".join([*header, "", *e.lines, "", "", *helpers]), e.consts


def build_checked_encoder(
    schema: Mapping[str, Any],
    *,
    prefix: bytes = b"",
    params: tuple[str, ...] = (),
    guard: Sequence[str] = (),
    fills: Mapping[str, tuple[str, str | None]] | None = None,
    returns: str = "{body}",
    names: Mapping[str, Any] | None = None,
    memo: Sequence[str] = (),
    item_guards: Mapping[str, str] | None = None,
    closed: bool = False,
) -> CheckedEncoder:
    """Compile a one-pass ``prepare(rec, *params)`` for record ``schema``: read each field once, check ``guard``
    (Python expressions that must all hold; ``{field}`` is the field's value as given: absent = its default, or None
    for a filled field), set absent filled fields from ``fills`` (field -> (value expression, expression of its
    encoded bytes, where ``{field}`` is the filled value, or None)), then encode with the statements of
    :func:`build_fast_codec`, ``prefix`` (the framing) first. ``returns`` is the result (``{body}`` = the framed
    bytes, ``{field}`` = a field's final value); ``names`` are extra globals of the expressions; ``{field_utf8}`` in
    ``returns`` is the UTF-8 bytes of a string field.
    ``closed`` refuses a record with a key the schema lacks. A plain dict runs the function specialised to its keys.
    ``memo`` names a run of consecutive string fields whose guard parts and bytes are remembered by value (exact
    ``str`` only);
    ``item_guards`` maps a map field to a test of each entry (``{key}``, ``{value}``), made while it is encoded.
    Any failure inside returns None. Raises :class:`UnsupportedSchemaError` as :func:`build_fast_codec` does.
    """
    spec = _CheckedSpec(schema, params, tuple(guard), dict(fills or {}), returns, dict(names or {}), tuple(memo),
                        dict(item_guards or {}), closed)
    memo_table: dict[tuple[str, ...], bytes] = {}
    base: dict[str, Any] = {**_runtime_globals(), **(names or {}), "_PREFIX": bytes(prefix), "_MEMO": memo_table,
                            "_MEMO_get": memo_table.get, "_MEMO_MAX": _MEMO_MAX}
    full = _full_name(str(schema.get("name")), schema.get("namespace"))
    known = frozenset(str(fld["name"]) for fld in schema.get("fields", []))
    base["_FIELDS"] = known
    for name in spec.item_guards:  # every shape of one encoder shares a map field's memo (bounded as _MEMO)
        map_memo: dict[tuple[tuple[str, str], ...], bytes] = {}
        base[_map_memo_name(name)] = map_memo
        base[_map_memo_name(name) + "_get"] = map_memo.get

    def compile_fn(present: tuple[str, ...] | None) -> Callable[..., Any]:
        source, consts = _checked_function(spec, "checked", present)
        namespace = {**base, **consts}
        exec(compile(source, f"<fastcodec checked {full}>", "exec"), namespace)  # noqa: S102 - our own source
        fn: Callable[..., Any] = namespace["checked"]
        return fn

    generic = compile_fn(None)
    shapes: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def refuse(*_args: Any) -> None:
        return None  # a shape that lacks a required field: the slow path names it

    def new_shape(keys: tuple[Any, ...]) -> Callable[..., Any]:
        if len(shapes) >= _MAX_SHAPES or len(set(keys)) != len(keys) or not known.issuperset(keys):
            return generic  # unknown keys, or too many shapes: the generic function (and the slow path) decide
        try:
            fn = compile_fn(keys)
        except LookupError:
            fn = refuse
        shapes[keys] = fn
        return fn

    def shape_source(keys: tuple[str, ...]) -> str:
        return _checked_function(spec, "checked", keys)[0]

    # The dispatcher, generated too so the parameters pass without *args packing.
    args = "".join(", " + p for p in params)
    dispatch: dict[str, Any] = {"_generic": generic, "_shape": shapes.get, "_new_shape": new_shape, "_dict": dict}
    exec(compile(  # noqa: S102 - our own generated source
        f"def prepare(rec{args}):\n"
        f"    if rec.__class__ is not _dict:\n"
        f"        return _generic(rec{args})\n"
        f"    keys = tuple(rec)\n"
        f"    return (_shape(keys) or _new_shape(keys))(rec{args})\n"
        f"\n"
        f"def prepare_all(recs{args}):\n"
        f"    out = []\n"
        f"    append = out.append\n"
        f"    last = fn = None\n"
        f"    for rec in recs:\n"
        f"        if rec.__class__ is _dict:\n"
        f"            keys = tuple(rec)\n"
        f"            if keys != last:  # a batch's events mostly share a shape: compare, no hash and lookup\n"
        f"                fn = _shape(keys) or _new_shape(keys)\n"
        f"                last = keys\n"
        f"            append(fn(rec{args}))\n"
        f"        else:\n"
        f"            append(_generic(rec{args}))\n"
        f"    return out\n",
        f"<fastcodec checked {full} dispatch>", "exec"), dispatch)
    prepare: Callable[..., Any] = dispatch["prepare"]
    return CheckedEncoder(name=full, source=_checked_function(spec, "checked", None)[0], prepare=prepare,
                          prepare_all=dispatch["prepare_all"], shape_source=shape_source)
