"""CLI: ``finops sink run``, ``finops reconcile --from --to`` and ``finops bench-sink``.

Handlers follow the house order (STYLE.md): logging (done by finops.cli), settings, connectivity check, build,
signal handlers, run, close in reverse. Heavy imports stay inside the handlers so ``finops --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


from finops.clickhouse import connect, open_client, parse_clickhouse_url, parse_query_url
from finops.clock import as_utc, utc_now
from finops.kafka.loop import DEFAULT_MAX_BATCH_WAIT_S, tune_gc
from finops.secrets import load_store_credentials, secrets_dir
from schemas.errors import ConfigError, FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["DEFAULT_BATCH_ROWS", "SINK_KINDS", "parse_instant", "register", "sink_topic"]

log = logging.getLogger(__name__)

# The most messages a sink batch holds. Under a steady load a batch is flushed by the age of its oldest message long
# before it fills; the cap matters when the sink is behind (a backlog, a catch-up after an outage), where each insert's
# fixed engine cost (a part per table, the views) is shared by more rows. It also bounds what one batch holds in memory
# and what is consumed while a failing write pauses the assignment.
DEFAULT_BATCH_ROWS = 50_000

# The sink kinds in start order (the keys of sinks.rows.SINK_SPECS) and the TopicNames property each one consumes.
# Each kind is its own consumer group, finops-sink-<kind>, and its own thread, so a halted or lagging table does not
# hold the others' offsets back.
SINK_KINDS: tuple[str, ...] = ("ledger", "spend", "alerts", "waste", "budgets")
_SINK_TOPIC_OF: dict[str, str] = {
    "ledger": "priced",
    "spend": "spend",
    "alerts": "alerts",
    "waste": "waste",
    "budgets": "policies",
}
_REQUIRED_TABLES = ("usage_ledger", "spend_1m", "spend_hourly", "spend_daily", "alerts", "waste_signals", "budgets")


def sink_topic(kind: str, topics: Any) -> str:
    """The topic sink ``kind`` consumes, from a :class:`finops.topics.TopicNames`."""
    return str(getattr(topics, _SINK_TOPIC_OF[kind]))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sink run``, ``reconcile`` and ``bench-sink``."""
    sink = subparsers.add_parser(
        "sink",
        help="ClickHouse sink workers (priced events -> usage_ledger, spend -> spend_1m, alerts -> alerts, waste -> "
        "waste_signals, policies -> budgets)",
    )
    sink_sub = sink.add_subparsers(dest="sink_cmd", required=True, metavar="{run}")
    run = sink_sub.add_parser(
        "run",
        help="consume agent.usage.priced.v1, finops.spend.1m.v1, finops.alerts.v1, finops.waste.v1 and "
        "finops.policies.v1 into ClickHouse (write, then commit; one consumer group finops-sink-<name> each); in "
        "embedded mode also serve the store endpoint for other processes",
    )
    run.add_argument("--only", choices=SINK_KINDS, default=None,
                     help="run one sink only (default: all five, one thread each)")
    run.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                     help=f"flush after this many messages ({DEFAULT_BATCH_ROWS})")
    run.add_argument("--batch-seconds", type=float, default=DEFAULT_MAX_BATCH_WAIT_S,
                     help="flush a batch when its oldest message has waited this long (0.25 s)")
    run.add_argument("--store-host", default=None,
                     help="store endpoint host in embedded mode (default: the host of FINOPS_CLICKHOUSE_QUERY_URL)")
    run.add_argument("--store-port", type=int, default=None,
                     help="store endpoint port (default: the port of FINOPS_CLICKHOUSE_QUERY_URL, 8124)")
    run.add_argument("--no-store", action="store_true", help="do not serve the store endpoint in embedded mode")
    run.set_defaults(func=_sink_run)

    rec = subparsers.add_parser(
        "reconcile",
        help="compare ledger, rollups, spend_1m and stream counters for a time range; exit 1 and emit a drift "
        "alert when they disagree",
    )
    rec.add_argument("--from", dest="start", required=True, help="range start, ISO 8601 (e.g. 2025-01-01T00:00Z)")
    rec.add_argument("--to", dest="end", required=True, help="range end (exclusive), ISO 8601")
    rec.add_argument("--no-alert", action="store_true", help="print the table only; do not emit the drift alert")
    rec.set_defaults(func=_reconcile)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant; a trailing ``Z`` is UTC and a value without zone is taken as UTC. Raises ConfigError."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise ConfigError(f"{text!r} is not an ISO 8601 time (e.g. 2025-01-01T00:00:00Z)") from err
    return as_utc(value)


# --------------------------------------------------------------------------------------------------- sink run


def _check_kafka(kafka_config: dict[str, Any]) -> None:
    from finops.kafka.clients import build_admin, wait_for_broker

    wait_for_broker(build_admin(kafka_config), kafka_config, timeout=10)


def check_tables(client: Any, database: str) -> None:
    """Raise ConfigError unless the sink's tables exist (application code never creates them)."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}",
        parameters={"db": database, "names": list(_REQUIRED_TABLES)},
    ).result_rows
    missing = sorted(set(_REQUIRED_TABLES) - {r[0] for r in rows})
    if missing:
        raise ConfigError(f"database {database!r} lacks {', '.join(missing)}: run `finops migrate` first")


def build_codec(schema_registry_url: str | None) -> Any:
    """The sink's decoder: single-object bytes always; Confluent-framed bytes resolved through the Schema Registry
    when one is configured (without one they are dead-lettered with a reason that says so)."""
    from schemas.wire import AvroCodec, build_registry_resolver

    if schema_registry_url:
        return AvroCodec(resolver=build_registry_resolver(schema_registry_url))
    return AvroCodec()


def build_dlq_producer(kafka_config: dict[str, Any]) -> Any:
    """An idempotent, acks=all producer for dead letters."""
    from finops.kafka.clients import Role, build_producer

    return build_producer(kafka_config, Role.SINK)


def build_sink_worker(
    kind: str,
    *,
    client: Any,
    database: str,
    kafka_config: dict[str, Any],
    topic: str,
    dlq_topic: str,
    dlq_producer: Any,
    group_id: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_seconds: float = DEFAULT_MAX_BATCH_WAIT_S,
    consumer_wrapper: Callable[[Any], Any] | None = None,
    codec: Any = None,
) -> Any:
    """Wire one :class:`~sinks.worker.SinkWorker` (``kind`` one of :data:`SINK_KINDS`). Does not subscribe yet."""
    from finops.kafka.clients import Role, build_consumer
    from sinks.rows import SINK_SPECS
    from sinks.worker import SinkWorker
    from sinks.writer import ClickHouseBatchWriter, KafkaDeadLetterSink

    spec = SINK_SPECS[kind]
    consumer = build_consumer(kafka_config, Role.SINK, group_id)
    if consumer_wrapper is not None:
        consumer = consumer_wrapper(consumer)
    writer = ClickHouseBatchWriter(client, database, spec, KafkaDeadLetterSink(dlq_producer, dlq_topic), codec=codec)
    return SinkWorker(consumer, writer, topic, max_batch_rows=batch_rows, max_batch_seconds=batch_seconds,
                      name=f"sink-{kind}")


def _start_store_endpoint(client: Any, query_url: str | None, host: str | None, port: int | None,
                          data_dir: Path) -> Any:
    """Serve the chdb this process owns to other processes (sinks/store_server.py): in embedded mode the sink is
    the store owner, so dashboards, ``finops sql`` and ``finops reconcile`` query through this endpoint. Returns
    the started server (call ``stop()``). Raises StoreServerError when the address cannot be bound."""
    from sinks.store_server import serve_store

    endpoint = parse_query_url(query_url)
    # The installation's credentials, generated 0600 at first start (DESIGN §6: the endpoint is a trust boundary).
    credentials = load_store_credentials(data_dir)
    assert credentials is not None
    server = serve_store(client, host or endpoint.host, endpoint.port if port is None else port,
                         credentials=credentials, users=endpoint.users())
    server.start()
    log.info("store endpoint serving the embedded ClickHouse at %s (credentials in %s)", server.url,
             secrets_dir(data_dir))
    return server


def _sink_run(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from finops.topics import TopicNames, sink_group

    settings = load_settings()
    url = settings.clickhouse_url()
    database = settings.clickhouse.database
    kafka_config = settings.kafka.client_config()
    topics = TopicNames(settings.kafka.topic_prefix)

    # Connectivity first: a wrong URL or a broker that is down is reported before anything is built.
    _check_kafka(kafka_config)
    client = connect(url, database=database)
    check_tables(client, database)

    codec = build_codec(settings.kafka.schema_registry_url.get_secret_value()
                        if settings.kafka.schema_registry_url is not None else None)
    dlq_producer = build_dlq_producer(kafka_config)
    kinds = [args.only] if args.only else list(SINK_KINDS)
    workers = [
        build_sink_worker(
            kind, client=client, database=database, kafka_config=kafka_config,
            topic=sink_topic(kind, topics), dlq_topic=topics.dlq,
            dlq_producer=dlq_producer, group_id=sink_group(kind),
            batch_rows=args.batch_rows, batch_seconds=args.batch_seconds, codec=codec,
        )
        for kind in kinds
    ]
    store: Any = None
    if parse_clickhouse_url(url).kind == "chdb" and not args.no_store:
        store = _start_store_endpoint(client, settings.clickhouse.query_url, args.store_host, args.store_port,
                                      settings.data_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the sink (the batch in hand is flushed once)", signum)
        for worker in workers:
            worker.stop()

    tune_gc()  # start-up is done: what is alive now (modules, clients, chdb's bindings) is never collected
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    errors: list[BaseException] = []

    def run(worker: Any) -> None:
        try:
            worker.run()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread, which stops the others
            errors.append(err)
            for other in workers:
                other.stop()

    threads = [threading.Thread(target=run, args=(w,), name=w.name, daemon=True) for w in workers]
    try:
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)  # short joins keep the main thread responsive to signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in reversed(workers):
            worker.close()
        remaining = dlq_producer.flush(10)
        if remaining:
            log.error("%d dead letter(s) unacknowledged at exit (their offsets were not committed)", remaining)
        if store is not None:
            store.stop()
        client.close()
    for worker in workers:
        s = worker.stats
        log.info("%s: %d consumed, %d inserted, %d duplicates, %d dead-lettered, %d retries", worker.name,
                 s.consumed, s.inserted, s.duplicates, s.dead_lettered, s.retries)
    if errors:
        err = errors[0]
        if isinstance(err, FinopsError):
            raise err
        raise FinopsError(f"sink worker failed: {type(err).__name__}: {err}") from err
    return 0


# --------------------------------------------------------------------------------------------------- reconcile


def _reconcile(args: argparse.Namespace) -> int:
    from finops.alerts import publish_alerts
    from finops.settings import load_settings
    from finops.topics import TopicNames
    from sinks.reconcile import build_drift_alert, compute_reconciliation
    start, end = parse_instant(args.start), parse_instant(args.end)
    settings = load_settings()
    database = settings.clickhouse.database
    # Embedded mode: while `finops sink run` owns the chdb path, read through its store endpoint; otherwise open
    # the path (or the server) read-only.
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=True, data_dir=settings.data_dir)
    log.info("reconciling against %s", where)
    try:
        report = compute_reconciliation(client, database, start, end)
    finally:
        client.close()
    print(report.render())
    if not report.drift:
        return 0
    if not args.no_alert:
        alert = build_drift_alert(report, utc_now())
        publish_alerts(settings.kafka, TopicNames(settings.kafka.topic_prefix).alerts, [alert])
        print(f"drift alert {alert['alert_id']} sent (dedup key {alert['dedup_key']})", file=sys.stderr)
    return 1
