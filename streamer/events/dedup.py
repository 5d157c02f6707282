"""De-duplication of events by ``event_id`` with bounded, time-limited memory.

Kafka delivers at least once, so a redelivered event must not change state twice. The memory
of seen ids lives in a mapping passed in (a faust Table live, so it survives a restart through
its changelog; a dict in replay and tests). It is bounded two ways: ids older than ``ttl_ms``
(in event time) are forgotten, and at most ``capacity`` ids are kept per partition.

Each value records the partition the id was seen on, because a faust table writes a key's
changelog entry to the partition of the event being processed: an id may only be written or
deleted while an event of its own partition is handled. So eviction is per partition too.

It also records the offset of the message, when known: the very message delivered again (a
redelivery after a crash, before its offset was committed) is not a duplicate but a retry, and
is let through, because what it changed downstream may be lost; downstream state then
recognises it by its offset (see ``streamer.engine``). Only another message with the same id is
a duplicate.

>>> d = Deduplicator({}, ttl_ms=1000, capacity=2)
>>> d.first_time("a", ts_ms=0, partition=0), d.first_time("a", ts_ms=5, partition=0)
(True, False)
>>> d.first_time("b", ts_ms=10, partition=0), d.first_time("c", ts_ms=20, partition=0)
(True, True)
>>> sorted(d.seen)  # capacity 2: the oldest id was forgotten
['b', 'c']
>>> d.first_time("d", ts_ms=30, partition=1, offset=8)
True
>>> d.first_time("d", ts_ms=30, partition=1, offset=8)  # the same message again: a retry
True
>>> d.first_time("d", ts_ms=30, partition=1, offset=9)  # another message, same id
False
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping

import msgspec


class SeenId(msgspec.Struct, array_like=True, frozen=True):
    """When (event time, ms), on which partition and at which offset (-1: unknown) an event
    id was first seen."""

    ts: int
    partition: int
    offset: int = -1


class Deduplicator:
    """Remembers event ids; :meth:`first_time` is True exactly once per id within the TTL.

    Not thread-safe; owns nothing but the in-memory eviction index, which :meth:`rebuild`
    recreates from the mapping after a restart.
    """

    def __init__(self, seen: MutableMapping[str, SeenId], *, ttl_ms: int, capacity: int) -> None:
        if ttl_ms <= 0 or capacity <= 0:
            raise ValueError("ttl_ms and capacity must be positive")
        self.seen = seen
        self.ttl_ms = ttl_ms
        self.capacity = capacity
        # Per partition: a min-heap of (ts, id) for eviction, and the newest event time seen.
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._watermark: dict[int, int] = {}
        self.rebuild()

    def rebuild(self) -> None:
        """Recreate the eviction index from the mapping (after recovery from a changelog)."""
        self._heaps = {}
        self._watermark = {}
        for event_id, s in self.seen.items():
            self._heaps.setdefault(s.partition, []).append((s.ts, event_id))
            self._watermark[s.partition] = max(self._watermark.get(s.partition, s.ts), s.ts)
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def first_time(self, event_id: str, *, ts_ms: int, partition: int = 0,
                   offset: int = -1) -> bool:
        """Record ``event_id``; True when it was not seen before (within the TTL), or was
        first seen in this very message (``partition`` and ``offset`` >= 0: a redelivery)."""
        seen = self.seen.get(event_id)
        if seen is not None:
            return offset >= 0 and seen.offset == offset and seen.partition == partition
        self.seen[event_id] = SeenId(ts_ms, partition, offset)
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (ts_ms, event_id))
        wm = max(self._watermark.get(partition, ts_ms), ts_ms)
        self._watermark[partition] = wm
        self._evict(heap, wm - self.ttl_ms)
        return True

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def _evict(self, heap: list[tuple[int, str]], older_than: int) -> None:
        while heap and (heap[0][0] < older_than or len(heap) > self.capacity):
            _, event_id = heapq.heappop(heap)
            self.seen.pop(event_id, None)

