"""The promotion gate on variants the logging policy never showed, and its false-promotion rate.

The scenarios are the statistics review's (v0 logs every candidate at every discount but shows
one; a torch policy shows only its top ``max_variants``): the direct-method model extrapolates
the conversion rate it saw at 10 % to the 0 % rows, at the higher price, and so over-rates them.
A candidate putting its probability there is much worse than the live policy, and was promoted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from streamer.policy.feedback import FeedbackBatch
from streamer.policy.network import VariantScorer, variant_probabilities
from streamer.policy.ope import estimator_terms, snips
from streamer.policy.torch_policy import PolicyShape, TorchPolicy, version_of
from streamer.policy.training import (
    FineTuneConfig,
    PolicyEvaluation,
    PolicyTrainer,
    _verdict,
    compare,
    evaluate_scorer,
    fine_tune,
    gate_against_logged,
)

torch.set_num_threads(1)

# Rows (discount, is_b): A@0 %, A@10 %, B@0 %, B@10 %.
ROWS = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 1.0], [0.1, 1.0]], dtype=np.float32)
TRUE = np.array([0.30, 1.00, 0.20, 0.50])  # expected reward per impression
CONVERT = np.array([0.03, 0.10, 0.02, 0.05])
VALUE = TRUE / CONVERT
MODEL = np.array([1.11, 1.00, 0.555, 0.50], dtype=np.float32)  # wrong on the 0 % rows
V0 = np.array([0.0, 0.95, 0.0, 0.05])  # v0 shows its one discount only


def policy(w_discount: float, w_b: float, *, floor: float, max_variants: int | None
           ) -> TorchPolicy:
    """A policy scoring ``w_discount x discount + w_b x is_b`` exactly."""
    shape = PolicyShape(("discount", "is_b"), hidden=2, discount_levels=(0.0, 10.0),
                        floor=floor, max_variants=max_variants)
    scorer = VariantScorer(2, 2)
    with torch.no_grad():
        for layer in (scorer.layers[0], scorer.layers[2]):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        scorer.layers[4].weight.copy_(torch.tensor([[w_discount, w_b]]))
        scorer.layers[4].bias.zero_()
    return TorchPolicy(scorer, shape, version=version_of(scorer, shape), parent=None)


def probabilities(p: TorchPolicy) -> np.ndarray:
    scores = p.scorer(torch.from_numpy(ROWS))[None]
    return variant_probabilities(scores, torch.ones(1, 4, dtype=torch.bool), temperature=1.0,
                                 floor=p.shape.floor, max_shown=p.shape.max_variants
                                 )[0].detach().double().numpy()


def logs(logging: np.ndarray, n: int, seed: int, *, with_model: bool = True) -> FeedbackBatch:
    """``n`` impressions logged with probabilities ``logging``, the support its positive ones."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(4, size=n, p=logging)
    return FeedbackBatch(
        features=np.broadcast_to(ROWS, (n, 4, 2)).copy(), valid=np.ones((n, 4), bool),
        chosen=chosen.astype(np.int64), propensity=logging[chosen],
        reward=((rng.random(n) < CONVERT[chosen]) * VALUE[chosen]).astype(np.float64),
        expected_reward=np.broadcast_to(MODEL, (n, 4)).copy() if with_model else None,
        logged_by=np.array(["v0-greedy"] * n, dtype=object),
        supported=np.broadcast_to(logging > 0, (n, 4)).copy())


@pytest.mark.parametrize(("objective", "candidate"), [
    ("dr", policy(-30.0, -3.0, floor=0.02, max_variants=None)),
    ("ips", policy(-5.0, -8.0, floor=0.005, max_variants=None)),  # judged by SNIPS
])
def test_v0_live_a_candidate_on_rows_v0_never_showed_is_not_promoted(
        objective: str, candidate: TorchPolicy) -> None:
    p1 = probabilities(candidate)
    assert p1 @ TRUE < 0.6 < V0 @ TRUE and p1[V0 == 0].sum() > 0.6
    config = FineTuneConfig(objective=objective, epochs=0, device="cpu",  # type: ignore[arg-type]
                            holdout_fraction=0.2)
    for seed in range(3):  # promoted in 18-20 of 20 runs before the fix
        batch = logs(V0, 50_000, seed, with_model=objective == "dr")
        result = gate_against_logged(fine_tune(candidate, batch, config), batch, config,
                                     live_version="v0-greedy")
        assert not result.promoted, result.reason
        evaluation = result.candidate_evaluation
        assert evaluation.unsupported_mass == pytest.approx(p1[V0 == 0].sum(), abs=1e-6)
        assert result.metadata()["unsupported_mass"] == evaluation.unsupported_mass
        assert "unsupported" in result.reason
        # A lower bound of its true value, whatever the model says of the untried rows.
        assert evaluation.primary.value < p1 @ TRUE


def test_torch_live_a_candidate_on_rows_the_live_policy_never_shows_is_not_promoted() -> None:
    live = policy(+20.0, -1.0, floor=0.02, max_variants=2)  # shows A@10 and B@10
    candidate = policy(-20.0, -1.0, floor=0.02, max_variants=2)  # shows A@0 and B@0
    p0 = probabilities(live)
    p0 /= p0.sum()  # float32 probabilities, to numpy's tolerance
    assert probabilities(candidate) @ TRUE < 0.3 < 0.8 < p0 @ TRUE
    for seed in range(3):  # promoted in 19 of 20 runs before the fix
        batch = logs(p0, 10_000, seed)
        cand = evaluate_scorer(candidate.scorer, candidate.shape, batch)
        base = evaluate_scorer(live.scorer, live.shape, batch)
        promoted, reason = _verdict(candidate, cand, base, compare(cand, base))
        assert not promoted, reason
        assert cand.unsupported_mass == pytest.approx(1.0) and base.unsupported_mass == 0.0
        without_model = dataclasses.replace(batch, expected_reward=None)  # judged by SNIPS
        cand = evaluate_scorer(candidate.scorer, candidate.shape, without_model)
        base = evaluate_scorer(live.scorer, live.shape, without_model)
        assert cand.primary.estimator == "snips" and cand.primary.value == pytest.approx(0.0)
        promoted, reason = _verdict(candidate, cand, base, compare(cand, base))
        assert not promoted and "unsupported" in reason, reason


def test_a_better_candidate_on_supported_rows_is_still_promoted() -> None:
    # v0 exploring both discounts: the 10 % rows are best, and a candidate there is promoted.
    logging = np.array([0.05, 0.85, 0.05, 0.05])
    candidate = policy(+30.0, -3.0, floor=0.02, max_variants=None)
    config = FineTuneConfig(epochs=0, device="cpu", holdout_fraction=0.2)
    batch = logs(logging, 50_000, 0)
    result = gate_against_logged(fine_tune(candidate, batch, config), batch, config,
                                 live_version="v0-greedy")
    assert result.promoted, result.reason
    assert result.candidate_evaluation.unsupported_mass == 0.0


@pytest.mark.parametrize("objective", ["dr", "ips"])
def test_a_candidate_better_on_the_support_exploring_within_its_allowance_is_promoted(
        objective: str) -> None:
    # It shows all 4 rows, v0 tried 2: its floor (0.1 a row) forces 0.2 onto the 0 % rows v0
    # never showed, its allowance. On the rows v0 showed it earns 0.75 with its other 0.8,
    # 0.94 per unit against v0's 0.9; those 0.2 valued at v0's own 0.9 make 0.93 > 0.9, so
    # it is promoted. In truth it earns 0.80, its forced exploration 0.05 of it: the cost
    # the allowance accepts (at most the allowance times the live value less the worst,
    # README). Valued at the worst reward (0), as before the allowance, it was refused.
    logging = np.array([0.0, 0.8, 0.0, 0.2])
    candidate = policy(+300.0, -30.0, floor=0.1, max_variants=None)
    p1 = probabilities(candidate)
    assert p1[logging == 0].sum() == pytest.approx(0.2, abs=1e-6)
    assert p1[logging > 0] @ TRUE[logging > 0] < logging @ TRUE
    config = FineTuneConfig(objective=objective, epochs=0, device="cpu",  # type: ignore[arg-type]
                            holdout_fraction=0.2)
    for seed in range(3):
        batch = logs(logging, 50_000, seed, with_model=objective == "dr")
        result = gate_against_logged(fine_tune(candidate, batch, config), batch, config,
                                     live_version="v0-greedy")
        assert result.promoted, result.reason
        evaluation = result.candidate_evaluation
        assert evaluation.allowed_mass == pytest.approx(0.2, abs=1e-6)
        assert result.metadata()["allowed_mass"] == evaluation.allowed_mass
        # ...and not with no allowance: the same 0.2 at the worst.
        strict = dataclasses.replace(config, exploration_allowance=0.0)
        refused = gate_against_logged(fine_tune(candidate, batch, strict), batch, strict,
                                      live_version="v0-greedy")
        assert not refused.promoted, refused.reason


def test_only_the_excess_over_the_allowance_is_valued_at_the_worst() -> None:
    candidate = policy(-30.0, -3.0, floor=0.02, max_variants=None)
    batch = logs(V0, 2_000, 0)
    live = np.full(len(batch), 0.9)  # the live policy's per-impression estimate
    for allowance in (0.0, 0.05, 1.0):
        ev = evaluate_scorer(candidate.scorer, candidate.shape, batch, allowance=allowance)
        base = PolicyEvaluation({"dr": ev.primary}, True, {"dr": live})
        u = ev.unsupported_mass
        assert ev.allowed_mass == pytest.approx(min(u, allowance))
        difference = compare(ev, base)
        expected = ev.terms["dr"].mean() + min(u, allowance) * 0.9 - 0.9
        assert difference.value == pytest.approx(expected)


def test_unsupported_mass_is_valued_at_the_worst_reward() -> None:
    # Margin rewards can be negative: the untried rows are charged the configured worst.
    candidate = policy(-30.0, -3.0, floor=0.02, max_variants=None)
    batch = logs(V0, 2_000, 0)
    at = {worst: evaluate_scorer(candidate.scorer, candidate.shape, batch, worst_reward=worst)
          for worst in (0.0, -2.0)}
    u = at[0.0].unsupported_mass
    for name in ("ips", "snips", "dr"):
        gap = at[0.0].estimates[name].value - at[-2.0].estimates[name].value
        assert gap == pytest.approx(2.0 * u), name


def test_an_equal_candidate_passes_the_gate_in_half_of_one_minus_confidence_of_rounds() -> None:
    # Every action is worth the same: any two policies tie, so each promotion is a false one.
    # gate_confidence is two-sided (README): at 0.95 the bound is a one-sided one at 0.975.
    rng = np.random.default_rng(2)
    p0, candidate, live = np.full(4, 0.25), np.array([.4, .1, .4, .1]), np.array([.1, .4, .1, .4])
    rounds, promoted = 3_000, 0
    for _ in range(rounds):
        a = rng.choice(4, size=500, p=p0)
        r = (rng.random(500) < 0.3) * 5.0
        cand, base = (PolicyEvaluation({"snips": snips(p0[a], r, p[a])}, True,
                                       {"snips": estimator_terms("snips", p0[a], r, p[a])})
                      for p in (candidate, live))
        promoted += compare(cand, base, confidence=0.95).lower > 0
    assert 0.015 < promoted / rounds < 0.035


def interleaved(a: FeedbackBatch, b: FeedbackBatch) -> FeedbackBatch:
    """``a``'s and ``b``'s records alternating (so both are in any holdout of the newest)."""
    order = np.argsort(np.r_[np.arange(len(a)) * 2, np.arange(len(b)) * 2 + 1], kind="stable")
    fields = {f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)])[order]
              for f in dataclasses.fields(FeedbackBatch)}
    return FeedbackBatch(**fields)


def test_a_torch_live_version_is_judged_on_the_records_it_logged() -> None:
    # After a promotion (or a rollback) the holdout also holds another version's records: on
    # those the live version's probability on rows they never showed was valued at the worst,
    # while the candidate's allowance was valued at that deflated estimate, so a copy of the
    # live version beat it (promoted 3 of 3 on these holdouts, 5 of 5 in review), and so did a
    # worse candidate.
    live = policy(+30.0, -3.0, floor=0.02, max_variants=None)
    p_live = probabilities(live)
    p_live /= p_live.sum()
    worse = policy(+30.0, -1.5, floor=0.02, max_variants=None)
    assert probabilities(worse) @ TRUE < p_live @ TRUE and p_live[V0 == 0].sum() > 0.05
    config = FineTuneConfig(epochs=0, device="cpu", holdout_fraction=0.5)
    for seed in range(3):
        own = dataclasses.replace(logs(p_live, 20_000, seed + 100),
                                  logged_by=np.array([live.version] * 20_000, dtype=object))
        batch = interleaved(logs(V0, 20_000, seed), own)
        # The trainer's round (no epochs: the candidate is a copy of the live version).
        trainer = PolicyTrainer(("discount", "is_b"), max_actions=4, min_records=100,
                                config=config)
        trainer.extend(batch)
        result = trainer.fine_tune(live, now_s=0.0)
        assert not result.promoted, result.reason
        assert result.holdout_size == 10_000  # the live version's own records only
        assert result.live_evaluation.unsupported_mass == 0.0
        judged = gate_against_logged(fine_tune(worse, batch, config), batch, config,
                                     live_version=live.version)
        assert not judged.promoted, judged.reason


def test_only_the_exploration_the_floor_forces_is_excused() -> None:
    # The allowance was the floor times the variants shown (0.04 here) even where the logs
    # had tried as many variants as the policy shows: then nothing forces it onto untried
    # ones, and a candidate that ranks one into its top two by choice is judged on it at the
    # worst. Where v0 tried fewer, the floor's share on the others is excused.
    candidate = policy(+5.0, -30.0, floor=0.02, max_variants=2)  # shows A@10 and A@0
    p1 = probabilities(candidate)
    assert p1[0] > 0.3 and p1[2] == p1[3] == 0.0
    tried_two = evaluate_scorer(candidate.scorer, candidate.shape, logs(V0, 2_000, 0))
    assert tried_two.unsupported_mass == pytest.approx(p1[0], abs=1e-6)
    assert tried_two.allowed_mass == 0.0
    a_only = np.array([0.0, 1.0, 0.0, 0.0])  # v0 tried A@10 alone: one of the two shown
    tried_one = evaluate_scorer(candidate.scorer, candidate.shape, logs(a_only, 2_000, 0))
    assert tried_one.allowed_mass == pytest.approx(0.02)


def test_rows_at_a_discount_the_policy_never_serves_are_not_credited_to_it() -> None:
    # v0 at 20 %, off the learned policy's grid (0 and 10 % here): its logs hold its 20 % rows
    # (the only ones it tried) beside the grid's. A candidate scoring the 20 % rows highest
    # was judged on them, yet served it can only show 0 or 10 %: none of it tried.
    candidate = policy(+30.0, -3.0, floor=0.02, max_variants=None)
    batch = logs(V0, 5_000, 0)
    off_grid = batch.features.copy()
    off_grid[..., 0][off_grid[..., 0] > 0] = 0.2  # the 10 % rows become v0's 20 %
    batch = dataclasses.replace(batch, features=off_grid)
    evaluation = evaluate_scorer(candidate.scorer, candidate.shape, batch)
    assert evaluation.unsupported_mass == pytest.approx(1.0)
    assert evaluation.primary.value == pytest.approx(0.0)  # all of it at the worst


def test_a_decision_the_policy_would_serve_none_of_is_all_unsupported() -> None:
    # Every logged row at a discount off the policy's grid: it would show something else there,
    # which no log tried. Its probabilities over the served rows are all 0, and that read as
    # nothing unsupported (IPS and DR 0 instead of the worst, SNIPS the supported average).
    candidate = policy(+30.0, -3.0, floor=0.02, max_variants=None)
    batch = logs(V0, 2_000, 0)
    off_grid = batch.features.copy()
    off_grid[..., 0] = 0.2
    batch = dataclasses.replace(batch, features=off_grid)
    evaluation = evaluate_scorer(candidate.scorer, candidate.shape, batch, worst_reward=-1.0)
    assert evaluation.unsupported_mass == pytest.approx(1.0)
    for name, estimate in evaluation.estimates.items():
        assert estimate.value == pytest.approx(-1.0), name
