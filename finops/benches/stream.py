"""``finops bench-stream``: the hot path against the plain consumer loop, on one core, against a real broker.

Compared (DESIGN §9): (a) the plain loop: ``consume(1000)``, fastavro decode, price with cached genai-prices
rates, three dict aggregates, nothing produced or committed; (b) :class:`stream_jobs.hotpath.HotPath` as the worker
runs it, the clock stopping when every input is consumed and every output acknowledged. Each phase runs in a fresh
child process pinned to one CPU (librdkafka's threads with it) and reports its own peak RSS; both use the worker's
GC settings, and the plain loop reads event_id as a string, as our codec does (UUID objects would flatter the ratio).

Output: wall-clock events/s and CPU time per event for both, and both ratios. The latest figures are in the README,
"Performance" (``make bench``), not here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from io import BytesIO
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from finops.clock import utc_now
from producers.simulator import SimulationConfig, generate
from schemas.errors import FinopsError
from schemas.loader import load_schema

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["BenchResult", "register", "run_bench"]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One phase's measurement."""

    name: str
    events: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    detail: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else 0.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``finops bench-stream``."""
    bench = sub.add_parser(
        "bench-stream",
        help="measure the usage hot path against the plain consumer loop on one core (real broker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--events", type=int, default=300_000, help="input events (default 300000)")
    bench.add_argument("--agents", type=int, default=10_000, help="active agents in the fleet (default 10000)")
    bench.add_argument("--rate", type=float, default=2_000.0, help="simulated fleet events per second (default 2000)")
    bench.add_argument("--seed", type=int, default=7, help="random seed of the simulated fleet's events (default 7)")
    bench.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    bench.add_argument("--bootstrap", default=None, help="broker (default FINOPS_KAFKA_BOOTSTRAP)")
    bench.add_argument("--repeat", type=int, default=1, help="run both phases this many times, report the best")
    bench.set_defaults(func=_bench_handler)


def _bench_handler(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    settings = load_settings()
    client = settings.kafka.client_config()
    if args.bootstrap:
        client["bootstrap.servers"] = args.bootstrap
    results = run_bench(
        client,
        events=args.events,
        agents=args.agents,
        rate=args.rate,
        seed=args.seed,
        cpu=args.cpu,
        prefix=settings.kafka.topic_prefix,
        repeat=args.repeat,
    )
    print(render(results, args.events, args.agents))
    return 0


def render(results: Mapping[str, BenchResult], events: int, agents: int) -> str:
    """The result table."""
    plain, hot = results["plain"], results["hotpath"]
    lines = [
        f"bench-stream: {events:,} events, {agents:,} agents, one CPU (pinned), python {sys.version.split()[0]}",
        f"{'path':<44} {'events/s':>10} {'wall s':>8} {'CPU us/event':>13} {'peak RSS MB':>12}",
    ]
    for r in (plain, hot):
        lines.append(
            f"{r.name:<44} {r.events_per_s:>10,.0f} {r.wall_s:>8.2f} {r.cpu_us_per_event:>13.1f} {r.peak_rss_mb:>12.0f}"
        )
    wall_ratio = hot.events_per_s / plain.events_per_s if plain.events_per_s else 0.0
    cpu_ratio = plain.cpu_us_per_event / hot.cpu_us_per_event if hot.cpu_us_per_event else 0.0
    lines.append(f"ratio hot path / plain loop: {wall_ratio:.2f} (events/s, wall)   {cpu_ratio:.2f} (CPU per event)")
    if hot.detail:
        lines.append(f"hot path: {hot.detail}")
    return "\n".join(lines)


def run_bench(
    client_config: Mapping[str, Any],
    *,
    events: int,
    agents: int,
    rate: float,
    seed: int,
    cpu: int | None,
    prefix: str = "",
    repeat: int = 1,
) -> dict[str, BenchResult]:
    """Fill (once) and run both phases; return the best of ``repeat`` runs of each.

    Blocks for the whole benchmark. Raises FinopsError when the broker cannot be reached or a phase fails.
    """
    if cpu is None:
        cpu = max(os.sched_getaffinity(0))
    topic = f"{prefix}finops.bench.usage.s{seed}.a{agents}.n{events}.r{int(rate)}"
    ctx = multiprocessing.get_context("spawn")
    _in_child(ctx, _fill_topic, dict(client_config), topic, events, agents, rate, seed)
    best: dict[str, BenchResult] = {}
    for _ in range(max(1, repeat)):
        for name, phase in (("plain", _plain_phase), ("hotpath", _hotpath_phase)):
            result: BenchResult = _in_child(ctx, phase, dict(client_config), topic, events, cpu)
            if name not in best or result.wall_s < best[name].wall_s:
                best[name] = result
    return best


def _in_child(ctx: Any, fn: Any, *args: Any) -> Any:
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# ---- phases (run in child processes) --------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fill_topic(client: dict[str, Any], topic: str, events: int, agents: int, rate: float, seed: int) -> int:
    """Create and fill the input topic unless it already holds ``events`` messages; return the count."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from finops.kafka.clients import Role, build_admin, build_consumer, build_producer
    from schemas.wire import AvroCodec

    admin = build_admin(client)
    try:
        metadata = admin.list_topics(timeout=15)
    except KafkaException as err:
        raise FinopsError(f"cannot reach Kafka at {client.get('bootstrap.servers')}: {err}") from err
    if topic in metadata.topics:
        probe = build_consumer(client, Role.READER, "finops-bench-probe")
        total = 0
        for p in metadata.topics[topic].partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        probe.close()
        if total >= events:
            return total
        admin.delete_topics([topic])[topic].result()
        _wait(lambda: topic not in admin.list_topics(timeout=10).topics, 30, f"deletion of {topic}")
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    codec = AvroCodec()
    # Recent event times (an hour ago): the deduper judges them (it forgets events older than its window).
    start = utc_now().replace(microsecond=0) - timedelta(hours=1)
    config = SimulationConfig.model_validate(
        {"seed": seed, "agents": agents, "teams": max(1, agents // 100), "projects": max(1, agents // 40),
         "duration_s": events / rate * 1.5 + 60, "rate_per_s": rate, "start": start}
    )  # fmt: skip
    producer = build_producer(client, Role.BENCH,
                              overrides={"linger.ms": 50, "compression.type": "lz4", "batch.num.messages": 10_000})
    sent = 0
    for event in generate(config):
        if sent >= events:
            break
        value = codec.encode(event, "UsageEvent")
        while True:
            try:
                producer.produce(topic, value, event["agent_id"])
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
    if producer.flush(60):
        raise FinopsError(f"filling {topic}: messages left unacknowledged")
    if sent < events:
        raise FinopsError(f"the simulator produced only {sent} events; raise --rate or lower --events")
    return sent


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FinopsError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _plain_phase(client: dict[str, Any], topic: str, events: int, cpu: int) -> BenchResult:
    """(a) consume(1000) + fastavro decode + genai-prices rates cached per model + three dict aggregates."""
    os.sched_setaffinity(0, {cpu})
    from fastavro import parse_schema, schemaless_reader
    from genai_prices import data_snapshot
    from genai_prices import types as gp_types

    from finops.kafka.clients import Role, build_consumer
    from schemas.wire import without_uuid
    from finops.kafka.loop import tune_gc

    # The schema as our codec reads it (event_id as str, not uuid.UUID): the cheapest fair fastavro decode. The
    # baseline calls fastavro itself, not schemas.wire, so no wrapper of ours is counted against it.
    reader_schema = parse_schema(without_uuid(load_schema("UsageEvent")))
    tune_gc()  # the same process settings as the worker (fair to both phases)
    snapshot = data_snapshot.get_snapshot()
    million = Decimal(1_000_000)
    rates: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]] = {}

    def base(value: Any) -> Decimal:
        if value is None:
            return Decimal(0)
        return value.base if isinstance(value, gp_types.TieredPrices) else value

    consumer = build_consumer(client, Role.BENCH, f"finops-bench-plain-{uuid.uuid4().hex[:8]}",
                              overrides={"auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    by_agent: dict[str, Decimal] = {}
    by_team: dict[str, Decimal] = {}
    by_model: dict[str, Decimal] = {}
    seen = 0
    started = False
    t0 = c0 = 0.0
    while seen < events:
        batch = consumer.consume(1000, 1.0)
        if not batch:
            continue
        if not started:
            # Start the clock at the first message: group join and fetch set-up are not the loop's cost.
            started = True
            t0, c0 = time.perf_counter(), time.process_time()
        for msg in batch:
            if msg.error() is not None:
                continue
            stream = BytesIO(msg.value() or b"")
            stream.seek(10)
            rec: Any = schemaless_reader(stream, reader_schema, None)
            key = (rec["provider"], rec["model"])
            rate = rates.get(key)
            if rate is None:
                _, info = snapshot.find_provider_model(key[1], None, key[0], None)
                prices = info.get_prices(rec["occurred_at"])
                inp = base(prices.input_mtok) / million
                rate = rates[key] = (inp, base(prices.output_mtok) / million,
                                     (base(prices.cache_read_mtok) / million) if prices.cache_read_mtok else inp)
            cached = rec["cache_read_tokens"]
            cost = (rec["input_tokens"] - cached) * rate[0] + cached * rate[2] + rec["output_tokens"] * rate[1]
            agent, team, model = rec["agent_id"], rec["team"], rec["model"]
            by_agent[agent] = by_agent.get(agent, 0) + cost
            by_team[team] = by_team.get(team, 0) + cost
            by_model[model] = by_model.get(model, 0) + cost
            seen += 1
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    consumer.close()
    return BenchResult("(a) plain loop: consume+decode+price+3 dicts", seen, wall, cpu_s, _peak_rss_mb())


def _hotpath_phase(client: dict[str, Any], topic: str, events: int, cpu: int) -> BenchResult:
    """(b) the full hot path, producing priced events and windows to throw-away topics."""
    os.sched_setaffinity(0, {cpu})
    from finops.kafka.clients import Role, build_admin, build_consumer, build_producer
    from finops.pricing.engine import Pricer
    from finops.topics import TopicNames, ensure_topics
    from finops.kafka.loop import tune_gc
    from stream_jobs.hotpath import HotPath, HotPathConfig

    run = f"finops.bench.{uuid.uuid4().hex[:8]}."
    created = ensure_topics(client, prefix=run, usage_partitions=3)
    names = TopicNames(run)
    config = HotPathConfig(
        usage_topic=topic, priced_topic=names.priced, dlq_topic=names.dlq, spend_topic=names.spend,
        alerts_topic=names.alerts, group_id=f"finops-bench-hot-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    pricer = Pricer()
    tune_gc()  # as `finops stream run` does
    hot = HotPath(
        config,
        pricer,
        build_consumer(client, Role.HOTPATH, config.group_id),
        build_producer(client, Role.HOTPATH),
    )
    try:
        hot.start()
        t0 = c0 = 0.0
        started = False
        while True:
            consumed = hot.poll_once()
            if consumed and not started:
                started = True
                t0, c0 = time.perf_counter(), time.process_time()
            stats = hot.stats()
            if stats.consumed >= events:
                break
        hot._flush()  # noqa: SLF001 - the clock stops when every output is acknowledged
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        stats = hot.stats()
        hot.close()
    finally:
        build_admin(client).delete_topics(created)
    detail = (
        f"{stats.priced:,} priced, {stats.window_messages:,} window messages ({stats.windows_emitted} windows), "
        f"{stats.dead_lettered} DLQ, {stats.commits} commits"
    )
    return BenchResult("(b) hot path: full path incl. producing outputs", stats.consumed, wall, cpu_s, _peak_rss_mb(),
                       detail)
