"""The MovieLens releases: where they come from, how they are checked, and loading them.

Each release is downloaded once (see :mod:`mtrec.data.download`) into the data directory:
the ``data_dir`` argument, else ``$MTREC_DATA_DIR``, else ``$XDG_CACHE_HOME/mtrec`` (or
``~/.cache/mtrec``). A release lives in ``<data_dir>/<folder>/``, the folder name of the
official zip (``ml-100k``, ``ml-10M100K``...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtrec.data.building import interaction_fields
from mtrec.data.download import download_release_archive, extract_archive
from mtrec.data.files import check_directory, digest_of, is_file
from mtrec.data.formats import TextFormat
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import align_metadata, read_movies
from mtrec.data.parsing import read_text_columns
from mtrec.errors import ConfigError, DataError

#: Where GroupLens serves the archives; ``$MTREC_MOVIELENS_BASE_URL`` overrides it.
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "MTREC_MOVIELENS_BASE_URL"
DATA_DIR_ENV = "MTREC_DATA_DIR"

_ROLES = ("user", "item", "rating", "time")
_CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")

#: SHA-256 of the MovieLens 100K files mtrec reads: ratings, titles, genre names and the
#: canonical splits, as GroupLens ships them.
_ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
    "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
    "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
    "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
    "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
    "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
    "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
    "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
    "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
    "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
    "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
    "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
    "ub.base": "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
    "ub.test": "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da",
}


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
        SHA-256 of extracted files, each checked whenever it is loaded, whatever its source.
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
        if self.md5:
            return f"MD5 {self.md5} (pinned in mtrec)"
        return f"MD5 published by GroupLens as {self.archive}.md5, fetched at download time"

    def verify(self, folder: Path, *names: str) -> None:
        """Check the SHA-256 of each of ``names`` in ``folder`` that this release pins.

        Raises
        ------
        DataError
            Naming the file whose SHA-256 differs from the pinned one.
        """
        pinned = dict(self.file_sha256)
        for name in names:
            if name in pinned:
                check_sha256(folder / name, pinned[name])

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
        file_sha256=tuple(_ML100K_SHA256.items()),
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
    """``data_dir``, else ``$MTREC_DATA_DIR``, else the per-user cache ``$XDG_CACHE_HOME/mtrec``.

    Raises
    ------
    DataError
        When something other than a directory is there, in the OS's words (``Not a directory``).
    """
    if data_dir is not None:
        return check_directory(Path(data_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV):
        return check_directory(Path(os.environ[DATA_DIR_ENV]).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return check_directory(Path(cache) / "mtrec")


def is_present(release: Release, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the release's ratings file is in the data directory."""
    return is_file(resolve_data_dir(data_dir) / release.folder / release.ratings_file)


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
    if not is_file(folder / release.ratings_file):
        archive = download_release_archive(release.url(base_url), root / release.archive, md5 or release.md5, progress=progress)
        extract_archive(archive, root, release.folder, release.ratings_file)
    return folder


def load_movielens(name: str = "100k", data_dir: str | os.PathLike | None = None, progress: bool = False) -> Interactions:
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
    data = Interactions(**interaction_fields(path, columns, rating_scale=release.rating_scale, name=release.folder))
    _attach_movies(data, release, folder)
    return data


def load_canonical_split(name: str, data_dir: str | os.PathLike | None = None, progress: bool = False) -> tuple[Interactions, Interactions]:
    """MovieLens 100K's ``<name>.base`` and ``<name>.test`` as train and test, sharing one id map.

    See :func:`mtrec.data.splits.canonical_split`, which checks ``name``. Each file read is
    checked against its pinned SHA-256 (a :class:`DataError` naming the file otherwise).
    """
    release = RELEASES["100k"]
    folder = download_release(release.name, data_dir, progress=progress)
    base, test = (_read_ratings(release, folder / f"{name}.{part}") for part in ("base", "test"))
    combined = {role: pa.chunked_array(base[role].chunks + test[role].chunks) for role in base}
    n_base, n_test = len(base["user"]), len(test["user"])
    fields = interaction_fields(folder / f"{name}.base", combined, rating_scale=release.rating_scale, name=f"{release.folder}/{name}")
    data = Interactions(**fields)
    if len(data) != n_base + n_test:
        raise DataError(f"{folder / name}.base and .test share (user, item) pairs")
    _attach_movies(data, release, folder)
    in_test = np.arange(len(data)) >= n_base
    return data.subset(~in_test), data.subset(in_test)


def _read_ratings(release: Release, path: Path) -> dict[str, pa.ChunkedArray]:
    """A ratings file of the release, parsed, then checked against its pinned SHA-256."""
    if not is_file(path):
        raise DataError(f"{path}: no such file; delete {path.parent} to download {release.archive} again")
    names = release.ratings_format.columns
    columns = read_text_columns(path, release.ratings_format, dict(zip(_ROLES, names)), release.rating_scale)
    # After parsing, so that a malformed line is reported by its number rather than as a digest.
    release.verify(path.parent, path.name)
    return columns


def _attach_movies(data: Interactions, release: Release, folder: Path) -> None:
    from mtrec.data.features import movielens_features  # it reads the release's files through this module

    data.item_features, data.user_features = movielens_features(release, folder)
    movies = folder / release.movies_file
    if is_file(movies):
        data.item_metadata = align_metadata(data.item_ids, read_movies(movies))
        # u.item takes its genre names from u.genre.
        release.verify(folder, release.movies_file, "u.genre")


def check_sha256(path: Path, expected: str) -> None:
    """A :class:`DataError` unless the file's SHA-256 is ``expected``."""
    digest = digest_of(path, "sha256")
    if digest != expected:
        raise DataError(f"{path} has SHA-256 {digest}, expected {expected}: the file is modified or corrupt; delete its folder to download it again")
