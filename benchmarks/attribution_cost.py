"""What attributing a store's purchase stream costs per purchase, in process.

A worker's purchases agent hands every purchase to its partition's ``Attributor``
(``streamer.rewards``) and advances it: in steady state each purchase opens a session and an
older one closes (``benchmarks/throughput.py``'s steady state, where sessions start closing
after the attribution window and its lateness). This times ``observe`` + ``advance`` over
``--events`` purchases, one session each, ``--event-spacing-ms`` apart, after ``--warmup``
untimed ones (past the horizon: closings under way), against a session store that keeps
states encoded with the worker's table codec and decodes them on every read
(``EncodedTable`` without a cache), as a worker's table does for a state it flushed and no
longer caches. CPU microseconds per purchase, the median of ``--repeats``.

To compare two versions of the attribution, run it with each checkout first on the path:

    PYTHONPATH=. python benchmarks/attribution_cost.py
    PYTHONPATH=/tmp/before python benchmarks/attribution_cost.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from streamer.app.tables import EncodedTable
from streamer.events.models import OrderLine, PurchaseEvent
from streamer.rewards import Attributor, SessionState
from streamer.settings import RewardSettings

T0 = 1_700_000_000_000


def purchases(n: int, spacing_ms: float, seed: int = 1) -> list[PurchaseEvent]:
    """``n`` purchases of 1-8 items (mean ~2.6) from 5,000, each in a session of its own."""
    rng = random.Random(seed)
    return [
        PurchaseEvent(
            event_id=f"p{k}", ts=T0 + int(k * spacing_ms), user_id=f"u{k}", session_id=f"s{k}",
            order_id=f"o{k}",
            items=[OrderLine(item_id=f"i{rng.randrange(5000)}", quantity=1, unit_price=9.5)
                   for _ in range(min(8, 1 + int(rng.expovariate(1 / 1.6))))])
        for k in range(n)
    ]


def cost_us(events: list[PurchaseEvent], warmup: int) -> float:
    """CPU microseconds per purchase of ``observe`` + ``advance`` after ``warmup`` untimed."""
    rewards = RewardSettings()
    # The worker's codec, no decoded-value cache: every read decodes.
    store = EncodedTable[SessionState]({}, SessionState, cache_size=0)
    att = Attributor(store, {}, window_ms=int(rewards.attribution_window_s * 1000),
                     allowed_lateness_ms=int(rewards.allowed_lateness_s * 1000))
    for e in events[:warmup]:
        att.observe(e)
        att.advance()
    t0 = time.process_time()
    for e in events[warmup:]:
        att.observe(e)
        att.advance()
    return 1e6 * (time.process_time() - t0) / (len(events) - warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=40_000, help="purchases timed")
    p.add_argument("--warmup", type=int, default=40_000, help="purchases before, untimed")
    p.add_argument("--event-spacing-ms", type=float, default=100.0, metavar="MS")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.events < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--events and --repeats must be >= 1, --warmup >= 0")
    events = purchases(args.warmup + args.events, args.event_spacing_ms)
    runs = [cost_us(events, args.warmup) for _ in range(args.repeats)]
    each = ", ".join(f"{r:.2f}" for r in runs)
    print(f"attribution: {statistics.median(runs):.2f} us of CPU per purchase (median of "
          f"{args.repeats}: {each}), {args.events:,} purchases after {args.warmup:,}, "
          f"{args.event_spacing_ms:g} ms apart")


if __name__ == "__main__":
    main()
