"""Budget policies as code: a YAML file -> validated :class:`BudgetPolicy` records -> the compacted policy topic.

Role: ``finops policy apply`` reads the file (keys are the BudgetPolicy fields, ``infra/policies.example.yaml`` is
the worked example), diffs it against the published set and publishes the changes to ``finops.policies.v1``
(compacted, keyed by ``policy_id``, a tombstone deletes). confluent-kafka is imported inside the Kafka functions.

Guarantee: every problem of the file is reported at once with its line, and a file with any problem publishes
nothing; YAML numbers are read exactly as ``Decimal``; an unchanged policy keeps its version, a changed one gets the
published version + 1, and a re-scope is refused without ``--allow-rescope`` (:func:`check_rescopes`). See the
README, "Budgets, anomalies, waste and enforcement".
"""

from __future__ import annotations

import logging
import re
import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException, TopicPartition

from finops.kafka.clients import CONNECT_TIMEOUT_S, Role, build_consumer, build_producer, unreachable_message
from schemas.errors import ConfigError, FinopsError, ValidationFailed
from schemas.models import BudgetPolicy
from schemas.wire import AvroCodec

__all__ = [
    "PolicyChange",
    "PolicyFileError",
    "PolicyProblem",
    "PolicyPublishError",
    "PolicyRescopeError",
    "check_rescopes",
    "compute_diff",
    "load_policy_file",
    "load_policy_text",
    "load_published_policies",
    "read_compacted_topic",
    "publish_changes",
    "render_diff",
    "render_policies",
]

_MANAGED = ("version", "updated_at")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem of a policy file: where (line) and what."""

    line: int
    where: str
    message: str


class PolicyFileError(FinopsError):
    """A policy file is refused; ``problems`` lists every problem with its line. Nothing was published."""

    def __init__(self, path: str, problems: Sequence[PolicyProblem]) -> None:
        self.path = path
        self.problems = sorted(problems, key=lambda p: (p.line, p.where))
        lines = [f"{path}: refused ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}); "
                 "nothing was published, the running policies are unchanged:"]
        lines.extend(f"  {path}:{p.line}: {p.where}: {p.message}" if p.where else f"  {path}:{p.line}: {p.message}"
                     for p in self.problems)
        super().__init__("\n".join(lines))


class PolicyPublishError(FinopsError):
    """Publishing to or reading the policy topic failed; the message names the topic and Kafka's reason."""


# --------------------------------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads floats as exact Decimals (money must never pass through a binary float)."""


def _decimal_constructor(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    try:
        value = Decimal(text)
    except InvalidOperation:
        return float(loader.construct_yaml_float(node))  # type: ignore[arg-type]  # .inf / .nan: let validation refuse them
    return value


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal_constructor)


def _path_label(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _node_line(root: yaml.Node | None, path: Sequence[str | int]) -> int:
    """1-based line of the deepest node of ``path`` that exists (a missing key points at its parent mapping)."""
    node = root
    line = (root.start_mark.line + 1) if root is not None else 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = None
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == part:
                    found = (key_node, value_node)
                    break
            if found is None:
                return line
            line = found[0].start_mark.line + 1
            node = found[1]
            if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
                line = node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _split_loc(field: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in field.split(".") if part]


def load_policy_text(text: str, *, source: str, now: datetime) -> list[BudgetPolicy]:
    """Parse and validate a policy document. ``now`` stamps ``updated_at`` (the caller's clock); versions are 1
    until :func:`compute_diff` sets them against the published ones.

    Raises :class:`PolicyFileError` listing every problem with its line.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(err, "problem", None) or str(err)
        raise PolicyFileError(source, [PolicyProblem(line, "", f"not valid YAML: {reason}")]) from err
    if not isinstance(data, Mapping) or not isinstance(data.get("policies"), list):
        raise PolicyFileError(source, [PolicyProblem(1, "", "expected a mapping with a 'policies' list at the top")])
    unknown_top = [key for key in data if key != "policies"]
    problems: list[PolicyProblem] = [
        PolicyProblem(_node_line(root, [str(key)]), str(key), "unknown top-level key (only 'policies' is allowed)")
        for key in unknown_top
    ]
    policies: list[BudgetPolicy] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(data["policies"]):
        base: list[str | int] = ["policies", index]
        if not isinstance(entry, Mapping):
            problems.append(PolicyProblem(_node_line(root, base), _path_label(base), "a policy must be a mapping"))
            continue
        for key in _MANAGED:
            if key in entry:
                problems.append(PolicyProblem(_node_line(root, [*base, key]), _path_label([*base, key]),
                                              f"{key} is set by `finops policy apply`; remove it from the file"))
        record = {k: v for k, v in entry.items() if k not in _MANAGED}
        record.update(version=1, updated_at=now)
        try:
            policy = BudgetPolicy.model_validate(record)
        except ValidationFailed as err:
            for problem in err.problems:
                loc = [*base, *_split_loc(problem.field)]
                problems.append(PolicyProblem(_node_line(root, loc), _path_label(loc), problem.message))
            continue
        if policy.policy_id in seen:
            where = [*base, "policy_id"]
            problems.append(PolicyProblem(_node_line(root, where), _path_label(where),
                                          f"policy_id {policy.policy_id!r} is already used at line "
                                          f"{seen[policy.policy_id]}"))
            continue
        seen[policy.policy_id] = _node_line(root, [*base, "policy_id"])
        policies.append(policy)
    if problems:
        raise PolicyFileError(source, problems)
    return policies


def load_policy_file(path: Path, *, now: datetime) -> list[BudgetPolicy]:
    """:func:`load_policy_text` of a file. Raises :class:`ConfigError` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read policy file {path}: {err}") from err
    return load_policy_text(text, source=str(path), now=now)


# --------------------------------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One change ``apply`` would make: ``add``, ``update``, ``delete`` (with prune) or ``keep``."""

    action: str
    policy_id: str
    policy: BudgetPolicy | None  # what to publish (None for delete)
    fields: tuple[tuple[str, Any, Any], ...] = ()  # (field, old, new) for update

    @property
    def rescope(self) -> tuple[str, str] | None:
        """``(old scope, new scope)`` as ``type=value`` when this update moves the policy to another scope, else
        None. A re-scope hands a budget (and its enforcement) from one owner to another: see :func:`check_rescopes`.
        """
        if self.action != "update" or self.policy is None:
            return None
        old = {name: before for name, before, _ in self.fields if name in _SCOPE_FIELDS}
        if not old:
            return None
        p = self.policy
        return (f"{old.get('scope_type', p.scope_type)}={old.get('scope_value', p.scope_value)}",
                f"{p.scope_type}={p.scope_value}")


_SCOPE_FIELDS = ("scope_type", "scope_value")


class PolicyRescopeError(FinopsError):
    """The file moves published policies to another scope, and ``--allow-rescope`` was not given. Nothing was
    published."""


def check_rescopes(changes: Sequence[PolicyChange], *, allow: bool) -> None:
    """Refuse (:class:`PolicyRescopeError`, naming each policy and both scopes) a file that changes the scope of a
    published policy, unless ``allow``.

    Why: ``policy_id`` is the key of the compacted topic, so a file that reuses another team's ``policy_id`` with its
    own scope silently takes that budget over (its counters, alerts and enforcement move to the new scope, and the
    owning team loses its budget). The CLI has no caller identity (writing to the topic is the permission), so it
    cannot tell a legitimate re-scope from a take-over; it makes every re-scope explicit instead: the diff marks it,
    and publishing it needs ``--allow-rescope``, a finops admin's decision. The dashboard API checks ownership per
    caller (``POST /api/budgets``). Pure."""
    moved = [(c.policy_id, *c.rescope) for c in changes if c.rescope is not None]
    if moved and not allow:
        listed = "; ".join(f"{pid}: {old} -> {new}" for pid, old, new in moved)
        raise PolicyRescopeError(
            f"refused: the file changes the scope of {len(moved)} published polic{'y' if len(moved) == 1 else 'ies'} "
            f"({listed}). A re-scope moves a budget to another owner; if that is intended (a finops admin's "
            "decision), re-run with --allow-rescope, otherwise give the policy a new policy_id. Nothing was "
            "published.")


def _comparable(policy: BudgetPolicy) -> dict[str, Any]:
    return {k: v for k, v in policy.to_avro_dict().items() if k not in _MANAGED}


def compute_diff(wanted: Sequence[BudgetPolicy], published: Mapping[str, BudgetPolicy], *,
                 prune: bool = False) -> list[PolicyChange]:
    """What publishing ``wanted`` changes against ``published``. Changed policies get version = published + 1;
    unchanged ones keep the published record (no republish). Deletions only with ``prune``. Pure."""
    changes: list[PolicyChange] = []
    for policy in wanted:
        old = published.get(policy.policy_id)
        if old is None:
            changes.append(PolicyChange("add", policy.policy_id, policy))
            continue
        before, after = _comparable(old), _comparable(policy)
        if before == after:
            changes.append(PolicyChange("keep", policy.policy_id, old))
            continue
        fields = tuple((k, before.get(k), after.get(k)) for k in after if before.get(k) != after.get(k))
        changes.append(PolicyChange("update", policy.policy_id,
                                    policy.model_copy(update={"version": old.version + 1}), fields))
    wanted_ids = {p.policy_id for p in wanted}
    for policy_id in sorted(set(published) - wanted_ids):
        changes.append(PolicyChange("delete" if prune else "orphan", policy_id, None))
    return changes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def render_diff(changes: Sequence[PolicyChange]) -> str:
    """Human-readable diff (``+`` add, ``~`` update with field changes, ``-`` delete, ``=`` unchanged)."""
    lines: list[str] = []
    for change in changes:
        if change.action == "add":
            assert change.policy is not None
            p = change.policy
            lines.append(f"+ {p.policy_id}: {p.scope_type}={p.scope_value} {p.period} {p.limit_usd} USD "
                         f"({p.mode}, {p.timezone}) thresholds {[t.percent for t in p.thresholds]}")
        elif change.action == "update":
            assert change.policy is not None
            moved = change.rescope
            note = f" RE-SCOPE {moved[0]} -> {moved[1]} (needs --allow-rescope)" if moved else ""
            lines.append(f"~ {change.policy_id} (version {change.policy.version}):{note}")
            lines.extend(f"    {name}: {_show(old)} -> {_show(new)}" for name, old, new in change.fields)
        elif change.action == "delete":
            lines.append(f"- {change.policy_id} (deleted)")
        elif change.action == "orphan":
            lines.append(f"! {change.policy_id} is published but not in the file (kept; --prune deletes it)")
        else:
            lines.append(f"= {change.policy_id} (unchanged)")
    return "\n".join(lines) if lines else "(no policies)"


def render_policies(policies: Mapping[str, BudgetPolicy]) -> str:
    """A table of the published policies."""
    header = ("policy_id", "ver", "scope", "period", "tz", "limit_usd", "mode", "thresholds", "enabled")
    rows = [header] + [
        (p.policy_id, str(p.version), f"{p.scope_type}={p.scope_value}", p.period, p.timezone, str(p.limit_usd),
         p.mode, ",".join(str(t.percent) for t in p.thresholds), "yes" if p.enabled else "no")
        for p in sorted(policies.values(), key=lambda p: p.policy_id)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


# --------------------------------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------------------------------

_SAFE_KEY = re.compile(r"[^\x20-\x7e]")


def decode_policy(codec: Any, value: bytes | None) -> BudgetPolicy | None:
    """Decode a policy-topic value (None = tombstone). Raises FinopsError (decode or validation) on bad bytes."""
    if value is None:
        return None
    _, record = codec.decode(value, "BudgetPolicy")
    return BudgetPolicy.from_avro_dict(record)


def read_compacted_topic(client_config: Mapping[str, Any], topic: str, *, timeout: float = 30.0,
                         connect_timeout: float = CONNECT_TIMEOUT_S) -> dict[str, bytes | None]:
    """The last value per key of a (compacted) topic: every partition from the beginning to its high watermark at
    call time (None = tombstone). A broker that does not answer within ``connect_timeout`` fails at once; once it
    answered, its transient answers for a new topic (no leader yet) are retried until ``timeout``. Raises
    :class:`PolicyPublishError`."""
    consumer = build_consumer(client_config, Role.READER, "finops-compacted-reader",
                              overrides={"auto.offset.reset": "earliest"})
    latest: dict[str, bytes | None] = {}
    deadline = _time.monotonic() + timeout
    try:
        try:
            consumer.list_topics(topic, timeout=min(timeout, connect_timeout))
        except KafkaException as err:
            raise PolicyPublishError(_unreadable(client_config, topic, err)) from err
        ends: dict[int, int] = {}
        while True:
            try:
                info = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
                if info is None or info.error is not None:
                    raise PolicyPublishError(f"topic {topic} does not exist; run `finops topics`")
                ends = {}
                for partition in info.partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
                    if high > low:
                        ends[partition] = high
                break
            except KafkaException as err:
                # librdkafka does not flag NOT_LEADER / LEADER_NOT_AVAILABLE on a new topic as retriable here, but
                # they clear within seconds; anything that persists fails at the deadline with its reason.
                if _time.monotonic() > deadline:
                    raise PolicyPublishError(_unreadable(client_config, topic, err)) from err
                _time.sleep(0.2)  # a topic created moments ago has no leader yet: the broker says retry
        if not ends:
            return latest
        consumer.assign([TopicPartition(topic, p, -2) for p in ends])  # -2 = OFFSET_BEGINNING
        done: set[int] = set()
        while len(done) < len(ends):
            if _time.monotonic() > deadline:
                raise PolicyPublishError(f"timed out reading {topic} to its end")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    raise PolicyPublishError(f"reading {topic}: {msg.error()}")
                latest[(msg.key() or b"").decode("utf-8", "replace")] = msg.value()
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    done.add(partition)
    except KafkaException as err:
        raise PolicyPublishError(_unreadable(client_config, topic, err)) from err
    finally:
        consumer.close()
    return latest


def _unreadable(client_config: Mapping[str, Any], topic: str, err: KafkaException) -> str:
    return unreachable_message(str(client_config.get("bootstrap.servers", "?")), f"read {topic} from", err)


def load_published_policies(client_config: Mapping[str, Any], topic: str, *, timeout: float = 30.0,
                            codec: Any = None) -> dict[str, BudgetPolicy]:
    """The current policy set on the compacted topic (last value per key; tombstones delete). A record that does
    not decode or validate is skipped with a warning (``apply`` never publishes one). Blocks up to ``timeout``.
    Raises :class:`PolicyPublishError`."""
    log = logging.getLogger(__name__)
    codec = codec or AvroCodec()
    policies: dict[str, BudgetPolicy] = {}
    for key, value in read_compacted_topic(client_config, topic, timeout=timeout).items():
        try:
            policy = decode_policy(codec, value)
        except FinopsError as err:
            log.warning("skipping unreadable policy record %s: %s", _SAFE_KEY.sub("?", key), err)
            continue
        if policy is not None:
            policies[key] = policy
    return policies


def publish_changes(client_config: Mapping[str, Any], topic: str, changes: Sequence[PolicyChange], *,
                    timeout: float = 30.0, codec: Any = None) -> int:
    """Publish the add/update/delete changes (key policy_id; delete = tombstone) with an idempotent producer and
    wait for every acknowledgement. Returns the number published. Raises :class:`PolicyPublishError` if any
    delivery fails (the message names the policy)."""
    codec = codec or AvroCodec()
    producer = build_producer(client_config, Role.CONTROL)
    failures: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{(msg.key() or b'').decode()}: {err}")

    sent = 0
    try:
        for change in changes:
            if change.action in ("add", "update"):
                assert change.policy is not None
                value: bytes | None = codec.encode(change.policy.to_avro_dict(), "BudgetPolicy")
            elif change.action == "delete":
                value = None
            else:
                continue
            producer.produce(topic, key=change.policy_id.encode(), value=value, on_delivery=report)
            sent += 1
        remaining = producer.flush(timeout)
    except KafkaException as err:
        raise PolicyPublishError(f"cannot publish to {topic}: {err}") from err
    if remaining:
        raise PolicyPublishError(f"{remaining} policy record(s) not acknowledged by {topic} within {timeout}s")
    if failures:
        raise PolicyPublishError(f"publishing to {topic} failed: " + "; ".join(failures))
    return sent
