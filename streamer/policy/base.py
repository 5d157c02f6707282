"""The seam between candidate generation and policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class BundleCandidate(Protocol):
    """What a policy needs of a candidate bundle (``streamer.copurchase.Candidate`` fits).

    A structural type, so policies do not depend on how candidates are mined.
    """

    @property
    def items(self) -> tuple[str, ...]: ...
    @property
    def support(self) -> float: ...
    @property
    def confidence(self) -> float: ...
    @property
    def lift(self) -> float: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Proposal:
    """One variant a policy proposes: a candidate bundle, a discount and its probability."""

    candidate: BundleCandidate
    discount_pct: float
    probability: float
    score: float


class Policy(Protocol):
    """Chooses variants for an anchor. Must be pure: same inputs, same proposals."""

    @property
    def version(self) -> str: ...

    def propose(self, anchor: str, candidates: Sequence[BundleCandidate]) -> list[Proposal]:
        """Variants for ``anchor`` whose probabilities sum to 1 (empty without candidates)."""
        ...
