"""Update throughput of CoPurchaseStats against plain dict pair counting, same orders, one run.

Synthetic orders: basket sizes 2..``--max-basket`` (skewed towards small), items drawn from a
Zipf-like catalogue with a seeded generator, so every run sees the same orders. Each repeat
times both learners from empty state on the same orders (alternating which goes first); the
ratio reported is the median over repeats of (streamer orders/s) / (plain orders/s).
streamer's statistics are configured as the engine configures them (``EngineConfig``'s
defaults: half-life, partner and triple tables); ``--top-k``, ``--top-k-triples``,
``--triple-partners`` and ``--triple-min-orders`` override them.

    python benchmarks/copurchase_throughput.py --orders 50000 --repeats 5 --json out.json

``--real PATH --format F`` times the same two learners on a real file's orders instead (read
whole, in event-time order, as ``streamer evaluate`` reads them; ``--orders`` then caps how many),
e.g. UCI Online Retail, whose baskets are larger (25 distinct items on average) than the
synthetic ones (about 8), which favours streamer (its cost per order grows with the items, plain
counting's with the pairs).

``--ref DIR`` also times the ``CoPurchaseStats`` of another checkout (e.g. a ``git worktree`` of
the commit before a change), loaded beside this one, on the same orders with the same settings,
in the same rotation: a before/after in one run, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from streamer.copurchase import CoPurchaseStats
from streamer.engine import EngineConfig

Orders = list[tuple[int, list[str]]]


def synthetic_orders(n: int, catalogue: int, max_basket: int, seed: int) -> Orders:
    """``n`` orders a minute apart, distinct items per order, popularity ~ 1 / rank."""
    rng = random.Random(seed)
    ids = [f"SKU{i:07d}" for i in range(catalogue)]
    weights = [1.0 / (rank + 1) for rank in range(catalogue)]
    cumulative: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cumulative.append(acc)
    ts0 = 1_700_000_000_000
    orders: Orders = []
    for i in range(n):
        size = min(max_basket, 2 + int(rng.expovariate(1 / 6)))
        basket = dict.fromkeys(rng.choices(ids, cum_weights=cumulative, k=size))
        orders.append((ts0 + 60_000 * i, list(basket)))
    return orders


def real_orders(path: str, fmt: str, limit: int) -> Orders:
    """A data file's purchases as (ts, distinct items), whole orders, in event-time order."""
    from streamer.events import PurchaseEvent
    from streamer.replay.readers import read_events

    orders: Orders = []
    for event in read_events(path, fmt, max_order_lines=None):  # type: ignore[arg-type]
        if isinstance(event, PurchaseEvent):
            orders.append((event.ts, list(dict.fromkeys(line.item_id for line in event.items))))
            if len(orders) == limit:
                break
    return orders


def plain_dict_counting(orders: Orders) -> None:
    """The baseline: undecayed item and pair counts in nested dicts, no bounds."""
    pairs: dict[str, dict[str, float]] = {}
    counts: dict[str, float] = {}
    total = 0.0
    for _, items in orders:
        total += 1.0
        for a in items:
            counts[a] = counts.get(a, 0.0) + 1.0
            row = pairs.setdefault(a, {})
            for b in items:
                if b != a:
                    row[b] = row.get(b, 0.0) + 1.0


def load_stats_class(root: str) -> Any:
    """``CoPurchaseStats`` of the checkout at ``root``, imported beside this one's: the
    ``streamer`` modules are swapped out of ``sys.modules`` while it loads, then put back (the
    loaded class keeps its own module globals)."""
    import importlib

    def ours() -> dict[str, Any]:
        return {n: m for n, m in sys.modules.items() if n.split(".")[0] == "streamer"}

    saved = ours()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        return importlib.import_module("streamer.copurchase").CoPurchaseStats
    finally:
        sys.path.remove(root)
        for name in ours():
            del sys.modules[name]
        sys.modules.update(saved)


def streamer_stats(
    config: EngineConfig, stats_class: Any = CoPurchaseStats
) -> Callable[[Orders], None]:
    """The statistics as the engine builds them from ``config``."""

    def learn(orders: Orders) -> None:
        stats = stats_class(
            {},
            {},
            half_life_s=config.half_life_s,
            top_k=config.top_k,
            top_k_triples=config.top_k_triples,
            triple_partners=config.triple_partners,
            triple_min_orders=config.triple_min_orders,
        )
        for ts, items in orders:
            stats.learn_order(items, ts)

    return learn


def timed(learn: Callable[[Orders], None], orders: Orders) -> tuple[float, float]:
    """Wall and CPU seconds of one run (CPU time leaves out waits for a core another process
    holds, so it is the steadier of the two on a shared machine)."""
    w0, c0 = time.perf_counter(), time.process_time()
    learn(orders)
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--catalogue", type=int, default=20_000)
    parser.add_argument("--max-basket", type=int, default=40)
    engine = EngineConfig()
    parser.add_argument("--top-k", type=int, default=engine.top_k)
    parser.add_argument("--top-k-triples", type=int, default=engine.top_k_triples)
    parser.add_argument(
        "--triple-partners",
        type=int,
        default=engine.triple_partners,
        help="strong partners of an order that form triples (0: no triples)",
    )
    parser.add_argument(
        "--triple-min-orders",
        type=float,
        default=engine.triple_min_orders,
        help="decayed orders an anchor needs before it learns triples",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default="", help="also write the figures to this path")
    parser.add_argument("--real", default="", help="time a data file's orders instead")
    parser.add_argument("--format", default="online-retail", help="the --real file's format")
    parser.add_argument(
        "--ref", default="", metavar="DIR", help="also time the statistics of this checkout"
    )
    args = parser.parse_args()

    if args.real:
        orders = real_orders(args.real, args.format, args.orders)
    else:
        orders = synthetic_orders(args.orders, args.catalogue, args.max_basket, args.seed)
    pairs = sum(len(items) * (len(items) - 1) for _, items in orders)
    config = replace(
        engine,
        top_k=args.top_k,
        top_k_triples=args.top_k_triples,
        triple_partners=args.triple_partners,
        triple_min_orders=args.triple_min_orders,
    )
    learners: dict[str, Callable[[Orders], None]] = {
        "plain": plain_dict_counting,
        "streamer": streamer_stats(config),
    }
    if args.ref:
        learners["ref"] = streamer_stats(config, load_stats_class(args.ref))
    names = list(learners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        # Rotate which learner goes first, so none always runs on a cold or a warm machine.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall_s, cpu_s = timed(learners[name], orders)
            seconds[name].append(wall_s)
            cpu[name].append(cpu_s)
    plain_s, ours_s = seconds["plain"], seconds["streamer"]
    ratios = [p / o for p, o in zip(plain_s, ours_s, strict=True)]
    cpu_ratios = [p / o for p, o in zip(cpu["plain"], cpu["streamer"], strict=True)]
    result: dict[str, Any] = {
        "source": args.real or "synthetic",
        "orders": len(orders),
        "ordered_pairs": pairs,
        "half_life_days": config.half_life_s / 86_400.0,
        "top_k": config.top_k,
        "top_k_triples": config.top_k_triples,
        "triple_partners": config.triple_partners,
        "triple_min_orders": config.triple_min_orders,
        "plain_orders_per_s": len(orders) / statistics.median(plain_s),
        "plain_pairs_per_s": pairs / statistics.median(plain_s),
        "streamer_orders_per_s": len(orders) / statistics.median(ours_s),
        "streamer_pairs_per_s": pairs / statistics.median(ours_s),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_ratios": cpu_ratios,
    }
    if args.ref:
        ref_s = seconds["ref"]
        ref_ratios = [p / o for p, o in zip(plain_s, ref_s, strict=True)]
        result |= {
            "ref": args.ref,
            "ref_orders_per_s": len(orders) / statistics.median(ref_s),
            "ref_ratio_median": statistics.median(ref_ratios),
            "ref_ratios": ref_ratios,
            "speedup_over_ref_median": statistics.median(
                [r / o for r, o in zip(ref_s, ours_s, strict=True)]
            ),
            "ref_cpu_ratio_median": statistics.median(
                [p / o for p, o in zip(cpu["plain"], cpu["ref"], strict=True)]
            ),
            "cpu_speedup_over_ref_median": statistics.median(
                [r / o for r, o in zip(cpu["ref"], cpu["streamer"], strict=True)]
            ),
        }
    print(
        f"{len(orders)} orders, {pairs} ordered pairs, top_k={config.top_k}, "
        f"top_k_triples={config.top_k_triples}, triple_partners={config.triple_partners}, "
        f"triple_min_orders={config.triple_min_orders:g}, {args.repeats} repeats"
    )
    print(f"{'learner':<24}{'orders/s':>12}{'pairs/s':>14}")
    print(
        f"{'plain dict counting':<24}{result['plain_orders_per_s']:>12,.0f}"
        f"{result['plain_pairs_per_s']:>14,.0f}"
    )
    print(
        f"{'CoPurchaseStats':<24}{result['streamer_orders_per_s']:>12,.0f}"
        f"{result['streamer_pairs_per_s']:>14,.0f}"
    )
    if args.ref:
        print(f"{'ref CoPurchaseStats':<24}{result['ref_orders_per_s']:>12,.0f}")
    print(
        f"ratio (median of repeats): {result['ratio_median']:.2f}x  "
        f"(repeats: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        f"ratio in CPU time (median of repeats): {result['cpu_ratio_median']:.2f}x  "
        f"(repeats: {', '.join(f'{r:.2f}' for r in cpu_ratios)})"
    )
    if args.ref:
        print(
            f"ref ratio (median of repeats): {result['ref_ratio_median']:.2f}x wall, "
            f"{result['ref_cpu_ratio_median']:.2f}x CPU; this checkout "
            f"{result['speedup_over_ref_median']:.2f}x as fast as the ref in wall time, "
            f"{result['cpu_speedup_over_ref_median']:.2f}x in CPU time (medians of repeats)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
