"""Turn a policy's proposals into a :class:`~streamer.events.BundleOffer`.

>>> from types import SimpleNamespace as C
>>> cand = C(items=("a", "b"), support=3.0, confidence=0.5, lift=2.0, score=0.4)
>>> proposal = C(candidate=cand, discount_pct=10.0, probability=1.0, score=0.4)
>>> b = OfferBuilder(segment="all", ttl_ms=60_000)
>>> offer = b.build("a", [proposal], prices={"a": 5.0, "b": 5.0},
...                 policy_version="v0", now_ms=1_700_000_000_000)
>>> offer.variants[0].bundle_price, offer.expires_at - offer.ts
(9.0, 60000)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Protocol

import msgspec

from streamer.events import BundleOffer, Evidence, Variant
from streamer.events.candidates import BundleCandidate


class VariantProposal(Protocol):
    """What an offer is built from: a policy's proposal (``streamer.policy.Proposal`` fits).

    Structural, so offers do not depend on the policy package.
    """

    @property
    def candidate(self) -> BundleCandidate: ...
    @property
    def discount_pct(self) -> float: ...
    @property
    def probability(self) -> float: ...
    @property
    def score(self) -> float: ...


class OfferSink(Protocol):
    """Where built offers go: the ``offers`` topic live, a list in replay and tests."""

    def publish(self, offer: BundleOffer) -> None: ...


Signature = tuple[tuple[tuple[str, ...], float, float, float], ...]

#: How much of an offer's probability mass must move before it is worth a republication: the
#: total variation distance between the old and the new distribution over variants. Below it,
#: a change is noise to the storefront, e.g. an exploration variant (a share of epsilon) that
#: gives way to another as near-tied candidates trade places (:func:`same_offer`).
MATERIAL_SHIFT = 0.05


#: The default price of each item (unknown: 0.0), for ``map(prices.get, items, _UNKNOWN)``.
_UNKNOWN = repeat(0.0)


def bundle_price(items: Sequence[str], discount_pct: float,
                 price_of: Callable[[str, float], float]) -> float:
    """The price of a bundle of ``items`` at ``discount_pct``, to the cent (``price_of``: a
    prices mapping's ``get``; an unknown item counts 0.0). The one place of this arithmetic:
    :func:`proposals_signature` must give the very floats :meth:`OfferBuilder.variants` does.

    >>> bundle_price(("a", "b"), 10.0, {"a": 5.0, "b": 4.99}.get)
    8.99
    """
    price = sum(map(price_of, items, _UNKNOWN)) * (1.0 - discount_pct / 100.0)
    # A positive price only: 0.0 and -0.0 are one key of the cache, and round() keeps the sign.
    return _to_the_cent(price) if price > 0.0 else round(price, 2)


@functools.lru_cache(maxsize=1 << 14)
def _to_the_cent(price: float) -> float:
    """``round(price, 2)``, remembered. Why: round() to a number of digits converts through
    the decimal digits (~0.4 us, more than the rest of :func:`bundle_price`), every evaluation
    of an offer prices its variants again (~4 per evaluation, ~0.8 evaluations per purchase in
    steady state), and the same bundles at the same prices come back: a cache hit costs a
    tenth of that."""
    return round(price, 2)


def offer_signature(offer: BundleOffer) -> Signature:
    """What :func:`same_offer` compares: each variant's bundle, discount, bundle price and
    probability."""
    return variants_signature(offer.variants)


def variants_signature(variants: Sequence[Variant]) -> Signature:
    """:func:`offer_signature` of an offer with these variants (known before it is built)."""
    return tuple((tuple(v.items), v.discount_pct, v.bundle_price, v.probability)
                 for v in variants)


def proposals_signature(proposals: Sequence[VariantProposal], *,
                        prices: Mapping[str, float]) -> Signature:
    """``variants_signature(OfferBuilder.variants(proposals, prices=prices))``, computed
    without building the variants (the same arithmetic, so the same floats). Why: most
    revisions of a hot anchor's offer find it unchanged (~92% on the throughput benchmark), and
    building the variants (structs, evidence) cost more than deciding so.

    >>> from types import SimpleNamespace as C
    >>> cand = C(items=("a", "b"), support=3.0, confidence=0.5, lift=2.0, score=0.4)
    >>> ps = [C(candidate=cand, discount_pct=10.0, probability=0.3, score=0.4)]
    >>> prices = {"a": 5.0, "b": 4.99}
    >>> proposals_signature(ps, prices=prices) == variants_signature(
    ...     OfferBuilder.variants(ps, prices=prices))
    True
    """
    if not proposals:
        raise ValueError("an offer needs at least one proposal")
    total = sum([p.probability for p in proposals])
    get = prices.get
    # A loop, not a generator into tuple(): this runs on every revision (2.9 against 3.5 us
    # for four proposals).
    signature = []
    for p in proposals:
        items, discount = p.candidate.items, p.discount_pct
        signature.append((tuple(items), discount, bundle_price(items, discount, get),
                          p.probability / total))
    return tuple(signature)


def same_offer(old: Signature, new: Signature, *, shift: float = MATERIAL_SHIFT) -> bool:
    """True when an offer of signature ``new`` is not materially different from one of
    ``old``: as many variants, every variant (bundle and discount) in both at the same bundle
    price, and less than ``shift`` of the probability mass moved (total variation distance; a
    variant in one only moved all of its probability). Variants' order does not matter.

    >>> tea = lambda *vs: tuple(((("tea",) + b), 10.0, 9.0, p) for b, p in vs)
    >>> old = tea((("cup",), 0.925), (("pot",), 0.025), (("jam",), 0.025), (("bun",), 0.025))
    >>> same_offer(old, tea((("cup",), 0.925), (("pot",), 0.025), (("jam",), 0.025),
    ...                     (("pie",), 0.025)))  # an exploration variant traded: 0.025 moved
    True
    >>> same_offer(old, tea((("cup",), 0.925), (("pot",), 0.025), (("pie",), 0.025),
    ...                     (("egg",), 0.025)))  # two of them: 0.05
    False
    >>> same_offer(old, tea((("pot",), 0.925), (("cup",), 0.025), (("jam",), 0.025),
    ...                     (("bun",), 0.025)))  # the favourite
    False
    >>> same_offer(old, old[:3] + ((("tea", "bun"), 10.0, 9.5, 0.025),))  # a price, always
    False
    >>> same_offer(old[:3], old)  # an option more (or fewer) for the shopper, always
    False
    """
    if old == new:
        return True
    if len(old) != len(new):
        return False
    before = {(items, discount): (price, p) for items, discount, price, p in old}
    moved = 0.0
    for items, discount, price, p in new:
        was = before.pop((items, discount), None)
        if was is None:
            moved += p
        elif was[0] != price:
            return False  # never a stale bundle price, however rarely the variant is shown
        else:
            moved += abs(p - was[1])
    for _, p in before.values():
        moved += p
    return moved < 2.0 * shift - 1e-12  # a shift of exactly ``shift`` counts, float sums aside


class OfferBuilder:
    """Builds offers; the offer id is a stable hash of anchor, version and time, so replaying
    the same events yields the same offers."""

    def __init__(self, *, segment: str = "all", ttl_ms: int = 3_600_000) -> None:
        self.segment = segment
        self.ttl_ms = ttl_ms

    def build(
        self,
        anchor: str,
        proposals: Sequence[VariantProposal],
        *,
        prices: Mapping[str, float],
        policy_version: str,
        now_ms: int,
        segment: str | None = None,
    ) -> BundleOffer:
        """The offer of ``proposals`` for ``anchor`` and ``segment`` (default: the builder's):
        :meth:`variants`, then :meth:`offer`. Raises ``ValueError`` without proposals."""
        return self.offer(anchor, self.variants(proposals, prices=prices),
                          policy_version=policy_version, now_ms=now_ms, segment=segment)

    @staticmethod
    def variants(
        proposals: Sequence[VariantProposal],
        *,
        prices: Mapping[str, float],
        candidate_scores: bool = False,
    ) -> list[Variant]:
        """The variants of ``proposals`` (probabilities normalised, bundle prices from
        ``prices``); each scored with its proposal's score, or its candidate's when
        ``candidate_scores``. Raises ``ValueError`` without proposals."""
        if not proposals:
            raise ValueError("an offer needs at least one proposal")
        total = sum([p.probability for p in proposals])
        get = prices.get
        variants = []
        for p in proposals:
            c = p.candidate
            variants.append(Variant(
                items=list(c.items),
                discount_pct=p.discount_pct,
                bundle_price=bundle_price(c.items, p.discount_pct, get),
                probability=p.probability / total,
                score=c.score if candidate_scores else p.score,
                evidence=Evidence(
                    support=c.support, confidence=min(1.0, c.confidence), lift=c.lift
                ),
            ))
        return variants

    def offer(
        self,
        anchor: str,
        variants: list[Variant],
        *,
        policy_version: str,
        now_ms: int,
        segment: str | None = None,
    ) -> BundleOffer:
        """An offer of ``variants`` for ``segment`` (default: the builder's) made at ``now_ms``,
        with its content-hash id."""
        draft = BundleOffer(
            offer_id="draft",
            ts=now_ms,
            anchor_item_id=anchor,
            segment=segment or self.segment,
            policy_version=policy_version,
            variants=variants,
            expires_at=now_ms + self.ttl_ms,
        )
        # Same content, same id: replays give the same ids, and two revisions built in the same
        # millisecond still get different ones.
        digest = hashlib.blake2b(msgspec.json.encode(draft), digest_size=12).hexdigest()
        return msgspec.structs.replace(draft, offer_id=f"of-{digest}")
