"""The usage event's validation rules, declared once: the diagnosis and the fast accepts are derived from them.

Role: :data:`USAGE_RULES` lists every rule of a usage event (DESIGN §3) as a test over the fields, a stable rule id
and a message. Three things are made from that one list, so a rule cannot change in one place only:
:meth:`UsageRules.diagnose` (every broken rule as a :class:`~schemas.errors.FieldProblem`; ``check_usage_dict`` and
the model), :meth:`UsageRules.looks_valid` (the hot path's fast accept, generated) and :meth:`UsageRules.guard`
(the parts of the producer's one-pass guard, for :func:`schemas.fastcodec.build_checked_encoder`).

Guarantee: a fast form never accepts what the diagnosis refuses. The fast forms are the rules' own tests, all of
them, with each type test made exact (``isinstance(x, T)`` becomes ``x.__class__ is T``, or ``dict`` for a
``Mapping``: exact classes are a subset of the instances), so they may only refuse more; such records take the
diagnosis, which decides. tests/unit/test_usage_rules.py breaks every rule and checks both sides name it.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas.errors import ConfigError, FieldProblem

__all__ = [
    "MAX_FUTURE_SKEW",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "USAGE_RULES",
    "USAGE_STATUSES",
    "UUID_TEXT",
    "UsageRule",
    "UsageRules",
]

#: Outcomes a usage event may report (Avro keeps it a string so adding one later is a compatible change).
USAGE_STATUSES: frozenset[str] = frozenset({"ok", "error", "timeout", "rate_limited", "cancelled"})
#: Clock skew tolerated between a producer and the validating clock.
MAX_FUTURE_SKEW = timedelta(minutes=5)
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
#: A UUID in canonical lower-case text, the one spelling of an event id.
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: The globals the rules' tests read.
_NAMES: dict[str, Any] = {"Mapping": Mapping, "datetime": datetime, "_uuid_match": UUID_TEXT.fullmatch,
                          "_STATUSES": USAGE_STATUSES, "_SKEW": MAX_FUTURE_SKEW, "_MAX_TAGS": MAX_TAGS,
                          "_MAX_TAG_LENGTH": MAX_TAG_LENGTH}
#: The exact class a fast form requires for an ``isinstance`` test of the rules (by the name the test uses).
_EXACT = {"str": "str", "int": "int", "datetime": "datetime", "Mapping": "dict"}

Message = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class UsageRule:
    """One rule: ``test`` holds for a valid event.

    ``test`` is a Python expression over ``{name}`` (a field's value; an absent field has its default) and ``now``
    (the validating clock, or None); with ``entries`` it is about one entry of the map ``field``, ``{key}`` and
    ``{value}``: ``"all"`` = one problem for the map when any entry breaks it, ``"each"`` = one problem per breaking
    entry, named ``field.key`` (the key's first 40 characters). Type tests are written ``isinstance`` (or ``type(x)
    is T``) and only where a true value means valid, so the fast form can make them exact.

    The rules of one ``chain`` (default: the field) are tried in order and the first broken one ends the chain: one
    cause, one problem. A rule with ``needs`` is tried only when those fields' own chains held (a count that is not
    an integer is reported once, not again by every rule comparing another count with it). ``message`` renders the
    problem from the values (``now``, and ``key``/``value`` for an entry, among them). ``implied``: the next rule of
    the chain fails whenever this one does, so the fast forms leave this one out (the rule still names the cause).
    """

    field: str
    rule: str
    test: str
    message: Message
    chain: str = ""
    needs: tuple[str, ...] = ()
    entries: Literal["", "all", "each"] = ""
    implied: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields the test reads (``{key}``/``{value}`` of an entry rule are not fields)."""
        names = dict.fromkeys(_PLACEHOLDER.findall(self.test))
        names.pop("key", None)
        names.pop("value", None)
        return (*names, *((self.field,) if self.entries else ()))


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_REQUIRED_TEXT = ("source", "agent_id", "team", "project", "provider", "model")
#: Counts that must be integers >= 0, in the order they are reported.
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
           "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
           "web_search_calls", "requests")
#: (part, whole, rule, why): a count documented as a part of another must not exceed it.
_PARTS = (
    ("cache_write_1h_tokens", "cache_write_tokens", "cache_1h_within_cache_write",
     "1-hour cache writes are part of cache_write_tokens"),
    ("reasoning_tokens", "output_tokens", "reasoning_within_output", "reasoning tokens are part of output_tokens"),
    ("input_audio_tokens", "input_tokens", "audio_within_input", "audio input tokens are part of input_tokens"),
    ("output_audio_tokens", "output_tokens", "audio_within_output", "audio output tokens are part of output_tokens"),
    ("cache_audio_read_tokens", "cache_read_tokens", "cache_audio_within_cache_read",
     "cached audio tokens are part of cache_read_tokens"),
    ("image_tokens", "input_tokens", "image_within_input", "image tokens are part of input_tokens"),
)
_CACHE = ("input_tokens", "cache_read_tokens", "cache_write_tokens")


def _text_rules(name: str) -> tuple[UsageRule, ...]:
    return (
        UsageRule(name, "required", f"isinstance({{{name}}}, str)",
                  lambda v: f"{name} is required and must be a string (got {v[name]!r})"),
        UsageRule(name, "not_blank", f"{{{name}}} and not {{{name}}}.isspace()",
                  lambda v: f"{name} must not be empty or whitespace: it attributes the cost"),
    )


def _count_rules(name: str) -> tuple[UsageRule, ...]:
    return (
        UsageRule(name, "required", f"{{{name}}} is not None", lambda v: f"{name} must be an integer (got None)",
                  implied=True),
        UsageRule(name, "type", f"type({{{name}}}) is int",  # bool is an int subclass and still wrong here
                  lambda v: f"{name} must be an integer (got {v[name]!r})"),
        UsageRule(name, "non_negative", f"{{{name}}} >= 0",
                  lambda v: f"{name} ({v[name]}) must be >= 0: counts cannot be negative"),
    )


def _part_rule(part: str, whole: str, rule: str, why: str) -> UsageRule:
    return UsageRule(part, rule, f"{{{part}}} <= {{{whole}}}", chain=rule, needs=(part, whole),
                     message=lambda v: f"{part} ({v[part]}) must not exceed {whole} ({v[whole]}): {why}")


#: Every rule of a usage event, in the order problems are reported.
USAGE_RULES: tuple[UsageRule, ...] = (
    UsageRule("event_id", "required", "isinstance({event_id}, str)",
              lambda v: f"event_id must be a UUID string (got {v['event_id']!r})"),
    UsageRule("event_id", "uuid", "_uuid_match({event_id}) is not None",
              lambda v: f"event_id must be a UUID in canonical lower-case form like str(uuid.uuid4()) "
                        f"(got {v['event_id'][:80]!r}): one spelling per id keeps deduplication exact"),
    *(rule for name in _REQUIRED_TEXT for rule in _text_rules(name)),
    *(rule for name in _COUNTS for rule in _count_rules(name)),
    UsageRule("cache_read_tokens", "cache_within_input", "{cache_read_tokens} <= {input_tokens}",
              chain="cache_within_input", needs=_CACHE,
              message=lambda v: f"cache_read_tokens ({v['cache_read_tokens']}) must not exceed input_tokens "
                                f"({v['input_tokens']}): cache reads are part of input_tokens"),
    UsageRule("cache_write_tokens", "cache_within_input", "{cache_write_tokens} <= {input_tokens}",
              chain="cache_within_input", needs=_CACHE,
              message=lambda v: f"cache_write_tokens ({v['cache_write_tokens']}) must not exceed input_tokens "
                                f"({v['input_tokens']}): cache writes are part of input_tokens"),
    UsageRule("cache_write_tokens", "cache_within_input",
              "{cache_read_tokens} + {cache_write_tokens} <= {input_tokens}", chain="cache_within_input", needs=_CACHE,
              message=lambda v: f"cache_read_tokens + cache_write_tokens ({v['cache_read_tokens']} + "
                                f"{v['cache_write_tokens']}) must not exceed input_tokens ({v['input_tokens']}): "
                                "cache reads and writes are both part of input_tokens (an adapter for a provider "
                                "that reports cache separately must add it to input)"),
    *(_part_rule(*part) for part in _PARTS),
    UsageRule("attempt", "attempt_min", "type({attempt}) is int and {attempt} >= 1",
              lambda v: f"attempt ({v['attempt']!r}) must be an integer >= 1 (1 = first try)"),
    UsageRule("status", "status_allowed", "{status} in _STATUSES",
              lambda v: f"status {v['status']!r} is not one of {', '.join(sorted(USAGE_STATUSES))}"),
    UsageRule("latency_ms", "non_negative", "{latency_ms} is None or (type({latency_ms}) is int and {latency_ms} >= 0)",
              lambda v: f"latency_ms ({v['latency_ms']!r}) must be null or an integer >= 0"),
    UsageRule("occurred_at", "required", "isinstance({occurred_at}, datetime)",
              lambda v: f"occurred_at must be a datetime (got {v['occurred_at']!r})"),
    UsageRule("occurred_at", "timezone", "{occurred_at}.tzinfo is not None",
              lambda v: "occurred_at must be tz-aware (UTC); a naive time is ambiguous"),
    UsageRule("occurred_at", "not_in_future", "now is None or {occurred_at} - now <= _SKEW",
              lambda v: f"occurred_at ({v['occurred_at'].isoformat()}) is {v['occurred_at'] - v['now']} ahead of "
                        f"the validating clock ({v['now'].isoformat()}); at most {MAX_FUTURE_SKEW} of skew is "
                        "accepted: fix the producer's clock"),
    # Same field, rule and message as the TypeScript SDK (producers/typescript/src/event.ts).
    UsageRule("tags", "type", "not {tags} or isinstance({tags}, Mapping)",
              lambda v: "tags must map strings to strings"),
    UsageRule("tags", "type", "type({key}) is str and type({value}) is str", entries="all",
              message=lambda v: "tags must map strings to strings"),
    UsageRule("tags", "tags_max_entries", "not {tags} or len({tags}) <= _MAX_TAGS", chain="tags_max_entries",
              needs=("tags",), message=lambda v: f"tags has {len(v['tags'])} entries; at most {MAX_TAGS} allowed"),
    UsageRule("tags", "tag_key_length", "len({key}) <= _MAX_TAG_LENGTH", chain="tag_key_length", needs=("tags",),
              entries="each", message=lambda v: f"tag key of {len(v['key'])} characters exceeds {MAX_TAG_LENGTH}"),
    UsageRule("tags", "tag_value_length", "len({value}) <= _MAX_TAG_LENGTH", chain="tag_value_length",
              needs=("tags",), entries="each",
              message=lambda v: f"tag value of {len(v['value'])} characters exceeds {MAX_TAG_LENGTH}"),
)


class _Exact(ast.NodeTransformer):
    """Rewrites a test into its fast form: ``isinstance(x, T)`` -> ``x.__class__ is T'`` (T' exact, see ``_EXACT``)
    and ``type(x) is T`` -> ``x.__class__ is T``. Only where a true test means valid (under an even number of
    ``not``); elsewhere the rewrite would accept more, so it is refused."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.negated = False

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if not isinstance(node.op, ast.Not):
            return self.generic_visit(node)
        self.negated = not self.negated
        node = self.generic_visit(node)  # type: ignore[assignment]
        self.negated = not self.negated
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        func = node.func
        if isinstance(func, ast.Name) and func.id == "isinstance":
            if self.negated or len(node.args) != 2 or not isinstance(node.args[1], ast.Name) \
                    or node.args[1].id not in _EXACT:
                raise ConfigError(f"usage rule {self.source!r}: isinstance only of {sorted(_EXACT)} and only where a "
                                  "true test means valid")
            return ast.Compare(ast.Attribute(node.args[0], "__class__", ast.Load()), [ast.Is()],
                               [ast.Name(_EXACT[node.args[1].id], ast.Load())])
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        left = node.left
        if (isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "type"
                and len(left.args) == 1 and len(node.ops) == 1 and isinstance(node.ops[0], ast.Is)):
            if self.negated:
                raise ConfigError(f"usage rule {self.source!r}: a type test only where a true test means valid")
            node.left = ast.Attribute(left.args[0], "__class__", ast.Load())
        return node


def _fast(test: str) -> str:
    """The fast form of a test (see :class:`_Exact`), still over ``{name}`` placeholders."""
    tree = _Exact(test).visit(ast.parse(test, mode="eval"))
    return ast.unparse(ast.fix_missing_locations(tree))


class UsageRules:
    """The rules compiled: the diagnosis and the fast forms of one list of :class:`UsageRule`.

    ``defaults`` are the values of absent fields (the schema's defaults; None for a field without one). Building
    checks every test compiles and every type test can be made exact (:class:`ConfigError` otherwise).
    """

    def __init__(self, rules: Iterable[UsageRule], defaults: Mapping[str, Any]) -> None:
        self.rules = tuple(rules)
        self.defaults = dict(defaults)
        self.fields = tuple(dict.fromkeys(name for rule in self.rules for name in (rule.field, *rule.fields)))
        self._tests = [self._compile(rule) for rule in self.rules]
        #: Each rule's fast form (its test with exact type tests), in the rules' order.
        self.fast_forms = tuple(_fast(rule.test) for rule in self.rules)
        self.looks_valid: Callable[[Mapping[str, Any], datetime | None], bool] = self._build_looks_valid()

    @staticmethod
    def _compile(rule: UsageRule) -> Callable[[Mapping[str, Any]], bool]:
        expression = rule.test.format_map({name: f"_v[{name!r}]" for name in (*rule.fields, "key", "value")})
        code = compile(f"lambda _v, now=None: bool({expression})", f"<usage rule {rule.field} {rule.rule}>", "eval")
        test: Callable[..., bool] = eval(code, {"__builtins__": builtins, **_NAMES})  # noqa: S307 - our own rules
        return lambda values: test(values, values["now"])

    def diagnose(self, record: Mapping[str, Any], now: datetime | None) -> list[FieldProblem]:
        """Every problem of the usage event ``record``, each naming its field and rule, in the rules' order (the
        slow, explanatory path). Never raises for bad data."""
        return [FieldProblem(name, rule.rule, rule.message(values)) for rule, name, values in self._broken(record, now)]

    def broken_rules(self, record: Mapping[str, Any], now: datetime | None) -> list[UsageRule]:
        """The rules :meth:`diagnose` reports for ``record`` (one per problem), in order."""
        return [rule for rule, _, _ in self._broken(record, now)]

    def _broken(self, record: Mapping[str, Any],
                now: datetime | None) -> Iterator[tuple[UsageRule, str, Mapping[str, Any]]]:
        get = record.get
        values = {name: get(name, self.defaults.get(name)) for name in self.fields}
        values["now"] = now
        broken: set[str] = set()
        for rule, test in zip(self.rules, self._tests, strict=True):
            chain = rule.chain or rule.field
            if chain in broken or not broken.isdisjoint(rule.needs):
                continue
            if not rule.entries:
                if not test(values):
                    yield rule, rule.field, values
                    broken.add(chain)
                continue
            entries = values[rule.field]
            if not entries or not isinstance(entries, Mapping):
                continue  # not a map: the field's own rule says so
            for key, value in entries.items():
                entry = {**values, "key": key, "value": value}
                if test(entry):
                    continue
                if rule.entries == "all":
                    yield rule, rule.field, entry
                    broken.add(chain)
                    break
                yield rule, f"{rule.field}.{str(key)[:40]}", entry

    def guard(self, fills: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
        """The fast forms as the parts of a one-pass guard over the fields as given (``{name}`` placeholders; the
        rules' globals are :data:`names`) and the tests of each map field's entries (``{key}``, ``{value}``).

        A field in ``fills`` may be absent or None (the caller fills a valid value in then): its rules hold for
        None too."""
        filled = set(fills)
        parts: list[str] = []
        entries: dict[str, list[str]] = {}
        for rule, fast in zip(self.rules, self.fast_forms, strict=True):
            if rule.implied:
                continue
            if rule.entries:
                entries.setdefault(rule.field, []).append(fast)
                continue
            opened = [name for name in rule.fields if name in filled]
            parts.append(" or ".join([*(f"{{{name}}} is None" for name in opened), f"({fast})"]) if opened else fast)
        return parts, {name: " and ".join(f"({test})" for test in tests) for name, tests in entries.items()}

    @property
    def names(self) -> dict[str, Any]:
        """The globals the tests and their fast forms read."""
        return dict(_NAMES)

    def _build_looks_valid(self) -> Callable[[Mapping[str, Any], datetime | None], bool]:
        parts, entries = self.guard()
        local = {name: f"v{index}" for index, name in enumerate(self.fields)}
        constants = {f"_D{index}": self.defaults.get(name) for index, name in enumerate(self.fields)}
        lines = ["def looks_valid(record, now):", "    get = record.get", "    try:"]
        lines += [f"        {local[name]} = get({name!r}, _D{index})" for index, name in enumerate(self.fields)]
        lines.append(f"        if not ({' and '.join(f'({part})' for part in parts).format_map(local)}):")
        lines.append("            return False")
        for name, test in entries.items():
            lines.append(f"        if {local[name]}:")
            lines.append(f"            for key, value in {local[name]}.items():")
            lines.append(f"                if not ({test.format_map({**local, 'key': 'key', 'value': 'value'})}):")
            lines.append("                    return False")
        lines.append("    except Exception:  # anything odd: the diagnosis decides (and explains)")
        lines.append("        return False")
        lines.append("    return True")
        namespace: dict[str, Any] = {"__builtins__": builtins, **_NAMES, **constants}
        exec(compile("\n".join(lines), "<usage rules looks_valid>", "exec"), namespace)  # noqa: S102 - our own
        self.looks_valid_source = "\n".join(lines)
        looks_valid: Callable[[Mapping[str, Any], datetime | None], bool] = namespace["looks_valid"]
        return looks_valid
