"""The simulated storefront, its oracle, the report and the in-process closed loop."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from streamer.engine import Engine, EngineConfig
from streamer.events import BundleOffer, ClickEvent, PurchaseEvent
from streamer.offers import OfferBook
from streamer.simulation import (
    DEFAULT_START_MS,
    DISCOUNTS,
    NO_OFFER,
    Action,
    Catalogue,
    GreedyLift,
    Oracle,
    OracleDecisions,
    PairCounts,
    SimulatedShop,
    SimulationReport,
    UniformRandom,
    impressions_to_recover,
    make_offer,
    run_closed_loop,
    sample_variant,
    share_interval,
)

T0 = DEFAULT_START_MS
DRIFT_MS = T0 + 1_000_000


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.generate(60, seed=11, drift_at_ms=DRIFT_MS)


def offer(anchor: str, actions: list[Action], probabilities: list[float],
          cat: Catalogue) -> BundleOffer:
    return make_offer(anchor, actions, probabilities, prices=cat.prices, policy_version="t",
                      now_ms=T0)


# -- ground truth ------------------------------------------------------------------------------
def test_ground_truth_is_deterministic_per_seed(catalogue: Catalogue) -> None:
    again = Catalogue.generate(60, seed=11, drift_at_ms=DRIFT_MS)
    assert again == catalogue
    assert Catalogue.generate(60, seed=12, drift_at_ms=DRIFT_MS) != catalogue

    def sessions(seed: int) -> list[list[ClickEvent | PurchaseEvent]]:
        shop = SimulatedShop(catalogue, seed=seed)
        return [shop.session(now_ms=T0 + i, offer_for=lambda a, rng: None) for i in range(200)]

    assert sessions(3) == sessions(3)
    assert sessions(3) != sessions(4)


def test_ground_truth_shape(catalogue: Catalogue) -> None:
    """Symmetric affinities; a complement pair appeals more than an unrelated one; a discount
    raises the take-rate; margins subtract the cost."""
    for season in catalogue.seasons:
        for a, row in season.affinity.items():
            for b, strength in row.items():
                assert season.affinity[b][a] == strength and 0 < strength <= 1
    a = catalogue.items[0]
    best = catalogue.complements(a, T0)[0]
    stranger = next(i for i in catalogue.items if i != a and catalogue.affinity(a, i, T0) == 0)
    assert catalogue.appeal((a, best), T0) > catalogue.appeal((a, stranger), T0)
    bargain = catalogue.segment("bargain")
    assert catalogue.take_probability((a, best), 15, bargain, T0) > \
        catalogue.take_probability((a, best), 0, bargain, T0)
    margin = Catalogue.generate(60, seed=11, cost_ratio=0.6)
    assert margin.value((a, best), 10) == pytest.approx(catalogue.value((a, best), 10) * 0.3 / 0.9)


def test_partners_that_go_together_but_not_with_the_anchor_are_no_kit_of_its(
    catalogue: Catalogue,
) -> None:
    """A triple appeals through what goes with the anchor: the anchor with a kit it does not
    belong to, or with a complement and an item it does not go with, is an impulse buy, as
    the anchor with two unrelated items is."""
    anchor = catalogue.items[0]
    mine = catalogue.complements(anchor, T0)
    kit = next(
        (x, y)
        for x, y in itertools.combinations(catalogue.items, 2)
        if anchor not in (x, y) and not {x, y} & set(mine) and catalogue.affinity(x, y, T0) >= 0.5
    )
    strangers = next(
        (x, y)
        for x, y in itertools.combinations(catalogue.items, 2)
        if anchor not in (x, y) and not {x, y} & set(mine) and catalogue.affinity(x, y, T0) == 0
    )
    assert catalogue.appeal((anchor, *kit), T0) == catalogue.appeal((anchor, *strangers), T0)
    impulse = catalogue.appeal((anchor, *strangers), T0)
    for one in mine:
        assert catalogue.appeal((anchor, one, kit[0]), T0) == impulse
        assert catalogue.appeal((anchor, kit[0], one), T0) == impulse
        assert catalogue.appeal((anchor, one), T0) > catalogue.appeal((anchor, kit[0]), T0)


# -- oracle ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cost_ratio", "discounts"), [(0.0, DISCOUNTS), (0.6, (60.0,))])
def test_oracle_is_the_best_of_every_bundle(
    cost_ratio: float, discounts: tuple[float, ...]
) -> None:
    """Against every 2- and 3-item bundle of the anchor with any items, at every discount, for
    every segment and season; also at a discount deeper than the margin, where every bundle
    loses and the cheapest least."""
    cat = Catalogue.generate(24, seed=4, drift_at_ms=DRIFT_MS, cost_ratio=cost_ratio)
    oracle = Oracle(cat, discounts=discounts)
    for anchor, now in itertools.product(cat.items, (T0, DRIFT_MS)):
        others = [i for i in cat.items if i != anchor]
        bundles = [(anchor, b) for b in others]
        bundles += [(anchor, *bc) for bc in itertools.combinations(others, 2)]
        for segment in cat.segments:
            best = max(cat.expected_reward(b, d, segment, now) for b in bundles for d in discounts)
            assert oracle.best(anchor, segment, now).expected_reward == pytest.approx(best)


def test_oracle_expected_reward_at_least_any_candidate(catalogue: Catalogue) -> None:
    oracle = Oracle(catalogue)
    rng = random.Random(5)
    for anchor in catalogue.items[:20]:
        # An offer of arbitrary bundles, complements or not: the oracle must know them too.
        others = rng.sample([i for i in catalogue.items if i != anchor], 3)
        shown = offer(anchor, [Action((anchor, others[0]), 20.0),
                               Action((anchor, others[1], others[2]), 5.0)], [0.5, 0.5],
                      catalogue)
        for segment, now in itertools.product(catalogue.segments, (T0, DRIFT_MS)):
            best = oracle.best(anchor, segment, now, shown)
            for action in oracle.candidates(anchor, now, shown):
                assert best.expected_reward >= oracle.expected_reward(action, segment, now)
            assert best.expected_reward == pytest.approx(
                max(oracle.expected_reward(a, segment, now)
                    for a in oracle.candidates(anchor, now, shown)))


def test_regret_is_never_negative_and_zero_for_the_oracle_choice(catalogue: Catalogue) -> None:
    oracle = Oracle(catalogue)
    for anchor in catalogue.items[:20]:
        for segment in catalogue.segments:
            choice = oracle.best(anchor, segment, T0).action
            assert oracle.regret(choice, segment, T0) == 0.0
            for action in oracle.candidates(anchor, T0):
                assert oracle.regret(action, segment, T0) >= 0.0
    # A variant outside the truth's candidates is scored through the offer that carried it.
    anchor = catalogue.items[0]
    odd = Action((anchor, catalogue.items[1]), 40.0)
    loyal = catalogue.segment("loyal")
    assert oracle.regret(odd, loyal, T0, offer(anchor, [odd], [1.0], catalogue)) > 0.0


def test_oracle_discount_follows_segment_price_sensitivity(catalogue: Catalogue) -> None:
    oracle = Oracle(catalogue)
    discounts = {s.name: {oracle.best(a, s, T0).action.discount_pct
                          for a in catalogue.items} for s in catalogue.segments}
    assert discounts == {"loyal": {0.0}, "regular": {5.0}, "bargain": {15.0}}


def test_drift_changes_the_oracle_choice_for_some_anchors(catalogue: Catalogue) -> None:
    oracle = Oracle(catalogue)
    regular = catalogue.segment("regular")
    changed = [a for a in catalogue.items
               if oracle.best(a, regular, DRIFT_MS - 1).action.items
               != oracle.best(a, regular, DRIFT_MS).action.items]
    assert 0 < len(changed) < len(catalogue.items)
    assert catalogue.draw(random.Random(1), DRIFT_MS - 1) is not None
    still = Catalogue.generate(60, seed=11)  # no drift: the same truth for ever
    assert all(Oracle(still).best(a, regular, T0) == Oracle(still).best(a, regular, DRIFT_MS)
               for a in still.items)


# -- the shop and propensities -----------------------------------------------------------------
def test_an_impression_carries_the_propensity_it_was_sampled_with(
        catalogue: Catalogue) -> None:
    probabilities = [0.7, 0.2, 0.1]
    offers = {a: offer(a, [Action((a, p), 10.0) for p in catalogue.items[:4] if p != a][:3],
                       probabilities, catalogue) for a in catalogue.items}
    shop = SimulatedShop(catalogue, seed=2)
    sampler = random.Random(3)
    shown: Counter[int] = Counter()
    n = 3_000
    for i in range(n):
        visit = shop.visit(now_ms=T0 + i,
                           choose=lambda s, rng: sample_variant(offers[s.anchor], s.anchor,
                                                                sampler, T0))
        (impression,) = [e for e in visit.events
                         if isinstance(e, ClickEvent) and e.kind == "offer_impression"]
        live = offers[visit.shopper.anchor]
        assert visit.choice is not None
        assert impression.item_id == visit.shopper.anchor
        assert impression.offer_id == live.offer_id
        assert impression.variant == visit.choice.variant
        assert impression.propensity == visit.choice.propensity \
            == probabilities[impression.variant]
        shown[impression.variant] += 1
    # Sampled with those probabilities (3 standard deviations of a share over n draws).
    for variant, p in enumerate(probabilities):
        assert shown[variant] / n == pytest.approx(p, abs=3 * math.sqrt(p * (1 - p) / n))
    # No offer, no impression; an expired offer is not shown.
    quiet = shop.visit(now_ms=T0, choose=lambda s, rng: None)
    assert [e.kind for e in quiet.events if isinstance(e, ClickEvent)] == ["view"]
    assert sample_variant(offers[catalogue.items[0]], catalogue.items[0], sampler,
                          T0 + 3_600_000) is None


def test_storefront_driver_contract_still_holds(catalogue: Catalogue) -> None:
    """What ``StorefrontDriver`` uses: ``shop.rng`` and ``session(now_ms, offer_for)`` with an
    ``OfferBook`` choice; a bought bundle is a purchase through the offer."""
    shop = SimulatedShop(catalogue, seed=9)
    book = OfferBook()
    for a in catalogue.items:
        best = catalogue.complements(a, T0)[0]
        book.update(offer(a, [Action((a, best), 15.0)], [1.0], catalogue))
    events = [e for i in range(2_000) for e in shop.session(
        now_ms=T0 + i, offer_for=lambda a, rng: book.choose(a, rng, now_ms=T0))]
    assert isinstance(shop.rng, random.Random)
    kinds = Counter(e.kind for e in events if isinstance(e, ClickEvent))
    assert kinds["view"] == kinds["offer_impression"] == 2_000
    through_offer = [e for e in events if isinstance(e, PurchaseEvent) and e.offer_id]
    organic = [e for e in events if isinstance(e, PurchaseEvent) and not e.offer_id]
    assert through_offer and organic
    assert all(len(p.items) == 2 for p in through_offer)


# -- report ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rewards", "drift", "window", "kwargs", "expected"),
    [
        # Halved by the drift at 10, back to the oracle from 15: the first window of 4 lying
        # wholly after the drift and within 5 % ends at 18, 9 impressions after the drift.
        ([1.0] * 10 + [0.5] * 5 + [1.0] * 10, 10, 4, {}, 9),
        # Unaffected by the drift: back within the first window.
        ([1.0] * 25, 10, 4, {}, 4),
        # Never within 5 % of the oracle after the drift.
        ([1.0] * 10 + [0.9] * 15, 10, 4, {}, None),
        # ... but it is within 5 % of its own pre-drift level when that level was 0.9 too.
        ([0.9] * 25, 10, 4, {"relative_to_pre_drift": True}, 4),
        # A looser tolerance accepts one halved reward in the window.
        ([1.0] * 10 + [0.5] * 5 + [1.0] * 10, 10, 4, {"tolerance": 0.15}, 8),
        # Good impressions before the drift never count towards recovery.
        ([1.0] * 10 + [0.0] * 3 + [1.0] * 12, 10, 6, {}, 9),
    ],
)
def test_recovery_after_drift_on_constructed_series(
        rewards: list[float], drift: int, window: int, kwargs: dict[str, object],
        expected: int | None) -> None:
    oracle = [1.0] * len(rewards)
    assert impressions_to_recover(rewards, oracle, drift, window=window,
                                  **kwargs) == expected  # type: ignore[arg-type]


def test_report_accumulates_per_version_and_over_time() -> None:
    report = SimulationReport(drift_at_ms=5)
    for t in range(10):
        version = None if t < 2 else ("v1" if t < 6 else "v2")
        expected = 0.0 if version is None else (0.5 if version == "v1" else 1.0)
        report.record(ts_ms=t, policy_version=version, expected_reward=expected,
                      oracle_reward=1.0, reward=2.0 if t == 7 else 0.0)
    assert report.drift_index == 5
    assert report.cumulative_reward == 6.0 and report.cumulative_regret == 4.0
    assert report.cumulative_realised_reward == 2.0
    assert report.coverage == 0.8
    versions = report.by_version()
    assert list(versions) == [NO_OFFER, "v1", "v2"]
    assert [v.impressions for v in versions.values()] == [2, 4, 4]
    assert versions["v1"].regret == 2.0 and versions["v2"].share.share == 1.0
    curve = report.curve(points=5, window=2)
    assert [p.impressions for p in curve] == [2, 4, 6, 8, 10]
    assert [p.cumulative_regret for p in curve] == [2.0, 3.0, 4.0, 4.0, 4.0]
    assert curve[-1].rolling_share == 1.0
    with pytest.raises(ValueError):  # the oracle can never expect less than the variant shown
        report.record(ts_ms=11, policy_version="v2", expected_reward=1.5, oracle_reward=1.0)


def test_share_interval_covers_and_narrows() -> None:
    rng = random.Random(0)
    oracle = [rng.uniform(1, 3) for _ in range(4_000)]
    rewards = [o * (0.6 if rng.random() < 0.5 else 0.8) for o in oracle]  # true share 0.7
    small, large = share_interval(rewards[:400], oracle[:400]), share_interval(rewards, oracle)
    assert large.ci95[0] < 0.7 < large.ci95[1]
    assert large.ci95[1] - large.ci95[0] < (small.ci95[1] - small.ci95[0]) / 2
    assert math.isnan(share_interval([], []).share)


# -- the closed loop ---------------------------------------------------------------------------
def test_closed_loop_oracle_reaches_one_and_random_is_clearly_below(
        catalogue: Catalogue) -> None:
    n = 4_000
    best = run_closed_loop(OracleDecisions(catalogue), SimulatedShop(catalogue, seed=1),
                           impressions=n)
    rnd = run_closed_loop(UniformRandom(catalogue.prices, seed=1),
                          SimulatedShop(catalogue, seed=1), impressions=n)
    assert len(best) == len(rnd) == n
    assert best.share_of_oracle().share == pytest.approx(1.0, abs=1e-9)
    assert best.cumulative_regret == pytest.approx(0.0, abs=1e-6)
    share = rnd.share_of_oracle()
    assert share.ci95[1] < 0.8
    assert rnd.cumulative_regret > 0.2 * rnd.cumulative_oracle


def test_closed_loop_plugs_in_the_engine_and_greedy_lift(catalogue: Catalogue) -> None:
    engine = Engine.in_memory(EngineConfig(min_interval_ms=0))
    seen_propensities: list[tuple[float, float]] = []

    def check(i: int, shopper: object, choice: object) -> None:
        if choice is not None:
            seen_propensities.append(
                (choice.propensity,  # type: ignore[attr-defined]
                 choice.bundle.probability))  # type: ignore[attr-defined]

    report = run_closed_loop(engine, SimulatedShop(catalogue, seed=4), impressions=3_000,
                             on_visit=check)
    assert engine.state.offers, "the engine learned from the shop's purchases"
    assert "v0-greedy" in report.by_version()
    assert seen_propensities and all(p == q for p, q in seen_propensities)
    assert 0.0 < report.share_of_oracle().share < 1.0
    greedy = GreedyLift(catalogue.prices, discount_pct=10.0)
    run_closed_loop(greedy, SimulatedShop(catalogue, seed=4), impressions=3_000)
    anchor = max(greedy.counts.pairs, key=lambda a: len(greedy.counts.pairs[a]))
    live = greedy.offer_for(anchor, "loyal", T0)
    assert live is not None and len(live.variants) == 1
    (variant,) = live.variants
    assert variant.discount_pct == 10.0 and variant.probability == 1.0
    eligible = [b for b, c in greedy.counts.pairs[anchor].items() if c >= greedy.min_support]
    assert variant.items[1] == max(eligible, key=lambda b: greedy.counts.lift(anchor, b))


def test_uniform_random_offers_every_candidate_equally(catalogue: Catalogue) -> None:
    rnd = UniformRandom(catalogue.prices, seed=0, min_support=1)
    counts = PairCounts()
    anchor = catalogue.items[0]
    for partners in (["b1", "b2"], ["b1", "b3"], ["b2", "b4", "b5"], ["b1"]):
        counts.learn_order([anchor, *partners])
    rnd.counts = counts
    candidates = rnd.candidates(anchor)
    assert len(candidates) == (4 + 3) * 4  # 4 pairs, 3 triples of the top 3, 4 discounts
    shown: Counter[Action] = Counter()
    for _ in range(2_000):
        live = rnd.offer_for(anchor, "loyal", T0)
        assert live is not None and len(live.variants) == 8
        assert all(v.probability == pytest.approx(1 / 8) for v in live.variants)
        shown.update(Action(tuple(v.items), v.discount_pct) for v in live.variants)
    assert set(shown) == set(candidates)
    assert max(shown.values()) < 1.3 * min(shown.values())


def test_decomposition_chain_adds_up_and_matches_the_report(catalogue: Catalogue) -> None:
    from streamer.simulation.decompose import LOSSES, OracleShareChain

    decider = UniformRandom(catalogue.prices, seed=3)
    chain = OracleShareChain(
        catalogue,
        candidates=lambda anchor, now: [a.items for a in decider.candidates(anchor)],
        split_at=1_000,
    )
    report = run_closed_loop(decider, SimulatedShop(catalogue, seed=3), impressions=2_000,
                             on_visit=chain.on_visit)
    shares, losses = chain.shares(), chain.losses()
    assert set(losses) == set(LOSSES)
    assert sum(losses.values()) == pytest.approx(1.0 - shares["served"], abs=1e-12)
    # The report's expected rewards are the served expectation sampled once per slot.
    assert shares["served"] == pytest.approx(report.share_of_oracle().share, abs=0.03)
    # Slots without an offer are exactly what coverage loses.
    none = report.by_version().get(NO_OFFER)
    lost = none.oracle_reward / report.cumulative_oracle if none else 0.0
    assert losses["coverage"] == pytest.approx(lost, abs=1e-9)
    # Each level bounds the next on average; segment blindness can only lose (the blind
    # choice is one of the pool's), and no segment-blind policy reaches the oracle.
    assert shares["oracle"] == 1.0 and 0.0 < shares["oracle_blind"] < 1.0
    assert shares["pool"] >= shares["blind"] - 1e-9
    pre, post = chain.shares(0), chain.shares(1)
    assert math.isfinite(pre["served"]) and math.isfinite(post["served"])


@pytest.mark.parametrize("max_variants", [None, 3])
def test_the_learned_loop_logs_decisions_as_served(catalogue: Catalogue,
                                                   max_variants: int | None) -> None:
    # Re-run on the buffered records, the live policy gives each shown variant exactly the
    # probability the storefront logged: the records are the decisions that were made; with
    # offers.max_variants below the first policy's 8 too (what the benchmark compares).
    import numpy as np
    import torch

    from streamer.policy.network import variant_probabilities
    from streamer.simulation.learned import LearnedDecisions

    learned = LearnedDecisions(min_records=10**6, every_records=10**6,
                               segments=[s.name for s in catalogue.segments],
                               max_variants=max_variants)
    run_closed_loop(learned, SimulatedShop(catalogue, seed=5), impressions=1500)
    shown = max_variants or 8
    assert learned.live.shape.max_variants == shown
    assert max(len(o.variants) for o in learned.offers.values()) == shown
    batch = learned.trainer.buffer.snapshot()
    assert len(batch) > 100 and batch.expected_reward is not None
    shape = learned.live.shape
    with torch.inference_mode():
        scores = learned.live.scorer(torch.from_numpy(batch.features)).double()
        probs = variant_probabilities(scores, torch.from_numpy(batch.valid),
                                      temperature=shape.temperature, floor=shape.floor,
                                      max_shown=shape.max_variants).numpy()
    p_chosen = probs[np.arange(len(batch)), batch.chosen]
    np.testing.assert_allclose(p_chosen, batch.propensity, rtol=1e-4)
    # ... and by whom: the gate judges candidates on the live version's own records (with
    # no version named, on every version's rewards mixed).
    assert batch.logged_by is not None and set(batch.logged_by) == {learned.live.version}
    # Offers for every segment were shown, each with its own slot set.
    segments = batch.features[np.arange(len(batch)), batch.chosen][:, -5:-1]
    assert set(map(tuple, segments.tolist())) >= {(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0)}


@pytest.mark.parametrize("mode", ["offer", "any"])
def test_the_learned_loop_learns_the_configured_reward(catalogue: Catalogue, mode: str) -> None:
    from streamer.rewards import ImpressionOutcome, learning_reward
    from streamer.simulation.learned import LearnedDecisions

    learned = LearnedDecisions(min_records=10**6, every_records=10**6,
                               reward_attribution=mode,  # type: ignore[arg-type]
                               segments=[s.name for s in catalogue.segments])
    closed: list[ImpressionOutcome] = []
    advance = learned.attributor.advance

    def recording_advance(now_ms: int | None = None) -> list[ImpressionOutcome]:
        out = advance(now_ms)
        closed.extend(out)
        return out

    learned.attributor.advance = recording_advance  # type: ignore[method-assign]
    run_closed_loop(learned, SimulatedShop(catalogue, seed=5), impressions=1500)
    batch = learned.trainer.buffer.snapshot()
    kept = [o for o in closed if o.offer_id in learned.offers]
    assert len(batch) == len(kept) > 100
    # The shop's organic baskets hold shown bundles: basket-only conversions happen, and only
    # "any" pays them.
    assert any(o.attribution == "basket" for o in kept)
    assert batch.reward.tolist() == [learning_reward(o, mode)[0] for o in kept]
    assert learned.engine.conversion.n_converted == sum(learning_reward(o, mode)[1]
                                                       for o in kept)
