"""Learning item baskets in place (streamer.app.local_baskets.LocalBaskets)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from streamer.app.local_baskets import LocalBaskets
from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine, ItemBasket
from streamer.events import OrderLine, PurchaseEvent

P = 2  # the item-baskets partition under test


def test_armed_once_its_barrier_is_learned() -> None:
    route = LocalBaskets()
    assert not route.local(P, generation=1)
    assert route.sending(P, ["b0"], generation=1)  # the first message: the barrier
    assert not route.sending(P, ["b1"], generation=1)
    route.sent(P, offset=40, generation=1, barrier=True)
    route.sent(P, offset=41, generation=1, barrier=False)
    route.learned(P, offset=39, generation=1)
    assert not route.local(P, generation=1)
    route.learned(P, offset=40, generation=1)
    assert route.local(P, generation=1)
    assert not route.local(P + 1, generation=1)  # per partition
    assert route.take_kept(P) == ["b1"]  # sent after the barrier: learned in place first
    assert route.take_kept(P) == []


def test_a_barrier_learned_before_its_acknowledgement_arms_on_the_acknowledgement() -> None:
    route = LocalBaskets()
    route.sending(P, ["b0"], generation=1)
    route.learned(P, offset=7, generation=1)  # the fetch answered before the produce did
    assert not route.local(P, generation=1)
    route.sent(P, offset=7, generation=1, barrier=True)
    assert route.local(P, generation=1)


def test_other_workers_messages_do_not_arm() -> None:
    route = LocalBaskets()
    route.learned(P, offset=1_000, generation=1)
    assert not route.local(P, generation=1)


def test_a_new_generation_disarms_and_ignores_the_old_one() -> None:
    route = LocalBaskets()
    route.sending(P, ["b0"], generation=1)
    route.sending(P, ["b1"], generation=1)
    route.sent(P, offset=5, generation=1, barrier=True)
    route.learned(P, offset=5, generation=1)
    assert route.local(P, generation=1)
    assert not route.local(P, generation=2)
    assert route.take_kept(P) == []  # went through the topic: nothing to learn in place
    route.sent(P, offset=6, generation=1, barrier=True)  # late news of generation 1
    route.learned(P, offset=6, generation=1)
    assert not route.local(P, generation=2)
    assert not route.local(P, generation=1)  # an older generation is never armed again
    assert route.sending(P, ["b2"], generation=2)  # a new barrier


def test_a_failed_send_keeps_the_partition_disarmed_for_the_generation() -> None:
    route = LocalBaskets()
    route.sending(P, ["b0"], generation=1)
    route.sending(P, ["b1"], generation=1)
    route.failed(P, generation=1)
    route.sent(P, offset=9, generation=1, barrier=True)
    route.learned(P, offset=9, generation=1)
    assert not route.local(P, generation=1)
    assert route.take_kept(P) == []
    assert route.sending(P, ["b2"], generation=2)
    route.sent(P, offset=10, generation=2, barrier=True)
    route.learned(P, offset=10, generation=2)
    assert route.local(P, generation=2)


def test_too_much_kept_gives_the_partition_up_for_the_generation() -> None:
    route = LocalBaskets(keep_limit=3)
    route.sending(P, ["b0"], generation=1)
    route.sending(P, ["b1", "b2"], generation=1)
    route.sending(P, ["b3", "b4"], generation=1)  # over the limit
    route.sent(P, offset=1, generation=1, barrier=True)
    route.learned(P, offset=1, generation=1)
    assert not route.local(P, generation=1)
    assert route.take_kept(P) == []
    assert not route.sending(P, ["b5"], generation=1)


# -- the property the arming protects: every purchase learned exactly once --------------------
def purchase(offset: int, rng: random.Random) -> PurchaseEvent:
    items = rng.sample(["tea", "cup", "pot", "jam"], rng.randint(1, 3))
    return PurchaseEvent(event_id=f"e{offset}", ts=1_700_000_000_000, user_id="u",
                         session_id=f"s{offset}", order_id=f"o{offset}",
                         items=[OrderLine(item_id=i, quantity=1, unit_price=2.0)
                                for i in items])


@dataclass
class Simulation:
    """One purchases partition (source 0) whose baskets all belong to one item-baskets
    partition, a worker that reads both, and a topic between them. ``stale`` messages
    (baskets of purchases 0..stale-1, sent by the partition's previous owner) wait in the topic
    when the worker starts at purchase ``stale``."""

    rng: random.Random
    local: bool  # use the arming rule (False: every batch through the topic)
    ignore_arming: bool = False  # learn in place at once (the hazard the rule prevents)
    engine: Engine = field(default_factory=Engine.in_memory)
    route: LocalBaskets = field(default_factory=LocalBaskets)
    log: list[list[ItemBasket]] = field(default_factory=list)  # the topic's partition
    inflight: list[tuple[int, bool, list[ItemBasket]]] = field(default_factory=list)
    learned_upto: int = 0  # next log offset the items agent learns
    generation: int = 1

    def baskets(self, offsets: range) -> list[ItemBasket]:
        return [b for o in offsets
                for b in self.engine.fan_out(purchase(o, random.Random(o)), source=0, offset=o)]

    def purchases_batch(self, offsets: range) -> None:
        baskets = self.baskets(offsets)
        if self.ignore_arming:
            self.engine.learn_baskets(baskets)
            return
        if self.local and self.route.local(P, generation=self.generation):
            self.engine.learn_baskets(self.route.take_kept(P) + baskets)
            return
        barrier = self.local and self.route.sending(P, baskets, generation=self.generation)
        self.inflight.append((self.generation, barrier, baskets))

    def ack(self) -> None:
        generation, barrier, baskets = self.inflight.pop(0)
        self.log.append(baskets)
        self.route.sent(P, offset=len(self.log) - 1, generation=generation, barrier=barrier)

    def learn(self) -> None:
        self.engine.learn_baskets(self.log[self.learned_upto])
        self.route.learned(P, offset=self.learned_upto, generation=self.generation)
        self.learned_upto += 1

    def run(self, orders: int, stale: int) -> None:
        for start in range(0, stale, 5):  # the previous owner's messages
            self.log.append(self.baskets(range(start, min(stale, start + 5))))
        position = stale
        while position < orders or self.inflight or self.learned_upto < len(self.log):
            step = self.rng.random()
            if step < 0.4 and position < orders:
                n = self.rng.randint(1, 4)
                self.purchases_batch(range(position, min(orders, position + n)))
                position = min(orders, position + n)
            elif step < 0.65 and self.inflight:
                self.ack()
            elif step < 0.95 and self.learned_upto < len(self.log):
                self.learn()
            elif step >= 0.95:
                self.generation += 1  # a rebalance that leaves both partitions here


def order_counts(engine: Engine) -> float:
    record = engine.state.items.get(TOTAL_KEY)
    assert record is not None
    return record.count.value  # every purchase at the same event time: an exact count


@pytest.mark.parametrize("seed", range(40))
def test_in_place_learning_learns_every_purchase_once(seed: int) -> None:
    sim = Simulation(random.Random(seed), local=True)
    sim.run(orders=60, stale=12)
    assert order_counts(sim.engine) == pytest.approx(60.0)
    topic_only = Simulation(random.Random(seed), local=False)
    topic_only.run(orders=60, stale=12)
    assert sim.engine.state.items == topic_only.engine.state.items


def test_learning_in_place_without_the_arming_rule_loses_purchases() -> None:
    """The rule is what keeps the count right: in place from the first batch, purchases
    waiting in the topic are taken for duplicates of newer ones."""
    lost = 0
    for seed in range(20):
        sim = Simulation(random.Random(seed), local=True, ignore_arming=True)
        sim.run(orders=60, stale=12)
        lost += order_counts(sim.engine) < 60.0
    assert lost > 0
