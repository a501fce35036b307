"""Reading a user's own ratings file (CSV, TSV, MovieLens ``::`` or Parquet) into :class:`Interactions`.

The work is split by concern: :mod:`~mtrec.data.formats` sniffs the layout and resolves the
columns, :mod:`~mtrec.data.parsing` parses them (naming the first bad line when parsing fails),
:mod:`~mtrec.data.building` turns them into :class:`~mtrec.data.interactions.Interactions`, and
:mod:`~mtrec.data.metadata` reads item descriptions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from mtrec.data.building import build_interactions
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
        ``.tsv``/``.tab`` as tab-separated; anything else by sniffing its first line.
    user_col, item_col, rating_col, time_col:
        Column names (or 0-based positions). By default they are recognised from the
        header (``user``/``userId``/``user_id``/``uid``; ``item``/``itemId``/``item_id``/
        ``movieId``/``movie_id``/``iid``; ``rating``/``score``/``stars``;
        ``timestamp``/``time``/``ts``/``date``); a file without a header is read as
        user, item[, rating[, timestamp]].
    items_path:
        An optional file of item descriptions: item id, title and optionally genres
        (``|``-separated), with the same column recognition.
    rating_scale:
        ``(lowest, highest)`` rating allowed; a rating outside it is an error. By default
        the lowest and highest rating in the file.
    sep:
        Field separator, overriding the extension and sniffing: one character (``","``,
        ``"\\t"``...) or ``"::"``.

    Returns
    -------
    Interactions
        Without a rating column, ``ratings`` is ``None`` (implicit data).

    Raises
    ------
    ConfigError
        For a ``sep`` that is neither one character nor ``"::"``.
    DataError
        Naming the file, the line (or Parquet row) and the problem: a malformed line, a
        non-numeric rating, an empty id, a rating outside ``rating_scale``, a time that is
        neither seconds nor an ISO date/time, text that is not UTF-8, an empty or
        header-only file, an unknown column.

    Notes
    -----
    Duplicate (user, item) pairs keep the last by time (by file order without time), with
    a :class:`UserWarning` giving their count.
    """
    path = Path(path)
    # Mistakes in the other arguments are named before a long read, not after it.
    for given in (path, items_path):
        if given is not None and not Path(given).is_file():
            raise DataError(f"{given}: no such file")
    if rating_scale is not None and not float(rating_scale[0]) < float(rating_scale[1]):
        raise DataError(f"rating scale must have lowest < highest, got {rating_scale[0]:g}..{rating_scale[1]:g}")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "time": time_col}
    try:
        return _load(path, wanted, items_path, rating_scale, sep)
    except (OSError, pa.ArrowException) as error:  # whatever library raised it, the error names the file
        raise DataError(f"{getattr(error, 'filename', None) or path}: {getattr(error, 'strerror', None) or error}") from None


def _load(path: Path, wanted: dict, items_path, rating_scale, sep) -> Interactions:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        columns = read_parquet_columns(path, wanted)
    else:
        text_format = sniff_format(path, sep, [c for c in wanted.values() if isinstance(c, str)])
        roles = resolve_columns(path, text_format.columns, wanted, required=("user", "item"), header=text_format.header)
        columns = read_text_columns(path, text_format, roles, rating_scale)
    data = build_interactions(path, columns, rating_scale=rating_scale, name=path.name)
    if items_path is not None:
        data.item_metadata = align_metadata(data.item_ids, read_items_file(items_path))
    return data

