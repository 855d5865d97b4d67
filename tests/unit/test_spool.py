"""The on-disk spool: order, cursor across restarts, torn tail, corruption, bound, directory lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from producers.spool import SEGMENT_MAGIC, Spool, SpoolCorrupt, SpoolFull, SpoolLocked, SpoolRecord

pytestmark = pytest.mark.unit


def _fill(spool: Spool, n: int, start: int = 0, size: int = 10) -> None:
    for i in range(start, start + n):
        spool.append(f"agent-{i % 3}".encode(), bytes([i % 256]) * size, f"id-{i}", timestamp_ms=1000 + i)


def _drain(spool: Spool, batch: int = 7) -> list[SpoolRecord]:
    got: list[SpoolRecord] = []
    while True:
        records = spool.read(batch)
        if not records:
            return got
        got.extend(records)
        spool.commit(records[-1].end)


def test_records_come_back_in_append_order_across_segments(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        _fill(spool, 500, size=50)
        assert len(list(tmp_path.glob("*.seg"))) > 3  # the test crosses segment boundaries
        assert spool.pending == 500
        got = _drain(spool)
    assert [r.event_id for r in got] == [f"id-{i}" for i in range(500)]
    assert got[10].key == b"agent-1" and got[10].value == bytes([10]) * 50 and got[10].timestamp_ms == 1010


def test_cursor_survives_restart_and_unacknowledged_records_are_read_again(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        _fill(spool, 100, size=40)
        first = spool.read(30)
        spool.commit(first[-1].end)
        spool.read(20)  # read but never committed: a crash before the broker acknowledged them
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        assert spool.pending == 70
        got = _drain(spool)
        assert [r.event_id for r in got] == [f"id-{i}" for i in range(30, 100)]
        assert spool.pending == 0


def test_rewind_rereads_from_the_cursor(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        _fill(spool, 10)
        assert [r.event_id for r in spool.read(4)] == ["id-0", "id-1", "id-2", "id-3"]
        spool.rewind()
        assert spool.read(1)[0].event_id == "id-0"


def test_full_drain_returns_disk_space(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        _fill(spool, 300, size=100)
        assert spool.disk_bytes > 30_000
        _drain(spool, batch=1000)
        assert spool.pending == 0
        assert spool.disk_bytes == len(SEGMENT_MAGIC)
        assert len(list(tmp_path.glob("*.seg"))) == 1
        _fill(spool, 3, start=300)  # usable again after the drain
        assert [r.event_id for r in spool.read(10)] == ["id-300", "id-301", "id-302"]


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_torn_last_record_is_truncated_on_open(tmp_path: Path, cut: int) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        _fill(spool, 5, size=30)
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of writing the last record
        f.truncate(size - cut)
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.truncated_bytes > 0
        assert spool.pending == 4
        assert [r.event_id for r in _drain(spool)] == ["id-0", "id-1", "id-2", "id-3"]
        _fill(spool, 1, start=9)  # appends continue after the cut
        assert [r.event_id for r in spool.read(5)] == ["id-9"]


def test_torn_record_with_bad_crc_at_the_tail_is_truncated(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        _fill(spool, 3, size=30)
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # garbage in the last record's bytes (page partly written)
    seg.write_bytes(bytes(data))
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.pending == 2


def test_damage_before_the_tail_is_reported_not_skipped(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        _fill(spool, 200, size=50)
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[len(SEGMENT_MAGIC) + 20] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt, match=first.name):
        Spool(tmp_path, 1 << 20, segment_bytes=4096)


def test_bound_raises_spool_full_and_keeps_what_was_stored(tmp_path: Path) -> None:
    with Spool(tmp_path, 4096, segment_bytes=1024) as spool:
        stored = 0
        with pytest.raises(SpoolFull, match="FINOPS_PRODUCER_SPOOL_MAX_BYTES") as info:
            for i in range(1000):
                spool.append(b"k", b"v" * 100, f"id-{i}")
                stored += 1
        assert info.value.event_id == f"id-{stored}"
        assert spool.disk_bytes <= 4096
        assert spool.pending == stored
        assert [r.event_id for r in _drain(spool)] == [f"id-{i}" for i in range(stored)]
        spool.append(b"k", b"v" * 100, "after-drain")  # space came back


def test_bound_calls_on_full_instead_of_raising(tmp_path: Path) -> None:
    refused: list[SpoolRecord] = []
    with Spool(tmp_path, 2048, segment_bytes=1024, on_full=refused.append) as spool:
        results = [spool.append(b"k", b"v" * 100, f"id-{i}") for i in range(40)]
        assert results.count(True) == spool.pending
        assert [r.event_id for r in refused] == [f"id-{i}" for i, ok in enumerate(results) if not ok]
        assert len(refused) > 0


def test_second_opener_of_a_directory_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20):
        with pytest.raises(SpoolLocked, match="FINOPS_PRODUCER_SPOOL_DIR"):
            Spool(tmp_path, 1 << 20)
    Spool(tmp_path, 1 << 20).close()  # released on close


def test_cursor_pointing_at_a_deleted_segment_resumes_at_the_next(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        _fill(spool, 200, size=50)
        cursor_file = (tmp_path / "cursor").read_text()
    first = sorted(tmp_path.glob("*.seg"))[0]
    os.unlink(first)  # as if a crash hit between deleting a drained segment and ... (cursor still on it)
    (tmp_path / "cursor").write_text(cursor_file)
    with Spool(tmp_path, 1 << 20, segment_bytes=4096) as spool:
        got = _drain(spool)
        assert got and got[-1].event_id == "id-199"
