"""The closed loop in process (no Kafka): a decision-maker answers offers, the simulated shop
reacts, the decision-maker learns from the events, the oracle scores every slot.

A **decision-maker** is anything with two methods (:class:`DecisionMaker`):

- ``offer_for(anchor, segment, now_ms) -> BundleOffer | None``: the offer live for that anchor
  (the storefront samples one variant with the published probabilities and logs that
  propensity, exactly as :class:`~streamer.offers.OfferBook` does; an expired offer is not
  shown);
- ``learn(events)``: the schema events of the sessions since the last call (views,
  impressions, clicks, purchases), in order.

Plug in streamer's :class:`~streamer.engine.Engine` directly (wrapped by
:class:`EngineDecisions`), plain functions (:class:`Decisions`), the two baselines here
(:class:`GreedyLift`, :class:`UniformRandom`) or the oracle itself (:class:`OracleDecisions`).
A contextual bandit (Vowpal Wabbit, the torch policy) fits the same two methods: build its
candidates with :class:`PairCounts` (or from an engine's offer), score them, and return
:func:`make_offer` of its choices and their probabilities.

>>> from streamer.simulation.shop import Catalogue, SimulatedShop
>>> cat = Catalogue.generate(40, seed=1)
>>> report = run_closed_loop(OracleDecisions(cat), SimulatedShop(cat, seed=1), impressions=200)
>>> round(report.share_of_oracle().share, 6)
1.0
>>> rnd = run_closed_loop(UniformRandom(cat.prices, seed=1), SimulatedShop(cat, seed=1),
...                       impressions=200)
>>> rnd.share_of_oracle().share < 0.9
True
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgspec

from streamer.engine import Engine
from streamer.events import BundleOffer, Evidence, PurchaseEvent, Variant
from streamer.offers import Choice, OfferBook
from streamer.simulation.oracle import DISCOUNTS, Action, Oracle
from streamer.simulation.report import SimulationReport
from streamer.simulation.shop import Catalogue, Event, Shopper, SimulatedShop

#: 2023-11-14: any fixed epoch inside the schemas' timestamp range.
DEFAULT_START_MS = 1_700_000_000_000
#: Offers the baselines publish stay live this long (they rebuild one on every request).
BASELINE_TTL_MS = 3_600_000


@runtime_checkable
class DecisionMaker(Protocol):
    """What the closed loop asks of a policy under test (module doc)."""

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> BundleOffer | None: ...

    def learn(self, events: Sequence[Event]) -> None: ...


def _ignore(events: Sequence[Event]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Decisions:
    """A decision-maker from plain callables (``learn`` defaults to ignoring events)."""

    offer_for: Callable[[str, str, int], BundleOffer | None]
    learn: Callable[[Sequence[Event]], None] = field(default=_ignore)


class EngineDecisions:
    """streamer's in-process :class:`~streamer.engine.Engine` as a decision-maker: the offer
    it last published for the anchor and the shopper's segment (the default segment's when
    the engine has no segments configured, or none live for that segment), learning every
    purchase and click exactly as a worker would (``handle_purchase``, ``handle_click``).

    ``assume_refreshed`` is a diagnostic: it treats the engine's last offer as never expiring,
    i.e. what a storefront would see if unchanged offers were republished before their
    ``expires_at`` (the engine only republishes when an offer changes materially, so a stable
    offer of a rarely bought anchor lapses at the storefront).
    """

    def __init__(self, engine: Engine, *, assume_refreshed: bool = False) -> None:
        self.engine = engine
        self.assume_refreshed = assume_refreshed

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> BundleOffer | None:
        if self.assume_refreshed:
            offer = self.engine.live_offer(anchor, segment)
        else:
            offer = self.engine.live_offer(anchor, segment, now_ms=now_ms)
        if offer is not None and self.assume_refreshed and offer.expires_at <= now_ms:
            return msgspec.structs.replace(offer, expires_at=now_ms + 1)
        return offer

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, PurchaseEvent):
                self.engine.handle_purchase(event)
            else:
                self.engine.handle_click(event)


class OracleDecisions:
    """Shows the oracle's best variant with probability 1 (the ceiling: share 1.0)."""

    def __init__(
        self, catalogue: Catalogue, oracle: Oracle | None = None, version: str = "oracle"
    ) -> None:
        self.catalogue = catalogue
        self.oracle = oracle or Oracle(catalogue)
        self.version = version

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> BundleOffer | None:
        answer = self.oracle.best(anchor, self.catalogue.segment(segment), now_ms)
        return make_offer(
            anchor,
            [answer.action],
            [1.0],
            prices=self.catalogue.prices,
            policy_version=self.version,
            now_ms=now_ms,
            scores=[answer.expected_reward],
        )

    def learn(self, events: Sequence[Event]) -> None:
        return None


def make_offer(
    anchor: str,
    actions: Sequence[Action],
    probabilities: Sequence[float],
    *,
    prices: Mapping[str, float],
    policy_version: str,
    now_ms: int,
    ttl_ms: int = BASELINE_TTL_MS,
    segment: str = "all",
    scores: Sequence[float] | None = None,
    evidence: Sequence[Evidence] | None = None,
) -> BundleOffer:
    """A schema-valid offer of ``actions`` with ``probabilities`` (renormalised to sum to 1).

    The id is a hash of the content, so equal offers share an id (the oracle caches by id).
    Raises ``ValueError`` without actions, for misaligned arguments, or non-positive mass.

    >>> offer = make_offer("a", [Action(("a", "b"), 10.0)], [2.0], prices={"a": 5, "b": 5},
    ...                    policy_version="p", now_ms=DEFAULT_START_MS)
    >>> offer.variants[0].bundle_price, offer.variants[0].probability
    (9.0, 1.0)
    """
    if not actions or len(actions) != len(probabilities):
        raise ValueError("need as many probabilities as actions, and at least one")
    total = float(sum(probabilities))
    if total <= 0.0:
        raise ValueError("probabilities must have positive mass")
    if abs(total - 1.0) < 1e-9:
        total = 1.0  # already a distribution: log exactly the probabilities the policy gave
    none = Evidence(support=0.0, confidence=0.0, lift=0.0)
    variants = [
        Variant(
            items=list(a.items),
            discount_pct=a.discount_pct,
            bundle_price=round(
                sum(prices.get(i, 0.0) for i in a.items) * (1.0 - a.discount_pct / 100.0), 2
            ),
            probability=p / total,
            score=scores[k] if scores else 0.0,
            evidence=evidence[k] if evidence else none,
        )
        for k, (a, p) in enumerate(zip(actions, probabilities, strict=True))
    ]
    key = repr(
        (
            anchor,
            policy_version,
            now_ms,
            [(v.items, v.discount_pct, v.probability) for v in variants],
        )
    ).encode()
    digest = hashlib.blake2b(key, digest_size=12).hexdigest()
    return BundleOffer(
        offer_id=f"of-{digest}",
        ts=now_ms,
        anchor_item_id=anchor,
        segment=segment,
        policy_version=policy_version,
        variants=variants,
        expires_at=now_ms + ttl_ms,
    )


class PairCounts:
    """Plain (undecayed) co-purchase counts from purchase events: the baselines' candidates.

    >>> counts = PairCounts()
    >>> counts.learn_order(["tea", "cup"]); counts.learn_order(["tea", "cup", "jam"])
    >>> counts.partners("tea", 2)
    [('cup', 2), ('jam', 1)]
    >>> round(counts.lift("tea", "cup"), 2)   # 2 * 2 orders / (2 * 2)
    1.0
    """

    def __init__(self) -> None:
        self.orders = 0
        self.items: dict[str, int] = {}
        self.pairs: dict[str, dict[str, int]] = {}

    def learn_order(self, items: Sequence[str]) -> None:
        distinct = list(dict.fromkeys(items))
        self.orders += 1
        for a in distinct:
            self.items[a] = self.items.get(a, 0) + 1
            row = self.pairs.setdefault(a, {})
            for b in distinct:
                if b != a:
                    row[b] = row.get(b, 0) + 1

    def partners(self, anchor: str, n: int, min_support: int = 1) -> list[tuple[str, int]]:
        """The ``n`` partners most often bought with ``anchor`` (ties: by id)."""
        row = self.pairs.get(anchor, {})
        return heapq.nsmallest(
            n, ((b, c) for b, c in row.items() if c >= min_support), key=lambda bc: (-bc[1], bc[0])
        )

    def lift(self, a: str, b: str) -> float:
        """``P(a, b) / (P(a) P(b))`` (0 when either was never bought)."""
        na, nb = self.items.get(a, 0), self.items.get(b, 0)
        if not na or not nb:
            return 0.0
        return self.pairs.get(a, {}).get(b, 0) * self.orders / (na * nb)

    def evidence(self, items: Sequence[str]) -> Evidence:
        """Pairwise evidence of ``items[0]`` with ``items[1]`` (for an offer's variants)."""
        a, b = items[0], items[1]
        support = self.pairs.get(a, {}).get(b, 0)
        confidence = support / self.items[a] if self.items.get(a) else 0.0
        return Evidence(
            support=float(support), confidence=min(1.0, confidence), lift=self.lift(a, b)
        )

    def learn(self, events: Sequence[Event]) -> None:
        """Count every purchase among ``events`` (organic or through an offer)."""
        for event in events:
            if isinstance(event, PurchaseEvent):
                self.learn_order([line.item_id for line in event.items])


class GreedyLift:
    """Baseline: always the anchor's highest-lift partner (co-bought at least ``min_support``
    times), as a pair at one fixed discount, with probability 1. No exploration, no
    segments, no triples."""

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        discount_pct: float = 10.0,
        min_support: int = 3,
        version: str = "greedy-lift",
    ) -> None:
        self.prices = prices
        self.discount_pct = discount_pct
        self.min_support = min_support
        self.version = version
        self.counts = PairCounts()
        self._best: dict[str, str | None] = {}

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> BundleOffer | None:
        if anchor not in self._best:
            row = self.counts.pairs.get(anchor, {})
            eligible = [b for b, c in row.items() if c >= self.min_support]
            self._best[anchor] = max(
                eligible, key=lambda b: (self.counts.lift(anchor, b), b), default=None
            )
        partner = self._best[anchor]
        if partner is None:
            return None
        items = (anchor, partner)
        return make_offer(
            anchor,
            [Action(items, self.discount_pct)],
            [1.0],
            prices=self.prices,
            policy_version=self.version,
            now_ms=now_ms,
            evidence=[self.counts.evidence(items)],
        )

    def learn(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, PurchaseEvent):
                items = [line.item_id for line in event.items]
                self.counts.learn_order(items)
                # Lifts of every item of the order moved (and, through the order total, all
                # others a little: those are refreshed when one of their own orders comes).
                for i in items:
                    self._best.pop(i, None)


class UniformRandom:
    """Baseline: uniform over the candidates: pairs of the anchor with its ``max_pairs`` most
    co-bought partners and triples of two of its ``triple_partners`` most co-bought ones, each
    at every discount of the grid. Each offer shows up to ``max_variants`` of them drawn
    without replacement, each with probability ``1 / k`` (so every candidate is equally likely
    overall, and the logged propensities are the true ones)."""

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        discounts: Sequence[float] = DISCOUNTS,
        max_pairs: int = 4,
        triple_partners: int = 3,
        max_variants: int = 8,
        min_support: int = 3,
        seed: int = 0,
        version: str = "random",
    ) -> None:
        self.prices = prices
        self.discounts = tuple(discounts)
        self.max_pairs = max_pairs
        self.triple_partners = triple_partners
        self.max_variants = max_variants
        self.min_support = min_support
        self.version = version
        self.counts = PairCounts()
        self.rng = random.Random(seed)

    def candidates(self, anchor: str) -> list[Action]:
        partners = [
            b
            for b, _ in self.counts.partners(
                anchor, max(self.max_pairs, self.triple_partners), self.min_support
            )
        ]
        bundles: list[tuple[str, ...]] = [(anchor, b) for b in partners[: self.max_pairs]]
        bundles += [
            (anchor, b, c) for b, c in itertools.combinations(partners[: self.triple_partners], 2)
        ]
        return [Action(b, d) for b in bundles for d in self.discounts]

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> BundleOffer | None:
        candidates = self.candidates(anchor)
        if not candidates:
            return None
        shown = self.rng.sample(candidates, min(self.max_variants, len(candidates)))
        return make_offer(
            anchor,
            shown,
            [1.0] * len(shown),
            prices=self.prices,
            policy_version=self.version,
            now_ms=now_ms,
            evidence=[self.counts.evidence(a.items) for a in shown],
        )

    def learn(self, events: Sequence[Event]) -> None:
        self.counts.learn(events)


def sample_variant(
    offer: BundleOffer | None, anchor: str, rng: random.Random, now_ms: int
) -> Choice | None:
    """What a storefront shows for ``offer``: a variant sampled by its probability, with that
    probability as the propensity (None for no offer, an expired one, or another anchor's)."""
    if offer is None or offer.anchor_item_id != anchor:
        return None
    book = OfferBook(default_segment=offer.segment)  # the offer the decider chose is the one
    book.update(offer)
    return book.choose(anchor, rng, now_ms=now_ms)


def run_closed_loop(
    decider: DecisionMaker | Engine,
    shop: SimulatedShop,
    *,
    impressions: int,
    start_ms: int = DEFAULT_START_MS,
    session_interval_ms: int = 1_000,
    oracle: Oracle | None = None,
    learn_every: int = 1,
    seed: int = 0,
    report: SimulationReport | None = None,
    on_visit: Callable[[int, Shopper, Choice | None], None] | None = None,
) -> SimulationReport:
    """Run ``impressions`` sessions of ``shop`` against ``decider``; return the report.

    Session ``i`` happens at ``start_ms + i * session_interval_ms`` (so a catalogue's
    ``drift_at_ms`` places the drift). Each session's events reach ``decider.learn`` in
    batches of ``learn_every`` sessions (1: right after the session; larger: feedback latency).
    Variants are sampled from a generator seeded with ``seed``, apart from the shop's, so the
    shop's shoppers are the same for every decider. ``on_visit(i, shopper, choice)`` is called
    after each session (progress bars, custom logging). Runs in the caller's thread; CPU-bound.
    """
    if impressions < 0 or learn_every < 1 or session_interval_ms < 0:
        raise ValueError("need impressions >= 0, learn_every >= 1, session_interval_ms >= 0")
    decisions: DecisionMaker = EngineDecisions(decider) if isinstance(decider, Engine) else decider
    oracle = oracle or Oracle(shop.catalogue)
    report = (
        report if report is not None else SimulationReport(drift_at_ms=shop.catalogue.drift_at_ms)
    )
    sampler = random.Random(seed)
    pending: list[Event] = []
    for i in range(impressions):
        now = start_ms + i * session_interval_ms

        def choose(shopper: Shopper, _: random.Random, now: int = now) -> Choice | None:
            offer = decisions.offer_for(shopper.anchor, shopper.segment.name, now)
            return sample_variant(offer, shopper.anchor, sampler, now)

        visit = shop.visit(now_ms=now, choose=choose)
        shopper, choice = visit.shopper, visit.choice
        offer = choice.offer if choice is not None else None
        answer = oracle.best(shopper.anchor, shopper.segment, now, offer)
        report.record(
            ts_ms=now,
            policy_version=offer.policy_version if offer else None,
            expected_reward=visit.expected_reward,
            oracle_reward=answer.expected_reward,
            reward=visit.reward,
        )
        if on_visit is not None:
            on_visit(i, shopper, choice)
        pending.extend(visit.events)
        if len(pending) and (i + 1) % learn_every == 0:
            decisions.learn(pending)
            pending = []
    if pending:
        decisions.learn(pending)
    return report


__all__ = [
    "DEFAULT_START_MS",
    "DecisionMaker",
    "Decisions",
    "EngineDecisions",
    "GreedyLift",
    "OracleDecisions",
    "PairCounts",
    "UniformRandom",
    "make_offer",
    "run_closed_loop",
    "sample_variant",
]
