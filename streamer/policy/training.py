"""Fine-tuning a torch policy from logged feedback, evaluating it off-policy, and the gate
that decides whether it replaces the live one.

Pure logic, no Kafka: the trainer process (``streamer trainer``) feeds a
:class:`PolicyTrainer`, asks it whether a fine-tune is :meth:`~PolicyTrainer.due`, runs
:meth:`~PolicyTrainer.fine_tune` (CPU-bound for seconds: never on a worker's event loop) and
publishes :meth:`FineTuneResult.checkpoint` when the result says ``promoted``. A fine-tune
given a ``stop`` event checks it between mini-batches and between evaluation chunks, and raises
:class:`FineTuneAbandoned` once it is set: the trainer stops within a step of being asked, and
a half-trained candidate is never judged.

Objective: the clipped importance-weighted value of the policy being trained, maximised by
gradient ascent. ``"ips"``: ``mean(min(w, c) (r - b))`` with ``w = pi(a|x) / p0``, ``b`` the mean
reward (a baseline: same expected gradient, less variance); its gradient is the IPS policy
gradient ``w (r - b) grad log pi``. ``"dr"``: ``mean(sum_a pi(a|x) q(x, a) + min(w, c) (r -
q(x, a_logged)))``, the doubly robust value with the direct-method model ``q``: the model
carries the signal for variants the logs rarely show, the weights correct its bias. Clipping
at ``c`` bounds the variance a few tiny logging propensities would cause. Both value the
policy's probability on variants the logging policy could not show (outside each record's
``support``) as the gate does: up to its exploration allowance at ``b`` (what the logged
policy earns), beyond it at ``unsupported_reward`` (the model's ``q`` is never checked there):
training is pulled towards what the logs can vouch for, not towards the variants the model
over-rates where no reward ever corrected it.

Promotion: the candidate's lower confidence bound must beat the live policy's point estimate,
both on the newest feedback neither was trained on (doubly robust when the records carry model
predictions, SNIPS otherwise), and the candidate's weights and outputs must be finite. The live
policy's estimate is the mean reward it logged on its own records in that holdout
(:func:`gate_against_logged`: v0's or a torch version's; judged off-policy on another version's
records, its own untried variants would be valued at the worst and a copy of it would beat it).
Each estimate values a policy's probability on variants its records' logging policy never could
show at ``unsupported_reward`` (the least a variant earns: :mod:`~streamer.policy.ope`), so a
candidate is promoted only when it beats the live policy even if its untried variants earn the
worst, except its *exploration allowance* (:func:`exploration_allowance`: by default what its
floor forces onto untried variants, whatever it learned): that much of its unsupported
probability per decision is valued at the live policy's own estimate on that impression
(:func:`~streamer.policy.ope.within_allowance`). So a promoted candidate beats the live policy
on everything the logs vouch for, and its forced exploration costs at most its allowance times
the live value less ``unsupported_reward``. Rows at a discount the policy never serves are not
credited to it (:func:`served_rows`). Its share of unsupported probability, and of it within the
allowance, is reported (``unsupported_mass``, ``allowed_mass``). The lower bound is the *paired*
one: the live estimate plus the lower bound of the candidate-minus-live difference estimated
impression by impression (:func:`~streamer.policy.ope.paired_difference`). Both policies are
judged on the same rewards, so the difference's interval is several times narrower than either
policy's own; comparing the two unpaired intervals (:func:`should_promote`, kept for callers
holding two separate estimates) rejected a candidate truly 15 % better on a holdout of a few
thousand records.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from streamer.policy.checkpoint import policy_to_bytes, weights_are_finite
from streamer.policy.feedback import (
    FeedbackBatch,
    FeedbackBuffer,
    IntArray,
    LoggedDecision,
    ObjectArray,
    holdout_cut,
)
from streamer.policy.network import VariantScorer, variant_probabilities
from streamer.policy.ope import (
    Estimate,
    doubly_robust,
    estimator_terms,
    ips,
    paired_difference,
    snips,
    within_allowance,
)
from streamer.policy.torch_policy import (
    DISCOUNT_FEATURE,
    PolicyShape,
    TorchPolicy,
    version_of,
)

ObjectiveName = Literal["ips", "dr"]
DevicePreference = Literal["auto", "cuda", "cpu"]


class FineTuneAbandoned(Exception):
    """A fine-tune stopped because its ``stop`` event was set: there is no candidate.

    Why an exception: training cannot be interrupted from outside its thread (torch kernels
    hold it), so the fine-tune polls the event and unwinds itself from wherever it was."""


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise FineTuneAbandoned("stop requested")


def select_device(prefer: DevicePreference = "auto", *, max_threads: int = 1) -> torch.device:
    """``cuda`` when available (and not ``prefer="cpu"``), else the CPU with torch's intra-op
    threads capped at ``max_threads`` (process-wide: the trainer shares its host with workers).
    Raises ``RuntimeError`` when ``prefer="cuda"`` and there is no GPU.

    >>> select_device("cpu", max_threads=1).type
    'cpu'
    """
    if prefer != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise RuntimeError("cuda requested but no GPU is available")
    torch.set_num_threads(max(1, max_threads))
    return torch.device("cpu")


@dataclass(frozen=True, slots=True)
class FineTuneConfig:
    """Plain values a fine-tune is run with."""

    objective: ObjectiveName = "dr"
    epochs: int = 2
    batch_size: int = 4096
    #: At least this many gradient steps (more passes over a small buffer, when ``epochs`` is
    #: not 0): two passes over a few thousand records at batch 1024 are 8 steps, which left
    #: the candidate within 0.1 % of its parent (measured in the simulator) and so never
    #: worth promoting; a million records take ``epochs`` passes as before.
    min_steps: int = 200
    learning_rate: float = 3e-3
    weight_clip: float = 10.0
    holdout_fraction: float = 0.2
    #: The confidence of the gate's paired interval (two-sided: its lower end at 0.975).
    confidence: float = 0.95
    #: What a variant the logging policy could not show is taken to earn per impression, in
    #: the gate's estimates and the objective: the least any variant can (0 for revenue).
    unsupported_reward: float = 0.0
    #: The share of a candidate's probability on variants the logs never tried that the gate
    #: and the objective value at the live policy's own estimate, not the worst: exploration
    #: it cannot avoid. None: what its floor forces there, per decision (the floor times the
    #: variants it shows beyond those the logs tried: :func:`exploration_allowance`).
    exploration_allowance: float | None = None
    device: DevicePreference = "auto"
    # One thread by default: on a shared 2-core host, 2 OpenMP threads made these small
    # kernels 10-300x slower (spin-waiting on a busy core), not faster.
    max_threads: int = 1
    seed: int = 0
    eval_chunk: int = 65_536

    def __post_init__(self) -> None:
        if self.objective not in ("ips", "dr"):
            raise ValueError(f"objective must be 'ips' or 'dr', got {self.objective!r}")
        if self.epochs < 0 or self.batch_size <= 0 or self.eval_chunk <= 0:
            raise ValueError("epochs must be >= 0, batch_size and eval_chunk positive")
        if self.min_steps < 0:
            raise ValueError("min_steps must be >= 0")
        if not self.learning_rate > 0 or not self.weight_clip > 0:
            raise ValueError("learning_rate and weight_clip must be positive")
        if not 0.0 < self.confidence < 1.0:  # else the first gate, minutes later, would raise
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not math.isfinite(self.unsupported_reward):
            raise ValueError("unsupported_reward must be finite")
        if self.exploration_allowance is not None and not 0.0 <= self.exploration_allowance <= 1:
            raise ValueError("exploration_allowance must be in [0, 1] (or None: the floor)")


@dataclass(frozen=True, slots=True)
class PolicyEvaluation:
    """Off-policy estimates of one policy on one batch (``ips``, ``snips``, and ``dr`` when the
    records carry model predictions); ``outputs_finite`` is False if any score was not.
    ``terms`` holds each estimate's per-impression terms (for paired comparisons);
    ``unsupported_mass`` the policy's mean probability on variants the records' logging
    policy could not show (valued at ``worst_reward`` in every estimate), ``allowed`` each
    impression's part of it within the exploration allowance (which :func:`compare` values at
    the live policy's estimate instead)."""

    estimates: dict[str, Estimate]
    outputs_finite: bool
    terms: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    unsupported_mass: float = 0.0
    allowed: np.ndarray | None = field(default=None, compare=False, repr=False)
    worst_reward: float = 0.0

    @property
    def allowed_mass(self) -> float:
        """The mean unsupported probability within the exploration allowance."""
        return float(self.allowed.mean()) if self.allowed is not None and self.allowed.size else 0.0

    @property
    def primary(self) -> Estimate:
        """The estimate promotion is decided on: doubly robust if available, else SNIPS."""
        return self.estimates.get("dr", self.estimates["snips"])


def exploration_allowance(shape: PolicyShape, valid: torch.Tensor, supported: torch.Tensor,
                          allowance: float | None) -> torch.Tensor:
    """Each decision's allowance of unsupported probability (:class:`FineTuneConfig`):
    ``allowance``, or when None what the policy's floor forces onto variants the logs never
    tried there: it shows ``min(max_variants, valid)`` variants, each at least at the floor,
    and at most the ``supported`` ones of them were tried, so the floor puts at least
    ``floor x (shown - supported)`` on untried ones, whatever the policy learned. Only that
    much is excused: a policy that ranks an untried variant into its top few by choice is
    judged on it at the worst.

    >>> shape = PolicyShape(("x",), floor=0.02, max_variants=4)
    >>> valid = torch.tensor([[True] * 6, [True, False] * 3, [True] * 6])
    >>> supported = torch.tensor([[True] * 4 + [False] * 2, [True] + [False] * 5,
    ...                           [True, False] * 3])
    >>> [round(x, 6) for x in exploration_allowance(shape, valid, supported, None).tolist()]
    [0.0, 0.04, 0.02]
    """
    if allowance is not None:
        return torch.full(valid.shape[:-1], allowance, dtype=torch.float64, device=valid.device)
    shown = valid.sum(-1).double()
    if shape.max_variants is not None:
        shown = shown.clamp(max=shape.max_variants)
    tried = (supported & valid).sum(-1).double()
    return ((shown - tried).clamp(min=0.0) * shape.floor).clamp(max=1.0)


def served_rows(shape: PolicyShape, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``valid`` less the rows the policy would never serve: those whose discount is not one
    of its ``discount_levels`` (``TorchPolicy.decide`` offers those only). Why: v0 at a
    discount off that grid logs its own discount's rows beside the grid's, the only rows it
    tried; judged and trained on them, a candidate would be credited for a discount it never
    shows once live. Without a ``discount`` feature, ``valid`` as it is.

    >>> shape = PolicyShape(("discount",), discount_levels=(0.0, 10.0))
    >>> x = torch.tensor([[[0.0], [0.1], [0.2]]])
    >>> served_rows(shape, x, torch.ones(1, 3, dtype=torch.bool))
    tensor([[ True,  True, False]])
    """
    if DISCOUNT_FEATURE not in shape.feature_names:
        return valid
    i = shape.feature_names.index(DISCOUNT_FEATURE)
    levels = torch.tensor([d / 100.0 for d in shape.discount_levels], dtype=features.dtype,
                          device=features.device)
    on_grid = torch.isclose(features[..., i, None], levels, atol=1e-6).any(-1)
    return valid & on_grid


def _unsupported_mass(probs: torch.Tensor, supported: torch.Tensor, logged: torch.Tensor,
                      served: torch.Tensor) -> torch.Tensor:
    """Each decision's probability on rows the logs never tried; all of it (1) for a decision
    none of whose logged rows the policy would serve (it shows something else there, untried)."""
    off = (probs * ~supported).sum(-1)
    lost = logged.any(-1) & ~served.any(-1)
    return torch.where(lost, torch.ones_like(off), off)


def _target_probabilities(
    scorer: VariantScorer,
    shape: PolicyShape,
    batch: FeedbackBatch,
    device: torch.device,
    chunk: int,
    allowance: float | None = None,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, bool]:
    """The target's probability of each logged variant, its model value ``sum_a pi(a) q(a)``
    over the supported variants (when the batch has predictions), its probability on the
    unsupported ones and the part of that within its :func:`exploration_allowance`, and
    whether every score was finite. Raises :class:`FineTuneAbandoned` between chunks once
    ``stop`` is set."""
    p_chosen = np.empty(len(batch), dtype=np.float64)
    unsupported = np.empty(len(batch), dtype=np.float64)
    allowed = np.empty(len(batch), dtype=np.float64)
    support = batch.support()
    value = None if batch.expected_reward is None else np.empty(len(batch), dtype=np.float64)
    finite = True
    was_training = scorer.training
    scorer.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(batch), chunk):
                _check_stop(stop)
                part = batch.take(slice(start, start + chunk))
                x = torch.from_numpy(part.features).to(device)
                scores = scorer(x).double()
                finite = finite and bool(torch.isfinite(scores).all())
                logged = torch.from_numpy(part.valid).to(device)
                valid = served_rows(shape, x, logged)
                probs = variant_probabilities(
                    scores,
                    valid,
                    temperature=shape.temperature,
                    floor=shape.floor,
                    max_shown=shape.max_variants,
                )
                chosen = torch.from_numpy(part.chosen).to(device)
                end = start + len(part)
                supported = torch.from_numpy(support[start:end]).to(device)
                p_chosen[start:end] = probs.gather(1, chosen[:, None]).squeeze(1).cpu().numpy()
                off = _unsupported_mass(probs, supported, logged, valid)
                unsupported[start:end] = off.cpu().numpy()
                allowed[start:end] = torch.minimum(
                    off, exploration_allowance(shape, valid, supported, allowance)).cpu().numpy()
                if value is not None and part.expected_reward is not None:
                    q = torch.from_numpy(part.expected_reward).to(device).double()
                    value[start:end] = (probs * q * supported).sum(1).cpu().numpy()
    finally:
        scorer.train(was_training)
    return p_chosen, value, unsupported, allowed, finite


def evaluate_scorer(
    scorer: VariantScorer,
    shape: PolicyShape,
    batch: FeedbackBatch,
    *,
    confidence: float = 0.95,
    device: torch.device | None = None,
    chunk: int = 65_536,
    worst_reward: float = 0.0,
    allowance: float | None = None,
    stop: threading.Event | None = None,
) -> PolicyEvaluation:
    """IPS, SNIPS and (with model predictions) DR estimates of the scorer's policy on
    ``batch``; CLT intervals at ``confidence`` (see :mod:`~streamer.policy.ope`). Its
    probability on variants outside the records' support (``batch.support()``) is valued at
    ``worst_reward`` in each; the part of it within ``allowance``
    (:func:`exploration_allowance`) is kept for :func:`compare`. Raises
    :class:`FineTuneAbandoned` between chunks of ``chunk`` records once ``stop`` is set."""
    device = device or next(scorer.parameters()).device
    p1, value, u, allowed, finite = _target_probabilities(scorer, shape, batch, device, chunk,
                                                          allowance, stop)
    p0, r = batch.propensity, batch.reward
    bound = {"unsupported": u, "worst_reward": worst_reward}
    estimates = {
        "ips": ips(p0, r, p1, confidence=confidence, **bound),  # type: ignore[arg-type]
        "snips": snips(p0, r, p1, confidence=confidence, **bound),  # type: ignore[arg-type]
    }
    terms = {name: estimator_terms(name, p0, r, p1, unsupported=u, worst_reward=worst_reward)
             for name in ("ips", "snips")}
    if value is not None and batch.expected_reward is not None:
        q = np.take_along_axis(batch.expected_reward, batch.chosen[:, None], axis=1)[:, 0]
        estimates["dr"] = doubly_robust(p0, r, p1, q, value, confidence=confidence,
                                        unsupported=u, worst_reward=worst_reward)
        terms["dr"] = estimator_terms("dr", p0, r, p1, q, value, unsupported=u,
                                      worst_reward=worst_reward)
    return PolicyEvaluation(estimates=estimates, outputs_finite=finite, terms=terms,
                            unsupported_mass=float(u.mean()) if len(u) else 0.0,
                            allowed=allowed, worst_reward=worst_reward)


def compare(
    candidate: PolicyEvaluation, live: PolicyEvaluation, *, confidence: float = 0.95
) -> Estimate:
    """Candidate minus live on the same impressions, by the candidate's primary estimator
    (:func:`~streamer.policy.ope.paired_difference`), the candidate's unsupported probability
    within its allowance (``allowed``) valued at the live policy's estimate on each impression
    (:func:`~streamer.policy.ope.within_allowance`), the rest at the worst; NaN when either
    lacks its terms."""
    name = candidate.primary.estimator
    a, b = candidate.terms.get(name), live.terms.get(name)
    if a is None or b is None or a.shape != b.shape or a.size == 0:
        nan = math.nan
        return Estimate(name, nan, nan, nan, nan, confidence, 0, 0.0)
    if candidate.allowed is not None and candidate.allowed.shape == a.shape:
        a = within_allowance(a, candidate.allowed, candidate.allowed, b,
                             worst_reward=candidate.worst_reward)
    return paired_difference(name, a, b, confidence=confidence)


def evaluate_policy(
    policy: TorchPolicy, batch: FeedbackBatch, *, confidence: float = 0.95,
    worst_reward: float = 0.0,
) -> PolicyEvaluation:
    """:func:`evaluate_scorer` for a served policy (on the CPU, where it lives)."""
    return evaluate_scorer(policy.scorer, policy.shape, batch, confidence=confidence,
                           worst_reward=worst_reward)


def should_promote(candidate_estimate: Estimate, live_estimate: Estimate) -> bool:
    """True only when both estimates are finite and the candidate's lower confidence bound
    is above the live policy's point estimate.

    >>> from streamer.policy.ope import ips
    >>> live = ips([0.5, 0.5], [1.0, 0.0], [0.5, 0.5])            # value 0.5
    >>> should_promote(ips([0.5] * 4, [1.0] * 4, [0.5] * 4), live)  # 1.0, no spread
    True
    >>> should_promote(ips([0.5] * 2, [2.0, 0.0], [0.5] * 2), live) # 1.0, lower bound < 0.5
    False
    """
    return (
        candidate_estimate.is_finite
        and live_estimate.is_finite
        and candidate_estimate.lower > live_estimate.value
    )


@dataclass(frozen=True, slots=True)
class FineTuneResult:
    """A candidate and the figures it was judged on. ``promoted`` is the gate's verdict;
    ``reason`` says why, in words for the rejection log."""

    candidate: TorchPolicy
    candidate_evaluation: PolicyEvaluation
    live_evaluation: PolicyEvaluation
    live_version: str
    promoted: bool
    reason: str
    device: str
    seconds: float
    train_size: int
    holdout_size: int
    objective: ObjectiveName
    #: Candidate minus live, paired on the holdout (what the gate decides on).
    difference: Estimate | None = None
    #: The version whose weights were fine-tuned: the parent, except while the live policy
    #: is not a torch one (:func:`gate_against_logged`), when it is a fresh initial policy
    #: that was never published. None: the parent.
    started_from: str | None = None

    def metadata(self) -> dict[str, Any]:
        """What goes with the weights on ``policy-updates`` (and into the rejection log):
        JSON-able, non-finite numbers replaced by None."""
        primary = self.candidate_evaluation.primary
        meta: dict[str, Any] = _finite_json(
            {
                "version": self.candidate.version,
                "parent": self.candidate.parent,
                "started_from": self.started_from or self.candidate.parent,
                "live_version": self.live_version,
                "promoted": self.promoted,
                "reason": self.reason,
                "estimator": primary.estimator,
                "estimate": primary.value,
                "interval": [primary.lower, primary.upper],
                "live_estimate": self.live_evaluation.primary.value,
                "difference": None if self.difference is None else self.difference.as_dict(),
                "gate_lower_bound": self.gate_lower_bound,
                "unsupported_mass": self.candidate_evaluation.unsupported_mass,
                "allowed_mass": self.candidate_evaluation.allowed_mass,
                "live_unsupported_mass": self.live_evaluation.unsupported_mass,
                "estimates": {
                    k: v.as_dict() for k, v in self.candidate_evaluation.estimates.items()
                },
                "live_estimates": {
                    k: v.as_dict() for k, v in self.live_evaluation.estimates.items()
                },
                "objective": self.objective,
                "train_size": self.train_size,
                "holdout_size": self.holdout_size,
                "device": self.device,
                "seconds": self.seconds,
            }
        )
        return meta

    @property
    def gate_lower_bound(self) -> float:
        """The candidate's lower bound as the gate sees it: the live estimate plus the lower
        bound of the paired difference (NaN without one)."""
        if self.difference is None:
            return math.nan
        return self.live_evaluation.primary.value + self.difference.lower

    def checkpoint(self) -> bytes:
        """The candidate's safetensors bytes with :meth:`metadata`. Raises
        ``UnsafeCheckpointError`` for non-finite weights (the gate never promotes those)."""
        return policy_to_bytes(self.candidate, self.metadata())


def _finite_json(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def fine_tune(
    live: TorchPolicy, batch: FeedbackBatch, config: FineTuneConfig | None = None, *,
    stop: threading.Event | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of ``live`` on the older part of ``batch``, evaluate both on the newest
    ``holdout_fraction``, and apply the gate. Blocks for the whole run (seconds to a minute
    for a million records on the CPU); leaves ``live`` untouched.

    Mixed precision (autocast, bf16 where supported, else fp16 with a grad scaler) on cuda
    only: CPU autocast would only slow a network this small. Raises ``ValueError`` for the
    ``dr`` objective without model predictions, a batch too small to split, or one whose
    number of features is not the policy's; :class:`FineTuneAbandoned` within a gradient
    step (or an evaluation chunk) of ``stop`` being set, from another thread: the trainer's
    shutdown does not wait for the rest of the epochs.
    """
    config = config or FineTuneConfig()
    started = time.perf_counter()
    if config.objective == "dr" and batch.expected_reward is None:
        raise ValueError("the dr objective needs expected_reward (direct-method predictions)")
    if len(batch) < 2:
        raise ValueError("fine-tuning needs at least two records (one to train, one to judge)")
    if batch.features.shape[2] != len(live.shape.feature_names):
        raise ValueError(f"the batch has {batch.features.shape[2]} features, the policy reads "
                         f"{len(live.shape.feature_names)}: take it in the policy's "
                         "(FeedbackBuffer.snapshot(policy.shape.feature_names))")
    device = select_device(config.device, max_threads=config.max_threads)
    train, holdout = batch.split(config.holdout_fraction)
    shape = live.shape
    scorer = copy.deepcopy(live.scorer).to(device).train().requires_grad_(True)
    _train(scorer, shape, train, config, device, stop)
    scorer = scorer.to("cpu").eval()
    candidate = TorchPolicy(scorer, shape, version=version_of(scorer, shape),
                            parent=live.version)
    candidate_eval = evaluate_scorer(
        candidate.scorer, shape, holdout, confidence=config.confidence, chunk=config.eval_chunk,
        worst_reward=config.unsupported_reward, allowance=config.exploration_allowance,
        stop=stop,
    )
    live_eval = evaluate_scorer(
        live.scorer, shape, holdout, confidence=config.confidence, chunk=config.eval_chunk,
        worst_reward=config.unsupported_reward, stop=stop,
    )
    difference = compare(candidate_eval, live_eval, confidence=config.confidence)
    promoted, reason = _verdict(candidate, candidate_eval, live_eval, difference)
    return FineTuneResult(
        candidate=candidate,
        candidate_evaluation=candidate_eval,
        live_evaluation=live_eval,
        live_version=live.version,
        promoted=promoted,
        reason=reason,
        device=device.type,
        seconds=time.perf_counter() - started,
        train_size=len(train),
        holdout_size=len(holdout),
        objective=config.objective,
        difference=difference,
    )


#: In the reason of a candidate :func:`gate_against_logged` could not judge.
TOO_FEW_LIVE = "too few records logged by"


def live_holdout_rows(logged_by: ObjectArray | None, live_version: str) -> IntArray | None:
    """The rows of a holdout (its ``logged_by``) that ``live_version`` logged, the ones a
    candidate is judged on (:func:`gate_against_logged`); None when no record says who logged
    it (a batch built without versions): then nothing tells them apart and every row counts."""
    if logged_by is None or all(v is None for v in logged_by):
        return None
    return np.flatnonzero(logged_by == live_version)


def too_few_live(logged_by: ObjectArray, config: FineTuneConfig, *, live_version: str,
                 min_live: int) -> str | None:
    """Why a candidate fine-tuned on records logged by ``logged_by`` (oldest first: a
    :meth:`~streamer.policy.FeedbackBuffer.logged_by`) could not be judged, or None: its
    holdout holds fewer than ``min_live`` (at least 2) records ``live_version`` logged. Cheap
    (no features touched): the trainer asks before its snapshot, so a round after a promotion
    or a rollback neither copies the buffer nor trains a candidate only for
    :func:`gate_against_logged` to turn it down unjudged."""
    holdout = logged_by[holdout_cut(len(logged_by), config.holdout_fraction):]
    rows = live_holdout_rows(holdout, live_version)
    return None if rows is None else _too_few(rows, len(holdout), live_version, min_live)


def _too_few(rows: IntArray, holdout_size: int, live_version: str, min_live: int) -> str | None:
    if len(rows) >= max(2, min_live):
        return None
    return (f"{TOO_FEW_LIVE} {live_version} in the holdout ({len(rows)} of {holdout_size}, "
            f"at least {max(2, min_live)} needed)")


def gate_against_logged(
    result: FineTuneResult, batch: FeedbackBatch, config: FineTuneConfig, *, live_version: str,
    min_live: int = 2, stop: threading.Event | None = None,
) -> FineTuneResult:
    """``result`` judged against the rewards the live policy logged, instead of an off-policy
    estimate of it: the v0 epsilon-greedy policy (not a ``TorchPolicy``), or a torch version
    on its own records. Its value on the same holdout ``fine_tune`` used is the mean logged
    reward (IPS with the target's probabilities equal to the logged ones); the gate is then
    applied as usual. ``live_evaluation`` holds that on-policy estimate under every name.
    Why for a torch version too: :func:`fine_tune` estimates both policies on the whole
    holdout, and on records another version logged (the newest after a promotion or a
    rollback) the live version's probability on variants those never showed is valued at
    the worst, while the candidate's allowance is valued at that deflated estimate: a copy
    of the live version then beat it (promoted 3 of 3 in its unit test), and a
    worse candidate too. On its own records the live version has no unsupported mass.

    Only the holdout's records ``live_version`` logged count (when the batch says who logged
    them, ``logged_by``; records naming no version then do not count), the candidate
    re-evaluated on those: the mean reward of another policy's records (the rolled-back
    version's, newest after a rollback to v0) is not v0's value. With fewer than ``min_live``
    of them the candidate is rejected (:data:`TOO_FEW_LIVE`).

    The candidate's ``parent`` becomes ``live_version``, the version it would replace on
    ``policy-updates`` (what ``streamer policy list`` shows and a rollback can name); the
    fresh policy it was fine-tuned from, never published, is kept as ``started_from``.
    ``stop``: as :func:`fine_tune`'s (the re-evaluation on v0's records is checked too)."""
    _, holdout = batch.split(config.holdout_fraction)
    candidate = result.candidate
    judged = dataclasses.replace(
        result,
        candidate=TorchPolicy(candidate.scorer, candidate.shape, version=candidate.version,
                              parent=live_version),
        started_from=result.started_from or candidate.parent,
        live_version=live_version,
    )
    candidate_eval = result.candidate_evaluation
    live_only = live_holdout_rows(holdout.logged_by, live_version)
    if live_only is not None:
        if (why := _too_few(live_only, len(holdout), live_version, min_live)) is not None:
            nan = math.nan
            missing = {name: Estimate(e.estimator, nan, nan, nan, nan, config.confidence, 0, 0.0)
                       for name, e in candidate_eval.estimates.items()}
            return dataclasses.replace(
                judged, promoted=False, difference=None, holdout_size=len(live_only),
                live_evaluation=PolicyEvaluation(estimates=missing, outputs_finite=True),
                reason=f"rejected: {why}")
        if len(live_only) < len(holdout):
            holdout = holdout.take(live_only)
            candidate_eval = evaluate_scorer(candidate.scorer, candidate.shape, holdout,
                                             confidence=config.confidence,
                                             chunk=config.eval_chunk,
                                             worst_reward=config.unsupported_reward,
                                             allowance=config.exploration_allowance,
                                             stop=stop)
    logged = ips(holdout.propensity, holdout.reward, holdout.propensity,
                 confidence=config.confidence)
    names = candidate_eval.estimates
    live_eval = PolicyEvaluation(
        estimates={name: logged for name in names},
        outputs_finite=True,
        terms={name: np.asarray(holdout.reward, dtype=np.float64) for name in names},
    )
    difference = compare(candidate_eval, live_eval, confidence=config.confidence)
    promoted, reason = _verdict(candidate, candidate_eval, live_eval, difference)
    return dataclasses.replace(
        judged,
        candidate_evaluation=candidate_eval,
        holdout_size=len(holdout),
        live_evaluation=live_eval,
        promoted=promoted,
        reason=reason,
        difference=difference,
    )


def _verdict(
    candidate: TorchPolicy,
    candidate_eval: PolicyEvaluation,
    live_eval: PolicyEvaluation,
    difference: Estimate,
) -> tuple[bool, str]:
    c, live = candidate_eval.primary, live_eval.primary
    if not weights_are_finite(candidate):
        return False, "rejected: non-finite weights"
    if not candidate_eval.outputs_finite or not c.is_finite:
        return False, "rejected: non-finite outputs or estimate"
    if not (live.is_finite and difference.is_finite):
        return False, "rejected: non-finite live estimate or difference"
    # Paired lower bound (module doc): live estimate + lower bound of candidate - live.
    lower = live.value + difference.lower
    unsupported = (f" ({candidate_eval.unsupported_mass:.3g} of its probability unsupported, "
                   f"{candidate_eval.allowed_mass:.3g} of it within the exploration allowance)")
    if not lower > live.value:
        return False, (
            f"rejected: {c.estimator} paired lower bound {lower:.6g} "
            f"does not beat live estimate {live.value:.6g}{unsupported}"
        )
    return True, (
        f"promoted: {c.estimator} paired lower bound {lower:.6g} beats live estimate "
        f"{live.value:.6g}{unsupported}"
    )


def _train(
    scorer: VariantScorer,
    shape: PolicyShape,
    train: FeedbackBatch,
    config: FineTuneConfig,
    device: torch.device,
    stop: threading.Event | None = None,
) -> None:
    n = len(train)
    if n == 0 or config.epochs == 0:
        return
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    features = torch.from_numpy(train.features)  # views: no copy of the buffer
    valid = torch.from_numpy(train.valid)
    chosen = torch.from_numpy(train.chosen)
    propensity = torch.from_numpy(train.propensity).float()
    reward = torch.from_numpy(train.reward).float()
    dm = None if train.expected_reward is None else torch.from_numpy(train.expected_reward)
    support = torch.from_numpy(train.support())
    worst = config.unsupported_reward
    baseline = float(reward.mean())
    steps_per_epoch = math.ceil(n / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            _check_stop(stop)  # a step is milliseconds to a fraction of a second
            idx = order[start : start + config.batch_size]
            x = features[idx].to(device, non_blocking=True)
            a = chosen[idx].to(device)
            p0 = propensity[idx].to(device)
            r = reward[idx].to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                scores = scorer(x)
            logged = valid[idx].to(device)
            mask = served_rows(shape, x, logged)
            probs = variant_probabilities(
                scores.float(),
                mask,
                temperature=shape.temperature,
                floor=shape.floor,
                max_shown=shape.max_variants,
            )
            p_chosen = probs.gather(1, a[:, None]).squeeze(1)
            w = torch.clamp(p_chosen / p0, max=config.weight_clip)
            supported = support[idx].to(device)
            unsupported = _unsupported_mass(probs, supported, logged, mask)
            excess = torch.relu(unsupported - exploration_allowance(
                shape, mask, supported, config.exploration_allowance).float())
            allowed = unsupported - excess
            if config.objective == "dr" and dm is not None:
                q = dm[idx].to(device)
                q_chosen = q.gather(1, a[:, None]).squeeze(1)
                value = ((probs * q * supported).sum(1) + w * (r - q_chosen)
                         + baseline * allowed + worst * excess)
            else:
                value = w * (r - baseline) + (worst - baseline) * excess
            loss = -value.mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()


@dataclass(slots=True)
class _TrainerClock:
    last_s: float
    records_at_last: int = 0
    requested: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class PolicyTrainer:
    """The trainer's pure logic: a bounded buffer of feedback and when to fine-tune.

    A fine-tune is due once the buffer holds ``min_records`` and either ``every_records`` new
    records arrived since the last one, or ``every_seconds`` passed with at least one new
    record, or :meth:`request_fine_tune` was called (on drift). Time is passed in (``now_s``,
    any monotonic clock), so it holds no clock of its own. Owns its buffer; not thread-safe.

    >>> trainer = PolicyTrainer(("x",), capacity=100, every_records=3, min_records=2)
    >>> d = LoggedDecision(variant_features=({"x": 0.0}, {"x": 1.0}), chosen=0,
    ...                    propensity=0.5, reward=1.0)
    >>> trainer.add(d); trainer.add(d); trainer.due(now_s=1.0) is None
    True
    >>> trainer.request_fine_tune("drift on reward:v1"); trainer.due(now_s=1.0)
    'drift on reward:v1'
    """

    def __init__(
        self,
        feature_names: tuple[str, ...],
        *,
        capacity: int = 1_000_000,
        max_actions: int = 16,
        every_records: int = 100_000,
        every_seconds: float = 3600.0,
        min_records: int = 1_000,
        config: FineTuneConfig | None = None,
        start_s: float = 0.0,
        max_history: int = 100,
    ) -> None:
        if every_records <= 0 or every_seconds <= 0 or min_records < 2:
            raise ValueError("every_records, every_seconds positive; min_records >= 2")
        self.buffer = FeedbackBuffer(feature_names, capacity=capacity, max_actions=max_actions)
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.min_records = min_records
        self.config = config or FineTuneConfig()
        self.max_history = max_history
        self._clock = _TrainerClock(last_s=start_s)

    def add(self, decision: LoggedDecision) -> None:
        """Buffer one record (``ValueError`` if malformed; see ``FeedbackBuffer.append``)."""
        self.buffer.append(decision)

    def extend(self, batch: FeedbackBatch) -> None:
        """Buffer records already in array form."""
        self.buffer.extend(batch)

    def request_fine_tune(self, reason: str) -> None:
        """Ask for a fine-tune as soon as enough records are buffered (drift detected)."""
        self._clock.requested = reason

    @property
    def new_records(self) -> int:
        """Records added since the last fine-tune."""
        return self.buffer.total_added - self._clock.records_at_last

    def due(self, now_s: float) -> str | None:
        """Why a fine-tune is due now, or None."""
        if len(self.buffer) < self.min_records:
            return None
        if self._clock.requested is not None:
            return self._clock.requested
        if self.new_records >= self.every_records:
            return f"{self.new_records} new records"
        if self.new_records > 0 and now_s - self._clock.last_s >= self.every_seconds:
            return f"{now_s - self._clock.last_s:.0f} s since the last fine-tune"
        return None

    def fine_tune(self, live: TorchPolicy, now_s: float) -> FineTuneResult:
        """Fine-tune ``live`` on the buffer now (blocks; see :func:`fine_tune`), judged against
        the rewards ``live`` logged (:func:`gate_against_logged`), reset the triggers, and
        record the outcome's metadata in :attr:`history`. Raises
        ``MissingFeaturesError`` (nothing trained, nothing reset) when ``live`` reads features
        the buffer does not hold."""
        records = self.buffer.total_added
        batch = self.buffer.snapshot(live.shape.feature_names)
        result = gate_against_logged(
            fine_tune(live, batch, self.config), batch, self.config, live_version=live.version,
            min_live=max(2, round(self.min_records * self.config.holdout_fraction)))
        self.record(result, now_s, records_at_start=records)
        return result

    def record(self, result: FineTuneResult, now_s: float, *, records_at_start: int) -> None:
        """Reset the triggers and keep ``result``'s metadata in :attr:`history`: for callers
        that run :func:`fine_tune` elsewhere (another thread) on a :meth:`FeedbackBuffer.snapshot`
        taken when ``total_added`` was ``records_at_start``; records added meanwhile still
        count as new."""
        self._close_round(now_s, records_at_start, result.metadata())

    def skip(self, now_s: float, *, live_version: str, reason: str) -> None:
        """Reset the triggers as a fine-tune would, without one (``reason`` says why; kept in
        :attr:`history` as a round that trained nothing): a round that cannot train (the
        live version reads features the buffer does not hold) waits for the next trigger
        instead of being due again at once, and again."""
        self._close_round(now_s, self.buffer.total_added, {
            "version": None, "live_version": live_version, "promoted": False, "skipped": True,
            "reason": reason})

    def _close_round(self, now_s: float, records_at: int, entry: dict[str, Any]) -> None:
        self._clock.last_s = now_s
        self._clock.records_at_last = records_at
        self._clock.requested = None
        self._clock.history.append(entry)
        del self._clock.history[: -self.max_history]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Metadata of recent fine-tunes, promoted or rejected, and of skipped rounds
        (``skipped``: True, ``version`` None), oldest first."""
        return list(self._clock.history)
