from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from streamer.events import BundleOffer, check_offer
from streamer.offers import OfferBook, OfferBuilder, offer_signature
from streamer.policy import EpsilonGreedyPolicy, Proposal


def cand(items: tuple[str, ...], score: float) -> SimpleNamespace:
    return SimpleNamespace(items=items, support=3.0, confidence=0.5, lift=1.5, score=score)


def build(probs: list[float], ts: int = 1_700_000_000_000, discount: float = 10.0) -> BundleOffer:
    proposals = [Proposal(cand(("a", f"b{i}"), 1.0 - i / 10), discount, p, 1.0 - i / 10)
                 for i, p in enumerate(probs)]
    return OfferBuilder(ttl_ms=1000).build(
        "a", proposals, prices={"a": 10.0, "b0": 5.0, "b1": 2.5}, policy_version="v0",
        now_ms=ts)


def test_offer_fields() -> None:
    offer = build([0.75, 0.25])
    check_offer(offer)
    v = offer.variants
    assert [x.bundle_price for x in v] == [13.5, 11.25]
    assert [x.probability for x in v] == [0.75, 0.25]
    assert offer.expires_at - offer.ts == 1000


def test_offer_id_is_stable_and_content_addressed() -> None:
    assert build([1.0]).offer_id == build([1.0]).offer_id
    assert build([0.5, 0.5]).offer_id != build([0.6, 0.4]).offer_id


def test_signature_ignores_probability_noise_only() -> None:
    assert offer_signature(build([0.5, 0.5])) == offer_signature(build([0.51, 0.49]))
    assert offer_signature(build([0.5, 0.5])) != offer_signature(build([0.8, 0.2]))
    assert offer_signature(build([1.0], discount=10)) != offer_signature(build([1.0], discount=5))


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5, 1.0])
def test_epsilon_greedy_probabilities(epsilon: float) -> None:
    cands = [cand(("a", f"b{i}"), s) for i, s in enumerate([0.2, 0.9, 0.5])]
    props = EpsilonGreedyPolicy(epsilon=epsilon, max_variants=3).propose("a", cands)
    assert sum(p.probability for p in props) == pytest.approx(1.0)
    assert props[0].candidate.items == ("a", "b1")  # best score first
    assert min(p.probability for p in props) >= epsilon / 3 - 1e-12


def test_book_keeps_newest_and_samples_by_probability() -> None:
    book = OfferBook()
    old, new = build([1.0], ts=1_700_000_000_000), build([0.7, 0.3], ts=1_700_000_000_500)
    assert book.update(new) and not book.update(old)
    assert not book.update(new)  # the same offer again
    rng = random.Random(1)
    picks = Counter(book.choose("a", rng, now_ms=1_700_000_000_600).variant
                    for _ in range(4000))
    assert picks[0] / 4000 == pytest.approx(0.7, abs=0.03)
    assert book.choose("a", rng, now_ms=1_700_000_002_000) is None  # expired
    assert book.choose("nope", rng, now_ms=0) is None
