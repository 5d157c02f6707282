"""Crash-consistency harness: replay purchases through real workers, SIGKILL them at seeded
random points, restart them, and compare their co-purchase state with an uninterrupted run.

The uninterrupted run is the engine driven in process (the replay driver, design.md: "same
suite, two drivers"): the same events through :meth:`Engine.handle_purchase`. Every event has
the same event time, so every forward-decay value is an exact integer count (the landmark is
that time, every increment is exactly 1.0) and the comparison is exact: a basket learned twice
shows as +1, a lost one as -1, whatever the order the workers saw the events in.

Compared per anchor: its order count and its partner co-counts, and the order total. Triples
are left out on purpose: whether an order bumps a triple depends on which partners were
already strong at that moment, so it depends on arrival order, which differs between any two
runs (crashed or not).

"Settled" is read from the broker, not guessed: the consumer group's committed offsets equal
the end offsets of ``purchases`` and of the item-baskets repartition topic. faust flushes its
producer (baskets, changelogs) before it commits, so a committed purchase's baskets are on the
broker, and a committed basket's table writes are in the worker's memory.

Run more trials than the test does with ``python -m tests.crash_harness --trials 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from streamer.app.broker import EmbeddedBroker, free_port
from streamer.app.demo import WorkerProcess
from streamer.app.factory import engine_config
from streamer.copurchase import TOTAL_KEY
from streamer.engine import Engine
from streamer.events import OrderLine, PurchaseEvent
from streamer.settings import Settings
from tests.conftest import wait_for

BASKETS_SUFFIX = "-item-baskets"


# -- events and the reference state ---------------------------------------------------------
def make_orders(n: int, *, seed: int, catalogue: int = 120, ts_ms: int | None = None,
                min_items: int = 2, max_items: int = 6) -> list[PurchaseEvent]:
    """``n`` purchases of ``min_items..max_items`` distinct items from a skewed catalogue, all
    at one event time (so every count is an exact integer; see the module doc)."""
    rng = random.Random(seed)
    ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
    items = [f"i{k:03d}" for k in range(catalogue)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(catalogue)]  # a few best sellers
    prices = {i: round(1.0 + (k % 17) * 0.75, 2) for k, i in enumerate(items)}
    orders = []
    for k in range(n):
        size = rng.randint(min_items, max_items)
        chosen: dict[str, None] = {}
        while len(chosen) < size:
            chosen[rng.choices(items, weights)[0]] = None
        orders.append(PurchaseEvent(
            event_id=f"crash-{seed}-{k}", ts=ts, user_id=f"u{k % 97}", session_id=f"s{k}",
            order_id=f"o{k}",
            items=[OrderLine(item_id=i, quantity=1, unit_price=prices[i]) for i in chosen]))
    return orders


@dataclass(frozen=True)
class CoPurchaseState:
    """The comparable part of the co-purchase state: raw forward values at one landmark."""

    orders: float
    counts: dict[str, float]
    partners: dict[str, dict[str, float]]


def reference_state(settings: Settings, orders: Sequence[PurchaseEvent]) -> CoPurchaseState:
    """The state an uninterrupted run ends in: the engine driven in process."""
    engine = Engine.in_memory(engine_config(settings))
    for order in orders:
        engine.handle_purchase(order)
    return state_from_dump({"orders": msgspec.to_builtins(engine.state.counts.get(TOTAL_KEY)),
                            "items": {a: msgspec.to_builtins(r.stats)
                                      for a, r in engine.state.items.items()
                                      if r.stats is not None}})


def state_from_dump(dump: dict[str, Any]) -> CoPurchaseState:
    """Parse a ``/state/items/`` body (or the union of several)."""
    orders = dump.get("orders")
    counts: dict[str, float] = {}
    partners: dict[str, dict[str, float]] = {}
    for anchor, stats in dump["items"].items():
        # ItemStats encodes as [landmark_ms, count, partners, partner_offset, triples, ...].
        counts[anchor] = float(stats[1])
        partners[anchor] = {p: float(c) for p, c in stats[2].items()}
    return CoPurchaseState(float(orders[0]) if orders else 0.0, counts, partners)


@dataclass
class StateDiff:
    """How far a worker's state is from the reference, in learned baskets."""

    lost: float = 0.0
    doubled: float = 0.0
    anchors_off: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.lost == 0 and self.doubled == 0


def compare(expected: CoPurchaseState, actual: CoPurchaseState) -> StateDiff:
    """Count missing (lost) and extra (doubled) increments: anchor counts, co-counts, orders."""
    diff = StateDiff()

    def account(want: float, got: float) -> bool:
        delta = got - want
        if delta > 0:
            diff.doubled += delta
        elif delta < 0:
            diff.lost -= delta
        return delta != 0

    account(expected.orders, actual.orders)
    for anchor in sorted(expected.counts.keys() | actual.counts.keys()):
        off = account(expected.counts.get(anchor, 0.0), actual.counts.get(anchor, 0.0))
        want, got = expected.partners.get(anchor, {}), actual.partners.get(anchor, {})
        for partner in want.keys() | got.keys():
            off = account(want.get(partner, 0.0), got.get(partner, 0.0)) or off
        if off:
            diff.anchors_off.append(anchor)
    return diff


# -- workers ----------------------------------------------------------------------------------
def worker_settings(base: Settings, index: int, data_root: Path) -> Settings:
    """``base`` for the ``index``-th worker of a group: own web port and data dir."""
    worker = base.worker.model_copy(update={"web_port": free_port(),
                                            "data_dir": str(data_root / f"data-{index}")})
    return base.model_copy(update={"worker": worker})


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env = dict(os.environ)
    for section, values in settings.model_dump(mode="json").items():
        for key, value in values.items():
            if value is not None:
                env[f"STREAMER__{section.upper()}__{key.upper()}"] = str(value)
    return env


def get_json(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET ``url`` as JSON; ``{}`` when the worker does not answer (starting, gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            data: dict[str, Any] = json.load(r)
            return data
    except (OSError, ValueError):
        return {}


class Worker:
    """A ``streamer worker`` process of a crash trial."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.worker.web_port}"
        self.process = WorkerProcess(settings_env(settings), log_path)

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        return get_json(f"{self.url}/stats/", timeout_s=2)

    def consumed_purchases(self) -> float:
        consumed = self.stats().get("streamer_events_consumed_total", {})
        return float(consumed.get(self.settings.topics.purchases, 0.0))

    def state(self) -> dict[str, Any]:
        return get_json(f"{self.url}/state/items/")

    def wait_ready(self, timeout_s: float) -> None:
        wait_for(lambda: not self.alive or self.stats().get("ready"), timeout_s,
                   "the worker to be ready")
        if not self.alive:
            raise AssertionError(f"worker exited: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: no shutdown, no final commit."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# -- the broker's view ------------------------------------------------------------------------
async def _produce(bootstrap: str, topic: str, orders: Sequence[PurchaseEvent]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        encode = msgspec.json.encode
        for order in orders:
            await producer.send(topic, encode(order), key=order.session_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


def produce_orders(settings: Settings, orders: Sequence[PurchaseEvent]) -> None:
    """Send ``orders`` to the purchases topic; returns once the broker has them all."""
    asyncio.run(_produce(settings.kafka.bootstrap_servers, settings.topics.purchases, orders))


async def _unsettled(settings: Settings) -> dict[str, tuple[int, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap = settings.kafka.bootstrap_servers
    topics = [settings.topics.purchases, settings.worker.app_id + BASKETS_SUFFIX]
    tps = [TopicPartition(t, p) for t in topics for p in range(settings.topics.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Explicit partitions: the embedded broker drops the connection on "all partitions".
        listed = await admin.list_consumer_group_offsets(settings.worker.app_id, partitions=tps)
    finally:
        await admin.close()
    committed = {tp: max(0, listed[tp].offset) if tp in listed else 0 for tp in tps}
    # End offsets from a fetch's high watermark: the embedded broker answers ListOffsets
    # (latest) with the last *batch's* base offset + 1, short of the real end.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, committed[tp])
        deadline = time.monotonic() + 10
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError("no high watermark from the broker")
            await consumer.getmany(timeout_ms=100, max_records=1)
        ends = {tp: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await consumer.stop()
    return {f"{tp.topic}[{tp.partition}]": (committed[tp], ends[tp])
            for tp in tps if committed[tp] != ends[tp]}


def unsettled(settings: Settings) -> dict[str, tuple[int, int]]:
    """Partitions of purchases / item-baskets whose committed offset is short of the end:
    ``{"topic[p]": (committed, end)}``; empty when everything produced has been processed."""
    return asyncio.run(_unsettled(settings))


def wait_settled(settings: Settings, workers: Sequence[Worker], timeout_s: float) -> None:
    """Wait until the group has committed everything produced (see the module doc)."""
    def check() -> bool:
        dead = [w for w in workers if not w.alive]
        if dead:
            raise AssertionError(f"a worker exited: {dead[0].log_tail()}")
        return not unsettled(settings)

    try:
        wait_for(check, timeout_s, "committed offsets to reach the end offsets",
                   interval_s=0.25)
    except AssertionError as e:
        raise AssertionError(f"{e}; behind: {unsettled(settings)}") from e


def group_state(workers: Sequence[Worker], partitions: int) -> CoPurchaseState:
    """The union of the live workers' active partitions; each partition owned exactly once."""
    union: dict[str, Any] = {"orders": None, "items": {}}
    owned: list[int] = []
    for worker in workers:
        dump = wait_for(worker.state, 10, f"{worker.url}/state/items/")
        owned += dump["partitions"]
        union["items"].update(dump["items"])
        if dump["orders"] is not None:
            union["orders"] = dump["orders"]
    assert sorted(owned) == list(range(partitions)), f"partitions owned: {sorted(owned)}"
    return state_from_dump(union)


# -- trials ---------------------------------------------------------------------------------
@dataclass
class Trial:
    """One kill and what the state looked like once the group settled again."""

    name: str
    events: int  # purchases produced so far (cumulative)
    baskets: int  # (event, anchor) slices those purchases fan out to, order totals included
    kill_at: int  # purchases of this chunk consumed by the victim (at the last poll) when killed
    chunk: int
    diff: StateDiff
    seconds: float

    def line(self) -> str:
        d = self.diff
        return (f"{self.name}: events={self.events} baskets={self.baskets} "
                f"killed after ~{self.kill_at}/{self.chunk} of the chunk; "
                f"equal={d.equal} lost={d.lost:g} doubled={d.doubled:g} "
                f"({100 * d.doubled / self.baskets:.2f}% / {100 * d.lost / self.baskets:.2f}%) "
                f"anchors off={len(d.anchors_off)} [{self.seconds:.1f} s]")


def baskets_of(orders: Sequence[PurchaseEvent]) -> int:
    return sum(len({line.item_id for line in o.items}) + 1 for o in orders)


def kill_when_consumed(victim: Worker, observers: Sequence[Worker], at: int,
                       timeout_s: float) -> int:
    """SIGKILL ``victim`` once ``observers`` together consumed ``at`` more purchases than
    now; returns how many they had consumed at the last poll before the kill."""
    start = sum(w.consumed_purchases() for w in observers)
    seen = [0.0]

    def reached() -> bool:
        seen[0] = sum(w.consumed_purchases() for w in observers) - start
        return seen[0] >= at

    wait_for(reached, timeout_s, f"{at} purchases consumed", interval_s=0.02)
    victim.kill()
    return int(seen[0])


def run_single_worker_trials(settings: Settings, workdir: Path, *, trials: int, orders_per: int,
                             seed: int, on_trial: Callable[[Trial], None] | None = None,
                             timeout_s: float = 60.0) -> list[Trial]:
    """One worker, ``trials`` chunks of ``orders_per`` purchases; during each chunk the worker
    is killed at a seeded random point and restarted (same app id: tables recover from their
    changelogs), then the state is compared with the reference for every chunk so far."""
    rng = random.Random(seed)
    orders = make_orders(trials * orders_per, seed=seed)
    worker = Worker(worker_settings(settings, 0, workdir), workdir / "worker-0.log")
    results: list[Trial] = []
    try:
        worker.wait_ready(timeout_s)
        for n in range(trials):
            begin = time.monotonic()
            chunk = orders[n * orders_per:(n + 1) * orders_per]
            # In the first half of the chunk: the consumed counter also counts redeliveries
            # (after the rebalance that follows a restart), so a later point may never come.
            at = rng.randint(1, orders_per // 2)
            produce_orders(settings, chunk)
            killed_at = kill_when_consumed(worker, [worker], at, timeout_s)
            worker = Worker(worker.settings, workdir / f"worker-0-{n + 1}.log")
            worker.wait_ready(timeout_s)
            wait_settled(settings, [worker], timeout_s)
            so_far = orders[:(n + 1) * orders_per]
            diff = compare(reference_state(settings, so_far),
                           group_state([worker], settings.topics.partitions))
            trial = Trial(f"single #{n + 1}", len(so_far), baskets_of(so_far), killed_at,
                          orders_per, diff, time.monotonic() - begin)
            results.append(trial)
            if on_trial:
                on_trial(trial)
    finally:
        worker.stop()
    return results


def run_rebalance_trials(settings: Settings, workdir: Path, *, orders_per: int, seed: int,
                         on_trial: Callable[[Trial], None] | None = None,
                         timeout_s: float = 90.0) -> list[Trial]:
    """Two workers on ``settings.topics.partitions`` partitions. Chunk 1: B is killed mid-run
    and A takes its partitions over (rebalance after B's session times out). Then B is
    restarted (rebalance back) and, during chunk 2, A is killed and B takes over."""
    rng = random.Random(seed)
    orders = make_orders(2 * orders_per, seed=seed)
    a = Worker(worker_settings(settings, 0, workdir), workdir / "worker-a.log")
    b = Worker(worker_settings(settings, 1, workdir), workdir / "worker-b.log")
    results: list[Trial] = []

    def split() -> bool:
        da, db = a.state(), b.state()
        return bool(da.get("partitions")) and bool(db.get("partitions"))

    try:
        a.wait_ready(timeout_s)
        b.wait_ready(timeout_s)
        wait_for(split, timeout_s, "both workers to own partitions")
        for n, (victim, survivor) in enumerate([(b, a), (a, b)]):
            begin = time.monotonic()
            chunk = orders[n * orders_per:(n + 1) * orders_per]
            produce_orders(settings, chunk)
            killed_at = kill_when_consumed(victim, [a, b], rng.randint(1, orders_per // 2),
                                           timeout_s)
            wait_settled(settings, [survivor], timeout_s)
            so_far = orders[:(n + 1) * orders_per]
            diff = compare(reference_state(settings, so_far),
                           group_state([survivor], settings.topics.partitions))
            trial = Trial(f"rebalance #{n + 1} (killed {'B' if victim is b else 'A'})",
                          len(so_far), baskets_of(so_far), killed_at, orders_per, diff,
                          time.monotonic() - begin)
            results.append(trial)
            if on_trial:
                on_trial(trial)
            if n == 0:
                # B comes back: partitions move to it again (recovered from changelogs).
                b = Worker(b.settings, workdir / "worker-b-2.log")
                b.wait_ready(timeout_s)
                wait_for(split, timeout_s, "both workers to own partitions")
                wait_settled(settings, [a, b], timeout_s)
                state = group_state([a, b], settings.topics.partitions)
                back = compare(reference_state(settings, so_far), state)
                assert back.equal, f"after B rejoined: {back}"
    finally:
        a.stop()
        b.stop()
    return results


# -- command line: more trials than the test runs -------------------------------------------
def fresh_settings(bootstrap: str, workdir: Path, partitions: int = 4) -> Settings:
    """Settings with fresh topics and app id, like the tests' ``settings`` fixture."""
    import uuid

    suffix = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": bootstrap},
        topics={name: f"{name}-{suffix}" for name in
                ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
        | {"policy_updates": f"policy-updates-{suffix}", "partitions": partitions},
        worker={"app_id": f"streamer-crash-{suffix}", "web_port": free_port(),
                "data_dir": str(workdir / "data")},
        offers={"min_interval_s": 0.0, "min_support": 1.0},
    )


@contextlib.contextmanager
def _broker(workdir: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        yield broker


def main(argv: list[str] | None = None) -> None:
    from streamer.app.worker import ensure_topics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--orders", type=int, default=500, help="purchases per trial")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rebalance", action="store_true", help="also the 2-worker trials")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="crash-"))
    trials: list[Trial] = []
    with _broker(workdir) as broker:
        s = fresh_settings(broker.bootstrap, workdir)
        asyncio.run(ensure_topics(s))
        trials += run_single_worker_trials(s, workdir, trials=args.trials,
                                           orders_per=args.orders, seed=args.seed,
                                           on_trial=lambda t: print(t.line(), flush=True))
        if args.rebalance:
            s = fresh_settings(broker.bootstrap, workdir)
            asyncio.run(ensure_topics(s))
            trials += run_rebalance_trials(s, workdir, orders_per=args.orders, seed=args.seed,
                                           on_trial=lambda t: print(t.line(), flush=True))
    bad = [t for t in trials if not t.diff.equal]
    print(f"{len(trials)} trials, {len(bad)} with a state different from the uninterrupted run;"
          f" logs in {workdir}")


if __name__ == "__main__":
    main()
