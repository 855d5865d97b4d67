"""The reconciliation rules and the bill_drift alert on plain values (governance.bills, pure parts)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from governance.bills import (
    BillCell,
    LedgerCell,
    build_bill_drift_alerts,
    compute_reconciliation,
)
from schemas.models import Alert

D = Decimal
DAY = date(2026, 11, 4)


def _led(project: str, cost: str, team: str = "t1", model: str = "m") -> LedgerCell:
    return LedgerCell(DAY, "openai", model, project, team, D(cost), 10, 5)


def test_cells_are_matched_under_over_reported_and_unattributed() -> None:
    bills = [
        BillCell(DAY, "openai", "m", "proj_1", D("10.00"), api_keys=("k1",)),       # mapped, equal
        BillCell(DAY, "openai", "m", "proj_2", D("7.00"), api_keys=("k2",)),        # mapped, bill above ledger
        BillCell(DAY, "openai", "m", "shadow", D("3.00"), api_keys=("k9", "k8")),  # nothing in the ledger
    ]
    ledger = [_led("alpha", "10.00"), _led("beta", "5.00"), _led("gamma", "1.50", team="t2")]
    report = compute_reconciliation("2026-11", bills, ledger, {"proj_1": "alpha", "proj_2": "beta"},
                                    tolerance_usd=D("0.01"), tolerance_pct=D(0))
    by_project = {(c.account_id, c.project): c for c in report.cells}
    assert by_project[("proj_1", "alpha")].status == "matched"
    assert by_project[("proj_2", "beta")].status == "under_reported"
    assert by_project[("shadow", "")].status == "unattributed"
    assert by_project[("", "gamma")].status == "over_reported"
    assert [c.account_id or c.project for c in report.gaps()] == ["shadow", "proj_2", "gamma"]  # biggest gap first
    assert report.unattributed_by_key() == {"k9,k8": D("3.00"), "k2": D("2.00")}
    totals = report.totals()
    assert (totals["bill_usd"], totals["ledger_usd"], totals["unattributed_usd"], totals["over_reported_usd"]) == (
        D("20.00"), D("16.50"), D("5.00"), D("1.50"))


def test_a_line_without_account_is_compared_with_the_unclaimed_ledger_spend() -> None:
    report = compute_reconciliation("2026-11", [BillCell(DAY, "openai", "m", "", D("12.005"))],
                                    [_led("alpha", "10"), _led("beta", "2")], {},
                                    tolerance_usd=D("0.01"), tolerance_pct=D(0))
    (cell,) = report.cells
    assert (cell.status, cell.ledger_usd, cell.project) == ("matched", D(12), "alpha,beta")


def test_drift_alert_names_the_keys_and_validates() -> None:
    report = compute_reconciliation("2026-11", [BillCell(DAY, "anthropic", "m", "w", D("4"), api_keys=("kx",))],
                                    [], {}, tolerance_usd=D("0.01"), tolerance_pct=D(1))
    (alert,) = build_bill_drift_alerts(report, datetime(2026, 12, 1, tzinfo=UTC))
    parsed = Alert.from_avro_dict(alert)
    assert parsed.kind == "bill_drift" and parsed.dedup_key == "bill_drift:anthropic:2026-11"
    assert "kx" in parsed.summary and parsed.amount_usd == D(4)
    within = compute_reconciliation("2026-11", [BillCell(DAY, "anthropic", "m", "w", D("4"))],
                                    [LedgerCell(DAY, "anthropic", "m", "w", "t", D("3.99"), 0, 0)], {},
                                    tolerance_usd=D("0.01"), tolerance_pct=D(1))
    assert build_bill_drift_alerts(within, datetime(2026, 12, 1, tzinfo=UTC)) == []
