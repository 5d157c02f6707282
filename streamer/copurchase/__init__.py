"""Bounded, time-decayed co-purchase statistics and candidate bundles.

Contract (the engine and the evaluation depend on exactly this):

- ``CoPurchaseStats(items, counts, *, half_life_s, top_k, ...)`` where ``items`` is a
  ``MutableMapping[str, ItemStats]`` (per-anchor state) and ``counts`` a
  ``MutableMapping[str, Decayed]`` (decayed popularity per item, plus the order total under
  :data:`TOTAL_KEY`). Live they are faust tables (``items`` partitioned by item), in replay and
  tests plain dicts. The class only ever *assigns* values (``m[k] = v``), never mutates a value
  it read, so a changelog-backed table sees every change. Values are msgspec Structs
  (:class:`ItemStats`, :class:`Decayed`) that round-trip through ``msgspec.json`` with
  ``type=``; build the tables' codec from them.
- ``learn_anchor(anchor, partners, ts_ms, weight=1.0)``: one anchor's view of an order (what
  the live item agent sees after the repartition on item); it reads and writes ``items[anchor]``
  and writes ``counts[anchor]``, nothing else. ``learn_order_total(ts_ms, weight=1.0)``: count
  one order (writes ``counts[TOTAL_KEY]``); ``learn_order(items, ts_ms, weight=1.0)``: both,
  for a whole order (replay, evaluation). ``weight`` < 1 feeds a secondary signal (co-view,
  co-cart: :mod:`streamer.copurchase.sessions` turns a session's clicks into such pseudo-orders).
  Timestamps are event time in epoch ms, in any order.
- ``candidates(anchor, *, now_ms, max_pairs, max_triples, min_support)`` returns
  :class:`Candidate` bundles (anchor first, 2 or 3 items), best score first; pure.
- Memory: per anchor at most ``top_k`` partners and ``top_k_triples`` triples (heavy-hitter
  tables with a stated error bound), so state grows with the catalogue, not with the pairs seen.
  Nothing here uses Python's salted ``hash()`` for persisted or partitioned data; keys are the
  item ids themselves.

>>> import msgspec
>>> items: dict[str, ItemStats] = {}
>>> counts: dict[str, Decayed] = {}
>>> stats = CoPurchaseStats(items, counts, half_life_s=7 * 86_400.0, top_k=32)
>>> stats.learn_order(["A", "B", "C"], ts_ms=1_700_000_000_000)
>>> stats.learn_anchor("A", ["B"], ts_ms=1_700_000_000_000)  # e.g. from the item agent
>>> stats.learn_order_total(ts_ms=1_700_000_000_000)
>>> [c.items for c in stats.candidates("A", now_ms=1_700_000_000_000, max_pairs=1, max_triples=0)]
[('A', 'B')]
>>> raw = msgspec.json.encode(items["A"])
>>> msgspec.json.decode(raw, type=ItemStats) == items["A"]
True
"""

from streamer.copurchase.decay import Decayed
from streamer.copurchase.heavy_hitters import purge
from streamer.copurchase.ranking import HeaviestCache
from streamer.copurchase.sessions import Joined, SessionItems, SessionItemsTracker, session_key
from streamer.copurchase.stats import (
    TOTAL_KEY,
    TRIPLE_SEPARATOR,
    Candidate,
    CoPurchaseStats,
    ItemStats,
)

__all__ = [
    "TOTAL_KEY",
    "TRIPLE_SEPARATOR",
    "Candidate",
    "CoPurchaseStats",
    "Decayed",
    "HeaviestCache",
    "ItemStats",
    "Joined",
    "SessionItems",
    "SessionItemsTracker",
    "purge",
    "session_key",
]
