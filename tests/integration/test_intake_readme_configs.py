"""Every configuration in README "Connect your agents", read from the README itself and used as the tool would
use it (environment variables for the OpenTelemetry SDK's exporters, the JSON / TOML / YAML fields for the
others), against a real receiver and broker: each produces its usage event, attributed as the README says.

Only the token (``fi_…``) and the receiver's address are substituted; a README edit that breaks a config (a
wrong variable, path, header or protocol) fails here."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from finops.topics import TopicNames
from producers.intake.receiver import IntakeReceiver
from producers.intake.tokens import IntakeTokenStore
from producers.producer import UsageProducer
from tests.integration.intake_support import record_logs, record_spans
from tests.integration.test_intake_receiver import Served
from tests.integration.test_producer_support import read_topic

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT = "http://127.0.0.1:4318"


def readme_blocks() -> dict[str, str]:
    text = README.read_text()
    return {name: body for name, body in re.findall(r"```\w+ intake:([\w-]+)\n(.*?)```", text, re.DOTALL)}


def env_lines(block: str) -> dict[str, str]:
    out = {}
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value.strip().strip('"')
    return out


@pytest.fixture
def setup(kafka_config: dict[str, Any], topics: TopicNames, tmp_path: Path) -> Any:
    store = IntakeTokenStore(tmp_path / "tokens.json")
    producer = UsageProducer(bootstrap=kafka_config["bootstrap.servers"], topic=topics.usage, source="readme",
                             spool_dir=tmp_path / "spool", register_atexit=False)
    served = Served(IntakeReceiver(producer, store))
    yield store, served
    served.close()
    producer.close()


def _fill(value: str, token: str, url: str) -> str:
    return value.replace("fi_…", token).replace(DEFAULT, url).replace("https://finops.example.com", url)


def _events(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    got = read_topic(bootstrap, topic, until=lambda out: len(out) >= n, timeout=60)
    return [event for _, event in got]


def test_every_readme_config_delivers(setup: Any, monkeypatch: pytest.MonkeyPatch, kafka_config: dict[str, Any],
                                      topics: TopicNames) -> None:
    store, served = setup
    blocks = readme_blocks()
    assert set(blocks) == {"otel-sdk", "claude-code", "openclaw", "codex", "gemini-cli", "gemini-cli-env",
                           "openrouter", "litellm"}, sorted(blocks)
    now = datetime.now(UTC)
    ns = int(now.timestamp() * 1e9)

    def token(source: str, **kw: str) -> str:
        return store.issue(source, created_by="readme", now=now, **kw)[0]

    def use_env(block: str, tok: str) -> dict[str, str]:
        for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES"):
            monkeypatch.delenv(key, raising=False)
        values = {k: _fill(v, tok, served.url) for k, v in env_lines(block).items()}
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        return values

    from opentelemetry.exporter.otlp.json.http._log_exporter import (
        OTLPLogExporter as JsonLogExporter,
    )
    from opentelemetry.exporter.otlp.json.http.trace_exporter import (
        OTLPSpanExporter as JsonSpanExporter,
    )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult
    from opentelemetry.sdk.trace.export import SpanExportResult

    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20}

    # An OpenTelemetry SDK app: the exporter and the resource read only the environment.
    values = use_env(blocks["otel-sdk"], token("otel-app"))
    assert values["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    spans = record_spans({}, lambda t: t.start_span("chat", attributes=chat).end())
    assert OTLPSpanExporter().export(spans) == SpanExportResult.SUCCESS

    # Claude Code: the same variables, logs.
    values = use_env(blocks["claude-code"], token("claude-code"))
    assert values["OTEL_LOGS_EXPORTER"] == "otlp" and values["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1"
    assert values["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    logs = record_logs({}, "com.anthropic.claude_code.events", [{
        "event_name": "claude_code.api_request", "body": "claude_code.api_request", "timestamp": ns,
        "attributes": {"model": "claude-3-5-haiku-20241022", "input_tokens": 10, "output_tokens": 5,
                       "cache_read_tokens": 0, "cache_creation_tokens": 0, "cost_usd": 0.0001,
                       "request_id": "req_readme"}}])
    assert OTLPLogExporter().export(logs) == LogRecordExportResult.SUCCESS
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(key, raising=False)

    # OpenClaw: openclaw.json's diagnostics.otel (protobuf over HTTP to <endpoint>/v1/traces).
    otel = json.loads(blocks["openclaw"])["diagnostics"]["otel"]
    assert otel["protocol"] == "http/protobuf" and otel["traces"] is True
    headers = {k: _fill(v, token("openclaw", team="assistants", project="gateway"), served.url)
               for k, v in otel["headers"].items()}
    usage: dict[str, str | int] = {
        "openclaw.provider": "anthropic", "openclaw.model": "claude-3-5-haiku-20241022", "openclaw.tokens.input": 5,
        "openclaw.tokens.output": 7, "openclaw.tokens.cache_read": 100, "openclaw.tokens.cache_write": 0}
    spans = record_spans({"service.name": otel["serviceName"]},
                         lambda t: t.start_span("openclaw.model.usage", attributes=usage).end())
    exporter = OTLPSpanExporter(endpoint=_fill(otel["endpoint"], "", served.url) + "/v1/traces", headers=headers)
    assert exporter.export(spans) == SpanExportResult.SUCCESS

    # Codex CLI: [otel] exporter otlp-http, protocol binary (protobuf), the logs endpoint itself.
    http = tomllib.loads(blocks["codex"])["otel"]["exporter"]["otlp-http"]
    assert http["protocol"] == "binary"
    headers = {k: _fill(v, token("codex", team="dev", project="cli"), served.url) for k, v in http["headers"].items()}
    logs = record_logs({"service.name": "codex_exec"}, "codex_otel", [{
        "event_name": "codex.sse_event", "timestamp": ns, "attributes": {
            "event.kind": "response.completed", "model": "gpt-4o-mini-2024-07-18", "input_token_count": 300,
            "cached_token_count": 100, "output_token_count": 30, "reasoning_token_count": 0}}])
    assert OTLPLogExporter(endpoint=_fill(http["endpoint"], "", served.url), headers=headers).export(logs) == \
        LogRecordExportResult.SUCCESS

    # Gemini CLI: settings.json telemetry (OTLP over HTTP: Gemini's Node exporters send JSON) + its environment.
    telemetry = json.loads(blocks["gemini-cli"])["telemetry"]
    assert telemetry["otlpProtocol"] == "http" and telemetry["enabled"] is True
    values = use_env(blocks["gemini-cli-env"], token("gemini-cli"))
    logs = record_logs({"service.name": "gemini-cli"}, "gemini-cli", [{
        "event_name": "gemini_cli.api_response", "timestamp": ns, "attributes": {
            "model": "gemini-2.5-flash", "input_token_count": 200, "output_token_count": 10,
            "thoughts_token_count": 40, "cached_content_token_count": 0, "status_code": 200}}])
    endpoint = _fill(telemetry["otlpEndpoint"], "", served.url) + "/v1/logs"
    assert JsonLogExporter(endpoint=endpoint).export(logs) == LogRecordExportResult.SUCCESS
    for key in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(key, raising=False)

    # OpenRouter Broadcast: the destination's endpoint and headers; OTLP/JSON traces.
    destination = json.loads(blocks["openrouter"])
    headers = {k: _fill(v, token("openrouter", team="router", project="api"), served.url)
               for k, v in destination["headers"].items()}
    spans = record_spans({"service.name": "openrouter"}, lambda t: t.start_span("generation", attributes={
        "gen_ai.request.model": "openai/gpt-4o-mini", "gen_ai.response.model": "openai/gpt-4o-mini",
        "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 5, "gen_ai.usage.total_cost": 0.00001,
        "trace.metadata.openrouter.api_key_name": "prod"}).end())
    exporter = JsonSpanExporter(endpoint=_fill(destination["endpoint"], "", served.url), headers=headers)
    assert exporter.export(spans) == SpanExportResult.SUCCESS

    # LiteLLM: the generic_api callback's endpoint, headers and log format.
    callback = yaml.safe_load(blocks["litellm"])["callback_settings"]["finops"]
    assert callback["callback_type"] == "generic_api" and callback["log_format"] == "json_array"
    headers = {k: _fill(v, token("litellm"), served.url) for k, v in callback["headers"].items()}
    from tests.unit.test_intake_mappings import LITELLM

    payload = {**LITELLM, "startTime": now.timestamp() - 1, "endTime": now.timestamp()}
    r = requests.post(_fill(callback["endpoint"], "", served.url), json=[payload], headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 1

    events = {e["source"]: e for e in _events(kafka_config["bootstrap.servers"], topics.usage, 7)}
    assert {s: (e["team"], e["project"]) for s, e in events.items()} == {
        "otel-app": ("support", "helpdesk"), "claude-code": ("platform", "devex"),
        "openclaw": ("assistants", "gateway"), "codex": ("dev", "cli"), "gemini-cli": ("research", "notebooks"),
        "openrouter": ("router", "api"), "litellm": ("search", "ranking")}
    assert events["otel-app"]["agent_id"] == "support-bot"
    assert events["openclaw"]["input_tokens"] == 105 and events["openrouter"]["provider"] == "openrouter"
    assert events["gemini-cli"]["output_tokens"] == 50 and events["codex"]["cache_read_tokens"] == 100
