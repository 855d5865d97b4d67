"""The intake receiver SIGKILLed while the real OpenTelemetry exporter is exporting: the exporter's own retry
delivers every batch once the receiver is back (same port, same spool), and ClickHouse holds every call once.

The exporter's retry is what makes this work, and the receiver's rule is what makes it safe: a batch is answered
2xx only after Kafka acknowledged it or the spool holds it, so a kill before the answer means the exporter sends
the batch again (deterministic event ids: the copy is deduplicated), and a kill after it loses nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from finops.topics import TopicNames
from tests.faults.pipeline import Pipeline, paced, report
from tests.integration.intake_support import (
    free_port,
    intake_env,
    issue_token,
    message_count,
    record_spans,
    span_exporter,
    start_intake,
)
from tests.integration.test_sink_support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BATCHES = 20
PER_BATCH = 50
BIG = 10_000  # the first export: big enough that the kill lands while the receiver is still producing it


def _batch(n: int, size: int = PER_BATCH) -> Any:
    def build(tracer: Any) -> None:
        for i in range(size):
            with tracer.start_as_current_span("chat", attributes={
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini-2024-07-18", "gen_ai.response.id": f"resp-{n}-{i}",
                    "gen_ai.agent.id": f"agent-{i % 7}", "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.usage.output_tokens": 10 + n}):
                pass

    return build


def test_receiver_sigkilled_mid_export_loses_and_doubles_nothing(
    kafka_config: dict[str, Any], topics: TopicNames, ch_client: Any, ch_database: str, tmp_path: Path,
    record_property: Any,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    bootstrap = kafka_config["bootstrap.servers"]
    tokens = tmp_path / "tokens.json"
    token = issue_token(tokens, "kill-test", team="t", project="p")
    port = free_port()
    env = intake_env(bootstrap, topics.prefix, tmp_path / "data", tokens)
    intake = start_intake(env, port, tmp_path / "intake.log")
    pipeline = Pipeline(kafka_config, topics, ch_client, ch_database).start()
    resource = {"service.name": "fleet", "team.name": "t", "project.name": "p"}
    big = record_spans(resource, _batch(-1, BIG))
    batches = [record_spans(resource, _batch(n)) for n in range(BATCHES)]
    results: list[Any] = []
    exporter = span_exporter(intake.url, token, timeout=90)

    def export_all() -> None:
        results.append(exporter.export(big))
        for spans in paced(batches, per_second=10):  # then a fleet's pace, across the restart
            results.append(exporter.export(spans))

    sender = threading.Thread(target=export_all, daemon=True)
    try:
        sender.start()
        wait_for(lambda: message_count(bootstrap, topics.usage) > 0, 120, "the big export's first events on Kafka",
                 interval=0.01)
        intake.kill()
        assert not results, "the big export was answered before the kill: the kill was not mid-export"
        killed_at = len(results)
        intake = start_intake(env, port, tmp_path / "intake.log")
        sender.join(300)
        assert not sender.is_alive()
        assert results == [SpanExportResult.SUCCESS] * (BATCHES + 1), results
        total = BIG + BATCHES * PER_BATCH
        pipeline.wait_ledger(total)
        rows, distinct = ch_client.query(
            f"SELECT count(), uniqExact(source, event_id) FROM {ch_database}.usage_ledger").result_rows[0]
        sent = message_count(bootstrap, topics.usage)
        report(record_property, f"receiver SIGKILLed while producing a {BIG}-span export ({killed_at} answered)",
               f"{total} calls -> {sent} messages on Kafka -> {rows} ledger rows, {distinct} distinct")
        assert (rows, distinct) == (total, total)
        assert sent > total, "the exporter did not send the killed export again"
    finally:
        pipeline.stop()
        intake.stop()
    pipeline.check()
