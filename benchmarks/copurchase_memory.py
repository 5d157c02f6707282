"""Memory per tracked item of CoPurchaseStats, and proof it stays flat as pairs seen grow.

A synthetic catalogue of ``--items`` ids (1M by default) is learned in passes; each pass
shuffles the catalogue into orders of ``--basket`` items, so every pass brings about
``items * (basket - 1)`` new ordered pairs, almost all never seen before. After each pass the
memory held by the statistics (resident set size growth by default, or tracemalloc, which is
exact but ~3x slower; both exclude the catalogue's id strings, which the application holds
anyway) is divided by the number of tracked items. With bounded partner
tables it levels off once the tables are full, however many distinct pairs are seen.

    python benchmarks/copurchase_memory.py --items 1000000 --passes 5 --top-k 8
    python benchmarks/copurchase_memory.py --items 100000 --measure tracemalloc
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
import tracemalloc
from collections.abc import Callable

from streamer.copurchase import CoPurchaseStats, Decayed, ItemStats


def rss_bytes() -> int:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def traced_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--basket", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--top-k-triples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--measure", choices=["rss", "tracemalloc"], default="rss")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    catalogue = [f"SKU{i:09d}" for i in range(args.items)]
    order = list(range(args.items))
    measure: Callable[[], int] = rss_bytes
    if args.measure == "tracemalloc":
        tracemalloc.start()
        measure = traced_bytes
    gc.collect()
    base = measure()
    items: dict[str, ItemStats] = {}
    counts: dict[str, Decayed] = {}
    stats = CoPurchaseStats(
        items,
        counts,
        half_life_s=30 * 86_400.0,
        top_k=args.top_k,
        top_k_triples=args.top_k_triples,
        triple_min_support=0.5,  # so triples are counted and their tables fill too
        triple_min_confidence=0.0,
    )
    ts = 1_700_000_000_000
    pairs_seen = 0
    rows = []
    print(
        f"{args.items:,} items, baskets of {args.basket}, top_k={args.top_k}, "
        f"top_k_triples={args.top_k_triples}, measured by {args.measure}"
    )
    print(
        f"{'pass':>4}{'pairs seen':>14}{'tracked':>11}{'partners/item':>15}"
        f"{'bytes/item':>12}{'seconds':>9}"
    )
    for p in range(1, args.passes + 1):
        t0 = time.perf_counter()
        rng.shuffle(order)
        b = args.basket
        for start in range(0, args.items - b + 1, b):
            basket = [catalogue[i] for i in order[start : start + b]]
            stats.learn_order(basket, ts)
            ts += 1000
            pairs_seen += b * (b - 1)
        gc.collect()
        held = measure() - base
        partners = sum(len(s.partners) for s in items.values()) / len(items)
        row = {
            "pass": p,
            "pairs_seen": pairs_seen,
            "tracked_items": len(items),
            "partners_per_item": partners,
            "bytes_per_item": held / len(items),
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"{p:>4}{pairs_seen:>14,}{len(items):>11,}{partners:>15.2f}"
            f"{row['bytes_per_item']:>12,.0f}{row['seconds']:>9.1f}"
        )
    if args.measure == "tracemalloc":
        tracemalloc.stop()
    first_full, last = rows[min(2, len(rows) - 1)], rows[-1]
    growth = last["bytes_per_item"] / first_full["bytes_per_item"]
    print(
        f"bytes/item from pass {first_full['pass']} to {last['pass']}: x{growth:.3f} while "
        f"pairs seen grew x{last['pairs_seen'] / first_full['pairs_seen']:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "passes": rows}, f, indent=2)


if __name__ == "__main__":
    main()
