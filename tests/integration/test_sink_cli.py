"""The entry points as a user runs them: `finops sink run` owns an embedded store, serves its endpoint, writes the
priced events; `finops reconcile` (another process) reads through that endpoint; SIGTERM stops the sink cleanly."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finops.topics import TopicNames
from tests.integration.test_sink_support import (
    BASE_TIME,
    expected_totals,
    make_codec,
    make_priced,
    produce,
    spend_partials,
    wait_for,
)

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finops(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_sink_run_serves_the_store_and_reconcile_reads_through_it(
    tmp_path: Path, kafka_bootstrap: str, kafka_config: dict[str, Any], topics: TopicNames
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "FINOPS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FINOPS_KAFKA_TOPIC_PREFIX": topics.prefix,
        "FINOPS_DATA_DIR": str(tmp_path),
        "FINOPS_CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
        "FINOPS_CLICKHOUSE_DATABASE": "finops",
        "FINOPS_CLICKHOUSE_QUERY_URL": f"http://127.0.0.1:{port}",
    }
    migrated = _finops(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    rng = random.Random(21)
    events = [make_priced(i, rng) for i in range(300)]
    codec = make_codec()  # single-object framing: this sink process has no Schema Registry configured
    produce(kafka_config, topics.priced, [(e["agent_id"].encode(), codec.encode(e, "PricedUsageEvent"))
                                          for e in events])
    produce(kafka_config, topics.spend, [(p["aggregate_id"].encode(), codec.encode(p, "SpendAggregate"))
                                         for p in spend_partials(events)])

    log_path = tmp_path / "sink.log"
    log_file = log_path.open("w")
    sink = subprocess.Popen([sys.executable, "-m", "finops.cli", "sink", "run", "--batch-seconds", "0.3"], env=env,
                            stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        import clickhouse_connect

        def ledger_count() -> int:
            if sink.poll() is not None:
                raise AssertionError(f"sink exited early:\n{log_path.read_text()}")
            from finops.secrets import load_store_credentials

            try:
                # The sink generated the installation's credentials in the data dir at its first start.
                creds = load_store_credentials(tmp_path, create=False)
                if creds is None:
                    return 0
                client = clickhouse_connect.get_client(host="127.0.0.1", port=port, database="finops",
                                                       username=creds.reader_user, password=creds.reader_password)
                return int(client.command("SELECT count() FROM usage_ledger"))  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - the endpoint is not up yet
                return 0

        try:
            wait_for(lambda: ledger_count() == len(events), timeout=120, what="the sink to write every event",
                     interval=0.2)
        except AssertionError as err:
            raise AssertionError(f"{err}; sink log:\n{log_path.read_text()}") from None
        start = BASE_TIME.strftime("%Y-%m-%dT%H:%M:%SZ")
        rec = _finops(env, "reconcile", "--from", start, "--to", "2025-04-01T01:00:00Z", "--no-alert")
        assert rec.returncode == 0, rec.stdout + rec.stderr
        assert "no drift" in rec.stdout and "spend_hourly" in rec.stdout
        assert str(expected_totals(events).cost.normalize()) in rec.stdout
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=60)
        log_file.close()
    out = log_path.read_text()
    assert sink.returncode == 0, out
    assert "sink-ledger: 300 consumed, 300 inserted" in out
