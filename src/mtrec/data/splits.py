"""Seeded train/test splits of an :class:`~mtrec.data.interactions.Interactions`.

Every split keeps the full id maps in both parts, so an index means the same user or item
in train and test. Both parts keep the original order of the interactions.

Cold start: a test row whose user or item never occurs in train is *kept*, not dropped; it
is evaluated with the model's untrained initial parameters for that user or item, like any
other row. :func:`cold_start_counts` reports how many such rows a split has.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mtrec.data.datasets import load_canonical_split
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, DataError


def check_fraction(name: str, value: float) -> float:
    """``value`` if it lies strictly between 0 and 1, else a :class:`ConfigError`."""
    if not (0.0 < float(value) < 1.0):
        raise ConfigError(f"{name} must be in (0, 1), got {value}")
    return float(value)


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {value}")
    return int(value)


def _split_at(data: Interactions, test_mask: np.ndarray, why: str = "") -> tuple[Interactions, Interactions]:
    detail = f" ({why})" if why else ""
    if test_mask.all():
        raise DataError(f"the split leaves the train set empty{detail}")
    if not test_mask.any():
        raise DataError(f"the split leaves the test set empty{detail}")
    return data.subset(~test_mask), data.subset(test_mask)


def _one_of(**options) -> str:
    """The name of the single option that is set; a :class:`ConfigError` unless exactly one is."""
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise ConfigError(f"give exactly one of {names}; got {', '.join(given) or 'none'}")
    return given[0]


def random_split(data: Interactions, test_fraction: float = 0.05, seed: int | Sequence[int] = 0) -> tuple[Interactions, Interactions]:
    """Hold out ``round(test_fraction * len(data))`` interactions drawn uniformly at random.

    The assignment's protocol. Both parts keep their original order and the full id maps.

    Parameters
    ----------
    data:
        The interactions to split.
    test_fraction:
        Share of the interactions held out, in (0, 1).
    seed:
        Seeds the draw (an integer, or a sequence of them): the same seed gives the same split.
    """
    check_fraction("test_fraction", test_fraction)
    n = len(data)
    n_test = int(round(n * test_fraction))
    test_mask = np.zeros(n, dtype=bool)
    test_mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return _split_at(data, test_mask)


#: The cold-start splits: a share of the items, or of the users, held out of training entirely.
COLD_SPLITS = ("cold-items", "cold-users")
#: The share of items (users) a cold split holds out by default.
DEFAULT_COLD_FRACTION = 0.1


def cold_split(
    data: Interactions, side: str, cold_fraction: float = DEFAULT_COLD_FRACTION, test_fraction: float = 0.05, seed: int | Sequence[int] = 0
) -> tuple[Interactions, Interactions]:
    """Hold out a seeded share of the items (``side="items"``) or users (``"users"``) entirely, and a
    random share of the other pairs: the test set has cold pairs, whose item (user) never occurs in
    training, and warm ones.

    Parameters
    ----------
    cold_fraction:
        Share of the items (users) that occur in ``data`` held out with all their pairs, in (0, 1).
    test_fraction:
        Share of the remaining pairs held out at random, as :func:`random_split` does, in (0, 1).
    seed:
        Seeds both draws.
    """
    check_fraction("cold_fraction", cold_fraction)
    check_fraction("test_fraction", test_fraction)
    if side not in ("items", "users"):
        raise ConfigError(f"a cold split holds out items or users, not {side!r}")
    rng = np.random.default_rng(seed)
    column = data.items if side == "items" else data.users
    present = np.flatnonzero(np.bincount(column, minlength=data.num_items if side == "items" else data.num_users))
    n_cold = int(round(len(present) * cold_fraction))
    if n_cold < 1 or n_cold >= len(present):
        raise DataError(
            f"cold_fraction {cold_fraction:g} of the data's {len(present):,} {side} holds out {n_cold}: give a share that leaves some on each side"
        )
    cold = np.zeros(column.max() + 1, dtype=bool)
    cold[rng.permutation(present)[:n_cold]] = True
    test_mask = cold[column]
    warm = np.flatnonzero(~test_mask)
    test_mask[warm[rng.permutation(len(warm))[: int(round(len(warm) * test_fraction))]]] = True
    return _split_at(data, test_mask, f"{side} held out")


def _rank_within_user(users: np.ndarray, sort_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's 0-based rank within its user when ordered by ``sort_key`` descending, and counts.

    Ties in ``sort_key`` go to the later row (it ranks first).
    """
    n = len(users)
    order = np.lexsort((sort_key, users))  # stable: equal keys keep file order
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    sorted_users = users[order]
    # Ascending position within the user, turned into rank from the end (largest key = 0).
    position = np.arange(n) - starts[sorted_users]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = counts[sorted_users] - 1 - position
    return rank, counts


def user_split(
    data: Interactions,
    test_fraction: float | None = None,
    leave_k: int | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[Interactions, Interactions]:
    """Hold out, for each user, ``leave_k`` random interactions or ``test_fraction`` of them.

    Every user in the test set keeps at least one interaction in train: a user with
    ``leave_k`` or fewer interactions (or for whom the fraction rounds to none) stays
    entirely in train.

    Parameters
    ----------
    data:
        The interactions to split.
    test_fraction:
        Share of each user's interactions held out (rounded, at most all but one), in (0, 1).
    leave_k:
        Number of interactions held out per user. Give this or ``test_fraction``.
    seed:
        Seeds the draw (an integer, or a sequence of them): the same seed gives the same split.
    """
    option = _one_of(test_fraction=test_fraction, leave_k=leave_k)
    rank, counts = _rank_within_user(data.users, np.random.default_rng(seed).random(len(data)))
    if option == "leave_k":
        per_user = np.where(counts > _check_positive("leave_k", leave_k), leave_k, 0)
        why = f"every user has {leave_k} or fewer interactions"
    else:
        fraction = check_fraction("test_fraction", test_fraction)
        per_user = np.minimum(np.round(fraction * counts), counts - 1)
        why = f"test_fraction {fraction:g} rounds to no interaction for every user"
    return _split_at(data, rank < per_user[data.users], why)


def _to_seconds(cutoff: int | float | str) -> int:
    """Seconds since 1970 from a number, a string of digits, or an ISO date such as 1998-03-01."""
    if isinstance(cutoff, str):
        try:
            # A plain number first: NumPy reads a bare "893286638" as the year 893,286,638.
            return int(float(cutoff))
        except ValueError:
            pass
        try:
            return int(np.datetime64(cutoff, "s").astype(np.int64))
        except ValueError:
            raise ConfigError(f"cutoff must be seconds since 1970 or an ISO date, got {cutoff!r}") from None
    return int(cutoff)


def temporal_split(
    data: Interactions,
    cutoff: int | float | str | None = None,
    last_k: int | None = None,
    test_fraction: float | None = None,
) -> tuple[Interactions, Interactions]:
    """Hold out the future: everything from a time on, or each user's latest interactions.

    Parameters
    ----------
    data:
        The interactions to split; they must have timestamps.
    cutoff:
        Interactions at or after this time (seconds since 1970, or an ISO date such as
        ``"1998-03-01"``) are the test set; every training interaction is earlier.
    last_k:
        Each user's ``last_k`` latest interactions are the test set (ties go to the later
        row in the data); users with ``last_k`` or fewer interactions stay in train.
    test_fraction:
        The cutoff is the time that puts this share of the interactions, at least, in the
        test set (more where several share the cutoff time).

    Notes
    -----
    Give exactly one of ``cutoff``, ``last_k`` and ``test_fraction``.
    """
    if data.timestamps is None:
        raise DataError(f"a temporal split needs timestamps, and {data.name or 'the data'} has none")
    option = _one_of(cutoff=cutoff, last_k=last_k, test_fraction=test_fraction)
    times = data.timestamps
    if option == "last_k":
        rank, counts = _rank_within_user(data.users, times)
        k = _check_positive("last_k", last_k)
        return _split_at(data, (rank < k) & (counts[data.users] > k), f"every user has {k} or fewer interactions")
    if option == "test_fraction":
        fraction = check_fraction("test_fraction", test_fraction)
        n_test = max(1, int(round(fraction * len(data))))
        cutoff = int(np.partition(times, len(times) - n_test)[len(times) - n_test])
    seconds = _to_seconds(cutoff)
    span = f"cutoff {seconds} vs. times {int(times.min())}..{int(times.max())}"
    return _split_at(data, times >= seconds, span)


#: The canonical splits shipped with MovieLens 100K (``u1.base``/``u1.test``...).
CANONICAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


def canonical_split(name: str, data_dir: str | os.PathLike | None = None, progress: bool = False) -> tuple[Interactions, Interactions]:
    """One of MovieLens 100K's own splits: ``u1``..``u5`` (80%/20%) or ``ua``/``ub`` (10 per user).

    Train and test share one id map, built over the base and test files together.

    Parameters
    ----------
    name:
        ``u1``, ``u2``, ``u3``, ``u4``, ``u5``, ``ua`` or ``ub``.
    data_dir:
        Where releases live (downloaded there if missing); see
        :func:`mtrec.data.datasets.resolve_data_dir`.
    progress:
        Show a progress bar if the release has to be downloaded.

    Raises
    ------
    ConfigError
        For an unknown split name.
    DataError
        When a file read (``<name>.base``, ``<name>.test``, ``u.item``, ``u.genre``) is
        malformed, naming file and line, or differs from GroupLens's by its SHA-256.
    """
    if name not in CANONICAL_SPLITS:
        raise ConfigError(f"unknown canonical split {name!r}; known: {', '.join(CANONICAL_SPLITS)}")
    return load_canonical_split(name, data_dir, progress)


def cold_start_counts(train: Interactions, test: Interactions) -> dict[str, int]:
    """How much of the test set is cold: users, items and ratings never seen in train.

    Such rows are kept and evaluated with the model's untrained initial parameters (see the
    module docstring); these counts are reported beside the results.

    Returns
    -------
    dict
        ``test_users``, ``test_items``, ``test_ratings``: sizes of the test set;
        ``cold_users``, ``cold_items``: test users / items with no training interaction;
        ``cold_ratings``: test rows whose user or item is cold.
    """
    known_users = np.bincount(train.users, minlength=train.num_users) > 0
    known_items = np.bincount(train.items, minlength=train.num_items) > 0
    # bincount, not np.unique: the index range is known, and np.unique takes seconds at 25M rows.
    test_users = np.bincount(test.users, minlength=test.num_users) > 0
    test_items = np.bincount(test.items, minlength=test.num_items) > 0
    cold_rows = ~known_users[test.users] | ~known_items[test.items]
    return {
        "test_users": int(np.count_nonzero(test_users)),
        "test_items": int(np.count_nonzero(test_items)),
        "test_ratings": int(len(test)),
        "cold_users": int(np.count_nonzero(test_users & ~known_users)),
        "cold_items": int(np.count_nonzero(test_items & ~known_items)),
        "cold_ratings": int(np.count_nonzero(cold_rows)),
    }
