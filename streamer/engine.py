"""The one place an event is handled: composes statistics, policy and offer building.

Plain Python, no Kafka. Two drivers run it: the faust app (``streamer.app``), where purchases are
fanned out by item through a repartition topic and each item's slice is learned on the worker
that owns the item; and replay/evaluation, which calls :meth:`Engine.handle_purchase` in
process. Both go through :meth:`Engine.fan_out` and :meth:`Engine.learn_basket`, so the same
events give the same state either way.

All state lives in mappings handed in (faust tables live, dicts otherwise); the engine only
assigns values, never mutates one in place, so every change reaches the changelog.

>>> engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
>>> from streamer.events import OrderLine, PurchaseEvent
>>> def order(n, items):
...     return PurchaseEvent(event_id=f"e{n}", ts=1_700_000_000_000 + n, user_id="u",
...         session_id=f"s{n}", order_id=f"o{n}",
...         items=[OrderLine(item_id=i, quantity=1, unit_price=2.0) for i in items])
>>> offers = [o for n in range(3) for o in engine.handle_purchase(order(n, ["tea", "cup"]))]
>>> engine.live_offer("tea").variants[0].items
['tea', 'cup']
>>> engine.handle_purchase(order(0, ["tea", "cup"]))   # a redelivered event changes nothing
[]
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec

from streamer.copurchase import TOTAL_KEY, CoPurchaseStats
from streamer.events import BundleOffer, ClickEvent, PurchaseEvent
from streamer.events.dedup import Deduplicator, SeenId
from streamer.offers import OfferBuilder, offer_signature
from streamer.policy import EpsilonGreedyPolicy, Policy


class ItemBasket(msgspec.Struct, array_like=True, frozen=True):
    """One anchor's view of an order: the internal message of the repartition on item.

    ``anchor`` is :data:`~streamer.copurchase.TOTAL_KEY` for the one message per order that
    counts orders (the denominator of support and lift).
    """

    anchor: str
    partners: list[str]
    ts: int
    event_id: str
    price: float = -1.0  # the anchor's unit price; negative: not a list price, do not learn it
    weight: float = 1.0
    partner_prices: list[float] = []  # aligned with partners, same convention as ``price``


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Plain values the engine is built from (the app maps settings onto it)."""

    half_life_s: float = 30 * 24 * 3600.0
    top_k: int = 50
    max_pairs: int = 3
    max_triples: int = 1
    min_support: float = 2.0
    min_interval_ms: int = 5_000
    offer_ttl_ms: int = 24 * 3_600_000
    segment: str = "all"
    epsilon: float = 0.1
    discount_pct: float = 10.0
    dedup_ttl_ms: int = 24 * 3_600_000
    dedup_capacity: int = 1_000_000


@dataclass(slots=True)
class EngineState:
    """Every mapping the engine writes to, by role."""

    items: MutableMapping[str, Any]
    counts: MutableMapping[str, Any]
    catalog: MutableMapping[str, float]
    offers: MutableMapping[str, BundleOffer]
    seen: MutableMapping[str, SeenId]

    @classmethod
    def in_memory(cls) -> EngineState:
        return cls(items={}, counts={}, catalog={}, offers={}, seen={})


class Engine:
    """Learns from purchases and clicks; returns the offers to publish.

    Not thread-safe: one engine per worker, called from its event loop only.
    """

    def __init__(self, config: EngineConfig, state: EngineState, policy: Policy) -> None:
        self.config = config
        self.state = state
        self.policy = policy
        self.stats = CoPurchaseStats(
            state.items, state.counts, half_life_s=config.half_life_s, top_k=config.top_k
        )
        self.builder = OfferBuilder(segment=config.segment, ttl_ms=config.offer_ttl_ms)
        self.dedup = Deduplicator(
            state.seen, ttl_ms=config.dedup_ttl_ms, capacity=config.dedup_capacity
        )

    @classmethod
    def in_memory(cls, config: EngineConfig | None = None) -> Engine:
        """An engine on plain dicts with the v0 policy (replay, evaluation, tests)."""
        config = config or EngineConfig()
        return cls(config, EngineState.in_memory(), cls.v0_policy(config))

    @staticmethod
    def v0_policy(config: EngineConfig) -> Policy:
        """The epsilon-greedy policy every engine starts with."""
        return EpsilonGreedyPolicy(
            epsilon=config.epsilon,
            discount_pct=config.discount_pct,
            max_variants=config.max_pairs + config.max_triples,
        )

    # -- the two steps both drivers share -------------------------------------------------
    @staticmethod
    def fan_out(purchase: PurchaseEvent) -> list[ItemBasket]:
        """Split an order into one message per distinct item, plus the order counter."""
        # Prices paid through an offer are discounted: they do not update the catalogue.
        through_offer = purchase.offer_id is not None
        prices: dict[str, float] = {}
        for line in purchase.items:
            prices.setdefault(line.item_id, -1.0 if through_offer else line.unit_price)
        items = list(prices)
        baskets = [
            ItemBasket(
                anchor=a,
                partners=[b for b in items if b != a],
                ts=purchase.ts,
                event_id=purchase.event_id,
                price=p,
                partner_prices=[prices[b] for b in items if b != a],
            )
            for a, p in prices.items()
        ]
        baskets.append(
            ItemBasket(anchor=TOTAL_KEY, partners=[], ts=purchase.ts, event_id=purchase.event_id)
        )
        return baskets

    def learn_basket(self, basket: ItemBasket, partition: int = 0) -> BundleOffer | None:
        """Learn one anchor's slice of an order once; return its revised offer if it should go
        out. De-duplication is per (event, anchor), on the worker that owns the anchor, so a
        purchase redelivered upstream and fanned out again is not learned twice."""
        if not self.accept(f"{basket.event_id}|{basket.anchor}", basket.ts, partition):
            return None
        if basket.anchor == TOTAL_KEY:
            self.stats.learn_order_total(basket.ts, basket.weight)
            return None
        self.stats.learn_anchor(basket.anchor, basket.partners, basket.ts, basket.weight)
        catalog = self.state.catalog
        if basket.price >= 0 and catalog.get(basket.anchor) != basket.price:
            catalog[basket.anchor] = basket.price
        # A partner's price is its own anchor's business (kept current there); here it is only
        # filled in when still unknown, so the first offers already carry right bundle prices
        # even when the partner's own slice of the order has not been learned yet.
        for partner, price in zip(basket.partners, basket.partner_prices, strict=False):
            if price >= 0 and partner not in catalog:
                catalog[partner] = price
        return self.revise_offer(basket.anchor, basket.ts)

    def revise_offer(self, anchor: str, now_ms: int) -> BundleOffer | None:
        """A new offer for ``anchor`` when its best candidates changed materially (or the live
        one is past half its life) and the last offer is at least ``min_interval_ms`` old
        (event time); else None."""
        previous = self.state.offers.get(anchor)
        if previous is not None and now_ms - previous.ts < self.config.min_interval_ms:
            return None
        candidates = self.stats.candidates(
            anchor,
            now_ms=now_ms,
            max_pairs=self.config.max_pairs,
            max_triples=self.config.max_triples,
            min_support=self.config.min_support,
        )
        # A bundle is offerable once every item's price is known (learned from its own orders),
        # so no offer goes out with a wrong bundle price.
        catalog = self.state.catalog
        candidates = [c for c in candidates if all(i in catalog for i in c.items)]
        proposals = self.policy.propose(anchor, candidates)
        if not proposals:
            return None
        offer = self.builder.build(
            anchor,
            proposals,
            prices=self.state.catalog,
            policy_version=self.policy.version,
            now_ms=now_ms,
        )
        if (
            previous is not None
            and previous.policy_version == offer.policy_version
            and offer_signature(previous) == offer_signature(offer)
            # An unchanged offer is still republished once half its life is gone, so a
            # storefront never drops a good offer at expiry while its anchor still sells.
            and now_ms - previous.ts < self.config.offer_ttl_ms // 2
        ):
            return None
        self.state.offers[anchor] = offer
        return offer

    # -- conveniences for in-process drivers ------------------------------------------------
    def accept(self, event_id: str, ts_ms: int, partition: int = 0) -> bool:
        """True the first time an event id is seen (within the de-duplication TTL)."""
        return self.dedup.first_time(event_id, ts_ms=ts_ms, partition=partition)

    def handle_purchase(self, purchase: PurchaseEvent, partition: int = 0) -> list[BundleOffer]:
        """Learn the whole order (once), return the offers to publish."""
        offers = []
        for basket in self.fan_out(purchase):
            offer = self.learn_basket(basket, partition)
            if offer is not None:
                offers.append(offer)
        return offers

    def handle_click(self, click: ClickEvent, partition: int = 0) -> bool:
        """De-duplicate a click; v0 learns nothing from clicks yet (True if it was new)."""
        return self.accept(click.event_id, click.ts, partition)

    def live_offer(self, anchor: str) -> BundleOffer | None:
        """The offer last published for ``anchor``."""
        return self.state.offers.get(anchor)

