"""How the engine's CPU per purchase grows over a long stream, in process, and what grows.

``throughput.py`` times 20,000 purchases after a warm-up of 41,000, past the attribution's
horizon; over 100,000 its worker reads lower against the naive peer, whose cost per event stays
level. This runs ``throughput.py``'s ``engine_work`` (the worker's engine, tables and write-back
in process, no Kafka; the collector set as the worker sets it) over ``--events`` purchases and
prints, per ``--window`` of them:

- ``cpu``: the process's CPU microseconds per purchase;
- ``write-back``: the part of them spent in ``BufferedTable.flush`` (the tables written back
  every commit interval of wall time, as the worker's commits do), and per key written;
- ``evaluations``: offers reconsidered (``CoPurchaseStats.candidates`` calls: an anchor whose
  offer is due, past the engine's shortcut for anchors bought fewer than ``min_support`` times);
- ``ranked``: those that found an offerable bundle and asked the policy (``Engine._revise``
  calls, one per segment; the others' anchors have no partner past ``min_support``, or a
  bundle item's price is not known yet);
- ``offers``: the revisions published (the rest left the live offer as it was).

    PYTHONPATH=. python benchmarks/engine_growth.py --events 160000

Purchases are learned one at a time (``engine_work``'s default), not in a worker's batches, so
an anchor is reconsidered at every touch that finds its offer due. The counting wraps two methods,
which adds a few tenths of a microsecond per purchase to every window alike.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import throughput

from streamer.app.tables import BufferedTable
from streamer.app.worker import tune_gc
from streamer.copurchase import CoPurchaseStats
from streamer.engine import Engine
from streamer.settings import Settings


def counted(cls: type, name: str, counts: Counter[str], label: str,
            found: str | None = None) -> None:
    """Count the calls of ``cls.name`` under ``label`` (and those with a truthy result under
    ``found``)."""
    method: Callable[..., Any] = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        counts[label] += 1
        if found is not None and result:
            counts[found] += 1
        return result

    setattr(cls, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=160_000, help="purchases in all")
    parser.add_argument("--window", type=int, default=20_000, help="purchases per line")
    args = parser.parse_args()

    tune_gc(Settings().worker)
    counts: Counter[str] = Counter()
    counted(CoPurchaseStats, "candidates", counts, "evaluations")
    counted(Engine, "_revise", counts, "ranked", "offers")
    flush = BufferedTable.flush
    spent = [0.0]

    def timed_flush(self: BufferedTable[Any]) -> int:
        t0 = time.process_time()
        n = flush(self)
        spent[0] += time.process_time() - t0
        counts["keys"] += n
        return n

    BufferedTable.flush = timed_flush  # type: ignore[method-assign]
    purchases = throughput.make_purchases(args.events)
    work = throughput.engine_work()
    print(f"{args.events:,} purchases in process, {args.window:,} per line "
          "(throughput.make_purchases: 100 ms apart in event time)")
    print(f"{'purchases':>15} {'cpu us':>7} {'write-back us':>14} {'us/key':>7} "
          f"{'evaluations':>12} {'ranked':>7} {'offers':>7}")
    w = args.window
    t0 = time.process_time()
    for i, (_, value) in enumerate(purchases, 1):
        work(value)
        if i % w == 0 or i == len(purchases):
            n = i - (i - 1) // w * w
            cpu = time.process_time() - t0
            print(f"{i - n:>7,}-{i:<7,} {1e6 * cpu / n:7.1f} {1e6 * spent[0] / n:14.1f} "
                  f"{1e6 * spent[0] / max(counts['keys'], 1):7.2f} {counts['evaluations']:12,} "
                  f"{counts['ranked']:7,} {counts['offers']:7,}", flush=True)
            counts.clear()
            spent[0] = 0.0
            t0 = time.process_time()


if __name__ == "__main__":
    main()
