"""Provider adapters: map a model provider's response body onto our canonical token counts.

Role: every provider counts tokens differently, and this is where peers mis-price most (DESIGN §3). One adapter per
response shape (OpenAI Chat and Responses, Anthropic, Gemini, OpenRouter); :func:`usage_from_response` picks one by
name. In the ground because the agent SDK (``producers.track``) and ``finops price --file`` (``stream_jobs``) must
read a response exactly alike.

Guarantee: every adapter produces the canonical semantics, which :class:`ProviderUsage` enforces; every
normalisation applied is named (:attr:`ProviderUsage.normalisations`, the ``finops.normalised`` tag); money stays
``Decimal``; an adapter never guesses a zero for a required count: it raises :class:`ProviderUsageError` naming the
provider, the missing or bad path (e.g. ``usage.prompt_tokens``) and what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Any, Final

from schemas.errors import FinopsError
from schemas.loader import COUNTED_FIELDS

__all__ = [
    "MONEY_SCALE",
    "NORMALISED_TAG",
    "REASONING_CONVENTIONS",
    "normalisation_tags",
    "parse_reasoning_conventions",
    "OPENROUTER_PROVIDER",
    "USAGE_FIELD_NAMES",
    "ProviderUsage",
    "ProviderUsageError",
    "split_openrouter_slug",
    "to_usage_fields",
    "usage_from_anthropic",
    "usage_from_gemini",
    "usage_from_openai_chat",
    "usage_from_openai_responses",
    "usage_from_openrouter",
    "usage_from_response",
]

OPENROUTER_PROVIDER: Final = "openrouter"
#: The tag that names the normalisations applied (``;``-separated); the pricer's explanation reads the same name.
NORMALISED_TAG: Final = "finops.normalised"
#: How a source counts reasoning tokens against ``completion_tokens`` (:func:`_reasoning_output`).
REASONING_CONVENTIONS: Final[tuple[str, ...]] = ("auto", "inclusive", "exclusive")
MONEY_SCALE: Final = 12  # decimal places of money on the wire and in ClickHouse, Decimal(38, 12)
_MONEY_QUANTUM: Final = Decimal(1).scaleb(-MONEY_SCALE)
_MONEY_LIMIT: Final = Decimal(10) ** (38 - MONEY_SCALE)

# The fields of ProviderUsage that are UsageEvent fields (response_id is provenance, not part of the event).
USAGE_FIELD_NAMES: Final[tuple[str, ...]] = ("provider", "model", *COUNTED_FIELDS, "reported_cost")

_COUNT_FIELDS: Final[tuple[str, ...]] = tuple(
    name for name in USAGE_FIELD_NAMES if name not in ("provider", "model", "reported_cost")
)


class ProviderUsageError(FinopsError):
    """A response body cannot be mapped onto canonical usage (missing or malformed usage fields).

    ``provider`` and ``path`` say which provider's body and which field; the message says what to do. Not a
    ``ValueError``, like every ``FinopsError`` (see schemas/errors.py): it must pass through pydantic validators.
    """

    def __init__(self, provider: str, path: str, message: str) -> None:
        super().__init__(f"{provider}: {path}: {message}")
        self.provider = provider
        self.path = path


@dataclass(frozen=True, slots=True)
class ProviderUsage:
    """Canonical usage of one model call, as read from a provider's response.

    Semantics: ``input_tokens`` counts EVERY input token (uncached, cache reads, cache writes, audio, image, tool-use
    prompt); ``cache_read_tokens`` and ``cache_write_tokens`` are parts of it; ``cache_write_1h_tokens`` is part of
    ``cache_write_tokens`` (the rest are 5-minute writes); ``input_audio_tokens`` and ``image_tokens`` are parts of
    it; ``cache_audio_read_tokens`` is part of both ``cache_read_tokens`` and ``input_audio_tokens``.
    ``output_tokens`` counts EVERY output token; ``reasoning_tokens`` and ``output_audio_tokens`` are parts of it.
    ``web_search_calls`` and ``requests`` are separate counted units, not tokens.

    Construction checks the canonical invariants (parts never exceed their whole, no negative counts) and raises
    :class:`ProviderUsageError` when one fails, so no inconsistent usage can reach the pricer.
    """

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_audio_read_tokens: int = 0
    image_tokens: int = 0
    web_search_calls: int = 0
    requests: int = 1
    reported_cost: Decimal | None = None
    response_id: str | None = None
    #: The token normalisations applied to the provider's counts, each named (e.g. ``reasoning_exclusive``); provenance.
    normalisations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProviderUsageError(self.provider, name, f"must be a non-negative int, got {value!r}")
        for name in ("provider", "model"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ProviderUsageError(str(self.provider), name, f"must be a non-empty string, got {text!r}")
        if self.reported_cost is not None and (
            not isinstance(self.reported_cost, Decimal) or not self.reported_cost.is_finite() or self.reported_cost < 0
        ):
            raise ProviderUsageError(
                self.provider, "reported_cost", f"must be a finite non-negative Decimal, got {self.reported_cost!r}"
            )
        # (part, whole) pairs of the canonical token hierarchy; a part above its whole means a mis-mapped or
        # corrupt body, and would turn into a negative uncached count (or a negative price) downstream.
        parts: tuple[tuple[str, int, str, int], ...] = (
            ("cache_read_tokens + cache_write_tokens", self.cache_read_tokens + self.cache_write_tokens,
             "input_tokens", self.input_tokens),
            ("cache_write_1h_tokens", self.cache_write_1h_tokens, "cache_write_tokens", self.cache_write_tokens),
            ("input_audio_tokens + image_tokens", self.input_audio_tokens + self.image_tokens,
             "input_tokens", self.input_tokens),
            ("cache_audio_read_tokens", self.cache_audio_read_tokens, "cache_read_tokens", self.cache_read_tokens),
            ("cache_audio_read_tokens", self.cache_audio_read_tokens, "input_audio_tokens", self.input_audio_tokens),
            ("reasoning_tokens + output_audio_tokens", self.reasoning_tokens + self.output_audio_tokens,
             "output_tokens", self.output_tokens),
        )  # fmt: skip
        for part_name, part, whole_name, whole in parts:
            if part > whole:
                raise ProviderUsageError(
                    self.provider,
                    "usage",
                    f"{part_name} ({part}) exceeds {whole_name} ({whole}); the response's usage is inconsistent "
                    "or was read with the wrong adapter (check the provider name passed to usage_from_response)",
                )


def to_usage_fields(usage: ProviderUsage) -> dict[str, Any]:
    """Return the canonical usage-event fields of ``usage``, ready for ``UsageEvent(**fields, agent_id=..., ...)``.

    ``response_id`` is left out: it is provenance, not a usage field (a producer may put it in ``tags``).
    """
    return {name: getattr(usage, name) for name in USAGE_FIELD_NAMES}


def normalisation_tags(usage: ProviderUsage) -> dict[str, str]:
    """``{"finops.normalised": "..."}`` naming the normalisations of ``usage`` (empty when none): merge it into the
    event's ``tags`` so the ledger and ``finops price`` show how the counts were read."""
    return {NORMALISED_TAG: ";".join(usage.normalisations)[:256]} if usage.normalisations else {}


def parse_reasoning_conventions(text: str | None) -> dict[str, str]:
    """``"gw-gemini=exclusive, other=auto"`` -> ``{"gw-gemini": "exclusive", "other": "auto"}`` (source names).

    Raises :class:`ProviderUsageError` naming the bad item."""
    out: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        source, sep, convention = item.rpartition("=")
        convention = convention.strip().lower()
        if not sep or not source.strip() or convention not in REASONING_CONVENTIONS:
            raise ProviderUsageError(
                "settings", "FINOPS_PRODUCER_REASONING_CONVENTIONS",
                f"{item!r} must be SOURCE=CONVENTION with CONVENTION one of {', '.join(REASONING_CONVENTIONS)}",
            )  # fmt: skip
        out[source.strip()] = convention
    return out


def _reasoning_output(completion: int, reasoning: int, convention: str, provider: str) -> tuple[int, tuple[str, ...]]:
    """``output_tokens`` from an OpenAI-style ``completion_tokens`` and ``reasoning_tokens`` under ``convention``,
    with the normalisation it took.

    OpenAI's convention is that ``completion_tokens`` includes the reasoning tokens. Some OpenAI-compatible gateways
    pass Gemini's convention through instead (reasoning outside the completion count). A call with reasoning >
    completion shows it: the counts are exclusive and ``output_tokens = completion + reasoning`` (normalisation
    ``reasoning_exclusive``), never a rejected call. A call with reasoning <= completion cannot show the convention:
    the caller declares it per source (``reasoning="exclusive"``; ``FINOPS_PRODUCER_REASONING_CONVENTIONS`` for
    ``finops price --file``); ``finops price`` explains the ``finops.normalised`` tag."""
    if convention not in REASONING_CONVENTIONS:
        raise ProviderUsageError(
            provider, "reasoning",
            f"unknown reasoning convention {convention!r}; use one of {', '.join(REASONING_CONVENTIONS)}",
        )  # fmt: skip
    if reasoning > completion:
        why = "reasoning > completion"
        if convention == "inclusive":
            why += ", against the declared inclusive convention"
        return completion + reasoning, (
            (f"reasoning_exclusive: completion_tokens {completion} leaves out reasoning_tokens {reasoning} ({why}); "
             f"output_tokens = {completion} + {reasoning}"),
        )
    if convention == "exclusive" and reasoning:
        return completion + reasoning, (
            (f"reasoning_exclusive: completion_tokens {completion} leaves out reasoning_tokens {reasoning} "
             f"(declared for this source); output_tokens = {completion} + {reasoning}"),
        )
    return completion, ()


def split_openrouter_slug(slug: str) -> tuple[str, str]:
    """Split an OpenRouter model slug into (upstream vendor, model): ``"anthropic/claude-3.5-sonnet"`` ->
    ``("anthropic", "claude-3.5-sonnet")``. A slug without a vendor prefix gives ``("", slug)``."""
    vendor, sep, model = slug.partition("/")
    return (vendor, model) if sep else ("", slug)


# --------------------------------------------------------------------------------------------------------------
# Reading bodies: plain mappings (parsed JSON) and SDK objects (attribute access) alike.


def _child(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None)


def _lookup(body: Any, path: str) -> Any:
    node = body
    for key in path.split("."):
        node = _child(node, key)
    return node


class _Reader:
    """Typed access to one response body, raising :class:`ProviderUsageError` that names provider and path.

    A path may have alternatives (``"usageMetadata.promptTokenCount|usage_metadata.prompt_token_count"``): the
    first one present wins. Gemini needs this, as its REST JSON is camelCase and its Python SDKs dump snake_case.
    """

    def __init__(self, provider: str, body: Any, hint: str) -> None:
        self.provider = provider
        self.body = body
        self.hint = hint

    def first(self, path: str) -> tuple[str, Any]:
        alternatives = path.split("|")
        for alternative in alternatives:
            value = _lookup(self.body, alternative)
            if value is not None:
                return alternative, value
        return alternatives[0], None

    def fail(self, path: str, message: str) -> ProviderUsageError:
        return ProviderUsageError(self.provider, path, message)

    def count(self, path: str, *, required: bool = False) -> int:
        """A token count; absent optional counts are 0 (providers omit zero details), required ones raise."""
        name, value = self.first(path)
        if value is None:
            if required:
                raise self.fail(name, f"missing from the response body; {self.hint}")
            return 0
        return self.as_count(name, value)

    def as_count(self, name: str, value: Any) -> int:
        """``value`` as a token count; raises naming ``name`` unless it is a whole, non-negative number."""
        if isinstance(value, bool):
            raise self.fail(name, f"expected a token count, got {value!r}")
        if isinstance(value, int):
            count = value
        elif isinstance(value, float) and value.is_integer():
            count = int(value)  # some gateways and SDK dumps serialise counts as 12.0
        elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            count = int(value)  # JSON text parsed with parse_float=Decimal
        else:
            raise self.fail(name, f"expected a whole token count, got {value!r}")
        if count < 0:
            raise self.fail(name, f"token count must not be negative, got {count}")
        return count

    def text(self, path: str, *, required: bool = False) -> str | None:
        name, value = self.first(path)
        if value is None:
            if required:
                raise self.fail(name, f"missing from the response body; {self.hint}")
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"expected a non-empty string, got {value!r}")
        return value

    def mapping(self, path: str) -> Any:
        """The usage object at ``path`` (mapping or SDK object), required: without it there is nothing to price."""
        name, value = self.first(path)
        if value is None:
            raise self.fail(name, f"missing from the response body; {self.hint}")
        if isinstance(value, (str, bytes, int, float, list, tuple)):
            raise self.fail(name, f"expected an object, got {type(value).__name__}")
        return value

    def money(self, path: str) -> Decimal | None:
        """A USD amount as ``Decimal``; ``None`` when absent.

        A JSON number parsed as ``float`` is converted through ``str(float)``, the shortest repr that round-trips
        (the JSON text ``0.0021693`` becomes ``Decimal("0.0021693")``, not the binary float's 50-digit expansion);
        pass the raw JSON text to :func:`usage_from_response` to skip floats altogether (``parse_float=Decimal``).
        More than 12 decimal places (money is ``Decimal(38, 12)`` everywhere) are rounded half-even to 12."""
        name, value = self.first(path)
        if value is None:
            return None
        if isinstance(value, bool):
            raise self.fail(name, f"expected a cost in USD, got {value!r}")
        try:
            if isinstance(value, Decimal):
                amount = value
            elif isinstance(value, int):
                amount = Decimal(value)
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise self.fail(name, f"expected a finite cost, got {value!r}")
                amount = Decimal(str(value))
            elif isinstance(value, str):
                amount = Decimal(value.strip())
            else:
                raise self.fail(name, f"expected a cost in USD, got {type(value).__name__}")
        except InvalidOperation as err:
            raise self.fail(name, f"expected a cost in USD, got {value!r}") from err
        if not amount.is_finite() or amount < 0:
            raise self.fail(name, f"expected a finite non-negative cost, got {value!r}")
        if amount >= _MONEY_LIMIT:
            raise self.fail(name, f"cost out of range for Decimal(38, 12), got {value!r}")
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -MONEY_SCALE:
            # Money is Decimal(38, 12) everywhere (CONTRACTS.md); digits past a picodollar are float noise
            # (str(1.2345678901234e-05) has 17 places) and would make UsageEvent refuse the event.
            with localcontext() as ctx:
                ctx.prec = 38  # the default 28 digits cannot hold every Decimal(38, 12)
                amount = amount.quantize(_MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
        return amount

    def items(self, path: str) -> list[Any]:
        """A list at ``path`` (e.g. a modality breakdown or ``output``); absent is empty."""
        name, value = self.first(path)
        if value is None:
            return []
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise self.fail(name, f"expected a list, got {type(value).__name__}")
        return list(value)


def _as_body(body: Any, provider: str) -> Any:
    """Normalise what callers hand us: JSON text, a mapping, or an SDK response object.

    JSON text is parsed with ``parse_float=Decimal`` so a reported cost stays exact. Pydantic SDK objects (openai,
    anthropic, google-genai) are dumped ``by_alias`` so google-genai gives its wire (camelCase) names; objects
    with ``to_dict()`` (proto-plus, older SDKs) are converted; anything else is read through attributes.
    """
    if isinstance(body, (str, bytes, bytearray)):
        try:
            return json.loads(body, parse_float=Decimal)
        except ValueError as err:
            raise ProviderUsageError(provider, "body", f"not valid JSON ({err}); pass the response body") from err
    if isinstance(body, Mapping):
        return body
    model_dump = getattr(body, "model_dump", None)
    if callable(model_dump):
        try:
            return model_dump(by_alias=True)
        except TypeError:  # a model_dump that takes no keyword arguments
            return model_dump()
    to_dict = getattr(body, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if hasattr(body, "__dict__"):
        return body
    raise ProviderUsageError(
        provider, "body", f"cannot read a response of type {type(body).__name__}; pass the parsed JSON body"
    )


def _response_id(reader: _Reader, path: str) -> str | None:
    """The provider's response id, for provenance; optional (some proxies drop it), so never an error."""
    value = reader.first(path)[1]
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------------------------------------------
# Adapters


_OPENAI_CHAT_HINT = (
    "pass the whole Chat Completions response (for streams, request stream_options={'include_usage': true} "
    "and pass the last chunk, which carries usage)"
)


def usage_from_openai_chat(body: Any, *, provider: str = "openai", reasoning: str = "auto") -> ProviderUsage:
    """Map an OpenAI Chat Completions response (``object: "chat.completion"``) onto canonical usage.

    ``prompt_tokens`` already includes cached and audio tokens and ``completion_tokens`` reasoning and audio tokens,
    so both are taken as they are.

    ``provider`` lets OpenAI-compatible APIs (Azure OpenAI, Groq, DeepSeek, ...) reuse this mapping under their
    own name. ``reasoning`` is the source's convention for ``completion_tokens_details.reasoning_tokens``
    (``auto``: inside ``completion_tokens`` unless reasoning > completion shows otherwise; ``exclusive``; ``inclusive``;
    see :func:`_reasoning_output`). Raises :class:`ProviderUsageError` when ``usage``, ``usage.prompt_tokens``,
    ``usage.completion_tokens`` or ``model`` is missing or malformed.
    """
    reader = _Reader(provider, _as_body(body, provider), _OPENAI_CHAT_HINT)
    reader.mapping("usage")
    reasoning_tokens = reader.count("usage.completion_tokens_details.reasoning_tokens")
    output, normalisations = _reasoning_output(
        reader.count("usage.completion_tokens", required=True), reasoning_tokens, reasoning, provider
    )
    return ProviderUsage(
        provider=provider,
        model=_model(reader, "model"),
        input_tokens=reader.count("usage.prompt_tokens", required=True),
        output_tokens=output,
        cache_read_tokens=reader.count("usage.prompt_tokens_details.cached_tokens"),
        # Not in OpenAI's own responses today; some OpenAI-compatible gateways (OpenRouter, Azure) report it.
        cache_write_tokens=reader.count("usage.prompt_tokens_details.cache_write_tokens"),
        reasoning_tokens=reasoning_tokens,
        input_audio_tokens=reader.count("usage.prompt_tokens_details.audio_tokens"),
        output_audio_tokens=reader.count("usage.completion_tokens_details.audio_tokens"),
        image_tokens=reader.count("usage.prompt_tokens_details.image_tokens"),
        response_id=_response_id(reader, "id"),
        normalisations=normalisations,
    )


def usage_from_openai_responses(body: Any, *, provider: str = "openai") -> ProviderUsage:
    """Map an OpenAI Responses API response (``object: "response"``) onto canonical usage.

    Counts ``web_search_call`` items in ``output`` as ``web_search_calls`` (OpenAI bills web search per call).
    Raises :class:`ProviderUsageError` when ``usage`` (null while a response is in progress),
    ``usage.input_tokens``, ``usage.output_tokens`` or ``model`` is missing or malformed.
    """
    reader = _Reader(
        provider,
        _as_body(body, provider),
        "pass the completed Responses API response (usage is null until status is 'completed'; for streams, "
        "pass the response of the response.completed event)",
    )
    reader.mapping("usage")
    web_searches = sum(1 for item in reader.items("output") if _child(item, "type") == "web_search_call")
    return ProviderUsage(
        provider=provider,
        model=_model(reader, "model"),
        input_tokens=reader.count("usage.input_tokens", required=True),
        output_tokens=reader.count("usage.output_tokens", required=True),
        cache_read_tokens=reader.count("usage.input_tokens_details.cached_tokens"),
        cache_write_tokens=reader.count("usage.input_tokens_details.cache_write_tokens"),
        reasoning_tokens=reader.count("usage.output_tokens_details.reasoning_tokens"),
        web_search_calls=web_searches,
        response_id=_response_id(reader, "id"),
    )


def usage_from_anthropic(body: Any, *, provider: str = "anthropic") -> ProviderUsage:
    """Map an Anthropic Messages API response (``type: "message"``) onto canonical usage.

    Anthropic's ``input_tokens`` excludes cache reads and writes; ours includes them (``input_tokens +
    cache_creation_input_tokens + cache_read_input_tokens``); writes are split by TTL because 5-minute and 1-hour
    writes are priced differently, and ``server_tool_use.web_search_requests`` are billed per search. When
    ``usage.cache_creation`` is present its ``ephemeral_1h_input_tokens`` become ``cache_write_1h_tokens`` (the rest
    of the writes are 5-minute writes); when only the breakdown is present, the writes are its sum. ``provider``
    lets the same shape from Bedrock or Vertex be reported under their names. Raises :class:`ProviderUsageError`
    when ``usage``, ``usage.input_tokens``, ``usage.output_tokens`` or ``model`` is missing or malformed.
    """
    reader = _Reader(
        provider,
        _as_body(body, provider),
        "pass the whole Messages API response (for streams, the final message from "
        "stream.get_final_message(), whose usage sums message_start and message_delta)",
    )
    reader.mapping("usage")
    uncached = reader.count("usage.input_tokens", required=True)
    cache_read = reader.count("usage.cache_read_input_tokens")
    write_5m = reader.count("usage.cache_creation.ephemeral_5m_input_tokens")
    write_1h = reader.count("usage.cache_creation.ephemeral_1h_input_tokens")
    if _lookup(reader.body, "usage.cache_creation_input_tokens") is not None:
        cache_write = reader.count("usage.cache_creation_input_tokens")
    else:
        cache_write = write_5m + write_1h
    return ProviderUsage(
        provider=provider,
        model=_model(reader, "model"),
        input_tokens=uncached + cache_write + cache_read,
        output_tokens=reader.count("usage.output_tokens", required=True),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=write_1h,
        # Thinking is billed as output and already inside output_tokens; Messages responses do not break it out,
        # but the detail genai-prices knows (output_tokens_details.thinking_tokens) is read when present.
        reasoning_tokens=reader.count("usage.output_tokens_details.thinking_tokens"),
        web_search_calls=reader.count("usage.server_tool_use.web_search_requests"),
        response_id=_response_id(reader, "id"),
    )


def _g(camel: str) -> str:
    """``"usageMetadata.promptTokenCount"`` -> that path or its snake_case twin (google-genai SDK dumps)."""
    snake = ".".join("".join("_" + c.lower() if c.isupper() else c for c in part) for part in camel.split("."))
    return camel if snake == camel else f"{camel}|{snake}"


def _modality_count(reader: _Reader, path: str, modality: str) -> int:
    """Sum of ``tokenCount`` over the entries of a Gemini ``ModalityTokenCount`` list with that modality."""
    total = 0
    for index, entry in enumerate(reader.items(_g(path))):
        if str(_child(entry, "modality")).upper().removeprefix("MEDIAMODALITY.") != modality:
            continue  # also tolerates enum members (MediaModality.AUDIO) from SDK objects read by attribute
        count = _child(entry, "tokenCount")
        if count is None:
            count = _child(entry, "token_count")
        if count is not None:
            total += reader.as_count(f"{path}[{index}].tokenCount", count)
    return total


def usage_from_gemini(body: Any, *, provider: str = "google") -> ProviderUsage:
    """Map a Google Gemini ``generateContent`` response (Gemini API or Vertex AI) onto canonical usage.

    ``promptTokenCount`` includes ``cachedContentTokenCount``; ``toolUsePromptTokenCount`` (e.g. search grounding
    results fed back to the model) is billed as input but is not in ``promptTokenCount``, so it is added; thoughts
    are billed as output, so ``thoughtsTokenCount`` is added to ``candidatesTokenCount``. Audio and image counts
    come from the ``promptTokensDetails`` / ``toolUsePromptTokensDetails`` / ``cacheTokensDetails`` /
    ``candidatesTokensDetails`` modality lists. Accepts camelCase (REST) and snake_case (SDK dump) names.
    Raises :class:`ProviderUsageError` when ``usageMetadata``, ``usageMetadata.promptTokenCount`` or
    ``modelVersion`` is missing or malformed.
    """
    reader = _Reader(
        provider,
        _as_body(body, provider),
        "pass the whole generateContent response (for streams, the last chunk, which carries the final usageMetadata)",
    )
    reader.mapping(_g("usageMetadata"))
    prompt = reader.count(_g("usageMetadata.promptTokenCount"), required=True)
    tool_prompt = reader.count(_g("usageMetadata.toolUsePromptTokenCount"))
    # candidatesTokenCount is absent when the model returned no candidates (e.g. a blocked prompt): 0 output.
    candidates = reader.count(_g("usageMetadata.candidatesTokenCount"))
    thoughts = reader.count(_g("usageMetadata.thoughtsTokenCount"))
    input_audio = _modality_count(reader, "usageMetadata.promptTokensDetails", "AUDIO") + _modality_count(
        reader, "usageMetadata.toolUsePromptTokensDetails", "AUDIO"
    )
    image = _modality_count(reader, "usageMetadata.promptTokensDetails", "IMAGE") + _modality_count(
        reader, "usageMetadata.toolUsePromptTokensDetails", "IMAGE"
    )
    return ProviderUsage(
        provider=provider,
        model=_model(reader, _g("modelVersion")),
        input_tokens=prompt + tool_prompt,
        output_tokens=candidates + thoughts,
        cache_read_tokens=reader.count(_g("usageMetadata.cachedContentTokenCount")),
        reasoning_tokens=thoughts,
        input_audio_tokens=input_audio,
        output_audio_tokens=_modality_count(reader, "usageMetadata.candidatesTokensDetails", "AUDIO"),
        cache_audio_read_tokens=_modality_count(reader, "usageMetadata.cacheTokensDetails", "AUDIO"),
        image_tokens=image,
        response_id=_response_id(reader, _g("responseId")),
    )


def usage_from_openrouter(body: Any, *, reasoning: str = "auto") -> ProviderUsage:
    """Map an OpenRouter chat completion onto canonical usage, with ``provider="openrouter"`` and the full slug
    as ``model``: OpenRouter is who bills the call, its prices can differ from the upstream vendor's, and the
    genai-prices catalogue prices exactly that pair (provider ``openrouter``, model id = slug); the vendor stays
    recoverable with :func:`split_openrouter_slug`. The body is OpenAI Chat shaped, normalised by OpenRouter
    (``prompt_tokens`` includes cached tokens whatever the upstream provider).

    ``reported_cost`` is ``usage.cost`` (USD credits OpenRouter charged). For a BYOK call (``usage.is_byok`` is
    true) that is only OpenRouter's fee, and the upstream vendor bills ``usage.cost_details.
    upstream_inference_cost`` to the caller's own key, so the two are added: the call's spend is both.
    ``reasoning`` as in :func:`usage_from_openai_chat`. Raises :class:`ProviderUsageError` like
    :func:`usage_from_openai_chat`, or when the cost is malformed.
    """
    raw = _as_body(body, OPENROUTER_PROVIDER)
    chat = usage_from_openai_chat(raw, provider=OPENROUTER_PROVIDER, reasoning=reasoning)
    reader = _Reader(OPENROUTER_PROVIDER, raw, _OPENAI_CHAT_HINT)
    cost = reader.money("usage.cost")
    if cost is not None and _lookup(raw, "usage.is_byok") is True:
        upstream = reader.money("usage.cost_details.upstream_inference_cost")
        if upstream is not None:
            cost += upstream
    return replace(chat, reported_cost=cost)


def _model(reader: _Reader, path: str) -> str:
    model = reader.text(path, required=True)
    assert model is not None  # required=True raises instead of returning None
    return model


_ADAPTERS: Final[dict[str, Any]] = {
    "openai-chat": usage_from_openai_chat,
    "openai-responses": usage_from_openai_responses,
    "anthropic": usage_from_anthropic,
    "google": usage_from_gemini,
    "gemini": usage_from_gemini,
    "google-gla": usage_from_gemini,
    "google-vertex": usage_from_gemini,
    "vertex": usage_from_gemini,
    "openrouter": usage_from_openrouter,
}


def usage_from_response(provider: str, body: Any, *, reasoning: str = "auto") -> ProviderUsage:
    """Map ``body`` with the adapter for ``provider`` (case-insensitive; ``_`` and ``-`` alike).

    Names: ``openai`` (Chat Completions or Responses, told apart by the body's shape), ``openai-chat``,
    ``openai-responses``, ``anthropic``, ``google`` / ``gemini`` / ``google-gla`` / ``google-vertex`` / ``vertex``,
    ``openrouter``. ``body`` may be a mapping, JSON text (costs parsed exactly as ``Decimal``) or an SDK response
    object (``model_dump()``, ``to_dict()`` or attributes). ``reasoning`` is the source's reasoning-token convention
    for the OpenAI Chat shapes (openai chat, openrouter; see :func:`_reasoning_output`). Raises
    :class:`ProviderUsageError` for an unknown provider name or a body the adapter cannot map.
    """
    name = provider.strip().lower().replace("_", "-")
    parsed = _as_body(body, provider)
    if name == "openai":
        is_responses = _lookup(parsed, "object") == "response" or _lookup(parsed, "usage.input_tokens") is not None
        if is_responses:
            return usage_from_openai_responses(parsed)
        return usage_from_openai_chat(parsed, reasoning=reasoning)
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        known = ", ".join(sorted({"openai", *_ADAPTERS}))
        raise ProviderUsageError(
            provider, "provider", f"no usage adapter for this provider; use one of: {known} (or build "
            "ProviderUsage yourself for other providers)"
        )  # fmt: skip
    if adapter in (usage_from_openai_chat, usage_from_openrouter):
        chat: ProviderUsage = adapter(parsed, reasoning=reasoning)
        return chat
    result: ProviderUsage = adapter(parsed)
    return result
