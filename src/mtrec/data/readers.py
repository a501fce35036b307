"""Reading a user's own ratings file (CSV, TSV, MovieLens ``::`` or Parquet) into :class:`Interactions`.

The work is split by concern: :mod:`~mtrec.data.formats` sniffs the layout and resolves the
columns, :mod:`~mtrec.data.parsing` parses them (naming the first bad line when parsing fails),
:mod:`~mtrec.data.building` turns them into the fields of :class:`~mtrec.data.interactions.Interactions`, and
:mod:`~mtrec.data.metadata` reads item descriptions.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from mtrec.data.building import check_rating_scale, interaction_fields
from mtrec.data.files import check_readable, format_suffix, os_error
from mtrec.data.formats import PARQUET_SUFFIXES, Column, resolve_columns, sniff_format
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import align_metadata, read_items_file
from mtrec.data.parsing import read_parquet_columns, read_text_columns
from mtrec.errors import DataError


def load_ratings_file(
    path: str | os.PathLike,
    user_col: Column | None = None,
    item_col: Column | None = None,
    rating_col: Column | None = None,
    time_col: Column | None = None,
    items_path: str | os.PathLike | None = None,
    rating_scale: tuple[float, float] | None = None,
    sep: str | None = None,
) -> Interactions:
    """Load a user's own ratings from CSV, TSV, ``::``-separated text or Parquet.

    Parameters
    ----------
    path:
        The ratings file. ``.parquet``/``.pq`` is read as Parquet; ``.csv`` as comma- and
        ``.tsv``/``.tab`` as tab-separated; anything else by sniffing its first line. It may be
        compressed with gzip, bz2, xz or zstd (recognised by its first bytes; the name's
        ``.gz``... ending is skipped to find the format), and text may start with a UTF-8
        byte-order mark.
    user_col, item_col, rating_col, time_col:
        Column names (or 0-based positions). By default they are recognised from the
        header (``user``/``userId``/``user_id``/``uid``; ``item``/``itemId``/``item_id``/
        ``movieId``/``movie_id``/``iid``; ``rating``/``score``/``stars``;
        ``timestamp``/``time``/``ts``/``date``); a file without a header is read as
        user, item[, rating[, timestamp]]. Without a rating column the data is implicit (``ratings``
        is ``None``). Whitespace around an id is dropped, in this file as in the items file (see
        :mod:`mtrec.data.ids`).
    items_path:
        An optional file of item descriptions: item id, title and optionally genres
        (``|``-separated), with the same column recognition.
    rating_scale:
        ``(lowest, highest)`` rating allowed; a rating outside it is an error. By default
        the lowest and highest rating in the file.
    sep:
        Field separator, overriding the extension and sniffing: one character (``","``,
        ``"\\t"``...) or ``"::"``.

    Raises
    ------
    ConfigError
        For a ``sep`` that is neither one character nor ``"::"``.
    DataError
        Naming the file, the line (or Parquet row) and the problem: a malformed line, a quote
        that is not closed, a non-numeric rating, an empty id or one holding a control
        character, a rating outside ``rating_scale``, a time that is neither seconds nor an ISO
        date/time, text that is not UTF-8, damaged compressed data, an empty or header-only
        file, an unknown column; or naming the path and the operating system's error (no
        such file, a symbolic link loop, no permission...).

    Notes
    -----
    Duplicate (user, item) pairs keep the last by time (by file order without time), with
    a :class:`UserWarning` giving their count.
    """
    path = Path(path)
    _check_arguments(path, items_path, rating_scale)
    with _errors_naming(path):
        return _load(path, {"user": user_col, "item": item_col, "rating": rating_col, "time": time_col}, items_path, rating_scale, sep)


def _check_arguments(path: Path, items_path: str | os.PathLike | None, rating_scale: tuple[float, float] | None) -> None:
    """Raise for a mistake in the arguments (a file that cannot be read, a wrong scale): before a long
    read, not after it."""
    for given in (path, items_path):
        if given is not None:
            check_readable(given)
    if rating_scale is not None:
        check_rating_scale(rating_scale)


@contextlib.contextmanager
def _errors_naming(path: Path) -> Iterator[None]:
    """Turn an operating system's or Arrow's error in the block, whatever library raised it, into
    one that names ``path``."""
    try:
        yield
    except OSError as error:
        raise os_error(error, path) from None
    except pa.ArrowException as error:
        raise DataError(f"{path}: {error}") from None


def _load(path: Path, wanted: dict, items_path, rating_scale, sep) -> Interactions:
    if format_suffix(path) in PARQUET_SUFFIXES:
        columns = read_parquet_columns(path, wanted)
    else:
        text_format = sniff_format(path, sep, [c for c in wanted.values() if isinstance(c, str)])
        roles = resolve_columns(path, text_format.columns, wanted, required=("user", "item"), header=text_format.header)
        columns = read_text_columns(path, text_format, roles, rating_scale)
    data = Interactions(**interaction_fields(path, columns, rating_scale=rating_scale, name=path.name))
    if items_path is not None:
        data.item_metadata = align_metadata(data.item_ids, read_items_file(items_path))
    return data
