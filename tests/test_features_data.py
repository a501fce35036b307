"""Side features: files of the user's in every format, MovieLens's own, and bad input named precisely."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtrec.data import features
from mtrec.data.datasets import get_release
from mtrec.data.features import (
    FEATURE_KINDS,
    FeatureColumn,
    FeatureTable,
    movielens_features,
    parse_feature_types,
    read_feature_file,
)
from mtrec.errors import ConfigError, DataError

ITEMS_CSV = """movieId,genres,year,studio
10,Comedy|Drama,1995,Pixar
20,Action,1999,Fox
30,,NA,Pixar
"""


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def message(path, rest: str) -> str:
    """A ``match=`` pattern: the file's path, then ``rest`` (a regular expression)."""
    return re.escape(str(path)) + rest


# --- reading files ------------------------------------------------------------------------------


def test_csv_with_the_three_kinds_sniffed(tmp_path):
    path = write(tmp_path / "items.csv", ITEMS_CSV)
    table = read_feature_file(path, "item")
    assert isinstance(table, FeatureTable) and len(table) == 3 and table.side == "item"
    assert table.ids.dtype == np.int64 and table.ids.tolist() == [10, 20, 30]
    assert table.names == ["genres", "year", "studio"]
    assert [table.column(name).kind for name in table.names] == ["multi", "numeric", "categorical"]
    assert table.column("genres").values == [["Comedy", "Drama"], ["Action"], []]
    year = table.column("year").values
    assert year.dtype == np.float64 and year[:2].tolist() == [1995.0, 1999.0] and np.isnan(year[2])
    assert table.column("studio").values == ["Pixar", "Fox", "Pixar"]
    assert [table.column(name).missing() for name in table.names] == [1, 1, 0]
    assert table.lines.tolist() == [2, 3, 4]
    assert table.where(2) == f"{path}, line 4"
    assert table.source == str(path)


def test_declared_types_override_sniffing(tmp_path):
    path = write(tmp_path / "items.csv", "item,zip,tags,label\n1,85711,a|b,x|y\n2,02139,c,z\n")
    table = read_feature_file(path, "item", types={"zip": "categorical", "tags": "categorical", "label": "multi"})
    assert table.column("zip").kind == "categorical" and table.column("zip").values == ["85711", "02139"]
    assert table.column("tags").values == ["a|b", "c"]
    assert table.column("label").values == [["x", "y"], ["z"]]
    sniffed = read_feature_file(path, "item")
    assert sniffed.column("zip").kind == "numeric" and sniffed.column("tags").kind == "multi"


def test_numbers_mixed_with_text_are_categorical(tmp_path):
    path = write(tmp_path / "items.csv", "item,size\n1,10\n2,large\n3, 7 \n")
    column = read_feature_file(path, "item").column("size")
    assert column.kind == "categorical" and column.values == ["10", "large", "7"]


def test_tsv_gzip_and_other_separators(tmp_path):
    tsv = write(tmp_path / "users.tsv", "userId\tage\tgender\n1\t24\tM\n2\t53\tF\n")
    table = read_feature_file(tsv, "user")
    assert table.ids.tolist() == [1, 2] and table.column("age").values.tolist() == [24.0, 53.0]
    assert table.column("gender").values == ["M", "F"]
    compressed = tmp_path / "items.csv.gz"
    compressed.write_bytes(gzip.compress(ITEMS_CSV.encode()))
    assert read_feature_file(compressed, "item").column("genres").values[0] == ["Comedy", "Drama"]
    semicolons = write(tmp_path / "items.txt", "item;studio;genres\n1;Fox;A|B\n2;Pixar;C\n")
    assert read_feature_file(semicolons, "item").column("genres").values == [["A", "B"], ["C"]]
    pipes = write(tmp_path / "users.dat", "uid|gender\n7|M\n8|F\n")
    assert read_feature_file(pipes, "user").column("gender").values == ["M", "F"]
    assert read_feature_file(pipes, "user", sep="|").ids.tolist() == [7, 8]


def test_quoted_fields_and_blank_lines(tmp_path):
    path = write(tmp_path / "items.csv", 'item,title,genres\n\n1,"Heat, the movie",Action|Crime\n\n2,"Up",Animation\n')
    table = read_feature_file(path, "item")
    assert table.column("title").values == ["Heat, the movie", "Up"]
    assert table.lines.tolist() == [3, 5]


def test_parquet(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "movieId": pa.array([3, 1, 2], pa.int64()),
                "year": pa.array([1995.0, None, 1980.0]),
                "genres": pa.array([["A", "B"], [], None], pa.list_(pa.string())),
                "studio": pa.array(["Fox", None, "NA"]),
                "tags": pa.array(["x|y", "z", "x"]),
                "code": pa.array([7, 8, 9], pa.int32()),
            }
        ),
        path,
    )
    table = read_feature_file(path, "item", types={"code": "categorical"})
    assert table.ids.tolist() == [3, 1, 2] and table.lines is None and table.where(1) == f"{path}, row 2"
    assert [table.column(name).kind for name in table.names] == ["numeric", "multi", "categorical", "multi", "categorical"]
    assert np.isnan(table.column("year").values[1]) and table.column("year").values[2] == 1980.0
    assert table.column("genres").values == [["A", "B"], [], []]
    assert table.column("studio").values == ["Fox", None, None]
    assert table.column("tags").values == [["x", "y"], ["z"], ["x"]]
    assert table.column("code").values == ["7", "8", "9"]


def test_parquet_errors_name_rows(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item": ["a", "b", "a"], "score": [1.0, 2.0, 3.0]}), path)
    with pytest.raises(DataError, match=message(path, r", row 3: item id a appears again \(first on row 1\)")):
        read_feature_file(path, "item")
    pq.write_table(pa.table({"item": ["a", "b"], "score": [1.0, float("inf")]}), path)
    with pytest.raises(DataError, match=message(path, r", row 2: column 'score' is numeric but holds 'inf'")):
        read_feature_file(path, "item")
    pq.write_table(pa.table({"item": ["a", "b"], "tags": [["x"], ["y"]]}), path)
    with pytest.raises(DataError, match=message(path, r": column 'tags' holds lists.*declare it multi")):
        read_feature_file(path, "item", types={"tags": "categorical"})


def test_string_ids_are_trimmed(tmp_path):
    path = write(tmp_path / "users.csv", "user,gender\n u1 ,M\nu2,F\n")
    table = read_feature_file(path, "user")
    assert table.ids.dtype == object and table.ids.tolist() == ["u1", "u2"]


def test_id_column_by_name_position_or_first(tmp_path):
    path = write(tmp_path / "items.csv", "studio,movieId,year\nFox,5,1990\nPixar,6,1995\n")
    assert read_feature_file(path, "item").ids.tolist() == [5, 6]
    assert read_feature_file(path, "item", id_col="studio").ids.tolist() == ["Fox", "Pixar"]
    assert read_feature_file(path, "item", id_col=2).names == ["studio", "movieId"]
    first = write(tmp_path / "other.csv", "key,year\nk1,1990\nk2,1995\n")
    assert read_feature_file(first, "item").ids.tolist() == ["k1", "k2"]
    with pytest.raises(DataError, match=message(path, r": no column 'nope' for the item")):
        read_feature_file(path, "item", id_col="nope")


def test_missing_values_in_every_kind(tmp_path):
    path = write(tmp_path / "items.csv", "item,a,b,c\n1,x,1.5,p|q\n2,null,NaN,None\n3,N/A, ,\n4, NA ,2,r\n")
    table = read_feature_file(path, "item")
    assert table.column("a").values == ["x", None, None, None]
    assert np.isnan(table.column("b").values).tolist() == [False, True, True, False]
    assert table.column("c").values == [["p", "q"], [], [], ["r"]]
    assert [table.column(name).missing() for name in table.names] == [3, 2, 2]


def test_rows_and_column_lookup(tmp_path):
    table = read_feature_file(write(tmp_path / "items.csv", ITEMS_CSV), "item")
    table.columns[0].optional = True
    part = table.rows(np.array([2, 0]))
    assert part.columns[0].optional and not part.columns[1].optional  # an optional column stays optional
    assert part.ids.tolist() == [30, 10] and part.lines.tolist() == [4, 2] and part.names == table.names
    assert part.column("genres").values == [[], ["Comedy", "Drama"]]
    assert np.isnan(part.column("year").values[0]) and part.column("year").values[1] == 1995.0
    assert table.rows(table.ids > 15).ids.tolist() == [20, 30]
    with pytest.raises(ConfigError, match="no feature column 'rating'; the columns are 'genres', 'year', 'studio'"):
        table.column("rating")


def test_feature_column_kinds():
    assert FEATURE_KINDS == ("categorical", "multi", "numeric")
    column = FeatureColumn(name="x", kind="numeric", values=[1, np.nan])
    assert column.values.dtype == np.float64 and column.missing() == 1
    with pytest.raises(ConfigError, match="unknown feature type 'text'"):
        FeatureColumn(name="x", kind="text", values=[])


# --- feature types ------------------------------------------------------------------------------


def test_parse_feature_types():
    assert parse_feature_types("genres:multi, year:numeric,zip:categorical") == {"genres": "multi", "year": "numeric", "zip": "categorical"}
    assert parse_feature_types(None) == {} and parse_feature_types("") == {}
    assert parse_feature_types("a:b:multi") == {"a:b": "multi"}
    with pytest.raises(ConfigError, match="unknown feature type 'text' for column 'genres'; the types are categorical, multi, numeric"):
        parse_feature_types("genres:text")
    with pytest.raises(ConfigError, match=r"feature type 'genres' is not COLUMN:TYPE"):
        parse_feature_types("genres")
    with pytest.raises(ConfigError, match="declare column 'a' twice"):
        parse_feature_types("a:multi,a:numeric")


def test_unknown_type_and_undeclared_column(tmp_path):
    path = write(tmp_path / "items.csv", ITEMS_CSV)
    with pytest.raises(ConfigError, match="unknown feature type 'bool' for column 'year'; the types are categorical, multi, numeric"):
        read_feature_file(path, "item", types={"year": "bool"})
    with pytest.raises(ConfigError, match=message(path, r": .*column 'rating'.*its columns are 'movieId', 'genres', 'year', 'studio'")):
        read_feature_file(path, "item", types={"rating": "numeric"})
    with pytest.raises(ConfigError, match=message(path, r": column 'movieId' holds the item ids")):
        read_feature_file(path, "item", types={"movieId": "categorical"})
    with pytest.raises(ConfigError, match="side must be 'user' or 'item'"):
        read_feature_file(path, "movie")
    with pytest.raises(ConfigError, match="sep must be one character"):
        read_feature_file(path, "item", sep=",,")


# --- bad input ----------------------------------------------------------------------------------


def test_duplicate_id(tmp_path):
    path = write(tmp_path / "items.csv", "item,year\n12,1990\n13,1991\n\n12,1992\n")
    with pytest.raises(DataError, match=message(path, r", line 5: item id 12 appears again \(first on line 2\)$")):
        read_feature_file(path, "item")
    text = write(tmp_path / "users.csv", "user,age\nu1,3\n u1,4\n")
    with pytest.raises(DataError, match=message(text, r", line 3: user id u1 appears again \(first on line 2\)")):
        read_feature_file(text, "user")


def test_all_missing_column(tmp_path):
    path = write(tmp_path / "items.csv", "item,year,x\n1,1990,\n2,1991,NA\n")
    with pytest.raises(DataError, match=message(path, r": column 'x' has no values \(every row is missing\); drop it$")):
        read_feature_file(path, "item")


def test_too_many_categories(tmp_path):
    count = features.MAX_CATEGORIES + 1
    rows = "".join(f"{i},t{i},g{i}|h\n" for i in range(count))
    path = write(tmp_path / "items.csv", "item,title,tags\n" + rows)
    with pytest.raises(
        DataError,
        match=message(path, r": column 'title' holds 10,001 distinct values, more than the 10,000 .*bucket it, declare it numeric or drop it"),
    ):
        read_feature_file(path, "item")
    tags = write(tmp_path / "tags.csv", "item,tags\n" + "".join(f"{i},g{i}|h\n" for i in range(count)))
    with pytest.raises(DataError, match=message(tags, r": column 'tags' holds 10,002 distinct values, more than the 10,000 a multi column")):
        read_feature_file(tags, "item")
    fits = write(tmp_path / "fits.csv", "item,title\n" + "".join(f"{i},t{i}\n" for i in range(count - 1)))
    assert read_feature_file(fits, "item").column("title").kind == "categorical"


def test_text_in_a_declared_numeric_column(tmp_path):
    path = write(tmp_path / "items.csv", "item,year\n1,1990\n2,abc\n")
    with pytest.raises(DataError, match=message(path, r", line 3: column 'year' is numeric but holds 'abc'$")):
        read_feature_file(path, "item", types={"year": "numeric"})
    multi = write(tmp_path / "multi.csv", "item,year\n1,1990|1991\n")
    with pytest.raises(DataError, match=message(multi, r", line 2: column 'year' is numeric but holds '1990\|1991'")):
        read_feature_file(multi, "item", types={"year": "numeric"})


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_infinite_value_in_a_numeric_column(tmp_path, value):
    path = write(tmp_path / "items.csv", f"item,score\n1,2.5\n2,\n3,{value}\n")
    pattern = message(path, rf", line 4: column 'score' is numeric but holds '{value}'; give a finite number or leave it empty")
    with pytest.raises(DataError, match=pattern):
        read_feature_file(path, "item")
    with pytest.raises(DataError, match=pattern):
        read_feature_file(path, "item", types={"score": "numeric"})


def test_files_without_rows_or_features(tmp_path):
    header_only = write(tmp_path / "a.csv", "item,year\n")
    with pytest.raises(DataError, match=message(header_only, r": no data rows after the header")):
        read_feature_file(header_only, "item")
    empty = write(tmp_path / "b.csv", "")
    with pytest.raises(DataError, match=message(empty, r": the file is empty")):
        read_feature_file(empty, "item")
    ids_only = write(tmp_path / "c.csv", "item\n1\n2\n")
    with pytest.raises(DataError, match=message(ids_only, r": no feature columns: the file holds only the id column 'item'")):
        read_feature_file(ids_only, "item")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"item": [1, 2]}), parquet)
    with pytest.raises(DataError, match=message(parquet, r": no feature columns")):
        read_feature_file(parquet, "item")
    pq.write_table(pa.table({"item": pa.array([], pa.int64()), "x": pa.array([], pa.string())}), parquet)
    with pytest.raises(DataError, match=message(parquet, r": the file has no rows")):
        read_feature_file(parquet, "item")


def test_empty_id(tmp_path):
    path = write(tmp_path / "items.csv", "item,year\n1,1990\n  ,1991\n")
    with pytest.raises(DataError, match=message(path, r", line 3: empty item id \(column 'item'\)")):
        read_feature_file(path, "item")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DataError, match=message(tmp_path / "nope.csv", r": No such file or directory")):
        read_feature_file(tmp_path / "nope.csv", "item")
    with pytest.raises(DataError, match=message(tmp_path, r": Is a directory")):
        read_feature_file(tmp_path, "item")


def test_a_header_is_required(tmp_path):
    path = write(tmp_path / "items.csv", "1,1990,Fox\n2,1995,Pixar\n")
    with pytest.raises(DataError, match=message(path, r": the first line must be a header naming the columns")):
        read_feature_file(path, "item")


def test_malformed_lines(tmp_path):
    short = write(tmp_path / "items.csv", "item,year,studio\n1,1990,Fox\n2,1995\n")
    with pytest.raises(DataError, match=message(short, r", line 3: expected 3 fields separated by ',', found 2")):
        read_feature_file(short, "item")
    unclosed = write(tmp_path / "quote.csv", 'item,title\n1,"Heat\n2,Up\n')
    with pytest.raises(DataError, match=message(unclosed, r", line 2: a quoted field")):
        read_feature_file(unclosed, "item")
    repeated = write(tmp_path / "repeat.csv", "item,year,year\n1,2,3\n")
    with pytest.raises(DataError, match=message(repeated, r", line 1: the header names column 'year' twice")):
        read_feature_file(repeated, "item")
    unnamed = write(tmp_path / "unnamed.csv", "item,,year\n1,2,3\n")
    with pytest.raises(DataError, match=message(unnamed, r", line 1: column 2 has no name")):
        read_feature_file(unnamed, "item")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("item,title\n1,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=message(latin1, r", line 2: column 'title': .*not valid UTF-8")):
        read_feature_file(latin1, "item")


def test_every_message_is_one_line(tmp_path):
    path = write(tmp_path / "items.csv", "item,year\n1,1990\n1,abc\n")
    with pytest.raises(DataError) as error:
        read_feature_file(path, "item")
    assert "\n" not in str(error.value)


# --- MovieLens ----------------------------------------------------------------------------------


def test_movielens_100k(data_dir):
    items, users = movielens_features(get_release("100k"), data_dir / "ml-100k")
    assert len(items) == 1682 and items.names == ["genres", "year", "decade", "released"] and items.side == "item"
    assert [items.column(name).kind for name in items.names] == ["multi", "numeric", "categorical", "categorical"]
    assert [items.column(name).optional for name in items.names] == [False, False, False, True]
    toy_story = int(np.flatnonzero(items.ids == 1)[0])
    assert items.column("genres").values[toy_story] == ["Animation", "Children's", "Comedy"]
    assert items.column("year").values[toy_story] == 1995.0 and items.column("decade").values[toy_story] == "1990s"
    assert items.column("year").missing() == items.column("decade").missing() == items.column("released").missing() == 1
    # u.item's release dates by month (Toy Story: 01-Jan-1995), 109 months from 1922-01 to 1998-10
    assert items.column("released").values[toy_story] == "1995-01"
    months = items.column("released").values
    assert len({m for m in months if m}) == 109 and max(m for m in months if m) == "1998-10"
    assert items.source == "MovieLens 100K u.item" and items.lines is None
    assert len(users) == 943 and users.names == ["age", "age_group", "gender", "occupation", "zip1"] and users.side == "user"
    assert [users.column(name).kind for name in users.names] == ["numeric", "categorical", "categorical", "categorical", "categorical"]
    first = int(np.flatnonzero(users.ids == 1)[0])
    assert users.column("age").values[first] == 24.0 and users.column("age_group").values[first] == "18-24"
    assert users.column("gender").values[first] == "M" and users.column("occupation").values[first] == "technician"
    assert users.column("zip1").values[first] == "8"
    assert set(users.column("age_group").values) == {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert set(users.column("gender").values) == {"M", "F"}
    assert all(len(code) == 1 for code in users.column("zip1").values)
    assert sum(column.missing() for column in users.columns) == 0


def test_movielens_1m_layout(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Sans titre::(no genres listed)\n".encode("latin-1"))
    write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n")
    items, users = movielens_features(get_release("1m"), folder)
    assert items.ids.tolist() == [1, 2] and items.column("genres").values == [["Animation", "Children's", "Comedy"], []]
    assert items.column("year").values[0] == 1995.0 and np.isnan(items.column("year").values[1])
    assert items.column("decade").values == ["1990s", None]
    assert users.ids.tolist() == [1, 2, 3] and users.column("age").values.tolist() == [1.0, 56.0, 25.0]
    assert users.column("age_group").values == ["<18", "56+", "25-34"]
    assert users.column("gender").values == ["F", "M", "M"]
    assert users.column("occupation").values == ["K-12 student", "self-employed", "scientist"]
    assert users.column("zip1").values == ["4", "7", "5"]
    write(folder / "users.dat", "1::F::19::10::48067\n")
    with pytest.raises(DataError, match=re.escape(str(folder / "users.dat")) + r", user 1: age code '19'"):
        movielens_features(get_release("1m"), folder)


def test_movielens_without_users_or_files(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(folder / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, Again (2001)",(no genres listed)\n')
    items, users = movielens_features(get_release("latest-small"), folder)
    assert users is None and items.ids.tolist() == [1, 2]
    assert items.column("genres").values == [["Adventure", "Animation"], []]
    assert items.column("decade").values == ["1990s", "2000s"]
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        movielens_features(get_release("nope"), folder)
    assert movielens_features(get_release("100k"), folder) == (None, None)
    write(folder / "u.user", "1|24|M|technician|85711\n2|x|F|other|T8H1N\n")
    with pytest.raises(DataError, match=re.escape(str(folder / "u.user")) + ", user 2: age 'x' is not a whole number"):
        movielens_features(get_release("100k"), folder)
    write(folder / "u.user", "1|24|M|technician|85711\n2|17|F|other|T8H1N\n1|30|M|other|1\n")
    with pytest.raises(DataError, match=r"MovieLens 100K u.user, row 3: user id 1 appears again \(first on row 1\)"):
        movielens_features(get_release("100k"), folder)
    write(folder / "u.user", "1|24|M|technician|85711\n2|17|F|other|T8H1N\n")
    items, users = movielens_features(get_release("100k"), folder)
    assert items is None and users.column("zip1").values == ["8", "T"] and users.column("age_group").values == ["18-24", "<18"]
    # u.item takes its genre names from u.genre (and is checked against its pinned SHA-256).
    write(folder / "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n")
    with pytest.raises(DataError, match=re.escape(str(folder / "u.genre")) + ": No such file or directory"):
        movielens_features(get_release("100k"), folder)
    write(folder / "u.genre", "unknown|0\nAction|1\n")
    with pytest.raises(DataError, match=re.escape(str(folder / "u.item")) + " has SHA-256"):
        movielens_features(get_release("100k"), folder)
