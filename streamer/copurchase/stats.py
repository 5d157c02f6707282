"""Per-item, time-decayed co-purchase statistics in bounded memory, and candidate bundles.

State lives in two mappings the caller owns (faust tables live, dicts in replay and tests):

- ``items[anchor]`` -> :class:`ItemStats`: the anchor's own decayed order count, its partner
  table (top partners, :mod:`~streamer.copurchase.heavy_hitters`) and its triple table (pairs
  of partners bought together with it), all in forward-decay units at one landmark
  (:mod:`~streamer.copurchase.decay`).
- ``counts[item]`` -> :class:`~streamer.copurchase.decay.Decayed`: each item's decayed order
  count (readable for any item, for lift), and the decayed number of orders under
  :data:`TOTAL_KEY`.

Ranking score: a **shrinkage estimate** of the confidence, not a lower confidence bound. A pair
``(a, b)`` scores ``(support + m * p_b) / (n_a + m)``: the posterior mean of P(b | a) under a
Beta prior centred on b's base rate ``p_b = n_b / N`` with the weight of ``m`` orders
(``prior_strength``). Why: the evaluation's hit rate *is* P(partner bought | anchor), and a
posterior mean estimates it directly, so it stays usable as a calibrated feature for the
policy; a rare pair (one co-purchase with an anchor seen once) is pulled towards its base rate
instead of scoring 1.0; and among an anchor's thinly observed partners, ties are broken towards
popular partners, which buy more often. A lower bound (Wilson) is, for a fixed anchor,
monotone in the co-count alone, so it cannot break those ties, and it collapses the scores of
all young anchors towards zero. Counts are the heavy-hitter *lower* bounds, so approximation
error never inflates a rare pair either.

Triples: for each anchor, a triple ``(a, b, c)`` is counted only when ``b`` and ``c`` are both
among the anchor's *strong* partners in this order (co-count >= ``triple_min_support`` and
confidence >= ``triple_min_confidence``, at most ``triple_partners`` of them), and, when
``triple_min_orders`` is set, only once the anchor has that many decayed orders (fewer triple
updates, at a small cost in 3-item hit rate). An order costs at most ``C(triple_partners, 2)``
triple increments per anchor, kept in a second bounded table. A triple scores
``(support_abc + m * s_ab * s_ac) / (n_a + m)``: its own evidence, shrunk towards what its two
pairs predict if b and c were independent given a. The best partners' pairs are candidates
too, so an anchor without tracked triples (a young one) still gets its best two partners.

Why the tracked count over ``n_a`` and not over the triple's exposure (tracking starts only once
both pairs are strong, so the count undercounts): on UCI Online Retail, prequentially, scoring
on exposure (alone, or with the untracked orders imputed at ``s_ab * s_ac``) offered worse
triples than this score (3-item bundle hit 0.186 and 0.192 against 0.196, with orders then cut
to 200 items); the undercount favours triples that have been strong longest, the safer bet.

How many triples (defaults ``triple_partners=8``, ``top_k_triples=256``): on UCI Online Retail,
prequentially, whole orders, half-life 30 days, 3-item bundle hit rate with 256 tracked triples
per anchor and 4 / 6 / 8 / 12 strong partners per order: 0.2398 / 0.2428 / 0.2432 / 0.2416
(12 churns the table: 66 updates per order); with 8 partners and 128 / 256 / 512 triples:
0.2398 / 0.2432 / 0.2436. The 2-item hit rate does not depend on them.

Update cost (``benchmarks/copurchase_throughput.py``, plain nested-dict pair counting = 1x): on
the first 8,000 UCI Online Retail orders about 0.6x on an idle machine and 0.43x while other
jobs shared its cores (before the comprehensions and selections below: 0.53x and 0.34x in the
same runs); on its synthetic orders (about 8 items each) about 0.3x. The pair update itself costs
about what plain counting does per pair; the rest is the copy an immutable value needs (a table
of up to ``top_k`` partners per anchor and order: most of the cost on small orders), the
purges, and the triple step (strong partners, 28 keys, a copy of the triple table). So the
comprehensions: in CPython 3.11 they beat ``map(operator, ...)`` pipelines, and bound-method
filters such as ``threshold.__le__`` run at half their speed. Tried and dropped, as no faster:
a small ``recent`` table folded into the large one now and then (the large one is still read
for triples); that plus a stored strong-partner set, refreshed on each fold (the refreshes cost
more than the copies saved); a purge that builds its result from numpy masks or
``compress``/``zip`` (slower than the comprehension); a cache of triple keys or of whole
strong sets (6% of strong sets recur). Updating the tables in place would save the copies
(about 1.15x on UCI, 1.25x on synthetic orders, CPU time, one run each) but breaks the
assignment-only contract above. ``in_place`` keeps the contract for every value anything
else may hold: it copies an anchor's tables on their first update after :meth:`~CoPurchaseStats.
release` and updates only those copies, its own, in place until the next release. The worker
releases on every flush of its write-back (``streamer.app.tables.WriteBuffer``), so a hot
anchor's table is copied about once a second instead of on every order (its engine, in process,
on ``benchmarks/throughput.py``'s purchases at a live stream's event time: 42.8 -> 39.9 us per
purchase, medians of 5 interleaved runs).

Query cost: :meth:`CoPurchaseStats.candidates` needs an anchor's dozen heaviest partners and
few heaviest triples, on every offer revision. Ranking a whole partner table (up to ``top_k``)
each time was the largest cost of a revision; a :class:`~streamer.copurchase.ranking.
HeaviestCache`, kept up to date by the learn step, answers from the anchor's cached top
instead (same entries, ties included). On the throughput benchmark's events replayed through
the engine in process, the cache alone took 8% (every purchase revising, as in
``benchmarks/latency.py``) to 15% (default settings) off the engine's CPU per purchase: two
engines in one process, cache on and off, fed the same chunks alternately; same final state.

>>> stats = CoPurchaseStats({}, {}, half_life_s=86_400.0)  # a half-life of one day
>>> day = 86_400_000
>>> stats.learn_order(["tea", "cup", "milk"], ts_ms=0)
>>> stats.learn_order(["tea", "cup", "milk"], ts_ms=0)  # both pairs strong: triple counted
>>> stats.learn_order(["tea", "cup"], ts_ms=day)
>>> stats.learn_order(["tea", "biscuit"], ts_ms=day)
>>> best = stats.candidates("tea", now_ms=day, max_pairs=1, max_triples=1)
>>> [c.items for c in best]
[('tea', 'cup'), ('tea', 'cup', 'milk')]
>>> pair = best[0]  # n_tea = 0.5 + 0.5 + 1 + 1 = 3 decayed orders, 2 of them with a cup
>>> round(pair.support, 3), round(pair.confidence, 3), round(pair.score, 3)
(2.0, 0.667, 0.667)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping, Sized
from heapq import nlargest
from itertools import combinations
from operator import attrgetter, itemgetter

import numpy as np
from msgspec import Struct

from streamer.copurchase.decay import RENORMALISE_HALF_LIVES, Decayed, add_weight, value_at
from streamer.copurchase.heavy_hitters import purge
from streamer.copurchase.ranking import HeaviestCache

__all__ = [
    "TOTAL_KEY",
    "TRIPLE_SEPARATOR",
    "Candidate",
    "CoPurchaseStats",
    "ItemStats",
]

#: Key of the decayed order total in ``counts``; never a real item id (ids are printable).
TOTAL_KEY = "\x00orders"
#: Joins the two partners of a triple in :attr:`ItemStats.triples` (ASCII unit separator).
TRIPLE_SEPARATOR = "\x1f"

_FIRST = itemgetter(0)
_SCORE = attrgetter("score")
#: From this many weights on, :func:`_strongest` finds its cut with numpy's O(n) selection.
_NUMPY_FROM = 64


class ItemStats(Struct, frozen=True, array_like=True, gc=False):
    """One anchor's statistics, all in forward-decay units at ``landmark_ms``.

    A value ``v`` here is worth ``v * 2 ** (-(t - landmark_ms) / half_life)`` at time ``t``.
    ``partners`` maps partner id -> decayed co-count (a heavy-hitter lower bound, short by at
    most ``partner_offset``); ``triples`` maps ``"b<SEP>c"`` (``b < c``) -> decayed count of
    the orders holding the anchor, b and c *since b and c were both strong partners* (the
    module doc: earlier ones are not counted), a heavy-hitter lower bound of that, short by at
    most ``triple_offset``.

    Treat an instance as immutable: :class:`CoPurchaseStats` builds a new one per update (its
    dicts are shared between versions and never modified, except by an instance learning
    ``in_place``, which updates the tables it created itself until its next ``release()``).

    >>> import msgspec
    >>> s = ItemStats(1_700_000_000_000, 2.0, {"b": 1.0}, 0.0, {}, 0.0)
    >>> msgspec.json.decode(msgspec.json.encode(s), type=ItemStats) == s
    True
    """

    landmark_ms: int
    count: float
    partners: dict[str, float]
    partner_offset: float
    triples: dict[str, float]
    triple_offset: float


class Candidate(Struct, frozen=True):
    """A candidate bundle for an anchor, with its co-purchase evidence at query time.

    ``items`` starts with the anchor (2 or 3 items). ``support`` is the bundle's decayed
    co-count, ``confidence`` P(other items | anchor), ``lift`` confidence over what
    independence predicts (P(b), or P(b) * P(c)), ``score`` the shrunk confidence used to rank
    (higher is better). A frozen Struct, not a frozen dataclass: every revision of an offer
    builds a few, and one costs ~0.16 us to build against ~0.88 us (a dataclass's frozen
    ``__init__`` sets each field through ``object.__setattr__``).
    """

    items: tuple[str, ...]
    support: float
    confidence: float
    lift: float
    score: float


class CoPurchaseStats:
    """Bounded, decayed co-purchase counts over caller-owned mappings; see the module doc.

    Args:
        items: anchor id -> :class:`ItemStats` (a faust table partitioned by item, or a dict).
        counts: item id -> :class:`~streamer.copurchase.decay.Decayed`, plus :data:`TOTAL_KEY`.
        half_life_s: event-time half-life of every count, in seconds.
        top_k: capacity of an anchor's partner table; a purge keeps the ``top_k // 2`` heaviest
            partners, so a partner whose co-count exceeds ``N / (top_k // 2 + 1)`` (``N``: the
            anchor's total partner weight) is always tracked.
        max_partner_entries: optional global budget of partner entries over ``items``; when
            set, an anchor's capacity is ``budget // tracked anchors`` (clamped to
            ``[min_k, top_k]``), applied on its next update.
        anchors: what to count the tracked anchors in, when not ``items`` (the engine learns
            on a scratch mapping of one anchor: it passes its table of records).
        min_k: smallest capacity the budget may impose.
        top_k_triples: capacity of an anchor's triple table.
        triple_partners: at most this many strong partners of an order form triples.
        triple_min_support: a partner is strong only with at least this decayed co-count.
        triple_min_confidence: ... and at least this share of the anchor's decayed orders.
        triple_min_orders: an anchor learns triples only once it has this many decayed orders
            (0: from its first order; before that, its 3-item candidates are its best partners
            ranked by their pairs). A throughput knob: it skips most triple work.
        prior_strength: ``m``, the weight in orders of the base-rate prior in the score.
        ranks: caches of anchors' heaviest partners and triples
            (:class:`~streamer.copurchase.ranking.HeaviestCache`, partners first), so that
            :meth:`candidates` ranks an anchor's tables in O(depth) rather than O(``top_k``)
            after learning grew them. Pass the same pair to the instance that learns anchors
            and the one that queries them (the engine keeps two); None: an instance of its
            own. In-memory only; the results are the same with or without.
        in_place: update in place the partner and triple tables this instance created (by
            copying a stored table, or anew) since its last :meth:`release`, instead of
            copying them again on every update of their anchor; see :meth:`release`. The
            results are the same either way.

    Only assigns values (``m[k] = v``) and never modifies a value it has read (unless
    ``in_place``: then only tables of its own making, until :meth:`release`), so a
    changelog-backed table sees every change. ``learn_anchor`` reads and writes one key of
    ``items`` and writes one key of ``counts``. Not thread-safe. Raises ``ValueError`` for
    invalid arguments and for non-positive or non-finite weights.
    """

    #: Default partner-table capacity: on UCI Online Retail (baskets of ~25 items) smaller tables
    #: churn partners out before they recur and lose hit rate (256: -4%; 1024: as exact).
    DEFAULT_TOP_K = 1024

    __slots__ = (
        "_anchors",
        "_capacity",
        "_counts",
        "_half_life_ms",
        "_items",
        "_ln2_per_ms",
        "_max_partner_entries",
        "_min_k",
        "_own_pairs",
        "_own_triples",
        "_partner_ranks",
        "_prior_strength",
        "_renormalise_ms",
        "_top_k",
        "_top_k_triples",
        "_tracked",
        "_triple_gate",
        "_triple_min_confidence",
        "_triple_min_support",
        "_triple_partners",
        "_triple_ranks",
    )

    def __init__(
        self,
        items: MutableMapping[str, ItemStats],
        counts: MutableMapping[str, Decayed],
        *,
        half_life_s: float = 45 * 86_400.0,
        top_k: int = DEFAULT_TOP_K,
        max_partner_entries: int | None = None,
        min_k: int = 8,
        top_k_triples: int = 256,
        triple_partners: int = 8,
        triple_min_support: float = 1.5,
        triple_min_confidence: float = 0.1,
        triple_min_orders: float = 0.0,
        prior_strength: float = 1.0,
        ranks: tuple[HeaviestCache, HeaviestCache] | None = None,
        anchors: Sized | None = None,
        in_place: bool = False,
    ) -> None:
        if not (half_life_s > 0 and math.isfinite(half_life_s)):
            raise ValueError(f"half_life_s must be positive and finite, got {half_life_s}")
        if top_k < 2 or top_k_triples < 2 or min_k < 2:
            raise ValueError("top_k, top_k_triples and min_k must be at least 2")
        if max_partner_entries is not None and max_partner_entries < 1:
            raise ValueError("max_partner_entries must be positive")
        if triple_partners < 0 or prior_strength < 0:
            raise ValueError("triple_partners and prior_strength must not be negative")
        self._items = items
        self._counts = counts
        self._half_life_ms = half_life_s * 1000.0
        self._ln2_per_ms = math.log(2.0) / self._half_life_ms
        self._renormalise_ms = RENORMALISE_HALF_LIVES * self._half_life_ms
        self._top_k = top_k
        self._max_partner_entries = max_partner_entries
        self._min_k = min(min_k, top_k)
        self._top_k_triples = top_k_triples
        self._triple_partners = triple_partners
        self._triple_min_support = triple_min_support
        self._triple_min_confidence = triple_min_confidence
        self._triple_gate = triple_min_orders
        self._prior_strength = prior_strength
        self._capacity = top_k
        # Anchors in ``items``; counted once (len() of a persistent table may scan it) and then
        # kept up to date by this instance. Only used by the global budget.
        self._tracked = -1
        self._anchors: Sized = items if anchors is None else anchors
        self._partner_ranks, self._triple_ranks = (
            ranks if ranks is not None else (HeaviestCache(), HeaviestCache()))
        # in_place: anchor -> the partner / triple table this instance made since release()
        # (None: copy on every update).
        self._own_pairs: dict[str, dict[str, float]] | None = {} if in_place else None
        self._own_triples: dict[str, dict[str, float]] | None = {} if in_place else None

    def release(self) -> None:
        """From now on, treat every table learned so far as shared (``in_place`` only).

        Call it whenever the values written may be seen by anything else than this instance
        and transient reads: e.g. once a write-back flushed them (a cache of decoded values
        then holds them beside their encoding). Until then, an anchor's tables are copied on
        its first update and updated in place on the next ones. Why: a hot anchor's partner
        table holds up to ``top_k`` entries, and copying it for every order was about a fifth
        of the engine's time on ``benchmarks/throughput.py``'s purchases at a live stream's
        event time (in process, without any copy: 43.9 -> 34.5 us per purchase); learned in
        place between the worker's flushes, it is copied once per flush.
        """
        if self._own_pairs is not None and self._own_triples is not None:
            self._own_pairs.clear()
            self._own_triples.clear()

    # -- learning ---------------------------------------------------------------------------

    def learn_order(self, items: Iterable[str], ts_ms: int, weight: float = 1.0) -> None:
        """Learn a whole order: the order total and every distinct item as an anchor.

        Duplicate lines of one item count once.
        """
        distinct = list(dict.fromkeys(items))
        self.learn_order_total(ts_ms, weight)  # checks the weight for the whole order
        learn = self._learn
        # One partner list for every anchor, changed by one slot between anchors (every item
        # but anchor i, in order: the previous anchor takes slot i - 1), not a new list per
        # anchor: O(n) per order instead of O(n^2). ``_learn`` never keeps or changes it.
        partners = distinct[1:]
        for i, anchor in enumerate(distinct):
            if i:
                partners[i - 1] = distinct[i - 1]
            learn(anchor, partners, ts_ms, weight)

    def learn_order_total(self, ts_ms: int, weight: float = 1.0) -> None:
        """Count one order (of ``weight``) at ``ts_ms`` in ``counts[TOTAL_KEY]``."""
        _check_weight(weight)
        counts = self._counts
        counts[TOTAL_KEY] = add_weight(counts.get(TOTAL_KEY), weight, ts_ms, self._half_life_ms)

    def learn_anchor(
        self,
        anchor: str,
        partners: Iterable[str],
        ts_ms: int,
        weight: float = 1.0,
        *,
        count_anchor: bool = True,
    ) -> None:
        """Learn one anchor's view of an order: the anchor, bought with ``partners`` at ``ts_ms``.

        ``weight`` scales the event (1.0 for a purchase; less for a secondary signal such as a
        co-cart in one session). It applies to the anchor's own count too, so confidences stay
        ratios of like quantities. The anchor itself and duplicates in ``partners`` are ignored.
        ``count_anchor=False`` adds the partners to an order the anchor was counted in already
        (a session's pseudo-order that grows click by click: :mod:`.sessions`).
        """
        _check_weight(weight)
        distinct = dict.fromkeys(partners)
        distinct.pop(anchor, None)
        self._learn(anchor, list(distinct), ts_ms, weight, count_anchor)

    def _learn(
        self, anchor: str, partners: list[str], ts_ms: int, weight: float,
        count_anchor: bool = True,
    ) -> None:
        items = self._items
        old = items.get(anchor)
        # The tables this update starts from, as stored: the rank caches follow an update
        # only from them (not after a rescale or a purge, see streamer.copurchase.ranking).
        base_pairs = base_triples = None
        if old is None:
            landmark = ts_ms
            count = 0.0
            pairs: dict[str, float] = {}
            pair_offset = 0.0
            triples: dict[str, float] = {}
            triple_offset = 0.0
            self._track_new_anchor()
        else:
            landmark = old.landmark_ms
            count = old.count
            pairs = old.partners
            pair_offset = old.partner_offset
            triples = old.triples
            triple_offset = old.triple_offset
            base_pairs, base_triples = pairs, triples
            if ts_ms - landmark > self._renormalise_ms:
                # Move the landmark forward so forward factors stay small; rescales this one
                # anchor's tables, at most once per RENORMALISE_HALF_LIVES half-lives.
                scale = math.exp((landmark - ts_ms) * self._ln2_per_ms)
                count *= scale
                pair_offset *= scale
                triple_offset *= scale
                pairs = {k: v * scale for k, v in pairs.items()}
                triples = {k: v * scale for k, v in triples.items()}
                landmark = ts_ms
                base_pairs = base_triples = None
        unit = math.exp((ts_ms - landmark) * self._ln2_per_ms)
        step = weight * unit
        if count_anchor:
            count += step
        if partners:
            # Copy (the stored value stays untouched), then update; unless the table is this
            # instance's own (in_place, see release). Comprehensions, not map(operator, ...)
            # pipelines: in CPython 3.11 their specialised float and dict bytecodes run faster
            # than map over C functions, and much faster than over bound methods such as
            # ``threshold.__le__`` (method-wrappers).
            own_pairs = self._own_pairs
            pairs, new_keys = _writable(own_pairs, anchor, pairs, partners)
            get = pairs.get
            grown = [get(p, 0.0) + step for p in partners]
            pairs.update(zip(partners, grown, strict=True))
            if len(pairs) > self._capacity:
                pairs, pair_offset = purge(pairs, pair_offset, self._capacity)
                if own_pairs is not None:
                    own_pairs[anchor] = pairs  # a new table
                self._partner_ranks.forget(anchor)
            elif base_pairs is not None:
                # new_keys: set when updated in place (base_pairs is pairs then; see grown).
                self._partner_ranks.grown(anchor, base_pairs, pairs, partners, new_keys)
            if len(grown) >= 2 and self._triple_partners >= 2 and count >= self._triple_gate * unit:
                threshold = self._triple_min_support * unit
                floor = self._triple_min_confidence * count
                if floor > threshold:
                    threshold = floor
                strong = _strongest(partners, grown, threshold, self._triple_partners)
                if len(strong) >= 2:
                    strong.sort()
                    keys = list(map(TRIPLE_SEPARATOR.join, combinations(strong, 2)))
                    own_triples = self._own_triples
                    triples, new_triples = _writable(own_triples, anchor, triples, keys)
                    tget = triples.get
                    triples.update(zip(keys, [tget(k, 0.0) + step for k in keys], strict=True))
                    if len(triples) > self._top_k_triples:
                        triples, triple_offset = purge(triples, triple_offset, self._top_k_triples)
                        if own_triples is not None:
                            own_triples[anchor] = triples
                        self._triple_ranks.forget(anchor)
                    elif base_triples is not None:
                        self._triple_ranks.grown(anchor, base_triples, triples, keys,
                                                 new_triples)
        items[anchor] = ItemStats(landmark, count, pairs, pair_offset, triples, triple_offset)
        # The anchor's popularity, readable by other anchors for lift: the same value, no read.
        self._counts[anchor] = Decayed(count, landmark)

    def recount(self) -> None:
        """Count the tracked anchors again on the next new one (after the mapping changed
        under this instance, e.g. partitions moved between workers)."""
        self._tracked = -1

    def _track_new_anchor(self) -> None:
        if self._max_partner_entries is None:
            return
        if self._tracked < 0:
            self._tracked = len(self._anchors)
        self._tracked += 1
        self._capacity = max(
            self._min_k, min(self._top_k, self._max_partner_entries // self._tracked)
        )

    # -- queries ----------------------------------------------------------------------------

    def item_count(self, item: str, now_ms: int) -> float:
        """Decayed number of orders holding ``item`` at ``now_ms`` (0.0 if never seen)."""
        # value_at, inlined (the same floats, as in candidates): every evaluation asks this.
        count = self._counts.get(item)
        if count is None:
            return 0.0
        return count.value * math.exp(min(count.landmark_ms - now_ms, 0) * self._ln2_per_ms)

    def order_total(self, now_ms: int) -> float:
        """Decayed number of orders at ``now_ms``."""
        return value_at(self._counts.get(TOTAL_KEY), now_ms, self._half_life_ms)

    def pair_count(self, anchor: str, partner: str, now_ms: int) -> float:
        """Decayed co-count of ``(anchor, partner)`` as tracked by the anchor (a lower bound
        short by at most :meth:`pair_error`; 0.0 if untracked)."""
        stats = self._items.get(anchor)
        if stats is None:
            return 0.0
        return stats.partners.get(partner, 0.0) * self._to_now(stats, now_ms)

    def pair_error(self, anchor: str, now_ms: int) -> float:
        """Heavy-hitter error bound of ``anchor``'s co-counts at ``now_ms``."""
        stats = self._items.get(anchor)
        if stats is None:
            return 0.0
        return stats.partner_offset * self._to_now(stats, now_ms)

    def partners(self, anchor: str) -> int:
        """Number of partners ``anchor`` currently tracks."""
        stats = self._items.get(anchor)
        return 0 if stats is None else len(stats.partners)

    def candidates(
        self,
        anchor: str,
        *,
        now_ms: int,
        max_pairs: int = 3,
        max_triples: int = 3,
        min_support: float = 0.0,
    ) -> list[Candidate]:
        """Candidate bundles for ``anchor`` at ``now_ms``, best score first.

        At most ``max_pairs`` 2-item and ``max_triples`` 3-item bundles (filter on
        ``len(c.items)`` to separate them). A pair needs ``support >= min_support``; a triple
        needs both of its pairs to (its own support is its tracked co-count, which starts only
        once both pairs are strong, so it may be lower). Pure: reads the mappings, writes
        nothing. An unknown anchor has no candidates.
        """
        stats = self._items.get(anchor)
        if stats is None or not stats.partners:
            return []
        to_now = self._to_now(stats, now_ms)
        n_anchor = stats.count * to_now
        if n_anchor <= 0.0:
            return []
        if min_support > 0.0:
            # A pair needs min_support, a triple two such pairs: when the heaviest partner
            # falls short, there is nothing to rank (the same empty answer, without ranking a
            # table; most anchors of a large catalogue are such). max() over the floats runs
            # in C; the rank cache has it at hand when warm.
            partners = stats.partners
            heaviest = self._partner_ranks.heaviest_weight(anchor, partners)
            if heaviest is None:
                heaviest = max(partners.values())
            if heaviest * to_now < min_support:
                return []
        count_of = self._counts.get
        ln2_per_ms = self._ln2_per_ms
        exp = math.exp
        # order_total(now_ms), inlined as the partners' counts below.
        count = count_of(TOTAL_KEY)
        total = 0.0 if count is None else (
            count.value * exp(min(count.landmark_ms - now_ms, 0) * ln2_per_ms))
        if total < n_anchor:
            total = n_anchor
        m = self._prior_strength
        denominator = n_anchor + m
        pool_size = max(4 * max_pairs, 3 + max_triples, 8)
        pool = self._partner_ranks.heaviest(anchor, stats.partners, pool_size)
        pair_score: dict[str, tuple[float, float, float]] = {}
        scores: dict[str, float] = {}
        for partner, raw in pool:
            support = raw * to_now
            if support < min_support:
                # The pool is heaviest first, and scaling by to_now keeps that order: every
                # partner after this one falls short too (about half of the dozen, in steady
                # state on throughput.py's purchases).
                break
            # value_at(count, now_ms) / total, inlined (the same arithmetic, so the same
            # floats): two calls fewer per partner, on every revision's dozen partners.
            count = count_of(partner)
            base = 0.0 if count is None else (
                count.value * exp(min(count.landmark_ms - now_ms, 0) * ln2_per_ms) / total)
            score = (support + m * base) / denominator
            pair_score[partner] = (support, base, score)
            scores[partner] = score
        # By score, ties in pool order (a stable sort); the key a C method, not a lambda.
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        out = []
        for partner in ranked[:max_pairs]:
            support, base, score = pair_score[partner]
            out.append(Candidate((anchor, partner), support, min(support / n_anchor, 1.0),
                                 support / n_anchor / base if base > 0.0 else 0.0, score))
        if max_triples > 0 and len(pair_score) >= 2:
            out.extend(
                self._triple_candidates(
                    anchor, stats, pair_score, ranked, to_now, n_anchor, max_triples
                )
            )
        out.sort(key=_SCORE, reverse=True)
        return out

    def _triple_candidates(
        self,
        anchor: str,
        stats: ItemStats,
        pair_score: dict[str, tuple[float, float, float]],
        ranked: list[str],
        to_now: float,
        n_anchor: float,
        max_triples: int,
    ) -> list[Candidate]:
        # Tracked triples, plus pairs of the best partners (whose only evidence may be their
        # pairs, e.g. for a young anchor), all scored the same way.
        keys: set[tuple[str, str]] = set()
        tops = self._triple_ranks.heaviest(anchor, stats.triples, 4 * max_triples)
        for key, _ in tops:
            b, _, c = key.partition(TRIPLE_SEPARATOR)
            if b in pair_score and c in pair_score:
                keys.add((b, c))
        best = sorted(ranked[: 2 + max_triples])
        keys.update(combinations(best, 2))
        m = self._prior_strength
        denominator = n_anchor + m
        triples = stats.triples
        # Scored first, Candidates built for the winners only. Ties as before: nlargest is
        # stable.
        scored: list[tuple[float, str, str, float]] = []
        for b, c in sorted(keys):  # sets iterate in salted-hash order; ties must not
            support = triples.get(b + TRIPLE_SEPARATOR + c, 0.0) * to_now
            scored.append(((support + m * pair_score[b][2] * pair_score[c][2]) / denominator,
                           b, c, support))
        out = []
        for score, b, c, support in nlargest(max_triples, scored, key=_FIRST):
            confidence = min(support / n_anchor, 1.0)
            independent = pair_score[b][1] * pair_score[c][1]
            out.append(Candidate((anchor, b, c), support, confidence,
                                 confidence / independent if independent > 0.0 else 0.0, score))
        return out

    def _to_now(self, stats: ItemStats, now_ms: int) -> float:
        # Not extrapolated back before the landmark (a late event's time): see value_at.
        return math.exp(min(stats.landmark_ms - now_ms, 0) * self._ln2_per_ms)


def _writable(
    own: dict[str, dict[str, float]] | None, anchor: str, table: dict[str, float],
    keys: list[str],
) -> tuple[dict[str, float], set[str] | None]:
    """The table to update with ``keys``: ``table`` itself when it is ``anchor``'s in ``own``
    (made by this learner since its last release), with the keys new to it (for the rank
    cache); else a copy, recorded in ``own`` (None: no in-place learning), and None."""
    if own is None or own.get(anchor) is not table:
        table = table.copy()
        if own is not None:
            own[anchor] = table
        return table, None
    return table, {k for k in keys if k not in table}


def _strongest(
    partners: list[str], weights: list[float], threshold: float, most: int
) -> list[str]:
    """The partners whose weight reaches ``threshold``; when more than ``most`` do, the
    ``most`` heaviest of them, ties going to the partners listed first (any order out).

    >>> _strongest(["a", "b", "c", "d"], [3.0, 1.0, 2.0, 2.0], 1.5, 2)
    ['a', 'c']
    >>> big = [f"p{i}" for i in range(100)]
    >>> _strongest(big, [1.0] * 50 + [2.0] * 50, 1.5, 3), len(_strongest(big, [1.0] * 100, 1, 8))
    (['p50', 'p51', 'p52'], 8)
    """
    n = len(weights)
    if n <= most:
        return [p for p, w in zip(partners, weights, strict=True) if w >= threshold]
    # cut: the most-th largest weight. When it reaches the threshold, the answer is the `most`
    # heaviest (all at or above the cut, unless ties at it overflow); else fewer than `most`
    # reach the threshold, and the answer is all of them. A big order (an anchor in it may
    # have hundreds of partners over the threshold) finds the cut with numpy's O(n) selection.
    if n < _NUMPY_FROM:
        cut = sorted(weights)[n - most]
    else:
        cut = float(np.partition(np.fromiter(weights, np.float64, n), n - most)[n - most])
    if cut < threshold:
        return [p for p, w in zip(partners, weights, strict=True) if w >= threshold]
    strong = [p for p, w in zip(partners, weights, strict=True) if w >= cut]
    if len(strong) > most:
        strong = [p for p, w in zip(partners, weights, strict=True) if w > cut]
        ties = [p for p, w in zip(partners, weights, strict=True) if w == cut]
        strong += ties[: most - len(strong)]
    return strong


def _check_weight(weight: float) -> None:
    if not (weight > 0.0 and math.isfinite(weight)):
        raise ValueError(f"weight must be positive and finite, got {weight}")
