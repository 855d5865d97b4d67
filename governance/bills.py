"""The providers' own bills next to the ledger: import their cost and usage reports, reconcile, explain the gap.

Role: ``finops bills import`` fetches (:func:`fetch_report`) or reads OpenAI's, Anthropic's and OpenRouter's cost
and usage reports, maps their tokens onto DESIGN §3's convention (:func:`compute_usage_line`) and stores them
(:func:`store_report`); :func:`compute_reconciliation` (pure) compares per day x provider x model x account the
bill with the ledger and classifies each cell.

Guarantee: money is parsed as Decimal from the JSON text (never through float); a 401/403 names the setting to
fix and never the key; re-importing a period replaces it and never adds (the views read only each day's current
import). See the README, "The provider's bill next to the ledger".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from finops.retry import RetryPolicy, compute_backoff
from governance.period import Period
from governance.store import qualified
from schemas.errors import ConfigError, FinopsError

__all__ = [
    "PROVIDERS", "BillLine", "BillsAuthError", "BillsError", "ProviderReport", "ReconciliationCell",
    "ReconciliationReport", "UsageLine", "build_bill_drift_alerts", "compute_reconciliation", "fetch_report",
    "load_reconciliation_inputs", "parse_report_file", "parse_report_pages", "render_reconciliation",
    "store_reconciliation", "store_report",
]

log = logging.getLogger(__name__)

Provider = Literal["openai", "anthropic", "openrouter"]
PROVIDERS: tuple[Provider, ...] = ("openai", "anthropic", "openrouter")
#: the setting that holds each provider's key and base URL (named in errors; the key itself never is)
KEY_SETTING: dict[str, str] = {
    "openai": "FINOPS_BILLS_OPENAI_ADMIN_KEY", "anthropic": "FINOPS_BILLS_ANTHROPIC_ADMIN_KEY",
    "openrouter": "FINOPS_BILLS_OPENROUTER_MANAGEMENT_KEY",
}
URL_SETTING: dict[str, str] = {p: f"FINOPS_BILLS_{p.upper()}_BASE_URL" for p in PROVIDERS}
_CENT = Decimal("0.01")
_ZERO = Decimal(0)


class BillsError(FinopsError):
    """A provider report could not be read or fetched; the message says which and what to do."""


class BillsAuthError(BillsError):
    """The provider refused the key (401/403); the message names the setting, never the key."""


@dataclass(frozen=True, slots=True)
class BillLine:
    """One cost line of a provider's report, in USD."""

    day: date
    amount_usd: Decimal
    account_id: str = ""
    api_key_id: str = ""
    model: str = ""
    line_item: str = ""
    cost_type: str = ""
    currency: str = "usd"


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One usage line of a provider's report, in our token convention (input includes cache reads and writes)."""

    day: date
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    account_id: str = ""
    api_key_id: str = ""
    cost_usd: Decimal | None = None


@dataclass(slots=True)
class ProviderReport:
    """What one import read for one provider: its cost and usage lines and the days it answers for."""

    provider: Provider
    bills: list[BillLine] = field(default_factory=list)
    usage: list[UsageLine] = field(default_factory=list)
    days: set[date] = field(default_factory=set)


# ---- parsing (pure) -------------------------------------------------------------------------------------------------
def _dec(value: Any, where: str) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, float):  # never reached with _loads; a float here would have lost cents already
        raise BillsError(f"{where}: a float amount reached the parser (parse JSON with parse_float=Decimal)")
    try:
        return Decimal(str(value))
    except InvalidOperation as err:
        raise BillsError(f"{where}: {value!r} is not an amount") from err


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as err:
        raise BillsError(f"{where}: not JSON ({err})") from err


def _day_of(value: Any, where: str) -> date:
    """A bucket start: Unix seconds (OpenAI), RFC 3339 (Anthropic) or YYYY-MM-DD (OpenRouter), as a UTC day."""
    try:
        if isinstance(value, int | Decimal):
            return datetime.fromtimestamp(int(value), UTC).date()
        text = str(value).strip()
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text).astimezone(UTC).date()
    except (ValueError, OverflowError) as err:
        raise BillsError(f"{where}: {value!r} is not a date or bucket start") from err


def _currency(value: Any, where: str) -> str:
    cur = str(value or "usd").lower()
    if cur != "usd":
        raise BillsError(f"{where}: currency {cur!r}; only USD bills are reconciled (the ledger is in USD)")
    return cur


def _openai_model(line_item: str) -> str:
    """OpenAI line items read ``<model>, input`` / ``<model>, cached input`` / ``<model>, output``."""
    return line_item.split(",", 1)[0].strip() if "," in line_item else ""


def parse_openai_costs(page: Mapping[str, Any], where: str) -> tuple[list[BillLine], set[date]]:
    lines: list[BillLine] = []
    days: set[date] = set()
    for b, bucket in enumerate(page.get("data") or []):
        day = _day_of(bucket.get("start_time"), f"{where} data[{b}].start_time")
        days.add(day)
        for r, res in enumerate(bucket.get("results") or []):
            at = f"{where} data[{b}].results[{r}]"
            amount = res.get("amount") or {}
            item = str(res.get("line_item") or "")
            lines.append(BillLine(day, _dec(amount.get("value"), f"{at}.amount.value"),
                                  account_id=str(res.get("project_id") or ""), model=_openai_model(item),
                                  line_item=item, currency=_currency(amount.get("currency"), f"{at}.amount")))
    return lines, days


def parse_openai_usage(page: Mapping[str, Any], where: str) -> list[UsageLine]:
    lines: list[UsageLine] = []
    for b, bucket in enumerate(page.get("data") or []):
        day = _day_of(bucket.get("start_time"), f"{where} data[{b}].start_time")
        for res in bucket.get("results") or []:
            # OpenAI's input_tokens already includes cached input (our convention); cache writes are not reported.
            lines.append(UsageLine(day, str(res.get("model") or ""), _int(res.get("input_tokens")),
                                   _int(res.get("output_tokens")),
                                   cache_read_tokens=_int(res.get("input_cached_tokens")),
                                   requests=_int(res.get("num_model_requests")),
                                   account_id=str(res.get("project_id") or ""),
                                   api_key_id=str(res.get("api_key_id") or "")))
    return lines


def parse_anthropic_costs(page: Mapping[str, Any], where: str) -> tuple[list[BillLine], set[date]]:
    lines: list[BillLine] = []
    days: set[date] = set()
    for b, bucket in enumerate(page.get("data") or []):
        day = _day_of(bucket.get("starting_at"), f"{where} data[{b}].starting_at")
        days.add(day)
        for r, res in enumerate(bucket.get("results") or []):
            at = f"{where} data[{b}].results[{r}]"
            # Anthropic reports the amount in the currency's lowest unit (cents) as a decimal string.
            cents = _dec(res.get("amount"), f"{at}.amount")
            lines.append(BillLine(day, cents * _CENT, account_id=str(res.get("workspace_id") or ""),
                                  model=str(res.get("model") or ""), line_item=str(res.get("description") or ""),
                                  cost_type=str(res.get("cost_type") or ""),
                                  currency=_currency(res.get("currency"), at)))
    return lines, days


def parse_anthropic_usage(page: Mapping[str, Any], where: str) -> list[UsageLine]:
    lines: list[UsageLine] = []
    for b, bucket in enumerate(page.get("data") or []):
        day = _day_of(bucket.get("starting_at"), f"{where} data[{b}].starting_at")
        for res in bucket.get("results") or []:
            creation = res.get("cache_creation") or {}
            # the nested object (the API) or the flat fields (some exports)
            writes = (_int(creation.get("ephemeral_5m_input_tokens")) + _int(creation.get("ephemeral_1h_input_tokens"))
                      + _int(res.get("cache_creation_5m_input_tokens"))
                      + _int(res.get("cache_creation_1h_input_tokens")))
            reads = _int(res.get("cache_read_input_tokens"))
            # Anthropic's cache fields are exclusive of uncached input; ours are parts of input_tokens.
            lines.append(UsageLine(day, str(res.get("model") or ""),
                                   _int(res.get("uncached_input_tokens")) + reads + writes,
                                   _int(res.get("output_tokens")), cache_read_tokens=reads, cache_write_tokens=writes,
                                   account_id=str(res.get("workspace_id") or ""),
                                   api_key_id=str(res.get("api_key_id") or "")))
    return lines


def parse_openrouter_activity(items: Iterable[Mapping[str, Any]], where: str) -> ProviderReport:
    """OpenRouter activity items (JSON ``data`` or CSV rows with the same column names): each is both a cost line
    (``usage``: the credits spent, which is the bill) and a usage line."""
    report = ProviderReport("openrouter")
    for i, item in enumerate(items):
        at = f"{where} item {i}"
        day = _day_of(item.get("date"), f"{at}.date")
        key = str(item.get("api_key_hash") or item.get("api_key_id") or "")
        model = str(item.get("model") or "")
        amount = _dec(item.get("usage") if item.get("usage") not in (None, "") else item.get("cost"), f"{at}.usage")
        report.days.add(day)
        report.bills.append(BillLine(day, amount, api_key_id=key, model=model,
                                     line_item=str(item.get("provider_name") or ""), cost_type="tokens"))
        report.usage.append(UsageLine(day, model, _int(item.get("prompt_tokens") or 0),
                                      _int(item.get("completion_tokens") or 0),
                                      requests=_int(item.get("requests") or 0),
                                      api_key_id=key, cost_usd=amount))
    return report


def parse_report_pages(provider: Provider, costs: Sequence[Mapping[str, Any]],
                       usage: Sequence[Mapping[str, Any]], where: str = "report") -> ProviderReport:
    """A :class:`ProviderReport` from the pages as the provider's API returns them (OpenRouter: activity pages)."""
    if provider == "openrouter":
        items = [item for page in [*costs, *usage] for item in (page.get("data") or [])]
        return parse_openrouter_activity(items, where)
    report = ProviderReport(provider)
    for n, page in enumerate(costs):
        parse = parse_openai_costs if provider == "openai" else parse_anthropic_costs
        lines, days = parse(page, f"{where} costs[{n}]")
        report.bills.extend(lines)
        report.days |= days
    for n, page in enumerate(usage):
        report.usage.extend((parse_openai_usage if provider == "openai" else parse_anthropic_usage)(
            page, f"{where} usage[{n}]"))
    return report


def parse_report_file(provider: Provider, path: Path) -> ProviderReport:
    """A recorded report: JSON ``{"costs": [page, ...], "usage": [page, ...]}`` (a single page is accepted for
    each), or for OpenRouter an activity response ``{"data": [...]}`` or its CSV export (``.csv``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BillsError(f"--from {path}: cannot read ({err.strerror})") from err
    if provider == "openrouter" and path.suffix.lower() == ".csv":
        return parse_openrouter_activity(list(csv.DictReader(io.StringIO(text))), str(path))
    doc = _loads(text, str(path))
    if not isinstance(doc, dict):
        raise BillsError(f"{path}: expected a JSON object with 'costs' and 'usage' pages")
    if provider == "openrouter":
        return parse_report_pages(provider, doc.get("pages") or [doc], [], str(path))

    def pages(name: str) -> list[Mapping[str, Any]]:
        value = doc.get(name, [])
        return [value] if isinstance(value, dict) else list(value)

    if "costs" not in doc:
        raise BillsError(f"{path}: no 'costs' pages: save the {provider} cost report pages under \"costs\" "
                         "(and the usage report pages under \"usage\")")
    return parse_report_pages(provider, pages("costs"), pages("usage"), str(path))


# ---- fetching (HTTP) ------------------------------------------------------------------------------------------------
Sleeper = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class FetchConfig:
    base_url: str
    key: str
    max_retries: int = 5
    max_wait_s: float = 60.0
    timeout_s: float = 30.0


def _get_json(provider: Provider, config: FetchConfig, path: str, params: Sequence[tuple[str, str]],
              headers: Mapping[str, str], sleep: Sleeper, rng: random.Random) -> Any:
    """GET one page; retries 429 / 5xx / connection errors up to ``max_retries`` times. Raises BillsAuthError on
    401/403 and BillsError otherwise; neither message contains the key."""
    url = config.base_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    shown = config.base_url.rstrip("/") + path
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=config.max_wait_s)
    attempt = 0
    while True:
        attempt += 1
        request = urllib.request.Request(url, headers={**headers, "Accept": "application/json"})
        retry_after: float | None = None
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as answer:
                return _loads(answer.read().decode("utf-8"), f"{provider} {shown}")
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise BillsAuthError(
                    f"{provider} refused the key at {shown} (HTTP {err.code}): set {KEY_SETTING[provider]} to an "
                    f"organisation {'management' if provider == 'openrouter' else 'admin'} key") from None
            if err.code != 429 and err.code < 500:
                body = err.read(300).decode("utf-8", "replace")
                raise BillsError(f"{provider} {shown} answered HTTP {err.code}: {body}") from None
            problem = f"HTTP {err.code}"
            header = err.headers.get("Retry-After") if err.headers else None
            try:
                retry_after = float(header) if header is not None else None
            except ValueError:
                retry_after = None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            problem = str(getattr(err, "reason", err))
        if attempt > config.max_retries:
            raise BillsError(f"{provider} {shown}: {problem} after {config.max_retries} retries; try again later or "
                             f"check {URL_SETTING[provider]}")
        wait = compute_backoff(policy, attempt, rng) if retry_after is None else retry_after
        wait = min(max(0.0, wait), config.max_wait_s)
        log.warning("%s %s: %s, retry %d of %d in %.1f s", provider, shown, problem, attempt, config.max_retries, wait)
        sleep(wait)


def _paged(provider: Provider, config: FetchConfig, path: str, params: list[tuple[str, str]],
           headers: Mapping[str, str], sleep: Sleeper, rng: random.Random) -> Iterator[Mapping[str, Any]]:
    page: str | None = None
    seen: set[str] = set()
    while True:
        doc = _get_json(provider, config, path, params + ([("page", page)] if page else []), headers, sleep, rng)
        if not isinstance(doc, dict):
            raise BillsError(f"{provider} {path}: expected a JSON object page")
        yield doc
        page = doc.get("next_page")
        if not doc.get("has_more") or not page:
            return
        if page in seen:
            raise BillsError(f"{provider} {path}: the provider repeated page cursor {page!r}; stopping")
        seen.add(page)


def fetch_report(provider: Provider, period: Period, config: FetchConfig, *, sleep: Sleeper = time.sleep,
                 rng: random.Random | None = None) -> ProviderReport:
    """Every page of the provider's cost and usage reports for ``period`` (UTC days). The report answers for every
    day of the period, also days with no cost. Raises BillsAuthError / BillsError.

    Sources: OpenAI's organization costs (``/v1/organization/costs``, buckets of ``amount{value,currency}`` by
    ``project_id`` and ``line_item``) and completions usage (``/v1/organization/usage/completions``: tokens by model,
    project and API key); Anthropic's Admin API cost report (``/v1/organizations/cost_report``: amounts in cents as
    decimal strings, by workspace and description) and messages usage report
    (``/v1/organizations/usage_report/messages``); OpenRouter's activity (``/api/v1/activity``, one UTC day per
    request, or its CSV export). Pages are followed through ``has_more``/``next_page``; a 429 or 5xx is retried a
    bounded number of times, waiting the ``Retry-After`` it gives (capped) or the project's backoff
    (:func:`finops.retry.compute_backoff`)."""
    rng = rng or random.Random()
    start, end = int(period.start.timestamp()), int(period.end.timestamp())
    if provider == "openai":
        auth = {"Authorization": f"Bearer {config.key}"}
        common = [("start_time", str(start)), ("end_time", str(end)), ("bucket_width", "1d"), ("limit", "31")]
        costs = list(_paged(provider, config, "/v1/organization/costs",
                            common + [("group_by", "project_id"), ("group_by", "line_item")], auth, sleep, rng))
        usage = list(_paged(provider, config, "/v1/organization/usage/completions",
                            common + [("group_by", "model"), ("group_by", "project_id"), ("group_by", "api_key_id")],
                            auth, sleep, rng))
        report = parse_report_pages(provider, costs, usage, f"{provider} API")
    elif provider == "anthropic":
        auth = {"x-api-key": config.key, "anthropic-version": "2023-06-01"}
        span = [("starting_at", period.start.isoformat().replace("+00:00", "Z")),
                ("ending_at", period.end.isoformat().replace("+00:00", "Z")), ("bucket_width", "1d")]
        costs = list(_paged(provider, config, "/v1/organizations/cost_report",
                            span + [("group_by[]", "workspace_id"), ("group_by[]", "description")], auth, sleep, rng))
        usage = list(_paged(provider, config, "/v1/organizations/usage_report/messages",
                            span + [("group_by[]", "model"), ("group_by[]", "workspace_id"),
                                    ("group_by[]", "api_key_id")], auth, sleep, rng))
        report = parse_report_pages(provider, costs, usage, f"{provider} API")
    else:
        auth = {"Authorization": f"Bearer {config.key}"}
        pages = [doc for day in period.day_list()
                 for doc in _paged(provider, config, "/api/v1/activity", [("date", day.isoformat())], auth, sleep, rng)]
        report = parse_report_pages(provider, pages, [], f"{provider} API")
    report.days |= set(period.day_list())
    return report


# ---- storing --------------------------------------------------------------------------------------------------------
_BILL_COLUMNS = ("provider", "day", "import_id", "line_no", "account_id", "api_key_id", "model", "line_item",
                 "cost_type", "amount_usd", "currency")
_USAGE_COLUMNS = ("provider", "day", "import_id", "line_no", "account_id", "api_key_id", "model", "input_tokens",
                  "cache_read_tokens", "cache_write_tokens", "output_tokens", "requests", "cost_usd")


def store_report(client: Any, database: str, report: ProviderReport, *, origin: str, now: datetime) -> str:
    """Write the report's lines under a new import id, then make it the current import of every day it covers
    (lines first: a crash in between leaves the previous import current). Returns the import id.

    Every (provider, day) covered records this import as the day's current one (migration 0016); the views read
    only current imports, so re-importing a period replaces it and never adds."""
    import_id = uuid.uuid4().hex
    bills_t, usage_t, imports_t = (qualified(database, t) for t in
                                   ("provider_bills", "provider_usage", "provider_bill_imports"))
    bill_rows = [[report.provider, b.day, import_id, i, b.account_id, b.api_key_id, b.model, b.line_item,
                  b.cost_type, b.amount_usd, b.currency] for i, b in enumerate(report.bills)]
    usage_rows = [[report.provider, u.day, import_id, i, u.account_id, u.api_key_id, u.model, u.input_tokens,
                   u.cache_read_tokens, u.cache_write_tokens, u.output_tokens, u.requests, u.cost_usd]
                  for i, u in enumerate(report.usage)]
    days = sorted(report.days | {b.day for b in report.bills} | {u.day for u in report.usage})
    if bill_rows:
        client.insert(bills_t.split(".")[1], bill_rows, column_names=list(_BILL_COLUMNS), database=database)
    if usage_rows:
        client.insert(usage_t.split(".")[1], usage_rows, column_names=list(_USAGE_COLUMNS), database=database)
    if days:
        client.insert(imports_t.split(".")[1], [[report.provider, d, import_id, now, origin] for d in days],
                      column_names=["provider", "day", "import_id", "imported_at", "origin"], database=database)
    return import_id


# ---- reconciliation -------------------------------------------------------------------------------------------------
CellKey = tuple[date, str, str]  # day, provider, model


@dataclass(frozen=True, slots=True)
class ReconciliationCell:
    day: date
    provider: str
    model: str
    account_id: str
    project: str
    team: str
    status: str
    bill_usd: Decimal
    ledger_usd: Decimal
    api_keys: tuple[str, ...] = ()
    bill_input_tokens: int = 0
    ledger_input_tokens: int = 0
    bill_output_tokens: int = 0
    ledger_output_tokens: int = 0

    @property
    def gap_usd(self) -> Decimal:
        return self.bill_usd - self.ledger_usd

    @property
    def attributed_usd(self) -> Decimal:
        return min(self.bill_usd, self.ledger_usd)

    @property
    def unattributed_usd(self) -> Decimal:
        return max(self.gap_usd, _ZERO)

    @property
    def over_reported_usd(self) -> Decimal:
        return max(-self.gap_usd, _ZERO)


@dataclass(slots=True)
class ReconciliationReport:
    period: str
    cells: list[ReconciliationCell]
    tolerance_usd: Decimal
    tolerance_pct: Decimal

    def totals(self, provider: str | None = None) -> dict[str, Decimal]:
        cells = [c for c in self.cells if provider is None or c.provider == provider]
        return {
            "bill_usd": sum((c.bill_usd for c in cells), _ZERO),
            "ledger_usd": sum((c.ledger_usd for c in cells), _ZERO),
            "matched_usd": sum((c.attributed_usd for c in cells if c.status == "matched"), _ZERO),
            "attributed_usd": sum((c.attributed_usd for c in cells), _ZERO),
            "unattributed_usd": sum((c.unattributed_usd for c in cells if c.status != "matched"), _ZERO),
            "over_reported_usd": sum((c.over_reported_usd for c in cells if c.status != "matched"), _ZERO),
        }

    def gaps(self) -> list[ReconciliationCell]:
        """Cells outside the tolerance, biggest absolute gap first."""
        return sorted((c for c in self.cells if c.status != "matched"),
                      key=lambda c: (-abs(c.gap_usd), c.day, c.provider, c.model, c.account_id))

    def unattributed_by_key(self) -> dict[str, Decimal]:
        """Unattributed spend per API key (or account when the provider names no key), biggest first."""
        out: dict[str, Decimal] = defaultdict(lambda: _ZERO)
        for c in self.cells:
            if c.status in ("unattributed", "under_reported"):
                who = ",".join(c.api_keys) or c.account_id or "(not reported)"
                out[who] += c.unattributed_usd
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True, slots=True)
class LedgerCell:
    day: date
    provider: str
    model: str
    project: str
    team: str
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BillCell:
    day: date
    provider: str
    model: str
    account_id: str
    amount_usd: Decimal
    input_tokens: int = 0
    output_tokens: int = 0
    api_keys: tuple[str, ...] = ()


def _within(bill: Decimal, ledger: Decimal, tol_usd: Decimal, tol_pct: Decimal) -> bool:
    return abs(bill - ledger) <= max(tol_usd, abs(bill) * tol_pct / 100)


def compute_reconciliation(period: str, bills: Sequence[BillCell], ledger: Sequence[LedgerCell],
                           accounts: Mapping[str, str], *, tolerance_usd: Decimal,
                           tolerance_pct: Decimal) -> ReconciliationReport:
    """Pure: the bill cells against the ledger cells.

    An account (project / workspace) maps to a ledger project through ``FINOPS_BILLS_ACCOUNTS`` or, when not mapped,
    by name; a bill line without an account is compared with the ledger's spend that no account claimed. Each cell
    is matched (within the tolerance), under_reported (the bill is higher: the excess is unattributed spend),
    over_reported (the ledger is higher) or unattributed (nothing in the ledger: an agent, key or project that is
    not instrumented), with the API keys the provider's usage names for it."""
    by_key: dict[CellKey, dict[str, LedgerCell]] = defaultdict(dict)
    for lc in ledger:
        by_key[(lc.day, lc.provider, lc.model)][lc.project] = lc
    claimed: set[tuple[CellKey, str]] = set()
    cells: list[ReconciliationCell] = []

    def status(bill: Decimal, led: Decimal) -> str:
        if _within(bill, led, tolerance_usd, tolerance_pct):
            return "matched"
        if led == 0:
            return "unattributed"
        return "under_reported" if bill > led else "over_reported"

    pooled: list[BillCell] = []
    for bc in bills:
        key = (bc.day, bc.provider, bc.model)
        if not bc.account_id:
            pooled.append(bc)
            continue
        project = accounts.get(bc.account_id, bc.account_id)
        match = by_key.get(key, {}).get(project)
        if match is not None and (key, project) not in claimed:
            claimed.add((key, project))
            cells.append(ReconciliationCell(bc.day, bc.provider, bc.model, bc.account_id, project, match.team,
                                            status(bc.amount_usd, match.cost_usd), bc.amount_usd, match.cost_usd,
                                            bc.api_keys, bc.input_tokens, match.input_tokens, bc.output_tokens,
                                            match.output_tokens))
        else:
            cells.append(ReconciliationCell(bc.day, bc.provider, bc.model, bc.account_id, "", "",
                                            status(bc.amount_usd, _ZERO), bc.amount_usd, _ZERO, bc.api_keys,
                                            bc.input_tokens, 0, bc.output_tokens, 0))
    # Lines without an account (the provider did not group by project, or OpenRouter): against the ledger spend of
    # the same day, provider and model that no account claimed.
    for bc in pooled:
        key = (bc.day, bc.provider, bc.model)
        rest = [lc for p, lc in by_key.get(key, {}).items() if (key, p) not in claimed]
        for lc in rest:
            claimed.add((key, lc.project))
        led = sum((lc.cost_usd for lc in rest), _ZERO)
        projects = sorted({lc.project for lc in rest})
        teams = sorted({lc.team for lc in rest})
        cells.append(ReconciliationCell(
            bc.day, bc.provider, bc.model, "", projects[0] if len(projects) == 1 else ",".join(projects),
            teams[0] if len(teams) == 1 else ",".join(teams), status(bc.amount_usd, led), bc.amount_usd, led,
            bc.api_keys, bc.input_tokens, sum(lc.input_tokens for lc in rest), bc.output_tokens,
            sum(lc.output_tokens for lc in rest)))
    for key, by_project in by_key.items():
        for name, lc in by_project.items():
            if (key, name) not in claimed:
                cells.append(ReconciliationCell(lc.day, lc.provider, lc.model, "", name, lc.team,
                                                status(_ZERO, lc.cost_usd), _ZERO, lc.cost_usd, (), 0,
                                                lc.input_tokens, 0, lc.output_tokens))
    cells.sort(key=lambda c: (c.day, c.provider, c.model, c.account_id, c.project))
    return ReconciliationReport(period, cells, tolerance_usd, tolerance_pct)


def load_reconciliation_inputs(client: Any, database: str, period: Period) -> tuple[list[BillCell], list[LedgerCell]]:
    """The period's bill cells (current imports) and the ledger cells of the providers that have a bill."""
    params = {"start": period.start.date(), "end": period.end.date(),
              "lo": period.start.replace(tzinfo=None), "hi": period.end.replace(tzinfo=None)}
    bills_t, usage_t, ledger_t = (qualified(database, t) for t in ("v_provider_bills", "v_provider_usage",
                                                                     "usage_ledger"))
    imports_t = qualified(database, "provider_bill_imports")
    cost_rows = client.query(
        f"SELECT day, provider, model, account_id, sum(amount_usd), "
        f"arraySort(groupUniqArrayIf(api_key_id, api_key_id != '')) FROM {bills_t} "
        "WHERE day >= {start:Date} AND day < {end:Date} GROUP BY day, provider, model, account_id",
        parameters=params).result_rows
    usage_rows = client.query(
        f"SELECT day, provider, model, account_id, sum(input_tokens), sum(output_tokens), "
        f"arrayFilter(k -> k != '', arrayMap(t -> t.2, arrayReverseSort(t -> t.1, "
        f"groupArray((input_tokens + output_tokens, api_key_id))))) FROM {usage_t} "
        "WHERE day >= {start:Date} AND day < {end:Date} GROUP BY day, provider, model, account_id",
        parameters=params).result_rows
    usage = {(r[0], r[1], r[2], r[3]): r for r in usage_rows}
    bills: list[BillCell] = []
    for day, provider, model, account, amount, bill_keys in cost_rows:
        u = usage.get((day, provider, model, account))
        # the usage report's keys (largest first), then keys only the cost lines name (OpenRouter)
        keys = tuple(dict.fromkeys([*(u[6] if u else ()), *bill_keys]))
        bills.append(BillCell(day, provider, model, account, Decimal(amount), int(u[4]) if u else 0,
                              int(u[5]) if u else 0, keys))
    ledger_rows = client.query(
        f"SELECT toDate(occurred_at) AS day, provider, model, project, argMax(team, cost_usd), sum(cost_usd), "
        f"sumIf(input_tokens, row_kind = 'original'), sumIf(output_tokens, row_kind = 'original') "
        f"FROM {ledger_t} FINAL WHERE occurred_at >= {{lo:DateTime64(6)}} AND occurred_at < {{hi:DateTime64(6)}} "
        f"AND provider IN (SELECT DISTINCT provider FROM {imports_t} FINAL "
        "WHERE day >= {start:Date} AND day < {end:Date}) "
        "GROUP BY day, provider, model, project", parameters=params).result_rows
    ledger = [LedgerCell(r[0], r[1], r[2], r[3], r[4], Decimal(r[5]), int(r[6]), int(r[7])) for r in ledger_rows]
    return bills, ledger


_RECON_COLUMNS = ("period", "run_id", "run_at", "day", "provider", "model", "account_id", "api_keys", "team",
                  "project", "status", "bill_usd", "ledger_usd", "gap_usd", "attributed_usd", "unattributed_usd",
                  "over_reported_usd", "bill_input_tokens", "ledger_input_tokens", "bill_output_tokens",
                  "ledger_output_tokens")


def store_reconciliation(client: Any, database: str, report: ReconciliationReport, *, now: datetime) -> str:
    """Write the run's cells (the latest run of a period is the one v_bill_reconciliation shows). Returns run id."""
    run_id = uuid.uuid4().hex
    rows = [[report.period, run_id, now, c.day, c.provider, c.model, c.account_id, list(c.api_keys), c.team,
             c.project, c.status, c.bill_usd, c.ledger_usd, c.gap_usd, c.attributed_usd, c.unattributed_usd,
             c.over_reported_usd, c.bill_input_tokens, c.ledger_input_tokens, c.bill_output_tokens,
             c.ledger_output_tokens] for c in report.cells]
    if rows:
        client.insert("bill_reconciliation", rows, column_names=list(_RECON_COLUMNS),
                      database=qualified(database, "bill_reconciliation").split(".")[0])
    return run_id


def _usd(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.000001')):,}"


def render_reconciliation(report: ReconciliationReport, *, top: int = 20) -> str:
    """The text report: per provider the bill, the ledger, matched / unattributed / over-reported spend and the
    attributed share, then the biggest gaps with their keys or projects."""
    lines = [f"Bill vs ledger, {report.period} (tolerance {report.tolerance_usd} USD or {report.tolerance_pct} %)"]
    providers = sorted({c.provider for c in report.cells})
    lines.append(f"{'provider':<11} {'bill USD':>14} {'ledger USD':>14} {'matched':>14} {'unattributed':>14} "
                 f"{'over-reported':>14} {'attributed':>10}")
    for p in [*providers, None]:
        t = report.totals(p)
        share = f"{(t['attributed_usd'] / t['bill_usd'] * 100).quantize(Decimal('0.1'))} %" if t["bill_usd"] else "-"
        lines.append(f"{p or 'total':<11} {_usd(t['bill_usd']):>14} {_usd(t['ledger_usd']):>14} "
                     f"{_usd(t['matched_usd']):>14} {_usd(t['unattributed_usd']):>14} "
                     f"{_usd(t['over_reported_usd']):>14} {share:>10}")
    gaps = report.gaps()
    lines.append("")
    lines.append(f"Gaps beyond the tolerance: {len(gaps)}" + (" (biggest first)" if gaps else ""))
    for c in gaps[:top]:
        who = (f"keys {','.join(c.api_keys)}" if c.api_keys else "") + \
              (f" account {c.account_id}" if c.account_id else "") + (f" project {c.project}" if c.project else "")
        lines.append(f"  {c.day} {c.provider}/{c.model} {c.status}: bill {_usd(c.bill_usd)} ledger "
                     f"{_usd(c.ledger_usd)} gap {_usd(c.gap_usd)} ({who.strip() or 'not reported'})")
    by_key = report.unattributed_by_key()
    if by_key:
        lines.append("")
        lines.append("Unattributed spend by key / account (not instrumented):")
        for who, amount in by_key.items():
            lines.append(f"  {who}: {_usd(amount)} USD")
    return "\n".join(lines) + "\n"


def build_bill_drift_alerts(report: ReconciliationReport, now: datetime) -> list[dict[str, Any]]:
    """One ``bill_drift`` Alert (Avro dict for finops.alerts.v1) per provider whose bill and ledger differ beyond
    the tolerance over the period. Dedup key ``bill_drift:<provider>:<period>``: a rerun repeats, never piles up."""
    alerts: list[dict[str, Any]] = []
    for provider in sorted({c.provider for c in report.cells}):
        t = report.totals(provider)
        drift = t["unattributed_usd"] + t["over_reported_usd"]
        if _within(t["bill_usd"], t["bill_usd"] - drift, report.tolerance_usd, report.tolerance_pct):
            continue
        keys = report.unattributed_by_key()
        top = ", ".join(f"{k} {_usd(v)}" for k, v in list(keys.items())[:5])
        dedup = f"bill_drift:{provider}:{report.period}"
        alerts.append({
            "alert_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "finops:" + dedup)), "dedup_key": dedup,
            "kind": "bill_drift", "severity": "warning", "state": "trigger", "occurred_at": now,
            "team": None, "project": None, "agent_id": None, "policy_id": None, "model": None,
            "title": f"{provider} bill and ledger differ for {report.period}",
            "summary": (f"{provider} billed {_usd(t['bill_usd'])} USD for {report.period}; the ledger explains "
                        f"{_usd(t['attributed_usd'])} USD. Unattributed {_usd(t['unattributed_usd'])} USD"
                        + (f" (from {top})" if top else "") + f", over-reported {_usd(t['over_reported_usd'])} USD. "
                        "Fix: instrument the keys or projects named, or map them with FINOPS_BILLS_ACCOUNTS; run "
                        f"finops bills reconcile --period {report.period} for the cells."),
            "amount_usd": drift, "limit_usd": None,
            "details": {"provider": provider, "period": report.period,
                        **{k: str(v) for k, v in t.items()}},
            "actions": [],
        })
    return alerts


def parse_accounts(value: Mapping[str, str]) -> dict[str, str]:
    bad = [k for k, v in value.items() if not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"FINOPS_BILLS_ACCOUNTS: {', '.join(bad)} must map to a ledger project name")
    return dict(value)


def days_between(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def build_bill_from_ledger(client: Any, database: str, period: Period, *, providers: Sequence[Provider] = (
        "openai", "anthropic"), uninstrumented_pct: Decimal = Decimal(3)) -> list[ProviderReport]:
    """For the demo (``finops bills demo-seed``): the reports a provider would send for ``period``, built from the
    ledger (per day, model and project, the project as the account and ``key-<project>`` as its key), plus one
    uninstrumented key (``key-uninstrumented`` in ``wrkspc_uninstrumented``) billed ``uninstrumented_pct`` % of
    each provider's spend on its first day, so the reconciliation has a gap to show."""
    rows = client.query(
        f"SELECT toDate(occurred_at) AS day, provider, model, project, sum(cost_usd), "
        f"sumIf(input_tokens, row_kind = 'original'), sumIf(output_tokens, row_kind = 'original') "
        f"FROM {qualified(database, 'usage_ledger')} FINAL WHERE occurred_at >= {{lo:DateTime64(6)}} "
        "AND occurred_at < {hi:DateTime64(6)} AND provider IN {providers:Array(String)} "
        "GROUP BY day, provider, model, project ORDER BY day, provider, model, project",
        parameters={"lo": period.start.replace(tzinfo=None), "hi": period.end.replace(tzinfo=None),
                    "providers": list(providers)}).result_rows
    reports: dict[str, ProviderReport] = {}
    for day, provider, model, project, cost, tokens_in, tokens_out in rows:
        report = reports.setdefault(provider, ProviderReport(provider))
        key = f"key-{project}"
        report.bills.append(BillLine(day, Decimal(cost), account_id=project, model=model, cost_type="tokens"))
        report.usage.append(UsageLine(day, model, int(tokens_in), int(tokens_out), account_id=project,
                                      api_key_id=key))
    for report in reports.values():
        total = sum((b.amount_usd for b in report.bills), _ZERO)
        first = min(b.day for b in report.bills)
        model = max(report.bills, key=lambda b: b.amount_usd).model
        extra = (total * uninstrumented_pct / 100).quantize(_CENT)
        if extra > 0:
            report.bills.append(BillLine(first, extra, account_id="wrkspc_uninstrumented", model=model,
                                         cost_type="tokens"))
            report.usage.append(UsageLine(first, model, 0, 0, account_id="wrkspc_uninstrumented",
                                          api_key_id="key-uninstrumented"))
        report.days |= set(period.day_list())
    return list(reports.values())
