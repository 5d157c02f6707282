"""Logging presets and the metrics registry (Prometheus).

Metrics live in one :class:`Metrics` object per process with its own registry, so tests and
the demo can run several apps in one interpreter without clashing on global names.
"""

from __future__ import annotations

import logging
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge


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
        self.offers_published = Counter(
            "streamer_offers_published", "Offers published to the offers topic.",
            registry=self.registry,
        )
        self.tracked_items = Gauge(
            "streamer_tracked_items", "Items with co-purchase state on this worker.",
            registry=self.registry,
        )

    def snapshot(self) -> dict[str, object]:
        """Current values as plain JSON-able data (for the stats page and the demo)."""
        out: dict[str, object] = {}
        for metric in self.registry.collect():
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
