"""Conversion propensity learned online: P(an impression of a variant converts | features).

Model choice: River ``StandardScaler | LogisticRegression`` (SGD, log loss). Why:

- Speed. It is queried for every candidate variant of every offer revision (16 per revision
  at the worker's defaults, 4 candidates x 4 discounts; 28 in the simulator) and learns from
  every feedback record; logistic regression learns and predicts at ~145k events/s here, a
  factorisation machine (``FMClassifier``) at ~1.6k/s, which a busy worker could not afford.
- What an FM adds is pairwise interactions of sparse, high-cardinality ids (user x item). The
  features here are a few dense, already-scaled numbers (:mod:`~streamer.online.features`), and
  their non-linear interactions are the torch policy's job; this model is its calibrated,
  always-fresh prior.
- Log loss gives calibrated probabilities, which the direct-method part of doubly robust
  estimates needs (:meth:`ConversionModel.expected_reward` = P(convert) x the variant's value).
  The scaler keeps SGD well conditioned as price levels move.

Until ``warmup`` records are learned it answers the smoothed base rate instead of the
untrained model's 0.5 (which would overstate every variant's value tenfold or more).

**A small SGD step (``learning_rate`` 0.01).** Every record is one SGD step, and outcomes are
rare Bernoulli draws, so at a large step the weights follow the last few hundred records: at
0.05 the answer for one variant converting at 15 %, on a stream that never changed, swung
between 5 % and 45 % (``tests/unit/test_online.py``). That noise is not the regression's
alone: the per-bundle ratios below divide outcomes by the regression's answers, and the
policy ranks an anchor's bundles by their product, so a swing that lifts one bundle's
features over another's reorders them. Following change quickly is the per-bundle ratios'
job (their memory is a bundle's own impressions); the regression only needs to follow what
generalises across bundles, which moves slowly. (The intercept keeps River's own step, 0.01.)
Measured in the closed-loop simulator, 20k impressions, ``streamer_learned`` share of the
oracle at 0.05 and 0.01: seed 7 68.8 % and 70.5 %, seed 11 68.3 % and 70.6 %; the loss to
ranking (the favourite variant not the best shown) 15.0 -> 13.2 and 16.1 -> 12.9 points. A
still smaller step is no surer gain: 0.003 gave 71.2 % on seed 7 but 67.6 % on seed 11.

**Discount x segment.** Segments differ in how much a discount moves them (a bargain hunter
more than a loyal customer), which a linear model over the discount and the one-hot segment
slots cannot express: it gets one discount slope for everyone. So the regression also reads
``discount x segment_b`` for each slot ``b`` (:func:`discount_segment_interactions`), one
slope per segment.

**Per-bundle correction.** The regression sees a bundle only through generic evidence
(support, confidence, lift, prices), and co-purchase evidence is a noisy, slow proxy for what a
shown bundle converts at (after a season change, the old partners keep their counts for
long). So the model also keeps, per bundle (the :func:`~streamer.online.features.bundle_key` in
the features), decayed sums of observed conversions ``O`` and of the regression's predicted
conversions ``E`` over that bundle's impressions, and answers ``p_regression x (O + m) / (E +
m)``: an empirical-Bayes (Poisson-gamma) observed/expected ratio, shrunk to 1 by a prior
worth ``m`` expected conversions. A bundle never shown keeps the regression's answer (unless
its items were shown on another page: see pooling below); one shown often converges to its
own rate, whatever discount and context it was shown in (the regression carries those). The
sums forget with a memory of ``bundle_memory`` of the bundle's impressions, so the ratio
follows drift; the table holds at most ``max_bundles`` keys (least recently learned
forgotten first). A memory of 250 instead of 500 impressions did not follow the season change
any sooner in the closed-loop simulator (100k impressions, the policy's prior scale at 30, a
3-hour co-purchase half-life; share of the oracle after the change: seed 7 86.5 % against
86.2, seed 11 86.1 % against 86.5; overall 88.4 and 88.6 % against 88.1 and 89.4 %): not
kept.

**After a drift the per-bundle sums start over** (:meth:`ConversionModel.forget_bundles`,
``drift_keep``, 0 by default). Forgetting by a bundle's *own* impressions leaves a bundle the
policy stopped showing with its verdict for ever: after a season change, a bundle that sold
badly before it (and sells well after it) is still judged by the old season, and shown only at
the exploration floor, too rarely to correct that; a stale favourite takes hundreds of
impressions to fall. Forgetting in time instead (every sum decaying with the whole traffic)
would cut every bundle's memory down to its share of the traffic (a favourite shown on one
impression in 300 would remember a few dozen), against which the prior above was chosen. So
the sums forget on evidence of a change: when ADWIN detects a drift in a policy version's
reward stream as the engine feeds the model (``Engine.learn_conversion``, in every worker and
in the trainer), the per-bundle and item-set sums are dropped (``drift_keep``: the share kept
instead); the regressions keep what they learned, and every bundle starts again from their
answer until its own new outcomes count. In the closed-loop simulator (seeds 5, 7, 11, 17)
the detector fired right after the season change and again 4,000-8,000 impressions later, and
on seed 5 once before it too (at 20k impressions, when a version's reward moved), which costs
the evidence gathered so far.
Share of the oracle at 100k impressions (``benchmarks/simulate_baselines.py --impressions
100000 --seed S --methods streamer_learned --decompose``), without the reset, keeping a quarter
and keeping none: seed 3 90.9 / 91.1 / 91.1 %, seed 7 90.0 / 90.2 / 90.5 %, seed 17 88.5 /
89.7 / 90.1 % (a tenth kept: 90.3 %; the quarter and the tenth measured by a patch of the
learned loop that reset on the same alarms, which gave 90.4 % keeping none); without it and
keeping none, seed 5 91.1 and 91.5 %, seed 11 90.9 and 91.9 %, seed 13 91.3 and 91.7 %. The
gain is after the season change (seed 17 85.6 -> 88.6 %, seed 11 88.5 -> 90.5 %, seed 5 88.6
-> 89.7 %; back within 5 % of its own pre-drift share after 11,467 impressions instead of
18,875 on seed 17, 9,419 instead of 11,987 on seed 11).

**A prior worth 16 expected conversions, not 2** (``bundle_prior``). An anchor shows its
favourite most of the time, so its other bundles have a conversion or two's worth of
impressions of their own: their ratios are a few Poisson draws, and the favourite became
whichever bundle's draws came out high (the winner's curse), not the best. Measured in the
closed-loop simulator (20k impressions, seed 7, prior 2): the favourites earned 9.0 % less
than the best variants shown, 7.0 of those points on offers whose favourite was at least
15 % worse than their best; on those the best had a median 0.3-1.5 expected clicks of its own
(the sums' unit when clicks are reported), the favourite 2-6, and the model rated the
favourite 1.25x the best. A heavier prior keeps a bundle near the regression's (and its item
set's) answer until its own evidence counts; a bundle shown often still converges to its own
rate. Share of the oracle (``benchmarks/simulate_baselines.py --impressions N --seed S
--methods streamer_learned --decompose``): 20k impressions, mean of seeds 3 / 5 / 7 / 11 at
priors 2, 4, 8, 16: 76.2, 76.9, 77.2, 77.3 % (at 32, seed 3: 76.2 against 77.7 at 16); 100k
impressions at 2 and 16: seed 3 87.1 and 87.6 %, seed 5 86.7 and 88.7 %, seed 7 86.5 and
87.8 %, seed 11 88.0 and 88.8 % (seed 7: the loss to ranking 5.6 -> 5.1 points, to
exploration 1.5 -> 1.9, as near ties stay near ties longer and share the probability). What
it costs: after the season change a stale bundle's ratio falls more slowly (back within 5 % of
its own pre-drift share after 20,835 impressions on seed 7, against 15,836).

**Pooling item sets** (``pool_item_sets``, on by default). The same items are a bundle of
each of their anchors (``tea+cup`` on the tea's page, ``cup+tea`` on the cup's), which the
identity keys keep apart. With pooling the model also keeps the sums per item set, whichever
anchor showed it, and shrinks a bundle's ratio towards its item set's ratio ``r0 = (O_set +
m) / (E_set + m)`` instead of towards 1: ``(O + m r0) / (E + m)``. A bundle an anchor has
rarely shown then starts from what the same items earned on their other pages, and its own
outcomes take over as they come. (The set's sums include the bundle's own, so those count a
little twice: at most ``m`` expected conversions' worth.) Why: an anchor shows its favourite
most of the time, so its other bundles have few impressions of their own, and the regression
cannot tell them apart (the policy lost most to showing the wrong bundle); pooling roughly
doubles the data behind a pair. Measured in the closed-loop simulator
(``benchmarks/simulate_baselines.py --impressions 20000 --methods streamer_learned``), share
of the oracle: seed 7 68.1 % without, 68.8 % with; seed 8 62.0 % and 64.0 %.

**Clicks first, then purchases** (when outcomes say whether the offer was clicked:
``learn_one(..., clicked=...)``). ``P(convert) = P(click) x P(buy | click)``, the
decomposition of e-commerce conversion models (ESMM, Ma et al., SIGIR 2018): the regression
above and the per-bundle sums learn *clicks* (a bundle's clicks against the clicks the
regression expected), and a second regression over the same inputs learns ``P(buy | click)``
from the clicked impressions only. Why: an offer is clicked more often than it is bought
through (twice as often in the simulated shop), so a bundle's clicks tell its appeal apart
from its neighbours' with less Poisson noise per impression; what happens after the click
depends mostly on the price and discount, which the second regression learns across every
bundle. Where the loss came from: late in the simulator's first season the offer's favourite
variant was not the best it showed on ~6 % of the reward, the truly best being a near tie
(~6 % better) with as many impressions, estimated 15 % low while the favourite was 14 % high:
noise, not a lack of exploration. A conversion counts as a click, and ``P(buy | click)`` is 1
until some record shows a click that did not convert, so a caller that never passes clicks, or
a storefront that never reports ``offer_click`` events (its outcomes say ``clicked=False``),
gets the single-stage model exactly.
Measured in the closed-loop simulator (``benchmarks/simulate_baselines.py --impressions 100000
--seed S --methods streamer_learned --decompose``), share of the oracle with one stage and
with two: seed 3 85.8 and 87.1 %, seed 5 84.9 and 86.7 %, seed 7 85.2 and 86.5 %, seed 11
85.7 and 88.0 %; the loss to ranking 7.6 -> 5.6 points (seed 7). A prediction costs ~11 us
instead of ~8 (two regressions).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from river import linear_model, optim, preprocessing

from streamer.online.features import (
    BUNDLE_KEY_PREFIX,
    PROPENSITY_FEATURE,
    SEGMENT_SLOTS,
    RewardKind,
    bundle_of,
    variant_value,
)

#: Share of the per-bundle outcome sums kept after a drift (module doc): none.
DRIFT_KEEP = 0.0
#: Weight, in clicks, of the prior 1/2 of P(buy | click) before ``warmup`` clicks are learned.
AFTER_CLICK_PRIOR_WEIGHT = 10.0
#: The P(buy | click) regression's weights move at this share of ``learning_rate`` (its
#: intercept at River's own step). Why smaller: its labels are near-even coin flips (about
#: half of the clicks convert), not rare events, so every step is large and at the full step
#: the weights wandered, and with them the discount the policy preferred. Closed-loop
#: simulator, 100k impressions, share of the oracle at the full step and at 0.1: seed 7 85.2 %
#: and 86.5 %, seed 11 86.3 % and 88.0 % (loss to a wrong discount 1.5 -> 1.0 and 1.2 -> 1.0
#: points; the one-stage model lost 0.6).
AFTER_CLICK_STEP = 0.1


def shrunk_rate(hits: float, trials: float, prior: float, weight: float) -> float:
    """``hits / trials`` shrunk towards ``prior`` by a prior worth ``weight`` trials: the
    posterior mean of a Beta (or, for observed/expected sums, Gamma) prior of that mean and
    weight. Every rate this model answers before it has data is one.

    >>> shrunk_rate(0, 0, 0.5, 10), shrunk_rate(9, 10, 0.5, 10)
    (0.5, 0.7)
    """
    return (hits + prior * weight) / (trials + weight)


def discount_segment_interactions(features: Mapping[str, float]) -> dict[str, float]:
    """``discount_x_segment_b = discount x segment_b`` for each segment slot ``b`` present in
    ``features`` (none without a ``discount``): the regression's per-segment discount slopes.

    >>> discount_segment_interactions({"discount": 0.1, "segment_0": 0.0, "segment_2": 1.0})
    {'discount_x_segment_0': 0.0, 'discount_x_segment_2': 0.1}
    """
    discount = features.get("discount")
    if discount is None:
        return {}
    return {
        f"discount_x_segment_{b}": float(discount) * float(features[f"segment_{b}"])
        for b in range(SEGMENT_SLOTS)
        if f"segment_{b}" in features
    }


def _input_matrix(rows: Sequence[Mapping[str, float]], bundles: Sequence[str | None]
                  ) -> tuple[list[str], npt.NDArray[np.float64]] | None:
    """``ConversionModel._inputs`` of each row as a matrix and its column names, when every
    row has the first row's features, a propensity and one bundle key (``bundles``: each
    row's, ``bundle_of``); else None."""
    first = rows[0]
    names = [k for k in first
             if k != PROPENSITY_FEATURE and not k.startswith(BUNDLE_KEY_PREFIX)]
    width = len(names) + 2  # and the propensity, and the bundle key
    if not names:
        return None
    for row, bundle in zip(rows, bundles, strict=True):
        if len(row) != width or bundle is None or PROPENSITY_FEATURE not in row:
            return None
    try:  # every name present, so the two other keys are the propensity and the bundle's
        matrix = np.array(list(map(itemgetter(*names), rows)), dtype=np.float64).reshape(
            len(rows), len(names))
    except KeyError:
        return None
    interactions = discount_segment_interactions(dict(zip(names, matrix[0], strict=True)))
    if interactions:  # discount x segment_b, as discount_segment_interactions makes them
        discount = matrix[:, names.index("discount")]
        columns = [discount * matrix[:, names.index("segment_" + k.rpartition("_")[2])]
                   for k in interactions]
        matrix = np.column_stack([matrix, *columns])
        names += list(interactions)
    return names, matrix


#: A River ``StandardScaler | LogisticRegression``'s state over some features, as arrays: the
#: scaler's means and standard deviations, which variances are not 0, the regression's
#: weights and intercept (:func:`_linear_form`).
LinearForm = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_],
                   npt.NDArray[np.float64], float]


def _linear_form(pipeline: Any, names: Sequence[str]) -> LinearForm:
    """``pipeline``'s state over the features ``names`` (an unseen one: mean, variance and
    weight 0, as River reads it)."""
    scaler, regression = pipeline.steps.values()
    means, variances, weights = scaler.means, scaler.vars, regression.weights
    mean = np.array([means.get(k, 0.0) for k in names], dtype=np.float64)
    variance = np.array([variances.get(k, 0.0) for k in names], dtype=np.float64)
    weight = np.array([weights.get(k, 0.0) for k in names], dtype=np.float64)
    return mean, np.sqrt(variance), variance != 0.0, weight, float(regression.intercept)


def _probabilities(pipeline: Any, matrix: npt.NDArray[np.float64], names: Sequence[str],
                   form: LinearForm | None = None) -> npt.NDArray[np.float64]:
    """``pipeline.predict_proba_one(x)[True]`` for each row ``x`` of ``matrix`` (columns:
    ``names``), ``pipeline`` being River's ``StandardScaler | LogisticRegression``: a scaled
    feature is ``(x - mean) / std``, 0 where the variance is 0 (or the feature unseen), the
    logit the weights' dot product plus the intercept, the probability River's sigmoid (0
    below -30, 1 above 30). ``form``: ``_linear_form(pipeline, names)``, when known."""
    mean, scale, varies, weight, intercept = form or _linear_form(pipeline, names)
    scaled = np.divide(matrix - mean, scale, out=np.zeros_like(matrix), where=varies)
    logits = scaled @ weight + intercept
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-logits))
    return np.where(logits < -30.0, 0.0, np.where(logits > 30.0, 1.0, p))


#: Prefix of an item set's key in the per-bundle table (``pool_item_sets``).
ITEM_SET_PREFIX = "items:"


def item_set_key(bundle: str) -> str:
    """The key of a bundle's item set, whichever item anchors it.

    >>> item_set_key("bundle:tea+cup") == item_set_key("bundle:cup+tea")
    True
    """
    return ITEM_SET_PREFIX + "+".join(sorted(bundle[len(BUNDLE_KEY_PREFIX):].split("+")))


class ConversionModel:
    """Online P(convert | variant features); owns its River pipeline. Not thread-safe.

    Args:
        learning_rate: SGD step of the logistic regression.
        l2: L2 penalty on its weights.
        warmup: records learned before the model (not the base rate) answers.
        prior_rate: conversion rate assumed before any record, worth ``prior_weight`` records.
        prior_weight: weight of ``prior_rate`` in the base rate.
        reward: what :meth:`expected_reward` values a conversion at (``revenue`` or ``margin``;
            must match the reward the attribution logs).
        cost_ratio: cost as a share of list price, for ``margin``.
        bundle_prior: ``m``, the prior's weight in expected conversions (module doc).
        bundle_memory: impressions of a bundle after which its older ones weigh ``1/e``.
        drift_keep: the share of every bundle's outcome sums :meth:`forget_bundles` keeps
            (what a detected drift calls for: module doc).
        max_bundles: bundles whose outcome sums are kept.
        pool_item_sets: shrink a bundle's ratio towards its item set's (module doc) instead
            of towards 1.

    >>> import random
    >>> rng = random.Random(0)
    >>> model = ConversionModel(warmup=10)
    >>> for _ in range(2000):
    ...     x = rng.uniform(-1, 1)
    ...     model.learn_one({"discount": x}, converted=x > 0)
    >>> model.predict_one({"discount": 0.8}) > 0.9 > 0.1 > model.predict_one({"discount": -0.8})
    True

    Two bundles with equal features, one that converts and one that does not, are told apart
    by their identity keys:

    >>> model = ConversionModel(warmup=10)
    >>> for k in range(2000):
    ...     model.learn_one({"x": 1.0, "bundle:a+b": 1.0}, converted=k % 5 == 0)
    ...     model.learn_one({"x": 1.0, "bundle:a+c": 1.0}, converted=False)
    >>> good = model.predict_one({"x": 1.0, "bundle:a+b": 1.0})
    >>> bad = model.predict_one({"x": 1.0, "bundle:a+c": 1.0})
    >>> round(good, 1), bad < 0.01, round(model.predict_one({"x": 1.0}), 1)
    (0.2, True, 0.1)
    """

    def __init__(
        self,
        *,
        learning_rate: float = 0.01,
        l2: float = 0.0,
        warmup: int = 200,
        prior_rate: float = 0.02,
        prior_weight: float = 50.0,
        reward: RewardKind = "revenue",
        cost_ratio: float = 0.0,
        bundle_prior: float = 16.0,
        bundle_memory: float = 500.0,
        drift_keep: float = DRIFT_KEEP,
        max_bundles: int = 200_000,
        pool_item_sets: bool = True,
    ) -> None:
        if reward not in ("revenue", "margin"):
            raise ValueError(f"reward must be 'revenue' or 'margin', got {reward!r}")
        if not 0.0 <= cost_ratio < 1.0:
            raise ValueError(f"cost_ratio must be in [0, 1), got {cost_ratio}")
        if not 0.0 <= prior_rate <= 1.0 or prior_weight <= 0:
            raise ValueError("prior_rate must be in [0, 1] and prior_weight positive")
        if not bundle_prior > 0 or not bundle_memory >= 1 or max_bundles < 0:
            raise ValueError("bundle_prior positive, bundle_memory >= 1, max_bundles >= 0")
        if not 0.0 <= drift_keep <= 1.0:
            raise ValueError(f"drift_keep must be in [0, 1], got {drift_keep}")
        self.drift_keep = drift_keep
        self.pool_item_sets = pool_item_sets
        self.warmup = warmup
        self.bundle_prior = bundle_prior
        self.bundle_decay = 1.0 - 1.0 / bundle_memory
        self.max_bundles = max_bundles
        # bundle (or item set) key -> (decayed observed conversions, decayed predicted
        # conversions)
        self._bundles: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.prior_rate = prior_rate
        self.prior_weight = prior_weight
        self.reward: RewardKind = reward
        self.cost_ratio = cost_ratio
        self._model = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), l2=l2
        )
        # P(buy | click), learned from clicked impressions of records that say (module doc),
        # its weights at a tenth of the step (AFTER_CLICK_STEP).
        self._after_click = preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate * AFTER_CLICK_STEP), l2=l2
        )
        self.n_learned = 0
        self.n_converted = 0
        #: Impressions learned as clicked (a conversion counts as a click where a record does
        #: not say): the label of the regression and of the per-bundle sums.
        self.n_clicked = 0
        #: Clicked impressions of records that said whether the offer was clicked, and their
        #: conversions (what P(buy | click) learns from).
        self.n_known_clicks = 0
        self.n_known_click_conversions = 0
        #: predict_many's linear forms of the regressions (``_form``), by the count of
        #: records learned when made.
        self._forms: dict[tuple[int, int, tuple[str, ...]], LinearForm] = {}

    @staticmethod
    def _inputs(features: Mapping[str, float]) -> dict[str, float]:
        # Never learn from (or predict with) our own earlier output, logged as a feature; the
        # bundle's identity is for the per-bundle sums, not a regression input.
        inputs = {
            k: float(v)
            for k, v in features.items()
            if k != PROPENSITY_FEATURE and not k.startswith(BUNDLE_KEY_PREFIX)
        }
        inputs.update(discount_segment_interactions(inputs))
        return inputs

    def learn_one(self, features: Mapping[str, float], converted: bool,
                  clicked: bool | None = None) -> None:
        """Learn one closed impression: the shown variant's features, whether it converted
        and (when known) whether the offer was clicked; a conversion counts as a click."""
        converted = bool(converted)
        click = converted or bool(clicked)
        inputs = self._inputs(features)
        key = bundle_of(features)
        if key is not None and self.max_bundles > 0:
            # The ratio compares outcomes with what the regression expected *before* learning
            # them, as predictions are made.
            expected = self._regression(features, inputs)
            decay = self.bundle_decay
            for k in (key, item_set_key(key)) if self.pool_item_sets else (key,):
                observed, predicted = self._bundles.pop(k, (0.0, 0.0))
                self._bundles[k] = (decay * observed + click, decay * predicted + expected)
            while len(self._bundles) > self.max_bundles:
                self._bundles.popitem(last=False)
        self._model.learn_one(inputs, click)
        if clicked is not None and click:
            self._after_click.learn_one(inputs, converted)
            self.n_known_clicks += 1
            self.n_known_click_conversions += converted
        self.n_learned += 1
        self.n_converted += converted
        self.n_clicked += click

    def forget_bundles(self, keep: float | None = None) -> None:
        """Keep ``keep`` (default ``drift_keep``) of every bundle's and item set's outcome
        sums: after a detected drift their history describes the regime before it, and a
        bundle rarely shown since would keep it for ever (module doc). The regressions keep
        what they learned: they follow change through their features."""
        keep = self.drift_keep if keep is None else keep
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep must be in [0, 1], got {keep}")
        bundles = self._bundles
        if keep == 0.0:
            bundles.clear()
            return
        for key, (observed, predicted) in bundles.items():
            bundles[key] = (observed * keep, predicted * keep)

    @property
    def base_rate(self) -> float:
        """The rate of the regression's label seen so far (conversions, or clicks where
        records say: module doc), shrunk towards ``prior_rate``."""
        return shrunk_rate(self.n_clicked, self.n_learned, self.prior_rate, self.prior_weight)

    def buy_after_click(self, features: Mapping[str, float],
                        inputs: dict[str, float] | None = None) -> float:
        """P(buy | click) for these features: 1 until a record shows a click that did not
        convert (until then the clicks learned are the conversions: a storefront that does not
        report offer clicks, or none yet); then the clicked impressions' conversion rate,
        shrunk towards 1/2 by a prior worth ``AFTER_CLICK_PRIOR_WEIGHT`` clicks, until
        ``warmup`` clicks are learned; then the second regression's answer."""
        if self.n_known_click_conversions == self.n_known_clicks:
            return 1.0
        if self.n_known_clicks < self.warmup:
            return shrunk_rate(self.n_known_click_conversions, self.n_known_clicks, 0.5,
                               AFTER_CLICK_PRIOR_WEIGHT)
        if inputs is None:
            inputs = self._inputs(features)
        return float(self._after_click.predict_proba_one(inputs).get(True, 0.0))

    def _regression(self, features: Mapping[str, float],
                    inputs: dict[str, float] | None = None) -> float:
        """The regression's P(convert) for ``features`` (``inputs``: their regression inputs,
        when already built); the base rate during warm-up, without building any inputs."""
        if self.n_learned < self.warmup:
            return self.base_rate
        if inputs is None:
            inputs = self._inputs(features)
        return float(self._model.predict_proba_one(inputs).get(True, 0.0))

    def bundle_ratio(self, features: Mapping[str, float]) -> float:
        """The per-bundle correction ``(O + m r0) / (E + m)``: 1 for an unknown bundle
        without pooling (``r0`` is 1, or the item set's ratio: module doc)."""
        shape, rate = self.bundle_posterior(features)
        return shape / rate

    def bundle_posterior(self, features: Mapping[str, float]) -> tuple[float, float]:
        """The Gamma posterior ``(shape, rate) = (O + m r0, E + m)`` of the bundle's ratio:
        the prior ``(m r0, m)`` has mean ``r0``, 1 (or with ``pool_item_sets`` the item set's
        ratio ``(O_set + m) / (E_set + m)``) for an unknown bundle or a dict without a bundle
        key."""
        key = bundle_of(features)
        if key is None:
            return self.bundle_prior, self.bundle_prior
        m = self.bundle_prior
        prior_mean = 1.0
        if self.pool_item_sets:
            set_observed, set_predicted = self._bundles.get(item_set_key(key), (0.0, 0.0))
            prior_mean = shrunk_rate(set_observed, set_predicted, 1.0, m)
        observed, predicted = self._bundles.get(key, (0.0, 0.0))
        return observed + m * prior_mean, predicted + m

    def predict_one(self, features: Mapping[str, float]) -> float:
        """P(convert) for a variant with these features, in [0, 1]: the regression's answer
        times its bundle's correction, times P(buy | click) (module doc)."""
        inputs = self._inputs(features) if self.n_learned >= self.warmup else None
        p = min(1.0, self._regression(features, inputs) * self.bundle_ratio(features))
        return min(1.0, max(0.0, p * self.buy_after_click(features, inputs)))

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> list[float]:
        """:meth:`predict_one` of each row (equal to within float rounding), in one pass: a
        decision's variants (every candidate at every discount level) at once.

        Why: once warm, :meth:`predict_one` runs both regressions through River, its scaler and
        its dot product, one dict at a time (~22 us per variant: ~0.5 ms for a decision of 24,
        which the learned policy makes on every offer revision, as it reads this as a
        feature). Here the regressions are one matrix product over the rows, with River's
        scaler means and variances and its weights as they are now (what River computes:
        ``(x - mean) / std``, the dot product with the weights plus the intercept, its
        sigmoid), and each bundle's ratio is computed once. Rows not shaped as
        ``DecisionFeaturizer`` makes them (the same features, a propensity and one bundle key
        each) are predicted one by one."""
        if not rows:
            return []
        keys = [bundle_of(row) for row in rows]
        ratios: dict[str | None, float] = {}
        for key, row in zip(keys, rows, strict=True):
            if key not in ratios:
                ratios[key] = self.bundle_ratio(row)
        n = len(rows)
        warm = self.n_learned >= self.warmup
        after_warm = (self.n_known_click_conversions != self.n_known_clicks
                      and self.n_known_clicks >= self.warmup)
        names: list[str] = []
        matrix = np.empty((n, 0))
        if warm or after_warm:
            shaped = _input_matrix(rows, keys)
            if shaped is None:
                return [self.predict_one(row) for row in rows]
            names, matrix = shaped
        regression = (_probabilities(self._model, matrix, names, self._form(0, names))
                      if warm else np.full(n, self.base_rate))
        after_click = (_probabilities(self._after_click, matrix, names, self._form(1, names))
                       if after_warm else np.full(n, self.buy_after_click({})))
        return [min(1.0, max(0.0, min(1.0, float(p) * ratios[key]) * float(a)))
                for p, key, a in zip(regression, keys, after_click, strict=True)]

    def _form(self, which: int, names: list[str]) -> LinearForm:
        """The linear form of the regression (0) or of P(buy | click) (1) over ``names``, kept
        until the next :meth:`learn_one` (the only place either learns): a decision's worth
        of predictions no longer reads River's state feature by feature every time."""
        key = (which, self.n_learned, tuple(names))
        form = self._forms.get(key)
        if form is None:
            if len(self._forms) >= 8:
                self._forms.clear()
            form = self._forms[key] = _linear_form(
                self._after_click if which else self._model, names)
        return form

    def expected_reward(self, features: Mapping[str, float]) -> float:
        """The direct-method estimate of a variant's reward: P(convert) x its value."""
        value = variant_value(features, reward=self.reward, cost_ratio=self.cost_ratio)
        return self.predict_one(features) * value
