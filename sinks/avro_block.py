"""Kafka Avro frames -> one Avro object container, without decoding the records (pure: no Kafka, no ClickHouse).

Role: the priced and spend topics carry Avro binary bodies behind a single-object or Confluent header
(:mod:`schemas.wire`); stripping each frame's header and concatenating the bodies of one writer schema gives an
Avro object container (:func:`build_container`) that the sink hands to ClickHouse (``INSERT ... FORMAT Avro``),
whose reader maps the record fields to the table's columns by name (DESIGN §6). :class:`PrefixReader` reads the
few leading fields the stored-id check needs.

Guarantee: no record is decoded in Python; a body ClickHouse's reader cannot place makes the insert fail, and the
writer then bisects and re-reads the offending message with the full decoder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.errors import DecodeError
from schemas.fastcodec import Timestamps, build_projected_decoder, encode_long
from schemas.wire import CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, SINGLE_OBJECT_HEADER_LEN, SINGLE_OBJECT_MAGIC

__all__ = [
    "PrefixReader",
    "build_container",
    "build_container_header",
    "compute_frame_header",
]

_CONTAINER_MAGIC = b"Obj\x01"


def _encode_bytes(data: bytes) -> bytes:
    return encode_long(len(data)) + data


def compute_frame_header(value: bytes) -> bytes | None:
    """The framing header of a Kafka value (the bytes that name its writer schema), or None when the value is too
    short for its framing or has neither magic. The body starts at ``len(header)``."""
    if value[:2] == SINGLE_OBJECT_MAGIC:
        return value[:SINGLE_OBJECT_HEADER_LEN] if len(value) >= SINGLE_OBJECT_HEADER_LEN else None
    if value[:1] == CONFLUENT_MAGIC:
        return value[:CONFLUENT_HEADER_LEN] if len(value) >= CONFLUENT_HEADER_LEN else None
    return None


def build_container_header(schema: Mapping[str, Any] | str) -> tuple[bytes, bytes]:
    """``(file header, sync marker)`` of a container for ``schema`` (the writer schema, logical types included).

    The sync marker is derived from the schema text, so equal batches give byte-identical containers.
    """
    text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"), sort_keys=True)
    schema_bytes = text.encode("utf-8")
    sync = hashlib.sha256(b"finops-avro-sync:" + schema_bytes).digest()[:16]
    meta = (
        encode_long(2)
        + _encode_bytes(b"avro.schema")
        + _encode_bytes(schema_bytes)
        + _encode_bytes(b"avro.codec")
        + _encode_bytes(b"null")
        + encode_long(0)
    )
    return _CONTAINER_MAGIC + meta + sync, sync


def build_container(header: bytes, sync: bytes, frames: Sequence[bytes], offsets: Sequence[int]) -> bytes:
    """One container of one data block: ``frames[i][offsets[i]:]`` (the bodies after their framing headers)
    concatenated. ``header`` and ``sync`` come from :func:`build_container_header` of the frames' writer schema.

    The headers stripped are 10 bytes of single-object encoding (``C3 01`` + the 8-byte writer-schema fingerprint)
    or 5 of Confluent framing (``00`` + a 4-byte registry id). An object container (Avro spec, "Object Container
    Files") is ``"Obj" 01 | metadata map {avro.schema, avro.codec: "null"} | 16-byte sync marker | blocks: <record
    count> <byte size> <concatenated record bodies> <sync marker>``, so no record needs decoding."""
    data = b"".join([frame[offset:] for frame, offset in zip(frames, offsets, strict=True)])
    return b"".join((header, encode_long(len(frames)), encode_long(len(data)), data, sync))


class PrefixReader:
    """Reads the leading fields of an Avro record body up to the last one asked for, skipping nothing else.

    Reads the ledger's ``event_id``, ``source`` and ``occurred_at``, which come first in PricedUsageEvent; the rest
    of the body is ClickHouse's to parse. What ClickHouse's reader does not check, and the row path's decoder does:
    bytes left over after the last record of a block are skipped; trailing bytes anywhere else shift the records
    after them and the insert fails.

    Built once per writer schema: the fields before and including the wanted ones must be ``string`` (returned as
    text), ``long`` / ``int`` (int; ``timestamp-micros`` as a UTC datetime, or with ``timestamps="micros"`` as the
    int of microseconds since the epoch the body holds) or ``boolean``. :meth:`read` raises
    :class:`DecodeError` on a truncated or malformed prefix (the caller then lets the full decoder say why).
    """

    __slots__ = ("_decode", "names")

    def __init__(self, schema: Mapping[str, Any], wanted: Sequence[str], *,
                 timestamps: Timestamps = "datetime") -> None:
        fields = list(schema.get("fields", []))
        names = [f["name"] for f in fields]
        missing = [name for name in wanted if name not in names]
        if missing:
            raise DecodeError(f"record {schema.get('name')} has no field(s) {', '.join(missing)}")
        last = max((names.index(name) for name in wanted), default=-1)
        for field in fields[: last + 1]:
            kind = field["type"]
            if isinstance(kind, dict):
                kind = kind.get("type")
            if kind not in ("string", "long", "int", "boolean"):
                raise DecodeError(f"field {field['name']} of {schema.get('name')} ({kind}) cannot be read as a prefix")
        self.names = tuple(names[: last + 1])
        # The reading itself is generated by the codec's generator (the same code that decodes these types in the
        # full and projected decoders), told to stop after the last field asked for.
        self._decode = (build_projected_decoder(schema, self.names, prefix=True, timestamps=timestamps).decode
                        if self.names else None)

    def read(self, data: bytes, pos: int) -> list[Any]:
        """The prefix values of the body starting at ``data[pos]``, in field order."""
        return list(self.read_tuple(data, pos))

    def read_tuple(self, data: bytes, pos: int) -> tuple[Any, ...]:
        """:meth:`read` as a tuple (the sink's per-message form: no list to build)."""
        if self._decode is None:
            return ()
        return self._decode(data, pos)[0]
