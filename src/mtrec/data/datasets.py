"""The MovieLens releases: where they come from, how they are checked, and loading them.

Each release is downloaded once (see :mod:`mtrec.data.download`) into the data directory:
the ``data_dir`` argument, else ``$MTREC_DATA_DIR``, else ``$XDG_CACHE_HOME/mtrec`` (or
``~/.cache/mtrec``). A release lives in ``<data_dir>/<folder>/``, the folder name of the
official zip (``ml-100k``, ``ml-10M100K``...).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtrec.data.download import download_release_archive, extract_archive
from mtrec.data.interactions import Interactions, ItemMetadata
from mtrec.data.readers import (
    ItemTable,
    TextFormat,
    align_metadata,
    build_interactions,
    read_items_file,
    read_text_columns,
    split_genres,
    year_from_title,
)
from mtrec.errors import ConfigError, DataError

#: Where GroupLens serves the archives; ``$MTREC_MOVIELENS_BASE_URL`` overrides it.
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "MTREC_MOVIELENS_BASE_URL"
DATA_DIR_ENV = "MTREC_DATA_DIR"

_ROLES = ("user", "item", "rating", "time")
_CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")


@dataclass(frozen=True)
class Release:
    """One MovieLens release and how to read it.

    Parameters
    ----------
    name:
        The short name used on the command line (``100k``, ``1m``...).
    archive:
        File name of the official zip (``ml-100k.zip``).
    folder:
        The folder the zip extracts to (``ml-100k``).
    ratings_file:
        The ratings file inside ``folder``.
    ratings_format:
        Its layout: delimiter, column names, header.
    rating_scale:
        Lowest and highest rating.
    movies_file:
        The file of titles and genres inside ``folder``.
    md5:
        The archive's MD5, where known for sure. ``None``: the MD5 GroupLens publishes
        beside the archive (``<url>.md5``) is fetched and used at download time.
    file_sha256:
        SHA-256 of extracted files, checked on every load whatever their source.
    """

    name: str
    archive: str
    folder: str
    ratings_file: str
    ratings_format: TextFormat
    rating_scale: tuple[float, float]
    movies_file: str
    md5: str | None = None
    file_sha256: tuple[tuple[str, str], ...] = ()

    @property
    def checksum_source(self) -> str:
        """Where the archive's checksum comes from, for listings."""
        return f"pinned MD5 {self.md5}" if self.md5 else "MD5 published beside the archive (.md5)"

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return f"{base.rstrip('/')}/{self.archive}"


def _dat(name: str, archive: str, folder: str, scale: tuple[float, float]) -> Release:
    return Release(
        name=name,
        archive=archive,
        folder=folder,
        ratings_file="ratings.dat",
        ratings_format=TextFormat(delimiter="::", columns=_ROLES, header=False, quoted=False),
        rating_scale=scale,
        movies_file="movies.dat",
    )


def _csv(name: str, folder: str) -> Release:
    return Release(
        name=name,
        archive=f"{folder}.zip",
        folder=folder,
        ratings_file="ratings.csv",
        ratings_format=TextFormat(delimiter=",", columns=_CSV_COLUMNS, header=True),
        rating_scale=(0.5, 5.0),
        movies_file="movies.csv",
    )


#: The MovieLens releases mtrec can download and read, by short name.
RELEASES: dict[str, Release] = {
    "100k": Release(
        name="100k",
        archive="ml-100k.zip",
        folder="ml-100k",
        ratings_file="u.data",
        ratings_format=TextFormat(delimiter="\t", columns=_ROLES, header=False, quoted=False),
        rating_scale=(1.0, 5.0),
        movies_file="u.item",
        md5="0e33842e24a9c977be4e0107933c0723",
        file_sha256=(("u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),),
    ),
    "1m": _dat("1m", "ml-1m.zip", "ml-1m", (1.0, 5.0)),
    "10m": _dat("10m", "ml-10m.zip", "ml-10M100K", (0.5, 5.0)),
    "20m": _csv("20m", "ml-20m"),
    "25m": _csv("25m", "ml-25m"),
    "32m": _csv("32m", "ml-32m"),
    "latest-small": _csv("latest-small", "ml-latest-small"),
}


def get_release(name: str) -> Release:
    """The release called ``name``; a :class:`ConfigError` listing the known ones otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(RELEASES)}") from None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$MTREC_DATA_DIR``, else the per-user cache ``$XDG_CACHE_HOME/mtrec``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mtrec"


def is_present(release: Release, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the release's ratings file is in the data directory."""
    return (resolve_data_dir(data_dir) / release.folder / release.ratings_file).is_file()


def download_release(
    name: str,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    base_url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Download, verify and extract a release unless it is already there; its folder.

    Parameters
    ----------
    name:
        A key of :data:`RELEASES`.
    data_dir:
        Where releases live (see :func:`resolve_data_dir`).
    progress:
        Show a progress bar while downloading.
    base_url:
        Where the archives are served; default ``$MTREC_MOVIELENS_BASE_URL`` or GroupLens.
    md5:
        Expected MD5 of the archive, overriding the release's checksum source.
    """
    release = get_release(name)
    root = resolve_data_dir(data_dir)
    folder = root / release.folder
    if not (folder / release.ratings_file).is_file():
        archive = download_release_archive(
            release.url(base_url), root / release.archive, md5 or release.md5, progress=progress
        )
        extract_archive(archive, root, release.folder, release.ratings_file)
    return folder


def load_movielens(
    name: str = "100k", data_dir: str | os.PathLike | None = None, progress: bool = False
) -> Interactions:
    """Load a MovieLens release, downloading it first if it is not in the data directory.

    Parameters
    ----------
    name:
        ``100k``, ``1m``, ``10m``, ``20m``, ``25m``, ``32m`` or ``latest-small``.
    data_dir:
        Where releases live; default ``$MTREC_DATA_DIR``, else ``~/.cache/mtrec``.
    progress:
        Show a progress bar while downloading.

    Returns
    -------
    Interactions
        Users and items indexed by their sorted raw ids, ratings, timestamps, titles,
        years and genres.

    Raises
    ------
    ConfigError
        For an unknown release name.
    DownloadError
        When the release is missing and cannot be downloaded, or fails its checksum.
    DataError
        When a file is malformed (naming file and line) or fails its SHA-256.
    """
    release = get_release(name)
    folder = download_release(name, data_dir, progress=progress)
    path = folder / release.ratings_file
    columns = _read_ratings(release, path)
    # After parsing, so that a malformed line is reported by its number rather than as a digest.
    for file_name, digest in release.file_sha256:
        check_sha256(folder / file_name, digest)
    data = build_interactions(path, columns, rating_scale=release.rating_scale, name=release.folder)
    _attach_movies(data, release, folder)
    return data


def load_canonical_split(
    name: str, data_dir: str | os.PathLike | None = None, progress: bool = False
) -> tuple[Interactions, Interactions]:
    """MovieLens 100K's ``<name>.base`` and ``<name>.test`` as train and test, sharing one id map.

    See :func:`mtrec.data.splits.canonical_split`, which checks ``name``.
    """
    release = RELEASES["100k"]
    folder = download_release(release.name, data_dir, progress=progress)
    base, test = (_read_ratings(release, folder / f"{name}.{part}") for part in ("base", "test"))
    combined = {role: pa.chunked_array(base[role].chunks + test[role].chunks) for role in base}
    n_base, n_test = len(base["user"]), len(test["user"])
    data = build_interactions(
        folder / f"{name}.base", combined, rating_scale=release.rating_scale, name=f"{release.folder}/{name}"
    )
    if len(data) != n_base + n_test:
        raise DataError(f"{folder / name}.base and .test share (user, item) pairs")
    _attach_movies(data, release, folder)
    in_test = np.arange(len(data)) >= n_base
    return data.subset(~in_test), data.subset(in_test)


def _read_ratings(release: Release, path: Path) -> dict[str, pa.ChunkedArray]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; delete {path.parent} to download {release.archive} again")
    names = release.ratings_format.columns
    return read_text_columns(path, release.ratings_format, dict(zip(_ROLES, names)), release.rating_scale)


def _attach_movies(data: Interactions, release: Release, folder: Path) -> None:
    movies = folder / release.movies_file
    if movies.is_file():
        data.item_metadata = align_metadata(data.item_ids, read_movies(movies))


def check_sha256(path: Path, expected: str) -> None:
    """A :class:`DataError` unless the file's SHA-256 is ``expected``."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise DataError(
            f"{path} has SHA-256 {digest}, expected {expected}: the file is modified or corrupt; "
            "delete its folder to download it again"
        )


def read_movies(path: Path) -> ItemTable:
    """Titles, years and genres from ``u.item``, ``movies.dat`` or ``movies.csv``."""
    if path.name == "u.item":
        return _read_u_item(path)
    if path.suffix == ".dat":
        return _read_movies_dat(path)
    return read_items_file(path)


def _decode(raw: bytes) -> str:
    """UTF-8 where valid (ML-10M), else Latin-1 (ML-100K, ML-1M)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _split_rows(path: Path, separator: str, width: int, id_field: int = 0) -> list[list[str]]:
    """The non-empty lines of a small metadata file, split into ``width`` fields with a numeric id."""
    rows = []
    for number, line in enumerate(_decode(path.read_bytes()).splitlines(), 1):
        if line.strip():
            fields = line.split(separator)
            if len(fields) != width or not fields[id_field].strip().isdigit():
                problem = f"expected {width} fields separated by {separator!r}" if len(fields) != width else "bad id"
                raise DataError(f"{path}, line {number}: {problem}, found {line[:80]!r}")
            rows.append(fields)
    return rows


def _read_u_item(path: Path) -> ItemTable:
    genre_names = [fields[0] for fields in _split_rows(path.with_name("u.genre"), "|", 2, id_field=1)]
    rows = _split_rows(path, "|", 5 + len(genre_names))
    flags = np.array([fields[5:] for fields in rows], dtype=np.int8).astype(bool)
    names = np.array(genre_names, dtype=object)
    return ItemTable(
        ids=np.array([int(fields[0]) for fields in rows], dtype=np.int64),
        metadata=ItemMetadata(
            titles=[fields[1].strip() for fields in rows],
            years=[year_from_title(fields[1], fields[2]) for fields in rows],
            genres=[names[row].tolist() for row in flags],
        ),
    )


def _read_movies_dat(path: Path) -> ItemTable:
    rows = _split_rows(path, "::", 3)
    titles = [fields[1].strip() for fields in rows]
    return ItemTable(
        ids=np.array([int(fields[0]) for fields in rows], dtype=np.int64),
        metadata=ItemMetadata(
            titles=titles,
            years=[year_from_title(title) for title in titles],
            genres=[split_genres(fields[2]) for fields in rows],
        ),
    )
