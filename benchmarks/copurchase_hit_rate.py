"""Quick prequential self-check of streamer's co-purchase statistics on UCI Online Retail.

Not the evaluation (that is ``streamer evaluate``): a fast sanity check of bundle hit rates
against undecayed co-counts (``cooc_count``), on the same orders, in one run. For each order
with two or more distinct items and each anchor in it, the top 2-item and 3-item candidates
live just before the order are scored, then the order is learned.

    python benchmarks/copurchase_hit_rate.py \
        /work/shared/data/online_retail/online_retail_all.csv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import time
from collections.abc import Iterator
from datetime import datetime
from heapq import nlargest
from operator import itemgetter

from streamer.copurchase import CoPurchaseStats


def read_orders(path: str) -> list[tuple[int, list[str]]]:
    """Non-cancelled invoices with positive quantities, in time order, as (ts_ms, item ids)."""
    orders: dict[str, tuple[int, list[str]]] = {}
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            invoice = row["InvoiceNo"]
            if invoice.startswith("C") or int(row["Quantity"]) <= 0:
                continue
            if invoice not in orders:
                ts = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
                orders[invoice] = (int(ts.timestamp() * 1000), [])
            orders[invoice][1].append(row["StockCode"])
    out = [(ts, list(dict.fromkeys(items))) for ts, items in orders.values()]
    out.sort(key=itemgetter(0))
    return out


class CoCount:
    """Undecayed co-counts ranked by count (the ``cooc_count`` baseline)."""

    def __init__(self) -> None:
        self.pairs: dict[str, dict[str, int]] = {}

    def top(self, anchor: str, n: int) -> list[str]:
        row = self.pairs.get(anchor)
        if not row:
            return []
        return [k for k, _ in nlargest(n, row.items(), key=itemgetter(1))]

    def learn(self, items: list[str]) -> None:
        for a in items:
            row = self.pairs.setdefault(a, {})
            for b in items:
                if b != a:
                    row[b] = row.get(b, 0) + 1


def occurrences(orders: list[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str], str]]:
    for ts, items in orders:
        if len(items) >= 2:
            for anchor in items:
                yield ts, items, anchor


def run(orders: list[tuple[int, list[str]]], **kwargs: float) -> dict[str, dict[str, float]]:
    stats = CoPurchaseStats({}, {}, **kwargs)  # type: ignore[arg-type]
    base = CoCount()
    hits = {"streamer": [0, 0], "cooc_count": [0, 0]}
    n = 0
    for ts, items in orders:
        if len(items) >= 2:
            basket = set(items)
            for anchor in items:
                n += 1
                cands = stats.candidates(anchor, now_ms=ts, max_pairs=1, max_triples=1)
                pair = next((c for c in cands if len(c.items) == 2), None)
                triple = next((c for c in cands if len(c.items) == 3), None)
                if pair is not None and pair.items[1] in basket:
                    hits["streamer"][0] += 1
                if triple is not None and basket.issuperset(triple.items[1:]):
                    hits["streamer"][1] += 1
                top = base.top(anchor, 2)
                if top and top[0] in basket:
                    hits["cooc_count"][0] += 1
                if len(top) == 2 and basket.issuperset(top):
                    hits["cooc_count"][1] += 1
        stats.learn_order(items, ts)
        base.learn(items)
    return {
        k: {"pair_bundle": v[0] / n, "triple_bundle": v[1] / n, "anchors": n}
        for k, v in hits.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--half-life-days", type=float, default=30.0)
    parser.add_argument("--top-k", type=int, default=1024)
    parser.add_argument("--prior-strength", type=float, default=1.0)
    parser.add_argument("--triple-min-support", type=float, default=1.5)
    parser.add_argument("--triple-min-confidence", type=float, default=0.1)
    parser.add_argument("--triple-partners", type=int, default=4)
    parser.add_argument("--triple-min-orders", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N orders")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    orders = read_orders(args.path)
    if args.limit:
        orders = orders[: args.limit]
    t0 = time.perf_counter()
    result = run(
        orders,
        half_life_s=args.half_life_days * 86_400.0,
        top_k=args.top_k,
        prior_strength=args.prior_strength,
        triple_min_support=args.triple_min_support,
        triple_min_confidence=args.triple_min_confidence,
        triple_partners=args.triple_partners,
        triple_min_orders=args.triple_min_orders,
    )
    elapsed = time.perf_counter() - t0
    s, c = result["streamer"], result["cooc_count"]
    print(f"orders {len(orders)}  anchor occurrences {int(s['anchors'])}  {elapsed:.1f} s")
    print(f"{'method':<12}{'2-item':>10}{'3-item':>10}")
    for name, r in result.items():
        print(f"{name:<12}{r['pair_bundle']:>10.4f}{r['triple_bundle']:>10.4f}")
    print(
        f"ratio vs cooc_count: 2-item {s['pair_bundle'] / c['pair_bundle']:.3f}x, "
        f"3-item {s['triple_bundle'] / c['triple_bundle']:.3f}x"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
