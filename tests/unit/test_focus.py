"""FOCUS 1.2 export: required columns and value types, checked against the specification's column list."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from decimal import Decimal

import pytest

from governance.focus import (
    EXPORT_COLUMNS,
    FOCUS_COLUMNS,
    _Group,
    compute_focus_rows,
    format_value,
    render_focus_csv,
)

pytestmark = pytest.mark.unit

# FOCUS 1.2 Mandatory columns, from the specification's column pages ("Feature level: Mandatory"), kept here
# independently of governance.focus so the test does not grade the code with its own table.
SPEC_MANDATORY = {
    "BilledCost": "Decimal", "BillingAccountId": "String", "BillingAccountName": "String",
    "BillingCurrency": "String", "BillingPeriodEnd": "Date/Time", "BillingPeriodStart": "Date/Time",
    "ChargeCategory": "String", "ChargeClass": "String", "ChargeDescription": "String",
    "ChargePeriodEnd": "Date/Time", "ChargePeriodStart": "Date/Time", "ContractedCost": "Decimal",
    "EffectiveCost": "Decimal", "InvoiceIssuerName": "String", "ListCost": "Decimal", "PricingQuantity": "Decimal",
    "PricingUnit": "String", "ProviderName": "String", "PublisherName": "String", "ServiceCategory": "String",
    "ServiceName": "String",
}
NOT_NULL = {"BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
            "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost",
            "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName"}
SERVICE_CATEGORIES = {"AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
                      "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
                      "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
                      "Storage", "Web", "Other"}
CHARGE_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
DECIMAL = re.compile(r"-?\d+(\.\d+)?")
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
PASCAL = re.compile(r"[A-Z][A-Za-z]*")


def check_focus_csv(text: str) -> list[str]:
    """Every violation of the FOCUS 1.2 column rules this export must meet (empty list = conforms)."""
    problems: list[str] = []
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    spec = {c.name: c for c in FOCUS_COLUMNS}
    for name, kind in SPEC_MANDATORY.items():
        if name not in header:
            problems.append(f"mandatory column {name} missing")
        elif spec[name].data_type != kind:
            problems.append(f"{name} declared {spec[name].data_type}, spec says {kind}")
    for name in header:
        if name.startswith("x_"):
            continue
        if name not in spec:
            problems.append(f"{name} is neither a FOCUS 1.2 column nor x_-prefixed")
        if not PASCAL.fullmatch(name):
            problems.append(f"{name} is not PascalCase")
    for n, row in enumerate(reader, start=2):
        for name, value in row.items():
            column = spec.get(name)
            if column is None:
                continue
            if value == "":
                if name in NOT_NULL or not column.allows_nulls:
                    problems.append(f"line {n}: {name} is null")
                continue
            if column.data_type == "Decimal" and not DECIMAL.fullmatch(value):
                problems.append(f"line {n}: {name}={value!r} is not a FOCUS decimal")
            if column.data_type == "Date/Time" and not DATETIME.fullmatch(value):
                problems.append(f"line {n}: {name}={value!r} is not ISO 8601 UTC")
            if column.data_type == "JSON":
                try:
                    json.loads(value)
                except ValueError:
                    problems.append(f"line {n}: {name} is not JSON")
        if row["ServiceCategory"] not in SERVICE_CATEGORIES:
            problems.append(f"line {n}: ServiceCategory {row['ServiceCategory']!r} not allowed")
        if row["ChargeCategory"] not in CHARGE_CATEGORIES:
            problems.append(f"line {n}: ChargeCategory {row['ChargeCategory']!r} not allowed")
        if row["ChargeClass"] not in ("", "Correction"):
            problems.append(f"line {n}: ChargeClass {row['ChargeClass']!r} not allowed")
        if row["ChargePeriodStart"] >= row["ChargePeriodEnd"]:
            problems.append(f"line {n}: charge period is empty")
    return problems


def _groups() -> dict:
    day = date(2026, 10, 5)
    q = {"input": 1_500_000, "output": 200_000, "cache_read": 300_000, "cache_write": 0, "other": 10}
    cost = {"input": Decimal("3.75"), "output": Decimal("2.0"), "cache_read": Decimal("0.375"),
            "cache_write": Decimal(0), "other": Decimal(0)}
    listed = {k: v * 2 for k, v in cost.items()}
    correction = {k: Decimal("-0.5") if k == "input" else Decimal(0) for k in cost}
    return {
        (day, "openai", "gpt-4o", "search", "docs-bot", "agent-007", "research", "original", "priced",
         "price_book"): _Group(40, q, cost, listed),
        (day, "openai", "gpt-4o", "search", "docs-bot", "agent-007", "research", "correction", "priced",
         "price_book"): _Group(0, dict.fromkeys(q, 0), correction, dict(correction)),
        (day, "acme", "mystery-1", "search", "docs-bot", "agent-008", "", "original", "unpriced",
         "none"): _Group(3, {"input": 900, "output": 10}, {}, {}),
    }


def test_export_conforms_to_the_focus_12_column_rules() -> None:
    rows = compute_focus_rows(_groups(), billing_account="acme-ai")
    text = render_focus_csv(rows)
    assert check_focus_csv(text) == []
    header = next(csv.reader(io.StringIO(text)))
    assert header == list(EXPORT_COLUMNS)
    assert {"x_TokenType", "x_TaskType"} <= set(header)


def test_costs_quantities_and_corrections() -> None:
    rows = compute_focus_rows(_groups(), billing_account="acme-ai")
    by = {(r["x_TokenType"], r["ChargeClass"], r["SkuId"]): r for r in rows}
    inp = by[("input", None, "openai/gpt-4o")]
    assert inp["ConsumedQuantity"] == Decimal(1_500_000) and inp["ConsumedUnit"] == "Tokens"
    assert inp["PricingQuantity"] == Decimal("1.5") and inp["PricingUnit"] == "1000000 Tokens"
    assert inp["ContractedUnitPrice"] == Decimal("2.5") and inp["ListUnitPrice"] == Decimal("5")
    assert inp["EffectiveCost"] == inp["BilledCost"] == inp["ContractedCost"] == Decimal("3.75")
    assert inp["ListCost"] == Decimal("7.5")
    assert json.loads(inp["Tags"]) == {"team": "search", "project": "docs-bot", "agent": "agent-007"}
    assert inp["ServiceCategory"] == "AI and Machine Learning" and inp["x_TaskType"] == "research"
    fix = by[("input", "Correction", "openai/gpt-4o")]
    assert fix["EffectiveCost"] == Decimal("-0.5") and fix["ConsumedQuantity"] is None
    # zero-cost, zero-token parts are not exported; the "other" part has quantity but no cost -> still a row
    assert ("cache_write", None, "openai/gpt-4o") not in by
    # unpriced calls are exported with their tokens and zero cost
    unpriced = by[("input", None, "acme/mystery-1")]
    assert unpriced["EffectiveCost"] == 0 and unpriced["x_PricingStatus"] == "unpriced"
    total = sum((r["EffectiveCost"] for r in rows), Decimal(0))
    assert total == Decimal("3.75") + Decimal("2.0") + Decimal("0.375") - Decimal("0.5")


def test_spec_table_has_the_57_focus_12_columns() -> None:
    assert len(FOCUS_COLUMNS) == 57 == len({c.name for c in FOCUS_COLUMNS})
    assert {c.name for c in FOCUS_COLUMNS if c.level == "Mandatory"} == set(SPEC_MANDATORY)


def test_every_charge_carries_its_provisional_invoice_id() -> None:
    """FOCUS InvoiceId-C-005-C: a charge on an (issued or provisional) invoice has a non-null InvoiceId, one per
    billing account, issuer and billing period; corrections are on the same invoice as the charges they correct."""
    rows = compute_focus_rows(_groups(), billing_account="acme-ai")
    assert rows and all(r["InvoiceId"] for r in rows)
    by_issuer = {r["InvoiceIssuerName"]: r["InvoiceId"] for r in rows}
    assert by_issuer == {"openai": "acme-ai/openai/2026-10", "acme": "acme-ai/acme/2026-10"}
    assert {r["InvoiceId"] for r in rows if r["ChargeClass"] == "Correction"} == {"acme-ai/openai/2026-10"}


def test_decimal_columns_are_written_as_decimals_and_sku_prices_described() -> None:
    """A whole-number Decimal keeps a decimal point in the CSV, so type-inferring readers (the FOCUS validator,
    ConsumedQuantity-C-001-M) read a Decimal; SkuPriceDetails is a JSON object of x_ keys wherever SkuPriceId is
    set; CommitmentDiscountStatus is present and null."""
    assert format_value(Decimal(1_500_000)) == "1500000.0"
    assert format_value(Decimal("1.5")) == "1.5" and format_value(Decimal("-0.5")) == "-0.5"
    rows = list(csv.DictReader(io.StringIO(render_focus_csv(compute_focus_rows(_groups(), billing_account="a")))))
    quantities = [r["ConsumedQuantity"] for r in rows if r["ConsumedQuantity"]]
    assert quantities and all("." in q for q in quantities)
    for row in rows:
        details = json.loads(row["SkuPriceDetails"])
        assert row["SkuPriceId"] and details["x_TokenType"] == row["x_TokenType"]
        assert all(key.startswith("x_") for key in details)
        assert row["CommitmentDiscountStatus"] == ""
