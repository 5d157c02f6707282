"""What the price sweep costs a worker: CPU per offer checked, and per step (timer tick).

In process, no broker: ``--offers`` offers (4 variants each, 3 pairs and a triple, from a
catalogue of ``--items`` items) held as the worker holds them (MessagePack bytes behind the
write-back's typed view, ``worker.table_cache_size`` decoded values kept), the catalogue
likewise; then one whole pass of ``streamer.app.price_sweep.PriceSweep`` (``--steps`` steps,
``offers.price_check_interval_s / rewards.tick_interval_s``: 60 by default), checking every
offer with ``Engine.stale_anchors``, with ``--stale`` of the partners' prices changed
beforehand and ``--expired`` of the offers expired (their anchors last revised more than
``offers.ttl_s`` before: an expired offer stays in the table as its anchor's last one).
Reports microseconds per offer checked (median of ``--repeats`` passes) and the slowest step
in milliseconds (the first of a pass snapshots the keys too): how long one tick holds the
event loop. CPU time (``time.process_time``), with the worker's garbage-collector settings
(``streamer.app.worker.tune_gc``). Revising the stale anchors is an ordinary revision each, on
the tick (not measured here).

    python benchmarks/price_sweep.py --offers 100000
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import MutableMapping

from streamer.app.price_sweep import PriceSweep
from streamer.app.tables import WriteBuffer
from streamer.app.worker import tune_gc
from streamer.engine import Engine, EngineConfig, EngineState, ItemBasket
from streamer.events import BundleOffer, Evidence, Variant
from streamer.offers import OfferBuilder, bundle_price
from streamer.settings import WorkerSettings

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def add_live_offers(offers: MutableMapping[str, BundleOffer], n: int, items: int,
                    rng: random.Random, prices: dict[str, float], expired: float = 0.0) -> None:
    """``n`` offers, made at ``T0`` on, except an ``expired`` share made two days before
    (expired at ``T0``)."""
    builder = OfferBuilder(segment="all", ttl_ms=DAY_MS)
    evidence = Evidence(support=3.0, confidence=0.5, lift=2.0)
    for a in range(n):
        anchor = f"SKU{a:07d}"
        partners = [f"SKU{rng.randrange(items):07d}" for _ in range(4)]
        bundles = [[anchor, p] for p in partners[:3]] + [[anchor, *partners[:2]]]
        variants = [Variant(items=b, discount_pct=10.0,
                            bundle_price=bundle_price(b, 10.0, prices.get),
                            probability=0.25, score=0.5, evidence=evidence) for b in bundles]
        made = T0 + a - (2 * DAY_MS if expired and rng.random() < expired else 0)
        offers[anchor] = builder.offer(anchor, variants, policy_version="v0-greedy",
                                       now_ms=made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offers", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--stale", type=float, default=0.01,
                        help="share of the items whose price changed before the pass")
    parser.add_argument("--expired", type=float, default=0.5,
                        help="share of the offers expired before the pass")
    parser.add_argument("--cache-size", type=int, default=4096,
                        help="decoded values each table keeps (worker.table_cache_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    buffer = WriteBuffer(cache_size=args.cache_size)
    raw_offers: dict[str, bytes] = {}
    raw_catalog: dict[str, bytes] = {}
    state = EngineState.in_memory()
    state.offers = buffer.table(raw_offers, BundleOffer)
    state.catalog = buffer.table(raw_catalog, float)
    prices = {f"SKU{i:07d}": round(rng.uniform(1.0, 50.0), 2)
              for i in range(max(args.items, args.offers))}
    for item, price in prices.items():
        state.catalog[item] = price
    add_live_offers(state.offers, args.offers, args.items, rng, prices, args.expired)
    for item in rng.sample(sorted(prices), int(args.stale * len(prices))):
        state.catalog[item] = prices[item] + 1.0
    engine = Engine(EngineConfig(), state, Engine.v0_policy(EngineConfig()))
    # The worker has learned up to the pass: its event clock, by which offers expire.
    engine.learn_baskets([ItemBasket(anchor="SKU-clock", partners=[], ts=T0 + args.offers,
                                     event_id="clock")])
    buffer.flush()  # as in the worker between commits: the values are in the stores
    tune_gc(WorkerSettings())  # the worker's collector settings (streamer.app.worker)
    found: list[str] = []

    def stale(keys: list[str]) -> list[str]:
        anchors = engine.stale_anchors(keys)
        found.extend(anchors)
        return anchors

    sweep = PriceSweep(keys=lambda: list(raw_offers), stale=stale, partition_of=len,
                       steps_per_pass=args.steps)
    per_offer, slowest = [], []
    for _ in range(args.repeats):
        found.clear()
        steps = []
        checked = 0
        for _ in range(args.steps):
            start = time.process_time()
            checked += sweep.step(owned=())
            steps.append(time.process_time() - start)
        assert checked == args.offers, checked
        per_offer.append(sum(steps) / checked * 1e6)
        slowest.append(max(steps) * 1e3)
    print(f"{args.offers:,} offers ({args.expired:.0%} of them expired), "
          f"{args.steps} steps per pass, "
          f"{len(found):,} found stale ({args.stale:.0%} of the prices changed), "
          f"cache {args.cache_size}")
    print(f"per offer checked: {statistics.median(per_offer):.2f} us "
          f"(passes: {', '.join(f'{x:.2f}' for x in per_offer)})")
    print(f"slowest step: {statistics.median(slowest):.1f} ms "
          f"(passes: {', '.join(f'{x:.1f}' for x in slowest)})")


if __name__ == "__main__":
    main()
