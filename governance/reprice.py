"""Re-rating: price a time range of the ledger again with a corrected catalogue or price book, write the
difference as correction rows, and report which rows changed.

Role: the ledger is append-only history (infra/clickhouse/README.md, "Re-rating"): an original row is never
updated. For every event in ``[from, to)`` :func:`reprice` writes one ``row_kind = 'correction'`` row carrying
``new price - (original + every correction already written)`` per cost part (:func:`compute_correction`).

Guarantee: totals move by exactly the sum of the deltas; re-running with the same prices writes nothing; a retried
insert collapses by its deterministic ``correction_id`` and a later run can never overwrite an earlier one's row.
Unpriced events the new book prices become priced. See the README, "Reports, recommendations and re-rating".
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from finops.pricing.engine import Pricer
from finops.tables import LEDGER_COLUMNS
from governance.html import money
from governance.ledger import CORRECTION_COLUMNS, COST_PARTS, TOKEN_FIELDS, insert_ledger_rows
from governance.store import qualified

__all__ = ["RepriceResult", "RowChange", "compute_correction", "compute_run_id", "reprice", "render_diff"]

_ZERO = Decimal(0)
_WHERE = "occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')}"
CORRECTION_TOPIC = "finops.reprice"


@dataclass(frozen=True)
class RowChange:
    """One event whose cost moved."""

    source: str
    event_id: str
    occurred_at: datetime
    team: str
    project: str
    agent_id: str
    provider: str
    model: str
    old_cost_usd: Decimal
    new_cost_usd: Decimal
    old_status: str
    new_status: str
    correction_id: str

    @property
    def delta_usd(self) -> Decimal:
        return self.new_cost_usd - self.old_cost_usd


@dataclass
class RepriceResult:
    """What a re-rating run found (and, unless dry, wrote)."""

    start: datetime
    end: datetime
    run_id: str
    catalogue_version: str
    price_book_version: str | None
    events_checked: int = 0
    changes: list[RowChange] = field(default_factory=list)
    written: int = 0
    dry_run: bool = False
    total_before_usd: Decimal = _ZERO
    total_after_usd: Decimal | None = None

    @property
    def delta_usd(self) -> Decimal:
        return sum((c.delta_usd for c in self.changes), _ZERO)

    @property
    def exact(self) -> bool | None:
        """True when the ledger total moved by exactly the computed difference (None on a dry run)."""
        if self.total_after_usd is None:
            return None
        return self.total_after_usd - self.total_before_usd == self.delta_usd

    def by_model(self) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
        """(provider, model) -> (events changed, old cost, new cost)."""
        out: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, _ZERO, _ZERO])
        for c in self.changes:
            item = out[(c.provider, c.model)]
            item[0] += 1
            item[1] += c.old_cost_usd
            item[2] += c.new_cost_usd
        return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items())}


def compute_run_id(catalogue_version: str, price_book_version: str | None, price_book_digest: str = "") -> str:
    """A short digest of the prices a run used (same prices, same id)."""
    text = f"{catalogue_version}\x00{price_book_version or ''}\x00{price_book_digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compute_correction(
    original: Mapping[str, Any], net: Mapping[str, Decimal], corrections_so_far: int, pricer: Pricer, *,
    run_id: str, now: datetime,
) -> dict[str, Any] | None:
    """The correction row for one event, or None when the new price equals what the ledger holds.

    ``original`` is the event's original ledger row (a mapping over the ledger columns), ``net`` the current
    totals per cost part (original plus earlier corrections), ``corrections_so_far`` how many corrections the event
    has. Pure apart from the pricer's caches. Raises InvalidUsageError for impossible usage.

    The row has zero tokens and requests and the event's own dimensions and ``occurred_at``, so it lands in the same
    period, team and rollup bucket. ``correction_id`` is ``<run>-<n>``: ``<run>`` digests the catalogue and
    price-book versions (and the book's content, :func:`compute_run_id`) and ``n`` is the number of corrections the
    event already had. Both parts matter: the ledger's ReplacingMergeTree collapses rows with equal keys, so a
    retried insert of the same correction collapses, while a later run that happens to use the same prices again
    (A: v2, B: back to v1, C: v2 again) gets a new ``n`` and cannot overwrite A's row. An unpriced event the new book
    prices gets ``pricing_status = 'priced'``; the chargeback's unpriced list leaves it out from then on.
    """
    result = pricer.price(original)
    new = result._asdict()
    deltas = {part: Decimal(new[part]) - net.get(part, _ZERO) for part in COST_PARTS}
    status_changed = result.pricing_status != original["pricing_status"] and corrections_so_far == 0
    if all(d == 0 for d in deltas.values()) and not status_changed:
        return None
    row = {name: original[name] for name in LEDGER_COLUMNS}
    for name in TOKEN_FIELDS:
        row[name] = 0
    row["requests"] = 0
    row.update(deltas)
    for name in ("price_input_mtok", "price_output_mtok", "price_cache_read_mtok", "price_cache_write_mtok",
                 "price_cache_write_1h_mtok", "pricing_status", "unpriced_reason", "catalogue_version",
                 "price_book_version", "price_source", "cost_basis"):
        row[name] = new[name]
    row["computed_cost_usd"] = None  # a correction is a delta of cost_usd, not a computation of its own
    # A correction is not a call: no latency, no prompt, nothing reported, never late.
    row.update(latency_ms=None, prompt_hash=None, reported_cost=None, cost_delta_usd=None, cost_mismatch=False,
               late=False, priced_at=now, source_topic=CORRECTION_TOPIC, source_partition=0, source_offset=0)
    row["row_kind"] = "correction"
    row["correction_id"] = f"{run_id}-{corrections_so_far}"
    return {name: row[name] for name in CORRECTION_COLUMNS}


def _total(client: Any, database: str, start: datetime, end: datetime) -> Decimal:
    rows = client.query(
        f"SELECT sum(cost_usd) FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE}",
        parameters={"lo": start, "hi": end},
    ).result_rows
    return Decimal(rows[0][0] or 0)


def _existing_corrections(client: Any, database: str, start: datetime, end: datetime) -> dict[
    tuple[str, str], tuple[int, dict[str, Decimal]]
]:
    sums = ", ".join(f"sum({p})" for p in COST_PARTS)
    rows = client.query(
        f"SELECT source, event_id, count(), {sums} FROM {qualified(database, 'usage_ledger')} FINAL "
        f"WHERE {_WHERE} AND row_kind = 'correction' GROUP BY source, event_id",
        parameters={"lo": start, "hi": end},
    ).result_rows
    return {(str(r[0]), str(r[1])): (int(r[2]), {p: Decimal(v) for p, v in zip(COST_PARTS, r[3:], strict=True)})
            for r in rows}


def _originals(client: Any, database: str, start: datetime, end: datetime) -> Iterable[dict[str, Any]]:
    columns = ", ".join(LEDGER_COLUMNS)
    result = client.query(
        f"SELECT {columns} FROM {qualified(database, 'usage_ledger')} FINAL WHERE {_WHERE} "
        "AND row_kind = 'original' ORDER BY occurred_at, source, event_id",
        parameters={"lo": start, "hi": end},
    )
    for values in result.result_rows:
        yield dict(zip(LEDGER_COLUMNS, values, strict=True))


def reprice(
    client: Any, database: str, start: datetime, end: datetime, pricer: Pricer, *, now: datetime,
    price_book_digest: str = "", dry_run: bool = False,
) -> RepriceResult:
    """Re-rate ``[start, end)``: compute corrections against what the ledger holds and (unless ``dry_run``) insert
    them, then read the total again. Blocks on the queries and inserts; raises the client's errors (re-running is
    safe: see the module docstring)."""
    run_id = compute_run_id(pricer.catalogue_version, pricer.price_book_version, price_book_digest)
    result = RepriceResult(start, end, run_id, pricer.catalogue_version, pricer.price_book_version, dry_run=dry_run)
    result.total_before_usd = _total(client, database, start, end)
    existing = _existing_corrections(client, database, start, end)
    corrections: list[dict[str, Any]] = []
    for original in _originals(client, database, start, end):
        result.events_checked += 1
        key = (str(original["source"]), str(original["event_id"]))
        count, sums = existing.get(key, (0, {}))
        net = {p: Decimal(original[p]) + sums.get(p, _ZERO) for p in COST_PARTS}
        row = compute_correction(original, net, count, pricer, run_id=run_id, now=now)
        if row is None:
            continue
        corrections.append(row)
        new_status = row["pricing_status"] if count == 0 else original["pricing_status"]
        result.changes.append(RowChange(
            key[0], key[1], original["occurred_at"], original["team"], original["project"], original["agent_id"],
            original["provider"], original["model"], net["cost_usd"], net["cost_usd"] + row["cost_usd"],
            original["pricing_status"], str(new_status), row["correction_id"],
        ))
    if not dry_run and corrections:
        result.written = insert_ledger_rows(client, database, corrections)
    if not dry_run:
        result.total_after_usd = _total(client, database, start, end)
    return result


def render_diff(result: RepriceResult, *, limit: int = 20) -> str:
    """The diff report: totals before and after, the change per model, and the rows that changed (largest first,
    ``limit`` of them; the CSV has all)."""
    lines = [
        f"reprice {result.start:%Y-%m-%d %H:%M} .. {result.end:%Y-%m-%d %H:%M} UTC  run {result.run_id}  "
        f"(catalogue {result.catalogue_version}, price book {result.price_book_version or '(none)'})"
        + ("  DRY RUN: nothing written" if result.dry_run else ""),
        f"  events checked {result.events_checked:,}; changed {len(result.changes):,}; "
        f"correction rows written {result.written:,}",
        f"  total before {money(result.total_before_usd)}  difference {money(result.delta_usd, signed=True)}  "
        f"(exact {result.delta_usd})",
    ]
    if result.total_after_usd is not None:
        lines.append(f"  total after  {money(result.total_after_usd)}  moved by "
                     f"{result.total_after_usd - result.total_before_usd} "
                     f"({'exactly the difference' if result.exact else 'NOT the computed difference: investigate'})")
    if result.changes:
        lines.append("  by model:")
        for (provider, model), (n, old, new) in result.by_model().items():
            lines.append(f"    {provider}/{model}: {n:,} events  {money(old)} -> {money(new)}  "
                         f"({money(new - old, signed=True)})")
        lines.append(f"  rows changed (largest {min(limit, len(result.changes))} of {len(result.changes):,}):")
        for c in sorted(result.changes, key=lambda c: (-abs(c.delta_usd), c.event_id))[:limit]:
            status = f"  {c.old_status}->{c.new_status}" if c.old_status != c.new_status else ""
            lines.append(f"    {c.occurred_at:%Y-%m-%d %H:%M:%S} {c.source}/{c.event_id} {c.team}/{c.agent_id} "
                         f"{c.model}: {c.old_cost_usd} -> {c.new_cost_usd} ({c.delta_usd:+}){status}")
    return "\n".join(lines) + "\n"


def render_diff_csv(result: RepriceResult) -> str:
    """Every changed row, exact amounts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "event_id", "occurred_at", "team", "project", "agent_id", "provider", "model",
                     "old_cost_usd", "new_cost_usd", "delta_usd", "old_status", "new_status", "correction_id"])
    for c in result.changes:
        writer.writerow([c.source, c.event_id, c.occurred_at.isoformat(), c.team, c.project, c.agent_id, c.provider,
                         c.model, c.old_cost_usd, c.new_cost_usd, c.delta_usd, c.old_status, c.new_status,
                         c.correction_id])
    return out.getvalue()
