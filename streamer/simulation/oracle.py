"""The oracle: the best variant under the ground truth, and the regret of any other.

For an anchor, a segment and a time (the truth drifts), the oracle's candidates are

- every bundle of the anchor that can be its best at that time: the anchor with one or two
  of its complements, and with the dearest or cheapest of the other items in their place
  (:meth:`Catalogue.contenders`, which says why no other bundle can do better), and
- every bundle of the offer that was live (when one is given), so the oracle always knows at
  least what the policy knew,

each at every discount of the grid (0/5/10/15 % by default), plus each offered variant at its
own discount. Its answer is the candidate of highest *expected* reward: the best of every
2- and 3-item bundle of the anchor at a discount of the grid. Because the shown
variant is always among the candidates, regret (oracle's expected reward minus the shown
variant's) is never negative, and expected values keep it free of purchase noise.

>>> from streamer.simulation.shop import Catalogue
>>> cat = Catalogue.generate(30, seed=3)
>>> oracle = Oracle(cat)
>>> loyal, bargain = cat.segment("loyal"), cat.segment("bargain")
>>> anchor = cat.items[0]
>>> oracle.best(anchor, loyal, now_ms=0).action.discount_pct     # full price pays best
0.0
>>> oracle.best(anchor, bargain, now_ms=0).action.discount_pct   # the deepest discount does
15.0
>>> answer = oracle.best(anchor, loyal, now_ms=0)
>>> oracle.regret(answer.action, loyal, now_ms=0)
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamer.events import BundleOffer
from streamer.simulation.shop import Catalogue, Segment

#: The discount grid of the oracle (and of the baselines), in percent.
DISCOUNTS: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)


@dataclass(frozen=True, slots=True, order=True)
class Action:
    """A variant as the truth sees it: a bundle (anchor first) and a discount in percent."""

    items: tuple[str, ...]
    discount_pct: float


@dataclass(frozen=True, slots=True)
class OracleAnswer:
    """The oracle's choice and its expected reward per impression."""

    action: Action
    expected_reward: float


def offer_actions(offer: BundleOffer | None) -> list[Action]:
    """The variants of ``offer`` as actions, in the offer's order (empty for None)."""
    if offer is None:
        return []
    return [Action(tuple(v.items), v.discount_pct) for v in offer.variants]


class Oracle:
    """Knows the ground truth; answers the best variant among the candidates (module doc).

    Caches the anchor's contenders per ``(anchor, season)``, the best of them per ``(anchor,
    segment, season)``, and the best of each offer's bundles per ``(offer_id, segment,
    season)`` (bounded: cleared past ``cache_size`` entries). Not thread-safe.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        discounts: Sequence[float] = DISCOUNTS,
        cache_size: int = 200_000,
    ) -> None:
        if not discounts:
            raise ValueError("the oracle needs at least one discount")
        self.catalogue = catalogue
        self.discounts = tuple(discounts)
        self._cache_size = cache_size
        self._contenders: dict[tuple[str, int], list[tuple[str, ...]]] = {}
        self._truth: dict[tuple[str, str, int], OracleAnswer | None] = {}
        self._offers: dict[tuple[str, str, int], OracleAnswer | None] = {}

    def expected_reward(self, action: Action, segment: Segment, now_ms: int) -> float:
        """Expected reward of one impression of ``action`` under the truth at ``now_ms``."""
        return self.catalogue.expected_reward(action.items, action.discount_pct, segment, now_ms)

    def contenders(self, anchor: str, now_ms: int) -> list[tuple[str, ...]]:
        """The anchor's bundles that can be its best (:meth:`Catalogue.contenders`), cached."""
        key = (anchor, self.catalogue.season_at(now_ms))
        if key not in self._contenders:
            if len(self._contenders) >= self._cache_size:
                self._contenders.clear()
            self._contenders[key] = self.catalogue.contenders(anchor, now_ms)
        return self._contenders[key]

    def candidates(
        self, anchor: str, now_ms: int, offer: BundleOffer | None = None
    ) -> list[Action]:
        """Every action the oracle considers (see the module doc), without duplicates."""
        bundles = self.contenders(anchor, now_ms) + [a.items for a in offer_actions(offer)]
        grid = [Action(b, d) for b in dict.fromkeys(bundles) for d in self.discounts]
        return list(dict.fromkeys(grid + offer_actions(offer)))

    def best(
        self, anchor: str, segment: Segment, now_ms: int, offer: BundleOffer | None = None
    ) -> OracleAnswer:
        """The candidate of highest expected reward (ties: smaller discount, then bundle), and its
        expected reward. Raises ``ValueError`` when there is no candidate at all (a catalogue
        of the anchor alone and no offer)."""
        season = self.catalogue.season_at(now_ms)
        key = (anchor, segment.name, season)
        if key in self._truth:
            truth = self._truth[key]
        else:
            bundles = self.contenders(anchor, now_ms)
            truth = self._argmax(
                [Action(b, d) for b in bundles for d in self.discounts], segment, now_ms
            )
            self._remember(self._truth, key, truth)
        if offer is None:
            if truth is None:
                raise ValueError(f"no candidate for {anchor!r}")
            return truth
        okey = (offer.offer_id, segment.name, season)
        if okey in self._offers:
            offered = self._offers[okey]
        else:
            actions = offer_actions(offer)
            grid = [Action(a.items, d) for a in actions for d in self.discounts]
            offered = self._argmax(grid + actions, segment, now_ms)
            self._remember(self._offers, okey, offered)
        answers = [a for a in (truth, offered) if a is not None]
        if not answers:
            raise ValueError(f"no candidate for {anchor!r}")
        return min(answers, key=_rank)

    def regret(
        self, action: Action, segment: Segment, now_ms: int, offer: BundleOffer | None = None
    ) -> float:
        """Oracle's expected reward minus ``action``'s (>= 0 when ``action`` is one of the
        candidates, as the shown variant of ``offer`` always is)."""
        answer = self.best(action.items[0], segment, now_ms, offer)
        return answer.expected_reward - self.expected_reward(action, segment, now_ms)

    def _argmax(self, actions: list[Action], segment: Segment, now_ms: int) -> OracleAnswer | None:
        answers = [OracleAnswer(a, self.expected_reward(a, segment, now_ms)) for a in actions]
        return min(answers, key=_rank, default=None)

    def _remember(
        self,
        cache: dict[tuple[str, str, int], OracleAnswer | None],
        key: tuple[str, str, int],
        answer: OracleAnswer | None,
    ) -> None:
        if len(cache) >= self._cache_size:
            cache.clear()  # a bound, not an LRU: cache misses only cost recomputation
        cache[key] = answer


def _rank(answer: OracleAnswer) -> tuple[float, float, tuple[str, ...]]:
    # Highest expected reward first; ties go to the smaller discount, then the smaller bundle
    # ids, so the answer does not depend on the order candidates are listed in.
    return (-answer.expected_reward, answer.action.discount_pct, answer.action.items)
