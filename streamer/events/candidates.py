"""The vocabulary the middle layer shares about candidate bundles.

``streamer.copurchase`` mines candidates, ``streamer.online`` featurizes them, ``streamer.policy``
scores them and ``streamer.offers`` builds offers from them; those packages do not import each
other, so the shape they agree on lives here, as a structural type.
"""

from __future__ import annotations

from typing import Protocol


class BundleCandidate(Protocol):
    """A candidate bundle with its co-purchase evidence (``streamer.copurchase.Candidate``
    fits): items (anchor first), decayed support, confidence, lift and ranking score."""

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
