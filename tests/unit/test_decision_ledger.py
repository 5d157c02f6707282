"""The decision ledger: each offer's decision is logged when the offer is made, and the feedback
record of an impression carries it, so training and evaluation read what the policy scored,
not a rebuild with the prices and conversion model of the moment the impression closed."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from streamer.app.policy_updates import PolicyFollower
from streamer.app.reward_tracking import FeedbackRecord
from streamer.app.trainer import FeedbackTrainer
from streamer.engine import (
    DecisionLog,
    Engine,
    EngineConfig,
    OfferDecision,
    encode_decision,
    logged_decision,
)
from streamer.events import BundleOffer, PurchaseEvent
from streamer.observability import Metrics
from streamer.offers import OfferBook
from streamer.online import FEATURE_NAMES, PROPENSITY_FEATURE
from streamer.policy import TorchPolicy, evaluate_policy, policy_to_bytes
from streamer.policy.torch_policy import Decision, version_of
from streamer.rewards import ImpressionOutcome
from streamer.settings import Settings, TrainerSettings
from tests.conftest import random_orders

T0 = 1_700_000_000_000
ITEMS = [f"i{k}" for k in range(12)]
CONFIG = EngineConfig(min_support=1.0, min_interval_ms=0)


def orders(n: int, seed: int = 0, *, start: int = 0) -> list[PurchaseEvent]:
    return random_orders(n, ITEMS, seed=seed, start=start)


class SpyPolicy(TorchPolicy):
    """A TorchPolicy that remembers the decisions it made (what it really scored)."""

    scored: list[Decision]

    def decide(self, anchor: str, candidates: Sequence[Any],
               featurizer: Any = None) -> Decision:
        decision = super().decide(anchor, candidates, featurizer)
        self.scored.append(decision)
        return decision

    def decide_many(self, requests: Sequence[Any]) -> list[Decision | FloatingPointError]:
        decided = super().decide_many(requests)
        self.scored += [d for d in decided if isinstance(d, Decision)]
        return decided


def spy_policy() -> SpyPolicy:
    base = TorchPolicy.initial(FEATURE_NAMES, seed=3)
    spy = SpyPolicy(base.scorer, base.shape, version=base.version, parent=None)
    spy.scored = []
    return spy


def outcome_of(offer: BundleOffer, variant: int, reward: float,
               ts: int | None = None) -> ImpressionOutcome:
    shown = offer.variants[variant]
    return ImpressionOutcome(
        impression_id=f"imp-{offer.offer_id}-{variant}", ts=ts or offer.ts, session_id="s",
        user_id="u", offer_id=offer.offer_id, variant=variant, propensity=shown.probability,
        policy_version=offer.policy_version, anchor_item_id=offer.anchor_item_id,
        segment=offer.segment, items=tuple(shown.items), discount_pct=shown.discount_pct,
        clicked=reward > 0, converted=reward > 0, revenue=reward, reward=reward,
        purchase_ids=("p",) if reward > 0 else (), attributed_at=ts or offer.ts, late=False,
        attribution="offer" if reward > 0 else "none", direct_revenue=reward,
        direct_reward=reward)


def as_published(record: FeedbackRecord) -> dict[str, Any]:
    """The record as the trainer reads it from the feedback topic."""
    body: dict[str, Any] = json.loads(msgspec.json.encode(record))
    return body


def change_the_world(engine: Engine, offer: BundleOffer) -> None:
    """What happens between an offer and the close of its impression: the catalogue's prices
    move and the conversion model learns."""
    for item in {i for v in offer.variants for i in v.items}:
        engine.state.catalog[item] = engine.state.catalog[item] * 3.0 + 1.0
    rows = logged_decision({"variant": 0, "propensity": 1.0, "reward": 1.0}, offer,
                           prices=engine.state.catalog, conversion=engine.conversion)
    for _ in range(300):
        engine.learn_conversion(rows.variant_features[rows.chosen], True)


@pytest.mark.parametrize("learned", [True, False], ids=["torch", "v0"])
def test_feedback_carries_the_decision_logged_when_the_offer_was_made(learned: bool) -> None:
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    spy = spy_policy()
    if learned:
        engine.set_policy(spy)
    offers = [o for e in orders(40) for o in engine.handle_purchase(e)]
    offer = max(offers, key=lambda o: (len(o.variants), o.ts))
    assert len(offer.variants) >= 2
    logged = log.get(offer.offer_id)
    assert logged is not None and len(logged.shown) == len(offer.variants)
    rows = logged.variant_features()
    if learned:  # exactly the rows the policy scored, and which of them the offer shows
        def shows(d: Decision) -> list[tuple[Any, ...]]:
            return [(tuple(p.candidate.items), p.discount_pct, round(p.probability, 9))
                    for p in d.proposals]

        assert offer.anchor_item_id and spy.scored
        shown = [(tuple(v.items), v.discount_pct, round(v.probability, 9))
                 for v in offer.variants]
        scored = [d for d in spy.scored if shows(d) == shown][-1]
        assert rows == [dict(r) for r in scored.variant_features]
        assert logged.shown == scored.shown
    for i, variant in enumerate(offer.variants):
        row = rows[logged.shown[i]]
        assert row["discount"] == pytest.approx(variant.discount_pct / 100)
        assert f"bundle:{variant.items[0]}+{'+'.join(sorted(variant.items[1:]))}" in row
    before = [dict(r) for r in rows]

    change_the_world(engine, offer)

    variant = len(offer.variants) - 1
    record = FeedbackRecord.build(outcome_of(offer, variant, 9.0), offer, logged)
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    core.observe_offer(offer)
    assert core.observe_feedback(as_published(record))
    assert core.decision_sources == {"logged": 1, "rebuilt": 0}
    batch = core.trainer.buffer.snapshot()
    n = len(before)
    expected = np.array([[r[f] for f in FEATURE_NAMES] for r in before], dtype=np.float32)
    np.testing.assert_array_equal(batch.features[0, :n], expected)
    assert batch.chosen[0] == logged.shown[variant]
    assert batch.expected_reward is not None
    np.testing.assert_allclose(batch.expected_reward[0, :n], logged.expected_rewards or [],
                               rtol=1e-6)
    # A rebuild now would have read other prices and another conversion propensity.
    rebuilt = logged_decision(
        {"offer_id": offer.offer_id, "variant": variant, "propensity": 1.0, "reward": 9.0},
        offer, prices=engine.state.catalog, conversion=engine.conversion)
    shown_now = rebuilt.variant_features[rebuilt.chosen]
    shown_then = before[logged.shown[variant]]
    assert shown_now["log_bundle_price"] != pytest.approx(shown_then["log_bundle_price"])
    assert shown_now[PROPENSITY_FEATURE] != pytest.approx(shown_then[PROPENSITY_FEATURE])


def test_a_record_without_its_decision_is_rebuilt_and_counted() -> None:
    engine = Engine.in_memory(CONFIG)  # an older worker: no decision logged
    offer = next(o for e in orders(30) for o in engine.handle_purchase(e))
    metrics = Metrics()
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy",
                           metrics=metrics)
    core.observe_offer(offer)
    body = as_published(FeedbackRecord.build(outcome_of(offer, 0, 0.0), offer))
    assert body["decision"] is None
    assert core.observe_feedback(body)
    assert core.decision_sources == {"logged": 0, "rebuilt": 1}
    counted = metrics.registry.get_sample_value(
        "streamer_feedback_decisions_total", {"process": "trainer", "source": "rebuilt"})
    assert counted == 1.0


def test_a_decision_that_is_not_the_offers_is_left_out_of_the_record() -> None:
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    offers = [o for e in orders(30) for o in engine.handle_purchase(e)]
    first, other = offers[-1], next(o for o in offers if o.offer_id != offers[-1].offer_id)
    wrong = log.get(other.offer_id)
    assert wrong is not None
    assert FeedbackRecord.build(outcome_of(first, 0, 0.0), first, wrong).decision is None
    assert FeedbackRecord.build(outcome_of(first, 0, 0.0), None,
                                log.get(first.offer_id)).decision is None
    assert FeedbackRecord.build(outcome_of(first, 0, 0.0), first,
                                log.get(first.offer_id)).decision is not None


def test_the_decision_log_keeps_what_an_open_impression_can_need_and_no_more() -> None:
    window = 10_000  # attribution window + lateness
    log = DecisionLog(retention_ms=2 * window, capacity=1_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    made: list[BundleOffer] = []
    for event in orders(2_000):  # an order a second on 12 items: ~550 offers in 2,000 s
        made += engine.handle_purchase(event)
        # The live offers' decisions plus the revisions of the last 2 windows, never more.
        assert len(log) <= len(engine.state.offers) + 3 * 2 * window // 1000
    assert len(made) > 500 and log.evicted > 400
    # Held: exactly the decisions of the live offers (an impression of one may still be open)
    # and of the offers replaced less than 2 windows ago (one shown just before may be).
    now = max(o.ts for o in made)
    replaced_at: dict[str, int] = {}
    newest: dict[tuple[str, str], BundleOffer] = {}
    for offer in made:
        key = (offer.anchor_item_id, offer.segment)
        if key in newest:
            replaced_at[newest[key].offer_id] = offer.ts
        newest[key] = offer
    live = {o.offer_id for o in newest.values()}
    assert live == {o.offer_id for o in engine.state.offers.values()}
    needed = live | {oid for oid, ts in replaced_at.items() if ts + 2 * window > now}
    assert set(log.ids()) == needed


def test_the_decision_log_capacity_is_a_hard_bound() -> None:
    log = DecisionLog(retention_ms=10**9, capacity=50)
    engine = Engine.in_memory(CONFIG, decisions=log)
    for event in orders(500):
        engine.handle_purchase(event)
        assert len(log) <= 50
    assert log.evicted > 0


def test_a_logged_decision_survives_its_encoding() -> None:
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    offer = [o for e in orders(30) for o in engine.handle_purchase(e)][-1]
    decision = log.get(offer.offer_id)
    assert decision is not None
    data = msgspec.json.encode(decision)
    again = msgspec.json.decode(data, type=OfferDecision)
    assert again == decision and again.variant_features() == decision.variant_features()


@pytest.mark.parametrize("wire", ["msgpack", "json"])
def test_a_worker_keeps_the_decisions_it_reads_as_they_came(wire: str) -> None:
    # The decisions feed hands the log each message as it came (MessagePack; JSON from a
    # worker of an earlier version); the log decodes only the header and gives back the very
    # decision the engine logged, evicting as for decoded ones.
    from streamer.app.rewards_agents import EncodedDecisions
    from streamer.events import InvalidEvent

    encode = encode_decision if wire == "msgpack" else msgspec.json.encode
    made = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=made)
    for e in orders(60):
        engine.handle_purchase(e)
    read = DecisionLog(retention_ms=3_600_000)
    feed = EncodedDecisions(read)
    for oid in made.ids():
        decision = made.get(oid)
        assert decision is not None
        feed.add(encode(decision))
    assert read.ids() == made.ids() and read.clock_ms == made.clock_ms
    assert all(read.get(oid) == made.get(oid) for oid in made.ids())
    with pytest.raises(InvalidEvent):
        feed.add(encode({"offer_id": "o", "anchor": 3}))
    with pytest.raises(InvalidEvent):
        feed.add(b"\x07")  # a lone MessagePack integer
    # A header that decodes over rows that do not: kept by its header, never given back.
    now = read.clock_ms
    feed.add(encode({"offer_id": "bad", "anchor": "a", "segment": "all", "ts": now,
                     "expires_at": now + 10**9, "rows": "not rows"}))
    assert "bad" in read.ids() and read.get("bad") is None


@pytest.mark.parametrize("wire", ["msgpack", "json"])
def test_a_decision_message_that_does_not_decode_is_invalid_whatever_the_reason(
        wire: str) -> None:
    # The feed counts and skips InvalidEvent; anything else restarted it from its lookback,
    # where it met the message again: the decision log stopped and caught_up never came.
    from streamer.app.rewards_agents import EncodedDecisions
    from streamer.events import InvalidEvent

    encode = encode_decision if wire == "msgpack" else msgspec.json.encode
    made = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=made)
    for e in orders(60):
        engine.handle_purchase(e)
    decision = made.get(made.ids()[0])
    assert decision is not None and decision.offer_id.isascii() and decision.bundles[0]
    good = encode(decision)
    feed = EncodedDecisions(DecisionLog(retention_ms=3_600_000))
    pack = msgspec.msgpack.encode
    too_deep = (  # an unknown field nested 5000 deep (0x91: an array of one, 0x90: empty)
        b"\x82" + pack("offer_id") + pack("o") + pack("deep") + b"\x91" * 5000 + b"\x90"
        if wire == "msgpack" else b'{"offer_id":"o","deep":' + b"[" * 5000 + b"]" * 5000 + b"}")
    for bad in (good.replace(decision.offer_id.encode(), b"\xff" * len(decision.offer_id)),
                too_deep):
        with pytest.raises(InvalidEvent):
            feed.add(bad)
    # A header that decodes over rows that do not (invalid UTF-8 in a bundle key): kept by
    # its header, never given back, so its feedback is rebuilt from the offer.
    bundle = decision.bundles[0].encode()
    feed.add(good.replace(bundle, bundle[:-1] + b"\xff"))
    assert feed.log.get(decision.offer_id) is None


def test_a_decision_stamped_far_ahead_of_the_wall_clock_is_skipped_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # The log's clock is the newest ts it holds: one decision on the decisions topic stamped
    # in 2099 moved it there, evicting every decision held and each later one as it came.
    from streamer.app.rewards_agents import EncodedDecisions

    made = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=made)
    for e in orders(40):
        engine.handle_purchase(e)
    first, *rest = (d for oid in made.ids() if (d := made.get(oid)) is not None)
    feed = EncodedDecisions(DecisionLog(retention_ms=3_600_000, max_ahead_ms=3_600_000))
    feed.add(encode_decision(first))
    with caplog.at_level("WARNING", logger="streamer.app.rewards_agents"):
        for n in range(2):
            feed.add(encode_decision(msgspec.structs.replace(
                first, offer_id=f"from-2099-{n}", ts=4_070_000_000_000,
                expires_at=4_070_086_400_000)))
    for decision in rest:
        feed.add(encode_decision(decision))
    assert feed.log.ahead == 2 and feed.log.clock_ms == made.clock_ms
    assert feed.log.ids() == made.ids()  # nothing evicted, nothing of 2099 kept
    assert [r.message for r in caplog.records if "ahead" in r.message] == [
        "a decision stamped more than 3600 s ahead of this worker's clock was skipped; later "
        "ones are only counted"]
    # Without the wall clock (the engine's own decisions, replay), nothing is skipped.
    unguarded = DecisionLog(retention_ms=3_600_000, max_ahead_ms=3_600_000)
    unguarded.add(msgspec.structs.replace(first, ts=4_070_000_000_000))
    assert unguarded.ahead == 0 and unguarded.clock_ms == 4_070_000_000_000


def test_a_decision_on_the_topic_is_smaller_than_its_json() -> None:
    # Mostly floats: MessagePack copies each as 9 bytes; JSON writes up to ~20 characters
    # (0.6931471805599453), though only 3 for 0.0 or 1.0. Measured here: 0.72x.
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    for e in orders(60):
        engine.handle_purchase(e)
    decisions = [log.get(oid) for oid in log.ids()]
    packed = sum(len(encode_decision(d)) for d in decisions)
    assert packed < 0.8 * sum(len(msgspec.json.encode(d)) for d in decisions)


def scoring_policy(seed: int) -> TorchPolicy:
    """A version as a trainer of an earlier release published it (8 variants shown), with
    weights that score variants apart (a fresh one scores them all alike)."""
    policy = TorchPolicy.initial(FEATURE_NAMES, seed=seed, floor=0.02)
    assert policy.shape.max_variants == 8
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for p in policy.scorer.parameters():
            p.normal_(0.0, 0.3)
    return TorchPolicy(policy.scorer, policy.shape, version=version_of(policy.scorer, policy.shape),
                       parent=None)


@pytest.mark.parametrize("ceiling", [1, 2, 4])
def test_a_worker_shows_offers_max_variants_of_a_version_and_logs_what_it_drew_from(
    ceiling: int,
) -> None:
    # offers.max_variants bounds a learned version as it bounds v0; what the offer publishes
    # (and the storefront draws with) is what the decision logs, and the trainer, under the
    # same setting, evaluates the live version with those very probabilities.
    settings = Settings(offers={"max_variants": ceiling})
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    version = scoring_policy(1)
    assert PolicyFollower(settings, engine, Metrics()).apply(policy_to_bytes(version))
    assert engine.policy.version == version.version
    offers = [o for e in orders(60) for o in engine.handle_purchase(e)]
    assert max(len(o.variants) for o in offers) == ceiling
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy",
                           max_variants=ceiling)
    core.observe_policy_update(policy_to_bytes(version))
    rng = random.Random(ceiling)
    for offer in offers:
        assert sum(v.probability for v in offer.variants) == pytest.approx(1.0, abs=1e-9)
        logged = log.get(offer.offer_id)
        assert logged is not None and len(logged.shown) == len(offer.variants)
        book = OfferBook(default_segment=offer.segment)
        book.update(offer)
        choice = book.choose(offer.anchor_item_id, rng, now_ms=offer.ts)
        assert choice is not None
        drawn = logged.variant_features()[logged.shown[choice.variant]]
        assert drawn["discount"] == pytest.approx(choice.bundle.discount_pct / 100)
        record = FeedbackRecord.build(outcome_of(offer, choice.variant, 1.0), offer, logged)
        assert core.observe_feedback(as_published(record))
    live = core.versions.live_policy
    assert live is not None and live.shape.max_variants == ceiling
    batch = core.trainer.buffer.snapshot()
    # Every reward 1: each IPS term is the live policy's probability of the variant drawn
    # over the propensity logged for it; on its own logs, 1 for every impression.
    terms = evaluate_policy(live, batch).terms["ips"]
    np.testing.assert_allclose(terms, np.ones(len(offers)), rtol=1e-5)


# -- the logging support: which rows the policy could show --------------------------------
def positive_rows(offer: BundleOffer, decision: OfferDecision) -> list[int]:
    return sorted(row for row, v in zip(decision.shown, offer.variants, strict=True)
                  if v.probability > 0)


@pytest.mark.parametrize("learned", [True, False], ids=["torch", "v0"])
def test_a_decision_records_the_rows_its_policy_could_show(learned: bool) -> None:
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    if learned:
        engine.set_policy(spy_policy())
    offers = [o for e in orders(40) for o in engine.handle_purchase(e)]
    offer = max(offers, key=lambda o: (len(o.variants), o.ts))
    logged = log.get(offer.offer_id)
    assert logged is not None and logged.support is not None
    assert sorted(logged.support) == positive_rows(offer, logged)
    assert len(logged.support) < len(logged.rows)  # some rows were never possible
    # ...and the trainer's buffer holds it, from the record that carries the decision.
    core = FeedbackTrainer(TrainerSettings(min_records=2), base_version="v0-greedy")
    record = FeedbackRecord.build(outcome_of(offer, 0, 1.0), offer, logged)
    assert core.observe_feedback(as_published(record))
    supported = core.trainer.buffer.snapshot().supported
    assert supported is not None
    assert np.flatnonzero(supported[0]).tolist() == sorted(logged.support)


def test_the_support_of_a_record_without_it_is_what_its_offer_says_or_the_chosen_row() -> None:
    log = DecisionLog(retention_ms=3_600_000)
    engine = Engine.in_memory(CONFIG, decisions=log)
    offer = max((o for e in orders(40) for o in engine.handle_purchase(e)),
                key=lambda o: (len(o.variants), o.ts))
    logged = log.get(offer.offer_id)
    assert logged is not None
    wire = msgspec.json.decode(msgspec.json.encode(logged))
    del wire["support"]  # a decision of an older release
    older = msgspec.convert(wire, OfferDecision)
    assert older.support is None
    fields = {"offer_id": offer.offer_id, "variant": 1, "propensity": 0.1, "reward": 0.0}
    with_offer = logged_decision({**fields, "decision": older}, offer)
    assert sorted(with_offer.support or ()) == positive_rows(offer, logged)
    assert logged_decision({**fields, "decision": older}, None).support is None
    rebuilt = logged_decision(fields, offer)  # from the offer: its variants' rows
    assert rebuilt.support is not None and len(rebuilt.support) == len(offer.variants)
    assert rebuilt.chosen in rebuilt.support
    flat = {**fields, **older.record_fields(1)}
    assert logged_decision(flat, None).support is None
    assert logged_decision({**flat, "support": [1, 3]}, None).support == [1, 3]


def test_the_buffer_keeps_the_support_and_knows_only_the_chosen_row_without_it() -> None:
    from streamer.policy.feedback import FeedbackBuffer, LoggedDecision

    rows = [{"x": float(i)} for i in range(4)]
    buffer = FeedbackBuffer(("x",), capacity=3, max_actions=5)
    buffer.append(LoggedDecision(rows, chosen=2, propensity=0.5, reward=1.0, support=(0, 2)))
    buffer.append(LoggedDecision(rows, chosen=1, propensity=0.5, reward=1.0))  # unknown
    buffer.append(LoggedDecision(rows, chosen=3, propensity=0.5, reward=1.0, support=(0,)))
    with pytest.raises(ValueError, match="support"):
        buffer.append(LoggedDecision(rows, chosen=0, propensity=0.5, reward=1.0, support=(4,)))
    batch = buffer.snapshot()
    expected = [[True, False, True, False, False], [False, True, False, False, False],
                [True, False, False, True, False]]  # the chosen row is always possible
    assert batch.supported is not None and batch.supported.tolist() == expected
    again = FeedbackBuffer(("x",), capacity=3, max_actions=5)
    again.extend(batch)
    assert again.snapshot().support().tolist() == expected
    unknown = dataclasses.replace(batch, supported=None)
    assert unknown.support().sum(axis=1).tolist() == [1, 1, 1]
