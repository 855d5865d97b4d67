"""The intake's pure parts: GenAI span and Claude Code log mappings (on payloads written with those tools'
documented attribute names), the counting-once rules, attribution, and the OTLP body codec."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from producers.intake.calls import Attribution, as_money, build_event, event_id_for
from producers.intake.claude_code import map_claude_code_log
from producers.intake.families import calls_from_logs, calls_from_spans
from producers.intake.genai import map_genai_span
from producers.intake.otlp import (
    JSON,
    PROTOBUF,
    LogView,
    OtlpDecodeError,
    SpanView,
    decode_request,
    encode_response,
    spans_of,
)
from schemas.models import check_usage_dict

pytestmark = pytest.mark.unit

T0 = 1_796_000_000_000_000_000


def span(attrs: dict[str, Any], *, span_id: str = "00000000000000a1", parent: str = "", trace: str = "ab" * 16,
         resource: dict[str, Any] | None = None, scope: str = "opentelemetry.instrumentation.openai",
         status: int = 0) -> SpanView:
    return SpanView(resource=resource or {"service.name": "bot"}, scope=scope, name="chat", trace_id=trace,
                    span_id=span_id, parent_span_id=parent, start_ns=T0, end_ns=T0 + 1_500_000_000,
                    attributes=attrs, status_code=status)


SEMCONV = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
           "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.response.id": "chatcmpl-1",
           "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.cache_read.input_tokens": 400,
           "gen_ai.usage.cache_creation.input_tokens": 0, "gen_ai.usage.output_tokens": 300,
           "gen_ai.usage.reasoning.output_tokens": 120}


def test_semconv_span_maps_to_canonical_usage_with_the_response_model_and_id() -> None:
    call = map_genai_span(span(SEMCONV))
    assert call is not None
    assert (call.provider, call.model, call.input_tokens, call.cache_read_tokens, call.output_tokens,
            call.reasoning_tokens, call.latency_ms) == ("openai", "gpt-4o-2024-08-06", 1000, 400, 300, 120, 1500)
    assert call.identity == "openai:response:chatcmpl-1" and call.normalisations == ()
    assert call.occurred_at_ns == T0 + 1_500_000_000  # when the call finished


def test_deprecated_gen_ai_system_and_openllmetry_underscore_cache_names() -> None:
    call = map_genai_span(span({"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-3-5-haiku-20241022",
                                "gen_ai.usage.prompt_tokens": 700, "gen_ai.usage.completion_tokens": 50,
                                "gen_ai.usage.cache_read_input_tokens": 300,
                                "gen_ai.usage.cache_creation_input_tokens": 100}))
    assert call is not None
    # OpenLLMetry's Anthropic input already includes the cache parts: kept as it is.
    assert (call.provider, call.input_tokens, call.cache_read_tokens, call.cache_write_tokens, call.output_tokens) \
        == ("anthropic", 700, 300, 100, 50)


def test_openlit_anthropic_raw_input_gets_its_cache_parts_added_and_the_cost_is_reported() -> None:
    attrs = {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-20250514",
             "gen_ai.usage.input_tokens": 20, "gen_ai.usage.cache_read_input_tokens": 5000,
             "gen_ai.usage.cache_creation_input_tokens": 0, "gen_ai.usage.output_tokens": 10,
             "gen_ai.usage.cost": 0.0162}
    call = map_genai_span(span(attrs, scope="openlit.otel.tracing", resource={"telemetry.sdk.name": "openlit"}))
    assert call is not None
    assert call.input_tokens == 5020 and call.cache_read_tokens == 5000
    assert call.normalisations == ("openlit-anthropic-input-excludes-cache",)
    assert call.reported_cost == Decimal("0.016200000000")


def test_exclusive_counts_from_any_reporter_are_named_and_made_canonical() -> None:
    call = map_genai_span(span({"gen_ai.provider.name": "gcp.gemini", "gen_ai.request.model": "gemini-2.5-flash",
                                "gen_ai.usage.input_tokens": 10, "gen_ai.usage.cache_read.input_tokens": 90,
                                "gen_ai.usage.output_tokens": 5, "gen_ai.usage.reasoning.output_tokens": 40}))
    assert call is not None
    assert (call.provider, call.input_tokens, call.output_tokens) == ("google", 100, 45)
    assert call.normalisations == ("input-excluded-cache", "output-excluded-reasoning")


def test_spans_without_usage_are_not_calls() -> None:
    assert map_genai_span(span({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})) is None


def test_agent_totals_and_wrapper_spans_are_not_counted() -> None:
    agent = span({"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 9000,
                  "gen_ai.usage.output_tokens": 900}, span_id="00000000000000f0")
    wrapper = span({"gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 300},
                   span_id="00000000000000f1", parent="00000000000000f0")
    inner = span(SEMCONV, span_id="00000000000000f2", parent="00000000000000f1")
    other = span({**SEMCONV, "gen_ai.response.id": "chatcmpl-2"}, span_id="00000000000000f3",
                 parent="00000000000000f0")
    mapped = calls_from_spans([agent, wrapper, inner, other])
    assert sorted(c.identity for c in mapped.calls) == ["openai:response:chatcmpl-1", "openai:response:chatcmpl-2"]
    assert mapped.not_counted == {"agent_total": 1, "wrapper": 1}


def test_a_remote_agent_client_span_is_a_call_unless_a_call_sits_under_it() -> None:
    from dataclasses import replace

    remote = replace(span({"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "aws.bedrock",
                           "gen_ai.request.model": "anthropic.claude-3-5-haiku-20241022-v1:0",
                           "gen_ai.usage.input_tokens": 800, "gen_ai.usage.output_tokens": 90},
                          span_id="00000000000000a7"), kind=3)
    alone = calls_from_spans([remote])
    assert [c.provider for c in alone.calls] == ["aws"] and alone.not_counted == {}
    child = span(SEMCONV, span_id="00000000000000a8", parent="00000000000000a7")
    nested = calls_from_spans([remote, child])
    assert [c.identity for c in nested.calls] == ["openai:response:chatcmpl-1"]
    assert nested.not_counted == {"wrapper": 1}
    internal = replace(remote, kind=1)
    assert calls_from_spans([internal]).not_counted == {"agent_total": 1}


def test_two_spans_with_one_response_id_count_once_and_ids_are_deterministic() -> None:
    a = span(SEMCONV, span_id="00000000000000b1", trace="cd" * 16)
    b = span(SEMCONV, span_id="00000000000000b2", trace="ef" * 16)  # another instrumentor, another trace
    mapped = calls_from_spans([a, b])
    assert len(mapped.calls) == 1 and mapped.not_counted == {"same_identity": 1}
    no_id = {k: v for k, v in SEMCONV.items() if k != "gen_ai.response.id"}
    first = map_genai_span(span(no_id, span_id="00000000000000c1"))
    again = map_genai_span(span(no_id, span_id="00000000000000c1"))
    assert first is not None and again is not None
    assert event_id_for(first.identity) == event_id_for(again.identity)
    assert first.identity == f"span:{'ab' * 16}:00000000000000c1"


def test_error_status_and_error_type() -> None:
    call = map_genai_span(span({**SEMCONV, "error.type": "RateLimitError"}, status=2))
    assert call is not None and call.status == "rate_limited"


CLAUDE = {"event.name": "api_request", "model": "claude-sonnet-4-20250514", "input_tokens": 12,
          "output_tokens": 340, "cache_read_tokens": 20000, "cache_creation_tokens": 1500, "cost_usd": 0.0421,
          "duration_ms": 5100, "request_id": "req_011", "session.id": "s-1", "organization.id": "org-1",
          "user.email": "dev@example.com"}


def log(attrs: dict[str, Any], event: str = "claude_code.api_request", **kw: Any) -> LogView:
    return LogView(resource={"service.name": "claude-code", "team.name": "platform"},
                   scope="com.anthropic.claude_code.events", event_name=event, body=event, time_ns=T0,
                   attributes=attrs, **kw)


def test_claude_code_api_request_adds_cache_to_input_and_keys_on_the_request_id() -> None:
    call = map_claude_code_log(log(CLAUDE))
    assert call is not None
    assert (call.provider, call.model, call.input_tokens, call.cache_read_tokens, call.cache_write_tokens,
            call.output_tokens, call.latency_ms) == ("anthropic", "claude-sonnet-4-20250514", 21512, 20000, 1500,
                                                      340, 5100)
    assert call.reported_cost == Decimal("0.042100000000")
    assert call.identity == "anthropic:request:req_011"
    assert call.normalisations == ("anthropic-input-excludes-cache",)
    event = build_event(call, Attribution(), source="claude-code")
    assert (event["team"], event["project"], event["task_id"], event["agent_id"]) == \
        ("platform", "unattributed", "s-1", "claude-code")
    assert event["tags"]["intake.unattributed"] == "project"
    assert event["tags"]["intake.user"] == "dev@example.com" and event["tags"]["intake.organization"] == "org-1"
    assert check_usage_dict(event, None) == []


def test_claude_code_other_events_and_string_values() -> None:
    assert map_claude_code_log(log({"tool_name": "Bash"}, event="claude_code.tool_result")) is None
    strings = {k: str(v) for k, v in CLAUDE.items()}
    call = map_claude_code_log(log(strings, event="api_request"))
    assert call is not None and call.input_tokens == 21512 and call.reported_cost == Decimal("0.0421").quantize(
        Decimal("1e-12"))
    no_id = {k: v for k, v in CLAUDE.items() if k != "request_id"}
    mapped = calls_from_logs([log(no_id), log(no_id)])
    assert len(mapped.calls) == 1  # a record sent twice in one export is one call


def test_attribution_paths_token_defaults_and_unattributed() -> None:
    call = map_genai_span(span({**SEMCONV, "gen_ai.agent.id": "triage", "gen_ai.conversation.id": "conv-9"},
                               parent="00000000000000aa",
                               resource={"service.name": "bot", "team.name": "support",
                                         "deployment.environment.name": "prod"}))
    assert call is not None
    event = build_event(call, Attribution(), source="s", default_project="helpdesk")
    assert (event["team"], event["project"], event["agent_id"], event["task_id"], event["parent_task_id"],
            event["environment"]) == ("support", "helpdesk", "triage", "conv-9", "00000000000000aa", "prod")
    assert "intake.unattributed" not in event["tags"]
    custom = Attribution(team=("attr:tenant",), agent=("resource:service.name",))
    event = build_event(call, custom, source="s")
    assert (event["team"], event["project"], event["agent_id"]) == ("unattributed", "unattributed", "bot")
    assert event["tags"]["intake.unattributed"] == "team,project"


def test_money_is_exact() -> None:
    assert as_money(0.1) == Decimal("0.100000000000")
    assert as_money("1.234567890123456") == Decimal("1.234567890123")
    assert as_money(-1) is None and as_money(float("nan")) is None and as_money(True) is None


# ---- OTLP codec -------------------------------------------------------------------------------------------------
def _request() -> ExportTraceServiceRequest:
    s = Span(trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"), span_id=bytes.fromhex("eee19b7ec3c1b174"),
             parent_span_id=bytes.fromhex("eee19b7ec3c1b173"), name="chat", start_time_unix_nano=T0,
             end_time_unix_nano=T0 + 10, kind=Span.SPAN_KIND_CLIENT,
             attributes=[KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=12)),
                         KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o"))])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[s])])])


SPEC_JSON = {  # OTLP/JSON as the specification writes it: hex ids, int64 as strings, integer enums, camelCase
    "resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": ""}, "spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173", "name": "chat", "kind": 3, "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 10), "unknownFutureField": 1,
        "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                       {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}}]}]}]}]}


def test_json_with_hex_ids_decodes_like_protobuf_and_gzip_is_read() -> None:
    from_proto = decode_request("traces", _request().SerializeToString(), PROTOBUF)
    from_json = decode_request("traces", json.dumps(SPEC_JSON).encode(), JSON)
    zipped = decode_request("traces", gzip.compress(json.dumps(SPEC_JSON).encode()), JSON, content_encoding="gzip")
    views = [list(spans_of(m)) for m in (from_proto, from_json, zipped)]  # type: ignore[arg-type]
    assert views[0] == views[1] == views[2]
    v = views[1][0]
    assert (v.trace_id, v.span_id, v.parent_span_id) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174",
                                                         "eee19b7ec3c1b173")
    assert v.attributes == {"gen_ai.usage.input_tokens": 12, "gen_ai.request.model": "gpt-4o"}


@pytest.mark.parametrize(("body", "ctype", "encoding"), [
    (b"\xff\xff\xff", PROTOBUF, None), (b"{not json", JSON, None), (b"[1]", JSON, None),
    (b'{"resourceSpans": 5}', JSON, None), (b"plain", PROTOBUF, "gzip"), (b"x", PROTOBUF, "br"),
])
def test_undecodable_bodies_raise(body: bytes, ctype: str, encoding: str | None) -> None:
    with pytest.raises(OtlpDecodeError):
        decode_request("traces", body, ctype, content_encoding=encoding)


def test_gzip_bomb_is_bounded() -> None:
    with pytest.raises(OtlpDecodeError, match="exceeds"):
        decode_request("traces", gzip.compress(b"\0" * 100_000), PROTOBUF, content_encoding="gzip", max_bytes=1000)


def test_partial_success_in_both_encodings() -> None:
    proto = ExportTraceServiceResponse.FromString(encode_response("traces", PROTOBUF, rejected=2, message="bad"))
    assert (proto.partial_success.rejected_spans, proto.partial_success.error_message) == (2, "bad")
    assert json.loads(encode_response("traces", JSON, rejected=2, message="bad")) == \
        {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "bad"}}
    assert encode_response("traces", PROTOBUF) == b"" and json.loads(encode_response("traces", JSON)) == {}


# ---- OpenClaw, OpenRouter Broadcast, Codex CLI, Gemini CLI ------------------------------------------------------
def _named(view: SpanView, name: str) -> SpanView:
    from dataclasses import replace

    return replace(view, name=name)


def test_openclaw_model_usage_adds_cache_to_input_and_run_totals_are_not_counted() -> None:
    usage = _named(span({"openclaw.provider": "anthropic", "openclaw.model": "claude-sonnet-4-20250514",
                         "openclaw.sessionKey": "agent:main:main", "openclaw.channel": "telegram",
                         "openclaw.tokens.input": 30, "openclaw.tokens.output": 400,
                         "openclaw.tokens.cache_read": 9000, "openclaw.tokens.cache_write": 1200,
                         "gen_ai.usage.input_tokens": 10230, "gen_ai.usage.output_tokens": 400},
                        span_id="00000000000000d2", parent="00000000000000d1"), "openclaw.model.usage")
    run = _named(span({"openclaw.sessionKey": "agent:main:main", "gen_ai.usage.input_tokens": 10230,
                       "gen_ai.usage.output_tokens": 400}, span_id="00000000000000d1"), "openclaw.run")
    mapped = calls_from_spans([run, usage])
    assert len(mapped.calls) == 1 and mapped.not_counted == {"agent_total": 1}
    call = mapped.calls[0]
    assert (call.family, call.provider, call.input_tokens, call.cache_read_tokens, call.cache_write_tokens,
            call.output_tokens) == ("openclaw", "anthropic", 10230, 9000, 1200, 400)
    assert call.normalisations == ("openclaw-input-excludes-cache",)
    assert build_event(call, Attribution(), source="oc")["task_id"] == "agent:main:main"


def test_openrouter_broadcast_counts_the_generation_not_its_attempts() -> None:
    trace = "12" * 16
    attrs = {"gen_ai.request.model": "anthropic/claude-sonnet-4", "gen_ai.response.model": "anthropic/claude-sonnet-4",
             "gen_ai.provider.name": "Anthropic", "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 80,
             "gen_ai.usage.total_cost": 0.00481, "trace.metadata.openrouter.api_key_name": "prod",
             "gen_ai.response.id": "gen-1796000000-abc"}
    root = span(attrs, span_id="00000000000000e1", trace=trace)
    attempt1 = span({**attrs, "gen_ai.usage.output_tokens": 0}, span_id="00000000000000e2",
                    parent="00000000000000e1", trace=trace, status=2)
    attempt2 = span(attrs, span_id="00000000000000e3", parent="00000000000000e1", trace=trace)
    mapped = calls_from_spans([attempt1, attempt2, root])
    assert len(mapped.calls) == 1 and mapped.not_counted == {"provider_attempt": 2}
    call = mapped.calls[0]
    assert (call.family, call.provider, call.model, call.input_tokens, call.output_tokens, call.reported_cost) == \
        ("openrouter", "openrouter", "anthropic/claude-sonnet-4", 1200, 80, Decimal("0.004810000000"))
    # An attempt arriving alone in a later export has the same identity: counted once downstream.
    alone = calls_from_spans([attempt2]).calls[0]
    assert event_id_for(alone.identity) == event_id_for(call.identity)
    # Two generations in one propagated trace, without response ids: two calls, not one.
    no_id = {k: v for k, v in attrs.items() if k != "gen_ai.response.id"}
    two = calls_from_spans([span(no_id, span_id="00000000000000e7", parent="00000000000000aa", trace=trace),
                            span(no_id, span_id="00000000000000e8", parent="00000000000000aa", trace=trace)])
    assert len({c.identity for c in two.calls}) == 2


def test_codex_response_completed() -> None:
    record = LogView(resource={"service.name": "codex_exec"}, scope="codex_otel", event_name="codex.sse_event",
                     body=None, time_ns=T0, attributes={
                         "event.kind": "response.completed", "model": "gpt-5-codex", "input_token_count": 15000,
                         "cached_token_count": 12000, "output_token_count": 900, "reasoning_token_count": 600,
                         "tool_token_count": 0, "conversation.id": "c-1", "duration_ms": 3000})
    other = LogView(resource={}, scope="codex_otel", event_name="codex.sse_event", body=None, time_ns=T0,
                    attributes={"event.kind": "response.output_text.delta"})
    mapped = calls_from_logs([record, other, record])
    assert len(mapped.calls) == 1
    call = mapped.calls[0]
    assert (call.family, call.provider, call.input_tokens, call.cache_read_tokens, call.output_tokens,
            call.reasoning_tokens) == ("codex", "openai", 15000, 12000, 900, 600)
    assert build_event(call, Attribution(), source="codex")["task_id"] == "c-1"


def test_gemini_cli_output_is_output_plus_thoughts() -> None:
    record = LogView(resource={"service.name": "gemini-cli"}, scope="gemini-cli", event_name="gemini_cli.api_response",
                     body=None, time_ns=T0, attributes={
                         "model": "gemini-2.5-pro", "input_token_count": 8000, "cached_content_token_count": 5000,
                         "output_token_count": 200, "thoughts_token_count": 700, "tool_token_count": 0,
                         "duration_ms": 2100, "status_code": 200, "prompt_id": "p-1", "session.id": "s-9"})
    call = calls_from_logs([record]).calls[0]
    assert (call.family, call.provider, call.input_tokens, call.cache_read_tokens, call.output_tokens,
            call.reasoning_tokens) == ("gemini_cli", "google", 8000, 5000, 900, 700)
    assert call.normalisations == ("gemini-thoughts-outside-output",)
    event = build_event(call, Attribution(), source="gemini")
    assert event["task_id"] == "s-9" and check_usage_dict(event, None) == []


# ---- LiteLLM generic_api -----------------------------------------------------------------------------------------
LITELLM = {
    "id": "chatcmpl-ll-1", "trace_id": "t-77", "call_type": "acompletion", "status": "success",
    "model": "claude-3-5-haiku-20241022", "custom_llm_provider": "anthropic", "response_cost": 0.00123,
    "prompt_tokens": 1300, "completion_tokens": 90, "total_tokens": 1390,
    "startTime": 1796000000.25, "endTime": 1796000001.5,
    "metadata": {"user_api_key_team_id": "team-uuid", "user_api_key_team_alias": "search",
                 "user_api_key_alias": "search-prod-key"},
    "request_tags": ["project:ranking", "batch"], "end_user": "ranker-agent",
    "response": {"usage": {"prompt_tokens": 1300, "completion_tokens": 90, "cache_read_input_tokens": 1000,
                           "cache_creation_input_tokens": 200}},
}


def test_litellm_standard_logging_payload() -> None:
    from producers.intake.litellm import map_litellm_payload, parse_litellm_body

    array = parse_litellm_body(json.dumps([LITELLM, {**LITELLM, "id": "x2"}]).encode())
    ndjson = parse_litellm_body((json.dumps(LITELLM) + "\n" + json.dumps({**LITELLM, "id": "x2"}) + "\n").encode())
    assert array == ndjson and len(array) == 2
    call = map_litellm_payload(LITELLM)
    assert call is not None
    assert (call.identity, call.provider, call.model, call.input_tokens, call.cache_read_tokens,
            call.cache_write_tokens, call.output_tokens, call.latency_ms, call.reported_cost) == \
        ("litellm:chatcmpl-ll-1", "anthropic", "claude-3-5-haiku-20241022", 1300, 1000, 200, 90, 1250,
         Decimal("0.001230000000"))
    event = build_event(call, Attribution(), source="litellm")
    assert (event["team"], event["project"], event["agent_id"], event["task_id"]) == \
        ("search", "ranking", "ranker-agent", "t-77")
    assert check_usage_dict(event, None) == []
    failed = map_litellm_payload({**LITELLM, "status": "failure", "custom_llm_provider": "vertex_ai"})
    assert failed is not None and (failed.status, failed.provider) == ("error", "google")
    assert map_litellm_payload({"model": "x"}) is None


def test_litellm_bad_bodies() -> None:
    from producers.intake.litellm import LiteLLMBodyError, parse_litellm_body

    for body in (b'{"a": 1}\nnot json', b"[1, 2]"):
        with pytest.raises(LiteLLMBodyError):
            parse_litellm_body(body)


def test_metric_token_totals_read_delta_points_and_skip_cumulative_ones() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Histogram,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )

    from producers.intake.reconcile import metric_token_totals

    def kv(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    delta = Metric(name="claude_code.token.usage", sum=Sum(aggregation_temporality=1, data_points=[
        NumberDataPoint(as_int=100, attributes=[kv("type", "input")]),
        NumberDataPoint(as_double=40.0, attributes=[kv("type", "output")])]))
    cumulative = Metric(name="gemini_cli.token.usage", sum=Sum(aggregation_temporality=2, data_points=[
        NumberDataPoint(as_int=999, attributes=[kv("type", "input")])]))
    histogram = Metric(name="gen_ai.client.token.usage", histogram=Histogram(aggregation_temporality=1, data_points=[
        HistogramDataPoint(sum=512.0, count=3, attributes=[kv("gen_ai.token.type", "input")])]))
    other = Metric(name="claude_code.cost.usage", sum=Sum(aggregation_temporality=1, data_points=[
        NumberDataPoint(as_double=0.5)]))
    request = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(
        metrics=[delta, cumulative, histogram, other])])])
    totals, skipped = metric_token_totals(request)
    assert dict(totals) == {("claude_code.token.usage", "input"): 100, ("claude_code.token.usage", "output"): 40,
                            ("gen_ai.client.token.usage", "input"): 512}
    assert skipped == 1
