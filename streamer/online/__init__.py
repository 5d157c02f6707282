"""River models learned online: variant features, conversion propensity, drift detection.

Must not import torch or ``streamer.policy`` (an independent sibling): the features are plain
``dict[str, float]`` the policy packs into tensors itself (:mod:`~streamer.online.features`).
"""


# Exports load lazily: the worker needs the features and the conversion model at start-up,
# not river.drift (which imports river's datasets, seconds of start-up).

from __future__ import annotations

from typing import TYPE_CHECKING

from streamer.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from streamer.online.drift import (
        DriftAlarm,
        DriftMonitor,
    )
    from streamer.online.features import (
        DISCOUNT_LEVELS,
        FEATURE_NAMES,
        PROPENSITY_FEATURE,
        SEGMENT_SLOTS,
        DecisionContext,
        DecisionFeaturizer,
        RewardKind,
        check_segments,
        variant_features,
        variant_value,
    )
    from streamer.online.propensity import (
        ConversionModel,
    )

# Public name -> defining module; imported on first use (PEP 562).
_EXPORTS = {
    "DriftAlarm": "streamer.online.drift",
    "DriftMonitor": "streamer.online.drift",
    "DISCOUNT_LEVELS": "streamer.online.features",
    "FEATURE_NAMES": "streamer.online.features",
    "PROPENSITY_FEATURE": "streamer.online.features",
    "SEGMENT_SLOTS": "streamer.online.features",
    "check_segments": "streamer.online.features",
    "DecisionContext": "streamer.online.features",
    "DecisionFeaturizer": "streamer.online.features",
    "RewardKind": "streamer.online.features",
    "variant_features": "streamer.online.features",
    "variant_value": "streamer.online.features",
    "ConversionModel": "streamer.online.propensity",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = [
    "DISCOUNT_LEVELS",
    "FEATURE_NAMES",
    "PROPENSITY_FEATURE",
    "SEGMENT_SLOTS",
    "ConversionModel",
    "DecisionContext",
    "DecisionFeaturizer",
    "DriftAlarm",
    "DriftMonitor",
    "RewardKind",
    "check_segments",
    "variant_features",
    "variant_value",
]
