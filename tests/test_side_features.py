"""Issue 22: side features in the model, cold users and items, the cold splits and their metrics.

Small synthetic data with feature tables (the data layer's own tests are test_features_data.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from mtrec import MultitaskModel
from mtrec.cli import main
from mtrec.data.feature_maps import FeatureMap, fit_features
from mtrec.data.features import FeatureColumn, FeatureTable
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import ItemMetadata
from mtrec.data.splits import cold_split
from mtrec.errors import ConfigError, DataError
from mtrec.eval.coldstart import cold_parts, cold_start_metrics
from mtrec.nn.network import MultitaskNet
from mtrec.serving.recommender import Recommender
from mtrec.train.sampling import EpochSampler

# featured()'s items miss some years on purpose: what fitting says of them is tested once, below
pytestmark = pytest.mark.filterwarnings("ignore:items.csv. column 'year' misses:UserWarning")

GENRES = ["action", "comedy", "drama"]


def featured(num_users: int = 40, num_items: int = 30, per_user: int = 8, seed: int = 0) -> Interactions:
    """Users of two kinds (by ``group``) who each rate items of their kind's genre more often."""
    rng = np.random.default_rng(seed)
    item_genre = np.arange(num_items) % 3
    user_group = np.arange(num_users) % 3
    users, items = [], []
    for user in range(num_users):
        weights = np.where(item_genre == user_group[user], 10.0, 1.0)
        chosen = rng.choice(num_items, size=per_user, replace=False, p=weights / weights.sum())
        users += [user] * per_user
        items += sorted(chosen.tolist())
    users, items = np.array(users, dtype=np.int32), np.array(items, dtype=np.int32)
    data = Interactions(
        users=users, items=items, ratings=rng.integers(1, 6, size=len(users)).astype(np.float32), timestamps=None,
        num_users=num_users, num_items=num_items, user_ids=np.arange(num_users), item_ids=np.arange(num_items),
        rating_scale=(1.0, 5.0), name="featured",
    )  # fmt: skip
    data.item_metadata = ItemMetadata(
        titles=[f"film {i}" for i in range(num_items)], years=[None] * num_items, genres=[[GENRES[g]] for g in item_genre]
    )
    data.item_features = FeatureTable(
        "item",
        np.arange(num_items, dtype=np.int64),
        [
            FeatureColumn("genres", "multi", [[GENRES[g]] + (["drama"] if i % 7 == 0 and g != 2 else []) for i, g in enumerate(item_genre)]),
            FeatureColumn("year", "numeric", np.array([1990.0 + i if i % 5 else np.nan for i in range(num_items)])),
        ],
        "items.csv",
    )
    data.user_features = FeatureTable(
        "user",
        np.arange(num_users, dtype=np.int64),
        [FeatureColumn("group", "categorical", [f"g{g}" for g in user_group])],
        "users.csv",
    )
    return data


# ---------------------------------------------------------------- the feature map


def test_a_map_gives_each_value_a_row_and_numeric_columns_a_standardised_weight():
    data = featured()
    fitted = fit_features(["items", "users"], data)
    items = fitted["items"]
    assert items.map.row_names() == ["genres=action", "genres=comedy", "genres=drama", "year"]
    assert fitted["users"].map.size == 3
    # item 7 is a comedy with drama: two genre rows weighing 1/2 each, and its standardised year
    row = slice(items.bags.indptr[7], items.bags.indptr[8])
    spec = items.map.columns[1]
    assert items.bags.indices[row].tolist() == [1, 2, 3]
    np.testing.assert_allclose(items.bags.weights[row], [0.5, 0.5, (1997 - spec["mean"]) / spec["sd"]], rtol=1e-6)
    # a missing year (every fifth item) adds nothing: the mean stands in for it, and a note says so
    assert items.bags.indices[items.bags.indptr[5] : items.bags.indptr[6]].tolist() == [2]
    assert any("misses 6 values" in note for note in items.map.notes)
    again = FeatureMap.from_json(items.map.to_json())
    assert again.row_names() == items.map.row_names() and again.columns == items.map.columns


def test_fitting_says_what_it_fills_in_once_per_fit():
    with pytest.warns(UserWarning, match=r"items.csv: column 'year' misses 6 values; its mean \(2005\) stands in for them"):
        fit_features(["items"], featured())


def test_rows_whose_ids_are_not_in_the_ratings_are_ignored_and_said():
    data = featured()
    table = data.item_features
    table.ids = table.ids + 10  # ids 10..39: 20 of 30 are in the ratings
    fitted = FeatureMap.fit(table, data.item_ids, "items")
    assert any("10 of 30 rows have item ids not in the ratings" in note for note in fitted.notes)
    bags = fitted.aligned(table, data.item_ids)
    assert np.diff(bags.indptr)[:10].tolist() == [0] * 10  # items 0..9 have no row: no features


def test_a_request_s_features_are_checked_one_by_one():
    feature_map = fit_features(["items"], featured())["items"].map
    bag = feature_map.encode_record({"genres": "action|drama", "year": 2001})
    assert bag.indices.tolist() == [0, 2, 3]
    for record, message in [
        ({"genres": "western"}, "'genres' holds 'western', a value the model never saw"),
        ({"colour": "red"}, "colour are not among the model's items features"),
        ({"year": float("inf")}, "'year' is numeric and needs a finite number"),
        ({"year": "old"}, "'year' is numeric and needs a finite number"),
        ({}, "none of the model's items features"),
    ]:
        with pytest.raises(DataError, match=message):
            feature_map.encode_record(record, "request")


# ---------------------------------------------------------------- the network


def _features_net(data: Interactions, **kwargs) -> MultitaskNet:
    fitted = fit_features(["items", "users"], data)
    torch.manual_seed(0)
    net = MultitaskNet(data.num_users, data.num_items, 8, features={side: f.map.size for side, f in fitted.items()}, **kwargs)
    for side, f in fitted.items():
        net.use_features(side, f.bags.indptr, f.bags.indices, f.bags.weights)
    with torch.no_grad():
        for name in ("item_feature_embeddings", "user_feature_embeddings"):
            getattr(net, name).weight.normal_()
    return net


@pytest.mark.parametrize("sharing", ["hard", "separate", "residual", "cross-stitch"])
def test_an_item_without_training_pairs_is_its_features_alone_in_both_heads(sharing):
    data = featured()
    net = _features_net(data, sharing=sharing).eval()
    known = torch.ones(data.num_items)
    known[4] = 0
    net.use_known("items", known)
    users, items = torch.arange(5), torch.full((5,), 4)
    before = net(users, items)
    all_before = net.all_watch_scores(users)[:, 4]
    with torch.no_grad():  # its id rows no longer count
        for table in net.tables():
            if table.rows == "items":
                getattr(net, table.name).weight[4] += 3.0
    after = net(users, items)
    torch.testing.assert_close(before, after)
    torch.testing.assert_close(all_before, net.all_watch_scores(users)[:, 4])
    # ... while its features do, in both heads, and a known item's id rows do too
    with torch.no_grad():
        net.item_feature_embeddings.weight[0] += 1.0  # "action": item 4 is not one (4 % 3 = 1, comedy)
        net.item_feature_embeddings.weight[1] += 1.0
    changed = net(users, items)
    assert not torch.allclose(changed[0], after[0]) and not torch.allclose(changed[1], after[1])


def test_the_whole_catalogue_and_the_pairs_agree_with_features():
    net = _features_net(featured()).eval()
    users = torch.arange(6)
    every = net.all_watch_scores(users)
    items = torch.arange(30).repeat(6, 1)
    torch.testing.assert_close(every, net.watch_scores(users, items))
    torch.testing.assert_close(every[:, 3], net.watch_score(users, torch.full((6,), 3)))


def test_the_fused_step_leaves_features_to_autograd():
    model = MultitaskModel(embedding_dim=8, features="items", batch_size=64)
    assert model.resolved_step() == "autograd"


# ---------------------------------------------------------------- training


def test_a_model_with_features_trains_saves_and_loads_the_same(tmp_path):
    data = featured()
    model = MultitaskModel(embedding_dim=8, features="items,users", batch_size=64, learning_rate=0.02, id_dropout=0.3, row_l2=0.001)
    model.fit(data, 5)
    assert model.data_.features["items"].map.size == 4
    assert float(model.network_.item_feature_embeddings.weight.detach().abs().sum()) > 0  # the features trained
    model.save(tmp_path / "m")
    loaded = MultitaskModel.load(tmp_path / "m")
    users = torch.arange(data.num_users)
    torch.testing.assert_close(model.network_.all_watch_scores(users), loaded.network_.all_watch_scores(users))
    assert loaded.data_.features["users"].map.columns == model.data_.features["users"].map.columns
    # the same seed trains the same model, bit for bit
    again = MultitaskModel(**model.get_params()).fit(data, 5)
    assert torch.equal(again.network_.item_feature_embeddings.weight, model.network_.item_feature_embeddings.weight)


def test_features_asked_of_data_without_them_are_refused_before_training():
    data = featured()
    data.user_features = None
    with pytest.raises(ConfigError, match="features=items,users needs user features, and the data has none: give --user-features FILE"):
        MultitaskModel(embedding_dim=8, features="items,users").fit(data, 1)
    with pytest.raises(ConfigError, match="features"):
        MultitaskModel(features="genres")


def test_items_held_out_of_training_are_never_drawn_nor_in_the_softmax():
    data = featured()
    train, test = cold_split(data, "items", 0.2, 0.05, seed=1)
    known = np.bincount(train.items, minlength=train.num_items) > 0
    for sampling in ("uniform", "popularity"):
        sampler = EpochSampler(train, 0, torch.device("cpu"), True, negatives=20, negative_sampling=sampling, drawable=np.flatnonzero(known))
        negatives = sampler.draw()[2]
        assert known[negatives.numpy()].all()
    model = MultitaskModel(embedding_dim=8, features="items", watch_loss="softmax", batch_size=64).fit(train, 2)
    # a cold item's id rows never moved from their start (zero gradient, masked by the softmax)
    fresh = model.build_network(train.num_users, train.num_items, feature_rows={"items": model.data_.features["items"].map.size})
    cold = np.flatnonzero(~known)
    torch.testing.assert_close(model.network_.item_embeddings.weight[cold], fresh.item_embeddings.weight[cold])


# ---------------------------------------------------------------- the cold splits and their metrics


def test_a_cold_items_split_holds_out_whole_items_and_a_share_of_the_rest():
    data = featured(num_users=60)
    train, test = cold_split(data, "items", 0.2, 0.1, seed=3)
    cold = np.setdiff1d(np.unique(data.items), np.unique(train.items))
    assert len(cold) == 6  # 20% of 30 items
    assert np.isin(data.items, cold).sum() == np.isin(test.items, cold).sum()  # every pair of a cold item is in test
    warm_pairs = len(data) - np.isin(data.items, cold).sum()
    assert (~np.isin(test.items, cold)).sum() == round(0.1 * warm_pairs)
    again = cold_split(data, "items", 0.2, 0.1, seed=3)[1]
    assert np.array_equal(again.items, test.items)
    users_train, users_test = cold_split(data, "users", 0.1, 0.1, seed=0)
    assert len(np.setdiff1d(np.unique(data.users), np.unique(users_train.users))) == 6
    with pytest.raises(DataError, match="cold_fraction 0.01 of the data's 30 items holds out 0"):
        cold_split(data, "items", 0.01, 0.1)


def test_the_run_options_make_a_cold_split_with_its_validation_carved_the_same_way(data_dir):
    from mtrec.data.spec import DataSpec

    spec = DataSpec(split="cold-users", cold_fraction=0.1, valid_fraction=0.05, seed=0)
    assert spec.to_json()["split"]["cold_fraction"] == 0.1
    assert "cold_fraction" not in DataSpec(split="cold-items").to_json()["split"]  # the default, 0.1
    with pytest.raises(Exception, match="cold_fraction"):
        DataSpec(split="random", cold_fraction=0.1)


def test_cold_metrics_measure_the_warm_and_the_cold_pairs_apart():
    data = featured(num_users=60)
    train, test = cold_split(data, "items", 0.2, 0.1, seed=3)
    parts = cold_parts(train, test)
    assert parts["cold_items"].sum() == np.isin(test.items, np.setdiff1d(np.arange(30), train.items)).sum()
    model = MultitaskModel(embedding_dim=8, features="items", batch_size=64, learning_rate=0.02).fit(train, 3)
    results = cold_start_metrics(model.network_, train, test, metrics=("mse", "mrr"))
    assert results["warm"]["pairs"] + results["cold_items"]["pairs"] == len(test)
    assert results["cold_items_among_cold"]["candidates"] == 6
    # among 6 candidates a rank is at most 6: MRR at least 1/6, and no lower than among all 30 items
    assert results["cold_items_among_cold"]["mrr"] >= max(1 / 6, results["cold_items"]["mrr"])


# ---------------------------------------------------------------- serving a user by their attributes


def test_a_new_user_with_attributes_gets_the_feature_encoders_list(tmp_path):
    data = featured()
    model = MultitaskModel(embedding_dim=8, features="items,users", batch_size=64, learning_rate=0.02, id_dropout=0.5, watch_loss="softmax")
    model.fit(data, 30)
    recommender = Recommender(model)
    lists = {group: recommender.recommend_history([], k=30, features={"group": group}) for group in ("g0", "g1", "g2")}
    assert not any(answer.cold_start for answer in lists.values())
    # the attributes matter: each group's own genre (item % 3) ranks higher for it than for the other groups
    for number, group in enumerate(("g0", "g1", "g2")):
        rank = {g: np.mean([item.rank for item in answer.items if int(item.item) % 3 == number]) for g, answer in lists.items()}
        assert rank[group] < min(r for g, r in rank.items() if g != group)
    # with a history as well, both count
    both = recommender.recommend_history([(3, 5.0)], k=5, features={"group": "g0"}, instant=True)
    alone = recommender.recommend_history([(3, 5.0)], k=5, instant=True)
    assert [i.watch_score for i in both.items] != [i.watch_score for i in alone.items]
    with pytest.raises(DataError, match="'group' holds 'g9', a value the model never saw"):
        recommender.recommend_history([], features={"group": "g9"})
    plain = Recommender(MultitaskModel(embedding_dim=8, batch_size=64).fit(data, 1))
    with pytest.raises(ConfigError, match="trained without user features"):
        plain.recommend_history([], features={"group": "g0"})


# ---------------------------------------------------------------- the command line


def _files(tmp_path) -> tuple[str, str]:
    data = featured()
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user,item,rating\n" + "".join(f"u{u},i{i},{r:g}\n" for u, i, r in zip(data.users, data.items, data.ratings)))
    items = tmp_path / "items.csv"
    items.write_text("item,genres,year\n" + "".join(f"i{i},{GENRES[i % 3]},{1990 + i}\n" for i in range(30)) + "i99,action,2000\n")
    return str(ratings), str(items)


def test_mtrec_train_reads_feature_files_and_records_the_features(tmp_path, capsys):
    ratings, items = _files(tmp_path)
    code = main([
        "train", "--no-progress", "--ratings", ratings, "--item-features", items, "--item-feature-types", "genres:multi",
        "--features", "items", "--epochs", "2", "--embedding-dim", "8", "--batch-size", "64", "--logdir", str(tmp_path / "run"),
        "--no-item-item",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "mtrec: warning: " in err and "items.csv: 1 of 31 rows have item ids not in the ratings; they are ignored" in err
    import json

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["features"] == "items"
    assert config["data"]["source"]["item_features"] == items
    loaded = MultitaskModel.load(tmp_path / "run")
    assert loaded.data_.features["items"].map.row_names() == ["genres=action", "genres=comedy", "genres=drama", "year"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--features", "items,users"], "features=items,users needs user features, and the data has none: give --user-features FILE"),
        (["--user-feature-types", "age:numeric"], "user_feature_types describes the columns of a user features file"),
        (["--features", "genres"], "features"),
        (["--features", "none"], "--item-features is read only by a model with --features items (or items,users)"),
    ],
)
def test_feature_options_that_cannot_work_exit_with_one_line(tmp_path, capsys, extra, message):
    ratings, items = _files(tmp_path)
    code = main([
        "train", "--no-progress", "--ratings", ratings, "--item-features", items, "--epochs", "1", "--embedding-dim", "8",
        "--logdir", str(tmp_path / "run"), "--no-item-item", "--features", "items", *extra,
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---------------------------------------------------------------- items the model never saw


def _item_model(data: Interactions | None = None, **kwargs) -> MultitaskModel:
    data = featured() if data is None else data
    options = {"embedding_dim": 8, "features": "items,users", "batch_size": 64, "learning_rate": 0.02, "watch_loss": "softmax"}
    return MultitaskModel(**{**options, **kwargs}).fit(data, 20)


def _new_items(tmp_path, rows: str, name: str = "new.csv") -> FeatureTable:
    from mtrec.data.features import read_feature_file

    path = tmp_path / name
    path.write_text("item,genres,year\n" + rows)
    return read_feature_file(path, "item", {"genres": "multi"})


def test_new_items_join_the_catalogue_as_their_features_alone(tmp_path):
    model = _item_model()
    net = model.network_
    fitted = model.data_.features["items"]
    bags = fitted.map.encode(_new_items(tmp_path, "100,action,1995\n101,drama,\n"))
    bigger = net.with_new_items(bags.indptr, bags.indices, bags.weights)
    users = torch.arange(10)
    scores = bigger.all_watch_scores(users)
    torch.testing.assert_close(scores[:, :30], net.all_watch_scores(users))  # the known items score as before
    # a new item scores as a known item would with its id rows left out
    known = torch.ones(30)
    known[1] = 0
    masked = MultitaskModel.load(_saved(model, tmp_path)).network_.use_known("items", known)
    same = fitted.map.encode(_new_items(tmp_path, "1,comedy,1991\n", "same.csv"))  # item 1's own features
    as_new = net.with_new_items(same.indptr, same.indices, same.weights)
    torch.testing.assert_close(as_new.all_watch_scores(users)[:, 30], masked.all_watch_scores(users)[:, 1])
    assert scores.shape == (10, 32)


def _saved(model: MultitaskModel, tmp_path) -> str:
    path = tmp_path / "model"
    if not path.exists():
        model.save(path)
    return str(path)


def test_a_candidate_file_recommends_among_its_items_new_ones_by_their_features(tmp_path):
    model = _item_model()
    recommender = Recommender(model)
    table = _new_items(tmp_path, "3,comedy,1993\n100,action,1995\n101,action|drama,\n")
    view, candidates = recommender.with_candidates(table)
    assert candidates == [3, 100, 101] and view.num_items == 32 and recommender.num_items == 30
    answer = view.recommend(0, k=3, include=candidates, exclude_seen=False)
    assert sorted(int(item.item) for item in answer.items) == [3, 100, 101]
    # a new user with attributes, among the new items only
    fresh = view.recommend_history([], k=2, include=[100, 101], features={"group": "g0"})
    assert sorted(int(item.item) for item in fresh.items) == [100, 101]
    # a new item's genres are its features': a genre filter keeps it
    dramas = view.recommend(0, k=5, include=candidates, genres=["drama"], exclude_seen=False)
    assert [int(item.item) for item in dramas.items] == [101]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("100,,\n101,action,1990\n", "new.csv, line 2: item 100 has neither interactions nor a feature value"),
        ("100,western,1990\n", "new.csv, line 2: column 'genres' holds 'western', a value the model never saw"),
    ],
)
def test_candidates_that_cannot_be_scored_are_refused_naming_the_line(tmp_path, rows, message):
    recommender = Recommender(_item_model())
    with pytest.raises(DataError, match=message):
        recommender.with_candidates(_new_items(tmp_path, rows))


def test_a_model_without_item_features_refuses_new_items(tmp_path):
    recommender = Recommender(MultitaskModel(embedding_dim=8, batch_size=64).fit(featured(), 1))
    with pytest.raises(ConfigError, match="trained without item features"):
        recommender.with_candidates(_new_items(tmp_path, "100,action,1990\n"))


def test_mtrec_recommend_takes_candidates_and_a_new_user_s_attributes(tmp_path, capsys):
    import json

    model = _item_model()
    model.save(tmp_path / "m")
    (tmp_path / "new.csv").write_text("item,genres,year\n100,action,1995\n101,drama,1996\n")
    base = ["recommend", "--model", str(tmp_path / "m"), "--format", "json"]
    assert main([*base, "--user", "0", "--candidates", str(tmp_path / "new.csv"), "--candidate-types", "genres:multi", "-k", "5"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert sorted(item["item"] for item in answer["items"]) == [100, 101]
    assert main([*base, "--user-features", "group=g1", "-k", "4"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["cold_start"] is False and len(answer["items"]) == 4
    for extra, message in [
        (["--user-features", "group=g7"], "'group' holds 'g7', a value the model never saw"),
        (["--user-features", "group"], "--user-features takes NAME=VALUE pairs"),
        (["--user", "0", "--user-features", "group=g1"], "--user-features describes a new user"),
        (["--candidate-types", "year:numeric", "--user", "0"], "--candidate-types describes the columns of --candidates FILE"),
        ([], "say whom to recommend for"),
    ]:
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def test_the_service_takes_a_new_user_s_attributes_and_new_candidates(tmp_path):
    from fastapi.testclient import TestClient

    from mtrec.serving.http import create_app

    model = _item_model()
    model.save(tmp_path / "m")
    client = TestClient(create_app(tmp_path / "m"))
    answer = client.post("/recommendations", json={"features": {"group": "g2"}, "k": 3})
    assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    new = [{"item": 100, "genres": ["action"], "year": 1995}, {"item": "101", "genres": "drama"}]
    answer = client.post("/recommendations", json={"history": [{"item": 3, "rating": 4}], "candidates": new, "k": 5})
    assert answer.status_code == 200, answer.text
    assert sorted(str(item["item"]) for item in answer.json()["items"]) == ["100", "101"]
    for body, message in [
        ({"features": {"group": "g9"}}, "a value the model never saw"),
        ({"features": {"group": "g1"}, "candidates": [{"item": 100, "genres": "western"}]}, "a value the model never saw"),
        ({"features": {"group": "g1"}, "candidates": [{"item": 100, "colour": "red"}]}, "colour are not among the model's item features"),
        ({"k": 3}, "give a history of at least one item, or the user's features"),
        ({"features": {"group": "g1"}, "candidates": [{"item": 2**70, "genres": "drama"}]}, "out of range for an id"),
        ({"features": {"group": "g1"}, "candidates": [{"item": 100, "year": 10**400}]}, "'year' is numeric and needs a finite number"),
    ]:
        answer = client.post("/recommendations", json=body)
        assert answer.status_code == 422 and message in answer.text, (body, answer.text)


# ---------------------------------------------------------------- MovieLens 100K


@pytest.mark.slow
def test_a_cold_items_run_on_movielens_reports_warm_and_cold_pairs_apart(tmp_path, capsys, data_dir):
    import json

    code = main([
        "train", "--no-progress", "--data-dir", str(data_dir), "--split", "cold-items", "--features", "items", "--id-dropout", "0.5",
        "--epochs", "2", "--logdir", str(tmp_path / "run"),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cold = metrics["cold_start"]
    assert set(cold) == {"warm", "cold_items", "cold_items_among_cold"}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["split"]["method"] == "cold-items"
    assert cold["cold_items"]["pairs"] == cold["cold_items_among_cold"]["pairs"] > cold["warm"]["pairs"] > 0
    assert 0 < cold["cold_items"]["mrr"] < cold["cold_items_among_cold"]["mrr"] <= 1
    assert f"cold items among cold ({cold['cold_items']['pairs']:,} test pairs among the" in out
    model = MultitaskModel.load(tmp_path / "run")
    assert model.data_.features["items"].map.names == ["genres", "year", "decade"]
    assert model.data_.features["items"].map.skipped == ["released"]


def test_movielens_gives_its_attributes_to_the_data(ml100k):
    assert ml100k.item_features.names == ["genres", "year", "decade", "released"] and len(ml100k.item_features) == 1682
    assert ml100k.user_features.names == ["age", "age_group", "gender", "occupation", "zip1"]
    with pytest.warns(UserWarning, match=r"MovieLens 100K u.item: column 'year' misses 1 values; its mean \(1989.07\) stands in"):
        fitted = fit_features(["items", "users"], ml100k)
    # age; 7 age groups, 2 genders, 21 occupations, 19 zip prefixes (ten digits and nine letters of Canadian codes)
    assert fitted["users"].map.size == 1 + 7 + 2 + 21 + 19


def test_the_dense_and_the_bag_readings_of_the_features_agree(monkeypatch):
    import mtrec.nn.network as network_module

    data = featured()
    dense = _features_net(data).eval()
    monkeypatch.setattr(network_module, "MAX_DENSE_FEATURES", 0)
    bags = _features_net(data).eval()
    assert dense.item_feature_dense.dim() == 2 and bags.item_feature_dense.dim() == 1
    users = torch.arange(10)
    torch.testing.assert_close(dense.all_watch_scores(users), bags.all_watch_scores(users))
    torch.testing.assert_close(dense(users, users + 3), bags(users, users + 3))


def test_the_vector_exports_and_the_retrieval_space_carry_the_features():
    from mtrec.serving.export import head_tables
    from mtrec.serving.retrieval import watch_queries, watch_scores, watch_space

    data = featured()
    net = _features_net(data).eval()
    known = torch.ones(30)
    known[[2, 5]] = 0  # two items scored by their features alone
    net.use_known("items", known)
    with torch.no_grad():
        net.item_feature_biases.weight.normal_()
        net.user_feature_biases.weight.normal_()
    users = torch.arange(data.num_users)
    expected = net.all_watch_scores(users)
    tables = {side: {k: torch.as_tensor(v) for k, v in t.items()} for side, t in head_tables(net).items()}
    names = list(tables["user"])  # vectors, biases, rating vectors, rating biases
    exported = tables["user"][names[0]] @ tables["item"][names[0]].T + tables["user"][names[1]][:, None] + tables["item"][names[1]][None, :]
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
    spaced = watch_queries(net, users) @ watch_space(net).T + net.user_bias(users)[:, None]
    torch.testing.assert_close(spaced, expected, rtol=1e-5, atol=1e-5)
    items = torch.arange(30).repeat(len(users), 1)
    torch.testing.assert_close(watch_scores(net, users, items), expected, rtol=1e-5, atol=1e-5)


def test_id_dropout_draws_one_mask_per_step_at_its_rate_and_again_at_the_next():
    net = _features_net(featured(), id_dropout=0.3).train()
    everyone = torch.arange(30)
    net.begin_step()
    first = net._known("item", everyone)
    assert torch.equal(first, net._known("item", everyone))  # every call of the step reads the same mask
    assert torch.equal(first[3:9], net._known("item", torch.arange(3, 9)))  # a subset reads its own entries
    masks = []
    for _ in range(200):
        net.begin_step()
        masks.append(net._known("item", everyone))
    rate = 1 - torch.stack(masks).mean()
    assert abs(float(rate) - 0.3) < 0.03
    assert not torch.equal(masks[0], masks[1])
    # neighbouring ids are not dropped together more often than chance
    together = (torch.stack(masks)[:, :-1] == 0) & (torch.stack(masks)[:, 1:] == 0)
    assert abs(float(together.float().mean()) - 0.09) < 0.02
    net.eval()
    assert torch.equal(net._known("item", everyone), torch.ones(30))  # nothing is dropped outside training


def test_candidates_of_a_model_with_text_ids_mix_known_and_new_items(tmp_path):
    data = featured()
    data.item_ids = np.array([f"m{i}" for i in range(30)], dtype=object)
    data.item_features.ids = data.item_ids.copy()
    recommender = Recommender(_item_model(data))
    (tmp_path / "new.csv").write_text("item,genres,year\nm3,comedy,1993\nnew-1,action,1995\n")
    from mtrec.data.features import read_feature_file

    view, candidates = recommender.with_candidates(read_feature_file(tmp_path / "new.csv", "item", {"genres": "multi"}))
    assert candidates == ["m3", "new-1"]
    answer = view.recommend(0, k=5, include=candidates, exclude_seen=False)
    assert sorted(item.item for item in answer.items) == ["m3", "new-1"]


def test_candidate_columns_are_read_as_the_model_read_them(tmp_path, capsys):
    import json

    data = featured()
    data.item_features.columns.append(FeatureColumn("studio", "categorical", [str(100 + i % 4) for i in range(30)]))
    model = _item_model(data)
    model.save(tmp_path / "m")
    # "101" looks like a number, but the model read studio as categorical: so is it here
    (tmp_path / "new.csv").write_text("item,genres,year,studio\n100,action,1995,101\n101,drama,1996,102\n")
    code = main(["recommend", "--model", str(tmp_path / "m"), "--format", "json", "--user", "0", "--candidates", str(tmp_path / "new.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(item["item"] for item in json.loads(out)["items"]) == [100, 101]


def test_a_candidate_file_without_one_of_the_model_s_columns_reads_it_as_missing(tmp_path):
    from mtrec.data.features import read_feature_file

    recommender = Recommender(_item_model())
    (tmp_path / "new.csv").write_text("item,genres\n100,action\n")
    with pytest.warns(UserWarning, match="new.csv lacks the model's items feature column.s. year: read as missing in every row"):
        view, candidates = recommender.with_candidates(read_feature_file(tmp_path / "new.csv", "item", {"genres": "multi"}))
    assert candidates == [100] and view.num_items == 31


def test_a_user_held_out_of_training_gets_the_cold_start_list_from_an_id_only_model():
    data = featured()
    train, _ = cold_split(data, "users", 0.2, 0.05, seed=0)
    held_out = np.flatnonzero(np.bincount(train.users, minlength=train.num_users) == 0)
    user = int(train.user_ids[held_out[0]])
    plain = Recommender(MultitaskModel(embedding_dim=8, batch_size=64).fit(train, 1))
    answer = plain.recommend(user, k=3)
    assert answer.cold_start and [item.watch_score for item in answer.items] == [None] * 3  # popularity, not an untrained row
    table = pa.concat_tables(list(plain.recommend_all(None, k=3)))
    rows = table.filter(pc.equal(table.column("user"), str(user)))
    assert rows.num_rows == 3 and all(rows.column("cold_start").to_pylist())
    assert table.num_rows == 3 * data.num_users  # everyone has a list
    # a model that reads the users' attributes ranks for them
    featured_model = MultitaskModel(embedding_dim=8, batch_size=64, features="users", id_dropout=0.5).fit(train, 1)
    assert not Recommender(featured_model).recommend(user, k=3).cold_start


# --- choosing the columns a model reads -----------------------------------------------------------


def _with_optional_month(data: Interactions) -> Interactions:
    """featured() with an optional ``released`` column, as MovieLens 100K's release month."""
    months = [f"199{i % 3}-0{1 + i % 4}" for i in range(data.num_items)]
    data.item_features.columns.append(FeatureColumn("released", "categorical", months, optional=True))
    return data


def test_optional_columns_are_read_only_when_named_and_the_map_remembers_the_rest(tmp_path):
    data = _with_optional_month(featured())
    default = MultitaskModel(embedding_dim=8, features="items", batch_size=64).fit(data, 1)
    fitted = default.data_.features["items"].map
    assert fitted.names == ["genres", "year"] and fitted.skipped == ["released"] and fitted.size == 3 + 1
    chosen = MultitaskModel(embedding_dim=8, features="items", item_feature_columns="released, genres", batch_size=64).fit(data, 1)
    fitted = chosen.data_.features["items"].map
    assert chosen.item_feature_columns == "released, genres" and chosen.get_params()["item_feature_columns"] == "released, genres"
    assert fitted.names == ["released", "genres"] and fitted.skipped == ["year"] and fitted.size == 12 + 3
    chosen.save(tmp_path / "m")
    loaded = MultitaskModel.load(tmp_path / "m")
    assert loaded.data_.features["items"].map.skipped == ["year"] and loaded.data_.features["items"].map.names == ["released", "genres"]
    # a file with a column the model skipped is still taken (the column passed over); one it never had is refused
    new = _new_items(tmp_path, "100,action,1990\n")
    with pytest.warns(UserWarning, match=r"new.csv lacks the model's items feature column\(s\) released: read as missing"):
        assert Recommender(loaded).with_candidates(new) is not None
    assert fitted.encode_record({"genres": "action", "year": 1990}).indices.tolist() == [12 + 0]
    with pytest.raises(DataError, match="mood are not among the model's items features"):
        fitted.encode_record({"genres": "action", "mood": "sad"})
    # the service's candidates pass it over too
    from mtrec.serving.newitems import candidate_table

    table = candidate_table([{"item": "n1", "genres": ["action"], "released": "1990-01", "year": 1991}], loaded)
    assert table.names == ["released", "genres"] and table.column("released").values == ["1990-01"]
    with pytest.raises(ConfigError, match="mood are not among the model's item features"):
        candidate_table([{"item": "n1", "genres": ["action"], "mood": "sad"}], loaded)


def test_a_model_from_before_an_optional_column_takes_the_table_that_has_it():
    data = featured()
    old = MultitaskModel(embedding_dim=8, features="items", batch_size=64).fit(data, 1)
    old_map = FeatureMap.from_json({k: v for k, v in old.data_.features["items"].map.to_json().items() if k != "skipped"})
    assert old_map.skipped == []
    table = _with_optional_month(featured()).item_features
    assert torch.equal(torch.as_tensor(old_map.encode(table).indices), torch.as_tensor(old.data_.features["items"].bags.indices))
    table.columns[-1].optional = False  # a column of the user's own, the model never had: refused
    with pytest.raises(DataError, match=r"column\(s\) released are not among the model's items features"):
        old_map.encode(table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--features", "items", "--item-feature-columns", "genre"],
            "MovieLens 100K u.item: no feature column 'genre'; the columns are 'genres', 'year', 'decade', 'released'",
        ),
        (
            ["--item-feature-columns", "genres"],
            "--item-feature-columns picks the columns of the item features, which the model does not read: add items to --features",
        ),
        (["--features", "items", "--item-feature-columns", "genres,,year"], "name the feature columns separated by commas"),
        (["--features", "users", "--user-feature-columns", "age,age"], "feature column(s) age named twice"),
    ],
)
def test_bad_feature_columns_are_one_line_before_anything_is_written(tmp_path, capsys, data_dir, args, message):
    code = main(["train", "--no-progress", "--data-dir", str(data_dir), "--epochs", "1", "--logdir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_release_date_of_another_form_is_refused_naming_the_item(tmp_path):
    from mtrec.data.metadata import release_months

    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\n")
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url|0|1\n2|Heat (1995)|||url|0|1\n3|Odd (1996)|1996/05/01||url|0|1\n")
    with pytest.raises(DataError, match=r"u.item, item 3: release date '1996/05/01' is not DD-Mon-YYYY"):
        release_months(tmp_path / "u.item")
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||url|0|1\n2|Heat (1995)|||url|0|1\n3|Fargo (1996)|14-Feb-1996||url|0|1\n")
    assert release_months(tmp_path / "u.item") == ["1995-01", None, "1996-02"]
