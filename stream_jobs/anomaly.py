"""Spend anomalies per agent and per team: a robust, seasonal baseline per entity, scored window by window.

Role: pure logic with an injected event-time clock (:meth:`AnomalyDetector.advance`); no Kafka, Faust or
ClickHouse. Spend per window is summed per entity (``agent:<id>``, ``team:<name>``) and scored against a
median/MAD baseline of its log (:class:`RobustBaseline`); root cause splits the excess by dimension
(:func:`compute_root_causes`).

Guarantee: an entity is judged only after its warm-up; consecutive anomalous windows form one episode with one
``trigger`` (dedup key ``anomaly:<entity>:<episode start>``) and one ``resolve`` after ``resolve_after`` normal
windows. See DESIGN §7 and the README, "Budgets, anomalies, waste and enforcement".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "Anomaly",
    "AnomalyConfig",
    "AnomalyDetector",
    "RobustBaseline",
    "RootCause",
    "build_anomaly_alert",
    "compute_mad_scale",
    "compute_median",
    "compute_root_causes",
]

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO = Decimal(0)
_Q12 = Decimal("0.000000000001")
_MAD_TO_SIGMA = 1.4826
_WEEK_HOURS = 168


def _from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """Knobs of the detector. ``z_threshold`` is the sensitivity: lower finds more, with more false alarms."""

    window_s: int = 300
    grace_s: int = 30
    history_windows: int = 576
    warmup_windows: int = 36
    min_active_windows: int = 6
    seasonal_min_samples: int = 24
    seasonal_samples: int = 48
    z_threshold: float = 4.0
    min_ratio: float = 3.0
    min_impact_usd: Decimal = Decimal("0.05")
    log_offset_usd: float = 0.001
    min_scale: float = 0.25
    resolve_after: int = 2
    root_cause_top: int = 3
    forget_after_s: int = 7 * 86400
    timezone: str = "UTC"


def compute_median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (the mean of the two middle values for an even count)."""
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def compute_mad_scale(values: Sequence[float], centre: float) -> float:
    """1.4826 x median absolute deviation from ``centre``: a robust estimate of the standard deviation."""
    return _MAD_TO_SIGMA * compute_median([abs(v - centre) for v in values])


class RobustBaseline:
    """Rolling history of window spends of one entity with an hour-of-week profile. Values are USD floats:
    statistics, not money (the alert's money is exact).

    Cost per window is heavy-tailed (log-normal token counts, many empty windows for a quiet agent), so the
    baseline works on ``y = ln(spend + c)``, ``c`` the larger of ``log_offset_usd`` and a quarter of the entity's
    median window: "ten times the usual" becomes a fixed distance whatever the agent's size, and ``c`` keeps empty
    windows from dominating.

    - Centre: the median of ``y`` over the last ``history_windows`` windows, or, with hour-of-week seasonality, of
      the windows in the same hour of the week once that slot has ``seasonal_min_samples`` values.
    - Scale: 1.4826 x the MAD of ``y``, or of the deviations above the median when larger ("double MAD", for
      skewed, zero-inflated spend), floored at ``min_scale``. Median and MAD have a 50 % breakdown point, so the
      outliers we look for cannot drag the baseline towards themselves (Iglewicz & Hoaglin, Rousseeuw & Croux).
    - Score: ``(y - centre) / scale``; anomalous when at least ``z_threshold``, actual at least ``min_ratio`` x
      expected and impact at least ``min_impact_usd`` (the last two keep odd but cheap blips from paging anyone).
    - Update: every closed window enters the history, an anomalous one winsorized at the threshold, so a long
      runaway does not become the new normal within the hour.
    - Warm-up: judged only after ``warmup_windows`` windows (seeded from ClickHouse at start, so a restart does not
      re-learn) and ``min_active_windows`` of them with spend."""

    __slots__ = ("_config", "history", "seasonal", "active")

    def __init__(self, config: AnomalyConfig) -> None:
        self._config = config
        self.history: deque[float] = deque(maxlen=config.history_windows)
        self.seasonal: dict[int, deque[float]] = {}
        self.active = 0  # windows with spend in the history (approximate once the deque rolls)

    def offset(self) -> float:
        """The log offset ``c``: a quarter of the median window, at least ``log_offset_usd``."""
        if not self.history:
            return self._config.log_offset_usd
        return max(self._config.log_offset_usd, 0.25 * compute_median(self.history))

    def expected(self, slot: int) -> tuple[float, float, float]:
        """``(centre, scale, c)`` on the log scale for a window in hour-of-week ``slot``."""
        c = self.offset()
        logs = [math.log(v + c) for v in self.history]
        centre = compute_median(logs)
        # Upper-half MAD ("double MAD"): window spend is zero-inflated and right-skewed, so the plain MAD of a quiet
        # agent collapses to 0 (most windows empty) and every call would look extreme. The spread of the windows
        # above the median is what a spike must be judged against.
        above = [y - centre for y in logs if y > centre]
        upper = _MAD_TO_SIGMA * compute_median(above) if len(above) >= 3 else 0.0
        scale = max(compute_mad_scale(logs, centre), upper, self._config.min_scale)
        season = self.seasonal.get(slot)
        if season is not None and len(season) >= self._config.seasonal_min_samples:
            centre = compute_median([math.log(v + c) for v in season])
        return centre, scale, c

    def ready(self) -> bool:
        return len(self.history) >= self._config.warmup_windows and self.active >= self._config.min_active_windows

    def add(self, value: float, slot: int) -> None:
        if len(self.history) == self.history.maxlen and self.history[0] > 0:
            self.active -= 1
        self.history.append(value)
        if value > 0:
            self.active += 1
        season = self.seasonal.get(slot)
        if season is None:
            season = self.seasonal[slot] = deque(maxlen=self._config.seasonal_samples)
        season.append(value)


@dataclass(frozen=True, slots=True)
class RootCause:
    """One dimension value's part in an anomaly."""

    dimension: str
    value: str
    actual_usd: Decimal
    expected_usd: Decimal
    contribution_usd: Decimal
    share: float  # of the total difference (actual - expected)

    def describe(self) -> str:
        return f"{self.dimension}={self.value} +${self.contribution_usd.quantize(Decimal('0.0001'))} " \
               f"({self.share * 100:.0f}%)"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A judged window of one entity (anomalous or, for a resolve, the window that ended the episode)."""

    entity_kind: str  # agent or team
    entity: str
    window_start_us: int
    window_end_us: int
    expected_usd: Decimal
    actual_usd: Decimal
    impact_usd: Decimal
    impact_pct: float
    score: float
    root_causes: tuple[RootCause, ...]
    episode_start_us: int
    state: str  # trigger or resolve
    team: str | None = None
    project: str | None = None

    @property
    def dedup_key(self) -> str:
        return f"anomaly:{self.entity_kind}={self.entity}:{_from_us(self.episode_start_us).isoformat()}"


def compute_root_causes(
    actual_total: Decimal, actual: Mapping[tuple[str, str], Decimal], shares: Mapping[tuple[str, str], float],
    expected_total: Decimal, top: int,
) -> tuple[RootCause, ...]:
    """The ``top`` dimension values whose actual spend most exceeds ``expected_total x share``. Pure.

    Each entity keeps an exponentially weighted share of its spend per value of each dimension (model, task type,
    project; and agent for a team), updated on normal windows only; the result reads like
    ``model=gpt-4o +$3.20 (81%)``.

    ``actual`` and ``shares`` are keyed by ``(dimension, value)``; a value never seen before has share 0, so all of
    its spend is unexplained (a new model appearing is a classic root cause).
    """
    difference = actual_total - expected_total
    found: list[RootCause] = []
    for key in set(actual) | set(shares):
        dim, value = key
        got = actual.get(key, _ZERO)
        want = (expected_total * Decimal(repr(shares.get(key, 0.0)))).quantize(_Q12)
        contribution = got - want
        if contribution <= 0:
            continue
        share = float(contribution / difference) if difference > 0 else 0.0
        found.append(RootCause(dim, value, got, want, contribution, min(share, 1.0)))
    found.sort(key=lambda r: (-r.contribution_usd, r.dimension, r.value))
    return tuple(found[:top])


@dataclass(slots=True)
class _Entity:
    kind: str
    key: str
    baseline: RobustBaseline
    shares: dict[tuple[str, str], float] = field(default_factory=dict)
    #: window start -> (total, breakdown by (dimension, value))
    open: dict[int, tuple[list[Decimal], dict[tuple[str, str], Decimal]]] = field(default_factory=dict)
    last_spend_us: int = 0
    team: str | None = None
    project: str | None = None
    episode_start_us: int | None = None
    normal_streak: int = 0
    last: Anomaly | None = None
    #: sequence number of the latest observed event folded into ``team``/``project`` (last seen wins)
    seen_seq: int = 0


#: A pending combination of an event's facts: (agent_id, team, project, model, task_type).
_Combo = tuple[str, str, str, str, "str | None"]


class AnomalyDetector:
    """Per-entity window spend and baselines; :meth:`observe` events, :meth:`advance` the clock to judge windows."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._window_us = self.config.window_s * _US
        self._grace_us = self.config.grace_s * _US
        self._zone = ZoneInfo(self.config.timezone)
        self._entities: dict[tuple[str, str], _Entity] = {}
        self._next_close_us: int | None = None  # start of the oldest window not judged yet
        self.late_events = 0
        # Events not yet folded into their entities' windows: window start -> combination of facts -> [spend,
        # latest ts, sequence number of the latest event]. One Decimal addition per event instead of one per window
        # total and breakdown value of the agent and of the team (nine); folded (:meth:`_fold`) before anything
        # reads the entities. The sums are exact Decimal additions, so grouping them per combination changes no
        # digit nor exponent (the default context's 28 digits hold 10**16 USD at the priced 12-digit scale).
        self._pending: dict[int, dict[_Combo, list[Any]]] = {}
        self._pending_start: int | None = None  # the window of the latest event, checked not late ...
        self._pending_window: dict[_Combo, list[Any]] = {}  # ... and its pending combinations
        self._seq = 0

    @property
    def entities(self) -> dict[tuple[str, str], _Entity]:
        """The entities by ``(kind, key)``, every observed event included."""
        self._fold()
        return self._entities

    # -- input --------------------------------------------------------------------------------------------------

    def _entity(self, kind: str, key: str) -> _Entity:
        entity = self._entities.get((kind, key))
        if entity is None:
            entity = self._entities[(kind, key)] = _Entity(kind, key, RobustBaseline(self.config))
        return entity

    def observe(self, ts_us: int, cost: Decimal, agent_id: str, team: str, project: str, model: str,
                task_type: str | None) -> None:
        """Add one priced call to its agent's and team's window. An event for a window already judged is late:
        it is counted in ``late_events`` and ignored here (the ledger still has it)."""
        start = ts_us - ts_us % self._window_us
        if start == self._pending_start:
            window = self._pending_window  # checked not late when it became the latest window
        else:
            if self._next_close_us is None:
                self._next_close_us = start
            elif start < self._next_close_us:
                self.late_events += 1
                return
            pending = self._pending.get(start)
            if pending is None:
                pending = self._pending[start] = {}
            window = pending
            self._pending_start, self._pending_window = start, window
        self._seq = seq = self._seq + 1
        key = (agent_id, team, project, model, task_type)
        cell = window.get(key)
        if cell is None:
            window[key] = [cost, ts_us, seq]
            # Entities exist from their first event on, in that order (the order they are judged in).
            self._entity("agent", agent_id)
            self._entity("team", team)
        else:
            cell[0] += cost
            if ts_us > cell[1]:
                cell[1] = ts_us
            cell[2] = seq

    def _fold(self) -> None:
        """Move the pending sums into the agents' and teams' windows, as :meth:`observe` did event by event."""
        if not self._pending:
            return
        entities = self._entities
        for start, window in self._pending.items():
            for (agent_id, team, project, model, task_type), (cost, ts_us, seq) in window.items():
                task = task_type or "(none)"
                agent = entities[("agent", agent_id)]
                if seq > agent.seen_seq:
                    agent.seen_seq, agent.team, agent.project = seq, team, project
                group = entities[("team", team)]
                if seq > group.seen_seq:
                    group.seen_seq, group.team = seq, team
                for entity, dims in (
                    (agent, (("model", model), ("task_type", task), ("project", project))),
                    (group, (("agent", agent_id), ("model", model), ("task_type", task), ("project", project))),
                ):
                    if ts_us > entity.last_spend_us:
                        entity.last_spend_us = ts_us
                    spend = entity.open.get(start)
                    if spend is None:
                        spend = entity.open[start] = ([_ZERO], {})
                    spend[0][0] += cost
                    breakdown = spend[1]
                    for dim in dims:
                        breakdown[dim] = breakdown.get(dim, _ZERO) + cost
        self._pending = {}
        self._pending_start, self._pending_window = None, {}

    def seed(self, kind: str, key: str, windows: Iterable[tuple[int, Decimal]], until_us: int,
             team: str | None = None) -> None:
        """Load history (``(window_start_us, spend)`` pairs, e.g. from the ledger) for one entity, filling the
        windows without spend with zero up to ``until_us``; judging then starts from ``until_us``."""
        self._fold()
        entity = self._entity(kind, key)
        entity.team = team or entity.team
        spends = {start - start % self._window_us: value for start, value in windows}
        if spends:
            start = min(spends)
            first = max(start, until_us - self.config.history_windows * self._window_us)
            first -= first % self._window_us
            for window_start in range(first, until_us - until_us % self._window_us, self._window_us):
                value = float(spends.get(window_start, _ZERO))
                entity.baseline.add(value, self._slot(window_start))
            entity.last_spend_us = max(spends)
        boundary = until_us - until_us % self._window_us
        if self._next_close_us is None or self._next_close_us < boundary:
            self._next_close_us = boundary

    # -- clock --------------------------------------------------------------------------------------------------

    def _slot(self, start_us: int) -> int:
        local = _from_us(start_us).astimezone(self._zone)
        return local.weekday() * 24 + local.hour

    def advance(self, watermark_us: int) -> list[Anomaly]:
        """Judge every window that ended at least ``grace_s`` before ``watermark_us`` (event time), for every known
        entity, quiet ones included (an empty window is data). Returns episode triggers and resolves in order."""
        out: list[Anomaly] = []
        if self._next_close_us is None:
            return out
        horizon = watermark_us - self._grace_us
        if self._next_close_us + self._window_us <= horizon:
            self._fold()
        while self._next_close_us + self._window_us <= horizon:
            start = self._next_close_us
            for entity in list(self._entities.values()):
                if start - entity.last_spend_us > self.config.forget_after_s * _US and not entity.open:
                    del self._entities[(entity.kind, entity.key)]
                    continue
                result = self._judge(entity, start)
                if result is not None:
                    out.append(result)
            self._next_close_us = start + self._window_us
        return out

    def _judge(self, entity: _Entity, start: int) -> Anomaly | None:
        window = entity.open.pop(start, None)
        actual = window[0][0] if window else _ZERO
        breakdown = window[1] if window else {}
        baseline = entity.baseline
        slot = self._slot(start)
        value = float(actual)
        if not baseline.ready():
            baseline.add(value, slot)
            self._learn_shares(entity, actual, breakdown)
            return None
        centre, scale, c = baseline.expected(slot)
        expected_f = max(0.0, math.exp(centre) - c)
        score = (math.log(value + c) - centre) / scale
        expected = Decimal(repr(expected_f)).quantize(_Q12)
        impact = actual - expected
        cfg = self.config
        anomalous = (score >= cfg.z_threshold and value >= cfg.min_ratio * expected_f
                     and impact >= cfg.min_impact_usd)
        result: Anomaly | None = None
        if anomalous:
            # Winsorize: the anomaly enters the history at the threshold, not at its own height.
            clip = math.exp(centre + cfg.z_threshold * scale) - c
            baseline.add(min(value, clip), slot)
            entity.normal_streak = 0
            if entity.episode_start_us is None:
                entity.episode_start_us = start
                result = self._anomaly(entity, start, expected, actual, score, breakdown, "trigger")
                entity.last = result
        else:
            baseline.add(value, slot)
            self._learn_shares(entity, actual, breakdown)
            if entity.episode_start_us is not None:
                entity.normal_streak += 1
                if entity.normal_streak >= cfg.resolve_after:
                    result = self._anomaly(entity, start, expected, actual, score, breakdown, "resolve")
                    entity.episode_start_us = None
                    entity.normal_streak = 0
        return result

    def _anomaly(self, entity: _Entity, start: int, expected: Decimal, actual: Decimal, score: float,
                 breakdown: Mapping[tuple[str, str], Decimal], state: str) -> Anomaly:
        impact = actual - expected
        pct = float(impact / expected * 100) if expected > 0 else math.inf
        causes = compute_root_causes(actual, breakdown, entity.shares, expected, self.config.root_cause_top) \
            if state == "trigger" else ()
        assert entity.episode_start_us is not None
        return Anomaly(entity.kind, entity.key, start, start + self._window_us, expected, actual, impact, pct,
                       score, causes, entity.episode_start_us, state, entity.team,
                       entity.project if entity.kind == "agent" else None)

    @staticmethod
    def _learn_shares(entity: _Entity, actual: Decimal, breakdown: Mapping[tuple[str, str], Decimal]) -> None:
        if actual <= 0:
            return
        baseline = entity.baseline
        alpha = max(1.0 / max(baseline.active, 1), 0.02)
        total = float(actual)
        shares = entity.shares
        for key in set(shares) | set(breakdown):
            now = float(breakdown.get(key, _ZERO)) / total
            shares[key] = (1 - alpha) * shares.get(key, 0.0) + alpha * now
        for key in [k for k, v in shares.items() if v < 1e-4]:
            del shares[key]


def build_anomaly_alert(anomaly: Anomaly) -> dict[str, Any]:
    """The Alert record (Avro dict for ``finops.alerts.v1``) of an anomaly episode's trigger or resolve."""
    entity = f"{anomaly.entity_kind} {anomaly.entity}"
    window = _from_us(anomaly.window_start_us)
    details = {
        "entity_kind": anomaly.entity_kind,
        "entity": anomaly.entity,
        "window_start": window.isoformat(),
        "window_end": _from_us(anomaly.window_end_us).isoformat(),
        "expected_usd": str(anomaly.expected_usd),
        "actual_usd": str(anomaly.actual_usd),
        "impact_usd": str(anomaly.impact_usd),
        "impact_pct": "inf" if math.isinf(anomaly.impact_pct) else f"{anomaly.impact_pct:.1f}",
        "score": f"{anomaly.score:.2f}",
        "episode_start": _from_us(anomaly.episode_start_us).isoformat(),
    }
    for index, cause in enumerate(anomaly.root_causes, 1):
        details[f"root_cause_{index}"] = cause.describe()
    if anomaly.root_causes:
        details["root_cause_dimensions"] = ",".join(f"{c.dimension}={c.value}" for c in anomaly.root_causes)
    if anomaly.state == "trigger":
        causes = "; ".join(c.describe() for c in anomaly.root_causes) or "no single dimension stands out"
        title = f"Spend anomaly: {entity} at {anomaly.actual_usd.quantize(Decimal('0.01'))} USD per window"
        summary = (f"{entity} spent ${anomaly.actual_usd.quantize(Decimal('0.0001'))} in the window from "
                   f"{window:%Y-%m-%d %H:%M} UTC against ${anomaly.expected_usd.quantize(Decimal('0.0001'))} "
                   f"expected (+{details['impact_pct']}%, robust z {anomaly.score:.1f}). Root cause: {causes}.")
        severity = "warning"
    else:
        title = f"Spend anomaly of {entity} resolved"
        summary = f"{entity} is back within its usual spend since {window:%Y-%m-%d %H:%M} UTC."
        severity = "info"
    return {
        "alert_id": f"{anomaly.dedup_key}:{anomaly.state}",
        "dedup_key": anomaly.dedup_key,
        "kind": "anomaly",
        "severity": severity,
        "state": anomaly.state,
        "occurred_at": _from_us(anomaly.window_end_us),
        "team": anomaly.team,
        "project": anomaly.project,
        "agent_id": anomaly.entity if anomaly.entity_kind == "agent" else None,
        "policy_id": None,
        "model": None,
        "title": title,
        "summary": summary,
        "amount_usd": anomaly.impact_usd if anomaly.state == "trigger" else anomaly.actual_usd,
        "limit_usd": anomaly.expected_usd,
        "details": details,
        "actions": ["notify"] if anomaly.state == "trigger" else [],
    }
