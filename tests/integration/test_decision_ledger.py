"""The decision ledger on the real broker: an offer goes out, an impression of it closes, and
the ``feedback`` record carries the decision the worker's engine scored when it made the offer
(not one rebuilt when the impression closed); the trainer buffers it as it is. A record of an
offer the worker did not decide has none, and both processes count its rebuild."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msgspec
import numpy as np
import pytest

from streamer.app.factory import engine_config
from streamer.app.reward_tracking import FeedbackRecord
from streamer.app.trainer import FeedbackTrainer, feedback_fields, run_trainer
from streamer.engine import DecisionLog, Engine, EngineState, OfferDecision, logged_decision
from streamer.events import (
    BundleOffer,
    ClickEvent,
    EventCodec,
    Evidence,
    OrderLine,
    PurchaseEvent,
    Variant,
)
from streamer.observability import Metrics
from streamer.online import FEATURE_NAMES
from streamer.settings import RewardSettings, Settings, TrainerSettings
from tests.conftest import consume, produce, wait_for

pytestmark = pytest.mark.integration
encode = msgspec.json.encode


def fast_rewards(settings: Settings) -> Settings:
    """Seconds instead of half an hour, so the impression closes within the test."""
    return settings.model_copy(update={
        "rewards": RewardSettings(attribution_window_s=1.0, allowed_lateness_s=0.2,
                                  windows="2s", ledger_lateness_s=0.2, tick_interval_s=0.3,
                                  min_impressions=1, min_conversions=0),
        "trainer": TrainerSettings(min_records=1000, every_records=1000, buffer_records=100,
                                   offer_index_size=100),
    })


def scored_in_process(settings: Settings, purchase: PurchaseEvent) -> dict[str, OfferDecision]:
    """The decisions an engine of the worker's configuration logs for ``purchase``."""
    config = engine_config(settings)
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine(config, EngineState.in_memory(), Engine.v0_policy(config), decisions=log)
    offers = engine.handle_purchase(purchase)
    assert offers
    return {o.offer_id: d for o in offers if (d := log.get(o.offer_id)) is not None}


def counted(metrics: Metrics, process: str, source: str) -> float:
    value = metrics.registry.get_sample_value(
        "streamer_feedback_decisions_total", {"process": process, "source": source})
    return value or 0.0


def core_buffered(metrics: Metrics) -> float:
    return counted(metrics, "trainer", "logged") + counted(metrics, "trainer", "rebuilt")


def test_feedback_carries_the_decision_the_engine_scored(
    settings: Settings, start_worker: Any
) -> None:
    settings = fast_rewards(settings)
    t = settings.topics
    worker = start_worker(settings)
    now = int(time.time() * 1000)
    purchase = PurchaseEvent(
        event_id="p1", ts=now, user_id="u", session_id="buyer", order_id="o1",
        items=[OrderLine(item_id=i, quantity=1, unit_price=p)
               for i, p in (("tea", 6.0), ("cup", 4.0), ("jam", 3.0))])
    expected = scored_in_process(settings, purchase)
    produce(settings, t.purchases, [(b"buyer", encode(purchase))])
    codec = EventCodec()
    records = consume(settings, t.offers, lambda rs: len(rs) >= 3, timeout_s=30)
    offers = [codec.decode_offer(r.value) for r in records]
    offer: BundleOffer = next(o for o in offers if o.anchor_item_id == "tea")
    assert offer.offer_id in expected  # the worker made the very offer the engine makes
    decision = expected[offer.offer_id]
    assert len(decision.rows) > len(offer.variants) >= 1  # every candidate x discount scored

    # A shopper sees it, and the impression closes after the attribution window.
    shown = len(offer.variants) - 1
    impression = ClickEvent(event_id="i1", ts=now + 10, user_id="v", session_id="shopper",
                            item_id="tea", kind="offer_impression", offer_id=offer.offer_id,
                            variant=shown, propensity=offer.variants[shown].probability)
    produce(settings, t.clicks, [(b"shopper", encode(impression))])
    feedback = consume(settings, t.feedback, lambda rs: len(rs) >= 1, timeout_s=30)
    record = msgspec.json.decode(feedback[0].value, type=FeedbackRecord)
    assert record.outcome.offer_id == offer.offer_id
    assert record.decision == decision
    carried = logged_decision(feedback_fields(msgspec.json.decode(feedback[0].value), "any"),
                              offer)
    assert carried.variant_features == decision.variant_features()
    assert carried.chosen == decision.shown[shown]
    assert carried.expected_rewards == decision.expected_rewards
    sources = worker.stats().get("streamer_feedback_decisions_total", {})
    assert sources == {"worker,logged": 1.0}

    # An offer this worker never decided (an older worker's): its record has no decision,
    # and the worker counts it as one the trainer must rebuild.
    old = BundleOffer(offer_id="old-1", ts=now, anchor_item_id="mug", segment="all",
                      policy_version="v0-greedy", expires_at=now + 3_600_000,
                      variants=[Variant(items=["mug", "tea"], discount_pct=10.0,
                                        bundle_price=9.0, probability=1.0, score=1.0,
                                        evidence=Evidence(support=2.0, confidence=0.5,
                                                          lift=1.5))])
    produce(settings, t.offers, [(b"mug", encode(old))])
    wait_for(lambda: worker.stats().get("offer_index_size", 0) >= 4, 30,
             "the worker to index the old offer")
    later = int(time.time() * 1000)  # event time goes on: an old ts would be too late
    produce(settings, t.clicks, [(b"other", encode(ClickEvent(
        event_id="i2", ts=later, user_id="w", session_id="other", item_id="mug",
        kind="offer_impression", offer_id="old-1", variant=0, propensity=1.0)))])
    feedback = consume(settings, t.feedback, lambda rs: len(rs) >= 2, timeout_s=30)
    records = [msgspec.json.decode(r.value, type=FeedbackRecord) for r in feedback]
    assert len(records) == 2, [(r.outcome.impression_id, r.outcome.offer_id) for r in records]
    assert {r.outcome.offer_id: r.decision is None for r in records} == {
        offer.offer_id: False, "old-1": True}
    wait_for(lambda: worker.stats().get("streamer_feedback_decisions_total") == {
        "worker,logged": 1.0, "worker,rebuilt": 1.0}, 10, "the worker to count the rebuild")

    # The trainer buffers it as it is: nothing rebuilt.
    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    done: dict[str, FeedbackTrainer] = {}

    def train() -> None:
        done["core"] = loop.run_until_complete(run_trainer(settings, stop=stop,
                                                           metrics=metrics))

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        wait_for(lambda: core_buffered(metrics) >= 2 or not thread.is_alive(),
                 60, "the trainer to buffer both records")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    core = done["core"]
    assert core.decision_sources == {"logged": 1, "rebuilt": 1}
    assert counted(metrics, "trainer", "logged") == counted(metrics, "trainer", "rebuilt") == 1
    batch = core.trainer.buffer.snapshot()
    rows = decision.variant_features()
    [i] = [i for i in range(len(batch)) if batch.valid[i].sum() == len(rows)]
    np.testing.assert_array_equal(
        batch.features[i, :len(rows)],
        np.array([[r[f] for f in FEATURE_NAMES] for r in rows], dtype=np.float32))
    assert batch.chosen[i] == decision.shown[shown]
