"""The Tasks page (task trees) in real headless Chromium: the numbers it shows equal the ledger's, a sub-agent
tree is drawn by depth with its diamond and cycle flagged, and a developer's browser sees only their teams' part.
Uses the browser helpers of test_dashboard_browser (same needs: chromium, chromium-driver, selenium)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.test_dashboard_browser import (  # the fixture `browser` is used by name; it skips without chromium
    WAIT_S,
    browser,
    open_page,
    screenshot,
    shown,
    sign_in,
    usd,
)
from tests.integration.test_api_support import (
    Fleet,
    RunningDashboard,
    serving_database,
    seed_fleet,
)
from tests.integration.test_api_tasks import seed_trees

pytestmark = pytest.mark.e2e

# selenium is there: test_dashboard_browser skips this whole module at import when it is not
By: Any = pytest.importorskip("selenium.webdriver.common.by").By
WebDriverWait: Any = pytest.importorskip("selenium.webdriver.support.ui").WebDriverWait

D = Decimal
__all__ = ["browser"]


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    fleet = seed_fleet(ch_client, ch_database)
    seed_trees(ch_client, ch_database, fleet.now)
    return fleet


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database) as running:
        yield running


# Pages are opened with refresh=3600: drawn once and not redrawn under the test's reads (a redraw makes every
# element read so far stale).
def row_of(driver: Any, task: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="task-trees"] tbody tr[data-task="{task}"]')


def cell(row: Any, testid: str) -> tuple[Decimal | None, str]:
    el = row.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
    raw = el.get_attribute("data-value")
    return (D(raw) if raw else None, el.text)


def test_tasks_page_shows_the_trees_counted_once(ch_client: Any, fleet: Fleet, dash: RunningDashboard,
                                                 browser: Any) -> None:
    db = fleet.database
    driver = browser()
    sign_in(driver, dash, dash.issue("finops_admin", subject="fin-admin"))
    open_page(driver, dash.url + "/tasks?limit=500&refresh=3600")
    assert "Tasks" in driver.find_element(By.ID, "nav").text

    root = row_of(driver, "tree-root")
    assert cell(root, "task-own") == (D("1.5"), usd(D("1.5"), 4))
    # 0.775 below it, of which one call is unpriced (shown as such, never folded in as $0)
    value, text = cell(root, "task-descendants")
    assert value == D("0.775") and text.startswith(usd(D("0.775"), 4)) and "+1 unpriced" in text
    assert cell(root, "task-total")[0] == D("2.275")
    assert (cell(root, "task-depth")[1], cell(root, "task-subs")[1], cell(root, "task-outcome")[1]) == (
        "0", "4", "error (tree)")
    kid = row_of(driver, "tree-search-kid")
    assert (kid.get_attribute("data-root"), kid.get_attribute("data-depth")) == ("tree-root", "2")
    assert "diamond: also claimed by tree-other" in cell(row_of(driver, "tree-kid-a"), "task-flags")[1]
    assert cell(row_of(driver, "loop-a"), "task-flags")[1] == "cycle broken here"
    # the tree's rows follow one another in tree order
    order = [r.get_attribute("data-task") for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="task-trees"] tbody tr[data-root="tree-root"]')]
    assert order == ["tree-root", "tree-kid-a", "tree-grandkid", "tree-kid-b", "tree-search-kid"]

    # the KPI equals the ledger's spend of the tasks in the 30-day window, each call once
    ledger = f"{db}.usage_ledger FINAL"
    total = ch_client.query(
        f"SELECT sum(cost_usd) FROM {ledger} WHERE task_id IN (SELECT task_id FROM {ledger} WHERE task_id != '' "
        "GROUP BY task_id HAVING toDate(max(occurred_at), 'UTC') >= today() - 29)").result_rows[0][0]
    [(kpi_value, kpi_text)] = shown(driver, "kpi-tree-cost")
    assert kpi_value == total and kpi_text == usd(total)
    assert shown(driver, "kpi-unpriced")[0][0] == D(1)
    screenshot(driver, "tasks")


def test_developer_sees_only_their_teams_part_of_the_tree(dash: RunningDashboard, browser: Any) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("developer", "payments", subject="dev-ana"))
    open_page(driver, dash.url + "/tasks?limit=500&refresh=3600")
    teams = {r.get_attribute("data-task"): r for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="task-trees"] tbody tr')}
    assert "tree-root" in teams and "tree-search-kid" not in teams and "loop-a" not in teams
    assert cell(teams["tree-root"], "task-total")[0] == D("1.875")
    open_page(driver, dash.url + "/tasks?days=0&refresh=3600")
    error = driver.find_element(By.ID, "error")
    WebDriverWait(driver, WAIT_S).until(lambda d: error.is_displayed())
    assert error.get_attribute("data-status") == "400" and "parameter days" in error.text
