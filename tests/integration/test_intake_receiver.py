"""The intake receiver over real HTTP with the real producer SDK and broker: status codes and bodies per the OTLP
specification, auth before anything is written, and the delivery rule (2xx only once Kafka acknowledged or the
spool holds the events; spool full -> 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from finops.topics import TopicNames
from producers.intake.receiver import IntakeReceiver, build_runner
from producers.intake.tokens import IntakeTokenStore
from producers.producer import UsageProducer
from tests.integration.hotpath_child import read_all
from tests.integration.intake_support import free_port, message_count

pytestmark = pytest.mark.integration


class Served:
    def __init__(self, receiver: IntakeReceiver) -> None:
        from aiohttp import web

        self.receiver = receiver
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = build_runner(receiver)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _span_json(span_id: str, *, end_ns: int | None = None, **attrs: Any) -> dict[str, Any]:
    end = end_ns or int(datetime.now(UTC).timestamp() * 1e9)
    values = [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}
              for k, v in {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                           "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 10, **attrs}.items()]
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "chat",
            "startTimeUnixNano": str(end - 1000), "endTimeUnixNano": str(end), "attributes": values}


def _export(*spans: dict[str, Any]) -> bytes:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [
        {"key": "team.name", "value": {"stringValue": "t"}}]}, "scopeSpans": [{"spans": list(spans)}]}]}).encode()


@pytest.fixture
def token_store(tmp_path: Path) -> IntakeTokenStore:
    return IntakeTokenStore(tmp_path / "tokens.json")


def _producer(bootstrap: str, topic: str, spool: Path, **kw: Any) -> UsageProducer:
    return UsageProducer(bootstrap=bootstrap, topic=topic, source="intake-test", spool_dir=spool,
                         register_atexit=False, **kw)


@pytest.fixture
def served(kafka_config: dict[str, Any], topics: TopicNames, tmp_path: Path,
           token_store: IntakeTokenStore) -> Iterator[Served]:
    producer = _producer(kafka_config["bootstrap.servers"], topics.usage, tmp_path / "spool")
    s = Served(IntakeReceiver(producer, token_store, retry_after=7))
    yield s
    s.close()
    producer.close()


def _token(store: IntakeTokenStore, **kw: Any) -> tuple[str, str]:
    text, record = store.issue("test-src", created_by="t", now=datetime.now(UTC), **kw)
    return text, record.token_id


def test_auth_status_codes_and_bodies(served: Served, token_store: IntakeTokenStore, kafka_config: dict[str, Any],
                                      topics: TopicNames) -> None:
    bootstrap = kafka_config["bootstrap.servers"]
    token, token_id = _token(token_store, project="p")
    body = _export(_span_json("eee19b7ec3c1b174"))
    url = f"{served.url}/v1/traces"
    json_h = {"Content-Type": "application/json"}

    # No token / wrong token: 401, a google.rpc.Status in the request's content type, nothing on Kafka.
    for auth in ({}, {"Authorization": "Bearer fi_000000000000_" + "A" * 43}, {"Authorization": token}):
        r = requests.post(url, data=body, headers={**json_h, **auth}, timeout=30)
        assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/json")
        assert "invalid or revoked" in r.json()["message"] or "missing" in r.json()["message"]
    assert message_count(bootstrap, topics.usage) == 0

    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(url, data=body, headers={"Content-Type": "text/plain", **auth}, timeout=30)
    assert r.status_code == 415
    r = requests.post(url, data=b"\x01\x02garbage", headers={"Content-Type": "application/x-protobuf", **auth},
                      timeout=30)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/x-protobuf")
    assert "protobuf" in Status.FromString(r.content).message

    # gzip JSON accepted: 200 with an empty JSON response, after the event is on Kafka.
    r = requests.post(url, data=gzip.compress(body), headers={**json_h, **auth, "Content-Encoding": "gzip"},
                      timeout=30)
    assert r.status_code == 200 and r.json() == {}
    assert message_count(bootstrap, topics.usage) == 1

    # An item that cannot be a valid event (finished a day in the future) is rejected by partial_success.
    future = int((datetime.now(UTC) + timedelta(days=1)).timestamp() * 1e9)
    mixed = _export(_span_json("eee19b7ec3c1b175"), _span_json("eee19b7ec3c1b176", end_ns=future))
    r = requests.post(url, data=mixed, headers={**json_h, **auth}, timeout=30)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "occurred_at" in partial["errorMessage"]
    assert message_count(bootstrap, topics.usage) == 2
    events = [m for m in read_all(bootstrap, topics.usage)]
    assert len(events) == 2

    # Metrics are acknowledged, never counted.
    r = requests.post(f"{served.url}/v1/metrics", data=b"{}", headers={**json_h, **auth}, timeout=30)
    assert r.status_code == 200
    assert message_count(bootstrap, topics.usage) == 2

    # Revoked: refused from the next request on.
    assert token_store.revoke(token_id, now=datetime.now(UTC))
    r = requests.post(url, data=body, headers={**json_h, **auth}, timeout=30)
    assert r.status_code == 401
    metrics = requests.get(f"{served.url}/metrics", timeout=30).text
    assert 'finops_intake_calls_total{family="genai"} 2' in metrics
    assert 'finops_intake_requests_total{signal="traces",code="401"} 4' in metrics


def test_broker_away_spooled_is_2xx_and_spool_full_is_503_with_retry_after(tmp_path: Path,
                                                                           token_store: IntakeTokenStore) -> None:
    # Nothing listens on the bootstrap port: events can only go to the spool, which holds about one event.
    dead = f"127.0.0.1:{free_port()}"
    producer = _producer(dead, "finops-test-usage", tmp_path / "spool", spool_max_bytes=1024, message_timeout_ms=500,
                         probe_interval=60.0)
    served = Served(IntakeReceiver(producer, token_store, retry_after=7, delivery_timeout=30))
    try:
        token, _ = _token(token_store, project="p")
        h = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from producers.intake.otlp import _hex_ids_to_base64

        def proto(*spans: dict[str, Any]) -> bytes:
            message = ExportTraceServiceRequest()
            json_format.ParseDict(_hex_ids_to_base64(json.loads(_export(*spans))), message)
            return bytes(message.SerializeToString())

        r = requests.post(f"{served.url}/v1/traces", data=proto(_span_json("00000000000000a1")), headers=h,
                          timeout=60)
        assert r.status_code == 200, r.content
        assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
        assert producer.stats().spool_pending == 1  # answered 2xx because it is on disk
        spans = [_span_json(f"00000000000000b{i}") for i in range(8)]
        r = requests.post(f"{served.url}/v1/traces", data=proto(*spans), headers=h, timeout=60)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert "spool is full" in Status.FromString(r.content).message
    finally:
        served.close()
        producer.close(timeout=1)


def test_litellm_generic_api_json_array_and_ndjson(served: Served, token_store: IntakeTokenStore,
                                                  kafka_config: dict[str, Any], topics: TopicNames) -> None:
    """LiteLLM's callback as its README config sends it: POST, bearer header, json_array then ndjson (a retry of
    the same ids)."""
    from tests.unit.test_intake_mappings import LITELLM

    bootstrap = kafka_config["bootstrap.servers"]
    token, _ = _token(token_store)
    now = datetime.now(UTC).timestamp()
    payloads = [{**LITELLM, "id": f"ll-{i}", "startTime": now - 1, "endTime": now} for i in range(3)]
    url = f"{served.url}/v1/litellm"
    r = requests.post(url, data=json.dumps(payloads), headers={"Authorization": f"Bearer {token}",
                                                               "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"accepted": 3, "rejected": 0, "error": ""}
    ndjson = "\n".join(json.dumps(p) for p in payloads) + "\n"
    r = requests.post(url, data=ndjson, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 3
    ids = {m.key() for m in read_all(bootstrap, topics.usage)}
    assert message_count(bootstrap, topics.usage) == 6 and ids == {b"ranker-agent"}
    r = requests.post(url, data=ndjson, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert r.status_code == 401 and message_count(bootstrap, topics.usage) == 6
    r = requests.post(url, data=b"{broken", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 400


def test_metrics_reconcile_but_never_count(served: Served, token_store: IntakeTokenStore,
                                           kafka_config: dict[str, Any], topics: TopicNames) -> None:
    """Claude-Code-shaped token metrics from the real SDK (delta temporality, as Claude Code exports by default):
    acknowledged, added to the reconciliation totals, and not one event on Kafka."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter,
    )
    from opentelemetry.sdk.metrics import Counter as SdkCounter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    token, _ = _token(token_store)
    exporter = OTLPMetricExporter(endpoint=f"{served.url}/v1/metrics", headers={"Authorization": f"Bearer {token}"},
                                  preferred_temporality={SdkCounter: AggregationTemporality.DELTA})
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "claude-code"}), metric_readers=[reader])
    tokens = provider.get_meter("com.anthropic.claude_code").create_counter("claude_code.token.usage", unit="tokens")
    tokens.add(1200, {"type": "input", "model": "claude-sonnet-4-20250514"})
    tokens.add(300, {"type": "output", "model": "claude-sonnet-4-20250514"})
    tokens.add(9000, {"type": "cacheRead", "model": "claude-sonnet-4-20250514"})
    assert reader.force_flush(30_000)
    provider.shutdown()
    text = requests.get(f"{served.url}/metrics", timeout=30).text
    assert 'finops_intake_metric_tokens_total{metric="claude_code.token.usage",type="input"} 1200' in text
    assert 'finops_intake_metric_tokens_total{metric="claude_code.token.usage",type="cacheread"} 9000' in text
    assert 'finops_intake_requests_total{signal="metrics",code="200"}' in text
    assert message_count(kafka_config["bootstrap.servers"], topics.usage) == 0
