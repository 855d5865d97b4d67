"""Price one usage event: genai-prices catalogue as of ``occurred_at``, overlaid by the organisation price book.

Role: pure logic, no Kafka, Faust or ClickHouse and no clock (the event's ``occurred_at`` is the only time used).
:class:`Pricer` prices with genai-prices' own decomposition (leaf counts per priced unit, :func:`_compile`) from
compiled rates cached per (provider, model) and price period, never per result, so the hot path does not pay
``genai_prices.calc_price`` per event; gateways' ``vendor/model`` names fall back to the vendor's entry.

Guarantee: money is exact ``Decimal``, quantized to 12 places with the parts always summing to the total;
``tests/unit/test_pricing_parity.py`` checks the result against ``calc_price`` on every catalogue model; a reported
cost is kept beside the computed one and the ``cost_basis`` (:class:`CostBasisPolicy`) says which is ``cost_usd``.
See DESIGN §4 and the README, "Pricing".
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, Literal, NamedTuple

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp_types
from genai_prices.units import UnitDef, _get_registry  # private: pinned by genai-prices>=0.2.3,<0.3
from genai_prices.validation import validate_priced_units

from finops.clock import as_utc
from finops.pricing.pricebook import (
    DiscountEntry,
    OverrideEntry,
    PriceBook,
    boundaries,
    pick_discount,
    pick_override,
)
from schemas.errors import FinopsError
from schemas.loader import COUNTED_FIELDS

__all__ = [
    "COST_BASES",
    "CostBasis",
    "CostBasisPolicy",
    "GATEWAY_PROVIDERS",
    "InvalidUsageError",
    "PriceResult",
    "Pricer",
    "PricingError",
    "PricingStatus",
    "PriceSource",
    "catalogue_version",
    "NORMALISED_TAG",
    "parse_cost_basis",
    "unpriced_fix",
    "to_genai_usage",
]

PricingStatus = Literal["priced", "unpriced"]
#: ``catalogue`` | ``price_book`` | ``catalogue:<vendor> via <gateway>`` | ``price_book:<vendor> via <gateway>`` |
#: ``reported`` | ``none`` (see Pricer and CostBasisPolicy).
PriceSource = str
CostBasis = Literal["catalogue", "reported", "reported_if_unpriced"]
COST_BASES: Final[tuple[str, ...]] = ("catalogue", "reported", "reported_if_unpriced")

#: Providers that route calls to other vendors. The event keeps the gateway as provider (it bills the call); a model
#: its catalogue entry lacks is priced at the vendor named by the model's ``vendor/`` prefix. Any provider the
#: catalogue does not know is treated the same way when its model has a vendor prefix.
GATEWAY_PROVIDERS: Final = frozenset(
    {"openrouter", "litellm", "portkey", "vercel", "helicone", "cloudflare-ai-gateway"})

# OpenRouter / LiteLLM vendor prefixes whose genai-prices provider id differs.
_VENDOR_ALIASES: Final[Mapping[str, str]] = {
    "meta-llama": "meta",
    "mistralai": "mistral",
    "xai": "x-ai",
    "amazon": "aws",
    "bedrock": "aws",
    "vertex_ai": "google",
    "gemini": "google",
    "moonshot": "moonshotai",
    "together_ai": "together",
    "z-ai": "zai",
}

_Q12: Final = Decimal("1e-12")
_ZERO12: Final = Decimal("0").quantize(_Q12)
_TWO: Final = Decimal(2)

#: Our canonical usage fields, in the order ``to_genai_usage`` reads them.
USAGE_FIELDS: Final[tuple[str, ...]] = COUNTED_FIELDS

# genai-prices usage key -> the same count as integer coefficients over our fields. Keys not listed are units the
# usage event does not carry (video, characters, pages, seconds, ...): their count is 0, as genai-prices infers.
_GENAI_FROM_OURS: Final[Mapping[str, tuple[tuple[str, int], ...]]] = {
    "input_tokens": (("input_tokens", 1),),
    "output_tokens": (("output_tokens", 1),),
    "cache_read_tokens": (("cache_read_tokens", 1),),
    "cache_write_tokens": (("cache_write_tokens", 1),),
    "cache_write_5m_tokens": (("cache_write_tokens", 1), ("cache_write_1h_tokens", -1)),
    "cache_write_1h_tokens": (("cache_write_1h_tokens", 1),),
    "output_reasoning_tokens": (("reasoning_tokens", 1),),
    "input_audio_tokens": (("input_audio_tokens", 1),),
    "output_audio_tokens": (("output_audio_tokens", 1),),
    "cache_audio_read_tokens": (("cache_audio_read_tokens", 1),),
    "input_image_tokens": (("image_tokens", 1),),
    "web_searches": (("web_search_calls", 1),),
}



def _joins_we_do_not_carry() -> tuple[str, ...]:
    """genai-prices keys that are the overlap of two keys we report (cached image tokens = cache reads x image
    tokens, audio reasoning, ...). The event carries no count for them, which means 0; genai-prices refuses to guess
    when both sides are non-zero, so ``to_genai_usage`` states the 0 explicitly."""
    registry = _get_registry()
    carried = [registry.units[key] for key in _GENAI_FROM_OURS]
    joins: set[str] = set()
    for i, left in enumerate(carried):
        for right in carried[i + 1 :]:
            join = registry.find_join(left, right)
            if join is not None and join.usage_key not in _GENAI_FROM_OURS:
                joins.add(join.usage_key)
    return tuple(sorted(joins))


_EXPLICIT_ZERO_KEYS: Final[tuple[str, ...]] = _joins_we_do_not_carry()

# Cost buckets of PriceResult.
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE, _OTHER = range(5)
_BUCKET_NAMES: Final = ("input", "output", "cache read", "cache write", "other")

# Which price key fills which price_*_mtok column of PriceResult.
_DISPLAY_SLOT: Final[Mapping[str, int]] = {
    "input_mtok": 0,
    "output_mtok": 1,
    "cache_read_mtok": 2,
    "cache_write_mtok": 3,
    "cache_write_5m_mtok": 3,
    "cache_write_1h_mtok": 4,
}

# Clouds that resell Claude at Anthropic's list prices, where the 2 x input 1-hour cache-write rule holds.
_ONE_HOUR_CONVENTION_PROVIDERS: Final = frozenset({"anthropic", "aws", "google", "azure"})

# A requests line counts calls, not tokens: the event's ``requests`` (1 when absent or 0, like genai-prices).
_REQUESTS_TERMS: Final[tuple[tuple[str, int], ...]] = (("requests", 1),)


class PricingError(FinopsError):
    """Root of the pricing errors."""


class InvalidUsageError(PricingError):
    """The usage cannot be priced as given: a part exceeds its whole (e.g. ``cache_read_tokens > input_tokens``),
    a count is not an integer, or ``occurred_at`` is missing or not a datetime. Route the event to the DLQ."""


class PriceResult(NamedTuple):
    """The price of one usage event (a NamedTuple: cheap to build on the hot path).

    Promises: every ``cost_*`` is a Decimal with exactly 12 places and ``cost_input_usd + cost_output_usd +
    cost_cache_read_usd + cost_cache_write_usd + cost_other_usd == cost_usd``. When unpriced all costs are 0, every
    ``price_*`` is None, ``price_source == "none"`` and ``unpriced_reason`` names the provider and model.

    ``price_*_mtok`` are the unit prices used, USD per million tokens (the tier applied, after any discount). None
    means the model has no separate price for that part and those tokens were billed with their parent (cache reads
    as input, 1-hour writes as cache writes).

    ``cost_usd`` is the authoritative cost: the computed one, or the reported one when the event's ``cost_basis``
    makes the report the bill (then ``price_source == "reported"``). ``computed_cost_usd`` is what the price book or
    catalogue gave (None when they could not price the call); ``cost_delta_usd`` is reported minus computed.
    """

    cost_usd: Decimal
    cost_input_usd: Decimal
    cost_output_usd: Decimal
    cost_cache_read_usd: Decimal
    cost_cache_write_usd: Decimal
    cost_other_usd: Decimal
    price_input_mtok: Decimal | None
    price_output_mtok: Decimal | None
    price_cache_read_mtok: Decimal | None
    price_cache_write_mtok: Decimal | None
    price_cache_write_1h_mtok: Decimal | None
    pricing_status: PricingStatus
    unpriced_reason: str | None
    catalogue_version: str
    price_book_version: str | None
    price_source: PriceSource
    cost_delta_usd: Decimal | None
    cost_mismatch: bool
    computed_cost_usd: Decimal | None
    cost_basis: str


_tuple_new: Final = tuple.__new__


class CostBasisPolicy:
    """Which cost is authoritative for an event: ``cost_basis`` per source and per provider (DESIGN §4, step 4).

    A reported cost (what a gateway billed, what a client computed) is kept beside the computed one
    (``computed_cost_usd``). ``catalogue``: the computed cost is authoritative, a report is only compared;
    ``reported``: the report is the bill; ``reported_if_unpriced``: the computed cost, or the report when the
    catalogue and book cannot price the call, so a call whose cost is known from its report is never unpriced. When
    the report answers, ``price_source == "reported"`` and the parts are the computed parts scaled to the report
    (all in ``cost_other_usd`` when nothing was computed), so they still add up exactly.

    Precedence: the event's source, then its provider, then ``default``, then the built-in defaults: ``reported`` for
    provider ``openrouter`` (its ``usage.cost`` is the bill), ``reported_if_unpriced`` for everything else (a direct
    provider call the catalogue prices is computed, as ``catalogue`` would; when the catalogue lacks the model, its
    report is the best evidence there is). Names compare case-insensitively.
    """

    __slots__ = ("by_source", "by_provider", "default")

    def __init__(
        self,
        by_source: Mapping[str, str] | None = None,
        by_provider: Mapping[str, str] | None = None,
        default: str | None = None,
    ) -> None:
        for where, basis in [*(by_source or {}).items(), *(by_provider or {}).items(), ("*", default)]:
            if basis is not None and basis not in COST_BASES:
                raise PricingError(f"cost_basis for {where!r} must be one of {', '.join(COST_BASES)}, got {basis!r}")
        self.by_source = {k.strip().lower(): v for k, v in (by_source or {}).items()}
        self.by_provider = {k.strip().lower(): v for k, v in (by_provider or {}).items()}
        self.default = default

    def basis_for(self, source: str | None, provider: str | None) -> str:
        """The ``cost_basis`` of an event from ``source`` for ``provider``."""
        if source is not None and self.by_source:
            found = self.by_source.get(source.lower())
            if found is not None:
                return found
        name = (provider or "").lower()
        found = self.by_provider.get(name)
        if found is not None:
            return found
        if self.default is not None:
            return self.default
        return "reported" if name == "openrouter" else "reported_if_unpriced"

    def describe(self) -> str:
        parts = [f"source:{k}={v}" for k, v in sorted(self.by_source.items())]
        parts += [f"provider:{k}={v}" for k, v in sorted(self.by_provider.items())]
        if self.default is not None:
            parts.append(f"*={self.default}")
        return ", ".join(parts) or "(defaults)"


def parse_cost_basis(text: str | None, *, setting: str = "FINOPS_STREAM_COST_BASIS") -> CostBasisPolicy:
    """``"provider:openrouter=reported, source:claude-code=catalogue, *=reported_if_unpriced"`` as a policy.

    A key is ``source:NAME``, ``provider:NAME``, a bare provider name, or ``*`` (every other event). Empty text gives
    the built-in defaults. Raises :class:`PricingError` naming ``setting`` and the bad item.
    """
    by_source: dict[str, str] = {}
    by_provider: dict[str, str] = {}
    default: str | None = None
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if not sep or not key or value not in COST_BASES:
            raise PricingError(
                f"{setting}: {item!r} must be KEY=BASIS with KEY source:NAME, provider:NAME, NAME or * and BASIS one "
                f"of {', '.join(COST_BASES)}"
            )
        kind, colon, name = key.partition(":")
        if key == "*":
            default = value
        elif colon and kind.strip().lower() == "source":
            by_source[name.strip()] = value
        elif colon and kind.strip().lower() == "provider":
            by_provider[name.strip()] = value
        elif colon:
            raise PricingError(f"{setting}: {item!r}: the key kind must be source: or provider:, got {kind!r}")
        else:
            by_provider[key] = value
    return CostBasisPolicy(by_source, by_provider, default)

# --- compiled rates ------------------------------------------------------------------------------------------------

# Tier of a line: (start, unit price per unit counted, price per ``per`` units as published), highest start first.
_Tier = tuple[int, Decimal, Decimal]
# One priced unit: (bucket, terms over our fields, unit price per counted unit, published price, tiers or None,
# price column slot or -1). A plain tuple because the hot loop unpacks it.
_Line = tuple[int, tuple[tuple[str, int], ...], Decimal, Decimal, tuple[_Tier, ...] | None, int]


class _LineInfo(NamedTuple):
    """What ``explain`` prints about a line (kept out of the hot tuple)."""

    usage_key: str
    price_key: str
    per: int


class _Rates(NamedTuple):
    """Compiled prices of one model for one period; immutable and shared by every event of that period."""

    lines: tuple[_Line, ...]
    display: tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None, Decimal | None]
    tiered: bool
    source: PriceSource
    unpriced_reason: str | None
    info: tuple[_LineInfo, ...]
    notes: tuple[str, ...]
    #: price key -> (base per MTok, ((start, price per MTok), ...) ascending) for the tiered prices (drift solving).
    tier_table: Mapping[str, tuple[Decimal, tuple[tuple[int, Decimal], ...]]] = {}


def _unpriced_rates(reason: str, notes: tuple[str, ...] = ()) -> _Rates:
    return _Rates((), (None, None, None, None, None), False, "none", reason, (), notes)


def _bucket(unit: UnitDef) -> int:
    dims = unit.dimensions
    if dims.get("family") != "tokens":
        return _OTHER  # web searches, requests, and units the event does not carry
    token_type = dims.get("token_type")
    if token_type == "cache_read":
        return _CACHE_READ
    if token_type == "cache_write":
        return _CACHE_WRITE
    if dims.get("modality") not in (None, "text", "audio"):
        return _OTHER  # image / video tokens (PricedUsageEvent.cost_other_usd)
    if dims.get("direction") == "input" and token_type is None:
        return _INPUT
    if dims.get("direction") == "output" and token_type in (None, "reasoning", "citation"):
        return _OUTPUT
    return _OTHER


def _formula(terms: tuple[tuple[str, int], ...]) -> str:
    """``input_tokens - cache_read_tokens - cache_write_tokens`` for people."""
    pieces: list[str] = []
    for index, (field, k) in enumerate(terms):
        name = field if abs(k) == 1 else f"{abs(k)} x {field}"
        if index == 0:
            pieces.append(name if k > 0 else f"-{name}")
        else:
            pieces.append(f"{'+' if k > 0 else '-'} {name}")
    return " ".join(pieces)


def _per_unit(price: Decimal, per: int) -> Decimal:
    """Price of one counted unit; exact when ``per`` is a power of ten (every unit the event carries)."""
    digits = str(per)
    if digits[0] == "1" and digits.count("0") == len(digits) - 1:
        return price.scaleb(-(len(digits) - 1))
    return price / per  # pragma: no cover - per 60/3600 units (seconds) are never fed by our fields


def _scale(value: Decimal | gp_types.TieredPrices, factor: Decimal) -> Decimal | gp_types.TieredPrices:
    if isinstance(value, gp_types.TieredPrices):
        return gp_types.TieredPrices(
            base=value.base * factor, tiers=[gp_types.Tier(start=t.start, price=t.price * factor) for t in value.tiers]
        )
    return value * factor


def _compile(price_map: Mapping[str, Any], source: PriceSource, notes: tuple[str, ...], label: str) -> _Rates:
    """Turn a genai-prices price set into leaf terms over our fields.

    Our token fields are canonical (DESIGN §3) and genai-prices uses the same semantics, so the mapping is one to
    one (:func:`to_genai_usage`). genai-prices prices every unit a model has a price for on its leaf count: the
    unit's count minus the counts of its priced sub-units. With input, cache-read and cache-write prices::

        uncached input = input_tokens - cache_read_tokens - cache_write_tokens      at input_mtok
        cache reads    = cache_read_tokens                                          at cache_read_mtok
        5-minute writes= cache_write_tokens - cache_write_1h_tokens                 at cache_write_mtok
        1-hour writes  = cache_write_1h_tokens                                      at cache_write_1h_mtok
        output         = output_tokens (reasoning included)                         at output_mtok

    A part without a price of its own stays in its parent (OpenAI has no cache-write price, so cache writes are
    billed as input; a model without an audio price bills audio tokens as input). Leaf counts are linear in the
    usage fields, so each priced unit's leaf is precomputed once as integer coefficients over our fields; pricing an
    event is then a few integer sums and one Decimal multiply per priced unit. Tiered prices (the whole call pays the
    tier that ``input_tokens`` exceeds, genai-prices' "cliff" rule) are compiled too, not a slow fallback.

    The 1-hour cache-write rule: where a Claude model is sold by a first-party cloud (AWS Bedrock, Google Vertex,
    Azure) with a 5-minute write price but no 1-hour price, the 1-hour price is derived from Anthropic's published
    convention, 2 x the base input price (tiers scaled the same way), and ``explain`` says so. Elsewhere a 1-hour
    write without its own price is billed at the cache-write price (genai-prices' rule); a price-book override can
    always set ``cache_write_1h_mtok``.
    """
    registry = _get_registry()
    units: list[tuple[UnitDef, Decimal | gp_types.TieredPrices]] = []
    ignored: list[str] = []
    for price_key, value in price_map.items():
        try:
            units.append((registry.unit_for_price_key(price_key), value))
        except KeyError:
            ignored.append(price_key)
    if ignored:
        notes = (*notes, f"price keys unknown to genai-prices, ignored: {', '.join(sorted(ignored))}")
    try:
        validate_priced_units(tuple(unit for unit, _ in units), registry)
    except ValueError as err:
        return _unpriced_rates(f"price set of {label} is incoherent: {err}", notes)

    # Leaf of u = count(u) - sum of leaves of its priced descendants: linear, so compute it as coefficients.
    token_units = sorted(
        (unit for unit, _ in units if unit.usage_key != "requests"),
        key=lambda unit: (-len(unit.dimensions), unit.usage_key),
    )
    coefficients: dict[str, dict[str, int]] = {}
    for unit in token_units:
        coef = {unit.usage_key: 1}
        for other in token_units:
            if other is not unit and unit.dimensions.items() <= other.dimensions.items():
                for key, c in coefficients[other.usage_key].items():
                    coef[key] = coef.get(key, 0) - c
        coefficients[unit.usage_key] = coef

    lines: list[_Line] = []
    info: list[_LineInfo] = []
    display: list[Decimal | None] = [None] * 5
    tiered = False
    uncarried: list[str] = []
    for unit, value in units:
        if unit.usage_key == "requests":
            terms = _REQUESTS_TERMS
        else:
            ours: dict[str, int] = {}
            for genai_key, c in coefficients[unit.usage_key].items():
                for field, k in _GENAI_FROM_OURS.get(genai_key, ()):
                    ours[field] = ours.get(field, 0) + c * k
            # Wholes first, then the parts taken out of them: reads as "input - cache_read - cache_write".
            terms = tuple(sorted(((f, k) for f, k in ours.items() if k != 0),
                                 key=lambda fk: (fk[1] < 0, USAGE_FIELDS.index(fk[0]))))
            if not terms:
                uncarried.append(unit.usage_key)  # always 0 for our events: no line needed
                continue
        slot = _DISPLAY_SLOT.get(unit.price_key, -1)
        if isinstance(value, gp_types.TieredPrices):
            tiered = True
            base = value.base
            tiers: tuple[_Tier, ...] | None = tuple(
                (t.start, _per_unit(t.price, unit.per), t.price) for t in sorted(value.tiers, key=lambda t: -t.start)
            )
        else:
            base, tiers = value, None
        if slot >= 0 and display[slot] is None:
            display[slot] = base
        lines.append((_bucket(unit), terms, _per_unit(base, unit.per), base, tiers, slot))
        info.append(_LineInfo(unit.usage_key, unit.price_key, unit.per))
    if not units:
        # The catalogue lists the model with an empty price set: free tiers (OpenRouter ':free'), models included in
        # a subscription (GitHub Copilot), free-of-charge models. Known and $0, unlike an unknown model.
        notes = (*notes, f"the catalogue lists {label} with no prices (free or included in a subscription): $0")
        return _Rates((), (None, None, None, None, None), False, source, None, (), notes)
    if not lines:
        # Priced, but only per second / character / page...: a token-only event would come out $0 by accident.
        carried = ", ".join(sorted(uncarried))
        return _unpriced_rates(f"{label} is priced only by units the usage event does not carry ({carried})", notes)
    if uncarried:
        notes = (*notes, f"priced units the usage event does not carry (counted as 0): {', '.join(sorted(uncarried))}")
    d = display
    table = {
        line_info.price_key: (line[3], tuple(sorted((start, mtok) for start, _unit, mtok in line[4])))
        for line, line_info in zip(lines, info, strict=True)
        if line[4] is not None
    }
    return _Rates(tuple(lines), (d[0], d[1], d[2], d[3], d[4]), tiered, source, None, tuple(info), notes, table)


def _allocate(total: Decimal, parts: list[Decimal], computed: Decimal) -> tuple[Decimal, ...]:
    """``total`` split over the five cost parts in proportion to the computed ``parts`` (which sum to ``computed``),
    each rounded half-even to 12 places, the rounding remainder on the largest part so they add up exactly; all in
    the last part (other) when nothing was computed.

    Catalogue prices are ``Decimal`` parsed from their text; a unit price per token is ``mtok.scaleb(-6)`` (exact),
    and products with an integer count are exact at the default 28-digit context for any realistic count. Results
    are quantized to 12 places (ClickHouse ``Decimal(38, 12)``) with ROUND_HALF_EVEN: the total is the correctly
    rounded exact total, each part is rounded the same way, and the difference (at most a few 1e-12) goes to the
    largest part."""
    if not computed:
        return (_ZERO12, _ZERO12, _ZERO12, _ZERO12, total)
    out = [(p * total / computed).quantize(_Q12, ROUND_HALF_EVEN) if p else _ZERO12 for p in parts]
    residual = total - sum(out, _ZERO12)
    if residual:
        largest = max(range(5), key=lambda i: abs(out[i]))
        out[largest] += residual
    return tuple(out)


#: The tag in which adapters name the token normalisations they applied (``;``-separated), shown by ``explain``.
NORMALISED_TAG: Final = "finops.normalised"


def unpriced_fix(provider: str, model: str, cost_basis: str = "(defaults)") -> str:
    """What fixes an unpriced ``provider``/``model``: the price-book line, or the cost_basis setting (for alerts and
    ``finops price``)."""
    return (
        f"add a price-book override (FINOPS_STREAM_PRICE_BOOK) - overrides: [{{provider: {provider}, model: {model}, "
        "effective_from: YYYY-MM-DD, prices: {input_mtok: ..., output_mtok: ...}}] -, or refresh the catalogue "
        "(finops prices update --from FILE|URL), or, when its events carry reported_cost, let the report price it "
        f"(FINOPS_STREAM_COST_BASIS provider:{provider}=reported_if_unpriced; now {cost_basis})"
    )


# --- catalogue identity ----------------------------------------------------------------------------------------------

_BUNDLED_VERSION: str | None = None


def catalogue_version(snapshot: data_snapshot.DataSnapshot | None = None) -> str:
    """``<genai-prices version>+data.<sha256 of its bundled data module, 12 hex>`` for the bundled catalogue, or
    ``<version>+snapshot.<fetch time>`` for a snapshot from genai-prices' auto-update. genai-prices has no data
    version of its own, so the hash identifies the price data exactly (two builds with the same data agree)."""
    global _BUNDLED_VERSION
    if snapshot is not None and snapshot.from_auto_update:
        return f"{genai_prices.__version__}+snapshot.{snapshot.timestamp.isoformat()}"
    if _BUNDLED_VERSION is None:
        spec = importlib.util.find_spec("genai_prices.data")
        digest = "unknown"
        if spec is not None and spec.origin:
            with open(spec.origin, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()[:12]
        _BUNDLED_VERSION = f"{genai_prices.__version__}+data.{digest}"
    return _BUNDLED_VERSION


# --- usage access ----------------------------------------------------------------------------------------------------


def _getter(usage: Any) -> Callable[[str], Any]:
    if isinstance(usage, dict):  # the hot path: decoded Avro records
        return usage.get
    if isinstance(usage, Mapping):
        return usage.get

    def get(name: str) -> Any:
        return getattr(usage, name, None)

    return get


def to_genai_usage(usage: Mapping[str, Any] | object) -> dict[str, int]:
    """Our canonical usage as genai-prices usage keys (for ``genai_prices.Usage(**...)``).

    Zero counts are omitted, except the overlaps the event cannot express (cached image tokens, audio cache writes,
    ...), given as an explicit 0: that is what the fast path assumes. ``requests`` is not included: genai-prices
    always counts one request per call.
    """
    get = _getter(usage)
    values = {name: int(get(name) or 0) for name in USAGE_FIELDS}
    out: dict[str, int] = {}
    for genai_key, terms in _GENAI_FROM_OURS.items():
        count = sum(k * values[field] for field, k in terms)
        if count:
            out[genai_key] = count
    for genai_key in _EXPLICIT_ZERO_KEYS:
        out[genai_key] = 0
    return out


def _utc(at: Any) -> datetime:
    if not isinstance(at, datetime):
        raise InvalidUsageError(f"occurred_at must be a datetime, got {type(at).__name__}: {at!r}")
    if at.tzinfo is UTC:  # the usual case, without a call: this runs for every priced event
        return at
    return as_utc(at)


# --- per-model entries -----------------------------------------------------------------------------------------------


class _ModelEntry:
    """Everything about one (provider, model) pair of events: its catalogue model, the price-book entries that can
    apply, the boundaries of its price periods and the compiled rates per period.

    The catalogue's conditional prices change on UTC dates (``StartDateConstraint``) and at UTC times of day
    (``TimeOfDateConstraint``, DeepSeek off-peak); between two consecutive boundaries the active price is constant,
    so the period key is ``(bisect(date boundaries, date), bisect(time boundaries, time), bisect(book boundaries,
    instant))``. A model with no conditions and no price-book entries has one static rate set and skips even that.
    """

    __slots__ = (
        "provider",
        "model",
        "info",
        "catalogue_provider",
        "date_bounds",
        "time_bounds",
        "book_bounds",
        "overrides",
        "discounts",
        "static",
        "by_period",
        "lookup_error",
        "via",
        "basis",
    )

    def __init__(
        self,
        provider: str,
        model: str,
        info: gp_types.ModelInfo | None,
        catalogue_provider: gp_types.Provider | None,
        overrides: tuple[OverrideEntry, ...],
        discounts: tuple[DiscountEntry, ...],
        lookup_error: str | None,
        via: str | None = None,
    ) -> None:
        self.basis: str | None = None  # the provider's cost_basis when no per-source setting can override it
        self.via = via  # the gateway whose own entry was missing, when priced at the upstream vendor's entry
        self.provider = provider
        self.model = model
        self.info = info
        self.catalogue_provider = catalogue_provider
        self.overrides = overrides
        self.discounts = discounts
        self.lookup_error = lookup_error
        dates: set[date] = set()
        times: set[time] = set()
        if info is not None and not isinstance(info.prices, gp_types.ModelPrice):
            for conditional in info.prices:
                constraint = conditional.constraint
                if isinstance(constraint, gp_types.StartDateConstraint):
                    dates.add(constraint.start_date)
                elif isinstance(constraint, gp_types.TimeOfDateConstraint):
                    for moment in (constraint.start_time, constraint.end_time):
                        times.add(_naive_utc_time(moment))
        self.date_bounds: tuple[date, ...] = tuple(sorted(dates))
        self.time_bounds: tuple[time, ...] = tuple(sorted(times))
        self.book_bounds: tuple[datetime, ...] = boundaries((*overrides, *discounts))
        self.by_period: dict[tuple[int, int, int], _Rates] = {}
        self.static: _Rates | None = None

    def period_key(self, at: datetime) -> tuple[int, int, int]:
        """Equal for two instants exactly when every date, time-of-day and price-book condition agrees."""
        return (
            bisect.bisect_right(self.date_bounds, at.date()) if self.date_bounds else 0,
            bisect.bisect_right(self.time_bounds, at.time()) if self.time_bounds else 0,
            bisect.bisect_right(self.book_bounds, at) if self.book_bounds else 0,
        )

    @property
    def is_static(self) -> bool:
        return not (self.date_bounds or self.time_bounds or self.book_bounds)


def _naive_utc_time(value: time) -> time:
    if value.tzinfo is None:
        return value
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).time()


class Pricer:
    """Prices usage events; build one per process (or per price-book reload) and call :meth:`price` per event.

    Not thread-safe for concurrent first use of a model (the caches are plain dicts; a race only builds the same
    rates twice). The catalogue snapshot is captured at construction: to pick up new genai-prices data, build a new
    Pricer.

    Gateways (DESIGN §4, step 3): when the event's provider has no catalogue entry for the model and the model is a
    ``vendor/model`` name (OpenRouter slugs, LiteLLM-style names), the call is priced at the upstream vendor's entry
    and ``price_source`` says so (``catalogue:google via openrouter``); a gateway's own entry always wins.

    Not modelled: genai-prices ``price_variants`` (batch processing, service tiers) need request context the usage
    event does not carry yet; calls are priced at standard rates.
    """

    def __init__(
        self,
        price_book: PriceBook | None = None,
        *,
        abs_tolerance: Decimal = Decimal("0.0001"),
        rel_tolerance: Decimal = Decimal("0.01"),
        snapshot: data_snapshot.DataSnapshot | None = None,
        max_cached_models: int = 50_000,
        cost_basis: CostBasisPolicy | None = None,
        catalogue_version_label: str | None = None,
    ) -> None:
        """``abs_tolerance`` (USD) and ``rel_tolerance`` (fraction of the computed cost): a reported cost is a
        mismatch only when it differs from ours by more than BOTH (small absolute noise on tiny calls and small
        relative noise on big calls are tolerated). ``max_cached_models`` bounds the (provider, model) cache against
        a flood of junk model names; when exceeded the cache is cleared and rebuilt on demand. ``cost_basis`` says
        which cost is authoritative per source / provider (default: :class:`CostBasisPolicy` defaults).
        ``catalogue_version_label`` names a catalogue loaded from a file (``finops prices update``)."""
        if abs_tolerance < 0 or rel_tolerance < 0:
            raise PricingError("tolerances must be non-negative")
        self._book = price_book
        self._abs_tol = abs_tolerance
        self._rel_tol = rel_tolerance
        self._snapshot = snapshot or data_snapshot.get_snapshot()
        self._max_models = max_cached_models
        self._entries: dict[tuple[Any, Any], _ModelEntry] = {}
        self.cost_basis = cost_basis or CostBasisPolicy()
        self._basis_cache: dict[tuple[Any, Any], str] = {}
        self.catalogue_version: str = catalogue_version_label or catalogue_version(self._snapshot)
        self.price_book_version: str | None = price_book.version if price_book is not None else None
        self._unpriced_reason_tail = (
            f"in genai-prices {self.catalogue_version} and price book {self.price_book_version or '(none)'}"
        )

    @property
    def price_book(self) -> PriceBook | None:
        """The organisation price book this Pricer overlays (None when none was loaded)."""
        return self._book

    # -- the hot path --

    def price(self, usage: Mapping[str, Any] | object) -> PriceResult:
        """Price one usage event (a Mapping, e.g. a decoded Avro dict, or an object with the usage attributes).

        Promises: an unknown model or provider gives ``pricing_status == "unpriced"`` with a reason, never $0
        priced. Blocks on nothing; the first event of a (provider, model, period) compiles its rates (once).

        Raises:
            InvalidUsageError: a priced part exceeds its whole, a count is not an integer, or ``occurred_at`` is
                not a datetime when the model's price depends on time.
        """
        get = usage.get if isinstance(usage, dict) else _getter(usage)
        key = (get("provider"), get("model"))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entry(key[0], key[1])
        rates = entry.static
        if rates is None:
            rates = self._rates_at(entry, _utc(get("occurred_at")))
        if rates.unpriced_reason is not None:
            basis = entry.basis or self._basis(get("source"), key[0])
            reported = get("reported_cost")
            if reported is not None and basis != "catalogue":
                return self._reported_only(reported, basis)
            return PriceResult(
                _ZERO12, _ZERO12, _ZERO12, _ZERO12, _ZERO12, _ZERO12, None, None, None, None, None,
                "unpriced", rates.unpriced_reason, self.catalogue_version, self.price_book_version, "none",
                None, False, None, basis,
            )  # fmt: skip

        costs = [_ZERO12, _ZERO12, _ZERO12, _ZERO12, _ZERO12]
        display = rates.display
        if rates.tiered:
            shown = list(display)
            total_input = get("input_tokens") or 0
        try:
            for bucket, terms, unit, mtok, tiers, slot in rates.lines:
                count = 0
                for field, k in terms:
                    value = get(field)
                    if value:
                        count += value if k == 1 else k * value
                if terms is _REQUESTS_TERMS and not count:
                    count = 1
                elif count < 0:
                    raise InvalidUsageError(self._negative_leaf_message(terms, get))
                if tiers is not None:
                    for start, tier_unit, tier_mtok in tiers:
                        if total_input > start:
                            unit = tier_unit
                            mtok = tier_mtok
                            break
                    if slot >= 0:
                        shown[slot] = mtok
                if count:
                    # Zero counts add nothing and leave the part the identical 12-place zero (no quantize needed).
                    costs[bucket] += unit * count
        except TypeError as err:
            raise InvalidUsageError(f"usage counts must be integers: {err}") from err
        if rates.tiered:
            display = (shown[0], shown[1], shown[2], shown[3], shown[4])

        total = (costs[0] + costs[1] + costs[2] + costs[3] + costs[4]).quantize(_Q12, ROUND_HALF_EVEN)
        # Untouched parts are already the 12-place zero; skip their quantize.
        parts = [c if c is _ZERO12 else c.quantize(_Q12, ROUND_HALF_EVEN) for c in costs]
        residual = total - (parts[0] + parts[1] + parts[2] + parts[3] + parts[4])
        if residual:
            # Rounded parts can miss the rounded total by a few 1e-12; the largest part absorbs it (least relative
            # distortion), so the parts add up exactly.
            largest = max(range(5), key=lambda i: abs(parts[i]))
            parts[largest] += residual

        basis = entry.basis or self._basis(get("source"), key[0])
        reported = get("reported_cost")
        if reported is None:
            # tuple.__new__ skips the NamedTuple's generated __new__; same fields, same order.
            return _tuple_new(
                PriceResult,
                (
                    total, parts[0], parts[1], parts[2], parts[3], parts[4], *display,
                    "priced", None, self.catalogue_version, self.price_book_version, rates.source, None, False,
                    total, basis,
                ),
            )  # fmt: skip
        if not isinstance(reported, Decimal):
            reported = self._reported_decimal(reported)
        delta = (reported - total).quantize(_Q12, ROUND_HALF_EVEN)
        off = abs(delta)
        mismatch = off > self._abs_tol and off > self._rel_tol * total
        if basis == "reported" and delta:
            authoritative = reported.quantize(_Q12, ROUND_HALF_EVEN)
            return _tuple_new(
                PriceResult,
                (
                    authoritative, *_allocate(authoritative, parts, total), *display,
                    "priced", None, self.catalogue_version, self.price_book_version, "reported", delta, mismatch,
                    total, basis,
                ),
            )  # fmt: skip
        return _tuple_new(
            PriceResult,
            (
                total, parts[0], parts[1], parts[2], parts[3], parts[4], *display,
                "priced", None, self.catalogue_version, self.price_book_version,
                "reported" if basis == "reported" else rates.source, delta, mismatch, total, basis,
            ),
        )  # fmt: skip

    def _basis(self, source: Any, provider: Any) -> str:
        cache_key = (source, provider)
        basis = self._basis_cache.get(cache_key)
        if basis is None:
            if len(self._basis_cache) >= self._max_models:
                self._basis_cache.clear()
            basis = self._basis_cache[cache_key] = self.cost_basis.basis_for(
                None if source is None else str(source), None if provider is None else str(provider)
            )
        return basis

    def _reported_only(self, reported: Any, basis: str) -> PriceResult:
        """The report answers for a call the price book and catalogue cannot price (DESIGN §4, step 4)."""
        if not isinstance(reported, Decimal):
            reported = self._reported_decimal(reported)
        cost = reported.quantize(_Q12, ROUND_HALF_EVEN)
        return PriceResult(
            cost, _ZERO12, _ZERO12, _ZERO12, _ZERO12, cost, None, None, None, None, None,
            "priced", None, self.catalogue_version, self.price_book_version, "reported", None, False, None, basis,
        )  # fmt: skip

    def price_tiers(
        self, usage: Mapping[str, Any] | object
    ) -> dict[str, tuple[Decimal, tuple[tuple[int, Decimal], ...]]]:
        """The tiered prices that apply to ``usage``'s (provider, model, instant): price key -> (base per MTok,
        ((start, price per MTok), ...) ascending), from the same compiled rates :meth:`price` uses (price book or
        catalogue); empty when nothing is tiered. A cold path (drift solving), cached with the rates.

        Raises:
            InvalidUsageError: ``occurred_at`` is not a datetime when the model's price depends on time.
        """
        get = _getter(usage)
        key = (get("provider"), get("model"))
        entry = self._entries.get(key) or self._entry(key[0], key[1])
        rates = entry.static or self._rates_at(entry, _utc(get("occurred_at")))
        return dict(rates.tier_table)

    # -- explanation --

    def explain(self, usage: Mapping[str, Any] | object) -> str:
        """The arithmetic of :meth:`price` for ``usage``, line by line (count x price / per = USD), or why it is
        unpriced. Slow; for people (CLI, alerts, audits), not for the hot path.

        Raises:
            InvalidUsageError: as :meth:`price`.
        """
        get = _getter(usage)
        result = self.price(usage)
        provider, model = get("provider"), get("model")
        entry = self._entries.get((provider, model)) or self._entry(provider, model)
        at = get("occurred_at")
        rates = entry.static or self._rates_at(entry, _utc(at))
        out = [f"provider {provider!r} model {model!r} at {at}"]
        if entry.info is not None and entry.catalogue_provider is not None:
            route = f" via {entry.via} (gateway)" if entry.via else ""
            out.append(
                f"catalogue: {entry.catalogue_provider.id}/{entry.info.id}{route} "
                f"(genai-prices {self.catalogue_version})"
            )
        else:
            out.append(f"catalogue: no match (genai-prices {self.catalogue_version}): {entry.lookup_error}")
        out.append(
            f"resolution: price book {self.price_book_version or '(none)'} -> catalogue {provider!r} "
            f"-> upstream vendor (gateways) -> reported cost (cost_basis {result.cost_basis}) -> unpriced; "
            f"answered by: {result.price_source}"
        )
        out.extend(f"note: {note}" for note in rates.notes)
        tags = get("tags")
        if isinstance(tags, Mapping) and tags.get(NORMALISED_TAG):
            out.extend(f"normalised: {item}" for item in str(tags[NORMALISED_TAG]).split(";") if item)
        if rates.unpriced_reason is not None and result.pricing_status == "priced":
            out.append(f"catalogue and price book: {rates.unpriced_reason}")
            out.append(
                f"total cost_usd = ${result.cost_usd:f} = reported_cost (cost_basis {result.cost_basis}: the report is "
                "the best evidence for a call the catalogue cannot price; its parts are not known, so all in other)"
            )
            return "\n".join(out)
        if result.pricing_status == "unpriced":
            out.append(f"UNPRICED: {result.unpriced_reason}")
            out.append("cost_usd = 0 (flagged unpriced, not free)")
            out.append(f"fix: {unpriced_fix(str(provider), str(model), self.cost_basis.describe())}")
            return "\n".join(out)
        total_input = get("input_tokens") or 0
        for (bucket, terms, unit, mtok, tiers, _slot), line_info in zip(rates.lines, rates.info, strict=True):
            count = sum((get(field) or 0) * k for field, k in terms)
            if terms is _REQUESTS_TERMS and not count:
                count = 1
            tier_note = ""
            if tiers is not None:
                for start, tier_unit, tier_mtok in tiers:
                    if total_input > start:
                        unit, mtok, tier_note = tier_unit, tier_mtok, f" (tier: input_tokens {total_input} > {start})"
                        break
                else:
                    tier_note = " (base tier)"
            formula = _formula(terms)
            out.append(
                f"{_BUCKET_NAMES[bucket]:<11} {line_info.usage_key}: {count} [{formula}] x ${mtok} / {line_info.per:,}"
                f" = ${unit * count:f}{tier_note}"
            )
        out.append(
            f"parts (12 dp): input {result.cost_input_usd:f} + output {result.cost_output_usd:f} + cache read "
            f"{result.cost_cache_read_usd:f} + cache write {result.cost_cache_write_usd:f} + other "
            f"{result.cost_other_usd:f}"
        )
        if result.price_source == "reported":
            out.append(f"computed (price book / catalogue) = ${result.computed_cost_usd:f}")
            out.append(
                f"total cost_usd = ${result.cost_usd:f} = reported_cost (cost_basis {result.cost_basis}: "
                "the report is the bill; parts scaled to it)"
            )
        else:
            out.append(f"total cost_usd = ${result.cost_usd:f}")
        if result.cost_delta_usd is not None:
            verdict = "MISMATCH" if result.cost_mismatch else "within tolerance"
            out.append(
                f"reported ${get('reported_cost')} - computed ${result.computed_cost_usd:f} "
                f"= ${result.cost_delta_usd:f} ({verdict}: "
                f"tolerance ${self._abs_tol} or {self._rel_tol * 100}%)"
            )
        return "\n".join(out)

    # -- cold paths --

    def _entry(self, provider: Any, model: Any) -> _ModelEntry:
        if len(self._entries) >= self._max_models:
            self._entries.clear()
        provider_s = str(provider) if provider is not None else ""
        model_s = str(model) if model is not None else ""
        info: gp_types.ModelInfo | None = None
        catalogue_provider: gp_types.Provider | None = None
        lookup_error: str | None = None
        if not model_s.strip():
            lookup_error = "no model name"
        else:
            try:
                catalogue_provider, info = self._snapshot.find_provider_model(
                    model_s, None, provider_s.strip() or None, None
                )
            except LookupError as err:
                lookup_error = str(err)
        via: str | None = None
        if (
            catalogue_provider is not None
            and provider_s.strip().lower() in GATEWAY_PROVIDERS
            and catalogue_provider.id != provider_s.strip().lower()
        ):
            via = provider_s.strip().lower()  # genai-prices resolved a LiteLLM-style name to its vendor itself
        if info is None and lookup_error is not None and "/" in model_s:
            routed = self._upstream(provider_s, model_s)
            if routed is not None:
                catalogue_provider, info = routed
                via = provider_s.strip().lower()
                lookup_error = f"{lookup_error}; priced at the upstream vendor's entry"
        overrides: tuple[OverrideEntry, ...] = ()
        discounts: tuple[DiscountEntry, ...] = ()
        if self._book is not None:
            providers = {provider_s}
            models = {model_s}
            if catalogue_provider is not None and info is not None:
                providers.add(catalogue_provider.id)
                models.add(info.id)
                if via is not None:
                    models.add(model_s.partition("/")[2])
            overrides = self._book.overrides_for(providers, models)
            discounts = self._book.discounts_for(providers, models)
        entry = _ModelEntry(provider_s, model_s, info, catalogue_provider, overrides, discounts, lookup_error, via)
        if not self.cost_basis.by_source:
            entry.basis = self.cost_basis.basis_for(None, provider_s)
        if entry.is_static:
            # Any instant gives the same rates; the epoch is as good as any.
            entry.static = self._build_rates(entry, datetime(1970, 1, 1, tzinfo=UTC))
        self._entries[(provider, model)] = entry
        return entry

    def _upstream(self, provider: str, model: str) -> tuple[gp_types.Provider, gp_types.ModelInfo] | None:
        """The upstream vendor's catalogue entry for a gateway's ``vendor/model`` name, or None.

        Only for a known gateway (:data:`GATEWAY_PROVIDERS`) or a provider the catalogue does not know: a known
        direct provider with a slash in a model name is not a route (e.g. Bedrock ARNs, fine-tune paths)."""
        name = provider.strip().lower()
        if name not in GATEWAY_PROVIDERS:
            try:
                self._snapshot.find_provider(None, name or None, None)
                return None  # a direct provider the catalogue knows: not a gateway
            except LookupError:
                pass
        vendor, _, rest = model.partition("/")
        vendor = vendor.strip().lower()
        vendor = _VENDOR_ALIASES.get(vendor, vendor)
        if not vendor or not rest.strip() or vendor == name:
            return None
        try:
            return self._snapshot.find_provider_model(rest, None, vendor, None)
        except LookupError:
            return None

    def _rates_at(self, entry: _ModelEntry, at: datetime) -> _Rates:
        key = entry.period_key(at)
        rates = entry.by_period.get(key)
        if rates is None:
            rates = entry.by_period[key] = self._build_rates(entry, at)
        return rates

    def _build_rates(self, entry: _ModelEntry, at: datetime) -> _Rates:
        """Compile the rates active at ``at`` (any instant of the period gives the same result)."""
        notes: list[str] = []
        override = pick_override(entry.overrides, at) if entry.overrides else None
        if override is not None:
            until = override.effective_to.isoformat() if override.effective_to else "open-ended"
            notes.append(
                f"override {override.provider}/{override.model} from price book {self.price_book_version} "
                f"({override.effective_from.isoformat()} .. {until}){': ' + override.note if override.note else ''}"
            )
            return _compile(override.prices.as_genai(), "price_book", tuple(notes), f"{entry.provider}/{entry.model}")
        if entry.info is None or entry.catalogue_provider is None:
            return _unpriced_rates(
                f"unknown model {entry.model!r} for provider {entry.provider!r} {self._unpriced_reason_tail}"
                + (" (no override active at this time)" if entry.overrides else ""),
                (f"catalogue lookup: {entry.lookup_error}",),
            )
        model_price = entry.info.get_prices(at)
        price_map: dict[str, Any] = {
            key: value for key, value in model_price.__dict__.items() if not key.startswith("_") and value is not None
        }
        label = f"{entry.catalogue_provider.id}/{entry.info.id}"
        if (
            "cache_write_mtok" in price_map
            and "cache_write_1h_mtok" not in price_map
            and "input_mtok" in price_map
            and entry.catalogue_provider.id in _ONE_HOUR_CONVENTION_PROVIDERS
            and "claude" in entry.info.id
        ):
            price_map["cache_write_1h_mtok"] = _scale(price_map["input_mtok"], _TWO)
            notes.append("1-hour cache-write price derived as 2 x input price (Anthropic's published rule)")
        source: PriceSource = "catalogue"
        if entry.via is not None:
            source = f"catalogue:{entry.catalogue_provider.id} via {entry.via}"
            notes.append(
                f"{entry.via} has no catalogue entry for {entry.model!r}: priced at the upstream vendor's entry "
                f"{label} (genai-prices {self.catalogue_version})"
            )
        discount = pick_discount(entry.discounts, at) if entry.discounts else None
        if discount is not None:
            factor = discount.multiplier
            price_map = {key: _scale(value, factor) for key, value in price_map.items()}
            scope = f"{discount.provider}/{discount.model}" if discount.model else f"{discount.provider} (all models)"
            notes.append(
                f"discount {discount.percent_off}% off {scope} from price book {self.price_book_version} "
                f"(catalogue prices x {factor}){': ' + discount.note if discount.note else ''}"
            )
            source = "price_book"
        return _compile(price_map, source, tuple(notes), label)

    @staticmethod
    def _negative_leaf_message(terms: tuple[tuple[str, int], ...], get: Callable[[str], Any]) -> str:
        whole = [f"{field}={get(field) or 0}" for field, k in terms if k > 0]
        parts = [f"{field}={get(field) or 0}" for field, k in terms if k < 0]
        return (
            f"usage parts exceed their whole: {' + '.join(whole)} minus {' + '.join(parts) or 'nothing'} is negative "
            "(token fields are canonical: cache, audio and image counts are parts of input_tokens, reasoning and "
            "audio output parts of output_tokens)"
        )

    @staticmethod
    def _reported_decimal(reported: Any) -> Decimal:
        """``reported_cost`` as Decimal (Avro gives Decimal already; this is for ints, strings and stray floats)."""
        if isinstance(reported, bool):
            raise InvalidUsageError(f"reported_cost must be a number, got {reported!r}")
        if isinstance(reported, float):
            # A float cost has already lost exactness; take its shortest repr rather than its binary expansion.
            return Decimal(repr(reported))
        try:
            return Decimal(reported)
        except (ArithmeticError, TypeError, ValueError) as err:
            raise InvalidUsageError(f"reported_cost is not a number: {reported!r}") from err
