"""Deduper: duplicates in the window are caught, memory stays bounded, old state expires by the wall clock."""

from __future__ import annotations

import tracemalloc
import uuid

import pytest

from stream_jobs.dedupe import HOUR_US, Deduper

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000


def test_duplicate_in_window_is_seen_and_first_copy_is_not() -> None:
    d = Deduper()
    assert d.seen_or_add("svc", "e1", T0) is False
    assert d.seen_or_add("svc", "e1", T0) is True
    assert d.seen_or_add("svc", "e1", T0) is True
    assert len(d) == 1


def test_same_event_id_from_another_source_is_a_different_event() -> None:
    d = Deduper()
    assert d.seen_or_add("svc-a", "e1", T0) is False
    assert d.seen_or_add("svc-b", "e1", T0) is False
    assert len(d) == 2


def test_expire_forgets_buckets_wholly_outside_the_window() -> None:
    d = Deduper(window_us=2 * HOUR_US, bucket_us=HOUR_US)
    d.seen_or_add("s", "old", T0)  # bucket floor(T0 / 1h)
    d.seen_or_add("s", "new", T0 + 2 * HOUR_US)
    bucket_start = T0 - T0 % HOUR_US
    # now - window lands inside the old event's bucket: it is kept.
    assert d.expire(bucket_start + 2 * HOUR_US + 1) == 0
    assert d.seen_or_add("s", "old", T0) is True
    # now - window reaches the end of that bucket: it goes.
    assert d.expire(bucket_start + 3 * HOUR_US) == 1
    assert d.expired == 1
    assert len(d) == 1
    # An event that old can no longer be judged: it passes, is counted, and is not remembered.
    assert d.seen_or_add("s", "old", T0) is False
    assert d.seen_or_add("s", "old", T0) is False
    assert d.too_old == 2
    assert d.seen_or_add("s", "new", T0 + 2 * HOUR_US) is True


def test_a_future_timestamp_does_not_wipe_the_state() -> None:
    d = Deduper(window_us=HOUR_US, bucket_us=60_000_000)
    d.seen_or_add("s", "e1", T0)
    d.seen_or_add("s", "wild", T0 + 1000 * HOUR_US)  # a broken producer clock
    d.expire(T0 + 60_000_000)
    assert d.seen_or_add("s", "e1", T0) is True


def test_cap_evicts_oldest_buckets_first_and_counts() -> None:
    minute = 60_000_000
    d = Deduper(window_us=HOUR_US, bucket_us=minute, max_entries=5)
    for i in range(3):
        d.seen_or_add("s", f"m0-{i}", T0)  # bucket of minute 0
    for i in range(2):
        d.seen_or_add("s", f"m1-{i}", T0 + minute)
    assert len(d) == 5 and d.evicted == 0
    d.seen_or_add("s", "m2-0", T0 + 2 * minute)  # 6 > 5: the oldest bucket (3 entries) goes
    assert d.evicted == 3
    assert len(d) == 3
    assert d.seen_or_add("s", "m1-0", T0 + minute) is True
    assert d.seen_or_add("s", "m0-0", T0) is False  # forgotten: passes through (the ledger dedupes)


def test_cap_holds_even_with_a_single_bucket() -> None:
    d = Deduper(max_entries=100)
    for i in range(1000):
        d.seen_or_add("s", str(i), T0)
        assert len(d) <= 100
    assert d.evicted + len(d) == 1000


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        Deduper(max_entries=0)


def test_memory_per_entry_is_bounded_and_small() -> None:
    """Measures the deduper's own allocations with tracemalloc (the ids are made before tracing starts)."""
    n = 200_000
    ids = [str(uuid.UUID(int=i)) for i in range(n)]
    d = Deduper(max_entries=10 * n)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i, event_id in enumerate(ids):
            d.seen_or_add("agent-gateway", event_id, T0 + i * 1000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_entry = (after - before) / n
    print(f"deduper memory per entry: {per_entry:.1f} bytes")
    # An int object (32 bytes) plus its set slot (16 bytes at a load factor up to 60%): 45-90 bytes.
    assert 30 < per_entry < 100
