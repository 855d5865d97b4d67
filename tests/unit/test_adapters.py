"""Provider adapters on recorded response bodies: exact canonical numbers, invariants, and errors."""

from __future__ import annotations

import json
import uuid
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from finops.adapters import (
    USAGE_FIELD_NAMES,
    ProviderUsage,
    ProviderUsageError,
    split_openrouter_slug,
    to_usage_fields,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai_chat,
    usage_from_openai_responses,
    usage_from_openrouter,
    usage_from_response,
)
from schemas.errors import FinopsError

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "responses"


def load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


def assert_canonical(usage: ProviderUsage) -> None:
    """The invariants every adapter promises (DESIGN.md §3): parts never exceed their whole."""
    assert usage.cache_read_tokens + usage.cache_write_tokens <= usage.input_tokens
    assert usage.cache_write_1h_tokens <= usage.cache_write_tokens
    assert usage.input_audio_tokens + usage.image_tokens <= usage.input_tokens
    assert usage.cache_audio_read_tokens <= min(usage.cache_read_tokens, usage.input_audio_tokens)
    assert usage.reasoning_tokens + usage.output_audio_tokens <= usage.output_tokens
    assert usage.requests == 1


# (fixture, adapter name for usage_from_response, adapter function, expected non-default fields)
CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    (
        "openai_chat_plain",
        "openai",
        usage_from_openai_chat,
        dict(provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=19, output_tokens=10,
             response_id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"),
    ),
    (
        "openai_chat_cached",
        "openai",
        usage_from_openai_chat,
        dict(provider="openai", model="gpt-4o-2024-08-06", input_tokens=2006, output_tokens=300,
             cache_read_tokens=1920, response_id="chatcmpl-BQk3vTq0pXJ2mYd9cFh7e1LrZsN4a"),
    ),
    (
        "openai_chat_reasoning",
        "openai-chat",
        usage_from_openai_chat,
        dict(provider="openai", model="o3-mini-2025-01-31", input_tokens=1117, output_tokens=1186,
             cache_read_tokens=1024, reasoning_tokens=1024, response_id="chatcmpl-AyPNinnUqUDYo9SAdA52NobMflmj2"),
    ),
    (
        "openai_chat_audio",
        "openai",
        usage_from_openai_chat,
        dict(provider="openai", model="gpt-4o-audio-preview-2024-12-17", input_tokens=321, output_tokens=198,
             input_audio_tokens=297, output_audio_tokens=184, response_id="chatcmpl-ArvR6gS9k1mU7VfqYx3nL0c2HwPbT"),
    ),
    (
        "openai_responses_cached_reasoning",
        "openai",
        usage_from_openai_responses,
        dict(provider="openai", model="o4-mini-2025-04-16", input_tokens=3120, output_tokens=845,
             cache_read_tokens=2944, reasoning_tokens=640,
             response_id="resp_68a1f2c3d4e5f60718293a4b5c6d7e8f0a1b2c3d4e5f6071"),
    ),
    (
        "openai_responses_web_search",
        "openai-responses",
        usage_from_openai_responses,
        dict(provider="openai", model="gpt-4.1-2025-04-14", input_tokens=328, output_tokens=356,
             web_search_calls=2, response_id="resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41"),
    ),
    (
        "anthropic_plain",
        "anthropic",
        usage_from_anthropic,
        dict(provider="anthropic", model="claude-sonnet-4-20250514", input_tokens=25, output_tokens=180,
             response_id="msg_01XFDUDYJgAACzvnptvVoYEL"),
    ),
    (
        # Anthropic's input_tokens (12) excludes the 4096 cache reads: ours is their sum.
        "anthropic_cache_read",
        "anthropic",
        usage_from_anthropic,
        dict(provider="anthropic", model="claude-3-5-haiku-20241022", input_tokens=12 + 4096, output_tokens=256,
             cache_read_tokens=4096, response_id="msg_01GkqZ3vP8c2Wn5TfA1bRyLd"),
    ),
    (
        # 50 uncached + 3500 written (1500 for 5 minutes, 2000 for 1 hour) + 1200 read.
        "anthropic_cache_write_5m_1h",
        "anthropic",
        usage_from_anthropic,
        dict(provider="anthropic", model="claude-opus-4-1-20250805", input_tokens=50 + 3500 + 1200,
             output_tokens=300, cache_read_tokens=1200, cache_write_tokens=3500, cache_write_1h_tokens=2000,
             response_id="msg_01Hc7mQk2XbR9yTfV3nWpL6s"),
    ),
    (
        "anthropic_web_search",
        "anthropic",
        usage_from_anthropic,
        dict(provider="anthropic", model="claude-sonnet-4-5-20250929", input_tokens=6039, output_tokens=931,
             web_search_calls=2, response_id="msg_01Nx2Jb4T7vYc8KpQ1sRmW3e"),
    ),
    (
        # promptTokenCount 10240 already includes the 8192 cached; output is 412 candidates + 1200 thoughts.
        "gemini_thinking_cached",
        "gemini",
        usage_from_gemini,
        dict(provider="google", model="gemini-2.5-flash", input_tokens=10240, output_tokens=412 + 1200,
             cache_read_tokens=8192, reasoning_tokens=1200, image_tokens=258, response_id="kZ2eaM2vJ8-hz7IPxN3m8QE"),
    ),
    (
        # toolUsePromptTokenCount (310) is input outside promptTokenCount (1652, of which 1600 audio).
        "gemini_tool_use_audio",
        "google",
        usage_from_gemini,
        dict(provider="google", model="gemini-2.5-flash", input_tokens=1652 + 310, output_tokens=120,
             input_audio_tokens=1600, response_id="c3efaKfXBa2Kz7IP8uHrqQ0"),
    ),
    (
        "openrouter_cost_reasoning",
        "openrouter",
        usage_from_openrouter,
        dict(provider="openrouter", model="deepseek/deepseek-r1", input_tokens=42, output_tokens=980,
             reasoning_tokens=812, reported_cost=Decimal("0.0021693"),
             response_id="gen-1755443907-Xq1pT7rVb3nLk9Hc2Ws5"),
    ),
    (
        # BYOK: OpenRouter's fee (usage.cost) plus what the upstream vendor billed to the caller's key.
        "openrouter_anthropic_cached_byok",
        "openrouter",
        usage_from_openrouter,
        dict(provider="openrouter", model="anthropic/claude-3.5-sonnet", input_tokens=2100, output_tokens=150,
             cache_read_tokens=2048, reported_cost=Decimal("0.00015102") + Decimal("0.0030204"),
             response_id="gen-1755444012-Pz8kLm2Qw4Rt6Yv1Nb3c"),
    ),
]  # fmt: skip

CASE_IDS = [case[0] for case in CASES]


def expected_usage(fields: dict[str, Any]) -> ProviderUsage:
    return ProviderUsage(**fields)


@pytest.mark.parametrize(("fixture", "name", "adapter", "expected"), CASES, ids=CASE_IDS)
def test_adapter_maps_recorded_body_exactly(fixture: str, name: str, adapter: Any, expected: dict[str, Any]) -> None:
    usage = adapter(load(fixture))

    assert usage == expected_usage(expected)
    assert_canonical(usage)


@pytest.mark.parametrize(("fixture", "name", "adapter", "expected"), CASES, ids=CASE_IDS)
def test_usage_from_response_dispatches_by_name(
    fixture: str, name: str, adapter: Any, expected: dict[str, Any]
) -> None:
    assert usage_from_response(name, load(fixture)) == expected_usage(expected)
    assert usage_from_response(name.upper().replace("-", "_"), load(fixture)) == expected_usage(expected)


@pytest.mark.parametrize(("fixture", "name", "adapter", "expected"), CASES, ids=CASE_IDS)
def test_raw_json_text_gives_the_same_usage(fixture: str, name: str, adapter: Any, expected: dict[str, Any]) -> None:
    text = (FIXTURES / f"{fixture}.json").read_text()

    assert usage_from_response(name, text) == expected_usage(expected)
    assert usage_from_response(name, text.encode()) == expected_usage(expected)


def test_gemini_totals_agree_with_total_token_count() -> None:
    # Gemini's totalTokenCount = prompt + candidates + thoughts + tool-use prompt: our input + output must match.
    for fixture in ("gemini_thinking_cached", "gemini_tool_use_audio"):
        body = load(fixture)
        usage = usage_from_gemini(body)
        assert usage.input_tokens + usage.output_tokens == body["usageMetadata"]["totalTokenCount"]


def test_openai_totals_agree_with_total_tokens() -> None:
    for fixture, adapter in (
        ("openai_chat_reasoning", usage_from_openai_chat),
        ("openai_chat_audio", usage_from_openai_chat),
        ("openai_responses_cached_reasoning", usage_from_openai_responses),
        ("openrouter_cost_reasoning", usage_from_openrouter),
    ):
        body = load(fixture)
        usage = adapter(body)
        assert usage.input_tokens + usage.output_tokens == body["usage"]["total_tokens"]


def test_openrouter_cost_is_exact_decimal_from_float_and_from_text() -> None:
    body = load("openrouter_cost_reasoning")
    assert isinstance(body["usage"]["cost"], float)

    from_float = usage_from_openrouter(body).reported_cost
    from_text = usage_from_openrouter(
        json.loads((FIXTURES / "openrouter_cost_reasoning.json").read_text(), parse_float=Decimal)
    ).reported_cost

    assert from_float == from_text == Decimal("0.0021693")
    assert isinstance(from_float, Decimal)
    assert str(from_float) == "0.0021693"  # not the float's binary expansion 0.00216929999...


def test_openrouter_without_cost_reports_none_and_non_byok_ignores_upstream_cost() -> None:
    body = load("openrouter_cost_reasoning")
    del body["usage"]["cost"]
    assert usage_from_openrouter(body).reported_cost is None

    body = load("openrouter_anthropic_cached_byok")
    body["usage"]["is_byok"] = False  # upstream_inference_cost is then already inside cost, not extra spend
    assert usage_from_openrouter(body).reported_cost == Decimal("0.00015102")


def test_openrouter_slug_split() -> None:
    assert split_openrouter_slug("anthropic/claude-3.5-sonnet") == ("anthropic", "claude-3.5-sonnet")
    assert split_openrouter_slug("openrouter/auto") == ("openrouter", "auto")
    assert split_openrouter_slug("gpt-4o") == ("", "gpt-4o")


def test_anthropic_cache_creation_breakdown_without_total() -> None:
    body = load("anthropic_cache_write_5m_1h")
    del body["usage"]["cache_creation_input_tokens"]

    usage = usage_from_anthropic(body)

    assert usage.cache_write_tokens == 1500 + 2000
    assert usage.cache_write_1h_tokens == 2000
    assert usage.input_tokens == 50 + 3500 + 1200


def test_anthropic_without_cache_fields_is_plain_input() -> None:
    body = load("anthropic_plain")
    body["usage"] = {"input_tokens": 7, "output_tokens": 3}

    usage = usage_from_anthropic(body)

    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (7, 3, 0, 0)


def test_openai_null_details_are_zero() -> None:
    body = load("openai_chat_plain")
    body["usage"]["prompt_tokens_details"] = None
    body["usage"]["completion_tokens_details"] = None

    usage = usage_from_openai_chat(body)

    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.reasoning_tokens) == (19, 10, 0, 0)


def test_openai_chat_provider_override_for_compatible_apis() -> None:
    usage = usage_from_openai_chat(load("openai_chat_cached"), provider="azure")

    assert usage.provider == "azure"
    assert usage.cache_read_tokens == 1920


def test_openai_name_tells_chat_from_responses_by_shape() -> None:
    assert usage_from_response("openai", load("openai_chat_reasoning")).reasoning_tokens == 1024
    assert usage_from_response("openai", load("openai_responses_cached_reasoning")).reasoning_tokens == 640


def test_gemini_snake_case_sdk_dump() -> None:
    # google-genai's model_dump() without aliases gives snake_case names; the adapter reads both.
    body = {
        "model_version": "gemini-2.5-pro",
        "response_id": "abc123",
        "usage_metadata": {
            "prompt_token_count": 900,
            "cached_content_token_count": 512,
            "candidates_token_count": 40,
            "thoughts_token_count": 300,
            "tool_use_prompt_token_count": 60,
            "prompt_tokens_details": [
                {"modality": "TEXT", "token_count": 800},
                {"modality": "AUDIO", "token_count": 100},
            ],
            "cache_tokens_details": [
                {"modality": "TEXT", "token_count": 462},
                {"modality": "AUDIO", "token_count": 50},
            ],
            "candidates_tokens_details": [{"modality": "AUDIO", "token_count": 40}],
        },
    }

    usage = usage_from_gemini(body)

    assert usage == ProviderUsage(
        provider="google", model="gemini-2.5-pro", input_tokens=960, output_tokens=340, cache_read_tokens=512,
        reasoning_tokens=300, input_audio_tokens=100, output_audio_tokens=40, cache_audio_read_tokens=50,
        response_id="abc123",
    )  # fmt: skip
    assert_canonical(usage)


def test_gemini_blocked_prompt_has_zero_output() -> None:
    body = {"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 14, "totalTokenCount": 14}}

    usage = usage_from_gemini(body)

    assert (usage.input_tokens, usage.output_tokens) == (14, 0)


class _FakePydanticResponse:
    """Quacks like an openai/anthropic SDK object: only ``model_dump`` is used."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.dump_kwargs: dict[str, Any] | None = None

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self.dump_kwargs = kwargs
        return self._body


class _FakeProtoResponse:
    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body

    def to_dict(self) -> dict[str, Any]:
        return self._body


def _to_namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{key: _to_namespace(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_to_namespace(item) for item in value]
    return value


@pytest.mark.parametrize(("fixture", "name", "adapter", "expected"), CASES, ids=CASE_IDS)
def test_sdk_objects_are_accepted(fixture: str, name: str, adapter: Any, expected: dict[str, Any]) -> None:
    pydantic_like = _FakePydanticResponse(load(fixture))
    assert usage_from_response(name, pydantic_like) == expected_usage(expected)
    assert pydantic_like.dump_kwargs == {"by_alias": True}  # google-genai: wire (camelCase) names

    assert usage_from_response(name, _FakeProtoResponse(load(fixture))) == expected_usage(expected)
    # Plain objects with attributes only (nested all the way down) are read through getattr.
    assert adapter(_to_namespace(load(fixture))) == expected_usage(expected)


def test_to_usage_fields_gives_the_event_fields_only() -> None:
    usage = usage_from_openrouter(load("openrouter_anthropic_cached_byok"))

    fields = to_usage_fields(usage)

    assert tuple(fields) == USAGE_FIELD_NAMES
    assert "response_id" not in fields
    assert fields["provider"] == "openrouter"
    assert fields["model"] == "anthropic/claude-3.5-sonnet"
    assert fields["input_tokens"] == 2100
    assert fields["cache_read_tokens"] == 2048
    assert fields["requests"] == 1
    assert fields["reported_cost"] == Decimal("0.00317142")
    assert ProviderUsage(**fields, response_id=usage.response_id) == usage


def test_provider_usage_is_frozen() -> None:
    usage = ProviderUsage(provider="openai", model="gpt-4o")
    with pytest.raises(FrozenInstanceError):
        usage.input_tokens = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("fixture", "name", "missing_path", "provider"),
    [
        ("openai_chat_plain", "openai-chat", "usage", "openai"),
        ("openai_responses_cached_reasoning", "openai-responses", "usage", "openai"),
        ("anthropic_plain", "anthropic", "usage", "anthropic"),
        ("gemini_thinking_cached", "gemini", "usageMetadata", "google"),
        ("openrouter_cost_reasoning", "openrouter", "usage", "openrouter"),
    ],
)
def test_body_without_usage_raises_naming_provider_and_path(
    fixture: str, name: str, missing_path: str, provider: str
) -> None:
    body = load(fixture)
    del body[missing_path]

    with pytest.raises(ProviderUsageError) as excinfo:
        usage_from_response(name, body)

    err = excinfo.value
    assert err.provider == provider
    assert err.path == missing_path
    message = str(err)
    assert message.startswith(f"{provider}: {missing_path}: missing")
    assert "pass the" in message  # says what to do


@pytest.mark.parametrize(
    ("fixture", "adapter", "path"),
    [
        ("openai_chat_plain", usage_from_openai_chat, "usage.prompt_tokens"),
        ("openai_chat_plain", usage_from_openai_chat, "usage.completion_tokens"),
        ("openai_responses_cached_reasoning", usage_from_openai_responses, "usage.input_tokens"),
        ("anthropic_plain", usage_from_anthropic, "usage.output_tokens"),
        ("gemini_thinking_cached", usage_from_gemini, "usageMetadata.promptTokenCount"),
        ("openrouter_cost_reasoning", usage_from_openrouter, "usage.prompt_tokens"),
    ],
)
def test_missing_required_count_names_the_path(fixture: str, adapter: Any, path: str) -> None:
    body = load(fixture)
    parent: Any = body
    *parents, leaf = path.split(".")
    for key in parents:
        parent = parent[key]
    del parent[leaf]

    with pytest.raises(ProviderUsageError, match=path.replace(".", r"\.")) as excinfo:
        adapter(body)
    assert excinfo.value.path == path


@pytest.mark.parametrize(
    ("fixture", "adapter", "path"),
    [
        ("openai_chat_plain", usage_from_openai_chat, "model"),
        ("anthropic_plain", usage_from_anthropic, "model"),
        ("gemini_thinking_cached", usage_from_gemini, "modelVersion"),
    ],
)
def test_missing_model_raises(fixture: str, adapter: Any, path: str) -> None:
    body = load(fixture)
    del body[path]

    with pytest.raises(ProviderUsageError) as excinfo:
        adapter(body)
    assert excinfo.value.path == path


@pytest.mark.parametrize("bad", [-1, 1.5, "12", True, None])
def test_malformed_counts_are_rejected(bad: Any) -> None:
    body = load("openai_chat_plain")
    body["usage"]["prompt_tokens"] = bad

    with pytest.raises(ProviderUsageError) as excinfo:
        usage_from_openai_chat(body)
    assert excinfo.value.path == "usage.prompt_tokens"


def test_integral_float_counts_are_accepted() -> None:
    body = load("openai_chat_plain")
    body["usage"]["prompt_tokens"] = 19.0

    assert usage_from_openai_chat(body).input_tokens == 19


@pytest.mark.parametrize("bad", [-0.01, "not-a-number", float("nan"), True, "1e30000000000000001"])
def test_malformed_cost_is_rejected(bad: Any) -> None:
    body = load("openrouter_cost_reasoning")
    body["usage"]["cost"] = bad

    with pytest.raises(ProviderUsageError) as excinfo:
        usage_from_openrouter(body)
    assert excinfo.value.path == "usage.cost"


def test_inconsistent_usage_is_rejected() -> None:
    # More cached than prompt tokens: pricing it would give a negative uncached count.
    body = load("openai_chat_cached")
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = 5000
    with pytest.raises(ProviderUsageError, match=r"cache_read_tokens \+ cache_write_tokens \(5000\) exceeds input"):
        usage_from_openai_chat(body)

    # reasoning > completion is not an inconsistency any more but a knowable convention (reasoning exclusive of
    # completion, normalised and named: test_reasoning_exclusive_gateway.py). Audio output above output still is.
    body = load("openai_chat_reasoning")
    body["usage"]["completion_tokens_details"]["audio_tokens"] = 5000
    with pytest.raises(ProviderUsageError, match="exceeds output_tokens"):
        usage_from_openai_chat(body)

    with pytest.raises(ProviderUsageError, match="cache_write_1h_tokens"):
        ProviderUsage(provider="anthropic", model="m", input_tokens=10, cache_write_tokens=1, cache_write_1h_tokens=2)


def test_unknown_provider_name_lists_the_known_ones() -> None:
    with pytest.raises(ProviderUsageError, match="use one of: anthropic, .*openrouter") as excinfo:
        usage_from_response("mistral", load("openai_chat_plain"))
    assert excinfo.value.provider == "mistral"


def test_invalid_json_text_is_an_adapter_error() -> None:
    with pytest.raises(ProviderUsageError, match="not valid JSON"):
        usage_from_response("anthropic", "{not json")


def test_error_is_a_finops_error_and_not_a_value_error() -> None:
    # Not a ValueError, like every FinopsError: pydantic would swallow it into its own ValidationError.
    assert issubclass(ProviderUsageError, FinopsError)
    assert not issubclass(ProviderUsageError, ValueError)


def test_cost_beyond_picodollars_is_rounded_to_money_scale() -> None:
    body = load("openrouter_cost_reasoning")
    body["usage"]["cost"] = 1.2345678901234567e-05  # str() gives 17 decimal places

    cost = usage_from_openrouter(body).reported_cost

    assert cost == Decimal("0.000012345679")
    assert cost is not None and cost.as_tuple().exponent == -12


def test_to_usage_fields_builds_a_valid_usage_event() -> None:
    models = pytest.importorskip("schemas.models")
    usage = usage_from_openrouter(load("openrouter_anthropic_cached_byok"))

    event = models.UsageEvent(
        **to_usage_fields(usage),
        event_id=uuid.UUID("0b7e3c1e-2f4a-4c6e-9d1a-6f0e8b2a9c11"),
        source="tests.adapters",
        occurred_at=datetime(2025, 8, 17, 12, 0, tzinfo=UTC),
        agent_id="agent-1",
        team="payments",
        project="refunds",
    )

    assert event.input_tokens == 2100
    assert event.reported_cost == Decimal("0.00317142")
