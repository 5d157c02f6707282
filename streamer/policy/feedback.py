"""Logged decisions as training and evaluation data, and the trainer's bounded buffer.

numpy only: the buffer holds fixed-shape arrays (no per-record Python objects), so a million
records cost ``capacity * max_actions * n_features * 4`` bytes and a fine-tune slices them
without copying record by record.

>>> d = LoggedDecision(variant_features=({"x": 0.0}, {"x": 1.0}), chosen=1, propensity=0.5,
...                    reward=3.0, expected_rewards=(0.0, 2.5))
>>> buffer = FeedbackBuffer(("x",), capacity=2, max_actions=3)
>>> for _ in range(3):
...     buffer.append(d)
>>> batch = buffer.snapshot()
>>> len(buffer), buffer.total_added, batch.features.shape, batch.valid[0].tolist()
(2, 3, (2, 3, 1), [True, True, False])
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
DoubleArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One feedback record as the trainer needs it.

    ``variant_features``: every variant the logging policy scored (``Decision.variant_features``);
    ``chosen``: the index of the shown-and-impressed one among them; ``propensity``: the
    probability it was shown with (as logged by the storefront); ``reward``: what it earned;
    ``expected_rewards``: the direct-method model's reward estimate for every variant
    (``ConversionModel.expected_reward``), needed for doubly robust estimates;
    ``policy_version``: the version that made the decision (None: unknown), so that a gate
    judging the live policy by the rewards it logged takes only its records;
    ``support``: the indexes of the variants the logging policy could show (probability > 0;
    the chosen one is taken as one in any case). Why: off-policy estimates learn nothing about
    a variant that was never shown, and a record keeps only its chosen variant's propensity,
    so without this a variant shown with probability 0 looks like any other. None: unknown
    (a record of an older release), and then only the chosen variant is known to have been
    possible.
    """

    variant_features: Sequence[Mapping[str, float]]
    chosen: int
    propensity: float
    reward: float
    expected_rewards: Sequence[float] | None = None
    policy_version: str | None = None
    support: Sequence[int] | None = None


@dataclass(frozen=True, slots=True)
class FeedbackBatch:
    """Logged decisions as arrays, oldest first: ``features [N, A, F]`` (0 where invalid),
    ``valid [N, A]``, ``chosen [N]``, ``propensity [N]``, ``reward [N]`` and optionally
    ``expected_reward [N, A]`` (direct-method predictions), ``logged_by [N]`` (each
    record's policy version, a ``str`` or None when unknown) and ``supported [N, A]`` (the
    variants the logging policy could show, :attr:`LoggedDecision.support`; None: unknown,
    only the chosen ones: see :meth:`support`)."""

    features: FloatArray
    valid: BoolArray
    chosen: IntArray
    propensity: DoubleArray
    reward: DoubleArray
    expected_reward: FloatArray | None = None
    logged_by: ObjectArray | None = None
    supported: BoolArray | None = None

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def take(self, index: slice | IntArray) -> FeedbackBatch:
        """The records at ``index`` (a slice is a view, an index array a copy)."""
        dm = None if self.expected_reward is None else self.expected_reward[index]
        return FeedbackBatch(
            features=self.features[index],
            valid=self.valid[index],
            chosen=self.chosen[index],
            propensity=self.propensity[index],
            reward=self.reward[index],
            expected_reward=dm,
            logged_by=None if self.logged_by is None else self.logged_by[index],
            supported=None if self.supported is None else self.supported[index],
        )

    def support(self) -> BoolArray:
        """``[N, A]``: the variants each record's logging policy could show, as far as known:
        :attr:`supported` and the chosen variants (shown, so possible) within ``valid``; only
        the chosen ones when it is None.
        Why the chosen ones only: claiming support for a variant that was never possible would
        let a candidate be judged on actions no log speaks for; claiming too little only
        makes the gate more cautious.

        >>> b = FeedbackBatch(np.zeros((1, 3, 1), np.float32), np.ones((1, 3), bool),
        ...                   np.array([1]), np.ones(1), np.zeros(1))
        >>> b.support().tolist()
        [[False, True, False]]
        """
        chosen = np.zeros(self.valid.shape, dtype=np.bool_)
        chosen[np.arange(len(self)), self.chosen] = True
        if self.supported is not None:
            chosen |= self.supported
        return chosen & self.valid

    def split(self, holdout_fraction: float) -> tuple[FeedbackBatch, FeedbackBatch]:
        """``(train, holdout)``: the holdout is the newest ``holdout_fraction`` of records, so
        a candidate is judged on feedback it did not train on, and on the most recent."""
        cut = holdout_cut(len(self), holdout_fraction)
        return self.take(slice(0, cut)), self.take(slice(cut, len(self)))


def holdout_cut(n: int, holdout_fraction: float) -> int:
    """Where :meth:`FeedbackBatch.split` cuts ``n`` records: the newest
    ``max(1, round(n * holdout_fraction))`` are the holdout.

    >>> holdout_cut(600, 0.2), holdout_cut(3, 0.1)
    (480, 2)
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    return n - max(1, round(n * holdout_fraction))


class MissingFeaturesError(ValueError):
    """Records asked for in features the buffer does not hold (``missing``, in the order
    asked): a policy of another feature set, which they cannot train or judge."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__("the feedback buffer holds no feature " + ", ".join(self.missing))


class FeedbackBuffer:
    """The newest ``capacity`` logged decisions in preallocated arrays (a ring). Owns them;
    not thread-safe.

    Args:
        feature_names: the order features are packed in (the policy's ``feature_names``).
        capacity: records kept; the oldest are overwritten beyond it.
        max_actions: variants per decision kept (decisions with more are refused).
    """

    def __init__(
        self, feature_names: Sequence[str], *, capacity: int = 1_000_000, max_actions: int = 16
    ) -> None:
        if capacity <= 0 or max_actions <= 0:
            raise ValueError("capacity and max_actions must be positive")
        self.feature_names = tuple(feature_names)
        self.capacity = capacity
        self.max_actions = max_actions
        # np.zeros maps pages lazily, so an idle large buffer costs little real memory.
        n_features = len(self.feature_names)
        self._features = np.zeros((capacity, max_actions, n_features), dtype=np.float32)
        self._valid = np.zeros((capacity, max_actions), dtype=np.bool_)
        self._chosen = np.zeros(capacity, dtype=np.int64)
        self._propensity = np.ones(capacity, dtype=np.float64)
        self._reward = np.zeros(capacity, dtype=np.float64)
        self._dm = np.zeros((capacity, max_actions), dtype=np.float32)
        self._has_dm = np.zeros(capacity, dtype=np.bool_)
        self._supported = np.zeros((capacity, max_actions), dtype=np.bool_)
        # Each record's policy version (None: unknown), interned: one string per version
        # however many records name it, freed with the last record that does.
        self._version = np.full(capacity, None, dtype=object)
        self._next = 0
        self._size = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self._size

    def append(self, decision: LoggedDecision) -> None:
        """Add one record. Raises ``ValueError`` (nothing stored) when it is malformed: no
        variants or more than ``max_actions``, ``chosen`` out of range, propensity outside
        (0, 1], a non-finite reward, feature or prediction, a missing feature, or a
        ``support`` out of range."""
        rows = decision.variant_features
        n = len(rows)
        if not 0 < n <= self.max_actions:
            raise ValueError(f"a decision needs 1..{self.max_actions} variants, got {n}")
        if not 0 <= decision.chosen < n:
            raise ValueError(f"chosen {decision.chosen} out of range for {n} variants")
        if not 0.0 < decision.propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], got {decision.propensity}")
        if not math.isfinite(decision.reward):
            raise ValueError("reward must be finite")
        try:
            matrix = np.array(
                [[float(r[name]) for name in self.feature_names] for r in rows], dtype=np.float32
            )
        except KeyError as e:
            raise ValueError(f"missing feature {e.args[0]!r}") from e
        dm = decision.expected_rewards
        if dm is not None and len(dm) != n:
            raise ValueError("expected_rewards must have one value per variant")
        dm_row = np.zeros(self.max_actions, dtype=np.float32)
        if dm is not None:
            dm_row[:n] = dm
        if not (np.isfinite(matrix).all() and np.isfinite(dm_row).all()):
            raise ValueError("features and expected rewards must be finite")
        # The chosen variant was shown, so it was possible, whatever the record says.
        support = [decision.chosen, *(decision.support or ())]
        if not all(0 <= j < n for j in support):
            raise ValueError(f"support rows out of range for {n} variants")
        i = self._next
        self._features[i] = 0.0
        self._features[i, :n] = matrix
        self._valid[i] = False
        self._valid[i, :n] = True
        self._chosen[i] = decision.chosen
        self._propensity[i] = decision.propensity
        self._reward[i] = decision.reward
        self._dm[i] = dm_row
        self._has_dm[i] = dm is not None
        self._supported[i] = False
        self._supported[i, support] = True
        self._version[i] = _interned(decision.policy_version)
        self._advance(1)

    def extend(self, batch: FeedbackBatch) -> None:
        """Add records already in array form (same feature order; ``A <= max_actions``)."""
        n, actions = batch.valid.shape
        if actions > self.max_actions or batch.features.shape[2] != len(self.feature_names):
            raise ValueError("batch shape does not fit this buffer")
        for start in range(0, n, self.capacity):  # a batch larger than the ring wraps
            part = batch.take(slice(start, min(n, start + self.capacity)))
            m = len(part)
            first = min(m, self.capacity - self._next)
            for lo, hi, dst in ((0, first, self._next), (first, m, 0)):
                if hi <= lo:
                    continue
                rows = slice(dst, dst + hi - lo)
                self._features[rows] = 0.0
                self._features[rows, :actions] = part.features[lo:hi]
                self._valid[rows] = False
                self._valid[rows, :actions] = part.valid[lo:hi]
                self._chosen[rows] = part.chosen[lo:hi]
                self._propensity[rows] = part.propensity[lo:hi]
                self._reward[rows] = part.reward[lo:hi]
                self._dm[rows] = 0.0
                if part.expected_reward is not None:
                    self._dm[rows, :actions] = part.expected_reward[lo:hi]
                self._has_dm[rows] = part.expected_reward is not None
                self._supported[rows] = False
                self._supported[rows, :actions] = part.support()[lo:hi]
                self._version[rows] = (None if part.logged_by is None else
                                       [_interned(v) for v in part.logged_by[lo:hi]])
            self._advance(m)

    def _advance(self, n: int) -> None:
        self._next = (self._next + n) % self.capacity
        self._size = min(self.capacity, self._size + n)
        self.total_added += n

    def snapshot(self, feature_names: Sequence[str] | None = None) -> FeedbackBatch:
        """A copy of the records held, oldest first. ``expected_reward`` is present only when
        every record held has direct-method predictions.

        ``feature_names``: the features to take, in that order (a policy's ``feature_names``:
        the columns it reads); None: the buffer's own. Why: a policy packs its features in its
        own order, and a version of another release may list the same features in another
        order, or fewer of them; columns passed in the buffer's order would be read as other
        features, silently. Raises :class:`MissingFeaturesError` when it names features the
        buffer does not hold.

        >>> buffer = FeedbackBuffer(("x", "y"), capacity=2)
        >>> buffer.append(LoggedDecision(({"x": 1.0, "y": 2.0},), 0, 1.0, 0.0))
        >>> buffer.snapshot(("y", "x")).features[0, 0].tolist()
        [2.0, 1.0]
        >>> buffer.snapshot(("x", "z"))
        Traceback (most recent call last):
        ...
        streamer.policy.feedback.MissingFeaturesError: the feedback buffer holds no feature z
        """
        columns = self._columns(feature_names)
        order = self._order()
        has_dm = bool(self._has_dm[order].all()) and self._size > 0

        def copy(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
            # A slice is a view: copied; an index array (a full ring) copies by itself.
            return a[order].copy() if isinstance(order, slice) else a[order]

        features = copy(self._features) if columns is None else self._features[np.ix_(
            np.arange(self.capacity)[order], np.arange(self.max_actions), columns)]
        return FeedbackBatch(
            features=features,  # type: ignore[arg-type]
            valid=copy(self._valid),  # type: ignore[arg-type]
            chosen=copy(self._chosen),  # type: ignore[arg-type]
            propensity=copy(self._propensity),  # type: ignore[arg-type]
            reward=copy(self._reward),  # type: ignore[arg-type]
            expected_reward=copy(self._dm) if has_dm else None,  # type: ignore[arg-type]
            logged_by=copy(self._version),  # type: ignore[arg-type]
            supported=copy(self._supported),  # type: ignore[arg-type]
        )

    def _order(self) -> slice | IntArray:
        """The ring's rows, oldest first."""
        if self._size < self.capacity:
            return slice(0, self._size)
        return (np.arange(self.capacity) + self._next) % self.capacity

    def logged_by(self) -> ObjectArray:
        """Who logged each record, oldest first (a copy): what a snapshot's ``logged_by``
        holds, without copying the features."""
        return self._version[self._order()].copy()

    def require(self, feature_names: Sequence[str]) -> None:
        """Raise :class:`MissingFeaturesError` unless the buffer holds ``feature_names``, as
        :meth:`snapshot` would, without taking one."""
        self._columns(feature_names)

    def _columns(self, feature_names: Sequence[str] | None) -> IntArray | None:
        """The buffer's columns of ``feature_names`` (None: all of them, as they are)."""
        if feature_names is None or tuple(feature_names) == self.feature_names:
            return None
        index = {name: i for i, name in enumerate(self.feature_names)}
        missing = [name for name in feature_names if name not in index]
        if missing:
            raise MissingFeaturesError(missing)
        return np.array([index[name] for name in feature_names], dtype=np.int64)


def _interned(version: str | None) -> str | None:
    return None if version is None else sys.intern(version)
