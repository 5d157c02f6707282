"""A simulated storefront: shoppers who view items, see offers, click, and buy.

Ground truth the policy never sees: every item has a few true complements (a bundle of an item
with its complements appeals to shoppers), popularity follows a Zipf law, and shoppers are
price sensitive (a discount raises the chance to take a bundle). Everything is produced as
schema events, as a real storefront would report them.

>>> import random
>>> shop = SimulatedShop(Catalogue.generate(50, seed=1), seed=2)
>>> events = shop.session(now_ms=1_700_000_000_000, offer_for=lambda anchor, rng: None)
>>> events[0].kind
'view'
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from streamer.events import ClickEvent, OrderLine, PurchaseEvent
from streamer.offers import Choice

OfferLookup = Callable[[str, random.Random], Choice | None]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Items, prices, popularity weights and true complements."""

    items: tuple[str, ...]
    prices: dict[str, float]
    complements: dict[str, tuple[str, ...]]
    cumulative_popularity: tuple[float, ...]

    @classmethod
    def generate(cls, size: int, *, seed: int = 7, complements_per_item: int = 2) -> Catalogue:
        rng = random.Random(seed)
        items = tuple(f"sku-{i:05d}" for i in range(size))
        prices = {i: round(rng.lognormvariate(2.5, 0.6), 2) for i in items}
        complements = {
            item: tuple(rng.sample([j for j in items if j != item], complements_per_item))
            for item in items
        }
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(size)]
        return cls(items, prices, complements, tuple(itertools.accumulate(weights)))

    def draw(self, rng: random.Random) -> str:
        x = rng.random() * self.cumulative_popularity[-1]
        return self.items[bisect.bisect_right(self.cumulative_popularity, x)]

    def appeal(self, bundle: list[str]) -> float:
        """Ground-truth chance that a shopper takes a bundle at full price."""
        anchor, *others = bundle
        true = self.complements[anchor]
        hits = sum(1 for o in others if o in true)
        return 0.02 + 0.25 * hits / len(others) if others else 0.0


class SimulatedShop:
    """Generates one shopper session at a time; the caller sends the events to Kafka."""

    def __init__(self, catalogue: Catalogue, *, seed: int = 7, organic_buy_rate: float = 0.3,
                 price_sensitivity: float = 3.0) -> None:
        self.catalogue = catalogue
        self.rng = random.Random(seed)
        self.organic_buy_rate = organic_buy_rate
        self.price_sensitivity = price_sensitivity
        self._ids = itertools.count()

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def session(self, *, now_ms: int, offer_for: OfferLookup) -> list[ClickEvent | PurchaseEvent]:
        """One shopper: a view of an anchor, maybe an offer impression, maybe a purchase."""
        rng, cat = self.rng, self.catalogue
        user, session = self._id("u"), self._id("s")
        anchor = cat.draw(rng)
        ts = now_ms
        events: list[ClickEvent | PurchaseEvent] = [
            ClickEvent(event_id=self._id("c"), ts=ts, user_id=user, session_id=session,
                       item_id=anchor, kind="view", price=cat.prices[anchor])
        ]
        choice = offer_for(anchor, rng)
        if choice is not None:
            bundle = choice.bundle
            events.append(ClickEvent(
                event_id=self._id("c"), ts=ts + 1, user_id=user, session_id=session,
                item_id=anchor, kind="offer_impression", offer_id=choice.offer.offer_id,
                variant=choice.variant, propensity=choice.propensity))
            take = cat.appeal(bundle.items) * (1 + self.price_sensitivity * bundle.discount_pct
                                               / 100)
            if rng.random() < take:
                factor = 1 - bundle.discount_pct / 100
                events.append(ClickEvent(
                    event_id=self._id("c"), ts=ts + 2, user_id=user, session_id=session,
                    item_id=anchor, kind="offer_click", offer_id=choice.offer.offer_id,
                    variant=choice.variant, propensity=choice.propensity))
                events.append(self._purchase(user, session, ts + 3, bundle.items, factor,
                                             offer_id=choice.offer.offer_id))
                return events
        if rng.random() < self.organic_buy_rate:
            basket = [anchor] + [c for c in cat.complements[anchor] if rng.random() < 0.4]
            if rng.random() < 0.3:
                basket.append(cat.draw(rng))
            events.append(self._purchase(user, session, ts + 3, list(dict.fromkeys(basket)), 1.0))
        return events

    def _purchase(self, user: str, session: str, ts: int, items: list[str], factor: float,
                  offer_id: str | None = None) -> PurchaseEvent:
        lines = [OrderLine(item_id=i, quantity=1,
                           unit_price=round(self.catalogue.prices[i] * factor, 2)) for i in items]
        return PurchaseEvent(event_id=self._id("p"), ts=ts, user_id=user, session_id=session,
                             order_id=self._id("o"), items=lines, offer_id=offer_id)
