"""UsageProducer under faults: broker killed and restarted, producer SIGKILLed with a full spool, spool bound,
memory while the broker is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from finops.stack import KafkaStack
from finops.topics import TopicNames, ensure_topics
from producers.producer import UsageProducer
from producers.spool import Spool, SpoolFull, SpoolRecord
from tests.conftest import free_port_pair
from tests.integration.test_producer_support import read_topic, sample_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(own_kafka: Callable[[], KafkaStack]) -> tuple[KafkaStack, TopicNames]:
    stack = own_kafka()
    stack.up()
    names = TopicNames(f"f{uuid.uuid4().hex[:8]}.")
    ensure_topics({"bootstrap.servers": stack.bootstrap}, prefix=names.prefix, usage_partitions=3)
    return stack, names


def test_broker_killed_and_restarted_while_emitting_loses_nothing(
    broker: tuple[KafkaStack, TopicNames], tmp_path: Path
) -> None:
    stack, names = broker
    producer = UsageProducer(stack.bootstrap, names.usage, "fault-test", tmp_path / "spool",
                             register_atexit=False, probe_interval=0.5)
    ids: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def emitter() -> None:
        i = 0
        try:
            while not stop.is_set():
                ids.append(producer.emit(sample_event(i)))
                i += 1
                if i % 50 == 0:
                    stop.wait(0.005)  # a steady stream (~10k/s), not a burst that is over before the kill
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    thread = threading.Thread(target=emitter)
    thread.start()
    try:
        wait_for(lambda: producer.stats().delivered > 2000, 30, "events delivered before the outage")
        stack.kill()
        wait_for(lambda: producer.stats().spooled > 2000, 60, "events spooled while the broker is down")
        stack.up()
        wait_for(lambda: producer.stats().drained > 0, 90, "the spool draining after the restart")
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert producer.flush(120) == 0
    stats = producer.stats()
    producer.close()
    assert stats.spool_pending == 0 and stats.state == "direct"
    assert stats.failed == 0 and stats.refused == 0

    emitted = set(ids)
    got = read_topic(stack.bootstrap, names.usage, until=lambda out: {str(e["event_id"]) for _, e in out} >= emitted,
                     timeout=120)
    seen = Counter(str(e["event_id"]) for _, e in got)
    assert emitted - set(seen) == set(), f"{len(emitted - set(seen))} events lost"
    duplicates = {eid: n for eid, n in seen.items() if n > 1}
    # A duplicate is the same event (same id) sent twice: at-least-once. Count them for the record.
    print(f"\nemitted={len(emitted)} spooled={stats.spooled} drained={stats.drained} "
          f"duplicates={sum(n - 1 for n in duplicates.values())} resent={stats.resent}")
    assert set(seen) <= emitted
    assert sum(n - 1 for n in duplicates.values()) <= stats.resent


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.spool_child", *args],
        cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert box, f"child said nothing within {timeout}s"
    return box[0].strip()


def test_producer_killed_with_events_in_the_spool_sends_them_after_restart(
    broker: tuple[KafkaStack, TopicNames], tmp_path: Path
) -> None:
    stack, names = broker
    stack.down()
    spool_dir = tmp_path / "spool"
    seed = uuid.uuid4()
    n = 3000
    child = _child("spool", stack.bootstrap, names.usage, str(spool_dir), str(n), str(seed))
    try:
        assert _first_line(child, 180) == f"SPOOLED {n}"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stack.up()
    drain = _child("drain", stack.bootstrap, names.usage, str(spool_dir))
    try:
        line = _first_line(drain, 180)
        assert line.startswith("DRAINED 0 "), line
        drain.wait(30)
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    expected = {str(uuid.uuid5(seed, str(i))) for i in range(n)}
    got = read_topic(stack.bootstrap, names.usage, until=lambda out: {str(e["event_id"]) for _, e in out} >= expected,
                     timeout=60)
    assert {str(e["event_id"]) for _, e in got} == expected
    with Spool(spool_dir, 2 * 1024**3) as spool:
        assert spool.pending == 0


@pytest.fixture
def dead_bootstrap() -> str:
    """A bootstrap address where no broker listens (the broker is down for the whole test)."""
    return f"127.0.0.1:{free_port_pair()}"


def test_spool_full_raises_and_nothing_is_silently_lost(dead_bootstrap: str, tmp_path: Path) -> None:
    producer = UsageProducer(dead_bootstrap, "agent.usage.v1", "full-test", tmp_path / "spool",
                             spool_max_bytes=64 * 1024, register_atexit=False)
    emitted: list[str] = []
    refused: list[str] = []
    for i in range(5000):
        eid = str(uuid.uuid4())
        try:
            producer.emit(sample_event(i, event_id=eid))
        except SpoolFull as err:
            assert err.event_id == eid
            assert "FINOPS_PRODUCER_SPOOL_MAX_BYTES" in str(err)
            refused.append(eid)
        emitted.append(eid)
        if len(refused) >= 10:
            break
    producer.close(timeout=0)
    stats = producer.stats()
    assert refused, "the bound was never reached"
    with Spool(tmp_path / "spool", 64 * 1024) as spool:
        kept = [r.event_id for r in spool.read(100_000)]
    # Every emitted event is either in the spool or was reported as refused; none twice, none missing.
    assert len(kept) + stats.refused == len(emitted)
    assert set(kept).isdisjoint(refused)
    assert set(kept) | set(refused) <= set(emitted)
    assert stats.refused >= len(refused)


def test_emit_many_into_a_full_spool_says_which_event_was_refused(dead_bootstrap: str, tmp_path: Path) -> None:
    producer = UsageProducer(dead_bootstrap, "agent.usage.v1", "full-test", tmp_path / "spool",
                             spool_max_bytes=64 * 1024, register_atexit=False)
    first = producer.emit(sample_event(0))
    wait_for(lambda: producer.stats().state == "spooling", 30, "the switch to the spool (the broker is down)")
    batch = [sample_event(i, event_id=str(uuid.uuid4())) for i in range(1, 2001)]
    with pytest.raises(SpoolFull) as info:
        producer.emit_many(batch)
    index = info.value.index
    assert index is not None and 0 < index < len(batch)
    assert info.value.event_id == batch[index]["event_id"]
    stats = producer.stats()
    producer.close(timeout=0)
    with Spool(tmp_path / "spool", 64 * 1024) as spool:
        kept = [r.event_id for r in spool.read(100_000)]
    # In the spool, in order: the first event, then the batch up to the refused one; nothing after it was taken.
    assert kept == [first] + [e["event_id"] for e in batch[:index]]
    assert stats.emitted == 1 + index + 1 and stats.refused == 1 and stats.spooled == 1 + index


def test_spool_full_calls_the_callback_instead_of_raising(dead_bootstrap: str, tmp_path: Path) -> None:
    handed: list[SpoolRecord] = []
    producer = UsageProducer(dead_bootstrap, "agent.usage.v1", "full-test", tmp_path / "spool",
                             spool_max_bytes=32 * 1024, on_spool_full=handed.append, register_atexit=False)
    emitted = [producer.emit(sample_event(i)) for i in range(2000)]
    producer.close(timeout=0)
    with Spool(tmp_path / "spool", 32 * 1024) as spool:
        kept = [r.event_id for r in spool.read(100_000)]
    assert handed
    assert sorted(kept + [r.event_id for r in handed]) == sorted(emitted)


def _vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def rss_child(dead_bootstrap: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    spool_dir = tmp_path / "spool"
    proc = _child("fill", dead_bootstrap, "agent.usage.v1", str(spool_dir), "400000")
    yield proc, spool_dir
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_memory_stays_bounded_while_the_broker_is_down_and_the_spool_fills(
    rss_child: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, _ = rss_child
    peak = 0
    box: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    while reader.is_alive():
        peak = max(peak, _vmrss_kib(proc.pid))
        reader.join(0.05)
    peak = max(peak, _vmrss_kib(proc.pid))
    line = box[0].split()
    assert line[0] == "FILLED", box
    pending, spool_bytes = int(line[1]), int(line[2])
    print(f"\nspool: {pending} events, {spool_bytes / 1e6:.1f} MB on disk; child peak VmRSS {peak / 1024:.1f} MiB")
    assert pending == 400_000
    assert peak < 150 * 1024, f"peak VmRSS {peak / 1024:.1f} MiB"
    os.kill(proc.pid, signal.SIGKILL)
