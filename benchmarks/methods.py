"""Cost of the multi-task methods: milliseconds per training step, per weighting and sharing.

Every combination of ``--weighting`` and ``--sharing`` trains on MovieLens 100K with the settings of
mtrec 0.3's quality preset, the multi-task study's base (batch 4,096, 8 negatives per positive), one thread, the step each takes by
default (the fused step where it applies: fixed weights on hard or separate sharing; the
autograd step otherwise, with one backward pass per task for the gradient methods). The
combinations are timed round by round, interleaved, and each figure is the median over rounds,
so that the machine's drift falls on all of them alike.

    python benchmarks/methods.py             # about two minutes
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps timed per combination and round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    from mtrec.config.presets import QUALITY_03_MODEL as QUALITY_MODEL  # the study's base: mtrec 0.3's quality preset
    from mtrec.data import load_movielens, random_split
    from mtrec.model import MultitaskModel
    from mtrec.nn.losses import Batch
    from mtrec.nn.network import SHARINGS
    from mtrec.nn.weighting import WEIGHTINGS
    from mtrec.train.sampling import EpochSampler

    torch.set_num_threads(1)
    train, _ = random_split(load_movielens("100k", data_dir=DATA_DIR), test_fraction=0.05, seed=0)
    setups = {}
    for sharing in SHARINGS:
        for weighting in WEIGHTINGS:
            weights = (0.99, 0.01) if weighting in ("fixed", "pcgrad") else (0.5, 0.5)
            settings = {**QUALITY_MODEL, "sharing": sharing, "weighting": weighting}
            settings["factorization_weight"], settings["regression_weight"] = weights
            model = MultitaskModel(**settings, seed=0)
            network = model.build_network(train.num_users, train.num_items)
            step = model.make_step(network)
            sampler = EpochSampler(train, 0, torch.device("cpu"), True, model.negatives)
            setups[sharing, weighting] = (model.resolved_step(), step, sampler.draw())
    batch = QUALITY_MODEL["batch_size"]
    times: dict[tuple[str, str], list[float]] = {key: [] for key in setups}
    for round_ in range(args.rounds + 1):  # the first round warms up
        for key, (_, step, (users, items, negatives, ratings)) in setups.items():
            began = time.perf_counter()
            for index in range(args.steps):
                lo, hi = index * batch, (index + 1) * batch
                step(Batch(users[lo:hi], items[lo:hi], negatives[lo:hi], ratings[lo:hi]))
            if round_:
                times[key].append((time.perf_counter() - began) / args.steps)
    base = {sharing: np.median(times[sharing, "fixed"]) for sharing in SHARINGS}
    print(
        f"ms per training step, ML-100K, batch {batch:,}, {QUALITY_MODEL['negatives']} negatives, 1 thread "
        f"(median of {args.rounds} interleaved rounds of {args.steps} steps)"
    )
    print("| sharing | weighting | step | ms / step | × fixed |")
    print("|---|---|---|---|---|")
    for (sharing, weighting), values in times.items():
        median = np.median(values)
        print(f"| {sharing} | {weighting} | {setups[sharing, weighting][0]} | {median * 1000:.1f} | {median / base[sharing]:.2f} |")


if __name__ == "__main__":
    main()
