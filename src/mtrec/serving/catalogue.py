"""The users and items of a model as its data names them: raw ids and indices, titles, genres, what
each user rated in training, and the filters a request puts on a list.

An item is named by its raw id or, failing that, by its title, case-insensitively: the exact title
("Star Wars (1977)") or the title without its year ("star wars"). A title shared by several items
raises :class:`~mtrec.errors.AmbiguousItemError` listing them.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtrec.data.interactions import build_lookup, lookup_id
from mtrec.errors import AmbiguousItemError, ConfigError, UnknownItemError, UnknownUserError
from mtrec.io.fitted import FittedData

_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def _title_index(titles: list[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Item indices by lower-cased title, and by lower-cased title without its year."""
    exact: dict[str, list[int]] = {}
    bare: dict[str, list[int]] = {}
    for index, title in enumerate(titles):
        key = title.strip().lower()
        exact.setdefault(key, []).append(index)
        bare.setdefault(_YEAR.sub("", key), []).append(index)
    return exact, bare


def unknown_user(user: Any, where: str) -> UnknownUserError:
    """The error for a user the model was not trained on, ``where`` saying where they were named."""
    return UnknownUserError(
        f"unknown user {user!r}{where}: the model has no vector for a user it was not trained on, "
        "so it cannot score them (recommendations fall back to popular items)"
    )


class Catalogue:
    """A fitted model's users and items: ids, names, seen items and popularity, on ``device``.

    Parameters
    ----------
    data:
        The model's :class:`~mtrec.io.fitted.FittedData` (id maps, item metadata, training items).
    device:
        Where the masks and index tensors it gives live.
    """

    def __init__(self, data: FittedData, device: torch.device | str) -> None:
        self.device = device
        self.num_items = data.num_items
        self.user_ids = data.user_ids.tolist()
        self.item_ids = data.item_ids.tolist()
        self._user_lookup = build_lookup(data.user_ids)
        self._item_lookup = build_lookup(data.item_ids)
        metadata = data.item_metadata
        self.titles = metadata.titles if metadata else [None] * data.num_items
        self.years = metadata.years if metadata else [None] * data.num_items
        self.item_genres = metadata.genres if metadata else [[] for _ in range(data.num_items)]
        self._exact_titles, self._bare_titles = _title_index(metadata.titles) if metadata else ({}, {})
        self.seen_indptr = data.seen_indptr.tolist()
        self.seen_indices = torch.as_tensor(data.seen_indices, dtype=torch.long, device=device)
        #: Per item, its training ratings (or interactions).
        self.popularity = np.bincount(data.seen_indices, minlength=data.num_items)
        self.num_ratings = self.popularity.tolist()
        #: Per user, whether the model can rank for them: they trained (have training pairs), or the
        #: model reads users' attributes. A user held out of training (a cold-users split) by an
        #: id-only model has only an untrained row: they get the cold-start list instead.
        self.rankable = np.diff(np.asarray(data.seen_indptr)) > 0
        if "users" in getattr(data, "features", {}):
            self.rankable[:] = True

    def user_index(self, user: Any) -> int | None:
        """The index of the user the data calls ``user``; ``None`` if the model never saw them."""
        try:
            return lookup_id(self._user_lookup, user)
        except KeyError:
            return None

    def ranked_user_index(self, user: Any) -> int | None:
        """The index of ``user`` if the model can rank for them (:attr:`rankable`), else None (cold start)."""
        index = self.user_index(user)
        return index if index is not None and self.rankable[index] else None

    def known_user(self, user: Any, where: str = "") -> int:
        """The index of ``user``; :class:`UnknownUserError` (saying ``where``) if the model never saw them."""
        index = self.user_index(user)
        if index is None:
            raise unknown_user(user, where)
        return index

    def item_by_id(self, item: Any) -> int | None:
        """The index of the item whose raw id is ``item`` (titles aside); None if there is none."""
        try:
            return lookup_id(self._item_lookup, item)
        except KeyError:
            return None

    def item_index(self, item: Any, where: str = "") -> int:
        """The index of the item named by raw id or title (see the module); ``where`` completes an error."""
        index = self.item_by_id(item)
        if index is not None:
            return index
        key = str(item).strip().lower()
        matches = self._exact_titles.get(key) or self._bare_titles.get(key) or []
        if len(matches) == 1:
            return matches[0]
        if matches:
            candidates = [(self.item_ids[i], self.titles[i]) for i in matches]
            listed = "; ".join(f"{raw} {title!r}" for raw, title in candidates)
            raise AmbiguousItemError(f"{item!r}{where} names {len(matches)} items; use an item id: {listed}", candidates)
        raise UnknownItemError(f"unknown item {item!r}{where}: not an item id or title the model was trained on")

    def item_indices(self, items: Iterable[Any], what: str) -> torch.Tensor:
        """The indices of ``items`` (ids or titles), an error naming ``what`` list held an unknown one."""
        indices = [self.item_index(item, f" (in {what})") for item in items]
        return torch.tensor(indices, dtype=torch.long, device=self.device)

    def pair_indices(self, pairs: list[tuple[Any, Any]]) -> tuple[list[int], list[int]]:
        """User and item indices of raw-id pairs; errors name the pair when there are several."""
        users, items = [], []
        for position, (user, item) in enumerate(pairs, start=1):
            where = f" (pair {position} of {len(pairs)})" if len(pairs) > 1 else ""
            users.append(self.known_user(user, where))
            items.append(self.item_index(item, where))
        return users, items

    def seen(self, index: int) -> torch.Tensor:
        """The items user ``index`` rated in training (distinct indices)."""
        return self.seen_indices[self.seen_indptr[index] : self.seen_indptr[index + 1]]

    def allowed(self, exclude: Iterable[Any] = (), include: Iterable[Any] | None = None, genres: Iterable[str] = ()) -> torch.Tensor | None:
        """The items a recommendation may hold: not in ``exclude``, in ``include`` (a candidate set)
        if given, and of one of ``genres`` if given; None when nothing is filtered.

        Items are named by raw id or title; an unknown one is an :class:`UnknownItemError`, an
        unknown genre a :class:`ConfigError` listing the genres the data has.
        """
        exclude, genres = list(exclude), list(genres)
        if not exclude and include is None and not genres:
            return None
        mask = torch.ones(self.num_items, dtype=torch.bool, device=self.device)
        if include is not None:
            mask[:] = False
            mask[self.item_indices(include, "include")] = True
        if exclude:
            mask[self.item_indices(exclude, "exclude")] = False
        if genres:
            known = self.genres
            unknown = [g for g in genres if g not in known]
            if unknown:
                listed = ", ".join(sorted(known)) or "none: the model's data has no genres"
                raise ConfigError(f"unknown genre {', '.join(map(repr, unknown))}; the genres are {listed}")
            mask &= torch.stack([known[g] for g in genres]).any(0)
        return mask

    @functools.cached_property
    def genres(self) -> dict[str, torch.Tensor]:
        """Per genre, which items have it."""
        found: dict[str, list[int]] = {}
        for index, names in enumerate(self.item_genres):
            for name in names:
                found.setdefault(name, []).append(index)
        masks = {}
        for name, indices in found.items():
            mask = torch.zeros(self.num_items, dtype=torch.bool, device=self.device)
            mask[torch.tensor(indices, device=self.device)] = True
            masks[name] = mask
        return masks

    def describe(self, index: int) -> dict[str, Any]:
        """What a list shows of item ``index`` besides its rank and scores."""
        return {
            "item": self.item_ids[index],
            "title": self.titles[index],
            "year": self.years[index],
            "genres": self.item_genres[index],
            "num_ratings": self.num_ratings[index],
        }

    @functools.cached_property
    def user_array(self) -> pa.Array:
        """The raw user ids as text, by index (what batch tables hold)."""
        return pa.array([str(u) for u in self.user_ids])

    @functools.cached_property
    def item_array(self) -> pa.Array:
        """The raw item ids as text, by index."""
        return pa.array([str(i) for i in self.item_ids])

    @functools.cached_property
    def title_array(self) -> pa.Array:
        """The titles by index (null where the data has none)."""
        return pa.array(self.titles, type=pa.string())

    def frame_indices(self, source: str, column: pa.ChunkedArray, role: str, name: str) -> np.ndarray:
        """The indices of a frame's checked ``user`` or ``item`` id column, found all at once by their
        text; the few ids not found are looked up one by one (an item may be a title), or raise."""
        known, resolve = (self.user_array, self.known_user) if role == "user" else (self.item_array, self.item_index)
        found = pc.index_in(column.cast(pa.string()), value_set=known)
        indices = found.to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(found.is_null().to_numpy(zero_copy_only=False)).tolist():
            indices[row] = resolve(column[row].as_py(), f" ({source}, row {row + 1}, column {name!r})")
        return indices.astype(np.int64)
