"""Zero-code intake end to end: the real OpenTelemetry SDK and its OTLP/HTTP exporters (protobuf and JSON) send
GenAI spans and Claude-Code-shaped log records to ``finops intake run`` (a child process), through the real broker,
the hot path and the ledger sink into ClickHouse.

Asserted: each model call is in the ledger once, with the cost genai-prices' reference ``calc_price`` gives for the
canonical usage (computed here from the attribute values, independently of the mappings); an agent span's totals
and a wrapper span around an instrumented call are not counted; a call without team/project lands as
``unattributed`` and shows in ``v_unattributed_spend``; exporting the very same spans and records again changes
nothing in ClickHouse; a wrong token is refused (401) and writes nothing to Kafka.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from finops.topics import TopicNames
from tests.faults.pipeline import Pipeline
from tests.integration.hotpath_child import committed_offsets, end_offsets
from tests.integration.intake_support import (
    free_port,
    intake_env,
    issue_token,
    log_exporter,
    record_logs,
    record_spans,
    reference_cost,
    span_exporter,
    start_intake,
)
from tests.integration.test_sink_support import caught_up, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SUPPORT = {"service.name": "support-bot", "team.name": "support", "project.name": "helpdesk",
           "deployment.environment.name": "prod"}
BATCH = {"service.name": "batch-job"}  # no team, no project: unattributed
CLAUDE = {"service.name": "claude-code", "team.name": "platform", "project.name": "devex"}


def _support_trace(tracer: Any) -> None:
    with tracer.start_as_current_span("invoke_agent triage", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "triage-agent",
            "gen_ai.usage.input_tokens": 1500, "gen_ai.usage.output_tokens": 300}):  # totals: not counted
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.response.id": "chatcmpl-e2e-1", "gen_ai.agent.id": "triage-agent",
                "gen_ai.conversation.id": "conv-1", "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.cache_read.input_tokens": 200, "gen_ai.usage.output_tokens": 200}):
            pass
        # A framework span around the provider SDK's span (two instrumentors on one call): the inner one counts.
        with tracer.start_as_current_span("llm.call", attributes={  # noqa: SIM117 - the nesting is the point
                "gen_ai.usage.prompt_tokens": 500, "gen_ai.usage.completion_tokens": 100,
                "gen_ai.agent.id": "triage-agent"}):
            with tracer.start_as_current_span("chat claude", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",  # the deprecated name
                    "gen_ai.request.model": "claude-3-5-haiku-20241022", "gen_ai.response.id": "msg_e2e_1",
                    "gen_ai.agent.id": "triage-agent", "gen_ai.usage.input_tokens": 500,
                    "gen_ai.usage.cache_read_input_tokens": 100,  # OpenLLMetry's underscore names
                    "gen_ai.usage.cache_creation_input_tokens": 50, "gen_ai.usage.output_tokens": 100}):
                pass


def _batch_trace(tracer: Any) -> None:
    with tracer.start_as_current_span("chat o3-mini", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "o3-mini-2025-01-31", "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.output_tokens": 500, "gen_ai.usage.reasoning.output_tokens": 300,
            "gen_ai.usage.cost": 0.0031}):
        pass


def _claude_records() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    base = {"event_name": "claude_code.api_request", "body": "claude_code.api_request"}
    return [
        {**base, "timestamp": int(now.timestamp() * 1e9), "attributes": {
            "event.name": "api_request", "model": "claude-sonnet-4-20250514", "input_tokens": 10,
            "cache_read_tokens": 2000, "cache_creation_tokens": 500, "output_tokens": 300, "cost_usd": 0.0123,
            "duration_ms": 4200, "request_id": "req_e2e_1", "session.id": "sess-1",
            "user.account_uuid": "acct-1"}},
        {**base, "timestamp": int(now.timestamp() * 1e9) + 1000, "attributes": {
            "event.name": "api_request", "model": "claude-3-5-haiku-20241022", "input_tokens": "40",
            "cache_read_tokens": "0", "cache_creation_tokens": "0", "output_tokens": "25", "cost_usd": "0.0002",
            "duration_ms": "800", "request_id": "req_e2e_2", "session.id": "sess-1"}},
        {"event_name": "claude_code.tool_result", "body": "claude_code.tool_result",
         "attributes": {"tool_name": "Bash", "success": "true"}},  # not a model call
    ]


def _expected(occurred_at: datetime) -> list[dict[str, Any]]:
    """The canonical calls, written from the attribute values above (input includes cache; output reasoning)."""
    rows = [
        ("support", "helpdesk", "openai", "gpt-4o-mini-2024-07-18", 1000, 200, 200, 0, 0),
        ("support", "helpdesk", "anthropic", "claude-3-5-haiku-20241022", 500, 100, 100, 50, 0),
        ("unattributed", "unattributed", "openai", "o3-mini-2025-01-31", 800, 500, 0, 0, 300),
        ("platform", "devex", "anthropic", "claude-sonnet-4-20250514", 2510, 300, 2000, 500, 0),
        ("platform", "devex", "anthropic", "claude-3-5-haiku-20241022", 40, 25, 0, 0, 0),
    ]
    return [{"team": t, "project": p, "provider": pr, "model": m, "input_tokens": i, "output_tokens": o,
             "cache_read_tokens": cr, "cache_write_tokens": cw, "reasoning_tokens": r, "occurred_at": occurred_at}
            for t, p, pr, m, i, o, cr, cw, r in rows]


def _ledger(ch_client: Any, db: str) -> list[tuple[Any, ...]]:
    return ch_client.query(
        f"SELECT team, project, provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
        f"reasoning_tokens, cost_usd, source, agent_id FROM {db}.usage_ledger ORDER BY model, input_tokens"
    ).result_rows


def test_otel_sdk_spans_and_claude_code_logs_land_once_with_the_right_cost(
    kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str, tmp_path: Path
) -> None:
    bootstrap = kafka_config["bootstrap.servers"]
    tokens_file = tmp_path / "tokens.json"
    app_token = issue_token(tokens_file, "otel-apps")
    claude_token = issue_token(tokens_file, "claude-code")
    port = free_port()
    intake = start_intake(intake_env(bootstrap, topics.prefix, tmp_path / "data", tokens_file), port,
                          tmp_path / "intake.log")
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    try:
        support = record_spans(SUPPORT, _support_trace)
        batch = record_spans(BATCH, _batch_trace)
        logs = record_logs(CLAUDE, "com.anthropic.claude_code.events", _claude_records())
        assert len(support) == 4 and len(batch) == 1 and len(logs) == 3

        from opentelemetry.sdk._logs.export import LogRecordExportResult
        from opentelemetry.sdk.trace.export import SpanExportResult

        def send_all() -> None:
            assert span_exporter(intake.url, app_token).export(support) == SpanExportResult.SUCCESS, intake.log()
            assert span_exporter(intake.url, app_token, json=True).export(batch) == SpanExportResult.SUCCESS
            assert log_exporter(intake.url, claude_token).export(logs) == LogRecordExportResult.SUCCESS

        send_all()
        pipeline.wait_ledger(5)
        first = _ledger(ch_client, ch_database)

        # Independent expectation: the canonical usage of each call, priced by genai-prices' reference.
        expected = _expected(datetime.now(UTC))
        want = sorted((e["team"], e["project"], e["provider"], e["model"], e["input_tokens"], e["output_tokens"],
                       e["cache_read_tokens"], e["cache_write_tokens"], e["reasoning_tokens"], reference_cost(e))
                      for e in expected)
        got = sorted(tuple(r[:9]) + (Decimal(r[9]),) for r in first)
        assert got == want
        assert all(cost > 0 for *_, cost in got)
        assert {r[10] for r in first} == {"otel-apps", "claude-code"}
        assert {r[11] for r in first if r[0] == "support"} == {"triage-agent"}
        unattributed_cost = [w[-1] for w in want if w[0] == "unattributed"]
        rows = ch_client.query(f"SELECT sum(calls), sum(cost_usd) FROM {ch_database}.v_unattributed_spend").result_rows
        assert [(int(n), Decimal(c)) for n, c in rows] == [(1, unattributed_cost[0])]
        metrics = requests.get(f"{intake.url}/metrics", timeout=30).text
        assert 'finops_intake_unattributed_calls_total{family="genai"} 1' in metrics
        assert "finops_intake_unattributed_reported_cost_usd 0.003100000000" in metrics
        assert 'finops_intake_not_counted_total{reason="agent_total"} 1' in metrics
        assert 'finops_intake_not_counted_total{reason="wrapper"} 1' in metrics

        # The same export again (an exporter's retry): nothing changes once the pipeline has read it all.
        before = sum(end_offsets(bootstrap, topics.usage).values())
        send_all()
        after = sum(end_offsets(bootstrap, topics.usage).values())
        assert after == before + 5, "the re-sent export was not delivered to Kafka again"
        ends = end_offsets(bootstrap, topics.usage)
        wait_for(lambda: all(committed_offsets(bootstrap, topics.usage, pipeline.group).get(p, -1) >= e
                             for p, e in ends.items() if e > 0), 120, "the hot path to read the re-sent export")
        assert pipeline.sink is not None
        wait_for(caught_up(kafka_config, pipeline.sink, topics.priced), 120, "the ledger sink to catch up")
        assert sorted(_ledger(ch_client, ch_database)) == sorted(first)

        # A wrong token: refused, nothing written.
        forged = "fi_000000000000_" + "A" * 43
        assert span_exporter(intake.url, forged).export(support) == SpanExportResult.FAILURE
        assert log_exporter(intake.url, "not-a-token").export(logs) == LogRecordExportResult.FAILURE
        assert sum(end_offsets(bootstrap, topics.usage).values()) == after
    finally:
        pipeline.stop()
        intake.stop()
    pipeline.check()
