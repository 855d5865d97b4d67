"""The Bill vs ledger page in real headless Chromium: the numbers it shows equal ClickHouse's reconciliation, the
shadow key's spend is the first gap, a team lead sees only their teams' projects, a developer is refused. Uses the
browser helpers of test_dashboard_browser (same needs: chromium, chromium-driver, selenium)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.test_dashboard_browser import (  # the fixture `browser` is used by name; it skips without chromium
    WAIT_S,
    browser,
    money_ok,
    open_page,
    screenshot,
    shown,
    sign_in,
)
from tests.integration.test_api_bills import SHADOW, seed_bill
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    serving_database,
    seed_fleet,
)

pytestmark = pytest.mark.e2e

By: Any = pytest.importorskip("selenium.webdriver.common.by").By
WebDriverWait: Any = pytest.importorskip("selenium.webdriver.support.ui").WebDriverWait

D = Decimal
__all__ = ["browser"]


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    fleet = seed_fleet(ch_client, ch_database)
    seed_bill(ch_client, ch_database, fleet.now)
    return fleet


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


def _reconciled(ch_client: Any, fleet: Fleet, column: str, where: str = "1") -> Decimal:
    return D(ch_client.query(
        f"SELECT sum({column}) FROM {fleet.database}.v_bill_reconciliation WHERE period = {{p:String}} AND {where}",
        parameters={"p": fleet.now.strftime("%Y-%m")}).result_rows[0][0])


def test_bills_page_shows_the_reconciliation(ch_client: Any, fleet: Fleet, dash: RunningDashboard,
                                             browser: Any) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("finops_admin", subject="fin-admin"))
    assert "Bill vs ledger" in driver.find_element(By.ID, "nav").text
    open_page(driver, dash.url + "/bills?refresh=3600")
    assert driver.find_element(By.ID, "title").text == "Bill vs ledger"
    money_ok(driver, "kpi-bill", _reconciled(ch_client, fleet, "bill_usd"))
    money_ok(driver, "kpi-ledger", _reconciled(ch_client, fleet, "ledger_usd"))
    money_ok(driver, "kpi-unattributed", SHADOW)
    first = driver.find_element(By.CSS_SELECTOR, '[data-testid="bill-cells"] tbody tr')
    assert (first.get_attribute("data-status"), first.get_attribute("data-account")) == ("unattributed",
                                                                                         "wrkspc_shadow")
    assert {v for v, _ in shown(driver, "cell-gap")[:1]} == {SHADOW}
    screenshot(driver, "bills")


def test_team_lead_sees_their_projects_and_developer_is_refused(ch_client: Any, fleet: Fleet,
                                                               dash: RunningDashboard, browser: Any) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("team_lead", "payments", subject="lead-pay"))
    open_page(driver, dash.url + "/bills?refresh=3600")
    money_ok(driver, "kpi-bill", _reconciled(ch_client, fleet, "bill_usd", "team = 'payments'"))
    money_ok(driver, "kpi-unattributed", D(0))
    teams = {r.get_attribute("data-team") for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="bill-teams"] tbody tr')}
    assert teams == {"payments"}

    dev = browser()
    sign_in(dev, dash, dash.issue("developer", "payments", subject="dev-ana"))
    assert "Bill vs ledger" not in dev.find_element(By.ID, "nav").text
    open_page(dev, dash.url + "/bills?refresh=3600")
    error = dev.find_element(By.ID, "error")
    WebDriverWait(dev, WAIT_S).until(lambda d: error.is_displayed())
    assert error.get_attribute("data-status") == "403"
