"""The organisation price book: effective-dated overrides and discounts laid over the genai-prices catalogue.

Role: a YAML file (``infra/pricebook.example.yaml`` shows every option, commented) with a ``version`` stamped on
every priced event, ``overrides`` (exact unit prices for one provider + model, optionally tiered by prompt size:
:class:`OverridePrices`, :class:`TieredPrice`) and ``discounts`` (percent off the catalogue, per provider or model).

Guarantee: an active override beats an active discount, which beats the plain catalogue, and entries of one kind
and scope never overlap in time, so precedence never depends on file order (:class:`PriceBook`); numbers are read
as ``Decimal`` from their text, never through float; every error names the file, the line and the field. See
DESIGN §4 and the README, "Pricing".
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from genai_prices.types import Tier, TieredPrices
from genai_prices.units import _get_registry  # private, pinned by genai-prices>=0.2.3,<0.3
from genai_prices.validation import validate_model_price
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from finops.clock import as_utc

try:
    from schemas.errors import FinopsError
except ImportError:  # pragma: no cover - only while schemas/errors.py is being written

    class FinopsError(Exception):  # type: ignore[no-redef]
        """Local stand-in for schemas.errors.FinopsError."""


__all__ = [
    "DiscountEntry",
    "OVERRIDE_PRICE_KEYS",
    "OverrideEntry",
    "OverridePrices",
    "PriceTier",
    "TieredPrice",
    "PriceBook",
    "PriceBookError",
    "PriceBookProblem",
    "load_price_book",
    "parse_price_book",
]

#: Price keys an override may set: the genai-prices price keys of the units our usage event carries
#: (USD per million tokens, or per thousand calls for ``*_kcount``).
OVERRIDE_PRICE_KEYS: tuple[str, ...] = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "output_reasoning_mtok",
    "input_audio_mtok",
    "output_audio_mtok",
    "cache_audio_read_mtok",
    "input_image_mtok",
    "web_searches_kcount",
    "requests_kcount",
)


class PriceBookProblem(BaseModel):
    """One problem in a price book: where (line, dotted field path) and what."""

    model_config = ConfigDict(frozen=True)

    line: int | None
    field: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.field or '<document>'}: {self.message}"


class PriceBookError(FinopsError):
    """A price book could not be read or is invalid.

    ``problems`` lists every problem found (not only the first), each with its line and field; the message renders
    them as ``file:line: field: message`` so an editor can jump to them.
    """

    def __init__(self, source: str, problems: Iterable[PriceBookProblem]) -> None:
        self.source = source
        self.problems: list[PriceBookProblem] = list(problems)
        lines = [f"price book {source} is invalid ({len(self.problems)} problem(s)):"]
        lines.extend(f"  {problem.render(source)}" for problem in self.problems)
        super().__init__("\n".join(lines))


def _to_utc(value: date | datetime) -> datetime:
    """A date means UTC midnight; a naive datetime is UTC; an aware one is converted."""
    if isinstance(value, datetime):
        return as_utc(value)
    return datetime.combine(value, time(0), tzinfo=UTC)


def _name(value: str) -> str:
    return value.strip().lower()


class _Entry(BaseModel):
    """Fields shared by overrides and discounts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1)
    effective_from: datetime
    effective_to: datetime | None = None
    note: str | None = None

    @field_validator("provider")
    @classmethod
    def _normalise_provider(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return _name(value)

    @field_validator("effective_from", "effective_to", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, (date, datetime)):
            return _to_utc(value)
        return value

    @field_validator("effective_from", "effective_to")
    @classmethod
    def _utc_after(cls, value: datetime | None) -> datetime | None:
        # Strings parsed by pydantic may be naive; pin them to UTC too.
        return None if value is None else _to_utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> _Entry:
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError("effective_to must be after effective_from (effective_to is exclusive)")
        return self

    def active_at(self, at: datetime) -> bool:
        """True when ``effective_from <= at < effective_to`` (``at`` must be timezone-aware)."""
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    def overlaps(self, other: _Entry) -> bool:
        far = datetime.max.replace(tzinfo=UTC)
        return self.effective_from < (other.effective_to or far) and other.effective_from < (self.effective_to or far)


def _decimal_price(value: Any) -> Any:
    # Only reachable from Python callers (our YAML loader yields Decimal): a float is already inexact.
    if isinstance(value, float):
        raise ValueError("give prices as strings or Decimal, not float")
    return value


def _finite(value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0:
        raise ValueError("must be a finite, non-negative number")
    return value


#: A unit price as the price book takes it: exact (no float), finite and non-negative.
ExactPrice = Annotated[Decimal, BeforeValidator(_decimal_price), AfterValidator(_finite)]


class PriceTier(BaseModel):
    """One tier of a :class:`TieredPrice`: ``price`` applies to every token of the unit when the call's
    ``input_tokens`` is strictly greater than ``start``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int
    price: ExactPrice

    @field_validator("start", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number of input tokens (the threshold the prompt must exceed)")
        if value < 0:
            raise ValueError("must be >= 0")
        return value


class TieredPrice(BaseModel):
    """A price tiered by prompt size, genai-prices' ``TieredPrices`` with the same "cliff" semantics: ``base``
    until the first tier; above a tier's ``start`` input tokens, that tier's price for ALL tokens of the unit.

    ``input_mtok: {base: 1.25, tiers: [{start: 200000, price: 2.5}]}`` means a call whose ``input_tokens`` (ALL
    input, cache reads and writes included) is strictly greater than ``start`` pays ``price`` for ALL its tokens of
    that unit (genai-prices ``calc_unit_price``, not a marginal rate for the tokens above the threshold); with
    several tiers the highest ``start`` exceeded wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: ExactPrice
    tiers: tuple[PriceTier, ...]

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        if not tiers:
            raise ValueError("needs at least one tier {start, price} (or give a flat price)")
        starts = [tier.start for tier in tiers]
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ValueError(f"tier starts must be strictly ascending, got {starts}")
        return tiers

    def as_genai(self) -> Any:
        """As ``genai_prices.types.TieredPrices`` (what the Pricer compiles)."""
        return TieredPrices(base=self.base, tiers=[Tier(start=t.start, price=t.price) for t in self.tiers])


def _price_kind(value: Any) -> str:
    return _TIERED_TAG if isinstance(value, (Mapping, TieredPrice)) else _FLAT_TAG


# A mapping is a tiered price, anything else a flat one: one branch validates, so an error is about that branch only.
# The tags appear in pydantic's error locations; parse_price_book drops them so errors name the YAML path.
_TIERED_TAG, _FLAT_TAG = "<tiered>", "<flat>"
Price = Annotated[
    Annotated[Decimal, Tag(_FLAT_TAG)] | Annotated[TieredPrice, Tag(_TIERED_TAG)], Discriminator(_price_kind)
]


class OverridePrices(BaseModel):
    """Unit prices of an override, USD per million tokens (``*_mtok``) or per thousand calls (``*_kcount``).

    Keys follow genai-prices, so the same decomposition rules apply: a part without its own price is charged with its
    parent (cache reads without ``cache_read_mtok`` at ``input_mtok``; 1-hour cache writes without
    ``cache_write_1h_mtok`` at ``cache_write_mtok``). Any price may be a :class:`TieredPrice` (``{base, tiers}``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_mtok: Price | None = None
    output_mtok: Price | None = None
    cache_read_mtok: Price | None = None
    cache_write_mtok: Price | None = None
    cache_write_1h_mtok: Price | None = None
    output_reasoning_mtok: Price | None = None
    input_audio_mtok: Price | None = None
    output_audio_mtok: Price | None = None
    cache_audio_read_mtok: Price | None = None
    input_image_mtok: Price | None = None
    web_searches_kcount: Price | None = None
    requests_kcount: Price | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        return _decimal_price(value)

    @field_validator("*")
    @classmethod
    def _finite_non_negative(cls, value: Price | None) -> Price | None:
        return _finite(value) if isinstance(value, Decimal) else value

    @model_validator(mode="after")
    def _coherent(self) -> OverridePrices:
        given = self.as_dict()
        if not given:
            raise ValueError("an override needs at least one price")
        # genai-prices' own coverage rules (a part's parent must be priced; overlapping parts need their join),
        # so the decomposition in pricing.py is well defined for every override.
        try:
            validate_model_price(set(given), _get_registry())
        except ValueError as err:
            raise ValueError(f"incoherent price set: {err}") from None
        return self

    def as_dict(self) -> dict[str, Price]:
        """The prices that are set, by genai-prices price key (a Decimal, or a :class:`TieredPrice`)."""
        return {key: value for key, value in self.__dict__.items() if value is not None}

    def as_genai(self) -> dict[str, Any]:
        """:meth:`as_dict` with tiered prices as genai-prices ``TieredPrices`` (what the Pricer compiles)."""
        return {key: value.as_genai() if isinstance(value, TieredPrice) else value
                for key, value in self.as_dict().items()}  # fmt: skip


class OverrideEntry(_Entry):
    """Exact unit prices for one provider + model during a period."""

    kind: Literal["override"] = "override"
    model: str = Field(min_length=1)
    prices: OverridePrices

    @field_validator("model")
    @classmethod
    def _normalise_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return _name(value)


class DiscountEntry(_Entry):
    """Percent off every catalogue unit price, for a provider (``model`` omitted) or one provider + model."""

    kind: Literal["discount"] = "discount"
    model: str | None = None
    percent_off: Decimal

    @field_validator("model")
    @classmethod
    def _normalise_model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank (omit it for a provider-wide discount)")
        return None if value is None else _name(value)

    @field_validator("percent_off", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError("give percent_off as a string, int or Decimal, not float")
        return value

    @field_validator("percent_off")
    @classmethod
    def _percent(cls, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0 or value > 100:
            raise ValueError("must be > 0 and <= 100")
        return value

    @property
    def multiplier(self) -> Decimal:
        """``(100 - percent_off) / 100``, exact (a shift of the decimal point, no division rounding)."""
        return (Decimal(100) - self.percent_off).scaleb(-2)


class PriceBook(BaseModel):
    """A validated organisation price book. Immutable; build it with :func:`load_price_book`.

    An override replaces the catalogue's whole price set for its model: a price key it leaves out has no separate
    price (without ``cache_read_mtok`` cache reads are charged at ``input_mtok``, the genai-prices convention).
    Precedence for one event: an active override beats an active discount, which beats the plain catalogue; a
    provider + model discount beats a provider-wide one. "Active" means ``effective_from <= occurred_at <
    effective_to`` (``effective_to`` exclusive and optional; dates are UTC midnight, datetimes converted to UTC). Two
    entries of the same kind and scope may not overlap in time. Provider and model names match case-insensitively
    the event's own strings or the catalogue's ids for them (``claude-sonnet-4-0`` matches an event for
    ``claude-sonnet-4-20250514`` that the catalogue resolves to it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    description: str | None = None
    overrides: tuple[OverrideEntry, ...] = ()
    discounts: tuple[DiscountEntry, ...] = ()
    source: str | None = Field(default=None, exclude=True)

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        # YAML reads `version: 2025.07` as a number; demand quotes rather than guess its spelling back.
        if not isinstance(value, str):
            raise ValueError("must be a string (quote it in YAML)")
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    def overrides_for(self, providers: Iterable[str], models: Iterable[str]) -> tuple[OverrideEntry, ...]:
        """Overrides whose provider is one of ``providers`` and model one of ``models`` (names compared lower-case)."""
        provider_set = {_name(p) for p in providers}
        model_set = {_name(m) for m in models}
        return tuple(o for o in self.overrides if o.provider in provider_set and o.model in model_set)

    def discounts_for(self, providers: Iterable[str], models: Iterable[str]) -> tuple[DiscountEntry, ...]:
        """Discounts for one of ``providers``, provider-wide or naming one of ``models``."""
        provider_set = {_name(p) for p in providers}
        model_set = {_name(m) for m in models}
        return tuple(
            d for d in self.discounts if d.provider in provider_set and (d.model is None or d.model in model_set)
        )


def pick_override(entries: Iterable[OverrideEntry], at: datetime) -> OverrideEntry | None:
    """The override active at ``at`` (entries of one scope never overlap, so at most one per scope is active;
    among scopes, the latest ``effective_from`` wins)."""
    active = [e for e in entries if e.active_at(at)]
    return max(active, key=lambda e: e.effective_from) if active else None


def pick_discount(entries: Iterable[DiscountEntry], at: datetime) -> DiscountEntry | None:
    """The discount active at ``at``: provider + model beats provider-wide, then the latest ``effective_from``."""
    active = [e for e in entries if e.active_at(at)]
    return max(active, key=lambda e: (e.model is not None, e.effective_from)) if active else None


def boundaries(entries: Iterable[_Entry]) -> tuple[datetime, ...]:
    """Sorted instants where the active set of ``entries`` can change; ``bisect`` over them gives a period index."""
    points: set[datetime] = set()
    for entry in entries:
        points.add(entry.effective_from)
        if entry.effective_to is not None:
            points.add(entry.effective_to)
    return tuple(sorted(points))


def period_index(bounds: tuple[datetime, ...], at: datetime) -> int:
    """Index of the period of ``at`` between ``bounds``; equal for instants with the same active entries."""
    return bisect.bisect_right(bounds, at)


# --- YAML reading with line numbers --------------------------------------------------------------------------------


class _DecimalSafeLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML floats as Decimal from their source text (never via binary float)."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    lowered = text.lower()
    if lowered in (".inf", "+.inf", "-.inf", ".nan"):
        return Decimal("NaN") if lowered == ".nan" else Decimal(lowered.replace(".inf", "Infinity"))
    try:
        return Decimal(text)
    except InvalidOperation as err:  # pragma: no cover - the resolver only sends float-shaped text
        raise yaml.constructor.ConstructorError(None, None, f"not a number: {text!r}", node.start_mark) from err


_DecimalSafeLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)

_Path = tuple[str | int, ...]


def _compose(text: str, source: str) -> tuple[Any, dict[_Path, int]]:
    """Parse YAML into plain data plus the 1-based line of every mapping key and sequence item, by path."""
    loader = _DecimalSafeLoader(text)
    lines: dict[_Path, int] = {}
    try:
        root = loader.get_single_node()
        if root is None:
            return None, lines

        def build(node: yaml.Node, path: _Path) -> Any:
            if isinstance(node, yaml.MappingNode):
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node, deep=True)
                    child = (*path, key)
                    if key in out:
                        raise PriceBookError(
                            source,
                            [
                                PriceBookProblem(
                                    line=key_node.start_mark.line + 1,
                                    field=_dotted(child),
                                    message=f"duplicate key (first at line {lines[child]})",
                                )
                            ],
                        )
                    lines[child] = key_node.start_mark.line + 1
                    out[key] = build(value_node, child)
                return out
            if isinstance(node, yaml.SequenceNode):
                items: list[Any] = []
                for index, item in enumerate(node.value):
                    lines[(*path, index)] = item.start_mark.line + 1
                    items.append(build(item, (*path, index)))
                return items
            return loader.construct_object(node, deep=True)

        lines[()] = root.start_mark.line + 1
        return build(root, ()), lines
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(part for part in (err.context, err.problem) if part) or str(err)
        raise PriceBookError(source, [PriceBookProblem(line=line, field="", message=f"bad YAML: {message}")]) from err
    except yaml.YAMLError as err:
        raise PriceBookError(source, [PriceBookProblem(line=None, field="", message=f"bad YAML: {err}")]) from err
    finally:
        loader.dispose()


def _dotted(path: Iterable[str | int]) -> str:
    return ".".join(str(part) for part in path)


def _line_for(lines: Mapping[_Path, int], loc: tuple[str | int, ...]) -> int | None:
    """The line of the longest prefix of ``loc`` we know (a missing field points at its parent entry)."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None


def _check_overlaps(book: PriceBook, lines: Mapping[_Path, int]) -> Iterator[PriceBookProblem]:
    groups: list[tuple[str, tuple[_Entry, ...]]] = [("overrides", book.overrides), ("discounts", book.discounts)]
    for section, entries in groups:
        for j, later in enumerate(entries):
            for i in range(j):
                earlier = entries[i]
                same_scope = earlier.provider == later.provider and getattr(earlier, "model", None) == getattr(
                    later, "model", None
                )
                if same_scope and earlier.overlaps(later):
                    yield PriceBookProblem(
                        line=lines.get((section, j)),
                        field=f"{section}.{j}",
                        message=(
                            f"overlaps {section}.{i} (line {lines.get((section, i))}) for the same provider/model; "
                            "end one with effective_to before the other's effective_from"
                        ),
                    )


def parse_price_book(text: str, source: str = "<price book>") -> PriceBook:
    """Validate price-book YAML ``text``; ``source`` names it in errors.

    Raises:
        PriceBookError: bad YAML, a wrong or missing field, an unknown key, an incoherent price set, or overlapping
            entries; every problem found is listed with its line and field.
    """
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise PriceBookError(
            source, [PriceBookProblem(line=lines.get(()), field="", message="must be a mapping with a 'version' key")]
        )
    try:
        book = PriceBook.model_validate({**data, "source": source})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = tuple(part for part in error["loc"]
                        if isinstance(part, (str, int)) and part not in (_TIERED_TAG, _FLAT_TAG))  # fmt: skip
            message = error["msg"].removeprefix("Value error, ")
            problems.append(PriceBookProblem(line=_line_for(lines, loc), field=_dotted(loc), message=message))
        problems.sort(key=lambda problem: problem.line or 0)  # file order, as an editor shows them
        raise PriceBookError(source, problems) from err
    overlaps = list(_check_overlaps(book, lines))
    if overlaps:
        raise PriceBookError(source, overlaps)
    return book


def load_price_book(path: str | Path) -> PriceBook:
    """Read and validate the price book at ``path``.

    Raises:
        PriceBookError: the file cannot be read (the message names it) or is invalid (see :func:`parse_price_book`).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PriceBookError(source, [PriceBookProblem(line=None, field="", message=f"cannot read: {err}")]) from err
    return parse_price_book(text, source)
