"""The intake's benchmark row (``finops bench intake``): spans/s from an OTLP protobuf body into Kafka, on one
core, beside a bare protobuf decode of the same payloads, measured in the same run.

Ours: :meth:`IntakeReceiver.ingest` per request body (decode with opentelemetry-proto, flatten, map, attribute,
validate, encode Avro, produce, **wait for every broker acknowledgement**), 8 requests in flight (many agents
export at once; one at a time would measure the broker's acknowledgement latency, not the receiver), the process
pinned to one CPU. HTTP parsing is left out of both sides (aiohttp's share is the same for any body). Baseline:
``ExportTraceServiceRequest.FromString`` of each body, nothing else. Both report CPU time per span.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finops.clock import utc_now

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["build_payloads", "run_bench"]


def build_payloads(requests: int, spans_per_request: int) -> list[bytes]:
    """OTLP/protobuf trace export bodies of GenAI chat spans (semconv attributes, as an instrumented app sends)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def kv(key: str, value: Any) -> KeyValue:
        v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
        return KeyValue(key=key, value=v)

    now = int(utc_now().timestamp() * 1e9)
    res = Resource(attributes=[kv("service.name", "bench-app"), kv("team.name", "bench"),
                               kv("project.name", "intake"), kv("deployment.environment.name", "prod")])
    bodies = []
    for r in range(requests):
        spans = []
        for i in range(spans_per_request):
            spans.append(Span(
                trace_id=uuid.uuid4().bytes, span_id=os.urandom(8), parent_span_id=os.urandom(8),
                name="chat gpt-4o-mini", kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=now - 900_000_000,
                end_time_unix_nano=now, attributes=[
                    kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                    kv("gen_ai.request.model", "gpt-4o-mini"), kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                    kv("gen_ai.response.id", f"chatcmpl-{r}-{i}"), kv("gen_ai.agent.id", f"agent-{i % 50}"),
                    kv("gen_ai.conversation.id", f"conv-{r}"), kv("gen_ai.usage.input_tokens", 1200 + i),
                    kv("gen_ai.usage.cache_read.input_tokens", 400), kv("gen_ai.usage.output_tokens", 300),
                    kv("server.address", "api.openai.com")]))
        message = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=res, scope_spans=[ScopeSpans(spans=spans)])])
        bodies.append(bytes(message.SerializeToString()))
    return bodies


@contextlib.contextmanager
def _one_core() -> Iterator[int | None]:
    try:
        before = os.sched_getaffinity(0)
    except AttributeError:  # not Linux: unpinned
        yield None
        return
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_bench(bootstrap: str, topic: str, *, requests: int = 200, spans_per_request: int = 100, in_flight: int = 8,
              kafka_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure both rows (module docstring); returns spans, wall and CPU seconds and spans/s of each."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from producers.intake.otlp import PROTOBUF
    from producers.intake.receiver import IntakeReceiver
    from producers.intake.tokens import IntakeTokenStore
    from producers.producer import UsageProducer

    bodies = build_payloads(requests, spans_per_request)
    spans = requests * spans_per_request
    out: dict[str, Any] = {"spans": spans, "requests": requests, "in_flight": in_flight,
                           "body_bytes": sum(map(len, bodies))}
    with _one_core() as cpu, tempfile.TemporaryDirectory(prefix="finops-bench-intake-") as tmp:
        out["cpu"] = cpu
        t0, c0 = time.perf_counter(), _cpu()
        decoded = 0
        for body in bodies:
            decoded += len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
        wall, cpu_s = time.perf_counter() - t0, _cpu() - c0
        assert decoded == spans
        out["bare"] = {"wall_s": wall, "cpu_s": cpu_s, "spans_per_s": spans / wall, "us_per_span": cpu_s / spans * 1e6}

        store = IntakeTokenStore(Path(tmp) / "tokens.json")
        _, token = store.issue("bench", created_by="bench", now=utc_now())
        producer = UsageProducer(bootstrap=bootstrap, topic=topic, source="intake-bench", spool_dir=Path(tmp) / "spool",
                                 register_atexit=False, linger_ms=5, kafka_config=kafka_config)
        receiver = IntakeReceiver(producer, store)

        async def ingest_all() -> None:
            for body in bodies[:2]:  # warm-up: connection, metadata, first batches (not counted)
                await receiver.ingest("traces", body, PROTOBUF, None, token)
            gate = asyncio.Semaphore(in_flight)

            async def one(body: bytes) -> None:
                async with gate:
                    response = await receiver.ingest("traces", body, PROTOBUF, None, token)
                if response.status != 200:
                    raise RuntimeError(f"intake answered {response.status}: {response.body!r}")

            t1, c1 = time.perf_counter(), _cpu()
            await asyncio.gather(*(one(body) for body in bodies))
            out["intake"] = {"wall_s": time.perf_counter() - t1, "cpu_s": _cpu() - c1}

        try:
            asyncio.run(ingest_all())
        finally:
            producer.close()
        r = out["intake"]
        r["spans_per_s"] = spans / r["wall_s"]
        r["us_per_span"] = r["cpu_s"] / spans * 1e6
        out["delivered"] = receiver.metrics.calls["genai"]
    return out
