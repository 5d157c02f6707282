"""Off-policy evaluation: what a target policy would earn, from impressions logged under
another, with confidence intervals. numpy only.

Inputs per logged impression ``i``: the logging propensity ``p0_i`` of the shown variant
(``> 0``), its reward ``r_i``, the target policy's probability ``p1_i`` of that same variant
(importance weight ``w_i = p1_i / p0_i``); for doubly robust also the direct-method model's
reward estimate of the shown variant ``q_i`` and its expectation under the target
``v_i = sum_a p1(a) q(a)`` over the supported variants; optionally the target's unsupported
mass ``u_i`` (below).

- **IPS**  ``mean(w r)``: unbiased for the target's value on the variants the logging policy
  could show (its *support*); a variant it never showed (probability 0) never appears in the
  logs, so IPS counts the target's probability there as earning nothing.
- **SNIPS** ``sum(w r) / sum(w)``: slightly biased, much lower variance, invariant to a
  constant added to rewards; it is the target's mean reward *per unit of its supported
  probability*, so on its own it credits unsupported probability with the supported average.
- **DR**  ``mean(v + w (r - q))``: unbiased if either the propensities or the model are right
  *on the support*; the model explains what it can, the weights only correct its residuals.
  Outside the support no weight corrects anything: there ``v`` is the model alone, which was
  never checked against a reward, and its error is in no interval.

So none of them says anything about a variant the logs never tried. Given each impression's
``unsupported`` mass (the target's probability on variants the logging policy could not show:
``LoggedDecision.support``), every estimator here values that mass at ``worst_reward``, the
least a variant can earn (0 for revenue): IPS and DR add ``worst_reward x unsupported`` (DR's
``v`` then sums over the supported variants only), SNIPS scales its supported average by the
supported mass first. The estimate is then a lower bound of the target's value (up to its
interval), whatever the untried variants earn; with no unsupported mass it is the usual one.

Intervals are **CLT (normal) intervals**, not bootstrap: every estimator is a mean (SNIPS a
ratio of means, linearised by the delta method) of independent per-impression terms, and the
trainer evaluates on thousands to a million records, where the normal approximation is good
and costs one pass, while a bootstrap costs hundreds of passes per candidate. The floor bounds
every weight by ``1 / floor``, so the terms have finite variance and the CLT applies; with
few records or heavy weights the interval is optimistic, which :attr:`Estimate.ess` (the
effective sample size of the weights) lets a caller see.

**Comparing two policies** on the same impressions (:func:`paired_difference`): the
difference of their per-impression terms has a far smaller spread than either estimate (both
see the same rewards), so a real improvement is recognised with a fraction of the records a
comparison of two separate intervals needs.

Non-finite inputs (say, a target policy with NaN weights) give a non-finite estimate, never
an exception, so the promotion gate can refuse it.

>>> import numpy as np
>>> p0, r, p1 = np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.array([1.0, 0.0])
>>> ips(p0, r, p1).value, snips(p0, r, p1).value
(1.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
EstimatorName = Literal["ips", "snips", "dr"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A policy value estimate with its standard error and a ``confidence`` CLT interval."""

    estimator: EstimatorName
    value: float
    stderr: float
    lower: float
    upper: float
    confidence: float
    n: int
    ess: float

    @property
    def is_finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.stderr, self.lower, self.upper))

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain values for metadata and logs."""
        return asdict(self)


def _arrays(*xs: ArrayLike) -> list[npt.NDArray[np.float64]]:
    arrays = [np.asarray(x, dtype=np.float64).reshape(-1) for x in xs]
    n = arrays[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrays):
        raise ValueError("estimators need equally long, non-empty arrays")
    if not (arrays[0] > 0).all():
        raise ValueError("logging propensities must be positive")
    return arrays


def _unsupported(unsupported: ArrayLike | None, n: int) -> npt.NDArray[np.float64]:
    """Each impression's unsupported mass (zeros when not given)."""
    if unsupported is None:
        return np.zeros(n, dtype=np.float64)
    u = np.asarray(unsupported, dtype=np.float64).reshape(-1)
    if u.shape[0] != n:
        raise ValueError("unsupported needs one value per impression")
    return u


def _estimate(
    estimator: EstimatorName,
    value: float,
    terms: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    confidence: float,
) -> Estimate:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = terms.shape[0]
    # The sample standard deviation of the per-impression terms; one record has no spread.
    stderr = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    sum_w, sum_w2 = float(weights.sum()), float((weights**2).sum())
    ess = sum_w**2 / sum_w2 if sum_w2 > 0 else 0.0
    return Estimate(
        estimator=estimator,
        value=float(value),
        stderr=stderr,
        lower=float(value - z * stderr),
        upper=float(value + z * stderr),
        confidence=confidence,
        n=n,
        ess=ess,
    )


def estimator_terms(
    estimator: EstimatorName,
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    model_reward: ArrayLike | None = None,
    model_target_value: ArrayLike | None = None,
    *,
    unsupported: ArrayLike | None = None,
    worst_reward: float = 0.0,
) -> npt.NDArray[np.float64]:
    """The per-impression terms whose mean is ``estimator``'s value (SNIPS: its linearised
    terms shifted by the value, as its interval uses). ``dr`` needs the model arrays (``v``
    over the supported variants). ``unsupported``: the target's probability on variants the
    logging policy could not show, per impression, valued at ``worst_reward`` (module doc).

    >>> estimator_terms("ips", [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]).tolist()
    [2.0, 0.0]
    >>> estimator_terms("snips", [0.5, 0.5], [1.0, 0.0], [0.5, 0.5],
    ...                 unsupported=[0.5, 0.5], worst_reward=-1.0).tolist()
    [0.0, -0.5]
    """
    p0, r, p1 = _arrays(propensity, reward, target_probability)
    u = _unsupported(unsupported, p0.shape[0])
    w = p1 / p0
    if estimator == "ips":
        return w * r + worst_reward * u
    if estimator == "snips":
        mean_w = float(w.mean())
        if mean_w == 0.0:
            # Nothing on the logged variants: known only when it is all on unsupported ones.
            return worst_reward * u if bool((u >= 1.0 - 1e-9).all()) else np.full_like(w, np.nan)
        value = float((w * r).sum() / w.sum())
        # The supported mean reward per unit of supported mass, times each impression's
        # supported mass; the linearised weight terms carry its spread (mean zero).
        supported = 1.0 - u
        spread = w * (r - value) * (float(supported.mean()) / mean_w)
        return supported * value + spread + worst_reward * u
    if model_reward is None or model_target_value is None:
        raise ValueError("dr terms need model_reward and model_target_value")
    q, v = _arrays(propensity, model_reward, model_target_value)[1:]
    return v + w * (r - q) + worst_reward * u


def paired_difference(
    estimator: EstimatorName,
    terms: ArrayLike,
    baseline_terms: ArrayLike,
    *,
    confidence: float = 0.95,
) -> Estimate:
    """The value of one policy minus another's, both estimated by ``estimator`` on the same
    impressions (:func:`estimator_terms` of each): the mean of the per-impression differences
    and its CLT interval. ``ess`` is the number of impressions (no weights of its own).

    >>> d = paired_difference("ips", [2.0, 0.0, 2.2], [1.0, 0.0, 1.2])
    >>> round(d.value, 6), d.lower > 0
    (0.666667, True)
    """
    a = np.asarray(terms, dtype=np.float64).reshape(-1)
    b = np.asarray(baseline_terms, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired terms need equally long, non-empty arrays")
    diff = a - b
    return _estimate(estimator, float(diff.mean()), diff, np.ones_like(diff), confidence)


def within_allowance(
    terms: ArrayLike,
    unsupported: ArrayLike,
    allowance: ArrayLike,
    baseline_terms: ArrayLike,
    *,
    worst_reward: float = 0.0,
) -> npt.NDArray[np.float64]:
    """A target's per-impression ``terms`` (its unsupported mass valued at ``worst_reward``)
    with each impression's unsupported mass up to ``allowance`` valued at ``baseline_terms``
    instead: the baseline policy's own estimate on that impression (the live policy's, in a
    promotion gate), and only the excess over the allowance at the worst. Why: a policy that
    explores by design (its floor) puts that much on variants no log tried whatever it learned;
    an operator accepts that bounded cost, and it is worth what the baseline earns there, not
    the worst, as long as it stays within the design. Paired with ``baseline_terms``, the
    difference then says: better on everything the logs vouch for, with at most
    ``allowance`` of the traffic on untried variants.

    >>> within_allowance([1.0, 0.5], [0.1, 0.5], [0.1, 0.1], [2.0, 2.0]).tolist()
    [1.2, 0.7]
    """
    t = np.asarray(terms, dtype=np.float64).reshape(-1)
    u, a, b = (np.broadcast_to(np.asarray(x, dtype=np.float64), t.shape)
               for x in (unsupported, allowance, baseline_terms))
    return t + np.minimum(u, a) * (b - worst_reward)


def ips(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    *,
    confidence: float = 0.95,
    unsupported: ArrayLike | None = None,
    worst_reward: float = 0.0,
) -> Estimate:
    """Inverse propensity scoring: ``mean(w r)`` (plus ``worst_reward`` times the unsupported
    mass: module doc)."""
    p0, _, p1 = _arrays(propensity, reward, target_probability)
    terms = estimator_terms("ips", propensity, reward, target_probability,
                            unsupported=unsupported, worst_reward=worst_reward)
    return _estimate("ips", float(terms.mean()), terms, p1 / p0, confidence)


def snips(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    *,
    confidence: float = 0.95,
    unsupported: ArrayLike | None = None,
    worst_reward: float = 0.0,
) -> Estimate:
    """Self-normalised IPS: ``sum(w r) / sum(w)``, times the supported mass plus
    ``worst_reward`` times the unsupported mass (module doc); its standard error by the delta
    method (terms ``w (r - value) / mean(w)``). All-zero weights give NaN (nothing to go on),
    except when all of the target's probability is unsupported: then it is ``worst_reward``."""
    p0, _, p1 = _arrays(propensity, reward, target_probability)
    w = p1 / p0
    terms = estimator_terms("snips", propensity, reward, target_probability,
                            unsupported=unsupported, worst_reward=worst_reward)
    return _estimate("snips", float(terms.mean()), terms, w, confidence)


def doubly_robust(
    propensity: ArrayLike,
    reward: ArrayLike,
    target_probability: ArrayLike,
    model_reward: ArrayLike,
    model_target_value: ArrayLike,
    *,
    confidence: float = 0.95,
    unsupported: ArrayLike | None = None,
    worst_reward: float = 0.0,
) -> Estimate:
    """Doubly robust: ``mean(v + w (r - q))`` with ``q`` the model's estimate for the shown
    variant and ``v`` the model's value of the target policy on that impression's context
    (over the supported variants when ``unsupported`` is given: that mass is valued at
    ``worst_reward`` instead, module doc)."""
    p0, _, p1 = _arrays(propensity, reward, target_probability)
    terms = estimator_terms("dr", propensity, reward, target_probability, model_reward,
                            model_target_value, unsupported=unsupported,
                            worst_reward=worst_reward)
    return _estimate("dr", float(terms.mean()), terms, p1 / p0, confidence)
