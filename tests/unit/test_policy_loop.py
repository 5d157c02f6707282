"""The learning loop without Kafka: hot swap, feedback decoding, the trainer's device and
gate, refusing non-finite versions, rollbacks."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from aiokafka import TopicPartition
from pydantic import ValidationError
from safetensors.torch import load, save

from streamer.app.policy_updates import PolicyFollower
from streamer.app.reward_tracking import FeedbackRecord
from streamer.app.trainer import (
    FeedbackTrainer,
    FineTuneJob,
    _abandon,
    _dispatch,
    _publish,
    _read_to_end,
    feedback_fields,
    rejection_label,
    trainer_core,
)
from streamer.engine import Engine, EngineConfig, logged_decision
from streamer.events import EventCodec, PurchaseEvent
from streamer.observability import Metrics, TrainerMetrics
from streamer.online import FEATURE_NAMES
from streamer.online.propensity import AFTER_CLICK_PRIOR_WEIGHT
from streamer.policy import (
    FineTuneAbandoned,
    PolicyVersions,
    TorchPolicy,
    UnsafeCheckpointError,
    policy_to_bytes,
    rollback_record,
)
from streamer.policy.checkpoint import _header_metadata, policy_from_bytes
from streamer.policy.training import TOO_FEW_LIVE
from streamer.rewards import ImpressionOutcome
from streamer.settings import Settings, TrainerSettings
from tests.conftest import random_orders

T0 = 1_700_000_000_000
ITEMS = [f"i{k}" for k in range(30)]


def orders(n: int, seed: int = 0) -> list[PurchaseEvent]:
    return random_orders(n, ITEMS, seed=seed)


def torch_policy(seed: int) -> TorchPolicy:
    return TorchPolicy.initial(FEATURE_NAMES, seed=seed)


CONFIG = EngineConfig(min_support=1.0, min_interval_ms=0)


def test_hot_swap_under_load_loses_no_event() -> None:
    events = orders(1500)
    steady = Engine.in_memory(CONFIG)
    for e in events:
        steady.handle_purchase(e)
    swapped = Engine.in_memory(CONFIG)
    policies = [torch_policy(1), torch_policy(2), Engine.v0_policy(CONFIG)]
    stop = threading.Event()

    def swap_from_another_thread() -> None:
        k = 0
        while not stop.is_set():
            swapped.set_policy(policies[k % 3])
            k += 1

    swapper = threading.Thread(target=swap_from_another_thread)
    swapper.start()
    published = []
    try:
        for e in events:
            published += swapped.handle_purchase(e)
    finally:
        stop.set()
        swapper.join()
    # Every event learned exactly once, whatever the policy was at each moment.
    assert dict(swapped.state.items) == dict(steady.state.items)
    assert dict(swapped.state.counts) == dict(steady.state.counts)
    assert dict(swapped.state.catalog) == dict(steady.state.catalog)
    assert {o.policy_version for o in published} <= {p.version for p in policies}
    # After a swap, the next offer carries the new version.
    final = torch_policy(3)
    swapped.set_policy(final)
    more = [o for e in orders(20, seed=1) for o in swapped.handle_purchase(
        PurchaseEvent(event_id=f"x{e.event_id}", ts=e.ts + 10**7, user_id="u",
                      session_id=e.session_id, order_id=e.order_id, items=e.items))]
    assert more and {o.policy_version for o in more} == {final.version}


def test_logged_decision_rebuilds_the_features_the_engine_served() -> None:
    policy = torch_policy(0)
    decisions: list[Any] = []

    class Recording:
        version = policy.version

        def propose(self, anchor: str, candidates: Any, featurizer: Any = None) -> Any:
            decisions.append(policy.decide(anchor, candidates, featurizer))
            return decisions[-1].proposals

    engine = Engine.in_memory(CONFIG)
    engine.set_policy(Recording())
    offers = [o for e in orders(300) for o in engine.handle_purchase(e)]
    offer = offers[-1]

    def same(decision: Any) -> bool:
        return [(list(p.candidate.items), p.discount_pct, p.probability)
                for p in decision.proposals] == [
            (v.items, v.discount_pct, v.probability) for v in offer.variants]

    served = [d for d in decisions if same(d)][-1]
    for k, shown in enumerate(offer.variants):
        d = logged_decision({"offer_id": offer.offer_id, "variant": k,
                             "propensity": shown.probability, "reward": 0.0, "ts": offer.ts},
                            offer, prices=dict(engine.state.catalog),
                            conversion=engine.conversion)
        row = d.variant_features[d.chosen]
        assert row == pytest.approx(dict(served.variant_features[served.shown[k]]))
        assert d.propensity == shown.probability
    with pytest.raises(ValueError):
        logged_decision({"offer_id": offer.offer_id, "variant": 9, "propensity": 0.5,
                         "reward": 1.0}, offer)


def bandit_records(n: int, offer_id: str, seed: int = 0, *, logging: list[float] | None = None,
                   version: str | None = None) -> list[dict[str, Any]]:
    """Feedback of a 4-action bandit (action 2 converts best), shown uniformly, or action a
    with probability ``logging[a]``; logged by ``version`` when given."""
    rng = np.random.default_rng(seed)
    p = np.array([0.05, 0.1, 0.4, 0.1])
    out = []
    for _ in range(n):
        rows = [dict.fromkeys(FEATURE_NAMES, 0.0) for _ in range(4)]
        for a, row in enumerate(rows):
            row["confidence"], row["discount"] = float(a == 2), 0.05 * a
        if logging is None:
            chosen, propensity = int(rng.integers(0, 4)), 0.25
        else:
            chosen = int(rng.choice(4, p=logging))
            propensity = logging[chosen]
        reward = 10.0 if rng.random() < p[chosen] else 0.0
        record = {"offer_id": offer_id, "variant": 0, "propensity": propensity,
                  "reward": reward, "variant_features": rows, "chosen": chosen,
                  "expected_rewards": [float(x) for x in p * 10],
                  "support": [a for a in range(4) if logging is None or logging[a] > 0]}
        if version is not None:
            record["policy_version"] = version
        out.append(record)
    return out


def trainer_with_feedback(n: int = 600, *, max_variants: int | None = None,
                          version: str | None = None, **overrides: Any) -> FeedbackTrainer:
    config = TrainerSettings(min_records=100, every_records=n, epochs=6, batch_size=64,
                             learning_rate=0.02, device="auto", **overrides)
    core = FeedbackTrainer(config, base_version="v0-greedy", max_variants=max_variants)
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    core.observe_offer(offer)
    for record in bandit_records(n, offer.offer_id, version=version):
        assert core.observe_feedback(record)
    return core


def logged_by(core: FeedbackTrainer, version: str, n: int = 200, seed: int = 7) -> None:
    """``n`` more records of the bandit, logged by ``version``: the newest a holdout judges
    it on."""
    offer_id = next(iter(core.offers))
    for record in bandit_records(n, offer_id, seed, version=version):
        assert core.observe_feedback(record)


def test_trainer_picks_the_cpu_without_a_gpu_and_records_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    core = trainer_with_feedback(max_threads=1)
    job = core.next_job(now_s=0.0)
    assert job is not None and job.live_version == "v0-greedy" and not job.live_is_torch
    result = core.run(job)
    core.finish(job, result, now_s=1.0)
    assert result.device == "cpu" and result.metadata()["device"] == "cpu"
    assert torch.get_num_threads() == 1
    assert result.promoted, result.reason  # beats what v0 logged
    assert core.trainer.history[-1]["device"] == "cpu"
    assert core.next_job(now_s=2.0) is None  # triggers reset


def test_the_gate_confidence_setting_is_the_confidence_candidates_are_judged_at() -> None:
    lower_bounds = []
    for confidence in (0.5, 0.999):
        core = trainer_with_feedback(max_threads=1, gate_confidence=confidence)
        job = core.next_job(now_s=0.0)
        assert job is not None
        result = core.run(job)
        assert result.difference is not None
        assert result.difference.confidence == confidence
        lower_bounds.append(result.difference.lower)
    # The same records and seed: the same candidate, its bound wider at the higher confidence.
    assert lower_bounds[1] < lower_bounds[0]
    with pytest.raises(ValueError, match="gate_confidence"):
        TrainerSettings(gate_confidence=1.0)


def test_a_reward_drift_makes_the_trainer_forget_bundles_and_fine_tune_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=100, every_records=100_000),
                           base_version="v0-greedy")
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    core.observe_offer(offer)
    forgot: list[int] = []
    monkeypatch.setattr(core.conversion, "forget_bundles",
                        lambda keep=None: forgot.append(core.buffered))
    records = bandit_records(3000, offer.offer_id)
    for i, record in enumerate(records[:1500]):
        assert core.observe_feedback(record)
        assert not forgot, i  # a steady stream: no drift
    assert core.trainer.due(0.0) is None
    for record in records[1500:]:  # the offers stop earning
        assert core.observe_feedback(record | {"reward": 0.0})
    assert forgot and 1500 < forgot[0] < 2000
    drifts = core.metrics.registry.get_sample_value(
        "streamer_reward_drifts_total",
        {"process": "trainer", "policy_version": offer.policy_version})
    assert drifts == len(forgot)
    assert core.trainer.due(0.0) is not None  # and fine-tunes early


def test_the_worker_resets_its_conversion_model_when_a_versions_reward_drifts() -> None:
    from streamer.app.factory import learn_outcome
    from streamer.online import DriftMonitor

    engine = Engine.in_memory(CONFIG, drift=DriftMonitor())
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    shown = offer.variants[0]
    rng = np.random.default_rng(1)

    def outcome(i: int, bought: bool) -> ImpressionOutcome:
        paid = 10.0 * bought
        return ImpressionOutcome(
            impression_id=f"i{i}", ts=T0 + i, session_id="s", user_id="u",
            offer_id=offer.offer_id, variant=0, propensity=shown.probability,
            policy_version=offer.policy_version, anchor_item_id=offer.anchor_item_id,
            segment=offer.segment, items=tuple(shown.items), discount_pct=shown.discount_pct,
            clicked=bought, converted=bought, revenue=paid, reward=paid, purchase_ids=(),
            attributed_at=T0 + i, late=False, attribution="offer" if bought else "none",
            direct_revenue=paid, direct_reward=paid)

    fired = [i for i in range(3000)  # the offer sells on a fifth of impressions, then never
             if learn_outcome(engine, outcome(i, i < 1500 and rng.random() < 0.2), offer,
                              None, "offer")]
    assert fired and 1500 <= fired[0] < 1900
    assert engine.reward_drifts == len(fired) and engine.conversion.n_learned == 3000
    # An outcome whose offer the worker does not know teaches nothing.
    assert not learn_outcome(engine, outcome(3000, True), None, None, "offer")
    assert engine.conversion.n_learned == 3000


def test_feedback_waits_for_its_offer() -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    record = {"offer_id": offer.offer_id, "variant": 0,
              "propensity": offer.variants[0].probability, "reward": 3.0, "converted": True}
    assert not core.observe_feedback(record) and core.n_pending == 1
    assert core.observe_offer(offer) == 1 and len(core.trainer.buffer) == 1


def test_feedback_carrying_its_decision_needs_no_offer() -> None:
    # The worker's records carry the decision logged when the offer was made: the trainer
    # takes it as it is, whether or not it has read the offer yet.
    from streamer.engine import DecisionLog

    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    decision = log.get(offer.offer_id)
    assert decision is not None
    record = {"offer_id": offer.offer_id, "variant": 0, "policy_version": "v0-greedy",
              "propensity": offer.variants[0].probability, "reward": 3.0, "converted": True,
              "decision": msgspec.to_builtins(decision)}
    assert core.observe_feedback(record) and core.n_pending == 0
    assert core.decision_sources["logged"] == 1
    assert len(core.trainer.buffer) == 1
    # Without the offer, a decision of another offer, or a variant it did not show, is refused.
    for bad in ({"offer_id": "of-other"}, {"variant": len(decision.shown)}):
        with pytest.raises(ValueError):
            logged_decision(record | bad, None)
    # A record without its decision still needs its offer to be rebuilt.
    with pytest.raises(ValueError):
        logged_decision({k: v for k, v in record.items() if k != "decision"}, None)


FLAT = b'"offer_id":"o","variant":0,"propensity":0.5,"reward":1.0'


@pytest.mark.parametrize("value", [
    b"[" * 50_000 + b"]" * 50_000,  # 100 KB, under kafka.max_message_bytes
    b'{"offer_id":"o","decision":{},"variant":1e999,"propensity":0.5,"reward":1.0}',
    b'{"offer_id":"\xff",' + FLAT[13:] + b"}",  # invalid UTF-8
    b"{" + FLAT + b',"variant_features":[1],"chosen":0}',
    b"{" + FLAT + b',"variant_features":[{"x":1.0}],"chosen":null}',
    b"{" + FLAT + b',"variant_features":[{"x":1.0}],"chosen":0,"expected_rewards":[null]}',
    b"{" + FLAT + b',"variant_features":[{"x":1.0}],"chosen":0,"expected_rewards":5}',
    b"[1]",  # not an object
    b'{"x":"' + b"y" * 300_000 + b'"}',
])
def test_a_malformed_feedback_record_is_skipped_and_counted(value: bytes) -> None:
    # Raised out of _dispatch, it ended run_trainer; restarted, the trainer reads feedback
    # from the beginning and met it again.
    settings = Settings()
    core = FeedbackTrainer(settings.trainer, base_version="v0-greedy")
    record = SimpleNamespace(value=value, partition=0, offset=0)
    _dispatch(core, EventCodec(settings.kafka.max_message_bytes), settings.topics.feedback,
              record, settings, TrainerMetrics())
    assert (core.invalid, core.buffered) == (1, 0)


def test_an_embedded_offer_nested_deeper_than_json_encodes_is_no_offer() -> None:
    core = FeedbackTrainer(TrainerSettings(), base_version="v0-greedy")
    nested: list[Any] = []
    for _ in range(2000):
        nested = [nested]
    record = {"offer_id": "o", "variant": 0, "propensity": 0.5, "reward": 1.0,
              "offer": {"variants": nested}}
    assert not core.observe_feedback(record) and core.n_pending == 1  # waits for its offer


def test_an_impression_republished_after_a_crash_is_trained_on_once() -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    core.observe_offer(offer)

    def record(impression: str) -> dict[str, Any]:
        return {"impression_id": impression, "ts": 1_700_000_000_000,
                "offer_id": offer.offer_id, "variant": 0,
                "propensity": offer.variants[0].probability, "reward": 3.0, "converted": True}

    assert core.observe_feedback(record("i1"))
    assert not core.observe_feedback(record("i1"))  # the worker published it again
    assert core.observe_feedback(record("i2"))
    assert len(core.trainer.buffer) == 2 and core.duplicates == 1


def test_a_waiting_record_is_not_taken_for_its_own_duplicate() -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    rec = {"impression_id": "i1", "ts": 1_700_000_000_000, "offer_id": offer.offer_id,
           "variant": 0, "propensity": offer.variants[0].probability, "reward": 0.0}
    assert not core.observe_feedback(rec)  # waits for its offer
    assert core.observe_offer(offer) == 1 and core.duplicates == 0


def worker_record(offer: Any, impression: str, attribution: str, reward: float,
                  direct: float, clicked: bool = False) -> dict[str, Any]:
    """A feedback record as a worker publishes it (nested FeedbackRecord), as JSON decodes it."""
    outcome = ImpressionOutcome(
        impression_id=impression, ts=offer.ts, session_id="s", user_id="u",
        offer_id=offer.offer_id, variant=0, propensity=offer.variants[0].probability,
        policy_version=offer.policy_version, anchor_item_id=offer.anchor_item_id,
        segment=offer.segment, items=tuple(offer.variants[0].items),
        discount_pct=offer.variants[0].discount_pct, clicked=clicked, converted=reward > 0,
        revenue=reward, reward=reward, purchase_ids=("p",) if reward > 0 else (),
        attributed_at=offer.ts, late=False, attribution=attribution,  # type: ignore[arg-type]
        direct_revenue=direct, direct_reward=direct)
    body: dict[str, Any] = json.loads(msgspec.json.encode(FeedbackRecord.build(outcome, offer)))
    return body


@pytest.mark.parametrize(("mode", "rewards", "conversions"), [
    ("offer", [0.0, 12.0, 0.0], 1),  # the basket-only conversion earns nothing
    ("any", [30.0, 20.0, 0.0], 2),
])
def test_trainer_learns_the_configured_reward_from_workers_records(
    mode: str, rewards: list[float], conversions: int
) -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy",
                           reward_attribution=mode)  # type: ignore[arg-type]
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    core.observe_offer(offer)
    records = [worker_record(offer, "i1", "basket", 30.0, 0.0),
               worker_record(offer, "i2", "offer", 20.0, 12.0),  # plus a basket: 8.0
               worker_record(offer, "i3", "none", 0.0, 0.0)]
    assert all(core.observe_feedback(r) for r in records)  # nested records are read
    assert core.trainer.buffer.snapshot().reward.tolist() == rewards
    assert core.conversion.n_converted == conversions


def test_trainer_conversion_model_learns_the_records_clicks() -> None:
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    engine = Engine.in_memory(CONFIG)
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    core.observe_offer(offer)
    records = [worker_record(offer, "i1", "offer", 20.0, 20.0, clicked=True),
               worker_record(offer, "i2", "none", 0.0, 0.0, clicked=True),  # clicked, no buy
               worker_record(offer, "i3", "none", 0.0, 0.0)]
    assert all(core.observe_feedback(r) for r in records)
    model = core.conversion
    assert (model.n_clicked, model.n_known_clicks, model.n_converted) == (2, 2, 1)
    # A click that did not convert: the after-click stage is in use (before its warm-up,
    # one conversion of two clicks shrunk towards 1/2).
    w = AFTER_CLICK_PRIOR_WEIGHT
    assert model.buy_after_click({}) == pytest.approx((1 + w / 2) / (2 + w))


def test_reward_attribution_setting_defaults_to_the_offer_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().policy.reward_attribution == "offer"
    monkeypatch.setenv("STREAMER__POLICY__REWARD_ATTRIBUTION", "any")
    assert Settings().policy.reward_attribution == "any"
    monkeypatch.setenv("STREAMER__POLICY__REWARD_ATTRIBUTION", "basket")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValueError, match="reward attribution"):
        feedback_fields({"reward": 1.0}, "basket")  # type: ignore[arg-type]


def nan_checkpoint(policy: TorchPolicy) -> bytes:
    good = policy_to_bytes(policy)
    tensors = load(good)
    next(iter(tensors.values())).view(-1)[0] = float("nan")
    return save(tensors, metadata=_header_metadata(good))


def test_a_nan_candidate_is_never_published_nor_adopted() -> None:
    bad = torch_policy(5)
    with torch.no_grad():
        next(bad.scorer.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(UnsafeCheckpointError):
        policy_to_bytes(bad)  # the trainer cannot even serialise it
    core = trainer_with_feedback()
    job = core.next_job(now_s=0.0)
    assert job is not None
    result = core.run(type(job)(start=bad, live_version="v0-greedy", live_is_torch=False,
                                batch=job.batch, records_at_start=job.records_at_start,
                                reason="test"))
    assert not result.promoted and "non-finite" in result.reason
    # A worker refuses such a record even if one reached the topic.
    engine = Engine.in_memory(CONFIG)
    follower = PolicyFollower(Settings(), engine, Metrics())
    assert follower.apply(nan_checkpoint(torch_policy(6))) is None
    assert engine.policy.version == "v0-greedy"
    assert follower.metrics.snapshot()["streamer_policy_refused_total"] == 1.0


def test_rollback_returns_to_an_earlier_version_and_refuses_unknown_ones() -> None:
    engine = Engine.in_memory(CONFIG)
    follower = PolicyFollower(Settings(), engine, Metrics())
    v1, v2 = torch_policy(1), torch_policy(2)
    follower.apply(policy_to_bytes(v1, {"estimate": 1.0}))
    follower.apply(policy_to_bytes(v2, {"estimate": 2.0}))
    assert engine.policy.version == v2.version
    change = follower.apply(rollback_record(v1.version))
    assert change is not None and change.kind == "rollback"
    assert engine.policy.version == v1.version
    assert follower.apply(rollback_record("torch-000000000000")) is None
    assert engine.policy.version == v1.version
    follower.apply(rollback_record("v0-greedy"))
    assert engine.policy.version == "v0-greedy"
    assert [(v.version, v.live) for v in follower.versions.versions()] == [
        ("v0-greedy", True), (v1.version, False), (v2.version, False)]
    offer = next(o for e in orders(50) for o in engine.handle_purchase(e))
    assert offer.policy_version == "v0-greedy"


@pytest.mark.parametrize("record", [
    b'{"kind":' + b"[" * 5000 + b"]" * 5000 + b"}",  # 10 KB: under the size limit
    b'{"kind":"rollback","version":"v0-greedy","note":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"kind":"rollback","version":"v0-gr\xffedy"}',  # invalid UTF-8
    b'{"kind":"rollback","version":17}',
    b'{"kind":"rollback","version":""}',
    b'{"kind":"rollforward","version":"v0-greedy"}',
    b'{"kind":"rollback","version":"v0-greedy","reason":"' + b"x" * 20_000 + b'"}',
])
def test_a_record_that_only_starts_like_a_rollback_is_refused_by_every_reader(
        record: bytes) -> None:
    # The topic is kept forever: anything raised here other than the refusal would stop
    # every worker, the trainer and `streamer policy` on every start.
    versions = PolicyVersions(base_version="v0-greedy")
    versions.apply(policy_to_bytes(v1 := torch_policy(1)))
    with pytest.raises(ValueError, match="malformed rollback record"):
        versions.apply(record)
    assert (versions.live_version, versions.rejected) == (v1.version, 1)
    follower = PolicyFollower(Settings(), Engine.in_memory(CONFIG), Metrics())
    assert follower.apply(record) is None
    assert follower.metrics.snapshot()["streamer_policy_refused_total"] == 1.0
    core = FeedbackTrainer(TrainerSettings(), base_version="v0-greedy")
    assert core.observe_policy_update(record) is None


def test_a_version_discounting_deeper_than_an_offer_may_is_refused_by_every_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A level of 95 passed the policy's own check ([0, 100)) and the version was adopted;
    # then every offer it made failed the offers schema (discount_pct <= 90) downstream.
    # Written as a writer without the cap (crafted, or a release before it) writes it.
    from streamer.policy import torch_policy as module

    monkeypatch.setattr(module, "MAX_DISCOUNT_PCT", 100.0)
    deep = policy_to_bytes(TorchPolicy.initial(FEATURE_NAMES, seed=1,
                                               discount_levels=(10.0, 95.0)))
    monkeypatch.undo()
    versions = PolicyVersions(base_version="v0-greedy", features=FEATURE_NAMES)
    with pytest.raises(UnsafeCheckpointError, match=r"discount levels must be in \[0, 90\]"):
        versions.apply(deep)
    assert (versions.live_version, versions.rejected) == ("v0-greedy", 1)
    engine = Engine.in_memory(CONFIG)
    follower = PolicyFollower(Settings(), engine, Metrics())
    assert follower.apply(deep) is None
    assert engine.policy.version == "v0-greedy"
    assert follower.metrics.snapshot()["streamer_policy_refused_total"] == 1.0
    core = FeedbackTrainer(TrainerSettings(), base_version="v0-greedy")
    assert core.observe_policy_update(deep) is None
    # The cap itself is a level a version may have, and its offers pass the codec.
    capped = TorchPolicy.initial(FEATURE_NAMES, seed=1, discount_levels=(90.0,))
    assert follower.apply(policy_to_bytes(capped)) is not None
    offers = [o for e in orders(50) for o in engine.handle_purchase(e)]
    assert {v.discount_pct for o in offers for v in o.variants} == {90.0}
    codec = EventCodec()
    for offer in offers:
        codec.decode_coherent_offer(codec.encode(offer))


def test_a_torch_live_version_is_judged_on_its_own_impressions_only() -> None:
    # Judged off-policy on v0's impressions, the live version's probability on variants v0
    # never showed was valued at the worst while the candidate's allowance was valued at that
    # deflated estimate: candidates beat it that were no better.
    live = torch_policy(2)
    core = trainer_with_feedback(max_threads=1, version="v0-greedy")
    core.observe_policy_update(policy_to_bytes(live))
    assert core.next_job(now_s=0.0) is None  # none of its own yet: skipped, nothing trained
    assert core.trainer.history[-1]["reason"].startswith(
        f"skipped: {TOO_FEW_LIVE} {live.version} in the holdout (0 of 120")
    # Once it logged some, the candidate is judged on those only.
    logged_by(core, live.version, n=100)
    core.trainer.request_fine_tune("test")
    job = core.next_job(now_s=1.0)
    assert job is not None and job.live_version == live.version
    result = core.run(job)
    live_rewards = [r for r, v in zip(job.batch.reward, job.batch.logged_by, strict=True)
                    if v == live.version]
    assert result.holdout_size == 100 == len(live_rewards)  # the newest 140: 100 of its own
    assert result.live_evaluation.primary.value == pytest.approx(np.mean(live_rewards))


def test_versions_are_bounded_but_keep_the_live_one() -> None:
    versions = PolicyVersions(base_version="v0", max_versions=2)
    policies = [torch_policy(k) for k in range(4)]
    versions.apply(policy_to_bytes(policies[0]))
    versions.apply(rollback_record(policies[0].version))
    for p in policies[1:]:
        versions.apply(policy_to_bytes(p))
    assert versions.live_version == policies[3].version
    assert len(versions.versions()) == 3  # base + 2


class SentRecords:
    """A producer that keeps what it was asked to send (policy-updates, in order)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, data: bytes, key: bytes | None = None) -> None:
        self.sent.append(data)


def test_a_fine_tune_finishing_after_a_rollback_is_discarded_not_published() -> None:
    v1, v2 = torch_policy(1), torch_policy(2)
    core = trainer_with_feedback(max_threads=1, version=v2.version)  # v2's impressions
    for record in (policy_to_bytes(v1), policy_to_bytes(v2)):
        core.observe_policy_update(record)
    job = core.next_job(now_s=0.0)
    assert job is not None and job.live_version == v2.version
    # While it trains, an operator rolls back to v1 and the consumer loop reads it.
    core.observe_policy_update(rollback_record(v1.version, reason="v2 loses money"))
    result = core.run(job)
    assert result.promoted, result.reason  # the gate passed it, against v2
    finished = core.finish(job, result, now_s=1.0)
    assert not finished.promoted and finished.reason.startswith("stale: judged against")
    assert core.trainer.history[-1]["promoted"] is False  # as the history tells it
    producer, metrics = SentRecords(), TrainerMetrics()
    asyncio.run(_publish(core, producer, "policy-updates", result, metrics))  # type: ignore[arg-type]
    assert producer.sent == [] and core.versions.live_version == v1.version
    snap = metrics.snapshot()
    assert snap["streamer_trainer_rejections_total"] == {"stale": 1.0}
    assert snap["streamer_trainer_promotions_total"] == 0.0
    # With the version it was judged against live again, the same result is published.
    core.observe_policy_update(rollback_record(v2.version))
    asyncio.run(_publish(core, producer, "policy-updates", result, metrics))  # type: ignore[arg-type]
    assert len(producer.sent) == 1 and core.versions.live_version == result.candidate.version


def test_the_trainer_decides_on_a_finished_fine_tune_only_once_policy_updates_is_read() -> None:
    topic = TopicPartition("policy-updates", 0)

    class Consumer:
        position_now = 3

        def assignment(self) -> set[TopicPartition]:
            return {topic, TopicPartition("feedback", 0)}

        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            assert tps == [topic]  # the other topics' backlogs do not hold it up
            return {topic: 4}

        async def position(self, tp: TopicPartition) -> int:
            return self.position_now

    consumer = Consumer()
    assert not asyncio.run(_read_to_end(consumer, "policy-updates"))  # type: ignore[arg-type]
    consumer.position_now = 4
    assert asyncio.run(_read_to_end(consumer, "policy-updates"))  # type: ignore[arg-type]


def test_a_version_needing_features_the_worker_lacks_is_refused_and_never_adopted() -> None:
    engine = Engine.in_memory(CONFIG)
    metrics = Metrics()
    follower = PolicyFollower(Settings(), engine, metrics)
    newer = TorchPolicy.initial((*FEATURE_NAMES, "feature_of_next_release"), seed=1)
    assert follower.apply(policy_to_bytes(newer)) is None
    assert follower.apply(rollback_record(newer.version)) is None  # nor by a rollback
    assert engine.policy.version == "v0-greedy"
    assert metrics.snapshot()["streamer_policy_refused_total"] == 2.0
    assert sum(len(engine.handle_purchase(e)) for e in orders(50)) > 0  # still serving
    # A version of the features it computes, in another order, is one it can serve.
    shuffled = TorchPolicy.initial(tuple(reversed(FEATURE_NAMES)), seed=1)
    fresh = Engine.in_memory(CONFIG)
    assert PolicyFollower(Settings(), fresh, Metrics()).apply(policy_to_bytes(shuffled))
    assert fresh.policy.version == shuffled.version
    assert sum(len(fresh.handle_purchase(e)) for e in orders(50)) > 0


@pytest.mark.parametrize("names", [
    tuple(reversed(FEATURE_NAMES)),  # the same features in another order
    FEATURE_NAMES[:-1],  # fewer: a version of a release before the last feature
], ids=["reordered", "fewer"])
def test_the_trainer_fine_tunes_a_live_version_on_its_own_features(
    names: tuple[str, ...],
) -> None:
    # Workers serve such a version (it reads no feature they lack), packing its features in
    # its order: the trainer must train it on the same columns, not the buffer's order.
    live = TorchPolicy.initial(names, seed=1)
    core = trainer_with_feedback(max_threads=1, version=live.version)  # live's impressions
    assert core.observe_policy_update(policy_to_bytes(live)) == live.version
    job = core.next_job(now_s=0.0)
    assert job is not None and job.start.version == live.version
    result = core.run(job)
    assert result.promoted, result.reason
    candidate = result.candidate
    served = bandit_records(1, "o")[0]["variant_features"]  # as a worker would pack them
    with torch.no_grad():
        probs = torch.softmax(candidate.scorer(candidate.pack(served)), -1).tolist()
    assert candidate.shape.feature_names == names and probs[2] == max(probs) > 0.5, probs


def test_a_round_asked_to_stop_is_abandoned_without_a_candidate() -> None:
    # The trainer's shutdown sets the event its running round was given.
    core = trainer_with_feedback(max_threads=1)
    job = core.next_job(now_s=0.0)
    assert job is not None
    stop = threading.Event()
    stop.set()
    with pytest.raises(FineTuneAbandoned):
        core.run(job, stop)


def test_a_live_version_reading_features_the_buffer_lacks_skips_the_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = trainer_with_feedback(max_threads=1)
    newer = TorchPolicy.initial((*FEATURE_NAMES, "feature_of_next_release"), seed=1)
    assert core.observe_policy_update(policy_to_bytes(newer)) == newer.version  # live
    with caplog.at_level(logging.WARNING, logger="streamer.app.trainer"):
        assert core.next_job(now_s=0.0) is None  # no fine-tune raising inside torch
        assert core.next_job(now_s=0.1) is None  # nor the same round again at once
    assert [r.getMessage() for r in caplog.records] == [
        f"fine-tune round skipped: live version {newer.version} reads features the feedback "
        "buffer does not hold (feature_of_next_release); a trainer of the release that "
        "published it can fine-tune it"]
    skipped = core.trainer.history[-1]
    assert skipped["skipped"] and skipped["live_version"] == newer.version
    assert not skipped["promoted"] and skipped["version"] is None
    assert core.metrics.snapshot()["streamer_trainer_skips_total"] == {"features": 1.0}
    # Once a version it can train is live again, the next trigger fine-tunes.
    core.observe_policy_update(rollback_record("v0-greedy"))
    core.trainer.request_fine_tune("test")
    job = core.next_job(now_s=1.0)
    assert job is not None and job.live_version == "v0-greedy"


def test_a_promoted_versions_parent_is_the_version_it_replaced_on_the_topic() -> None:
    core = trainer_with_feedback(max_threads=1)
    job = core.next_job(now_s=0.0)
    assert job is not None
    first = core.run(job)
    assert first.promoted, first.reason
    meta = first.metadata()
    assert meta["parent"] == first.candidate.parent == "v0-greedy" == meta["live_version"]
    assert meta["started_from"] == core.initial.version  # the weights' origin, never published
    topic = PolicyVersions(base_version="v0-greedy")
    change = topic.apply(first.checkpoint())
    assert change.metadata["parent"] == "v0-greedy" and topic.knows(change.metadata["parent"])
    assert change.policy is not None and change.policy.parent == "v0-greedy"
    # With a torch version live, it is both the parent and where the weights started.
    core.observe_policy_update(first.checkpoint())
    core.finish(job, first, now_s=1.0)
    logged_by(core, first.candidate.version)
    core.trainer.request_fine_tune("test")
    second_job = core.next_job(now_s=2.0)
    assert second_job is not None and second_job.live_version == first.candidate.version
    second = core.run(second_job).metadata()
    assert second["parent"] == second["started_from"] == first.candidate.version


def test_after_a_rollback_to_v0_the_gate_judges_v0_by_its_own_records_only() -> None:
    def trainer(records: list[dict[str, Any]]) -> FeedbackTrainer:
        core = FeedbackTrainer(TrainerSettings(min_records=100, every_records=len(records),
                                               epochs=2, max_threads=1),
                               base_version="v0-greedy")
        for record in records:
            assert core.observe_feedback(record)
        return core

    v0 = bandit_records(480, "o", 1, logging=[0.25] * 4, version="v0-greedy")
    bad = bandit_records(120, "o", 2, logging=[0.85, 0.05, 0.05, 0.05],
                         version="torch-bad")
    # The newest fifth (the holdout) all logged by the version rolled back from: no v0 value,
    # so nothing to judge a candidate against, and the round is skipped before training.
    core = trainer(v0 + bad)
    assert core.versions.live_version == "v0-greedy"
    snapshot = core.trainer.buffer.snapshot

    def no_copy(*_: Any) -> None:
        raise AssertionError("a round skipped for too few live records copies no features")

    core.trainer.buffer.snapshot = no_copy  # type: ignore[method-assign]
    assert core.next_job(now_s=0.0) is None
    core.trainer.buffer.snapshot = snapshot  # type: ignore[method-assign]
    assert core.next_job(now_s=0.1) is None  # not due again at once: the round was closed
    skipped = core.trainer.history[-1]
    assert skipped["skipped"] and not skipped["promoted"] and skipped["version"] is None
    assert skipped["reason"] == (f"skipped: {TOO_FEW_LIVE} v0-greedy in the holdout (0 of "
                                 "120, at least 20 needed)")
    assert core.metrics.snapshot()["streamer_trainer_skips_total"] == {"too_few_live": 1.0}
    # The gate itself refuses such a candidate too, unjudged (a caller that trains anyway).
    batch = core.trainer.buffer.snapshot(core.initial.shape.feature_names)
    result = core.run(FineTuneJob(start=core.initial, live_version="v0-greedy",
                                  live_is_torch=False, batch=batch,
                                  records_at_start=len(batch), reason="test"))
    assert not result.promoted and "too few records logged by v0-greedy" in result.reason
    assert rejection_label(result) == "too_few_live" and result.holdout_size == 0
    # Some of the holdout logged by v0: its value is their mean reward, not the holdout's.
    mixed = v0 + bad[:60]
    core = trainer(mixed)
    job = core.next_job(now_s=0.0)
    assert job is not None
    result = core.run(job)
    holdout = mixed[-round(len(mixed) * 0.2):]  # the newest 108: 48 of v0's, 60 of bad's
    v0_rewards = [r["reward"] for r in holdout if r["policy_version"] == "v0-greedy"]
    assert result.holdout_size == len(v0_rewards) == 48
    assert result.live_evaluation.primary.value == pytest.approx(np.mean(v0_rewards))
    assert result.candidate_evaluation.primary.n == 48  # the candidate judged on the same


def test_the_trainer_creates_judges_and_publishes_policies_within_offers_max_variants() -> None:
    # What it evaluates offline is what the workers will show: its fresh policy, the live
    # version it fine-tunes (one an earlier trainer published with 8) and the candidates it
    # publishes all show at most offers.max_variants.
    assert trainer_core(Settings(offers={"max_variants": 3})).initial.shape.max_variants == 3
    assert trainer_core(Settings()).initial.shape.max_variants == Settings().offers.max_variants
    core = trainer_with_feedback(max_threads=1, max_variants=3)
    job = core.next_job(now_s=0.0)
    assert job is not None and job.start.shape.max_variants == 3
    first = core.run(job)
    assert first.candidate.shape.max_variants == 3
    published, _ = policy_from_bytes(first.checkpoint())
    assert published.shape.max_variants == 3
    earlier = torch_policy(1)
    assert earlier.shape.max_variants == 8
    core.observe_policy_update(policy_to_bytes(earlier))
    core.finish(job, first, now_s=1.0)
    logged_by(core, earlier.version)
    core.trainer.request_fine_tune("test")
    second = core.next_job(now_s=2.0)
    assert second is not None and second.live_version == earlier.version
    assert second.start.shape.max_variants == 3
    assert core.run(second).candidate.shape.max_variants == 3


def test_a_fine_tune_ending_as_the_trainer_stops_is_never_dropped_without_a_word(
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopping, the trainer waits for its running fine-tune and publishes nothing: one
    abandoned is counted, and one that raised or finished meanwhile is logged (both were
    dropped without a trace)."""
    job: Any = SimpleNamespace(start=SimpleNamespace(version="v1"), batch=[0] * 10)
    metrics = TrainerMetrics()

    async def end_with(outcome: Any) -> None:
        running = asyncio.get_running_loop().create_future()
        if isinstance(outcome, BaseException):
            running.set_exception(outcome)
        else:
            running.set_result(outcome)
        await _abandon(running, job, metrics)

    with caplog.at_level(logging.INFO, logger="streamer.app.trainer"):
        asyncio.run(end_with(FineTuneAbandoned("stop requested")))
        asyncio.run(end_with(ValueError("a bug in the fine-tune")))
        asyncio.run(end_with(SimpleNamespace(promoted=True)))
    assert metrics.trainer_skips.labels("shutdown")._value.get() == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("fine-tune abandoned: shutting down")
    assert "ended with an error" in messages[1] and caplog.records[1].exc_info
    assert messages[2] == ("fine-tune of v1 finished as the trainer stopped: not published "
                           "(the gate passed it)")
