"""Variant probabilities (the logged propensities) and the TorchPolicy's proposals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.online import FEATURE_NAMES, DecisionContext, DecisionFeaturizer
from streamer.policy import EpsilonGreedyPolicy, Policy, TorchPolicy
from streamer.policy.network import shown_mask, variant_probabilities

torch.set_num_threads(1)

scores_st = st.lists(
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=16
)


@settings(max_examples=300, deadline=None)
@given(
    scores=scores_st,
    data=st.data(),
    temperature=st.floats(min_value=0.01, max_value=100.0),
    floor=st.floats(min_value=0.0, max_value=1.0),
    max_shown=st.one_of(st.none(), st.integers(min_value=1, max_value=16)),
)
def test_probabilities_sum_to_one_and_respect_the_floor(
    scores: list[float],
    data: st.DataObject,
    temperature: float,
    floor: float,
    max_shown: int | None,
) -> None:
    n = len(scores)
    valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    s = torch.tensor([scores], dtype=torch.float64)
    mask = torch.tensor([valid])
    p = variant_probabilities(s, mask, temperature=temperature, floor=floor, max_shown=max_shown)[0]
    shown = shown_mask(s, mask, max_shown)[0]
    k = int(shown.sum())
    assert k == min(sum(valid), max_shown or n)
    if k == 0:
        assert float(p.sum()) == 0.0
        return
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    assert not bool((p[~mask[0]] > 0).any()), "an invalid variant got probability"
    assert float(p[shown].min()) >= min(floor, 1.0 / k) - 1e-12
    # The shown variants are the best-scored valid ones.
    best_hidden = max((scores[i] for i in range(n) if valid[i] and not shown[i]), default=None)
    if best_hidden is not None:
        assert min(scores[i] for i in range(n) if shown[i]) >= best_hidden


def test_higher_score_gets_higher_probability_and_temperature_flattens() -> None:
    s = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    sharp = variant_probabilities(s, mask, temperature=0.1, floor=0.0, max_shown=None)[0]
    flat = variant_probabilities(s, mask, temperature=100.0, floor=0.0, max_shown=None)[0]
    assert sharp[0] > 0.99 and sharp[0] > sharp[1] > sharp[2]
    assert flat.tolist() == pytest.approx([1 / 3] * 3, abs=0.01)


def candidates() -> list[SimpleNamespace]:
    return [
        SimpleNamespace(items=("a", p), support=s, confidence=c, lift=2.0, score=c)
        for p, s, c in (("b", 9.0, 0.6), ("c", 4.0, 0.3), ("d", 2.0, 0.2))
    ]


FEATURIZER = DecisionFeaturizer(
    DecisionContext(
        segment="all", ts_ms=1_700_000_000_000, prices={"a": 10.0, "b": 5.0, "c": 7.0, "d": 2.0}
    )
)


def trained_like_policy(seed: int) -> TorchPolicy:
    """A policy with random (not zero) last layer, so scores differ between variants."""
    policy = TorchPolicy.initial(FEATURE_NAMES, seed=seed, floor=0.05, max_variants=8)
    scorer = policy.scorer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in scorer.parameters():
            p.data.normal_(0.0, 0.5)
    return TorchPolicy(scorer, policy.shape, version="test", parent=None)


@pytest.mark.parametrize("seed", range(3))
def test_torch_policy_proposals(seed: int) -> None:
    policy = trained_like_policy(seed)
    decision = policy.decide("a", candidates(), featurizer=FEATURIZER)
    proposals = decision.proposals
    assert len(decision.variant_features) == 3 * 4  # every candidate x every discount level
    assert len(proposals) == 8  # the offer schema's limit
    assert sum(p.probability for p in proposals) == pytest.approx(1.0, abs=1e-12)
    assert min(p.probability for p in proposals) >= 0.05 - 1e-12
    assert {p.discount_pct for p in proposals} <= {0.0, 5.0, 10.0, 15.0}
    for i, p in zip(decision.shown, proposals, strict=True):
        assert p.features is decision.variant_features[i]
        assert decision.probabilities[i] == p.probability
    # Pure: the same inputs (in any order) give the same proposals.
    again = policy.propose("a", list(reversed(candidates())), featurizer=FEATURIZER)
    assert [(p.candidate.items, p.discount_pct, p.probability) for p in again] == [
        (p.candidate.items, p.discount_pct, p.probability) for p in proposals
    ]


@pytest.mark.parametrize("seed", range(3))
def test_decisions_made_together_equal_each_made_alone(seed: int) -> None:
    # decide_many: every request's rows through the network at once, the probabilities as
    # one padded batch: what decide gives each (the scores up to float rounding), and a
    # request whose scores are not finite gets decide's error without touching the others.
    policy = trained_like_policy(seed)
    cands = candidates()
    sizes = [3, 1, 0, 2, 3, 1]  # every width, and a request without candidates

    def poisoned(candidate: object, discount: float) -> dict[str, float]:
        row = dict(FEATURIZER(candidate, discount))
        row["score"] = float("nan")
        return row

    requests = [("a", cands[:n], FEATURIZER) for n in sizes]
    requests.insert(2, ("a", cands, poisoned))
    decided = policy.decide_many(requests)
    assert len(decided) == len(requests)
    assert isinstance(decided[2], FloatingPointError)
    with pytest.raises(FloatingPointError):
        policy.decide(*requests[2])
    for request, many in zip(requests[:2] + requests[3:], decided[:2] + decided[3:],
                             strict=True):
        alone = policy.decide(*request)
        assert not isinstance(many, FloatingPointError)
        assert many.shown == alone.shown
        assert many.probabilities == pytest.approx(alone.probabilities, rel=1e-9, abs=1e-12)
        assert [(p.candidate.items, p.discount_pct) for p in many.proposals] == [
            (p.candidate.items, p.discount_pct) for p in alone.proposals]
        assert [p.score for p in many.proposals] == pytest.approx(
            [p.score for p in alone.proposals], rel=1e-5)
        assert list(many.variant_features) == list(alone.variant_features)
    assert policy.decide_many([]) == []


def test_a_fresh_policy_explores_uniformly() -> None:
    policy = TorchPolicy.initial(FEATURE_NAMES, max_variants=None)
    proposals = policy.propose("a", candidates(), featurizer=FEATURIZER)
    assert [p.probability for p in proposals] == pytest.approx([1 / 12] * 12)


def test_torch_policy_needs_a_featurizer_and_handles_no_candidates() -> None:
    policy = TorchPolicy.initial(FEATURE_NAMES)
    with pytest.raises(ValueError, match="featurizer"):
        policy.propose("a", candidates())
    assert policy.propose("a", [], featurizer=FEATURIZER) == []


def test_both_policies_fit_the_protocol_and_greedy_ignores_the_featurizer() -> None:
    policies: list[Policy] = [EpsilonGreedyPolicy(epsilon=0.2), TorchPolicy.initial(FEATURE_NAMES)]
    for policy in policies:
        proposals = policy.propose("a", candidates(), featurizer=FEATURIZER)
        assert sum(p.probability for p in proposals) == pytest.approx(1.0)
    greedy = EpsilonGreedyPolicy(epsilon=0.2)
    assert greedy.propose("a", candidates()) == greedy.propose("a", candidates(), FEATURIZER)


@pytest.mark.parametrize("ceiling", [1, 2, 4, 7])
@pytest.mark.parametrize("seed", range(3))
def test_a_capped_version_shows_its_best_variants_its_probabilities_renormalised(
    seed: int, ceiling: int
) -> None:
    # offers.max_variants as a worker applies it to a version whose checkpoint shows 8: the
    # best-scored `ceiling` of what it would have shown, floor and softmax spread over them.
    policy = trained_like_policy(seed)
    capped = policy.capped(ceiling)
    assert capped.version == policy.version and capped.shape.max_variants == ceiling
    full = policy.decide("a", candidates(), featurizer=FEATURIZER)
    decision = capped.decide("a", candidates(), featurizer=FEATURIZER)
    assert len(decision.proposals) == ceiling
    score_of = {i: p.score for i, p in zip(full.shown, full.proposals, strict=True)}
    assert set(decision.shown) == set(sorted(score_of, key=lambda i: -score_of[i])[:ceiling])
    probs = [p.probability for p in decision.proposals]
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    assert sum(decision.probabilities) == pytest.approx(1.0, abs=1e-12)  # 0 for the rest
    assert [decision.probabilities[i] for i in decision.shown] == probs  # what is logged
    floor = min(0.05, 1.0 / ceiling)
    assert min(probs) >= floor - 1e-12
    # Renormalised, not truncated: above the floor, the softmax of the scores kept.
    softmax = torch.softmax(torch.tensor([p.score for p in decision.proposals],
                                         dtype=torch.float64), 0).tolist()
    assert probs == pytest.approx([floor + (1 - ceiling * floor) * s for s in softmax],
                                  rel=1e-6, abs=1e-9)


def test_a_ceiling_never_raises_a_versions_own_number_of_variants() -> None:
    policy = trained_like_policy(0)
    two = TorchPolicy(policy.scorer, policy.capped(2).shape, version="two", parent=None)
    assert two.capped(4) is two and policy.capped(None) is policy and policy.capped(8) is policy
    assert len(two.capped(4).propose("a", candidates(), featurizer=FEATURIZER)) == 2
    with pytest.raises(ValueError, match="max_variants"):
        policy.capped(0)
