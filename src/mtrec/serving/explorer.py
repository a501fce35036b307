"""What the web explorer asks of a model besides recommendations: a user's rated items, a search of
the catalogue's titles, and the distribution of an item's predicted ratings over all users.

The page itself (``web/``: plain HTML, CSS and JavaScript, no build step) is served by
:mod:`mtrec.serving.http` at ``/``; it calls these through the service's JSON endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtrec.errors import ConfigError, UnknownUserError
from mtrec.serving.recommender import Recommender
from mtrec.serving.results import RankedItem, ScoredItem

#: The explorer's page and its script and style, shipped inside the package.
WEB_DIR = Path(__file__).parent / "web"
#: Users whose predicted ratings of one item are computed at once (bounds the rating head's activations).
USER_CHUNK = 1 << 16
#: Most histogram bins a rating distribution may have.
MAX_BINS = 100


@dataclass
class RatedItem(ScoredItem):
    """An item the user rated in training: their rating (``given``, None if not known) and the model's."""

    given: float | None


@dataclass
class History:
    """A user's rated training items, best first; ``num_rated`` counts all of them, filters aside."""

    user: int | str
    num_rated: int
    ratings_known: bool
    items: list[RatedItem]


@dataclass
class ItemMatches:
    """Catalogue items whose title holds ``query``: prefix matches first, then the most-rated."""

    query: str
    items: list[RankedItem]


@dataclass
class RatingDistribution:
    """The predicted ratings (clipped to the scale) of one item over all ``users``: a histogram."""

    item: int | str
    title: str | None
    users: int
    mean: float
    edges: list[float]
    counts: list[int]


class Explorer:
    """The explorer's queries on one :class:`~mtrec.serving.recommender.Recommender`; as thread-safe as it is.

    Parameters
    ----------
    recommender:
        The served model.
    """

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        self._data = recommender.model.data_
        self._catalogue = recommender.catalogue
        self._lowered = pa.array([(title or "").lower() for title in self._catalogue.titles], type=pa.string())

    def history(self, user: Any, k: int, genres: Iterable[str] = ()) -> History:
        """The ``k`` best of the items ``user`` rated in training (of one of ``genres``, if given).

        Best first: by the user's own rating, then by the model's (the rating head's, or the watch
        score's where the model learned no ratings). Each row holds what a recommendation holds (watch
        score, predicted rating, popularity) and the user's rating. An unknown user is an
        :class:`UnknownUserError`, an unknown genre a :class:`ConfigError`.
        """
        recommender, catalogue = self.recommender, self._catalogue
        index = recommender.user_index(user)
        if index is None:
            raise UnknownUserError(f"unknown user {user!r}: the model was not trained on their ratings")
        start, stop = int(self._data.seen_indptr[index]), int(self._data.seen_indptr[index + 1])
        rated = self._data.seen_indices[start:stop]
        ratings = self._data.seen_ratings
        given = np.full(len(rated), np.nan) if ratings is None else ratings[start:stop].astype(np.float64)
        allowed = recommender.allowed(genres=genres)
        if allowed is not None:
            keep = allowed.cpu().numpy()[rated]
            rated, given = rated[keep], given[keep]
        items = torch.as_tensor(rated, dtype=torch.long, device=recommender.device)
        users = torch.full_like(items, index)
        head = recommender.network.rating if recommender.has_ratings else recommender.network.watch_score
        with torch.inference_mode():
            theirs_then_models = (-head(users, items).cpu().numpy(), -np.nan_to_num(given, nan=-np.inf))
        best = np.lexsort(theirs_then_models)[:k]
        predictions = recommender.predict([(catalogue.user_ids[index], catalogue.item_ids[i]) for i in rated[best].tolist()])
        rows = [
            RatedItem(
                **_fields(self._ranked(rank, int(rated[b]))),
                watch_score=prediction.watch_score,
                p=prediction.p,
                rating=prediction.rating,
                rating_raw=prediction.rating_raw,
                given=None if np.isnan(given[b]) else float(given[b]),
            )
            for rank, (b, prediction) in enumerate(zip(best.tolist(), predictions), start=1)
        ]
        return History(catalogue.user_ids[index], stop - start, ratings is not None, rows)

    def search(self, query: str, k: int) -> ItemMatches:
        """Up to ``k`` items whose title holds ``query`` (case-insensitive), titles that begin with it
        first, then the most-rated; an item whose raw id ``query`` is comes before them all."""
        text = query.strip()
        found = np.zeros(0, dtype=np.int64)
        if text:
            found = np.flatnonzero(pc.match_substring(self._lowered, text.lower()).to_numpy(zero_copy_only=False))
            prefix = pc.starts_with(self._lowered.take(found), text.lower()).to_numpy(zero_copy_only=False)
            found = found[np.lexsort((-self._catalogue.popularity[found], ~prefix))]
        exact = [index for index in [self._catalogue.item_by_id(text)] if index is not None]
        ordered = [*exact, *(i for i in found[:k].tolist() if i not in exact)][:k]
        return ItemMatches(query=query, items=[self._ranked(rank, i) for rank, i in enumerate(ordered, start=1)])

    def rating_distribution(self, item: Any, bins: int) -> RatingDistribution:
        """A histogram, in ``bins`` equal bins over the rating scale, of ``item``'s predicted rating for
        every user: one batched pass of the rating head. A :class:`ConfigError` if the model has none."""
        recommender = self.recommender
        if not recommender.has_ratings:
            raise ConfigError("this model did not learn ratings, so it predicts none")
        if not 2 <= bins <= MAX_BINS:
            raise ConfigError(f"bins must be 2 to {MAX_BINS}, got {bins}")
        index = recommender.item_index(item)
        users = torch.arange(self._data.num_users, device=recommender.device)
        with torch.inference_mode():
            predicted = torch.cat([recommender.network.rating(chunk, torch.full_like(chunk, index)) for chunk in users.split(USER_CHUNK)])
        low, high = recommender.rating_scale or (float(predicted.min()), max(float(predicted.max()), float(predicted.min()) + 1.0))
        predicted = predicted.float().clamp(low, high)
        counts = torch.histc(predicted, bins=bins, min=low, max=high)
        return RatingDistribution(
            item=self._catalogue.item_ids[index],
            title=self._catalogue.titles[index],
            users=len(users),
            mean=float(predicted.mean()),
            edges=np.linspace(low, high, bins + 1).tolist(),
            counts=[int(c) for c in counts.tolist()],
        )

    def _ranked(self, rank: int, index: int) -> RankedItem:
        return RankedItem(rank=rank, **self._catalogue.describe(index))


def _fields(row: RankedItem) -> dict[str, Any]:
    """A row's fields, shallowly (``dataclasses.asdict`` would copy its genres)."""
    return {field.name: getattr(row, field.name) for field in fields(row)}
