"""Closed-loop simulation, side by side: each method's reward as a share of the oracle's.

Same simulated storefront (catalogue, seed, shoppers) for every method, in process, no Kafka.
Each of ``--impressions`` sessions views an anchor; the method's live offer (if any) is
sampled with its published probabilities; rewards are expected values under the ground
truth, so the shares are low-variance (see ``streamer.simulation.report``). The season
changes at ``--drift-at`` of the run.

    python benchmarks/simulate_baselines.py --impressions 100000 --json /tmp/sim.json \\
        --plot /tmp/sim.png

Methods: ``streamer`` (the in-process Engine with its current v0 policy, default
EngineConfig), ``greedy_lift`` (highest-lift partner at a fixed 10 %), ``random`` (uniform over
co-purchase candidates x 0/5/10/15 %), and ``vw`` (an empty slot: register a factory in
``METHODS`` that returns a ``streamer.simulation.DecisionMaker``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from typing import Any

from streamer.engine import Engine
from streamer.simulation import (
    DEFAULT_START_MS,
    Catalogue,
    DecisionMaker,
    EngineDecisions,
    GreedyLift,
    OracleDecisions,
    SimulatedShop,
    SimulationReport,
    UniformRandom,
    plot_reports,
    run_closed_loop,
)

Factory = Callable[[Catalogue, int], DecisionMaker]

#: name -> factory(catalogue, seed); None: a slot another engineer fills (listed, not run).
METHODS: dict[str, Factory | None] = {
    "streamer": lambda cat, seed: EngineDecisions(Engine.in_memory()),
    "greedy_lift": lambda cat, seed: GreedyLift(cat.prices, discount_pct=10.0),
    "random": lambda cat, seed: UniformRandom(cat.prices, seed=seed),
    # Vowpal Wabbit --cb_explore_adf over the same candidates: an optional benchmark
    # dependency. Its factory returns an object with offer_for(anchor, segment, now_ms) and
    # learn(events); see streamer/simulation/loop.py for the contract and make_offer().
    "vw": None,
}


def fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=100_000)
    parser.add_argument("--catalogue-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-at", type=float, default=0.5,
                        help="season change at this share of the run (outside [0, 1): none)")
    parser.add_argument("--session-interval-ms", type=int, default=1_000,
                        help="simulated time between sessions (offers expire, counts decay)")
    parser.add_argument("--window", type=int, default=2_000,
                        help="trailing window of the recovery-after-drift figure")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--with-oracle", action="store_true",
                        help="also run the oracle itself (a sanity check: share 1.0)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also run streamer with offers that never lapse (streamer_refreshed)")
    parser.add_argument("--json", default="", help="write the figures to this path")
    parser.add_argument("--plot", default="", help="write regret/share curves to this PNG")
    args = parser.parse_args()

    n, interval = args.impressions, args.session_interval_ms
    drift_at_ms = (DEFAULT_START_MS + round(args.drift_at * n) * interval
                   if 0.0 <= args.drift_at < 1.0 else None)
    catalogue = Catalogue.generate(args.catalogue_size, seed=args.seed, drift_at_ms=drift_at_ms)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(names) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {sorted(unknown)}")
    factories: dict[str, Factory | None] = {k: METHODS[k] for k in names}
    if args.diagnostics:
        # Not a method: streamer as it would do if stable offers did not lapse at the
        # storefront (see EngineDecisions.assume_refreshed).
        factories["streamer_refreshed"] = lambda cat, seed: EngineDecisions(
            Engine.in_memory(), assume_refreshed=True)
    if args.with_oracle:
        factories["oracle"] = lambda cat, seed: OracleDecisions(cat)

    print(f"{n:,} impressions, {args.catalogue_size} items, seed {args.seed}, "
          f"drift at impression {round(args.drift_at * n) if drift_at_ms else '-'}, "
          f"one session per {interval} ms")
    print(f"{'method':18s} {'share of oracle':>16s} {'95% interval':>17s} {'coverage':>9s} "
          f"{'pre-drift':>9s} {'post-drift':>10s} {'recovery':>9s} {'rel.':>7s} {'secs':>6s}")
    reports: dict[str, SimulationReport] = {}
    result: dict[str, Any] = {"impressions": n, "catalogue_size": args.catalogue_size,
                              "seed": args.seed, "drift_at_ms": drift_at_ms,
                              "session_interval_ms": interval, "methods": {}}
    for name, factory in factories.items():
        if factory is None:
            print(f"{name:18s} (not registered yet: add a factory to METHODS)")
            continue
        started = time.perf_counter()
        shop = SimulatedShop(catalogue, seed=args.seed)
        report = run_closed_loop(factory(catalogue, args.seed), shop, impressions=n,
                                 seed=args.seed, session_interval_ms=interval)
        seconds = time.perf_counter() - started
        reports[name] = report
        share = report.share_of_oracle()
        d = report.drift_index if report.drift_index is not None else n
        pre, post = report.share_of_oracle(stop=d), report.share_of_oracle(start=d)
        rec = report.recovery_after_drift(window=args.window)
        rel = report.recovery_after_drift(window=args.window, relative_to_pre_drift=True)
        print(f"{name:18s} {fmt(share.share):>16s} "
              f"{'[' + fmt(share.ci95[0]) + ', ' + fmt(share.ci95[1]) + ']':>17s} "
              f"{fmt(report.coverage):>9s} {fmt(pre.share):>9s} {fmt(post.share):>10s} "
              f"{rec if rec is not None else 'never':>9} {rel if rel is not None else 'never':>7} "
              f"{seconds:6.1f}", flush=True)
        result["methods"][name] = {
            **report.summary(window=args.window),
            "pre_drift_share": pre.share,
            "post_drift_share": post.share,
            "seconds": seconds,
        }
    print("recovery: impressions after the drift until a trailing window of "
          f"{args.window} is within 5% of the oracle ('rel.': of the method's own pre-drift share)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot_reports(reports, args.plot, window=args.window)


if __name__ == "__main__":
    main()
