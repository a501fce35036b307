"""From parsed columns to the fields of :class:`~mtrec.data.interactions.Interactions`: contiguous
indices for the raw ids (in natural order), the rating scale, and one rating per (user, item) pair.

Every reader (files, MovieLens releases, frames) passes its columns through
:func:`interaction_fields` and builds ``Interactions(**fields)``, so the same data gives the same
container wherever it comes from. This module does not import the container: it sits below it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow as pa

from mtrec.data.parsing import timestamps as parse_timestamps
from mtrec.errors import DataError


def index_ids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous indices (int32) of raw ids, and the unique raw ids in natural order they stand for.

    Integer ids give an int64 id array; string ids an object array of ``str``.
    """
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if pa.types.is_dictionary(column.type):
        return _index_dictionary(column)
    raw = column.cast(pa.int64()).to_numpy()
    low, high = int(raw.min()), int(raw.max())
    if low >= 0 and high < 4 * len(raw) + 2**20:
        # Dense small ids (the usual case): a presence table, O(n) instead of sorting.
        present = np.zeros(high + 1, dtype=bool)
        present[raw] = True
        ids = np.flatnonzero(present)
        rank = np.cumsum(present, dtype=np.int64).astype(np.int32) - 1
        return rank[raw], ids.astype(np.int64)
    ids, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int32), ids


def natural_key(text: str) -> tuple:
    """Sort key comparing the digit runs of ``text`` as numbers: "m9" < "m10"."""
    parts = re.split(r"(\d+)", text)
    return (tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), text)


def _index_dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    values = np.concatenate([chunk.dictionary.to_numpy(zero_copy_only=False).astype(object) for chunk in chunks])
    ids, value_rank = np.unique(values, return_inverse=True)
    # Natural order ("u2" before "u10"): string ids that carry numbers index like the numbers,
    # so the same data keyed "196" or "user-196" gets the same indices as integer ids.
    order = np.array(sorted(range(len(ids)), key=lambda k: natural_key(ids[k])), dtype=np.int64)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    ids, value_rank = ids[order], rank[value_rank]
    offsets = np.cumsum([0] + [len(chunk.dictionary) for chunk in chunks])
    index = np.concatenate([value_rank[offset + chunk.indices.to_numpy(zero_copy_only=False)] for offset, chunk in zip(offsets, chunks)])
    return index.astype(np.int32), ids.astype(object)


class InteractionFields(TypedDict):
    """The keyword arguments of :class:`~mtrec.data.interactions.Interactions` that
    :func:`interaction_fields` computes (all but ``item_metadata``)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    num_users: int
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    rating_scale: tuple[float, float] | None
    name: str


def interaction_fields(
    path: Path | str,
    columns: dict[str, pa.ChunkedArray],
    rating_scale: tuple[float, float] | None = None,
    name: str = "",
) -> InteractionFields:
    """Index the raw ids, check the ratings and drop duplicate pairs: ``Interactions(**fields)``.

    ``columns`` maps ``user``, ``item`` and optionally ``rating``, ``time`` to columns (it is
    emptied, so that each column is freed once read). ``path`` names the source in messages.
    """
    users, user_ids = index_ids(columns.pop("user"))
    items, item_ids = index_ids(columns.pop("item"))
    ratings = timestamps = None
    if "rating" in columns:
        ratings = columns.pop("rating").to_numpy().astype(np.float32, copy=False)
        rating_scale = _check_scale(path, ratings, rating_scale)
    if "time" in columns:
        timestamps = parse_timestamps(Path(path), columns.pop("time"))
    # Freed arrow buffers stay in pyarrow's pool unless released: they would double the peak.
    pa.default_memory_pool().release_unused()
    keep = _last_of_duplicates(path, users, items, len(item_ids), timestamps)
    if keep is not None:
        users, items = users[keep], items[keep]
        ratings = None if ratings is None else ratings[keep]
        timestamps = None if timestamps is None else timestamps[keep]
    return InteractionFields(
        users=users,
        items=items,
        ratings=ratings,
        timestamps=timestamps,
        num_users=len(user_ids),
        num_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        rating_scale=rating_scale,
        name=name,
    )


def check_rating_scale(rating_scale: tuple[float, float]) -> tuple[float, float]:
    """``(lowest, highest)`` as floats; readers check a given scale before a long read.

    Raises
    ------
    DataError
        Unless lowest < highest.
    """
    low, high = float(rating_scale[0]), float(rating_scale[1])
    if not low < high:
        raise DataError(f"rating scale must have lowest < highest, got {low:g}..{high:g}")
    return low, high


def _check_scale(path: Path | str, ratings: np.ndarray, rating_scale: tuple[float, float] | None) -> tuple[float, float]:
    """The rating scale: the declared one (every rating must lie in it) or the observed range.

    Text files are checked, with line numbers, while reading; this catches other sources.
    """
    if not np.isfinite(ratings).all():
        row = int(np.flatnonzero(~np.isfinite(ratings))[0])
        raise DataError(f"{path}, row {row + 1}: rating {ratings[row]} is not a finite number")
    if rating_scale is None:
        return float(ratings.min()), float(ratings.max())
    low, high = check_rating_scale(rating_scale)
    outside = (ratings < low) | (ratings > high)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{path}, row {row + 1}: rating {ratings[row]:g} is outside the rating scale {low:g}..{high:g} ({int(outside.sum())} ratings are)"
        )
    return low, high


def _pair_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, built in place (no temporaries on 25M rows)."""
    keys = users.astype(np.int64)
    keys *= num_items
    keys += items
    return keys


def _last_of_duplicates(path: Path | str, users: np.ndarray, items: np.ndarray, num_items: int, timestamps: np.ndarray | None) -> np.ndarray | None:
    """Positions to keep so each (user, item) pair appears once, the last by time then file order.

    ``None`` when there are no duplicates (the usual case, checked with one in-place sort).
    """
    keys = _pair_keys(users, items, num_items)
    keys.sort()
    duplicates = int(np.count_nonzero(keys[1:] == keys[:-1]))
    if not duplicates:
        return None
    keys = _pair_keys(users, items, num_items)
    # lexsort is stable: within a key and time, file order decides, so the last row wins.
    order = np.lexsort((keys,) if timestamps is None else (timestamps, keys))
    sorted_keys = keys[order]
    last = np.empty(len(keys), dtype=bool)
    last[-1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=last[:-1])
    keep = np.zeros(len(keys), dtype=bool)
    keep[order[last]] = True
    rule = "the last by time" if timestamps is not None else "the last in the file"
    warnings.warn(f"{path}: {duplicates} duplicate (user, item) ratings dropped, keeping {rule}", stacklevel=3)
    return keep
