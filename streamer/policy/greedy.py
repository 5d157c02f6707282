"""The v0 policy: epsilon-greedy over the best candidates, one fixed discount."""

from __future__ import annotations

from collections.abc import Sequence

from streamer.policy.base import BundleCandidate, Proposal, VariantFeaturizer


class EpsilonGreedyPolicy:
    """Shows the best-scored candidate with probability ``1 - epsilon`` (plus its share of the
    exploration mass) and spreads ``epsilon`` uniformly over the top ``max_variants``.

    Every variant keeps a probability of at least ``epsilon / n``, so every logged impression
    stays usable for off-policy evaluation.

    >>> from types import SimpleNamespace as C
    >>> cands = [C(items=("a", b), support=5, confidence=0.5, lift=2.0, score=s)
    ...          for b, s in (("b", 0.9), ("c", 0.5))]
    >>> [(p.candidate.items, round(p.probability, 3))
    ...  for p in EpsilonGreedyPolicy(epsilon=0.2).propose("a", cands)]
    [(('a', 'b'), 0.9), (('a', 'c'), 0.1)]
    """

    #: Reads no features: the engine builds a decision's featurizer only for policies that
    #: do (a policy without this attribute is taken to read them).
    uses_features = False

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        discount_pct: float = 10.0,
        max_variants: int = 4,
        version: str = "v0-greedy",
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be within [0, 1]")
        self.epsilon = epsilon
        self.discount_pct = discount_pct
        self.max_variants = max_variants
        self._version = version

    @property
    def version(self) -> str:
        return self._version

    def propose(
        self,
        anchor: str,
        candidates: Sequence[BundleCandidate],
        featurizer: VariantFeaturizer | None = None,
    ) -> list[Proposal]:
        # ``featurizer`` is accepted for the Policy protocol and ignored: v0 uses no features.
        top = sorted(candidates, key=lambda c: (-c.score, c.items))[: self.max_variants]
        if not top:
            return []
        share = self.epsilon / len(top)
        return [
            Proposal(
                candidate=c,
                discount_pct=self.discount_pct,
                probability=share + (1.0 - self.epsilon if i == 0 else 0.0),
                score=c.score,
            )
            for i, c in enumerate(top)
        ]
