"""Does one shared model beat separate ones? The quality preset against its single-task and
separate-embedding variants, seed-paired, on MovieLens 100K.

Every row is the quality preset (``mtrec train --seed K``) on the 95/5 split of seed K, its epoch
(and item-item path) chosen on the same validation set, with one change; its test metrics are
the kept model's (the path included):

* ``shared`` — the preset itself: one network, both heads reading the same U, Q and history table;
* ``separate embeddings`` — ``--sharing separate --no-rating-reads-score``: one network, but the
  rating head has its own user and item tables (and so no history) and does not read the watch
  score, so no rating gradient reaches the watch head's parameters;
* ``watch only`` — ``--regression-weight 0``: the same network trained on the watch loss alone;
* ``rating only`` — ``--factorization-weight 0 --no-item-item``: trained on the rating loss alone.

The shared model beats separate models on a task when it is better than both the
separate-embedding model and that task's single-task model; "clearly" means a seed-paired
t-test's p < 0.05.

    python benchmarks/sharing.py             # 5 seeds, about 8 minutes
    python benchmarks/sharing.py --seeds 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from scipy import stats
from tables import table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))
VARIANTS = {
    "shared (the quality preset)": {},
    "separate embeddings": {"sharing": "separate", "rating_reads_score": False},
    "watch only (λR = 0)": {"regression_weight": 0.0},
    "rating only (λF = 0)": {"factorization_weight": 0.0, "item_item": False},
}


def run(seed: int, data, settings: dict) -> tuple[dict[str, float], float]:
    from mtrec.config import preset

    config = preset("quality", seed=seed, **settings)
    train, validation, test = config.data.load_split(DATA_DIR, data=data)
    model = config.build_model()
    criterion = "mrr" if settings.get("regression_weight") == 0.0 else "mse" if settings.get("factorization_weight") == 0.0 else config.early_stopping
    started = time.perf_counter()
    model.fit(train, config.epochs, validation=validation, test=test, early_stopping=criterion, patience=config.patience, metrics=("mse", "mrr"))
    seconds = time.perf_counter() - started
    record = next(r for r in model.history_ if r.epoch == model.selected_epoch_)
    measured = model.final_metrics_ or record.metrics  # the kept model, with its item-item path where it has one
    return {"mse": measured.get("test_mse", float("nan")), "mrr": measured["test_mrr"]}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    args = parser.parse_args()
    from mtrec.data import load_movielens

    data = load_movielens("100k", data_dir=DATA_DIR)
    results = {name: [] for name in VARIANTS}
    for seed in range(args.seeds):  # seed by seed, every variant in turn: the machine's drift falls on all alike
        for name, settings in VARIANTS.items():
            results[name].append(run(seed, data, settings))
    fmt = lambda values: f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"  # noqa: E731
    rows = [["model (quality preset, one change)", "test MSE", "test MRR", "fit s"]]
    for name, runs in results.items():
        mse = [r[0]["mse"] for r in runs]
        mse_text = "– (no rating head trained)" if name.startswith("watch only") else fmt(mse)
        mrr_text = "– (ranks by an untrained head)" if name.startswith("rating only") else fmt([r[0]["mrr"] for r in runs])
        rows.append([name, mse_text, mrr_text, f"{np.mean([r[1] for r in runs]):.1f}"])
    print(f"MovieLens 100K, 95/5 random split, seeds 0-{args.seeds - 1} (mean ± sd):")
    print(table(rows))
    shared = results["shared (the quality preset)"]
    for other, metric in (
        ("separate embeddings", "mse"),
        ("separate embeddings", "mrr"),
        ("rating only (λF = 0)", "mse"),
        ("watch only (λR = 0)", "mrr"),
    ):
        a = np.array([r[0][metric] for r in shared])
        b = np.array([r[0][metric] for r in results[other]])
        better = (a < b) if metric == "mse" else (a > b)
        test = stats.ttest_rel(a, b) if len(a) > 1 else None
        p = f"p = {test.pvalue:.3f}" if test is not None else "one seed"
        print(f"shared vs {other}, {metric}: {np.mean(a - b):+.4f}, better on {int(better.sum())} of {len(a)} seeds, {p}")


if __name__ == "__main__":
    main()
