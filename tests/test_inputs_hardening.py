"""Every text input a user gives is read with rigour: a byte-order mark, compression, an unclosed
quote, an OS error and a bad id are each handled in the one place every reader goes through."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import lzma
import os
import sys
import threading
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtrec.cli import main
from mtrec.data import files as data_files
from mtrec.data import load_ratings_file
from mtrec.data.datasets import check_sha256
from mtrec.data.metadata import read_items_file
from mtrec.data.requests import MAX_HISTORY, read_history, read_pairs, read_users
from mtrec.errors import DataError
from mtrec.model import MultitaskModel

BOM = b"\xef\xbb\xbf"

COMPRESSORS = {
    "plain": lambda raw: raw,
    "bom": lambda raw: BOM + raw,
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda raw: pa.compress(raw, "zstd", asbytes=True),
}
ENDINGS = {"plain": "", "bom": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}


def ratings_text(users: int = 30, per_user: int = 12) -> str:
    """String ids written with spaces around them, as spreadsheets export them."""
    rows = [f" u{u} , m{(u * 7 + k) % 40} ,{1 + (u + k) % 5},{1_000_000 + 97 * (u * per_user + k)}" for u in range(users) for k in range(per_user)]
    return "user,item,rating,timestamp\n" + "\n".join(rows) + "\n"


def items_text() -> str:
    return "movieId,title,genres\n" + "".join(f" m{i} ,Film {i} ({1990 + i % 20}),Drama\n" for i in range(40))


def write(path, raw: bytes, how: str = "plain"):
    path = path.with_name(path.name + ENDINGS[how])
    path.write_bytes(COMPRESSORS[how](raw))
    return path


def assert_same_interactions(a, b) -> None:
    for name in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.num_users, a.num_items, a.rating_scale) == (b.num_users, b.num_items, b.rating_scale)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], command: str, message: str) -> None:
    code, out, err = result
    assert code == 1 and out == ""
    assert err.startswith(f"mtrec {command}: error: ") and len(err.splitlines()) == 1
    assert message in err, err


def train(tmp_path, *argv) -> tuple[int, str, str]:
    logdir = tmp_path / "run"
    code = main(["train", "--no-progress", "--device", "cpu", "--preset", "seed", "--epochs", "1",
                 "--embedding-dim", "8", "--logdir", str(logdir), *map(str, argv)])  # fmt: skip
    return code, logdir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model of the spaced string ids, with titles."""
    folder = tmp_path_factory.mktemp("inputs")
    ratings = write(folder / "ratings.csv", ratings_text().encode())
    items = write(folder / "items.csv", items_text().encode())
    data = load_ratings_file(ratings, items_path=items)
    MultitaskModel(seed=0, embedding_dim=8).fit(data, epochs=1).save(folder / "run")
    return folder / "run"


# ---------------------------------------------------------------------------------------------
# A byte-order mark and compression: the same data, whatever the wrapping


@pytest.mark.parametrize("how", ["bom", "gzip", "bz2", "xz", "zstd"])
def test_a_bom_or_compressed_ratings_file_loads_to_exactly_the_plain_interactions(tmp_path, how):
    raw = ratings_text().encode()
    plain = load_ratings_file(write(tmp_path / "ratings.csv", raw), items_path=write(tmp_path / "items.csv", items_text().encode()))
    wrapped = load_ratings_file(
        write(tmp_path / "wrapped.csv", raw, how), items_path=write(tmp_path / "wrapped_items.csv", items_text().encode(), how)
    )
    assert_same_interactions(wrapped, plain)
    assert wrapped.item_metadata.titles == plain.item_metadata.titles == [f"Film {i} ({1990 + i % 20})" for i in range(40)]


@pytest.mark.parametrize("how", ["bom", "gzip"])
def test_a_headerless_tab_file_with_a_bom_or_gzip_keeps_its_first_row(tmp_path, how):
    raw = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
    data = load_ratings_file(write(tmp_path / "u.data", raw, how))
    assert data.user_ids.tolist() == [186, 196] and data.item_ids.tolist() == [242, 302]
    assert data.user_ids.dtype == np.int64 and len(data) == 2


def test_a_gzip_ratings_file_trains_exactly_like_the_plain_file(tmp_path):
    raw = ratings_text().encode()
    results = []
    for how in ("plain", "gzip"):
        code, logdir = train(tmp_path / how, "--ratings", write(tmp_path / f"ratings_{how}.csv", raw, how))
        assert code == 0
        config = json.loads((logdir / "config.json").read_text())
        metrics = json.loads((logdir / "metrics.json").read_text())
        epochs = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in metrics["epochs"]]
        summary = {k: v for k, v in config["data_summary"].items() if k != "name"}
        results.append((summary, epochs, metrics["selected"]))
    assert results[0] == results[1]
    assert (results[0][0]["num_users"], results[0][0]["num_items"], results[0][0]["train_size"]) == (30, 40, 342)


def test_a_gzip_parquet_file_loads_like_the_parquet_file(tmp_path):
    table = pa.table({"user": [" a", "b ", "a"], "item": [3, 1, 2], "rating": [4.0, 3.0, 5.0]})
    pq.write_table(table, tmp_path / "r.parquet")
    (tmp_path / "r.parquet.gz").write_bytes(gzip.compress((tmp_path / "r.parquet").read_bytes()))
    plain, wrapped = load_ratings_file(tmp_path / "r.parquet"), load_ratings_file(tmp_path / "r.parquet.gz")
    assert_same_interactions(wrapped, plain)
    assert plain.user_ids.tolist() == ["a", "b"]


@pytest.mark.parametrize("how", ["bom", "gzip", "xz"])
def test_request_files_with_a_bom_or_compressed_read_like_plain_ones(tmp_path, how):
    history = write(tmp_path / "history.csv", b"item,rating\nm3,5\nFilm 4 (1994),4\n", how)
    users = write(tmp_path / "users.csv", b"user\nu1\nu2\n", how)
    pairs = write(tmp_path / "pairs.csv", b"user,item\nu1,m3\n", how)
    assert read_history(history) == ([("m3", 5.0), ("Film 4 (1994)", 4.0)], [2, 3])
    assert read_users(users) == ["u1", "u2"]
    assert read_pairs(pairs) == [("u1", "m3")]


def test_a_history_with_a_bom_recommends_like_one_without(model_dir, tmp_path, capsys):
    outputs = []
    for how in ("plain", "bom"):
        history = write(tmp_path / f"history_{how}.csv", b"item,rating\nm3,5\nm10,4\n", how)
        code, out, err = cli(capsys, "recommend", "--model", model_dir, "--history", history, "-k", 5, "--format", "json")
        assert code == 0 and err == ""
        outputs.append(json.loads(out))
    assert outputs[0] == outputs[1] and not outputs[0]["cold_start"] and len(outputs[0]["items"]) == 5


@pytest.mark.parametrize("how", ["gzip", "bz2", "xz", "zstd"])
def test_a_truncated_compressed_file_is_named_and_nothing_is_written(tmp_path, capsys, how):
    rng = np.random.default_rng(0)
    raw = ("user,item,rating\n" + "".join(f"{u},{i},3\n" for u, i in rng.integers(0, 10**6, (20_000, 2)))).encode()
    path = write(tmp_path / "ratings.csv", raw, how)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, logdir = train(tmp_path, "--ratings", path)
    err = capsys.readouterr().err
    assert code == 1 and f"{path}: the {how} data is damaged or truncated" in err and len(err.splitlines()) == 1
    assert not logdir.exists()


def test_zstd_without_a_codec_is_refused_in_words(tmp_path, monkeypatch):
    path = write(tmp_path / "ratings.csv", ratings_text().encode(), "zstd")
    monkeypatch.setattr(data_files, "ARROW_ZSTD", False)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard raises ImportError
    with pytest.raises(DataError, match=rf"^{path} is zstd-compressed: install the 'zstandard' package or decompress it$"):
        load_ratings_file(path)


def test_a_zip_archive_is_refused_in_words(tmp_path):
    path = tmp_path / "ratings.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(DataError, match=rf"^{path} is a zip archive: extract the file from it \(or save a workbook as CSV\)$"):
        load_ratings_file(path)


# ---------------------------------------------------------------------------------------------
# An unclosed quote in an items file


def test_an_unclosed_quote_in_an_items_file_is_named_at_its_line_and_nothing_is_written(tmp_path, capsys):
    ratings = write(tmp_path / "ratings.csv", b"user,item,rating\n1,1,4\n1,2,3\n2,3,5\n")
    items = write(tmp_path / "movies.csv", b'movieId,title\n1,"Toy Story (1995)\n2,Heat (1995)"\n3,Casino (1995)\n')
    with pytest.raises(DataError, match=r"movies\.csv, line 2: a quoted field opens on this line and runs over 2 lines"):
        read_items_file(items)
    code, logdir = train(tmp_path, "--ratings", ratings, "--items", items)
    err = capsys.readouterr().err
    assert code == 1 and f"{items}, line 2: a quoted field opens on this line" in err and len(err.splitlines()) == 1
    assert not logdir.exists()


def test_an_unclosed_quote_running_to_the_end_of_an_items_file_is_named(tmp_path):
    items = write(tmp_path / "movies.csv", b'movieId,title,genres\n1,Heat (1995),Action\n2,"Casino (1995),Drama\n3,X,Y\n')
    with pytest.raises(DataError, match=r"movies\.csv, line 3: a quoted field"):
        read_items_file(items)


def test_an_unclosed_quote_in_a_history_is_named_at_its_line(tmp_path):
    history = write(tmp_path / "history.csv", b'item,rating\nm1,5\n"Film 2 (1992),4\nm3,5\n')
    with pytest.raises(DataError, match=r"history\.csv, line 3: a quoted field"):
        read_history(history)


def test_a_movies_dat_given_as_the_items_file_is_read(tmp_path):
    items = write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation|Comedy\n2::Star Wars: A New Hope (1977)::Sci-Fi\n".encode())
    table = read_items_file(items)
    assert table.ids.tolist() == [1, 2]
    assert table.metadata.titles == ["Toy Story (1995)", "Star Wars: A New Hope (1977)"]
    assert table.metadata.genres == [["Animation", "Comedy"], ["Sci-Fi"]]


# ---------------------------------------------------------------------------------------------
# OS errors, in the OS's words


def test_a_symlink_loop_as_ratings_is_named_as_such_and_nothing_is_written(tmp_path, capsys):
    loop = tmp_path / "loop.csv"
    os.symlink(loop.name, loop)
    code, logdir = train(tmp_path, "--ratings", loop)
    err = capsys.readouterr().err
    assert code == 1 and err == f"mtrec train: error: {loop}: {os.strerror(errno.ELOOP)}\n"
    assert not logdir.exists()


def test_a_folder_given_as_the_items_file_is_named_as_such(tmp_path):
    ratings = write(tmp_path / "ratings.csv", b"user,item,rating\n1,1,4\n")
    (tmp_path / "items").mkdir()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'items'}: Is a directory$"):
        load_ratings_file(ratings, items_path=tmp_path / "items")


@pytest.mark.parametrize(
    "argv",
    [["datasets", "list"], ["datasets", "download", "100k"], ["train", "--preset", "seed", "--epochs", "1"]],
)
def test_a_data_dir_that_is_a_file_is_not_a_directory(tmp_path, capsys, argv):
    data_dir = tmp_path / "data"
    data_dir.write_text("not a folder")
    result = cli(capsys, *argv, "--data-dir", data_dir, *(["--logdir", tmp_path / "run"] if argv[0] == "train" else []))
    assert_one_line_error(result, argv[0], f"{data_dir}: Not a directory")
    assert data_dir.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_request_files_name_their_os_error(model_dir, tmp_path, capsys):
    loop = tmp_path / "history.csv"
    os.symlink(loop.name, loop)
    result = cli(capsys, "recommend", "--model", model_dir, "--history", loop)
    assert_one_line_error(result, "recommend", f"{loop}: {os.strerror(errno.ELOOP)}")
    result = cli(capsys, "predict", "--model", model_dir, "--pairs", tmp_path)
    assert_one_line_error(result, "predict", f"{tmp_path}: Is a directory")


def test_synth_into_a_path_under_a_file_fails_before_drawing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli(capsys, "synth", "--out", blocker / "ratings.csv", "--num-ratings", 100, "--num-users", 20, "--num-items", 20)
    assert_one_line_error(result, "synth", f"{blocker}: Not a directory")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------------------------------------
# Read once and no further than needed: pipes, long histories, large files


def read_through_a_fifo(path, payload: bytes, read):
    """``read(path)`` where ``path`` is a FIFO that a writer feeds ``payload`` into, as ``<(zcat …)`` does.
    A reader that opens the path twice waits forever for a second writer: that fails here, within seconds."""
    os.mkfifo(path)

    def feed() -> None:
        with open(path, "wb") as pipe:
            pipe.write(payload)

    threading.Thread(target=feed, daemon=True).start()
    outcome: dict = {}

    def consume() -> None:
        try:
            outcome["value"] = read(path)
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # a writer that ends at once: the reader sees the end
        pytest.fail(f"reading {path} still waits for its writer: the FIFO was opened twice")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("how", ["plain", "gzip", "zstd"])
def test_a_history_from_a_pipe_recommends_like_the_same_file(model_dir, tmp_path, capsys, how):
    raw = COMPRESSORS[how](b"item,rating\nm3,5\nm10,4\n")
    file = tmp_path / "history.csv"
    file.write_bytes(raw)
    expected = cli(capsys, "recommend", "--model", model_dir, "--history", file, "-k", 5, "--format", "json")
    piped = read_through_a_fifo(
        tmp_path / "pipe", raw, lambda path: cli(capsys, "recommend", "--model", model_dir, "--history", path, "-k", 5, "--format", "json")
    )
    assert piped == expected and expected[0] == 0 and len(json.loads(expected[1])["items"]) == 5


def test_a_history_is_read_no_further_than_one_item_beyond_the_limit(tmp_path):
    items = "".join(f"m{n % 40}\n" for n in range(MAX_HISTORY + 1))
    history = write(tmp_path / "history.csv", f'item\n{items}"an unclosed quote, never read\n'.encode())
    with pytest.raises(DataError) as caught:
        read_history(history)
    assert str(caught.value) == (f"{history}, line {MAX_HISTORY + 2}: more than {MAX_HISTORY:,} items; a history holds at most {MAX_HISTORY:,}")
    exactly = write(tmp_path / "full.csv", f"item\n{items}".encode()[: -len(f"m{MAX_HISTORY % 40}\n")])
    entries, lines = read_history(exactly)
    assert len(entries) == MAX_HISTORY and lines[-1] == MAX_HISTORY + 1


@pytest.mark.parametrize("reader, empty", [(read_history, "an empty history"), (read_users, "no users"), (read_pairs, "no (user, item) pairs")])
@pytest.mark.parametrize("text", [b"", b"\n \n", b" ,, \n,\n"])
def test_a_request_file_of_blank_lines_or_empty_fields_is_named_empty(tmp_path, reader, empty, text):
    path = write(tmp_path / "request.csv", text)
    with pytest.raises(DataError) as caught:
        reader(path)
    assert str(caught.value) == f"{path}: {empty}"


def test_a_files_checksum_is_computed_in_chunks_not_from_the_whole_file_in_memory(tmp_path):
    path = tmp_path / "u.data"
    payload = np.random.default_rng(0).bytes(48 * 2**20)
    path.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    del payload
    tracemalloc.start()
    try:
        check_sha256(path, expected)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak:,} bytes held at once to hash a file of {48 * 2**20:,}"
    with pytest.raises(DataError, match=f"^{path} has SHA-256 {expected}, expected {'0' * 64}: the file is modified"):
        check_sha256(path, "0" * 64)


# ---------------------------------------------------------------------------------------------
# Ids: trimmed everywhere, never holding a control character


def test_spaced_string_ids_are_trimmed_like_integer_ids(model_dir, tmp_path, capsys):
    data = load_ratings_file(write(tmp_path / "ratings.csv", ratings_text().encode()))
    assert data.user_ids[:3].tolist() == ["u0", "u1", "u2"] and data.item_ids[:2].tolist() == ["m0", "m1"]
    code, out, err = cli(capsys, "recommend", "--model", model_dir, "--user", "u1", "-k", 3, "--format", "json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["user"] == "u1" and not result["cold_start"]
    assert all(item["title"].startswith("Film ") for item in result["items"])


def test_spaced_ids_are_trimmed_in_parquet_items_and_request_files(tmp_path):
    pq.write_table(pa.table({"user": [" u1", "u2 "], "item": [" 7 ", "8"], "rating": [4.0, 2.0]}), tmp_path / "r.parquet")
    assert load_ratings_file(tmp_path / "r.parquet").user_ids.tolist() == ["u1", "u2"]
    ratings = write(tmp_path / "r.csv", b"user,item,rating\n1, 7 ,4\n2,8,2\n")
    items = write(tmp_path / "items.csv", b"item,title\n 7 ,Seven (1995)\n8 ,Eight (1996)\n")
    data = load_ratings_file(ratings, items_path=items)
    assert data.item_ids.tolist() == [7, 8] and data.item_metadata.titles == ["Seven (1995)", "Eight (1996)"]
    assert read_pairs(write(tmp_path / "pairs.tsv", b" u1 \t 7 \n")) == [("u1", "7")]
    assert read_users(write(tmp_path / "users.csv", b"  u1\nu2  \n")) == ["u1", "u2"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("ratings.csv", "user,item,rating\nu1,m1,4\nu\x002,m1,3\n", r"ratings\.csv, line 3: user id 'u\\x002' holds the control character U\+0000"),
        ("ratings.tsv", "1\tm1\t4\n2\tm\x1b2\t3\n", r"ratings\.tsv, line 2: item id 'm\\x1b2' holds the control character U\+001B"),
        ("quoted.csv", 'user,item,rating\nu1,"m\n1",4\n', r"quoted\.csv, line 2: a quoted field opens on this line and runs over 2 lines"),
    ],
)
def test_a_control_character_in_a_ratings_id_is_named_with_its_line(tmp_path, capsys, name, text, message):
    path = write(tmp_path / name, text.encode())
    with pytest.raises(DataError, match=message):
        load_ratings_file(path)
    code, logdir = train(tmp_path, "--ratings", path)
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and str(path) in err and not logdir.exists()


def test_a_control_character_in_a_parquet_id_is_named_with_its_row(tmp_path):
    pq.write_table(pa.table({"user": ["a", "b", "c\x00"], "item": [1, 2, 3], "rating": [4.0, 2.0, 1.0]}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet, row 3: user id 'c\\x00' holds the control character U\+0000 \(column 'user'\)"):
        load_ratings_file(tmp_path / "r.parquet")


@pytest.mark.parametrize(
    "reader, text, message",
    [
        (read_items_file, b"item,title\nm1,One\nm\x072,Two\n", r"items\.csv, line 3: item id 'm\\x072' holds the control character U\+0007"),
        (read_history, b"item,rating\nm1,5\nm\x002,4\n", r"items\.csv, line 3: item 'm\\x002' holds the control character U\+0000"),
        (read_users, b"user\nu1\nu\x7f2\n", r"items\.csv, line 3: user id 'u\\x7f2' holds the control character U\+007F"),
        (read_pairs, b"u1,m1\nu2,m\x002\n", r"items\.csv, line 2: item 'm\\x002' holds the control character U\+0000"),
        (read_users, b"user\nu1\n,x\n", r"items\.csv, line 3: empty user id"),
    ],
)
def test_a_control_character_or_an_empty_id_in_other_inputs_is_named_with_its_line(tmp_path, reader, text, message):
    with pytest.raises(DataError, match=message):
        reader(write(tmp_path / "items.csv", text))


def test_a_bad_users_file_writes_no_recommendations(model_dir, tmp_path, capsys):
    users = write(tmp_path / "users.csv", b"user\n u1 \nu\x002\n")
    out = tmp_path / "recs.csv"
    result = cli(capsys, "recommend", "--model", model_dir, "--users", users, "-k", 3, "--out", out, "--no-progress")
    assert_one_line_error(result, "recommend", f"{users}, line 3: user id 'u\\x002' holds the control character U+0000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.csv"]
    users.write_bytes(BOM + b"user\n u1 \nu2\n")
    code, _, err = cli(capsys, "recommend", "--model", model_dir, "--users", users, "-k", 3, "--out", out, "--no-progress")
    assert code == 0 and err == ""
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == ['"u1"'] * 3 + ['"u2"'] * 3
