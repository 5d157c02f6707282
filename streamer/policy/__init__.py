"""Policies: score candidate bundles and turn scores into variant probabilities.

This is the only package that may import torch. A policy is anything with a ``version`` and a
``propose`` method (:class:`Policy`); the engine does not care which one it runs. The v0
:class:`EpsilonGreedyPolicy` needs nothing else; the learned :class:`TorchPolicy` also needs a
``featurizer`` (``streamer.online.DecisionFeaturizer``). Off-policy evaluation lives in
:mod:`~streamer.policy.ope`, fine-tuning and the promotion gate in
:mod:`~streamer.policy.training`, serialisation in :mod:`~streamer.policy.checkpoint`.
"""

from streamer.policy.base import BundleCandidate, Policy, Proposal, VariantFeaturizer
from streamer.policy.checkpoint import (
    UnsafeCheckpointError,
    policy_from_bytes,
    policy_to_bytes,
    weights_are_finite,
)
from streamer.policy.feedback import FeedbackBatch, FeedbackBuffer, LoggedDecision
from streamer.policy.greedy import EpsilonGreedyPolicy
from streamer.policy.ope import Estimate, doubly_robust, ips, snips
from streamer.policy.registry import PolicyChange, PolicyVersions, VersionInfo, rollback_record
from streamer.policy.torch_policy import Decision, PolicyShape, TorchPolicy
from streamer.policy.training import (
    FineTuneConfig,
    FineTuneResult,
    PolicyEvaluation,
    PolicyTrainer,
    evaluate_policy,
    fine_tune,
    gate_against_logged,
    select_device,
    should_promote,
)

__all__ = [
    "BundleCandidate",
    "Decision",
    "EpsilonGreedyPolicy",
    "Estimate",
    "FeedbackBatch",
    "FeedbackBuffer",
    "FineTuneConfig",
    "FineTuneResult",
    "LoggedDecision",
    "Policy",
    "PolicyChange",
    "PolicyEvaluation",
    "PolicyShape",
    "PolicyTrainer",
    "PolicyVersions",
    "Proposal",
    "TorchPolicy",
    "UnsafeCheckpointError",
    "VariantFeaturizer",
    "VersionInfo",
    "doubly_robust",
    "evaluate_policy",
    "fine_tune",
    "gate_against_logged",
    "ips",
    "policy_from_bytes",
    "policy_to_bytes",
    "rollback_record",
    "select_device",
    "should_promote",
    "snips",
    "weights_are_finite",
]
