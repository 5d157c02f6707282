"""River models learned online: variant features, conversion propensity, drift detection.

Must not import torch or ``streamer.policy`` (an independent sibling): the features are plain
``dict[str, float]`` the policy packs into tensors itself (:mod:`~streamer.online.features`).
"""

from streamer.online.drift import DriftAlarm, DriftMonitor
from streamer.online.features import (
    DISCOUNT_LEVELS,
    FEATURE_NAMES,
    PROPENSITY_FEATURE,
    DecisionContext,
    DecisionFeaturizer,
    RewardKind,
    variant_features,
    variant_value,
)
from streamer.online.propensity import ConversionModel

__all__ = [
    "DISCOUNT_LEVELS",
    "FEATURE_NAMES",
    "PROPENSITY_FEATURE",
    "ConversionModel",
    "DecisionContext",
    "DecisionFeaturizer",
    "DriftAlarm",
    "DriftMonitor",
    "RewardKind",
    "variant_features",
    "variant_value",
]
