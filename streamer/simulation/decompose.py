"""Where a policy's reward goes missing: the gap to the oracle, split into a chain of causes.

A diagnostic for the closed loop (benchmarks, not the policy: it reads the ground truth, which
only the simulator and its measurements may). For every decision slot it computes a chain of
expected rewards under the truth, each level an upper bound of the next on average:

``oracle``
    the oracle's best variant for the shopper's segment (:meth:`Oracle.best`), what the
    report's share is measured against;
``covered``
    the oracle's reward on slots where an offer was shown, 0 elsewhere
    (``oracle - covered``: **coverage**, no live offer for the anchor);
``pool``
    the best variant, for the shopper's segment, among the decision-maker's candidate bundles
    (``candidates(anchor, now_ms)`` when given, together with the live offer's own bundles)
    at every discount of the grid (``covered - pool``: **candidate generation**, the truly best
    bundle was not among the candidates);
``blind``
    the best variant of the same pool for a policy that cannot tell segments apart: the
    variant of highest reward averaged over the segments' shares, evaluated for the shopper's
    segment (``pool - blind``: **segment blindness**); an offer made for the shopper's own
    segment (its ``segment`` is theirs) is not blind: this level and the next two then rank
    variants by that segment's rewards alone;
``shown``
    the best of the offer's shown variants for a segment-blind policy, evaluated for the
    shopper's segment (``blind - shown``: **selection**, the offer left the best one out);
``mode``
    the offer's most probable variant (``shown - mode``: **ranking**, the policy's favourite
    is not the best it shows; :meth:`OracleShareChain.shares` also gives ``mode_discount``,
    the favourite's bundle at its best segment-blind discount, to tell a wrong discount from
    a wrong bundle);
``served``
    the expectation over the offer's published probabilities, i.e. what the report measures
    up to sampling noise (``mode - served``: **exploration**, probability spread beyond the
    favourite by the floor and temperature; negative when the favourite is worse than the
    average shown variant).

Besides the chain, ``oracle_blind`` is the ceiling of any segment-blind policy: the oracle's
candidates (the anchor's contenders and the live offer's bundles, at every discount) ranked by
their reward averaged over the segments, evaluated for the shopper's segment, on every slot.

Shares are sums over slots divided by the oracle's sum, so the steps add up exactly:
``1 - served/oracle`` is the sum of the six losses. Steps can be slightly negative on a
short run (a segment-blind choice can beat the pool's best for the segments that happened
to come).

>>> from streamer.simulation.shop import Catalogue, SimulatedShop
>>> from streamer.simulation.loop import OracleDecisions, run_closed_loop
>>> cat = Catalogue.generate(40, seed=1)
>>> chain = OracleShareChain(cat)
>>> _ = run_closed_loop(OracleDecisions(cat), SimulatedShop(cat, seed=1), impressions=300,
...                     on_visit=chain.on_visit)
>>> shares = chain.shares()
>>> round(shares["served"], 6), round(shares["covered"], 6)
(1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from streamer.offers import Choice
from streamer.simulation.oracle import DISCOUNTS, Action, Oracle, offer_actions
from streamer.simulation.shop import Catalogue, Shopper

#: The levels of the chain, best first (module doc).
LEVELS: tuple[str, ...] = ("oracle", "covered", "pool", "blind", "shown", "mode", "served")
#: Every figure accumulated: the chain and the segment-blind oracle.
FIGURES: tuple[str, ...] = (*LEVELS, "mode_discount", "oracle_blind")
#: The loss between each level and the next, named by its cause.
LOSSES: tuple[str, ...] = (
    "coverage",
    "candidate_generation",
    "segment_blindness",
    "selection",
    "ranking",
    "exploration",
)

CandidateSource = Callable[[str, int], Sequence[Sequence[str]]]


class OracleShareChain:
    """Accumulates the chain of the module doc; pass :meth:`on_visit` to ``run_closed_loop``.

    ``candidates(anchor, now_ms)``: the decision-maker's candidate bundles now (for example its
    engine's co-purchase candidates); without it the pool is the live offer's bundles only.
    ``split_at``: slot index from which a second set of sums starts (the drift), so pre- and
    post-drift chains can be read separately. Not thread-safe.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        oracle: Oracle | None = None,
        candidates: CandidateSource | None = None,
        discounts: Sequence[float] = DISCOUNTS,
        split_at: int | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.oracle = oracle or Oracle(catalogue)
        self.candidates = candidates
        self.discounts = tuple(discounts)
        self.split_at = split_at
        # Rewards per segment by (season, action): the oracle's candidates repeat per anchor.
        self._table: dict[tuple[int, Action], list[float]] = {}
        self._sums = [dict.fromkeys(FIGURES, 0.0), dict.fromkeys(FIGURES, 0.0)]
        self._counts = [0, 0]

    def _rewards(self, action: Action, now_ms: int) -> list[float]:
        cat = self.catalogue
        key = (cat.season_at(now_ms), action)
        if key not in self._table:
            if len(self._table) >= 1_000_000:
                self._table.clear()  # a bound, not an LRU: misses only cost recomputation
            self._table[key] = [cat.expected_reward(action.items, action.discount_pct, s, now_ms)
                                for s in cat.segments]
        return self._table[key]

    def on_visit(self, index: int, shopper: Shopper, choice: Choice | None) -> None:
        """The ``on_visit`` hook of ``run_closed_loop``."""
        cat, now = self.catalogue, shopper.now_ms
        offer = choice.offer if choice is not None else None
        part = 1 if self.split_at is not None and index >= self.split_at else 0
        sums = self._sums[part]
        self._counts[part] += 1
        sums["oracle"] += self.oracle.best(shopper.anchor, shopper.segment, now, offer)\
            .expected_reward
        seg = next(k for k, s in enumerate(cat.segments) if s.name == shopper.segment.name)
        shares = [s.share for s in cat.segments]
        truth = {a: self._rewards(a, now)
                 for a in self.oracle.candidates(shopper.anchor, now, offer)}
        if truth:
            sums["oracle_blind"] += truth[max(truth, key=lambda a: (
                math.fsum(w * r for w, r in zip(shares, truth[a], strict=True)),
                -a.discount_pct))][seg]
        if offer is None:
            return
        sums["covered"] += self.oracle.best(shopper.anchor, shopper.segment, now, offer)\
            .expected_reward
        bundles: list[tuple[str, ...]] = [a.items for a in offer_actions(offer)]
        if self.candidates is not None:
            bundles += [tuple(b) for b in self.candidates(shopper.anchor, now)]
        pool = [Action(b, d) for b in dict.fromkeys(bundles) for d in self.discounts]
        pool += offer_actions(offer)
        table = {a: self._rewards(a, now) for a in dict.fromkeys(pool)}

        # An offer for the shopper's own segment is judged by that segment's rewards alone.
        weights = ([1.0 if k == seg else 0.0 for k in range(len(shares))]
                   if offer.segment == shopper.segment.name else shares)

        def blended(a: Action) -> float:
            return math.fsum(w * r for w, r in zip(weights, table[a], strict=True))

        sums["pool"] += max(r[seg] for r in table.values())
        blind = max(table, key=lambda a: (blended(a), -a.discount_pct))
        sums["blind"] += table[blind][seg]
        top = max(range(len(offer.variants)), key=lambda k: offer.variants[k].probability)
        mode = offer_actions(offer)[top]
        best_discount = max(
            (Action(mode.items, d) for d in self.discounts), key=lambda a: blended(a)
        )
        shown = max(offer_actions(offer), key=lambda a: (blended(a), -a.discount_pct))
        sums["shown"] += table[shown][seg]
        sums["mode_discount"] += table[best_discount][seg]
        sums["mode"] += table[mode][seg]
        sums["served"] += math.fsum(
            v.probability * table[a][seg]
            for v, a in zip(offer.variants, offer_actions(offer), strict=True)
        )

    def shares(self, part: int | None = None) -> dict[str, float]:
        """Each level's sum as a share of the oracle's: over all slots (``part`` None), before
        ``split_at`` (0) or from it on (1)."""
        parts = [0, 1] if part is None else [part]
        totals = {k: math.fsum(self._sums[p][k] for p in parts) for k in FIGURES}
        oracle = totals["oracle"]
        return {k: (v / oracle if oracle > 0 else math.nan) for k, v in totals.items()}

    def losses(self, part: int | None = None) -> dict[str, float]:
        """The loss of each step of the chain, as a share of the oracle's reward."""
        s = self.shares(part)
        steps = zip(LOSSES, LEVELS[:-1], LEVELS[1:], strict=True)
        return {name: s[a] - s[b] for name, a, b in steps}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: shares and losses overall, and before/after ``split_at`` when set."""
        out: dict[str, Any] = {"shares": self.shares(), "losses": self.losses()}
        if self.split_at is not None:
            out["pre_split"] = {"shares": self.shares(0), "losses": self.losses(0)}
            out["post_split"] = {"shares": self.shares(1), "losses": self.losses(1)}
        return out


__all__ = ["FIGURES", "LEVELS", "LOSSES", "OracleShareChain"]
