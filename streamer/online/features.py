"""The one definition of a variant's features: a flat ``dict[str, float]`` per (candidate,
discount) in a decision context, shared by the River models and the torch policy.

Why here and as plain dicts: ``streamer.online`` and ``streamer.policy`` are independent
siblings (neither imports the other, enforced by import-linter), and only ``streamer.policy``
may import torch. River consumes dicts natively; the policy receives the same dicts through the
:class:`DecisionFeaturizer` the engine hands to ``Policy.propose`` (a structural
``VariantFeaturizer`` on the policy side) and packs them into tensors in the order of
:data:`FEATURE_NAMES`, which it stores with its weights, so a checkpoint and the features it was
trained on cannot drift apart silently.

Every feature is already on a small scale (logs of prices and counts, fractions, cyclic time,
one-hot segment slots), so neither model needs fitted normalisation to start learning.

**Segments.** With the engine's segments configured (at most :data:`SEGMENT_SLOTS`), each
configured segment has a slot of its own (``segment_0`` for the first, and so on) and any other
segment (the default one, whose offer is the fallback) has none: all slots 0. Without configured
segments a segment name is hashed (crc32) into the slots, as before segments existed; hashing is
not exact (``loyal`` and ``bargain`` share a bucket), which is why configured segments get
exact slots.

Besides the numeric features, a dict carries the bundle's identity as one key,
:func:`bundle_key` (value 1.0). It is not in :data:`FEATURE_NAMES`: the torch policy (and the
trainer's buffer) pack only those, while the conversion model keeps per-bundle outcome
statistics under it, so that what a *particular* bundle earned, not only what its co-purchase
evidence suggests, reaches the policy through the propensity.

>>> from types import SimpleNamespace as C
>>> cand = C(items=("tea", "cup"), support=4.0, confidence=0.5, lift=2.0, score=0.4)
>>> ctx = DecisionContext(segment="all", ts_ms=0, prices={"tea": 6.0, "cup": 4.0})
>>> f = variant_features(cand, 10.0, ctx)
>>> [k for k in f if k in FEATURE_NAMES] == list(FEATURE_NAMES), bundle_key(cand.items) in f
(True, True)
>>> round(f["discount"], 2), round(variant_value(f), 6), round(f["weekday_sin"], 3)
(0.1, 9.0, 0.434)
>>> round(variant_value(f, reward="margin", cost_ratio=0.5), 6)   # 9 paid - 0.5 * 10 list
4.0
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from streamer.events.candidates import BundleCandidate

RewardKind = Literal["revenue", "margin"]

#: The discount levels (percent) a policy may attach to a candidate: the discount is part of
#: the action, so one candidate yields one variant per level.
DISCOUNT_LEVELS: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)

#: One-hot segment slots: a fixed width the torch network can rely on whatever segments
#: appear. Configured segments get one exact slot each (so at most this many can be
#: configured); without configuration, names are hashed (crc32, stable across processes,
#: unlike ``hash``) into the slots.
SEGMENT_SLOTS = 4
#: The former name of :data:`SEGMENT_SLOTS`.
SEGMENT_BUCKETS = SEGMENT_SLOTS

#: The key of the River conversion propensity inside a feature dict. The propensity model
#: itself never reads it (it would be learning from its own output).
PROPENSITY_FEATURE = "conversion_propensity"

#: Every feature, in the order the torch policy packs them.
FEATURE_NAMES: tuple[str, ...] = (
    "log_support",
    "confidence",
    "log_lift",
    "score",
    "extra_items",
    "log_anchor_price",
    "log_bundle_price",
    "discount",
    "log_offer_price",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    *(f"segment_{b}" for b in range(SEGMENT_SLOTS)),
    PROPENSITY_FEATURE,
)

#: Prefix of the identity key of a variant's bundle (see :func:`bundle_key`).
BUNDLE_KEY_PREFIX = "bundle:"

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS




@dataclass(frozen=True, slots=True)
class DecisionContext:
    """What is known when an offer is revised: the segment it is for, the event time (epoch
    ms, UTC), the catalogue's list prices (item id -> unit price) and the configured segments
    (their order fixes their one-hot slots; empty: names are hashed, see the module doc)."""

    segment: str
    ts_ms: int
    prices: Mapping[str, float]
    segments: tuple[str, ...] = ()


def segment_bucket(segment: str) -> int:
    """The hashed one-hot bucket of ``segment`` (stable across processes and runs), used
    when no segments are configured.

    >>> segment_bucket("all") == segment_bucket("all")
    True
    >>> segment_bucket("loyal") == segment_bucket("bargain")   # why configured ones get slots
    True
    """
    return zlib.crc32(segment.encode()) % SEGMENT_SLOTS


def check_segments(segments: Sequence[str]) -> tuple[str, ...]:
    """``segments`` as a tuple, or ``ValueError`` when there are more than
    :data:`SEGMENT_SLOTS`, duplicates or empty names."""
    names = tuple(segments)
    if len(names) > SEGMENT_SLOTS:
        raise ValueError(f"at most {SEGMENT_SLOTS} segments can be configured, got {names}")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"segments must be distinct, non-empty names, got {names}")
    return names


def segment_slot(segment: str, segments: Sequence[str] = ()) -> int | None:
    """The one-hot slot of ``segment``: its position among the configured ``segments`` (None
    when it is not one of them: no slot is set), or its hashed bucket when none are
    configured.

    >>> configured = ("loyal", "regular", "bargain")
    >>> [segment_slot(s, configured) for s in ("loyal", "bargain", "all")]
    [0, 2, None]
    >>> segment_slot("all") == segment_bucket("all")
    True
    """
    if not segments:
        return segment_bucket(segment)
    try:
        return list(segments).index(segment)
    except ValueError:
        return None


def _key_part(item: str) -> str:
    # Item ids may hold "+" (the schema forbids only control characters): escaped, so the
    # key joins its items unambiguously and splits back into them (``item_set_key``).
    return item.replace("%", "%25").replace("+", "%2B") if "+" in item or "%" in item else item


def bundle_key(items: Sequence[str]) -> str:
    """The identity key of a bundle: the anchor, then the partners in sorted order (the same
    bundle gets the same key whatever order the candidates listed its partners in), joined by
    ``+``; a ``+`` or ``%`` inside an item id is percent-escaped, so different bundles never
    share a key.

    >>> bundle_key(("tea", "jam", "cup")) == bundle_key(("tea", "cup", "jam"))
    True
    >>> bundle_key(("tea", "cup"))
    'bundle:tea+cup'
    >>> bundle_key(("tea", "milk+sugar")) == bundle_key(("tea", "milk", "sugar"))
    False
    """
    return BUNDLE_KEY_PREFIX + "+".join(
        (_key_part(items[0]), *sorted(map(_key_part, items[1:]))))


def bundle_of(features: Mapping[str, float]) -> str | None:
    """The identity key in a feature dict (None if it has none). A dict has one at most, and
    :func:`variant_features` puts it last: looked for from the end."""
    for key in reversed(features) if isinstance(features, dict) else features:
        if key.startswith(BUNDLE_KEY_PREFIX):
            return key
    return None


def variant_features(
    candidate: BundleCandidate,
    discount_pct: float,
    context: DecisionContext,
    conversion_propensity: float = 0.0,
) -> dict[str, float]:
    """The features of offering ``candidate`` at ``discount_pct`` in ``context`` (the
:data:`FEATURE_NAMES`, in that order, then the bundle's :func:`bundle_key`).

    Raises ``ValueError`` when an item's price is unknown: the engine only offers bundles whose
    every price is known, and a silently wrong price would be a wrong feature and reward.
    """
    base, list_price = _candidate_features(candidate, context)
    return _at_discount(base, list_price, discount_pct, conversion_propensity)


def _candidate_features(candidate: BundleCandidate, context: DecisionContext,
                        shared: Mapping[str, float] | None = None,
                        ) -> tuple[dict[str, float], float]:
    """:func:`variant_features` but for the discount (placeholders) and the bundle's list
    price: what every discount level of one candidate shares. ``shared``: the context's own
    features (:func:`_context_features`) when known, so a decision computes them once."""
    prices = context.prices
    unit = []
    for item in candidate.items:
        price = prices.get(item)  # not []: the engine's prices are a table view, get its fast path
        if price is None:
            raise ValueError(f"no list price for item {item!r}")
        unit.append(float(price))
    list_price = sum(unit)
    features = {
        "log_support": math.log1p(max(0.0, candidate.support)),
        "confidence": min(1.0, max(0.0, candidate.confidence)),
        "log_lift": math.log1p(max(0.0, candidate.lift)),
        "score": candidate.score,
        "extra_items": float(len(candidate.items) - 2),
        "log_anchor_price": math.log1p(max(0.0, unit[0])),
        "log_bundle_price": math.log1p(max(0.0, list_price)),
        "discount": 0.0,  # set by _at_discount
        "log_offer_price": 0.0,  # set by _at_discount
    }
    features.update(_context_features(context) if shared is None else shared)
    features[PROPENSITY_FEATURE] = 0.0
    features[bundle_key(candidate.items)] = 1.0
    return features, list_price


def _context_features(context: DecisionContext) -> dict[str, float]:
    """The features of the decision's moment and segment, the same for every variant (in
    :data:`FEATURE_NAMES`' order: cyclic hour and weekday, then the segment slots)."""
    hour = (context.ts_ms % _DAY_MS) / _HOUR_MS
    weekday = ((context.ts_ms // _DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    slot = segment_slot(context.segment, context.segments)
    features = {
        "hour_sin": math.sin(2 * math.pi * hour / 24),
        "hour_cos": math.cos(2 * math.pi * hour / 24),
        "weekday_sin": math.sin(2 * math.pi * weekday / 7),
        "weekday_cos": math.cos(2 * math.pi * weekday / 7),
    }
    for b in range(SEGMENT_SLOTS):
        features[f"segment_{b}"] = 1.0 if b == slot else 0.0
    return features


def _at_discount(base: dict[str, float], list_price: float, discount_pct: float,
                 conversion_propensity: float) -> dict[str, float]:
    features = base.copy()  # keys keep their order
    discount = discount_pct / 100.0
    features["discount"] = discount
    features["log_offer_price"] = math.log1p(max(0.0, list_price * (1.0 - discount)))
    features[PROPENSITY_FEATURE] = conversion_propensity
    return features


def variant_value(
    features: Mapping[str, float], *, reward: RewardKind = "revenue", cost_ratio: float = 0.0
) -> float:
    """The reward a conversion of this variant earns: the discounted bundle price (revenue), or
    that minus ``cost_ratio`` times the list price (margin), as ``rewards.attribution`` counts
    it for one bundle bought once."""
    list_price = math.expm1(features["log_bundle_price"])
    paid = list_price * (1.0 - features["discount"])
    return paid if reward == "revenue" else paid - cost_ratio * list_price


class PropensityScorer(Protocol):
    """Anything that scores a variant's conversion probability from its features."""

    def predict_one(self, features: Mapping[str, float]) -> float: ...


class DecisionFeaturizer:
    """Features of each (candidate, discount) for one decision, with the River propensity.

    Built by the engine per offer revision and handed to ``Policy.propose(...,
    featurizer=...)``; it fits the policy's ``VariantFeaturizer`` protocol. Pure given the
    model's current state.

    >>> from types import SimpleNamespace as C
    >>> class Half:
    ...     def predict_one(self, features): return 0.5
    >>> ctx = DecisionContext(segment="all", ts_ms=0, prices={"a": 1.0, "b": 1.0})
    >>> cand = C(items=("a", "b"), support=1.0, confidence=0.5, lift=1.0, score=0.5)
    >>> DecisionFeaturizer(ctx, Half())(cand, 5.0)[PROPENSITY_FEATURE]
    0.5
    """

    def __init__(self, context: DecisionContext, model: PropensityScorer | None = None) -> None:
        self.context = context
        self.model = model
        # A decision featurizes each candidate at every discount level: the features the
        # levels share are computed once per candidate (by identity; the candidate is kept,
        # so its id is not reused while this featurizer lives).
        self._bases: dict[int, tuple[BundleCandidate, dict[str, float], float]] = {}
        self._shared: dict[str, float] | None = None  # _context_features, once needed

    def __call__(self, candidate: BundleCandidate, discount_pct: float) -> dict[str, float]:
        features = self._features(candidate, discount_pct)
        if self.model is not None:
            features[PROPENSITY_FEATURE] = self.model.predict_one(features)
        return features

    def many(self, actions: Sequence[tuple[BundleCandidate, float]]) -> list[dict[str, float]]:
        """``[self(c, d) for c, d in actions]``, the propensities in one pass when the model
        predicts many at once (``ConversionModel.predict_many``: a decision's rows together
        cost a fraction of their one-by-one predictions)."""
        return self.many_each([(self, actions)])[0]

    @staticmethod
    def many_each(asks: Sequence[tuple[DecisionFeaturizer, Sequence[tuple[BundleCandidate, float]]]]
                  ) -> list[list[dict[str, float]]]:
        """``[f.many(actions) for f, actions in asks]``, the propensities of featurizers that
        share a model in one pass (several decisions at once: ``TorchPolicy.decide_many``)."""
        rows = [[f._features(c, d) for c, d in actions] for f, actions in asks]
        by_model: dict[int, tuple[PropensityScorer, list[dict[str, float]]]] = {}
        for (f, _), decision in zip(asks, rows, strict=True):
            if f.model is not None:
                by_model.setdefault(id(f.model), (f.model, []))[1].extend(decision)
        for model, shared in by_model.values():
            predict_many = getattr(model, "predict_many", None)
            propensities = (predict_many(shared) if predict_many is not None
                            else [model.predict_one(r) for r in shared])
            for row, p in zip(shared, propensities, strict=True):
                row[PROPENSITY_FEATURE] = p
        return rows

    def _features(self, candidate: BundleCandidate, discount_pct: float) -> dict[str, float]:
        known = self._bases.get(id(candidate))
        if known is None:
            if self._shared is None:
                self._shared = _context_features(self.context)
            base, list_price = _candidate_features(candidate, self.context, self._shared)
            self._bases[id(candidate)] = (candidate, base, list_price)
        else:
            _, base, list_price = known
        return _at_discount(base, list_price, discount_pct, 0.0)
