"""The seam between candidate generation and policies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from msgspec import Struct

from streamer.events.candidates import BundleCandidate as BundleCandidate  # re-exported


class VariantFeaturizer(Protocol):
    """The features of offering a candidate at a discount, in the current decision context.

    ``streamer.online.DecisionFeaturizer`` fits (it is built per decision with the segment,
    time, prices and the River propensity model); policies never import ``streamer.online``.
    """

    def __call__(self, candidate: BundleCandidate, discount_pct: float) -> Mapping[str, float]: ...


def featurize(featurizer: VariantFeaturizer,
              actions: Sequence[tuple[BundleCandidate, float]]) -> list[Mapping[str, float]]:
    """The features of each action (candidate, discount), through the featurizer's ``many``
    when it has one (``DecisionFeaturizer``: a decision's propensities in one pass), else one
    call per action.

    >>> featurize(lambda c, d: {"discount": d}, [("c", 0.0), ("c", 10.0)])
    [{'discount': 0.0}, {'discount': 10.0}]
    """
    many = getattr(featurizer, "many", None)
    if many is not None:
        return list(many(actions))
    return [featurizer(c, d) for c, d in actions]


def featurize_each(asks: Sequence[tuple[VariantFeaturizer, Sequence[tuple[BundleCandidate, float]]]]
                   ) -> list[list[Mapping[str, float]]]:
    """:func:`featurize` of each ``(featurizer, actions)``: in one pass when the featurizers
    are of one type that featurizes several decisions at once (``many_each``:
    ``DecisionFeaturizer``, one propensity prediction for all of them).

    >>> featurize_each([(lambda c, d: {"d": d}, [("c", 0.0)]), (lambda c, d: {"d": -d},
    ...                 [("c", 5.0)])])
    [[{'d': 0.0}], [{'d': -5.0}]]
    """
    kinds = {type(f) for f, _ in asks}
    many_each = getattr(kinds.pop(), "many_each", None) if len(kinds) == 1 else None
    if many_each is not None:
        return list(many_each(asks))
    return [featurize(f, actions) for f, actions in asks]


class Ranked(Protocol):
    """What orders a decision's actions: a candidate's score and items."""

    @property
    def score(self) -> float: ...

    @property
    def items(self) -> Sequence[str]: ...


R = TypeVar("R", bound=Ranked)


def decision_actions(candidates: Iterable[R], levels: Iterable[float]) -> list[tuple[R, float]]:
    """The actions of one decision in the order it scores them: every candidate, by
    descending score (ties by items: the order does not depend on the caller's), at every
    discount level of ``levels``, in that order. ``TorchPolicy.decide`` scores these; the
    decision ledger logs and rebuilds them the same way, so a row index means one action.

    >>> from types import SimpleNamespace as C
    >>> a, b = C(score=0.2, items=("x", "a")), C(score=0.5, items=("x", "b"))
    >>> [(c.items[1], d) for c, d in decision_actions([a, b], (0.0, 10.0))]
    [('b', 0.0), ('b', 10.0), ('a', 0.0), ('a', 10.0)]
    """
    levels = tuple(levels)
    ordered = sorted(candidates, key=lambda c: (-c.score, tuple(c.items)))
    return [(c, d) for c in ordered for d in levels]


def action_rows(actions: Iterable[tuple[Any, float]]) -> dict[tuple[tuple[str, ...], float], int]:
    """The row of each action of :func:`decision_actions`, by its bundle's items and discount:
    how a logged or rebuilt decision finds the rows of the variants an offer shows.

    >>> from types import SimpleNamespace as C
    >>> action_rows([(C(items=["x", "b"]), 0.0), (C(items=["x", "b"]), 10.0)])
    {(('x', 'b'), 0.0): 0, (('x', 'b'), 10.0): 1}
    """
    return {(tuple(c.items), d): i for i, (c, d) in enumerate(actions)}


class Proposal(Struct, frozen=True):
    """One variant a policy proposes: a candidate bundle, a discount and its probability.

    ``features`` are the variant's features when the policy used any (for the decision
    ledger); ``None`` for policies that do not. A frozen Struct for the cost of building one,
    as :class:`~streamer.copurchase.Candidate`.
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
