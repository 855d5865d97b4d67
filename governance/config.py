"""``governance.yaml``: shared-cost rules, the approval policy for costly agents, recommendation thresholds and the
review schedule (see ``infra/governance.example.yaml`` for every option, commented).

Money is read as ``Decimal`` from the YAML text (never through float). Every problem is reported at once, naming
the file and the field, as a :class:`~schemas.errors.ConfigError`.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import ConfigError

__all__ = [
    "ApprovalPolicy",
    "GovernanceConfig",
    "RecommendSettings",
    "ReviewSchedule",
    "SharedCostRule",
    "load_governance_config",
    "parse_governance_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SharedCostRule(_Strict):
    """Spend that belongs to nobody in particular (a router, an embeddings service) and is allocated to the teams
    that consume it. A ledger row is shared when its agent, project or team is listed (any of them)."""

    name: str = Field(min_length=1)
    agents: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    method: Literal["usage", "even", "weights"] = "usage"
    #: For ``usage``: a tag on the shared rows naming the team served (e.g. ``consumer_team``); the usage share is
    #: then the shared calls tagged for each team. Without it, the share is each team's direct (non-shared) cost.
    consumer_tag: str | None = None
    #: Teams that share the cost; default every team with direct spend in the period.
    consumers: tuple[str, ...] = ()
    weights: dict[str, Decimal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _coherent(self) -> SharedCostRule:
        if not (self.agents or self.projects or self.teams):
            raise ValueError("a shared cost needs at least one of agents, projects or teams")
        if self.method == "weights" and not self.weights:
            raise ValueError("method weights needs weights (team: number)")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must not be negative")
        return self

    def matches(self, team: str, project: str, agent_id: str) -> bool:
        """True when a ledger row with these dimensions is part of this shared cost."""
        return agent_id in self.agents or project in self.projects or team in self.teams


class ApprovalPolicy(_Strict):
    """Agents expected to cost more than ``threshold_usd`` a month need a team lead's approval."""

    threshold_usd: Decimal = Decimal(500)
    #: team -> people who may approve for it; ``*`` lists approvers for every team (FinOps admins).
    team_leads: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: notify: alert only; throttle: the alert also asks the enforcement ladder to throttle the agent.
    on_unapproved: Literal["notify", "throttle"] = "notify"
    throttle_rate_per_minute: int = Field(default=10, ge=1)

    def approvers(self, team: str) -> tuple[str, ...]:
        return tuple(self.team_leads.get(team, ())) + tuple(self.team_leads.get("*", ()))


class RecommendSettings(_Strict):
    """Thresholds of ``finops recommend``."""

    #: Input tokens above which a prompt counts as bloated; the excess is the saving.
    prompt_bloat_tokens: int = Field(default=100_000, ge=1)
    #: A cheaper model qualifies for a task type when it served at least this many calls of it ...
    tiering_min_calls: int = Field(default=10, ge=1)
    #: ... with a success rate no more than this below the expensive model's.
    tiering_success_tolerance: Decimal = Decimal("0.05")
    #: Known cheaper tiers, provider -> {expensive model: cheaper model}, offered even when the fleet has no
    #: evidence of the cheaper model on that task type yet (marked as such in the evidence).
    tiers: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: Minimum saving (USD per month) for a recommendation to be listed.
    min_monthly_saving_usd: Decimal = Decimal("0.01")


class ReviewSchedule(_Strict):
    """When the running system sends the reviews (UTC)."""

    weekly_weekday: int = Field(default=0, ge=0, le=6, description="0 = Monday")
    weekly_hour: int = Field(default=8, ge=0, le=23)
    monthly_day: int = Field(default=1, ge=1, le=28)
    monthly_hour: int = Field(default=8, ge=0, le=23)


class GovernanceConfig(_Strict):
    """The whole file. Every section is optional."""

    shared_costs: tuple[SharedCostRule, ...] = ()
    approval: ApprovalPolicy = ApprovalPolicy()
    recommend: RecommendSettings = RecommendSettings()
    review: ReviewSchedule = ReviewSchedule()

    @field_validator("shared_costs")
    @classmethod
    def _unique(cls, rules: tuple[SharedCostRule, ...]) -> tuple[SharedCostRule, ...]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"shared cost names must be unique: {', '.join(dupes)}")
        return rules

    def shared_rule_for(self, team: str, project: str, agent_id: str) -> SharedCostRule | None:
        """The first rule (file order) a ledger row belongs to, or None when it is direct spend."""
        for rule in self.shared_costs:
            if rule.matches(team, project, agent_id):
                return rule
        return None


class _DecimalLoader(yaml.SafeLoader):
    """Reads YAML floats as Decimal from their text, so 0.1 stays exactly 0.1."""


def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    return Decimal(str(loader.construct_scalar(node)).replace("_", ""))  # type: ignore[arg-type]


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


def parse_governance_config(text: str, source: str = "<governance config>") -> GovernanceConfig:
    """Parse and validate the YAML ``text``. Raises ConfigError listing every problem with its field path."""
    try:
        doc: Any = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err
    try:
        return GovernanceConfig.model_validate(doc or {})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_governance_config(path: str | Path | None) -> GovernanceConfig:
    """Read ``path`` (None: the defaults, no shared costs). Raises ConfigError when it cannot be read or is invalid."""
    if path is None:
        return GovernanceConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read governance config {p}: {err.strerror}") from err
    return parse_governance_config(text, str(p))
