"""Recommendations as a DataFrame against the batch path they are built from, on MovieLens 100K.

Trains a model on ML-100K (a few epochs: the scoring cost does not depend on how well it learned),
then times, in interleaved rounds,

* the batch path: ``list(Recommender.recommend_all(k=10))``, Arrow tables for all 943 users;
* ``Recommender.recommend_frame(k=10)`` as a pandas DataFrame (the default), a polars DataFrame
  and an Arrow table.

Each is reported as the median over the rounds, and its cost as the median of its per-round ratio
to the batch path (the rounds share the machine's drift). The issue's target: the pandas frame in
at most 1.5x the batch path's time.

    MTREC_DATA_DIR=../shared/data python benchmarks/frames.py
    python benchmarks/frames.py --rounds 10 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import table  # noqa: E402

from mtrec.data import load_movielens  # noqa: E402
from mtrec.model import MultitaskModel  # noqa: E402
from mtrec.serving.recommender import Recommender  # noqa: E402

BACKENDS = ("pandas", "polars", "arrow")


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recommender = Recommender(MultitaskModel(seed=0, batch_size=4096, learning_rate=0.016).fit(load_movielens("100k"), epochs=3))
    runs = {"batch path (Arrow tables)": lambda: list(recommender.recommend_all(k=args.k))}
    runs.update({f"recommend_frame ({b})": lambda b=b: recommender.recommend_frame(k=args.k, backend=b) for b in BACKENDS})
    for run in runs.values():  # warm up: caches, allocator, imports
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(seconds(run))
    base = times["batch path (Arrow tables)"]
    rows = [["path", "median ms", "x batch path (median of per-round ratios)"]]
    for name, measured in times.items():
        ratio = statistics.median(t / b for t, b in zip(measured, base))
        rows.append([name, f"{statistics.median(measured) * 1000:.1f}", f"{ratio:.2f}"])
    users = recommender.model.data_.num_users
    print(f"top-{args.k} for all {users} ML-100K users, {args.rounds} rounds, {torch.get_num_threads()} torch threads")
    print(table(rows))


if __name__ == "__main__":
    main()
