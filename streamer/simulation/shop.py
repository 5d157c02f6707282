"""A simulated storefront: shoppers who view items, see offers, click, and buy.

The :class:`Catalogue` is the ground truth the policy never sees:

- **Complementarity.** Items come in *kits* of ``kit_size`` items that go together (strong
  pairwise affinity in ``[0.5, 1]``), and each item also has ``weak_complements`` loose partners
  (affinity in ``[0.1, 0.3]``). A pair's appeal grows with the pair's affinity; a 3-item
  bundle's with the anchor's affinity to both partners *and* the partners' affinity to each
  other, so a whole kit beats two unrelated complements. The shopper came for the anchor: a
  triple with a partner that does not go with it is no kit of the anchor's, whatever that
  partner goes with, and appeals as an impulse buy does (as a pair of unrelated items does).
- **Price sensitivity per segment.** A shopper belongs to a :class:`Segment`; a discount of
  ``d`` percent multiplies the take-rate by ``exp(price_sensitivity * d)``. Revenue
  ``(1 - d/100) * exp(s * d)`` peaks at ``d = 100 - 1/s``: loyal shoppers (``s = 0.002``) are
  best served at full price, bargain hunters (``s = 0.03``) at the deepest discount.
- **Popularity** follows a Zipf law over a random ranking of the items.
- **Drift.** With ``drift_at_ms`` set, a second season starts then: a ``drift_share`` of the
  kits is dissolved and its items regrouped, and the same share of the popularity ranks is
  reshuffled.

:class:`SimulatedShop` turns the truth into schema events, as a real storefront reports them:
each session views an anchor, maybe shows an offer variant sampled with its published
probability (an ``offer_impression`` with that ``propensity``), maybe clicks and buys the
bundle through it, and otherwise may buy organically (a basket of the anchor and some of its
current complements: what the co-purchase statistics learn from).

>>> import random
>>> shop = SimulatedShop(Catalogue.generate(50, seed=1), seed=2)
>>> events = shop.session(now_ms=1_700_000_000_000, offer_for=lambda anchor, rng: None)
>>> events[0].kind
'view'
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamer.events import ClickEvent, OrderLine, PurchaseEvent
from streamer.offers import Choice

OfferLookup = Callable[[str, random.Random], Choice | None]
Event = ClickEvent | PurchaseEvent

#: Take-rate of a bundle whose items do not go together at all (an impulse buy).
BASE_APPEAL = 0.01
#: Take-rate added per unit of affinity between the anchor and a partner.
AFFINITY_GAIN = 0.30
#: Take-rate added to a 3-item bundle per unit of affinity between its two partners (both of
#: which go with the anchor: a kit around the anchor, not one beside it).
TRIPLE_SYNERGY = 0.15
#: A 3-item bundle is a bigger commitment: its appeal is scaled down by this factor. At 0.45 a
#: whole kit earns about as much as the kit's best pair on average (three prices, fewer takers),
#: so which one the oracle picks depends on the items' prices and affinities: about 30 % of
#: (anchor, segment) pairs get a triple at the defaults, the rest a pair.
TRIPLE_FACTOR = 0.45
#: No bundle is taken with certainty.
MAX_TAKE = 0.95


@dataclass(frozen=True, slots=True)
class Segment:
    """A kind of shopper: its share of sessions and its price sensitivity (per discount point:
    a ``d`` percent discount multiplies the take-rate by ``exp(price_sensitivity * d)``)."""

    name: str
    share: float
    price_sensitivity: float


#: Loyal shoppers are best served at full price, regular ones at about 5 %, bargain hunters at
#: the deepest discount (among 0/5/10/15 %).
DEFAULT_SEGMENTS: tuple[Segment, ...] = (
    Segment("loyal", 0.4, 0.002),
    Segment("regular", 0.4, 0.0105),
    Segment("bargain", 0.2, 0.03),
)


@dataclass(frozen=True, slots=True)
class Season:
    """One season's truth: symmetric sparse affinities and popularity.

    ``affinity[a][b] == affinity[b][a]`` in ``(0, 1]`` for complements, absent otherwise;
    ``cumulative_popularity`` is aligned with :attr:`Catalogue.items`.
    """

    affinity: Mapping[str, Mapping[str, float]]
    cumulative_popularity: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Items, list prices, segments and the seasons of ground truth.

    Reward of a bundle bought through an offer is its margin: the discounted price paid minus
    ``cost_ratio`` times its list price (``cost_ratio = 0``: revenue). Pure and immutable; the
    same ``generate`` arguments always give an equal catalogue.

    >>> cat = Catalogue.generate(30, seed=3, drift_at_ms=1_000)
    >>> cat == Catalogue.generate(30, seed=3, drift_at_ms=1_000)
    True
    >>> cat.season_at(999), cat.season_at(1_000)
    (0, 1)
    >>> anchor = cat.items[0]
    >>> best = cat.complements(anchor, now_ms=0)[0]
    >>> cat.appeal((anchor, best), now_ms=0) > cat.appeal((anchor, anchor), now_ms=0)
    True
    """

    items: tuple[str, ...]
    prices: Mapping[str, float]
    seasons: tuple[Season, ...]
    segments: tuple[Segment, ...] = DEFAULT_SEGMENTS
    drift_at_ms: int | None = None
    cost_ratio: float = 0.0

    @classmethod
    def generate(
        cls,
        size: int,
        *,
        seed: int = 7,
        kit_size: int = 4,
        weak_complements: int = 1,
        zipf_exponent: float = 0.9,
        drift_at_ms: int | None = None,
        drift_share: float = 0.5,
        segments: Sequence[Segment] = DEFAULT_SEGMENTS,
        cost_ratio: float = 0.0,
    ) -> Catalogue:
        """A random catalogue of ``size`` items, deterministic per ``seed``.

        Raises ``ValueError`` for fewer items than a kit needs, a ``drift_share`` outside
        ``[0, 1]``, a ``cost_ratio`` outside ``[0, 1)`` or segment shares not summing to 1.
        """
        if size < max(kit_size, 2) + 1 or kit_size < 2:
            raise ValueError("need kit_size >= 2 and more items than a kit")
        if not 0.0 <= drift_share <= 1.0:
            raise ValueError("drift_share must be within [0, 1]")
        if not 0.0 <= cost_ratio < 1.0:
            raise ValueError("cost_ratio must be within [0, 1)")
        if abs(sum(s.share for s in segments) - 1.0) > 1e-9:
            raise ValueError("segment shares must sum to 1")
        rng = random.Random(seed)
        items = tuple(f"sku-{i:05d}" for i in range(size))
        prices = {i: round(rng.lognormvariate(2.5, 0.6), 2) for i in items}
        ranks = list(range(size))
        rng.shuffle(ranks)
        kits = _kits(list(items), kit_size, rng)
        first = Season(
            _affinity(kits, items, weak_complements, rng), _popularity(ranks, zipf_exponent)
        )
        seasons = [first]
        if drift_at_ms is not None:
            # Dissolve a share of the kits and regroup their items: those anchors' best
            # bundles change, the others' stay, as when a season changes what goes together.
            moved = set(rng.sample(range(len(kits)), round(drift_share * len(kits))))
            kept = [k for n, k in enumerate(kits) if n not in moved]
            loose = [i for n, k in enumerate(kits) if n in moved for i in k]
            rng.shuffle(loose)
            regrouped = _kits(loose, kit_size, rng) if len(loose) >= kit_size else [loose]
            shifted = list(ranks)
            chosen = rng.sample(range(size), round(drift_share * size))
            permuted = [ranks[i] for i in chosen]
            rng.shuffle(permuted)
            for i, r in zip(chosen, permuted, strict=True):
                shifted[i] = r
            seasons.append(
                Season(
                    _affinity(kept + regrouped, items, weak_complements, rng),
                    _popularity(shifted, zipf_exponent),
                )
            )
        return cls(items, prices, tuple(seasons), tuple(segments), drift_at_ms, cost_ratio)

    # -- the truth at a point in time ------------------------------------------------------
    def season_at(self, now_ms: int) -> int:
        """Index of the season in force at ``now_ms``."""
        if self.drift_at_ms is None or now_ms < self.drift_at_ms or len(self.seasons) < 2:
            return 0
        return 1

    def affinity(self, a: str, b: str, now_ms: int) -> float:
        """How much ``a`` and ``b`` go together (0: not at all, 1: made for each other)."""
        return self.seasons[self.season_at(now_ms)].affinity.get(a, {}).get(b, 0.0)

    def complements(self, anchor: str, now_ms: int) -> tuple[str, ...]:
        """The anchor's true complements at ``now_ms``, strongest first."""
        row = self.seasons[self.season_at(now_ms)].affinity.get(anchor, {})
        return tuple(sorted(row, key=lambda b: (-row[b], b)))

    def contenders(self, anchor: str, now_ms: int) -> list[tuple[str, ...]]:
        """Every bundle of ``anchor`` that can earn the most at some discount for some segment.

        The anchor with one or two of its complements, and with the dearest and the cheapest
        items that are not its complements in their place: a bundle with such a partner is an
        impulse buy to :meth:`appeal`, the same take-rate whichever items it holds, so the
        dearest give the most reward (the cheapest the least loss, at a discount deeper than
        the margin). A test checks this against every bundle.
        """
        partners = self.complements(anchor, now_ms)
        related = {anchor, *partners}
        others = [i for i in self.items if i not in related]
        by_price = sorted(others, key=lambda i: (self.prices[i], i))
        extremes = list(dict.fromkeys(by_price[-2:] + by_price[:2]))
        bundles: list[tuple[str, ...]] = [(anchor, b) for b in (*partners, *extremes)]
        bundles += [(anchor, *bc) for bc in itertools.combinations(partners, 2)]
        bundles += [(anchor, b, x) for b in partners for x in extremes]
        bundles += [(anchor, *xy) for xy in itertools.combinations(extremes, 2)]
        return bundles

    def appeal(self, items: Sequence[str], now_ms: int) -> float:
        """Take-rate of a bundle (anchor first) at full price, before any segment effect.

        0 for anything that is not a bundle of 2-3 distinct catalogue items.
        """
        if len(set(items)) != len(items) or not 2 <= len(items) <= 3:
            return 0.0
        if any(i not in self.prices for i in items):
            return 0.0
        row = self.seasons[self.season_at(now_ms)].affinity
        anchor = row.get(items[0], {})
        if len(items) == 2:
            return BASE_APPEAL + AFFINITY_GAIN * anchor.get(items[1], 0.0)
        b, c = items[1], items[2]
        if b not in anchor or c not in anchor:
            return TRIPLE_FACTOR * BASE_APPEAL  # no kit of the anchor's: an impulse buy
        pairs = (anchor[b] + anchor[c]) / 2.0
        synergy = row.get(b, {}).get(c, 0.0)
        return TRIPLE_FACTOR * (BASE_APPEAL + AFFINITY_GAIN * pairs + TRIPLE_SYNERGY * synergy)

    def take_probability(
        self, items: Sequence[str], discount_pct: float, segment: Segment, now_ms: int
    ) -> float:
        """Chance that a shopper of ``segment`` shown the bundle buys it through the offer."""
        boost = math.exp(segment.price_sensitivity * discount_pct)
        return min(MAX_TAKE, self.appeal(items, now_ms) * boost)

    def value(self, items: Sequence[str], discount_pct: float) -> float:
        """Reward of one bundle sold: price paid minus cost (``cost_ratio`` of list price)."""
        listed = sum(self.prices.get(i, 0.0) for i in items)
        return listed * (1.0 - discount_pct / 100.0 - self.cost_ratio)

    def expected_reward(
        self, items: Sequence[str], discount_pct: float, segment: Segment, now_ms: int
    ) -> float:
        """Expected reward of one impression of the variant (take-rate times value)."""
        return self.take_probability(items, discount_pct, segment, now_ms) * self.value(
            items, discount_pct
        )

    def segment(self, name: str) -> Segment:
        """The segment called ``name`` (raises ``KeyError``)."""
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    # -- sampling --------------------------------------------------------------------------
    def draw(self, rng: random.Random, now_ms: int = 0) -> str:
        """An item by current popularity."""
        cumulative = self.seasons[self.season_at(now_ms)].cumulative_popularity
        x = rng.random() * cumulative[-1]
        return self.items[min(bisect.bisect_right(cumulative, x), len(self.items) - 1)]

    def draw_segment(self, rng: random.Random) -> Segment:
        """A shopper's segment by the segments' shares."""
        x = rng.random()
        for s in self.segments:
            x -= s.share
            if x < 0:
                return s
        return self.segments[-1]


def _kits(items: list[str], kit_size: int, rng: random.Random) -> list[list[str]]:
    """Random groups of ``kit_size`` (the last group absorbs a remainder smaller than a kit)."""
    rng.shuffle(items)
    kits = [items[i : i + kit_size] for i in range(0, len(items), kit_size)]
    if len(kits) > 1 and len(kits[-1]) < 2:
        kits[-2].extend(kits.pop())
    return kits


def _affinity(
    kits: list[list[str]], items: tuple[str, ...], weak: int, rng: random.Random
) -> dict[str, dict[str, float]]:
    affinity: dict[str, dict[str, float]] = {i: {} for i in items}

    def link(a: str, b: str, strength: float) -> None:
        affinity[a][b] = affinity[b][a] = round(strength, 4)

    for kit in kits:
        for a, b in itertools.combinations(kit, 2):
            link(a, b, rng.uniform(0.5, 1.0))
    for a in items:
        for b in rng.sample(items, weak + 2):
            if b != a and b not in affinity[a] and len(affinity[a]) < len(items) - 1:
                link(a, b, rng.uniform(0.1, 0.3))
                break
    return affinity


def _popularity(ranks: list[int], exponent: float) -> tuple[float, ...]:
    return tuple(itertools.accumulate(1.0 / (r + 1) ** exponent for r in ranks))


@dataclass(frozen=True, slots=True)
class Shopper:
    """One session's shopper before any offer: who, which segment, which anchor, when."""

    user_id: str
    session_id: str
    segment: Segment
    anchor: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class Visit:
    """A whole session: the shopper, the variant shown (if any), the events to report, the
    expected reward of what was shown under the truth and the reward actually realised."""

    shopper: Shopper
    choice: Choice | None
    events: list[Event]
    expected_reward: float
    reward: float


Chooser = Callable[[Shopper, random.Random], Choice | None]


class SimulatedShop:
    """Generates one shopper session at a time; the caller sends the events on (to Kafka, or
    to an in-process decision-maker). Owns its random generators: the shoppers who arrive
    (segment, anchor) come from a stream of their own, so shops built with the same catalogue
    and seed see the same shoppers whatever they are shown; ``rng`` drives their reactions
    (and is handed to the chooser), so the same offers also give the same sessions.

    A shown bundle is clicked with probability ``c = min(1, take / buy_after_click)`` and
    bought after the click with probability ``take / c``: bought with probability ``take``
    (:meth:`Catalogue.take_probability`) overall. A shopper who does not buy through the offer
    buys organically with probability ``organic_buy_rate``: the anchor, each current
    complement with probability ``0.8 * affinity``, and a popular item with probability 0.2.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        seed: int = 7,
        organic_buy_rate: float = 0.3,
        buy_after_click: float = 0.5,
    ) -> None:
        if not 0.0 < buy_after_click <= 1.0:
            raise ValueError("buy_after_click must be within (0, 1]")
        self.catalogue = catalogue
        self.rng = random.Random(seed)
        # Who arrives (segment, anchor) has a stream of its own: two runs with the same seed
        # see the same shoppers whatever offers they were shown, so methods compare paired.
        self._arrivals = random.Random(seed * 1_000_003 + 1)
        self.organic_buy_rate = organic_buy_rate
        self.buy_after_click = buy_after_click
        self._ids = itertools.count()

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def arrive(self, now_ms: int) -> Shopper:
        """A new shopper: segment and anchor drawn from the truth at ``now_ms``."""
        cat = self.catalogue
        segment = cat.draw_segment(self._arrivals)
        anchor = cat.draw(self._arrivals, now_ms)
        return Shopper(self._id("u"), self._id("s"), segment, anchor, now_ms)

    def visit(self, *, now_ms: int, choose: Chooser) -> Visit:
        """One session; ``choose(shopper, rng)`` samples the variant to show (or None)."""
        shopper = self.arrive(now_ms)
        return self.respond(shopper, choose(shopper, self.rng))

    def session(self, *, now_ms: int, offer_for: OfferLookup) -> list[Event]:
        """One shopper's events: a view of an anchor, maybe an offer impression, maybe a
        purchase. ``offer_for(anchor, rng)`` samples the variant to show (or None)."""
        return self.visit(now_ms=now_ms, choose=lambda s, rng: offer_for(s.anchor, rng)).events

    def respond(self, shopper: Shopper, choice: Choice | None) -> Visit:
        """The shopper's reaction to ``choice`` (None: no offer shown)."""
        rng, cat = self.rng, self.catalogue
        user, session, anchor, ts = (
            shopper.user_id,
            shopper.session_id,
            shopper.anchor,
            shopper.now_ms,
        )
        events: list[Event] = [
            ClickEvent(
                event_id=self._id("c"),
                ts=ts,
                user_id=user,
                session_id=session,
                item_id=anchor,
                kind="view",
                price=cat.prices[anchor],
            )
        ]
        expected = 0.0
        if choice is not None:
            bundle = choice.bundle
            offer_id = choice.offer.offer_id
            events.append(
                ClickEvent(
                    event_id=self._id("c"),
                    ts=ts + 1,
                    user_id=user,
                    session_id=session,
                    item_id=anchor,
                    kind="offer_impression",
                    offer_id=offer_id,
                    variant=choice.variant,
                    propensity=choice.propensity,
                )
            )
            take = cat.take_probability(bundle.items, bundle.discount_pct, shopper.segment, ts)
            value = cat.value(bundle.items, bundle.discount_pct)
            expected = take * value
            click = min(1.0, take / self.buy_after_click)
            if rng.random() < click:
                events.append(
                    ClickEvent(
                        event_id=self._id("c"),
                        ts=ts + 2,
                        user_id=user,
                        session_id=session,
                        item_id=anchor,
                        kind="offer_click",
                        offer_id=offer_id,
                        variant=choice.variant,
                        propensity=choice.propensity,
                    )
                )
                if rng.random() < take / click:
                    factor = 1 - bundle.discount_pct / 100
                    events.append(
                        self._purchase(
                            user, session, ts + 3, bundle.items, factor, offer_id=offer_id
                        )
                    )
                    return Visit(shopper, choice, events, expected, value)
        if rng.random() < self.organic_buy_rate:
            basket = [anchor]
            for c in cat.complements(anchor, ts):
                if rng.random() < 0.8 * cat.affinity(anchor, c, ts):
                    basket.append(c)
            if rng.random() < 0.2:
                basket.append(cat.draw(rng, ts))
            events.append(self._purchase(user, session, ts + 3, list(dict.fromkeys(basket)), 1.0))
        return Visit(shopper, choice, events, expected, 0.0)

    def _purchase(
        self,
        user: str,
        session: str,
        ts: int,
        items: Sequence[str],
        factor: float,
        offer_id: str | None = None,
    ) -> PurchaseEvent:
        lines = [
            OrderLine(item_id=i, quantity=1, unit_price=round(self.catalogue.prices[i] * factor, 2))
            for i in items
        ]
        return PurchaseEvent(
            event_id=self._id("p"),
            ts=ts,
            user_id=user,
            session_id=session,
            order_id=self._id("o"),
            items=lines,
            offer_id=offer_id,
        )
