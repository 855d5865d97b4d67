"""Helpers of the intake tests: the receiver as a child process (``finops intake run``), a token, and telemetry
recorded by the real OpenTelemetry SDK (spans and log records captured in memory, then exported by the real
OTLP/HTTP exporters as many times as a test needs, which is what an exporter's retry does)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from producers.intake.tokens import IntakeTokenStore

Q12 = Decimal("1e-12")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue_token(tokens_file: Path, source: str, *, team: str = "", project: str = "") -> str:
    from datetime import UTC, datetime

    text, _ = IntakeTokenStore(tokens_file).issue(source, team=team, project=project, created_by="test",
                                                  now=datetime.now(UTC))
    return text


@dataclass
class IntakeChild:
    """``finops intake run`` in a child process (so a test can SIGKILL it)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def intake_env(bootstrap: str, prefix: str, data_dir: Path, tokens_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")}
    env.update({"FINOPS_KAFKA_BOOTSTRAP": bootstrap, "FINOPS_KAFKA_TOPIC_PREFIX": prefix,
                "FINOPS_DATA_DIR": str(data_dir), "FINOPS_INTAKE_TOKENS_FILE": str(tokens_file),
                "PYTHONPATH": str(REPO), **extra})
    return env


def start_intake(env: dict[str, str], port: int, log_path: Path, timeout: float = 60.0) -> IntakeChild:
    """Start the receiver and wait (with a deadline) until it accepts connections."""
    log = log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "finops.cli", "intake", "run", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    child = IntakeChild(proc, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"finops intake run exited with {proc.returncode}:\n{child.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return child
        except OSError:
            time.sleep(0.05)  # polling a port with a deadline
    child.stop()
    raise AssertionError(f"finops intake run did not listen on {port}:\n{child.log()}")


# ---- telemetry from the real SDK ----------------------------------------------------------------------------------
def record_spans(resource: dict[str, Any], build: Any) -> Sequence[Any]:
    """Run ``build(tracer)`` under a TracerProvider with ``resource``; return the finished ReadableSpans."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("tests.intake"))
    provider.shutdown()
    return memory.get_finished_spans()


def record_logs(resource: dict[str, Any], scope: str, records: Sequence[dict[str, Any]]) -> Sequence[Any]:
    """Emit ``records`` (event_name, body, attributes, timestamp) through a LoggerProvider; return them."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.resources import Resource

    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(resource))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger(scope)
    for record in records:
        logger.emit(**record)
    provider.shutdown()
    return memory.get_finished_logs()


def span_exporter(url: str, token: str, *, json: bool = False, timeout: float = 10.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if json:
        from opentelemetry.exporter.otlp.json.http.trace_exporter import (
            OTLPSpanExporter as JsonSpanExporter,
        )

        return JsonSpanExporter(endpoint=f"{url}/v1/traces", headers=headers, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=headers, timeout=timeout)


def log_exporter(url: str, token: str, *, timeout: float = 10.0) -> Any:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=f"{url}/v1/logs", headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def reference_cost(call: dict[str, Any]) -> Decimal:
    """genai-prices' reference price of one canonical call (provider, model, token counts, occurred_at)."""
    from genai_prices import Usage, calc_price

    from finops.pricing.engine import to_genai_usage

    price = calc_price(Usage(**to_genai_usage(call)), call["model"], provider_id=call["provider"],
                       genai_request_timestamp=call["occurred_at"])
    return price.total_price.quantize(Q12, ROUND_HALF_EVEN)


def message_count(bootstrap: str, topic: str, timeout: float = 30.0) -> int:
    """The sum of the topic's end offsets, asking again while a fresh topic's leaders are being elected."""
    from confluent_kafka import KafkaException

    from tests.integration.hotpath_child import end_offsets

    deadline = time.monotonic() + timeout
    while True:
        try:
            return sum(end_offsets(bootstrap, topic).values())
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # leader election in progress: ask again
