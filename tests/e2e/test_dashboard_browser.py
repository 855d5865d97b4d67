"""The dashboard in real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Each page is loaded with a seeded fleet, the numbers it shows are compared with ClickHouse (the exact value in
``data-value`` and the rounded text a person reads), and a screenshot is saved under ``.finops/screenshots/``
(git-ignored). Also: the page updates without a reload when new spend lands, and a developer's browser cannot
see another team's agent.

Needs: ``apt-get install -y chromium chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and the
Python package ``selenium``; without them the tests skip and say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ch_fixtures import insert_ledger, ledger_row
from tests.integration.test_api_support import Fleet, RunningDashboard, serving_database, seed_fleet

pytestmark = pytest.mark.e2e

D = Decimal
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".finops" / "screenshots"
WAIT_S = 20

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_SELENIUM = False

if not (HAVE_SELENIUM and Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "browser tests need Debian's chromium and chromium-driver and the selenium package: "
        "apt-get install -y chromium chromium-driver && pip install 'selenium>=4.20,<5'",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def usd(value: Decimal | None, places: int = 2) -> str:
    """What app.js shows for an amount: half-up rounding, thousands separators, a leading $ (mirrors roundDec)."""
    if value is None:
        return "–"
    q = D(value).quantize(D(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = f"{abs(q):,.{places}f}"
    return ("-$" if q < 0 else "$") + text


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[], WebDriver]]:
    """A factory of fresh headless Chromium sessions (each with its own profile, so its own cookies)."""
    drivers: list[WebDriver] = []

    def make() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1800",
                    f"--user-data-dir={tmp_path / f'profile{len(drivers)}'}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.quit()


@pytest.fixture
def fleet(ch_client: Any, ch_database: str) -> Fleet:
    return seed_fleet(ch_client, ch_database)


@pytest.fixture
def dash(fleet: Fleet, chdb_url: str) -> Iterator[RunningDashboard]:
    with serving_database(chdb_url, fleet.database, refresh_seconds=1.0) as running:
        yield running


def sign_in(driver: WebDriver, dash: RunningDashboard, token: str) -> None:
    driver.get(dash.url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: "/login" in d.current_url)
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "title").text == "Organisation overview")


def open_page(driver: WebDriver, url: str) -> None:
    """Load a page and wait until it has drawn its data (or its error) at least once."""
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: int(d.find_element(By.ID, "live").get_attribute("data-refreshes") or 0) >= 1
        or d.find_element(By.ID, "error").is_displayed())


def shown(driver: WebDriver, testid: str) -> list[tuple[Decimal | None, str]]:
    """(exact value, text) of every element with ``data-testid``."""
    out = []
    for el in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'):
        raw = el.get_attribute("data-value")
        out.append((D(raw) if raw else None, el.text))
    return out


def money_ok(driver: WebDriver, testid: str, expected: Decimal, places: int = 2) -> None:
    [(value, text)] = shown(driver, testid)
    assert value == expected, f"{testid}: page has {value}, ClickHouse {expected}"
    assert text == usd(expected, places), f"{testid}: shows {text!r}, expected {usd(expected, places)!r}"


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def one(client: Any, sql: str, **params: Any) -> Any:
    return client.query(sql, parameters=params).result_rows[0][0]


def test_every_page_shows_clickhouse_numbers(ch_client: Any, fleet: Fleet, dash: RunningDashboard,
                                             browser: Callable[[], WebDriver]) -> None:
    db = fleet.database
    ledger = f"{db}.usage_ledger FINAL"
    driver = browser()
    sign_in(driver, dash, dash.issue("finops_admin", subject="fin-admin"))
    today = datetime.now(UTC).date()

    # overview
    open_page(driver, dash.url + "/")
    money_ok(driver, "kpi-today", one(ch_client, f"SELECT sum(cost_usd) FROM {ledger} "
                                                 "WHERE toDate(occurred_at, 'UTC') = {d:Date}", d=today))
    money_ok(driver, "kpi-month", one(ch_client, f"SELECT sum(cost_usd) FROM {ledger} WHERE toDate(occurred_at, "
                                                 "'UTC') BETWEEN toStartOfMonth({d:Date}) AND {d:Date}", d=today))
    assert shown(driver, "kpi-anomalies") == [(D(2), "2")]
    assert driver.find_element(By.CSS_SELECTOR, '[data-testid="trend-chart"]').get_attribute("data-points") == "30"
    team_month = {t: v for t, v in ch_client.query(
        f"SELECT team, sum(cost_usd) FROM {ledger} WHERE toDate(occurred_at, 'UTC') "
        "BETWEEN toStartOfMonth({d:Date}) AND {d:Date} GROUP BY team", parameters={"d": today}).result_rows}
    rows = driver.find_elements(By.CSS_SELECTOR, '[data-testid="teams"] tbody tr')
    assert {r.get_attribute("data-team"): D(r.find_element(By.CSS_SELECTOR, '[data-testid="team-month"]')
                                            .get_attribute("data-value")) for r in rows} == team_month
    budgets = {p: s for p, s in ch_client.query(
        f"SELECT policy_id, spent_usd FROM {db}.v_budget_utilisation").result_rows}
    got = {r.get_attribute("data-policy"): D(r.find_element(By.CSS_SELECTOR, '[data-testid="budget-spent"]')
                                              .get_attribute("data-value"))
           for r in driver.find_elements(By.CSS_SELECTOR, '[data-testid="budgets"] tbody tr')}
    assert got == budgets
    screenshot(driver, "overview")

    # teams and one team
    open_page(driver, dash.url + "/teams")
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="teams"] tbody tr')) == 3
    screenshot(driver, "teams")
    open_page(driver, dash.url + "/teams/payments")
    money_ok(driver, "kpi-month", team_month["payments"])
    assert {r.get_attribute("data-agent") for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="agents"] tbody tr')} == {"pay-bot-1", "pay-bot-2"}
    screenshot(driver, "team")

    # agents and one agent
    open_page(driver, dash.url + "/agents")
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="agents"] tbody tr')) == 5
    screenshot(driver, "agents")
    open_page(driver, dash.url + "/agents/pay-bot-2")
    tasks, cost, ok = ch_client.query(
        f"SELECT count(), sum(cost_usd), countIf(succeeded) FROM {db}.v_cost_per_task "
        "WHERE agent_id = 'pay-bot-2' AND toDate(last_call_at, 'UTC') >= {d:Date} - 29",
        parameters={"d": today}).result_rows[0]
    [(per_task, text)] = shown(driver, "kpi-cost-per-task")
    assert per_task == (cost / tasks).quantize(D("1e-12"), rounding="ROUND_DOWN") and text == usd(per_task, 4)
    [(per_success, _)] = shown(driver, "kpi-cost-per-success")
    assert per_success == (cost / ok).quantize(D("1e-12"), rounding="ROUND_DOWN")
    assert driver.find_element(By.CSS_SELECTOR, '[data-testid="control-state"]').text == "normal"
    assert driver.find_elements(By.ID, "control-form"), "an admin may issue control commands"
    open_page(driver, dash.url + "/agents/pay-bot-1")
    assert driver.find_element(By.CSS_SELECTOR, '[data-testid="control-state"]').text == "throttle"
    screenshot(driver, "agent")

    # models
    open_page(driver, dash.url + "/models")
    calls = {m: n for m, n in ch_client.query(
        f"SELECT model, count() FROM {ledger} WHERE toDate(occurred_at, 'UTC') >= {{d:Date}} - 29 GROUP BY model",
        parameters={"d": today}).result_rows}
    rows = driver.find_elements(By.CSS_SELECTOR, '[data-testid="models"] tbody tr')
    assert {r.get_attribute("data-model"): int(r.find_element(By.CSS_SELECTOR, '[data-testid="model-calls"]').text)
            for r in rows} == calls
    assert driver.find_element(By.CSS_SELECTOR, '[data-testid="alternatives"] tbody tr').text.split()[:2] == [
        "gpt-4o", "gpt-4o-mini"]
    screenshot(driver, "models")

    # budgets, alerts, recommendations, admin
    open_page(driver, dash.url + "/budgets")
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="budgets"] tbody tr')) == 4
    screenshot(driver, "budgets")
    open_page(driver, dash.url + "/alerts")
    assert len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="alerts"] tbody tr')) == one(
        ch_client, f"SELECT count() FROM {db}.alerts FINAL")
    screenshot(driver, "alerts")
    open_page(driver, dash.url + "/recommendations")
    money_ok(driver, "kpi-avoidable", one(ch_client, f"SELECT sum(avoidable_cost_usd) FROM {db}.waste_signals FINAL"))
    screenshot(driver, "recommendations")
    open_page(driver, dash.url + "/admin")
    assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="audit"]')
    screenshot(driver, "admin")


def test_page_updates_live_without_reload(ch_client: Any, fleet: Fleet, dash: RunningDashboard,
                                          browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("finops_admin"))
    open_page(driver, dash.url + "/")
    [(before, _)] = shown(driver, "kpi-today")
    driver.execute_script("window.__marker = 'same page'")
    insert_ledger(ch_client, fleet.database, [ledger_row("1.250000000000", datetime.now(UTC), agent_id="pay-bot-1",
                                                         team="payments", project="checkout")])
    assert before is not None
    expected = before + D("1.25")
    WebDriverWait(driver, WAIT_S).until(lambda d: shown(d, "kpi-today")[0][0] == expected)
    assert shown(driver, "kpi-today")[0][1] == usd(expected)
    assert driver.execute_script("return window.__marker") == "same page", "the page was not reloaded"


def test_developer_browser_cannot_see_another_teams_agent(dash: RunningDashboard,
                                                          browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("developer", "payments", subject="dev-ana"))
    open_page(driver, dash.url + "/agents/search-ranker")
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed() and "among your teams" in error.text and error.get_attribute("data-status") == "404"
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="kpi-month"]')
    assert "Admin" not in driver.find_element(By.ID, "nav").text
    screenshot(driver, "developer-refused")
    open_page(driver, dash.url + "/")
    assert [r.get_attribute("data-team") for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="teams"] tbody tr')] == ["payments"]
    open_page(driver, dash.url + "/agents")
    assert {r.get_attribute("data-agent") for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="agents"] tbody tr')} == {"pay-bot-1", "pay-bot-2"}
    open_page(driver, dash.url + "/agents/pay-bot-1")
    assert not driver.find_elements(By.ID, "control-form"), "a developer gets no control form"


def test_team_lead_gets_no_control_form_and_signs_out(dash: RunningDashboard,
                                                      browser: Callable[[], WebDriver]) -> None:
    driver = browser()
    sign_in(driver, dash, dash.issue("team_lead", "payments"))
    open_page(driver, dash.url + "/agents/pay-bot-1")
    assert driver.find_element(By.CSS_SELECTOR, '[data-testid="control-state"]').text == "throttle"
    assert not driver.find_elements(By.ID, "control-form")
    driver.find_element(By.ID, "signout").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: "/login" in d.current_url)
    driver.get(dash.url + "/teams")
    WebDriverWait(driver, WAIT_S).until(lambda d: "/login" in d.current_url)
