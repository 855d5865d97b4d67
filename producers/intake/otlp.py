"""OTLP/HTTP bodies in and out: decode an export request (protobuf or JSON, optionally gzip) with the generated
``opentelemetry-proto`` classes, flatten it into plain records the mappings read, and encode the answer.

Role: :func:`decode_request` and :func:`encode_response` do what the OTLP specification asks of a receiver
(both content types, gzip, OTLP/JSON's differences from protobuf's JSON mapping, ``partial_success``);
:func:`spans_of` and :func:`logs_of` turn ``AnyValue`` into Python values and ids into lower-case hex.

Guarantee: the mappings (one module per source family) never see protobuf; an undecodable body is
:class:`OtlpDecodeError` (HTTP 400 with a ``google.rpc.Status`` body, not retried).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from schemas.errors import FinopsError

__all__ = [
    "JSON",
    "PROTOBUF",
    "LogView",
    "OtlpDecodeError",
    "Signal",
    "SpanView",
    "decode_request",
    "encode_error",
    "encode_response",
    "gunzip",
    "logs_of",
    "media_type",
    "spans_of",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
Signal = Literal["traces", "logs", "metrics"]

_REQUESTS: dict[str, type[Message]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_HEX_ID = re.compile(r"(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{32})")


class OtlpDecodeError(FinopsError):
    """The body is not a valid OTLP export request of this signal in this encoding (HTTP 400)."""


def media_type(content_type: str | None) -> str | None:
    """``application/x-protobuf`` or ``application/json`` for a Content-Type header (parameters ignored), else
    None (the caller answers 415)."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if base == JSON:
        return JSON
    return None


def gunzip(body: bytes, limit: int) -> bytes:
    # Bounded: a gzip bomb must not take the receiver's memory.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise OtlpDecodeError(f"Content-Encoding is gzip but the body is not gzip data ({err})") from err
    if len(out) > limit:
        raise OtlpDecodeError(f"the decompressed body exceeds {limit} bytes; export smaller batches")
    if not d.eof:
        raise OtlpDecodeError("the gzip body is truncated")
    return out


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str) and _HEX_ID.fullmatch(value):
                node[key] = base64.b64encode(binascii.unhexlify(value)).decode()
            elif isinstance(value, dict | list):
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _hex_ids_to_base64(item)
    return node


def decode_request(signal: Signal, body: bytes, content_type: str, *, content_encoding: str | None = None,
                   max_bytes: int = 64 * 1024 * 1024) -> Message:
    """Parse an OTLP export request body. Raises :class:`OtlpDecodeError` naming what is wrong.

    Accepts ``application/x-protobuf`` and ``application/json`` bodies, ``Content-Encoding: gzip`` or none. OTLP/JSON
    is protobuf's JSON mapping with three differences the generic parser does not know: trace and span ids are hex
    (not base64), enums are integers, field names are lowerCamelCase. Ids are rewritten from hex to base64 before
    parsing (ids already in base64, as some exporters send, are left alone); unknown fields are ignored as the spec
    requires; int64 as strings and as numbers both parse."""
    encoding = (content_encoding or "").strip().lower()
    if encoding == "gzip":
        body = gunzip(body, max_bytes)
    elif encoding not in ("", "identity"):
        raise OtlpDecodeError(f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    message = _REQUESTS[signal]()
    if content_type == PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as err:
            raise OtlpDecodeError(f"the body is not a protobuf Export{signal.title()}ServiceRequest ({err})") from err
        return message
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise OtlpDecodeError(f"the body is not JSON ({err})") from err
    if not isinstance(doc, dict):
        raise OtlpDecodeError("an OTLP/JSON body must be a JSON object")
    try:
        json_format.ParseDict(_hex_ids_to_base64(doc), message, ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise OtlpDecodeError(f"the JSON body is not an Export{signal.title()}ServiceRequest ({err})") from err
    return message


_PARTIAL: dict[str, tuple[Any, Any, str]] = {
    "traces": (ExportTraceServiceResponse, ExportTracePartialSuccess, "rejected_spans"),
    "logs": (ExportLogsServiceResponse, ExportLogsPartialSuccess, "rejected_log_records"),
    "metrics": (ExportMetricsServiceResponse, ExportMetricsPartialSuccess, "rejected_data_points"),
}


def encode_response(signal: Signal, content_type: str, *, rejected: int = 0, message: str = "") -> bytes:
    """The success body: an empty response, or ``partial_success`` with the rejected count and a message."""
    response_cls, partial_cls, field = _PARTIAL[signal]
    response = response_cls()
    if rejected or message:
        response.partial_success.CopyFrom(partial_cls(**{field: rejected, "error_message": message}))
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(response)).encode()
    return bytes(response.SerializeToString())


def encode_error(content_type: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` body for a 4xx/5xx answer (code: the gRPC status code, e.g. 3 INVALID_ARGUMENT)."""
    status = Status(code=code, message=message)
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(status)).encode()
    return bytes(status.SerializeToString())


# ---- flattening ---------------------------------------------------------------------------------------------------
def any_value(value: AnyValue) -> Any:
    """An ``AnyValue`` as a Python value (None when unset)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value
    return None


def attributes(kvs: Any) -> dict[str, Any]:
    """A repeated ``KeyValue`` as a dict (a repeated key: the last wins)."""
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in kvs:
        value = kv.value
        kind = value.WhichOneof("value")  # the two common kinds inline: this loop runs for every attribute
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        else:
            out[kv.key] = any_value(value)
    return out


@dataclass(frozen=True, slots=True)
class SpanView:
    """One span, flattened. Ids are lower-case hex ("" when absent); times are Unix nanoseconds."""

    resource: Mapping[str, Any]
    scope: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str = ""
    kind: int = 0  # SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer


@dataclass(frozen=True, slots=True)
class LogView:
    """One log record (an OTel event when ``event_name`` or the ``event.name`` attribute is set), flattened."""

    resource: Mapping[str, Any]
    scope: str
    event_name: str
    body: Any
    time_ns: int
    attributes: Mapping[str, Any]
    trace_id: str = ""
    span_id: str = ""


def spans_of(request: ExportTraceServiceRequest) -> Iterator[SpanView]:
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for span in ss.spans:
                yield SpanView(
                    resource=resource, scope=scope, name=span.name, trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    attributes=attributes(span.attributes), status_code=span.status.code,
                    status_message=span.status.message, kind=span.kind,
                )


def logs_of(request: ExportLogsServiceRequest) -> Iterator[LogView]:
    for rl in request.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = sl.scope.name
            for record in sl.log_records:
                attrs = attributes(record.attributes)
                event_name = getattr(record, "event_name", "") or str(attrs.get("event.name") or "")
                yield LogView(
                    resource=resource, scope=scope, event_name=event_name,
                    body=any_value(record.body) if record.HasField("body") else None,
                    time_ns=record.time_unix_nano or record.observed_time_unix_nano, attributes=attrs,
                    trace_id=record.trace_id.hex(), span_id=record.span_id.hex(),
                )


def count_items(signal: Signal, request: Message) -> int:
    """How many spans, log records or metric data points a request holds (for partial_success counts)."""
    if signal == "traces":
        assert isinstance(request, ExportTraceServiceRequest)
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        assert isinstance(request, ExportLogsServiceRequest)
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    assert isinstance(request, ExportMetricsServiceRequest)
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total
