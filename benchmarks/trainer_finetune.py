"""Seconds per trainer fine-tune on N synthetic feedback records, on the CPU.

Each record is one decision over 4 candidates x 4 discount levels (16 variants, the
``streamer.online`` feature set), logged by a policy showing 8 of them uniformly; conversion
follows a hidden logistic model of the features and the reward is the variant's value when it
converts; the direct-method predictions are that model plus noise. Timed: one
``PolicyTrainer.fine_tune`` (snapshot of the buffer, training with the default configuration
on 80%, OPE of candidate and live policy on the newest 20%, gate). Not timed: generating and
buffering the records.

    python benchmarks/trainer_finetune.py                 # 1,000,000 records
    python benchmarks/trainer_finetune.py --records 200000 --threads 1 --epochs 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streamer.online import FEATURE_NAMES
from streamer.policy import FeedbackBatch, FineTuneConfig, PolicyTrainer, TorchPolicy

N_CANDIDATES, N_DISCOUNTS, SHOWN = 4, 4, 8


def synthetic_batch(n: int, rng: np.random.Generator) -> FeedbackBatch:
    """``n`` logged decisions (see the module docstring)."""
    actions, n_features = N_CANDIDATES * N_DISCOUNTS, len(FEATURE_NAMES)
    features = rng.normal(0.0, 1.0, size=(n, actions, n_features)).astype(np.float32)
    discount = np.tile(np.repeat([0.0, 0.05, 0.10, 0.15], 1)[None, :], (1, N_CANDIDATES))
    features[:, :, FEATURE_NAMES.index("discount")] = discount
    hidden = np.linspace(-0.5, 0.5, n_features).astype(np.float32)
    logit = features @ hidden - 3.0 + 12.0 * discount.astype(np.float32)
    p_convert = 1.0 / (1.0 + np.exp(-logit))
    value = 20.0 * (1.0 - discount)
    # The logging policy shows 8 variants chosen at random and picks one of them uniformly.
    chosen = rng.integers(0, actions, size=n)
    converted = rng.random(n) < p_convert[np.arange(n), chosen]
    reward = np.where(converted, value[0, chosen], 0.0)
    dm = (p_convert * value + rng.normal(0.0, 0.1, size=p_convert.shape)).astype(np.float32)
    return FeedbackBatch(
        features=features,
        valid=np.ones((n, actions), dtype=np.bool_),
        chosen=chosen.astype(np.int64),
        propensity=np.full(n, 1.0 / SHOWN),
        reward=reward.astype(np.float64),
        expected_reward=dm,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--threads",
        type=int,
        default=FineTuneConfig().max_threads,
        help="torch CPU threads (capped)",
    )
    parser.add_argument("--epochs", type=int, default=FineTuneConfig().epochs)
    parser.add_argument("--batch-size", type=int, default=FineTuneConfig().batch_size)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = FineTuneConfig(
        device="cpu", max_threads=args.threads, epochs=args.epochs, batch_size=args.batch_size
    )
    live = TorchPolicy.initial(FEATURE_NAMES, seed=args.seed)
    trainer = PolicyTrainer(
        FEATURE_NAMES,
        capacity=args.records,
        max_actions=N_CANDIDATES * N_DISCOUNTS,
        every_records=args.records,
        min_records=2,
        config=config,
    )
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for start in range(0, args.records, 100_000):
        trainer.extend(synthetic_batch(min(100_000, args.records - start), rng))
    fill_s = time.perf_counter() - t0

    result = trainer.fine_tune(live, now_s=0.0)
    seconds = result.seconds
    primary, live_primary = result.candidate_evaluation.primary, result.live_evaluation.primary
    print(f"torch {torch.__version__}, device {result.device}, threads {torch.get_num_threads()}")
    print(f"records            {args.records:,} (generated and buffered in {fill_s:.1f} s)")
    print(
        f"config             epochs={config.epochs} batch_size={config.batch_size} "
        f"objective={config.objective}"
    )
    print(
        f"fine-tune          {seconds:.1f} s  ({args.records / seconds:,.0f} records/s)  "
        f"goal < 60 s for 1M"
    )
    print(f"train / holdout    {result.train_size:,} / {result.holdout_size:,}")
    print(
        f"candidate {primary.estimator:5}    {primary.value:.4f} "
        f"[{primary.lower:.4f}, {primary.upper:.4f}]"
    )
    print(f"live {live_primary.estimator:5}         {live_primary.value:.4f}")
    print(f"verdict            {result.reason}")


if __name__ == "__main__":
    main()
