"""Ranks, top-k lists and percentiles of scores: the one place where they are counted.

Evaluation (:mod:`mtrec.eval.evaluation`), the :class:`~mtrec.serving.recommender.Recommender`
(one user, a fold-in, a batch of users, its Arrow and Parquet exports), the HTTP service built on
it and the HNSW candidate ranking (:mod:`mtrec.serving.retrieval`) all count with these functions,
so that a rank, a list and a percentile mean the same wherever they are shown.

rank, ties averaged
    The 1-based rank of a score ``v`` among a row of ``n`` scores: ``#greater + (#equal + 1) / 2``,
    ``v`` itself among the equal. A score tied with ``t`` others takes the mean of the ranks they
    share, so a rank can end in .5 (:func:`tied_ranks`).
top k
    The ``k`` highest scores of each row, best first, after the masked entries (a user's seen
    items, the items a filter refuses) are set to ``-inf``: they are never picked while another
    item is left, and a list past its last unmasked item holds ``-inf`` (:func:`top_k`).
at or above
    Per pick of a top-k list, how many of the row's scores are at least as high as it, the pick
    itself included (:func:`count_at_or_above`, :func:`ranked_top_k`). Masked entries are counted:
    they are still in the catalogue, only not recommended.
percentile
    The fraction of the other ``n - 1`` scores of the row strictly below ``v``:
    ``#below / (n - 1)`` in [0, 1], 1 for the row's best, 0 for its worst (:func:`percentile`).
    A recommendation's watch score is the percentile of its ``p`` among all the user's items'
    scores; from a count at or above ``a``, ``#below = n - a``.

Every count is an integer, so a batch of rows and the same rows one by one count the same.
"""

from __future__ import annotations

import numpy as np
import torch

#: The masked value: below every score, so never picked while an unmasked item is left.
MASKED = float("-inf")


def tied_ranks(scores: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The rank (1-based, ties averaged) of each ``values[i]`` among the scores of ``scores[rows[i]]``.

    ``#greater + (#equal + 1) / 2`` over the row's ``n`` entries: with ``values[i]`` in the row,
    its average rank among the items tied with it. Counted in one pass as ``Σ sign(s_j − v)``
    (``#greater − #less``), ``chunk`` values at a time (default all): each gathers a row of
    ``scores``. Masked entries (``-inf``) are below every value. Returns float32 ranks.
    """
    n = scores.shape[1]
    chunk = max(1, chunk or len(values))
    signs = torch.empty(len(values), dtype=torch.float32, device=scores.device)
    for start in range(0, len(values), chunk):
        diff = scores.index_select(0, rows[start : start + chunk])  # much faster than scores[rows]
        diff -= values[start : start + chunk, None]
        signs[start : start + len(diff)] = diff.sign_().sum(1)
    # #greater − #less, with #greater + #less + #equal = n, gives #greater + (#equal + 1) / 2.
    return (signs + (n + 1)) / 2


def count_below(rows: torch.Tensor, values: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Per ``i``, how many entries of ``rows[i]`` are strictly below ``values[i]`` (int64), compared
    ``chunk`` rows at a time (default all)."""
    chunk = max(1, chunk or len(values))
    below = [(rows[start : start + chunk] < values[start : start + chunk, None]).sum(1) for start in range(0, len(values), chunk)]
    return torch.cat(below) if below else torch.zeros(0, dtype=torch.long, device=values.device)


def percentile(below: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The percentile of scores that ``below`` others of their row of ``n`` are strictly below:
    ``below / (n − 1)`` (0 where ``n`` is 1), in ``dtype``."""
    return below.to(dtype) / max(n - 1, 1)


def masked(
    scores: torch.Tensor,
    seen: tuple[torch.Tensor, ...] | None = None,
    allowed: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``scores`` with the ``seen`` entries (a tuple of index tensors, one per dimension: ``(items,)``
    for one row, ``(rows, items)`` for several) and those ``allowed`` (a mask broadcast over the rows)
    refuses set to :data:`MASKED`; a copy unless ``inplace``."""
    if not inplace and (seen is not None or allowed is not None):
        scores = scores.clone()
    if seen is not None and len(seen[0]):
        scores[seen] = MASKED
    if allowed is not None:
        scores.masked_fill_(~allowed, MASKED)
    return scores


def top_k(
    scores: torch.Tensor,
    k: int,
    seen: tuple[torch.Tensor, ...] | None = None,
    allowed: torch.Tensor | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores of each row (the last dimension) and their indices, best first, the
    entries :func:`masked` masks left out (``-inf`` past the end of a short list)."""
    return torch.topk(masked(scores, seen, allowed, inplace), k, dim=-1)


def top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` largest of ``values`` (a NumPy vector), best first (tied values in the
    order of their indices among those picked)."""
    candidates = np.arange(len(values))
    if len(values) > k:
        candidates = np.argpartition(-values, k - 1)[:k]
    return candidates[np.argsort(-values[candidates], kind="stable")]


def count_at_or_above(
    picks: torch.Tensor,
    values: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per row of ``picks`` (shape ``(n, k)``, each row descending), per pick, how many values of the
    row are at least as high: int64, shape ``(n, k)``.

    The values are ``values`` (shape ``(n, m)``; those where ``counted`` is false left out) and the
    ``extra`` ones, given as ``(rows, values)``, one value per entry. Each value is placed among its
    row's picks by a binary search, and a histogram of the places, summed from the top, counts them:
    no pass over the values per pick.
    """
    n, k = picks.shape
    ascending = picks.flip(1).contiguous()
    keys = []
    if values is not None:
        places = torch.searchsorted(ascending, values, right=True, out_int32=True)
        if counted is not None:
            places.masked_fill_(~counted, 0)
        offsets = torch.arange(n, device=picks.device) * (k + 1)
        keys.append((places.long() + offsets[:, None]).view(-1))
        del places
    if extra is not None:
        rows, single = extra
        places = torch.searchsorted(ascending[rows], single[:, None], right=True).view(-1)
        keys.append(rows * (k + 1) + places)
    flat = keys[0] if len(keys) == 1 else torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long, device=picks.device)
    del keys
    histogram = torch.bincount(flat, minlength=n * (k + 1)).view(n, k + 1)
    return histogram[:, 1:].flip(1).cumsum(1)


def count_at_or_above_sorted(ascending: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per pick, how many of the values ``ascending`` (a sorted NumPy vector) are at least as high."""
    return len(ascending) - np.searchsorted(ascending, picks, side="left")


def ranked_top_k(
    scores: torch.Tensor,
    k: int,
    seen: tuple[torch.Tensor, torch.Tensor] | None = None,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` of each row of ``scores`` with the ``seen`` entries (rows, ascending; items) and
    those ``allowed`` refuses left out; their indices; and per pick how many of *all* the row's
    scores are at least as high (:func:`count_at_or_above`; masked entries counted).

    ``scores`` is overwritten where nothing is ``allowed``-filtered: see :func:`_top_counted`.
    """
    if allowed is None:
        return _top_counted(scores, k, seen)
    top, items = top_k(scores, k, seen, allowed)
    return top, items, count_at_or_above(top, scores)


def _top_counted(scores: torch.Tensor, k: int, seen: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ranked_top_k` without a filter, without a pass over all items per pick.

    An item scores at least as high as pick j if it is a pick at or above j, a left-out item
    scoring at least p_j, or an unpicked item tied with the last pick (no other unpicked item can
    reach p_j). So only the picks and the left-out items are counted, plus one comparison pass for
    the ties. ``scores`` is overwritten.
    """
    n, num_items = scores.shape
    entries = _seen_scores(scores, seen)
    # One more than k: where the next item scores below the last pick, no unpicked item ties it.
    extra = int(k < num_items)
    top_p, top_items = torch.topk(scores, k + extra, dim=1)
    tied_rows = torch.nonzero(top_p[:, -1] == top_p[:, -2]).view(-1) if extra and k > 0 else top_p.new_zeros(0, dtype=torch.long)
    top_p, top_items = top_p[:, :k], top_items[:, :k]
    ascending = top_p.flip(1).contiguous()
    counted = ascending if entries is None else torch.cat([ascending, entries], dim=1)
    at_or_above = count_at_or_above(top_p, counted, ~counted.isnan())
    if len(tied_rows):
        last = top_p[tied_rows, -1:]
        ties = (scores[tied_rows] == last).sum(1, keepdim=True) - (top_p[tied_rows] == last).sum(1, keepdim=True)
        at_or_above[tied_rows] += torch.where(top_p[tied_rows] == last, ties, 0)
    return top_p, top_items, at_or_above


def _seen_scores(scores: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | None:
    """The ``seen`` entries' scores, one row per row of ``scores`` padded with NaN (which reaches no
    pick), before they are masked in ``scores`` itself; None where nothing is seen."""
    if seen is None or not len(seen[0]):
        return None
    rows, columns = seen
    counts = torch.bincount(rows, minlength=len(scores))
    offsets = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    entries = torch.full((len(scores), int(offsets.max()) + 1), float("nan"), device=scores.device)
    entries[rows, offsets] = scores[rows, columns]
    scores[rows, columns] = MASKED
    return entries


def count_at_or_above_within(groups: np.ndarray, ranks: np.ndarray, starts: np.ndarray, bound: float) -> np.ndarray:
    """Per entry, how many entries of its group rank at or above it (a rank at most its own), itself
    included: int64.

    ``groups`` are ascending (a user's held-out pairs, say), ``starts[g]`` is the position of group
    ``g``'s first entry, and every rank lies in [0, ``bound``): one sort of ``group · bound + rank``.
    """
    key = groups.astype(np.float64) * bound + ranks
    return np.searchsorted(np.sort(key), key, side="right") - starts[groups]
