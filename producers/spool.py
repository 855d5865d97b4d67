"""A bounded, crash-safe, append-only spool on local disk for Kafka records the broker could not take yet.

Role: the producer (:mod:`producers.producer`) writes here while the broker is unreachable and a drainer sends the
records, in order, once it is back. This module knows nothing about Kafka: it stores ``(key, value, event_id,
timestamp_ms)`` records in numbered CRC-checked segment files and a read cursor (the layout is on :class:`Spool`).

Guarantee: records come back in append order; a record survives a process crash once ``append`` returns and a
power loss after the next fsync; a torn tail is truncated on open, corruption elsewhere raises; the bound is never
crossed silently (:class:`SpoolFull`); only :meth:`Spool.commit` moves the cursor, so reading is at least once.
Thread-safe (one internal lock). See DESIGN §5, "Producers".
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas.errors import FinopsError

__all__ = [
    "FsyncPolicy",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "SpoolPosition",
    "SpoolRecord",
]

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]

SEGMENT_MAGIC = b"FINSPL01"
_HEAD = struct.Struct(">II")  # body length, crc32 of body
_BODY = struct.Struct(">qHIB")  # timestamp_ms, key length, value length, event_id length
_MAX_RECORD = 64 * 1024 * 1024  # a length above this is garbage, not a record (Kafka's own limits are far lower)
_READ_CHUNK = 1024 * 1024
_SEGMENT_SUFFIX = ".seg"


class SpoolError(FinopsError):
    """Base of the spool's errors."""


class SpoolFull(SpoolError):
    """The spool reached ``max_bytes``; the record was NOT stored.

    The message names the directory and the bound; raise FINOPS_PRODUCER_SPOOL_MAX_BYTES, free disk or bring the
    broker back. ``event_id`` says which event was refused; ``index`` its position in the batch when it was raised
    by ``UsageProducer.emit_many`` (None otherwise).
    """

    def __init__(self, message: str, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.index: int | None = None


class SpoolCorrupt(SpoolError):
    """A record before the tail failed its CRC or length check; the message names the file and offset."""


class SpoolLocked(SpoolError):
    """Another process has this spool directory open; each producer process needs its own directory."""


@dataclass(frozen=True, slots=True, order=True)
class SpoolPosition:
    """A place in the spool: segment number, byte offset in it, and the absolute record index there."""

    segment: int
    offset: int
    index: int


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One stored record; ``end`` is the position right after it (commit it once the record is acknowledged)."""

    key: bytes
    value: bytes
    event_id: str
    timestamp_ms: int
    end: SpoolPosition


def _encode(key: bytes, value: bytes, event_id: str, timestamp_ms: int) -> bytes:
    eid = event_id.encode("utf-8")
    if len(key) > 0xFFFF:
        raise SpoolError(f"spool record key is {len(key)} bytes; at most 65535 are supported (agent_id too long)")
    if len(eid) > 0xFF:
        raise SpoolError(f"spool record event_id is {len(eid)} bytes; at most 255 are supported")
    body = b"".join((_BODY.pack(timestamp_ms, len(key), len(value), len(eid)), key, value, eid))
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def _segment_name(number: int) -> str:
    return f"{number:020d}{_SEGMENT_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Torn(Exception):
    """Internal: the bytes at an offset are not a whole valid record (short, bad length or bad CRC)."""


def _parse(buf: bytes | memoryview, pos: int) -> tuple[int, bytes, bytes, str, int]:
    """Parse one record at ``pos`` of ``buf``: (timestamp_ms, key, value, event_id, next_pos). Raises _Torn."""
    if len(buf) - pos < _HEAD.size:
        raise _Torn("short header")
    length, crc = _HEAD.unpack_from(buf, pos)
    if length < _BODY.size or length > _MAX_RECORD:
        raise _Torn(f"impossible record length {length}")
    start = pos + _HEAD.size
    end = start + length
    if end > len(buf):
        raise _Torn("short body")
    body = bytes(buf[start:end])
    if zlib.crc32(body) != crc:
        raise _Torn("crc mismatch")
    ts, klen, vlen, elen = _BODY.unpack_from(body, 0)
    if _BODY.size + klen + vlen + elen != length:
        raise _Torn("field lengths do not add up")
    k0 = _BODY.size
    v0 = k0 + klen
    e0 = v0 + vlen
    return ts, body[k0:v0], body[v0:e0], body[e0 : e0 + elen].decode("utf-8", "replace"), end


class Spool:
    """The on-disk spool.

    Layout (one directory per producer)::

        <dir>/LOCK                       flock(2)ed while a process has the spool open (one owner at a time)
        <dir>/00000000000000000007.seg   segment files, numbered, append-only, rolled at ``segment_bytes``
        <dir>/cursor                     "<segment> <offset> <index>": the first record not yet acknowledged

    A segment starts with an 8-byte magic (``FINSPL01``) followed by records::

        u32 body_length | u32 crc32(body) | body
        body = i64 timestamp_ms | u16 key_len | u32 value_len | u8 event_id_len | key | value | event_id (utf-8)

    Guarantees:

    - Order: records are read back in exactly the order :meth:`append` stored them.
    - Process crash (SIGKILL, OOM kill): a record is in the kernel's page cache once ``append`` returns (one
      unbuffered ``os.write`` per record, no user-space buffer).
    - Power loss / kernel crash: the tail segment is fsync-ed per ``fsync``: ``"always"`` after every record,
      ``"interval"`` (default) at most every ``fsync_interval`` seconds on the appending thread plus on :meth:`sync`
      and :meth:`close`, so at most the last interval of records can be lost; ``"never"`` leaves it to the OS. The
      cursor file is always replaced atomically (write, fsync, rename, fsync of the dir).
    - Torn write: a record cut short by a crash is detected on open (short read or CRC mismatch in the last segment)
      and the segment truncated at the last whole record; the bytes dropped are logged and kept in
      :attr:`truncated_bytes`. Nothing after a torn record can exist, since writes only append.
    - Corruption elsewhere (a bad CRC not at the tail) raises :class:`SpoolCorrupt` naming the file and offset.
    - Bound: the segment files never exceed ``max_bytes``; an append that would cross it raises :class:`SpoolFull`
      or, with an ``on_full`` callback, hands the record to it and returns ``False``: never dropped silently.
    - At-least-once reading: :meth:`read` hands out records ahead of the persisted cursor; only :meth:`commit` moves
      it, after Kafka acknowledged the records. A crash in between re-sends them (same ``event_id``).

    Opening takes an exclusive ``flock`` on ``<dir>/LOCK`` (raises :class:`SpoolLocked` when another process holds
    it), recovers a torn tail and counts the pending records (reads every unacknowledged byte once, verifying CRCs;
    raises :class:`SpoolCorrupt` on damage before the tail).
    """

    def __init__(
        self,
        directory: Path | str,
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        on_full: Callable[[SpoolRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1024:
            raise SpoolError(f"spool max_bytes must be at least 1024, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # A segment is the unit of reclamation: consumed bytes are freed when their whole segment is; 1/8 of the
        # bound keeps that slack small while keeping the number of files small.
        self.segment_bytes = segment_bytes or max(4096, min(64 * 1024 * 1024, max_bytes // 8))
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.on_full = on_full
        self._clock = clock
        self._lock = threading.RLock()
        self.truncated_bytes = 0
        self._closed = False

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock_fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SpoolLocked(
                    f"spool directory {self.directory} is in use by another process; give each producer process "
                    "its own directory (FINOPS_PRODUCER_SPOOL_DIR)"
                ) from err
            raise
        try:
            self._open()
        except BaseException:
            self._release_lock()
            raise

    # -- opening and recovery ----------------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        numbers = []
        for path in self.directory.glob("*" + _SEGMENT_SUFFIX):
            try:
                numbers.append(int(path.name[: -len(_SEGMENT_SUFFIX)]))
            except ValueError:
                continue
        return sorted(numbers)

    def _path(self, segment: int) -> Path:
        return self.directory / _segment_name(segment)

    def _load_cursor(self) -> SpoolPosition | None:
        try:
            seg, off, idx = (self.directory / "cursor").read_text().split()
            return SpoolPosition(int(seg), int(off), int(idx))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise SpoolCorrupt(
                f"{self.directory / 'cursor'} is unreadable ({err}); if the spool's records are wanted, inspect "
                "the .seg files; otherwise delete the directory"
            ) from err

    def _open(self) -> None:
        segments = self._segments()
        cursor = self._load_cursor()
        if not segments:
            first = cursor.segment if cursor else 0
            self._new_segment(first, sync_dir=True)
            segments = [first]
            cursor = SpoolPosition(first, len(SEGMENT_MAGIC), cursor.index if cursor else 0)
        elif cursor is None or cursor.segment not in segments:
            # No cursor yet, or its segment was already deleted (the cursor write after a commit was lost, or the
            # delete raced a crash): resume at the first segment that still exists after it.
            later = [s for s in segments if cursor is None or s >= cursor.segment]
            if not later:
                later = segments
            cursor = SpoolPosition(later[0], len(SEGMENT_MAGIC), cursor.index if cursor else 0)
        # Drop segments before the cursor (fully acknowledged; their delete was interrupted).
        for seg in [s for s in segments if s < cursor.segment]:
            self._path(seg).unlink(missing_ok=True)
        segments = [s for s in segments if s >= cursor.segment]

        # Scan every unacknowledged byte once: verifies CRCs, truncates a torn tail, counts pending records.
        count = 0
        for i, seg in enumerate(segments):
            is_tail = i == len(segments) - 1
            start = cursor.offset if seg == cursor.segment else len(SEGMENT_MAGIC)
            count += self._scan(seg, start, is_tail)
            if seg == cursor.segment:
                size = self._path(seg).stat().st_size
                if cursor.offset > size:  # data under an acknowledged cursor was lost with the page cache
                    cursor = SpoolPosition(seg, size, cursor.index)
        self._cursor = cursor
        self._read_pos = cursor
        self._next_index = cursor.index + count
        self._tail = segments[-1]
        self._tail_fd = os.open(self._path(self._tail), os.O_WRONLY | os.O_APPEND)
        self._tail_size = os.fstat(self._tail_fd).st_size
        self._disk_bytes = sum(self._path(s).stat().st_size for s in segments)
        self._last_sync = self._clock()
        self._dirty = False
        self._read_fd: int | None = None
        self._read_fd_segment = -1
        self._save_cursor(cursor)

    def _scan(self, segment: int, start: int, is_tail: bool) -> int:
        path = self._path(segment)
        data = path.read_bytes()
        if data[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            if is_tail and len(data) < len(SEGMENT_MAGIC) and SEGMENT_MAGIC.startswith(data):
                with open(path, "r+b") as f:  # torn while writing the magic of a fresh segment
                    f.write(SEGMENT_MAGIC[len(data) :])
                    f.flush()
                    os.fsync(f.fileno())
                return 0
            raise SpoolCorrupt(f"{path} does not start with the spool magic; move it out of {self.directory}")
        pos = max(start, len(SEGMENT_MAGIC))
        count = 0
        while pos < len(data):
            try:
                pos = _parse(data, pos)[4]
            except _Torn as why:
                if not is_tail:
                    raise SpoolCorrupt(
                        f"{path}: damaged record at byte {pos} ({why}) in a segment that is not the last; the "
                        "records after it cannot be trusted: move the file out of the directory and restart"
                    ) from None
                dropped = len(data) - pos
                log.warning(
                    "spool %s: torn record at byte %d (%s) after a crash: truncating %d bytes (the record's send "
                    "had not been confirmed to its caller)", path, pos, why, dropped,
                )
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())
                self.truncated_bytes += dropped
                break
            count += 1
        return count

    def _new_segment(self, number: int, *, sync_dir: bool) -> None:
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, SEGMENT_MAGIC)
            os.fsync(fd)
        finally:
            os.close(fd)
        if sync_dir:
            _fsync_dir(self.directory)

    def _roll(self) -> None:
        self._sync_tail()
        os.close(self._tail_fd)
        self._tail += 1
        self._new_segment(self._tail, sync_dir=True)
        self._tail_fd = os.open(self._path(self._tail), os.O_WRONLY | os.O_APPEND)
        self._tail_size = len(SEGMENT_MAGIC)
        self._disk_bytes += len(SEGMENT_MAGIC)

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records stored and not yet committed."""
        with self._lock:
            return self._next_index - self._cursor.index

    @property
    def disk_bytes(self) -> int:
        """Bytes of all segment files (what ``max_bytes`` bounds)."""
        with self._lock:
            return self._disk_bytes

    @property
    def cursor(self) -> SpoolPosition:
        """The persisted position of the first unacknowledged record."""
        with self._lock:
            return self._cursor

    def __len__(self) -> int:
        return self.pending

    # -- writing -------------------------------------------------------------------------------------------------
    def append(self, key: bytes, value: bytes, event_id: str, timestamp_ms: int | None = None) -> bool:
        """Store one record at the end; return True once it is in the page cache (see :class:`Spool`).

        Blocks on a disk write (and an fsync under ``fsync="always"`` or when the interval elapsed).
        Raises :class:`SpoolFull` when the record would push the spool past ``max_bytes`` and no ``on_full``
        callback was given; with a callback, calls it with the refused record and returns False.
        """
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        data = _encode(key, value, event_id, ts)
        with self._lock:
            self._check_open()
            if self._disk_bytes + len(data) > self.max_bytes:
                return self._refuse(key, value, event_id, ts)
            if self._tail_size > len(SEGMENT_MAGIC) and self._tail_size + len(data) > self.segment_bytes:
                if self._disk_bytes + len(data) + len(SEGMENT_MAGIC) > self.max_bytes:
                    return self._refuse(key, value, event_id, ts)
                self._roll()
            written = os.write(self._tail_fd, data)
            if written != len(data):  # a regular file only writes short on ENOSPC-like conditions
                os.ftruncate(self._tail_fd, self._tail_size)
                raise SpoolError(
                    f"short write to {self._path(self._tail)} ({written} of {len(data)} bytes): is the disk full? "
                    f"event {event_id} was not stored"
                )
            self._tail_size += len(data)
            self._disk_bytes += len(data)
            self._next_index += 1
            self._dirty = True
            if self.fsync == "always" or (
                self.fsync == "interval" and self._clock() - self._last_sync >= self.fsync_interval
            ):
                self._sync_tail()
            return True

    def _refuse(self, key: bytes, value: bytes, event_id: str, ts: int) -> bool:
        end = SpoolPosition(self._tail, self._tail_size, self._next_index)
        if self.on_full is not None:
            self.on_full(SpoolRecord(key, value, event_id, ts, end))
            return False
        raise SpoolFull(
            f"spool {self.directory} is full ({self._disk_bytes} of {self.max_bytes} bytes, {self.pending} events "
            f"waiting for the broker): event {event_id} was NOT stored; raise FINOPS_PRODUCER_SPOOL_MAX_BYTES or "
            "restore the broker connection",
            event_id,
        )

    def _sync_tail(self) -> None:
        if self._dirty:
            os.fsync(self._tail_fd)
            self._dirty = False
        self._last_sync = self._clock()

    def sync(self) -> None:
        """fsync the tail segment now (blocks on the disk)."""
        with self._lock:
            self._check_open()
            self._sync_tail()

    # -- reading -------------------------------------------------------------------------------------------------
    def read(self, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> list[SpoolRecord]:
        """Return up to ``max_records`` records (about ``max_bytes``) after the last ones read, in append order.

        Does not move the persisted cursor: call :meth:`commit` with the last record's ``end`` once they are
        acknowledged, or :meth:`rewind` to read them again. Raises :class:`SpoolCorrupt` on a damaged record.
        """
        out: list[SpoolRecord] = []
        size = 0
        with self._lock:
            self._check_open()
            pos = self._read_pos
            while len(out) < max_records and size < max_bytes and pos.index < self._next_index:
                end_of_segment = self._tail_size if pos.segment == self._tail else self._segment_size(pos.segment)
                if pos.offset >= end_of_segment:
                    if pos.segment == self._tail:
                        break
                    pos = SpoolPosition(pos.segment + 1, len(SEGMENT_MAGIC), pos.index)
                    continue
                fd = self._reader(pos.segment)
                base = pos.offset
                chunk = os.pread(fd, min(end_of_segment - base, _READ_CHUNK), base)
                if len(chunk) >= _HEAD.size:
                    length = _HEAD.unpack_from(chunk, 0)[0]
                    if _HEAD.size + length > len(chunk) and length <= _MAX_RECORD:
                        chunk = os.pread(fd, _HEAD.size + length, base)  # one record larger than a chunk
                at = 0
                while at < len(chunk) and len(out) < max_records and size < max_bytes:
                    try:
                        ts, key, value, eid, nxt = _parse(chunk, at)
                    except _Torn as why:
                        if at > 0:
                            break  # the chunk ended inside a record: the next chunk starts at it
                        raise SpoolCorrupt(
                            f"{self._path(pos.segment)}: damaged record at byte {base} ({why}); move the file "
                            "out of the spool directory and restart"
                        ) from None
                    size += nxt - at
                    at = nxt
                    pos = SpoolPosition(pos.segment, base + at, pos.index + 1)
                    out.append(SpoolRecord(key, value, eid, ts, pos))
            self._read_pos = pos
        return out

    def _segment_size(self, segment: int) -> int:
        return self._path(segment).stat().st_size

    def _reader(self, segment: int) -> int:
        if self._read_fd_segment != segment:
            if self._read_fd is not None:
                os.close(self._read_fd)
            self._read_fd = os.open(self._path(segment), os.O_RDONLY)
            self._read_fd_segment = segment
        assert self._read_fd is not None
        return self._read_fd

    def rewind(self) -> None:
        """Make the next :meth:`read` start again at the persisted cursor (after a failed send)."""
        with self._lock:
            self._read_pos = self._cursor

    def commit(self, end: SpoolPosition) -> None:
        """Persist the cursor at ``end`` (a record's ``end``): every record before it is acknowledged.

        Blocks on a file replace and two fsyncs. Deletes segments that are wholly acknowledged; when the whole
        spool is acknowledged, starts a fresh segment so the disk space is returned at once.
        """
        with self._lock:
            self._check_open()
            if end.index <= self._cursor.index:
                return
            if end.index > self._next_index:
                raise SpoolError(f"commit beyond the last stored record ({end.index} > {self._next_index})")
            self._cursor = end
            if self._read_pos.index < end.index:
                self._read_pos = end
            if end.index == self._next_index and end.segment == self._tail and self._tail_size > len(SEGMENT_MAGIC):
                # Everything acknowledged: start an empty segment so the drained bytes are freed immediately.
                self._roll()
                self._cursor = SpoolPosition(self._tail, len(SEGMENT_MAGIC), end.index)
                self._read_pos = self._cursor
            self._save_cursor(self._cursor)
            for seg in self._segments():
                if seg < self._cursor.segment:
                    path = self._path(seg)
                    try:
                        size = path.stat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    self._disk_bytes -= size
                    if self._read_fd_segment == seg and self._read_fd is not None:
                        os.close(self._read_fd)
                        self._read_fd = None
                        self._read_fd_segment = -1

    def _save_cursor(self, pos: SpoolPosition) -> None:
        tmp = self.directory / "cursor.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{pos.segment} {pos.offset} {pos.index}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / "cursor")
        _fsync_dir(self.directory)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.directory} is closed")

    def close(self) -> None:
        """fsync the tail, close the files and release the directory lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync_tail()
            finally:
                os.close(self._tail_fd)
                if self._read_fd is not None:
                    os.close(self._read_fd)
                self._release_lock()

    def _release_lock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
