"""Price drift: when reported costs and the catalogue disagree consistently, solve the unit rates and propose the fix.

Role: pure logic (no Kafka, no ClickHouse, no clock). Per (provider, model, source), compare the reported cost with
the computed one; when at least ``min_share`` of at least ``min_calls`` reporting calls disagree (beyond the
Pricer's tolerance, or unpriced), solve the unit prices from their token counts and reported costs
(:func:`solve_price_set`) and propose a price-book override effective from the first disagreeing call.

Guarantee: the solve is exact (``fractions.Fraction``, no float anywhere); a rate no call determines is never
invented: the suggestion keeps the catalogue's price and says so, and columns that cannot be told apart are
reported as underdetermined. See DESIGN §4 and the README, "Pricing".
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal
from fractions import Fraction
from typing import Any

from schemas.errors import FinopsError

__all__ = [
    "COLUMNS",
    "DriftCall",
    "DriftSuggestion",
    "DriftWatcher",
    "RateSolution",
    "compute_drift",
    "compute_price_drift_alert",
    "render_price_book",
    "solve_price_set",
    "solve_rates",
]

#: (price key, what the column counts), in the order the Pricer bills them.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("input_mtok", "uncached input tokens (input - cache reads - cache writes)"),
    ("cache_read_mtok", "cache reads"),
    ("cache_write_mtok", "5-minute cache writes (cache writes - 1-hour writes)"),
    ("cache_write_1h_mtok", "1-hour cache writes"),
    ("output_mtok", "output tokens (reasoning included)"),
)
_MTOK = Fraction(1_000_000)

#: price key -> (base per MTok, ((start, price per MTok), ...) ascending): ``Pricer.price_tiers``.
TierTable = Mapping[str, tuple[Decimal, tuple[tuple[int, Decimal], ...]]]


@dataclass(frozen=True)
class DriftCall:
    """One call with a reported cost: its leaf counts (see :data:`COLUMNS`) and both costs."""

    provider: str
    model: str
    source: str
    occurred_at: datetime
    event_id: str
    counts: tuple[int, int, int, int, int]
    reported: Decimal
    computed: Decimal | None
    disagrees: bool
    catalogue_rates: Mapping[str, Decimal | None] = field(default_factory=dict)
    #: The tiered prices that priced the call (``Pricer.price_tiers``): their thresholds shape the solve.
    tiers: TierTable = field(default_factory=dict)

    @property
    def input_total(self) -> int:
        """All input tokens (cache included): what a tier's ``start`` is compared with."""
        return self.counts[0] + self.counts[1] + self.counts[2] + self.counts[3]

    @classmethod
    def from_event(cls, event: Mapping[str, Any], computed: Decimal | None, disagrees: bool,
                   catalogue_rates: Mapping[str, Decimal | None] | None = None,
                   tiers: TierTable | None = None) -> DriftCall:  # fmt: skip
        """From a usage (or priced) mapping with canonical counts and ``reported_cost``."""

        def n(name: str) -> int:
            return int(event.get(name) or 0)

        write_1h = n("cache_write_1h_tokens")
        counts = (
            n("input_tokens") - n("cache_read_tokens") - n("cache_write_tokens"), n("cache_read_tokens"),
            n("cache_write_tokens") - write_1h, write_1h, n("output_tokens"),
        )  # fmt: skip
        return cls(
            str(event.get("provider") or ""), str(event.get("model") or ""), str(event.get("source") or ""),
            event["occurred_at"], str(event.get("event_id") or ""), counts, Decimal(event["reported_cost"]),
            computed, disagrees, dict(catalogue_rates or {}), dict(tiers or {}),
        )  # fmt: skip


@dataclass
class DriftSuggestion:
    """The outcome for one (provider, model, source)."""

    provider: str
    model: str
    source: str
    calls: int
    disagreeing: int
    effective_from: datetime | None = None
    effective_from_text: str = ""
    rates: dict[str, Decimal] = field(default_factory=dict)
    from_catalogue: dict[str, Decimal] = field(default_factory=dict)
    max_residual: Decimal | None = None
    exact: bool = False
    problem: str | None = None
    catalogue_rates: dict[str, Decimal | None] = field(default_factory=dict)
    #: Tier thresholds used, by price key; solved tier rates and catalogue fills by price key and start.
    tiers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tier_rates: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    tier_from_catalogue: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    #: Tiers (or tiered bases) no call reached, as "input_mtok above 200000 input tokens".
    undetermined: list[str] = field(default_factory=list)
    catalogue_tiers: dict[str, tuple[Decimal, tuple[tuple[int, Decimal], ...]]] = field(default_factory=dict)

    @property
    def solved(self) -> bool:
        """Some rate was solved (flat or per tier)."""
        return bool(self.rates or self.tier_rates)

    def rate_summary(self) -> str:
        """``input_mtok 1.25, input_mtok>200000 2.5, ...`` (solved rates only)."""
        parts = []
        for key, _ in COLUMNS:
            if key in self.rates:
                parts.append(f"{key} {self.rates[key]}")
            parts += [f"{key}>{start} {rate}" for start, rate in sorted(self.tier_rates.get(key, {}).items())]
        return ", ".join(parts)

    @property
    def drifting(self) -> bool:
        return self.effective_from is not None


def _solve_exact(rows: Sequence[Sequence[Fraction]], rhs: Sequence[Fraction]) -> list[Fraction] | None:
    """Least-squares solution of ``rows x = rhs`` (normal equations, exact); None when singular."""
    n = len(rows[0])
    a = [[sum((r[i] * r[j] for r in rows), Fraction(0)) for j in range(n)] for i in range(n)]
    b = [sum((r[i] * y for r, y in zip(rows, rhs, strict=True)), Fraction(0)) for i in range(n)]
    for col in range(n):
        pivot = next((row for row in range(col, n) if a[row][col] != 0), None)
        if pivot is None:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        inv = 1 / a[col][col]
        a[col] = [v * inv for v in a[col]]
        b[col] *= inv
        for row in range(n):
            if row != col and a[row][col] != 0:
                factor = a[row][col]
                a[row] = [v - factor * p for v, p in zip(a[row], a[col], strict=True)]
                b[row] -= factor * b[col]
    return b


def _dependent(matrix: Sequence[Sequence[int]], active: Sequence[int]) -> list[int]:
    """Columns (indexes into ``active``) that are linear combinations of earlier ones over ``matrix``'s rows."""
    basis: list[list[Fraction]] = []  # reduced column vectors, with their pivot row
    pivots: list[int] = []
    dependent: list[int] = []
    for k in range(len(active)):
        vec = [Fraction(row[active[k]]) for row in matrix]
        for base, p in zip(basis, pivots, strict=True):
            if vec[p]:
                f = vec[p] / base[p]
                vec = [v - f * b for v, b in zip(vec, base, strict=True)]
        pivot = next((i for i, v in enumerate(vec) if v), None)
        if pivot is None:
            dependent.append(k)
        else:
            basis.append(vec)
            pivots.append(pivot)
    return dependent


@dataclass
class RateSolution:
    """What :func:`solve_price_set` found: per-million rates, flat (``rates``: the base tier of a tiered key) and
    per tier (``tier_rates``: price key -> tier start -> rate), the largest residual in USD over the calls, whether
    every call is within tolerance, a problem (or None), and the tiers no call reached (``undetermined``)."""

    rates: dict[str, Decimal] = field(default_factory=dict)
    tier_rates: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    max_residual: Decimal = Decimal(0)
    exact: bool = False
    problem: str | None = None
    undetermined: list[str] = field(default_factory=list)


def _tier_of(total_input: int, starts: Sequence[int]) -> int:
    """genai-prices' cliff rule: the index of the highest start ``total_input`` strictly exceeds (1-based), else 0."""
    tier = 0
    for index, start in enumerate(starts, start=1):
        if total_input > start:
            tier = index
    return tier


def solve_price_set(
    calls: Sequence[DriftCall], *, tier_starts: Mapping[str, Sequence[int]] | None = None,
    tolerance: Decimal = Decimal("1e-9"),
) -> RateSolution:  # fmt: skip
    """Per-million rates that reproduce ``calls``, with one rate per tier for the price keys in ``tier_starts``
    (ascending thresholds). Columns no call exercises are left out; a tier whose key other calls exercise but no
    call reaches is named in ``undetermined``.

    Every call is one linear equation ``sum(rate_c x count_c) = reported`` over the leaf counts the Pricer bills
    (uncached input, cache reads, 5-minute writes, 1-hour writes, output), solved by least squares in ``Fraction``
    (normal equations, Gauss-Jordan). Published prices are short decimals, so the rates are then rounded to the
    fewest decimal places (0..12) that reproduce every call within ``tolerance``; when none does, the exact solution
    (12 places) is returned with the largest residual, which means one price set does not explain the calls (a
    price change inside the window, rounded reports, a per-request fee, tiers the catalogue does not know).

    Tiers follow genai-prices' rule (a call whose ``input_tokens``, cache included, is strictly greater than a
    tier's ``start`` pays that tier's rate for all its tokens of the unit; the highest start exceeded wins): the
    design matrix has one column per (price key, tier), holding the call's leaf count in the column of the tier its
    prompt size selects and 0 in the others. Columns whose counts move together in every call (always the same
    cache share, say) are reported as underdetermined, naming them, instead of inventing a split."""
    starts_by_key = {key: tuple(sorted(v)) for key, v in (tier_starts or {}).items() if v}
    # Expanded columns: (leaf column index, price key, tier start or None for the base / a flat price).
    columns: list[tuple[int, str, int | None]] = []
    for c, (key, _) in enumerate(COLUMNS):
        columns.append((c, key, None))
        columns += [(c, key, start) for start in starts_by_key.get(key, ())]
    matrix: list[list[int]] = []
    for call in calls:
        tiers = {key: _tier_of(call.input_total, st) for key, st in starts_by_key.items()}
        row = []
        for c, key, start in columns:
            st = starts_by_key.get(key, ())
            wanted = 0 if start is None else st.index(start) + 1
            row.append(call.counts[c] if tiers.get(key, 0) == wanted else 0)
        matrix.append(row)

    def label(j: int) -> str:
        _c, key, start = columns[j]
        if start is None:
            return key if key not in starts_by_key else f"{key} (up to {starts_by_key[key][0]} input tokens)"
        return f"{key} above {start} input tokens"

    active = [j for j in range(len(columns)) if any(row[j] for row in matrix)]
    exercised = {columns[j][1] for j in active}
    undetermined = [
        f"{label(j)}: no call {'reaches that tier' if columns[j][2] is not None else 'at or below the threshold'}"
        for j in range(len(columns))
        if j not in active and columns[j][1] in exercised
    ]
    out = RateSolution(undetermined=undetermined)
    if not active:
        out.problem = "the calls carry no tokens to solve from"
        return out
    rows = [[Fraction(row[j]) for j in active] for row in matrix]
    rhs = [Fraction(call.reported) for call in calls]
    solution = _solve_exact(rows, rhs)
    if solution is None:
        names = [label(active[k]) for k in _dependent(matrix, active)]
        out.problem = (
            f"underdetermined: {', '.join(names)} move together with other columns in every call; calls with "
            "different mixes of input, cache and output are needed to tell their prices apart"
        )
        return out
    per_mtok = [x * _MTOK for x in solution]
    tol = Fraction(tolerance)

    def residual(rates: Sequence[Fraction]) -> Fraction:
        worst = Fraction(0)
        for row, y in zip(rows, rhs, strict=True):
            off = abs(sum((r * x / _MTOK for r, x in zip(row, rates, strict=True)), Fraction(0)) - y)
            worst = max(worst, off)
        return worst

    def assign(values: Sequence[Fraction], places: int) -> None:
        for j, x in zip(active, values, strict=True):
            _c, key, start = columns[j]
            if start is None:
                out.rates[key] = _decimal(x, places)
            else:
                out.tier_rates.setdefault(key, {})[start] = _decimal(x, places)

    for places in range(13):
        quantum = Fraction(1, 10**places)
        rounded = [round(x / quantum) * quantum for x in per_mtok]
        if any(x < 0 for x in rounded):
            continue
        worst = residual(rounded)
        if worst <= tol:
            assign(rounded, places)
            out.max_residual, out.exact = _decimal(worst, 15), True
            return out
    exact_12 = [round(x * 10**12) / Fraction(10**12) for x in per_mtok]
    worst = residual(exact_12)
    assign(exact_12, 12)
    out.max_residual = _decimal(worst, 15)
    shape = "one price set with the catalogue's tiers" if starts_by_key else "no flat price set"
    out.problem = (
        f"{shape} reproduces every call within {tolerance} USD (largest residual {out.max_residual} USD): "
        "a price change inside the window, a per-request fee, rounded reports or tiers the catalogue does not know"
    )
    if any(x < 0 for x in exact_12):
        out.problem = "the least-squares rates are negative: the reports are not a price set over these token counts"
    return out


def solve_rates(
    calls: Sequence[DriftCall], *, tolerance: Decimal = Decimal("1e-9")
) -> tuple[dict[str, Decimal], Decimal, bool, str | None]:
    """One flat price set (no tiers) for ``calls``: ``(rates by price key, max residual in USD, every call within
    tolerance, problem or None)``; :func:`solve_price_set` is the general form."""
    found = solve_price_set(calls, tolerance=tolerance)
    return found.rates, found.max_residual, found.exact, found.problem


def _decimal(value: Fraction, places: int) -> Decimal:
    scaled = round(value * 10**places)
    return (Decimal(scaled).scaleb(-places)).normalize() if scaled else Decimal(0)


def compute_drift(
    calls: Iterable[DriftCall], *, min_calls: int = 3, min_share: Decimal = Decimal("0.5"),
    tolerance: Decimal = Decimal("1e-9"),
) -> list[DriftSuggestion]:  # fmt: skip
    """One :class:`DriftSuggestion` per (provider, model, source) with reported costs, drifting or not, sorted.

    Drifting: at least ``min_calls`` calls with a report and at least ``min_share`` of them disagree. The rates are
    solved from the calls from the first disagreeing one on (earlier calls were right at the old price)."""
    groups: dict[tuple[str, str, str], list[DriftCall]] = {}
    for call in calls:
        groups.setdefault((call.provider, call.model, call.source), []).append(call)
    out: list[DriftSuggestion] = []
    for (provider, model, source), members in sorted(groups.items()):
        members.sort(key=lambda c: (c.occurred_at, c.event_id))
        disagreeing = [c for c in members if c.disagrees]
        suggestion = DriftSuggestion(provider, model, source, len(members), len(disagreeing))
        catalogue = next((c.catalogue_rates for c in reversed(members) if c.catalogue_rates), {})
        suggestion.catalogue_rates = dict(catalogue)
        out.append(suggestion)
        if len(members) < min_calls or Decimal(len(disagreeing)) < min_share * len(members) or not disagreeing:
            continue
        first = disagreeing[0]
        since = [c for c in members if (c.occurred_at, c.event_id) >= (first.occurred_at, first.event_id)]
        start = first.occurred_at.astimezone(UTC)
        midnight = datetime.combine(start.date(), time(0), tzinfo=UTC)
        agreed_that_day = any(
            not c.disagrees and midnight <= c.occurred_at.astimezone(UTC) < start for c in members
        )
        suggestion.effective_from = start if agreed_that_day else midnight
        suggestion.effective_from_text = start.isoformat().replace("+00:00", "Z") if agreed_that_day else (
            start.date().isoformat()
        )
        # The thresholds of the prices that priced the latest call (the catalogue's, or a tiered book entry's).
        table: TierTable = next((c.tiers for c in reversed(since) if c.tiers), {})
        suggestion.tiers = {key: tuple(start for start, _ in tiers) for key, (_, tiers) in table.items()}
        suggestion.catalogue_tiers = dict(table)
        found = solve_price_set(since, tier_starts=suggestion.tiers, tolerance=tolerance)
        suggestion.rates, suggestion.tier_rates = found.rates, found.tier_rates
        suggestion.max_residual, suggestion.exact, suggestion.problem = found.max_residual, found.exact, found.problem
        suggestion.undetermined = found.undetermined
        for key, _ in COLUMNS:
            if key in table:
                base, tiers = table[key]
                if key not in found.rates:
                    suggestion.from_catalogue[key] = base
                solved = found.tier_rates.get(key, {})
                kept = {start: price for start, price in tiers if start not in solved}
                if kept:
                    suggestion.tier_from_catalogue[key] = kept
                continue
            value = catalogue.get(key)
            if key not in found.rates and value is not None:
                suggestion.from_catalogue[key] = value
    return out


def render_price_book(suggestions: Iterable[DriftSuggestion], *, version: str) -> str:
    """The drifting suggestions as a price book (YAML, ready for ``FINOPS_STREAM_PRICE_BOOK``), with comments that
    say what was solved from how many calls and what the catalogue had."""
    drifting = [s for s in suggestions if s.drifting and s.solved]
    lines = [
        "# Suggested by finops pricebook suggest: unit prices solved from reported costs where they disagree with the",
        "# catalogue. Review, merge into your price book (or use as is), then `finops reprice` to correct history.",
        f'version: "{version}"',
    ]
    if not drifting:
        lines.append("overrides: []")
        return "\n".join(lines) + "\n"
    lines.append("overrides:")
    for s in drifting:
        verdict = (f"reproduces every call within 1e-9 USD (largest residual {s.max_residual})" if s.exact
                   else f"WARNING: {s.problem}")  # fmt: skip
        lines.append(f"  # {s.disagreeing} of {s.calls} reported calls from source {s.source!r} disagree; {verdict}")
        if s.tiers:
            rule = ", ".join(f"{key} at {', '.join(map(str, starts))}" for key, starts in s.tiers.items())
            lines.append(f"  # tiers (the catalogue's thresholds: {rule}): a call with more input tokens than a "
                         "start pays that tier's rate on all its tokens of the unit")  # fmt: skip
        lines.extend(f"  # NOT DETERMINED: {item}; the catalogue's rate is kept for it" for item in s.undetermined)
        had = {k: str(v) for k, v in s.catalogue_rates.items() if v is not None}
        for k, (base, tiers) in s.catalogue_tiers.items():
            had[k] = f"{base} ({', '.join(f'>{start}: {price}' for start, price in tiers)})"
        old = ", ".join(f"{k} {v}" for k, v in had.items()) or "no entry (unpriced)"
        lines.append(f"  # catalogue had: {old}")
        lines.append(f"  - provider: {_yaml_text(s.provider)}")
        lines.append(f"    model: {_yaml_text(s.model)}")
        lines.append(f"    effective_from: {s.effective_from_text}")
        lines.append("    prices:")
        for key, _ in COLUMNS:
            lines.extend(_render_price(s, key))
        note = f"solved from {s.disagreeing} reported costs ({s.source})"
        lines.append(f"    note: {_yaml_text(note)}")
    return "\n".join(lines) + "\n"


def _render_price(s: DriftSuggestion, key: str) -> list[str]:
    """The YAML lines of one price key: flat, or ``{base, tiers}`` when the solve used tiers for it."""
    kept = "  # from the catalogue: no call exercised it"
    if key in s.rates:
        base, note = s.rates[key], ""
    elif key in s.from_catalogue:
        base, note = s.from_catalogue[key], kept if key not in s.tier_rates else (
            "  # NOT DETERMINED: no call at or below the first threshold; the catalogue's base")
    else:
        return []
    starts = s.tiers.get(key, ())
    if not starts:
        return [f"      {key}: {base}{note}"]
    lines = [f"      {key}:", f"        base: {base}{note}", "        tiers:"]
    for start in starts:
        if start in s.tier_rates.get(key, {}):
            lines.append(f"          - {{start: {start}, price: {s.tier_rates[key][start]}}}")
        elif start in s.tier_from_catalogue.get(key, {}):
            why = ("no call exercised this price" if key not in s.rates and key not in s.tier_rates
                   else f"NOT DETERMINED: no call above {start} input tokens")  # fmt: skip
            lines.append(f"          - {{start: {start}, price: {s.tier_from_catalogue[key][start]}}}  # {why}; "
                         "the catalogue's rate")  # fmt: skip
    return lines


def _yaml_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compute_price_drift_alert(suggestion: DriftSuggestion, yaml_text: str, now: datetime) -> dict[str, Any]:
    """The ``price_drift`` Alert (Avro dict for ``finops.alerts.v1``) for one drifting suggestion. Pure.

    One alert per (provider, model, source, effective date): its dedup key, so a rerun repeats it, never piles up."""
    assert suggestion.effective_from is not None
    day = suggestion.effective_from.date().isoformat()
    dedup_key = f"price_drift:{suggestion.provider}:{suggestion.model}:{suggestion.source}:{day}"
    rates = suggestion.rate_summary()
    summary = (
        f"Price drift on {suggestion.provider}/{suggestion.model} (source {suggestion.source}): "
        f"{suggestion.disagreeing} of {suggestion.calls} reported costs disagree with the catalogue since "
        f"{suggestion.effective_from_text}. Solved prices per MTok: {rates}"
        + ("" if suggestion.exact else f" ({suggestion.problem})")
        + "".join(f"; NOT DETERMINED: {item} (the catalogue's rate kept)" for item in suggestion.undetermined)
        + ". Fix: add this price-book entry (FINOPS_STREAM_PRICE_BOOK), then run finops reprice:\n" + yaml_text
    )
    return {
        "alert_id": str(uuid.uuid5(uuid.UUID(hashlib.sha256(b"finops.price_drift").hexdigest()[:32]), dedup_key)),
        "dedup_key": dedup_key, "kind": "price_drift", "severity": "warning", "state": "trigger",
        "occurred_at": suggestion.effective_from, "team": None, "project": None, "agent_id": None,
        "policy_id": None, "model": f"{suggestion.provider}/{suggestion.model}",
        "title": f"Price drift on {suggestion.provider}/{suggestion.model}: reported costs disagree with the catalogue",
        "summary": summary[:8000], "amount_usd": None, "limit_usd": None,
        "details": {
            "provider": suggestion.provider, "model": suggestion.model, "source": suggestion.source,
            "effective_from": suggestion.effective_from_text, "calls": str(suggestion.calls),
            "disagreeing": str(suggestion.disagreeing), "max_residual_usd": str(suggestion.max_residual),
            "exact": str(suggestion.exact).lower(), **{k: str(v) for k, v in suggestion.rates.items()},
            **{f"{k}>{start}": str(v) for k, by in suggestion.tier_rates.items() for start, v in by.items()},
            "detected_at": now.isoformat(),
        },
        "actions": [],
    }  # fmt: skip


_RATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("input_mtok", "price_input_mtok"), ("cache_read_mtok", "price_cache_read_mtok"),
    ("cache_write_mtok", "price_cache_write_mtok"), ("cache_write_1h_mtok", "price_cache_write_1h_mtok"),
    ("output_mtok", "price_output_mtok"),
)  # fmt: skip


class DriftWatcher:
    """Price drift on the priced stream (detection): the last ``window`` reported calls per (provider, model,
    source); every ``check_every`` new ones of a group, :func:`compute_drift` over them; one ``price_drift`` alert
    per (group, effective date). Bounded: at most ``max_groups`` groups (the least recently seen is dropped).

    The solve is only paid for groups that drift; a group that has alerted is checked less and less often
    (the interval doubles) while nothing changes. Pure: the event's own time stamps the alert, so a replay repeats
    it identically (alerting drops the repeat by its dedup key).

    ``tiers_for`` (a record -> :data:`TierTable`, e.g. ``Pricer.price_tiers``) gives the tier thresholds of a
    tiered model; without it every model is solved as one flat price set (a tiered model then shows a residual)."""

    def __init__(self, *, window: int = 500, min_calls: int = 20, min_share: Decimal = Decimal("0.5"),
                 check_every: int = 50, max_groups: int = 10_000,
                 tiers_for: Callable[[Mapping[str, Any]], TierTable] | None = None) -> None:  # fmt: skip
        self._tiers_for = tiers_for
        self._deque = deque
        self._window = window
        self._min_calls = min_calls
        self._min_share = min_share
        self._check_every = check_every
        self._max_groups = max_groups
        self._groups: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._seen: dict[tuple[str, str, str], int] = {}
        self._next_check: dict[tuple[str, str, str], int] = {}
        self._fired: set[str] = set()

    def observe(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Take one decoded PricedUsageEvent; return the price_drift alerts it completes (usually none)."""
        reported = record.get("reported_cost")
        if reported is None or record.get("row_kind", "original") != "original":
            return []
        key = (str(record.get("provider") or ""), str(record.get("model") or ""), str(record.get("source") or ""))
        calls = self._groups.get(key)
        if calls is None:
            if len(self._groups) >= self._max_groups:
                old, _ = self._groups.popitem(last=False)
                self._seen.pop(old, None)
                self._next_check.pop(old, None)
            calls = self._groups[key] = self._deque(maxlen=self._window)
        else:
            self._groups.move_to_end(key)
        computed = record.get("computed_cost_usd")
        rates = {name: record.get(column) for name, column in _RATE_FIELDS}
        tiers = None
        if self._tiers_for is not None:
            try:
                tiers = self._tiers_for(record)
            except FinopsError:  # a record the Pricer cannot look up: solved flat, as without thresholds
                tiers = None
        calls.append(DriftCall.from_event(record, computed, bool(record.get("cost_mismatch")) or computed is None,
                                          rates, tiers))  # fmt: skip
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if seen < self._next_check.get(key, self._check_every):
            return []
        self._next_check[key] = seen + self._check_every
        (suggestion,) = compute_drift(list(calls), min_calls=self._min_calls, min_share=self._min_share)
        if not suggestion.drifting or not suggestion.solved:
            return []
        assert suggestion.effective_from is not None
        dedup = f"{key}:{suggestion.effective_from.isoformat()}"
        if dedup in self._fired:
            interval = max(self._check_every, (self._next_check[key] - seen) * 2)
            self._next_check[key] = seen + interval
            return []
        self._fired.add(dedup)
        at = record["occurred_at"]
        text = render_price_book([suggestion], version=f"suggested-{at.date().isoformat()}")
        return [compute_price_drift_alert(suggestion, text, at)]
