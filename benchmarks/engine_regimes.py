"""The engine's CPU per purchase in the regimes a live worker goes through, in process.

``benchmarks/throughput.py`` times the worker as it starts: the v0 policy, the conversion model
cold (no impression closed yet, so it answers its base rate). A worker that has run for a while
is in another regime: the conversion model warm (both regressions answering, per-bundle ratios),
and once the trainer published one, the learned policy live, which featurizes every candidate at
every discount level (the conversion model's answer is one of the features) and runs its network
on every offer revision. This measures them on the same purchases:

- ``v0_cold``: the v0 policy, the conversion model cold (what ``throughput.py`` measures);
- ``v0_warm``: the v0 policy, the conversion model warm (the decision log featurizes every
  published offer's variants);
- ``learned_cold``: the learned policy (``TorchPolicy.initial``: a trained one costs the same),
  torch on one CPU thread as the worker serves, the conversion model cold (what
  ``throughput.py``'s ``streamer_learned`` mode measures in the worker);
- ``learned_warm``: the learned policy and the conversion model warm.

Each run is a child process: ``throughput.py``'s ``engine_work`` (the worker's engine, tables
and write-back, in process; ``--batch`` purchases learned together, as an agent learns a batch
of events: 1 by default, as ``throughput.py``'s in-process modes do) over ``--events``
purchases after ``--warmup`` untimed ones, the
conversion model then taught ``--records`` synthetic closed impressions (seeded; clicks known,
a conversion rate of ~10 %) where warm, the learned policy set where learned. Runs are
interleaved over ``--repeats`` and the medians printed, with CPU microseconds per purchase (the
process's CPU time, steadier than wall time on a shared machine). ``--ref DIR`` also runs each
regime with another checkout's engine (e.g. a ``git archive`` of the commit before a change),
alternating with this one, and prints the ratio of each pair, and their median.

    PYTHONPATH=. python benchmarks/engine_regimes.py --repeats 5
    PYTHONPATH=. python benchmarks/engine_regimes.py --regimes learned_warm --ref /tmp/before

CPU time on a shared machine moves by tens of percent between identical runs (here: the same
engine 78-143 us per purchase minutes apart), more than most single changes.
``--instructions`` counts instead what the engine executes, with valgrind's callgrind: each
regime's child runs twice under it, with ``--events`` timed purchases and with a tenth of them,
and the difference over the purchases between is the instructions per purchase (the tables
written back every ``--flush-every`` purchases, 1,000, not every second of wall time, which
under callgrind would be every few dozen; ``PYTHONHASHSEED`` fixed; the machine's load does not
count). It takes minutes (~50x slower than without: ``--events 2000 --warmup 2000`` is a good
size), runs as many children at once as there are cores, and needs ``valgrind`` on the
``PATH``.

    PYTHONPATH=. python benchmarks/engine_regimes.py --instructions --events 2000 \
        --warmup 2000 --batch 200 --regimes v0_cold,learned_cold --ref /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REGIMES = ("v0_cold", "v0_warm", "learned_cold", "learned_warm")
ROOT = Path(__file__).resolve().parents[1]


def child(regime: str, events: int, warmup: int, records: int, spacing_ms: float,
          batch: int = 1, flush_every: int | None = None) -> float:
    """CPU microseconds per purchase of the engine of the checkout on ``sys.path``."""
    import random
    import time
    from types import SimpleNamespace

    import throughput

    import streamer.engine as engine_module
    from streamer.app.worker import tune_gc
    from streamer.settings import Settings

    # The garbage collector as the checkout's worker sets it: at Python's default a young
    # collection ran every few purchases, ~10 % of the time, most of it counted on whichever
    # line allocated (a policy's proposals, a signature's tuples).
    tune_gc(Settings().worker)

    made: list[object] = []
    init = engine_module.Engine.__init__

    def capture(self: object, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    # engine_work builds the engine inside; its instance is taken on the way (any checkout).
    engine_module.Engine.__init__ = capture  # type: ignore[method-assign]
    purchases = throughput.make_purchases(warmup + events, spacing_ms=spacing_ms)
    work = throughput.engine_work(batch, flush_every)
    engine: object = made[0]
    for _, value in purchases[:warmup]:
        work(value)
    if regime.endswith("_warm"):
        from streamer.online.features import (
            DISCOUNT_LEVELS,
            DecisionContext,
            DecisionFeaturizer,
        )

        rng = random.Random(7)
        items = [f"SKU{i:06d}" for i in range(500)]
        prices = {i: round(rng.uniform(1, 200), 2) for i in items}
        featurize = DecisionFeaturizer(DecisionContext("all", throughput.TS0, prices))
        for _ in range(records):
            bundle = SimpleNamespace(items=tuple(rng.sample(items, 2)),
                                     support=rng.uniform(1, 50), confidence=rng.random(),
                                     lift=rng.uniform(0, 5), score=rng.random())
            converted = rng.random() < 0.1
            engine.learn_conversion(  # type: ignore[attr-defined]
                featurize(bundle, rng.choice(DISCOUNT_LEVELS)), converted,
                converted or rng.random() < 0.3)
    if regime.startswith("learned_"):
        from streamer.online.features import FEATURE_NAMES
        from streamer.policy.torch_policy import TorchPolicy
        from streamer.policy.training import select_device

        select_device("cpu", max_threads=1)  # as the worker serves (its policy follower)
        engine.set_policy(TorchPolicy.initial(FEATURE_NAMES, seed=0))  # type: ignore[attr-defined]
    t0 = time.process_time()
    for _, value in purchases[warmup:]:
        work(value)
    return 1e6 * (time.process_time() - t0) / events


def child_args(regime: str, args: argparse.Namespace, events: int) -> list[str]:
    flush = ["--flush-every", str(args.flush_every)] if args.flush_every else []
    return [__file__, "--child", regime, "--events", str(events), "--warmup", str(args.warmup),
            "--records", str(args.records), "--event-spacing-ms", str(args.event_spacing_ms),
            "--batch", str(args.batch), *flush]


def child_env(src: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT / "benchmarks")]))


def run(src: Path, regime: str, args: argparse.Namespace) -> float:
    """One child of checkout ``src`` (its engine, this benchmark's harness)."""
    out = subprocess.run([sys.executable, *child_args(regime, args, args.events)],
                         env=child_env(src), check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["us_per_purchase"])


def instructions(src: Path, regime: str, args: argparse.Namespace, events: int) -> int:
    """Instructions of one child of checkout ``src`` with ``events`` timed purchases (start-up
    and warm-up included), counted by callgrind."""
    with tempfile.TemporaryDirectory(prefix="engine-regimes-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
             sys.executable, *child_args(regime, args, events)],
            # One thread for numpy's BLAS and torch's OpenMP: a pool's workers spin-waiting
            # between calls would add instructions that depend on how threads were scheduled.
            env=child_env(src) | {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                                  "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            check=True, capture_output=True, text=True)
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def count_instructions(regimes: list[str], sides: list[tuple[str, Path]],
                       args: argparse.Namespace) -> None:
    """``--instructions``: instructions per timed purchase of each regime and side."""
    few = max(1, args.events // 10)
    runs = [(regime, side, src, n) for regime in regimes for side, src in sides
            for n in (args.events, few)]
    print(f"callgrind: {len(runs)} children, {os.cpu_count()} at a time (minutes each)",
          flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip([(r, side, n) for r, side, _, n in runs], pool.map(
            lambda run: instructions(run[2], run[0], args, run[3]), runs), strict=True))
    print(f"instructions per purchase, purchases {args.warmup + few + 1}-"
          f"{args.warmup + args.events} ({args.event_spacing_ms:g} ms apart in event time, "
          f"learned {args.batch} at a time):")
    for regime in regimes:
        per = {side: (counts[(regime, side, args.events)] - counts[(regime, side, few)])
               / (args.events - few) for side, _ in sides}
        line = f"  {regime:13s} {per['this']:11,.0f}"
        if "ref" in per:
            line += f"   ref {per['ref']:11,.0f}   this/ref {per['this'] / per['ref']:.4f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=3_000,
                        help="closed impressions the warm conversion model learned")
    parser.add_argument("--event-spacing-ms", type=float, default=100.0)
    parser.add_argument("--batch", type=int, default=1,
                        help="purchases learned together, as an agent learns its batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--ref", type=Path, help="another checkout to compare with")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per purchase with callgrind (deterministic; "
                             "slow) instead of timing")
    parser.add_argument("--flush-every", type=int, default=None, metavar="N",
                        help="write the tables back every N purchases instead of every commit "
                             "interval of wall time (--instructions: 1000 unless given)")
    parser.add_argument("--child", choices=REGIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        us = child(args.child, args.events, args.warmup, args.records, args.event_spacing_ms,
                   args.batch, args.flush_every)
        print(json.dumps({"us_per_purchase": us}))
        return
    regimes = [r for r in args.regimes.split(",") if r]
    unknown = set(regimes) - set(REGIMES)
    if unknown:
        parser.error(f"unknown regimes {sorted(unknown)}; choose from {', '.join(REGIMES)}")
    sides = [("this", ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    if args.instructions:
        if shutil.which("valgrind") is None:
            parser.error("--instructions needs valgrind on the PATH (e.g. apt install valgrind)")
        if args.events < 10:
            parser.error("--instructions needs --events >= 10")
        # The write-back's cadence in wall time would depend on callgrind's slowness.
        args.flush_every = args.flush_every or 1000
        count_instructions(regimes, sides, args)
        return
    results: dict[tuple[str, str], list[float]] = {}
    from rich.progress import track

    plan = [(repeat, regime, side) for repeat in range(args.repeats) for regime in regimes
            for side in (sides if repeat % 2 == 0 else sides[::-1])]
    for repeat, regime, (side, src) in track(plan, description="engine runs"):
        us = run(src, regime, args)
        results.setdefault((regime, side), []).append(us)
        print(f"  repeat {repeat + 1}: {regime:13s} {side:4s} {us:7.1f} us/purchase", flush=True)
    print(f"medians over {args.repeats} repeats, {args.events} purchases after {args.warmup} "
          f"({args.event_spacing_ms:g} ms apart in event time, learned {args.batch} at a "
          "time):")
    for regime in regimes:
        this = results[(regime, "this")]
        line = f"  {regime:13s} {statistics.median(this):7.1f} us/purchase"
        if args.ref:
            ref = results[(regime, "ref")]
            pairs = [a / b for a, b in zip(this, ref, strict=True)]
            each = ", ".join(f"{p:.2f}" for p in pairs)
            line += (f"   ref {statistics.median(ref):7.1f}   this/ref per repeat {each}; "
                     f"median {statistics.median(pairs):.2f}")
        print(line)


if __name__ == "__main__":
    main()
