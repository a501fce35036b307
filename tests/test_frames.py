"""DataFrames in and out: pandas, polars and Arrow frames read exactly like files (the same
Interactions, the same checks naming row and column), a model fits on a frame, and
recommendations, predictions and the training history come back as frames."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from mtrec.data import Interactions, load_ratings_file
from mtrec.data.frames import frame_table, read_items_frame, to_frame
from mtrec.errors import ConfigError, DataError, UnknownItemError, UnknownUserError
from mtrec.model import MultitaskModel
from mtrec.serving.recommender import Recommender

FIELDS = ("users", "items", "ratings", "timestamps", "user_ids", "item_ids")
EXTRA = 'pip install "mtrec[frames]"'


def assert_same_interactions(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert (a.num_users, a.num_items, a.rating_scale, a.name) == (b.num_users, b.num_items, b.rating_scale, b.name)


@pytest.fixture(scope="module")
def ratings_frame(data_dir) -> pd.DataFrame:
    """ML-100K's u.data as pandas reads it: numbered columns, int64 and float64."""
    return pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None)


@pytest.fixture(scope="module")
def items_frame(data_dir) -> pd.DataFrame:
    """ML-100K's u.item as a frame of id, title and a list of genres per item."""
    raw = pd.read_csv(data_dir / "ml-100k" / "u.item", sep="|", header=None, encoding="latin-1")
    genre_names = pd.read_csv(data_dir / "ml-100k" / "u.genre", sep="|", header=None)[0].tolist()
    flags = raw.iloc[:, 5:].to_numpy(dtype=bool)
    genres = [[name for name, flag in zip(genre_names, row) if flag] for row in flags]
    return pd.DataFrame({"movieId": raw[0], "title": raw[1], "genres": genres})


# ----------------------------------------------------------------------------- frames in


def test_ml100k_from_a_pandas_frame_is_the_same_as_from_its_file(data_dir, ratings_frame):
    from_file = load_ratings_file(data_dir / "ml-100k" / "u.data")
    assert_same_interactions(Interactions.from_frame(ratings_frame, name="u.data"), from_file)


def test_ml100k_from_frames_is_load_movielens(ml100k, ratings_frame, items_frame):
    named = ratings_frame.set_axis(["userId", "movieId", "rating", "timestamp"], axis=1)
    data = Interactions.from_frame(named, items=items_frame, rating_scale=(1, 5), name="ml-100k")
    assert_same_interactions(data, ml100k)
    assert data.item_metadata.titles == ml100k.item_metadata.titles
    assert data.item_metadata.genres == ml100k.item_metadata.genres
    assert data.item_metadata.genres[0] == ["Animation", "Children's", "Comedy"]


def test_pandas_polars_and_arrow_frames_give_the_same_interactions():
    columns = {
        "user_id": [" u10", "u2", "u10", "u1"],
        "movie_id": [7, 5, 5, 7],
        "stars": [4.0, 3.5, 1.0, 5.0],
        "date": pd.to_datetime(["2000-01-01", "2000-01-02", "2000-01-03", "2000-01-04"]),
    }
    frames = [pd.DataFrame(columns), pl.DataFrame(columns), pa.table(columns)]
    loaded = [Interactions.from_frame(frame, name="r") for frame in frames]
    for data in loaded[1:]:
        assert_same_interactions(data, loaded[0])
    data = loaded[0]
    assert data.user_ids.tolist() == ["u1", "u2", "u10"] and data.item_ids.tolist() == [5, 7]
    assert data.users.tolist() == [2, 1, 2, 0] and data.timestamps.tolist() == [946684800 + 86400 * i for i in range(4)]


def test_the_same_data_from_a_frame_and_from_a_csv_file_with_items_are_equal(tmp_path):
    ratings = pd.DataFrame({"user": ["b", "a", "b"], "item": [20, 10, 10], "rating": [4.0, 2.0, 5.0], "ts": [3, 1, 2]})
    items = pd.DataFrame({"item": [10, 20], "title": ["Heat (1995)", "Up (2009)"], "genres": ["Crime|Drama", "Animation"]})
    ratings.to_csv(tmp_path / "r.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    from_file = load_ratings_file(tmp_path / "r.csv", items_path=tmp_path / "items.csv")
    from_frame = Interactions.from_frame(ratings, items=items, name="r.csv")
    assert_same_interactions(from_frame, from_file)
    assert from_frame.item_metadata == from_file.item_metadata
    assert from_frame.item_metadata.years == [1995, 2009]


def test_columns_are_recognised_by_their_usual_names_or_named():
    frame = pd.DataFrame({"customer": [1, 2], "sku": [5, 6], "value": [3.0, 4.0], "when": [10, 20]})
    data = Interactions.from_frame(frame, user="customer", item="sku", rating="value", timestamp="when")
    assert data.user_ids.tolist() == [1, 2] and data.ratings.tolist() == [3.0, 4.0] and data.timestamps.tolist() == [10, 20]
    by_position = Interactions.from_frame(frame, user=1, item=0)
    assert by_position.user_ids.tolist() == [5, 6] and by_position.ratings is None
    aliases = Interactions.from_frame(pl.DataFrame({"uid": [1], "iid": [2], "score": [3.0], "ts": [4]}))
    assert aliases.ratings.tolist() == [3.0] and aliases.timestamps.tolist() == [4]


def test_numeric_columns_of_a_pandas_frame_reach_arrow_without_a_copy():
    users = np.arange(1000, dtype=np.int32)
    frame = pd.DataFrame({"user": users, "item": users[::-1].copy(), "rating": np.ones(1000, dtype=np.float32)})
    _, table, _ = frame_table(frame, {"user": None, "item": None, "rating": None}, required=("user",))
    for name in ("user", "item", "rating"):
        assert table.column(name).chunk(0).buffers()[1].address == frame[name].to_numpy().ctypes.data, name


def test_whole_number_float_ids_are_integers_and_categories_are_decoded():
    frame = pd.DataFrame({"user": [1.0, 2.0], "item": pd.Categorical(["x", "y"]), "rating": [1, 2]})
    data = Interactions.from_frame(frame)
    assert data.user_ids.dtype == np.int64 and data.user_ids.tolist() == [1, 2]
    assert data.item_ids.tolist() == ["x", "y"] and data.ratings.dtype == np.float32


def test_integer_categories_of_polars_and_pandas_give_integer_ids():
    data = Interactions.from_frame(pd.DataFrame({"user": pd.Categorical([30, 4]), "item": [1, 2]}))
    assert data.user_ids.dtype == np.int64 and data.user_ids.tolist() == [4, 30]
    data = Interactions.from_frame(pl.DataFrame({"user": ["a", "b"], "item": [1, 2]}).with_columns(pl.col("user").cast(pl.Categorical)))
    assert data.user_ids.tolist() == ["a", "b"]


def test_items_frames_take_genres_as_lists_or_text_and_numbered_columns_by_position():
    as_lists = read_items_frame(pl.DataFrame({"item_id": [2, 1], "name": ["B (2001)", "A"], "genres": [["X", "Y"], []]}))
    assert as_lists.ids.tolist() == [2, 1] and as_lists.metadata.genres == [["X", "Y"], []]
    assert as_lists.metadata.years == [2001, None]
    numbered = read_items_frame(pd.DataFrame({0: [" 7 "], 1: ["Heat"], 2: ["Crime|Drama"]}))
    assert numbered.ids.tolist() == [7] and numbered.metadata.genres == [["Crime", "Drama"]]  # as items files read ids


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "frame, kwargs, message",
    [
        (pd.DataFrame({"user": [1], "product": [2]}), {},
         "pandas DataFrame: no item column: none of the columns ('user', 'product') is called "
         "item/itemid/movieid/iid/movie; name it with item="),
        (pd.DataFrame({"user": [1], "item": [2]}), {"timestamp": "when"},
         "pandas DataFrame: no column 'when' for the time; the columns found are 'user', 'item'"),
        (pd.DataFrame({"user": [True], "item": [2]}), {},
         "pandas DataFrame: the user ids (column 'user') are bool; ids must be integers or text"),
        (pd.DataFrame({"user": [1, 2], "item": [2.0, 2.5]}), {},
         "pandas DataFrame, row 2: item id 2.5 is not a whole number (column 'item')"),
        (pd.DataFrame({"user": [1, 2, 3], "item": [2, 3, 4], "rating": ["4", "4.5", "good"]}), {},
         "pandas DataFrame, row 3: rating 'good' is not a number (column 'rating')"),
        (pd.DataFrame({"user": [1], "item": [2], "rating": [True]}), {},
         "pandas DataFrame: the ratings (column 'rating') are bool; ratings must be numbers"),
        (pa.table({"user": [1], "item": [2], "time": pa.array([1], pa.duration("s"))}), {},
         "Arrow table: the times (column 'time') are duration[s]; times must be seconds since 1970, "
         "timestamps, dates or ISO date/time text"),
        (pd.DataFrame({"user": [1, 2, "u3"], "item": [1, 2, 3]}), {},
         "pandas DataFrame, row 3: 'u3' is str, but row 1 holds int (column 'user'): a column must hold one type"),
        (pd.DataFrame({"user": [1, 2], "item": [1, 2], "time": ["2000-01-01", "yesterday"]}), {},
         "pandas DataFrame, row 2: time 'yesterday' is neither seconds since 1970 nor an ISO date/time"),
        (pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [3.0, 9.0]}), {"rating_scale": (1, 5)},
         "pandas DataFrame, row 2: rating 9 is outside the rating scale 1..5 (1 ratings are)"),
        (pd.DataFrame({"user": [1], "item": [2]}), {"rating_scale": (5, 1)},
         "rating scale must have lowest < highest, got 5..1"),
        (pd.DataFrame({"user": ["a", "b\x1b"], "item": [1, 2]}), {},
         "pandas DataFrame, row 2: user id 'b\\x1b' holds the control character U+001B (column 'user')"),
        (pd.DataFrame({"user": ["a", "  "], "item": [1, 2]}), {"name": "clicks"},
         "clicks, row 2: empty user id (column 'user')"),
        (pd.DataFrame({"user": pd.Series([], dtype=int), "item": pd.Series([], dtype=int)}), {},
         "pandas DataFrame: no rows"),
        ({"user": [1], "item": [2]}, {},
         "expected a pandas DataFrame, a polars DataFrame or a pyarrow Table, got builtins.dict"),
        (pd.DataFrame([[1, 2, 3]], columns=["user", "item", "item"]), {},
         "pandas DataFrame: 2 columns are called 'item'"),
    ],
)  # fmt: skip
def test_bad_frames_are_one_line_naming_the_column_and_the_row(frame, kwargs, message):
    with pytest.raises(DataError) as caught:
        Interactions.from_frame(frame, **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"user": [1.0, np.nan, 3.0], "item": [1, 2, 3]}),  # an int column with a gap, as pandas holds it
        pd.DataFrame({"user": ["a", "b", None], "item": [1, 2, 3]}).iloc[[0, 2, 1]],
        pl.DataFrame({"user": [1, None, 3], "item": [1, 2, 3]}),
        pa.table({"user": pa.array([1, None, 3]), "item": [1, 2, 3]}),
    ],
)
def test_a_missing_id_names_its_row_in_every_library(frame):
    with pytest.raises(DataError, match=r"^(pandas DataFrame|polars DataFrame|Arrow table), row 2: empty user id \(column 'user'\)$"):
        Interactions.from_frame(frame)


def test_missing_ratings_and_times_name_their_row():
    with pytest.raises(DataError, match=r"^polars DataFrame, row 2: empty rating \(column 'rating'\)$"):
        Interactions.from_frame(pl.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [4.0, None]}))
    with pytest.raises(DataError, match=r"^pandas DataFrame, row 1: empty time \(column 'ts'\)$"):
        Interactions.from_frame(pd.DataFrame({"user": [1, 2], "item": [1, 2], "ts": [None, pd.Timestamp("2000-01-01")]}))


def test_duplicate_pairs_keep_the_last_by_time_or_by_row_as_files_do():
    frame = pd.DataFrame({"user": [1, 1, 2, 1], "item": [5, 5, 5, 5], "rating": [1.0, 2.0, 3.0, 4.0], "ts": [30, 10, 5, 20]})
    with pytest.warns(UserWarning, match=r"^pandas DataFrame: 2 duplicate \(user, item\) ratings dropped, keeping the last by time$"):
        data = Interactions.from_frame(frame)
    assert sorted(zip(data.users.tolist(), data.ratings.tolist())) == [(0, 1.0), (1, 3.0)]
    with pytest.warns(UserWarning, match="2 duplicate .* keeping the last in the file"):
        data = Interactions.from_frame(frame.drop(columns="ts"))
    assert sorted(zip(data.users.tolist(), data.ratings.tolist())) == [(0, 4.0), (1, 3.0)]


def test_a_clean_frame_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(Interactions.from_frame(pd.DataFrame({"user": [1, 2], "item": [1, 1]}))) == 2


def test_an_items_frame_without_titles_is_named_before_the_ratings_are_read():
    items = pd.DataFrame({"movieId": [2], "genres": ["X"]})
    with pytest.raises(DataError, match=r"^pandas DataFrame: no title column: none of the columns \('movieId', 'genres'\) is called"):
        Interactions.from_frame(pd.DataFrame({"user": [1], "item": [None]}), items=items)


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_a_frame_library_that_is_not_installed_names_the_extra(monkeypatch, library):
    monkeypatch.setitem(sys.modules, library, None)  # what `import pandas` meets when pandas is missing
    with pytest.raises(ConfigError) as caught:
        to_frame(pa.table({"a": [1]}), library)
    assert str(caught.value) == f"{library} is not installed: {EXTRA} (or pip install {library})"


def test_an_unknown_backend_lists_the_backends():
    with pytest.raises(ConfigError, match=r"^unknown backend 'spark'; use one of pandas, polars, arrow$"):
        to_frame(pa.table({"a": [1]}), "spark")


# ----------------------------------------------------------------------------- the model and its history


def test_fit_on_a_frame_trains_the_same_model_as_on_its_interactions(ratings_frame):
    frame = ratings_frame.head(3000)
    on_frame = MultitaskModel(seed=3).fit(frame, epochs=2)
    on_data = MultitaskModel(seed=3).fit(Interactions.from_frame(frame), epochs=2)
    assert [r.train_loss for r in on_frame.history_] == [r.train_loss for r in on_data.history_]
    for name, tensor in on_data.network_.state_dict().items():
        assert np.array_equal(on_frame.network_.state_dict()[name].numpy(), tensor.numpy()), name
    np.testing.assert_array_equal(on_frame.data_.user_ids, on_data.data_.user_ids)


def test_fit_reads_the_columns_it_is_told():
    frame = pl.DataFrame({"customer": [1, 2, 2], "sku": [1, 1, 2], "stars": [4.0, 3.0, 5.0]})
    model = MultitaskModel(seed=0).fit(frame, epochs=1, columns={"user": "customer", "item": "sku"})
    assert model.data_.user_ids.tolist() == [1, 2] and model.data_.rating_scale == (3.0, 5.0)
    with pytest.raises(ConfigError, match=r"^unknown column role 'users'; the roles are user, item, rating, timestamp$"):
        MultitaskModel().fit(frame, columns={"users": "customer"})
    with pytest.raises(DataError, match=r"^polars DataFrame: no user column"):
        MultitaskModel().fit(frame)


def test_history_frame_has_a_row_per_epoch_with_the_records_losses_and_metrics(ml100k_split):
    train, test = ml100k_split
    model = MultitaskModel(seed=0, batch_size=4096).fit(train, epochs=2, test=test, metrics=("mse", "mrr"), k=(10,))
    history = model.history_frame()
    assert isinstance(history, pd.DataFrame) and history["epoch"].tolist() == [1, 2]
    assert history.columns.tolist()[:6] == ["epoch", "train_watch", "train_rating", "train_loss", "test_mse", "test_mrr"]
    for row, record in zip(history.itertuples(), model.history_):
        assert (row.train_loss, row.test_mse, row.seconds) == (record.train_loss, record.metrics["test_mse"], record.seconds)
    as_polars = model.history_frame("polars")
    assert as_polars["test_mrr"].to_list() == [r.metrics["test_mrr"] for r in model.history_]


def test_history_frame_gives_null_where_an_epoch_measured_nothing(ml100k_split):
    train, test = ml100k_split
    model = MultitaskModel(seed=0, batch_size=4096, regression_weight=0.0, factorization_weight=1.0)
    model.fit(train.subset(np.arange(5000)), epochs=3, test=test, eval_every=2, metrics=("mrr",), k=(10,))
    history = model.history_frame("arrow")
    assert history.column("test_mrr").null_count == 1 and history.column("test_mrr")[0].as_py() is None
    assert history.column("test_mse").null_count == 3


def test_history_frame_of_a_model_not_fitted_says_so():
    with pytest.raises(ConfigError, match="not fitted yet"):
        MultitaskModel().history_frame()


# ----------------------------------------------------------------------------- recommendations and predictions out


@pytest.fixture(scope="module")
def recommender(ml100k):
    return Recommender(MultitaskModel(seed=0, batch_size=4096).fit(ml100k, epochs=2))


def test_recommend_frame_is_the_batch_path_with_typed_ids(recommender):
    frame = recommender.recommend_frame(k=10)
    batch = pa.concat_tables(recommender.recommend_all(k=10))
    assert len(frame) == 943 * 10 and frame.columns.tolist() == batch.column_names
    assert frame["user"].dtype == np.int64 and frame["item"].dtype == np.int64
    assert frame["user"].astype(str).tolist() == batch.column("user").to_pylist()
    assert frame["item"].astype(str).tolist() == batch.column("item").to_pylist()
    for name in ("rank", "title", "watch_score", "p", "rating", "rating_raw", "cold_start"):
        assert frame[name].tolist() == batch.column(name).to_pylist(), name


def test_recommend_frame_applies_the_filters_of_recommend(recommender):
    frame = recommender.recommend_frame([196, "newcomer"], k=5, genres=["Film-Noir"], exclude=[483])
    one = recommender.recommend(196, k=5, genres=["Film-Noir"], exclude=[483])
    known = frame[frame["user"] == "196"]  # a user the model never saw keeps the ids text
    assert known["item"].tolist() == [item.item for item in one.items] and len(known) == 5
    assert known["watch_score"].tolist() == [item.watch_score for item in one.items]
    cold = frame[frame["user"] == "newcomer"]
    assert cold["cold_start"].all() and cold["p"].isna().all() and len(cold) == 5
    assert 483 not in frame["item"].tolist()


@pytest.mark.parametrize("backend, kind", [("polars", pl.DataFrame), ("arrow", pa.Table)])
def test_recommend_frame_gives_polars_or_arrow(recommender, backend, kind):
    frame = recommender.recommend_frame([1, 2], k=3, backend=backend)
    assert isinstance(frame, kind)
    assert frame["user"].to_pylist() if backend == "arrow" else frame["user"].to_list() == [1, 1, 1, 2, 2, 2]


def test_recommend_frame_names_a_missing_library_before_the_work(recommender, monkeypatch):
    monkeypatch.setitem(sys.modules, "polars", None)
    monkeypatch.setattr(Recommender, "recommend_all", lambda *args, **kwargs: pytest.fail("scored before checking"))
    with pytest.raises(ConfigError, match=r'^polars is not installed: pip install "mtrec\[frames\]"'):
        recommender.recommend_frame(backend="polars")


def test_predict_frame_adds_the_predictions_of_predict_to_the_frame(recommender):
    pairs = pd.DataFrame({"userId": [196, 186, 22], "movieId": ["242", "302", "Star Wars (1977)"], "note": list("abc")}, index=[7, 3, 5])
    scored = recommender.predict_frame(pairs)
    expected = recommender.predict([(196, 242), (186, 302), (22, "Star Wars (1977)")])
    assert scored.index.tolist() == [7, 3, 5] and scored["note"].tolist() == list("abc")
    np.testing.assert_allclose(scored["watch_score"], [e.watch_score for e in expected], rtol=1e-6)
    np.testing.assert_allclose(scored["p"], [e.p for e in expected], rtol=1e-6)
    np.testing.assert_allclose(scored["rating"], [e.rating for e in expected], rtol=1e-6)
    as_polars = recommender.predict_frame(pl.DataFrame({"user": [196], "item": [242], "rating": [5.0]}), prefix="predicted_")
    assert as_polars.columns == ["user", "item", "rating", "predicted_watch_score", "predicted_p", "predicted_rating", "predicted_rating_raw"]
    assert as_polars["predicted_p"].to_list() == pytest.approx([expected[0].p]) and as_polars["rating"].to_list() == [5.0]
    as_arrow = recommender.predict_frame(pa.table({"user": ["196"], "item": ["242"]}))
    assert as_arrow.column("rating").to_pylist() == pytest.approx([expected[0].rating])


def test_predict_frame_never_overwrites_a_column_of_the_frame(recommender):
    test = pd.DataFrame({"user": [196], "item": [242], "rating": [3.0]})
    with pytest.raises(DataError, match=r"^pandas DataFrame already has a column 'rating': pass prefix="):
        recommender.predict_frame(test)
    assert test.columns.tolist() == ["user", "item", "rating"]


@pytest.mark.parametrize(
    "pairs, error, message",
    [
        (pd.DataFrame({"user": [196, 999999], "item": [242, 302]}), UnknownUserError,
         "unknown user 999999 (pandas DataFrame, row 2, column 'user'): the model has no vector"),
        (pl.DataFrame({"user": [196, 186], "movie": [242, 99999]}), UnknownItemError,
         "unknown item 99999 (polars DataFrame, row 2, column 'movie'): not an item id or title"),
        (pd.DataFrame({"user": [196, None], "item": [242, 302]}), DataError,
         "pandas DataFrame, row 2: empty user id (column 'user')"),
    ],
)  # fmt: skip
def test_predict_frame_names_the_row_and_column_of_a_bad_id(recommender, pairs, error, message):
    with pytest.raises(error) as caught:
        recommender.predict_frame(pairs)
    assert str(caught.value).startswith(message)


def test_predict_frame_of_a_model_without_a_rating_head_gives_null_ratings():
    clicks = pd.DataFrame({"user": [1, 1, 2, 3], "item": [1, 2, 2, 3]})
    recommender = Recommender(MultitaskModel(seed=0, regression_weight=0.0, factorization_weight=1.0).fit(clicks, epochs=1))
    scored = recommender.predict_frame(clicks)
    assert scored["rating"].isna().all() and scored["rating_raw"].isna().all()
    assert scored["watch_score"].between(0, 1).all() and scored["p"].notna().all()
