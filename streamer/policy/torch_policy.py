"""The learned policy: a :class:`~streamer.policy.network.VariantScorer` over candidate x
discount variants, served on the CPU.

>>> from types import SimpleNamespace as C
>>> cands = [C(items=("a", b), support=5, confidence=0.5, lift=2.0, score=s)
...          for b, s in (("b", 0.9), ("c", 0.5))]
>>> def featurize(candidate, discount_pct):
...     return {"score": candidate.score, "discount": discount_pct / 100}
>>> policy = TorchPolicy.initial(("score", "discount"), discount_levels=(0.0, 10.0),
...                              floor=0.05, seed=0)
>>> proposals = policy.propose("a", cands, featurizer=featurize)
>>> [(p.candidate.items[1], p.discount_pct, p.probability) for p in proposals]
[('b', 0.0, 0.25), ('b', 10.0, 0.25), ('c', 0.0, 0.25), ('c', 10.0, 0.25)]
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from operator import itemgetter

import msgspec
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from streamer.events import MAX_DISCOUNT_PCT
from streamer.policy.base import (
    BundleCandidate,
    Proposal,
    VariantFeaturizer,
    decision_actions,
    featurize_each,
)
from streamer.policy.network import VariantScorer, variant_probabilities

#: The default discount levels (percent); the same values as ``streamer.online``'s.
DEFAULT_DISCOUNT_LEVELS: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)
#: The feature holding a variant's discount (a fraction): ``streamer.online``'s name for it.
DISCOUNT_FEATURE = "discount"


@dataclass(frozen=True, slots=True)
class PolicyShape:
    """Everything besides weights that fixes a torch policy's behaviour (all plain values)."""

    def scorer(self) -> VariantScorer:
        """A fresh scorer of this shape (random hidden layers, zero last layer)."""
        prior = None
        if self.value_prior is not None:
            prior = (
                self.feature_names.index(self.value_prior[0]),
                self.feature_names.index(self.value_prior[1]),
            )
        one_hot = None
        if self.discount_one_hot:
            one_hot = (self.feature_names.index(DISCOUNT_FEATURE),
                       tuple(d / 100.0 for d in self.discount_levels))
        return VariantScorer(
            len(self.feature_names), self.hidden, value_prior=prior, prior_scale=self.prior_scale,
            one_hot=one_hot,
        )

    def document(self) -> bytes:
        """This shape as a checkpoint carries it and its version's name covers it: the JSON
        of :class:`ShapeDocument`, each field of its declared type (``temperature=1`` and
        ``1.0`` are the same document, as they are the same policy).

        >>> PolicyShape(("x",), discount_levels=(0, 10), max_variants=4).document()[:60]
        b'{"feature_names":["x"],"hidden":32,"discount_levels":[0.0,10'
        """
        document = msgspec.to_builtins(msgspec.convert(asdict(self), ShapeDocument))
        if not self.discount_one_hot:  # absent, so versions named before it keep their names
            del document["discount_one_hot"]
        return msgspec.json.encode(document)

    feature_names: tuple[str, ...]
    hidden: int = 32
    discount_levels: tuple[float, ...] = DEFAULT_DISCOUNT_LEVELS
    temperature: float = 1.0
    floor: float = 0.02
    max_variants: int | None = 8
    #: ``(probability feature, log1p price feature)``: the scorer's direct-method prior
    #: (``VariantScorer``'s ``value_prior``); None: a plain MLP.
    value_prior: tuple[str, str] | None = None
    prior_scale: float = 1.0
    #: The scorer also reads which of ``discount_levels`` the ``discount`` feature is
    #: (``VariantScorer``'s ``one_hot``); False: the discount as a number only.
    discount_one_hot: bool = False

    def __post_init__(self) -> None:
        if not self.feature_names:
            raise ValueError("a policy needs at least one feature")
        if self.value_prior is not None and not set(self.value_prior) <= set(self.feature_names):
            raise ValueError(f"value_prior {self.value_prior} names unknown features")
        if self.discount_one_hot and DISCOUNT_FEATURE not in self.feature_names:
            raise ValueError(f"discount_one_hot needs the feature {DISCOUNT_FEATURE!r}")
        if not self.discount_levels or any(not 0 <= d <= MAX_DISCOUNT_PCT
                                           for d in self.discount_levels):
            raise ValueError(f"discount levels must be in [0, {MAX_DISCOUNT_PCT:g}] (an offer's "
                             f"discount_pct), got {list(self.discount_levels)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor}")
        if self.max_variants is not None and self.max_variants <= 0:
            raise ValueError("max_variants must be positive (or None: show every variant)")


class ShapeDocument(msgspec.Struct):
    """A :class:`PolicyShape` as written in a checkpoint, each field of exactly its type:
    msgspec decodes strictly (2.5 is no ``int``, ``true`` no ``int``, ``"1"`` no number) and
    JSON has no NaN or Infinity. Why strict: a field of the wrong type (``max_variants`` 2.5,
    a feature name that is a number) builds a scorer and loads its weights fine, then makes
    every decision raise on the worker that adopted it, which would crash, restart, replay
    the topic and adopt it again."""

    feature_names: list[str]
    hidden: int
    discount_levels: list[float]
    temperature: float
    floor: float
    max_variants: int | None
    value_prior: tuple[str, str] | None = None  # absent before the prior existed: a plain MLP
    prior_scale: float = 1.0
    discount_one_hot: bool = False  # absent before the one-hot existed: the number only


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, for the decision ledger: every variant the policy scored (candidate
    order x ``discount_levels``), their features and probabilities (0 when not shown), and
    ``shown[i]``: the index in ``variant_features`` of ``proposals[i]`` (= offer variant i)."""

    proposals: list[Proposal]
    variant_features: tuple[Mapping[str, float], ...]
    probabilities: tuple[float, ...]
    shown: tuple[int, ...]


class TorchPolicy:
    """Scores every candidate at every discount level and shows the best ``max_variants``
    with probabilities ``softmax(score / temperature)`` floored at ``floor`` (see
    :func:`~streamer.policy.network.variant_probabilities`).

    Pure: the scorer is frozen (eval mode, no gradients) and owned by this object; a new
    version is a new ``TorchPolicy``, so workers hot-swap by replacing one reference. Serving
    runs on the CPU: one decision is a few dozen rows, where a GPU round trip only costs.
    """

    def __init__(
        self, scorer: VariantScorer, shape: PolicyShape, *, version: str, parent: str | None
    ) -> None:
        expected = shape.scorer()
        if (
            scorer.n_features != len(shape.feature_names)
            or scorer.hidden != shape.hidden
            or scorer.value_prior != expected.value_prior
            or scorer.one_hot != expected.one_hot  # else published, then refused by loaders
        ):
            raise ValueError("scorer and shape disagree on features, hidden size, prior or "
                             "discount one-hot")
        self.scorer = copy.deepcopy(scorer).to("cpu").eval().requires_grad_(False)
        self.shape = shape
        self._version = version
        self.parent = parent

    @classmethod
    def initial(
        cls,
        feature_names: Sequence[str],
        *,
        hidden: int = 32,
        discount_levels: Sequence[float] = DEFAULT_DISCOUNT_LEVELS,
        temperature: float = 1.0,
        floor: float = 0.02,
        max_variants: int | None = 8,
        value_prior: tuple[str, str] | None = None,
        prior_scale: float = 1.0,
        discount_one_hot: bool = False,
        seed: int = 0,
    ) -> TorchPolicy:
        """A fresh policy: uniform over its shown variants, or with ``value_prior`` the
        softmax of ``prior_scale x log(direct-method value) / temperature`` (see
        ``VariantScorer``)."""
        shape = PolicyShape(
            feature_names=tuple(feature_names),
            hidden=hidden,
            discount_levels=tuple(float(d) for d in discount_levels),
            temperature=temperature,
            floor=floor,
            max_variants=max_variants,
            value_prior=None if value_prior is None else (value_prior[0], value_prior[1]),
            prior_scale=prior_scale,
            discount_one_hot=discount_one_hot,
        )
        with torch.random.fork_rng(devices=[]):  # seed locally, leave the global RNG alone
            torch.manual_seed(seed)
            scorer = shape.scorer()
        return cls(scorer, shape, version=version_of(scorer, shape), parent=None)

    @property
    def version(self) -> str:
        return self._version

    def capped(self, max_variants: int | None) -> TorchPolicy:
        """This version showing at most ``max_variants`` variants per decision (None: as its
        shape says): the same weights and version id, its shape's ``max_variants`` lowered to
        the ceiling (a shape already at or under it is kept, and so is ``self``).

        Why the shape and not the proposals: :func:`~streamer.policy.network.
        variant_probabilities` is then what keeps the best-scored variants and spreads the
        floor and the softmax over them, so the probabilities sum to 1 over what is shown, the
        decision logged is the distribution the storefront draws from, and the trainer
        evaluates and fine-tunes exactly what is served. Why the same version id: it names the
        version as published (its weights and shape as its record carries them: what ``policy
        list`` shows and a rollback names); the ceiling is the deployment's
        (``offers.max_variants``), one value for its workers and trainer. So a capped policy is
        never published as it is (its id would not name its shape: :func:`version_of`); a
        fine-tune of it is, under a new id that covers the capped shape.

        >>> policy = TorchPolicy.initial(("x",), seed=0)
        >>> policy.capped(2).shape.max_variants, policy.capped(2).version == policy.version
        (2, True)
        >>> policy.capped(16) is policy, policy.capped(None) is policy
        (True, True)
        """
        own = self.shape.max_variants
        if max_variants is None or (own is not None and own <= max_variants):
            return self
        shape = replace(self.shape, max_variants=max_variants)
        return TorchPolicy(self.scorer, shape, version=self.version, parent=self.parent)

    def pack(self, rows: Sequence[Mapping[str, float]]) -> torch.Tensor:
        """Feature dicts -> a float32 tensor ``[len(rows), n_features]`` in ``feature_names``
        order; a missing feature is a ``KeyError`` (a silent 0 would be a wrong decision)."""
        names = self.shape.feature_names
        # Rows as tuples (one C call each), converted by numpy: the same float32s as
        # ``torch.tensor`` of nested lists, 2-4x faster (a decision's rows, a batch's).
        return torch.from_numpy(
            np.array(list(map(itemgetter(*names), rows)), dtype=np.float32).reshape(
                len(rows), len(names)))

    def decide(
        self,
        anchor: str,
        candidates: Sequence[BundleCandidate],
        featurizer: VariantFeaturizer | None = None,
    ) -> Decision:
        """The full decision behind :meth:`propose` (what the decision ledger records):
        :meth:`decide_many` of this one request, its error raised."""
        decision = self.decide_many([(anchor, candidates, featurizer)])[0]  # type: ignore[list-item]
        if isinstance(decision, FloatingPointError):
            raise decision
        return decision

    def decide_many(
        self,
        requests: Sequence[tuple[str, Sequence[BundleCandidate], VariantFeaturizer]],
    ) -> list[Decision | FloatingPointError]:
        """:meth:`decide` for each ``(anchor, candidates, featurizer)``, in one pass: every
        request's rows through the network at once, their probabilities as one padded batch
        (:func:`~streamer.policy.network.variant_probabilities` takes rows of decisions and a
        mask). A request whose scores are not finite gets the ``FloatingPointError``
        :meth:`decide` would raise, the others their decisions.

        Why: a decision is a few dozen rows, and torch's fixed cost per call on tensors that
        small (packing, the network, the probabilities: ~150 us on one CPU thread) was most
        of a learned decision's time besides the features; an engine revising many anchors
        at once (a batch of events) pays it once. A request's scores in a batch equal its
        scores alone up to float rounding (a matrix product over more rows may sum in another
        order). Raises ``ValueError`` when a request has no featurizer."""
        if any(featurizer is None for _, _, featurizer in requests):
            raise ValueError("TorchPolicy needs a featurizer (streamer.online.DecisionFeaturizer)")
        variants = [decision_actions(candidates, self.shape.discount_levels)
                    for _, candidates, _ in requests]
        rows = [tuple(r) for r in featurize_each(
            [(f, v) for (_, _, f), v in zip(requests, variants, strict=True)])]
        sizes = [len(r) for r in rows]
        width = max(sizes, default=0)
        if not width:
            return [Decision(proposals=[], variant_features=(), probabilities=(), shown=())
                    for _ in requests]
        with torch.inference_mode():
            flat = self.scorer(self.pack([row for rs in rows for row in rs])).double()
            scores = pad_sequence(flat.split(sizes), batch_first=True, padding_value=-math.inf)
            mask = torch.arange(width) < torch.tensor(sizes).unsqueeze(1)
            finite = torch.isfinite(scores).logical_or(~mask).all(dim=-1).tolist()
            probs = variant_probabilities(
                scores.nan_to_num(0.0, posinf=0.0, neginf=0.0),
                mask,
                temperature=self.shape.temperature,
                floor=self.shape.floor,
                max_shown=self.shape.max_variants,
            )
        out: list[Decision | FloatingPointError] = []
        score_rows, prob_rows = scores.tolist(), probs.tolist()
        for i, n in enumerate(sizes):
            if not n:
                out.append(Decision(proposals=[], variant_features=(), probabilities=(),
                                    shown=()))
            elif not finite[i]:
                out.append(FloatingPointError(
                    f"policy {self.version} produced non-finite scores"))
            else:
                out.append(self._decision(variants[i], rows[i], score_rows[i][:n],
                                          prob_rows[i][:n]))
        return out

    @staticmethod
    def _decision(variants: Sequence[tuple[BundleCandidate, float]],
                  rows: tuple[Mapping[str, float], ...], scores: Sequence[float],
                  probs: Sequence[float]) -> Decision:
        """The decision of ``variants`` (their feature ``rows``) scored ``scores``."""
        probabilities = tuple(probs)
        shown = tuple(i for i, p in enumerate(probabilities) if p > 0.0)
        proposals = [
            Proposal(
                candidate=variants[i][0],
                discount_pct=variants[i][1],
                probability=probabilities[i],
                score=scores[i],
                features=rows[i],
            )
            for i in shown
        ]
        return Decision(
            proposals=proposals, variant_features=rows, probabilities=probabilities, shown=shown
        )

    def propose(
        self,
        anchor: str,
        candidates: Sequence[BundleCandidate],
        featurizer: VariantFeaturizer | None = None,
    ) -> list[Proposal]:
        """Shown variants (candidate by score, then discount ascending), probabilities summing
        to 1, each at least ``floor``. Raises ``ValueError`` without ``featurizer``."""
        return self.decide(anchor, candidates, featurizer).proposals


def version_of(scorer: VariantScorer, shape: PolicyShape, prefix: str = "torch") -> str:
    """A version id derived from everything that fixes the policy's behaviour: its shape's
    :meth:`~PolicyShape.document` and its weights. The same policy always gets the same id,
    and two policies that decide differently never share one, even with the same weights
    (``max_variants`` 8 and 4): the reward ledger, the trainer's gate and a worker's
    registry tell versions apart by this id alone.

    >>> a = TorchPolicy.initial(("x",), max_variants=8, seed=1)
    >>> b = TorchPolicy.initial(("x",), max_variants=4, seed=1)
    >>> a.version == version_of(a.scorer, a.shape), a.version == b.version
    (True, False)
    """
    digest = hashlib.sha256(shape.document())
    return f"{prefix}-{_weights_digest(digest, scorer).hexdigest()[:12]}"


def weights_version_of(scorer: VariantScorer, prefix: str) -> str:
    """The id versions were named by before :func:`version_of` covered the shape: the weights
    alone. Only to verify records published then, whose names stay what they were (offers,
    reward windows and rollbacks name them)."""
    return f"{prefix}-{_weights_digest(hashlib.sha256(), scorer).hexdigest()[:12]}"


def _weights_digest(digest: hashlib._Hash, scorer: VariantScorer) -> hashlib._Hash:
    for name, tensor in sorted(scorer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest
