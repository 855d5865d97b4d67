"""Behavioural waste detectors: retry loops, runaway burn rate, duplicate prompts, oversized prompts.

Role: pure, event-time logic (no Kafka, Faust, ClickHouse or wall clock). :meth:`WasteDetectors.process` takes one
priced call (:class:`stream_jobs.budgets.SpendEvent`) and returns the waste signals it created or updated and the
alerts it raised; :meth:`WasteDetectors.advance` moves the event-time clock (ends episodes, evicts idle state).

Guarantee: every signal carries an estimated avoidable cost (what the waste cost beyond the needed calls) and a
deterministic id (same evidence, same id); it is re-emitted with a higher ``revision`` as its evidence grows, and
the ``waste_signals`` ReplacingMergeTree keeps the latest. The detectors and their estimates are described on
:class:`WasteDetectors`; see DESIGN §7.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from stream_jobs.budgets import SpendEvent

__all__ = [
    "WasteConfig",
    "WasteDetectors",
    "WasteSignal",
    "build_waste_record",
    "compute_poisson_upper",
]

_US = 1_000_000
_MINUTE_US = 60 * _US
_HOUR_US = 3600 * _US
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO = Decimal(0)
_Q12 = Decimal("0.000000000001")
_MAX_EVIDENCE_IDS = 50


def _from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class WasteConfig:
    """Thresholds of the detectors (defaults suit the simulator's fleet and common agent frameworks)."""

    retry_min_repeats: int = 4
    retry_min_attempt: int = 4
    retry_after_ok: int = 1
    duplicate_min_tasks: int = 3
    duplicate_window_s: int = 3600
    oversized_input_tokens: int = 120_000
    runaway_factor: float = 3.0
    runaway_window_s: int = 60
    runaway_bucket_s: int = 10
    runaway_min_usd: Decimal = Decimal("0.02")
    runaway_warmup_s: int = 3600
    runaway_half_life_s: int = 4 * 3600
    runaway_poisson_p: float = 1e-6
    runaway_min_tasks: int = 4
    runaway_end_after_s: int = 300
    state_idle_s: int = 3600


@dataclass(slots=True)
class WasteSignal:
    """One waste finding; ``revision`` grows as its evidence grows (same ``signal_id``)."""

    signal_id: str
    kind: str
    occurred_at_us: int
    detected_at_us: int
    team: str
    project: str
    agent_id: str
    task_id: str
    model: str
    avoidable_cost_usd: Decimal
    evidence: dict[str, Any]
    revision: int = 1


@lru_cache(maxsize=4096)
def compute_poisson_upper(mean: float, p: float) -> int:
    """The smallest ``k`` with ``P(X >= k) <= p`` for ``X ~ Poisson(mean)``: a count at or above it is that unlikely
    by chance. Pure (cached; call it with a rounded mean)."""
    if mean <= 0:
        return 1
    term = math.exp(-mean)
    cdf = term
    k = 0
    while 1.0 - cdf > p and k < 100_000:
        k += 1
        term *= mean / k
        cdf += term
    return k + 1


def _alert(signal: WasteSignal, severity: str, dedup: str, title: str, summary: str,
           actions: list[str]) -> dict[str, Any]:
    return {
        "alert_id": f"{dedup}:trigger",
        "dedup_key": dedup,
        "kind": "waste",
        "severity": severity,
        "state": "trigger",
        "occurred_at": _from_us(signal.detected_at_us),
        "team": signal.team,
        "project": signal.project,
        "agent_id": signal.agent_id,
        "policy_id": None,
        "model": signal.model or None,
        "title": title,
        "summary": summary,
        "amount_usd": signal.avoidable_cost_usd,
        "limit_usd": None,
        "details": {"waste_kind": signal.kind, "signal_id": signal.signal_id,
                    "avoidable_cost_usd": str(signal.avoidable_cost_usd), "task_id": signal.task_id},
        "actions": actions,
    }


def build_waste_record(signal: WasteSignal) -> dict[str, Any]:
    """The record published to ``finops.waste.v1``: an Alert-schema record of kind ``waste`` whose ``details`` carry
    exactly the ``waste_signals`` columns (``signal_id``, ``waste_kind`` -> ``kind``, ``occurred_at``,
    ``detected_at``, ``task_id``, ``avoidable_cost_usd``, ``evidence`` as JSON). Reusing the Alert schema means no new
    schema to register; the sink maps ``details`` to columns one to one."""
    money = signal.avoidable_cost_usd.quantize(_Q12)
    return {
        "alert_id": f"{signal.signal_id}:r{signal.revision}",
        "dedup_key": signal.signal_id,
        "kind": "waste",
        "severity": "info",
        "state": "trigger",
        "occurred_at": _from_us(signal.occurred_at_us),
        "team": signal.team,
        "project": signal.project,
        "agent_id": signal.agent_id,
        "policy_id": None,
        "model": signal.model or None,
        "title": f"{signal.kind.replace('_', ' ')}: {signal.agent_id}",
        "summary": f"Estimated avoidable cost ${money.quantize(Decimal('0.0001'))} ({signal.kind}).",
        "amount_usd": money,
        "limit_usd": None,
        "details": {
            "signal_id": signal.signal_id,
            "waste_kind": signal.kind,
            "occurred_at": _from_us(signal.occurred_at_us).isoformat(),
            "detected_at": _from_us(signal.detected_at_us).isoformat(),
            "task_id": signal.task_id,
            "avoidable_cost_usd": str(money),
            "revision": str(signal.revision),
            "evidence": json.dumps(signal.evidence, sort_keys=True, default=str),
        },
        "actions": [],
    }


# ---- per-detector state ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Repeat:
    """Calls sharing a key (task + prompt for loops, prompt for duplicates) after the first was seen again."""

    first_us: int
    last_us: int
    first_cost: Decimal
    total: Decimal
    calls: int
    max_attempt: int
    tasks: set[str]
    event_ids: list[str]
    signal: WasteSignal | None = None
    last_ok: bool = False
    after_ok: int = 0


@dataclass(slots=True)
class _Burn:
    """Runaway state of one agent: the trailing window in buckets, the per-minute norms and any open episode."""

    first_us: int
    buckets: deque[list[Any]] = field(default_factory=deque)  # [start_us, spend, root_tasks, calls]
    win_spend: Decimal = _ZERO
    win_tasks: int = 0
    win_calls: int = 0
    minute_start: int = 0
    minute_spend: float = 0.0
    minute_tasks: int = 0
    minute_calls: int = 0
    norm_spend: float = 0.0  # USD per minute
    norm_tasks: float = 0.0
    norm_calls: float = 0.0
    minutes: int = 0
    uses_tasks: bool = False
    seen_tasks: dict[str, int] = field(default_factory=dict)
    episode: WasteSignal | None = None
    episode_spend: Decimal = _ZERO
    calm_since: int | None = None
    last_update_minute: int = 0


class WasteDetectors:
    """All four detectors over one stream of priced calls. Not thread-safe.

    - ``retry_loop``: one task sending the same prompt hash ``retry_min_repeats`` times, or an ``attempt`` of
      ``retry_min_attempt`` or more (client libraries give up after 3 attempts by default), or re-sending it
      ``retry_after_ok`` times after a successful answer (a client retries failures; an agent that asks again after
      an answer is rejecting answers, which is how loops start). Avoidable: every call of the loop after the first.
    - ``duplicate_prompt``: the same prompt hash as the first attempt of ``duplicate_min_tasks`` different tasks
      within ``duplicate_window_s``, none a cache hit (``cache_read_tokens == 0``). Avoidable: every repeat after
      the first call (a response cache keyed by the prompt hash would have answered them).
    - ``oversized_prompt``: input above ``oversized_input_tokens``. Avoidable: the input-side cost of the tokens
      above the limit. One signal per agent and hour.
    - ``runaway``: an agent's dollars per minute over a trailing window at least ``runaway_factor`` times its
      norm (an exponentially weighted per-minute spend, half-life ``runaway_half_life_s``, updated with winsorized
      minutes and frozen during an episode, so it is robust to the burst it must find). Spend alone is heavy-tailed,
      so the burst must also show in behaviour: the root tasks started in the window must exceed the Poisson upper
      quantile (``runaway_poisson_p``) of the agent's task rate (calls when it sends no task ids). The windows are
      the last 1, 2, ... ``runaway_bucket_s`` buckets up to ``runaway_window_s``, judged on every call and sharing
      ``runaway_poisson_p`` (:meth:`_find_burst`): a steep jump is reported as soon as its first buckets prove it,
      a gentler one when the whole window does. Avoidable: episode spend minus the norm over the episode's
      duration.
    """

    def __init__(self, config: WasteConfig | None = None) -> None:
        self.config = config or WasteConfig()
        cfg = self.config
        self._bucket_us = cfg.runaway_bucket_s * _US
        self._window_us = cfg.runaway_window_s * _US
        self._idle_us = cfg.state_idle_s * _US
        self._alpha = 1.0 - 0.5 ** (60.0 / cfg.runaway_half_life_s)
        # First sightings are cheap tuples; a key seen twice is promoted to a _Repeat (most keys never repeat).
        self._loop_first: dict[tuple[str, str], tuple[int, Decimal, str, bool]] = {}
        self._loops: dict[tuple[str, str], _Repeat] = {}
        self._dup_first: dict[str, tuple[int, Decimal, str, str]] = {}
        self._dups: dict[str, _Repeat] = {}
        self._expiry: deque[tuple[int, int, Any]] = deque()  # (ts_us, 0 loop / 1 dup, key), in arrival order
        self._oversized: dict[tuple[str, int], WasteSignal] = {}
        self._oversized_alerted: set[tuple[str, int]] = set()
        self._burn: dict[str, _Burn] = {}

    # -- entry points -------------------------------------------------------------------------------------------

    def process(self, event: SpendEvent) -> tuple[list[WasteSignal], list[dict[str, Any]]]:
        """Judge one call. Returns (signals created or updated, alerts raised)."""
        signals: list[WasteSignal] = []
        alerts: list[dict[str, Any]] = []
        if event.task_id:
            self._retry(event, signals, alerts)
        if event.prompt_hash and event.attempt == 1 and event.cache_read_tokens == 0 and event.status == "ok":
            self._duplicate(event, signals, alerts)
        if event.input_tokens > self.config.oversized_input_tokens:
            self._oversize(event, signals, alerts)
        self._runaway(event, signals, alerts)
        return signals, alerts

    def advance(self, now_us: int) -> tuple[list[WasteSignal], list[dict[str, Any]]]:
        """Move event time to ``now_us``: close runaway episodes that calmed down, evict idle loop/duplicate state.
        Returns signals updated by closing episodes and any alerts."""
        signals: list[WasteSignal] = []
        alerts: list[dict[str, Any]] = []
        horizon = now_us - self._idle_us
        expiry = self._expiry
        while expiry and expiry[0][0] < horizon:
            _, which, key = expiry.popleft()
            if which == 0:
                first = self._loop_first.get(key)
                if first is not None and first[0] < horizon:
                    del self._loop_first[key]
                loop = self._loops.get(key)
                if loop is not None and loop.last_us < horizon:
                    del self._loops[key]
            else:
                dup_first = self._dup_first.get(key)
                if dup_first is not None and dup_first[0] < horizon:
                    del self._dup_first[key]
                dup = self._dups.get(key)
                if dup is not None and dup.last_us < horizon:
                    del self._dups[key]
        for agent_id, burn in list(self._burn.items()):
            self._roll_window(burn, now_us)
            if burn.episode is not None:
                self._maybe_end_episode(burn, now_us, signals)
            elif not burn.buckets and now_us - burn.minute_start > 7 * 24 * _HOUR_US:
                del self._burn[agent_id]
        for key in [k for k, s in self._oversized.items() if s.occurred_at_us < now_us - 2 * _HOUR_US]:
            del self._oversized[key]
        return signals, alerts

    def seed_burn(self, agent_id: str, spend_per_min: float, tasks_per_min: float, calls_per_min: float,
                  minutes: int, at_us: int) -> None:
        """Start an agent's runaway norms from history (e.g. the ledger) so a restart needs no new warm-up."""
        burn = self._burn.get(agent_id)
        if burn is None:
            burn = self._burn[agent_id] = _Burn(first_us=at_us - minutes * _MINUTE_US)
            burn.minute_start = at_us - at_us % _MINUTE_US
            burn.last_update_minute = burn.minute_start
        burn.norm_spend, burn.norm_tasks, burn.norm_calls = spend_per_min, tasks_per_min, calls_per_min
        burn.minutes = max(burn.minutes, minutes)
        burn.uses_tasks = burn.uses_tasks or tasks_per_min > 0

    # -- retry loops --------------------------------------------------------------------------------------------

    def _retry(self, event: SpendEvent, signals: list[WasteSignal], alerts: list[dict[str, Any]]) -> None:
        cfg = self.config
        assert event.task_id is not None
        key = (event.task_id, event.prompt_hash or "")
        loop = self._loops.get(key)
        ts = event.occurred_at_us
        if loop is None:
            first = self._loop_first.get(key)
            if first is None:
                if event.attempt >= cfg.retry_min_attempt:
                    # A climbing attempt counter without the earlier attempts in view is a loop on its own.
                    loop = self._loops[key] = _Repeat(ts, ts, _ZERO, _ZERO, 0, 0, {event.task_id}, [])
                else:
                    self._loop_first[key] = (ts, event.cost_usd, event.event_id, event.status == "ok")
                    self._expiry.append((ts, 0, key))
                    return
            else:
                del self._loop_first[key]
                loop = self._loops[key] = _Repeat(first[0], first[0], first[1], first[1], 1, 1, {event.task_id},
                                                  [first[2]], last_ok=first[3])
                self._expiry.append((ts, 0, key))
        loop.calls += 1
        if loop.last_ok:
            loop.after_ok += 1
        loop.last_ok = event.status == "ok"
        loop.total += event.cost_usd
        loop.last_us = max(loop.last_us, ts)
        loop.max_attempt = max(loop.max_attempt, event.attempt)
        if len(loop.event_ids) < _MAX_EVIDENCE_IDS:
            loop.event_ids.append(event.event_id)
        if loop.signal is None and (loop.calls >= cfg.retry_min_repeats or loop.max_attempt >= cfg.retry_min_attempt
                                    or loop.after_ok >= cfg.retry_after_ok):
            loop.signal = WasteSignal(
                f"retry_loop:{event.agent_id}:{event.task_id}:{event.prompt_hash or '-'}", "retry_loop",
                loop.first_us, ts, event.team, event.project, event.agent_id, event.task_id, event.model, _ZERO, {})
            self._fill_loop(loop, event)
            signals.append(loop.signal)
            alerts.append(_alert(
                loop.signal, "warning", f"waste:retry_loop:{event.agent_id}:{event.task_id}",
                f"Retry loop: task {event.task_id} of {event.agent_id} sent the same prompt {loop.calls} times",
                (f"Task {event.task_id} repeated one prompt {loop.calls} times (attempt {loop.max_attempt}) "
                 f"since {_from_us(loop.first_us):%H:%M:%S} UTC on {event.model}; ${loop.total:.4f} spent, "
                 f"${loop.signal.avoidable_cost_usd:.4f} avoidable. Check the agent's retry / stop condition."),
                ["notify"],
            ))
        elif loop.signal is not None:
            self._fill_loop(loop, event)
            loop.signal.revision += 1
            signals.append(loop.signal)

    @staticmethod
    def _fill_loop(loop: _Repeat, event: SpendEvent) -> None:
        signal = loop.signal
        assert signal is not None
        signal.detected_at_us = max(signal.detected_at_us, event.occurred_at_us)
        signal.avoidable_cost_usd = loop.total - loop.first_cost
        signal.evidence = {"calls": loop.calls, "max_attempt": loop.max_attempt, "prompt_hash": event.prompt_hash,
                           "repeats_after_success": loop.after_ok,
                           "total_cost_usd": str(loop.total), "first_at": _from_us(loop.first_us).isoformat(),
                           "last_at": _from_us(loop.last_us).isoformat(), "event_ids": loop.event_ids}

    # -- duplicate prompts --------------------------------------------------------------------------------------

    def _duplicate(self, event: SpendEvent, signals: list[WasteSignal], alerts: list[dict[str, Any]]) -> None:
        cfg = self.config
        prompt = event.prompt_hash
        assert prompt is not None
        ts = event.occurred_at_us
        task = event.task_id or event.event_id
        dup = self._dups.get(prompt)
        if dup is not None and ts - dup.first_us > cfg.duplicate_window_s * _US and dup.signal is None:
            del self._dups[prompt]  # the earlier sightings are too old to call this a duplicate
            dup = None
        if dup is None:
            first = self._dup_first.get(prompt)
            if first is None or ts - first[0] > cfg.duplicate_window_s * _US:
                self._dup_first[prompt] = (ts, event.cost_usd, event.event_id, task)
                self._expiry.append((ts, 1, prompt))
                return
            if first[3] == task:
                return  # the same task again: the retry-loop detector's business
            del self._dup_first[prompt]
            dup = self._dups[prompt] = _Repeat(first[0], first[0], first[1], first[1], 1, 1, {first[3]}, [first[2]])
            self._expiry.append((ts, 1, prompt))
        if task in dup.tasks:
            return
        dup.tasks.add(task)
        dup.calls += 1
        dup.total += event.cost_usd
        dup.last_us = max(dup.last_us, ts)
        if len(dup.event_ids) < _MAX_EVIDENCE_IDS:
            dup.event_ids.append(event.event_id)
        if dup.signal is None and len(dup.tasks) >= cfg.duplicate_min_tasks:
            dup.signal = WasteSignal(
                f"duplicate_prompt:{prompt}:{dup.first_us}", "duplicate_prompt", dup.first_us, ts, event.team,
                event.project, event.agent_id, "", event.model, _ZERO, {})
            self._fill_dup(dup, prompt, ts)
            signals.append(dup.signal)
            alerts.append(_alert(
                dup.signal, "info", f"waste:duplicate_prompt:{prompt}:{dup.first_us}",
                f"Duplicate prompts: {event.agent_id} sent one prompt in {len(dup.tasks)} tasks without a cache hit",
                (f"Prompt {prompt} was sent as a new request by {len(dup.tasks)} tasks since "
                 f"{_from_us(dup.first_us):%H:%M:%S} UTC, never served from cache; "
                 f"${dup.signal.avoidable_cost_usd:.4f} avoidable so far. Cache the response or the prompt prefix."),
                ["notify"],
            ))
        elif dup.signal is not None:
            self._fill_dup(dup, prompt, ts)
            dup.signal.revision += 1
            signals.append(dup.signal)

    @staticmethod
    def _fill_dup(dup: _Repeat, prompt: str, ts: int) -> None:
        signal = dup.signal
        assert signal is not None
        signal.detected_at_us = max(signal.detected_at_us, ts)
        signal.avoidable_cost_usd = dup.total - dup.first_cost
        signal.evidence = {"prompt_hash": prompt, "tasks": len(dup.tasks), "calls": dup.calls,
                           "total_cost_usd": str(dup.total), "event_ids": dup.event_ids}

    # -- oversized prompts --------------------------------------------------------------------------------------

    def _oversize(self, event: SpendEvent, signals: list[WasteSignal], alerts: list[dict[str, Any]]) -> None:
        limit = self.config.oversized_input_tokens
        excess = event.input_tokens - limit
        avoidable = (event.input_cost_usd * excess / event.input_tokens).quantize(_Q12)
        hour = event.occurred_at_us - event.occurred_at_us % _HOUR_US
        key = (event.agent_id, hour)
        signal = self._oversized.get(key)
        if signal is None:
            signal = self._oversized[key] = WasteSignal(
                f"oversized_prompt:{event.agent_id}:{hour}", "oversized_prompt", event.occurred_at_us,
                event.occurred_at_us, event.team, event.project, event.agent_id, event.task_id or "", event.model,
                _ZERO, {"calls": 0, "max_input_tokens": 0, "limit_tokens": limit, "event_ids": []}, revision=0)
        signal.revision += 1
        signal.avoidable_cost_usd += avoidable
        signal.detected_at_us = max(signal.detected_at_us, event.occurred_at_us)
        evidence = signal.evidence
        evidence["calls"] += 1
        evidence["max_input_tokens"] = max(evidence["max_input_tokens"], event.input_tokens)
        if len(evidence["event_ids"]) < _MAX_EVIDENCE_IDS:
            evidence["event_ids"].append(event.event_id)
        signals.append(signal)
        day_key = (event.agent_id, event.occurred_at_us // (24 * _HOUR_US))
        if day_key not in self._oversized_alerted:
            self._oversized_alerted.add(day_key)
            day = _from_us(day_key[1] * 24 * _HOUR_US).date().isoformat()
            alerts.append(_alert(
                signal, "info", f"waste:oversized_prompt:{event.agent_id}:{day}",
                f"Oversized prompts: {event.agent_id} sent {event.input_tokens:,} input tokens in one call",
                (f"{event.agent_id} sent a prompt of {event.input_tokens:,} tokens to {event.model} (limit "
                 f"{limit:,}); trimming it would have saved ${avoidable:.4f} on this call. Further oversized calls "
                 f"today update the waste signal without a new alert."),
                ["notify"],
            ))

    # -- runaway burn rate --------------------------------------------------------------------------------------

    def _roll_window(self, burn: _Burn, now_us: int) -> None:
        cutoff = now_us - self._window_us
        buckets = burn.buckets
        while buckets and buckets[0][0] + self._bucket_us <= cutoff:
            start, spend, tasks, calls = buckets.popleft()
            burn.win_spend -= spend
            burn.win_tasks -= tasks
            burn.win_calls -= calls

    def _close_minutes(self, burn: _Burn, ts: int) -> None:
        """Fold finished minutes into the norms (winsorized; frozen during an episode)."""
        minute = ts - ts % _MINUTE_US
        if minute <= burn.minute_start:
            return
        alpha = self._alpha
        gap = (minute - burn.minute_start) // _MINUTE_US
        steps = min(gap, 24 * 60)  # a day of silence is enough to decay any norm; do not loop for weeks
        for step in range(steps):
            spend = burn.minute_spend if step == 0 else 0.0
            tasks = float(burn.minute_tasks) if step == 0 else 0.0
            calls = float(burn.minute_calls) if step == 0 else 0.0
            if burn.episode is None:
                if burn.minutes * 60 >= self.config.runaway_warmup_s:
                    # Winsorize: a minute enters the norm at most at 4x the norm, so bursts barely teach it.
                    spend = min(spend, 4 * burn.norm_spend)
                    tasks = min(tasks, max(4 * burn.norm_tasks, 1.0))
                    calls = min(calls, max(4 * burn.norm_calls, 1.0))
                    burn.norm_spend += alpha * (spend - burn.norm_spend)
                    burn.norm_tasks += alpha * (tasks - burn.norm_tasks)
                    burn.norm_calls += alpha * (calls - burn.norm_calls)
                else:
                    # Warm-up: a plain running mean over the minutes seen.
                    n = burn.minutes + 1
                    burn.norm_spend += (spend - burn.norm_spend) / n
                    burn.norm_tasks += (tasks - burn.norm_tasks) / n
                    burn.norm_calls += (calls - burn.norm_calls) / n
                burn.minutes += 1
        burn.minute_start = minute
        burn.minute_spend = 0.0
        burn.minute_tasks = burn.minute_calls = 0

    def _runaway(self, event: SpendEvent, signals: list[WasteSignal], alerts: list[dict[str, Any]]) -> None:
        cfg = self.config
        ts = event.occurred_at_us
        burn = self._burn.get(event.agent_id)
        if burn is None:
            burn = self._burn[event.agent_id] = _Burn(first_us=ts)
            burn.minute_start = ts - ts % _MINUTE_US
            burn.last_update_minute = burn.minute_start
        self._close_minutes(burn, ts)
        new_root = 0
        if event.task_id:
            burn.uses_tasks = True
            if event.task_id not in burn.seen_tasks:
                new_root = 0 if event.parent_task_id else 1
            burn.seen_tasks[event.task_id] = ts
            if len(burn.seen_tasks) > 4096:
                horizon = ts - self._idle_us
                burn.seen_tasks = {t: s for t, s in burn.seen_tasks.items() if s >= horizon}
        cost = event.cost_usd
        burn.minute_spend += float(cost)
        burn.minute_tasks += new_root
        burn.minute_calls += 1
        bucket_start = ts - ts % self._bucket_us
        buckets = burn.buckets
        if buckets and buckets[-1][0] == bucket_start:
            bucket = buckets[-1]
        else:
            bucket = [bucket_start, _ZERO, 0, 0]
            if buckets and bucket_start < buckets[-1][0]:
                # Out of order by more than a bucket: fold into the newest bucket (the window is approximate).
                bucket = buckets[-1]
            else:
                buckets.append(bucket)
        bucket[1] += cost
        bucket[2] += new_root
        bucket[3] += 1
        burn.win_spend += cost
        burn.win_tasks += new_root
        burn.win_calls += 1
        self._roll_window(burn, ts)
        if burn.episode is not None:
            burn.episode_spend += cost
            if ts - burn.last_update_minute >= _MINUTE_US:
                burn.last_update_minute = ts
                self._update_episode(burn, ts)
                signals.append(burn.episode)
            self._track_calm(burn, ts)
            return
        if burn.minutes * 60 < cfg.runaway_warmup_s:
            return
        burst = self._find_burst(burn, ts)
        if burst is None:
            return
        start, length_s, win_spend, count, rate = burst
        window_min = length_s / 60.0
        norm_window = burn.norm_spend * window_min
        spend = float(win_spend)
        burn.episode = WasteSignal(
            f"runaway:{event.agent_id}:{start}", "runaway", start, ts, event.team, event.project, event.agent_id, "",
            event.model, _ZERO, {})
        burn.episode_spend = win_spend
        burn.last_update_minute = ts
        burn.calm_since = None
        self._update_episode(burn, ts)
        signals.append(burn.episode)
        ratio = spend / norm_window if norm_window > 0 else math.inf
        alerts.append(_alert(
            burn.episode, "critical", f"waste:runaway:{event.agent_id}:{start}",
            f"Runaway spend: {event.agent_id} burning {ratio:.0f}x its usual rate",
            (f"{event.agent_id} spent ${spend:.4f} in the last {length_s} s against a norm of "
             f"${norm_window:.4f} ({ratio:.1f}x), starting {count} tasks where ~{rate * window_min:.1f} are usual. "
             "Throttle or suspend it if this is not expected."),
            ["notify", "throttle"],
        ))

    def _find_burst(self, burn: _Burn, now_us: int) -> tuple[int, int, Decimal, int, float] | None:
        """The shortest trailing window of whole buckets (up to ``runaway_window_s``) that proves a runaway, as
        ``(start_us, length_s, spend, count, rate per minute)``, or None.

        Every window is held to the same three tests, scaled to its length ``L``: spend at least ``runaway_factor``
        x the norm over ``L``, at least ``runaway_min_usd`` per ``runaway_window_s`` (a burn-rate floor), and a task
        (or call) count at or above the Poisson upper quantile of the norm over ``L``. Up to
        ``runaway_window_s / runaway_bucket_s`` windows are tested together, so each gets ``runaway_poisson_p``
        divided by that number (Bonferroni): the false-alarm bound of the single window is kept, and a steep jump is
        proven once its first buckets hold enough evidence instead of once a whole window of it has passed. ``L`` is
        the time from the window's first bucket to now rounded up to whole buckets (at least the time the window
        saw), capped at ``runaway_window_s`` for the whole window, as before."""
        cfg = self.config
        bucket_s = cfg.runaway_bucket_s
        tests = max(1, cfg.runaway_window_s // bucket_s)
        p = cfg.runaway_poisson_p / tests
        rate = burn.norm_tasks if burn.uses_tasks else burn.norm_calls
        count_index = 2 if burn.uses_tasks else 3
        buckets = burn.buckets
        spend = _ZERO
        count = 0
        for k in range(1, len(buckets) + 1):
            bucket = buckets[-k]
            spend += bucket[1]
            count += bucket[count_index]
            length_s = max(k, -((bucket[0] - now_us) // self._bucket_us)) * bucket_s
            if length_s >= cfg.runaway_window_s:
                if k < len(buckets):
                    continue  # the whole window (every bucket still in it) is the last test
                length_s = cfg.runaway_window_s
            window_min = length_s / 60.0
            if (float(spend) < cfg.runaway_factor * burn.norm_spend * window_min
                    or spend * cfg.runaway_window_s < cfg.runaway_min_usd * length_s):
                continue
            needed = max(cfg.runaway_min_tasks, compute_poisson_upper(round(rate * window_min, 3), p))
            if count >= needed:
                return bucket[0], length_s, spend, count, rate
        return None

    def _update_episode(self, burn: _Burn, now_us: int) -> None:
        episode = burn.episode
        assert episode is not None
        minutes = max(0.0, (now_us - episode.occurred_at_us) / _MINUTE_US)
        expected = Decimal(repr(burn.norm_spend * minutes)).quantize(_Q12)
        episode.avoidable_cost_usd = max(_ZERO, burn.episode_spend - expected)
        episode.detected_at_us = now_us
        episode.revision += 1
        episode.evidence = {"episode_spend_usd": str(burn.episode_spend), "norm_usd_per_min": f"{burn.norm_spend:.6f}",
                            "minutes": round(minutes, 2), "norm_tasks_per_min": round(burn.norm_tasks, 3),
                            "window_spend_usd": str(burn.win_spend), "window_tasks": burn.win_tasks}

    def _track_calm(self, burn: _Burn, now_us: int) -> None:
        norm_window = burn.norm_spend * self.config.runaway_window_s / 60.0
        if float(burn.win_spend) < self.config.runaway_factor / 2 * norm_window:
            if burn.calm_since is None:
                burn.calm_since = now_us
        else:
            burn.calm_since = None

    def _maybe_end_episode(self, burn: _Burn, now_us: int, signals: list[WasteSignal]) -> None:
        self._track_calm(burn, now_us)
        if burn.calm_since is not None and now_us - burn.calm_since >= self.config.runaway_end_after_s * _US:
            self._update_episode(burn, burn.calm_since)
            assert burn.episode is not None
            burn.episode.evidence["ended_at"] = _from_us(burn.calm_since).isoformat()
            signals.append(burn.episode)
            burn.episode = None
            burn.calm_since = None
