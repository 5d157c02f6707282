"""Guardrails: sample-ratio mismatch and the reward-regression alarm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from streamer.events import RewardWindow
from streamer.rewards import (
    ImpressionOutcome,
    RewardLedger,
    WindowSpec,
    chi2_sf,
    impressions_by_version,
    reward_regression,
    sample_ratio_mismatch,
)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 7, 10, 31])
def test_chi2_sf_matches_scipy(dof: int) -> None:
    for x in [0.001, 0.1, 0.5, 1.0, 2.5, dof, 3.0 * dof, 10.0, 50.0, 200.0, 1500.0]:
        want = float(stats.chi2.sf(x, dof))
        assert chi2_sf(x, dof) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_chi2_sf_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError):
        chi2_sf(math.nan, 2)


@pytest.mark.parametrize(
    ("observed", "split", "mismatch"),
    [
        ({"v1": 5_000, "v2": 5_000}, {"v1": 0.5, "v2": 0.5}, False),
        ({"v1": 5_040, "v2": 4_960}, {"v1": 0.5, "v2": 0.5}, False),
        ({"v1": 5_300, "v2": 4_700}, {"v1": 0.5, "v2": 0.5}, True),
        ({"v1": 9_000, "v2": 1_000}, {"v1": 90, "v2": 10}, False),
        ({"v1": 8_800, "v2": 1_200}, {"v1": 0.9, "v2": 0.1}, True),
        ({"a": 3_340, "b": 3_300, "c": 3_360}, {"a": 1, "b": 1, "c": 1}, False),
        ({"a": 3_340, "b": 3_000, "c": 3_360}, {"a": 1, "b": 1, "c": 1}, True),
        ({"v1": 5_000, "v2": 0}, {"v1": 0.5, "v2": 0.5}, True),  # a version stopped logging
        ({"v1": 4_990, "v2": 4_990, "v3": 20}, {"v1": 0.5, "v2": 0.5}, True),  # unexpected one
    ],
)
def test_srm_balanced_and_unbalanced_splits(
    observed: dict[str, int], split: dict[str, float], mismatch: bool
) -> None:
    r = sample_ratio_mismatch(observed, split)
    assert r.enough_data
    assert r.mismatch is mismatch
    assert r.total == sum(observed.values())
    assert r.p_value < 0.0005 if mismatch else r.p_value > 0.0005


def test_srm_statistic_matches_scipy_chisquare() -> None:
    obs = {"a": 1_030, "b": 2_010, "c": 2_960}
    split = {"a": 1, "b": 2, "c": 3}
    r = sample_ratio_mismatch(obs, split)
    total = sum(obs.values())
    want = stats.chisquare(list(obs.values()), [total * w / 6 for w in split.values()])
    assert r.statistic == pytest.approx(want.statistic)
    assert r.p_value == pytest.approx(want.pvalue)
    assert r.dof == 2


def test_srm_needs_data_and_shared_traffic() -> None:
    assert not sample_ratio_mismatch({"v1": 30, "v2": 60}, {"v1": 1, "v2": 1}).enough_data
    single = sample_ratio_mismatch({"v1": 10_000}, {"v1": 1.0})
    assert not single.enough_data and not single.mismatch


def test_srm_false_alarm_rate_under_the_null() -> None:
    rng = np.random.default_rng(9)
    draws = rng.multinomial(20_000, [0.5, 0.3, 0.2], size=4_000)
    pvalues = np.array(
        [
            sample_ratio_mismatch({"a": a, "b": b, "c": c}, {"a": 5, "b": 3, "c": 2}).p_value
            for a, b, c in draws.tolist()
        ]
    )
    assert 0.04 <= (pvalues < 0.05).mean() <= 0.06  # p-values are uniform under the null
    assert (pvalues < 0.0005).mean() <= 0.003


def _window(version: str, n: int, k: int, rate: float, lo: float) -> RewardWindow:
    return RewardWindow(
        window_start=0,
        window_end=3_600_000,
        policy_version=version,
        impressions=n,
        offer_clicks=0,
        conversions=k,
        revenue=rate * n,
        reward_rate=rate,
        ci95=[lo, 2 * rate - lo],
    )


@pytest.mark.parametrize(
    ("live", "previous", "alarm", "enough"),
    [
        (_window("v2", 5_000, 40, 0.7, 0.5), _window("v1", 5_000, 100, 1.2, 0.9), True, True),
        (_window("v2", 5_000, 0, 0.0, 0.0), _window("v1", 5_000, 100, 1.2, 0.9), True, True),
        (_window("v2", 5_000, 80, 0.95, 0.7), _window("v1", 5_000, 100, 1.2, 0.9), False, True),
        (_window("v2", 5_000, 120, 1.5, 1.1), _window("v1", 5_000, 100, 1.2, 0.9), False, True),
        (_window("v2", 200, 0, 0.0, 0.0), _window("v1", 5_000, 100, 1.2, 0.9), False, False),
        (_window("v2", 5_000, 40, 0.7, 0.5), _window("v1", 5_000, 5, 1.2, 0.9), False, False),
    ],
)
def test_reward_regression_alarm(
    live: RewardWindow, previous: RewardWindow, alarm: bool, enough: bool
) -> None:
    r = reward_regression(live, previous)
    assert (r.alarm, r.enough_data) == (alarm, enough)
    assert (r.live_version, r.previous_version, r.previous_lower) == ("v2", "v1", 0.9)


def _outcome(ts: int, version: str, reward: float, n: int) -> ImpressionOutcome:
    return ImpressionOutcome(
        impression_id=f"{version}{n}",
        ts=ts,
        session_id="s",
        user_id="u",
        offer_id="o",
        variant=0,
        propensity=1.0,
        policy_version=version,
        anchor_item_id="a",
        segment="all",
        items=("a", "b"),
        discount_pct=10.0,
        clicked=False,
        converted=reward > 0,
        revenue=reward,
        reward=reward,
        purchase_ids=(),
        attributed_at=ts,
        late=False,
    )


def test_guardrails_on_ledger_output() -> None:
    """A worse live version and a skewed split are both caught from the ledger's windows."""
    rng = np.random.default_rng(1)
    t0 = 1_700_002_800_000
    ledger = RewardLedger({}, specs=(WindowSpec(3_600_000, 3_600_000),), allowed_lateness_ms=0)
    n = 0
    for version, count, p in [("v1", 6_000, 0.06), ("v2", 5_000, 0.02)]:
        for k in range(count):
            reward = float(rng.lognormal(3.0, 0.8)) if rng.random() < p else 0.0
            ledger.add(_outcome(t0 + k * 500, version, reward, n))
            n += 1
    windows = {w.policy_version: w for w in ledger.advance(t0 + 3_600_000)}
    assert reward_regression(windows["v2"], windows["v1"]).alarm
    assert not reward_regression(windows["v1"], windows["v2"]).alarm
    counts = impressions_by_version(windows.values())
    assert counts == {"v1": 6_000, "v2": 5_000}
    assert sample_ratio_mismatch(counts, {"v1": 0.5, "v2": 0.5}).mismatch
    assert not sample_ratio_mismatch(counts, {"v1": 6, "v2": 5}).mismatch
