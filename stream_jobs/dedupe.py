"""Bounded in-memory deduplication of usage events by ``(source, event_id)`` for the hot path.

Role: a fast first line, not the truth. The hot path keeps one :class:`Deduper` per assigned source partition
(dropped on revoke) and keeps a duplicate out of the windows only; the ClickHouse ledger (``ReplacingMergeTree``
by ``(source, event_id)`` plus the sink's existence check of each batch's ids) is the final dedupe.

Guarantee: within one deduper, a re-sent event whose first copy is still inside the window (and not evicted by the
entry cap) is reported as a duplicate; memory is bounded by ``max_entries``. After a restart the state is empty
and the replay produces the same deterministic outputs, which the sinks deduplicate. See DESIGN §5.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HOUR_US", "Deduper"]

HOUR_US: Final = 3_600_000_000


class Deduper:
    """Remembers ``(source, event_id)`` pairs over an event-time window with a hard cap on entries.

    Not thread-safe: one instance per source partition, called from the consumer thread.

    Buckets: an event whose ``(source, event_id)`` was already seen in the same event-time bucket is a duplicate.
    Usage events are keyed by ``agent_id``, so a re-sent event (producer retry, spool replay) lands on the same
    partition as its first copy, and it carries the same ``occurred_at``, so it lands in the same bucket: one set
    lookup per event, never a scan of all buckets. Duplicates whose first copy is older than the window, was
    evicted, or carries a different ``occurred_at`` pass through. A duplicate whose first copy lies before the commit
    position cannot be double counted in a window either: both copies share a window, which is either replayed whole
    (the first copy is seen first) or already closed by the restored close horizon (the replayed copy is late).

    Memory: entries are 64-bit hashes in one ``set`` per bucket (tests/unit/test_dedupe.py measures the bytes per
    entry); buckets older than the window are dropped by :meth:`expire` (driven by the injected wall clock, so one
    event with a wild timestamp cannot wipe the state), and ``max_entries`` evicts whole buckets, oldest first,
    counted in :attr:`evicted` (a rising count means the cap is too small for the traffic).

    Hash: CPython's ``hash((source, event_id))``, 64-bit SipHash with a per-process random seed (nobody outside can
    craft collisions; never persisted, so the seed changing on restart does not matter). With ``n`` entries held the
    chance that one new event is mistaken for a duplicate is about ``n / 2**64``, and the hot path still sends a
    "duplicate" to the ledger, so even a false hit can never lose a ledger row.
    """

    __slots__ = (
        "window_us",
        "bucket_us",
        "max_entries",
        "_buckets",
        "_size",
        "_expired_before",
        "evicted",
        "expired",
        "too_old",
    )

    def __init__(
        self,
        *,
        window_us: int = 24 * HOUR_US,
        bucket_us: int = 15 * 60_000_000,
        max_entries: int = 2_000_000,
    ) -> None:
        """Build an empty deduper.

        ``bucket_us`` is the eviction granularity: finer buckets let the cap drop less at a time (at 15 minutes a
        24 h window has 96 sets). Size ``max_entries`` to at least a few buckets of this partition's traffic;
        at ~80 bytes per entry the default 2 million is ~160 MB.
        """
        if window_us <= 0 or bucket_us <= 0 or max_entries <= 0:
            raise ValueError("window_us, bucket_us and max_entries must be positive")
        self.window_us = window_us
        self.bucket_us = bucket_us
        self.max_entries = max_entries
        self._buckets: dict[int, set[int]] = {}
        self._size = 0
        # Buckets below this index are forgotten; events in them can no longer be judged.
        self._expired_before: int | None = None
        self.evicted = 0
        """Entries dropped by the ``max_entries`` cap (a counter metric)."""
        self.expired = 0
        """Entries dropped because their bucket left the window (a counter metric)."""
        self.too_old = 0
        """Events older than the window: passed as new, not remembered (a counter metric)."""

    def seen_or_add(self, source: str, event_id: str, event_time_us: int) -> bool:
        """Return ``True`` if ``(source, event_id)`` was already seen in its event-time bucket, else remember it
        and return ``False``.

        An event older than the window (its bucket already expired) returns ``False`` and is not remembered. May
        evict the oldest buckets to keep at most ``max_entries`` entries.
        """
        bucket_index = event_time_us // self.bucket_us
        bucket = self._buckets.get(bucket_index)
        if bucket is None:
            if self._expired_before is not None and bucket_index < self._expired_before:
                self.too_old += 1
                return False
            bucket = self._buckets[bucket_index] = set()
        # One set operation instead of "in" then "add": the length tells whether the key was new.
        size_before = len(bucket)
        bucket.add(hash((source, event_id)))
        if len(bucket) == size_before:
            return True
        self._size += 1
        if self._size > self.max_entries:
            self._evict()
        return False

    def _evict(self) -> None:
        # Oldest event time first: old events are the least likely to be re-sent. The bucket of the current event
        # may be the only one left; then it is cleared too, and the cap still holds.
        while self._size > self.max_entries and self._buckets:
            oldest = min(self._buckets)
            dropped = self._buckets.pop(oldest)
            self._size -= len(dropped)
            self.evicted += len(dropped)

    def expire(self, now_wall_us: int) -> int:
        """Forget buckets that lie wholly before ``now_wall_us - window_us``; return how many entries were dropped.

        Driven by the wall clock (call it once per batch) rather than by the largest event time, so a single event
        stamped in the future cannot push the whole window out.
        """
        threshold = (now_wall_us - self.window_us) // self.bucket_us
        if self._expired_before is None or threshold > self._expired_before:
            self._expired_before = threshold
        dropped = 0
        for index in [index for index in self._buckets if index < threshold]:
            dropped += len(self._buckets.pop(index))
        self._size -= dropped
        self.expired += dropped
        return dropped

    def __len__(self) -> int:
        """The number of entries held (a gauge metric)."""
        return self._size
