"""Off-policy estimates against the simulator's ground truth, and recovery after drift.

**Part 1: OPE coverage.** Five target policies are evaluated off-policy (IPS, SNIPS, and doubly
robust with the River conversion model as the direct-method model) from impressions logged by a
known logging policy in the simulated storefront, and each estimate's 95 % CLT interval is
checked against the policy's TRUE value, computed exactly from the catalogue's ground truth (no
sampling): ``V(pi) = sum_{anchor, segment} P(anchor) P(segment) sum_a pi(a | anchor, segment)
E[reward | anchor, segment, a]``, with ``P(anchor)`` the catalogue's popularity (restricted to
anchors that get an offer: a value per impression), ``P(segment)`` the segment shares and the
expected reward ``Catalogue.expected_reward`` (take-rate times value). Repeated over
``--seeds`` independent logs (same targets, same truth): the share of intervals that cover the
truth is each estimator's empirical coverage.

Setup (everything but the logs is built once, from seed ``--seed``):

1. *Candidates.* streamer's in-process ``Engine`` (v0 policy, default config) runs
   ``--warmup`` sessions of the closed loop and learns co-purchase statistics; then its
   candidates are frozen: per anchor the top 2 of ``stats.candidates(max_pairs=2,
   max_triples=1)`` by co-purchase score. An anchor's *actions* are those bundles x the
   0/5/10/15 % grid: at most 8 variants, the schema's ``MAX_VARIANTS``, so one offer carries
   every action and every target's action has logging support.
2. *Logging policy* (known, fixed, per anchor, segment-blind like streamer's offers):
   epsilon-greedy with epsilon 0.5 over the whole grid: the top bundle at 10 % gets ``0.5 +
   0.5/k``, every other action ``0.5/k`` (``k <= 8``: weights at most 16). It is published as
   one ``BundleOffer`` per anchor; the storefront code (``sample_variant``/``OfferBook``)
   samples a variant and the propensity it logs is the one used. ``SimulatedShop`` reacts, so
   rewards are sampled revenue (0 unless the bundle was bought through the offer).
3. *Training log.* A first log of ``--train-impressions`` (seed ``--seed``) trains the River
   ``ConversionModel`` (DM model; its prediction is also the torch policy's
   ``conversion_propensity`` feature) and fine-tunes the torch target. The evaluation logs
   (seeds ``seed+1 ..``) are independent of both, so DR's model and the torch target are fixed
   functions of data the estimators never see.

Targets:

- ``v0_eps0.1_d10``: streamer's v0 ``EpsilonGreedyPolicy(epsilon=0.1, discount_pct=10)``
  (production default) over the anchor's bundles;
- ``v0_eps0.3_d5``: the same class with epsilon 0.3 at a 5 % discount;
- ``uniform``: uniform over the anchor's bundles x discounts;
- ``greedy_lift_d15``: always the bundle of highest lift at 15 % (deterministic: the
  hardest case for importance weighting);
- ``torch_ft``: ``TorchPolicy.initial`` (softmax, temperature 1, floor 0.02, 8 shown) fine-tuned
  with ``streamer.policy.fine_tune`` (DR objective) on the training log, with the shopper's
  segment in its features (the only segment-aware target).

Features of the torch policy use the freeze time as decision time (offers built then and
served unchanged), so every target is a fixed function of (anchor, segment) and the true value
is exact.

**Part 2: recovery after drift.** streamer's v0 (``EngineDecisions``) and its learned policy
(``LearnedDecisions``: attribution, trainer, fine-tunes, hot swaps) each run
``--recovery-impressions`` of the closed loop with the season changing halfway; printed: share
of the oracle before/after, and ``SimulationReport.recovery_after_drift`` (impressions after the
drift until a trailing ``--window`` is within 5 % of the oracle; "never" if not within the run,
then also the recovery to within 5 % of the method's own pre-drift share).

Run time on 2 loaded cores with the defaults: about 2-4 minutes (part 1: 50 logs x 20k
impressions; part 2: ~1 ms per impression for the learned loop).

    PYTHONPATH=. python benchmarks/ope_coverage.py --json /tmp/ope.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.engine import Engine
from streamer.events import BundleOffer
from streamer.events.candidates import BundleCandidate
from streamer.offers import Choice
from streamer.online import FEATURE_NAMES, ConversionModel
from streamer.online.features import PROPENSITY_FEATURE, DecisionContext, variant_features
from streamer.policy import (
    EpsilonGreedyPolicy,
    FeedbackBuffer,
    FineTuneConfig,
    LoggedDecision,
    TorchPolicy,
    doubly_robust,
    fine_tune,
    ips,
    select_device,
    snips,
)
from streamer.simulation import (
    DEFAULT_START_MS,
    DISCOUNTS,
    Action,
    Catalogue,
    DecisionMaker,
    EngineDecisions,
    Shopper,
    SimulatedShop,
    SimulationReport,
    make_offer,
    run_closed_loop,
    sample_variant,
)
from streamer.simulation.learned import LearnedDecisions

ESTIMATORS = ("ips", "snips", "dr")
LOGGING_EPSILON = 0.5
LOGGING_DISCOUNT = 10.0
MAX_BUNDLES = 2  # x 4 discounts = 8 variants = the schema's MAX_VARIANTS


@dataclass(frozen=True, slots=True)
class Context:
    """One (anchor, segment) a shopper can bring: its probability and its actions' truth."""

    anchor: str
    segment: str
    probability: float


@dataclass(slots=True)
class World:
    """Frozen candidates, the logging offers and the per-context tables (contexts x 8)."""

    catalogue: Catalogue
    freeze_ms: int
    bundles: dict[str, list[BundleCandidate]]  # anchor -> its bundles, canonical order
    actions: dict[str, list[Action]]  # anchor -> bundles x discounts (offer variant order)
    offers: dict[str, BundleOffer]
    contexts: list[Context]
    index: dict[tuple[str, str], int]
    truth: np.ndarray  # [C, 8] expected reward per impression under the ground truth
    valid: np.ndarray  # [C, 8]
    logging: np.ndarray  # [C, 8] logging probabilities

    def features(self, c: int, dm: ConversionModel | None) -> list[dict[str, float]]:
        ctx = self.contexts[c]
        dctx = DecisionContext(ctx.segment, self.freeze_ms, self.catalogue.prices)
        rows = []
        for cand in self.bundles[ctx.anchor]:
            for d in DISCOUNTS:
                f = variant_features(cand, d, dctx)
                if dm is not None:
                    f[PROPENSITY_FEATURE] = dm.predict_one(f)
                rows.append(f)
        return rows


def build_world(catalogue: Catalogue, *, warmup: int, seed: int) -> World:
    """Learn co-purchase statistics with streamer's engine for ``warmup`` sessions, freeze the
    candidates, publish the logging offers and tabulate the truth per (anchor, segment)."""
    engine = Engine.in_memory()
    run_closed_loop(EngineDecisions(engine), SimulatedShop(catalogue, seed=seed),
                    impressions=warmup, seed=seed)
    freeze = DEFAULT_START_MS + warmup * 1_000
    season = catalogue.seasons[0]
    cum = np.asarray(season.cumulative_popularity)
    popularity = np.diff(np.concatenate(([0.0], cum))) / cum[-1]
    bundles: dict[str, list[BundleCandidate]] = {}
    actions: dict[str, list[Action]] = {}
    offers: dict[str, BundleOffer] = {}
    for anchor in catalogue.items:
        found = engine.stats.candidates(anchor, now_ms=freeze, max_pairs=2, max_triples=1,
                                        min_support=2.0)
        ranked = sorted((c for c in found if all(i in catalogue.prices for i in c.items)),
                        key=lambda c: (-c.score, c.items))
        cands: list[BundleCandidate] = list(ranked[:MAX_BUNDLES])
        if not cands:
            continue
        acts = [Action(tuple(c.items), d) for c in cands for d in DISCOUNTS]
        k = len(acts)
        probs = [LOGGING_EPSILON / k + (1.0 - LOGGING_EPSILON if j == DISCOUNTS.index(
            LOGGING_DISCOUNT) else 0.0) for j in range(k)]
        bundles[anchor], actions[anchor] = cands, acts
        offers[anchor] = make_offer(anchor, acts, probs, prices=catalogue.prices,
                                    policy_version="logger", now_ms=freeze, ttl_ms=10**12)
    mass = sum(popularity[i] for i, a in enumerate(catalogue.items) if a in bundles)
    contexts: list[Context] = []
    index: dict[tuple[str, str], int] = {}
    for i, anchor in enumerate(catalogue.items):
        if anchor not in bundles:
            continue
        for s in catalogue.segments:
            index[(anchor, s.name)] = len(contexts)
            contexts.append(Context(anchor, s.name, popularity[i] / mass * s.share))
    n = len(contexts)
    truth = np.zeros((n, 8))
    valid = np.zeros((n, 8), dtype=bool)
    logging = np.zeros((n, 8))
    for c, ctx in enumerate(contexts):
        seg = catalogue.segment(ctx.segment)
        offer = offers[ctx.anchor]
        for j, a in enumerate(actions[ctx.anchor]):
            truth[c, j] = catalogue.expected_reward(a.items, a.discount_pct, seg, freeze)
            valid[c, j] = True
            logging[c, j] = offer.variants[j].probability
    return World(catalogue, freeze, bundles, actions, offers, contexts, index, truth, valid,
                 logging)


@dataclass(frozen=True, slots=True)
class Log:
    context: np.ndarray  # [N] context index
    action: np.ndarray  # [N] variant index in the offer
    propensity: np.ndarray  # [N] as logged by the storefront
    reward: np.ndarray  # [N] sampled
    sessions: int


def collect_log(world: World, impressions: int, seed: int) -> Log:
    """``impressions`` offer impressions of the logging policy (sessions whose anchor has no
    offer are skipped), sampled by the storefront code, answered by ``SimulatedShop``."""
    shop = SimulatedShop(world.catalogue, seed=seed)
    sampler = random.Random(seed)
    ctx: list[int] = []
    act: list[int] = []
    prop: list[float] = []
    rew: list[float] = []
    sessions = 0
    now = world.freeze_ms
    while len(ctx) < impressions:
        sessions += 1
        now += 1_000

        def choose(s: Shopper, _: random.Random, now: int = now) -> Choice | None:
            return sample_variant(world.offers.get(s.anchor), s.anchor, sampler, now)

        visit = shop.visit(now_ms=now, choose=choose)
        if visit.choice is None:
            continue
        c = world.index[(visit.shopper.anchor, visit.shopper.segment.name)]
        j = visit.choice.variant
        if abs(visit.expected_reward - world.truth[c, j]) > 1e-9:
            raise AssertionError("truth table disagrees with the shop")
        ctx.append(c)
        act.append(j)
        prop.append(visit.choice.propensity)
        rew.append(visit.reward)
    return Log(np.asarray(ctx), np.asarray(act), np.asarray(prop, dtype=np.float64),
               np.asarray(rew, dtype=np.float64), sessions)


def train_dm(world: World, log: Log) -> ConversionModel:
    """The River conversion model (streamer's DM model) learned on the training log."""
    dm = ConversionModel()
    feats = {}
    for c, j, r in zip(log.context.tolist(), log.action.tolist(), log.reward.tolist(),
                       strict=True):
        if c not in feats:
            feats[c] = world.features(c, None)
        dm.learn_one(feats[c][j], r > 0)
    return dm


def fine_tuned_policy(world: World, log: Log, dm: ConversionModel, q: np.ndarray,
                      feats: list[list[dict[str, float]]], *, seed: int,
                      epochs: int) -> tuple[TorchPolicy, dict[str, Any]]:
    """``TorchPolicy.initial`` fine-tuned on the training log with streamer's ``fine_tune``."""
    buffer = FeedbackBuffer(FEATURE_NAMES, capacity=len(log.context), max_actions=8)
    for c, j, p, r in zip(log.context.tolist(), log.action.tolist(), log.propensity.tolist(),
                          log.reward.tolist(), strict=True):
        k = len(feats[c])
        buffer.append(LoggedDecision(variant_features=feats[c], chosen=j, propensity=p,
                                     reward=r, expected_rewards=q[c, :k].tolist()))
    live = TorchPolicy.initial(FEATURE_NAMES, seed=seed)
    config = FineTuneConfig(objective="dr", epochs=epochs, batch_size=512, learning_rate=1e-2,
                            device="cpu", seed=seed)
    result = fine_tune(live, buffer.snapshot(), config)
    return result.candidate, result.metadata()


def target_tables(world: World, torch_policy: TorchPolicy,
                  feats: list[list[dict[str, float]]]) -> dict[str, np.ndarray]:
    """Each target's probability of every action in every context ([C, 8])."""
    n = len(world.contexts)
    tables = {name: np.zeros((n, 8)) for name in
              ("v0_eps0.1_d10", "v0_eps0.3_d5", "uniform", "greedy_lift_d15", "torch_ft")}
    v0 = {"v0_eps0.1_d10": EpsilonGreedyPolicy(epsilon=0.1, discount_pct=10.0),
          "v0_eps0.3_d5": EpsilonGreedyPolicy(epsilon=0.3, discount_pct=5.0)}
    for c, ctx in enumerate(world.contexts):
        acts = world.actions[ctx.anchor]
        pos = {(a.items, a.discount_pct): j for j, a in enumerate(acts)}
        cands = world.bundles[ctx.anchor]
        for name, policy in v0.items():
            for p in policy.propose(ctx.anchor, cands):
                tables[name][c, pos[(tuple(p.candidate.items), p.discount_pct)]] += p.probability
        tables["uniform"][c, : len(acts)] = 1.0 / len(acts)
        best = max(cands, key=lambda b: (b.lift, b.score))
        tables["greedy_lift_d15"][c, pos[(tuple(best.items), 15.0)]] = 1.0
        rows = feats[c]
        # decide() orders candidates by (-score, items), as world.bundles already are.
        decision = torch_policy.decide(ctx.anchor, cands, featurizer=_Rows(rows, cands))
        tables["torch_ft"][c, : len(decision.probabilities)] = decision.probabilities
    for name, t in tables.items():
        if not np.allclose(t.sum(1), 1.0):
            raise AssertionError(f"{name}: probabilities do not sum to 1")
        if (t[~world.valid] != 0).any() or ((t > 0) & (world.logging == 0)).any():
            raise AssertionError(f"{name}: mass outside the logging support")
    return tables


@dataclass(frozen=True, slots=True)
class _Rows:
    """A ``VariantFeaturizer`` answering precomputed rows (bundle-major, discount-minor)."""

    rows: list[dict[str, float]]
    cands: list[BundleCandidate]

    def __call__(self, candidate: BundleCandidate, discount_pct: float) -> dict[str, float]:
        k = self.cands.index(candidate)
        return self.rows[k * len(DISCOUNTS) + DISCOUNTS.index(discount_pct)]


def estimates(log: Log, table: np.ndarray, q: np.ndarray) -> dict[str, Any]:
    p1 = table[log.context, log.action]
    qi = q[log.context, log.action]
    v = (table * q).sum(1)[log.context]
    return {"ips": ips(log.propensity, log.reward, p1),
            "snips": snips(log.propensity, log.reward, p1),
            "dr": doubly_robust(log.propensity, log.reward, p1, qi, v)}


def recovery(catalogue_size: int, impressions: int, seed: int, window: int) -> dict[str, Any]:
    drift_at = DEFAULT_START_MS + (impressions // 2) * 1_000
    cat = Catalogue.generate(catalogue_size, seed=seed, drift_at_ms=drift_at)
    out: dict[str, Any] = {"impressions": impressions, "drift_index": impressions // 2,
                           "window": window, "methods": {}}
    methods: dict[str, Callable[[], DecisionMaker]] = {
               "streamer_v0": lambda: EngineDecisions(Engine.in_memory()),
               "streamer_learned": lambda: LearnedDecisions(seed=seed)}
    for name, factory in methods.items():
        started = time.perf_counter()
        report: SimulationReport = run_closed_loop(factory(), SimulatedShop(cat, seed=seed),
                                                   impressions=impressions, seed=seed)
        d = report.drift_index if report.drift_index is not None else impressions
        pre_w = report.share_of_oracle(start=max(0, d - window), stop=d)
        out["methods"][name] = {
            "share": report.share_of_oracle().share,
            "pre_drift_share": report.share_of_oracle(stop=d).share,
            "pre_drift_window_share": pre_w.share,
            "post_drift_share": report.share_of_oracle(start=d).share,
            "last_window_share": report.share_of_oracle(start=impressions - window).share,
            "recovery_impressions": report.recovery_after_drift(window=window),
            "recovery_impressions_relative": report.recovery_after_drift(
                window=window, relative_to_pre_drift=True),
            "seconds": time.perf_counter() - started,
        }
    return out


def pct(x: float) -> str:
    return f"{x:.4f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=20_000,
                        help="closed-loop sessions the engine learns candidates from")
    parser.add_argument("--train-impressions", type=int, default=20_000)
    parser.add_argument("--impressions", type=int, default=20_000,
                        help="logged impressions per evaluation log")
    parser.add_argument("--seeds", type=int, default=50, help="evaluation logs")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (torch target)")
    parser.add_argument("--recovery-impressions", type=int, default=60_000,
                        help="closed-loop run of part 2, drift halfway (0: skip part 2)")
    parser.add_argument("--window", type=int, default=2_000)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    select_device("cpu", max_threads=1)
    started = time.perf_counter()

    catalogue = Catalogue.generate(args.catalogue_size, seed=args.seed)
    world = build_world(catalogue, warmup=args.warmup, seed=args.seed)
    train_log = collect_log(world, args.train_impressions, args.seed)
    dm = train_dm(world, train_log)
    feats = [world.features(c, dm) for c in range(len(world.contexts))]
    q = np.zeros_like(world.truth)
    for c, rows in enumerate(feats):
        q[c, : len(rows)] = [dm.expected_reward(f) for f in rows]
    policy, meta = fine_tuned_policy(world, train_log, dm, q, feats, seed=args.seed,
                                     epochs=args.epochs)
    tables = target_tables(world, policy, feats)
    weights = np.array([ctx.probability for ctx in world.contexts])
    true = {name: float(weights @ (t * world.truth).sum(1)) for name, t in tables.items()}
    logging_value = float(weights @ (world.logging * world.truth).sum(1))
    oracle_value = float(weights @ world.truth.max(1))
    dm_value_err = {name: float(weights @ (t * q).sum(1)) - true[name]
                    for name, t in tables.items()}
    setup_s = time.perf_counter() - started
    print(f"catalogue {args.catalogue_size} items, seed {args.seed}; {len(world.offers)} anchors "
          f"with an offer, {len(world.contexts)} (anchor, segment) contexts; setup {setup_s:.1f} s")
    print(f"logging policy value {logging_value:.4f}, best action per context (oracle over the "
          f"same actions) {oracle_value:.4f}; torch fine-tune: {meta['reason']}")

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
    for k in range(args.seeds):
        log = collect_log(world, args.impressions, args.seed + 1 + k)
        for name, table in tables.items():
            ests = estimates(log, table, q)
            runs[name].append({e: {"value": est.value, "ci95": [est.lower, est.upper],
                                   "covers": bool(est.lower <= true[name] <= est.upper),
                                   "ess": est.ess}
                               for e, est in ests.items()})
    ope_s = time.perf_counter() - started - setup_s

    print(f"\nOPE, first evaluation log (seed {args.seed + 1}, {args.impressions:,} impressions): "
          "estimate [95% interval] covers?")
    print(f"{'policy':16s} {'true':>7s} " + " ".join(f"{e:>29s}" for e in ESTIMATORS))
    for name in tables:
        cells = []
        for e in ESTIMATORS:
            r = runs[name][0][e]
            cells.append(f"{r['value']:.4f} [{r['ci95'][0]:.4f},{r['ci95'][1]:.4f}] "
                         f"{'yes' if r['covers'] else 'NO':>3s}")
        print(f"{name:16s} {true[name]:7.4f} " + " ".join(f"{c:>29s}" for c in cells))

    print(f"\nover {args.seeds} logs: coverage of the truth (mean estimate - truth, mean "
          "interval half-width)")
    print(f"{'policy':16s} " + " ".join(f"{e:>26s}" for e in ESTIMATORS) + f" {'ESS':>7s}")
    coverage: dict[str, dict[str, Any]] = {}
    for name in tables:
        cells = []
        coverage[name] = {}
        for e in ESTIMATORS:
            rs = [r[e] for r in runs[name]]
            cov = sum(r["covers"] for r in rs) / len(rs)
            bias = float(np.mean([r["value"] for r in rs])) - true[name]
            half = float(np.mean([(r["ci95"][1] - r["ci95"][0]) / 2 for r in rs]))
            coverage[name][e] = {"coverage": cov, "mean_error": bias, "mean_half_width": half}
            cells.append(f"{100 * cov:5.0f}% ({bias:+.4f}, {half:.4f})")
        ess = float(np.mean([r["ips"]["ess"] for r in runs[name]]))
        print(f"{name:16s} " + " ".join(f"{c:>26s}" for c in cells) + f" {ess:7.0f}")
    overall = {e: sum(r[e]["covers"] for n in tables for r in runs[n]) /
               (len(tables) * args.seeds) for e in ESTIMATORS}
    print(f"{'all 5 policies':16s} " + " ".join(f"{100 * overall[e]:25.1f}%" for e in ESTIMATORS))
    n_int = args.seeds * len(tables)
    print(f"(nominal 95%; with {n_int} intervals per estimator the binomial s.e. of a true 95% "
          f"coverage is {100 * math.sqrt(0.95 * 0.05 / n_int):.1f} points, per policy "
          f"{100 * math.sqrt(0.95 * 0.05 / args.seeds):.1f}; OPE part {ope_s:.1f} s)")
    print("DM-only error (model value - truth): "
          + ", ".join(f"{n} {v:+.4f}" for n, v in dm_value_err.items()))

    result: dict[str, Any] = {
        "catalogue_size": args.catalogue_size, "seed": args.seed, "warmup": args.warmup,
        "train_impressions": args.train_impressions, "impressions": args.impressions,
        "seeds": args.seeds, "logging_value": logging_value, "oracle_value": oracle_value,
        "fine_tune": meta, "true_values": true, "dm_only_error": dm_value_err,
        "coverage": coverage, "overall_coverage": overall, "runs": runs,
    }

    if args.recovery_impressions > 0:
        rec = recovery(args.catalogue_size, args.recovery_impressions, args.seed, args.window)
        result["recovery"] = rec
        print(f"\nrecovery after drift: {rec['impressions']:,} impressions, season change at "
              f"{rec['drift_index']:,}, trailing window {rec['window']:,}")
        print(f"{'method':18s} {'pre-drift':>9s} {'pre (last W)':>12s} {'post-drift':>10s} "
              f"{'last W':>7s} {'to 95% oracle':>14s} {'to 95% own pre':>15s} {'secs':>6s}")
        for name, m in rec["methods"].items():
            r, rr = m["recovery_impressions"], m["recovery_impressions_relative"]
            print(f"{name:18s} {100 * m['pre_drift_share']:8.1f}% "
                  f"{100 * m['pre_drift_window_share']:11.1f}% "
                  f"{100 * m['post_drift_share']:9.1f}% {100 * m['last_window_share']:6.1f}% "
                  f"{r if r is not None else 'never':>14} {rr if rr is not None else 'never':>15} "
                  f"{m['seconds']:6.1f}")
    result["seconds"] = time.perf_counter() - started
    print(f"total {result['seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
