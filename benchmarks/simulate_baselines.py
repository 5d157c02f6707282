"""Closed-loop simulation, side by side: each method's reward as a share of the oracle's.

Same simulated storefront (catalogue, seed, shoppers) for every method, in process, no Kafka.
Each of ``--impressions`` sessions views an anchor; the method's live offer (if any) is
sampled with its published probabilities; rewards are expected values under the ground
truth, so the shares are low-variance (see ``streamer.simulation.report``). The season
changes at ``--drift-at`` of the run.

    python benchmarks/simulate_baselines.py --impressions 100000 --json /tmp/sim.json \\
        --plot /tmp/sim.png

Methods: ``streamer`` (the in-process Engine with its v0 epsilon-greedy policy, default
EngineConfig), ``streamer_learned`` (the engine serving the torch policy, with attribution,
the River conversion model, the trainer's buffer and a fine-tune every 5,000 closed
impressions or on an ADWIN reward-drift alarm, promoted versions hot-swapped in; engine
configuration and first policy as ``streamer.simulation.learned`` sets them, and one offer
per (anchor, segment): the storefront knows its shopper's segment),
``greedy_lift`` (highest-lift partner at a fixed 10 %), ``random`` (uniform over
co-purchase candidates x 0/5/10/15 %), and ``vw`` (Vowpal Wabbit ``--cb_explore_adf`` over
the same candidates as ``random``: an optional benchmark dependency, ``pip install -e
'.[bench]'``; listed as unavailable without it). Neither VW nor the v0 ``streamer`` sees
the shopper's segment (offers per anchor); ``--diagnostics`` adds ``streamer_learned_blind``,
the learned loop with offers per anchor only, for comparison.

The ``late`` column (``late_season_share`` in the JSON) is the share over the second half of
each season: what a method earns once it has learned, apart from its warm-up and its recovery
from the season change, both of which the cumulative share includes.

For ``streamer_learned`` it also prints (and writes as ``fine_tunes`` / ``promoted``) how many
fine-tunes ran and how many of their candidates passed the promotion gate.

``--decompose`` splits each method's gap to the oracle into causes (coverage, candidate
generation, segment blindness, selection, ranking, exploration; and the ceiling of any
segment-blind policy): ``streamer.simulation.decompose``. The ``recovery`` column (and
``recovery_impressions`` in the JSON) is the drift-recovery figure: impressions after the drift
until a trailing window of ``--window`` impressions is within 5 % of the oracle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from typing import Any

from streamer.engine import Engine, EngineConfig
from streamer.events import ClickEvent, PurchaseEvent
from streamer.policy import FineTuneConfig
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
from streamer.simulation.decompose import LOSSES, OracleShareChain
from streamer.simulation.learned import (
    SIMULATION_ENGINE,
    LearnedDecisions,
    simulation_fine_tune,
)
from streamer.simulation.loop import make_offer

Factory = Callable[[Catalogue, int], DecisionMaker]


class VowpalWabbitCB(UniformRandom):
    """Vowpal Wabbit ``--cb_explore_adf`` (epsilon-greedy exploration) choosing among the
    candidates of :class:`UniformRandom` (co-bought pairs and triples x the discount grid).

    Shared features: the anchor id; per action: the partners, the discount, bundle size,
    log support and lift, log list price (and anchor x discount interactions). The offer shows
    VW's ``max_variants`` most probable actions with its probabilities renormalised over them
    (what is logged and learned from); the cost of an impression is minus the bundle revenue
    bought through it in the session.
    """

    def __init__(self, prices: Any, *, seed: int = 0, max_variants: int = 8) -> None:
        from vowpalwabbit import Workspace

        super().__init__(prices, seed=seed, max_variants=max_variants)
        self.vw = Workspace(f"--cb_explore_adf --epsilon 0.05 -q sa --quiet --random_seed {seed}")
        self.shown: dict[str, tuple[list[str], list[float]]] = {}

    def _examples(self, anchor: str, actions: list[Any]) -> list[str]:
        lines = [f"shared |s a_{anchor}"]
        for a in actions:
            ev = self.counts.evidence(a.items)
            price = sum(self.prices[i] for i in a.items)
            partners = " ".join(f"p_{i}" for i in a.items[1:])
            lines.append(f"|a {partners} d{a.discount_pct:g} n{len(a.items)} "
                         f"sup:{math.log1p(ev.support):.4f} lift:{math.log1p(ev.lift):.4f} "
                         f"price:{math.log1p(price):.4f}")
        return lines

    def offer_for(self, anchor: str, segment: str, now_ms: int) -> Any:
        actions = self.candidates(anchor)
        if not actions:
            return None
        examples = self._examples(anchor, actions)
        pmf = self.vw.predict(examples)
        top = sorted(range(len(actions)), key=lambda k: -pmf[k])[: self.max_variants]
        probs = [max(pmf[k], 1e-6) for k in top]
        total = sum(probs)
        offer = make_offer(anchor, [actions[k] for k in top], probs, prices=self.prices,
                           policy_version="vw", now_ms=now_ms,
                           evidence=[self.counts.evidence(actions[k].items) for k in top])
        if offer.offer_id not in self.shown:
            if len(self.shown) > 50_000:
                self.shown.clear()
            self.shown[offer.offer_id] = ([examples[0]] + [examples[k + 1] for k in top],
                                          [p / total for p in probs])
        return offer

    def learn(self, events: Any) -> None:
        self.counts.learn(events)
        impressions: dict[str, tuple[str, int]] = {}
        revenue: dict[tuple[str, str], float] = {}
        for e in events:
            if isinstance(e, ClickEvent) and e.kind == "offer_impression" and e.offer_id:
                impressions[e.session_id] = (e.offer_id, e.variant or 0)
            elif isinstance(e, PurchaseEvent) and e.offer_id:
                key = (e.session_id, e.offer_id)
                revenue[key] = revenue.get(key, 0.0) + sum(
                    line.quantity * line.unit_price for line in e.items)
        for session, (offer_id, variant) in impressions.items():
            if offer_id not in self.shown:
                continue
            examples, probs = self.shown[offer_id]
            cost = -revenue.get((session, offer_id), 0.0)
            labelled = list(examples)
            labelled[variant + 1] = f"0:{cost}:{probs[variant]} {labelled[variant + 1]}"
            self.vw.learn(labelled)


def vw_factory(cat: Catalogue, seed: int) -> DecisionMaker:
    return VowpalWabbitCB(cat.prices, seed=seed)


def vw_available() -> bool:
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        return False
    return True


#: name -> factory(catalogue, seed); None: unavailable here (listed, not run).
METHODS: dict[str, Factory | None] = {
    "streamer": lambda cat, seed: EngineDecisions(Engine.in_memory()),
    "streamer_learned": lambda cat, seed: LearnedDecisions(
        seed=seed, segments=[s.name for s in cat.segments]),
    "greedy_lift": lambda cat, seed: GreedyLift(cat.prices, discount_pct=10.0),
    "random": lambda cat, seed: UniformRandom(cat.prices, seed=seed),
    "vw": vw_factory if vw_available() else None,
}


def candidate_source(decider: Any) -> Callable[[str, int], list[tuple[str, ...]]] | None:
    """The decision-maker's candidate bundles at a time, for the decomposition (None: only
    its live offer's bundles count as its candidates)."""
    engine = getattr(decider, "engine", None)
    if isinstance(engine, Engine):
        config, catalog = engine.config, engine.state.catalog

        def engine_candidates(anchor: str, now_ms: int) -> list[tuple[str, ...]]:
            found = engine.stats.candidates(anchor, now_ms=now_ms, max_pairs=config.max_pairs,
                                            max_triples=config.max_triples,
                                            min_support=config.min_support)
            return [c.items for c in found if all(i in catalog for i in c.items)]

        return engine_candidates
    if isinstance(decider, UniformRandom):
        return lambda anchor, now_ms: list(dict.fromkeys(
            a.items for a in decider.candidates(anchor)))
    return None


def late_share(report: SimulationReport, d: int, n: int) -> float:
    """The share of the oracle over the second half of each season (``d``: the drift's index,
    ``n`` without one): what a method earns once it has learned, apart from its warm-up and
    its recovery from the season change, which the cumulative share includes."""
    a = report.arrays()
    late = [slice(d // 2, d)] + ([slice(d + (n - d) // 2, n)] if d < n else [])
    oracle = sum(float(a["oracle"][s].sum()) for s in late)
    return sum(float(a["expected"][s].sum()) for s in late) / oracle if oracle > 0 else math.nan


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
                        help="also run streamer with offers that never lapse (streamer_refreshed) "
                        "and the learned loop without segments (streamer_learned_blind)")
    parser.add_argument("--decompose", action="store_true",
                        help="also split each method's gap to the oracle into causes "
                        "(streamer.simulation.decompose; slower)")
    parser.add_argument("--reward-attribution", choices=("offer", "any"), default="offer",
                        help="what streamer_learned learns from (policy.reward_attribution): "
                        "purchases through the offer only, or organic baskets holding the "
                        "bundle too")
    parser.add_argument("--min-change", type=float, default=None,
                        help="offers.min_change of both streamer methods (default: each one's, "
                        "0.05): the probability mass that must move for a changed offer to be "
                        "republished; 0 republishes every change")
    parser.add_argument("--max-variants", type=int, default=None,
                        help="offers.max_variants of streamer_learned: the most variants its "
                        "offers show (default: its first policy's, 8)")
    parser.add_argument("--gate-confidence", type=float, default=None,
                        help="the learned loop's promotion gate: the confidence of the paired "
                             "lower bound a fine-tune must clear (default 0.95; near 0 promotes "
                             "on the point estimate)")
    parser.add_argument("--json", default="", help="write the figures to this path")
    parser.add_argument("--plot", default="", help="write regret/share curves to this PNG")
    args = parser.parse_args()
    if args.gate_confidence is not None and not 0.0 < args.gate_confidence < 1.0:
        parser.error("--gate-confidence must be in (0, 1)")
    if args.max_variants is not None and not 1 <= args.max_variants <= 8:
        parser.error("--max-variants must be in [1, 8] (as offers.max_variants)")

    n, interval = args.impressions, args.session_interval_ms
    drift_at_ms = (DEFAULT_START_MS + round(args.drift_at * n) * interval
                   if 0.0 <= args.drift_at < 1.0 else None)
    catalogue = Catalogue.generate(args.catalogue_size, seed=args.seed, drift_at_ms=drift_at_ms)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(names) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {sorted(unknown)}")
    factories: dict[str, Factory | None] = {k: METHODS[k] for k in names}
    v0_config = EngineConfig()
    learned_config = SIMULATION_ENGINE
    if args.min_change is not None:
        v0_config = dataclasses.replace(v0_config, min_change=args.min_change)
        learned_config = dataclasses.replace(learned_config, min_change=args.min_change)

    def fine_tune_config(seed: int) -> FineTuneConfig:
        config = simulation_fine_tune(seed)
        if args.gate_confidence is None:
            return config
        return dataclasses.replace(config, confidence=args.gate_confidence)

    if "streamer" in factories:
        factories["streamer"] = lambda cat, seed: EngineDecisions(Engine.in_memory(v0_config))
    if "streamer_learned" in factories:
        factories["streamer_learned"] = lambda cat, seed: LearnedDecisions(
            config=learned_config, seed=seed, segments=[s.name for s in cat.segments],
            reward_attribution=args.reward_attribution, fine_tune=fine_tune_config(seed),
            max_variants=args.max_variants)
    if args.diagnostics:
        # Not a method: streamer as it would do if stable offers did not lapse at the
        # storefront (see EngineDecisions.assume_refreshed).
        factories["streamer_refreshed"] = lambda cat, seed: EngineDecisions(
            Engine.in_memory(v0_config), assume_refreshed=True)
        # The learned loop with one offer per anchor for every segment (as before segments).
        factories["streamer_learned_blind"] = lambda cat, seed: LearnedDecisions(
            config=learned_config, seed=seed, reward_attribution=args.reward_attribution,
            fine_tune=fine_tune_config(seed), max_variants=args.max_variants)
    if args.with_oracle:
        factories["oracle"] = lambda cat, seed: OracleDecisions(cat)

    print(f"{n:,} impressions, {args.catalogue_size} items, seed {args.seed}, "
          f"drift at impression {round(args.drift_at * n) if drift_at_ms else '-'}, "
          f"one session per {interval} ms")
    print(f"{'method':18s} {'share of oracle':>16s} {'95% interval':>17s} {'coverage':>9s} "
          f"{'pre-drift':>9s} {'post-drift':>10s} {'late':>6s} {'recovery':>9s} {'rel.':>7s} "
          f"{'secs':>6s}")
    reports: dict[str, SimulationReport] = {}
    result: dict[str, Any] = {"impressions": n, "catalogue_size": args.catalogue_size,
                              "seed": args.seed, "drift_at_ms": drift_at_ms,
                              "reward_attribution": args.reward_attribution,
                              "gate_confidence": fine_tune_config(args.seed).confidence,
                              "max_variants": args.max_variants,
                              "session_interval_ms": interval, "methods": {}}
    for name, factory in factories.items():
        if factory is None:
            print(f"{name:18s} (unavailable: pip install -e '.[bench]')")
            continue
        started = time.perf_counter()
        shop = SimulatedShop(catalogue, seed=args.seed)
        decider = factory(catalogue, args.seed)
        chain = (OracleShareChain(catalogue, candidates=candidate_source(decider),
                                  split_at=round(args.drift_at * n) if drift_at_ms else None)
                 if args.decompose else None)
        report = run_closed_loop(decider, shop, impressions=n, seed=args.seed,
                                 session_interval_ms=interval,
                                 on_visit=chain.on_visit if chain else None)
        seconds = time.perf_counter() - started
        reports[name] = report
        share = report.share_of_oracle()
        d = report.drift_index if report.drift_index is not None else n
        pre, post = report.share_of_oracle(stop=d), report.share_of_oracle(start=d)
        late = late_share(report, d, n)
        rec = report.recovery_after_drift(window=args.window)
        rel = report.recovery_after_drift(window=args.window, relative_to_pre_drift=True)
        print(f"{name:18s} {fmt(share.share):>16s} "
              f"{'[' + fmt(share.ci95[0]) + ', ' + fmt(share.ci95[1]) + ']':>17s} "
              f"{fmt(report.coverage):>9s} {fmt(pre.share):>9s} {fmt(post.share):>10s} "
              f"{fmt(late):>6s} "
              f"{rec if rec is not None else 'never':>9} {rel if rel is not None else 'never':>7} "
              f"{seconds:6.1f}", flush=True)
        result["methods"][name] = {
            **report.summary(window=args.window),
            "pre_drift_share": pre.share,
            "post_drift_share": post.share,
            "late_season_share": late,
            "seconds": seconds,
        }
        fine_tunes = getattr(decider, "fine_tunes", None)
        if fine_tunes is not None:  # the learned loop: how often a fine-tune passed the gate
            promoted = sum(bool(ft.get("promoted")) for ft in fine_tunes)
            result["methods"][name]["fine_tunes"] = len(fine_tunes)
            result["methods"][name]["promoted"] = promoted
            print(f"  fine-tunes {len(fine_tunes)}, promoted {promoted}", flush=True)
        if chain is not None:
            result["methods"][name]["decomposition"] = chain.summary()
            parts = [("all", None)] + ([("pre", 0), ("post", 1)] if drift_at_ms else [])
            for label, part in parts:
                shares, losses = chain.shares(part), chain.losses(part)
                discount = shares["mode_discount"] - shares["mode"]
                notes = {"ranking": f" (discount {fmt(discount).strip()})"}
                lost = ", ".join(f"{k.replace('_', ' ')} {fmt(losses[k]).strip()}"
                                 + notes.get(k, "") for k in LOSSES)
                print(f"  {label:4s} served {fmt(shares['served'])}; lost to {lost}; "
                      f"segment-blind ceiling {fmt(shares['oracle_blind']).strip()}",
                      flush=True)
    print("late: the share over the second half of each season (after the warm-up and the "
          "recovery from the season change)")
    print("recovery: impressions after the drift until a trailing window of "
          f"{args.window} is within 5% of the oracle ('rel.': of the method's own pre-drift share)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot_reports(reports, args.plot, window=args.window)


if __name__ == "__main__":
    main()
