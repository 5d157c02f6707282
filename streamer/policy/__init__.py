"""Policies: score candidate bundles and turn scores into variant probabilities.

This is the only package that may import torch. A policy is anything with a ``version`` and a
``propose`` method (:class:`Policy`); the engine does not care which one it runs. The v0
:class:`EpsilonGreedyPolicy` needs nothing else; the learned :class:`TorchPolicy` also needs a
``featurizer`` (``streamer.online.DecisionFeaturizer``). Off-policy evaluation lives in
:mod:`~streamer.policy.ope`, fine-tuning and the promotion gate in
:mod:`~streamer.policy.training`, serialisation in :mod:`~streamer.policy.checkpoint`.
"""


# Exports load lazily: a worker serving the v0 policy starts without importing torch
# (seconds of start-up); torch loads when a learned version is first adopted.

from __future__ import annotations

from typing import TYPE_CHECKING

from streamer.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from streamer.policy.base import (
        BundleCandidate,
        Policy,
        Proposal,
        VariantFeaturizer,
        action_rows,
        decision_actions,
        featurize,
        featurize_each,
    )
    from streamer.policy.checkpoint import (
        UnsafeCheckpointError,
        policy_from_bytes,
        policy_to_bytes,
        weights_are_finite,
    )
    from streamer.policy.feedback import (
        FeedbackBatch,
        FeedbackBuffer,
        LoggedDecision,
    )
    from streamer.policy.greedy import (
        EpsilonGreedyPolicy,
    )
    from streamer.policy.ope import (
        Estimate,
        doubly_robust,
        ips,
        snips,
    )
    from streamer.policy.registry import (
        PolicyChange,
        PolicyVersions,
        VersionInfo,
        rollback_record,
    )
    from streamer.policy.torch_policy import (
        Decision,
        PolicyShape,
        TorchPolicy,
    )
    from streamer.policy.training import (
        FineTuneAbandoned,
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

# Public name -> defining module; imported on first use (PEP 562).
_EXPORTS = {
    "BundleCandidate": "streamer.policy.base",
    "Policy": "streamer.policy.base",
    "Proposal": "streamer.policy.base",
    "VariantFeaturizer": "streamer.policy.base",
    "action_rows": "streamer.policy.base",
    "decision_actions": "streamer.policy.base",
    "featurize": "streamer.policy.base",
    "featurize_each": "streamer.policy.base",
    "UnsafeCheckpointError": "streamer.policy.checkpoint",
    "policy_from_bytes": "streamer.policy.checkpoint",
    "policy_to_bytes": "streamer.policy.checkpoint",
    "weights_are_finite": "streamer.policy.checkpoint",
    "FeedbackBatch": "streamer.policy.feedback",
    "FeedbackBuffer": "streamer.policy.feedback",
    "LoggedDecision": "streamer.policy.feedback",
    "EpsilonGreedyPolicy": "streamer.policy.greedy",
    "Estimate": "streamer.policy.ope",
    "doubly_robust": "streamer.policy.ope",
    "ips": "streamer.policy.ope",
    "snips": "streamer.policy.ope",
    "PolicyChange": "streamer.policy.registry",
    "PolicyVersions": "streamer.policy.registry",
    "VersionInfo": "streamer.policy.registry",
    "rollback_record": "streamer.policy.registry",
    "Decision": "streamer.policy.torch_policy",
    "PolicyShape": "streamer.policy.torch_policy",
    "TorchPolicy": "streamer.policy.torch_policy",
    "FineTuneAbandoned": "streamer.policy.training",
    "FineTuneConfig": "streamer.policy.training",
    "FineTuneResult": "streamer.policy.training",
    "PolicyEvaluation": "streamer.policy.training",
    "PolicyTrainer": "streamer.policy.training",
    "evaluate_policy": "streamer.policy.training",
    "fine_tune": "streamer.policy.training",
    "gate_against_logged": "streamer.policy.training",
    "select_device": "streamer.policy.training",
    "should_promote": "streamer.policy.training",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = [
    "BundleCandidate",
    "Decision",
    "EpsilonGreedyPolicy",
    "Estimate",
    "FeedbackBatch",
    "FeedbackBuffer",
    "FineTuneAbandoned",
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
    "action_rows",
    "decision_actions",
    "doubly_robust",
    "evaluate_policy",
    "featurize",
    "featurize_each",
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
