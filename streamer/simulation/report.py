"""What a closed-loop run measured: reward, oracle reward and regret per impression, over time
and per policy version.

Every decision slot (a session whose shopper could have been shown an offer) is one
*impression* here. A slot where the decision-maker had no live offer counts with reward 0: the
oracle would have shown its best variant, so a policy that offers nothing earns a share of 0,
not an undefined one. Rewards are **expected** values under the truth (take-rate times value of
the variant shown), so regret and shares carry no purchase noise; the realised (sampled)
rewards are kept too.

**Share of the oracle** over impressions ``i`` is ``R = sum(e_i) / sum(o_i)`` (``e``: expected
reward of the shown variant, ``o``: the oracle's). Its 95 % interval is the delta-method
interval of a ratio of means, ``R +- z * sd(e_i - R * o_i) / (sqrt(n) * mean(o))``, treating
the impressions as independent draws (shoppers, anchors, segments and the variant sampled are;
a learning policy's drift over the run is part of what is averaged, not of the noise).

**Recovery after drift** (:func:`impressions_to_recover`): with ``d`` the first impression at
or after the drift and ``W`` the window, the trailing share ``S_j = sum_{j-W < i <= j} e_i /
sum_{j-W < i <= j} o_i`` is defined for every ``j >= d + W - 1`` (windows wholly after the
drift, so pre-drift impressions never count). Recovery is the smallest ``j - d + 1`` with
``S_j >= target`` (at least ``W``; ``W`` means "already back in the first window"), or None
when it never happens. The target is ``1 - tolerance`` (within 5 % of the oracle by default),
or ``(1 - tolerance)`` times the share over the ``W`` impressions just before the drift
(``relative_to_pre_drift``: back within 5 % of the policy's own pre-drift level, for policies
that never came within 5 % of the oracle).

>>> report = SimulationReport(drift_at_ms=300)
>>> for t in range(600):
...     e = 1.0 if t < 300 or t >= 400 else 0.5        # halved by the drift, back at 400
...     report.record(ts_ms=t, policy_version="v1", expected_reward=e, oracle_reward=1.0)
>>> report.drift_index
300
>>> report.recovery_after_drift(window=50, tolerance=0.0)   # first all-good window: 400-449
150
>>> report.recovery_after_drift(window=50)    # 395-444 holds 5 halved rewards: 95 % of oracle
145
>>> share = report.share_of_oracle()
>>> round(share.share, 4), share.ci95[0] < share.share < share.ci95[1]
(0.9167, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

#: Version under which slots without any offer are recorded.
NO_OFFER = "(no offer)"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ShareOfOracle:
    """Reward as a share of the oracle's, its interval and how many impressions it rests on."""

    share: float
    ci95: tuple[float, float]
    impressions: int

    def as_json(self) -> dict[str, Any]:
        return {
            "reward_share_of_oracle": self.share,
            "ci95": list(self.ci95),
            "impressions": self.impressions,
        }


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """One policy version's slots: counts, sums of expected/oracle/realised reward, regret."""

    impressions: int
    expected_reward: float
    oracle_reward: float
    realised_reward: float
    share: ShareOfOracle

    @property
    def regret(self) -> float:
        return self.oracle_reward - self.expected_reward


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Cumulative figures after ``impressions`` impressions (for plots)."""

    impressions: int
    ts_ms: int
    cumulative_reward: float
    cumulative_oracle: float
    cumulative_regret: float
    rolling_share: float


def share_interval(
    rewards: Sequence[float] | FloatArray,
    oracle: Sequence[float] | FloatArray,
    confidence: float = 0.95,
) -> ShareOfOracle:
    """``sum(rewards) / sum(oracle)`` with its delta-method interval (module doc).

    NaN share for an empty series or one whose oracle reward is 0; the interval collapses to
    the point for a single impression.

    >>> s = share_interval([1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    >>> s.share, [round(x, 3) for x in s.ci95]
    (0.75, [0.26, 1.24])
    """
    e = np.asarray(rewards, dtype=np.float64)
    o = np.asarray(oracle, dtype=np.float64)
    if e.shape != o.shape:
        raise ValueError("rewards and oracle rewards must align")
    n = int(e.size)
    total = float(o.sum()) if n else 0.0
    if n == 0 or total <= 0.0:
        return ShareOfOracle(math.nan, (math.nan, math.nan), n)
    share = float(e.sum()) / total
    if n < 2:
        return ShareOfOracle(share, (share, share), n)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    residual = e - share * o
    se = float(np.sqrt(residual.var(ddof=1) / n)) / (total / n)
    return ShareOfOracle(share, (share - z * se, share + z * se), n)


def impressions_to_recover(
    rewards: Sequence[float] | FloatArray,
    oracle: Sequence[float] | FloatArray,
    drift_index: int,
    *,
    window: int = 2_000,
    tolerance: float = 0.05,
    relative_to_pre_drift: bool = False,
) -> int | None:
    """Impressions after the drift until a trailing window's share reaches the target
    (precise definition in the module doc); None if it never does, or if there is no
    complete window before the drift when ``relative_to_pre_drift`` asks for one.

    >>> impressions_to_recover([1.0] * 10 + [0.0] * 5 + [1.0] * 10, [1.0] * 25, 10, window=3)
    8
    >>> impressions_to_recover([0.5] * 20, [1.0] * 20, 10, window=3) is None
    True
    >>> impressions_to_recover([0.5] * 20, [1.0] * 20, 10, window=3, relative_to_pre_drift=True)
    3
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    e = np.asarray(rewards, dtype=np.float64)
    o = np.asarray(oracle, dtype=np.float64)
    target = 1.0 - tolerance
    if relative_to_pre_drift:
        if drift_index < window:
            return None
        before = share_interval(
            e[drift_index - window : drift_index], o[drift_index - window : drift_index]
        ).share
        if not math.isfinite(before):
            return None
        target *= before
    after_e, after_o = e[drift_index:], o[drift_index:]
    if after_e.size < window:
        return None
    ce = np.concatenate(([0.0], np.cumsum(after_e)))
    co = np.concatenate(([0.0], np.cumsum(after_o)))
    num = ce[window:] - ce[:-window]
    den = co[window:] - co[:-window]
    with np.errstate(divide="ignore", invalid="ignore"):
        # A window the oracle could earn nothing in is trivially "within tolerance".
        shares = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    # Float sums of a long series are off by a few ulps: a share of exactly the target counts.
    hits = np.flatnonzero(shares >= target - 1e-12)
    return int(hits[0]) + window if hits.size else None


class SimulationReport:
    """Accumulates one run: per impression its time, policy version, expected reward of what
    was shown, the oracle's expected reward and the realised reward. Owns its lists; not
    thread-safe. Queries are cheap (numpy over the lists), so call them at the end."""

    def __init__(self, *, drift_at_ms: int | None = None) -> None:
        self.drift_at_ms = drift_at_ms
        self.drift_index: int | None = None
        self._ts: list[int] = []
        self._version: list[int] = []
        self._versions: dict[str, int] = {}
        self._expected: list[float] = []
        self._oracle: list[float] = []
        self._realised: list[float] = []

    def __len__(self) -> int:
        return len(self._ts)

    def record(
        self,
        *,
        ts_ms: int,
        policy_version: str | None,
        expected_reward: float,
        oracle_reward: float,
        reward: float = 0.0,
    ) -> None:
        """One decision slot; ``policy_version`` None when no offer was shown (the expected
        reward is then 0). Raises ``ValueError`` for non-finite values, or when the oracle
        expected less than the variant shown (then the oracle's candidates were wrong)."""
        if not (
            math.isfinite(expected_reward)
            and math.isfinite(oracle_reward)
            and math.isfinite(reward)
        ):
            raise ValueError("rewards must be finite")
        if expected_reward > oracle_reward + 1e-9 * max(1.0, abs(oracle_reward)):
            raise ValueError(f"shown variant expects {expected_reward} > oracle {oracle_reward}")
        if self.drift_index is None and self.drift_at_ms is not None and ts_ms >= self.drift_at_ms:
            self.drift_index = len(self._ts)
        name = NO_OFFER if policy_version is None else policy_version
        code = self._versions.setdefault(name, len(self._versions))
        self._ts.append(ts_ms)
        self._version.append(code)
        self._expected.append(expected_reward)
        self._oracle.append(oracle_reward)
        self._realised.append(reward)

    # -- queries -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, FloatArray]:
        """Per-impression series: ``expected``, ``oracle``, ``realised``, ``regret``."""
        e = np.asarray(self._expected, dtype=np.float64)
        o = np.asarray(self._oracle, dtype=np.float64)
        return {
            "expected": e,
            "oracle": o,
            "realised": np.asarray(self._realised, np.float64),
            "regret": o - e,
        }

    @property
    def cumulative_reward(self) -> float:
        """Sum of the expected rewards of what was shown."""
        return math.fsum(self._expected)

    @property
    def cumulative_realised_reward(self) -> float:
        return math.fsum(self._realised)

    @property
    def cumulative_oracle(self) -> float:
        return math.fsum(self._oracle)

    @property
    def cumulative_regret(self) -> float:
        return self.cumulative_oracle - self.cumulative_reward

    @property
    def coverage(self) -> float:
        """Share of slots in which an offer was shown."""
        none = self._versions.get(NO_OFFER)
        if not self._version:
            return math.nan
        return 1.0 - (self._version.count(none) / len(self._version) if none is not None else 0)

    def share_of_oracle(
        self,
        *,
        start: int = 0,
        stop: int | None = None,
        realised: bool = False,
        confidence: float = 0.95,
    ) -> ShareOfOracle:
        """Share of the oracle's expected reward over impressions ``[start, stop)``; with
        ``realised`` the numerator is the sampled reward instead (noisier, same mean)."""
        a = self.arrays()
        num = a["realised"] if realised else a["expected"]
        return share_interval(num[start:stop], a["oracle"][start:stop], confidence)

    def by_version(self) -> dict[str, VersionSummary]:
        """Per policy version (and :data:`NO_OFFER`), in order of first appearance."""
        a = self.arrays()
        codes = np.asarray(self._version, dtype=np.int64)
        out = {}
        for name, code in self._versions.items():
            m = codes == code
            out[name] = VersionSummary(
                int(m.sum()),
                float(a["expected"][m].sum()),
                float(a["oracle"][m].sum()),
                float(a["realised"][m].sum()),
                share_interval(a["expected"][m], a["oracle"][m]),
            )
        return out

    def recovery_after_drift(
        self, *, window: int = 2_000, tolerance: float = 0.05, relative_to_pre_drift: bool = False
    ) -> int | None:
        """:func:`impressions_to_recover` on this run; None without a drift in the run."""
        if self.drift_index is None:
            return None
        a = self.arrays()
        return impressions_to_recover(
            a["expected"],
            a["oracle"],
            self.drift_index,
            window=window,
            tolerance=tolerance,
            relative_to_pre_drift=relative_to_pre_drift,
        )

    def curve(self, *, points: int = 200, window: int = 2_000) -> list[CurvePoint]:
        """About ``points`` evenly spaced points of the cumulative figures, with the trailing
        ``window`` share at each (NaN before a full window)."""
        n = len(self)
        if n == 0:
            return []
        a = self.arrays()
        ce, co = np.cumsum(a["expected"]), np.cumsum(a["oracle"])
        idx = sorted({max(0, min(n, round(k * n / points)) - 1) for k in range(1, points + 1)})
        out = []
        for j in idx:
            if j + 1 >= window:
                lo = j + 1 - window
                num = ce[j] - (ce[lo - 1] if lo else 0.0)
                den = co[j] - (co[lo - 1] if lo else 0.0)
                rolling = num / den if den > 0 else math.nan
            else:
                rolling = math.nan
            out.append(
                CurvePoint(
                    j + 1,
                    self._ts[j],
                    float(ce[j]),
                    float(co[j]),
                    float(co[j] - ce[j]),
                    float(rolling),
                )
            )
        return out

    def summary(self, *, window: int = 2_000, tolerance: float = 0.05) -> dict[str, Any]:
        """JSON-ready figures of the run."""
        return {
            "impressions": len(self),
            "coverage": self.coverage,
            "cumulative_reward": self.cumulative_reward,
            "cumulative_realised_reward": self.cumulative_realised_reward,
            "cumulative_oracle": self.cumulative_oracle,
            "cumulative_regret": self.cumulative_regret,
            **self.share_of_oracle().as_json(),
            "drift_index": self.drift_index,
            "recovery_window": window,
            "recovery_impressions": self.recovery_after_drift(window=window, tolerance=tolerance),
            "recovery_impressions_relative": self.recovery_after_drift(
                window=window, tolerance=tolerance, relative_to_pre_drift=True
            ),
            "by_version": {
                k: {"impressions": v.impressions, "regret": v.regret, **v.share.as_json()}
                for k, v in self.by_version().items()
            },
        }


def plot_reports(
    reports: dict[str, SimulationReport], path: str | Path, *, window: int = 2_000
) -> None:
    """Cumulative regret and trailing share of the oracle per method, one PNG at ``path``.

    Imports matplotlib lazily (Agg backend), so the simulator does not need it otherwise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_regret, ax_share) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, report in reports.items():
        pts = report.curve(window=window)
        xs = [p.impressions for p in pts]
        ax_regret.plot(xs, [p.cumulative_regret for p in pts], label=name)
        ax_share.plot(xs, [p.rolling_share for p in pts], label=name)
        if report.drift_index is not None:
            for ax in (ax_regret, ax_share):
                ax.axvline(report.drift_index, color="grey", linestyle=":", linewidth=1)
    ax_regret.set(
        xlabel="impressions",
        ylabel="cumulative regret (expected reward)",
        title="regret against the oracle",
    )
    ax_share.set(
        xlabel="impressions",
        ylabel=f"share of oracle (trailing {window})",
        title="reward as a share of the oracle's",
        ylim=(0, 1.05),
    )
    ax_share.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
