"""Budget enforcement as pure, clock-injected logic: periods, counters, threshold crossings, forecasts and caps.

Role: no Kafka, Faust or ClickHouse here (STYLE habit 1). The detection service (``stream_jobs/detection.py``)
feeds it priced events with their input partition and offset, calls :meth:`BudgetEngine.advance` with its
event-time clock, persists :meth:`BudgetEngine.take_dirty` and publishes the returned alerts.

Guarantee: an event is counted at most once per (counter, partition, offset), in the calendar period of its own
``occurred_at``; a threshold crossing fires once per period, even across a restart; alert ids are deterministic,
so a replay of the same input produces the same alerts. See DESIGN §5 and §7, and the README, "Budgets".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from schemas.errors import FinopsError
from schemas.models import BudgetPolicy

__all__ = [
    "BudgetCounter",
    "BudgetEngine",
    "BudgetError",
    "Period",
    "Reconciliation",
    "SpendEvent",
    "compute_attribution",
    "compute_entity",
    "compute_forecast",
    "compute_period",
    "counter_key",
    "policy_matches",
]

_US = 1_000_000
_HOUR_US = 3600 * _US
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)
_Q12 = Decimal("0.000000000001")


class BudgetError(FinopsError):
    """Budget logic was used wrongly (unknown period, a counter state that cannot be restored)."""


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


# --------------------------------------------------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------------------------------------------------


class Period(NamedTuple):
    """One calendar period of a policy: ``[start_us, end_us)`` in UTC microseconds and a human label."""

    start_us: int
    end_us: int
    label: str

    @property
    def start(self) -> datetime:
        return _from_us(self.start_us)

    @property
    def end(self) -> datetime:
        return _from_us(self.end_us)


def _local_midnight(day: date, zone: ZoneInfo) -> int:
    # datetime(..., tzinfo=zone) resolves a local time; a midnight skipped by DST (rare, e.g. America/Havana) is
    # taken with fold=0, i.e. the offset before the change, which still orders periods correctly.
    return _to_us(datetime(day.year, day.month, day.day, tzinfo=zone))


def compute_period(period: str, timezone: str, at: datetime | int) -> Period:
    """The calendar period (day, ISO week starting Monday, month) in ``timezone`` that contains ``at``.

    A period starts at local midnight (a week on Monday, a month on the 1st) and is a half-open UTC interval
    ``[start, end)`` plus a label (``2025-03-14``, ``2025-W11``, ``2025-03``); it is computed from the local calendar
    date, so a DST change makes that day 23 or 25 hours long, as a person reading the budget expects.

    ``at`` is a tz-aware datetime or UTC epoch microseconds. Raises :class:`BudgetError` for an unknown period;
    ``ZoneInfoNotFoundError`` for an unknown zone (policies are validated before they get here).
    """
    zone = ZoneInfo(timezone)
    moment = _from_us(at) if isinstance(at, int) else at
    local = moment.astimezone(zone).date()
    if period == "day":
        first, after = local, local + timedelta(days=1)
        label = first.isoformat()
    elif period == "week":
        first = local - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
        year, week, _ = first.isocalendar()
        label = f"{year}-W{week:02d}"
    elif period == "month":
        first = local.replace(day=1)
        after = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        label = f"{first.year}-{first.month:02d}"
    else:
        raise BudgetError(f"unknown budget period {period!r}: expected day, week or month")
    return Period(_local_midnight(first, zone), _local_midnight(after, zone), label)


def compute_forecast(spent: Decimal, period: Period, now_us: int) -> Decimal | None:
    """Projected spend at the end of ``period`` from the average burn rate so far; None before the period starts
    or after it ends (nothing left to project). Pure.

    The burn rate is the period's average so far (spend / elapsed); the projection is ``spent + rate * remaining``.
    The engine judges it only after ``forecast_min_elapsed`` of the period (before that one busy hour extrapolates
    to nonsense) and fires once per period while spend is still under the limit."""
    elapsed = now_us - period.start_us
    remaining = period.end_us - now_us
    if elapsed <= 0 or remaining < 0:
        return None
    # Quantized to the 12 places of Avro decimal(38, 12) so the value can travel in an Alert.
    return (spent + spent * Decimal(remaining) / Decimal(elapsed)).quantize(_Q12)


# --------------------------------------------------------------------------------------------------------------------
# Events and scopes
# --------------------------------------------------------------------------------------------------------------------


class SpendEvent(NamedTuple):
    """The fields of a priced event that budgets, anomalies and waste detectors read (built once per event)."""

    occurred_at_us: int
    agent_id: str
    team: str
    project: str
    model: str
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    task_id: str | None = None
    task_type: str | None = None
    tags: Mapping[str, str] = {}
    event_id: str = ""
    # Per-call facts the waste detectors read (defaults keep budget-only tests short).
    parent_task_id: str | None = None
    prompt_hash: str | None = None
    attempt: int = 1
    status: str = "ok"
    cache_read_tokens: int = 0
    #: cost of the input side (uncached input + cache reads + cache writes), USD.
    input_cost_usd: Decimal = Decimal(0)
    #: False for a call the pricer could not price (cost 0, flagged): counted as unpriced, a breach where the policy
    #: says ``unpriced: breach``.
    priced: bool = True


def compute_entity(policy: BudgetPolicy) -> str:
    """The entity a policy governs, as it appears in dedup keys: ``team=support``, ``tag=customer_tier=enterprise``."""
    return f"{policy.scope_type}={policy.scope_value}"


def policy_matches(policy: BudgetPolicy, event: SpendEvent) -> bool:
    """True when ``event`` is in the policy's scope."""
    scope = policy.scope_type
    if scope == "team":
        return event.team == policy.scope_value
    if scope == "project":
        return event.project == policy.scope_value
    if scope == "agent":
        return event.agent_id == policy.scope_value
    key, _, value = policy.scope_value.partition("=")
    return event.tags.get(key) == value


def _top(spend: Mapping[str, Decimal]) -> str | None:
    """The key with the most spend (ties: the smallest name), None when empty."""
    return min(spend.items(), key=lambda kv: (-kv[1], kv[0]))[0] if spend else None


def compute_attribution(policy: BudgetPolicy, teams: Mapping[str, Decimal],
                        projects: Mapping[str, Decimal]) -> dict[str, str]:
    """The ``team`` / ``project`` a policy's alert is attributed to, from the spend per team and per project its
    counter counted (the usage events carry them). Pure.

    An agent's budget takes the team and project the agent spent under (the one with the most spend when it spent
    under several); a project's budget its (top) team; a team's budget needs nothing. A tag budget cuts across
    teams: it is attributed only where all of its spend came from one team (or project), else it stays an
    organisation-wide alert (finops admins). Dimensions it cannot name are left out. The dashboard filters alerts
    by team and routing matches on it, so an unattributed alert would reach finops admins only."""
    out: dict[str, str] = {}
    if policy.scope_type == "agent":
        for name, spend in (("team", teams), ("project", projects)):
            if (top := _top(spend)) is not None:
                out[name] = top
    elif policy.scope_type == "project":
        if (top := _top(teams)) is not None:
            out["team"] = top
    elif policy.scope_type == "tag":
        for name, spend in (("team", teams), ("project", projects)):
            if len(spend) == 1:
                out[name] = next(iter(spend))
    return out


def counter_key(policy_id: str, period_start_us: int) -> str:
    """The persistent key of a budget counter (also its state-topic key)."""
    return f"budget:{policy_id}:{period_start_us}"


# --------------------------------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BudgetCounter:
    """Spend of one policy in one period, with the dedupe and alert state that must move with it.

    Keyed by ``(policy_id, period start)``: a new period starts at zero without any reset job, and a late event
    lands in the period it belongs to. Per input partition it keeps the amount counted and the highest offset
    applied: an event at or below that offset is a replay and is skipped, so the counter and its dedupe move
    together (DESIGN §5). The fired thresholds are persisted with it, and so is the spend per team and project it
    counted (for :func:`compute_attribution`).
    """

    policy_id: str
    period: Period
    #: partition -> amount counted from that input partition.
    parts: dict[int, Decimal] = field(default_factory=dict)
    #: partition -> highest input offset applied (replays at or below it are skipped).
    offsets: dict[int, int] = field(default_factory=dict)
    #: hour start (UTC us) -> amount counted in that hour of event time, adjustments included (for reconciliation).
    hours: dict[int, Decimal] = field(default_factory=dict)
    #: what reconciliation against the ledger added (events this counter never saw; negative: counted twice).
    adjustment: Decimal = _ZERO
    #: threshold percent -> alert sequence number of its open trigger.
    fired: dict[int, int] = field(default_factory=dict)
    forecast_fired: bool = False
    seq: int = 0
    closed: bool = False
    #: team -> amount counted from that team's events; project -> amount: whom the counter's alerts are about.
    teams: dict[str, Decimal] = field(default_factory=dict)
    projects: dict[str, Decimal] = field(default_factory=dict)
    #: unpriced calls counted in this period (their dollars are unknown, so they are counted apart).
    unpriced: int = 0

    @property
    def spent(self) -> Decimal:
        return sum(self.parts.values(), _ZERO) + self.adjustment

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot (Decimals as strings), restored by :meth:`from_state`."""
        return {
            "policy_id": self.policy_id,
            "period": [self.period.start_us, self.period.end_us, self.period.label],
            "parts": {str(p): str(v) for p, v in self.parts.items()},
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "hours": {str(h): str(v) for h, v in self.hours.items()},
            "adjustment": str(self.adjustment),
            "fired": {str(p): s for p, s in self.fired.items()},
            "forecast_fired": self.forecast_fired,
            "seq": self.seq,
            "closed": self.closed,
            "teams": {t: str(v) for t, v in self.teams.items()},
            "projects": {p: str(v) for p, v in self.projects.items()},
            "unpriced": self.unpriced,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BudgetCounter:
        """Rebuild a counter from :meth:`to_state` output. Raises :class:`BudgetError` on a malformed state."""
        try:
            start, end, label = state["period"]
            return cls(
                policy_id=str(state["policy_id"]),
                period=Period(int(start), int(end), str(label)),
                parts={int(p): Decimal(v) for p, v in state["parts"].items()},
                offsets={int(p): int(o) for p, o in state["offsets"].items()},
                hours={int(h): Decimal(v) for h, v in state["hours"].items()},
                adjustment=Decimal(state["adjustment"]),
                fired={int(p): int(s) for p, s in state["fired"].items()},
                forecast_fired=bool(state["forecast_fired"]),
                seq=int(state["seq"]),
                closed=bool(state["closed"]),
                # absent in states written before alerts carried attribution: learnt again from the next events
                teams={str(t): Decimal(v) for t, v in state.get("teams", {}).items()},
                projects={str(p): Decimal(v) for p, v in state.get("projects", {}).items()},
                unpriced=int(state.get("unpriced", 0)),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as err:
            raise BudgetError(f"budget counter state cannot be restored ({err!r}); "
                              "the state topic holds a record this version does not understand") from err


class Reconciliation(NamedTuple):
    """What :meth:`BudgetEngine.reconcile` changed: USD ``added`` (ledger above the counter), ``removed`` (counter
    above the ledger, lowered), ``short`` (counter above the ledger, not lowered: the ledger may lag) and the
    alerts the correction raised or resolved."""

    added: Decimal
    removed: Decimal
    short: Decimal
    alerts: list[dict[str, Any]]


@dataclass(slots=True)
class _TaskTally:
    cost: Decimal
    tokens: int
    last_us: int
    fired: bool = False


def _severity(percent: int) -> str:
    if percent >= 100:
        return "critical"
    if percent >= 80:
        return "warning"
    return "info"


def _money(value: Decimal) -> str:
    return f"${value.quantize(Decimal('0.01')):,}"


def _judged_percent(counter: BudgetCounter, policy: BudgetPolicy) -> Decimal:
    """The utilisation thresholds are judged against: the spend's percent of the limit, or at least 100 while the
    period has unpriced calls and the policy says ``unpriced: breach`` (fail-safe: unknown cost is not no cost)."""
    percent = _percent_of(counter.spent, policy.limit_usd)
    if counter.unpriced and policy.unpriced == "breach" and percent < _HUNDRED:
        return _HUNDRED
    return percent


def _percent_of(spent: Decimal, limit: Decimal) -> Decimal:
    if limit <= 0:
        return Decimal("Infinity") if spent > 0 else _ZERO
    return spent * _HUNDRED / limit


class BudgetEngine:
    """Every budget counter of the fleet and the alerts they raise. Not thread-safe; one per detection worker.

    Promises: :meth:`apply` counts an event at most once per (counter, partition, offset); each method returns the
    Alert records (Avro dicts for ``finops.alerts.v1``) its state changes caused, in order; :meth:`take_dirty` hands
    out the counters changed since the last call so the caller can persist them BEFORE committing input offsets.

    Alerts: a threshold crossing emits one ``trigger`` per (policy, entity, threshold, period) with the dedup key
    ``policy:entity:threshold:period`` (``pol-x:team=support:80:2025-03``); it is resolved (same key) when the
    period rolls over or when the limit is raised (or the threshold removed) so that spend is below it again.
    Alert ids are ``dedup_key:state:n`` with ``n`` a per-counter sequence, deterministic under replay.

    Caps: ``max_task_cost_usd`` / ``max_task_tokens`` guard one ``task_id`` (the agent-loop guard) and fire once
    per task; ``max_call_tokens`` guards one call and fires once per (policy, agent, period). Task tallies live in
    memory only and are evicted after ``task_idle`` of event time without a call (documented gap: a task spanning
    a worker restart is tallied from the restart on; the deterministic alert id keeps a repeated alert idempotent).

    Clock: every method that needs "now" takes it as an argument (the service passes its event-time watermark).
    """

    def __init__(
        self,
        *,
        forecast_min_elapsed: float = 0.2,
        closed_retention: timedelta = timedelta(hours=6),
        task_idle: timedelta = timedelta(hours=6),
    ) -> None:
        """``forecast_min_elapsed``: share of a period that must pass before a forecast is judged.
        ``closed_retention``: how long after its end a period's counter is kept (late events, reconciliation).
        ``task_idle``: event time after which a task's cap tally is forgotten."""
        self._forecast_min_elapsed = forecast_min_elapsed
        self._closed_retention_us = int(closed_retention.total_seconds() * _US)
        self._task_idle_us = int(task_idle.total_seconds() * _US)
        self.policies: dict[str, BudgetPolicy] = {}
        self.counters: dict[str, BudgetCounter] = {}
        # (scope_type, scope_value) -> enabled policies; tag policies are few and checked one by one.
        self._index: dict[tuple[str, str], list[BudgetPolicy]] = {}
        self._tag_policies: list[BudgetPolicy] = []
        self._periods: dict[tuple[str, str], Period] = {}
        self._tasks: dict[tuple[str, str], _TaskTally] = {}
        self._call_cap_fired: set[str] = set()
        self._dirty: set[str] = set()

    # -- policies -----------------------------------------------------------------------------------------------

    def _reindex(self) -> None:
        self._index = {}
        self._tag_policies = []
        for policy in self.policies.values():
            if not policy.enabled:
                continue
            if policy.scope_type == "tag":
                self._tag_policies.append(policy)
            else:
                self._index.setdefault((policy.scope_type, policy.scope_value), []).append(policy)

    def set_policy(self, policy: BudgetPolicy, now_us: int) -> list[dict[str, Any]]:
        """Install or update a policy (an older version than the one held is ignored). Re-judges its open counters
        at once: thresholds no longer crossed (limit raised, threshold removed, policy disabled) resolve, newly
        crossed ones (limit lowered) trigger. Returns the alerts."""
        held = self.policies.get(policy.policy_id)
        if held is not None and policy.version < held.version:
            return []
        self.policies[policy.policy_id] = policy
        self._reindex()
        alerts: list[dict[str, Any]] = []
        for key, counter in self.counters.items():
            if counter.policy_id != policy.policy_id or counter.closed:
                continue
            if not policy.enabled:
                alerts.extend(self._resolve_all(key, counter, policy, now_us, "policy disabled"))
                continue
            alerts.extend(self._resolve_below(key, counter, policy, now_us))
            alerts.extend(self._judge(key, counter, policy, now_us))
        return alerts

    def remove_policy(self, policy_id: str, now_us: int) -> list[dict[str, Any]]:
        """Delete a policy (tombstone): its open alerts resolve and its counters are dropped."""
        policy = self.policies.pop(policy_id, None)
        self._reindex()
        if policy is None:
            return []
        alerts: list[dict[str, Any]] = []
        for key in [k for k, c in self.counters.items() if c.policy_id == policy_id]:
            counter = self.counters.pop(key)
            if not counter.closed:
                alerts.extend(self._resolve_all(key, counter, policy, now_us, "policy deleted"))
            self._dirty.add(key)
        return alerts

    def matching(self, event: SpendEvent) -> list[BudgetPolicy]:
        """The enabled policies whose scope contains ``event``."""
        index = self._index
        found: list[BudgetPolicy] = []
        for key in (("team", event.team), ("project", event.project), ("agent", event.agent_id)):
            hit = index.get(key)
            if hit:
                found.extend(hit)
        if self._tag_policies and event.tags:
            found.extend(p for p in self._tag_policies if policy_matches(p, event))
        return found

    # -- events -------------------------------------------------------------------------------------------------

    def _period_of(self, policy: BudgetPolicy, ts_us: int) -> Period:
        cache_key = (policy.period, policy.timezone)
        cached = self._periods.get(cache_key)
        if cached is not None and cached.start_us <= ts_us < cached.end_us:
            return cached
        period = compute_period(policy.period, policy.timezone, ts_us)
        # Cache the latest period only: events arrive roughly in time order, so this hits nearly always.
        if cached is None or period.start_us >= cached.start_us:
            self._periods[cache_key] = period
        return period

    def counter_for(self, policy: BudgetPolicy, ts_us: int) -> tuple[str, BudgetCounter]:
        """The counter of ``policy`` for the period containing ``ts_us`` (created empty when new)."""
        period = self._period_of(policy, ts_us)
        key = counter_key(policy.policy_id, period.start_us)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = BudgetCounter(policy.policy_id, period)
        return key, counter

    def apply(self, event: SpendEvent, partition: int, offset: int, now_us: int | None = None) -> list[dict[str, Any]]:
        """Count ``event`` (read at ``partition``/``offset`` of the input) in every matching policy's counter and
        judge thresholds, forecasts and caps. ``now_us`` is the caller's clock (default: the event's time).
        Replayed offsets are skipped per counter. Returns the alerts raised."""
        policies = self.matching(event)
        if not policies:
            return []
        now = event.occurred_at_us if now_us is None else now_us
        alerts: list[dict[str, Any]] = []
        for policy in policies:
            key, counter = self.counter_for(policy, event.occurred_at_us)
            if offset <= counter.offsets.get(partition, -1):
                continue  # applied before a restart: the replay must not count it again
            counter.offsets[partition] = offset
            cost = event.cost_usd
            counter.parts[partition] = counter.parts.get(partition, _ZERO) + cost
            hour = event.occurred_at_us - event.occurred_at_us % _HOUR_US
            counter.hours[hour] = counter.hours.get(hour, _ZERO) + cost
            counter.teams[event.team] = counter.teams.get(event.team, _ZERO) + cost
            counter.projects[event.project] = counter.projects.get(event.project, _ZERO) + cost
            if not event.priced:
                counter.unpriced += 1
            self._dirty.add(key)
            if not counter.closed:
                alerts.extend(self._judge(key, counter, policy, now))
            alerts.extend(self._caps(policy, counter, event, now))
        return alerts

    # -- time ---------------------------------------------------------------------------------------------------

    def advance(self, now_us: int) -> list[dict[str, Any]]:
        """Move the clock: periods that ended resolve their open alerts (the next period starts clean), forecasts
        of open periods are re-judged, old counters and idle task tallies are dropped. Returns the alerts."""
        alerts: list[dict[str, Any]] = []
        for key in list(self.counters):
            counter = self.counters[key]
            policy = self.policies.get(counter.policy_id)
            if counter.period.end_us <= now_us:
                if not counter.closed:
                    counter.closed = True
                    self._dirty.add(key)
                    if policy is not None:
                        alerts.extend(self._resolve_all(key, counter, policy, now_us, "period ended"))
                if counter.period.end_us + self._closed_retention_us <= now_us:
                    del self.counters[key]
                    self._dirty.add(key)  # persisted as a tombstone
            elif policy is not None and policy.enabled and policy.forecast:
                alerts.extend(self._judge_forecast(key, counter, policy, now_us))
        idle_before = now_us - self._task_idle_us
        if self._tasks:
            for task_key in [k for k, t in self._tasks.items() if t.last_us < idle_before]:
                del self._tasks[task_key]
        return alerts

    # -- reconciliation -----------------------------------------------------------------------------------------

    def reconcile(
        self, key: str, ledger_hours: Mapping[int, Decimal], settled_before_us: int, now_us: int,
        tolerance: Decimal = Decimal("0.000001"), *, lower: bool = False,
    ) -> Reconciliation:
        """Compare a counter with the ledger's spend per event-time hour (hours ending at or before
        ``settled_before_us`` only: later ones are still arriving), and correct it towards the ledger.

        Where the ledger holds more than the counter counted, the counter is raised by the difference (events it
        never saw: before the worker started, before the policy existed, or beyond the input topic's retention)
        and thresholds are judged. Where it holds less, the counter counted something the ledger does not hold
        (a re-sent event the detection dedupe did not catch): with ``lower`` (the caller knows the ledger holds
        every event the counter counted) the counter is lowered to the ledger and thresholds now above the spend
        resolve; without it the ledger may just lag, so nothing is lowered and the shortfall is only reported.
        """
        counter = self.counters.get(key)
        if counter is None:
            return Reconciliation(_ZERO, _ZERO, _ZERO, [])
        added = removed = short = _ZERO
        hours = set(ledger_hours) | set(counter.hours)
        for hour in sorted(hours):
            if hour + _HOUR_US > settled_before_us:
                continue
            ours = counter.hours.get(hour, _ZERO)
            theirs = ledger_hours.get(hour, _ZERO)
            diff = theirs - ours
            if diff > tolerance:
                counter.hours[hour] = theirs
                counter.adjustment += diff
                added += diff
            elif -diff > tolerance and lower:
                counter.hours[hour] = theirs
                counter.adjustment += diff
                removed -= diff
            elif -diff > tolerance:
                short += -diff
        alerts: list[dict[str, Any]] = []
        if added or removed:
            self._dirty.add(key)
            policy = self.policies.get(counter.policy_id)
            if policy is not None and policy.enabled and not counter.closed:
                if removed:
                    alerts.extend(self._resolve_below(key, counter, policy, now_us))
                alerts.extend(self._judge(key, counter, policy, now_us))
        return Reconciliation(added, removed, short, alerts)

    # -- persistence --------------------------------------------------------------------------------------------

    def take_dirty(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Counters changed since the last call as ``(key, state)``; state None = deleted (write a tombstone)."""
        out = [(key, self.counters[key].to_state() if key in self.counters else None) for key in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def restore(self, key: str, state: Mapping[str, Any]) -> None:
        """Load a persisted counter (at start, before any event). Raises :class:`BudgetError` if malformed."""
        self.counters[key] = BudgetCounter.from_state(state)

    # -- judging ------------------------------------------------------------------------------------------------

    def _judge(self, key: str, counter: BudgetCounter, policy: BudgetPolicy, now_us: int) -> list[dict[str, Any]]:
        spent = counter.spent
        percent = _judged_percent(counter, policy)
        alerts: list[dict[str, Any]] = []
        for step in sorted(policy.thresholds, key=lambda s: s.percent):
            if step.percent in counter.fired or percent < step.percent:
                continue
            counter.seq += 1
            counter.fired[step.percent] = counter.seq
            self._dirty.add(key)
            actions: list[str] = list(step.actions)
            if policy.mode == "hard" and step.percent >= 100 and "suspend" not in actions:
                actions.append("suspend")  # a hard budget stops spending at its limit whatever the ladder says
            alerts.append(self._threshold_alert(counter, policy, step.percent, "trigger", now_us, spent, actions,
                                                list(step.channels)))
        if policy.forecast:
            alerts.extend(self._judge_forecast(key, counter, policy, now_us))
        return alerts

    def _judge_forecast(self, key: str, counter: BudgetCounter, policy: BudgetPolicy,
                        now_us: int) -> list[dict[str, Any]]:
        if counter.forecast_fired or counter.closed:
            return []
        period = counter.period
        length = period.end_us - period.start_us
        if now_us - period.start_us < self._forecast_min_elapsed * length:
            return []
        spent = counter.spent
        if spent >= policy.limit_usd:
            return []  # over already: the 100 % threshold speaks, a forecast adds nothing
        projected = compute_forecast(spent, period, min(now_us, period.end_us))
        if projected is None or projected <= policy.limit_usd:
            return []
        counter.seq += 1
        counter.forecast_fired = True
        self._dirty.add(key)
        entity = compute_entity(policy)
        dedup = f"{policy.policy_id}:{entity}:forecast:{period.label}"
        left = timedelta(microseconds=max(0, period.end_us - now_us))
        return [self._alert(
            dedup, counter.seq, "budget_forecast", "warning", "trigger", now_us, policy, counter=counter,
            title=f"{entity} is on course to exceed its {period.label} budget",
            summary=(f"Spent {_money(spent)} of {_money(policy.limit_usd)} with {_human(left)} left; at the current "
                     f"burn rate the period ends near {_money(projected)}."),
            amount=projected, actions=["notify"],
            details={"period": period.label, "spent_usd": str(spent), "forecast_usd": str(projected)},
        )]

    def _resolve_below(self, key: str, counter: BudgetCounter, policy: BudgetPolicy,
                       now_us: int) -> list[dict[str, Any]]:
        spent = counter.spent
        percent = _judged_percent(counter, policy)
        present = {step.percent for step in policy.thresholds}
        alerts: list[dict[str, Any]] = []
        for threshold in sorted(counter.fired):
            if threshold in present and percent >= threshold:
                continue
            del counter.fired[threshold]
            counter.seq += 1
            self._dirty.add(key)
            alerts.append(self._threshold_alert(counter, policy, threshold, "resolve", now_us, spent, [], []))
        if counter.forecast_fired:
            projected = compute_forecast(spent, counter.period, now_us)
            if not policy.forecast or projected is None or projected <= policy.limit_usd:
                alerts.append(self._forecast_resolve(key, counter, policy, now_us))
        return alerts

    def _resolve_all(self, key: str, counter: BudgetCounter, policy: BudgetPolicy, now_us: int,
                     why: str) -> list[dict[str, Any]]:
        spent = counter.spent
        alerts: list[dict[str, Any]] = []
        for threshold in sorted(counter.fired):
            counter.seq += 1
            alerts.append(self._threshold_alert(counter, policy, threshold, "resolve", now_us, spent, [], [],
                                                why=why))
        counter.fired.clear()
        if counter.forecast_fired:
            alerts.append(self._forecast_resolve(key, counter, policy, now_us))
        self._dirty.add(key)
        return alerts

    def _forecast_resolve(self, key: str, counter: BudgetCounter, policy: BudgetPolicy,
                          now_us: int) -> dict[str, Any]:
        counter.forecast_fired = False
        counter.seq += 1
        self._dirty.add(key)
        entity = compute_entity(policy)
        return self._alert(
            f"{policy.policy_id}:{entity}:forecast:{counter.period.label}", counter.seq, "budget_forecast", "info",
            "resolve", now_us, policy, counter=counter,
            title=f"{entity}: {counter.period.label} budget forecast cleared",
            summary="The forecast no longer exceeds the limit (limit raised or period ended).",
            amount=counter.spent, actions=[], details={"period": counter.period.label},
        )

    def _threshold_alert(self, counter: BudgetCounter, policy: BudgetPolicy, threshold: int, state: str,
                         now_us: int, spent: Decimal, actions: list[str], channels: list[str],
                         why: str | None = None) -> dict[str, Any]:
        entity = compute_entity(policy)
        label = counter.period.label
        dedup = f"{policy.policy_id}:{entity}:{threshold}:{label}"
        used = _percent_of(spent, policy.limit_usd)
        used_text = "inf" if used.is_infinite() else f"{used.quantize(Decimal('0.1'))}"
        details = {"period": label, "threshold_percent": str(threshold), "percent_used": used_text,
                   "period_start": counter.period.start.isoformat(), "period_end": counter.period.end.isoformat(),
                   "mode": policy.mode, "policy_version": str(policy.version)}
        if channels:
            details["channels"] = ",".join(channels)
        if counter.unpriced:
            details["unpriced_calls"] = str(counter.unpriced)
        if policy.downgrade_model and "downgrade" in actions:
            details["downgrade_model"] = policy.downgrade_model
        if policy.throttle_rate_per_minute and "throttle" in actions:
            details["throttle_rate_per_minute"] = str(policy.throttle_rate_per_minute)
        if state == "trigger":
            title = f"{entity} reached {threshold}% of its {label} budget"
            summary = (f"Spent {_money(spent)} of {_money(policy.limit_usd)} ({used_text}%) in period {label} "
                       f"(policy {policy.policy_id}, {policy.mode}). Actions: {', '.join(actions) or 'none'}.")
            if counter.unpriced:
                summary += (f" Plus {counter.unpriced} unpriced call(s) whose cost is unknown"
                            + (" (unpriced: breach: treated as at the limit)." if policy.unpriced == "breach"
                               else ".") + " v_unpriced_usage names the models and the fix.")
            severity = _severity(threshold)
        else:
            title = f"{entity}: {threshold}% alert of the {label} budget resolved"
            summary = f"Resolved ({why or 'limit raised or threshold removed'}); spend {_money(spent)} of " \
                      f"{_money(policy.limit_usd)}."
            severity = "info"
            details["reason"] = why or "limit raised"
        return self._alert(dedup, counter.seq, "budget_threshold", severity, state, now_us, policy, counter=counter,
                           title=title, summary=summary, amount=spent, actions=actions, details=details)

    def _caps(self, policy: BudgetPolicy, counter: BudgetCounter, event: SpendEvent,
              now_us: int) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        tokens = event.input_tokens + event.output_tokens
        label = counter.period.label
        if policy.max_call_tokens is not None and tokens > policy.max_call_tokens:
            dedup = f"{policy.policy_id}:agent={event.agent_id}:call_cap:{label}"
            if dedup not in self._call_cap_fired:
                self._call_cap_fired.add(dedup)
                alerts.append(self._alert(
                    dedup, 1, "call_cap", "warning", "trigger", now_us, policy,
                    title=f"{event.agent_id} made a call of {tokens:,} tokens (cap {policy.max_call_tokens:,})",
                    summary=(f"One call used {tokens:,} input+output tokens on {event.model}, above the policy's "
                             f"per-call cap of {policy.max_call_tokens:,} (policy {policy.policy_id}). Further "
                             f"oversized calls in {label} are not alerted again."),
                    amount=event.cost_usd, actions=["notify"], team=event.team, project=event.project,
                    agent_id=event.agent_id, model=event.model,
                    details={"tokens": str(tokens), "cap_tokens": str(policy.max_call_tokens), "period": label,
                             "event_id": event.event_id},
                ))
        if event.task_id and (policy.max_task_cost_usd is not None or policy.max_task_tokens is not None):
            task_key = (policy.policy_id, event.task_id)
            tally = self._tasks.get(task_key)
            if tally is None:
                tally = self._tasks[task_key] = _TaskTally(_ZERO, 0, event.occurred_at_us)
            tally.cost += event.cost_usd
            tally.tokens += tokens
            tally.last_us = max(tally.last_us, event.occurred_at_us)
            over_cost = policy.max_task_cost_usd is not None and tally.cost > policy.max_task_cost_usd
            over_tokens = policy.max_task_tokens is not None and tally.tokens > policy.max_task_tokens
            if (over_cost or over_tokens) and not tally.fired:
                tally.fired = True
                if over_cost and policy.max_task_cost_usd is not None:
                    what = f"cost {_money(tally.cost)} > cap {_money(policy.max_task_cost_usd)}"
                else:
                    what = f"{tally.tokens:,} tokens > cap {policy.max_task_tokens or 0:,}"
                actions = ["notify", "suspend"] if policy.mode == "hard" else ["notify"]
                alerts.append(self._alert(
                    f"{policy.policy_id}:task={event.task_id}:task_cap:{label}", 1, "task_cap", "critical",
                    "trigger", now_us, policy,
                    title=f"task {event.task_id} of {event.agent_id} exceeded its cap",
                    summary=(f"Task {event.task_id} ({event.agent_id}): {what} (policy {policy.policy_id}). "
                             "A task this expensive is usually an agent loop; check its recent calls."),
                    amount=tally.cost, limit=policy.max_task_cost_usd, actions=actions, team=event.team,
                    project=event.project, agent_id=event.agent_id, model=event.model,
                    details={"task_id": event.task_id, "task_cost_usd": str(tally.cost),
                             "task_tokens": str(tally.tokens), "period": label},
                ))
        return alerts

    @staticmethod
    def _alert(dedup: str, seq: int, kind: str, severity: str, state: str, now_us: int, policy: BudgetPolicy, *,
               title: str, summary: str, amount: Decimal | None, actions: list[str], details: dict[str, str],
               limit: Decimal | None = None, team: str | None = None, project: str | None = None,
               agent_id: str | None = None, model: str | None = None,
               counter: BudgetCounter | None = None) -> dict[str, Any]:
        scope = {"team": team, "project": project, "agent_id": agent_id}
        details = {**details, "scope_type": policy.scope_type, "scope_value": policy.scope_value}
        if counter is not None:
            # A policy's alert is about its scope, attributed like the usage that fed the counter: the team and
            # project an agent's (or a project's) spend came from, so the owning team's lead sees it (DESIGN §7:
            # every read is scoped to the caller's teams). agent_id stays the scope's own: enforcement reads it.
            scope.update(compute_attribution(policy, counter.teams, counter.projects))
            if len(counter.teams) > 1:
                details["teams"] = ",".join(sorted(counter.teams))
        if policy.scope_type in ("team", "project"):
            scope[policy.scope_type] = policy.scope_value
        elif policy.scope_type == "agent":
            scope["agent_id"] = policy.scope_value
        return {
            "alert_id": f"{dedup}:{state}:{seq}",
            "dedup_key": dedup,
            "kind": kind,
            "severity": severity,
            "state": state,
            "occurred_at": _from_us(now_us),
            "team": scope["team"],
            "project": scope["project"],
            "agent_id": scope["agent_id"],
            "policy_id": policy.policy_id,
            "model": model,
            "title": title,
            "summary": summary,
            "amount_usd": amount if amount is None or amount.is_finite() else None,
            "limit_usd": policy.limit_usd if limit is None else limit,
            "details": details,
            "actions": actions,
        }


def _human(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def iter_policies(policies: Iterable[BudgetPolicy]) -> dict[str, BudgetPolicy]:
    """Policies by id (the last one of an id wins); a small helper for loaders and tests."""
    return {policy.policy_id: policy for policy in policies}
