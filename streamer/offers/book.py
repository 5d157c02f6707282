"""The storefront's view of offers: the newest offer per anchor, and sampling a variant.

Pure logic; ``streamer.app.storefront.OfferCache`` feeds it from the ``offers`` topic.

>>> from streamer.events import BundleOffer, Evidence, Variant
>>> ev = Evidence(support=3.0, confidence=0.5, lift=2.0)
>>> def offer(ts, probs):
...     return BundleOffer(offer_id=f"o{ts}", ts=ts, anchor_item_id="a", segment="all",
...         policy_version="v0", expires_at=ts + 1000, variants=[
...         Variant(items=["a", b], discount_pct=10, bundle_price=1, probability=p, score=0,
...                 evidence=ev) for b, p in probs])
>>> book = OfferBook()
>>> book.update(offer(200, [("b", 1.0)])), book.update(offer(100, [("c", 1.0)]))
(True, False)
>>> import random
>>> choice = book.choose("a", random.Random(0), now_ms=250)
>>> choice.offer.offer_id, choice.variant, choice.propensity
('o200', 0, 1.0)
>>> book.choose("a", random.Random(0), now_ms=5000) is None   # expired
True
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from streamer.events import BundleOffer, Variant


@dataclass(frozen=True, slots=True)
class Choice:
    """A sampled variant and the probability it had: the propensity to log."""

    offer: BundleOffer
    variant: int
    propensity: float

    @property
    def bundle(self) -> Variant:
        return self.offer.variants[self.variant]


class OfferBook:
    """Newest offer per anchor; older or duplicate revisions are ignored.

    An offer replaces the held one when its ``ts`` is not older and its id differs: revisions
    built from events of the same millisecond share a ``ts``, and the offers topic is keyed by
    anchor, so arrival order within an anchor is publication order.
    """

    def __init__(self) -> None:
        self._offers: dict[str, BundleOffer] = {}
        self.revisions = 0

    def update(self, offer: BundleOffer) -> bool:
        """Keep ``offer`` if it is newer than the one held; True when it was kept."""
        held = self._offers.get(offer.anchor_item_id)
        if held is not None and (held.ts > offer.ts or held.offer_id == offer.offer_id):
            return False
        self._offers[offer.anchor_item_id] = offer
        self.revisions += 1
        return True

    def get(self, anchor: str) -> BundleOffer | None:
        return self._offers.get(anchor)

    def __len__(self) -> int:
        return len(self._offers)

    def anchors(self) -> list[str]:
        return list(self._offers)

    def choose(self, anchor: str, rng: random.Random, *, now_ms: int) -> Choice | None:
        """Sample one variant of the live offer for ``anchor`` by its probability."""
        offer = self._offers.get(anchor)
        if offer is None or offer.expires_at <= now_ms:
            return None
        cumulative = list(itertools.accumulate(v.probability for v in offer.variants))
        i = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        i = min(i, len(offer.variants) - 1)
        return Choice(offer, i, offer.variants[i].probability)
