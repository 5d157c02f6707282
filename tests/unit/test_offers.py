from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from types import SimpleNamespace
from typing import TYPE_CHECKING

import msgspec
import pytest

from streamer.events import BundleOffer, check_offer
from streamer.offers import OfferBook, OfferBuilder, offer_signature, same_offer
from streamer.policy import EpsilonGreedyPolicy, Proposal

if TYPE_CHECKING:
    from streamer.app.storefront import OfferCache


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


def same(a: BundleOffer, b: BundleOffer) -> bool:
    return same_offer(offer_signature(a), offer_signature(b))


def test_only_material_changes_count() -> None:
    assert same(build([0.5, 0.5]), build([0.51, 0.49]))
    assert same(build([0.5, 0.5]), build([0.54, 0.46]))  # 0.04 of the mass moved
    assert not same(build([0.5, 0.5]), build([0.55, 0.45]))  # 0.05
    assert not same(build([0.5, 0.5]), build([0.8, 0.2]))
    assert not same(build([1.0], discount=10), build([1.0], discount=5))
    assert not same(build([0.5, 0.5]), build([0.5]))  # half the mass on a variant gone


def test_an_exploration_variant_trading_places_is_not_material() -> None:
    # v0 (epsilon 0.1, 4 variants): the favourite at 0.925, three others at 0.025 each.
    policy = EpsilonGreedyPolicy(epsilon=0.1, max_variants=4)
    prices = {"a": 10.0, **{f"b{i}": 1.0 + i for i in range(6)}}

    def offer(scores: list[float]) -> BundleOffer:
        cands = [cand(("a", f"b{i}"), s) for i, s in enumerate(scores)]
        return OfferBuilder().build("a", policy.propose("a", cands), prices=prices,
                                    policy_version="v0", now_ms=1_700_000_000_000)

    live = offer([0.9, 0.5, 0.4, 0.30, 0.29, 0.1])
    assert same(live, offer([0.9, 0.5, 0.4, 0.29, 0.30, 0.1]))  # b3 and b4 near-tied
    assert same(live, offer([0.9, 0.4, 0.5, 0.30, 0.29, 0.1]))  # exploration reordered
    assert not same(live, offer([0.9, 0.1, 0.1, 0.30, 0.29, 0.28]))  # two of three traded
    assert not same(live, offer([0.5, 0.9, 0.4, 0.30, 0.29, 0.1]))  # a new favourite
    moved = offer([0.9, 0.5, 0.4, 0.29, 0.30, 0.1])
    prices["b4"] = 9.0  # an exploration variant's price: material all the same
    assert not same(moved, offer([0.9, 0.5, 0.4, 0.29, 0.30, 0.1]))


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


def for_segment(offer: BundleOffer, segment: str, **changes: int) -> BundleOffer:
    import msgspec

    return msgspec.structs.replace(offer, segment=segment, offer_id=f"{offer.offer_id}-{segment}",
                                   **changes)


def test_book_keeps_one_offer_per_anchor_and_segment_and_falls_back_to_the_default() -> None:
    book = OfferBook()
    default, loyal = build([1.0]), for_segment(build([0.5, 0.5]), "loyal")
    assert book.update(default) and book.update(loyal)
    assert len(book) == 2 and book.anchors() == ["a"]
    now = default.ts + 10
    rng = random.Random(0)
    assert book.choose("a", rng, now_ms=now, segment="loyal").offer is loyal
    assert book.get("a", "loyal") is loyal
    for segment in (None, "all", "bargain"):  # no offer of its own: the default segment's
        assert book.choose("a", rng, now_ms=now, segment=segment).offer is default
        assert book.get("a", segment) is default
    # A newer default offer does not replace the loyal one, and vice versa.
    newer = build([1.0], ts=default.ts + 5, discount=5.0)
    assert book.update(newer)
    assert book.get("a", "loyal") is loyal and book.get("a") is newer


def test_book_falls_back_to_the_default_segment_when_the_segments_offer_expired() -> None:
    book = OfferBook()
    default = build([1.0])  # expires at ts + 1000
    loyal = for_segment(build([1.0], discount=0.0), "loyal", expires_at=default.ts + 100)
    book.update(default)
    book.update(loyal)
    rng = random.Random(0)
    assert book.choose("a", rng, now_ms=default.ts + 50, segment="loyal").offer is loyal
    assert book.choose("a", rng, now_ms=default.ts + 500, segment="loyal").offer is default
    assert book.choose("a", rng, now_ms=default.ts + 5000, segment="loyal") is None


def test_a_book_with_another_default_segment_falls_back_to_that_one() -> None:
    book = OfferBook(default_segment="web")
    web = for_segment(build([1.0]), "web")
    book.update(build([1.0]))  # an "all" offer: just another segment to this book
    book.update(web)
    assert book.choose("a", random.Random(0), now_ms=web.ts + 1, segment="app").offer is web


def test_offer_cache_chooses_by_segment() -> None:
    from streamer.app.storefront import OfferCache
    from streamer.settings import KafkaSettings

    cache = OfferCache(KafkaSettings(), rng=random.Random(0))  # not entered: no Kafka needed
    now = 1_900_000_000_000  # the cache samples at wall-clock time: far-future offers
    default = build([1.0], ts=now)
    bargain = for_segment(build([1.0], ts=now, discount=15.0), "bargain")
    cache.book.update(default)
    cache.book.update(bargain)
    assert cache.choose("a", segment="bargain").offer is bargain
    assert cache.choose("a", segment="loyal").offer is default
    assert cache.choose("a").offer is default
    shown = cache.impression("a", user_id="u", session_id="s", segment="bargain")
    assert shown is not None and shown.offer_id == bargain.offer_id


def incoherent_offers(now: int) -> dict[str, BundleOffer]:
    """Offers the schema accepts and check_offer refuses, each newer than build([...], now)."""
    good = build([0.75, 0.25], ts=now)
    def with_probs(probs: list[float]) -> BundleOffer:
        variants = [msgspec.structs.replace(v, probability=p)
                    for v, p in zip(good.variants, probs, strict=True)]
        return msgspec.structs.replace(good, offer_id=f"bad{probs}", ts=now + 1,
                                       variants=variants)
    return {"sum 0.8": with_probs([0.5, 0.3]), "sum 0": with_probs([0.0, 0.0]),
            "anchor not first": msgspec.structs.replace(
                good, offer_id="bad-anchor", ts=now + 1, anchor_item_id="b0")}


def offer_records(offers: list[BundleOffer]) -> list[SimpleNamespace]:
    """``offers`` as the records of one fetch of partition 0 of ``offers``."""
    from streamer.events import EventCodec

    codec = EventCodec()
    return [SimpleNamespace(topic="offers", partition=0, offset=i, value=codec.encode(o))
            for i, o in enumerate(offers)]


def cache_fed(*fetches: list[SimpleNamespace] | BaseException) -> OfferCache:
    """An OfferCache whose consumer answers its fetches with ``fetches`` in turn (records, or
    an error to raise), its task run until it is closed after the last one."""
    from streamer.app.storefront import OfferCache
    from streamer.settings import KafkaSettings

    class Consumer:
        left = list(fetches)

        async def getmany(self, timeout_ms: int) -> dict[str, list[SimpleNamespace]]:
            if not self.left:
                raise asyncio.CancelledError  # the cache is closed
            fetched = self.left.pop(0)
            if isinstance(fetched, BaseException):
                raise fetched
            return {"offers-0": fetched}

    cache = OfferCache(KafkaSettings(), rng=random.Random(0))
    cache.RETRY_S = 0.0
    cache._consumer = Consumer()  # type: ignore[assignment]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cache._run())
    return cache


def test_offer_cache_drops_and_counts_an_offer_failing_check_offer() -> None:
    now = 1_900_000_000_000
    good = build([0.75, 0.25], ts=now)
    cache = cache_fed(offer_records([good, *incoherent_offers(now).values()]))
    assert cache.invalid == 3
    shown = cache.impression("a", user_id="u", session_id="s")
    assert shown is not None and shown.offer_id == good.offer_id
    assert cache.book.choose("b0", random.Random(0), now_ms=now + 2) is None


def test_offer_cache_goes_on_after_a_failed_fetch() -> None:
    """A fetch that fails (a broker error aiokafka gives up on) is counted and tried again;
    the task used to end there, and the storefront served a frozen book until it expired."""
    from aiokafka.errors import KafkaError

    offer = build([0.75, 0.25], ts=1_900_000_000_000)
    cache = cache_fed(KafkaError("fetch failed"), offer_records([offer]))
    assert cache.errors == 1 and cache.invalid == 0
    shown = cache.impression("a", user_id="u", session_id="s")
    assert shown is not None and shown.offer_id == offer.offer_id


@pytest.mark.parametrize("case", ["sum 0.8", "sum 0", "anchor not first"])
def test_the_workers_offer_index_and_the_trainer_refuse_an_offer_failing_check_offer(
    case: str,
) -> None:
    from streamer.app.offer_index import OfferIndexFeed
    from streamer.app.trainer import FeedbackTrainer, _dispatch
    from streamer.events import EventCodec, InvalidEvent
    from streamer.observability import Metrics
    from streamer.settings import KafkaSettings, Settings, TrainerSettings

    bad = incoherent_offers(1_900_000_000_000)[case]
    data = EventCodec().encode(bad)
    assert EventCodec().decode_offer(data) == bad  # the schema alone accepts it
    feed = OfferIndexFeed(KafkaSettings(), "offers", index=[], lookback_ms=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="semantic"):
        feed._decode(data)
    core = FeedbackTrainer(TrainerSettings(), base_version="v0-greedy")
    record = SimpleNamespace(value=data, partition=0, offset=7)
    _dispatch(core, EventCodec(), "offers", record, Settings(), Metrics())
    assert core.invalid == 1 and bad.offer_id not in core.offers
    assert core._offer_of({"offer": msgspec.to_builtins(bad)}) is None  # embedded: the same


def test_bundle_prices_are_round_s_and_remembered() -> None:
    # round() to the cent, remembered per price before rounding: the same floats as round(),
    # a zero or negative price (a discount past 100 %) included, and a bundle priced again
    # (every evaluation of an offer prices its variants) is a hit.
    from streamer.offers.builder import _to_the_cent, bundle_price

    rng = random.Random(2)
    prices = {f"i{k}": round(rng.uniform(0, 200), 2) for k in range(50)} | {"free": 0.0}
    for _ in range(2_000):
        items = rng.sample(sorted(prices), rng.randint(2, 3))
        discount = rng.choice([0.0, 5.0, 10.0, 12.5, 100.0, 150.0])
        raw = sum(prices[i] for i in items) * (1.0 - discount / 100.0)
        price = bundle_price(items, discount, prices.get)
        assert price == round(raw, 2) and math.copysign(1.0, price) == math.copysign(
            1.0, round(raw, 2))
    assert math.copysign(1.0, bundle_price(["free"], 150.0, prices.get)) == -1.0
    hits = _to_the_cent.cache_info().hits
    bundle_price(["i1", "i2"], 10.0, prices.get)
    bundle_price(["i1", "i2"], 10.0, prices.get)
    assert _to_the_cent.cache_info().hits == hits + 1
