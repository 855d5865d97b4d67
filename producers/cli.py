"""``finops`` sub-commands of the producer SDK: ``emit`` (one event by hand) and ``bench-producer``.

Each command is one ``add_parser`` in :func:`register`, so more commands merge without conflicts. Heavy imports
(confluent-kafka, fastavro) happen inside the handlers to keep ``finops --help`` fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from decimal import Decimal
from typing import Any

from finops.clock import utc_now
from producers import replay, simulator
from schemas.errors import FieldProblem, FinopsError, ValidationFailed
from schemas.usage_rules import USAGE_STATUSES

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

# Flags of `finops emit` that map 1:1 onto integer UsageEvent fields (flag --x-y -> field x_y).
_INT_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
    "web_search_calls", "requests", "attempt", "latency_ms",
)  # fmt: skip
# String fields: (flag, field).
_STR_FIELDS = (
    ("agent", "agent_id"), ("team", "team"), ("project", "project"), ("provider", "provider"), ("model", "model"),
    ("task_id", "task_id"), ("parent_task_id", "parent_task_id"), ("task_type", "task_type"),
    ("environment", "environment"), ("status", "status"), ("prompt_hash", "prompt_hash"), ("source", "source"),
    ("event_id", "event_id"), ("occurred_at", "occurred_at"),
)  # fmt: skip

EXIT_DELIVERED, EXIT_FAILED, EXIT_SPOOLED = 0, 1, 3

#: The help of each field's flag: what the value is, its unit or allowed values, and what an absent field becomes
#: (field semantics: schemas/avro/UsageEvent.avsc).
_FIELD_HELP: dict[str, str] = {
    "agent_id": "the agent that made the call (required, here or in --json)",
    "team": "owning team, for attribution and budgets (required, here or in --json)",
    "project": "owning project, for attribution and budgets (required, here or in --json)",
    "provider": "model provider as the genai-prices catalogue names it: openai, anthropic, google, ... "
                "(required, here or in --json)",
    "model": "model id as the provider reported it, e.g. gpt-4o-2024-08-06 (required, here or in --json)",
    "task_id": "the agent task this call belongs to (default: none)",
    "parent_task_id": "the task that spawned this one, for sub-agent trees (default: none, a root task)",
    "task_type": "kind of task, e.g. summarise or code_review (default: none)",
    "environment": "deployment environment: prod, staging, dev, ... (default: none)",
    "status": f"outcome of the call, one of {', '.join(sorted(USAGE_STATUSES))} (default ok)",
    "prompt_hash": "hash of the normalised prompt, never the prompt (default: none)",
    "source": "the emitting service (default FINOPS_PRODUCER_SOURCE, else the host name)",
    "event_id": "UUID of this event; a resend with the same id is deduplicated (default: a new UUID)",
    "occurred_at": "when the call finished, ISO-8601 with a UTC offset, e.g. 2026-01-31T12:00:00+00:00 "
                   "(default: now)",
    "input_tokens": "all input tokens, cached and audio/image ones included (required, here or in --json)",
    "output_tokens": "all output tokens, reasoning and audio ones included (required, here or in --json)",
    "cache_read_tokens": "input tokens read from the prompt cache, a part of --input-tokens (default 0)",
    "cache_write_tokens": "input tokens written to the prompt cache, a part of --input-tokens (default 0)",
    "cache_write_1h_tokens": "the part of --cache-write-tokens written with a 1-hour TTL (default 0)",
    "reasoning_tokens": "reasoning tokens, a part of --output-tokens (default 0)",
    "input_audio_tokens": "audio input tokens, a part of --input-tokens (default 0)",
    "output_audio_tokens": "audio output tokens, a part of --output-tokens (default 0)",
    "cache_audio_read_tokens": "audio tokens read from the prompt cache, a part of --cache-read-tokens (default 0)",
    "image_tokens": "image input tokens, a part of --input-tokens (default 0)",
    "web_search_calls": "provider-side web-search calls billed with this call (default 0)",
    "requests": "billable provider requests this event stands for (default 1)",
    "attempt": "1 for the first try, 2 for the first retry, ... (default 1)",
    "latency_ms": "latency of the call in milliseconds (default: none)",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``emit``, ``simulate`` and ``replay``."""
    simulator.register_commands(subparsers)
    replay.register_commands(subparsers)
    emit = subparsers.add_parser(
        "emit",
        help="publish one usage event from flags or --json (validated; id and time filled in)",
        description="Validate and publish one usage event. Flags override --json. Exit 0 when the broker "
                    "acknowledged it, 3 when it was kept in the spool (broker unreachable; sent later), 1 when it "
                    "failed, 2 when it is invalid (the message names each field).",
    )
    emit.add_argument("--json", dest="json_event", default=None, help="the event as a JSON object")
    for flag, name in _STR_FIELDS:
        emit.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=_FIELD_HELP[name])
    for name in _INT_FIELDS:
        emit.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None, help=_FIELD_HELP[name])
    emit.add_argument("--reported-cost", dest="reported_cost", default=None, help="USD billed, as a decimal string")
    emit.add_argument("--tag", action="append", default=[], metavar="K=V", help="a tag (repeatable)")
    emit.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker (default 15)")
    emit.set_defaults(func=_emit)


# ---------------------------------------------------------------------------------------------------------- emit
#: The flag of each event field (the user types ``--agent``, the event says ``agent_id``).
_FLAG_OF: dict[str, str] = {
    **{name: f"--{flag.replace('_', '-')}" for flag, name in _STR_FIELDS},
    **{name: f"--{name.replace('_', '-')}" for name in _INT_FIELDS},
    "reported_cost": "--reported-cost",
    "tags": "--tag",
}


class EmitInvalid(ValidationFailed):
    """The event built from ``finops emit``'s input is invalid. Each problem names where the value came from: the
    flag the user typed (``--agent``) with the event field (``agent_id``), or the ``--json`` field; a missing field
    names the flag that sets it. One problem per cause (see :func:`producers.producer.complete_usage_record`)."""

    def __init__(self, problems: list[FieldProblem], origins: dict[str, str]) -> None:
        self.origins = origins
        super().__init__(problems, record="the event")

    def where(self, field: str) -> str:
        """``--agent (agent_id)``, ``--json field agent_id`` or, for a field nobody gave, the flag that sets it."""
        root = field.split(".", 1)[0]
        origin = self.origins.get(field) or self.origins.get(root)
        if origin == "--json":
            return f"--json field {field}"
        flag = origin or _FLAG_OF.get(root)
        if flag is None:
            return field  # filled in by the producer (event_id, source, occurred_at defaults) or not settable
        return f"{flag} ({field})"

    def _render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.record} is invalid ({count} problem{'s' if count != 1 else ''}); nothing was sent:"]
        lines.extend(f"  - {self.where(p.field)} [{p.rule}]: {p.message}" for p in self.problems)
        return "\n".join(lines)


def build_event_with_origins(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The event dict from ``--json`` and the flags (flags win), and for each field where its value came from
    (``--agent``, ``--tag``, ``--json``). Raises FinopsError for malformed input."""
    event: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if args.json_event:
        try:
            loaded = json.loads(args.json_event, parse_float=Decimal)
        except json.JSONDecodeError as err:
            raise FinopsError(f"--json is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise FinopsError("--json must be a JSON object with UsageEvent fields")
        event.update(loaded)
        origins.update(dict.fromkeys(loaded, "--json"))
    for flag, name in _STR_FIELDS:
        if getattr(args, flag) is not None:
            event[name] = getattr(args, flag)
            origins[name] = _FLAG_OF[name]
    for name in _INT_FIELDS:
        if getattr(args, name) is not None:
            event[name] = getattr(args, name)
            origins[name] = _FLAG_OF[name]
    if args.reported_cost is not None:
        event["reported_cost"] = args.reported_cost
        origins["reported_cost"] = "--reported-cost"
    if args.tag:
        tags = dict(event.get("tags") or {}) if isinstance(event.get("tags") or {}, dict) else {}
        for item in args.tag:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise FinopsError(f"--tag {item!r}: expected KEY=VALUE")
            tags[key] = value
            origins[f"tags.{key[:40]}"] = "--tag"
        event["tags"] = tags
    return event, origins


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    """The event dict from ``--json`` and the flags (flags win). Raises FinopsError for malformed input."""
    return build_event_with_origins(args)[0]


def _emit(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from producers.producer import Delivery, UsageProducer, complete_usage_record

    settings = load_settings()
    event, origins = build_event_with_origins(args)
    # Validated before any broker connection, so bad input gets its own message and nothing else.
    problems = complete_usage_record(event, utc_now(), settings.producer.source)
    if problems:
        raise EmitInvalid(problems, origins)  # -> exit 2 via finops.cli
    done = threading.Event()
    result: list[Delivery] = []

    def on_delivery(delivery: Delivery) -> None:
        result.append(delivery)
        done.set()

    # A spool of its own (as finops replay does): the machine's agents hold <data dir>/spool's lock.
    spool_dir = settings.spool_dir() / "cli-emit"
    producer = UsageProducer.from_settings(settings, spool_dir=spool_dir, register_atexit=False, close_timeout=0)
    deadline = time.monotonic() + args.timeout
    try:
        event_id = producer.emit(event, on_delivery=on_delivery)
        print(f"event_id {event_id}")
        done.wait(args.timeout)
        if result and result[0].status == "spooled":
            # Spooled because the broker is down, or because events of an earlier `finops emit` wait in this spool
            # (the SDK keeps the order, so the new one goes behind them): give the drainer the rest of --timeout to
            # send them all, or the spool would only ever grow.
            producer.flush(max(0.0, deadline - time.monotonic()))
    finally:
        left = producer.close(timeout=0)
    if result and result[0].status == "spooled" and not left:
        print(f"delivered to {producer.topic} through the spool {spool_dir}, with the events that waited there")
        return EXIT_DELIVERED
    if not result and left:
        print(f"spooled: the broker did not answer within {args.timeout:.0f}s; the event is kept in "
              f"{spool_dir} and sent by the next `finops emit`")
        return EXIT_SPOOLED
    delivery = result[0] if result else None
    if delivery is None:
        print("failed: no delivery report", file=sys.stderr)
        return EXIT_FAILED
    if delivery.status == "delivered":
        print(f"delivered to {delivery.topic} partition {delivery.partition} offset {delivery.offset}")
        return EXIT_DELIVERED
    if delivery.status == "spooled":
        print(f"spooled: the broker is unreachable (the spool was not sent within --timeout {args.timeout:.0f}s); "
              f"the event is kept in {spool_dir} and sent by the next `finops emit`")
        return EXIT_SPOOLED
    print(f"{delivery.status}: {delivery.error}", file=sys.stderr)
    return EXIT_FAILED
