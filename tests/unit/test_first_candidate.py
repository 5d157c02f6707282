"""The trainer's first candidate, fine-tuned while v0 is live, stays where v0's logs are.

v0 shows every candidate at one discount (10 %); the trainer's fresh policy reads the discount
as a number from 0 to 0.15, and fine-tuned from it (200 steps) the first candidate kept most of
its probability on the discounts v0 never showed, which the gate values at the worst reward: no
first candidate was promoted. Its network reads the discount's level one-hot as well.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
import torch

from streamer.app.trainer import FeedbackTrainer
from streamer.online import FEATURE_NAMES
from streamer.policy.checkpoint import policy_from_bytes, policy_to_bytes
from streamer.policy.feedback import FeedbackBatch
from streamer.policy.torch_policy import PolicyShape, TorchPolicy, version_of
from streamer.settings import TrainerSettings

torch.set_num_threads(1)

LEVELS = (0.0, 5.0, 10.0, 15.0)
CANDIDATES = 3


def v0_logs(n: int, seed: int = 0) -> FeedbackBatch:
    """``n`` impressions of ``CANDIDATES`` bundles at every level, v0 showing the 10 % rows
    only (its best-scored bundle with probability 0.9); the bundle's take rate rises with its
    score."""
    rng = np.random.default_rng(seed)
    f = {name: i for i, name in enumerate(FEATURE_NAMES)}
    actions = CANDIDATES * len(LEVELS)
    features = np.zeros((n, actions, len(FEATURE_NAMES)), np.float32)
    score = rng.random((n, CANDIDATES))
    price = rng.uniform(10.0, 40.0, (n, CANDIDATES))
    for c in range(CANDIDATES):
        for j, level in enumerate(LEVELS):
            row = features[:, c * len(LEVELS) + j]
            row[:, f["score"]] = score[:, c]
            row[:, f["log_bundle_price"]] = np.log1p(price[:, c])
            row[:, f["discount"]] = level / 100
            row[:, f["log_offer_price"]] = np.log1p(price[:, c] * (1 - level / 100))
            row[:, f["conversion_propensity"]] = 0.1 + 0.2 * score[:, c]
    shown = np.array([c * len(LEVELS) + 2 for c in range(CANDIDATES)])  # the 10 % rows
    logging = np.full((n, CANDIDATES), 0.05)
    logging[np.arange(n), score.argmax(1)] = 0.9
    pick = np.array([rng.choice(CANDIDATES, p=p) for p in logging])
    chosen = shown[pick]
    rate = 0.1 + 0.2 * score[np.arange(n), pick]
    paid = price[np.arange(n), pick] * 0.9
    supported = np.zeros((n, actions), bool)
    supported[:, shown] = True
    expected = features[:, :, f["conversion_propensity"]] * np.expm1(
        features[:, :, f["log_offer_price"]])
    return FeedbackBatch(
        features=features, valid=np.ones((n, actions), bool), chosen=chosen.astype(np.int64),
        propensity=logging[np.arange(n), pick],
        reward=(rng.random(n) < rate) * paid, expected_reward=expected.astype(np.float32),
        logged_by=np.array(["v0-greedy"] * n, dtype=object), supported=supported)


def test_the_first_candidate_keeps_to_what_v0_showed() -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2, every_records=100),
                           base_version="v0-greedy", max_variants=4)
    core.trainer.extend(v0_logs(3000))
    job = core.next_job(now_s=math.inf)
    assert job is not None and not job.live_is_torch
    result = core.run(job)
    # Before the one-hot: 0.6-0.75 of it unsupported; now within the allowance (0.08).
    assert result.candidate_evaluation.unsupported_mass < 0.08, result.reason


def test_a_shape_without_the_one_hot_keeps_its_document_and_version() -> None:
    """Versions named before the one-hot existed keep their names: its field is absent from
    the document unless set."""
    plain = PolicyShape(("score", "discount"))
    assert b"discount_one_hot" not in plain.document()
    assert msgspec.json.decode(plain.document()) == {
        "feature_names": ["score", "discount"], "hidden": 32,
        "discount_levels": [0.0, 5.0, 10.0, 15.0], "temperature": 1.0, "floor": 0.02,
        "max_variants": 8, "value_prior": None, "prior_scale": 1.0}


def test_a_one_hot_policy_round_trips_and_reads_the_level() -> None:
    fresh = TorchPolicy.initial(("score", "discount"), discount_one_hot=True, seed=3)
    with torch.no_grad():
        fresh.scorer.layers[-1].weight.normal_()
    policy = TorchPolicy(fresh.scorer, fresh.shape,
                         version=version_of(fresh.scorer, fresh.shape), parent=None)
    loaded, _ = policy_from_bytes(policy_to_bytes(policy))
    assert loaded.version == policy.version and loaded.shape.discount_one_hot
    x = torch.tensor([[0.5, 0.05], [0.5, 0.10], [0.5, 0.15]])
    assert torch.equal(loaded.scorer(x), policy.scorer(x))
    assert policy.version != TorchPolicy.initial(("score", "discount"), seed=3).version


def test_a_scorer_and_shape_that_disagree_on_the_one_hot_are_refused() -> None:
    # Accepted, such a policy was published and then refused by every loader (its weights'
    # input size is not its shape's).
    with_it = TorchPolicy.initial(("score", "discount"), discount_one_hot=True, seed=3)
    without = TorchPolicy.initial(("score", "discount"), seed=3)
    for scorer, shape in ((with_it.scorer, without.shape), (without.scorer, with_it.shape)):
        with pytest.raises(ValueError, match="discount one-hot"):
            TorchPolicy(scorer, shape, version="v", parent=None)


def test_the_trainers_fresh_policy_can_serve_v0s_discount() -> None:
    # v0 at 20 % logs its rows at 20 %, the only ones it tries; a policy without that level
    # never serves them (served_rows), so none of its candidates could ever be promoted.
    from streamer.app.trainer import trainer_core
    from streamer.settings import Settings

    assert trainer_core(Settings()).initial.shape.discount_levels == LEVELS  # names unchanged
    off_grid = trainer_core(Settings(offers={"discount_pct": 20.0})).initial.shape
    assert off_grid.discount_levels == (*LEVELS, 20.0) and off_grid.discount_one_hot
