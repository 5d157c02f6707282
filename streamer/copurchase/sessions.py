"""Co-view and co-cart within a session: a secondary, separately weighted co-purchase signal.

Purchases are the main signal. Items a shopper viewed (or carted) in one session are weaker
evidence that they go together; streamer can count them as a *pseudo-order* of a small weight
``w`` (e.g. 0.05 for co-view, 0.3 for co-cart), learned by the same statistics as purchases.

A session's pseudo-order grows one click at a time, so it is learned incrementally: when item
``x`` joins a session that already holds ``e_1 .. e_n``,

- ``x`` is learned as an anchor bought with ``e_1 .. e_n`` (its own count grows by ``w``),
- each ``e_i`` learns ``x`` as a partner, *without* counting ``e_i`` again (it was counted when
  it joined),
- and the order total grows by ``w`` when ``x`` is the session's first item.

So once the session is over, every item's count, every pair's co-count (both ways) and the
order total have grown exactly as if the whole session had been one order of weight ``w``
(``tests/unit/test_sessions.py`` checks this); only triples differ (an item forms triples with
the items that joined before it).

A session is over after ``gap_ms`` without a click of its signal (event time; a later click
starts a new pseudo-order); at most ``max_items`` items join one, which bounds the work of a
click to ``max_items`` updates. State lives in a mapping passed in (a faust table keyed by
session live, partitioned like ``clicks``, which are keyed by session; a dict in replay), with
the same per-partition eviction rules as :mod:`streamer.events.dedup`: sessions idle for longer
than ``gap_ms`` behind the partition's newest click, and beyond ``capacity`` sessions per
partition the least recently active, are deleted.

Redelivery: each item remembers the offset of the message it joined with, so the very message
delivered again (a retry after a crash) returns the same join again, and downstream state
recognises it by that offset (see ``streamer.engine``); any other click of an item already in
the session changes nothing, and neither does a redelivered click read before the session's
newest item that is not in it (it belonged to an earlier pseudo-order, over by now).

>>> s = SessionItemsTracker({}, gap_ms=1_000, max_items=3, capacity=100)
>>> s.observe("s1", "cart", "tea", ts_ms=0, offset=10)
Joined(item='tea', earlier=[], first=True)
>>> s.observe("s1", "cart", "cup", ts_ms=5, offset=11)
Joined(item='cup', earlier=['tea'], first=False)
>>> s.observe("s1", "cart", "tea", ts_ms=6, offset=12) is None  # already in the session
True
>>> s.observe("s1", "cart", "cup", ts_ms=5, offset=11)  # the same message again: a retry
Joined(item='cup', earlier=['tea'], first=False)
>>> s.observe("s1", "cart", "milk", ts_ms=2_000, offset=13)  # after the gap: a new session
Joined(item='milk', earlier=[], first=True)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import MutableMapping
from typing import NamedTuple

from msgspec import Struct

__all__ = ["Joined", "SessionItems", "SessionItemsTracker", "session_key"]

#: Joins a session id and a signal name into a key (ASCII unit separator).
_SEPARATOR = "\x1f"


class SessionItems(Struct, frozen=True, array_like=True, gc=False):
    """One session's pseudo-order of one signal: its items in the order they joined, each with
    the offset of the message it joined with (-1: unknown), the event time of the session's
    last click, and the partition the session is read from. Immutable."""

    last_ts: int
    partition: int
    items: dict[str, int]


class Joined(NamedTuple):
    """``item`` joined a session that held ``earlier`` (in join order); ``first``: it opened
    the session (the order total counts the session then)."""

    item: str
    earlier: list[str]
    first: bool


def session_key(session_id: str, signal: str) -> str:
    """The state key of a session's pseudo-order of ``signal`` ("view", "cart").

    >>> session_key("s1", "cart")
    's1\\x1fcart'
    """
    return f"{session_id}{_SEPARATOR}{signal}"


class SessionItemsTracker:
    """Tracks which items each session viewed or carted; see the module doc.

    Only assigns and deletes keys of ``sessions``, never mutates a value it read. Not
    thread-safe; its in-memory eviction index is recreated by :meth:`rebuild`.
    """

    def __init__(
        self,
        sessions: MutableMapping[str, SessionItems],
        *,
        gap_ms: int,
        max_items: int,
        capacity: int,
    ) -> None:
        if gap_ms <= 0 or max_items < 2 or capacity <= 0:
            raise ValueError("gap_ms and capacity must be positive, max_items at least 2")
        self.sessions = sessions
        self.gap_ms = gap_ms
        self.max_items = max_items
        self.capacity = capacity
        # Per partition: keys by last activity (least recent first), and the newest event time.
        self._recency: dict[int, OrderedDict[str, None]] = {}
        self._watermark: dict[int, int] = {}
        self.rebuild()

    def rebuild(self) -> None:
        """Recreate the eviction index from the mapping (after recovery from a changelog)."""
        self._recency = {}
        self._watermark = {}
        by_ts = sorted(self.sessions.items(), key=lambda kv: kv[1].last_ts)
        for key, s in by_ts:
            self._recency.setdefault(s.partition, OrderedDict())[key] = None
            self._watermark[s.partition] = max(self._watermark.get(s.partition, s.last_ts),
                                               s.last_ts)

    def __len__(self) -> int:
        return sum(len(r) for r in self._recency.values())

    def observe(
        self,
        session_id: str,
        signal: str,
        item: str,
        *,
        ts_ms: int,
        partition: int = 0,
        offset: int = -1,
    ) -> Joined | None:
        """Record that ``session_id`` showed ``signal`` for ``item`` at ``ts_ms``; the join to
        learn, or None when there is nothing to learn (the item is in the session already, or
        the session is full)."""
        key = session_key(session_id, signal)
        old = self.sessions.get(key)
        if old is not None and ts_ms - old.last_ts > self.gap_ms:
            old = None  # the session's pseudo-order is over; this click starts another
        joined: Joined | None
        if old is None:
            items = {item: offset}
            last_ts = ts_ms
            joined = Joined(item, [], True)
        else:
            last_ts = max(old.last_ts, ts_ms)
            joined_at = old.items.get(item)
            if joined_at is not None:
                if offset >= 0 and joined_at == offset:  # this very message again: a retry
                    earlier = list(old.items)
                    position = earlier.index(item)
                    return Joined(item, earlier[:position], position == 0)
                items = old.items
                joined = None
            elif len(old.items) >= self.max_items or (
                    0 <= offset < max(old.items.values()) and ts_ms <= old.last_ts):
                # Full; or a message read before one that joined (offsets are read in order)
                # yet not in the session: a redelivery whose click belonged to an earlier
                # pseudo-order, closed by the gap since, or changed nothing then.
                items = old.items
                joined = None
            else:
                joined = Joined(item, list(old.items), False)
                items = {**old.items, item: offset}
        if old is None or items is not old.items or last_ts != old.last_ts:
            self.sessions[key] = SessionItems(last_ts, partition, items)
        self._touch(key, partition, last_ts)
        return joined

    def _touch(self, key: str, partition: int, ts_ms: int) -> None:
        recency = self._recency.setdefault(partition, OrderedDict())
        recency[key] = None
        recency.move_to_end(key)
        watermark = max(self._watermark.get(partition, ts_ms), ts_ms)
        self._watermark[partition] = watermark
        older_than = watermark - self.gap_ms
        sessions = self.sessions
        while recency:
            oldest = next(iter(recency))
            if oldest == key:
                break
            s = sessions.get(oldest)
            if s is not None and s.last_ts >= older_than and len(recency) <= self.capacity:
                break
            del recency[oldest]
            sessions.pop(oldest, None)
