"""River models: features, conversion propensity, drift detection."""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamer.online import (
    DISCOUNT_LEVELS,
    FEATURE_NAMES,
    PROPENSITY_FEATURE,
    ConversionModel,
    DecisionContext,
    DecisionFeaturizer,
    DriftMonitor,
    variant_features,
    variant_value,
)

CONTEXT = DecisionContext(
    segment="students", ts_ms=1_700_000_000_000, prices={"a": 8.0, "b": 4.0, "c": 3.0}
)


def candidate(items: tuple[str, ...] = ("a", "b"), score: float = 0.3) -> SimpleNamespace:
    return SimpleNamespace(items=items, support=12.0, confidence=0.4, lift=3.0, score=score)


def test_features_are_flat_floats_in_the_declared_order() -> None:
    for discount in DISCOUNT_LEVELS:
        f = variant_features(candidate(("a", "c", "b")), discount, CONTEXT)
        # The declared features in order, then the bundle's identity (partners sorted).
        assert tuple(f) == (*FEATURE_NAMES, "bundle:a+b+c")
        assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
        assert f["extra_items"] == 1.0
        assert f["discount"] == pytest.approx(discount / 100)
    f = variant_features(candidate(), 10.0, CONTEXT)
    assert sum(f[f"segment_{b}"] for b in range(4)) == 1.0
    assert f["hour_sin"] ** 2 + f["hour_cos"] ** 2 == pytest.approx(1.0)
    # 2023-11-14T22:13:20Z: a Tuesday (weekday 1), 22.2 h.
    assert f["weekday_sin"] == pytest.approx(math.sin(2 * math.pi * 1 / 7))
    assert f["hour_cos"] == pytest.approx(math.cos(2 * math.pi * (22 + 13 / 60 + 20 / 3600) / 24))


def test_variant_value_matches_revenue_and_margin() -> None:
    f = variant_features(candidate(), 15.0, CONTEXT)  # list 12, paid 10.2
    assert variant_value(f) == pytest.approx(10.2)
    assert variant_value(f, reward="margin", cost_ratio=0.6) == pytest.approx(10.2 - 7.2)


def test_unknown_price_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="'z'"):
        variant_features(candidate(("a", "z")), 0.0, CONTEXT)


def test_featurizer_fills_in_the_models_propensity() -> None:
    model = ConversionModel(warmup=0)
    f = DecisionFeaturizer(CONTEXT, model)(candidate(), 5.0)
    assert f[PROPENSITY_FEATURE] == pytest.approx(model.predict_one(f))
    assert DecisionFeaturizer(CONTEXT)(candidate(), 5.0)[PROPENSITY_FEATURE] == 0.0


def test_featurizer_gives_variant_features_for_every_discount_of_every_candidate() -> None:
    # It computes what a candidate's discount levels share once: the rows must still be
    # exactly variant_features' (values, key order), whatever order they are asked in, and
    # no row may share a dict with another.
    model = ConversionModel(warmup=0)
    model.learn_one(variant_features(candidate(), 10.0, CONTEXT), True)
    cands = [candidate(), candidate(("a", "c"), 0.2), candidate(("b", "a", "c"), 0.1)]
    featurizer = DecisionFeaturizer(CONTEXT, model)
    asks = [(c, d) for d in (*DISCOUNT_LEVELS, 7.5) for c in cands] + [(cands[0], 0.0)]
    rows = [featurizer(c, d) for c, d in asks]
    for (c, d), row in zip(asks, rows, strict=True):
        expected = variant_features(c, d, CONTEXT)
        expected[PROPENSITY_FEATURE] = model.predict_one(expected)
        assert list(row.items()) == list(expected.items())
    assert len({id(r) for r in rows}) == len(rows)


def regimes() -> list[tuple[str, ConversionModel]]:
    """Conversion models in each regime predict_many takes apart: cold (base rate, no
    click information), the regression warm, both regressions warm (with per-segment
    interactions and per-bundle ratios)."""
    rng = random.Random(5)
    contexts = [DecisionContext(s, CONTEXT.ts_ms + 3_600_000 * h, CONTEXT.prices, SEGMENTS)
                for s in SEGMENTS for h in (0, 7)]
    cands = [candidate(), candidate(("a", "c"), 0.2), candidate(("b", "a", "c"), 0.1)]
    cold = ConversionModel(warmup=50)
    warm, both = ConversionModel(warmup=50), ConversionModel(warmup=50)
    for _ in range(400):
        features = variant_features(rng.choice(cands), rng.choice(DISCOUNT_LEVELS),
                                    rng.choice(contexts))
        converted = rng.random() < 0.2
        warm.learn_one(features, converted)  # no click information: one stage
        both.learn_one(features, converted, converted or rng.random() < 0.3)
    assert warm.n_learned >= warm.warmup and warm.n_known_clicks == 0
    assert both.n_known_click_conversions < both.n_known_clicks
    assert both.n_known_clicks >= both.warmup
    return [("cold", cold), ("warm", warm), ("both", both)]


@pytest.mark.parametrize("name", ["cold", "warm", "both"])
def test_predict_many_is_predict_one_for_each_row(name: str) -> None:
    model = dict(regimes())[name]
    cands = [candidate(), candidate(("a", "c"), 0.2), candidate(("b", "a", "c"), 0.1)]
    for segment in (*SEGMENTS, "default"):
        context = DecisionContext(segment, CONTEXT.ts_ms, CONTEXT.prices, SEGMENTS)
        rows = [variant_features(c, d, context) for c in cands for d in (*DISCOUNT_LEVELS, 7.5)]
        assert model.predict_many(rows) == pytest.approx(
            [model.predict_one(r) for r in rows], rel=1e-12, abs=1e-15)
    assert model.predict_many([]) == []
    # Learning moves the regressions: the next predictions read their new state.
    rows = [variant_features(c, d, CONTEXT) for c in cands for d in DISCOUNT_LEVELS]
    before = model.predict_many(rows)
    for _ in range(20):
        model.learn_one(rows[0], True, True)
    assert model.predict_many(rows) == pytest.approx(
        [model.predict_one(r) for r in rows], rel=1e-12, abs=1e-15)
    assert model.predict_many(rows) != before
    # Rows of other shapes (a feature missing, no bundle key, an extra feature) are
    # predicted one by one, so still alike.
    rows = [variant_features(c, 5.0, CONTEXT) for c in cands]
    del rows[0]["confidence"]
    del rows[1][next(k for k in rows[1] if k.startswith("bundle:"))]
    rows[2]["extra"] = 1.0
    for mixed in (rows, [rows[1], rows[2]], [rows[2], rows[0]]):
        assert model.predict_many(mixed) == pytest.approx(
            [model.predict_one(r) for r in mixed], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("intercept", [-40.0, -30.5, 29.5, 40.0])
def test_the_matrix_regression_keeps_rivers_sigmoid_clamps(intercept: float) -> None:
    # River's sigmoid answers exactly 0 below a logit of -30 and 1 above 30.
    import copy

    import numpy as np

    from streamer.online.propensity import _probabilities

    pipeline = copy.deepcopy(dict(regimes())["both"]._model)
    _, regression = pipeline.steps.values()
    regression.intercept = intercept
    rows = [ConversionModel._inputs(variant_features(candidate(), d, CONTEXT))
            for d in DISCOUNT_LEVELS]
    names = list(rows[0])
    matrix = np.array([[r[k] for k in names] for r in rows])
    assert list(_probabilities(pipeline, matrix, names)) == pytest.approx(
        [pipeline.predict_proba_one(r)[True] for r in rows], rel=1e-12, abs=0.0)


def test_many_is_the_featurizer_called_for_each_action() -> None:
    _, model = regimes()[2]
    cands = [candidate(), candidate(("a", "c"), 0.2), candidate(("b", "a", "c"), 0.1)]
    actions = [(c, d) for d in (*DISCOUNT_LEVELS, 7.5) for c in cands] + [(cands[0], 0.0)]
    rows = DecisionFeaturizer(CONTEXT, model).many(actions)
    alone = [DecisionFeaturizer(CONTEXT, model)(c, d) for c, d in actions]
    for row, expected in zip(rows, alone, strict=True):
        assert list(row) == list(expected)
        assert list(row.values()) == pytest.approx(list(expected.values()), rel=1e-12)
    assert len({id(r) for r in rows}) == len(rows)
    assert DecisionFeaturizer(CONTEXT).many(actions) == [
        DecisionFeaturizer(CONTEXT)(c, d) for c, d in actions]


def test_many_each_is_many_of_each_featurizer() -> None:
    # Several decisions' featurizers (other segments and times) sharing one model, and one
    # without a model: their propensities in one pass are each one's own.
    _, model = regimes()[2]
    cands = [candidate(), candidate(("a", "c"), 0.2), candidate(("b", "a", "c"), 0.1)]
    featurizers = [DecisionFeaturizer(DecisionContext(s, CONTEXT.ts_ms + 3_600_000 * h,
                                                      CONTEXT.prices, SEGMENTS), model)
                   for s, h in (("loyal", 0), ("bargain", 5), ("other", 9))]
    featurizers.append(DecisionFeaturizer(CONTEXT))
    asks = [(f, [(c, d) for c in cands[:n] for d in DISCOUNT_LEVELS])
            for f, n in zip(featurizers, (3, 1, 0, 2), strict=True)]
    together = DecisionFeaturizer.many_each(asks)
    for rows, (f, actions) in zip(together, asks, strict=True):
        alone = f.many(actions)
        assert [list(r) for r in rows] == [list(r) for r in alone]
        for row, expected in zip(rows, alone, strict=True):
            assert list(row.values()) == pytest.approx(list(expected.values()), rel=1e-12)


def test_conversion_model_learns_a_separable_stream() -> None:
    # Converts exactly when the discount is high and the bundle is cheap: linearly separable.
    rng = random.Random(7)
    model = ConversionModel(warmup=50)
    correct = total = 0
    for i in range(6000):
        price = rng.uniform(1.0, 50.0)
        ctx = DecisionContext(segment="all", ts_ms=i * 60_000, prices={"a": price, "b": price})
        f = variant_features(candidate(), rng.choice(DISCOUNT_LEVELS), ctx)
        converted = 10 * f["discount"] - f["log_bundle_price"] + 2.0 > 0
        if i >= 5000:
            correct += (model.predict_one(f) > 0.5) == converted
            total += 1
        model.learn_one(f, converted)
    assert correct / total > 0.95


def test_one_lucky_outcome_does_not_make_a_bundle_the_favourite() -> None:
    """The per-bundle prior's weight (propensity module doc): a bundle that converted once in
    its first three impressions, against a tenth of a conversion expected, stays near the
    regression's answer at the default prior; with the old prior of 2 its ratio nearly
    doubled, enough to make a rarely shown bundle the favourite over a truly better one."""
    f = variant_features(candidate(), 0.0, CONTEXT)

    def ratio_after_one_lucky_conversion(model: ConversionModel) -> float:
        for k in range(3):
            model.learn_one(f, converted=k == 0)
        return model.bundle_ratio(f)

    assert 1.0 < ratio_after_one_lucky_conversion(ConversionModel()) < 1.15
    assert ratio_after_one_lucky_conversion(ConversionModel(bundle_prior=2.0)) > 1.8


def test_conversion_model_starts_at_the_base_rate_and_ignores_its_own_output() -> None:
    model = ConversionModel(warmup=100, prior_rate=0.02, prior_weight=50, pool_item_sets=False)
    pooled = ConversionModel(warmup=100, prior_rate=0.02, prior_weight=50)
    f = variant_features(candidate(), 0.0, CONTEXT)
    assert model.predict_one(f) == pytest.approx(0.02)
    for _ in range(50):
        model.learn_one(f, converted=True)
        pooled.learn_one(f, converted=True)
    assert model.base_rate == pytest.approx(51 / 100)
    # Without a bundle identity, the base rate itself; with it, times the bundle's ratio
    # (its 50 conversions against 50 x the base rate then expected, shrunk by the prior).
    anonymous = {k: v for k, v in f.items() if k in FEATURE_NAMES}
    assert model.predict_one(anonymous) == pytest.approx(51 / 100)
    # (O, E) decay by bundle_decay per impression; the k-th was expected at the base rate
    # after k conversions: (k + 0.02 * 50) / (k + 50).
    decay = model.bundle_decay
    observed = sum(decay ** (49 - k) for k in range(50))
    expected = sum(decay ** (49 - k) * (k + 1.0) / (k + 50) for k in range(50))
    ratio = (observed + model.bundle_prior) / (expected + model.bundle_prior)
    assert model.bundle_ratio(f) == pytest.approx(ratio)
    assert model.predict_one(f) == pytest.approx(min(1.0, 51 / 100 * ratio))
    # Pooled, the prior's mean is the item set's ratio: the same sums here (one anchor).
    m = pooled.bundle_prior
    assert pooled.bundle_ratio(f) == pytest.approx((observed + m * ratio) / (expected + m))
    g = dict(f, **{PROPENSITY_FEATURE: 0.99})
    assert model.predict_one(g) == model.predict_one(f)
    assert model.expected_reward(f) == pytest.approx(model.predict_one(f) * 12.0)


@pytest.mark.parametrize("seed", range(5))
def test_adwin_fires_on_an_abrupt_reward_change(seed: int) -> None:
    rng = random.Random(seed)
    monitor = DriftMonitor()
    # Revenue per impression: 5% of impressions convert for 20, then 15%.
    fired_at = [
        i
        for i in range(6000)
        if monitor.observe_reward("v1", 20.0 * (rng.random() < (0.05 if i < 3000 else 0.15)))
    ]
    assert fired_at, "no drift detected"
    assert 3000 <= fired_at[0] < 4000
    alarms = monitor.poll()
    assert alarms[0].stream == "reward:v1" and alarms[0].mean > 20.0 * 0.05
    assert not monitor.pending


@pytest.mark.parametrize("seed", range(5))
def test_adwin_stays_quiet_on_a_stationary_stream(seed: int) -> None:
    rng = random.Random(100 + seed)
    monitor = DriftMonitor()
    for _ in range(6000):
        monitor.observe_reward("v1", 20.0 * (rng.random() < 0.05))
        monitor.observe_evidence(rng.betavariate(4, 6))
    assert monitor.poll() == []


def test_streams_are_independent_and_bounded() -> None:
    monitor = DriftMonitor(max_streams=2)
    for v in ("v1", "v2", "v3"):
        monitor.observe_reward(v, 1.0)
    assert monitor.streams() == ["reward:v2", "reward:v3"]
    rng = random.Random(3)
    for i in range(3000):
        monitor.observe_reward("v2", rng.gauss(0.0, 1.0))
        monitor.observe_reward("v3", rng.gauss(0.0 if i < 1500 else 3.0, 1.0))
    assert {a.stream for a in monitor.poll()} == {"reward:v3"}


def test_online_imports_neither_torch_nor_the_policy_package() -> None:
    root = Path(__file__).resolve().parents[2] / "streamer" / "online"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(("torch", "streamer.policy")), (path, name)


def two_bundles_one_selling(
    rng: random.Random, model: ConversionModel
) -> tuple[dict[str, float], dict[str, float]]:
    """``a+b`` and ``a+c`` with equal evidence and prices (the regression alone cannot know
    which one sells), shown 3000 times each: ``a+b`` converts at 20 %, ``a+c`` at 2 %."""
    context = DecisionContext(segment="all", ts_ms=0, prices={"a": 8.0, "b": 4.0, "c": 4.0})
    good = variant_features(candidate(("a", "b")), 5.0, context)
    bad = variant_features(candidate(("a", "c")), 5.0, context)
    for _ in range(3000):
        model.learn_one(good, rng.random() < 0.20)
        model.learn_one(bad, rng.random() < 0.02)
    return good, bad


def test_the_bundle_correction_tells_equal_looking_bundles_apart_and_follows_drift() -> None:
    rng = random.Random(3)
    model = ConversionModel(warmup=50, bundle_memory=300)
    good, bad = two_bundles_one_selling(rng, model)
    assert model.predict_one(good) == pytest.approx(0.20, abs=0.04)
    assert model.predict_one(bad) == pytest.approx(0.02, abs=0.015)
    assert model.bundle_ratio(good) > 1.0 > model.bundle_ratio(bad)
    # The season changes: the bad bundle becomes the good one; the ratios follow.
    for _ in range(1500):
        model.learn_one(good, rng.random() < 0.02)
        model.learn_one(bad, rng.random() < 0.20)
    assert model.predict_one(bad) > 3 * model.predict_one(good)
    # A bundle never shown keeps the regression's answer; the identity is not an input.
    context = DecisionContext(segment="all", ts_ms=0, prices={"b": 4.0, "c": 4.0})
    unseen = variant_features(candidate(("b", "c")), 5.0, context)
    assert model.bundle_ratio(unseen) == 1.0


def test_after_a_drift_a_bundle_no_longer_shown_is_not_judged_by_the_old_season() -> None:
    rng = random.Random(4)
    model = ConversionModel(warmup=50, pool_item_sets=False)
    good, bad = two_bundles_one_selling(rng, model)
    # The season changes and the bad bundle, now the better one, is no longer shown: its
    # sums decay only with its own impressions, so the old season's verdict would stay.
    for _ in range(500):
        model.learn_one(good, rng.random() < 0.05)
    stale = model.bundle_ratio(bad)
    assert stale < 0.4
    assert model.bundle_ratio(bad) == stale  # nothing else moves it
    regression = model._regression(bad)
    observed, predicted = model._bundles["bundle:a+c"]
    m = model.bundle_prior
    model.forget_bundles(0.5)  # a share kept (ConversionModel(drift_keep=...))
    assert model.bundle_ratio(bad) == pytest.approx((observed / 2 + m) / (predicted / 2 + m))
    assert stale < model.bundle_ratio(bad) < 1.0
    assert model._regression(bad) == regression  # the regression keeps what it learned
    model.forget_bundles()  # what a reward drift does by default (Engine.learn_conversion)
    assert model.drift_keep == 0.0
    assert model.bundle_ratio(bad) == model.bundle_ratio(good) == 1.0
    assert model._regression(bad) == regression
    with pytest.raises(ValueError):
        model.forget_bundles(1.5)
    with pytest.raises(ValueError):
        ConversionModel(drift_keep=-0.1)


def test_clicks_then_purchases_learn_each_stage_and_the_product() -> None:
    rng = random.Random(5)
    model = ConversionModel(warmup=50)
    context = DecisionContext(segment="all", ts_ms=0, prices={"a": 8.0, "b": 4.0, "c": 4.0})
    variants = {  # (bundle, discount): click rate; after a click, a discount sells
        (b, d): variant_features(candidate(("a", b)), d, context)
        for b in ("b", "c") for d in (0.0, 15.0)
    }
    click_rate, buy_rate = {"b": 0.40, "c": 0.10}, {0.0: 0.4, 15.0: 0.8}
    assert model.buy_after_click(variants["b", 0.0]) == 1.0  # no record said it yet
    for _ in range(4000):
        for (b, d), f in variants.items():
            clicked = rng.random() < click_rate[b]
            model.learn_one(f, clicked and rng.random() < buy_rate[d], clicked=clicked)
    for (b, d), f in variants.items():
        assert model.buy_after_click(f) == pytest.approx(buy_rate[d], abs=0.06)
        expected = click_rate[b] * buy_rate[d]
        assert model.predict_one(f) == pytest.approx(expected, rel=0.2), (b, d)
    assert model.n_clicked > model.n_converted > 0


def test_without_click_information_the_model_is_the_single_stage_one() -> None:
    # Records that never say whether they were clicked, and those of a storefront that does
    # not report offer clicks (clicked=False, conversions all the same), teach conversions as
    # clicks and P(buy | click) stays 1: the answers of a model that learns conversions alone.
    rng = random.Random(6)
    f = variant_features(candidate(), 5.0, CONTEXT)
    models = [ConversionModel(warmup=20) for _ in range(3)]
    for _ in range(500):
        converted = rng.random() < 0.1
        models[0].learn_one(f, converted)
        models[1].learn_one(f, converted, clicked=None)
        models[2].learn_one(f, converted, clicked=False)
    assert [m.buy_after_click(f) for m in models] == [1.0, 1.0, 1.0]
    assert len({m.predict_one(f) for m in models}) == 1
    assert models[0].n_clicked == models[0].n_converted
    # The first click that did not convert shows clicks are reported: two stages from then.
    models[2].learn_one(f, False, clicked=True)
    assert models[2].buy_after_click(f) < 1.0


def test_clicks_tell_close_bundles_apart_sooner_than_purchases() -> None:
    # Two bundles that look alike: one converts at 10 %, the other at 13 % (clicked twice as
    # often as bought, as in the simulated shop). After 150 impressions each, the model that
    # hears about clicks ranks them right more often than one that hears only purchases.
    context = DecisionContext(segment="all", ts_ms=0, prices={"a": 8.0, "b": 4.0, "c": 4.0})
    better = variant_features(candidate(("a", "b")), 0.0, context)
    worse = variant_features(candidate(("a", "c")), 0.0, context)
    right = {True: 0, False: 0}
    for seed in range(200):
        rng = random.Random(seed)
        outcomes = [(f, rng.random() < 2 * rate, rng.random() < 0.5)
                    for _ in range(150) for f, rate in ((better, 0.13), (worse, 0.10))]
        for with_clicks in (True, False):
            model = ConversionModel(warmup=50)
            for f, clicked, buys in outcomes:
                model.learn_one(f, clicked and buys, clicked=clicked if with_clicks else None)
            right[with_clicks] += model.predict_one(better) > model.predict_one(worse)
    # 179 against 153 of 200 when written: fewer wrong orders by a third.
    assert right[True] >= right[False] + 15, right


SEGMENTS = ("loyal", "regular", "bargain")


def segment_slots(segment: str, segments: tuple[str, ...] = SEGMENTS) -> list[float]:
    context = DecisionContext(segment, CONTEXT.ts_ms, CONTEXT.prices, segments)
    f = variant_features(candidate(), 10.0, context)
    return [f[f"segment_{b}"] for b in range(4)]


@pytest.mark.parametrize(("segment", "slots"), [
    ("loyal", [1.0, 0.0, 0.0, 0.0]),
    ("regular", [0.0, 1.0, 0.0, 0.0]),
    ("bargain", [0.0, 0.0, 1.0, 0.0]),
    ("all", [0.0, 0.0, 0.0, 0.0]),  # the default segment (or any unconfigured one): no slot
])
def test_configured_segments_get_exact_one_hot_slots(segment: str, slots: list[float]) -> None:
    assert segment_slots(segment) == slots


def test_unconfigured_segments_are_hashed_and_collide() -> None:
    # Why configured segments get exact slots: hashed, loyal and bargain are one bucket.
    assert segment_slots("loyal", ()) == segment_slots("bargain", ())
    assert sum(segment_slots("all", ())) == 1.0


def test_at_most_four_distinct_segments() -> None:
    from streamer.engine import EngineConfig
    from streamer.online import SEGMENT_SLOTS, check_segments

    assert check_segments(SEGMENTS) == SEGMENTS
    for bad in (("a", "b", "c", "d", "e")[: SEGMENT_SLOTS + 1], ("a", "a"), ("a", "")):
        with pytest.raises(ValueError):
            check_segments(bad)
        with pytest.raises(ValueError):
            EngineConfig(segments=bad)


def test_conversion_model_learns_a_discount_slope_per_segment() -> None:
    # Truth: a 15 % discount doubles a bargain hunter's conversion and leaves a loyal
    # customer's unchanged. One shared slope cannot fit both; the interaction term can.
    from streamer.online.propensity import discount_segment_interactions

    rng = random.Random(3)
    model = ConversionModel(warmup=10, learning_rate=0.005)
    base = {"loyal": 0.1, "bargain": 0.1}
    for _ in range(40_000):
        segment = rng.choice(("loyal", "bargain"))
        discount = rng.choice(DISCOUNT_LEVELS)
        context = DecisionContext(segment, CONTEXT.ts_ms, CONTEXT.prices, SEGMENTS)
        features = variant_features(candidate(), discount, context)
        del features[next(k for k in features if k.startswith("bundle:"))]
        lift = 2.0 ** (discount / 15.0) if segment == "bargain" else 1.0
        model.learn_one(features, rng.random() < base[segment] * lift)

    def p(segment: str, discount: float) -> float:
        context = DecisionContext(segment, CONTEXT.ts_ms, CONTEXT.prices, SEGMENTS)
        features = variant_features(candidate(), discount, context)
        del features[next(k for k in features if k.startswith("bundle:"))]
        return model.predict_one(features)

    assert p("bargain", 15.0) / p("bargain", 0.0) == pytest.approx(2.0, rel=0.25)
    assert p("loyal", 15.0) / p("loyal", 0.0) == pytest.approx(1.0, abs=0.2)
    features = variant_features(candidate(), 10.0, DecisionContext(
        "bargain", CONTEXT.ts_ms, CONTEXT.prices, SEGMENTS))
    assert discount_segment_interactions(features) == {
        "discount_x_segment_0": 0.0, "discount_x_segment_1": 0.0,
        "discount_x_segment_2": pytest.approx(0.1), "discount_x_segment_3": 0.0}


def test_pooled_item_sets_carry_a_bundles_outcomes_to_its_other_anchors() -> None:
    rng = random.Random(2)
    # Equal prices: the three items' bundles look alike to the regression.
    prices = {"a": 4.0, "b": 4.0, "c": 4.0}
    context = DecisionContext(segment="all", ts_ms=0, prices=prices)
    pooled = ConversionModel(warmup=50)   # pooling is the default
    plain = ConversionModel(warmup=50, pool_item_sets=False)
    a_b = variant_features(candidate(("a", "b")), 5.0, context)
    a_c = variant_features(candidate(("a", "c")), 5.0, context)
    for model in (pooled, plain):
        for _ in range(2000):
            model.learn_one(a_b, rng.random() < 0.20)
            model.learn_one(a_c, rng.random() < 0.02)
    b_a = variant_features(candidate(("b", "a")), 5.0, context)   # the same items, b's page
    c_a = variant_features(candidate(("c", "a")), 5.0, context)
    assert plain.bundle_ratio(b_a) == plain.bundle_ratio(c_a) == 1.0
    assert pooled.bundle_ratio(b_a) > 1.0 > pooled.bundle_ratio(c_a)
    # The bundle's own outcomes still dominate once it has some: b's page never sells a+b.
    for _ in range(300):
        pooled.learn_one(b_a, False)
    assert pooled.bundle_ratio(b_a) < 0.5 * pooled.bundle_ratio(a_b)


def test_the_regressions_answer_for_one_variant_holds_steady_on_a_stationary_stream() -> None:
    # Every per-bundle ratio is measured against this answer, so its record-to-record noise
    # becomes every bundle's noise (ConversionModel's learning_rate). A variant converting at
    # 15 % (and a weaker one at 5 %), learned one record at a time: at the old default step
    # (0.05) the answer swung between 5 % and 45 % over the last 3,000 records.
    context = DecisionContext(segment="all", ts_ms=0, prices={"a": 8.0, "b": 4.0, "c": 4.0})
    rows = [
        {k: v for k, v in variant_features(
            SimpleNamespace(items=("a", p), support=s, confidence=c, lift=2.0, score=c),
            d, context).items() if k in FEATURE_NAMES}
        for p, s, c in (("b", 12.0, 0.4), ("c", 3.0, 0.1)) for d in (0.0, 10.0)
    ]
    for seed in range(3):
        rng = random.Random(seed)
        model = ConversionModel()
        answers = []
        for i in range(6000):
            f = rng.choice(rows)
            model.learn_one(f, rng.random() < (0.15 if f["log_support"] > 2 else 0.05))
            if i >= 3000:
                answers.append(model.predict_one(rows[0]))
        assert min(answers) > 0.08 and max(answers) < 0.25, (seed, min(answers), max(answers))


def test_a_plus_in_an_item_id_does_not_merge_two_bundles_outcomes() -> None:
    # Item ids may hold "+": the pair (tea, milk+sugar) and the triple (tea, milk, sugar) had
    # one key, so the triple, never shown, was rated by the pair's outcomes (ratio 1.88).
    prices = {"tea": 5.0, "milk+sugar": 3.0, "milk": 1.5, "sugar": 1.5, "cup": 3.0}
    context = DecisionContext(segment="all", ts_ms=0, prices=prices)
    model = ConversionModel(warmup=10)
    pair = variant_features(candidate(("tea", "milk+sugar")), 10.0, context)
    other = variant_features(candidate(("tea", "cup")), 10.0, context)
    for k in range(3000):
        model.learn_one(pair, k % 5 < 2)
        model.learn_one(other, k % 50 == 0)
    assert model.bundle_ratio(pair) > 1.5
    triple = variant_features(candidate(("tea", "milk", "sugar")), 10.0, context)
    assert model.bundle_ratio(triple) == 1.0   # never shown, nor its item set
    # Escaped ids still pool by item set: the same items on another anchor's page.
    odd = DecisionContext("all", 0, {"x+y": 1.0, "z": 1.0, "50%": 1.0})
    a = variant_features(candidate(("x+y", "z", "50%")), 0.0, odd)
    b = variant_features(candidate(("z", "50%", "x+y")), 0.0, odd)
    model.learn_one(a, True)
    assert model.bundle_posterior(b)[0] > model.bundle_prior
