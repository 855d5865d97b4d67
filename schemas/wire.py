"""Avro wire formats: single-object encoding (default, no registry) and Confluent framing (with a Schema Registry).

Single-object (Avro spec): ``0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
parsing canonical form | body``; Confluent: ``0x00 | 4-byte big-endian Schema Registry id | body``. Every
consumer accepts both (:meth:`AvroCodec.decode` looks at the first byte).

Guarantee: bytes written with an older known writer schema are resolved to the current schema of the same record,
so consumers always see the current shape. Bodies of the current schemas go through the generated codec of
:mod:`schemas.fastcodec`, everything else through fastavro. Only the registry helpers import confluent-kafka,
lazily, so the codec stays usable without it. See DESIGN §3.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.errors import ConfigError, DecodeError, EncodeError, UnknownSchemaError
from schemas.fastcodec import FastCodec, Timestamps, UnsupportedSchemaError, build_fast_codec, build_projected_decoder
from schemas.loader import NAMESPACE, SCHEMA_NAMES, load_schema
from schemas.models import to_micros

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

# Imports inside functions: the Schema Registry client is an optional extra that the SDK import must
# not load (tests/unit/test_packaging.py; measure with
# `python -X importtime -c "import confluent_kafka.schema_registry.avro"`).

__all__ = [
    "CONFLUENT_HEADER_LEN",
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_HEADER_LEN",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "AvroProjection",
    "Framing",
    "SchemaResolver",
    "build_registry_client",
    "build_registry_deserializer",
    "build_registry_resolver",
    "build_registry_serializer",
    "decode_body",
    "encode_body",
    "framing_of",
    "parse_record_schema",
    "schema_fingerprint",
    "without_uuid",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_LEN = 5
_CONFLUENT_ID = struct.Struct(">I")

Framing = Literal["single_object", "confluent"]
#: Looks up a writer schema by Schema Registry id; returns the schema as a dict or JSON text; raises when unknown.
SchemaResolver = Callable[[int], Mapping[str, Any] | str]
AvroSchema = Mapping[str, Any] | str


def schema_fingerprint(schema: AvroSchema) -> bytes:
    """The 8 fingerprint bytes single-object encoding writes: CRC-64-AVRO (Rabin) of the parsing canonical form,
    little-endian (fastavro's hex is already in that byte order, as Java's ``SchemaNormalization`` writes it)."""
    parsed = parse_record_schema(_as_schema_dict(schema))
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def framing_of(data: bytes) -> Framing:
    """Which framing ``data`` uses, judged by its magic bytes. Raises :class:`DecodeError` for neither."""
    if data[:2] == SINGLE_OBJECT_MAGIC:
        return "single_object"
    if data[:1] == CONFLUENT_MAGIC:
        return "confluent"
    raise DecodeError(
        f"unknown framing: first bytes {bytes(data[:2]).hex() or '(empty)'} are neither c301 (Avro single-object) "
        "nor 00 (Confluent); the producer is not writing Avro with one of our framings"
    )


def _as_schema_dict(schema: AvroSchema) -> dict[str, Any]:
    if isinstance(schema, str):
        loaded: dict[str, Any] = json.loads(schema)
        return loaded
    return dict(schema)


def without_uuid(schema: Any) -> Any:
    """A copy of a schema whose uuid logical types are dropped, so fastavro reads them as plain strings (the binary
    encoding is the same; the parsing canonical form, hence the fingerprint, too)."""
    if isinstance(schema, dict):
        return {
            key: without_uuid(value)
            for key, value in schema.items()
            if not (key == "logicalType" and value == "uuid")
        }
    if isinstance(schema, list):
        return [without_uuid(item) for item in schema]
    return schema


def parse_record_schema(schema: Any) -> dict[str, Any]:
    """fastavro's compiled form of a record schema, for :func:`encode_body` / :func:`decode_body`."""
    parsed = parse_schema(schema)
    if not isinstance(parsed, dict):
        raise ConfigError(f"expected an Avro record schema (a JSON object), got {type(parsed).__name__}")
    return parsed


def encode_body(parsed: dict[str, Any], record: Mapping[str, Any]) -> bytes:
    """The Avro binary body of ``record`` under a schema from :func:`parse_record_schema` (no header): the one
    schemaless writer of the project (the hot path uses it for bodies its own encoders do not build)."""
    out = BytesIO()
    schemaless_writer(out, parsed, record)
    return out.getvalue()


def decode_body(data: bytes, pos: int, writer: dict[str, Any],
                reader: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """Read one Avro body from ``data`` at ``pos`` (``writer`` and optional ``reader`` from
    :func:`parse_record_schema`); returns the record and the position after it. Raises what fastavro raises on
    malformed input (callers that route bad input to the DLQ catch it)."""
    stream = BytesIO(data)
    stream.seek(pos)
    record: Any = schemaless_reader(stream, writer, reader)
    return record, stream.tell()


def _parse_for_reading(schema: AvroSchema) -> dict[str, Any]:
    return parse_record_schema(without_uuid(_as_schema_dict(schema)))


def _full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _short_name(full_name: str) -> str:
    # Our records are returned by simple name (as load_schema and encode take them); foreign ones keep the full name.
    return full_name.removeprefix(NAMESPACE + ".")


@dataclass(frozen=True, slots=True)
class _WriterEntry:
    """A known writer schema: the name decode returns, the parsed writer, and the parsed reader to resolve to (None
    when the writer is the current schema, which is the fast path: no resolution). ``fast`` is the generated codec
    when the writer is exactly the current schema (then it decodes instead of fastavro)."""

    name: str
    writer: dict[str, Any]
    reader: dict[str, Any] | None
    fast: FastCodec | None = None


class AvroCodec:
    """Encodes records with single-object (or Confluent) framing and decodes either framing.

    Promises: ``decode(encode(r, name))`` returns ``(name, r')`` where ``r'`` equals ``r`` with defaults filled and
    decimals at scale 12; every failure is a :class:`DecodeError`, :class:`UnknownSchemaError` or
    :class:`EncodeError` saying what was wrong. Thread-safe for concurrent encode/decode (caches only grow).

    Bodies of the current schemas are written and read by the generated codec (:mod:`schemas.fastcodec`); fastavro's
    schemaless writer/reader over precompiled schemas handles the rest: older writer schemas (resolution), explicit
    reader schemas, records the generated encoder refuses and schemas the generator does not support. Decoded
    timestamps are tz-aware UTC datetimes and decimals ``Decimal``, but a uuid string stays a ``str``, not
    ``uuid.UUID``: building a UUID object costs about as much as decoding three other fields, and dedupe and
    ClickHouse want the string anyway (the models treat ``event_id`` as the canonical string too).
    """

    def __init__(
        self,
        schemas: Mapping[str, AvroSchema] | None = None,
        *,
        resolver: SchemaResolver | None = None,
    ) -> None:
        """``schemas`` maps record name -> current schema (default: all of ``schemas/avro``); ``resolver`` looks
        Confluent schema ids up (e.g. :func:`build_registry_resolver`; a ``dict.__getitem__`` in tests)."""
        if schemas is None:
            schemas = {name: load_schema(name) for name in SCHEMA_NAMES}
        self._resolver = resolver
        self._current: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._by_fingerprint: dict[bytes, _WriterEntry] = {}
        self._by_id: dict[int, _WriterEntry] = {}
        # The current schemas parsed for reading (uuid as str), by record name: the reader of older writers.
        self._current_read: dict[str, dict[str, Any]] = {}
        # Explicit reader schemas passed to decode, parsed once: id(mapping) -> (mapping kept alive, parsed).
        self._readers: dict[int, tuple[AvroSchema, dict[str, Any]]] = {}
        # Generated codecs of the current schemas, by simple and full name: (single-object header, codec).
        self._fast: dict[str, tuple[bytes, FastCodec]] = {}
        # The current schemas as given (logical types included), by record name: what a container header carries.
        self._source: dict[str, dict[str, Any]] = {}
        for name, schema in schemas.items():
            parsed = parse_record_schema(_as_schema_dict(schema))
            full = _full_name(parsed)
            short = _short_name(full)
            if name not in (short, full):
                raise ConfigError(f"schema registered as {name!r} is record {full!r}; register it under its name")
            fp = schema_fingerprint(parsed)
            self._current[short] = (fp, parsed)
            self._source[short] = _as_schema_dict(schema)
            read_view = _parse_for_reading(schema)
            self._current_read[short] = read_view
            fast = self._build_fast(schema)
            if fast is not None:
                self._fast[short] = self._fast[full] = (SINGLE_OBJECT_MAGIC + fp, fast)
            self._by_fingerprint[fp] = _WriterEntry(short, read_view, None, fast)

    @staticmethod
    def _build_fast(schema: AvroSchema) -> FastCodec | None:
        # Timestamps as datetimes: what fastavro returned before, so callers see the same types.
        try:
            return build_fast_codec(_as_schema_dict(schema), timestamps="datetime")
        except UnsupportedSchemaError:
            return None  # fastavro handles this schema, as before

    # ---------------------------------------------------------------------------------------------------- schemas

    def names(self) -> list[str]:
        """Record names this codec encodes."""
        return list(self._current)

    def fingerprint(self, schema_name: str) -> bytes:
        """The 8-byte fingerprint of the current schema of ``schema_name``. Raises :class:`UnknownSchemaError`."""
        return self._current_entry(schema_name)[0]

    def register_writer_schema(self, schema: AvroSchema) -> bytes:
        """Make bytes written with ``schema`` (an older or other version of one of our records) decodable; they are
        resolved to the current schema of the same record name. Returns the schema's fingerprint.

        Raises :class:`UnknownSchemaError` when the record name is not one of this codec's records, and
        :class:`ConfigError` when the schema cannot be resolved to the current one (not backward compatible).
        """
        writer = _parse_for_reading(schema)
        name = _short_name(_full_name(writer))
        fp = schema_fingerprint(writer)
        current_fp, _ = self._current_entry(name)
        if fp == current_fp:
            return fp
        current = self._current_read[name]
        self._check_resolvable(writer, current, name)
        self._by_fingerprint[fp] = _WriterEntry(name, writer, current)
        return fp

    def _current_entry(self, schema_name: str) -> tuple[bytes, dict[str, Any]]:
        try:
            return self._current[_short_name(schema_name)]
        except KeyError:
            raise UnknownSchemaError(
                f"schema {schema_name!r} is not known to this codec; known: {', '.join(self._current)}"
            ) from None

    @staticmethod
    def _check_resolvable(writer: dict[str, Any], reader: dict[str, Any], name: str) -> None:
        # The backward-compatibility rule that matters for added fields: every current field the old writer lacks
        # needs a default. (Type changes are not checked here; fastavro reports them when reading, as DecodeError.)
        writer_fields = {field["name"] for field in writer.get("fields", [])}
        missing = [
            field["name"]
            for field in reader.get("fields", [])
            if field["name"] not in writer_fields and "default" not in field
        ]
        if missing:
            raise ConfigError(
                f"writer schema of {name} cannot be read with the current schema: current fields "
                f"{', '.join(missing)} have no default and are absent from the writer (not backward compatible)"
            )

    # ---------------------------------------------------------------------------------------------------- encode

    def encode(self, record: Mapping[str, Any], schema_name: str) -> bytes:
        """Single-object encoding of ``record`` (an Avro dict, e.g. ``model.to_avro_dict()``) with the current schema
        of ``schema_name``. Raises :class:`UnknownSchemaError` or :class:`EncodeError`."""
        fast = self._fast.get(schema_name)
        if fast is not None:
            try:
                return fast[0] + fast[1].encode(record)
            except EncodeError:
                pass  # stricter than fastavro on odd inputs: fastavro below encodes the record or says why not
        fp, parsed = self._current_entry(schema_name)
        out = BytesIO()
        out.write(SINGLE_OBJECT_MAGIC)
        out.write(fp)
        self._write_body(out, parsed, record, schema_name)
        return out.getvalue()

    def encode_confluent(self, record: Mapping[str, Any], schema_name: str, schema_id: int) -> bytes:
        """Confluent framing of ``record`` under registry id ``schema_id`` (which must denote the current schema of
        ``schema_name``; a registry serializer normally does this, see :func:`build_registry_serializer`)."""
        _, parsed = self._current_entry(schema_name)
        fast = self._fast.get(schema_name)
        if fast is not None:
            try:
                return CONFLUENT_MAGIC + _CONFLUENT_ID.pack(schema_id) + fast[1].encode(record)
            except EncodeError:
                pass  # as in encode: fastavro decides
        out = BytesIO()
        out.write(CONFLUENT_MAGIC)
        out.write(_CONFLUENT_ID.pack(schema_id))
        self._write_body(out, parsed, record, schema_name)
        return out.getvalue()

    @staticmethod
    def _write_body(out: BytesIO, parsed: dict[str, Any], record: Mapping[str, Any], schema_name: str) -> None:
        try:
            schemaless_writer(out, parsed, record)
        except Exception as err:  # fastavro raises ValueError/TypeError/AttributeError/KeyError by case
            raise EncodeError(
                f"cannot encode {schema_name}: {type(err).__name__}: {err}; build the record from its model "
                "(to_avro_dict) so types and required fields are right"
            ) from err

    # ---------------------------------------------------------------------------------------------------- decode

    def decode(self, data: bytes, reader_schema: str | AvroSchema | None = None) -> tuple[str, dict[str, Any]]:
        """Decode single-object or Confluent-framed ``data`` into ``(record name, Avro dict)``.

        The writer schema comes from the fingerprint (known schemas) or the schema id (via the resolver). Data
        written with an older registered schema is resolved to the current schema of its record. ``reader_schema``
        (a record name of this codec, or a schema dict, treated as immutable and parsed once) overrides the reader.

        Raises :class:`UnknownSchemaError` naming the fingerprint (hex) or schema id, and :class:`DecodeError` for
        bad magic, a truncated header or body, trailing bytes, or a body that does not match the writer schema.
        """
        entry, header, framing = self._entry_of(data)
        name, reader = entry.name, entry.reader
        if reader_schema is not None:
            reader = self._reader_for(reader_schema)
            name = _short_name(_full_name(reader))
            if reader is entry.writer:
                reader = None

        if reader is None and entry.fast is not None:
            return name, _run_generated(entry.fast.decode, data, header, framing, entry.name)

        body = BytesIO(data)
        body.seek(header)
        try:
            record = schemaless_reader(body, entry.writer, reader)
        except Exception as err:  # fastavro: EOFError, ValueError, UnicodeDecodeError, IndexError ... by case
            raise DecodeError(
                f"{framing} {entry.name} body does not decode ({len(data) - header} body bytes): "
                f"{type(err).__name__}: {err}; the message is truncated or not written with this schema"
            ) from err
        end = body.tell()
        if end != len(data):
            raise DecodeError(
                f"{framing} {entry.name} decoded with {len(data) - end} trailing bytes left; "
                "the message was written with a different schema than its header claims"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{framing} {entry.name} body decoded to {type(record).__name__}, not a record")
        return name, record

    def projection(self, schema_name: str, fields: Sequence[str], *,
                   timestamps: Timestamps = "datetime") -> AvroProjection:
        """A decoder of only ``fields`` of framed ``schema_name`` records (see :class:`AvroProjection`), for a
        consumer that reads a few fields of a wide record. Raises :class:`UnknownSchemaError` for a record this
        codec does not know and :class:`ConfigError` for a field its current schema does not have."""
        return AvroProjection(self, schema_name, fields, timestamps)

    def container_schema(self, data: bytes) -> tuple[str, dict[str, Any] | None]:
        """The record name of the schema framed ``data`` was written with, and the current schema of that record as
        given to the codec (logical types included) when the writer schema is exactly it, else None (an older or
        foreign writer: its bodies need resolution). Reads only the framing header; the body is not checked.

        Bodies of one non-None answer can be concatenated into an Avro container of that schema as they are
        (sinks/avro_block.py). Raises what :meth:`decode` raises for a bad, truncated or unknown header.
        """
        entry, _, _ = self._entry_of(data)
        current = self._current_read.get(entry.name)
        exact = entry.reader is None and current is not None and entry.writer == current
        return entry.name, (json.loads(json.dumps(self._source[entry.name])) if exact else None)

    def _entry_of(self, data: bytes) -> tuple[_WriterEntry, int, str]:
        """The writer entry named by the framing header of ``data``, the header's length and the framing's name."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            header = SINGLE_OBJECT_HEADER_LEN
            if len(data) < header:
                raise DecodeError(
                    f"truncated single-object header: {len(data)} bytes, need {header} (magic + 8-byte fingerprint)"
                )
            fp = data[2:header]
            entry = self._by_fingerprint.get(fp)
            if entry is None:
                raise UnknownSchemaError(
                    f"unknown writer schema fingerprint {bytes(fp).hex()} (CRC-64-AVRO, little-endian); the "
                    "producer uses a schema this consumer does not know: deploy the schema or register the old one"
                )
            framing = "single-object"
        elif data[:1] == CONFLUENT_MAGIC:
            header = CONFLUENT_HEADER_LEN
            if len(data) < header:
                raise DecodeError(f"truncated Confluent header: {len(data)} bytes, need {header} (magic + 4-byte id)")
            schema_id = _CONFLUENT_ID.unpack_from(data, 1)[0]
            entry = self._by_id.get(schema_id) or self._resolve_id(schema_id)
            framing = "Confluent"
        else:
            framing_of(data)  # raises the DecodeError that names the bytes
            raise AssertionError("unreachable")  # pragma: no cover
        return entry, header, framing

    def _resolve_id(self, schema_id: int) -> _WriterEntry:
        if self._resolver is None:
            raise UnknownSchemaError(
                f"Confluent-framed message with schema id {schema_id}, but no Schema Registry is configured; "
                "set FINOPS_SCHEMA_REGISTRY_URL"
            )
        try:
            schema = self._resolver(schema_id)
        except Exception as err:  # the resolver is pluggable: a registry client, a dict lookup, ...
            raise UnknownSchemaError(
                f"schema id {schema_id} could not be resolved ({type(err).__name__}: {err}); check the Schema "
                "Registry URL and that the producer's registry is the one this consumer uses"
            ) from err
        try:
            writer = _parse_for_reading(schema)
        except Exception as err:  # a registry may hold schemas fastavro rejects
            raise UnknownSchemaError(f"schema id {schema_id} is not a valid Avro schema: {err}") from err
        name = _short_name(_full_name(writer))
        reader: dict[str, Any] | None = None
        current = self._current.get(name)
        if current is not None and schema_fingerprint(writer) != current[0]:
            reader = self._current_read[name]
        # The generated codec only when the registry's schema is ours to the letter (logical types included, which
        # the fingerprint ignores); otherwise fastavro reads it with the registry's schema, as before.
        fast = self._fast.get(name) if reader is None and writer == self._current_read.get(name) else None
        entry = _WriterEntry(name, writer, reader, fast[1] if fast is not None else None)
        self._by_id[schema_id] = entry
        return entry

    def _reader_for(self, reader_schema: str | AvroSchema) -> dict[str, Any]:
        if isinstance(reader_schema, str) and not reader_schema.lstrip().startswith("{"):
            self._current_entry(reader_schema)  # raises UnknownSchemaError naming it
            return self._current_read[_short_name(reader_schema)]
        cached = self._readers.get(id(reader_schema))
        if cached is not None and cached[0] is reader_schema:
            return cached[1]
        parsed = _parse_for_reading(reader_schema)
        self._readers[id(reader_schema)] = (reader_schema, parsed)
        return parsed



def _run_generated(fn: Callable[[bytes, int], tuple[Any, int]], data: bytes, header: int, framing: str,
                   name: str) -> Any:
    """A generated decoder's result for the body of framed ``data`` after its ``header``, its errors said as the
    codec says them: DecodeError for a truncated or malformed body and for trailing bytes."""
    try:
        result, end = fn(data, header)
    except DecodeError as err:
        raise DecodeError(
            f"{framing} {name} body does not decode ({len(data) - header} body bytes): {err}; "
            "the message is truncated or not written with this schema"
        ) from err
    if end != len(data):
        raise DecodeError(
            f"{framing} {name} decoded with {len(data) - end} trailing bytes left; "
            "the message was written with a different schema than its header claims"
        )
    return result

#: A projected decode of one writer schema: fn(data, header) -> (values, end), the header length, and the framing's
#: name for error messages (None: fn raises errors that already say everything, and checks the end itself).
_Projected = tuple[Callable[[bytes, int], tuple[tuple[Any, ...], int]], int, str | None]


class AvroProjection:
    """Decodes some fields of framed records of one record name: ``decode(data)`` is the tuple of the values of
    ``fields`` (in that order) of the record :meth:`AvroCodec.decode` would return for ``data``, with timestamps as
    UTC datetimes (``timestamps="datetime"``) or int microseconds (``"micros"``). Made by :meth:`AvroCodec.projection`.

    Resolution by writer schema, as :meth:`AvroCodec.decode` does: per writer schema (fingerprint or registry id) a
    projected decoder is generated once (:func:`schemas.fastcodec.build_projected_decoder`; an older writer is
    resolved to the current schema: absent fields take their defaults); a writer it cannot mirror exactly (a changed
    field type, a type the generator does not handle) is decoded in full by the codec and the fields picked.

    Errors are the codec's: :class:`UnknownSchemaError` for an unknown writer, :class:`DecodeError` for bad framing,
    a truncated or malformed body, trailing bytes, or a record of another name. Fields not asked for are skipped by
    their framing only: a body whose unread values are malformed inside (a string that is not UTF-8) decodes here
    and not in :meth:`AvroCodec.decode`. Thread-safe (caches only grow).
    """

    def __init__(self, codec: AvroCodec, schema_name: str, fields: Sequence[str], timestamps: Timestamps) -> None:
        codec._current_entry(schema_name)  # raises UnknownSchemaError naming it
        self.name = _short_name(schema_name)
        self.fields = tuple(fields)
        known = {field["name"] for field in codec._current_read[self.name]["fields"]}
        unknown = [name for name in self.fields if name not in known]
        if unknown:
            raise ConfigError(f"record {self.name} has no field {', '.join(unknown)}")
        if len(set(self.fields)) != len(self.fields):
            raise ConfigError(f"fields {list(self.fields)} name a field twice")
        if timestamps not in ("datetime", "micros"):
            raise ConfigError(f"timestamps must be 'datetime' or 'micros', not {timestamps!r}")
        self.timestamps: Timestamps = timestamps
        self._codec = codec
        # Keyed by the whole single-object header (magic + fingerprint) or the Confluent schema id bytes.
        self._single: dict[bytes, _Projected] = {}
        self._confluent: dict[bytes, _Projected] = {}

    def decode(self, data: bytes) -> tuple[Any, ...]:
        """The values of the projection's fields in framed ``data``; raises as the class says."""
        hit = self._single.get(data[:SINGLE_OBJECT_HEADER_LEN])
        if hit is None:
            hit = self._resolve(data)
        fn, header, framing = hit
        if framing is None:
            return fn(data, header)[0]
        values: tuple[Any, ...] = _run_generated(fn, data, header, framing, self.name)
        return values

    def _resolve(self, data: bytes) -> _Projected:
        """The projected decode of the writer schema named by the header of ``data`` (built on first sight)."""
        if data[:1] == CONFLUENT_MAGIC:
            hit = self._confluent.get(bytes(data[1:CONFLUENT_HEADER_LEN]))
            if hit is not None:
                return hit
        entry, header, framing = self._codec._entry_of(data)  # raises what decode raises for the header
        if entry.name != self.name:
            raise DecodeError(f"{framing} message holds a {entry.name}, not a {self.name}; it is on the wrong topic")
        hit = self._build(entry, header, framing)
        if header == SINGLE_OBJECT_HEADER_LEN:
            self._single[bytes(data[:header])] = hit
        else:
            self._confluent[bytes(data[1:header])] = hit
        return hit

    def _build(self, entry: _WriterEntry, header: int, framing: str) -> _Projected:
        try:
            projected = build_projected_decoder(entry.writer, self.fields, timestamps=self.timestamps,
                                                reader=entry.reader)
        except UnsupportedSchemaError:
            pass  # not mirrored exactly: the codec decodes the whole record and resolves it, as decode does
        else:
            return projected.decode, header, framing
        fields, micros, codec = self.fields, self.timestamps == "micros", self._codec

        def whole(data: bytes, _header: int) -> tuple[tuple[Any, ...], int]:
            record = codec.decode(data)[1]
            values = tuple(record[name] for name in fields)
            return (tuple(_as_micros(v) for v in values) if micros else values), len(data)

        return whole, header, None


def _as_micros(value: Any) -> Any:
    """``value`` with its aware datetimes (fastavro's timestamp-micros values), nested ones included, as int micros."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return to_micros(value)
    if isinstance(value, dict):
        return {key: _as_micros(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_micros(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------------- registry glue


def _check_registry_url(url: str) -> None:
    if not url.startswith(("http://", "https://", "mock://")):
        raise ConfigError(
            f"Schema Registry URL {url!r} must start with http:// or https:// (or mock:// in tests); "
            "set FINOPS_SCHEMA_REGISTRY_URL"
        )


def build_registry_client(url: str, conf: Mapping[str, Any] | None = None) -> SchemaRegistryClient:
    """A confluent-kafka ``SchemaRegistryClient`` for ``url`` (plus extra client ``conf``, e.g. basic auth).

    ``mock://<name>`` gives confluent-kafka's in-process mock registry (tests, offline demos). Does not contact the
    registry. Raises :class:`ConfigError` for a malformed URL.
    """
    _check_registry_url(url)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url, **dict(conf or {})})


def build_registry_serializer(
    url: str,
    schema_name: str,
    *,
    auto_register: bool = True,
    client: SchemaRegistryClient | None = None,
) -> AvroSerializer:
    """A confluent-kafka ``AvroSerializer`` for our record ``schema_name`` (Confluent framing).

    It accepts an Avro dict or one of our models (converted with ``to_avro_dict``). The registry is contacted on the
    first serialize call (to register or look up the schema id), not here. Raises :class:`ConfigError` for a
    malformed URL and :class:`UnknownSchemaError` for a name that is not ours.
    """
    schema_text = json.dumps(load_schema(schema_name))
    from confluent_kafka.schema_registry.avro import AvroSerializer

    def to_dict(value: object, _ctx: object) -> dict[str, Any]:
        to_avro = getattr(value, "to_avro_dict", None)
        if callable(to_avro):
            converted: dict[str, Any] = to_avro()
            return converted
        if isinstance(value, Mapping):
            return dict(value)
        raise EncodeError(f"cannot serialize {type(value).__name__} as {schema_name}: pass a model or an Avro dict")

    serializer: AvroSerializer = AvroSerializer(
        client if client is not None else build_registry_client(url),
        schema_text,
        to_dict=to_dict,
        conf={"auto.register.schemas": auto_register},
    )
    return serializer


def build_registry_deserializer(
    url: str,
    schema_name: str | None = None,
    *,
    client: SchemaRegistryClient | None = None,
) -> AvroDeserializer:
    """A confluent-kafka ``AvroDeserializer`` for Confluent-framed bytes; with ``schema_name`` our current schema is
    the reader schema (old writer versions resolve to it). Prefer :class:`AvroCodec` with
    :func:`build_registry_resolver` on consumers: it also accepts single-object bytes.
    """
    schema_text = json.dumps(load_schema(schema_name)) if schema_name is not None else None
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    deserializer: AvroDeserializer = AvroDeserializer(
        client if client is not None else build_registry_client(url), schema_text
    )
    return deserializer


def build_registry_resolver(url: str, *, client: SchemaRegistryClient | None = None) -> SchemaResolver:
    """A :data:`SchemaResolver` for :class:`AvroCodec` that fetches schemas by id from the registry at ``url``
    (on first sight of an id; the codec caches the result). Does not contact the registry here."""
    registry = client if client is not None else build_registry_client(url)

    def resolve(schema_id: int) -> str:
        schema_text: str | None = registry.get_schema(schema_id).schema_str
        if schema_text is None:
            raise LookupError(f"registry returned no schema text for id {schema_id}")
        return schema_text

    return resolve
