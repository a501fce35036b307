"""What a :class:`~mtrec.serving.recommender.Recommender` answers: ranked, scored and similar items,
predictions, and the check of a request's ``k``. The numbers are explained in
:mod:`mtrec.serving.recommender`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtrec.errors import ConfigError


@dataclass
class RankedItem:
    """An item at a rank of a list: its raw id, what the data says of it, and its training ratings."""

    rank: int
    item: int | str
    title: str | None
    year: int | None
    genres: list[str]
    num_ratings: int


@dataclass
class ScoredItem(RankedItem):
    """One item of a ranking and what the model predicts for the user (``None``: not known)."""

    watch_score: float | None
    p: float | None
    rating: float | None
    rating_raw: float | None


@dataclass
class Recommendations:
    """The top items for one user; ``cold_start`` when the user is unknown and these are the most-rated."""

    user: int | str | None
    cold_start: bool
    exclude_seen: bool
    items: list[ScoredItem]


@dataclass
class Prediction:
    """What the model predicts for one (user, item) pair."""

    user: int | str
    item: int | str
    title: str | None
    watch_score: float
    p: float
    rating: float | None
    rating_raw: float | None


@dataclass
class SimilarItem(RankedItem):
    """An item near another in the factorisation head's item space."""

    similarity: float


@dataclass
class SimilarItems:
    """The nearest items to ``item`` by cosine similarity."""

    item: int | str
    title: str | None
    items: list[SimilarItem]


def check_k(k: int) -> int:
    """``k`` if it is a positive whole number, else a :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive whole number, got {k!r}")
    return int(k)
