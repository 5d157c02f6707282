"""Coverage of the reward window's 95 % interval (``RewardMoments.interval``) by simulation.

Rewards per impression are 0 with probability ``1 - p``, else a lognormal(3, sigma) basket
value; the true mean is ``p exp(3 + sigma^2 / 2)``. For each sigma, number of impressions and
expected number of conversions ``n p``, the share of runs whose interval covers the true mean,
every run counted (fewer than 2 conversions too). The figures in
``streamer/rewards/reward_stats.py``'s module doc come from the default arguments:

    PYTHONPATH=. python benchmarks/reward_interval_coverage.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from streamer.rewards.reward_stats import RewardMoments

CONVERSIONS = (3, 5, 10, 20, 50, 100)


def moments(values: np.ndarray, n: int) -> RewardMoments:
    """The moments of ``n`` rewards whose non-zero ones are ``values`` (as ``add`` builds them,
    without the loop)."""
    k = len(values)
    mean = float(values.sum()) / n
    nz_mean = float(values.mean()) if k else 0.0
    return RewardMoments(
        n=n,
        mean=mean,
        m2=float(((values - mean) ** 2).sum() + (n - k) * mean**2),
        nonzero=k,
        nz_mean=nz_mean,
        nz_m2=float(((values - nz_mean) ** 2).sum()) if k else 0.0,
        min_reward=0.0,
    )


def coverage(sigma: float, n: int, expected: float, reps: int, rng: np.random.Generator) -> float:
    p = expected / n
    truth = p * math.exp(3.0 + sigma**2 / 2)
    covered = 0
    for _ in range(reps):
        lo, hi = moments(rng.lognormal(3.0, sigma, rng.binomial(n, p)), n).interval()
        covered += lo <= truth <= hi
    return covered / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("sigma  impressions  " + "  ".join(f"{c:>5d}" for c in CONVERSIONS)
          + "   (expected conversions)")
    for sigma in (0.5, 1.0, 1.5):
        for n in (100, 1_000, 5_000):
            cells = [f"{coverage(sigma, n, c, args.reps, rng):5.3f}" if c <= n / 2 else "    -"
                     for c in CONVERSIONS]
            print(f"{sigma:<6} {n:<12} " + "  ".join(cells))


if __name__ == "__main__":
    main()
