"""Quality of mtrec against the specialists, like for like, side by side in one run.

Every system sees the same data: mtrec's own 95/5 random split of MovieLens 100K for seed k
(k = 0..4), the same training set and the same test set, and every number comes from the same
evaluator (mtrec.eval.evaluation: MSE/RMSE/MAE on the test ratings; MRR, NDCG@10 and Recall@10 over a
full ranking of the catalogue with the user's training items removed, ties at their average rank).

* mtrec, seed preset: the assignment's settings with its first command's weights (shared,
  λF = 0.99, λR = 0.01), 200 epochs, the last epoch's model.
* mtrec, quality preset: the default of ``mtrec train``: a validation set carved from the training
  part, early stopping on it, the best validation epoch's model.
* Surprise BaselineOnly, SVD and SVD++ (their default settings) for ratings.
* Popularity, implicit's BPR and ALS, and EASE (closed form, a few lines of NumPy) for ranking.
  Their hyper-parameters are chosen on the same validation set as mtrec's quality preset (trained
  on the training part without it), then refitted on the whole training set. Nothing is chosen on test.

Then the canonical 5-fold protocol of MovieLens 100K (u1..u5): test RMSE of mtrec's quality preset
and of Surprise's SVD and SVD++, as published results report it.

    pip install -e ".[bench]"
    python benchmarks/quality.py                 # 5 seeds and the 5 folds (about 30 minutes)
    python benchmarks/quality.py --seeds 1 --no-folds
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sparse
import torch
from tables import fmt, table  # benchmarks/tables.py, beside this script
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))
METRICS = ("mse", "rmse", "mae", "mrr", "ndcg@10", "recall@10")
EASE_LAMBDAS = (50.0, 100.0, 250.0, 500.0, 1000.0)
ALS_GRID = [(factors, reg) for factors in (32, 64, 128) for reg in (0.01, 0.1, 1.0)]
BPR_GRID = [(factors, lr) for factors in (32, 64, 128) for lr in (0.01, 0.05)]


class ScoreTable(nn.Module):
    """A peer's predictions behind mtrec's network contract: a score matrix and/or rating predictions."""

    def __init__(self, scores: np.ndarray | None = None, ratings: dict | None = None, num_items: int = 0):
        super().__init__()
        self.scores = None if scores is None else torch.as_tensor(scores, dtype=torch.float32)
        self.ratings = ratings or {}
        self.num_items = num_items if scores is None else scores.shape[1]

    def watch_score(self, users, items):
        return self.scores[users, items]

    def rating(self, users, items):
        pairs = zip(users.tolist(), items.tolist())
        return torch.tensor([self.ratings.get(pair, float("nan")) for pair in pairs], dtype=torch.float32)

    def all_watch_scores(self, users):
        if self.scores is None:
            return torch.zeros(len(users), self.num_items)
        return self.scores[users].clone()

    def item_vectors(self):
        return self.scores.T


def evaluate(network, test, known, metrics=METRICS) -> dict[str, float]:
    from mtrec.eval.evaluation import Evaluator

    names = sorted({m.split("@")[0] for m in metrics})
    return Evaluator(test, known, metrics=names, k=(10,)).evaluate(network)


def interaction_matrix(data) -> sparse.csr_matrix:
    """Users x items, 1 where the user rated the item."""
    values = np.ones(len(data), dtype=np.float32)
    return sparse.csr_matrix((values, (data.users, data.items)), shape=(data.num_users, data.num_items))


# ---------------------------------------------------------------- the peers
def ease_scores(train, regularization: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P / diag(P) with P = (X^T X + λI)^-1, diag(B) = 0; scores X B."""
    x = interaction_matrix(train).toarray()
    gram = x.T @ x + regularization * np.eye(x.shape[1], dtype=np.float32)
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return x @ b


def als_scores(train, factors: int, regularization: float, seed: int) -> np.ndarray:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=15, random_state=seed)
    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not BLAS's
        model.fit(interaction_matrix(train), show_progress=False)
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def bpr_scores(train, factors: int, learning_rate: float, seed: int) -> np.ndarray:
    from implicit.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate, regularization=0.01, iterations=100, random_state=seed)
    model.fit(interaction_matrix(train), show_progress=False)
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def surprise_ratings(name: str, train, test, seed: int) -> dict:
    """Surprise's predictions for the test pairs, keyed by (user index, item index)."""
    import pandas as pd
    import surprise

    frame = pd.DataFrame({"user": train.users, "item": train.items, "rating": train.ratings})
    reader = surprise.Reader(rating_scale=train.rating_scale)
    trainset = surprise.Dataset.load_from_df(frame, reader).build_full_trainset()
    algorithm = {
        "BaselineOnly": lambda: surprise.BaselineOnly(verbose=False),
        "SVD": lambda: surprise.SVD(random_state=seed),
        "SVD++": lambda: surprise.SVDpp(random_state=seed),
    }[name]()
    algorithm.fit(trainset)
    return {(u, i): algorithm.predict(u, i).est for u, i in zip(test.users.tolist(), test.items.tolist())}


def chosen_on_validation(candidates, score_of, fit_part, valid):
    """The candidate with the best validation MRR, each trained on the training part without the validation set."""
    results = {candidate: evaluate(ScoreTable(score_of(fit_part, candidate)), valid, fit_part, ("mrr",))["mrr"] for candidate in candidates}
    return max(results, key=results.get)


# ---------------------------------------------------------------- one seed
#: The settings laid over each row's preset: the seed's are the assignment's first command.
PRESET_WEIGHTS = {
    "seed": {"factorization_weight": 0.99, "regression_weight": 0.01},
    "quality": {},
    "quality-0.3": {},
}  # fmt: skip


def mtrec_run(preset: str, spec, data, data_dir):
    from mtrec.config import preset as preset_config

    config = preset_config(preset).replace(seed=spec.seed, metrics=("mse", "rmse", "mae", "mrr", "ndcg", "recall"), **PRESET_WEIGHTS[preset])
    if spec.split.method != "random":
        config = config.replace(split=spec.split.method, test_fraction=None, valid_fraction=config.data.split.valid_fraction)
    train, validation, test = config.data.load_split(data_dir, data=data)
    model = config.build_model()
    started = time.perf_counter()
    model.fit(
        train,
        config.epochs,
        validation=validation,
        test=test,
        eval_every=config.eval_every,
        early_stopping=config.early_stopping,
        patience=config.patience,
        metrics=config.metrics,
        k=(10,),
    )
    seconds = time.perf_counter() - started
    record = next(r for r in model.history_ if r.epoch == model.selected_epoch_)
    measured = model.final_metrics_ or record.metrics  # the kept model, with its item-item path where it has one
    return {name: measured[f"test_{name}"] for name in METRICS}, seconds


def one_seed(seed: int, data, data_dir) -> dict[str, tuple[dict, float]]:
    from mtrec.data.spec import DataSpec
    from mtrec.eval.baselines import PopularityNet

    spec = DataSpec(seed=seed)
    train, _, test = spec.split_data(data)
    # The validation set of the quality preset, from the same training set: peers choose on it too.
    fit_part, valid, _ = DataSpec(seed=seed, valid_fraction=0.05).split_data(data)
    results = {}
    labels = {
        "seed": "mtrec, seed preset, λF=0.99/λR=0.01, last epoch",
        "quality-0.3": "mtrec 0.3's quality preset",
        "quality": "mtrec, quality preset",
    }
    for preset, label in labels.items():
        results[label] = mtrec_run(preset, spec, data, data_dir)
    for name in ("BaselineOnly", "SVD", "SVD++"):
        started = time.perf_counter()
        ratings = surprise_ratings(name, train, test, seed)
        seconds = time.perf_counter() - started
        results[f"Surprise {name}"] = (evaluate(ScoreTable(ratings=ratings, num_items=train.num_items), test, train, ("mse", "rmse", "mae")), seconds)
    started = time.perf_counter()
    popularity = PopularityNet(train)
    results["popularity"] = (evaluate(popularity, test, train, ("mrr", "ndcg@10", "recall@10")), time.perf_counter() - started)
    for label, grid, scores in (
        ("implicit BPR", BPR_GRID, lambda part, c: bpr_scores(part, *c, seed)),
        ("implicit ALS", ALS_GRID, lambda part, c: als_scores(part, *c, seed)),
        ("EASE", EASE_LAMBDAS, lambda part, c: ease_scores(part, c)),
    ):
        best = chosen_on_validation(grid, scores, fit_part, valid)
        started = time.perf_counter()
        table = scores(train, best)
        seconds = time.perf_counter() - started
        chosen = "/".join(f"{v:g}" for v in best) if isinstance(best, tuple) else f"{best:g}"
        results[f"{label} ({chosen})"] = (evaluate(ScoreTable(table), test, train, ("mrr", "ndcg@10", "recall@10")), seconds)
        if label == "EASE":
            # EASE on exactly the rows mtrec's weights were fit on (train without the validation set)
            started = time.perf_counter()
            same = scores(fit_part, best)
            seconds = time.perf_counter() - started
            results[f"EASE, same rows as mtrec ({chosen})"] = (evaluate(ScoreTable(same), test, train, ("mrr", "ndcg@10", "recall@10")), seconds)
    return results


# ---------------------------------------------------------------- the table
def paired(systems, ours: str, theirs: str, metric: str) -> None:
    """A seed-paired t-test of ``metric`` between two systems (the seeds' splits are shared)."""
    from scipy import stats

    a = np.array([r[0][metric] for r in systems[ours]])
    b = np.array([r[0][metric] for r in systems[theirs]])
    if len(a) < 2:
        return
    result = stats.ttest_rel(a, b)
    wins = int(((a > b) if metric != "mse" else (a < b)).sum())
    print(
        f"{ours} vs {theirs}, {metric}: mean difference {np.mean(a - b):+.4f} (sd {np.std(a - b, ddof=1):.4f}), "
        f"better on {wins} of {len(a)} seeds, paired t = {result.statistic:.2f}, p = {result.pvalue:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of the 95/5 split (default 5)")
    parser.add_argument("--no-folds", action="store_true", help="skip the canonical u1..u5 folds")
    args = parser.parse_args()

    from mtrec.data import load_movielens

    data = load_movielens("100k", data_dir=DATA_DIR)
    per_seed = [one_seed(seed, data, DATA_DIR) for seed in range(args.seeds)]
    # EASE and ALS name their chosen setting; group rows by system across seeds.
    systems: dict[str, list[tuple[dict, float, str]]] = {}
    for results in per_seed:
        for name, (metrics, seconds) in results.items():
            system, _, chosen = name.partition(" (")
            systems.setdefault(system, []).append((metrics, seconds, chosen.rstrip(")")))
    reference = systems["mtrec, quality preset"]
    rows = [["system (same splits, same evaluator)", *METRICS, "fit s", "MSE / mtrec", "MRR / mtrec", "chosen on validation"]]
    # BPR: factors/learning rate; ALS: factors/regularisation; EASE: λ.
    for system, runs in systems.items():
        column = lambda m: [r[0].get(m) for r in runs]  # noqa: E731
        ratios = []
        for metric in ("mse", "mrr"):
            pairs = [(r[0].get(metric), q[0][metric]) for r, q in zip(runs, reference) if r[0].get(metric) is not None]
            ratios.append(f"{np.mean([a / b for a, b in pairs]):.3f}" if pairs and all(np.isfinite(a) for a, _ in pairs) else "–")
        chosen = ", ".join(sorted({r[2] for r in runs if r[2]})) or ""
        rows.append([system, *(fmt(column(m)) for m in METRICS), f"{np.mean([r[1] for r in runs]):.1f}", *ratios, chosen])
    print(f"MovieLens 100K, 95/5 random split, seeds 0-{args.seeds - 1} (mean ± sd over seeds):")
    print(table(rows))
    paired(systems, "mtrec, quality preset", "EASE, same rows as mtrec", "mrr")
    paired(systems, "mtrec, quality preset", "EASE", "mrr")
    paired(systems, "mtrec, quality preset", "Surprise SVD++", "mse")

    if not args.no_folds:
        from mtrec.data.spec import DataSpec
        from mtrec.data.splits import canonical_split

        folds = {"mtrec, quality preset": [], "Surprise SVD": [], "Surprise SVD++": []}
        for fold in ("u1", "u2", "u3", "u4", "u5"):
            metrics, _ = mtrec_run("quality", DataSpec(split=fold), None, DATA_DIR)
            folds["mtrec, quality preset"].append(metrics["rmse"])
            train, test = canonical_split(fold, DATA_DIR)
            for name in ("SVD", "SVD++"):
                ratings = surprise_ratings(name, train, test, 0)
                folds[f"Surprise {name}"].append(evaluate(ScoreTable(ratings=ratings, num_items=train.num_items), test, train, ("rmse",))["rmse"])
        rows = [["canonical 5-fold (u1..u5)", "test RMSE", *(f"u{i}" for i in range(1, 6))]]
        rows += [[name, fmt(values), *(f"{v:.4f}" for v in values)] for name, values in folds.items()]
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
