from __future__ import annotations

import pytest

from streamer.events.dedup import Deduplicator, SeenId


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("a", 0), ("a", 1)], [True, False]),
        ([("a", 0), ("b", 0), ("a", 0)], [True, True, False]),
        # "a" expires (TTL 100 in event time) once the watermark passes 100: seen anew.
        ([("a", 0), ("b", 150), ("a", 160)], [True, True, True]),
        # Within the TTL an old id is still remembered.
        ([("a", 0), ("b", 90), ("a", 95)], [True, True, False]),
    ],
)
def test_first_time(events: list[tuple[str, int]], expected: list[bool]) -> None:
    d = Deduplicator({}, ttl_ms=100, capacity=10)
    assert [d.first_time(e, ts_ms=ts) for e, ts in events] == expected


def test_capacity_is_per_partition_and_bounded() -> None:
    seen: dict[str, SeenId] = {}
    d = Deduplicator(seen, ttl_ms=10**9, capacity=3)
    for i in range(10):
        d.first_time(f"p0-{i}", ts_ms=i, partition=0)
        d.first_time(f"p1-{i}", ts_ms=i, partition=1)
    assert sorted(seen) == sorted([f"p0-{i}" for i in (7, 8, 9)] + [f"p1-{i}" for i in (7, 8, 9)])
    assert len(d) == 6


def test_eviction_only_touches_the_current_partition() -> None:
    # A faust table writes a key's changelog to the partition being processed: evicting another
    # partition's ids from here would put their tombstones on the wrong changelog partition.
    seen: dict[str, SeenId] = {}
    d = Deduplicator(seen, ttl_ms=10, capacity=100)
    d.first_time("old-on-1", ts_ms=0, partition=1)
    d.first_time("new-on-0", ts_ms=1000, partition=0)
    assert "old-on-1" in seen


def test_rebuild_after_recovery_restores_eviction() -> None:
    seen: dict[str, SeenId] = {}
    first = Deduplicator(seen, ttl_ms=100, capacity=2)
    for i in range(2):
        first.first_time(f"e{i}", ts_ms=i)
    # A restarted worker: the table came back from its changelog, the index did not.
    again = Deduplicator(seen, ttl_ms=100, capacity=2)
    assert not again.first_time("e0", ts_ms=5)
    assert again.first_time("e2", ts_ms=6)
    assert len(seen) == 2 and "e0" not in seen


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        Deduplicator({}, ttl_ms=0, capacity=1)
