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

from finops.clickhouse import check_identifier, open_client
from finops.clock import as_utc, utc_now
from schemas.errors import ConfigError
from schemas.errors import FinopsError as FinopsErrorType

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["load_price_request", "register"]

_EXIT_UNPRICED = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``stream run``, ``price``, ``pricebook`` and ``prices``."""
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

    book = sub.add_parser("pricebook", help="price-book tools: suggest entries from reported costs (price drift)")
    book_sub = book.add_subparsers(dest="pricebook_cmd", required=True, metavar="{suggest}")
    suggest = book_sub.add_parser(
        "suggest",
        help="solve the unit prices of models whose reported costs disagree with the catalogue; print the YAML",
        description=(
            "Per (provider, model, source), compares reported and computed costs; where at least --min-share of at "
            "least --min-calls reported calls disagree, solves the per-million rates exactly from the calls' token "
            "counts, checks that they reproduce every call within 1e-9 USD (or prints the residual) and prints a "
            "price book with one override per drifting model, effective from the first disagreeing call. Use it as "
            "FINOPS_STREAM_PRICE_BOOK (or merge it into yours), then finops reprice corrects history."
        ),
    )
    where = suggest.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", type=Path, default=None, metavar="EVENTS.jsonl",
                       help="calls as finops price --file reads them")  # fmt: skip
    where.add_argument("--since", default=None, metavar="DATE", help="read the ledger from this UTC date or time")
    suggest.add_argument("--until", default=None, metavar="DATE", help="with --since: up to this date (exclusive)")
    suggest.add_argument("--version", dest="book_version", default=None,
                         help="version of the suggested book (default suggested-<today>)")  # fmt: skip
    suggest.add_argument("--min-calls", type=int, default=3, help="calls with a report needed per model (3)")
    suggest.add_argument("--min-share", type=Decimal, default=Decimal("0.5"),
                         help="share of them that must disagree (0.5)")  # fmt: skip
    suggest.add_argument("--alert", action="store_true",
                         help="also publish one price_drift alert per drifting model to finops.alerts.v1")  # fmt: skip
    suggest.add_argument(
        "--price-book", type=Path, default=None, help="the book to compare with (default FINOPS_STREAM_PRICE_BOOK)"
    )
    suggest.set_defaults(func=_pricebook_suggest)

    prices = sub.add_parser("prices", help="the price catalogue: install a newer genai-prices snapshot, show status")
    prices_sub = prices.add_subparsers(dest="prices_cmd", required=True, metavar="{update,status}")
    update = prices_sub.add_parser(
        "update",
        help="install a genai-prices data snapshot (file or URL); running workers switch to it between batches",
        description=(
            "Reads a genai-prices data file (the JSON provider array genai-prices publishes, e.g. its "
            "prices/data.json), checks that genai-prices loads it, installs it in FINOPS_STREAM_CATALOGUE_DIR and "
            "makes it current; records the version in price_catalogue_versions when ClickHouse is reachable. "
            "Running stream workers pick it up at their next safe point (between batches). Fetches only the URL "
            "given here, only now."
        ),
    )
    update.add_argument("--from", dest="source", required=True, metavar="FILE|URL", help="the snapshot to install")
    update.set_defaults(func=_prices_update)
    status = prices_sub.add_parser("status", help="the active catalogue: version, source, date; warns when old")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_prices_status)



# ---- finops stream run --------------------------------------------------------------------------------------------
def _stream_run(args: argparse.Namespace) -> int:
    import faust

    from finops.pricing.catalogue import build_pricer
    from finops.settings import load_settings
    from finops.kafka.clients import ROLE_BROKER_WAIT_S
    from finops.topics import ensure_topics
    from stream_jobs.app import build_app
    from finops.kafka.loop import tune_gc
    from stream_jobs.hotpath import HotPath, build_hot_path

    settings = load_settings()
    # Connectivity check and topics (raises FinopsError naming the broker when it is unreachable).
    ensure_topics(
        settings.kafka.client_config(),
        prefix=settings.kafka.topic_prefix,
        usage_partitions=settings.kafka.usage_partitions,
        replication_factor=settings.kafka.replication_factor,
        connect_timeout=ROLE_BROKER_WAIT_S,
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
    from finops.pricing.catalogue import build_pricer
    from finops.settings import load_settings

    settings = load_settings()
    pricer = build_pricer(settings.stream, settings.core.data_dir, book_path=args.price_book)
    if args.file is not None:
        return _price_file(args.file, pricer, settings)
    event = load_price_request(args.event_json, utc_now())
    print(pricer.explain(event))  # InvalidUsageError is a FinopsError: printed as one message, exit 2
    result = pricer.price(event)
    if result.pricing_status == "unpriced":
        print("(exit 1: unpriced)", file=sys.stderr)
        return _EXIT_UNPRICED
    return 0


def _price_file(path: Path, pricer: Any, settings: Any) -> int:
    from finops.adapters import parse_reasoning_conventions
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
        for out, running in price_lines(handle, pricer, now=utc_now(), reasoning=reasoning):
            write(dumps(out) + "\n")
            summary = running  # the running summary of the last line is the file's
    sys.stdout.flush()
    print(summary.render(), file=sys.stderr)
    return 2 if summary.errors else 0


# ---- finops pricebook suggest ---------------------------------------------------------------------------------------
_RATE_COLUMNS = (
    ("input_mtok", "price_input_mtok"), ("cache_read_mtok", "price_cache_read_mtok"),
    ("cache_write_mtok", "price_cache_write_mtok"), ("cache_write_1h_mtok", "price_cache_write_1h_mtok"),
    ("output_mtok", "price_output_mtok"),
)  # fmt: skip


def _drift_calls_from_file(path: Path, pricer: Any, settings: Any) -> list[Any]:
    from finops.adapters import parse_reasoning_conventions
    from stream_jobs.drift import DriftCall
    from stream_jobs.price_file import compute_line_event

    reasoning = parse_reasoning_conventions(settings.producer.reasoning_conventions)
    now = utc_now()
    calls = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event, _ = compute_line_event(json.loads(line, parse_float=Decimal), now=now, reasoning=reasoning)
            if event.get("reported_cost") is None:
                continue
            result = pricer.price(event)
        except (ValueError, FinopsErrorType) as err:
            raise ConfigError(f"{path}:{number}: {err}") from err
        rates = {key: getattr(result, column) for key, column in _RATE_COLUMNS}
        calls.append(DriftCall.from_event(
            event, result.computed_cost_usd, result.cost_mismatch or result.computed_cost_usd is None, rates,
            pricer.price_tiers(event)))
    return calls


def _drift_calls_from_ledger(since: str, until: str | None, settings: Any, pricer: Any) -> list[Any]:
    from stream_jobs.drift import DriftCall

    lo = _parse_when(since, "--since")
    hi = _parse_when(until, "--until") if until else utc_now()
    database = settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=True, data_dir=settings.data_dir)
    print(f"-- {where}, database {database}", file=sys.stderr)
    columns = (
        "provider", "model", "source", "occurred_at", "event_id", "input_tokens", "output_tokens", "cache_read_tokens",
        "cache_write_tokens", "cache_write_1h_tokens", "reported_cost", "computed_cost_usd", "cost_mismatch",
        *(column for _, column in _RATE_COLUMNS),
    )  # fmt: skip
    try:
        rows = client.query(
            f"SELECT {', '.join(columns)} FROM {check_identifier(database)}.usage_ledger FINAL "
            "WHERE row_kind = 'original' AND reported_cost IS NOT NULL "
            "AND occurred_at >= {lo:DateTime64(6, 'UTC')} AND occurred_at < {hi:DateTime64(6, 'UTC')} "
            "ORDER BY occurred_at",
            parameters={"lo": lo, "hi": hi},
        ).result_rows
    finally:
        client.close()
    calls = []
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        record["occurred_at"] = as_utc(record["occurred_at"])
        rates = {key: record[column] for key, column in _RATE_COLUMNS}
        computed = record["computed_cost_usd"]
        calls.append(DriftCall.from_event(record, computed, bool(record["cost_mismatch"]) or computed is None, rates,
                                          pricer.price_tiers(record)))  # fmt: skip
    return calls


def _parse_when(text: str, flag: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as err:
        raise ConfigError(f"{flag} {text!r} is not an ISO date or time (e.g. 2025-12-01)") from err
    return as_utc(parsed)


def _pricebook_suggest(args: argparse.Namespace) -> int:
    from finops.pricing.catalogue import build_pricer
    from finops.settings import load_settings
    from stream_jobs.drift import (
        compute_drift,
        compute_price_drift_alert,
        render_price_book,
    )

    settings = load_settings()
    pricer = build_pricer(settings.stream, settings.core.data_dir, book_path=args.price_book)
    if args.file is not None:
        calls = _drift_calls_from_file(args.file, pricer, settings)
    else:
        calls = _drift_calls_from_ledger(args.since, args.until, settings, pricer)
    suggestions = compute_drift(calls, min_calls=args.min_calls, min_share=args.min_share)
    now = utc_now()
    version = args.book_version or f"suggested-{now.date().isoformat()}"
    text = render_price_book(suggestions, version=version)
    sys.stdout.write(text)
    drifting = [s for s in suggestions if s.drifting]
    for s in suggestions:
        # Under --min-calls nothing was judged: "ok" would read as "checked, agrees" for a model whose calls disagree.
        judged = s.drifting or s.calls >= args.min_calls
        state = "DRIFT" if s.drifting else "ok" if judged else "not judged"
        detail = f", {s.problem}" if s.problem else ""
        if not judged:
            detail += f" (fewer than --min-calls {args.min_calls})"
        detail += "".join(f"; NOT DETERMINED: {item}" for item in s.undetermined)
        print(f"{state}: {s.provider}/{s.model} ({s.source}): {s.disagreeing} of {s.calls} reported calls disagree"
              f"{detail}", file=sys.stderr)  # fmt: skip
    if args.alert and drifting:
        _publish_alerts(settings, [compute_price_drift_alert(s, text, now) for s in drifting if s.solved])
    return 0


def _publish_alerts(settings: Any, alerts: list[dict[str, Any]]) -> None:
    from finops.alerts import publish_alerts
    from finops.topics import TopicNames

    topic = TopicNames(settings.kafka.topic_prefix).alerts
    publish_alerts(settings.kafka, topic, alerts, timeout=30)
    print(f"published {len(alerts)} price_drift alert(s) to {topic}", file=sys.stderr)


# ---- finops prices update / status ----------------------------------------------------------------------------------
def _prices_update(args: argparse.Namespace) -> int:
    from finops.pricing.catalogue import catalogue_dir, install_catalogue
    from finops.settings import load_settings

    settings = load_settings()
    info = install_catalogue(args.source, catalogue_dir(settings.stream, settings.core.data_dir),
                             now=utc_now())  # fmt: skip
    print(f"installed price catalogue {info.version} ({info.providers} providers, {info.models} models, data date "
          f"{info.data_date or 'unknown'}) from {info.source}")  # fmt: skip
    _record_version(settings, info)
    return 0


def _record_version(settings: Any, info: Any) -> None:
    """Write the version to price_catalogue_versions; a ClickHouse that cannot be reached is reported, not fatal
    (the workers read the catalogue directory, not ClickHouse)."""
    try:
        client, _ = open_client(settings.clickhouse_url(), settings.clickhouse.database,
                                settings.clickhouse.query_url, readonly=False,
                                data_dir=settings.data_dir)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - FinopsError or a missing extra: say so and go on
        print(f"warning: price_catalogue_versions not updated ({err}); run finops prices update again when "
              "ClickHouse is up", file=sys.stderr)  # fmt: skip
        return
    try:
        details = json.dumps(info.as_json(), sort_keys=True)
        client.insert(f"{check_identifier(settings.clickhouse.database)}.price_catalogue_versions",
                      [[info.version, "", info.installed_at or utc_now(), details]],
                      column_names=["catalogue_version", "price_book_version", "first_seen_at", "details"])  # fmt: skip
        print(f"recorded {info.version} in price_catalogue_versions")
    except Exception as err:  # noqa: BLE001 - a refused write must not hide that the catalogue is installed
        print(f"warning: price_catalogue_versions not updated: {err}", file=sys.stderr)
    finally:
        client.close()


def _prices_status(args: argparse.Namespace) -> int:
    from finops.pricing.catalogue import catalogue_dir, load_active_catalogue
    from finops.settings import load_settings

    settings = load_settings()
    info, _ = load_active_catalogue(catalogue_dir(settings.stream, settings.core.data_dir))
    today = utc_now().date()
    dated = info.data_date or (info.installed_at.date() if info.installed_at else None)
    age = (today - dated).days if dated else None
    limit = settings.stream.catalogue_max_age_days
    stale = age is None or age > limit
    if args.json:
        print(json.dumps({**info.as_json(), "age_days": age, "max_age_days": limit, "stale": stale}, indent=2))
    else:
        print(f"catalogue {info.version}\nsource    {info.source}\ninstalled {info.installed_at or '-'}\n"
              f"data date {info.data_date or 'unknown'} ({age if age is not None else '?'} days old)\n"
              f"models    {info.models} from {info.providers} providers")  # fmt: skip
    if stale:
        print(f"warning: the price catalogue is older than {limit} days (FINOPS_STREAM_CATALOGUE_MAX_AGE_DAYS): "
              "finops prices update --from FILE|URL installs a newer genai-prices snapshot",
              file=sys.stderr)  # fmt: skip
    return 0
