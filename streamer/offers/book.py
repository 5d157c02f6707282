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

Offers are per (anchor, segment). A shopper of a segment is shown their segment's offer, or
the default segment's when their segment has none or it has expired:

>>> import msgspec
>>> loyal = msgspec.structs.replace(offer(300, [("d", 1.0)]), segment="loyal",
...                                 expires_at=400)
>>> book.update(loyal), len(book), book.anchors()
(True, 2, ['a'])
>>> [book.choose("a", random.Random(0), now_ms=350, segment=s).offer.offer_id
...  for s in ("loyal", "bargain", None)]
['o300', 'o200', 'o200']
>>> book.choose("a", random.Random(0), now_ms=1000, segment="loyal").offer.offer_id
'o200'
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
    """Newest offer per (anchor, segment); older or duplicate revisions are ignored.

    An offer replaces the held one of its anchor and segment when its ``ts`` is not older and
    its id differs: revisions built from events of the same millisecond share a ``ts``, and
    the offers topic is keyed by anchor, so arrival order within an anchor is publication
    order. ``default_segment`` is the segment whose offer any shopper may be shown (the
    engine's ``offers.segment``): the fallback of :meth:`choose` and :meth:`get`.
    """

    def __init__(self, *, default_segment: str = "all") -> None:
        self.default_segment = default_segment
        self._offers: dict[tuple[str, str], BundleOffer] = {}
        self.revisions = 0

    def update(self, offer: BundleOffer) -> bool:
        """Keep ``offer`` if it is newer than the one held; True when it was kept."""
        key = (offer.anchor_item_id, offer.segment)
        held = self._offers.get(key)
        if held is not None and (held.ts > offer.ts or held.offer_id == offer.offer_id):
            return False
        self._offers[key] = offer
        self.revisions += 1
        return True

    def get(self, anchor: str, segment: str | None = None) -> BundleOffer | None:
        """The offer held for ``anchor`` and ``segment`` (None: the default segment), else
        the default segment's (expired or not)."""
        if segment is not None and segment != self.default_segment:
            offer = self._offers.get((anchor, segment))
            if offer is not None:
                return offer
        return self._offers.get((anchor, self.default_segment))

    def __len__(self) -> int:
        """Offers held (one per anchor and segment)."""
        return len(self._offers)

    def anchors(self) -> list[str]:
        """Anchors with at least one offer held."""
        return list(dict.fromkeys(anchor for anchor, _ in self._offers))

    def live(self, anchor: str, *, now_ms: int, segment: str | None = None
             ) -> BundleOffer | None:
        """The offer to show now: ``segment``'s unless missing or expired, else the default
        segment's unless expired, else None."""
        keys = [(anchor, self.default_segment)]
        if segment is not None and segment != self.default_segment:
            keys.insert(0, (anchor, segment))
        for key in keys:
            offer = self._offers.get(key)
            if offer is not None and offer.expires_at > now_ms:
                return offer
        return None

    def choose(self, anchor: str, rng: random.Random, *, now_ms: int,
               segment: str | None = None) -> Choice | None:
        """Sample one variant of the live offer for ``anchor`` and the shopper's ``segment``
        (see :meth:`live`) by its probability."""
        offer = self.live(anchor, now_ms=now_ms, segment=segment)
        if offer is None:
            return None
        cumulative = list(itertools.accumulate(v.probability for v in offer.variants))
        i = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
        i = min(i, len(offer.variants) - 1)
        return Choice(offer, i, offer.variants[i].probability)
