"""Loading MovieLens 100K: sizes, id maps, metadata, and the registry of releases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mtrec.data import RELEASES, canonical_split, load_movielens
from mtrec.data.datasets import get_release, resolve_data_dir
from mtrec.data.splits import CANONICAL_SPLITS
from mtrec.errors import ConfigError, DataError


def test_ml100k_sizes_and_scale(ml100k):
    assert (ml100k.num_users, ml100k.num_items, len(ml100k)) == (943, 1682, 100_000)
    assert ml100k.rating_scale == (1.0, 5.0) and ml100k.name == "ml-100k"
    assert sorted(np.unique(ml100k.ratings).tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ml100k.users.dtype == np.int32 and ml100k.ratings.dtype == np.float32
    assert ml100k.timestamps.dtype == np.int64 and ml100k.timestamps.min() == 874724710


def test_ml100k_ids_are_contiguous_with_no_phantom_row(ml100k):
    assert ml100k.user_ids.tolist() == list(range(1, 944))
    assert ml100k.item_ids.tolist() == list(range(1, 1683))
    assert np.bincount(ml100k.users).min() >= 20  # every user, index 0 included, is real


def test_ml100k_first_line_is_user_196_item_242(ml100k, data_dir):
    first = (data_dir / "ml-100k" / "u.data").read_text().split("\n", 1)[0].split("\t")
    assert first == ["196", "242", "3", "881250949"]
    assert ml100k.user_ids[ml100k.users[0]] == 196 and ml100k.item_ids[ml100k.items[0]] == 242
    assert (ml100k.ratings[0], ml100k.timestamps[0]) == (3.0, 881250949)
    assert ml100k.user_index(196) == ml100k.users[0] == 195


def test_ml100k_item_metadata(ml100k):
    meta = ml100k.item_metadata
    assert len(meta) == 1682
    assert (meta.titles[0], meta.years[0], meta.genres[0]) == (
        "Toy Story (1995)",
        1995,
        ["Animation", "Children's", "Comedy"],
    )
    assert (meta.titles[266], meta.years[266], meta.genres[266]) == ("unknown", None, ["unknown"])
    assert meta.titles[1127] == "Heidi Fleiss: Hollywood Madam (1995)"  # trailing space in u.item
    assert sum(year is None for year in meta.years) == 1
    assert sum("Drama" in genres for genres in meta.genres) == 725


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset '5m'; known datasets: 100k, 1m, 10m, 20m, 25m, 32m, latest-small"):
        load_movielens("5m")


def test_registry_folders_scales_and_checksum_sources():
    assert {name: release.folder for name, release in RELEASES.items()} == {
        "100k": "ml-100k",
        "1m": "ml-1m",
        "10m": "ml-10M100K",
        "20m": "ml-20m",
        "25m": "ml-25m",
        "32m": "ml-32m",
        "latest-small": "ml-latest-small",
    }
    assert {release.rating_scale for name, release in RELEASES.items() if name not in ("100k", "1m")} == {(0.5, 5.0)}
    assert get_release("100k").md5 == "0e33842e24a9c977be4e0107933c0723"
    assert all(release.md5 is None for name, release in RELEASES.items() if name != "100k")
    assert get_release("25m").url() == "https://files.grouplens.org/datasets/movielens/ml-25m.zip"
    published = "MD5 published by GroupLens as ml-25m.zip.md5, fetched at download time"
    assert get_release("25m").checksum_source == published
    assert get_release("100k").checksum_source == "MD5 0e33842e24a9c977be4e0107933c0723 (pinned in mtrec)"


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MTREC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("MTREC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "mtrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir() == Path.home() / ".cache" / "mtrec"


def test_ml100k_pins_the_sha256_of_every_file_it_reads(data_dir):
    published = dict(line.split()[::-1] for line in (data_dir / "ml-100k.SHA256SUMS").read_text().splitlines())
    pinned = dict(get_release("100k").file_sha256)
    splits = {f"{name}.{part}" for name in CANONICAL_SPLITS for part in ("base", "test")}
    assert set(pinned) == {"u.data", "u.item", "u.genre"} | splits
    assert pinned == {name: published[name] for name in pinned}


def copy_ml100k(data_dir: Path, tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name in names:
        shutil.copyfile(data_dir / "ml-100k" / name, folder / name)
    return folder


def test_canonical_split_rejects_a_modified_split_file_by_its_sha256(tmp_path, data_dir):
    folder = copy_ml100k(data_dir, tmp_path, "u.data", "u.item", "u.genre", "u1.base", "u1.test")
    assert [len(part) for part in canonical_split("u1", data_dir=tmp_path)] == [80_000, 20_000]
    lines = (folder / "u1.test").read_text().splitlines()
    lines[0] = lines[0].replace("\t", "\t1", 1)  # an item id changed: still a well-formed line
    (folder / "u1.test").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ml-100k/u1\.test has SHA-256 [0-9a-f]{64}, expected 18c6014a"):
        canonical_split("u1", data_dir=tmp_path)


def test_loader_rejects_a_modified_u_item_by_its_sha256(tmp_path, data_dir):
    folder = copy_ml100k(data_dir, tmp_path, "u.data", "u.item", "u.genre")
    (folder / "u.item").write_bytes((folder / "u.item").read_bytes().replace(b"Toy Story", b"Toy Storm", 1))
    with pytest.raises(DataError, match=r"ml-100k/u\.item has SHA-256 [0-9a-f]{64}, expected 553841eb"):
        load_movielens("100k", data_dir=tmp_path)


def test_a_corrupt_genre_flag_in_u_item_is_named_not_a_traceback(tmp_path, data_dir):
    folder = copy_ml100k(data_dir, tmp_path, "u.data", "u.item", "u.genre")
    first, rest = (folder / "u.item").read_bytes().split(b"\n", 1)
    (folder / "u.item").write_bytes(first[:-1] + b"x\n" + rest)  # Toy Story's last genre flag
    with pytest.raises(DataError, match=r"u\.item, item 1: genre flags must be 0 or 1"):
        load_movielens("100k", data_dir=tmp_path)
