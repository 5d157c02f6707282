"""De-duplication of events by ``event_id`` with bounded, time-limited memory.

Kafka delivers at least once, so a redelivered event must not change state twice. The memory
of seen ids lives in a mapping passed in (a faust Table live, so it survives a restart through
its changelog; a dict in replay and tests). It is bounded two ways: ids older than ``ttl_ms``
(in event time) are forgotten, and at most ``capacity`` ids are kept per partition.

Each value records the partition the id was seen on, because a faust table writes a key's
changelog entry to the partition of the event being processed: an id may only be written or
deleted while an event of its own partition is handled. So eviction is per partition too.

>>> d = Deduplicator({}, ttl_ms=1000, capacity=2)
>>> d.first_time("a", ts_ms=0, partition=0), d.first_time("a", ts_ms=5, partition=0)
(True, False)
>>> d.first_time("b", ts_ms=10, partition=0), d.first_time("c", ts_ms=20, partition=0)
(True, True)
>>> sorted(d.seen)  # capacity 2: the oldest id was forgotten
['b', 'c']
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, MutableMapping

import msgspec


class SeenId(msgspec.Struct, array_like=True, frozen=True):
    """When (event time, ms) and on which partition an event id was first seen."""

    ts: int
    partition: int


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

    def first_time(self, event_id: str, *, ts_ms: int, partition: int = 0) -> bool:
        """Record ``event_id``; True when it was not seen before (within the TTL)."""
        if event_id in self.seen:
            return False
        self.seen[event_id] = SeenId(ts_ms, partition)
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


def remember(seen: Mapping[str, int], event_id: str, ts_ms: int, *, ttl_ms: int,
             capacity: int) -> dict[str, int]:
    """A new ``{event id: event time}``: ``seen`` plus ``event_id`` at ``ts_ms``, bounded.

    For a memory of ids kept *inside* the value it guards (one write, one changelog message
    for both; see ``streamer.engine.ItemRecord``). The earliest remembered ids go first: while
    more than ``capacity`` are kept, or while the earliest is more than ``ttl_ms`` older than
    ``ts_ms``. Ids remembered out of event-time order may outstay the TTL, never the capacity.
    ``seen`` is not modified (it may be a decoded value shared with a cache).

    >>> s = remember({}, "a", 0, ttl_ms=100, capacity=2)
    >>> s = remember(s, "b", 10, ttl_ms=100, capacity=2)
    >>> remember(s, "c", 20, ttl_ms=100, capacity=2)   # capacity: "a" goes
    {'b': 10, 'c': 20}
    >>> remember(s, "c", 105, ttl_ms=100, capacity=2)  # TTL: "a" (0 < 105 - 100) goes
    {'b': 10, 'c': 105}
    >>> s
    {'a': 0, 'b': 10}
    """
    if ttl_ms <= 0 or capacity <= 0:
        raise ValueError("ttl_ms and capacity must be positive")
    kept = dict(seen)
    kept[event_id] = ts_ms
    horizon = ts_ms - ttl_ms
    while len(kept) > 1:
        first = next(iter(kept))
        if len(kept) <= capacity and kept[first] >= horizon:
            break
        del kept[first]
    return kept
