"""Rewards: attribution of impressions, clicks and purchases to offers; the reward ledger.

Pure Python (no Kafka, no faust, no I/O):

- :class:`Attributor` joins each offer impression with its outcome and emits one
  :class:`ImpressionOutcome` per impression when its attribution window closes (the
  decision-ledger record's core).
- :class:`RewardLedger` aggregates outcomes into windows per policy version (and anchor /
  segment) and emits :class:`~streamer.events.RewardWindow` values when windows close.
- :func:`sample_ratio_mismatch` and :func:`reward_regression` are the guardrails.

State lives in mappings the caller passes (faust tables live, dicts in tests and replay).
"""

from streamer.rewards.attribution import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_WINDOW_MS,
    REWARD_ATTRIBUTIONS,
    Attribution,
    Attributor,
    ImpressionOutcome,
    Observation,
    OfferLookup,
    RewardAttribution,
    RewardKind,
    SessionState,
    learning_reward,
)
from streamer.rewards.guardrails import (
    RegressionCheck,
    SrmResult,
    chi2_sf,
    impressions_by_version,
    reward_regression,
    sample_ratio_mismatch,
)
from streamer.rewards.ledger import (
    DEFAULT_SPECS,
    HOPPING_1_H_EVERY_5_MIN,
    TUMBLING_1_MIN,
    RewardLedger,
    WindowAggregate,
    WindowSpec,
)
from streamer.rewards.reward_stats import RewardMoments

__all__ = [
    "DEFAULT_ALLOWED_LATENESS_MS",
    "DEFAULT_SPECS",
    "DEFAULT_WINDOW_MS",
    "HOPPING_1_H_EVERY_5_MIN",
    "REWARD_ATTRIBUTIONS",
    "TUMBLING_1_MIN",
    "Attribution",
    "Attributor",
    "ImpressionOutcome",
    "Observation",
    "OfferLookup",
    "RegressionCheck",
    "RewardAttribution",
    "RewardKind",
    "RewardLedger",
    "RewardMoments",
    "SessionState",
    "SrmResult",
    "WindowAggregate",
    "WindowSpec",
    "chi2_sf",
    "impressions_by_version",
    "learning_reward",
    "reward_regression",
    "sample_ratio_mismatch",
]
