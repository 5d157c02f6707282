"""Baseline bundle methods for the prequential evaluation, behind one protocol.

Every method answers, for an anchor item at a moment, which partners it would offer with it:
one partner for a 2-item bundle and two for a 3-item bundle (:class:`Offer`), and learns
each order *after* it has been scored (:class:`BundleMethod`). The evaluation runs
``streamer`` itself and these baselines on the same orders in the same pass:

- :class:`PopularityBaseline` (``popularity``): the most bought items other than the anchor.
- :class:`CoCountBaseline` (``cooc_count``): the anchor's partners by undecayed co-count.
- :class:`CoLiftBaseline` (``cooc_lift``): by undecayed lift, among partners with at least
  ``min_support`` co-purchases.
- :class:`FrozenRulesBaseline` (``frozen_rules``): association rules mined once with mlxtend's
  FP-growth on an early slice of orders, then frozen.
- :class:`RandomPartnerBaseline` (``random``): a random partner among those ever bought with
  the anchor (seeded).

The count-based baselines read one shared :class:`CoOccurrence` table, which learns each order
once however many baselines read it. Triples are the natural extension of each method: its two
best partners (two random partners for ``random``).

>>> counts = CoOccurrence()
>>> by_count = CoCountBaseline(counts)
>>> for n, basket in enumerate([["tea", "cup"], ["tea", "cup", "milk"], ["tea", "milk"],
...                             ["tea", "cup"]]):
...     by_count.learn(Order(n, f"o{n}", n, tuple(basket), {}))
>>> by_count.offer("tea", now_ms=5)
Offer(pair=('cup',), triple=('cup', 'milk'))
>>> PopularityBaseline(counts).offer("cup", now_ms=5)
Offer(pair=('tea',), triple=('tea', 'milk'))
>>> by_count.offer("bread", now_ms=5)
Offer(pair=None, triple=None)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from streamer.events import PurchaseEvent

__all__ = [
    "BundleMethod",
    "CoCountBaseline",
    "CoLiftBaseline",
    "CoOccurrence",
    "FrozenRulesBaseline",
    "Offer",
    "Order",
    "PopularityBaseline",
    "RandomPartnerBaseline",
    "mine_rules",
]

Partners = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Order:
    """One purchase as the evaluation sees it.

    ``seq`` numbers orders in event-time order (0, 1, ...); ``items`` are the distinct items in
    order of first appearance; ``revenue`` maps an item to what was paid for it in this order
    (quantity x unit price over its lines; empty when the data has no prices); ``purchase`` is
    the original event, for methods that learn from it (streamer's engine).
    """

    seq: int
    order_id: str
    ts: int
    items: tuple[str, ...]
    revenue: Mapping[str, float]
    purchase: PurchaseEvent | None = field(default=None, compare=False, repr=False)


class Offer(NamedTuple):
    """Partners a method offers with an anchor: one for a 2-item bundle, two for a 3-item one
    (``None``: no offer of that size)."""

    pair: Partners | None
    triple: Partners | None


NO_OFFER = Offer(None, None)


class BundleMethod(Protocol):
    """A bundle method under prequential evaluation: scored first, then taught the order.

    ``offers`` is ``offer`` for every anchor of one order at once, on the same state (the
    evaluation calls it, so a method can answer for a whole basket in one vectorised step).
    """

    name: str

    def learn(self, order: Order) -> None: ...

    def offer(self, anchor: str, now_ms: int) -> Offer: ...

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]: ...

    def describe(self) -> dict[str, Any]:
        """Parameters and facts to report (thresholds, seeds, coverage of a rule set, ...)."""
        ...


class CoOccurrence:
    """Undecayed order counts per item and co-counts per item pair, as one sparse row per item.

    Items get a position when first bought (0, 1, ...). An item's row holds the positions of
    the items ever bought with it, ascending, and their co-counts: memory grows with the pairs
    actually co-bought, not with the square of the catalogue (a dense int32 matrix needed 1 GiB
    at 16,384 items), and a query reads only its anchors' rows, whatever the catalogue size.
    Ascending positions make the first of equal scores the item first bought earlier: the
    baselines' tie-break. ``learn`` is idempotent per order ``seq``, so several baselines can
    share one table.

    >>> co = CoOccurrence()
    >>> co.learn(Order(0, "o0", 0, ("a", "b"), {}))
    >>> co.learn(Order(0, "o0", 0, ("a", "b"), {}))   # the same order again: counted once
    >>> co.learn(Order(1, "o1", 1, ("c", "a"), {}))
    >>> co.orders, co.pair_count("a", "b"), co.item_count("a"), co.item_count("zzz")
    (2, 1, 2, 0)
    >>> positions, counts = co.partners("a")
    >>> [co.names[p] for p in positions], counts.tolist(), co.most_bought
    (['b', 'c'], [1, 1], ['a', 'b', 'c'])
    """

    def __init__(self, *, capacity: int = 1024) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        #: Orders per item position (the first ``size`` entries are meaningful).
        self.items: npt.NDArray[np.int64] = np.zeros(capacity, dtype=np.int64)
        self.orders = 0
        self._partners: list[npt.NDArray[np.int32]] = []
        self._counts: list[npt.NDArray[np.int32]] = []
        self._top: list[int] = []
        self._last_seq = -1

    @property
    def size(self) -> int:
        """Number of distinct items seen."""
        return len(self.names)

    @property
    def most_bought(self) -> list[str]:
        """The three items in most orders (ties: first bought earlier), kept as orders are
        learned: sorting every count for each query would cost the whole catalogue per order."""
        return [self.names[i] for i in self._top]

    def learn(self, order: Order) -> None:
        if order.seq <= self._last_seq:
            return
        self._last_seq = order.seq
        self.orders += 1
        idx = [self._position(i) for i in order.items]
        self.items[idx] += 1
        self._rank(idx)
        if len(idx) >= 2:
            basket = np.sort(np.asarray(idx, dtype=np.int32))
            for a in idx:
                self._add(a, basket[basket != a])  # an item is not its own partner

    def _position(self, item: str) -> int:
        i = self.index.get(item)
        if i is None:
            i = len(self.names)
            if i >= len(self.items):
                self.items = np.concatenate([self.items, np.zeros_like(self.items)])
            self.index[item] = i
            self.names.append(item)
            self._partners.append(_NO_POSITIONS)
            self._counts.append(_NO_POSITIONS)
        return i

    def _add(self, a: int, others: npt.NDArray[np.int32]) -> None:
        """One more co-purchase of ``a`` with each of ``others`` (ascending, distinct)."""
        positions, counts = self._partners[a], self._counts[a]
        if len(positions) == 0:
            self._partners[a], self._counts[a] = others, np.ones(len(others), dtype=np.int32)
            return
        at = np.searchsorted(positions, others)
        known = positions[np.minimum(at, len(positions) - 1)] == others
        counts[at[known]] += 1
        if not known.all():
            new = ~known
            fresh = others[new]
            # Where each new partner lands in the grown row, worked out once for both arrays:
            # np.insert on each took 13.2 s instead of 9.5 s to learn UCI Online Retail.
            slots = at[new] + np.arange(len(fresh))
            old = np.ones(len(positions) + len(fresh), dtype=bool)
            old[slots] = False
            grown, grown_counts = np.empty_like(old, dtype=np.int32), np.ones_like(old, np.int32)
            grown[old], grown[slots] = positions, fresh
            grown_counts[old] = counts
            self._partners[a], self._counts[a] = grown, grown_counts

    def _rank(self, sold: list[int]) -> None:
        """Keep ``_top`` the three most bought positions (ties: earlier first) once ``sold``
        were counted: counts only grow, so an item outside the top can only enter it by selling.
        """
        items = self.items
        self._top = heapq.nsmallest(
            3, set(self._top).union(sold), key=lambda j: (-int(items[j]), j)
        )

    def item_count(self, item: str) -> int:
        i = self.index.get(item)
        return 0 if i is None else int(self.items[i])

    def pair_count(self, a: str, b: str) -> int:
        i, j = self.index.get(a), self.index.get(b)
        if i is None or j is None:
            return 0
        positions = self._partners[i]
        at = int(np.searchsorted(positions, j))
        found = at < len(positions) and positions[at] == j
        return int(self._counts[i][at]) if found else 0

    def partners(self, item: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """Positions of the items bought with ``item``, ascending, and their co-counts (both
        empty for an unknown item): the table's own arrays, to read, never to modify."""
        i = self.index.get(item)
        if i is None:
            return _NO_POSITIONS, _NO_POSITIONS
        return self._partners[i], self._counts[i]


_NO_POSITIONS: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
_NO_POSITIONS.flags.writeable = False


def _best_two(
    positions: npt.NDArray[np.int32],
    scores: npt.NDArray[np.int32] | npt.NDArray[np.float64],
    names: list[str],
) -> Offer:
    """The best and the second-best partner by score among ``positions`` (ascending); ties go
    to the earlier position (an item first bought earlier), so results are deterministic.

    >>> _best_two(np.array([0, 1, 2]), np.array([1.0, 3.0, 3.0]), ["x", "y", "z"])
    Offer(pair=('y',), triple=('y', 'z'))
    """
    if len(positions) == 0:
        return NO_OFFER
    # argmax returns the first of equal maxima: that is the tie-break.
    first = int(scores.argmax())
    b = names[positions[first]]
    if len(positions) == 1:
        return Offer((b,), None)
    rest = scores.astype(np.float64, copy=True)
    rest[first] = -np.inf
    return Offer((b,), (b, names[positions[int(rest.argmax())]]))


class _SharedCountsMethod:
    """A baseline reading a shared :class:`CoOccurrence`; ``offer`` is ``offers`` of one."""

    name = "baseline"

    def __init__(self, counts: CoOccurrence) -> None:
        self.counts = counts

    def learn(self, order: Order) -> None:
        self.counts.learn(order)

    def offer(self, anchor: str, now_ms: int) -> Offer:
        return self.offers([anchor], now_ms)[0]

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


class CoCountBaseline(_SharedCountsMethod):
    """``cooc_count``: the anchor's most frequent partners, undecayed (ties: earlier item)."""

    name = "cooc_count"

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        names = self.counts.names
        out = []
        for anchor in anchors:
            positions, counts = self.counts.partners(anchor)
            out.append(_best_two(positions, counts, names))
        return out


class CoLiftBaseline(_SharedCountsMethod):
    """``cooc_lift``: the anchor's partners by lift ``c_ab * N / (n_a * n_b)``, undecayed, among
    partners bought with it at least ``min_support`` times (lift alone crowns one-off pairs).

    >>> co = CoOccurrence()
    >>> lift = CoLiftBaseline(co, min_support=2)
    >>> for n, b in enumerate([["a", "pop"], ["a", "pop"], ["a", "rare"], ["a", "rare"],
    ...                        ["pop", "x"], ["pop", "y"], ["a", "one"]]):
    ...     lift.learn(Order(n, f"o{n}", n, tuple(b), {}))
    >>> lift.offer("a", now_ms=9)   # "rare" lifts more than "pop"; "one" lacks support
    Offer(pair=('rare',), triple=('rare', 'pop'))
    """

    name = "cooc_lift"

    def __init__(self, counts: CoOccurrence, *, min_support: int = 3) -> None:
        if min_support < 1:
            raise ValueError("min_support must be at least 1: partners are items bought with it")
        super().__init__(counts)
        self.min_support = min_support

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        names, bought = self.counts.names, self.counts.items
        out = []
        for anchor in anchors:
            positions, counts = self.counts.partners(anchor)
            supported = counts >= self.min_support
            positions, counts = positions[supported], counts[supported]
            # For one anchor, lift ranks exactly as c_ab / n_b (N and n_a are constant in a row).
            out.append(_best_two(positions, counts / bought[positions], names))
        return out

    def describe(self) -> dict[str, Any]:
        return {"min_support": self.min_support}


class PopularityBaseline(_SharedCountsMethod):
    """``popularity``: the most bought items (by number of orders) other than the anchor."""

    name = "popularity"

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        ranked = self.counts.most_bought
        out = []
        for anchor in anchors:
            partners = [b for b in ranked if b != anchor][:2]
            out.append(
                Offer(
                    (partners[0],) if partners else None,
                    tuple(partners) if len(partners) == 2 else None,
                )
            )
        return out


class RandomPartnerBaseline(_SharedCountsMethod):
    """``random``: uniformly random partners among items ever bought with the anchor, from a
    seeded generator (same seed, same data: same offers).

    >>> co = CoOccurrence()
    >>> rnd = RandomPartnerBaseline(co, seed=1)
    >>> rnd.learn(Order(0, "o0", 0, ("a", "b", "c"), {}))
    >>> offer = rnd.offer("a", now_ms=1)
    >>> offer.pair[0] in {"b", "c"}, sorted(offer.triple)
    (True, ['b', 'c'])
    """

    name = "random"

    def __init__(self, counts: CoOccurrence, *, seed: int = 0) -> None:
        super().__init__(counts)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        names = self.counts.names
        out = []
        for anchor in anchors:
            partners, _ = self.counts.partners(anchor)
            if len(partners) == 0:
                out.append(NO_OFFER)
                continue
            picked = self._rng.choice(partners, size=min(2, len(partners)), replace=False)
            out.append(
                Offer(
                    (names[picked[0]],),
                    (names[picked[0]], names[picked[1]]) if len(picked) == 2 else None,
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed}


# -- frozen association rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules as the baseline uses them, ranked per anchor (confidence, then lift, then support,
    then consequent name): the consequents of its two best rules ``{anchor} -> {b}`` and of its
    best rule ``{anchor} -> {b, c}``."""

    pairs: dict[str, tuple[str, ...]]
    triple: dict[str, Partners]
    min_support: float
    min_confidence: float
    itemsets: int
    rules: int

    def pair(self, anchor: str) -> Partners | None:
        best = self.pairs.get(anchor)
        return None if not best else best[:1]


def mine_rules(
    baskets: Sequence[Sequence[str]], *, min_support: float, min_confidence: float
) -> RuleSet:
    """Mine rules with one antecedent item and one or two consequent items from ``baskets``
    with mlxtend's FP-growth (itemsets of at most 3 items); confidence and lift as mlxtend's
    ``association_rules`` defines them.

    ``min_support`` is a share of the baskets, ``min_confidence`` the rule confidence floor.
    Cost grows steeply as ``min_support`` falls (on 1,400 UCI Online Retail baskets: about 1 s
    at 0.008, 30 s at 0.004, minutes at 0.002).

    >>> rules = mine_rules([["a", "b"], ["a", "b", "c"], ["a", "c"], ["a", "b", "c"]],
    ...                    min_support=0.5, min_confidence=0.5)
    >>> rules.pairs["a"], rules.triple["a"], rules.pair("c")
    (('b', 'c'), ('b', 'c'), ('a',))
    """
    return _MinedRules.mine(baskets, min_support).select(min_confidence)


@dataclass(frozen=True, slots=True)
class _MinedRules:
    """All one-antecedent rules at one support threshold, best first per (anchor, size), so
    several confidence floors can be tried without mining again."""

    min_support: float
    itemsets: int
    ranked: dict[tuple[str, int], list[tuple[float, float, float, Partners]]]

    @classmethod
    def mine(cls, baskets: Sequence[Sequence[str]], min_support: float) -> _MinedRules:
        import pandas as pd
        from mlxtend.frequent_patterns import fpgrowth
        from mlxtend.preprocessing import TransactionEncoder

        distinct = [list(dict.fromkeys(b)) for b in baskets if b]
        if not distinct:
            return cls(min_support, 0, {})
        encoder = TransactionEncoder()
        onehot = pd.DataFrame(encoder.fit(distinct).transform(distinct), columns=encoder.columns_)
        itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True, max_len=3)
        if itemsets.empty or itemsets["itemsets"].map(len).max() < 2:
            return cls(min_support, len(itemsets), {})
        # The one-antecedent rules of every frequent itemset, with mlxtend's definitions
        # (support of the whole itemset, confidence = support / support(antecedent), lift =
        # confidence / support(consequent)), built straight from the itemsets' supports:
        # mlxtend's association_rules also builds every multi-antecedent rule, which on whole
        # UCI orders (up to 1,110 items) took over half an hour and gigabytes; this takes
        # seconds. Every subset of a frequent itemset is frequent, so each lookup succeeds.
        support_of = dict(zip(itemsets["itemsets"], itemsets["support"], strict=True))
        ranked: dict[tuple[str, int], list[tuple[float, float, float, Partners]]] = {}
        for itemset, support in support_of.items():
            if len(itemset) < 2:
                continue
            for anchor in itemset:
                consequent = itemset - {anchor}
                confidence = support / support_of[frozenset((anchor,))]
                lift = confidence / support_of[consequent]
                # Negated so that an ascending sort ranks by confidence, lift, support, then name.
                ranked.setdefault((anchor, len(consequent)), []).append(
                    (-float(confidence), -float(lift), -float(support), tuple(sorted(consequent)))
                )
        for found in ranked.values():
            found.sort()
        return cls(min_support, len(itemsets), ranked)

    def select(self, min_confidence: float) -> RuleSet:
        pairs: dict[str, tuple[str, ...]] = {}
        triple: dict[str, Partners] = {}
        rules = 0
        for (anchor, size), found in self.ranked.items():
            kept = [r for r in found if -r[0] >= min_confidence]
            rules += len(kept)
            if not kept:
                continue
            if size == 1:
                pairs[anchor] = tuple(r[3][0] for r in kept[:2])
            else:
                triple[anchor] = kept[0][3]
        return RuleSet(pairs, triple, self.min_support, min_confidence, self.itemsets, rules)


class FrozenRulesBaseline:
    """``frozen_rules``: association rules mined once on the first ``train_orders`` orders
    (all orders, whatever their size, in event-time order) and frozen.

    Until then it offers nothing (those anchors count as misses, like any silence). When the
    last training order has been learned, thresholds are tuned **on the training slice only**:
    rules mined on its first 70% with each ``(min_support, min_confidence)`` of the grid are
    scored on the 2-item bundle hit rate of its last 30% (all anchor occurrences of orders with
    two or more items), and the winner is mined again on the whole slice. For a 3-item bundle it
    offers the best ``{anchor} -> {b, c}`` rule, else the consequents of its two best
    ``{anchor} -> {b}`` rules (the natural extension when no 3-itemset is frequent).

    The support grid reaches down to 0.3% of the baskets. Lower supports find more rules
    (coverage) and FP-growth's cost grows steeply as support falls: on UCI Online Retail the
    tuning picks the lowest support, 0.003 (0.212 / 0.084 bundle hit rates, against 0.162 /
    0.063 when 0.006 was the floor), and the evaluation spends most of its rules time there;
    0.002 was not tried (minutes per mining).

    >>> frozen = FrozenRulesBaseline(train_orders=4, support_grid=(0.5,),
    ...                              confidence_grid=(0.5,))
    >>> for n, b in enumerate([["a", "b"], ["a", "b"], ["a", "c"], ["a", "b"], ["a", "c"]]):
    ...     frozen.learn(Order(n, f"o{n}", n, tuple(b), {}))
    >>> frozen.offer("a", now_ms=9), frozen.offer("c", now_ms=9)
    (Offer(pair=('b',), triple=None), Offer(pair=None, triple=None))
    """

    name = "frozen_rules"

    def __init__(
        self,
        *,
        train_orders: int,
        support_grid: Iterable[float] = (0.003, 0.004, 0.006, 0.008, 0.011, 0.015, 0.02, 0.03),
        confidence_grid: Iterable[float] = (0.0, 0.05, 0.1, 0.2),
        min_support_orders: int = 2,
        max_basket_items: int = 200,
    ) -> None:
        self.train_orders = train_orders
        # FP-growth's cost grows combinatorially with basket size: on whole UCI orders (up to
        # 1,110 items) one mining ran for over ten minutes and gigabytes without finishing. The
        # rules are mined on each training basket's first ``max_basket_items`` distinct items
        # (the wire schema's order limit); they are applied to whole orders like every method.
        self.max_basket_items = max_basket_items
        self.support_grid = tuple(support_grid)
        self.confidence_grid = tuple(confidence_grid)
        # A rule seen in fewer orders than this is no rule (a share of a tiny slice may be 1).
        self.min_support_orders = min_support_orders
        self._baskets: list[tuple[str, ...]] = []
        self.rules: RuleSet | None = None
        self.tuning: list[dict[str, float]] = []

    def learn(self, order: Order) -> None:
        if self.rules is not None:
            return
        self._baskets.append(order.items[: self.max_basket_items])
        if len(self._baskets) >= self.train_orders:
            self._freeze()

    def _freeze(self) -> None:
        baskets = self._baskets
        cut = max(1, int(len(baskets) * 0.7))
        fit, check = baskets[:cut], baskets[cut:]
        best: tuple[float, float, float] | None = None
        for s in self.support_grid:
            mined = _MinedRules.mine(fit, min(1.0, max(s, self.min_support_orders / len(fit))))
            for c in self.confidence_grid:
                rules = mined.select(c)
                hits = anchors = 0
                for basket in check:
                    if len(basket) < 2:
                        continue
                    bought = set(basket)
                    for anchor in basket:
                        anchors += 1
                        p = rules.pair(anchor)
                        hits += p is not None and p[0] in bought
                rate = hits / anchors if anchors else 0.0
                self.tuning.append({"min_support": s, "min_confidence": c, "hit_rate": rate})
                if best is None or rate > best[0]:
                    best = (rate, s, c)
        assert best is not None
        _, s, c = best
        self.rules = mine_rules(
            baskets,
            min_support=min(1.0, max(s, self.min_support_orders / len(baskets))),
            min_confidence=c,
        )
        self._baskets = []

    def offer(self, anchor: str, now_ms: int) -> Offer:
        rules = self.rules
        if rules is None:
            return NO_OFFER
        pair = rules.pair(anchor)
        triple = rules.triple.get(anchor)
        if triple is None:
            # No frequent 3-itemset for the anchor: join its two best single rules, if any.
            best = rules.pairs.get(anchor, ())
            triple = best if len(best) == 2 else None
        return Offer(pair, triple)

    def offers(self, anchors: Sequence[str], now_ms: int) -> list[Offer]:
        return [self.offer(a, now_ms) for a in anchors]

    def describe(self) -> dict[str, Any]:
        rules = self.rules
        return {
            "train_orders": self.train_orders,
            "max_basket_items": self.max_basket_items,
            "min_support": None if rules is None else rules.min_support,
            "min_confidence": None if rules is None else rules.min_confidence,
            "itemsets": None if rules is None else rules.itemsets,
            "rules": None if rules is None else rules.rules,
            "anchors_with_pair_rule": None if rules is None else len(rules.pairs),
            "anchors_with_triple_rule": None if rules is None else len(rules.triple),
            "tuning": self.tuning,
        }
