"""Logging presets and the metrics registry (Prometheus).

Metrics live in one :class:`Metrics` object per process with its own registry, so tests and
the demo can run several apps in one interpreter without clashing on global names.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric


class Metrics:
    """The worker's counters. Label values are topic names and reasons, a bounded set."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events_consumed = Counter(
            "streamer_events_consumed",
            "Messages consumed, per topic.",
            ["topic"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "streamer_duplicate_events",
            "Events skipped because their event_id was already processed.",
            ["topic"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "streamer_dead_letters",
            "Messages sent to the dead-letter topic, per source topic and kind.",
            ["topic", "kind"],
            registry=self.registry,
        )
        self.baskets_learned = Counter(
            "streamer_baskets_learned",
            "Item baskets (an anchor's share of an order) learned into the co-purchase state, "
            "by route: 'topic' through the item-baskets repartition, 'local' in place, by the "
            "worker that read the purchase and owns the anchor's partition. Baskets found "
            "learned already count as duplicate events instead.",
            ["route"],
            registry=self.registry,
        )
        self.suspended_deliveries = Counter(
            "streamer_suspended_deliveries",
            "Messages the consumer could not hand to their agent at once (its queue full, "
            "flow suspended for a rebalance, or the producer's buffer full), so the consumer "
            "waited: back-pressure from an agent that does not keep up.",
            registry=self.registry,
        )
        self.agent_crashes = Counter(
            "streamer_agent_crashes",
            "Agents that raised. The worker then commits nothing more, stops and exits with "
            "status 1, to be restarted from its last commit (streamer.app.crashes). Input "
            "never makes an agent raise (it is dead-lettered): any crash is a bug.",
            ["agent"],
            registry=self.registry,
        )
        self.group_drops = Counter(
            "streamer_group_drops",
            "Times the consumer group dropped this worker while it held partitions (its "
            "session or a rebalance timed out): it then writes and commits nothing more, stops "
            "and exits with status 1 (streamer.app.fast_consumer.FastConsumer._still_member).",
            registry=self.registry,
        )
        self.offers_published = Counter(
            "streamer_offers_published", "Offers published to the offers topic.",
            registry=self.registry,
        )
        self.offer_price_checks = Counter(
            "streamer_offer_price_checks",
            "Offers the price sweep went through (offers.price_check_interval_s): live ones "
            "checked against the catalogue, expired ones passed over.",
            registry=self.registry,
        )
        self.offers_repriced = Counter(
            "streamer_offers_repriced",
            "Offers published because a live offer quoted a stale bundle price (a partner's "
            "price changed); counted in streamer_offers_published too.",
            registry=self.registry,
        )
        self.tracked_items = Gauge(
            "streamer_tracked_items", "Items with co-purchase state on this worker.",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "streamer_consumer_lag",
            "Messages behind the end of the log, summed over this worker's partitions.",
            ["topic"],
            registry=self.registry,
        )
        # -- rewards: attribution and the reward ledger --------------------------------------
        self.attribution_events = Counter(
            "streamer_attribution_events",
            "Clicks and purchases seen by attribution, by what was done with them "
            "(applied, late_applied, too_late, too_early, duplicate, ignored, invalid, "
            "overflow; too_early: stamped too far ahead of event and wall time, not applied).",
            ["status"],
            registry=self.registry,
        )
        self.late_events = Counter(
            "streamer_late_events",
            "Events behind the watermark: stage attribution (status late_applied: still "
            "counted; too_late: reported, not applied) and stage ledger (outcome missed a "
            "closed window).",
            ["stage", "status"],
            registry=self.registry,
        )
        self.feedback_records = Counter(
            "streamer_feedback_records",
            "Impressions joined with their outcome, published to the feedback topic.",
            registry=self.registry,
        )
        self.feedback_decisions = Counter(
            "streamer_feedback_decisions",
            "Feedback records by where their decision came from: logged (what the policy "
            "scored when the offer was made, carried by the record) or rebuilt (from the offer "
            "with the prices and conversion model of the moment it was read: older workers' "
            "records, decisions evicted or not yet indexed). Counted by the worker when it "
            "publishes (process worker) and by the trainer when it buffers (process trainer).",
            ["process", "source"],
            registry=self.registry,
        )
        self.reward_drifts = Counter(
            "streamer_reward_drifts",
            "Drifts detected on a policy version's reward stream (ADWIN) by the process whose "
            "conversion model learns it: each made the model forget its per-bundle history "
            "(ConversionModel.drift_keep), and the trainer fine-tune early.",
            ["process", "policy_version"],
            registry=self.registry,
        )
        self.unversioned_outcomes = Counter(
            "streamer_unversioned_outcomes",
            "Closed impressions whose offer was never found (no policy version to credit).",
            registry=self.registry,
        )
        self.reward_impressions = Counter(
            "streamer_reward_impressions",
            "Offer impressions whose attribution window closed, per policy version.",
            ["policy_version"],
            registry=self.registry,
        )
        self.reward_offer_clicks = Counter(
            "streamer_reward_offer_clicks",
            "Closed impressions that were clicked, per policy version.",
            ["policy_version"],
            registry=self.registry,
        )
        self.reward_conversions = Counter(
            "streamer_reward_conversions",
            "Closed impressions with an attributed purchase, per policy version.",
            ["policy_version"],
            registry=self.registry,
        )
        self.reward_revenue = Counter(
            "streamer_reward_revenue",
            "Attributed bundle revenue of closed impressions, per policy version.",
            ["policy_version"],
            registry=self.registry,
        )
        self.reward_sum = Counter(
            "streamer_reward_sum",
            "Summed positive reward of closed impressions, per policy version (mean reward: "
            "(streamer_reward_sum - streamer_reward_loss) / impressions).",
            ["policy_version"],
            registry=self.registry,
        )
        # A counter only goes up, and a margin reward can be negative (an offer whose discount
        # cost more than its margin): the losses are counted apart, not clipped to 0.
        self.reward_loss = Counter(
            "streamer_reward_loss",
            "Summed magnitude of the negative rewards of closed impressions (margin rewards), "
            "per policy version.",
            ["policy_version"],
            registry=self.registry,
        )
        self.reward_windows = Counter(
            "streamer_reward_windows_published",
            "Closed reward windows published to the rewards topic, per window spec.",
            ["window"],
            registry=self.registry,
        )
        self.reward_rate = Gauge(
            "streamer_reward_per_impression",
            "Reward per impression of the newest closed window, per version and window spec.",
            ["policy_version", "window"],
            registry=self.registry,
        )
        self.reward_rate_lower = Gauge(
            "streamer_reward_per_impression_lower",
            "Lower 95% bound of streamer_reward_per_impression.",
            ["policy_version", "window"],
            registry=self.registry,
        )
        self.reward_rate_upper = Gauge(
            "streamer_reward_per_impression_upper",
            "Upper 95% bound of streamer_reward_per_impression.",
            ["policy_version", "window"],
            registry=self.registry,
        )
        self.open_sessions = Gauge(
            "streamer_attribution_open_sessions",
            "Sessions with impressions or purchases still inside an attribution window.",
            registry=self.registry,
        )
        self.open_windows = Gauge(
            "streamer_reward_open_windows",
            "Reward windows not yet closed on this worker.",
            registry=self.registry,
        )
        self.offer_index_size = Gauge(
            "streamer_offer_index_size",
            "Offers held by the worker's offer index for attribution.",
            registry=self.registry,
        )
        # -- guardrails ---------------------------------------------------------------------
        self.srm_p_value = Gauge(
            "streamer_guardrail_srm_p_value",
            "p-value of the sample-ratio-mismatch test over the newest windows (1: no test).",
            registry=self.registry,
        )
        self.guardrail_alarm = Gauge(
            "streamer_guardrail_alarm",
            "1 while a guardrail alarms (srm, reward_regression), else 0.",
            ["guardrail"],
            registry=self.registry,
        )
        self.guardrail_alarms = Counter(
            "streamer_guardrail_alarms",
            "Times a guardrail started alarming, per guardrail.",
            ["guardrail"],
            registry=self.registry,
        )
        # -- policy versions a worker follows (policy-updates) ---------------------------------
        self.policy_adoptions = Counter(
            "streamer_policy_adoptions",
            "Times this worker made a policy version live (promotion or rollback), per version.",
            ["version"],
            registry=self.registry,
        )
        self.policy_refused = Counter(
            "streamer_policy_refused",
            "policy-updates records refused (untrusted weights, features the worker does not "
            "compute, rollback to an unknown version).",
            registry=self.registry,
        )
        for guardrail in ("srm", "reward_regression"):
            self.guardrail_alarm.labels(guardrail).set(0)
        self.srm_p_value.set(1.0)

    def exposed_names(self) -> set[str]:
        """Every metric name as Prometheus exposes it (counters with ``_total``).

        >>> {"streamer_events_consumed_total", "streamer_consumer_lag"} <= Metrics().exposed_names()
        True
        """
        names: set[str] = set()
        for metric in self.registry.collect():
            names.add(f"{metric.name}_total" if metric.type == "counter" else metric.name)
        return names

    def snapshot(self) -> dict[str, object]:
        """Current values as plain JSON-able data (for the stats page and the demo)."""
        return _snapshot(self.registry.collect())


class TrainerMetrics(Metrics):
    """The trainer's metrics: :class:`Metrics` (it counts what it consumes, and reward drifts)
    and its candidates' verdicts, which only the trainer has (workers do not expose them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.trainer_promotions = Counter(
            "streamer_trainer_promotions",
            "Policy versions the trainer promoted (lower bound beat the live policy).",
            registry=self.registry,
        )
        self.trainer_rejections = Counter(
            "streamer_trainer_rejections",
            "Candidate policy versions the trainer rejected, per reason.",
            ["reason"],
            registry=self.registry,
        )
        self.trainer_skips = Counter(
            "streamer_trainer_skips",
            "Fine-tune rounds the trainer ended without a candidate, per reason (features: "
            "skipped, the live version reads features its feedback buffer does not hold; "
            "too_few_live: skipped, the holdout would hold too few records the live version "
            "logged to judge a candidate; shutdown: abandoned mid-fine-tune because the "
            "trainer was asked to stop).",
            ["reason"],
            registry=self.registry,
        )
        self.trainer_gate_margin = Gauge(
            "streamer_trainer_gate_margin",
            "The last judged candidate's paired lower bound of its reward per impression minus "
            "the live policy's: promoted above 0 (0 before the first candidate).",
            registry=self.registry,
        )
        self.trainer_unsupported_mass = Gauge(
            "streamer_trainer_unsupported_mass",
            "The last judged candidate's mean probability on variants its holdout's logging "
            "policy could not show (valued at trainer.unsupported_reward by the gate).",
            registry=self.registry,
        )


def parse_snapshot(text: str) -> dict[str, object]:
    """:meth:`Metrics.snapshot` of another process, from its ``/metrics`` page (the
    Prometheus text format; the demo reads the trainer's).

    >>> m = TrainerMetrics()
    >>> m.trainer_rejections.labels("gate").inc(2)
    >>> from prometheus_client import generate_latest
    >>> snap = parse_snapshot(generate_latest(m.registry).decode())
    >>> snap["streamer_trainer_rejections_total"], snap["streamer_trainer_promotions_total"]
    ({'gate': 2.0}, 0.0)
    """
    from prometheus_client.parser import text_string_to_metric_families

    return _snapshot(text_string_to_metric_families(text))


def _snapshot(metrics: Iterable[Metric]) -> dict[str, object]:
    out: dict[str, object] = {}
    for metric in metrics:
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                label = ",".join(f"{v}" for v in sample.labels.values())
                bucket = out.setdefault(sample.name, {})
                assert isinstance(bucket, dict)
                bucket[label] = sample.value
            else:
                out[sample.name] = sample.value
    return out


def configure_logging(level: str = "info", *, json: bool = False) -> None:
    """Plain lines on a terminal, one JSON object per line in production."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        fmt = (
            '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
            '"message":"%(message)s"}'
        )
    else:
        fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
