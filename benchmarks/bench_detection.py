"""CPU per priced event of the detection service's processing (``DetectionService.submit``: decode, dedupe, budgets,
waste, drift, anomalies), without Kafka: in-memory messages in, a producer that drops what it is given.

Events: the producer bench's events (``finops.benches.producer.bench_events``, without task ids, as the latency
bench sends them), priced by ``finops.pricing.engine.Pricer`` the way the hot path prices them, encoded with
``AvroCodec``, fed in batches of the service's default size over four partitions. Budget policies: ``--policies``
agents have one (the latency bench has a few breach policies; every agent having one is the budget-heavy case).
Each figure is the best of several repeats of a fresh service (this machine is shared). Run:
``python -m benchmarks.bench_detection [--events N] [--policies N] [--profile]``; performance is measured here,
never asserted in tests.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from finops.benches.producer import bench_events
from finops.pricing.engine import Pricer
from finops.topics import TopicNames
from schemas.models import BudgetPolicy
from schemas.wire import AvroCodec
from stream_jobs.detection import DetectionConfig, DetectionService

START = datetime(2026, 12, 3, 8, tzinfo=UTC)
REPEATS = 5


class _Message:
    """What the service reads of a confluent-kafka message."""

    __slots__ = ("_offset", "_partition", "_value")

    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class _NullProducer:
    def produce(self, topic: str, key: bytes, value: bytes | None, on_delivery: Any = None) -> None:
        pass

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


class _NoConsumer:
    def consume(self, n: int, timeout: float = 0) -> list[Any]:
        return []


def priced_messages(n: int) -> list[bytes]:
    """``n`` framed PricedUsageEvents as the hot path writes them (300 µs apart in event time)."""
    pricer, codec = Pricer(), AvroCodec()
    out = []
    for i, event in enumerate(bench_events(n)):
        usage = {k: v for k, v in event.items() if k != "task_id"}
        usage.update(event_id=str(uuid.uuid4()), source="bench", occurred_at=START + timedelta(microseconds=300 * i),
                     tags={"bench": "latency"})
        record = dict(usage)
        for name in ("cache_write_tokens", "cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens",
                     "cache_audio_read_tokens", "image_tokens", "web_search_calls"):
            record.setdefault(name, 0)
        record.update(requests=1, schema_version=1, task_id=None, parent_task_id=None, task_type=None,
                      environment=None, prompt_hash=None, reported_cost=None)
        record.update(pricer.price(usage)._asdict())
        record.update(late=False, priced_at=usage["occurred_at"], source_topic="agent.usage.v1",
                      source_partition=i % 4, source_offset=i)
        out.append(codec.encode(record, "PricedUsageEvent"))
    return out


def build_service(policies: int) -> DetectionService:
    """A service wired to in-memory fakes, with a soft daily budget for the first ``policies`` agents."""
    service = DetectionService({}, TopicNames(""), DetectionConfig(flush_interval_s=1e9), wall_clock=lambda: 0.0,
                               epoch_clock=START.timestamp)
    service._consumer, service._policy_consumer, service._producer = _NoConsumer(), _NoConsumer(), _NullProducer()
    for agent in range(policies):
        service.budgets.set_policy(BudgetPolicy.model_validate({
            "policy_id": f"bench-agent-{agent}", "version": 1, "scope_type": "agent", "scope_value": f"agent-{agent}",
            "period": "day", "timezone": "UTC", "limit_usd": Decimal(1_000_000), "mode": "soft",
            "thresholds": [{"percent": 100, "actions": ["notify"]}], "updated_at": START}), 0)
    return service


def run_once(values: list[bytes], policies: int, profile: cProfile.Profile | None = None) -> float:
    """CPU µs per event of one pass of a fresh service over ``values``."""
    service = build_service(policies)
    messages = [_Message(i % 4, i // 4, value) for i, value in enumerate(values)]
    batch = service.config.batch_size
    batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
    gc.collect()
    if profile is not None:
        profile.enable()
    start = time.process_time()
    for chunk in batches:
        service.submit(chunk)
    elapsed = time.process_time() - start
    if profile is not None:
        profile.disable()
    if service.stats["events"] != len(values) or service.stats["bad_records"]:
        raise SystemExit(f"bench: the service did not take every event: {service.stats}")
    return elapsed / len(values) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--policies", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one cProfile'd pass instead (top functions)")
    args = parser.parse_args()
    values = priced_messages(args.events)
    if args.profile:
        profile = cProfile.Profile()
        run_once(values, args.policies, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    runs = sorted(run_once(values, args.policies) for _ in range(REPEATS))
    print(f"detection submit, CPU µs per priced event ({args.events:,} events, {args.policies} agent policies): "
          f"best {runs[0]:.2f}, median {runs[len(runs) // 2]:.2f} of {REPEATS}")


if __name__ == "__main__":
    main()
