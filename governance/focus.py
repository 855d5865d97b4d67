"""FOCUS 1.2 export (FinOps Open Cost and Usage Specification) of a period's AI charges, as CSV.

Role: one FOCUS row is one charge: a UTC day x provider x model x team / project / agent x task type x token type,
separately for originals and re-rating corrections, so a month of a large fleet stays a size a FinOps tool
ingests while every chargeback dimension survives (:func:`build_focus_rows`; how our numbers map onto FOCUS's
columns is on :func:`compute_focus_rows`).

Guarantee: ``sum(EffectiveCost)`` over the export equals the ledger total of the period, corrections included;
``InvoiceId`` is never null; unpriced calls are exported with zero costs and ``x_PricingStatus = 'unpriced'``;
tests check the output with the FinOps Foundation's FOCUS validator. See the README, "Reports, recommendations and
re-rating".
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from finops.clock import as_utc
from finops.pricing.engine import Pricer
from governance.period import Period, month_period
from governance.store import qualified

__all__ = [
    "EXPORT_COLUMNS",
    "FOCUS_COLUMNS",
    "FocusColumn",
    "build_focus_rows",
    "compute_focus_rows",
    "format_value",
    "invoice_id",
    "render_focus_csv",
]

FeatureLevel = Literal["Mandatory", "Recommended", "Conditional"]
DataType = Literal["String", "Decimal", "Date/Time", "JSON"]


@dataclass(frozen=True)
class FocusColumn:
    """One column of the FOCUS 1.2 specification: its id, feature level, data type and whether nulls are allowed
    (the "Content constraints" table of the column's page)."""

    name: str
    level: FeatureLevel
    data_type: DataType
    allows_nulls: bool


def _c(name: str, level: FeatureLevel, data_type: DataType, nulls: bool) -> FocusColumn:
    return FocusColumn(name, level, data_type, nulls)


#: The FOCUS 1.2 column library (57 columns), transcribed from the specification's column pages.
FOCUS_COLUMNS: tuple[FocusColumn, ...] = (
    _c("AvailabilityZone", "Recommended", "String", True),
    _c("BilledCost", "Mandatory", "Decimal", False),
    _c("BillingAccountId", "Mandatory", "String", False),
    _c("BillingAccountName", "Mandatory", "String", True),
    _c("BillingAccountType", "Conditional", "String", False),
    _c("BillingCurrency", "Mandatory", "String", False),
    _c("BillingPeriodEnd", "Mandatory", "Date/Time", False),
    _c("BillingPeriodStart", "Mandatory", "Date/Time", False),
    _c("CapacityReservationId", "Conditional", "String", True),
    _c("CapacityReservationStatus", "Conditional", "String", True),
    _c("ChargeCategory", "Mandatory", "String", False),
    _c("ChargeClass", "Mandatory", "String", True),
    _c("ChargeDescription", "Mandatory", "String", True),
    _c("ChargeFrequency", "Recommended", "String", False),
    _c("ChargePeriodEnd", "Mandatory", "Date/Time", False),
    _c("ChargePeriodStart", "Mandatory", "Date/Time", False),
    _c("CommitmentDiscountCategory", "Conditional", "String", True),
    _c("CommitmentDiscountId", "Conditional", "String", True),
    _c("CommitmentDiscountName", "Conditional", "String", True),
    _c("CommitmentDiscountQuantity", "Conditional", "Decimal", True),
    _c("CommitmentDiscountStatus", "Conditional", "String", True),
    _c("CommitmentDiscountType", "Conditional", "String", True),
    _c("CommitmentDiscountUnit", "Conditional", "String", True),
    _c("ConsumedQuantity", "Conditional", "Decimal", True),
    _c("ConsumedUnit", "Conditional", "String", True),
    _c("ContractedCost", "Mandatory", "Decimal", False),
    _c("ContractedUnitPrice", "Conditional", "Decimal", True),
    _c("EffectiveCost", "Mandatory", "Decimal", False),
    _c("InvoiceId", "Recommended", "String", True),
    _c("InvoiceIssuerName", "Mandatory", "String", False),
    _c("ListCost", "Mandatory", "Decimal", False),
    _c("ListUnitPrice", "Conditional", "Decimal", True),
    _c("PricingCategory", "Conditional", "String", True),
    _c("PricingCurrency", "Conditional", "String", False),
    _c("PricingCurrencyContractedUnitPrice", "Conditional", "Decimal", True),
    _c("PricingCurrencyEffectiveCost", "Conditional", "Decimal", False),
    _c("PricingCurrencyListUnitPrice", "Conditional", "Decimal", True),
    _c("PricingQuantity", "Mandatory", "Decimal", True),
    _c("PricingUnit", "Mandatory", "String", True),
    _c("ProviderName", "Mandatory", "String", False),
    _c("PublisherName", "Mandatory", "String", False),
    _c("RegionId", "Conditional", "String", True),
    _c("RegionName", "Conditional", "String", True),
    _c("ResourceId", "Conditional", "String", True),
    _c("ResourceName", "Conditional", "String", True),
    _c("ResourceType", "Conditional", "String", True),
    _c("ServiceCategory", "Mandatory", "String", False),
    _c("ServiceName", "Mandatory", "String", False),
    _c("ServiceSubcategory", "Recommended", "String", False),
    _c("SkuId", "Conditional", "String", True),
    _c("SkuMeter", "Conditional", "String", True),
    _c("SkuPriceDetails", "Conditional", "JSON", True),
    _c("SkuPriceId", "Conditional", "String", True),
    _c("SubAccountId", "Conditional", "String", True),
    _c("SubAccountName", "Conditional", "String", True),
    _c("SubAccountType", "Conditional", "String", False),
    _c("Tags", "Conditional", "JSON", True),
)
_BY_NAME = {c.name: c for c in FOCUS_COLUMNS}

#: Custom columns (FOCUS reserves the ``x_`` prefix for them).
CUSTOM_COLUMNS: tuple[str, ...] = ("x_TokenType", "x_TaskType", "x_Calls", "x_PricingStatus", "x_PriceSource")

#: What the export writes: every Mandatory and Recommended column, the Conditional ones that apply to per-token AI
#: usage billed in USD, then the custom columns. Commitment-discount, capacity-reservation and region columns do not
#: apply (nothing is committed or reserved, API calls have no region in the event) and are left out, as the spec
#: allows for Conditional columns whose condition is not met; except CommitmentDiscountStatus, always null, which
#: ConsumedQuantity's nullability rule reads ("not null when ChargeCategory is Usage and CommitmentDiscountStatus is
#: not Unused").
EXPORT_COLUMNS: tuple[str, ...] = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "CommitmentDiscountStatus", "ConsumedQuantity", "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice", "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost", "ListUnitPrice",
    "PricingCategory", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "AvailabilityZone",
    "ResourceId", "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId",
    "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType", "Tags",
    *CUSTOM_COLUMNS,
)

TokenType = Literal["input", "output", "cache_read", "cache_write", "other"]
_TOKEN_TYPES: tuple[TokenType, ...] = ("input", "output", "cache_read", "cache_write", "other")
_METER = {"input": "Input Tokens", "output": "Output Tokens", "cache_read": "Cached Input Tokens",
          "cache_write": "Cache Write Tokens", "other": "Requests and Tool Calls"}
_COST_COLUMN = {"input": "cost_input_usd", "output": "cost_output_usd", "cache_read": "cost_cache_read_usd",
                "cache_write": "cost_cache_write_usd", "other": "cost_other_usd"}
_ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)
_Q12 = Decimal("1e-12")

# Group key of one FOCUS charge (before the token-type split).
_Key = tuple[date, str, str, str, str, str, str, str, str, str]  # day, provider, model, team, project, agent,
#                                                                  task_type, row_kind, pricing_status, price_source


@dataclass
class _Group:
    calls: int
    quantity: dict[str, int]
    contracted: dict[str, Decimal]
    listed: dict[str, Decimal]


def format_value(value: Any) -> str:
    """FOCUS text forms: Decimal without exponent and always with a decimal point, Date/Time as ISO 8601 UTC with
    ``Z``, null as empty.

    The decimal point matters: a reader that infers column types from CSV text (the FinOps Foundation's validator,
    polars, pandas, DuckDB) reads a column of whole numbers (token counts) as an integer, which is not FOCUS's
    Decimal type (ConsumedQuantity-C-001-M)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text if "." in text or not value.is_finite() else text + ".0"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def invoice_id(billing_account: str, issuer: str, billing: Period) -> str:
    """The provisional InvoiceId of the issuer's invoice to ``billing_account`` for the ``billing`` period. Pure."""
    return f"{billing_account}/{issuer}/{billing.start:%Y-%m}"


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def compute_focus_rows(groups: Mapping[_Key, _Group], *, billing_account: str) -> list[dict[str, Any]]:
    """FOCUS rows (column -> Python value) from grouped charges. Pure.

    The four costs (the spec's definitions applied to per-token API billing, no upfront purchases, no amortisation):
    ``ListCost`` is the same tokens at the public catalogue price (for calls priced from the price book the tokens
    are priced again with a catalogue-only Pricer); ``ContractedCost`` is the ledger's ``cost_*_usd``;
    ``EffectiveCost`` and ``BilledCost`` equal ContractedCost (usage-based, nothing prepaid to amortise).
    Re-rating corrections become ``ChargeClass = 'Correction'`` rows carrying the deltas (FOCUS's mechanism for
    corrections of previously invoiced charges), with null quantities and the delta as ListCost.

    Quantities: ``ConsumedQuantity`` / ``ConsumedUnit`` are tokens (``Tokens``); ``PricingQuantity`` is in millions
    of tokens with ``PricingUnit = '1000000 Tokens'`` (unit prices are per million; FOCUS Unit Format); the "other"
    part (request fees, web-search calls) is counted in ``Requests``. Unit prices are the row's effective average
    (cost x 10^6 / tokens, 12 places), since one row can span a price change within the day.

    Provider columns: ``ProviderName``, ``PublisherName`` and ``InvoiceIssuerName`` are the model provider (direct
    billing; a reselling gateway would be the issuer, which the event does not say). ``InvoiceId`` is never null
    (InvoiceId-C-005-C): the ledger does not know the provider's invoice number, so it is a provisional
    ``<BillingAccountId>/<InvoiceIssuerName>/<YYYY-MM>`` (InvoiceId-C-006-O) a FinOps tool maps onto the real one.
    ``SkuPriceDetails`` is ``{"x_Model", "x_TokenType"}`` (FOCUS defines no key for tokens).
    ``CommitmentDiscountStatus`` is always null and present because ConsumedQuantity's nullability rule is
    conditioned on it. Teams are sub-accounts (``SubAccountType = 'Team'``), agents resources (``ResourceType = 'AI
    Agent'``), ``SkuId`` is ``provider/model`` and ``SkuPriceId`` adds the token type. Custom columns carry the
    ``x_`` prefix: ``x_TokenType``, ``x_TaskType``, ``x_Calls``, ``x_PricingStatus``, ``x_PriceSource``.
    """
    rows: list[dict[str, Any]] = []
    for key in sorted(groups):
        day, provider, model, team, project, agent, task_type, row_kind, status, source = key
        group = groups[key]
        billing = month_period(day.year, day.month)
        correction = row_kind == "correction"
        for token_type in _TOKEN_TYPES:
            contracted = group.contracted.get(token_type, _ZERO)
            listed = group.listed.get(token_type, _ZERO)
            tokens = group.quantity.get(token_type, 0)
            if contracted == 0 and listed == 0 and (tokens == 0 or correction):
                continue
            unit = "Requests" if token_type == "other" else "Tokens"
            if correction or tokens == 0:
                consumed = pricing_qty = contracted_unit = list_unit = None
            else:
                consumed = Decimal(tokens)
                pricing_qty = consumed if token_type == "other" else consumed / _MILLION
                contracted_unit = (contracted / pricing_qty).quantize(_Q12)
                list_unit = (listed / pricing_qty).quantize(_Q12)
            sku = f"{provider}/{model}"
            rows.append({
                "BilledCost": contracted,
                "BillingAccountId": billing_account,
                "BillingAccountName": billing_account,
                "BillingCurrency": "USD",
                "BillingPeriodEnd": billing.end,
                "BillingPeriodStart": billing.start,
                "ChargeCategory": "Usage",
                "ChargeClass": "Correction" if correction else None,
                "ChargeDescription": f"{_METER[token_type]} of {sku} for agent {agent}"
                + (" (re-rating correction)" if correction else ""),
                "ChargeFrequency": "Usage-Based",
                "ChargePeriodEnd": _day_start(day) + timedelta(days=1),
                "ChargePeriodStart": _day_start(day),
                "CommitmentDiscountStatus": None,
                "ConsumedQuantity": consumed,
                "ConsumedUnit": unit if consumed is not None else None,
                "ContractedCost": contracted,
                "ContractedUnitPrice": contracted_unit,
                "EffectiveCost": contracted,
                "InvoiceId": invoice_id(billing_account, provider, billing),
                "InvoiceIssuerName": provider,
                "ListCost": listed,
                "ListUnitPrice": list_unit,
                "PricingCategory": "Standard",
                "PricingQuantity": pricing_qty,
                "PricingUnit": (unit if token_type == "other" else "1000000 Tokens") if pricing_qty is not None
                else None,
                "ProviderName": provider,
                "PublisherName": provider,
                "AvailabilityZone": None,
                "ResourceId": agent,
                "ResourceName": agent,
                "ResourceType": "AI Agent",
                "ServiceCategory": "AI and Machine Learning",
                "ServiceName": f"{provider} model API",
                "ServiceSubcategory": "Generative AI",
                "SkuId": sku,
                "SkuMeter": _METER[token_type],
                "SkuPriceDetails": json.dumps({"x_Model": model, "x_TokenType": token_type}, sort_keys=True),
                "SkuPriceId": f"{sku}/{token_type}",
                "SubAccountId": team,
                "SubAccountName": team,
                "SubAccountType": "Team",
                "Tags": json.dumps({"team": team, "project": project, "agent": agent}, sort_keys=True),
                "x_TokenType": token_type,
                "x_TaskType": task_type or None,
                "x_Calls": group.calls,
                "x_PricingStatus": status,
                "x_PriceSource": source,
            })
    return rows


_WHERE = "occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')}"
_GROUP_COLUMNS = ("toDate(occurred_at, 'UTC') AS day, provider, model, team, project, agent_id, task_type, "
                  "toString(row_kind) AS kind, pricing_status, price_source")


def _load_groups(client: Any, database: str, period: Period) -> dict[_Key, _Group]:
    sql = (
        f"SELECT {_GROUP_COLUMNS}, countIf(row_kind = 'original'), "
        "sum(input_tokens - cache_read_tokens - cache_write_tokens), sum(output_tokens), sum(cache_read_tokens), "
        "sum(cache_write_tokens), sum(web_search_calls + requests), "
        "sum(cost_input_usd), sum(cost_output_usd), sum(cost_cache_read_usd), sum(cost_cache_write_usd), "
        "sum(cost_other_usd) "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE} "
        "GROUP BY day, provider, model, team, project, agent_id, task_type, kind, pricing_status, price_source"
    )
    groups: dict[_Key, _Group] = {}
    for r in client.query(sql, parameters={"lo": period.start, "hi": period.end}).result_rows:
        key: _Key = (r[0], *(str(v) for v in r[1:10]))
        quantity: dict[str, int] = dict(zip(_TOKEN_TYPES, (int(v) for v in r[11:16]), strict=True))
        contracted: dict[str, Decimal] = dict(zip(_TOKEN_TYPES, (Decimal(v) for v in r[16:21]), strict=True))
        # ListCost equals the contracted cost unless the price book set the price (then re-priced below).
        listed = dict(contracted) if key[9] != "price_book" or key[7] == "correction" else {}
        groups[key] = _Group(int(r[10]), quantity, contracted, listed)
    return groups


def _add_list_costs(client: Any, database: str, period: Period, groups: dict[_Key, _Group],
                    catalogue: Pricer) -> None:
    """ListCost of price-book-priced originals: the same tokens priced by the catalogue alone, event by event."""
    columns = ("occurred_at", "provider", "model", "team", "project", "agent_id", "task_type", "pricing_status",
               "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
               "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens",
               "image_tokens", "web_search_calls", "requests", "cost_input_usd", "cost_output_usd",
               "cost_cache_read_usd", "cost_cache_write_usd", "cost_other_usd")
    sql = (f"SELECT {', '.join(columns)} FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE} "
           "AND row_kind = 'original' AND price_source = 'price_book'")
    for values in client.query(sql, parameters={"lo": period.start, "hi": period.end}).result_rows:
        event = dict(zip(columns, values, strict=True))
        day = as_utc(event["occurred_at"]).date()
        key: _Key = (day, event["provider"], event["model"], event["team"],
                     event["project"], event["agent_id"], event["task_type"], "original", event["pricing_status"],
                     "price_book")
        group = groups.get(key)
        if group is None:
            continue
        price = catalogue.price(event)
        # A model the public catalogue does not know (self-hosted, custom): the book's price is its only list.
        parts = price._asdict() if price.pricing_status == "priced" else event
        for token_type in _TOKEN_TYPES:
            group.listed[token_type] = group.listed.get(token_type, _ZERO) + Decimal(parts[_COST_COLUMN[token_type]])


def build_focus_rows(client: Any, database: str, period: Period, *, billing_account: str = "agent-finops",
                     catalogue: Pricer | None = None) -> list[dict[str, Any]]:
    """The period's FOCUS rows from ``usage_ledger FINAL``. Read-only; blocks on the queries."""
    groups = _load_groups(client, database, period)
    if any(key[9] == "price_book" for key in groups):
        _add_list_costs(client, database, period, groups, catalogue or Pricer())
    return compute_focus_rows(groups, billing_account=billing_account)


def render_focus_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with a header of :data:`EXPORT_COLUMNS`; nulls are empty cells (FOCUS "null" in CSV)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([format_value(row[c]) for c in EXPORT_COLUMNS])
    return out.getvalue()


def column_spec(name: str) -> FocusColumn | None:
    """The specification's constraints for ``name`` (None for custom ``x_`` columns)."""
    return _BY_NAME.get(name)


def totals_by_column(rows: Iterable[Mapping[str, Any]], column: str) -> Decimal:
    return sum((Decimal(r[column]) for r in rows if r[column] is not None), _ZERO)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Totals of the four cost columns (for the command's summary line)."""
    out: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    for column in ("ListCost", "ContractedCost", "EffectiveCost", "BilledCost"):
        out[column] = totals_by_column(rows, column)
    return dict(out)
