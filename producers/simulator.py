"""A deterministic synthetic agent fleet: ``finops simulate``.

Role: :func:`generate` yields plain dicts of :class:`schemas.models.UsageEvent` fields in event-time order: agents
spread over teams and projects, each with a task type, a model mix and a log-normal activity weight, running tasks
as chains of calls with growing cached context, sub-agents and retried failures (:class:`Simulation`). Pacing by
wall clock (``--realtime``) and publishing happen in the CLI handler around the generator.

Guarantee: a pure function of ``(seed, config)``: the same config always yields the same events (ids, times,
tokens); nothing here reads the wall clock or the environment. Injected misbehaviour is recorded exactly in an
:class:`AnswerKey`, and normal traffic never shows those patterns, so detection can be scored.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import math
import random
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from finops.clock import utc_now
from producers.replay import Pacer, open_sink
from schemas.errors import ConfigError, FinopsError

if TYPE_CHECKING:
    from producers.checkpoint import ProgressCheckpoint
    from producers.replay import EventSink

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = [
    "DEFAULT_START",
    "MISBEHAVIOUR_KINDS",
    "AnswerKey",
    "Injection",
    "Misbehaviour",
    "Simulation",
    "SimulationConfig",
    "SimulationError",
    "agent_ids",
    "generate",
    "parse_duration",
    "parse_rate",
    "register_commands",
]

MisbehaviourKind = Literal["retry_loop", "runaway", "duplicate_prompts", "unknown_model", "oversized_prompts"]
MISBEHAVIOUR_KINDS: tuple[str, ...] = (
    "retry_loop", "runaway", "duplicate_prompts", "unknown_model", "oversized_prompts",
)

#: Fixed default start so that a run without ``--start`` is reproducible (``--realtime`` defaults to now instead).
DEFAULT_START = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)

#: Normal calls are tried at most this often; a retry loop goes far beyond it.
MAX_NORMAL_ATTEMPTS = 3
#: Normal prompts never exceed this; oversized prompts are drawn well above it.
NORMAL_MAX_INPUT_TOKENS = 100_000
OVERSIZED_INPUT_RANGE = (150_000, 195_000)
NORMAL_MAX_OUTPUT_TOKENS = 16_384
#: A model the genai-prices catalogue does not know (a test asserts it stays unknown).
UNKNOWN_MODEL = ("openai", "atlas-xl-preview")

_US = 1_000_000
_SIM_NAMESPACE = uuid.UUID("6c3f7d0e-2b7a-5f1c-9a57-0f1a3e6c9b21")


class SimulationError(FinopsError):
    """The simulation was used wrongly (e.g. the answer key read before the events were all generated)."""


# ---------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------

# Input and output token counts are log-normal. The (mu, sigma) of ln(tokens) were fitted once (mean and population
# standard deviation of ln(x) over the rows with x > 0) from the public traces in /work/shared/data/traces:
# - Azure LLM inference trace 2023, AzureLLMInferenceTrace_code.csv (8,819 rows; CC-BY 4.0, Patel et al.,
#   "Splitwise", ISCA 2024) and AzureLLMInferenceTrace_conv.csv (19,366 rows);
# - BurstGPT burstgpt_slice.csv + burstgpt3_slice.csv (782 non-failed rows; CC-BY 4.0, Wang et al., KDD'25); its
#   failure rate (0/0 tokens, 4.25 %) sets our ~4 % failed attempts (FAILURES);
# - Mooncake FAST'25 conversation_trace.jsonl (12,031 rows; kvcache-ai/Mooncake, Apache-2.0), where 37 % of the
#   input tokens are a reusable cached prefix.
#: (mu, sigma) of ln(tokens), fitted from the traces above.
AZURE_CODE_IN, AZURE_CODE_OUT = (7.00, 1.36), (2.79, 0.85)
AZURE_CONV_IN, AZURE_CONV_OUT = (6.63, 0.99), (5.02, 0.86)
BURSTGPT_IN, BURSTGPT_OUT = (5.47, 1.46), (4.79, 1.26)
MOONCAKE_IN, MOONCAKE_OUT = (8.74, 1.20), (5.34, 1.36)


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """Token shapes and length of one task type. ``follow_up`` is the new input a later call adds to the context
    (tool results, the previous answer); ``mean_calls`` the mean number of calls of one task."""

    first_input: tuple[float, float]
    output: tuple[float, float]
    follow_up: tuple[float, float]
    mean_calls: float


TASK_PROFILES: dict[str, TaskProfile] = {
    "code_review": TaskProfile(AZURE_CODE_IN, AZURE_CONV_OUT, BURSTGPT_IN, 5.0),
    "code_generation": TaskProfile(AZURE_CODE_IN, BURSTGPT_OUT, AZURE_CODE_OUT, 6.0),
    "support_reply": TaskProfile(AZURE_CONV_IN, AZURE_CONV_OUT, BURSTGPT_IN, 3.0),
    "summarise": TaskProfile(MOONCAKE_IN, AZURE_CONV_OUT, AZURE_CODE_OUT, 1.5),
    "research": TaskProfile(MOONCAKE_IN, MOONCAKE_OUT, AZURE_CONV_IN, 7.0),
    "chat": TaskProfile(BURSTGPT_IN, BURSTGPT_OUT, BURSTGPT_IN, 4.0),
    "classification": TaskProfile(AZURE_CONV_IN, AZURE_CODE_OUT, AZURE_CODE_OUT, 1.2),
}

ModelChoice = tuple[str, str, float]  # provider, model id as the provider reports it, weight

#: Preferred model mixes; every (provider, model) here is priced by genai-prices (a unit test checks it).
MODEL_MIXES: tuple[tuple[ModelChoice, ...], ...] = (
    (("openai", "gpt-4o-2024-08-06", 0.6), ("openai", "gpt-4o-mini-2024-07-18", 0.35),
     ("openai", "o3-mini-2025-01-31", 0.05)),
    (("openai", "gpt-4o-mini-2024-07-18", 0.85), ("openai", "gpt-4o-2024-08-06", 0.15)),
    (("anthropic", "claude-sonnet-4-20250514", 0.7), ("anthropic", "claude-3-5-haiku-20241022", 0.3)),
    (("anthropic", "claude-3-5-haiku-20241022", 0.8), ("anthropic", "claude-sonnet-4-20250514", 0.2)),
    (("google", "gemini-2.5-flash", 0.75), ("google", "gemini-2.5-pro", 0.25)),
    (("google", "gemini-2.5-pro", 0.6), ("google", "gemini-2.5-flash", 0.4)),
    (("deepseek", "deepseek-chat", 0.9), ("openai", "gpt-4o-mini-2024-07-18", 0.1)),
    (("openai", "o3-mini-2025-01-31", 0.6), ("openai", "gpt-4o-2024-08-06", 0.4)),
)

#: Models that think: output includes reasoning tokens (reasoning / visible output drawn from this range).
REASONING_RATIO: dict[str, tuple[float, float]] = {
    "o3-mini-2025-01-31": (0.5, 3.0),
    "gemini-2.5-pro": (0.3, 2.0),
    "gemini-2.5-flash": (0.0, 1.0),
}
#: (time to first token ms, ms per output token): rough public figures, only shape the latency column.
LATENCY: dict[str, tuple[int, float]] = {
    "gpt-4o-2024-08-06": (450, 12.0), "gpt-4o-mini-2024-07-18": (350, 8.0), "o3-mini-2025-01-31": (900, 9.0),
    "claude-sonnet-4-20250514": (700, 14.0), "claude-3-5-haiku-20241022": (450, 9.0),
    "gemini-2.5-flash": (400, 5.0), "gemini-2.5-pro": (900, 10.0), "deepseek-chat": (800, 20.0),
}
#: Failure probabilities of one attempt (sum ~4 %, BurstGPT's failed-request share). Failed attempts bill nothing
#: except a timeout, whose prompt the provider already processed.
FAILURES: tuple[tuple[str, float], ...] = (("rate_limited", 0.017), ("error", 0.013), ("timeout", 0.01))
#: Chance that a call spawns a sub-agent task, and the sub-task's mean length.
SUBAGENT_PROBABILITY = 0.08
SUBAGENT_MEAN_CALLS = 2.5
#: Simulated seconds the fleet runs before ``start`` with its events discarded, so the first minute of a run is at
#: the steady-state rate instead of ramping up while every agent's first task gets going.
WARMUP_S = 120.0
#: Mean thinking / tool time between two calls of one task, seconds.
MEAN_GAP_S = 3.0

TEAM_NAMES = ("platform", "search", "support", "growth", "data", "security", "payments", "research", "sales-ops",
              "infra")
PROJECT_NAMES = ("checkout", "helpdesk", "docs-bot", "code-review", "etl", "fraud", "onboarding", "crm-sync",
                 "analytics", "release-notes", "pricing", "mobile")


def _names(base: tuple[str, ...], count: int) -> list[str]:
    """``count`` distinct names: the base list first, then numbered rounds (``platform-2`` ...)."""
    return [base[i % len(base)] + (f"-{i // len(base) + 1}" if i >= len(base) else "") for i in range(count)]


def agent_ids(count: int) -> list[str]:
    """The agent ids of a fleet of ``count`` agents (``agent-001`` ...); stable so flags can name them."""
    return [f"agent-{i:03d}" for i in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------------------------
# Configuration and answer key
# ---------------------------------------------------------------------------------------------------------------


class Misbehaviour(BaseModel):
    """One injected misbehaviour: ``kind`` done by ``agent_id``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: MisbehaviourKind
    agent_id: str

    @classmethod
    def parse(cls, text: str) -> Misbehaviour:
        """Parse ``kind:agent`` (``retry-loop:agent-003``; hyphens or underscores). Raises ConfigError."""
        kind, sep, agent = text.partition(":")
        kind = kind.strip().replace("-", "_")
        if not sep or not agent.strip() or kind not in MISBEHAVIOUR_KINDS:
            raise ConfigError(
                f"--misbehave {text!r}: expected KIND:AGENT with KIND one of "
                f"{', '.join(k.replace('_', '-') for k in MISBEHAVIOUR_KINDS)} (e.g. runaway:agent-003)"
            )
        return cls(kind=kind, agent_id=agent.strip())  # type: ignore[arg-type]


class SimulationConfig(BaseModel):
    """Everything the generator depends on. The events are a pure function of this object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 7
    agents: int = Field(50, ge=1, le=100_000)
    teams: int = Field(5, ge=1, le=10_000)
    projects: int = Field(10, ge=1, le=10_000)
    duration_s: float = Field(3600.0, gt=0, description="simulated time span, seconds")
    rate_per_s: float = Field(20.0, gt=0, le=1_000_000, description="fleet-wide mean events per simulated second")
    start: AwareDatetime = DEFAULT_START
    source: str = Field("finops-simulator", min_length=1)
    environment: str = "prod"
    misbehaviours: tuple[Misbehaviour, ...] = ()
    runaway_factor: float = Field(20.0, gt=1)
    subagent_depth: int = Field(1, ge=1, le=8, description="levels of sub-agents below a task (1: children only)")

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _agents_exist(self) -> SimulationConfig:
        known = set(agent_ids(self.agents))
        unknown = [m.agent_id for m in self.misbehaviours if m.agent_id not in known]
        if unknown:
            raise ValueError(
                f"misbehaving agent(s) {', '.join(unknown)} not in the fleet (agent-001 .. agent-{self.agents:03d})"
            )
        seen: set[str] = set()
        for bad in self.misbehaviours:
            if bad.agent_id in seen:
                # One misbehaviour per agent keeps the answer key exact: each event belongs to one injection.
                raise ValueError(f"agent {bad.agent_id} is given more than one misbehaviour; use another agent")
            seen.add(bad.agent_id)
        return self

    @property
    def run_id(self) -> str:
        """A short fingerprint of this config: part of every id, so different runs never share event ids while
        a repeated run produces the same ids (and the ledger deduplicates it)."""
        # subagent_depth came later: left out at its default so that every earlier config keeps its ids.
        exclude = {"subagent_depth"} if self.subagent_depth == 1 else None
        return hashlib.blake2b(self.model_dump_json(exclude=exclude).encode(), digest_size=8).hexdigest()


class Injection(BaseModel):
    """What one misbehaviour actually put into the stream (only events that were emitted)."""

    kind: MisbehaviourKind
    agent_id: str
    start: datetime
    end: datetime | None = None
    task_ids: list[str] = Field(default_factory=list)
    event_ids: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    _task_set: set[str] = PrivateAttr(default_factory=set)


class AnswerKey(BaseModel):
    """The injected misbehaviours of one run, for scoring detection. Written as JSON by ``--answer-key``."""

    run_id: str
    seed: int
    start: datetime
    end: datetime
    events: int = 0
    injections: list[Injection] = Field(default_factory=list)

    def write(self, path: Path) -> None:
        """Write the key as indented JSON (UTF-8). Raises ConfigError when the file cannot be written."""
        try:
            path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot write the answer key to {path}: {err}; choose a writable path") from err


# ---------------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Agent:
    agent_id: str
    team: str
    project: str
    task_type: str
    mix: tuple[ModelChoice, ...]
    task_rate: float  # task starts per simulated second
    tasks_started: int = 0
    generation: int = 0  # bumped when the arrival rate changes; stale arrivals are dropped
    phase: _Phase | None = None  # a misbehaviour that changes the agent's new tasks from some time on


@dataclass(slots=True)
class _Phase:
    injection: Injection
    start_us: int
    end_us: int | None  # None: until the end of the run


@dataclass(slots=True)
class _Task:
    task_id: str
    agent: _Agent
    parent_task_id: str | None
    depth: int  # 0 for a task an agent starts, 1 for its sub-agent, ...
    provider: str
    model: str
    calls_left: int
    profile: TaskProfile
    injection: Injection | None = None
    oversized: bool = False
    call_index: int = 0
    context_tokens: int = 0  # input of the previous call: the prefix the next call can read from cache
    last_finish_us: int = 0


@dataclass(slots=True)
class _Call:
    task: _Task
    prompt_hash: str
    attempt: int
    status: str
    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_write: int
    reasoning: int
    latency_ms: int
    prompt_tokens: int = 0  # size of the prompt even when a failed attempt billed none of it (for its retry)
    retry_loop_left: int = 0  # for a retry loop: attempts still to come after this one


_ARRIVAL, _CALL, _RATE_CHANGE, _INJECT = 0, 1, 2, 3


@dataclass(order=True, slots=True)
class _Item:
    time_us: int
    seq: int
    kind: int = field(compare=False)
    payload: Any = field(compare=False)


class Simulation:
    """One run of the fleet described by ``config``.

    :meth:`events` yields the events (once); :attr:`answer_key` is complete when they are exhausted.

    The fleet: ``agents`` agents spread round-robin over ``teams`` teams; each works for one of its team's
    ``projects``, has one task type (its token shapes and task length), one preferred model mix (providers and models
    the genai-prices catalogue knows) and a log-normal activity weight (a few agents dominate, as in real fleets).
    Each agent starts tasks as a Poisson process; a task is a chain of calls whose context grows (later calls read
    the earlier prefix from the prompt cache; Anthropic calls also write it); calls may spawn sub-agent tasks
    (``parent_task_id``, down to ``subagent_depth`` levels); a failed call (``error``, ``timeout``,
    ``rate_limited``) is retried with the same ``prompt_hash`` and ``attempt`` + 1, up to
    :data:`MAX_NORMAL_ATTEMPTS`. The mean event rate is ``rate_per_s`` from the first second: the fleet runs a
    discarded warm-up (:data:`WARMUP_S`) before ``start``.

    Misbehaviour: on request one agent each misbehaves in a known way (``retry_loop``, ``runaway``,
    ``duplicate_prompts``, ``unknown_model``, ``oversized_prompts``), recorded in the :class:`AnswerKey` (agent, kind,
    start/end event time, task ids, event ids). Normal traffic never shows these patterns: normal retries stop at
    :data:`MAX_NORMAL_ATTEMPTS`, normal prompt hashes are unique per call, normal prompts are capped at
    :data:`NORMAL_MAX_INPUT_TOKENS`, and normal models are all in the catalogue.
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.run_id = config.run_id
        self._rng = random.Random(config.seed)
        self._start_us = _to_us(config.start)
        self._end_us = self._start_us + int(config.duration_s * _US)
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._emitted = 0
        self._finished = False
        self._started = False
        self._key = AnswerKey(
            run_id=self.run_id, seed=config.seed, start=config.start,
            end=config.start + timedelta(seconds=config.duration_s),
        )
        self.agents = self._build_fleet()
        for agent in self.agents:
            self._schedule_arrival(agent, self._start_us - int(WARMUP_S * _US))
        self._plan_misbehaviours()

    # -- fleet -------------------------------------------------------------------------------------------------
    def _build_fleet(self) -> list[_Agent]:
        cfg, rng = self.config, self._rng
        teams = _names(TEAM_NAMES, cfg.teams)
        projects = _names(PROJECT_NAMES, cfg.projects)
        task_types = sorted(TASK_PROFILES)
        # Activity is log-normal (sigma 0.8): a few busy agents and a long tail, as in real fleets.
        weights = [rng.lognormvariate(0.0, 0.8) for _ in range(cfg.agents)]
        total_weight = sum(weights)
        fleet: list[_Agent] = []
        for index, agent_id in enumerate(agent_ids(cfg.agents)):
            team_index = index % cfg.teams
            own = [p for j, p in enumerate(projects) if j % cfg.teams == team_index] or projects
            task_type = rng.choice(task_types)
            profile = TASK_PROFILES[task_type]
            # Mean events of one task: its calls, its sub-agents' calls, and retries of failed attempts.
            spawn = SUBAGENT_PROBABILITY * SUBAGENT_MEAN_CALLS  # sub-agent calls per call of the level above
            events_per_task = (profile.mean_calls * sum(spawn ** level for level in range(cfg.subagent_depth + 1))
                               * _retry_factor())
            fleet.append(_Agent(
                agent_id=agent_id, team=teams[team_index], project=rng.choice(own), task_type=task_type,
                mix=rng.choice(MODEL_MIXES),
                task_rate=cfg.rate_per_s * weights[index] / total_weight / events_per_task,
            ))
        return fleet

    def _agent(self, agent_id: str) -> _Agent:
        return next(a for a in self.agents if a.agent_id == agent_id)

    # -- scheduling --------------------------------------------------------------------------------------------
    def _push(self, time_us: int, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, _Item(time_us, next(self._seq), kind, payload))

    def _rate_of(self, agent: _Agent, time_us: int) -> float:
        phase = agent.phase
        if phase and phase.injection.kind == "runaway" and time_us >= phase.start_us:
            return agent.task_rate * self.config.runaway_factor
        return agent.task_rate

    def _schedule_arrival(self, agent: _Agent, after_us: int) -> None:
        gap_s = self._rng.expovariate(self._rate_of(agent, after_us))
        self._push(after_us + max(1, int(gap_s * _US)), _ARRIVAL, (agent, agent.generation))

    def _plan_misbehaviours(self) -> None:
        cfg, rng = self.config, self._rng
        duration_us = self._end_us - self._start_us
        for bad in cfg.misbehaviours:
            # Starts between 30 % and 60 % of the run: enough normal history before it for a baseline.
            start_us = self._start_us + int(duration_us * rng.uniform(0.3, 0.6))
            injection = Injection(kind=bad.kind, agent_id=bad.agent_id, start=_from_us(start_us))
            self._key.injections.append(injection)
            agent = self._agent(bad.agent_id)
            if bad.kind in ("runaway", "unknown_model", "oversized_prompts"):
                end_us = start_us + duration_us // 5 if bad.kind == "oversized_prompts" else None
                agent.phase = _Phase(injection, start_us, end_us)
                if bad.kind == "runaway":
                    injection.details["factor"] = cfg.runaway_factor
                    self._push(start_us, _RATE_CHANGE, agent)
                elif bad.kind == "unknown_model":
                    injection.details["provider"], injection.details["model"] = UNKNOWN_MODEL
                else:
                    injection.details["min_input_tokens"] = OVERSIZED_INPUT_RANGE[0]
            else:
                self._push(start_us, _INJECT, injection)

    # -- tasks and calls ---------------------------------------------------------------------------------------
    def _new_task(self, agent: _Agent, now_us: int, parent: _Task | None) -> _Task:
        rng = self._rng
        agent.tasks_started += 1
        task_id = f"{agent.agent_id}-{self.run_id[:6]}-{agent.tasks_started:05d}"
        profile = TASK_PROFILES[agent.task_type]
        if parent is None:
            calls = 1 + _geometric(rng, profile.mean_calls - 1)
        else:
            calls = 1 + _geometric(rng, SUBAGENT_MEAN_CALLS - 1)
        provider, model = _pick_model(rng, agent.mix, cheapest=parent is not None)
        task = _Task(task_id, agent, parent.task_id if parent else None, parent.depth + 1 if parent else 0,
                     provider, model, calls, profile)
        phase = agent.phase
        if parent is not None and parent.injection is not None and parent.injection.kind != "retry_loop":
            task.injection, task.oversized = parent.injection, parent.oversized
        elif phase and now_us >= phase.start_us and (phase.end_us is None or now_us < phase.end_us):
            task.injection = phase.injection
            task.oversized = phase.injection.kind == "oversized_prompts"
        if task.injection is not None and task.injection.kind == "unknown_model":
            task.provider, task.model = UNKNOWN_MODEL
        return task

    def _prompt_hash(self, *parts: object) -> str:
        text = ":".join([self.run_id, *map(str, parts)])
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def _plan_call(self, task: _Task, start_us: int, prompt_hash: str | None = None, attempt: int = 1,
                   previous: _Call | None = None) -> None:
        """Draw one attempt of the task's next call, started at ``start_us``, and schedule its finish."""
        rng = self._rng
        if previous is not None:  # a retry sends exactly the same prompt
            input_tokens = previous.prompt_tokens
        elif task.oversized:
            input_tokens = rng.randint(*OVERSIZED_INPUT_RANGE)
        elif task.call_index == 0:
            input_tokens = _lognormal(rng, task.profile.first_input, 1, NORMAL_MAX_INPUT_TOKENS)
        else:
            new = _lognormal(rng, task.profile.follow_up, 1, NORMAL_MAX_INPUT_TOKENS)
            input_tokens = min(NORMAL_MAX_INPUT_TOKENS, task.context_tokens + new)
        visible = _lognormal(rng, task.profile.output, 1, NORMAL_MAX_OUTPUT_TOKENS)
        low, high = REASONING_RATIO.get(task.model, (0.0, 0.0))
        reasoning = int(visible * rng.uniform(low, high)) if high else 0
        status = "ok"
        draw = rng.random()
        for name, probability in FAILURES:
            if draw < probability:
                status = name
                break
            draw -= probability
        # Prompt caching: a later call re-reads the prefix it shares with the previous call (skipped by the
        # provider after ~5 minutes of silence); Anthropic also writes the new suffix to the cache.
        cache_read = cache_write = 0
        fresh_context = start_us - task.last_finish_us < 300 * _US
        if task.call_index > 0 and fresh_context and not task.oversized:
            cache_read = min(input_tokens, int(task.context_tokens * rng.uniform(0.85, 1.0)))
        if task.provider == "anthropic":
            first_write = int(input_tokens * rng.uniform(0.5, 0.9))
            cache_write = input_tokens - cache_read if task.call_index > 0 else first_write
        ttft, per_token = LATENCY.get(task.model, (600, 12.0))
        output_tokens = visible + reasoning
        latency = int((ttft + per_token * output_tokens) * rng.lognormvariate(0.0, 0.25))
        prompt_tokens = input_tokens
        if status == "timeout":
            latency, output_tokens, reasoning = 60_000, 0, 0
            cache_read = cache_write = 0
        elif status in ("error", "rate_limited"):
            latency = rng.randint(80, 1500)
            input_tokens = output_tokens = reasoning = cache_read = cache_write = 0
        if prompt_hash is None:
            prompt_hash = self._prompt_hash(task.task_id, task.call_index)
        call = _Call(task, prompt_hash, attempt, status, input_tokens, output_tokens, cache_read, cache_write,
                     reasoning, latency, prompt_tokens)
        self._push(start_us + latency * 1000, _CALL, call)

    def _finish_call(self, call: _Call, now_us: int) -> None:
        """After a call is emitted: retry it, or move the task on (next call, sub-agent)."""
        task, rng = call.task, self._rng
        kind = task.injection.kind if task.injection is not None else None
        if kind == "retry_loop":
            if call.retry_loop_left > 0:
                self._plan_retry_loop_attempt(task, now_us + int(rng.uniform(1.0, 5.0) * _US), call)
            return  # the looping task does nothing else
        if call.status != "ok" and call.attempt < MAX_NORMAL_ATTEMPTS:
            # Exponential backoff with jitter, the same prompt (hash and size) and attempt + 1.
            backoff_s = (2 ** call.attempt) * rng.uniform(0.5, 1.5)
            self._plan_call(task, now_us + int(backoff_s * _US), call.prompt_hash, call.attempt + 1, call)
            return
        task.context_tokens = max(task.context_tokens, call.input_tokens)
        task.last_finish_us = now_us
        task.call_index += 1
        task.calls_left -= 1
        if kind == "duplicate_prompts":
            return  # one-call tasks that re-send the same prompt, scheduled by the injection itself
        if rng.random() < SUBAGENT_PROBABILITY and task.depth < self.config.subagent_depth:
            child = self._new_task(task.agent, now_us, task)
            self._plan_call(child, now_us + int(rng.uniform(0.05, 0.5) * _US))
        if task.calls_left > 0:
            self._plan_call(task, now_us + int(rng.expovariate(1 / MEAN_GAP_S) * _US))

    # -- injected patterns -------------------------------------------------------------------------------------
    def _start_injection(self, injection: Injection, now_us: int) -> None:
        agent = self._agent(injection.agent_id)
        rng = self._rng
        if injection.kind == "retry_loop":
            task = self._new_task(agent, now_us, None)
            task.injection = injection
            attempts = rng.randint(15, 30)
            injection.details.update(attempts_planned=attempts)
            prompt = self._prompt_hash("retry-loop", task.task_id)
            injection.details["prompt_hash"] = prompt
            input_tokens = _lognormal(rng, task.profile.first_input, 500, NORMAL_MAX_INPUT_TOKENS)
            seed_call = _Call(task, prompt, 0, "ok", input_tokens, 0, 0, 0, 0, 0, input_tokens,
                              retry_loop_left=attempts)
            self._plan_retry_loop_attempt(task, now_us, seed_call)
        else:  # duplicate_prompts: the same prompt sent again and again as new one-call tasks, never cached
            repeats = rng.randint(20, 40)
            prompt = self._prompt_hash("duplicate", agent.agent_id)
            profile = TASK_PROFILES[agent.task_type]
            input_tokens = _lognormal(rng, profile.first_input, 500, NORMAL_MAX_INPUT_TOKENS)
            injection.details.update(prompt_hash=prompt, repeats_planned=repeats, input_tokens=input_tokens)
            provider, model = _pick_model(rng, agent.mix, cheapest=False)
            at_us = now_us
            for _ in range(repeats):
                task = self._new_task(agent, at_us, None)
                task.injection, task.calls_left = injection, 1
                task.provider, task.model = provider, model  # the same prompt to the same model every time
                visible = _lognormal(rng, profile.output, 1, NORMAL_MAX_OUTPUT_TOKENS)
                ttft, per_token = LATENCY.get(task.model, (600, 12.0))
                latency = int((ttft + per_token * visible) * rng.lognormvariate(0.0, 0.25))
                call = _Call(task, prompt, 1, "ok", input_tokens, visible, 0, 0, 0, latency, input_tokens)
                self._push(at_us + latency * 1000, _CALL, call)
                at_us += int(rng.expovariate(1 / 20.0) * _US) + _US

    def _plan_retry_loop_attempt(self, task: _Task, start_us: int, previous: _Call) -> None:
        """One more attempt of the runaway retry: same prompt, attempt + 1, billed in full (the agent rejects the
        answer and asks again, or the call times out after the prompt was processed)."""
        rng = self._rng
        status = "timeout" if rng.random() < 0.3 else "ok"
        output = 0 if status == "timeout" else _lognormal(rng, task.profile.output, 1, NORMAL_MAX_OUTPUT_TOKENS)
        ttft, per_token = LATENCY.get(task.model, (600, 12.0))
        latency = 60_000 if status == "timeout" else int((ttft + per_token * output) * rng.lognormvariate(0, 0.25))
        # No cache reads: the loop re-sends the whole prompt uncached, which is what makes it expensive.
        call = _Call(task, previous.prompt_hash, previous.attempt + 1, status, previous.prompt_tokens, output, 0,
                     0, 0, latency, previous.prompt_tokens, retry_loop_left=previous.retry_loop_left - 1)
        self._push(start_us + latency * 1000, _CALL, call)

    # -- the event stream --------------------------------------------------------------------------------------
    def _event(self, call: _Call, time_us: int) -> dict[str, Any]:
        task = call.task
        agent = task.agent
        self._emitted += 1
        return {
            "event_id": str(uuid.uuid5(_SIM_NAMESPACE, f"{self.run_id}:{self._emitted}")),
            "source": self.config.source,
            "occurred_at": _from_us(time_us),
            "agent_id": agent.agent_id,
            "team": agent.team,
            "project": agent.project,
            "provider": task.provider,
            "model": task.model,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cache_read_tokens": call.cache_read,
            "cache_write_tokens": call.cache_write,
            "reasoning_tokens": call.reasoning,
            "task_id": task.task_id,
            "parent_task_id": task.parent_task_id,
            "task_type": agent.task_type,
            "environment": self.config.environment,
            "attempt": call.attempt,
            "status": call.status,
            "latency_ms": call.latency_ms,
            "prompt_hash": call.prompt_hash,
            "reported_cost": None,
            "tags": {"simulation": self.run_id},
        }

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield every event of the run in non-decreasing ``occurred_at`` order. Single use: raises
        SimulationError on a second call."""
        if self._started:
            raise SimulationError("Simulation.events() was already called; build a new Simulation to run again")
        self._started = True
        heap = self._heap
        while heap:
            item = heapq.heappop(heap)
            if item.time_us >= self._end_us:
                break
            if item.kind == _ARRIVAL:
                agent, generation = item.payload
                if generation != agent.generation:
                    continue  # superseded by a rate change
                task = self._new_task(agent, item.time_us, None)
                self._plan_call(task, item.time_us)
                self._schedule_arrival(agent, item.time_us)
            elif item.kind == _RATE_CHANGE:
                agent = item.payload
                agent.generation += 1
                self._schedule_arrival(agent, item.time_us)
            elif item.kind == _INJECT:
                self._start_injection(item.payload, item.time_us)
            elif item.time_us < self._start_us:
                self._finish_call(item.payload, item.time_us)  # warm-up: advance the task, emit nothing
            else:
                call: _Call = item.payload
                event = self._event(call, item.time_us)
                injection = call.task.injection
                if injection is not None:
                    _record(injection, event)
                yield event
                self._finish_call(call, item.time_us)
        self._key.events = self._emitted
        self._finished = True

    @property
    def finished(self) -> bool:
        """True once :meth:`events` has yielded the last event of the run."""
        return self._finished

    @property
    def answer_key(self) -> AnswerKey:
        """What was injected. Raises SimulationError until :meth:`events` has been exhausted (the key lists only
        events that were actually emitted)."""
        if not self._finished:
            raise SimulationError("the answer key is complete only after every event was generated; "
                                  "exhaust Simulation.events() first")
        return self._key


def generate(config: SimulationConfig) -> Iterator[dict[str, Any]]:
    """The events of ``config`` (plain dicts of UsageEvent fields, in event-time order). Use :class:`Simulation`
    when the answer key is needed too."""
    return Simulation(config).events()


def _record(injection: Injection, event: Mapping[str, Any]) -> None:
    """Add an emitted event to what ``injection`` put into the stream. A runaway starts at its rate jump; the
    other kinds start at their first event. Every kind ends at its last event."""
    if not injection.task_ids or injection.task_ids[-1] != event["task_id"]:
        if event["task_id"] not in injection._task_set:
            injection._task_set.add(event["task_id"])
            injection.task_ids.append(event["task_id"])
    injection.event_ids.append(str(event["event_id"]))
    if injection.kind != "runaway" and len(injection.event_ids) == 1:
        injection.start = event["occurred_at"]
    injection.end = event["occurred_at"]


# ---------------------------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------------------------


def _to_us(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _from_us(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def _lognormal(rng: random.Random, shape: tuple[float, float], low: int, high: int) -> int:
    return max(low, min(high, int(rng.lognormvariate(*shape))))


def _geometric(rng: random.Random, mean: float) -> int:
    """A geometric count >= 0 with the given mean (0 when mean <= 0)."""
    if mean <= 0:
        return 0
    p = 1.0 / (1.0 + mean)
    return int(math.log(1.0 - rng.random()) / math.log(1.0 - p))


def _pick_model(rng: random.Random, mix: tuple[ModelChoice, ...], *, cheapest: bool) -> tuple[str, str]:
    # Sub-agents mostly run on the cheaper model of the mix (the last-but-listed tiers are the cheap ones).
    if cheapest and rng.random() < 0.7:
        provider, model, _ = mix[1] if len(mix) > 1 else mix[0]
        return provider, model
    provider, model, _ = rng.choices(mix, weights=[w for *_, w in mix])[0]
    return provider, model


def _retry_factor() -> float:
    failure = sum(p for _, p in FAILURES)
    return sum(failure ** k for k in range(MAX_NORMAL_ATTEMPTS))



# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|d|h|m|s)?", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``1h``, ``1h30m``, ``2d``. Raises ConfigError."""
    cleaned = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(cleaned):
        match = _DURATION_PART.match(cleaned, pos)
        if not match or match.end() == pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower() if match.group(2) else None]
        pos = match.end()
    if not cleaned or pos != len(cleaned) or total <= 0:
        raise ConfigError(f"duration {text!r} is not understood; write e.g. 90s, 30m, 1h, 1h30m")
    return total


def parse_rate(text: str) -> float:
    """Events per second in ``20``, ``20/s``, ``1200/m``, ``72000/h``. Raises ConfigError."""
    number, _, unit = text.strip().partition("/")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip().lower())
    if value <= 0 or per is None:
        raise ConfigError(f"rate {text!r} is not understood; write e.g. 20/s, 1200/m or 72000/h")
    return value / per


def register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops simulate`` to the ``finops`` sub-command parser."""
    p = sub.add_parser(
        "simulate",
        help="publish a deterministic synthetic agent fleet (optionally with misbehaving agents)",
        description="Generate a seeded synthetic fleet of agents and publish its usage events (to Kafka through "
                    "the producer SDK, or to a JSONL file with --out). Same flags and seed => same events. "
                    "Token shapes are fitted from the Azure LLM 2023, BurstGPT and Mooncake public traces.",
    )
    p.add_argument("--agents", type=int, default=50, help="number of agents (default 50)")
    p.add_argument("--teams", type=int, default=5, help="number of teams (default 5)")
    p.add_argument("--projects", type=int, default=10, help="number of projects (default 10)")
    p.add_argument("--duration", default="1h", help="simulated time span: 90s, 30m, 1h, 1h30m (default 1h)")
    p.add_argument("--rate", default="20/s", help="fleet-wide mean events per simulated second: 20/s, 1200/m")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--start", default=None,
                   help="event time of the start, ISO-8601 or 'now' (default: now with --realtime, else "
                        f"{DEFAULT_START.isoformat()} so runs are reproducible)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--realtime", action="store_true", help="pace emission by the wall clock (1 s per 1 s)")
    mode.add_argument("--fast", action="store_true", help="emit as fast as possible (the default)")
    p.add_argument("--misbehave", action="append", default=[], metavar="KIND:AGENT",
                   help="inject a misbehaviour: retry-loop, runaway, duplicate-prompts, unknown-model or "
                        "oversized-prompts, e.g. runaway:agent-003 (repeatable)")
    for kind in MISBEHAVIOUR_KINDS:
        flag = "--" + kind.replace("_", "-")
        p.add_argument(flag, action="append", default=[], metavar="AGENT", dest=f"mis_{kind}",
                       help=f"same as --misbehave {kind.replace('_', '-')}:AGENT")
    p.add_argument("--runaway-factor", type=float, default=20.0, help="spend-rate jump of a runaway (default 20)")
    p.add_argument("--subagent-depth", type=int, default=1,
                   help="levels of sub-agent tasks below a task, 1-8 (default 1: sub-agents spawn none)")
    p.add_argument("--source", default="finops-simulator", help="the events' source field")
    p.add_argument("--answer-key", type=Path, default=None, help="write what was injected to this JSON file")
    p.add_argument("--out", type=Path, default=None, help="write JSON lines to this file instead of Kafka")
    p.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is no TTY")
    p.add_argument("--resume-file", type=Path, default=None, metavar="PATH",
                   help="record in PATH how far the run got, and on a rerun with the same flags skip the events "
                        "already sent and continue with the next one (finops demo uses this across restarts)")
    p.add_argument("--skip-before", default=None, metavar="TIME",
                   help="ISO-8601: do not send events that occurred before TIME (counted as skipped; with "
                        "--resume-file they are not sent later either)")
    p.set_defaults(func=_handle_simulate)


def config_from_args(args: argparse.Namespace, now: datetime) -> SimulationConfig:
    """Build the config from parsed CLI arguments; ``now`` is used only for ``--start now`` / realtime.
    Raises ConfigError naming the flag."""
    misbehaviours = [Misbehaviour.parse(text) for text in args.misbehave]
    for kind in MISBEHAVIOUR_KINDS:
        for agent in getattr(args, f"mis_{kind}"):
            misbehaviours.append(Misbehaviour(kind=kind, agent_id=agent))  # type: ignore[arg-type]
    start_text = args.start or ("now" if args.realtime else None)
    if start_text is None:
        start = DEFAULT_START
    elif start_text == "now":
        start = now.replace(microsecond=0)
    else:
        try:
            start = datetime.fromisoformat(start_text.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError(f"--start {start_text!r} is not ISO-8601; write e.g. 2025-06-02T09:00:00Z") from err
        if start.tzinfo is None:
            raise ConfigError(f"--start {start_text!r} has no time zone; add Z or +00:00")
    try:
        return SimulationConfig(
            seed=args.seed, agents=args.agents, teams=args.teams, projects=args.projects,
            duration_s=parse_duration(args.duration), rate_per_s=parse_rate(args.rate), start=start,
            source=args.source, misbehaviours=tuple(misbehaviours), runaway_factor=args.runaway_factor,
            subagent_depth=getattr(args, "subagent_depth", 1),
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"finops simulate: invalid options: {problems}") from err


def publish(events: Iterator[dict[str, Any]], emit: Callable[[dict[str, Any]], None],
            on_event: Callable[[], None] | None = None) -> int:
    """Send every event to ``emit``; return how many. Blocks as long as ``events`` does (pacing)."""
    count = 0
    for event in events:
        emit(event)
        count += 1
        if on_event is not None:
            on_event()
    return count


def _handle_simulate(args: argparse.Namespace) -> int:
    from producers.checkpoint import ProgressCheckpoint, load_progress
    from producers.progress import ProgressBar
    now = utc_now()
    config = config_from_args(args, now)
    skip_before = _parse_time(args.skip_before, "--skip-before") if args.skip_before else None
    simulation = Simulation(config)
    checkpoint: ProgressCheckpoint | None = None
    events: Iterator[dict[str, Any]] = simulation.events()
    if args.resume_file is not None:
        checkpoint = ProgressCheckpoint(args.resume_file, load_progress(args.resume_file, config.run_id))
        events = checkpoint.resume(events, skip_before)
    elif skip_before is not None:
        events = (event for event in events if event["occurred_at"] >= skip_before)
    if args.realtime:
        # Event time maps onto the wall clock: a start in the past (a resumed run) first catches up, at once, on
        # what is already due, then goes at 1 s per 1 s.
        pacer = Pacer(scale=1.0)
        events = pacer.pace(events, lambda e: e["occurred_at"].timestamp(),
                            origin=max(config.start, now).timestamp())
    closed: list[EventSink] = []
    count = 0
    try:
        with open_sink(args.out, source_label="simulate") as sink, \
                ProgressBar(label="simulate", force=True if args.progress else None) as bar:
            closed.append(sink)
            if checkpoint is None:
                count = publish(events, sink.emit, bar.update)
            else:
                count = _publish_with_checkpoint(events, sink, checkpoint, bar.update)
    finally:
        # Also after Ctrl-C: leaving the block closed (flushed) the sink; record how far the run got, unless an
        # event was lost (then the last saved progress stands, and the next run re-sends from there).
        if checkpoint is not None and closed and closed[0].report and not closed[0].lost:
            checkpoint.save(finished=simulation.finished)
    sink = closed[0]
    key = simulation.answer_key
    if args.answer_key is not None:
        key.write(args.answer_key)
    _summary(sys.stderr, config, count, key, args)
    if checkpoint is not None:
        p = checkpoint.progress
        print(f"simulate: resume file {args.resume_file}: {checkpoint.start.done:,} events done before this run, "
              f"{p.done - checkpoint.start.done:,} now ({p.skipped - checkpoint.start.skipped:,} skipped as "
              f"older than --skip-before){', finished' if p.finished else ''}", file=sys.stderr)
    print(f"simulate: {sink.report}", file=sys.stderr)
    return 1 if sink.lost else 0


def _publish_with_checkpoint(events: Iterator[dict[str, Any]], sink: EventSink, checkpoint: ProgressCheckpoint,
                             on_event: Callable[[], None]) -> int:
    """:func:`publish` that tells ``checkpoint`` about every event handed to ``sink`` and saves it now and then
    (after the sink's flush barrier)."""
    checkpoint.flush = sink.flush

    def emit(event: dict[str, Any]) -> None:
        sink.emit(event)
        checkpoint.emitted(event)

    def after() -> None:
        on_event()
        checkpoint.maybe_save()

    return publish(events, emit, after)


def _parse_time(text: str, flag: str) -> datetime:
    """An aware datetime from ISO-8601 (``Z`` accepted). Raises ConfigError naming ``flag``."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise ConfigError(f"{flag} {text!r} is not ISO-8601; write e.g. 2025-06-02T09:00:00Z") from err
    if value.tzinfo is None:
        raise ConfigError(f"{flag} {text!r} has no time zone; add Z or +00:00")
    return value.astimezone(UTC)


def _summary(out: TextIO, config: SimulationConfig, count: int, key: AnswerKey, args: argparse.Namespace) -> None:
    where = str(args.out) if args.out else "Kafka"
    print(f"simulate: {count:,} events from {config.agents} agents over {config.duration_s:g}s of event time "
          f"(seed {config.seed}, run {config.run_id}) -> {where}", file=out)
    for injection in key.injections:
        print(f"  injected {injection.kind} on {injection.agent_id}: {len(injection.event_ids)} events, "
              f"{len(injection.task_ids)} tasks", file=out)
    if args.answer_key is not None:
        print(f"  answer key: {args.answer_key}", file=out)
