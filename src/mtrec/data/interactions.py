"""The data container: who rated what, and how the raw ids map to contiguous indices.

:class:`Interactions` comes from a file (:func:`~mtrec.data.readers.load_ratings_file`), a
MovieLens release (:func:`~mtrec.data.datasets.load_movielens`) or a DataFrame
(:meth:`Interactions.from_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from mtrec.data.building import check_rating_scale, interaction_fields
from mtrec.data.formats import Column
from mtrec.data.frames import frame_columns, frame_table, read_items_frame
from mtrec.data.metadata import ItemMetadata, align_metadata
from mtrec.errors import ConfigError, DataError


def ids_from_json(values: Sequence) -> np.ndarray:
    """Rebuild an id array saved as JSON: integers stay integers, anything else becomes text."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=object)


@dataclass
class Interactions:
    """Ratings (or plain interactions) of users on items, indexed 0..n-1.

    Parameters
    ----------
    users, items:
        Contiguous 0-based indices (int32), one per interaction.
    ratings:
        The rating given (float32), or ``None`` for implicit data with no rating column.
    timestamps:
        Seconds since the epoch (int64), or ``None`` where the data has no time.
    num_users, num_items:
        Sizes of the index spaces; every index is below them.
    user_ids, item_ids:
        The raw id of each index: ``user_ids[u]`` is the id the data used for user ``u``.
    item_metadata:
        Titles, years and genres aligned with the item index, where the data has them.
    rating_scale:
        ``(lowest, highest)`` rating allowed, where known.
    name:
        A short description of the source ("ml-100k", a file name).
    item_features, user_features:
        The items' and the users' side features (:class:`mtrec.data.features.FeatureTable`, keyed by
        raw id), where the data has them: what a model with ``features`` reads.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    num_users: int
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_metadata: ItemMetadata | None = None
    rating_scale: tuple[float, float] | None = None
    name: str = ""
    item_features: Any = field(default=None, compare=False, repr=False)
    user_features: Any = field(default=None, compare=False, repr=False)
    _user_lookup: dict | None = field(default=None, repr=False, compare=False)
    _item_lookup: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.users = _owned(self.users, np.int32)
        self.items = _owned(self.items, np.int32)
        if self.ratings is not None:
            self.ratings = _owned(self.ratings, np.float32)
        if self.timestamps is not None:
            self.timestamps = _owned(self.timestamps, np.int64)
        n = len(self.users)
        for label, array in (("items", self.items), ("ratings", self.ratings), ("timestamps", self.timestamps)):
            if array is not None and len(array) != n:
                raise DataError(f"{label} has {len(array)} entries but users has {n}")
        if len(self.user_ids) != self.num_users or len(self.item_ids) != self.num_items:
            raise DataError(f"id maps have {len(self.user_ids)} users / {len(self.item_ids)} items, expected {self.num_users} / {self.num_items}")
        if n and (self.users.min() < 0 or self.users.max() >= self.num_users):
            raise DataError(f"user index out of range 0..{self.num_users - 1}")
        if n and (self.items.min() < 0 or self.items.max() >= self.num_items):
            raise DataError(f"item index out of range 0..{self.num_items - 1}")

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        user: Column | None = None,
        item: Column | None = None,
        rating: Column | None = None,
        timestamp: Column | None = None,
        items: Any = None,
        rating_scale: tuple[float, float] | None = None,
        name: str | None = None,
    ) -> Interactions:
        """Interactions from a pandas or polars DataFrame or a pyarrow Table of ratings.

        The frame's counterpart of :func:`~mtrec.data.readers.load_ratings_file`: the same columns
        are recognised, the same checks made, and the same data gives the same :class:`Interactions`
        (ids indexed in natural order; of duplicate (user, item) pairs, the last by time, or by row
        order without time, kept with a :class:`UserWarning` giving their count). The columns go
        through Arrow without a copy where their dtypes allow (integers and floats of pandas and
        polars), and without a Python loop (:mod:`mtrec.data.frames`).

        Parameters
        ----------
        frame:
            One row per rating (or interaction). Its index is not read: ``reset_index()`` a frame
            whose users or items are in its index.
        user, item, rating, timestamp:
            The columns' labels (or 0-based positions). By default they are recognised by name, as
            in a file (``userId``, ``movieId``, ``rating``, ``timestamp``...), or by position (user,
            item[, rating[, timestamp]]) in a frame whose labels are all numbers. Without a rating
            column the data is implicit (``ratings`` is ``None``).
        items:
            An optional frame of item descriptions (see :func:`~mtrec.data.frames.read_items_frame`).
        rating_scale:
            ``(lowest, highest)`` rating allowed; a rating outside it is an error. By default the
            lowest and highest rating in the frame.
        name:
            What the data and the messages are called; by default the frame's kind (``pandas DataFrame``).

        Raises
        ------
        DataError
            Naming the frame, the row (from 1) and the column: a missing or unknown column, a
            column of the wrong type (ids that are neither integers nor text, ratings that are not
            numbers, times that are not times), a missing id, rating or time, an id holding a
            control character, a rating outside ``rating_scale``, an empty frame; or the kind of a
            ``frame`` that is not a table.

        Examples
        --------
        >>> import pandas as pd
        >>> ratings = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [4.0, 3.5, 5.0]})
        >>> data = Interactions.from_frame(ratings)
        >>> data.num_users, data.num_items, data.rating_scale
        (2, 2, (3.5, 5.0))
        """
        if rating_scale is not None:
            check_rating_scale(rating_scale)
        wanted = {"user": user, "item": item, "rating": rating, "time": timestamp}
        return cls._read_frame(frame, wanted, items, rating_scale, name)

    @classmethod
    def _read_frame(
        cls, frame: Any, wanted: dict[str, Column | None], items: Any, rating_scale: tuple[float, float] | None, name: str | None
    ) -> Interactions:
        """:meth:`from_frame` once its arguments are checked: ``wanted`` maps each role to its column."""
        source, table, roles = frame_table(frame, wanted, required=("user", "item"), name=name)
        # Read before the ratings, so that a mistake in the items frame is named before a long read.
        item_descriptions = None if items is None else read_items_frame(items)
        data = cls(**interaction_fields(source, frame_columns(source, table, roles), rating_scale=rating_scale, name=source))
        if item_descriptions is not None:
            data.item_metadata = align_metadata(data.item_ids, item_descriptions)
        return data

    def __len__(self) -> int:
        return len(self.users)

    @property
    def has_ratings(self) -> bool:
        return self.ratings is not None

    def subset(self, index: np.ndarray) -> Interactions:
        """The interactions at ``index`` (positions or a boolean mask), with the same id maps."""
        return replace(
            self,
            users=self.users[index],
            items=self.items[index],
            ratings=None if self.ratings is None else self.ratings[index],
            timestamps=None if self.timestamps is None else self.timestamps[index],
        )

    def joined(self, other: Interactions) -> Interactions:
        """These interactions and ``other``'s (the same id maps: :func:`check_same_ids`), in that order:
        a training part and its validation set made one training set again."""
        check_same_ids(self, other)
        both = lambda a, b: None if a is None or b is None else np.concatenate([a, b])  # noqa: E731
        return replace(
            self,
            users=np.concatenate([self.users, other.users]),
            items=np.concatenate([self.items, other.items]),
            ratings=both(self.ratings, other.ratings),
            timestamps=both(self.timestamps, other.timestamps),
        )

    def user_index(self, raw_id: Any) -> int:
        """The index of the user the data calls ``raw_id``; ``KeyError`` if unknown."""
        if self._user_lookup is None:
            self._user_lookup = build_lookup(self.user_ids)
        return lookup_id(self._user_lookup, raw_id)

    def item_index(self, raw_id: Any) -> int:
        """The index of the item the data calls ``raw_id``; ``KeyError`` if unknown."""
        if self._item_lookup is None:
            self._item_lookup = build_lookup(self.item_ids)
        return lookup_id(self._item_lookup, raw_id)

    def seen_items_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's items as CSR arrays ``(indptr, indices)``, items sorted within a user."""
        order = np.lexsort((self.items, self.users))
        counts = np.bincount(self.users, minlength=self.num_users)
        indptr = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, self.items[order].astype(np.int64)


#: The keywords of :meth:`Interactions.from_frame` that name a column.
COLUMN_KEYWORDS = ("user", "item", "rating", "timestamp")


def as_interactions(data: Interactions | Any, columns: Mapping[str, Column] | None = None) -> Interactions:
    """``data`` if it is :class:`Interactions`, else the frame read by :meth:`Interactions.from_frame`
    with ``columns`` (``{"user": "customer", "rating": "stars"}``) naming its columns.

    Raises
    ------
    ConfigError
        For ``columns`` with a key that is not one of :data:`COLUMN_KEYWORDS`, or given with data
        that is not a frame.
    DataError
        For a frame that cannot be read, as :meth:`Interactions.from_frame`.
    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(COLUMN_KEYWORDS))
    if unknown:
        raise ConfigError(f"unknown column role {', '.join(map(repr, unknown))}; the roles are {', '.join(COLUMN_KEYWORDS)}")
    if isinstance(data, Interactions):
        if columns:
            raise ConfigError("columns= names the columns of a frame, but the data is already Interactions")
        return data
    return Interactions.from_frame(data, **columns)


def _owned(array: Any, dtype: type) -> np.ndarray:
    """``array`` as a contiguous, writable array of ``dtype`` (Arrow's zero-copy views are read-only,
    and PyTorch warns about tensors made from them)."""
    array = np.ascontiguousarray(array, dtype=dtype)
    return array if array.flags.writeable else array.copy()


def same_id_maps(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` (data sets, or a fitted model's description of its data) index users
    and items the same way."""
    same = (a.num_users, a.num_items) == (b.num_users, b.num_items)
    return same and np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.item_ids, b.item_ids)


def check_same_ids(a: Interactions, b: Interactions) -> None:
    """Raise :class:`DataError` unless ``a`` and ``b`` index users and items the same way."""
    if not same_id_maps(a, b):
        raise DataError(f"{a.name or 'the data'} and {b.name or 'the test data'} use different id maps: split one Interactions so both share it")


def build_lookup(ids: np.ndarray) -> dict:
    """A dict from raw id (and its string form) to index."""
    lookup: dict = {}
    for index, raw in enumerate(ids.tolist()):
        lookup[raw] = index
        lookup.setdefault(str(raw), index)
    return lookup


def lookup_id(lookup: dict, raw_id: Any) -> int:
    if raw_id in lookup:
        return lookup[raw_id]
    text = str(raw_id).strip()
    if text in lookup:
        return lookup[text]
    raise KeyError(raw_id)
