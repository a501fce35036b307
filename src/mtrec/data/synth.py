"""Synthetic ratings with a planted low-rank structure, shaped like MovieLens 25M by default.

Who interacts with what follows latent taste clusters and a long-tailed item popularity;
the ratings follow a low-rank model plus noise. A model that learns scores far above chance
on it, so it measures learning at scales where no real data ships with the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError

ML25M_SHAPE = {"num_ratings": 25_000_095, "num_users": 162_541, "num_items": 59_047}


def synthetic_interactions(
    num_ratings: int = ML25M_SHAPE["num_ratings"],
    num_users: int = ML25M_SHAPE["num_users"],
    num_items: int = ML25M_SHAPE["num_items"],
    rank: int = 8,
    clusters: int = 32,
    in_cluster: float = 0.7,
    seed: int = 0,
) -> Interactions:
    """Draw ``num_ratings`` distinct (user, item, rating, time) rows.

    Parameters
    ----------
    num_ratings, num_users, num_items:
        The shape; the default is ML-25M's. Every user and item index may occur.
    rank:
        Rank of the latent factors behind the ratings.
    clusters:
        Taste clusters: a user picks items of its own cluster with probability ``in_cluster``
        and by global popularity otherwise, which plants the structure that MRR measures.
    seed:
        The same seed gives the same data.

    Notes
    -----
    Ratings are on MovieLens' half-star scale, 0.5 to 5.
    """
    _check_shape(num_ratings, num_users, num_items, in_cluster)
    rng = np.random.default_rng(seed)
    users, items = _draw_pairs(rng, num_ratings, num_users, num_items, clusters, in_cluster)
    ratings = _draw_ratings(rng, users, items, num_users, num_items, rank)
    # Times are independent of who rated what, so a temporal split cuts across all users.
    timestamps = rng.integers(789_652_009, 1_574_327_703, num_ratings)
    return Interactions(
        users=users,
        items=items,
        ratings=ratings,
        timestamps=timestamps,
        num_users=num_users,
        num_items=num_items,
        user_ids=np.arange(1, num_users + 1, dtype=np.int64),
        item_ids=np.arange(1, num_items + 1, dtype=np.int64),
        rating_scale=(0.5, 5.0),
        name=f"synthetic-{num_ratings}",
    )


def _check_shape(num_ratings: int, num_users: int, num_items: int, in_cluster: float) -> None:
    """Raise :class:`ConfigError` for a shape that is empty or too dense, or ``in_cluster`` outside [0, 1]."""
    if num_ratings <= 0 or num_users <= 0 or num_items <= 0:
        raise ConfigError("num_ratings, num_users and num_items must be positive")
    if num_ratings > num_users * num_items // 2:
        raise ConfigError(f"{num_ratings} ratings do not fit sparsely in {num_users} x {num_items}")
    if not 0.0 <= in_cluster <= 1.0:
        raise ConfigError(f"in_cluster must be in [0, 1], got {in_cluster}")


@dataclass(frozen=True)
class _Catalogue:
    """Items in taste clusters with a long-tailed popularity, laid out for inverse-CDF draws."""

    #: Item indices sorted by cluster.
    by_cluster: np.ndarray
    #: Where each cluster starts in ``by_cluster`` (and, last, its length).
    cluster_start: np.ndarray
    #: Cumulative popularity along ``by_cluster``: one running sum per cluster's stretch.
    cumulative: np.ndarray
    #: Cumulative popularity in item order.
    global_cumulative: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, num_items: int, clusters: int) -> _Catalogue:
        """Each item's cluster, uniformly, and a Zipf-like popularity shuffled over the items."""
        item_cluster = rng.integers(0, clusters, num_items)
        popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8  # Zipf-like long tail
        rng.shuffle(popularity)
        by_cluster = np.argsort(item_cluster, kind="stable")
        cluster_start = np.searchsorted(item_cluster[by_cluster], np.arange(clusters + 1))
        return cls(by_cluster, cluster_start, np.cumsum(popularity[by_cluster]), np.cumsum(popularity))

    def pick(self, rng: np.random.Generator, users: np.ndarray, user_cluster: np.ndarray, in_cluster: float) -> np.ndarray:
        """An item for each of ``users``: by popularity within the user's cluster with probability
        ``in_cluster``, by global popularity otherwise."""
        num_items = len(self.global_cumulative)
        pick = np.empty(len(users), dtype=np.int64)
        own = rng.random(len(users)) < in_cluster
        c = user_cluster[users[own]]
        lo = np.where(self.cluster_start[c] > 0, self.cumulative[self.cluster_start[c] - 1], 0.0)
        hi = self.cumulative[np.maximum(self.cluster_start[c + 1] - 1, 0)]
        pos = np.searchsorted(self.cumulative, lo + rng.random(len(c)) * (hi - lo), side="right")
        pick[own] = self.by_cluster[np.minimum(pos, num_items - 1)]
        pick[~own] = np.minimum(
            np.searchsorted(self.global_cumulative, rng.random((~own).sum()) * self.global_cumulative[-1], side="right"),
            num_items - 1,
        )
        return pick


#: Rounds of draws without a new distinct pair before the shape is declared impossible.
STALLED_ROUNDS = 50


def _draw_pairs(
    rng: np.random.Generator, num_ratings: int, num_users: int, num_items: int, clusters: int, in_cluster: float
) -> tuple[np.ndarray, np.ndarray]:
    """``num_ratings`` distinct (user, item) pairs (int32, sorted by user then item): users drawn by a
    log-normal activity, each picking items from a :class:`_Catalogue`, until enough pairs are distinct."""
    user_cluster = rng.integers(0, clusters, num_users)
    catalogue = _Catalogue.draw(rng, num_items, clusters)
    activity = rng.lognormal(0.0, 1.0, num_users)
    users = np.empty(0, dtype=np.int64)
    items = np.empty(0, dtype=np.int64)
    stalled = 0
    while len(users) < num_ratings:
        draw = int((num_ratings - len(users)) * 1.1) + 16
        u = rng.choice(num_users, size=draw, p=activity / activity.sum())
        pick = catalogue.pick(rng, u, user_cluster, in_cluster)
        codes = _sorted_unique(np.concatenate([users * num_items + items, u * num_items + pick]))
        stalled = stalled + 1 if len(codes) == len(users) else 0
        if stalled == STALLED_ROUNDS:
            raise ConfigError(
                f"{num_ratings} distinct pairs cannot be drawn: {len(codes)} were found and {STALLED_ROUNDS} more rounds found no "
                f"new one (the clusters are too small for in_cluster={in_cluster}); lower num_ratings or in_cluster, or use more items"
            )
        users, items = np.divmod(codes, num_items)
    keep = np.sort(rng.choice(len(users), size=num_ratings, replace=False))
    return users[keep].astype(np.int32), items[keep].astype(np.int32)


def _draw_ratings(rng: np.random.Generator, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, rank: int) -> np.ndarray:
    """A rating of each (user, item) pair: a rank-``rank`` affinity plus user and item biases and
    noise around 3.5, rounded to half stars in [0.5, 5]; drawn in chunks to bound the memory."""
    user_factors = rng.normal(0.0, 1.0 / np.sqrt(rank), (num_users, rank)).astype(np.float32)
    item_factors = rng.normal(0.0, 1.0 / np.sqrt(rank), (num_items, rank)).astype(np.float32)
    user_bias = rng.normal(0.0, 0.4, num_users).astype(np.float32)
    item_bias = rng.normal(0.0, 0.4, num_items).astype(np.float32)
    ratings = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), 2**22):
        u, i = users[start : start + 2**22], items[start : start + 2**22]
        affinity = np.einsum("ij,ij->i", user_factors[u], item_factors[i])
        raw = 3.5 + user_bias[u] + item_bias[i] + affinity + rng.normal(0.0, 0.5, len(u)).astype(np.float32)
        ratings[start : start + len(u)] = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
    return ratings


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting: some NumPy releases hash int64 keys in np.unique,
    which took minutes on these 25 million codes where a sort takes seconds."""
    values.sort()
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]
