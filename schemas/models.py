"""Pydantic v2 models mirroring ``schemas/avro/*.avsc`` field for field, and the usage-event validation rules.

Guarantee: a model either holds a fully valid record or raises :class:`schemas.errors.ValidationFailed` listing
every problem, each naming the field and a stable rule id; ``to_avro_dict`` output goes straight into fastavro and
a decoded dict straight into ``from_avro_dict`` (the Avro <-> Python mapping is in :class:`AvroRecord`).

The usage-event rules are declared once, in :mod:`schemas.usage_rules`; :func:`check_usage_dict` applies them and is
also the hot-path validator (no pydantic model per event); the model's validator calls the same function, so the
two cannot drift apart. The
future-time rule's clock is injected (``now``), never read here. See DESIGN §3 and docs/CONTRACTS.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import types
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from schemas.errors import ConfigError, FieldProblem, ValidationFailed
from schemas.usage_rules import (
    MAX_FUTURE_SKEW,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    USAGE_RULES,
    USAGE_STATUSES,
    UUID_TEXT,
    UsageRules,
)

__all__ = [
    "MAX_FUTURE_SKEW",
    "MAX_TAG_LENGTH",
    "MAX_TAGS",
    "MODELS",
    "USAGE_EVENT_RULES",
    "USAGE_STATUSES",
    "UUID_TEXT",
    "Alert",
    "AvroRecord",
    "AvroType",
    "BudgetPolicy",
    "ControlCommand",
    "Int32",
    "Int64",
    "Money",
    "PricedUsageEvent",
    "SpendAggregate",
    "Threshold",
    "UsageEvent",
    "UtcDatetime",
    "avro_schema_of",
    "check_usage_dict",
    "compute_aggregate_id",
    "example_record_name",
    "load_example",
    "from_micros",
    "parse_usage_event",
    "sign",
    "to_micros",
    "validate_event",
    "verify",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1



# --------------------------------------------------------------------------------------------------------------------
# Avro-typed building blocks
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AvroType:
    """Annotation marker carrying the Avro type (as JSON text, to stay hashable) a Python type maps to.

    Read by :func:`avro_schema_of`, which derives an Avro schema from a model so a test can compare it with the .avsc.
    """

    json_text: str

    def schema(self) -> Any:
        """The Avro type as a JSON value (fresh object each call)."""
        return json.loads(self.json_text)


_DECIMAL_AVRO = '{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 12}'
_TIMESTAMP_AVRO = '{"type": "long", "logicalType": "timestamp-micros"}'
_UUID_AVRO = '{"type": "string", "logicalType": "uuid"}'


def _reject_float(value: Any) -> Any:
    # Binary floats cannot hold most cent amounts exactly; a float reaching a money field is a producer bug.
    if isinstance(value, float):
        raise ValueError(
            f"money must be a Decimal, an int or a decimal string, not float {value!r} (floats are inexact)"
        )
    return value


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX), AvroType('"int"')]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX), AvroType('"long"')]
#: USD amount, Avro decimal(38, 12): at most 12 decimal places and 26 integer digits.
Money = Annotated[
    Decimal,
    BeforeValidator(_reject_float),
    Field(max_digits=38, decimal_places=12, allow_inf_nan=False),
    AvroType(_DECIMAL_AVRO),
]
#: Avro timestamp-micros: a tz-aware datetime, normalised to UTC (naive datetimes are refused: their zone is a guess).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc), AvroType(_TIMESTAMP_AVRO)]
def _uuid_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


#: A UUID as its canonical lower-case string; the format is checked by the record rules (rule id ``uuid``) so the
#: model and :func:`check_usage_dict` report it identically.
EventId = Annotated[str, BeforeValidator(_uuid_to_str), AvroType(_UUID_AVRO)]
# RFC 4122 text form as uuid.UUID prints it (UUID_TEXT): dedupe compares strings, so one spelling per id.

def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of a tz-aware datetime (exact integer arithmetic, no float)."""
    return (value - EPOCH) // _ONE_MICRO


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the Unix epoch."""
    return EPOCH + timedelta(microseconds=micros)


# --------------------------------------------------------------------------------------------------------------------
# Base model: Avro conversion and error translation
# --------------------------------------------------------------------------------------------------------------------

# Depth of nested model validation in this context: only the outermost model translates pydantic errors, so a nested
# record's problems keep their full path (``thresholds.0.percent``) and join the parent's list.
_VALIDATION_DEPTH: ContextVar[int] = ContextVar("_VALIDATION_DEPTH", default=0)


def _problems_from_pydantic(err: ValidationError) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for item in err.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "(record)"
        message = item["msg"]
        if item["type"] != "missing":
            shown = repr(item.get("input"))
            message = f"{message} (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
        problems.append(FieldProblem(field, item["type"], message))
    return problems


def _context_now(info: ValidationInfo) -> datetime | None:
    context = info.context
    if not isinstance(context, Mapping):
        return None
    now = context.get("now")
    if now is None:
        return None
    if not isinstance(now, datetime) or now.tzinfo is None:
        # A programming error, not bad data: fail loudly instead of comparing against a guessed zone.
        raise TypeError(f"validation context 'now' must be a tz-aware datetime, got {now!r}")
    return now


class AvroRecord(BaseModel):
    """Base of every model that mirrors an Avro record.

    Promises: construction either returns a fully valid record or raises :class:`ValidationFailed` listing all
    problems; instances are immutable; :meth:`to_avro_dict` returns what fastavro writes with the record's schema.

    Avro -> Python: string -> ``str`` (``Literal[...]`` where the model closes the set); string + uuid -> ``str`` in
    canonical lower-case form (a ``uuid.UUID`` is accepted and converted; the codec decodes it as ``str``, cheaper
    than UUID and what dedupe and ClickHouse use); int / long -> ``int`` with the range checked (:data:`Int32`,
    :data:`Int64`); bytes + decimal(38, 12) -> ``Decimal`` (:data:`Money`, floats refused); long +
    timestamp-micros -> tz-aware ``datetime`` in UTC (:data:`UtcDatetime`); ``["null", T]`` -> ``T | None = None``;
    map<string> / array<T> -> ``dict[str, str]`` / ``list[T]``. Type errors are found first (pydantic); when the
    types are right the cross-field rules run and are all collected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Avro record name (simple; the namespace is ``io.agentfinops.v1``).
    AVRO_NAME: ClassVar[str] = ""

    @model_validator(mode="wrap")
    @classmethod
    def _translate_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        depth = _VALIDATION_DEPTH.get()
        token = _VALIDATION_DEPTH.set(depth + 1)
        try:
            return handler(data)
        except ValidationError as err:
            if depth:
                raise  # nested record: let the parent collect it with its path
            raise ValidationFailed(_problems_from_pydantic(err), record=cls.__name__) from err
        finally:
            _VALIDATION_DEPTH.reset(token)

    def to_avro_dict(self) -> dict[str, Any]:
        """Field values as fastavro writes them (UUID, Decimal, tz-aware datetime, nested records as dicts)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro_dict(cls, data: Mapping[str, Any], *, now: datetime | None = None) -> Self:
        """Build and validate a record from a decoded Avro dict (or any mapping with Python values).

        ``now`` enables clock-dependent rules. Raises :class:`ValidationFailed`.
        """
        return cls.model_validate(data, context={"now": now} if now is not None else None)

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        """Cross-field problems; subclasses extend. The default record has none."""
        return []

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        if _VALIDATION_DEPTH.get() > 0:
            # Nested record: its parent runs these rules with the full field path, so all problems stay together.
            # (pydantic runs this "after" validator outside this class's own "wrap" validator, which was defined
            # first, so the depth counts only enclosing records; a unit test pins this.)
            return self
        problems = self._rule_problems(_context_now(info))
        if problems:
            raise ValidationFailed(problems, record=type(self).__name__)
        return self


def _blank_problems(record: Any, names: tuple[str, ...]) -> list[FieldProblem]:
    return [
        FieldProblem(name, "not_blank", f"{name} must not be empty or whitespace")
        for name in names
        if not getattr(record, name).strip()
    ]


# --------------------------------------------------------------------------------------------------------------------
# Usage event rules: declared in schemas.usage_rules, used by the hot path and by the model
# --------------------------------------------------------------------------------------------------------------------


def check_usage_dict(record: Mapping[str, Any], now: datetime) -> list[FieldProblem]:
    """Return every rule a usage event breaks (empty list = valid), without building a model.

    Rule ids (``FieldProblem.rule``): ``required``, ``type``, ``not_blank``, ``uuid``, ``non_negative``,
    ``cache_within_input``, ``cache_1h_within_cache_write``, ``reasoning_within_output``, ``audio_within_input``,
    ``audio_within_output``, ``cache_audio_within_cache_read``, ``image_within_input``, ``attempt_min``,
    ``status_allowed``, ``timezone``, ``not_in_future``, ``tags_max_entries``, ``tag_key_length``,
    ``tag_value_length``. The clock comes in as ``now`` here, in :func:`validate_event`, :func:`parse_usage_event`
    or as ``Model.model_validate(data, context={"now": now})``; a model built without one (stored or replayed
    events) skips only ``not_in_future``.

    ``record`` is a UsageEvent as fastavro decodes it (or as ``UsageEvent.to_avro_dict`` returns it); absent optional
    fields take their schema default. ``now`` is the validating clock (tz-aware) for the future-time rule.
    Never raises for bad data; a naive ``now`` raises ``TypeError`` (programming error).
    """
    return _check_usage(record, now)


def _check_usage(record: Mapping[str, Any], now: datetime | None) -> list[FieldProblem]:
    # The generated fast accept first (one pass, no allocation): only a record it doubts is diagnosed.
    if USAGE_EVENT_RULES.looks_valid(record, now):
        return []
    return USAGE_EVENT_RULES.diagnose(record, now)


# --------------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------------


class UsageEvent(AvroRecord):
    """One model call; mirrors ``UsageEvent.avsc`` (see its field docs for the token semantics)."""

    AVRO_NAME: ClassVar[str] = "UsageEvent"

    event_id: EventId
    source: str
    occurred_at: UtcDatetime
    agent_id: str
    team: str
    project: str
    provider: str
    model: str
    input_tokens: Int64
    output_tokens: Int64
    cache_read_tokens: Int64 = 0
    cache_write_tokens: Int64 = 0
    cache_write_1h_tokens: Int64 = 0
    reasoning_tokens: Int64 = 0
    input_audio_tokens: Int64 = 0
    output_audio_tokens: Int64 = 0
    cache_audio_read_tokens: Int64 = 0
    image_tokens: Int64 = 0
    web_search_calls: Int64 = 0
    requests: Int32 = 1
    task_id: str | None = None
    parent_task_id: str | None = None
    task_type: str | None = None
    environment: str | None = None
    attempt: Int32 = 1
    status: str = "ok"
    latency_ms: Int64 | None = None
    prompt_hash: str | None = None
    reported_cost: Money | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    schema_version: Int32 = 1

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        return _check_usage(self.__dict__, now)


#: The usage rules (:data:`schemas.usage_rules.USAGE_RULES`) compiled, absent fields taking UsageEvent's defaults.
USAGE_EVENT_RULES = UsageRules(USAGE_RULES, {name: info.get_default(call_default_factory=True)
                                             for name, info in UsageEvent.model_fields.items()
                                             if not info.is_required()})


_PRICE_SOURCE = re.compile(
    r"catalogue|price_book|reported|none|(catalogue|price_book):[A-Za-z0-9._-]+ via [A-Za-z0-9._-]+")


class PricedUsageEvent(UsageEvent):
    """A UsageEvent plus price and provenance; mirrors ``PricedUsageEvent.avsc`` (usage fields first, flat)."""

    AVRO_NAME: ClassVar[str] = "PricedUsageEvent"

    cost_usd: Money
    cost_input_usd: Money
    cost_output_usd: Money
    cost_cache_read_usd: Money
    cost_cache_write_usd: Money
    cost_other_usd: Money
    price_input_mtok: Money | None = None
    price_output_mtok: Money | None = None
    price_cache_read_mtok: Money | None = None
    price_cache_write_mtok: Money | None = None
    price_cache_write_1h_mtok: Money | None = None
    pricing_status: Literal["priced", "unpriced"]
    unpriced_reason: str | None = None
    catalogue_version: str
    price_book_version: str | None = None
    price_source: str
    cost_delta_usd: Money | None = None
    cost_mismatch: bool = False
    late: bool = False
    priced_at: UtcDatetime
    source_topic: str
    source_partition: Int32
    source_offset: Int64
    computed_cost_usd: Money | None = None
    cost_basis: Literal["catalogue", "reported", "reported_if_unpriced"] = "catalogue"

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        problems = super()._rule_problems(now)
        if not _PRICE_SOURCE.fullmatch(self.price_source):
            problems.append(FieldProblem("price_source", "price_source_form",
                                         f"price_source {self.price_source!r} must be catalogue, price_book, "
                                         "catalogue:<vendor> via <gateway>, reported or none"))
        if self.price_source == "reported" and self.cost_usd != self.reported_cost:
            problems.append(FieldProblem("cost_usd", "reported_cost_authoritative",
                                         f"cost_usd ({self.cost_usd}) must equal reported_cost ({self.reported_cost}) "
                                         "when price_source is 'reported'"))
        if self.pricing_status == "unpriced":
            if self.cost_usd != 0:
                problems.append(FieldProblem("cost_usd", "unpriced_cost_zero",
                                             f"cost_usd ({self.cost_usd}) must be 0 when pricing_status is 'unpriced'"))
            if not (self.unpriced_reason or "").strip():
                problems.append(FieldProblem("unpriced_reason", "unpriced_reason_required",
                                             "unpriced_reason must say why when pricing_status is 'unpriced'"))
        parts = (self.cost_input_usd + self.cost_output_usd + self.cost_cache_read_usd + self.cost_cache_write_usd
                 + self.cost_other_usd)
        if parts != self.cost_usd:
            problems.append(FieldProblem("cost_usd", "cost_parts_sum",
                                         f"cost_usd ({self.cost_usd}) must equal the sum of cost_input/output/"
                                         f"cache_read/cache_write/other_usd ({parts})"))
        if self.source_partition < 0:
            problems.append(FieldProblem("source_partition", "non_negative",
                                         f"source_partition ({self.source_partition}) must be >= 0"))
        if self.source_offset < 0:
            problems.append(FieldProblem("source_offset", "non_negative",
                                         f"source_offset ({self.source_offset}) must be >= 0"))
        return problems


def compute_aggregate_id(window_start: datetime, dimension: str, key: str, source_partition: int) -> str:
    """The deterministic SpendAggregate id ``<window_start_micros>:<dimension>:<key>:<source_partition>``."""
    return f"{to_micros(window_start)}:{dimension}:{key}:{source_partition}"


class SpendAggregate(AvroRecord):
    """One 1-minute window partial from one source partition; mirrors ``SpendAggregate.avsc``."""

    AVRO_NAME: ClassVar[str] = "SpendAggregate"

    aggregate_id: str
    window_start: UtcDatetime
    window_end: UtcDatetime
    dimension: Literal["agent", "team", "project", "model"]
    key: str
    source_partition: Int32
    cost_usd: Money
    input_tokens: Int64
    output_tokens: Int64
    cache_read_tokens: Int64
    cache_write_tokens: Int64
    reasoning_tokens: Int64
    calls: Int64
    errors: Int64
    retries: Int64
    unpriced_calls: Int64
    emitted_at: UtcDatetime

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        expected = compute_aggregate_id(self.window_start, self.dimension, self.key, self.source_partition)
        if self.aggregate_id != expected:
            problems.append(FieldProblem("aggregate_id", "deterministic_id",
                                         f"aggregate_id {self.aggregate_id!r} must be {expected!r} "
                                         "(window_start_micros:dimension:key:source_partition)"))
        if self.window_end <= self.window_start:
            problems.append(FieldProblem("window_end", "window_order", "window_end must be after window_start"))
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                     "calls", "errors", "retries", "unpriced_calls"):
            if getattr(self, name) < 0:
                problems.append(FieldProblem(name, "non_negative", f"{name} ({getattr(self, name)}) must be >= 0"))
        return problems


AlertKind = Literal[
    "budget_threshold", "budget_forecast", "anomaly", "waste", "unpriced_model", "cost_mismatch", "drift", "config",
    "approval", "task_cap", "call_cap", "price_drift", "bill_drift",
]


class Alert(AvroRecord):
    """An alert state change; mirrors ``Alert.avsc``."""

    AVRO_NAME: ClassVar[str] = "Alert"

    alert_id: str
    dedup_key: str
    kind: AlertKind
    severity: Literal["info", "warning", "critical"]
    state: Literal["trigger", "resolve"]
    occurred_at: UtcDatetime
    team: str | None = None
    project: str | None = None
    agent_id: str | None = None
    policy_id: str | None = None
    model: str | None = None
    title: str
    summary: str
    amount_usd: Money | None = None
    limit_usd: Money | None = None
    details: dict[str, str] = Field(default_factory=dict)
    actions: list[str] = Field(default_factory=list)

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        return _blank_problems(self, ("alert_id", "dedup_key", "title"))


class ControlCommand(AvroRecord):
    """An enforcement command; mirrors ``ControlCommand.avsc``. Build with ``key_id=""``, ``signature=""`` and
    :func:`sign` it; agents :func:`verify` before obeying."""

    AVRO_NAME: ClassVar[str] = "ControlCommand"

    command_id: str
    scope_type: Literal["agent", "team", "project"]
    scope_value: str
    action: Literal["throttle", "downgrade", "suspend", "resume"]
    rate_per_minute: Int32 | None = None
    target_model: str | None = None
    reason: str
    issued_by: str
    issued_at: UtcDatetime
    expires_at: UtcDatetime | None = None
    policy_id: str | None = None
    key_id: str
    signature: str

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        problems = _blank_problems(self, ("command_id", "scope_value", "reason", "issued_by"))
        if self.action == "throttle" and (self.rate_per_minute is None or self.rate_per_minute < 1):
            problems.append(FieldProblem("rate_per_minute", "throttle_rate",
                                         "a throttle command needs rate_per_minute >= 1"))
        if self.action == "downgrade" and not (self.target_model or "").strip():
            problems.append(FieldProblem("target_model", "downgrade_target",
                                         "a downgrade command needs target_model"))
        if self.expires_at is not None and self.expires_at <= self.issued_at:
            problems.append(FieldProblem("expires_at", "expiry_order", "expires_at must be after issued_at"))
        if self.signature and (len(self.signature) != 64 or self.signature.strip("0123456789abcdef")):
            problems.append(FieldProblem("signature", "hex_sha256",
                                         "signature must be empty (unsigned) or 64 lower-case hex digits"))
        return problems

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: every field except ``signature`` as JSON with sorted keys, no spaces, UTF-8;
        timestamps as integer microseconds since the epoch (their Avro value), so any language can rebuild them."""
        payload: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name == "signature":
                continue
            value = getattr(self, name)
            payload[name] = to_micros(value) if isinstance(value, datetime) else value
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


def _hmac_hex(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(cmd: ControlCommand, key_id: str, secret: bytes) -> ControlCommand:
    """Return ``cmd`` with ``key_id`` set and ``signature`` = hex HMAC-SHA256(secret, canonical_bytes).

    ``key_id`` is itself signed, so a signature cannot be replayed under another key. Raises :class:`ConfigError`
    when ``key_id`` is blank or ``secret`` is empty (configure the control signing keys).
    """
    if not key_id.strip():
        raise ConfigError("control signing key_id is blank; configure control.signing_key_id")
    if not secret:
        raise ConfigError(f"control signing secret for key_id {key_id!r} is empty; configure the signing keys")
    unsigned = cmd.model_copy(update={"key_id": key_id, "signature": ""})
    return unsigned.model_copy(update={"signature": _hmac_hex(secret, unsigned.canonical_bytes())})


def verify(cmd: ControlCommand, keys: Mapping[str, bytes]) -> bool:
    """True only when ``cmd.signature`` is the HMAC of its canonical bytes under ``keys[cmd.key_id]``.

    An unknown key id or any changed field gives False; the comparison is constant-time.
    """
    secret = keys.get(cmd.key_id)
    if not secret:
        return False
    expected = _hmac_hex(secret, cmd.canonical_bytes())
    return hmac.compare_digest(expected.encode("ascii"), cmd.signature.encode("utf-8"))


ThresholdAction = Literal["notify", "throttle", "downgrade", "suspend"]


class Threshold(AvroRecord):
    """A ladder step of a budget policy; mirrors the nested ``Threshold`` record of ``BudgetPolicy.avsc``."""

    AVRO_NAME: ClassVar[str] = "Threshold"

    percent: Int32
    actions: list[ThresholdAction]
    channels: list[str] = Field(default_factory=list)

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        problems: list[FieldProblem] = []
        if not 1 <= self.percent <= 1000:
            problems.append(FieldProblem("percent", "percent_range", f"percent ({self.percent}) must be in 1..1000"))
        if not self.actions:
            problems.append(FieldProblem("actions", "actions_required", "a threshold needs at least one action"))
        return problems


class BudgetPolicy(AvroRecord):
    """A budget as code; mirrors ``BudgetPolicy.avsc``."""

    AVRO_NAME: ClassVar[str] = "BudgetPolicy"

    policy_id: str
    version: Int32
    scope_type: Literal["team", "project", "agent", "tag"]
    scope_value: str
    period: Literal["day", "week", "month"]
    timezone: str = "UTC"
    limit_usd: Money
    mode: Literal["soft", "hard"]
    thresholds: list[Threshold]
    forecast: bool = False
    max_task_cost_usd: Money | None = None
    max_task_tokens: Int64 | None = None
    max_call_tokens: Int64 | None = None
    downgrade_model: str | None = None
    throttle_rate_per_minute: Int32 | None = None
    enabled: bool = True
    updated_at: UtcDatetime
    unpriced: Literal["count", "breach"] = "count"

    def _rule_problems(self, now: datetime | None) -> list[FieldProblem]:
        problems = _blank_problems(self, ("policy_id", "scope_value"))
        if self.version < 1:
            problems.append(FieldProblem("version", "version_min", f"version ({self.version}) must be >= 1"))
        if self.scope_type == "tag":
            key, sep, _ = self.scope_value.partition("=")
            if not sep or not key.strip():
                problems.append(FieldProblem("scope_value", "tag_scope",
                                             f"a tag scope must be 'key=value' (got {self.scope_value!r})"))
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(FieldProblem("timezone", "timezone", f"timezone {self.timezone!r} is not an IANA zone"))
        if self.limit_usd < 0:
            problems.append(FieldProblem("limit_usd", "non_negative", f"limit_usd ({self.limit_usd}) must be >= 0"))
        seen: set[int] = set()
        for index, step in enumerate(self.thresholds):
            problems.extend(FieldProblem(f"thresholds.{index}.{problem.field}", problem.rule, problem.message)
                            for problem in step._rule_problems(now))
            if step.percent in seen:
                problems.append(FieldProblem(f"thresholds.{index}.percent", "distinct_percent",
                                             f"percent {step.percent} appears in more than one threshold"))
            seen.add(step.percent)
        actions = {action for step in self.thresholds for action in step.actions}
        if "throttle" in actions and not (self.throttle_rate_per_minute or 0) >= 1:
            problems.append(FieldProblem("throttle_rate_per_minute", "throttle_rate",
                                         "a threshold throttles, so throttle_rate_per_minute must be >= 1"))
        if "downgrade" in actions and not (self.downgrade_model or "").strip():
            problems.append(FieldProblem("downgrade_model", "downgrade_target",
                                         "a threshold downgrades, so downgrade_model must name the cheaper model"))
        for name in ("max_task_tokens", "max_call_tokens"):
            cap = getattr(self, name)
            if cap is not None and cap < 1:
                problems.append(FieldProblem(name, "cap_min", f"{name} ({cap}) must be null or >= 1"))
        if self.max_task_cost_usd is not None and self.max_task_cost_usd <= 0:
            problems.append(FieldProblem("max_task_cost_usd", "cap_min", "max_task_cost_usd must be null or > 0"))
        return problems


#: Top-level models by Avro record name.
MODELS: dict[str, type[AvroRecord]] = {
    model.AVRO_NAME: model
    for model in (UsageEvent, PricedUsageEvent, SpendAggregate, Alert, ControlCommand, BudgetPolicy)
}

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Example file stem prefix -> record; the longest matching prefix wins (priced_usage_event before usage_event).
_EXAMPLE_PREFIXES = {
    "usage_event": "UsageEvent",
    "priced_usage_event": "PricedUsageEvent",
    "spend_aggregate": "SpendAggregate",
    "alert": "Alert",
    "control_command": "ControlCommand",
    "budget_policy": "BudgetPolicy",
}


def example_record_name(path: Path) -> str:
    """The record an example file holds, from its name (``usage_event_v0.json`` -> ``UsageEvent``).

    Raises :class:`ConfigError` for a file name with no known prefix.
    """
    matches = [prefix for prefix in _EXAMPLE_PREFIXES if path.stem.startswith(prefix)]
    if not matches:
        raise ConfigError(f"example {path.name}: name must start with one of {', '.join(_EXAMPLE_PREFIXES)}")
    return _EXAMPLE_PREFIXES[max(matches, key=len)]


def load_example(name: str) -> AvroRecord:
    """Load and validate ``schemas/examples/<name>`` (JSON: ISO timestamps, decimal strings) as its model.

    Raises :class:`ValidationFailed` if the example is invalid, ``FileNotFoundError`` if it does not exist.
    """
    path = EXAMPLES_DIR / name
    model = MODELS[example_record_name(path)]
    return model.model_validate_json(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# Producer-facing helpers
# --------------------------------------------------------------------------------------------------------------------


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise TypeError(f"now must be a tz-aware datetime, got naive {now!r}")


def validate_event(event: UsageEvent, now: datetime) -> UsageEvent:
    """Re-check ``event`` including the clock-dependent rule against ``now`` (the producer's clock).

    Returns the same event. Raises :class:`ValidationFailed` listing every problem.
    """
    _require_aware(now)
    problems = _check_usage(event.__dict__, now)
    if problems:
        raise ValidationFailed(problems, record=type(event).__name__)
    return event


def parse_usage_event(data: Mapping[str, Any], now: datetime) -> UsageEvent:
    """Build a UsageEvent from ``data`` and apply every rule, including the future-time rule against ``now``.

    Raises :class:`ValidationFailed` listing every problem.
    """
    _require_aware(now)
    return UsageEvent.model_validate(data, context={"now": now})


# --------------------------------------------------------------------------------------------------------------------
# Avro view of the models (keeps models and .avsc honest)
# --------------------------------------------------------------------------------------------------------------------


def _avro_type(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        for item in metadata:
            if isinstance(item, AvroType):
                return item.schema()
        return _avro_type(base)
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1 or len(get_args(annotation)) != 2:
            raise TypeError(f"only T | None unions map to Avro here, got {annotation!r}")
        return ["null", _avro_type(members[0])]
    if origin is Literal:
        if not all(isinstance(value, str) for value in get_args(annotation)):
            raise TypeError(f"only string literals map to Avro here, got {annotation!r}")
        return "string"
    if origin is list:
        return {"type": "array", "items": _avro_type(get_args(annotation)[0])}
    if origin is dict:
        key_type, value_type = get_args(annotation)
        if key_type is not str:
            raise TypeError(f"Avro maps have string keys, got {annotation!r}")
        return {"type": "map", "values": _avro_type(value_type)}
    if annotation is str:
        return "string"
    if annotation is bool:
        return "boolean"
    if isinstance(annotation, type) and issubclass(annotation, AvroRecord):
        return {"type": "record", "name": annotation.AVRO_NAME, "fields": _avro_fields(annotation)}
    raise TypeError(f"no Avro mapping for {annotation!r}; use Int32, Int64, Money, UtcDatetime or a record")


def _avro_fields(model: type[AvroRecord]) -> list[dict[str, Any]]:
    hints = get_type_hints(model, include_extras=True)
    fields: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        entry: dict[str, Any] = {"name": name, "type": _avro_type(hints[name])}
        if not info.is_required():
            entry["default"] = info.get_default(call_default_factory=True)
        fields.append(entry)
    return fields


def avro_schema_of(model: type[AvroRecord], namespace: str = "io.agentfinops.v1") -> dict[str, Any]:
    """Derive the Avro record schema (without docs) that ``model`` implies: names, order, types, defaults.

    Used to prove a model mirrors its .avsc; raises ``TypeError`` for a field type with no Avro mapping.
    """
    return {"type": "record", "name": model.AVRO_NAME, "namespace": namespace, "fields": _avro_fields(model)}

