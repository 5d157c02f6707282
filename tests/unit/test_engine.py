"""The engine without Kafka: fan-out, learning, offer revision, rate limiting, idempotence."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine, EngineConfig, EngineState, ItemBasket
from streamer.events import EventCodec, OrderLine, PurchaseEvent, check_offer

T0 = 1_700_000_000_000


def order(n: int, items: list[str], *, ts: int = T0, offer_id: str | None = None,
          price: float = 2.0) -> PurchaseEvent:
    return PurchaseEvent(event_id=f"e{n}", ts=ts, user_id="u", session_id=f"s{n}",
                         order_id=f"o{n}", offer_id=offer_id,
                         items=[OrderLine(item_id=i, quantity=1, unit_price=price)
                                for i in items])


def test_fan_out_one_basket_per_distinct_item_plus_the_order_counter() -> None:
    p = order(1, ["a", "b", "a", "c"])
    baskets = Engine.in_memory().fan_out(p)
    assert [(b.anchor, b.partners) for b in baskets] == [
        ("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"]), (TOTAL_KEY, [])]
    assert all(b.event_id == "e1" and b.ts == T0 for b in baskets)
    assert baskets[0].partner_prices == [2.0, 2.0]


def test_prices_paid_through_an_offer_are_not_list_prices() -> None:
    weighted = Engine.in_memory(EngineConfig(offer_purchase_weight=1.0))  # counted in full
    baskets = weighted.fan_out(order(1, ["a", "b"], offer_id="of-1", price=1.0))
    assert {b.price for b in baskets if b.anchor != TOTAL_KEY} == {-1.0}


def test_orders_through_an_offer_weigh_offer_purchase_weight() -> None:
    through = order(1, ["a", "b"], offer_id="of-1")
    assert Engine.in_memory().fan_out(through) == []  # left out by default
    weighted = Engine.in_memory(EngineConfig(offer_purchase_weight=0.25))
    assert {b.weight for b in weighted.fan_out(through)} == {0.25}
    # Any other order weighs 1 whatever the offers' weight.
    assert {b.weight for b in Engine.in_memory().fan_out(order(2, ["a", "b"]))} == {1.0}


def test_the_engine_leaves_orders_through_an_offer_out_by_default() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    engine.handle_purchase(order(1, ["tea", "cup"], offer_id="of-1"))
    assert engine.stats.item_count("tea", T0) == 0.0
    engine.handle_purchase(order(2, ["tea", "cup"]))
    assert engine.stats.item_count("tea", T0) == pytest.approx(1.0)
    counted = Engine.in_memory(EngineConfig(min_support=1.0, offer_purchase_weight=0.5))
    counted.handle_purchase(order(1, ["tea", "cup"], offer_id="of-1"))
    assert counted.stats.item_count("tea", T0) == pytest.approx(0.5)


def test_basket_round_trips_through_the_wire() -> None:
    b = Engine.in_memory().fan_out(order(1, ["a", "b"]))[0]
    assert msgspec.json.decode(msgspec.json.encode(b), type=ItemBasket) == b


def test_offers_follow_the_best_partner_and_are_valid() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    published = []
    for n in range(3):
        published += engine.handle_purchase(order(n, ["tea", "cup"], ts=T0 + n))
    for n in range(3, 9):
        published += engine.handle_purchase(order(n, ["tea", "scone"], ts=T0 + n))
    offer = engine.live_offer("tea")
    assert offer is not None and offer.variants[0].items == ["tea", "scone"]
    assert offer.variants[0].bundle_price == pytest.approx(3.6)  # (2 + 2) * 0.9
    codec = EventCodec()
    for o in published:
        check_offer(o)  # probabilities sum to 1, anchor first
        assert codec.decode_offer(codec.encode(o)) == o  # schema-valid


def test_a_late_purchase_makes_its_anchors_offers_as_of_now() -> None:
    """A purchase delivered late (older than what was learned before it) revises its anchors
    at the newest event time learned, not at its own: an offer made then was stamped, and
    expired, in the past."""
    day = 86_400_000
    e = Engine.in_memory(EngineConfig(min_support=1.5))
    e.handle_purchase(order(1, ["jam", "pot"], ts=T0))
    offers = e.handle_purchase(order(2, ["jam", "pot"], ts=T0 - 2 * day))
    assert {o.anchor_item_id for o in offers} == {"jam", "pot"}
    assert {o.ts for o in offers} == {T0} and all(o.expires_at > T0 for o in offers)


def test_a_purchase_from_long_ago_neither_overflows_nor_inflates_the_statistics() -> None:
    """Statistics read before their landmark are not extrapolated back: a purchase stamped
    2000-01-01 (the schema's floor) read counts of ~1e58, overflowed at a 7-day half-life
    (the worker's agent crashed, again on every redelivery) or made offers the codec
    refused (support over 1e12)."""
    e = Engine.in_memory(EngineConfig(half_life_s=7 * 86_400.0, min_support=1.0))
    e.handle_purchase(order(1, ["tea", "cup"], ts=T0))
    e.handle_purchase(order(2, ["tea", "cup"], ts=946_684_800_000))
    assert e.stats.item_count("tea", 946_684_800_000) == pytest.approx(1.0)
    assert e.stats.pair_count("tea", "cup", 946_684_800_000) == pytest.approx(1.0)


def test_an_items_price_is_its_newest_purchases_whatever_the_arrival_order() -> None:
    """A purchase delivered late must not roll a newer price back to its older one (the
    catalogue used to keep whichever arrived last: the bundle priced 6.3 instead of 7.2)."""
    def run(order_of: list[int]) -> tuple[float, float]:
        e = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
        events = [order(1, ["tea", "cup"], ts=T0), order(2, ["tea", "cup"], ts=T0 + 1_000),
                  order(3, ["tea", "cup"], ts=T0 + 60_000, price=3.0)]  # tea went up
        for offset, k in enumerate(order_of):  # the offsets they arrive at
            e.handle_purchase(events[k], offset=offset)
        (cup,) = [o for o in e.handle_purchase(order(9, ["cup", "jam"], ts=T0 + 120_000,
                                                     price=5.0), offset=9)
                  if o.anchor_item_id == "cup"]
        return e.state.catalog["tea"], next(v.bundle_price for v in cup.variants
                                            if v.items == ["cup", "tea"])

    assert run([0, 1, 2]) == run([0, 2, 1]) == (3.0, round((3.0 + 5.0) * 0.9, 2))


def test_rate_limit_in_event_time() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=1000))
    out = [engine.handle_purchase(order(n, ["tea", "cup" if n < 2 else "scone"], ts=T0 + n * 100))
           for n in range(8)]
    tea = [o for offers in out for o in offers if o.anchor_item_id == "tea"]
    assert len(tea) == 1  # all eight orders fall within one second of event time
    later = engine.handle_purchase(order(99, ["tea", "scone"], ts=T0 + 5000))
    assert [o.anchor_item_id for o in later if o.anchor_item_id == "tea"] == ["tea"]


def test_an_offer_left_unchanged_is_reconsidered_once_per_interval() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=1000))
    evaluated: list[tuple[str, int]] = []
    candidates = engine._candidates  # ranks an anchor's candidates: what an evaluation costs

    def spy(anchor: str, now_ms: int) -> Any:
        evaluated.append((anchor, now_ms))
        return candidates(anchor, now_ms)

    engine._candidates = spy  # type: ignore[method-assign]
    first = engine.handle_purchase(order(0, ["tea", "cup"], ts=T0))
    assert {o.anchor_item_id for o in first} == {"tea", "cup"}
    # Past the interval the offer is reconsidered, and found unchanged...
    assert engine.handle_purchase(order(1, ["tea", "cup"], ts=T0 + 1000)) == []
    assert ("tea", T0 + 1000) in evaluated
    # ...so within the interval after that evaluation, tea is not reconsidered, although the
    # scone orders would change its offer (before, each of these baskets was evaluated).
    evaluated.clear()
    for n in range(2, 8):
        out = engine.handle_purchase(order(n, ["tea", "scone"], ts=T0 + 1000 + n * 100))
        assert all(o.anchor_item_id != "tea" for o in out)
    assert not [t for a, t in evaluated if a == "tea"]
    # An anchor without an offer (scone) is considered on every basket: first offers wait
    # for nothing.
    assert engine.live_offer("scone") is not None
    # The interval over, the change goes out on the next basket.
    later = engine.handle_purchase(order(9, ["tea", "scone"], ts=T0 + 2000))
    tea = [o for o in later if o.anchor_item_id == "tea"]
    assert len(tea) == 1 and tea[0].variants[0].items == ["tea", "scone"]


def evaluations_of(engine: Engine, anchor: str) -> list[int]:
    """The event times (from T0) at which ``engine`` goes on to rank ``anchor``'s candidates."""
    times: list[int] = []
    candidates = engine._candidates

    def spy(a: str, now_ms: int) -> Any:
        if a == anchor:
            times.append(now_ms - T0)
        return candidates(a, now_ms)

    engine._candidates = spy  # type: ignore[method-assign]
    return times


@pytest.mark.parametrize("cap_ms", [4000, 1000, 0])
def test_unchanged_evaluations_in_a_row_wait_longer_up_to_the_cap(cap_ms: int) -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=1000,
                                           max_recheck_interval_ms=cap_ms))
    tea = evaluations_of(engine, "tea")
    for n in range(131):  # tea with cup every 100 ms for 13 s: its offer never changes
        engine.handle_purchase(order(n, ["tea", "cup"], ts=T0 + n * 100))
    if cap_ms == 4000:  # 1 s, 2 s, 4 s, then the cap
        assert tea == [0, 1000, 2000, 4000, 8000, 12000]
    else:  # a cap at or below min_interval_ms: one wait, as before
        assert tea == list(range(0, 13001, 1000))
    # Scones now sell with tea too: the next evaluation changes tea's offer...
    tea.clear()
    for n in range(131, 161):
        out = engine.handle_purchase(order(n, ["tea", "scone"], ts=T0 + n * 100))
        if any(o.anchor_item_id == "tea" for o in out):
            break
    first = 16000 if cap_ms == 4000 else 14000
    offer = engine.live_offer("tea")
    assert tea == [first] and ["tea", "scone"] in [v.items for v in offer.variants]
    # ...and the waits start over from min_interval_ms.
    tea.clear()
    for m in range(n + 1, n + 50):
        engine.handle_purchase(order(m, ["tea", "scone"], ts=T0 + m * 100))
    assert tea[:2] == [first + 1000, first + 2000]


def test_a_new_policy_reconsiders_unchanged_offers_at_once() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=1000))
    engine.handle_purchase(order(0, ["tea", "cup"], ts=T0))
    assert engine.handle_purchase(order(1, ["tea", "cup"], ts=T0 + 1000)) == []  # unchanged
    engine.set_policy(Engine.v0_policy(EngineConfig(min_support=1.0, discount_pct=15.0)))
    swapped = engine.handle_purchase(order(2, ["tea", "cup"], ts=T0 + 1001))
    assert {o.anchor_item_id for o in swapped} == {"tea", "cup"}


def test_unchanged_offers_are_not_republished() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    engine.handle_purchase(order(0, ["tea", "cup"]))
    engine.handle_purchase(order(1, ["tea", "cup"], ts=T0 + 1))
    assert engine.handle_purchase(order(2, ["tea", "cup"], ts=T0 + 2)) == []


@pytest.mark.parametrize("min_change", [0.05, 0.0])
def test_an_exploration_variant_trading_places_does_not_republish_the_offer(
        min_change: float) -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0, max_triples=0,
                                           min_change=min_change))
    ts = iter(range(T0, T0 + 10**6))
    history = [["cup"]] * 6 + [["jam"]] * 4 + [["pie"]] * 2 + [["bun"]]
    for n, partners in enumerate(history):
        engine.handle_purchase(order(n, ["tea", *partners], ts=next(ts)))

    def variants() -> list[tuple[str, float]]:
        return [(v.items[1], round(v.probability, 3)) for v in engine.live_offer("tea").variants]

    assert variants() == [("cup", 0.933), ("jam", 0.033), ("pie", 0.033)]
    # bun overtakes pie: one exploration variant (a thirtieth of the mass) trades places...
    out = [o for n in (20, 21) for o in engine.handle_purchase(order(n, ["tea", "bun"],
                                                                     ts=next(ts)))]
    now = next(ts)
    assert engine.stats.pair_count("tea", "bun", now) > engine.stats.pair_count("tea", "pie", now)
    if min_change == 0.0:  # every change goes out
        assert [o for o in out if o.anchor_item_id == "tea"]
        assert variants() == [("cup", 0.933), ("jam", 0.033), ("bun", 0.033)]
        return
    assert not [o for o in out if o.anchor_item_id == "tea"]  # ...and tea's offer stays
    assert variants() == [("cup", 0.933), ("jam", 0.033), ("pie", 0.033)]
    # jam overtakes cup: the favourite changes, and the offer goes out.
    out = [o for n in range(30, 34) for o in engine.handle_purchase(order(n, ["tea", "jam"],
                                                                          ts=next(ts)))]
    assert [o for o in out if o.anchor_item_id == "tea"]
    assert variants() == [("jam", 0.933), ("cup", 0.033), ("bun", 0.033)]


def _state(engine: Engine) -> dict[str, Any]:
    s = engine.state
    return {"items": dict(s.items), "counts": dict(s.counts), "catalog": dict(s.catalog),
            "offers": dict(s.offers)}


def test_duplicates_and_delivery_order_do_not_change_the_state() -> None:
    orders = [order(n, random.Random(n).sample(list("abcdefg"), 3), ts=T0 + n * 1000)
              for n in range(40)]
    once = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    for o in orders:
        once.handle_purchase(o)
    twice = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    for o in orders:
        twice.handle_purchase(o)
        twice.handle_purchase(o)
    assert _state(twice)["items"] == _state(once)["items"]
    assert _state(twice)["counts"] == _state(once)["counts"]
    # Redelivery of an older slice after newer ones: still counted once.
    redelivered = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    for o in orders:
        redelivered.handle_purchase(o)
    for o in orders[:10]:
        assert redelivered.handle_purchase(o) == []
    assert _state(redelivered)["items"] == _state(once)["items"]


def test_learning_in_place_between_releases_changes_no_offer_and_no_state() -> None:
    rng = random.Random(5)
    config = EngineConfig(min_support=1.0, min_interval_ms=2_000, top_k=8, top_k_triples=4)
    copying = Engine.in_memory(config)
    state = EngineState.in_memory()
    in_place = Engine(config, state, Engine.v0_policy(config), in_place_learning=True)
    offers = 0
    for n in range(300):
        o = order(n, rng.sample(list("abcdefghij"), rng.randint(1, 5)), ts=T0 + n * 700)
        published = in_place.handle_purchase(o)
        assert published == copying.handle_purchase(o)
        offers += len(published)
        if n % 7 == 0:
            in_place.release_learned()
    assert offers > 50
    assert _state(in_place) == _state(copying)
    table = in_place.state.items["a"].stats.partners  # type: ignore[union-attr]
    in_place.handle_purchase(order(300, ["a", "b"], ts=T0 + 300 * 700))
    assert in_place.state.items["a"].stats.partners is table  # type: ignore[union-attr]


@pytest.mark.parametrize("in_place", [False, True])
def test_a_batch_learns_what_its_baskets_learn_one_by_one(in_place: bool) -> None:
    # The agents learn batches of any size (what the queue held): the records, counts and
    # prices must be those of learning every basket alone, in the batch's order, floats
    # included, or state would depend on batching (a restarted worker's batches differ).
    # Redeliveries (of earlier batches and inside one), unknown offsets, session baskets
    # (count_anchor False), lighter weights, price changes and table purges (top_k 4).
    rng = random.Random(17 + in_place)
    config = EngineConfig(min_support=1.0, min_interval_ms=1_000, top_k=4, top_k_triples=3,
                          triple_partners=4)
    together = Engine(config, EngineState.in_memory(), Engine.v0_policy(config),
                      in_place_learning=in_place)
    alone = Engine(config, EngineState.in_memory(), Engine.v0_policy(config),
                   in_place_learning=in_place)
    items = [f"i{k}" for k in range(30)]
    sent: list[ItemBasket] = []
    offsets = {0: 0, 1: 0}
    redelivered = 0
    for batch in range(80):
        baskets: list[ItemBasket] = []
        for n in range(rng.randint(1, 12)):
            if sent and rng.random() < 0.15:
                # A redelivery: of an earlier batch, or of this one (before the basket here).
                baskets.append(rng.choice(sent + baskets))
                continue
            source = rng.choice([0, 1])
            offsets[source] += 1
            chosen = rng.sample(items[:rng.choice([8, 30])], rng.randint(1, 5))
            weight = rng.choice([1.0, 1.0, 0.3])
            ts = T0 + batch * 900 + n
            offset = offsets[source] if rng.random() < 0.9 else -1
            baskets.append(ItemBasket(TOTAL_KEY, [], ts, f"e{batch}-{n}", weight=weight,
                                      source=source, offset=offset))
            for item in chosen:
                baskets.append(ItemBasket(
                    item, [p for p in chosen if p != item], ts, f"e{batch}-{n}",
                    price=rng.choice([-1.0, 2.0, 2.5]), weight=weight,
                    partner_prices=[rng.choice([-1.0, 3.0, 3.5]) for p in chosen if p != item],
                    source=source, offset=offset, count_anchor=rng.random() < 0.9))
        sent += baskets
        _, dups = together.learn_baskets(baskets)
        assert dups == sum(alone.learn_baskets([b])[1] for b in baskets)
        redelivered += dups
        if in_place and batch % 5 == 0:
            together.release_learned()
            alone.release_learned()
    state, reference = _state(together), _state(alone)
    assert state["items"] == reference["items"]
    assert state["counts"] == reference["counts"]
    assert state["catalog"] == reference["catalog"]
    assert redelivered > 20


def test_a_batch_learns_prices_in_its_order() -> None:
    # A partner's price is filled in by the first basket of the batch that tells it (its own
    # anchor's price aside), whatever the anchors of the baskets between.
    engine = Engine.in_memory(EngineConfig(min_support=1.0))

    def basket(anchor: str, pot_price: float, n: int) -> ItemBasket:
        return ItemBasket(anchor, ["pot"], T0 + n, f"e{n}", price=2.0,
                          partner_prices=[pot_price], source=0, offset=n)

    engine.learn_baskets([basket("tea", -1.0, 1), basket("cup", 3.5, 2), basket("tea", 4.0, 3)])
    assert engine.state.catalog["pot"] == 3.5


def test_live_and_replay_paths_agree() -> None:
    """The faust app learns baskets one by one after the repartition; replay learns whole
    orders. Interleaving the baskets of different orders (as partitions do) gives the same
    statistics."""
    orders = [order(n, random.Random(n).sample(list("abcdef"), 3), ts=T0 + n) for n in range(30)]
    replay = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    for o in orders:
        replay.handle_purchase(o)
    live = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    fan_out = Engine.in_memory().fan_out
    baskets = [b for o in orders for b in fan_out(o)]
    by_anchor: dict[str, list[ItemBasket]] = {}
    for b in baskets:
        by_anchor.setdefault(b.anchor, []).append(b)
    # Each anchor's baskets stay in order (one partition), anchors interleave arbitrarily.
    queues = list(by_anchor.values())
    rng = random.Random(0)
    while queues:
        q = rng.choice(queues)
        live.learn_basket(q.pop(0))
        queues = [q for q in queues if q]
    assert dict(live.state.items) == dict(replay.state.items)
    assert dict(live.state.counts) == dict(replay.state.counts)


def test_an_unchanged_offer_is_refreshed_after_half_its_life() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0,
                                           offer_ttl_ms=10_000))
    engine.handle_purchase(order(0, ["tea", "cup"]))
    engine.handle_purchase(order(1, ["tea", "cup"], ts=T0 + 1))
    first = engine.live_offer("tea")
    assert first is not None
    assert engine.handle_purchase(order(2, ["tea", "cup"], ts=T0 + 4_000)) == []
    refreshed = [o for o in engine.handle_purchase(order(3, ["tea", "cup"], ts=T0 + 6_000))
                 if o.anchor_item_id == "tea"]
    assert len(refreshed) == 1 and refreshed[0].expires_at == T0 + 16_000
    assert [v.items for v in refreshed[0].variants] == [v.items for v in first.variants]


SEGMENTS = ("loyal", "bargain")


def segmented_engine(**config: Any) -> Engine:
    from streamer.online import FEATURE_NAMES
    from streamer.policy import TorchPolicy

    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0,
                                           segments=SEGMENTS, **config))
    engine.set_policy(TorchPolicy.initial(FEATURE_NAMES, seed=0))
    return engine


def test_one_offer_per_anchor_and_segment_with_the_segments_features() -> None:
    engine = segmented_engine()
    published = engine.handle_purchase(order(0, ["tea", "cup"]))
    tea = {o.segment: o for o in published if o.anchor_item_id == "tea"}
    assert list(tea) == ["all", "loyal", "bargain"]  # the default segment's first
    for segment, offer in tea.items():
        check_offer(offer)
        assert engine.live_offer("tea", segment) is offer
    assert engine.live_offer("tea") is tea["all"]
    # Each decided with its segment's slot (the default segment has none).
    slots = {s: [engine.featurizer(T0, s)(c, 0.0)[f"segment_{b}"] for b in range(4)]
             for s in tea
             for c in engine.stats.candidates("tea", now_ms=T0, max_pairs=1, max_triples=0,
                                              min_support=0.0)}
    assert slots == {"all": [0.0] * 4, "loyal": [1.0, 0, 0, 0], "bargain": [0, 1.0, 0, 0]}


def test_live_offer_falls_back_to_the_default_segment() -> None:
    engine = segmented_engine(offer_ttl_ms=10_000)
    engine.handle_purchase(order(0, ["tea", "cup"]))
    engine.handle_purchase(order(1, ["tea", "cup"]))  # support stays above 1 as it decays
    default, loyal = engine.live_offer("tea"), engine.live_offer("tea", "loyal")
    assert default is not None and loyal is not None and loyal is not default
    assert engine.live_offer("tea", "students") is default  # not a configured segment
    # Expired by now_ms: the default segment's (here a newer, still live one) instead.
    del engine.state.offers["tea"]
    engine.revise_offer("tea", T0 + 9_000)
    newer = engine.live_offer("tea")
    assert newer is not None and newer.ts == T0 + 9_000 and newer.segment == "all"
    assert engine.live_offer("tea", "loyal", now_ms=T0 + 5_000) is loyal
    assert engine.live_offer("tea", "loyal", now_ms=T0 + 10_000) is newer
    assert engine.live_offer("tea", "loyal") is loyal  # without a time: the last published


def test_without_segments_there_is_one_offer_per_anchor() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    published = engine.handle_purchase(order(0, ["tea", "cup"]))
    assert sorted(o.anchor_item_id for o in published) == ["cup", "tea"]
    assert engine.live_offer("tea", "loyal") is engine.live_offer("tea")
    assert set(engine.state.offers) == {"tea", "cup"}


def test_settings_map_segments_onto_the_engine() -> None:
    from pydantic import ValidationError

    from streamer.app.factory import engine_config
    from streamer.settings import OfferSettings, Settings

    settings = Settings(offers=OfferSettings(segments=" loyal, bargain"))
    assert engine_config(settings).segments == ("loyal", "bargain")
    assert engine_config(Settings()).segments == ()
    with pytest.raises(ValidationError):
        OfferSettings(segments="a,b,c,d,e")


def test_the_partner_budget_bounds_the_engine_s_tables() -> None:
    # 60 anchors; i00 and i01 are always bought together, with 8 others at random.
    catalogue = [f"i{k:02d}" for k in range(60)]
    rng = random.Random(3)
    orders = [order(n, ["i00", "i01", *rng.sample(catalogue[2:], 8)]) for n in range(200)]

    def largest(engine: Engine) -> int:
        return max(len(r.stats.partners) for r in engine.state.items.values() if r.stats)

    free = Engine.in_memory(EngineConfig(top_k=64))
    budget = Engine.in_memory(EngineConfig(top_k=64, max_partner_entries=60 * 32))
    for o in orders:
        free.handle_purchase(o)
        budget.handle_purchase(o)
    assert largest(free) == 59
    # 1,920 entries over 60 anchors: 32 each (a purge keeps 16).
    assert largest(budget) <= 32
    assert sum(len(r.stats.partners) for r in budget.state.items.values() if r.stats) <= 1920
    # A heavy hitter survives: i01 is in every one of i00's 200 orders, far above the bound
    # (N / 17, N = 1,800 partner increments), and still i00's offer.
    assert budget.live_offer("i00").variants[0].items == ["i00", "i01"]
    assert budget.stats.pair_count("i00", "i01", T0) >= 200 - budget.stats.pair_error("i00", T0)


def test_the_partner_budget_is_a_setting() -> None:
    from streamer.app.factory import engine_config
    from streamer.settings import Settings

    assert engine_config(Settings()).max_partner_entries is None
    settings = Settings(copurchase={"max_partner_entries": 50_000_000})
    assert engine_config(settings).max_partner_entries == 50_000_000


def test_marks_of_unchanged_offers_stay_bounded() -> None:
    # One mark per anchor reconsidered: those past their time by more than the longest wait
    # are of anchors gone quiet and are dropped, so a large catalogue does not grow the
    # engine's memory without bound.
    engine = Engine.in_memory(EngineConfig(min_interval_ms=1000, max_recheck_interval_ms=2000))
    for n in range(20_000):
        engine._note_unchanged(f"i{n}", T0 + n * 10, None)
    assert len(engine._unchanged_at) < 4_096 + 100
    last = T0 + 19_999 * 10
    assert all(due > last - 2000 - 4_096 * 10 for due, _ in engine._unchanged_at.values())
    assert engine._unchanged_at[f"i{19_999}"] == (last + 1000, 1000)


def test_the_revision_thresholds_are_settings() -> None:
    from streamer.app.factory import engine_config
    from streamer.settings import Settings

    default, engine_default = engine_config(Settings()), EngineConfig()
    assert (default.min_change, default.max_recheck_interval_ms) == (0.05, 60_000)
    assert (engine_default.min_change, engine_default.max_recheck_interval_ms) == (0.05, 60_000)
    tuned = engine_config(Settings(offers={"min_change": 0.0, "max_recheck_interval_s": 5}))
    assert (tuned.min_change, tuned.max_recheck_interval_ms) == (0.0, 5_000)


def test_the_offer_purchase_weight_is_a_setting() -> None:
    from streamer.app.factory import engine_config
    from streamer.settings import Settings

    assert engine_config(Settings()).offer_purchase_weight == 0.0
    settings = Settings(copurchase={"offer_purchase_weight": 0.5})
    assert engine_config(settings).offer_purchase_weight == 0.5


def test_a_reward_drift_makes_the_conversion_model_forget_its_bundles() -> None:
    from streamer.online import DecisionContext, DriftMonitor, variant_features

    bundle = SimpleNamespace(items=("tea", "cup"), support=5.0, confidence=0.3, lift=2.0,
                             score=0.3)
    shown = variant_features(
        bundle, 10.0,
        DecisionContext(segment="all", ts_ms=T0, prices={"tea": 4.0, "cup": 2.0}))
    rng = random.Random(2)
    unwatched = Engine.in_memory()  # replay and evaluation: no monitor
    engine = Engine.in_memory(drift=DriftMonitor())
    prior = engine.conversion.bundle_prior
    fired = []
    for i in range(4000):  # the offers earn 6 a time on a fifth of impressions, then never
        converted = i < 2000 and rng.random() < 0.2
        reward = 6.0 * converted
        unwatched.learn_conversion(shown, converted, reward=reward, policy_version="v1")
        if engine.learn_conversion(shown, converted, reward=reward, policy_version="v1"):
            fired.append(i)
            assert engine.conversion.bundle_posterior(shown) == (prior, prior)  # forgotten
        else:
            assert engine.conversion.bundle_posterior(shown) != (prior, prior)
    assert fired and 2000 <= fired[0] < 2400  # soon after the change, never before it
    assert engine.reward_drifts == len(fired)
    assert unwatched.reward_drifts == 0
    # Without a reward (or a version) nothing is watched.
    assert not engine.learn_conversion(shown, False)


class OneByOne:
    """A learned policy without ``decide_many``: the engine asks it decision by decision."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy

    @property
    def version(self) -> str:
        return str(self._policy.version)

    def decide(self, *args: Any) -> Any:
        return self._policy.decide(*args)

    def propose(self, *args: Any, **kwargs: Any) -> Any:
        return self._policy.propose(*args, **kwargs)


class Counting(OneByOne):
    """The same policy with ``decide_many``, counting the decisions asked at once."""

    def __init__(self, policy: Any) -> None:
        super().__init__(policy)
        self.batches: list[int] = []

    def decide_many(self, requests: Any) -> Any:
        self.batches.append(len(requests))
        return self._policy.decide_many(requests)


@pytest.mark.parametrize("broken", [False, True])
def test_decisions_made_together_are_the_decisions_made_one_by_one(broken: bool) -> None:
    # An engine revising a batch's anchors asks a policy that decides in batches for all
    # their decisions at once (Engine._revise_anchors): the offers, the decisions logged and
    # the state are those of asking it one by one. A policy whose scores are not finite
    # falls back to v0 the same way either way.
    import torch

    from streamer.online import FEATURE_NAMES, PROPENSITY_FEATURE
    from streamer.policy import TorchPolicy

    policy = TorchPolicy.initial(FEATURE_NAMES, seed=3,
                                 value_prior=(PROPENSITY_FEATURE, "log_offer_price"))
    with torch.no_grad():  # a network that scores variants apart (a fresh one scores alike)
        torch.manual_seed(3)
        for parameter in policy.scorer.parameters():
            parameter.add_(torch.randn_like(parameter))
        if broken:
            policy.scorer.layers[0].bias[0] = float("nan")
    config = EngineConfig(min_support=1.0, min_interval_ms=2_000, segments=SEGMENTS)
    logs: dict[str, list[Any]] = {"together": [], "one_by_one": []}
    together = Engine(config, EngineState.in_memory(), Engine.v0_policy(config),
                      decisions=SimpleNamespace(add=logs["together"].append))
    one_by_one = Engine(config, EngineState.in_memory(), Engine.v0_policy(config),
                        decisions=SimpleNamespace(add=logs["one_by_one"].append))
    counting = Counting(policy)
    together.set_policy(counting)  # type: ignore[arg-type]
    one_by_one.set_policy(OneByOne(policy))  # type: ignore[arg-type]
    rng = random.Random(11)
    items = [f"i{k}" for k in range(12)]
    offers = 0
    for batch in range(60):
        orders = [order(batch * 10 + n, rng.sample(items, rng.randint(2, 4)),
                        ts=T0 + batch * 1_500 + n, price=1.0 + n) for n in range(6)]
        baskets = [b for o in orders for b in together.fan_out(o)]
        published = together.learn_baskets(baskets)
        assert published == one_by_one.learn_baskets(baskets)
        offers += len(published[0])
    assert offers > 100
    assert logs["together"] == logs["one_by_one"]
    assert _state(together) == _state(one_by_one)
    assert max(counting.batches) >= 10  # many anchors' decisions were made at once
    versions = {o.policy_version for o in together.state.offers.values()}
    assert versions == ({"v0-greedy"} if broken else {policy.version})
    assert together.policy_failures == one_by_one.policy_failures == (
        sum(counting.batches) if broken else 0)


def test_an_offer_s_signature_is_remembered_for_that_very_offer_only() -> None:
    from streamer.offers import offer_signature

    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    engine.handle_purchase(order(0, ["tea", "cup"]))
    first = engine.live_offer("tea")
    engine.handle_purchase(order(1, ["tea", "pot", "jam"], ts=T0 + 1, price=3.0))
    engine.handle_purchase(order(2, ["tea", "pot", "jam"], ts=T0 + 2, price=3.0))
    second = engine.live_offer("tea")
    assert first is not None and second is not None
    assert offer_signature(first) != offer_signature(second)
    assert engine._signature("tea", first) == offer_signature(first)
    # Another offer under the key (a new revision, or the same one decoded again): rebuilt.
    assert engine._signature("tea", second) == offer_signature(second)
    again = msgspec.json.decode(msgspec.json.encode(second), type=type(second))
    assert engine._signature("tea", again) == offer_signature(second)
    assert engine._signatures["tea"][0] is again


def test_remembered_signatures_revise_as_signatures_built_afresh() -> None:
    # Offers read back from a table of encoded values, decoded anew when its small cache
    # misses (other objects for the same offers): the same revisions as an engine that
    # builds every signature afresh.
    from streamer.app.tables import EncodedTable
    from streamer.events import BundleOffer
    from streamer.offers import offer_signature

    rng = random.Random(5)
    items = [f"i{k:02d}" for k in range(30)]
    orders = [order(n, rng.sample(items, rng.randint(2, 4)), ts=T0 + n * 700,
                    price=rng.choice([2.0, 2.0, 2.0, 2.5]))
              for n in range(3_000)]

    def engine(remember: bool) -> Engine:
        config = EngineConfig(min_interval_ms=1_000, max_recheck_interval_ms=8_000)
        state = EngineState.in_memory()
        state.offers = EncodedTable({}, BundleOffer, cache_size=8)
        made = Engine(config, state, Engine.v0_policy(config))
        if not remember:
            made._signature = lambda key, offer: offer_signature(offer)  # type: ignore[method-assign]
        return made

    remembered, afresh = engine(True), engine(False)
    published = [(remembered.handle_purchase(o), afresh.handle_purchase(o)) for o in orders]
    assert sum(len(a) for a, _ in published) > 200
    assert [a for a, _ in published] == [b for _, b in published]
    assert remembered._signatures  # and it did remember


def test_remembered_signatures_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.engine as engine_module

    monkeypatch.setattr(engine_module, "_SIGNATURES_KEPT", 16)
    engine = Engine.in_memory(EngineConfig(min_support=1.0, min_interval_ms=0))
    engine.handle_purchase(order(0, ["tea", "cup"]))
    offer = engine.live_offer("tea")
    assert offer is not None
    for n in range(100):
        engine._signature(f"k{n}", offer)
    assert len(engine._signatures) <= 16


def test_a_basket_that_fails_leaves_what_its_batch_learned_before_it() -> None:
    # Records are written once per batch: a basket that raises (here a weight learning
    # refuses) must not lose the baskets before it, nor leave itself half learned, nor leave
    # the scratch state to the next batch.
    def basket(anchor: str, n: int, weight: float = 1.0) -> ItemBasket:
        return ItemBasket(anchor, ["pot"], T0 + n, f"e{n}", price=2.0, partner_prices=[3.0],
                          weight=weight, source=0, offset=n)

    engine, reference = Engine.in_memory(), Engine.in_memory()
    with pytest.raises(ValueError):
        engine.learn_baskets([basket("tea", 1), basket("tea", 2), basket("cup", 3, weight=-1.0),
                              basket("jam", 4)])
    reference.learn_baskets([basket("tea", 1), basket("tea", 2)])
    assert _state(engine) == _state(reference)
    assert "cup" not in engine.state.items
    for n in range(5, 9):
        engine.learn_baskets([basket("cup", n), basket("tea", n + 10)])
        reference.learn_baskets([basket("cup", n), basket("tea", n + 10)])
    assert _state(engine) == _state(reference)


@pytest.mark.parametrize("max_variants", [1, 2, 4, 8])
@pytest.mark.parametrize("max_triples", [0, 1, 4])
def test_v0_shows_at_most_offers_max_variants(max_variants: int, max_triples: int) -> None:
    from streamer.app.factory import engine_config
    from streamer.settings import Settings

    settings = Settings(offers={"max_variants": max_variants},
                        copurchase={"max_triples": max_triples})
    config = engine_config(settings)
    assert config.max_pairs >= 1 and config.max_triples <= max_triples
    assert Engine.v0_policy(config).max_variants == max_variants  # type: ignore[attr-defined]


def test_v0_builds_a_featurizer_only_for_the_decisions_it_logs() -> None:
    # v0 reads no features: an evaluation that leaves the offer as it was builds none, a
    # published offer builds one for its logged decision; the offers and decisions are those
    # of an engine building one for every revision (a policy taken to read features).
    from streamer.policy import EpsilonGreedyPolicy

    class Reading(EpsilonGreedyPolicy):
        uses_features = True

    rng = random.Random(3)
    items = [f"i{k:02d}" for k in range(12)]
    orders = [order(n, rng.sample(items, rng.randint(2, 4)), ts=T0 + n * 700)
              for n in range(1_500)]
    config = EngineConfig(min_interval_ms=1_000, max_recheck_interval_ms=8_000)
    runs: dict[str, tuple[list[Any], list[bytes], list[int]]] = {}
    for name, policy in (("v0", Engine.v0_policy(config)),
                         ("reading", Reading(max_variants=config.max_pairs
                                             + config.max_triples))):
        logged: list[Any] = []
        engine = Engine(config, EngineState.in_memory(), policy,
                        decisions=SimpleNamespace(add=logged.append))
        built = [0]
        featurizer = engine.featurizer

        def counting(now_ms: int, segment: str | None = None, *, _f: Any = featurizer,
                     _b: list[int] = built) -> Any:
            _b[0] += 1
            return _f(now_ms, segment)

        engine.featurizer = counting  # type: ignore[method-assign]
        offers = [o for p in orders for o in engine.handle_purchase(p)]
        runs[name] = (offers, [msgspec.json.encode(d) for d in logged], built)
    offers, decisions, built = runs["v0"]
    assert len(offers) > 100 and len(decisions) == len(offers)
    assert built[0] == len(offers)
    assert runs["reading"][2][0] > 2 * len(offers)  # every revision, most changing nothing
    assert [msgspec.json.encode(o) for o in offers] == [
        msgspec.json.encode(o) for o in runs["reading"][0]]
    assert decisions == runs["reading"][1]
