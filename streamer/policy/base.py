"""The seam between candidate generation and policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from streamer.events.candidates import BundleCandidate


class VariantFeaturizer(Protocol):
    """The features of offering a candidate at a discount, in the current decision context.

    ``streamer.online.DecisionFeaturizer`` fits (it is built per decision with the segment,
    time, prices and the River propensity model); policies never import ``streamer.online``.
    """

    def __call__(self, candidate: BundleCandidate, discount_pct: float) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class Proposal:
    """One variant a policy proposes: a candidate bundle, a discount and its probability.

    ``features`` are the variant's features when the policy used any (for the decision
    ledger); ``None`` for policies that do not.
    """

    candidate: BundleCandidate
    discount_pct: float
    probability: float
    score: float
    features: Mapping[str, float] | None = None


class Policy(Protocol):
    """Chooses variants for an anchor. Must be pure: same inputs, same proposals."""

    @property
    def version(self) -> str: ...

    def propose(
        self,
        anchor: str,
        candidates: Sequence[BundleCandidate],
        featurizer: VariantFeaturizer | None = None,
    ) -> list[Proposal]:
        """Variants for ``anchor`` whose probabilities sum to 1 (empty without candidates).

        ``featurizer`` gives each (candidate, discount)'s features; policies that need
        features (``TorchPolicy``) raise ``ValueError`` without it, the others ignore it.
        """
        ...
