"""Policies: score candidate bundles and turn scores into variant probabilities.

This is the only package that may import torch. A policy is anything with a ``version`` and a
``propose`` method (:class:`Policy`); the engine does not care which one it runs.
"""

from streamer.policy.base import BundleCandidate, Policy, Proposal
from streamer.policy.greedy import EpsilonGreedyPolicy

__all__ = ["BundleCandidate", "EpsilonGreedyPolicy", "Policy", "Proposal"]
