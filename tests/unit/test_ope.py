"""Off-policy estimators against closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.policy.ope import (
    doubly_robust,
    estimator_terms,
    ips,
    paired_difference,
    snips,
)

# A two-armed bandit: the logging policy shows arm 0 with 0.8, arm 1 with 0.2; the target
# shows them with 0.1 and 0.9. Arm 0 converts with 0.3 (reward 10), arm 1 with 0.6 (reward 5).
LOGGING = np.array([0.8, 0.2])
TARGET = np.array([0.1, 0.9])
P_CONVERT = np.array([0.3, 0.6])
VALUE = np.array([10.0, 5.0])
MEAN_REWARD = P_CONVERT * VALUE
TRUE_TARGET_VALUE = float((TARGET * P_CONVERT * VALUE).sum())


def logged(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(arm, propensity, reward, target probability of the arm) for ``n`` impressions."""
    rng = np.random.default_rng(seed)
    arm = (rng.random(n) < LOGGING[1]).astype(int)
    reward = np.where(rng.random(n) < P_CONVERT[arm], VALUE[arm], 0.0)
    return arm, LOGGING[arm], reward, TARGET[arm]


def test_ips_is_exact_on_a_sample_with_exact_proportions() -> None:
    # 80 pulls of arm 0, 20 of arm 1, each arm's rewards in exact proportion to its rate:
    # IPS then equals the target's true value, analytically.
    arm = np.array([0] * 80 + [1] * 20)
    reward = np.array([10.0] * 24 + [0.0] * 56 + [5.0] * 12 + [0.0] * 8)
    est = ips(LOGGING[arm], reward, TARGET[arm])
    assert est.value == pytest.approx(TRUE_TARGET_VALUE, abs=1e-12)
    assert pytest.approx(0.1 * 3.0 + 0.9 * 3.0) == TRUE_TARGET_VALUE


def test_ips_is_unbiased_and_its_interval_covers_over_many_seeds() -> None:
    n, seeds = 400, 400
    values, covered = [], 0
    for seed in range(seeds):
        _, p0, r, p1 = logged(n, seed)
        est = ips(p0, r, p1)
        values.append(est.value)
        covered += est.lower <= TRUE_TARGET_VALUE <= est.upper
    # The closed-form variance of one term w * r, E[(w r)^2] - V^2:
    second_moment = float((LOGGING * (TARGET / LOGGING) ** 2 * P_CONVERT * VALUE**2).sum())
    term_sd = math.sqrt(second_moment - TRUE_TARGET_VALUE**2)
    # The mean over seeds is within 4 standard errors of the truth ...
    assert abs(np.mean(values) - TRUE_TARGET_VALUE) < 4 * term_sd / math.sqrt(n * seeds)
    # ... the spread across seeds matches the analytic standard error ...
    assert np.std(values) == pytest.approx(term_sd / math.sqrt(n), rel=0.1)
    # ... and the 95% CLT interval covers the truth about 95% of the time.
    assert 0.91 <= covered / seeds <= 0.98


def test_snips_is_consistent_and_shift_invariant() -> None:
    _, p0, r, p1 = logged(200_000, seed=1)
    est = snips(p0, r, p1)
    assert est.value == pytest.approx(TRUE_TARGET_VALUE, abs=4 * est.stderr)
    assert est.lower < TRUE_TARGET_VALUE < est.upper
    # Adding a constant to every reward moves SNIPS by exactly that constant (IPS does not).
    assert snips(p0, r + 7.0, p1).value == pytest.approx(est.value + 7.0, abs=1e-9)
    assert ips(p0, r + 7.0, p1).value != pytest.approx(ips(p0, r, p1).value + 7.0, abs=1e-3)


def test_snips_equals_the_on_policy_mean_when_target_is_logging() -> None:
    _, p0, r, _ = logged(1000, seed=2)
    assert snips(p0, r, p0).value == pytest.approx(r.mean(), abs=1e-12)
    assert ips(p0, r, p0).value == pytest.approx(r.mean(), abs=1e-12)


def test_dr_with_a_perfect_model_has_no_variance_from_the_model_part() -> None:
    # Deterministic rewards and a model that knows them: every DR term is the target's value.
    deterministic = np.array([4.0, 1.0])
    truth = float((TARGET * deterministic).sum())
    for seed in range(20):
        arm, p0, _, p1 = logged(500, seed)
        r = deterministic[arm]
        q = deterministic[arm]
        v = np.full(arm.shape, truth)
        est = doubly_robust(p0, r, p1, q, v)
        assert est.value == pytest.approx(truth, abs=1e-12)
        assert est.stderr == pytest.approx(0.0, abs=1e-12)
        # IPS on the same data does vary.
        assert ips(p0, r, p1).stderr > 0.03


def test_dr_with_a_perfect_model_is_unbiased_and_tighter_than_ips() -> None:
    # Stochastic rewards: the only variance left in DR is the weighted residual noise.
    ips_values, dr_values = [], []
    for seed in range(200):
        arm, p0, r, p1 = logged(300, seed)
        q = MEAN_REWARD[arm]
        v = np.full(arm.shape, TRUE_TARGET_VALUE)
        dr_values.append(doubly_robust(p0, r, p1, q, v).value)
        ips_values.append(ips(p0, r, p1).value)
    assert np.mean(dr_values) == pytest.approx(TRUE_TARGET_VALUE, abs=0.05)
    assert np.std(dr_values) < np.std(ips_values)


def test_dr_corrects_a_biased_model() -> None:
    arm, p0, r, p1 = logged(200_000, seed=3)
    biased = MEAN_REWARD + np.array([2.0, -1.0])  # a wrong model
    q = biased[arm]
    v = np.full(arm.shape, float((TARGET * biased).sum()))
    est = doubly_robust(p0, r, p1, q, v)
    assert abs(float((TARGET * biased).sum()) - TRUE_TARGET_VALUE) > 0.5
    assert est.value == pytest.approx(TRUE_TARGET_VALUE, abs=4 * est.stderr)


def test_non_finite_target_probabilities_give_a_non_finite_estimate() -> None:
    _, p0, r, p1 = logged(100, seed=4)
    p1 = p1.copy()
    p1[3] = np.nan
    for est in (ips(p0, r, p1), snips(p0, r, p1), doubly_robust(p0, r, p1, r, r)):
        assert not est.is_finite


@pytest.mark.parametrize(
    ("p0", "r", "p1"),
    [([], [], []), ([0.5, 0.5], [1.0], [0.5, 0.5]), ([0.0, 0.5], [1.0, 1.0], [0.5, 0.5])],
)
def test_malformed_inputs_are_refused(p0: list[float], r: list[float], p1: list[float]) -> None:
    with pytest.raises(ValueError):
        ips(p0, r, p1)


def test_effective_sample_size() -> None:
    est = ips([0.5] * 10, [1.0] * 10, [0.5] * 10)
    assert est.ess == pytest.approx(10.0)
    assert ips([0.5, 0.5], [1.0, 1.0], [1.0, 0.0]).ess == pytest.approx(1.0)


def test_paired_difference_covers_the_true_gap_with_a_narrower_interval() -> None:
    # Arm 1 now pays 10 (mean 6 against arm 0's 3): the target (0.1/0.9) is worth 5.7, the
    # logging policy (0.8/0.2) 3.6; the true gap is 2.1.
    value = np.array([10.0, 10.0])
    true_gap = float(((TARGET - LOGGING) * P_CONVERT * value).sum())
    covered, narrower = 0, 0
    for seed in range(100):
        rng = np.random.default_rng(1_000 + seed)
        n = 2_000
        arm = (rng.random(n) < LOGGING[1]).astype(int)
        reward = np.where(rng.random(n) < P_CONVERT[arm], value[arm], 0.0)
        p0 = LOGGING[arm]
        target = estimator_terms("ips", p0, reward, TARGET[arm])
        live = estimator_terms("ips", p0, reward, p0)
        assert target.mean() == pytest.approx(ips(p0, reward, TARGET[arm]).value)
        d = paired_difference("ips", target, live)
        covered += d.lower <= true_gap <= d.upper
        unpaired = ips(p0, reward, TARGET[arm]).stderr + ips(p0, reward, p0).stderr
        narrower += d.stderr < unpaired
    assert covered >= 88
    assert narrower == 100


def test_estimator_terms_average_to_each_estimate() -> None:
    arm, p0, reward, p1 = logged(500, seed=11)
    q = MEAN_REWARD[arm] * 0.9
    v = np.full(500, float((TARGET * MEAN_REWARD).sum()))
    assert estimator_terms("snips", p0, reward, p1).mean() == pytest.approx(
        snips(p0, reward, p1).value)
    assert estimator_terms("dr", p0, reward, p1, q, v).mean() == pytest.approx(
        doubly_robust(p0, reward, p1, q, v).value)
    with pytest.raises(ValueError):
        estimator_terms("dr", p0, reward, p1)
    with pytest.raises(ValueError):
        paired_difference("ips", [1.0, 2.0], [1.0])
