"""A producer process for the kill and memory tests (run as ``python -m tests.integration.spool_child MODE ...``).

Modes (every line it prints to stdout is a protocol line the test waits for):

``spool BOOTSTRAP TOPIC SPOOL_DIR N SEED``
    emit N events with event ids ``uuid5(SEED, i)``; once all N are in the spool print ``SPOOLED N`` and block
    until killed (the broker is expected to be down).
``drain BOOTSTRAP TOPIC SPOOL_DIR``
    open a producer on the spool, wait until everything in it is acknowledged, print ``DRAINED <left> <drained>``.
``fill BOOTSTRAP TOPIC SPOOL_DIR N``
    emit N events as fast as possible with the broker down, print ``FILLED <spool pending> <spool bytes>`` and
    block until killed (the parent samples this process's VmRSS meanwhile).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path

from producers.producer import UsageProducer


def _event(i: int) -> dict[str, object]:
    return {
        "agent_id": f"agent-{i % 11}",
        "team": "payments",
        "project": "invoices",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "input_tokens": 5000 + i,
        "output_tokens": 700,
        "cache_read_tokens": 4000,
        "task_id": f"task-{i // 20}",
        "tags": {"seq": str(i)},
    }


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="child %(levelname)s %(name)s: %(message)s")
    mode, bootstrap, topic, spool_dir = argv[:4]
    producer = UsageProducer(bootstrap, topic, "spool-child", Path(spool_dir), spool_max_bytes=2 * 1024**3,
                             register_atexit=False)
    spool = producer.spool
    assert spool is not None
    if mode == "spool":
        n, seed = int(argv[4]), uuid.UUID(argv[5])
        for i in range(n):
            producer.emit({**_event(i), "event_id": str(uuid.uuid5(seed, str(i)))})
        if not _wait(lambda: spool.pending >= n, 120):
            print(f"TIMEOUT {spool.pending}", flush=True)
            return 1
        print(f"SPOOLED {spool.pending}", flush=True)
        sys.stdin.read()  # block until the test kills us
        return 0
    if mode == "drain":
        left = producer.flush(120)
        print(f"DRAINED {left} {producer.stats().drained}", flush=True)
        producer.close()
        return 0
    if mode == "fill":
        n = int(argv[4])
        for i in range(n):
            producer.emit(_event(i))
        _wait(lambda: spool.pending >= n, 120)
        print(f"FILLED {spool.pending} {spool.disk_bytes}", flush=True)
        sys.stdin.read()
        return 0
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
