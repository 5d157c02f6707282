"""The price sweep: a partner's price change reaches the live offers that bundle it (in
process, with the engine; ``streamer.app.price_sweep``'s slicing without faust)."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.app.price_sweep import PriceSweep
from streamer.engine import Engine, EngineConfig, OfferDecision
from streamer.events import BundleOffer, OrderLine, PurchaseEvent, check_offer

T0 = 1_700_000_000_000
HOUR = 3_600_000


def order(n: int, lines: dict[str, float], ts: int) -> PurchaseEvent:
    return PurchaseEvent(event_id=f"e{n}", ts=ts, user_id="u", session_id=f"s{n}",
                         order_id=f"o{n}", items=[OrderLine(item_id=i, quantity=1, unit_price=p)
                                                  for i, p in lines.items()])


class Decisions(list[OfferDecision]):
    def add(self, decision: OfferDecision) -> None:
        self.append(decision)


def tea_with_cup(config: EngineConfig | None = None) -> tuple[Engine, Decisions]:
    """An engine whose tea offer bundles the cup at 4.0 + 4.0, 10 % off (7.20), and whose cup
    then costs 6.0 (the cup's own orders, an hour later)."""
    decisions = Decisions()
    engine = Engine.in_memory(config or EngineConfig(min_support=1.0), decisions=decisions)
    for n in range(3):
        engine.handle_purchase(order(n, {"tea": 4.0, "cup": 4.0}, T0 + n))
    assert bundle_prices(engine.live_offer("tea")) == [7.2]
    for n in range(3, 6):
        engine.handle_purchase(order(n, {"cup": 6.0}, T0 + HOUR + n))
    assert engine.state.catalog["cup"] == 6.0
    return engine, decisions


def bundle_prices(offer: BundleOffer | None) -> list[float]:
    assert offer is not None
    return [v.bundle_price for v in offer.variants]


def test_a_partners_new_price_never_reaches_a_cold_anchors_offer_by_itself() -> None:
    # The bug the sweep fixes: other items sell for 23 hours, tea is never touched, and its
    # live offer goes on quoting the cup's old price.
    engine, _ = tea_with_cup()
    for hours in (2, 12, 23):
        engine.handle_purchase(order(100 + hours, {"jam": 1.0}, T0 + hours * HOUR))
        assert bundle_prices(engine.live_offer("tea")) == [7.2]
    assert engine.stale_anchors(list(engine.state.offers)) == ["tea"]


class CountedReads(dict[str, float]):
    def __init__(self, prices: dict[str, float]) -> None:
        super().__init__(prices)
        self.read: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.read.append(key)
        return super().get(key, default)


def test_an_expired_offer_is_passed_over_without_reading_its_prices() -> None:
    # Tea's offer (stale: the cup costs more) expired, and stays in the table as tea's last
    # offer; a day later jam + bread sell, then bread costs more: jam's live offer is stale.
    engine, _ = tea_with_cup()
    day = T0 + engine.config.offer_ttl_ms + HOUR
    for n in range(3):
        engine.handle_purchase(order(200 + n, {"jam": 2.0, "bread": 3.0}, day + n))
    engine.handle_purchase(order(210, {"bread": 5.0}, day + HOUR))
    offer = engine.live_offer("tea")
    assert offer is not None and offer.expires_at < day  # expired, still there
    catalog = CountedReads(dict(engine.state.catalog))
    engine.state.catalog = catalog
    assert engine.stale_anchors(list(engine.state.offers)) == ["jam"]
    assert {"tea", "cup"}.isdisjoint(catalog.read)  # the expired offer cost no price read


def test_a_sweep_revises_the_anchor_at_the_given_event_time() -> None:
    engine, decisions = tea_with_cup()
    before = engine.live_offer("tea")
    assert before is not None
    logged = len(decisions)
    now = T0 + 2 * HOUR
    offers = engine.reprice(engine.stale_anchors(list(engine.state.offers)), now)
    assert [o.anchor_item_id for o in offers] == ["tea"]
    offer = offers[0]
    check_offer(offer)
    assert bundle_prices(offer) == [9.0]  # (4 + 6) * 0.9
    assert offer.ts == now and offer.expires_at == now + engine.config.offer_ttl_ms
    assert offer.policy_version == before.policy_version
    assert engine.live_offer("tea") == offer  # the offers table: a revision like any other
    assert [d.offer_id for d in decisions[logged:]] == [offer.offer_id]  # decision logged
    # Nothing stale is left: the next sweep finds nothing, and revises nothing.
    assert engine.stale_anchors(list(engine.state.offers)) == []
    assert engine.reprice(["tea", "cup"], now + HOUR) == []


def test_current_prices_revise_nothing() -> None:
    engine = Engine.in_memory(EngineConfig(min_support=1.0))
    for n in range(3):
        engine.handle_purchase(order(n, {"tea": 4.0, "cup": 4.99}, T0 + n))
    assert engine.stale_anchors(list(engine.state.offers)) == []
    assert engine.reprice(["tea", "cup"], T0 + HOUR) == []


def test_an_anchor_revised_since_it_was_found_stale_is_not_revised_again() -> None:
    engine, _ = tea_with_cup()
    found = engine.stale_anchors(list(engine.state.offers))
    engine.handle_purchase(order(9, {"tea": 4.0}, T0 + 2 * HOUR))  # tea's own revision
    assert bundle_prices(engine.live_offer("tea")) == [9.0]
    assert engine.reprice(found, T0 + 3 * HOUR) == []


def test_an_expired_offer_is_not_revived() -> None:
    engine, _ = tea_with_cup()
    after_expiry = T0 + engine.config.offer_ttl_ms + 1
    assert engine.reprice(["tea"], after_expiry) == []


def test_a_revision_is_never_stamped_before_what_was_learned() -> None:
    engine, _ = tea_with_cup()
    learned = T0 + HOUR + 5  # the cup's last order
    offers = engine.reprice(["tea"], T0)  # a partition whose clock lags
    assert [o.ts for o in offers] == [learned]


def test_a_recent_offer_waits_for_min_interval_like_any_revision() -> None:
    engine, _ = tea_with_cup(EngineConfig(min_support=1.0, min_interval_ms=HOUR * 2))
    assert engine.reprice(["tea"], T0 + HOUR + 10) == []  # tea's offer is an hour old
    assert bundle_prices(engine.reprice(["tea"], T0 + 2 * HOUR)[0]) == [9.0]


def test_a_price_change_overrides_the_wait_after_an_unchanged_evaluation() -> None:
    # Tea is bought again at the same prices: its offer is reconsidered, left as it was, and
    # not reconsidered for max_recheck_interval_ms. The cup's new price comes within it.
    config = EngineConfig(min_support=1.0, min_interval_ms=1_000,
                          max_recheck_interval_ms=HOUR)
    engine = Engine.in_memory(config)
    for n in range(3):
        engine.handle_purchase(order(n, {"tea": 4.0, "cup": 4.0}, T0 + n))
    for n in range(3, 8):  # evaluations that change nothing: the wait doubles up to an hour
        assert engine.handle_purchase(order(n, {"tea": 4.0}, T0 + 2_000 * (n - 2))) == []
    engine.handle_purchase(order(20, {"cup": 6.0}, T0 + 11_000))
    # The last evaluation, at T0 + 10 s, waits 8 s: a revision of tea now does not look.
    assert engine.revise_offers("tea", T0 + 12_000) == []
    offers = engine.reprice(["tea"], T0 + 12_000)
    assert [bundle_prices(o) for o in offers if o.anchor_item_id == "tea"] == [[9.0]]


def test_every_segment_of_a_stale_anchor_is_revised() -> None:
    engine, _ = tea_with_cup(EngineConfig(min_support=1.0, segments=("loyal",)))
    assert {o.segment for o in (engine.live_offer("tea"), engine.live_offer("tea", "loyal"))
            } == {"all", "loyal"}
    offers = engine.reprice(["tea"], T0 + 2 * HOUR)
    assert sorted((o.segment, bundle_prices(o)[0]) for o in offers) == [
        ("all", 9.0), ("loyal", 9.0)]


@pytest.mark.parametrize(("offers", "steps", "slices"), [
    (10, 4, [3, 3, 3, 1, 3]),  # a pass in 4 steps of at most 3, then a new pass
    (2, 60, [1, 1, 1]),  # fewer offers than steps: one per step
    (0, 5, [0, 0]),
])
def test_a_pass_checks_every_offer_once_in_steps_per_pass_slices(
        offers: int, steps: int, slices: list[int]) -> None:
    checked: list[str] = []

    def stale(keys: object) -> list[str]:
        checked.extend(keys)  # type: ignore[arg-type]
        return []

    keys = [f"k{i}" for i in range(offers)]
    sweep = PriceSweep(keys=lambda: keys, stale=stale, partition_of=lambda a: 0,
                       steps_per_pass=steps)
    assert [sweep.step(owned={0}) for _ in slices] == slices
    assert checked[:offers] == keys  # the first pass: each once, in order


def test_a_step_checks_at_most_max_per_step_offers_and_a_pass_takes_more_steps() -> None:
    keys = [f"k{i}" for i in range(10)]
    sweep = PriceSweep(keys=lambda: keys, stale=lambda ks: [], partition_of=lambda a: 0,
                       steps_per_pass=2, max_per_step=3)
    assert [sweep.step(owned={0}) for _ in range(5)] == [3, 3, 3, 1, 3]


def test_stale_anchors_wait_for_their_own_partitions_tick() -> None:
    partition = {"a": 0, "b": 1, "c": 2, "d": 0}
    sweep = PriceSweep(keys=lambda: list(partition), stale=lambda keys: list(keys),
                       partition_of=partition.__getitem__, steps_per_pass=1)
    assert sweep.step(owned={0, 1}) == 4
    assert sweep.take(2) == []  # not owned (a standby's copy): never this worker's to revise
    assert sweep.take(0) == ["a", "d"] and sweep.take(0) == []
    sweep.clear()  # a rebalance: what was found may be another worker's now
    assert sweep.take(1) == []
    with pytest.raises(ValueError, match="at least one step"):
        PriceSweep(keys=list, stale=list, partition_of=len, steps_per_pass=0)
