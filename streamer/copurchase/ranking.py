"""The heaviest entries of an anchor's partner and triple tables, and a cache that keeps them
exact while learning grows the tables.

Ranking is by weight, heaviest first, ties in the table's (insertion) order: exactly
``heapq.nlargest(k, table.items(), key=weight)``, which is ``sorted(..., reverse=True)[:k]``
(a stable sort). :func:`heaviest` computes it from a whole table (O(n) per query, n up to
``top_k`` = 1,024 partners); :class:`HeaviestCache` keeps each recently ranked anchor's top
``depth`` entries and updates them from the few keys an order grew, so an offer revision
ranks an anchor's partners in O(depth) instead of O(n).

Why an update is exact: a learn step copies the table and *increases* the weights of the
order's keys (keys new to the table go at its end); every other entry keeps its weight and
its place. An entry outside the old top ``depth`` and not grown was ranked below ``depth``
entries that kept or raised their weight and kept their place, so it stays below them: the
new top ``depth`` is the top of (old top ``depth``) + (grown keys). Ranking that small union
by weight alone is exact when no two of its weights that decide the cut are equal; when two
are (their order would depend on places in the table, which are not kept here), the anchor's
entry is dropped and its next query ranks the whole table. A purge (every weight lowered by
one amount) or a renormalisation (every weight scaled) may create ties anywhere, so after one
the caller drops the entry too (:meth:`HeaviestCache.forget`, or simply not calling
:meth:`HeaviestCache.grown`).

The cache holds no state of its own that matters: an entry is used only for the very table
object it was computed from, so a cold, evicted or stale entry only costs one full ranking.
Tables are not modified in place (see :class:`~streamer.copurchase.stats.ItemStats`), except
by a learner updating its own tables ``in_place``, which tells the cache of every such update
through :meth:`HeaviestCache.grown` (or :meth:`HeaviestCache.forget`).

>>> cache = HeaviestCache(depth=2)
>>> table = {"a": 1.0, "b": 3.0, "c": 2.0}
>>> cache.heaviest("x", table, 2)
[('b', 3.0), ('c', 2.0)]
>>> grown = {**table, "a": 4.0, "d": 0.5}   # an order bought a and d with x
>>> cache.grown("x", table, grown, ["a", "d"])
>>> cache.heaviest("x", grown, 2) == heaviest(grown, 2) == [("a", 4.0), ("b", 3.0)]
True
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Container
from heapq import nlargest
from operator import itemgetter

import numpy as np

__all__ = ["HeaviestCache", "heaviest"]

_BY_WEIGHT = itemgetter(1)
#: From this many entries on, :func:`heaviest` sorts in numpy (at 1,024 entries about 1.6x
#: faster than ``heapq.nlargest``, a Python loop over every entry; at 64 already faster).
_NUMPY_FROM = 64


def heaviest(table: dict[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` heaviest entries of ``table``, heaviest first, ties in the table's order:
    exactly ``heapq.nlargest(k, table.items(), key=weight)``, faster on large tables.

    >>> t = {"a": 1.0, "b": 3.0, "c": 1.0, "d": 2.0} | {f"x{i}": 0.5 for i in range(80)}
    >>> heaviest(t, 3), heaviest(t, 5)[3:] == [("c", 1.0), ("x0", 0.5)]
    ([('b', 3.0), ('d', 2.0), ('a', 1.0)], True)
    """
    n = len(table)
    if n < _NUMPY_FROM:
        return nlargest(k, table.items(), key=_BY_WEIGHT)
    values = np.fromiter(table.values(), dtype=np.float64, count=n)
    if n > k:
        # O(n) selection of the k-th weight, then a stable sort of the entries at or above
        # it only (in table order, so ties keep it): at 1,024 entries about 1.7x faster than
        # a stable argsort of all of them.
        cut = np.partition(values, n - k)[n - k]
        above = np.flatnonzero(values >= cut)
        order = above[np.argsort(-values[above], kind="stable")[:k]].tolist()
    else:
        order = np.argsort(-values, kind="stable").tolist()
    keys = list(table)
    return [(keys[i], table[keys[i]]) for i in order]


class HeaviestCache:
    """The top entries of recently ranked anchors' tables (one kind of table per cache:
    partners, or triples); see the module doc.

    Args:
        depth: entries kept per anchor; queries for more rank the whole table.
        capacity: anchors kept; the oldest quarter is dropped when full (an entry holds a
            reference to its table, so this bounds the tables kept alive).

    An entry is the exact top of its table, or a shorter exact prefix of it when an update
    could not order a tie (see :meth:`grown`); a query for more than it holds ranks the whole
    table again. Plain in-memory state, never persisted; not thread-safe (one per engine).
    Share one instance between the :class:`~streamer.copurchase.CoPurchaseStats` that learns
    an anchor and the one that queries it.
    """

    __slots__ = ("_capacity", "_entries", "depth")

    def __init__(self, *, depth: int = 16, capacity: int = 4096) -> None:
        if depth < 1 or capacity < 1:
            raise ValueError("depth and capacity must be positive")
        self.depth = depth
        self._capacity = capacity
        # anchor -> (the table ranked, the keys of its top entries in order, their weights
        # negated (ascending, for bisect), whether they are the whole table). The lists are
        # this cache's own: updated in place, never handed out.
        self._entries: dict[str, tuple[dict[str, float], list[str], list[float], bool]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def heaviest(self, anchor: str, table: dict[str, float], k: int) -> list[tuple[str, float]]:
        """:func:`heaviest` of ``table`` (``anchor``'s), from the cache when it holds this very
        table deep enough; else ranked in full and kept (when ``k <= depth``)."""
        entry = self._entries.get(anchor)
        if entry is not None and entry[0] is table and (k <= len(entry[1]) or entry[3]):
            return [(key, -neg) for key, neg in zip(entry[1][:k], entry[2][:k], strict=True)]
        if k > self.depth:
            return heaviest(table, k)
        top = heaviest(table, self.depth)
        self._store(anchor, table, top, len(table) <= self.depth)
        return top[:k]

    def heaviest_weight(self, anchor: str, table: dict[str, float]) -> float | None:
        """The largest weight of ``table`` (``anchor``'s) when the cache holds this very
        table, else None."""
        entry = self._entries.get(anchor)
        return -entry[2][0] if entry is not None and entry[0] is table else None

    def grown(self, anchor: str, old: dict[str, float], new: dict[str, float],
              keys: list[str], new_keys: Container[str] | None = None) -> None:
        """``new`` is ``old`` with the weights of ``keys`` (distinct) increased, keys not in
        ``old`` added at its end in this order, and nothing else changed: move ``anchor``'s
        entry, if it is for ``old``, to ``new``. Any other change (a purge, a rescale) must
        not come here. About O(len(keys)) when no key reaches the top, plus O(depth) per key
        that does. ``new`` may be ``old`` itself, updated in place: ``new_keys`` then says
        which of ``keys`` were not in it before. Without it every key counts as an existing
        one, which is exact too but keeps a shorter top whenever a new key ties, and new keys
        often do (an order's new partners all enter at one weight)."""
        entries = self._entries
        entry = entries.get(anchor)
        if entry is None:
            return
        table, names, negs, whole = entry
        if table is not old:
            del entries[anchor]
            return
        # One key at a time, in the order the table appends new keys: each step is itself a
        # table grown by one key, so the top stays exact after every step.
        floor = -negs[-1]  # the lightest weight in the top
        for key in keys:
            weight = new[key]
            if not whole and weight < floor:
                # Below the cut: stays out. Not in the top either (a key of the top weighed
                # at least the floor, and grew): most keys, so this test before the scan.
                continue
            if key in names:  # moves up (or stays): out of its old place first
                i = names.index(key)
                del names[i], negs[i]
                existing, added = True, False
            else:
                existing = key in old if new_keys is None else key not in new_keys
                added = True
            neg = -weight
            lo = bisect_left(negs, neg)
            hi = bisect_right(negs, neg, lo)
            if lo != hi and existing:
                # Equal weights are ordered by place in the table, and an existing key's
                # place relative to the tied ones is not known here: keep only the entries
                # strictly heavier (an exact, shorter top).
                del names[lo:], negs[lo:]
                whole = False
                if not names:
                    del entries[anchor]
                    return
            else:
                # Ties (a new key's place is after every existing one) go before it.
                names.insert(hi, key)
                negs.insert(hi, neg)
                if added and (not whole or len(names) > self.depth):
                    names.pop()
                    negs.pop()
                    whole = False
            floor = -negs[-1]
        entries[anchor] = (new, names, negs, whole)

    def forget(self, anchor: str) -> None:
        """Drop ``anchor``'s entry (its table changed in a way :meth:`grown` cannot follow)."""
        self._entries.pop(anchor, None)

    def _store(self, anchor: str, table: dict[str, float], top: list[tuple[str, float]],
               whole: bool) -> None:
        if not top:
            return
        entries = self._entries
        if len(entries) >= self._capacity and anchor not in entries:
            for old in list(entries)[: max(1, self._capacity // 4)]:
                del entries[old]
        entries[anchor] = (table, [k for k, _ in top], [-w for _, w in top], whole)
