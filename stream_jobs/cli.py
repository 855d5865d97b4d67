"""CLI of the stream jobs: ``finops stream run`` (the worker), ``finops price`` and ``finops bench-stream``.

Entry points are thin and keep one order (STYLE.md): logging (``finops.cli.main``), settings, connectivity check,
build, signal handlers, run, close in reverse. Heavy imports (faust, confluent-kafka, genai-prices) happen inside
the handlers so ``finops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

__all__ = ["load_price_request", "register"]

_EXIT_UNPRICED = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``stream run``, ``price`` and ``bench-stream``."""
    stream = sub.add_parser("stream", help="the stream worker: price and window usage in real time")
    stream_sub = stream.add_subparsers(dest="stream_cmd", required=True, metavar="{run}")
    run = stream_sub.add_parser(
        "run",
        help="run the worker: the usage hot path (batch consumer) and the Faust agents, until SIGINT/SIGTERM",
        description=(
            "Runs the Faust app of agent-finops: the usage hot path (decode, validate, dedupe, price, 1-minute "
            "windows; consumer group FINOPS_STREAM_GROUP_ID) as a service, and the Faust agents on the spend topic. "
            "Start more workers to share the partitions. Exits 0 after SIGINT/SIGTERM, 1 when the hot path fails "
            "(bad-input limit, undeliverable output): a restart replays from the last safe commit."
        ),
    )
    run.set_defaults(func=_stream_run)

    price = sub.add_parser(
        "price",
        help="price one usage event and explain the arithmetic (exit 1 when the model is unpriced)",
        description=(
            "Prices one usage event the way the hot path does and prints each line: count x unit price = USD, the "
            "catalogue and price-book versions, and the total; or why the event is unpriced. occurred_at defaults "
            "to now; token counts default to 0. Example: finops price --json "
            '\'{"provider": "openai", "model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}\''
        ),
    )
    what = price.add_mutually_exclusive_group(required=True)
    what.add_argument("--json", dest="event_json", metavar="JSON", help="the usage event as JSON")
    what.add_argument(
        "--file", type=Path, default=None, metavar="EVENTS.jsonl",
        help="price every line offline (usage events or {adapter, response, ...}); one JSON result per line on "
        "stdout, a summary on stderr; exit 0 when every line was read, 2 when one was not ('-' reads stdin)",
    )  # fmt: skip
    price.add_argument(
        "--price-book", type=Path, default=None, help="organisation price book (default FINOPS_STREAM_PRICE_BOOK)"
    )
    price.set_defaults(func=_price)

    from stream_jobs.bench import register_bench

    register_bench(sub)


# ---- finops stream run --------------------------------------------------------------------------------------------
def _stream_run(args: argparse.Namespace) -> int:
    import faust

    from finops.settings import load_settings
    from finops.topics import ensure_topics
    from stream_jobs.app import build_app
    from stream_jobs.catalogue import build_pricer
    from stream_jobs.hotpath import HotPath, build_hot_path, tune_gc

    settings = load_settings()
    # Connectivity check and topics (raises FinopsError naming the broker when it is unreachable).
    ensure_topics(
        settings.kafka.client_config(),
        prefix=settings.kafka.topic_prefix,
        usage_partitions=settings.kafka.usage_partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    # A broken price book, cost-basis setting or catalogue stops us here, with its errors, not inside the worker.
    pricer = build_pricer(settings.stream, settings.core.data_dir)

    def hot_path() -> HotPath:
        return build_hot_path(settings, pricer=pricer)

    built = build_app(settings, hot_path_factory=hot_path)
    tune_gc()
    # faust.Worker installs the SIGINT/SIGTERM handlers, runs the app, and on stop closes in reverse order
    # (the hot-path service finishes its batch, flushes and commits before the app's clients close).
    worker = faust.Worker(built.app, loglevel=settings.core.log_level, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0  # pragma: no cover - execute_from_commandline always exits


# ---- finops price ---------------------------------------------------------------------------------------------------
_INT_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "reasoning_tokens", "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens",
    "web_search_calls", "requests",
)  # fmt: skip


def load_price_request(text: str, now: datetime) -> dict[str, Any]:
    """The usage mapping ``finops price`` prices, from JSON text: ``occurred_at`` (ISO 8601 or epoch µs) defaults
    to ``now``, counts default to 0, ``reported_cost`` is read as an exact decimal.

    Raises:
        ConfigError: the text is not a JSON object, or a field has the wrong shape.
    """
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--json is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("--json must be a JSON object with at least provider, model and token counts")
    for name in ("provider", "model"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ConfigError(f"--json needs {name!r} (a non-empty string)")
    event: dict[str, Any] = dict(data)
    at = data.get("occurred_at")
    if at is None:
        event["occurred_at"] = now
    elif isinstance(at, int) and not isinstance(at, bool):
        event["occurred_at"] = datetime.fromtimestamp(at / 1_000_000, UTC)
    elif isinstance(at, str):
        try:
            parsed = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError as err:
            raise ConfigError(f"occurred_at {at!r} is not ISO 8601 (e.g. 2025-06-02T09:00:00Z)") from err
        event["occurred_at"] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    else:
        raise ConfigError("occurred_at must be an ISO 8601 string or microseconds since the epoch")
    for name in _INT_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    reported = data.get("reported_cost")
    if reported is not None:
        try:
            event["reported_cost"] = Decimal(str(reported))
        except InvalidOperation as err:
            raise ConfigError(f"reported_cost {reported!r} is not a number") from err
    return event


def _price(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from stream_jobs.catalogue import build_pricer

    settings = load_settings()
    pricer = build_pricer(settings.stream, settings.core.data_dir, book_path=args.price_book)
    if args.file is not None:
        return _price_file(args.file, pricer, settings)
    event = load_price_request(args.event_json, datetime.now(UTC))
    print(pricer.explain(event))  # InvalidUsageError is a FinopsError: printed as one message, exit 2
    result = pricer.price(event)
    if result.pricing_status == "unpriced":
        print("(exit 1: unpriced)", file=sys.stderr)
        return _EXIT_UNPRICED
    return 0


def _price_file(path: Path, pricer: Any, settings: Any) -> int:
    from producers.adapters import parse_reasoning_conventions
    from stream_jobs.price_file import FileSummary, price_lines

    reasoning = parse_reasoning_conventions(settings.producer.reasoning_conventions)
    try:
        handle = sys.stdin if str(path) == "-" else path.open(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    summary = FileSummary()
    write = sys.stdout.write
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with handle:
        for out, summary in price_lines(handle, pricer, now=datetime.now(UTC), reasoning=reasoning):
            write(dumps(out) + "\n")
    sys.stdout.flush()
    print(summary.render(), file=sys.stderr)
    return 2 if summary.errors else 0
