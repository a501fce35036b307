"""Reading users' own rating files: every format round-trips, and bad input is named precisely."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtrec.data import load_movielens, load_ratings_file
from mtrec.errors import ConfigError, DataError

USERS = np.array([30, 10, 20, 10, 30, 99])
ITEMS = np.array([5, 7, 5, 9, 1000, 7])
RATINGS = np.array([4.0, 3.5, 1.0, 5.0, 2.0, 0.5], dtype=np.float32)
TIMES = np.array([100, 200, 300, 400, 500, 600])


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def lines(separator: str, header: str | None = None) -> str:
    rows = [separator.join(map(str, (u, i, f"{r:g}", t))) for u, i, r, t in zip(USERS, ITEMS, RATINGS, TIMES)]
    return "\n".join(([header] if header else []) + rows) + "\n"


def assert_round_trip(data, with_time: bool = True) -> None:
    assert data.user_ids.tolist() == [10, 20, 30, 99]
    assert data.item_ids.tolist() == [5, 7, 9, 1000]
    np.testing.assert_array_equal(data.user_ids[data.users], USERS)
    np.testing.assert_array_equal(data.item_ids[data.items], ITEMS)
    np.testing.assert_array_equal(data.ratings, RATINGS)
    assert data.users.dtype == np.int32 and data.ratings.dtype == np.float32
    if with_time:
        np.testing.assert_array_equal(data.timestamps, TIMES)
    assert data.rating_scale == (0.5, 5.0)


@pytest.mark.parametrize(
    "name, separator, header",
    [
        ("ratings.csv", ",", "userId,movieId,rating,timestamp"),
        ("ratings.tsv", "\t", None),
        ("u.data", "\t", None),
        ("ratings.dat", "::", None),
        ("ratings.txt", ";", "user_id;item_id;stars;ts"),
        ("ratings.psv", "|", "uid|iid|score|time"),
    ],
)
def test_text_formats_round_trip(tmp_path, name, separator, header):
    data = load_ratings_file(write(tmp_path / name, lines(separator, header)))
    assert_round_trip(data)
    assert data.name == name


def test_parquet_round_trips(tmp_path):
    table = pa.table({"user_id": USERS, "movie_id": ITEMS, "rating": RATINGS, "timestamp": TIMES})
    pq.write_table(table, tmp_path / "r.parquet")
    assert_round_trip(load_ratings_file(tmp_path / "r.parquet"))


def test_parquet_string_ids_and_null_row(tmp_path):
    table = pa.table({"user": ["b", "a", "b"], "item": ["x", "y", None], "rating": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet, row 3: empty item"):
        load_ratings_file(tmp_path / "r.parquet")
    pq.write_table(table.set_column(1, "item", pa.array(["x", "y", " "])), tmp_path / "blank.parquet")
    with pytest.raises(DataError, match=r"blank\.parquet, row 3: empty item id"):
        load_ratings_file(tmp_path / "blank.parquet")
    pq.write_table(table.slice(0, 2), tmp_path / "ok.parquet")
    data = load_ratings_file(tmp_path / "ok.parquet")
    assert data.user_ids.tolist() == ["a", "b"] and data.users.tolist() == [1, 0]


def test_string_and_mixed_ids_map_to_sorted_indices(tmp_path):
    text = "user,item,rating\nbob,The Matrix,5\nalice,Heat,4\n42,Heat,3\nbob,Heat,2\n"
    data = load_ratings_file(write(tmp_path / "r.csv", text))
    assert data.user_ids.tolist() == ["42", "alice", "bob"]
    assert data.item_ids.tolist() == ["Heat", "The Matrix"]
    assert data.users.tolist() == [2, 1, 0, 2] and data.items.tolist() == [1, 0, 0, 0]
    assert data.user_index("alice") == 1 and data.timestamps is None


def test_string_ids_after_many_integer_rows_are_read_as_strings(tmp_path):
    rows = [f"{u},{u % 7},3" for u in range(5000)] + ["user-x,3,4"]
    data = load_ratings_file(write(tmp_path / "r.csv", "user,item,rating\n" + "\n".join(rows) + "\n"))
    assert data.num_users == 5001 and "user-x" in data.user_ids.tolist()
    # Each column is typed on its own: the string user ids leave the integer item ids int64.
    assert data.item_ids.dtype == np.int64 and data.item_ids.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_integer_ids_stay_int64_whatever_the_time_column_holds(tmp_path):
    seconds = write(tmp_path / "seconds.csv", lines(",", "user,item,rating,timestamp"))
    rows = zip(USERS, ITEMS, RATINGS, TIMES)
    dates = [f"{u},{i},{r:g},1970-01-01T00:{t // 60:02d}:{t % 60:02d}" for u, i, r, t in rows]
    iso = write(tmp_path / "iso.csv", "user,item,rating,date\n" + "\n".join(dates) + "\n")
    by_seconds, by_date = load_ratings_file(seconds), load_ratings_file(iso)
    for data in (by_seconds, by_date):
        assert data.user_ids.dtype == np.int64 and data.item_ids.dtype == np.int64
        assert_round_trip(data)
    np.testing.assert_array_equal(by_date.user_ids, by_seconds.user_ids)
    np.testing.assert_array_equal(by_date.item_ids, by_seconds.item_ids)
    np.testing.assert_array_equal(by_date.users, by_seconds.users)
    np.testing.assert_array_equal(by_date.items, by_seconds.items)


def test_no_rating_column_gives_implicit_data(tmp_path):
    data = load_ratings_file(write(tmp_path / "clicks.csv", "user_id,item_id,ts\n1,2,10\n2,3,20\n"))
    assert data.ratings is None and not data.has_ratings
    assert data.timestamps.tolist() == [10, 20] and data.rating_scale is None


def test_headerless_two_columns_are_user_and_item(tmp_path):
    data = load_ratings_file(write(tmp_path / "pairs.tsv", "1\t2\n3\t4\n"))
    assert not data.has_ratings and data.item_ids.tolist() == [2, 4]


def test_explicit_columns_by_name_and_position(tmp_path):
    text = "customer,product,value,when\n1,2,3,10\n4,5,1,20\n"
    path = write(tmp_path / "r.csv", text)
    data = load_ratings_file(path, user_col="customer", item_col="product", rating_col="value", time_col="when")
    assert data.user_ids.tolist() == [1, 4] and data.ratings.tolist() == [3.0, 1.0]
    data = load_ratings_file(path, user_col=1, item_col=0, rating_col="2")
    assert data.user_ids.tolist() == [2, 5] and data.timestamps is None


def test_iso_dates_become_seconds(tmp_path):
    text = "user,item,rating,date\n1,2,3,1970-01-02\n2,3,4,2000-01-01T00:00:01\n"
    data = load_ratings_file(write(tmp_path / "r.csv", text))
    assert data.timestamps.tolist() == [86400, 946684801]


def test_rating_scale_is_checked_and_kept(tmp_path):
    path = write(tmp_path / "r.csv", lines(",", "user,item,rating,timestamp"))
    assert load_ratings_file(path, rating_scale=(0, 10)).rating_scale == (0.0, 10.0)


def test_items_file_with_commas_and_quotes_in_titles(tmp_path):
    ratings = write(tmp_path / "r.csv", "userId,movieId,rating\n1,10,4\n1,20,3\n2,30,5\n")
    items = write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n10,"Shawshank Redemption, The (1994)",Crime|Drama\n'
        '20,"Say ""Hi"" (2001)",(no genres listed)\n99,Unrated (1990),Drama\n',
    )
    meta = load_ratings_file(ratings, items_path=items).item_metadata
    assert meta.titles == ["Shawshank Redemption, The (1994)", 'Say "Hi" (2001)', "30"]
    assert meta.years == [1994, 2001, None]
    assert meta.genres == [["Crime", "Drama"], [], []]


def test_duplicates_keep_the_last_by_time_and_warn(tmp_path):
    text = "user,item,rating,timestamp\n1,1,5,300\n1,1,2,100\n1,2,4,10\n1,1,3,200\n"
    with pytest.warns(UserWarning, match=r"2 duplicate \(user, item\) ratings dropped, keeping the last by time"):
        data = load_ratings_file(write(tmp_path / "r.csv", text))
    assert len(data) == 2
    assert sorted(zip(data.items.tolist(), data.ratings.tolist())) == [(0, 5.0), (1, 4.0)]


def test_duplicates_without_time_keep_the_last_in_the_file(tmp_path):
    with pytest.warns(UserWarning, match="1 duplicate .* the last in the file"):
        data = load_ratings_file(write(tmp_path / "r.csv", "user,item,rating\n1,1,5\n1,1,2\n2,1,4\n"))
    assert data.ratings.tolist() == [2.0, 4.0]


def test_clean_file_raises_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ratings_file(write(tmp_path / "r.csv", lines(",", "user,item,rating,timestamp")))


def test_ml100k_through_the_generic_reader_matches_the_loader(data_dir, ml100k):
    data = load_ratings_file(data_dir / "ml-100k" / "u.data", rating_scale=(1, 5))
    assert (data.num_users, data.num_items, len(data)) == (943, 1682, 100_000)
    np.testing.assert_array_equal(data.users, ml100k.users)
    np.testing.assert_array_equal(data.items, ml100k.items)
    np.testing.assert_array_equal(data.ratings, ml100k.ratings)
    np.testing.assert_array_equal(data.timestamps, ml100k.timestamps)


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file, the line and the problem.

GOOD = "user,item,rating,timestamp\n1,2,3,10\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "2,3,4\n", r"r\.csv, line 3: expected 4 fields separated by ',', found 3"),
        (GOOD + "2,3,4,5,6\n", r"r\.csv, line 3: expected 4 fields separated by ',', found 5"),
        (GOOD + "\n2,3,five,20\n", r"r\.csv, line 4: rating 'five' is not a number"),
        (GOOD + "2,3,,20\n", r"r\.csv, line 3: rating '' is not a number"),
        (GOOD + ",3,4,20\n", r"r\.csv, line 3: empty user id"),
        (GOOD + "2,,4,20\n", r"r\.csv, line 3: empty item id"),
        (GOOD + "2,3,nan,20\n", r"r\.csv, line 3: rating 'nan' is not a finite number"),
    ],
)
def test_malformed_csv_lines_are_named(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_ratings_file(write(tmp_path / "r.csv", text))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "user,item,rating,date\n1,2,3,2000-01-01\n\n2,3,4,2000-01-02\n3,4,5,yesterday\n",
            r"r\.csv, line 5: time 'yesterday' is neither seconds since 1970 nor an ISO date/time",
        ),
        (GOOD + "2,3,4,soon\n3,4,5,30\n", r"r\.csv, line 3: time 'soon' is neither seconds since 1970"),
        (GOOD + "2,3,4,nan\n", r"r\.csv, line 3: time 'nan' is neither seconds since 1970 nor an ISO date/time"),
        (
            "user,item,rating,date\n1,2,3,2000-01-01\n2,3,4,946684800\n",
            r"r\.csv, line 3: time '946684800' is seconds since 1970, but earlier lines hold an ISO date/time",
        ),
    ],
)
def test_bad_time_is_named_with_its_line_and_value(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_ratings_file(write(tmp_path / "r.csv", text))


def test_parquet_bad_time_names_its_row_and_value(tmp_path):
    table = pa.table({"user": [1, 2, 3, 4], "item": [1, 1, 1, 1], "time": ["2000-01-01", "2000-01-02", "later", "x"]})
    pq.write_table(table, tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet, row 3: time 'later' is neither seconds since 1970 nor an ISO"):
        load_ratings_file(tmp_path / "r.parquet")


def test_text_that_is_not_utf8_is_named_by_its_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("user,item,rating\nalice,1,3\nbob,2,4\ncafé,2,4\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"r\.csv, line 4: user id b'caf\\xe9' is not valid UTF-8 text"):
        load_ratings_file(path)


def test_text_that_is_not_utf8_in_an_unread_column_is_no_error(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("user,item,rating,note\n1,1,3,ok\n2,2,4,café\n".encode("latin-1"))
    assert load_ratings_file(path).user_ids.tolist() == [1, 2]


@pytest.mark.parametrize("sep", ["||", ", ", "", ":::"])
def test_separator_must_be_one_character_or_double_colon(tmp_path, sep):
    path = write(tmp_path / "r.txt", "1||2||3\n")
    with pytest.raises(ConfigError, match=rf"sep must be one character or '::', got {re.escape(repr(sep))}"):
        load_ratings_file(path, sep=sep)


def test_empty_string_id_is_named(tmp_path):
    text = "user,item,rating\nalice,x,3\n  ,y,4\n"
    with pytest.raises(DataError, match=r"r\.csv, line 3: empty user id"):
        load_ratings_file(write(tmp_path / "r.csv", text))


def test_malformed_line_deep_in_a_large_file_is_named(tmp_path):
    rows = [f"{u % 50}\t{u % 70}\t{1 + u % 5}\t{u}" for u in range(20_000)]
    rows[15_432] = "7\t8\t4"
    with pytest.raises(DataError, match=r"u\.data, line 15433: expected 4 fields separated by '\\t', found 3"):
        load_ratings_file(write(tmp_path / "u.data", "\n".join(rows) + "\n"))


def test_malformed_double_colon_line_is_named(tmp_path):
    text = "1::2::3::10\n1::3::4::11\n2:5::4::12\n"
    with pytest.raises(DataError, match=r"ratings\.dat, line 3: expected 4 fields separated by '::', found 3"):
        load_ratings_file(write(tmp_path / "ratings.dat", text))


def test_rating_outside_the_declared_scale_is_named(tmp_path):
    text = GOOD + "2,3,4,11\n3,4,6,12\n"
    with pytest.raises(DataError, match=r"r\.csv, line 4: rating 6 is outside the rating scale 1\.\.5"):
        load_ratings_file(write(tmp_path / "r.csv", text), rating_scale=(1, 5))


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_ratings_file(write(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match=r"blank\.tsv: the file is empty"):
        load_ratings_file(write(tmp_path / "blank.tsv", "\n\n"))


def test_header_only_file(tmp_path):
    with pytest.raises(DataError, match=r"header\.csv: no data rows after the header"):
        load_ratings_file(write(tmp_path / "header.csv", "userId,movieId,rating\n"))


def test_unknown_column_name_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "r.csv", GOOD)
    with pytest.raises(DataError, match=r"r\.csv: no column 'customer' for the user; the columns found are 'user', 'item'"):
        load_ratings_file(path, user_col="customer")


def test_missing_user_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "r.csv", "person,movieId,rating\n1,2,3\n")
    with pytest.raises(DataError, match=r"r\.csv: no user column: none of the columns found \('person', 'movieId', 'rating'\)"):
        load_ratings_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.csv: No such file or directory"):
        load_ratings_file(tmp_path / "nothere.csv")


def test_ml100k_loader_names_a_malformed_line(tmp_path, data_dir):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    original = (data_dir / "ml-100k" / "u.data").read_text().splitlines()
    original[41_999] = original[41_999].replace("\t", " ", 1)
    (folder / "u.data").write_text("\n".join(original) + "\n")
    with pytest.raises(DataError, match=r"ml-100k/u\.data, line 42000: expected 4 fields separated by '\\t', found 3"):
        load_movielens("100k", data_dir=tmp_path)


def test_ml100k_loader_rejects_a_modified_file_by_its_sha256(tmp_path, data_dir):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    original = (data_dir / "ml-100k" / "u.data").read_text().splitlines()
    original[0] = original[0].replace("\t3\t", "\t4\t", 1)
    (folder / "u.data").write_text("\n".join(original) + "\n")
    with pytest.raises(DataError, match=r"u\.data has SHA-256 [0-9a-f]{64}, expected 06416e59"):
        load_movielens("100k", data_dir=tmp_path)


def test_parquet_rating_outside_the_scale_names_the_row(tmp_path):
    pq.write_table(pa.table({"user": [1, 2, 3], "item": [1, 1, 1], "rating": [1.0, 9.0, 2.0]}), tmp_path / "r.pq")
    with pytest.raises(DataError, match=r"r\.pq, row 2: rating 9 is outside the rating scale 1\.\.5"):
        load_ratings_file(tmp_path / "r.pq", rating_scale=(1, 5))


def test_header_only_items_file(tmp_path):
    ratings = write(tmp_path / "r.csv", "userId,movieId,rating\n1,10,4\n")
    items = write(tmp_path / "movies.csv", "movieId,title\n")
    with pytest.raises(DataError, match=r"movies\.csv: the items file has no rows"):
        load_ratings_file(ratings, items_path=items)


def test_a_reversed_rating_scale_and_a_missing_items_file_are_named_before_reading(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n1,10,4\n2,11,3\n")
    with pytest.raises(DataError, match=r"rating scale must have lowest < highest, got 5\.\.1"):
        load_ratings_file(path, rating_scale=(5, 1))
    with pytest.raises(DataError, match=r"items\.csv: No such file or directory"):
        load_ratings_file(path, items_path=tmp_path / "items.csv")
