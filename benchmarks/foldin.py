"""Fold-in against training on the users, and against popularity, on MovieLens 100K.

A tenth of the users (seeded) are held out of training: their training ratings are kept aside.
One model (the quality preset) trains on everyone; another on everyone else. Each held-out
user is then folded into the second model from their training ratings, in two ways
(mtrec.serving.foldin): *instant*, their vector read from their history through the model's
history encoder (and item-item path) with no optimisation; and *fitted*, their own parameters
then fitted by 100 Adam steps, everything else frozen. All are evaluated on the held-out users'
test ratings, with their training items removed from the rankings: test MSE and MRR, and the
milliseconds each fold-in takes per user (one thread).

    python benchmarks/foldin.py            # about two minutes
    python benchmarks/foldin.py --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from tables import table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))


def measure(seed: int, share: float) -> dict[str, dict[str, float]]:
    from mtrec.config import preset
    from mtrec.data import load_movielens
    from mtrec.eval.baselines import PopularityNet
    from mtrec.eval.evaluation import Evaluator
    from mtrec.serving.foldin import fold_in_model, user_parameter_names

    config = preset("quality", seed=seed)
    train, validation, test = config.data.load_split(DATA_DIR, data=load_movielens("100k", data_dir=DATA_DIR))
    rng = np.random.default_rng(seed)
    held = rng.choice(train.num_users, int(share * train.num_users), replace=False)
    is_held = np.zeros(train.num_users, dtype=bool)
    is_held[held] = True
    known = train.subset(~is_held[train.users])
    known_valid = validation.subset(~is_held[validation.users])
    test_held = test.subset(is_held[test.users])
    everything = [train, validation]

    def fitted(data, valid):
        model = config.build_model()
        model.fit(data, config.epochs, validation=valid, early_stopping=config.early_stopping, patience=config.patience)
        return model

    results = {}
    in_model = fitted(train, validation)
    results["trained on them"] = Evaluator(test_held, everything, metrics=("mse", "mrr")).evaluate(in_model.network_)
    without = fitted(known, known_valid)
    names = user_parameter_names(without.network_)
    histories = {int(user): (train.items[train.users == user].tolist(), train.ratings[train.users == user].tolist()) for user in held}
    for label, instant in (("folded in, instant", True), ("folded in, fitted", False)):
        network = copy.deepcopy(without.network_)
        # the held-out users' histories, which a history-aware model reads (the trained model never saw them)
        network.use_histories(*train.seen_items_csr())
        params = dict(network.named_parameters())
        folded = {}
        started = time.perf_counter()
        for user, (items, ratings) in histories.items():
            folded[user] = fold_in_model(without, items, ratings, instant=instant)  # what the library does
        seconds = (time.perf_counter() - started) / len(held)
        with torch.no_grad():
            for user, one in folded.items():
                for name, value in one.named_parameters():
                    if name in names:
                        params[name][user] = value[0]
        results[label] = Evaluator(test_held, everything, metrics=("mse", "mrr")).evaluate(network)
        results[label]["seconds"] = seconds
    results["popularity"] = Evaluator(test_held, everything, metrics=("mse", "mrr")).evaluate(PopularityNet(known))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.1, help="share of the users held out of training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [measure(seed, args.share) for seed in range(args.seeds)]
    print(
        f"MovieLens 100K, quality preset, {args.share:.0%} of the users held out of training, seeds 0-{args.seeds - 1} "
        "(mean ± sd); their test ratings:"
    )
    rows = [["model of the held-out users", "test MSE", "test MRR", "MRR / trained on them", "ms per user"]]
    for name in ("trained on them", "folded in, instant", "folded in, fitted", "popularity"):
        mse = [r[name]["mse"] for r in runs]
        mrr = [r[name]["mrr"] for r in runs]
        ratio = np.mean([r[name]["mrr"] / r["trained on them"]["mrr"] for r in runs])
        mse_text = f"{np.mean(mse):.4f} ± {np.std(mse, ddof=1):.4f}" + (" (the mean rating)" if name == "popularity" else "")
        ms = f"{np.mean([r[name]['seconds'] for r in runs]) * 1000:.2f}" if "seconds" in runs[0][name] else ""
        rows.append([name, mse_text, f"{np.mean(mrr):.4f} ± {np.std(mrr, ddof=1):.4f}", f"{ratio:.2f}", ms])
    print(table(rows))


if __name__ == "__main__":
    main()
