"""Reconciliation: do the ledger, its rollups, the stream's 1-minute partials and the stream's counters agree?

Role: :func:`compute_reconciliation` compares, for a time range, each source with the ledger (``usage_ledger`` read
with FINAL, so a replayed event counts once: the reference) over the widest range that source can express exactly;
the checks are listed there.

Guarantee: every comparison is exact (Decimal and integers, no tolerance: a rounding difference is a bug); a source
without rows counts as drift only where the ledger has data. See DESIGN §5 and §6.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from finops.clickhouse import check_identifier
from schemas.errors import ConfigError

__all__ = [
    "Comparison",
    "ReconcileReport",
    "Totals",
    "build_drift_alert",
    "compute_reconciliation",
    "floor_to",
    "ceil_to",
]

_METRICS: tuple[str, ...] = ("cost_usd", "calls", "input_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a range; ``None`` for a metric the source does not carry."""

    cost_usd: Decimal
    calls: int
    input_tokens: int | None = None
    output_tokens: int | None = None
    rows: int = 0

    def get(self, metric: str) -> Decimal | int | None:
        value: Decimal | int | None = getattr(self, metric)
        return value


@dataclass(frozen=True, slots=True)
class Comparison:
    """One source against the ledger over ``[start, end)``. ``observed`` is None when the check was skipped."""

    name: str
    start: datetime
    end: datetime
    ledger: Totals
    observed: Totals | None
    note: str = ""

    def differences(self) -> dict[str, Decimal | int]:
        """``observed - ledger`` per metric both sides carry (exact)."""
        if self.observed is None:
            return {}
        out: dict[str, Decimal | int] = {}
        for metric in _METRICS:
            theirs, ours = self.observed.get(metric), self.ledger.get(metric)
            if theirs is None or ours is None:
                continue
            out[metric] = theirs - ours
        return out

    @property
    def drift(self) -> bool:
        return any(diff != 0 for diff in self.differences().values())


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """All comparisons of one run."""

    start: datetime
    end: datetime
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)

    @property
    def drift(self) -> bool:
        return any(c.drift for c in self.comparisons)

    def drifting(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.drift]

    def render(self) -> str:
        """A fixed-width table: one line per check and metric, the ledger value, the source's value, the
        difference (exact) and OK / DRIFT."""
        header = ("check", "range", "metric", "ledger", "source", "difference", "status")
        lines: list[tuple[str, ...]] = []
        for c in self.comparisons:
            span = f"{_iso(c.start)} .. {_iso(c.end)}"
            if c.observed is None:
                lines.append((c.name, span, "-", "-", "-", "-", f"skipped ({c.note})" if c.note else "skipped"))
                continue
            diffs = c.differences()
            for metric in _METRICS:
                if metric not in diffs:
                    continue
                diff = diffs[metric]
                lines.append((
                    c.name, span, metric, _fmt(c.ledger.get(metric)), _fmt(c.observed.get(metric)),
                    _fmt(diff, signed=True), "OK" if diff == 0 else "DRIFT",
                ))
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
               "  ".join("-" * w for w in widths)]
        out.extend("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)
        verdict = "DRIFT: " + ", ".join(c.name for c in self.drifting()) if self.drift else "no drift"
        out.append(f"reconcile {_iso(self.start)} .. {_iso(self.end)}: {verdict}")
        return "\n".join(out)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt(value: Decimal | int | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        text = format(value.normalize() if value != 0 else Decimal(0), "f")
        return ("+" + text) if signed and value > 0 else text
    return f"{value:+d}" if signed and value else str(value)


def floor_to(value: datetime, step: timedelta) -> datetime:
    """``value`` (tz-aware) rounded down to a multiple of ``step`` since the Unix epoch, in UTC. Pure."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((value.astimezone(UTC) - epoch) // step) * step


def ceil_to(value: datetime, step: timedelta) -> datetime:
    """``value`` rounded up to a multiple of ``step`` (unchanged when already aligned). Pure."""
    down = floor_to(value, step)
    return down if down == value.astimezone(UTC) else down + step


# -------------------------------------------------------------------------------------------------- queries


def _one(client: Any, sql: str, parameters: Mapping[str, Any]) -> Sequence[Any]:
    rows: Sequence[Sequence[Any]] = client.query(sql, parameters=dict(parameters)).result_rows
    return rows[0]


def _dec(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


def _ledger_totals(client: Any, db: str, lo: datetime, hi: datetime, *, originals_only: bool) -> Totals:
    where = "occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')}"
    if originals_only:
        where += " AND row_kind = 'original'"
    row = _one(
        client,
        "SELECT sum(cost_usd), countIf(row_kind = 'original'), sum(input_tokens), sum(output_tokens), count() "
        f"FROM {db}.usage_ledger FINAL WHERE {where}",
        {"lo": lo, "hi": hi},
    )
    return Totals(_dec(row[0]), int(row[1]), int(row[2] or 0), int(row[3] or 0), int(row[4]))


def _rollup_totals(client: Any, db: str, table: str, column: str, lo: datetime, hi: datetime) -> Totals:
    # SummingMergeTree: sum() over unmerged partial rows is already exact, no FINAL needed.
    row = _one(
        client,
        f"SELECT sum(cost_usd), sum(calls), sum(input_tokens), sum(output_tokens), count() FROM {db}.{table} "
        f"WHERE {column} >= {{lo:DateTime('UTC')}} AND {column} < {{hi:DateTime('UTC')}}",
        {"lo": lo, "hi": hi},
    )
    return Totals(_dec(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0), int(row[4]))


def _spend_1m_totals(client: Any, db: str, lo: datetime, hi: datetime) -> Totals:
    # Every event is in exactly one team partial per window and source partition, so the team dimension summed over
    # partials is the window total (the other dimensions would count the same events again).
    row = _one(
        client,
        "SELECT sum(cost_usd), sum(calls), sum(input_tokens), sum(output_tokens), count() "
        f"FROM {db}.spend_1m FINAL WHERE dimension = 'team' "
        "AND window_start >= {lo:DateTime64(6, 'UTC')} AND window_start < {hi:DateTime64(6, 'UTC')}",
        {"lo": lo, "hi": hi},
    )
    return Totals(_dec(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0), int(row[4]))


def _counter_totals(client: Any, db: str, lo: datetime, hi: datetime) -> Totals:
    row = _one(
        client,
        f"SELECT sum(cost_usd), sum(priced_events), count() FROM {db}.stream_counters FINAL "
        "WHERE window_start >= {lo:DateTime64(6, 'UTC')} AND window_start < {hi:DateTime64(6, 'UTC')}",
        {"lo": lo, "hi": hi},
    )
    return Totals(_dec(row[0]), int(row[1] or 0), None, None, int(row[2]))


def compute_reconciliation(client: Any, database: str, start: datetime, end: datetime) -> ReconcileReport:
    """Compare the ledger with its rollups, spend_1m and stream_counters over ``[start, end)`` (tz-aware).

    Each source is compared over the range widened to its bucket (hour, day, minute):

    | check            | source                                     | compared with the ledger's                       |
    |------------------|--------------------------------------------|--------------------------------------------------|
    | spend_hourly     | hourly rollup (MV from the ledger)         | cost (incl. corrections), calls, input, output   |
    | spend_daily      | daily rollup (MV from the ledger)          | cost (incl. corrections), calls, input, output   |
    | spend_1m         | stream partials, dimension ``team``, FINAL | cost of original rows, calls, input, output      |
    | stream_counters  | the hot path's counters, FINAL             | cost of original rows, calls (= priced_events)   |

    Rollups include re-rating corrections (they are fed by the same inserts); the stream knows nothing of
    corrections, so spend_1m and stream_counters are compared with original rows only. A source without any row in
    its range is ``no data`` (drift only when the ledger has data there); spend_1m and stream_counters may
    legitimately be absent (e.g. when the hot path does not write counters: then ``skipped``).

    ``client`` is anything with clickhouse-connect's ``query(sql, parameters=...)`` returning ``result_rows`` (a
    client, or the store endpoint's remote client in embedded mode). Read-only; blocks on the queries. Raises
    ValueError-free :class:`~schemas.errors.ConfigError` for a bad database name.
    """
    db = check_identifier(database)
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise ConfigError("reconcile needs a time range with --from before --to, both with a time zone (e.g. Z)")
    comparisons: list[Comparison] = []
    for name, table, column, step in (
        ("spend_hourly", "spend_hourly", "hour", timedelta(hours=1)),
        ("spend_daily", "spend_daily", "day", timedelta(days=1)),
    ):
        lo, hi = floor_to(start, step), ceil_to(end, step)
        ledger = _ledger_totals(client, db, lo, hi, originals_only=False)
        comparisons.append(Comparison(name, lo, hi, ledger, _rollup_totals(client, db, table, column, lo, hi)))

    minute = timedelta(minutes=1)
    lo, hi = floor_to(start, minute), ceil_to(end, minute)
    ledger = _ledger_totals(client, db, lo, hi, originals_only=True)
    spend = _spend_1m_totals(client, db, lo, hi)
    counters = _counter_totals(client, db, lo, hi)
    comparisons.append(
        Comparison("spend_1m", lo, hi, ledger, spend)
        if spend.rows or ledger.rows
        else Comparison("spend_1m", lo, hi, ledger, None, "no partials and no ledger rows in range")
    )
    comparisons.append(
        Comparison("stream_counters", lo, hi, ledger, counters)
        if counters.rows
        else Comparison("stream_counters", lo, hi, ledger, None, "the hot path wrote no counters in range")
    )
    return ReconcileReport(start, end, tuple(comparisons))


def build_drift_alert(report: ReconcileReport, now: datetime) -> dict[str, Any]:
    """The ``drift`` Alert (Avro dict for ``finops.alerts.v1``) describing ``report``'s disagreements. Pure.

    The dedup key ``reconcile:drift:<start>:<end>`` is stable for the range, so re-running the job on the same range
    does not page twice; the alert id changes per run (a new state change).
    """
    drifting = report.drifting()
    worst = max(drifting, key=lambda c: abs(Decimal(c.differences().get("cost_usd", 0))), default=None)
    details: dict[str, str] = {"range_start": _iso(report.start), "range_end": _iso(report.end)}
    for c in drifting:
        for metric, diff in c.differences().items():
            if diff != 0:
                details[f"{c.name}.{metric}"] = _fmt(diff, signed=True)
    dedup_key = f"reconcile:drift:{_iso(report.start)}:{_iso(report.end)}"
    alert_id = str(uuid.UUID(hashlib.sha256(f"{dedup_key}@{now.isoformat()}".encode()).hexdigest()[:32]))
    names = ", ".join(c.name for c in drifting) or "none"
    return {
        "alert_id": alert_id,
        "dedup_key": dedup_key,
        "kind": "drift",
        "severity": "warning",
        "state": "trigger",
        "occurred_at": now,
        "team": None,
        "project": None,
        "agent_id": None,
        "policy_id": None,
        "model": None,
        "title": f"Spend drift between the ledger and {names}",
        "summary": (
            f"Reconciliation of {_iso(report.start)} .. {_iso(report.end)} found the ledger and {names} disagreeing "
            "(differences in details, source minus ledger). Check the sink's dead-letter topic and logs, then re-run "
            "`finops reconcile` for the range."
        ),
        "amount_usd": worst.observed.cost_usd if worst is not None and worst.observed is not None else None,
        "limit_usd": worst.ledger.cost_usd if worst is not None else None,
        "details": details,
        "actions": ["notify"],
    }
