"""Side features and cold start on MovieLens 100K, like for like, side by side in one run.

Every system of a block sees the same split of seed k (k = 0..4), the same training rows and the
same evaluator (mtrec.eval.coldstart: the usual metrics on the warm pairs, on the pairs of cold items
ranked among the cold items and among all items, and on the pairs of cold users). The feature model
is the quality preset with ``features`` (MovieLens's genres, year and decade for items; age, age
group, gender, occupation and zip prefix for users); on the cold splits also with ``id_dropout 0.5``
(DropoutNet: half the ids left out at each step, so the features learn to stand alone). Epochs and
the item-item path are chosen on the validation set, carved from the training part the same way as
the test set; nothing is chosen on test.

* warm: the 95/5 random split, the id-only quality preset against the same with item features, and
  with item and user features (which to keep is read off the validation columns);
* cold-items: 10% of the items held out entirely (and 5% of the other ratings); popularity (which
  knows nothing of a cold item: every cold item ties), genre popularity (an item's score is the mean
  training popularity of its feature values), attribute popularity (each item's training count
  predicted from its attributes, with the release month, by boosted trees whose depth the
  validation chooses), a content profile (the cosine between the user's mean training-item features
  and the item's) and the feature model, each also with MovieLens 100K's release month (an optional
  column); the feature model compared is the one of the two that the validation's cold items choose
  (MRR among them); then an oracle read off the test set (labelled so): each cold item scored by the
  test's popularity of its attribute group (items with equal feature vectors; most cold items are
  a group of their own, so this is close to knowing each new item's own test popularity); and a
  reference of what the cold items lack, their ratings: the cold test pairs halved at random, the
  quality preset (with the release month) trained with the first half as well, and it, the chosen
  cold model and the content profile ranking the second half among the cold items;
* cold-users: 10% of the users held out entirely; popularity, demographic popularity (an item's
  share among the training users who share the user's attributes) and the feature model; then
  oracles read off the test set itself (labelled so: they are how far any list could go, never a
  model): the test's own popularity among the cold users, and among those who share one's gender,
  or gender and age group;
* u1..u5: the canonical folds' test RMSE, with and without features: the quality preset, and
  rating-minded variants of it (a larger rating weight, early stopping on MSE, a slower moving
  average) with item features, one of which is chosen on the mean validation MSE over the folds
  (validation sets carved from each base) and also trained id only.

LightFM 1.17 (WARP, 64 components, its epochs chosen on the validation's cold part, the same
attributes as mtrec's default columns) is in the cold tables where it is installed; ``pip install
lightfm`` fails to build under current setuptools ("'dict' object has no attribute
'__LIGHTFM_SETUP__'"), but builds without isolation: ``pip install cython "setuptools<70" &&
pip install --no-build-isolation lightfm && pip install "setuptools>=77"`` (torch wants the latter).

    python benchmarks/features.py                 # 5 seeds and the 5 folds (about 45 minutes)
    python benchmarks/features.py --seeds 2 --no-folds
    python benchmarks/features.py --blocks cold-items,cold-users
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from tables import fmt, table  # benchmarks/tables.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MTREC_DATA_DIR", ROOT.parent / "shared" / "data"))
METRICS = ("mse", "mrr", "ndcg")


def fit(split: str, seed: int, features: str, id_dropout: float = 0.0, data=None, **settings):
    """The quality preset (with ``features`` and ``settings``) on ``split`` of seed ``seed``: the model, its parts and seconds."""
    from mtrec.config import preset

    options = {"split": split, "seed": seed, "features": features, "id_dropout": id_dropout, **settings}
    if split in ("u1", "u2", "u3", "u4", "u5"):
        options["test_fraction"] = None
    config = preset("quality").replace(**options)
    train, validation, test = config.data.load_split(DATA_DIR, data=data)
    model = config.build_model()
    started = time.perf_counter()
    model.fit(train, config.epochs, validation=validation, early_stopping=config.early_stopping, patience=config.patience, k=(10,))
    return model, (train, validation, test), time.perf_counter() - started


def measured(network, parts) -> dict[str, dict[str, float]]:
    from mtrec.eval.coldstart import cold_start_metrics

    train, validation, test = parts
    return cold_start_metrics(network, train, test, [train, validation], metrics=METRICS, k=(10,))


def isolated(function, *args):
    """``function(*args)`` in a fresh process: a peer's native threads (LightFM's OpenMP) then leave
    no trace in this process, whose later mtrec runs must give what they give without the peer."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


#: LightFM's settings: WARP, 64 components; its epochs (of these, cumulative) chosen on the validation's cold part.
LIGHTFM_EPOCHS = (5, 10, 20, 40)


def lightfm_with_features(parts, fitted, side: str, seed: int):
    """LightFM (WARP, 64 components) on the same training pairs, with ``side``'s attributes as
    LightFM reads them: each entity an identity feature (the entities with training pairs only: a
    cold one has none) plus its attribute rows, rows L1-normalised; the other side by identity.
    Its epochs are chosen on the validation's cold part. None where LightFM is not installed."""
    try:
        from lightfm import LightFM
    except ImportError:
        return None
    import scipy.sparse as sp
    import torch

    from mtrec.eval.coldstart import _Scores

    train = parts[0]
    count = train.num_items if side == "items" else train.num_users
    known = np.bincount(train.items if side == "items" else train.users, minlength=count) > 0
    bags = fitted.bags
    owner = np.repeat(np.arange(count), np.diff(bags.indptr))
    attributes = sp.csr_matrix((bags.weights, (owner, bags.indices)), shape=(count, fitted.map.size))
    identity = sp.diags(known.astype(np.float32)).tocsr()
    features = sp.hstack([identity, attributes]).tocsr()
    features = (sp.diags(1.0 / np.maximum(np.asarray(abs(features).sum(1)).ravel(), 1e-12)) @ features).astype(np.float32).tocsr()
    pairs = sp.coo_matrix((np.ones(len(train), np.float32), (train.users, train.items)), shape=(train.num_users, train.num_items))
    model = LightFM(no_components=64, loss="warp", random_state=seed)
    keyword = "item_features" if side == "items" else "user_features"
    part = "cold_items_among_cold" if side == "items" else "cold_users"
    best, done = (-1.0, None), 0
    for epochs in LIGHTFM_EPOCHS:
        model.fit_partial(pairs, epochs=epochs - done, num_threads=2, **{keyword: features})
        done = epochs
        item_bias, items = model.get_item_representations(features if side == "items" else None)
        _, users = model.get_user_representations(features if side == "users" else None)
        scores = _Scores(torch.as_tensor(users @ items.T + item_bias[None, :]), train.num_users)
        score = _valid_cold_mrr(scores, parts, part)
        if score > best[0]:
            best = (score, scores)
    return best[1]


#: The trees' depths tried for the attribute-popularity baseline (chosen on the validation's cold items).
TREE_DEPTHS = (2, 3, None)


def attribute_popularity(parts, fitted):
    """A content-only, non-personal baseline: each item's training count predicted from its attributes
    (the model's feature rows, dense) by gradient-boosted trees (scikit-learn's, Poisson loss) fitted
    on the items with training pairs; the trees' depth chosen on the validation's cold items. One list
    for every user: how popular a new item will be, read off its attributes. None without scikit-learn."""
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        return None
    import torch

    from mtrec.eval.coldstart import _Scores, dense_features

    train = parts[0]
    features = dense_features(fitted.bags, fitted.map.size).numpy()
    counts = np.bincount(train.items, minlength=train.num_items).astype(float)
    known = counts > 0
    best = (-1.0, None)
    for depth in TREE_DEPTHS:
        trees = HistGradientBoostingRegressor(loss="poisson", max_depth=depth, max_iter=200, learning_rate=0.05, random_state=0)
        trees.fit(features[known], counts[known])
        scores = _Scores(torch.as_tensor(trees.predict(features)), train.num_users)
        score = _valid_cold_mrr(scores, parts)
        if score > best[0]:
            best = (score, scores)
    return best[1]


def cold_item_oracle(parts, fitted) -> object:
    """An oracle for the cold items, read off the test set itself (never a model): each cold item
    scored by the test's popularity of its attribute group (the items whose feature vectors are
    equal, which no ranking from these attributes can tell apart), per item of the group; the same
    list for every user: what knowing how popular each group is would give."""
    import torch

    from mtrec.eval.coldstart import _Scores, dense_features

    train, _, test = parts
    features = dense_features(fitted.bags, fitted.map.size).numpy()
    group = np.unique(features, axis=0, return_inverse=True)[1].reshape(-1)
    groups = int(group.max()) + 1
    cold = np.bincount(train.items, minlength=train.num_items) == 0
    pairs = cold[test.items]
    counts = np.bincount(group[test.items[pairs]], minlength=groups).astype(float)
    sizes = np.bincount(group[cold], minlength=groups).clip(1)
    return _Scores(torch.as_tensor(counts[group] / sizes[group]), test.num_users)


def cold_user_oracles(parts) -> dict:
    """Oracles for the cold users, read off the test set itself (never a model: how far any list can
    go): the test's own popularity among the cold users (the best single list for all of them), and
    the popularity among the other cold test users who share one's gender, or gender and age group
    (leave-one-out)."""
    import torch

    from mtrec.eval.coldstart import _Scores

    train, _, test = parts
    cold = np.flatnonzero(np.bincount(train.users, minlength=train.num_users) == 0)
    counts = np.zeros((test.num_users, test.num_items))
    np.add.at(counts, (test.users, test.items), 1.0)
    overall = counts[cold].sum(0)
    table = test.user_features
    row = {int(i): r for r, i in enumerate(table.ids.tolist())}
    values = {column.name: column.values for column in table.columns}
    oracles = {"oracle: the test's popularity among the cold users": _Scores(torch.as_tensor(overall), test.num_users)}
    for key in (("gender",), ("gender", "age_group")):
        groups: dict[tuple, list[int]] = {}
        for user in cold.tolist():
            groups.setdefault(tuple(values[name][row[int(test.user_ids[user])]] for name in key), []).append(user)
        scores = np.zeros((test.num_users, test.num_items))
        for members in groups.values():
            total = counts[members].sum(0)
            for user in members:  # the others of the group; ties broken by the overall popularity
                scores[user] = total - counts[user] + 1e-6 * overall
        oracles[f"oracle: the test's popularity among cold users of the same {' and '.join(key)} (leave-one-out)"] = _Scores(
            torch.as_tensor(scores), test.num_users
        )
    return oracles


HALF_KNOWN = "reference: the same model with half of each cold item's test pairs in its training"


def half_known(parts, seed: int, systems: dict) -> dict[str, float]:
    """A reference, not a cold-start system: what the cold items lack is their ratings. The cold test
    pairs are halved at random (seeded); the quality preset with item features and the release month
    (no id dropout) is trained on the training part plus the first half, so the cold items are warm
    for it. Every system, that one and the cold-start ones as they were fitted, ranks the second half
    among the same cold items, with the same pairs left out of the rankings (training, validation and
    the first half): MRR of each."""
    import torch

    from mtrec.config import preset
    from mtrec.data.feature_maps import known_entities
    from mtrec.eval.coldstart import AmongItems
    from mtrec.eval.evaluation import Evaluator

    train, validation, test = parts
    cold = np.flatnonzero(~known_entities(train)["items"][test.items])
    first = np.random.default_rng(seed).random(len(cold)) < 0.5
    known_half, held_half = test.subset(cold[first]), test.subset(cold[~first])
    allowed = torch.zeros(test.num_items, dtype=torch.bool)
    allowed[torch.as_tensor(np.unique(test.items[cold]).astype(np.int64))] = True
    config = preset("quality").replace(split="cold-items", seed=seed, features="items", item_feature_columns=WITH_MONTH)
    model = config.build_model()
    model.fit(train.joined(known_half), config.epochs, validation=validation, early_stopping=config.early_stopping, patience=config.patience, k=(10,))
    evaluator = Evaluator(held_half, [train, validation, known_half], metrics=("mrr",), k=(10,))
    compared = ("content profile, with the release month", "mtrec, quality preset with features", MONTH_MODEL)
    networks = {name: systems[name] for name in compared} | {HALF_KNOWN: model.network_}
    return {name: evaluator.evaluate(AmongItems(network, allowed))["mrr"] for name, network in networks.items()}


def half_known_table(halves: list[dict[str, float]], chosen: str) -> None:
    """The half-known reference's table: the chosen cold model, the content profile with the same
    columns, and the model that knew half of the cold items' pairs, on the other half."""
    names = ["content profile, with the release month", chosen, HALF_KNOWN]
    rows = [["the second half of the cold test pairs", "MRR among cold", "/ chosen cold model"]]
    for name in names:
        values = [half[name] for half in halves]
        ratio = np.mean([half[name] / half[chosen] for half in halves])
        rows.append([name + (" (chosen on validation)" if name == chosen else ""), fmt(values), f"{ratio:.3f}"])
    print()
    print(table(rows))


def paired(a: list[float], b: list[float], lower_better: bool) -> str:
    from scipy import stats

    a, b = np.array(a), np.array(b)
    if len(a) < 2:
        return "–"
    wins = int(((a < b) if lower_better else (a > b)).sum())
    return f"{np.mean(a - b):+.4f}, better on {wins}/{len(a)}, p = {stats.ttest_rel(a, b).pvalue:.3f}"


#: The warm systems: which features each reads.
WARM = {"id only": "none", "item features": "items", "item and user features": "items,users"}


def warm_table(seeds, data) -> None:
    """The id-only quality preset against the same with item features, and with item and user features,
    on the 95/5 random split; which features to keep is read off the validation columns."""
    from mtrec.eval.evaluation import Evaluator

    warm: dict[str, list] = {name: [] for name in WARM}
    for seed in seeds:  # interleaved: the systems alternate, seed by seed
        for name, features in WARM.items():
            model, parts, seconds = fit("random", seed, features, data=data)
            train, validation, _ = parts
            valid = Evaluator(validation, [train], metrics=("mse", "mrr")).evaluate(model.network_)
            warm[name].append(({**measured(model.network_, parts)["warm"], **{f"valid_{k}": v for k, v in valid.items()}}, seconds))
    columns = ("valid_mse", "valid_mrr", "mse", "mrr", "ndcg@10")
    rows = [["warm, 95/5 random split", "valid MSE", "valid MRR", "test MSE", "test MRR", "NDCG@10", "fit s"]]
    for name, runs in warm.items():
        values = [fmt([r[0][m] for r in runs]) for m in columns]
        rows.append([f"quality preset, {name}", *values, f"{np.mean([r[1] for r in runs]):.1f}"])
    print()
    print(table(rows))
    for name in list(WARM)[1:]:
        for metric, lower in (("mse", True), ("mrr", False), ("ndcg@10", False)):
            mine, theirs = [r[0][metric] for r in warm[name]], [r[0][metric] for r in warm["id only"]]
            print(f"{name} vs id only, test {metric}: {paired(mine, theirs, lower)}")
        seconds = [np.mean([r[1] for r in warm[key]]) for key in (name, "id only")]
        print(f"fit time with {name} / id only: {seconds[0] / seconds[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--no-folds", action="store_true", help="skip the canonical u1..u5 folds")
    parser.add_argument("--blocks", default="warm,cold-items,cold-users,folds", help="the tables: warm, cold-items, cold-users, folds (default all)")
    args = parser.parse_args()
    blocks = set(args.blocks.split(","))

    from mtrec.data import load_movielens
    from mtrec.eval.baselines import PopularityNet
    from mtrec.eval.coldstart import ContentProfile, DemographicPopularity, FeaturePopularity

    data = load_movielens("100k", data_dir=DATA_DIR)
    seeds = range(args.seeds)

    # ---------------------------------------------------------------- warm
    print(f"MovieLens 100K, seeds 0-{args.seeds - 1} (mean ± sd over seeds)")
    if "warm" in blocks:
        warm_table(seeds, data)

    # ---------------------------------------------------------------- cold items and cold users
    for split, side in (("cold-items", "items"), ("cold-users", "users")):
        if split not in blocks:
            continue
        results: dict[str, list] = {}
        valid: dict[str, list[float]] = {}  # the feature models' validation MRR among the validation's cold items
        halves: list[dict[str, float]] = []  # the reference of half-known cold items, per seed
        for seed in seeds:
            model, parts, seconds = fit(split, seed, side, 0.5, data=data)
            train = parts[0]
            fitted = model.data_.features[side]
            systems = {"popularity": PopularityNet(train)}
            lightfm = isolated(lightfm_with_features, parts, fitted, side, seed)
            if lightfm is not None:
                systems["LightFM 1.17 (WARP) with features"] = lightfm
            if side == "items":
                month, _, _ = fit(split, seed, side, 0.5, data=data, item_feature_columns=WITH_MONTH)
                with_month = month.data_.features[side]
                systems["genre popularity"] = FeaturePopularity(train, fitted.bags, fitted.map.size)
                trees = attribute_popularity(parts, with_month)
                if trees is not None:
                    systems["attribute popularity (boosted trees), with the release month"] = trees
                systems["content profile"] = ContentProfile(train, fitted.bags, fitted.map.size)
                systems["content profile, with the release month"] = ContentProfile(train, with_month.bags, with_month.map.size)
                systems["mtrec, quality preset with features"] = model.network_
                systems[MONTH_MODEL] = month.network_
                for name in ("mtrec, quality preset with features", MONTH_MODEL):
                    valid.setdefault(name, []).append(_valid_cold_mrr(systems[name], parts))
                systems["oracle: the test's popularity of the item's attribute group"] = cold_item_oracle(parts, fitted)
                systems["oracle: the same, with the release month"] = cold_item_oracle(parts, with_month)
                halves.append(half_known(parts, seed, systems))
            else:
                systems["demographic popularity"] = DemographicPopularity(train, fitted.bags, fitted.map.size)
                systems["mtrec, quality preset with features"] = model.network_
                systems.update(cold_user_oracles(parts))
            for name, network in systems.items():
                results.setdefault(name, []).append(measured(network, parts))
        # the feature model compared is the one the validation's cold items choose
        chosen = max(valid, key=lambda name: np.mean(valid[name])) if valid else "mtrec, quality preset with features"
        for name, scores in valid.items():
            print(f"{name}: validation MRR among the validation's cold items {fmt(scores)}{' (chosen)' if name == chosen else ''}")
        if side == "items":
            header = ["cold items (10% held out)", "MRR among cold", "NDCG@10 among cold", "MRR among all", "MRR among cold / mtrec"]
            keys = [("cold_items_among_cold", "mrr"), ("cold_items_among_cold", "ndcg@10"), ("cold_items", "mrr")]
        else:
            header = ["cold users (10% held out)", "MRR", "NDCG@10", "warm MRR", "MRR / mtrec"]
            keys = [("cold_users", "mrr"), ("cold_users", "ndcg@10"), ("warm", "mrr")]
        ours = results[chosen]
        rows = [header]
        for name, runs in results.items():
            values = [fmt([r[part][metric] for r in runs]) for part, metric in keys]
            ratio = np.mean([r[keys[0][0]][keys[0][1]] / o[keys[0][0]][keys[0][1]] for r, o in zip(runs, ours)])
            rows.append([name + (" (chosen on validation)" if name == chosen and valid else ""), *values, f"{ratio:.3f}"])
        print()
        print(table(rows))
        for name in results:
            if name != chosen and not name.startswith("oracle"):
                mine, theirs = [o[keys[0][0]][keys[0][1]] for o in ours], [r[keys[0][0]][keys[0][1]] for r in results[name]]
                print(f"mtrec with features vs {name}, {keys[0][1]}: {np.mean(mine) / np.mean(theirs):.2f}x, {paired(mine, theirs, False)}")
        if halves:
            half_known_table(halves, chosen)

    # ---------------------------------------------------------------- u1..u5
    if not args.no_folds and "folds" in blocks:
        folds_table()


#: The rating-minded variants of the quality preset tried on the folds (with item features); the
#: one with the best validation MSE (over the folds' validation sets) is the chosen one.
RATING_VARIANTS = {
    "quality preset": {},
    "λR 1": {"regression_weight": 1.0},
    "λR 1, early stopping on MSE": {"regression_weight": 1.0, "early_stopping": "mse"},
    "early stopping on MSE": {"early_stopping": "mse"},
    "λR 0.3, EMA 0.99, early stopping on MSE": {"regression_weight": 0.3, "ema": 0.99, "early_stopping": "mse"},
}


def folds_table() -> None:
    """The u1..u5 block: the quality preset id only, with item features, with item and user features;
    the rating-minded variants with item features, one chosen on validation MSE, and it id only."""
    folds = ("u1", "u2", "u3", "u4", "u5")
    scores: dict[str, list[tuple[float, float]]] = {}  # name: (validation MSE, test RMSE) per fold

    def measure(name: str, features: str, settings: dict) -> None:
        for fold in folds:
            model, parts, _ = fit(fold, 0, features, **settings)
            scores.setdefault(name, []).append((_valid_mse(model.network_, parts), _rmse(model.network_, parts)))

    for name, features in WARM.items():
        measure(f"quality preset, {name}", features, {})
    for name, settings in RATING_VARIANTS.items():
        if settings:
            measure(f"{name}, item features", "items", settings)
    candidates = {f"{name}, item features" if settings else "quality preset, item features": settings for name, settings in RATING_VARIANTS.items()}
    chosen = min(candidates, key=lambda name: np.mean([v for v, _ in scores[name]]))
    measure(f"{chosen.removesuffix(', item features')}, id only", "none", candidates[chosen])
    # and with MovieLens 100K's optional release month (what the cold-items block chooses): why it is not read by default
    with_month = {**candidates[chosen], "item_feature_columns": WITH_MONTH}
    measure(f"{chosen.removesuffix(', item features')}, item features and the release month", "items", with_month)
    rows = [["canonical 5-fold (u1..u5)", "valid MSE", "test RMSE", *(f"u{i}" for i in range(1, 6))]]
    for name, values in scores.items():
        label = name + (" (chosen on validation)" if name == chosen else "")
        rows.append([label, f"{np.mean([v for v, _ in values]):.4f}", fmt([r for _, r in values]), *(f"{r:.4f}" for _, r in values)])
    print()
    print(table(rows))
    print(f"chosen on validation MSE among {len(candidates)} variants with item features: {chosen}")


#: The item columns with MovieLens 100K's release month (read only when named: it costs the folds'
#: validation MSE, so the default columns leave it out; the cold-items block chooses on validation).
WITH_MONTH = "genres,year,decade,released"
MONTH_MODEL = "mtrec, quality preset with features and the release month"


def _valid_cold_mrr(network, parts, part: str = "cold_items_among_cold") -> float:
    """MRR of the validation's cold part (default its cold items among them; the validation is carved
    like the test: its items or users held out of training)."""
    from mtrec.eval.coldstart import cold_start_metrics

    train, validation, _ = parts
    return cold_start_metrics(network, train, validation, [train], metrics=("mrr",), k=(10,))[part]["mrr"]


def _valid_mse(network, parts) -> float:
    """Validation MSE (the set carved from the fold's base), what the variants are chosen on."""
    from mtrec.eval.evaluation import Evaluator

    train, validation, _ = parts
    return Evaluator(validation, [train], metrics=("mse",)).evaluate(network)["mse"]


def _rmse(network, parts) -> float:
    """Test RMSE over every test pair (warm and cold alike), as published u1..u5 results count it."""
    from mtrec.eval.evaluation import Evaluator

    train, validation, test = parts
    return Evaluator(test, [train, validation], metrics=("rmse",)).evaluate(network)["rmse"]


if __name__ == "__main__":
    main()
