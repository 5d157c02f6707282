"""Guardrails over reward windows: sample-ratio mismatch and reward regression. Pure functions.

- :func:`sample_ratio_mismatch`: when several policy versions share traffic, a chi-square
  goodness-of-fit test of their impression counts against the intended split. A mismatch means
  the comparison between versions is biased (broken assignment, a version failing to log), so
  their rewards should not be compared until it is explained. The default threshold
  ``alpha = 0.0005`` is the one Microsoft's experimentation platform uses (Fabijan et al.,
  KDD 2019): the check runs on every window, and a strict threshold keeps repeated checks from
  crying wolf while real SRMs, which come with large samples, still show p-values far below it.
- :func:`reward_regression`: alarm when the live version's reward per impression falls below
  the lower bound of the previous version's interval, once both windows hold enough data.

The chi-square survival function is computed here in closed form (:func:`chi2_sf`, exact for
the integer degrees of freedom a goodness-of-fit test has) rather than with scipy, which is
not a dependency of streamer; the tests check it against ``scipy.stats.chi2.sf``.

>>> r = sample_ratio_mismatch({"v1": 5_000, "v2": 5_000}, {"v1": 0.5, "v2": 0.5})
>>> r.mismatch, r.p_value
(False, 1.0)
>>> sample_ratio_mismatch({"v1": 5_300, "v2": 4_700}, {"v1": 0.5, "v2": 0.5}).mismatch
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from msgspec import Struct

from streamer.events.models import RewardWindow

DEFAULT_SRM_ALPHA = 0.0005
DEFAULT_SRM_MIN_TOTAL = 100
DEFAULT_MIN_IMPRESSIONS = 1000
DEFAULT_MIN_CONVERSIONS = 20


def chi2_sf(x: float, dof: int) -> float:
    """``P(X >= x)`` for ``X ~ chi-square(dof)``, integer ``dof >= 1``.

    Even ``dof``: ``exp(-x/2) * sum_{i < dof/2} (x/2)^i / i!``; odd ``dof``:
    ``erfc(sqrt(x/2)) + exp(-x/2) * sum_{i=1}^{(dof-1)/2} (x/2)^(i-1/2) / Gamma(i+1/2)``.
    Terms are summed in log space so large ``x`` neither overflows nor underflows early.

    >>> round(chi2_sf(3.841458820694124, 1), 6)
    0.05
    >>> round(chi2_sf(5.991464547107979, 2), 6)
    0.05
    >>> chi2_sf(0.0, 3), chi2_sf(math.inf, 3)
    (1.0, 0.0)
    """
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"dof must be a positive integer, got {dof}")
    if math.isnan(x):
        raise ValueError("x is NaN")
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    half = x / 2.0
    log_half = math.log(half)
    if dof % 2 == 0:
        total = sum(math.exp(-half + i * log_half - math.lgamma(i + 1)) for i in range(dof // 2))
    else:
        total = math.erfc(math.sqrt(half)) + sum(
            math.exp(-half + (i - 0.5) * log_half - math.lgamma(i + 0.5))
            for i in range(1, (dof - 1) // 2 + 1)
        )
    return min(1.0, max(0.0, total))


class SrmResult(Struct, frozen=True, kw_only=True):
    """Outcome of a sample-ratio-mismatch test; ``mismatch`` only with ``enough_data``."""

    statistic: float
    dof: int
    p_value: float
    mismatch: bool
    enough_data: bool
    total: int
    observed: dict[str, int]
    expected: dict[str, float]


def sample_ratio_mismatch(
    observed: Mapping[str, int],
    expected_split: Mapping[str, float],
    *,
    alpha: float = DEFAULT_SRM_ALPHA,
    min_total: int = DEFAULT_SRM_MIN_TOTAL,
) -> SrmResult:
    """Chi-square test of impression counts per version against the intended traffic split.

    ``expected_split`` maps each version to its intended share (any non-negative weights; they
    are normalised). A version with impressions but no intended share is a mismatch outright
    (statistic ``inf``). Below ``min_total`` impressions, or with fewer than two versions
    sharing traffic, there is nothing to test: ``enough_data`` is False and ``mismatch`` False.
    ``expected`` in the result holds the expected counts.

    >>> r = sample_ratio_mismatch({"v1": 900, "v2": 100}, {"v1": 0.9, "v2": 0.1})
    >>> r.mismatch, r.dof, r.expected
    (False, 1, {'v1': 900.0, 'v2': 100.0})
    >>> sample_ratio_mismatch({"v1": 10, "v2": 30}, {"v1": 1, "v2": 1}).enough_data
    False
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if any(w < 0 or not math.isfinite(w) for w in expected_split.values()):
        raise ValueError("expected shares must be finite and >= 0")
    if any(c < 0 for c in observed.values()):
        raise ValueError("observed counts must be >= 0")
    weight = math.fsum(expected_split.values())
    versions = sorted(set(observed) | {v for v, w in expected_split.items() if w > 0})
    total = sum(observed.values())
    counts = {v: int(observed.get(v, 0)) for v in versions}
    shares = {v: (expected_split.get(v, 0.0) / weight if weight > 0 else 0.0) for v in versions}
    expected = {v: total * shares[v] for v in versions}
    sharing = [v for v in versions if shares[v] > 0]
    enough = total >= min_total and len(sharing) >= 2
    if not enough:
        return SrmResult(
            statistic=0.0,
            dof=max(len(sharing) - 1, 0),
            p_value=1.0,
            mismatch=False,
            enough_data=False,
            total=total,
            observed=counts,
            expected=expected,
        )
    if any(counts[v] > 0 and shares[v] == 0 for v in versions):
        statistic = math.inf
    else:
        statistic = math.fsum((counts[v] - expected[v]) ** 2 / expected[v] for v in sharing)
    dof = len(sharing) - 1
    p_value = chi2_sf(statistic, dof)
    return SrmResult(
        statistic=statistic,
        dof=dof,
        p_value=p_value,
        mismatch=p_value < alpha,
        enough_data=True,
        total=total,
        observed=counts,
        expected=expected,
    )


def impressions_by_version(windows: Iterable[RewardWindow]) -> dict[str, int]:
    """Impressions per policy version over per-version windows (anchor/segment rows skipped).

    Feed it windows of one span (for example, all versions' windows ending at the same time)
    to get the counts :func:`sample_ratio_mismatch` needs.
    """
    counts: dict[str, int] = {}
    for w in windows:
        if w.anchor_item_id is None and w.segment is None:
            counts[w.policy_version] = counts.get(w.policy_version, 0) + w.impressions
    return counts


class RegressionCheck(Struct, frozen=True, kw_only=True):
    """Outcome of :func:`reward_regression`; ``alarm`` only with ``enough_data``."""

    alarm: bool
    enough_data: bool
    live_version: str
    previous_version: str
    live_rate: float
    previous_lower: float
    live_impressions: int
    previous_impressions: int


def reward_regression(
    live: RewardWindow,
    previous: RewardWindow,
    *,
    min_impressions: int = DEFAULT_MIN_IMPRESSIONS,
    min_conversions: int = DEFAULT_MIN_CONVERSIONS,
) -> RegressionCheck:
    """Alarm when ``live.reward_rate < previous.ci95[0]`` and both windows are large enough.

    Both need ``min_impressions``; the previous one also ``min_conversions``, since its lower
    bound is only trustworthy with a few dozen conversions (see ``reward_stats``). The live one
    needs none: converting nothing is exactly the regression to catch.

    >>> def w(version, n, k, rate, lo):
    ...     return RewardWindow(window_start=0, window_end=3_600_000, policy_version=version,
    ...         impressions=n, offer_clicks=0, conversions=k, revenue=rate * n,
    ...         reward_rate=rate, ci95=[lo, 2 * rate - lo])
    >>> reward_regression(w("v2", 5000, 50, 0.6, 0.4), w("v1", 5000, 100, 1.2, 0.9)).alarm
    True
    >>> reward_regression(w("v2", 5000, 90, 1.0, 0.8), w("v1", 5000, 100, 1.2, 0.9)).alarm
    False
    >>> reward_regression(w("v2", 50, 0, 0.0, 0.0), w("v1", 5000, 100, 1.2, 0.9)).enough_data
    False
    """
    enough = (
        live.impressions >= min_impressions
        and previous.impressions >= min_impressions
        and previous.conversions >= min_conversions
    )
    lower = previous.ci95[0]
    return RegressionCheck(
        alarm=enough and live.reward_rate < lower,
        enough_data=enough,
        live_version=live.policy_version,
        previous_version=previous.policy_version,
        live_rate=live.reward_rate,
        previous_lower=lower,
        live_impressions=live.impressions,
        previous_impressions=previous.impressions,
    )
