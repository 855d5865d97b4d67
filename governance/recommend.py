"""Recommendations: where the fleet spends money it need not, each with the evidence, the estimated monthly saving
in dollars and the query that shows it (runnable as ``finops sql``).

Role: :func:`build_recommendations` finds ``model_tiering``, ``caching``, ``retry_waste``, ``prompt_bloat`` and
``prompt_cache`` opportunities at the prices recorded on the ledger's original rows (each estimate is described on
the function); :func:`load_waste` reads the waste percentage.

Guarantee: read-only; savings are estimated independently per kind, so their sum is an upper bound; the waste
percentage is the one definition every page uses, ``v_waste_percentage`` (migration 0011), not that sum. See the
README, "Reports, recommendations and re-rating".
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from finops.clock import as_utc
from finops.pricing.engine import Pricer
from governance.config import RecommendSettings
from governance.html import money, pct
from governance.period import Period
from governance.store import qualified

__all__ = ["Recommendation", "RecommendationReport", "WasteFigure", "build_recommendations", "load_waste",
           "render_text"]

Kind = Literal["model_tiering", "caching", "retry_waste", "prompt_bloat", "prompt_cache"]
KINDS: tuple[Kind, ...] = ("model_tiering", "caching", "retry_waste", "prompt_bloat", "prompt_cache")
_ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)
_MIN_CACHEABLE_TOKENS = 1024
_WHERE = ("occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')} "
          "AND row_kind = 'original'")


@dataclass(frozen=True)
class Recommendation:
    """One finding for one agent (and model)."""

    kind: Kind
    team: str
    project: str
    agent_id: str
    model: str
    title: str
    saving_usd: Decimal
    monthly_saving_usd: Decimal
    evidence: dict[str, Any]
    query: str
    params: dict[str, str]
    #: First call concerned (UTC): where the waste signal is dated.
    first_at: datetime | None = None

    def sql_command(self) -> str:
        """The ``finops sql`` command that shows the evidence."""
        args = " ".join(f"--param {shlex.quote(f'{k}={v}')}" for k, v in sorted(self.params.items()))
        return f"finops sql {shlex.quote(' '.join(self.query.split()))} {args}"


@dataclass(frozen=True)
class WasteFigure:
    """The waste percentage of a period as ``v_waste_percentage`` defines it: recorded avoidable cost over cost."""

    cost_usd: Decimal
    avoidable_usd: Decimal
    signals: int
    #: ``avoidable_usd * 100 / cost_usd`` computed by ClickHouse (Decimal, 12 places); None without spend.
    waste_pct: Decimal | None


def load_waste(client: Any, database: str, period: Period) -> WasteFigure:
    """The period's waste figure from ``v_waste_percentage`` (its UTC days ``[start, end)``). Read-only; blocks on
    one query."""
    rows = client.query(
        "SELECT sum(w.cost_usd), sum(w.avoidable_cost_usd), sum(w.signals), "
        "if(sum(w.cost_usd) = 0, NULL, sum(w.avoidable_cost_usd) * 100 / sum(w.cost_usd)) "
        f"FROM {qualified(database, 'v_waste_percentage')} AS w WHERE w.day >= {{lo:Date}} AND w.day < {{hi:Date}}",
        parameters={"lo": period.start.date(), "hi": period.end.date()},
    ).result_rows
    cost, avoidable, signals, pct = rows[0] if rows else (None, None, 0, None)
    return WasteFigure(Decimal(cost or 0), Decimal(avoidable or 0), int(signals or 0),
                       Decimal(pct) if pct is not None else None)


@dataclass
class RecommendationReport:
    period: Period
    total_spend_usd: Decimal
    items: list[Recommendation] = field(default_factory=list)
    #: The period's waste percentage by the one definition (set by :func:`build_recommendations`).
    waste: WasteFigure | None = None

    @property
    def saving_usd(self) -> Decimal:
        return sum((r.saving_usd for r in self.items), _ZERO)

    @property
    def monthly_saving_usd(self) -> Decimal:
        return sum((r.monthly_saving_usd for r in self.items), _ZERO)

    @property
    def waste_pct(self) -> Decimal | None:
        """The period's waste percentage from ``v_waste_percentage`` (recorded signals), as every page shows it."""
        return self.waste.waste_pct if self.waste is not None else None

    def by_kind(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {kind: _ZERO for kind in KINDS}
        for r in self.items:
            out[r.kind] += r.monthly_saving_usd
        return out


def _params(period: Period) -> dict[str, Any]:
    return {"lo": period.start, "hi": period.end}


def _shown_params(period: Period, agent_id: str) -> dict[str, str]:
    return {"lo": period.start.strftime("%Y-%m-%d %H:%M:%S"), "hi": period.end.strftime("%Y-%m-%d %H:%M:%S"),
            "agent": agent_id}


def _rec(kind: Kind, period: Period, dims: tuple[str, str, str, str], title: str, saving: Decimal,
         evidence: dict[str, Any], query: str, first_at: datetime | None = None) -> Recommendation:
    team, project, agent, model = dims
    return Recommendation(kind, team, project, agent, model, title, saving, period.per_month(saving), evidence,
                          query, _shown_params(period, agent), as_utc(first_at))


# -------------------------------------------------------------------------------------------------- retry waste


def _retry_waste(client: Any, ledger: str, period: Period) -> list[Recommendation]:
    sql = (
        "SELECT team, project, agent_id, model, task_id, prompt_hash, count() AS calls, max(attempt), "
        "sum(cost_usd) AS total, argMax(cost_usd, (occurred_at, attempt)) AS last_cost, "
        "countIf(status != 'ok') AS failed, min(occurred_at) "
        f"FROM {ledger} FINAL WHERE {_WHERE} AND task_id != '' AND prompt_hash IS NOT NULL "
        "GROUP BY team, project, agent_id, model, task_id, prompt_hash HAVING calls > 1"
    )
    per_agent: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"saving": _ZERO, "loops": 0, "calls": 0, "max_attempt": 0, "failed": 0, "examples": [],
                 "first": None})
    for team, project, agent, model, task, prompt, calls, max_attempt, total, last_cost, failed, first in \
            client.query(sql, parameters=_params(period)).result_rows:
        item = per_agent[(team, project, agent, model)]
        item["first"] = first if item["first"] is None else min(item["first"], first)
        item["saving"] += Decimal(total) - Decimal(last_cost)
        item["loops"] += 1
        item["calls"] += int(calls)
        item["failed"] += int(failed)
        item["max_attempt"] = max(item["max_attempt"], int(max_attempt))
        if len(item["examples"]) < 3:
            item["examples"].append({"task_id": task, "prompt_hash": prompt, "calls": int(calls)})
    query = (
        "SELECT agent_id, task_id, prompt_hash, count() AS calls, max(attempt) AS max_attempt, sum(cost_usd) AS cost, "
        "sum(cost_usd) - argMax(cost_usd, (occurred_at, attempt)) AS wasted FROM {ledger} FINAL "
        "WHERE agent_id = {agent:String} AND occurred_at >= {lo:DateTime64(6, 'UTC')} "
        "AND occurred_at < {hi:DateTime64(6, 'UTC')} AND row_kind = 'original' AND task_id != '' "
        "AND prompt_hash IS NOT NULL GROUP BY agent_id, task_id, prompt_hash HAVING calls > 1 ORDER BY wasted DESC"
    ).replace("{ledger}", ledger)
    out = []
    for dims, item in per_agent.items():
        if item["saving"] <= 0:
            continue
        out.append(_rec(
            "retry_waste", period, dims,
            f"{dims[2]} repeats prompts within tasks ({item['loops']} retried prompts, up to attempt "
            f"{item['max_attempt']}): cap retries, back off, stop on non-retryable errors",
            item["saving"],
            {"retried_prompts": item["loops"], "calls": item["calls"], "failed_calls": item["failed"],
             "max_attempt": item["max_attempt"], "examples": item["examples"]},
            query, item["first"],
        ))
    return out


# -------------------------------------------------------------------------------------------------- caching


def _caching(client: Any, ledger: str, period: Period) -> list[Recommendation]:
    sql = (
        "SELECT team, project, agent_id, model, prompt_hash, count() AS n, sum(cost_usd), "
        "argMin(cost_usd, occurred_at) AS first_cost, uniqExact(task_id), min(occurred_at) "
        f"FROM {ledger} FINAL WHERE {_WHERE} AND prompt_hash IS NOT NULL AND attempt = 1 "
        "AND cache_read_tokens = 0 AND status = 'ok' "
        "GROUP BY team, project, agent_id, model, prompt_hash HAVING n > 1"
    )
    per_agent: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"saving": _ZERO, "prompts": 0, "repeats": 0, "tasks": 0, "examples": [], "first": None})
    for team, project, agent, model, prompt, n, total, first_cost, tasks, first in \
            client.query(sql, parameters=_params(period)).result_rows:
        item = per_agent[(team, project, agent, model)]
        item["first"] = first if item["first"] is None else min(item["first"], first)
        item["saving"] += Decimal(total) - Decimal(first_cost)
        item["prompts"] += 1
        item["repeats"] += int(n) - 1
        item["tasks"] += int(tasks)
        if len(item["examples"]) < 3:
            item["examples"].append({"prompt_hash": prompt, "sent": int(n)})
    query = (
        "SELECT agent_id, prompt_hash, count() AS sent, sum(cost_usd) - argMin(cost_usd, occurred_at) AS repeat_cost "
        "FROM {ledger} FINAL WHERE agent_id = {agent:String} AND occurred_at >= {lo:DateTime64(6, 'UTC')} "
        "AND occurred_at < {hi:DateTime64(6, 'UTC')} AND row_kind = 'original' AND attempt = 1 "
        "AND cache_read_tokens = 0 AND status = 'ok' AND prompt_hash IS NOT NULL "
        "GROUP BY agent_id, prompt_hash HAVING sent > 1 ORDER BY repeat_cost DESC"
    ).replace("{ledger}", ledger)
    return [
        _rec("caching", period, dims,
             f"{dims[2]} sends {item['prompts']} identical prompts again ({item['repeats']} repeats, no cache hit): "
             "cache the responses by prompt hash",
             item["saving"],
             {"duplicate_prompts": item["prompts"], "repeats": item["repeats"], "examples": item["examples"]},
             query, item["first"])
        for dims, item in per_agent.items() if item["saving"] > 0
    ]


# -------------------------------------------------------------------------------------------------- prompt bloat


def _prompt_bloat(client: Any, ledger: str, period: Period, settings: RecommendSettings) -> list[Recommendation]:
    sql = (
        "SELECT team, project, agent_id, model, count(), max(input_tokens), "
        "sum(toDecimal128(input_tokens - {limit:UInt64}, 0) * price_input_mtok), min(occurred_at) "
        f"FROM {ledger} FINAL WHERE {_WHERE} AND input_tokens > {{limit:UInt64}} AND price_input_mtok IS NOT NULL "
        "GROUP BY team, project, agent_id, model"
    )
    query = (
        "SELECT agent_id, event_id, occurred_at, task_id, input_tokens, cost_usd FROM {ledger} FINAL "
        "WHERE agent_id = {agent:String} AND occurred_at >= {lo:DateTime64(6, 'UTC')} "
        "AND occurred_at < {hi:DateTime64(6, 'UTC')} AND row_kind = 'original' AND input_tokens > {limit:UInt64} "
        "ORDER BY input_tokens DESC"
    ).replace("{ledger}", ledger)
    out = []
    for team, project, agent, model, calls, biggest, excess_cost, first in client.query(
            sql, parameters={**_params(period), "limit": settings.prompt_bloat_tokens}).result_rows:
        saving = (Decimal(excess_cost) / _MILLION).quantize(Decimal("1e-12"))
        if saving <= 0:
            continue
        rec = _rec("prompt_bloat", period, (team, project, agent, model),
                   f"{agent} sends {calls} prompts above {settings.prompt_bloat_tokens:,} tokens (largest "
                   f"{int(biggest):,}): trim history, summarise, retrieve instead of pasting",
                   saving, {"oversized_calls": int(calls), "largest_prompt_tokens": int(biggest),
                            "threshold_tokens": settings.prompt_bloat_tokens}, query, first)
        rec.params["limit"] = str(settings.prompt_bloat_tokens)
        out.append(rec)
    return out


# -------------------------------------------------------------------------------------------------- prompt cache


def _prompt_cache(client: Any, ledger: str, period: Period) -> list[Recommendation]:
    inner = (
        "SELECT team, project, agent_id, model, task_id, occurred_at, input_tokens, cache_read_tokens, "
        "price_input_mtok, "
        "price_cache_read_mtok, lagInFrame(input_tokens, 1, 0) OVER (PARTITION BY task_id ORDER BY occurred_at, "
        "attempt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev_input "
        f"FROM {ledger} FINAL WHERE {_WHERE} AND task_id != '' AND price_cache_read_mtok IS NOT NULL "
        "AND price_input_mtok IS NOT NULL"
    )
    sql = (
        "SELECT team, project, agent_id, model, count() AS calls, sum(missed) AS missed_tokens, "
        "sum(toDecimal128(missed, 0) * (price_input_mtok - price_cache_read_mtok)) AS value, "
        "sum(least(prev_input, input_tokens)) AS cacheable, sum(cache_read_tokens) AS cached, "
        "minIf(occurred_at, missed > 0) FROM ("
        "SELECT *, if(least(prev_input, input_tokens) >= {min_prefix:UInt64}, "
        "greatest(toInt64(least(prev_input, input_tokens)) - toInt64(cache_read_tokens), 0), 0) AS missed "
        f"FROM ({inner})) GROUP BY team, project, agent_id, model HAVING missed_tokens > 0"
    )
    query = (
        "SELECT agent_id, task_id, occurred_at, input_tokens, cache_read_tokens, lagInFrame(input_tokens, 1, 0) OVER "
        "(PARTITION BY task_id ORDER BY occurred_at, attempt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) "
        "AS previous_input FROM {ledger} FINAL WHERE agent_id = {agent:String} "
        "AND occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')} "
        "AND row_kind = 'original' AND task_id != '' ORDER BY task_id, occurred_at"
    ).replace("{ledger}", ledger)
    out = []
    for team, project, agent, model, calls, missed, value, cacheable, cached, first in client.query(
            sql, parameters={**_params(period), "min_prefix": _MIN_CACHEABLE_TOKENS}).result_rows:
        saving = (Decimal(value) / _MILLION).quantize(Decimal("1e-12"))
        if saving <= 0:
            continue
        utilisation = (Decimal(int(cached)) * 100 / Decimal(int(cacheable))).quantize(Decimal("0.1")) \
            if cacheable else None
        out.append(_rec("prompt_cache", period, (team, project, agent, model),
                        f"{agent} re-sends {int(missed):,} cacheable context tokens uncached on {model} (cache "
                        f"utilisation {utilisation}%): mark the stable prefix cacheable",
                        saving, {"calls": int(calls), "missed_cacheable_tokens": int(missed),
                                 "cacheable_tokens": int(cacheable), "cache_read_tokens": int(cached),
                                 "cache_utilisation_pct": str(utilisation)}, query, first))
    return out


# -------------------------------------------------------------------------------------------------- model tiering


_EVENT_COLUMNS = ("provider", "model", "occurred_at", "input_tokens", "output_tokens", "cache_read_tokens",
                  "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens", "input_audio_tokens",
                  "output_audio_tokens", "cache_audio_read_tokens", "image_tokens", "web_search_calls", "requests",
                  "cost_usd")


def _model_tiering(client: Any, ledger: str, period: Period, settings: RecommendSettings,
                   pricer: Pricer) -> list[Recommendation]:
    stats_sql = (
        "SELECT team, project, agent_id, task_type, provider, model, count() AS calls, countIf(status = 'ok'), "
        f"sum(cost_usd), min(occurred_at) FROM {ledger} FINAL WHERE {_WHERE} AND pricing_status = 'priced' "
        "AND task_type != '' "
        "GROUP BY team, project, agent_id, task_type, provider, model"
    )
    groups = client.query(stats_sql, parameters=_params(period)).result_rows
    # Fleet-wide evidence: (provider, task_type, model) -> (calls, ok calls)
    fleet: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for _t, _p, _a, task_type, provider, model, calls, ok, _c, _f in groups:
        fleet[(provider, task_type, model)][0] += int(calls)
        fleet[(provider, task_type, model)][1] += int(ok)
    out: list[Recommendation] = []
    for team, project, agent, task_type, provider, model, calls, ok, cost, first in groups:
        if Decimal(cost) <= 0:
            continue
        rate = Decimal(int(ok)) / Decimal(int(calls))
        candidates: dict[str, dict[str, Any]] = {}
        for (prov, ttype, other), (n, n_ok) in fleet.items():
            if prov != provider or ttype != task_type or other == model or n < settings.tiering_min_calls:
                continue
            other_rate = Decimal(n_ok) / Decimal(n)
            if other_rate + settings.tiering_success_tolerance >= rate:
                candidates[other] = {"fleet_calls": n, "fleet_success_rate": str(other_rate.quantize(
                    Decimal("0.001"))), "basis": "fleet evidence"}
        tier = settings.tiers.get(provider, {}).get(model)
        if tier and tier not in candidates:
            candidates[tier] = {"basis": "configured tier (no fleet evidence on this task type yet)"}
        if not candidates:
            continue
        events = client.query(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {ledger} FINAL WHERE {_WHERE} AND agent_id = {{agent:String}} "
            "AND task_type = {task_type:String} AND provider = {provider:String} AND model = {model:String} "
            "AND team = {team:String} AND project = {project:String} AND pricing_status = 'priced'",
            parameters={**_params(period), "agent": agent, "task_type": task_type, "provider": provider,
                        "model": model, "team": team, "project": project},
        ).result_rows
        best: tuple[Decimal, str] | None = None
        for candidate in sorted(candidates):
            total = _ZERO
            priced = True
            for values in events:
                event = dict(zip(_EVENT_COLUMNS, values, strict=True))
                event["model"] = candidate
                result = pricer.price(event)
                if result.pricing_status != "priced":
                    priced = False
                    break
                total += result.cost_usd
            if priced and (best is None or total < best[0]):
                best = (total, candidate)
        if best is None or best[0] >= Decimal(cost):
            continue
        saving = Decimal(cost) - best[0]
        # The agent's calls of this task type by model (the fleet's evidence for the cheaper model is in the
        # recommendation's evidence): what routing would move.
        query = (
            "SELECT agent_id, model, count() AS calls, countIf(status = 'ok') / count() AS success_rate, "
            "sum(cost_usd) AS cost, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens "
            "FROM {ledger} FINAL WHERE agent_id = {agent:String} AND task_type = {task_type:String} "
            "AND provider = {provider:String} AND occurred_at >= {lo:DateTime64(6, 'UTC')} "
            "AND occurred_at < {hi:DateTime64(6, 'UTC')} AND row_kind = 'original' "
            "GROUP BY agent_id, model ORDER BY cost DESC"
        ).replace("{ledger}", ledger)
        rec = _rec("model_tiering", period, (team, project, agent, model),
                   f"{agent} runs {task_type} on {model}; {best[1]} ({provider}) serves {task_type} as well: "
                   f"route it there", saving,
                   {"task_type": task_type, "calls": int(calls), "success_rate": str(rate.quantize(Decimal("0.001"))),
                    "current_cost_usd": str(Decimal(cost)), "suggested_model": best[1],
                    "suggested_cost_usd": str(best[0]), "suggested_model_evidence": candidates[best[1]]},
                   query, first)
        rec.params.update(task_type=task_type, provider=provider)
        out.append(rec)
    return out


# -------------------------------------------------------------------------------------------------- all


def build_recommendations(client: Any, database: str, period: Period, settings: RecommendSettings | None = None,
                          *, pricer: Pricer | None = None, kinds: tuple[str, ...] = KINDS) -> RecommendationReport:
    """Every recommendation of ``kinds`` for the period, largest monthly saving first. Read-only; blocks on the
    queries (model tiering prices the candidate calls in Python).

    - ``model_tiering``: an agent's calls of one task type on a model, where a cheaper model of the same provider
      serves the same task type elsewhere in the fleet with a success rate no worse than ``tiering_success_tolerance``
      below (or is a configured cheaper tier). Saving = the calls' cost minus the same tokens priced on the cheaper
      model by :class:`finops.pricing.engine.Pricer`, call by call (tiers and cache prices included).
    - ``caching``: the same prompt (``prompt_hash``) sent again as a first attempt without a prompt-cache hit; with a
      response cache every repeat after the first is free: saving = cost of the repeats.
    - ``retry_waste``: calls of one task repeating one prompt (``attempt`` > 1 or a loop): saving = cost of all but
      the last call of each (task, prompt), whose answer was used.
    - ``prompt_bloat``: prompts longer than ``prompt_bloat_tokens``: saving = the excess input tokens at the call's
      input price.
    - ``prompt_cache``: multi-call tasks on models with a cache-read price whose later calls re-send the previous
      call's context uncached. The cacheable prefix is ``min(previous call's input, this input)`` when it reaches the
      providers' 1,024-token minimum; saving = the cacheable tokens not read from the cache x (input price -
      cache-read price). Cache-write premiums (Anthropic) are not deducted: an upper bound.

    A call can appear in two kinds (a bloated retry). Findings count in the waste percentage (the avoidable cost of
    the recorded waste signals over total cost, :func:`load_waste`) once ``finops recommend --record`` stored them."""
    settings = settings or RecommendSettings()
    ledger = qualified(database, "usage_ledger")
    waste = load_waste(client, database, period)
    report = RecommendationReport(period, waste.cost_usd, waste=waste)
    if "model_tiering" in kinds:
        report.items += _model_tiering(client, ledger, period, settings, pricer or Pricer())
    if "caching" in kinds:
        report.items += _caching(client, ledger, period)
    if "retry_waste" in kinds:
        report.items += _retry_waste(client, ledger, period)
    if "prompt_bloat" in kinds:
        report.items += _prompt_bloat(client, ledger, period, settings)
    if "prompt_cache" in kinds:
        report.items += _prompt_cache(client, ledger, period)
    report.items = sorted(
        (r for r in report.items if r.monthly_saving_usd >= settings.min_monthly_saving_usd),
        key=lambda r: (-r.monthly_saving_usd, r.kind, r.agent_id),
    )
    return report


def render_text(report: RecommendationReport, *, show_queries: bool = True) -> str:
    waste = report.waste
    recorded = f" ({money(waste.avoidable_usd)} avoidable in {waste.signals} recorded signals)" if waste else ""
    lines = [f"recommendations {report.period.label}: {len(report.items)} findings, "
             f"{money(report.monthly_saving_usd)} a month; waste {pct(report.waste_pct)} of "
             f"{money(report.total_spend_usd)} spend{recorded}, as v_waste_percentage and the dashboard count it; "
             "--record adds these findings"]
    for kind, saving in report.by_kind().items():
        lines.append(f"  {kind:<14} {money(saving)}/month")
    for i, r in enumerate(report.items, 1):
        lines.append(f"{i:>3}. [{r.kind}] {money(r.monthly_saving_usd)}/month  {r.team}/{r.project}  {r.title}")
        lines.append(f"     evidence: {json.dumps(r.evidence, default=str, sort_keys=True)}")
        if show_queries:
            lines.append(f"     query: {r.sql_command()}")
    return "\n".join(lines) + "\n"


def to_waste_signals(report: RecommendationReport, *, detected_at: Any) -> list[dict[str, Any]]:
    """The recommendations as ``waste_signals`` rows (deterministic ids: same period, agent and kind, same id), so
    ``v_waste_percentage`` shows them. Kinds map onto the detectors' names where they mean the same."""
    names: Mapping[str, str] = {"retry_waste": "retry_loop", "caching": "duplicate_prompt",
                                "prompt_bloat": "oversized_prompt", "model_tiering": "model_tiering",
                                "prompt_cache": "prompt_cache"}
    rows = []
    for r in report.items:
        key = f"recommend:{report.period.label}:{r.kind}:{r.team}:{r.project}:{r.agent_id}:{r.model}"
        rows.append({
            "signal_id": hashlib.sha256(key.encode()).hexdigest()[:32], "kind": names[r.kind],
            "detected_at": detected_at, "occurred_at": r.first_at or report.period.start,
            "team": r.team, "project": r.project,
            "agent_id": r.agent_id, "task_id": "", "model": r.model, "avoidable_cost_usd": r.saving_usd,
            "evidence": json.dumps({"source": "finops recommend", **r.evidence}, default=str, sort_keys=True),
        })
    return rows
