"""Replay a recorded usage trace (CSV or JSONL, optionally gzipped) as usage events: ``finops replay``.

Role: a YAML column mapping (:class:`ReplayMapping`; ``infra/replay/aider.yaml`` is the worked example) says which
column or constant gives each UsageEvent field and how the provider follows from the model name; :class:`Pacer`
replays ``fast``, at the ``original`` gaps or ``scaled:N`` (injected clock and sleep, so tests never sleep).

Guarantee: ``event_id`` is ``uuid5(namespace, sha256(decompressed file content) + ":" + line)``, so a file replayed
twice gives the same ids and the pipeline's dedupe drops the second copy; nothing is skipped silently (a row that
does not map raises :class:`ReplayRowError` naming file, line and column, or with ``--skip-bad`` goes to a rejects
file and is counted); every event passes the SDK's rules (:func:`schemas.models.check_usage_dict`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from finops.clock import utc_now
from schemas.errors import ConfigError, FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = [
    "REPLAY_NAMESPACE",
    "EventSink",
    "FieldSpec",
    "JsonlSink",
    "Pacer",
    "ProducerSink",
    "ProviderRule",
    "ProviderSpec",
    "RawRow",
    "RejectsWriter",
    "ReplayMapping",
    "ReplayRowError",
    "ReplayStats",
    "RowProblem",
    "TimeSpec",
    "event_id_for",
    "event_to_json",
    "file_digest",
    "iter_rows",
    "load_mapping",
    "map_row",
    "open_sink",
    "parse_timing",
    "register_commands",
    "replay_file",
]

#: Namespace of replayed event ids (uuid5). Changing it would change every replayed id: don't.
REPLAY_NAMESPACE = uuid.UUID("0b7e7c55-31a4-5c3e-8d2a-5f0c4b1e9a77")
_MONEY_QUANTUM = Decimal("1e-12")  # Avro decimal(38, 12)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _column_shorthand(value: Any) -> Any:
    # `model: main_model` is short for `model: {column: main_model}`.
    return {"column": value} if isinstance(value, str) else value


class FieldSpec(_Strict):
    """Where one field comes from: a ``column`` (dotted path into JSON objects) or a ``constant``. ``default`` is
    used when the column is missing or holds a null value. A bare string in YAML means ``{column: ...}``."""

    column: str | None = None
    constant: str | None = None
    default: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _column_shorthand(value)

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (self.constant is None):
            raise ValueError("give exactly one of 'column' or 'constant'")
        return self


class TimeSpec(_Strict):
    """The event time: ``unit`` seconds / milliseconds / microseconds since the Unix epoch (or since ``base`` for
    traces that start at 0), or ``iso`` (ISO-8601; a value without an offset is read in ``timezone``)."""

    column: str
    unit: Literal["seconds", "milliseconds", "microseconds", "iso"] = "seconds"
    base: AwareDatetime | None = None
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _column_shorthand(value)

    @model_validator(mode="after")
    def _zone_exists(self) -> TimeSpec:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {self.timezone!r}; use an IANA name such as UTC") from err
        return self


class ProviderRule(_Strict):
    """Models matching ``match`` (a glob on the raw model value, e.g. ``claude-*``) belong to ``provider``.
    ``strip_prefix`` drops a routing prefix up to the first ``/`` from the model (``gemini/gemini-2.5-pro`` ->
    ``gemini-2.5-pro``; ``openrouter/anthropic/claude-3.7-sonnet`` -> ``anthropic/claude-3.7-sonnet``)."""

    match: str
    provider: str = Field(min_length=1)
    strip_prefix: bool = False


class ProviderSpec(_Strict):
    """The provider: a ``column``, a ``constant``, or ``rules`` on the model name. When no rule matches,
    ``otherwise: prefix`` takes the text before the first ``/`` as provider (renamed by ``prefix_aliases``, e.g.
    litellm's ``fireworks_ai`` -> genai-prices' ``fireworks``) and strips it from the model; ``otherwise: error``
    refuses the row."""

    column: str | None = None
    constant: str | None = None
    rules: tuple[ProviderRule, ...] = ()
    otherwise: Literal["prefix", "error"] = "prefix"
    prefix_aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _column_shorthand(value)

    @model_validator(mode="after")
    def _at_most_one_source(self) -> ProviderSpec:
        if self.column is not None and self.constant is not None:
            raise ValueError("give at most one of 'column' or 'constant' (or neither, to use the rules)")
        return self


_OPTIONAL_TEXT = ("task_id", "parent_task_id", "task_type", "environment", "status", "prompt_hash")
_OPTIONAL_COUNTS = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens",
                    "attempt", "latency_ms")


class ReplayMapping(_Strict):
    """How the rows of one trace format become usage events. See ``infra/replay/aider.yaml``."""

    format: Literal["csv", "jsonl"] | None = Field(None, description="default: from the file name")
    source: str = Field("finops-replay", min_length=1)
    null_values: tuple[str, ...] = ("",)
    occurred_at: TimeSpec
    model: FieldSpec
    provider: ProviderSpec = Field(default_factory=ProviderSpec)
    input_tokens: FieldSpec
    output_tokens: FieldSpec
    cache_read_tokens: FieldSpec | None = None
    cache_write_tokens: FieldSpec | None = None
    cache_write_1h_tokens: FieldSpec | None = None
    reasoning_tokens: FieldSpec | None = None
    attempt: FieldSpec | None = None
    latency_ms: FieldSpec | None = None
    reported_cost: FieldSpec | None = None
    agent_id: FieldSpec
    team: FieldSpec
    project: FieldSpec
    task_id: FieldSpec | None = None
    parent_task_id: FieldSpec | None = None
    task_type: FieldSpec | None = None
    environment: FieldSpec | None = None
    status: FieldSpec | None = None
    prompt_hash: FieldSpec | None = None
    tags: dict[str, FieldSpec] = Field(default_factory=dict)

    def column_of(self, field_name: str) -> str | None:
        """The column that feeds ``field_name`` (None for a constant or an unmapped field)."""
        if field_name.startswith("tags."):
            spec: Any = self.tags.get(field_name[5:])
        else:
            spec = getattr(self, field_name, None)
        return getattr(spec, "column", None)

    def with_overrides(self, **columns_or_constants: FieldSpec | None) -> ReplayMapping:
        """A copy with some fields replaced (the CLI's ``--agent-from`` and friends); None values are ignored."""
        update = {k: v for k, v in columns_or_constants.items() if v is not None}
        return self.model_copy(update=update)


def load_mapping(path: Path) -> ReplayMapping:
    """Read and validate a mapping YAML. Raises ConfigError naming the file, the line and the key of every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the replay mapping {path}: {err}; pass an existing file to --mapping") from err
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: the replay mapping is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the replay mapping must be a YAML mapping of field names to columns")
    try:
        return ReplayMapping.model_validate(data)
    except ValidationError as err:
        lines = []
        for item in err.errors(include_url=False):
            loc = [str(p) for p in item["loc"] if not str(p).startswith("function-")]
            line = _yaml_line(node, loc)
            lines.append(f"  {path}:{line}: {'.'.join(loc) or '(top)'}: {item['msg']}")
        raise ConfigError(f"the replay mapping {path} is invalid; fix these keys:\n" + "\n".join(lines)) from err


def _yaml_line(node: Any, loc: list[str]) -> int:
    """The 1-based line of the deepest YAML node on ``loc`` (the key path of a pydantic error)."""
    line = (node.start_mark.line + 1) if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            break
        line = node.start_mark.line + 1
    return line


# ---------------------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRow:
    """One input record: its 1-based physical line, its values, and (CSV) the header for column positions."""

    line: int
    values: Mapping[str, Any]
    header: tuple[str, ...] = ()
    problem: str | None = None  # a row that could not even be parsed (bad JSON, wrong field count)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One reason a row did not map: the column (name and 1-based CSV position, if known) and why."""

    column: str | None
    column_number: int | None
    reason: str

    def where(self) -> str:
        if self.column is None:
            return "row"
        return f"column {self.column_number} ({self.column})" if self.column_number else f"field {self.column!r}"


class ReplayRowError(FinopsError):
    """A row of the trace could not be mapped to a valid usage event. ``problems`` lists every reason."""

    def __init__(self, path: Path, line: int, problems: list[RowProblem]) -> None:
        self.path, self.line, self.problems = path, line, problems
        details = "; ".join(f"{p.where()}: {p.reason}" for p in problems)
        super().__init__(
            f"{path}:{line}: row does not map to a usage event: {details}. Fix the row or the mapping "
            "(--mapping), or pass --skip-bad to write such rows to a rejects file and go on"
        )


def _open_text(path: Path) -> IO[str]:
    raw: Any = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 hex of the file's (decompressed) content and its number of newline-terminated lines.

    The digest seeds the event ids, so a gzipped and a plain copy of the same data replay under the same ids.
    Raises ConfigError when the file cannot be read.
    """
    digest, lines = hashlib.sha256(), 0
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
                lines += chunk.count(b"\n")
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ConfigError(f"cannot read the trace {path}: {err}; check the path (and that a .gz file is gzip)") from err
    return digest.hexdigest(), lines


def _format_of(path: Path, mapping: ReplayMapping) -> str:
    if mapping.format is not None:
        return mapping.format
    name = path.name.removesuffix(".gz").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise ConfigError(f"cannot tell the format of {path} from its name; set 'format: csv' or 'format: jsonl' in "
                      "the mapping")


def iter_rows(path: Path, fmt: str) -> Iterator[RawRow]:
    """Yield the data rows of a CSV (first line is the header) or JSONL file (blank lines skipped), with their
    physical line numbers. Unparseable rows are yielded with ``problem`` set, never dropped."""
    with _open_text(path) as text:
        if fmt == "csv":
            reader = csv.reader(text)
            try:
                header = tuple(next(reader))
            except StopIteration:
                return
            while True:
                start = reader.line_num + 1
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    yield RawRow(start, {}, header, f"CSV syntax error: {err}")
                    continue
                if not cells:
                    continue  # an empty line carries no row
                problem = None
                if len(cells) != len(header):
                    problem = f"row has {len(cells)} fields but the header has {len(header)}"
                yield RawRow(start, dict(zip(header, cells, strict=False)), header, problem)
        else:
            for number, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line, parse_float=Decimal)
                except json.JSONDecodeError as err:
                    yield RawRow(number, {}, (), f"invalid JSON at character {err.colno}: {err.msg}")
                    continue
                if not isinstance(value, dict):
                    yield RawRow(number, {}, (), f"a JSON line must be an object, got {type(value).__name__}")
                    continue
                yield RawRow(number, value)


# ---------------------------------------------------------------------------------------------------------------
# Mapping one row
# ---------------------------------------------------------------------------------------------------------------


def event_id_for(digest: str, line: int) -> str:
    """The deterministic event id of ``line`` of the file whose content hash is ``digest``."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{digest}:{line}"))


class _RowMapper:
    """Maps the rows of one file; collects every problem of a row before raising."""

    def __init__(self, path: Path, mapping: ReplayMapping, digest: str, now: datetime) -> None:
        self.path, self.mapping, self.digest, self.now = path, mapping, digest, now
        self.nulls = frozenset(mapping.null_values)
        zone = ZoneInfo(mapping.occurred_at.timezone)
        self.zone = zone

    def _position(self, row: RawRow, column: str | None) -> int | None:
        if column is None or not row.header:
            return None
        try:
            return row.header.index(column) + 1
        except ValueError:
            return None

    def _raw(self, row: RawRow, column: str) -> tuple[bool, Any]:
        """(present, value) of a column; dotted names walk into JSON objects."""
        value: Any
        if column in row.values:
            value = row.values[column]
        else:
            value = row.values
            for part in column.split("."):
                if not isinstance(value, Mapping) or part not in value:
                    return False, None
                value = value[part]
        if value is None or (isinstance(value, str) and value.strip() in self.nulls):
            return True, None
        return True, value

    def _text(self, row: RawRow, spec: FieldSpec, name: str, required: bool, problems: list[RowProblem]) -> str | None:
        if spec.constant is not None:
            return spec.constant
        assert spec.column is not None
        present, value = self._raw(row, spec.column)
        if value is None:
            if spec.default is not None:
                return spec.default
            if required:
                nulls = ", ".join(map(repr, self.mapping.null_values))
                why = "is missing" if not present else f"is empty or null ({nulls} count as null)"
                problems.append(RowProblem(spec.column, self._position(row, spec.column),
                                           f"{name} is required but the column {why}"))
            return None
        return str(value).strip() if not isinstance(value, (dict, list)) else json.dumps(value)

    def _count(self, row: RawRow, spec: FieldSpec | None, name: str, required: bool,
               problems: list[RowProblem]) -> int | None:
        if spec is None:
            return None
        text = self._text(row, spec, name, required, problems)
        if text is None:
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite() or number != number.to_integral_value() or number < 0:
            problems.append(RowProblem(spec.column, self._position(row, spec.column),
                                       f"{name} must be a whole number >= 0, got {text[:40]!r}"))
            return None
        return int(number)

    def _time(self, row: RawRow, problems: list[RowProblem]) -> datetime | None:
        spec = self.mapping.occurred_at
        text = self._text(row, FieldSpec(column=spec.column), "occurred_at", True, problems)
        if text is None:
            return None
        position = self._position(row, spec.column)
        if spec.unit == "iso":
            try:
                value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                problems.append(RowProblem(spec.column, position,
                                           f"occurred_at must be an ISO-8601 time, got {text[:40]!r}"))
                return None
            return (value if value.tzinfo else value.replace(tzinfo=self.zone)).astimezone(UTC)
        try:
            number = Decimal(text)
            if not number.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            problems.append(RowProblem(spec.column, position,
                                       f"occurred_at must be a number of {spec.unit}, got {text[:40]!r}"))
            return None
        per_second = {"seconds": 1, "milliseconds": 1_000, "microseconds": 1_000_000}[spec.unit]
        micros = int(number * 1_000_000 / per_second)
        base = spec.base.astimezone(UTC) if spec.base is not None else _EPOCH
        try:
            return base + timedelta(microseconds=micros)
        except OverflowError:
            problems.append(RowProblem(spec.column, position, f"occurred_at {text[:40]!r} is out of range"))
            return None

    def _provider_model(self, row: RawRow, problems: list[RowProblem]) -> tuple[str | None, str | None]:
        model = self._text(row, self.mapping.model, "model", True, problems)
        spec = self.mapping.provider
        if spec.constant is not None or spec.column is not None:
            provider = self._text(row, FieldSpec(column=spec.column, constant=spec.constant), "provider", True,
                                  problems)
            return provider, model
        if model is None:
            return None, None
        for rule in spec.rules:
            if fnmatch.fnmatchcase(model, rule.match):
                stripped = model.split("/", 1)[1] if rule.strip_prefix and "/" in model else model
                return rule.provider, stripped
        prefix, slash, rest = model.partition("/")
        if spec.otherwise == "prefix" and slash and prefix and rest:
            return spec.prefix_aliases.get(prefix, prefix), rest
        column = self.mapping.model.column
        problems.append(RowProblem(column, self._position(row, column),
                                   f"no provider rule matches model {model[:80]!r} and it has no 'provider/' "
                                   "prefix; add a rule to provider.rules in the mapping"))
        return None, model

    def map(self, row: RawRow) -> dict[str, Any]:
        """The usage event of ``row``. Raises ReplayRowError listing every problem of the row."""
        if row.problem is not None:
            raise ReplayRowError(self.path, row.line, [RowProblem(None, None, row.problem)])
        m = self.mapping
        problems: list[RowProblem] = []
        occurred_at = self._time(row, problems)
        provider, model = self._provider_model(row, problems)
        event: dict[str, Any] = {
            "event_id": event_id_for(self.digest, row.line),
            "source": m.source,
            "occurred_at": occurred_at,
            "agent_id": self._text(row, m.agent_id, "agent_id", True, problems),
            "team": self._text(row, m.team, "team", True, problems),
            "project": self._text(row, m.project, "project", True, problems),
            "provider": provider,
            "model": model,
            "input_tokens": self._count(row, m.input_tokens, "input_tokens", True, problems),
            "output_tokens": self._count(row, m.output_tokens, "output_tokens", True, problems),
        }
        for name in _OPTIONAL_COUNTS:
            count = self._count(row, getattr(m, name), name, False, problems)
            if count is not None:
                event[name] = count
        for name in _OPTIONAL_TEXT:
            spec = getattr(m, name)
            event[name] = self._text(row, spec, name, False, problems) if spec is not None else None
        if event["status"] is None:
            event["status"] = "ok"  # the schema default: a trace without a status column recorded successes
        event["reported_cost"] = self._cost(row, problems)
        tags = {}
        for tag, spec in m.tags.items():
            value = self._text(row, spec, f"tags.{tag}", False, problems)
            if value is not None:
                tags[tag] = value
        event["tags"] = tags
        if not problems:
            problems.extend(self._rule_problems(row, event))
        if problems:
            raise ReplayRowError(self.path, row.line, problems)
        return event

    def _cost(self, row: RawRow, problems: list[RowProblem]) -> Decimal | None:
        spec = self.mapping.reported_cost
        if spec is None:
            return None
        text = self._text(row, spec, "reported_cost", False, problems)
        if text is None:
            return None
        try:
            cost = Decimal(text)
            if not cost.is_finite() or cost < 0:
                raise InvalidOperation
        except InvalidOperation:
            problems.append(RowProblem(spec.column, self._position(row, spec.column),
                                       f"reported_cost must be a non-negative USD amount, got {text[:40]!r}"))
            return None
        # Avro decimal(38, 12): traces written from floats carry binary noise beyond 12 places; round it away.
        return cost.quantize(_MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)

    def _rule_problems(self, row: RawRow, event: dict[str, Any]) -> list[RowProblem]:
        from schemas.models import check_usage_dict

        found = []
        for problem in check_usage_dict(event, self.now):
            column = self.mapping.column_of(problem.field.split(".")[0] if not problem.field.startswith("tags.")
                                            else problem.field)
            found.append(RowProblem(column, self._position(row, column), f"{problem.field}: {problem.message}"))
        return found


def map_row(path: Path, mapping: ReplayMapping, row: RawRow, *, digest: str, now: datetime) -> dict[str, Any]:
    """Map one row of ``path`` (content hash ``digest``) to a usage-event dict, validated against ``now``.
    Raises ReplayRowError naming the file, line and column of every problem."""
    return _RowMapper(path, mapping, digest, now).map(row)


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def parse_timing(text: str) -> float | None:
    """The speed-up of a ``--timing`` value: ``original`` -> 1.0, ``scaled:10x`` (or ``scaled:10``) -> 10.0,
    ``fast`` -> None (no waiting). Raises ConfigError."""
    value = text.strip().lower()
    if value == "fast":
        return None
    if value == "original":
        return 1.0
    if value.startswith("scaled:"):
        try:
            scale = float(value.removeprefix("scaled:").removesuffix("x"))
        except ValueError:
            scale = 0.0
        if scale > 0:
            return scale
    raise ConfigError(f"--timing {text!r} is not understood; use original, fast or scaled:10x")


class Pacer:
    """Releases items at the wall-clock pace of their event times, divided by ``scale``.

    Each item waits until ``previous target + min(gap / scale, max_gap)``; targets accumulate from the first item
    (not from the actual wake-up time), so sleep overshoot does not drift. Out-of-order items (negative gap) go
    at once. ``clock`` and ``sleep`` are injected so tests never sleep.
    """

    def __init__(self, scale: float = 1.0, *, max_gap: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if scale <= 0:
            raise ConfigError(f"pacing scale must be > 0 (got {scale})")
        self.scale, self.max_gap, self._clock, self._sleep = scale, max_gap, clock, sleep
        self.slept = 0.0

    def pace(self, items: Iterable[T], time_of: Callable[[T], float], *, origin: float | None = None) -> Iterator[T]:
        """Yield ``items``, each when its time has come. ``time_of`` gives an item's event time in seconds;
        ``origin`` is the event time that maps to now (default: the first item's)."""
        target: float | None = None
        previous = origin
        for item in items:
            event_time = time_of(item)
            if target is None:
                target = self._clock()
                if previous is None:
                    previous = event_time
            gap = max(0.0, event_time - previous) / self.scale if previous is not None else 0.0
            if self.max_gap is not None:
                gap = min(gap, self.max_gap)
            target += gap
            previous = max(previous, event_time) if previous is not None else event_time
            delay = target - self._clock()
            if delay > 0:
                self._sleep(delay)
                self.slept += delay
            yield item


# ---------------------------------------------------------------------------------------------------------------
# Sinks and rejects
# ---------------------------------------------------------------------------------------------------------------


class EventSink(Protocol):
    """Where events go: ``emit`` one event dict; ``close`` flushes; ``report`` says what happened, ``lost`` how
    many events neither reached their destination nor a durable spool."""

    report: str
    lost: int

    def emit(self, event: dict[str, Any]) -> None: ...

    def flush(self) -> int:
        """Make every event emitted so far safe (delivered, written, or spooled); return how many are not."""
        ...

    def close(self) -> None: ...


def event_to_json(event: Mapping[str, Any]) -> str:
    """One event as a JSON line: UUID and Decimal as strings, times as ISO-8601 UTC."""
    def convert(value: Any) -> Any:
        if isinstance(value, (uuid.UUID, Decimal)):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"cannot serialise {type(value).__name__}")
    return json.dumps(event, default=convert, separators=(",", ":"))


class JsonlSink:
    """Writes events as JSON lines (the ``--out`` option of simulate and replay)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.report = ""
        self.lost = 0
        self._count = 0
        self._to_json = event_to_json
        try:
            self._stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {err}; choose a writable --out path") from err

    def emit(self, event: dict[str, Any]) -> None:
        self._stream.write(self._to_json(event) + "\n")
        self._count += 1

    def flush(self) -> int:
        self._stream.flush()
        return 0

    def close(self) -> None:
        self._stream.close()
        self.report = f"{self._count:,} events written to {self.path}"


class ProducerSink:
    """Publishes through the producer SDK (UsageProducer: validation, idempotent send, disk spool when the broker
    is away). ``close`` flushes and closes the producer, then reports its delivery counters."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.report = ""
        self.lost = 0

    def emit(self, event: dict[str, Any]) -> None:
        self.producer.emit(event)

    def flush(self) -> int:
        """Wait (up to 10 s) for the broker to acknowledge what was emitted; the number not acknowledged yet
        (spooled events count: they are safe on disk, but not sent)."""
        return int(self.producer.flush())

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            pending = self.producer.close()
        stats = self.producer.stats()
        self.lost = stats.failed + stats.refused
        self.report = (f"Kafka topic {self.producer.topic}: {stats.delivered:,} delivered, {stats.failed:,} failed, "
                       f"{stats.refused:,} refused, {pending:,} left in the spool (sent by the next run)")


@contextlib.contextmanager
def open_sink(out: Path | None, *, source_label: str, producer_factory: Callable[[], Any] | None = None
              ) -> Iterator[EventSink]:
    """A JSONL file sink when ``out`` is given, else the producer SDK (built by ``producer_factory``, default:
    from the environment's settings, with a spool of the tool's own under the spool directory so it never
    contends with an agent's producer for the spool lock). Flushes and closes on exit, also on error."""
    sink: JsonlSink | ProducerSink
    if out is not None:
        sink = JsonlSink(out)
    else:
        sink = ProducerSink((producer_factory or (lambda: _default_producer(source_label)))())
    try:
        yield sink
    finally:
        sink.close()


def _default_producer(label: str) -> Any:
    # Entry-point only: settings are read here, once, and handed to the SDK.
    from finops.settings import load_settings
    from producers.producer import UsageProducer

    settings = load_settings()
    return UsageProducer.from_settings(settings, spool_dir=settings.spool_dir() / label)


class RejectsWriter:
    """Rows that did not map, as JSON lines: file, line, every problem (column, position, reason) and the raw row.
    Opened lazily, so a clean replay leaves no empty file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._stream: IO[str] | None = None

    def write(self, error: ReplayRowError, row: RawRow) -> None:
        if self._stream is None:
            try:
                self._stream = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as err:
                raise ConfigError(f"cannot write the rejects file {self.path}: {err}; pass --rejects PATH") from err
        record = {
            "file": str(error.path), "line": error.line,
            "problems": [{"column": p.column, "column_number": p.column_number, "reason": p.reason}
                         for p in error.problems],
            "row": row.values,
        }
        self._stream.write(json.dumps(record, default=str) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


# ---------------------------------------------------------------------------------------------------------------
# The replay loop
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayStats:
    """What one replay did."""

    path: Path
    digest: str
    rows: int = 0
    events: int = 0
    rejected: int = 0
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    slept_s: float = 0.0
    rejects_path: Path | None = None
    reject_reasons: dict[str, int] = field(default_factory=dict)


def replay_file(
    path: Path,
    mapping: ReplayMapping,
    emit: Callable[[dict[str, Any]], None],
    *,
    now: datetime,
    limit: int | None = None,
    rejects: RejectsWriter | None = None,
    pacer: Pacer | None = None,
    shift_to: datetime | None = None,
    on_row: Callable[[], None] | None = None,
) -> ReplayStats:
    """Replay the first ``limit`` rows of ``path`` (all when None) through ``emit``, in file order.

    ``now`` is the validating clock (tz-aware). A row that does not map raises :class:`ReplayRowError` unless
    ``rejects`` is given, which then receives it (and the stats count it). ``pacer`` spaces the emits by event
    time (None: as fast as possible). ``shift_to`` moves every event time by one offset so the first event lands
    at that instant (old traces replayed as if live). Blocks while pacing; returns the stats.
    """
    digest, _ = file_digest(path)
    stats = ReplayStats(path=path, digest=digest, rejects_path=rejects.path if rejects else None)
    mapper = _RowMapper(path, mapping, digest, now)
    shift: timedelta | None = None

    def mapped() -> Iterator[dict[str, Any]]:
        nonlocal shift
        for row in iter_rows(path, _format_of(path, mapping)):
            if limit is not None and stats.rows >= limit:
                return
            stats.rows += 1
            if on_row is not None:
                on_row()
            try:
                event = mapper.map(row)
            except ReplayRowError as err:
                if rejects is None:
                    raise
                rejects.write(err, row)
                stats.rejected += 1
                for problem in err.problems:
                    key = f"{problem.where()}: {problem.reason[:100]}"
                    stats.reject_reasons[key] = stats.reject_reasons.get(key, 0) + 1
                continue
            if shift_to is not None:
                if shift is None:
                    shift = shift_to - event["occurred_at"]
                event["occurred_at"] = event["occurred_at"] + shift
            yield event

    events: Iterable[dict[str, Any]] = mapped()
    if pacer is not None:
        events = pacer.pace(events, lambda e: e["occurred_at"].timestamp())
    for event in events:
        emit(event)
        stats.events += 1
        occurred = event["occurred_at"]
        stats.first_event_at = stats.first_event_at or occurred
        stats.last_event_at = occurred
    if pacer is not None:
        stats.slept_s = pacer.slept
    return stats


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops replay`` to the ``finops`` sub-command parser."""
    p = sub.add_parser(
        "replay",
        help="publish a recorded usage trace (CSV/JSONL, .gz ok) as usage events, through a column mapping",
        description="Replay a trace file as usage events. A YAML mapping names the column of each field "
                    "(see infra/replay/aider.yaml). Event ids are derived from the file content and line, so "
                    "replaying the same file twice yields the same ids.",
    )
    p.add_argument("file", type=Path, help="trace file: .csv, .jsonl, optionally .gz")
    p.add_argument("--mapping", type=Path, required=True, help="column mapping YAML")
    p.add_argument("--timing", default="fast",
                   help="fast (default), original (sleep by the real gaps) or scaled:10x (gaps / 10)")
    p.add_argument("--max-gap", type=float, default=None,
                   help="cap any single wait at this many seconds (traces have idle days)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N rows")
    p.add_argument("--agent-from", default=None, metavar="COLUMN", help="take agent_id from this column")
    p.add_argument("--team-from", default=None, metavar="COLUMN", help="take team from this column")
    p.add_argument("--project-from", default=None, metavar="COLUMN", help="take project from this column")
    p.add_argument("--agent", default=None, help="use this constant agent_id")
    p.add_argument("--team", default=None, help="use this constant team")
    p.add_argument("--project", default=None, help="use this constant project")
    p.add_argument("--source", default=None, help="override the mapping's source field")
    p.add_argument("--shift-to", default=None, metavar="ISO|now",
                   help="shift event times so the first event lands at this instant (keeps the gaps)")
    p.add_argument("--skip-bad", action="store_true",
                   help="write rows that do not map to the rejects file (with reasons) and go on")
    p.add_argument("--rejects", type=Path, default=None,
                   help="rejects file for --skip-bad (default: FILE's name + .rejects.jsonl in the current dir)")
    p.add_argument("--out", type=Path, default=None, help="write JSON lines to this file instead of Kafka")
    p.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is no TTY")
    p.set_defaults(func=_handle_replay)


def _overrides(args: argparse.Namespace) -> dict[str, FieldSpec | None]:
    out: dict[str, FieldSpec | None] = {}
    for name, column, constant in (("agent_id", args.agent_from, args.agent), ("team", args.team_from, args.team),
                                   ("project", args.project_from, args.project)):
        if column is not None and constant is not None:
            raise ConfigError(f"give either --{name.split('_')[0]}-from or --{name.split('_')[0]}, not both")
        out[name] = FieldSpec(column=column) if column else FieldSpec(constant=constant) if constant else None
    return out


def _handle_replay(args: argparse.Namespace) -> int:
    from producers.progress import ProgressBar

    now = utc_now()
    mapping = load_mapping(args.mapping).with_overrides(**_overrides(args))
    if args.source:
        mapping = mapping.model_copy(update={"source": args.source})
    scale = parse_timing(args.timing)
    pacer = Pacer(scale, max_gap=args.max_gap) if scale is not None else None
    shift_to = None
    if args.shift_to:
        try:
            shift_to = now if args.shift_to == "now" else datetime.fromisoformat(args.shift_to.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError(f"--shift-to {args.shift_to!r} is not ISO-8601 or 'now'") from err
        if shift_to.tzinfo is None:
            raise ConfigError(f"--shift-to {args.shift_to!r} has no time zone; add Z or +00:00")
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be >= 0")
    rejects = None
    if args.skip_bad:
        rejects = RejectsWriter(args.rejects or Path(args.file.name + ".rejects.jsonl"))
    _, lines = file_digest(args.file)
    fmt = _format_of(args.file, mapping)
    total = max(0, lines - 1) if fmt == "csv" else lines
    if args.limit is not None:
        total = min(total, args.limit)
    try:
        with open_sink(args.out, source_label="replay") as sink, \
                ProgressBar(total, label="replay", force=True if args.progress else None) as bar:
            stats = replay_file(args.file, mapping, sink.emit, now=now, limit=args.limit, rejects=rejects,
                                pacer=pacer, shift_to=shift_to, on_row=bar.update)
    finally:
        if rejects is not None:
            rejects.close()
    span = (f", event time {stats.first_event_at.isoformat()} .. {stats.last_event_at.isoformat()}"
            if stats.first_event_at and stats.last_event_at else "")
    print(f"replay: {stats.rows:,} rows -> {stats.events:,} events{span}", file=sys.stderr)
    print(f"replay: {sink.report}", file=sys.stderr)
    if stats.rejected:
        print(f"replay: {stats.rejected:,} rows REJECTED, written with reasons to {stats.rejects_path}:",
              file=sys.stderr)
        for reason, count in sorted(stats.reject_reasons.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {count:6,}  {reason}", file=sys.stderr)
    if sink.lost:
        print(f"replay: {sink.lost:,} events could not be delivered nor spooled (see the log above)", file=sys.stderr)
        return 1
    return 0
