"""Use a trained model: top-k recommendations, predictions for (user, item) pairs, similar items.

A :class:`Recommender` holds a fitted :class:`~mtrec.model.MultitaskModel` once, on its
device, with what every request needs precomputed (id maps, seen items, popularity, unit
item vectors), and answers in raw ids.

What the numbers mean
---------------------
``p``
    The likelihood head's raw score u·q + a + b. It only orders items for one user: its
    scale is arbitrary (the pairwise loss never pins it to a probability).
``watch_score``
    What people are shown: the rank percentile of ``p`` among *all* items for that user,
    i.e. the fraction of the other items in the catalogue that this item outscores, in
    [0, 1] (1 = the user's best-scored item, 0 = the worst). Seen items count in the
    catalogue; they are only left out of what is recommended.
``rating``
    The rating head's prediction clipped to the data's rating scale; ``rating_raw`` is the
    unclipped value. Both are ``None`` when the model did not learn ratings.

Unknown users
-------------
:meth:`Recommender.recommend` answers a user the model never saw with the most-rated
training items, flagged ``cold_start=True``: popularity is an honest answer to "what
should a newcomer watch". :meth:`Recommender.predict` raises :class:`UnknownUserError`
instead: both heads need the user's learned vector and bias, so any score or rating for
a stranger would be invented.

Naming items
------------
An item is named by its raw id or, failing that, by its title, case-insensitively: the
exact title ("Star Wars (1977)") or the title without its year ("star wars"). A title
shared by several items raises :class:`AmbiguousItemError` listing them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from mtrec.config import CONFIG_FILENAME
from mtrec.data.formats import Column
from mtrec.data.frames import backend_library, column_labels, frame_columns, frame_table, to_frame, with_columns
from mtrec.data.ids import as_integers
from mtrec.data.interactions import build_lookup, lookup_id
from mtrec.data.requests import MAX_HISTORY  # noqa: F401  (re-exported: serve.py reads it here)
from mtrec.errors import (
    AmbiguousItemError,
    ConfigError,
    DataError,
    UnknownItemError,
    UnknownUserError,
)
from mtrec.io.checkpoint import model_path
from mtrec.model import MultitaskModel
from mtrec.runs import METRICS_FILENAME, check_complete
from mtrec.serving.foldin import fold_in_model
from mtrec.serving.retrieval import IndexConfig, Retrieval, bytes_per_query, ranked_candidates, watch_queries, watch_scores, watch_space

#: Elements of a (pairs x catalogue) block scored at once: bounds memory for big batches.
CHUNK_ELEMENTS = 1 << 22
#: Up to this many (pick, item) pairs, one user's watch scores are counted by comparison, not a sort.
COMPARE_ELEMENTS = 1 << 17
#: Bytes of scores (and their bookkeeping) one block of users may take in :meth:`Recommender.recommend_all`.
BATCH_BYTES = 512 * 2**20
#: Bytes per (user, item) score while a block is ranked: the scores, their masked copy, the buckets and their keys.
BYTES_PER_SCORE = 4 + 4 + 4 + 8

_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


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


def _check_k(k: int) -> int:
    """``k`` if it is a positive whole number, else a :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive whole number, got {k!r}")
    return int(k)


def _title_index(titles: list[str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Item indices by lower-cased title, and by lower-cased title without its year."""
    exact: dict[str, list[int]] = {}
    bare: dict[str, list[int]] = {}
    for index, title in enumerate(titles):
        key = title.strip().lower()
        exact.setdefault(key, []).append(index)
        bare.setdefault(_YEAR.sub("", key), []).append(index)
    return exact, bare


class Recommender:
    """Answers recommendation, prediction and similarity queries from a fitted model.

    Safe to share between threads: every query only reads the model's tensors, under
    ``torch.inference_mode``.

    Parameters
    ----------
    model:
        A fitted (or loaded) :class:`~mtrec.model.MultitaskModel`; its network is put in
        evaluation mode and used on the device it is on.
    index:
        Which index ranks the items (:class:`~mtrec.serving.retrieval.IndexConfig`; by default ``auto``:
        every item scored, as always, below :data:`~mtrec.serving.retrieval.AUTO_ITEMS` items).
    model_file:
        The file the model was read from: an HNSW index is saved beside it (None: never saved).
    """

    def __init__(self, model: MultitaskModel, index: IndexConfig | None = None, model_file: Path | None = None) -> None:
        if model.network_ is None or model.data_ is None:
            raise ConfigError("the model is not fitted yet: call fit() or load()")
        self.model = model
        self.network = model.network_.eval()
        self.device = model.device_
        data = model.data_
        self.num_items = data.num_items
        self.rating_scale = data.rating_scale
        self.has_ratings = data.has_ratings and model.regression_weight > 0
        self._user_ids = data.user_ids.tolist()
        self._item_ids = data.item_ids.tolist()
        self._user_lookup = build_lookup(data.user_ids)
        self._item_lookup = build_lookup(data.item_ids)
        metadata = data.item_metadata
        self._titles = metadata.titles if metadata else [None] * data.num_items
        self._years = metadata.years if metadata else [None] * data.num_items
        self._genres = metadata.genres if metadata else [[] for _ in range(data.num_items)]
        self._exact_titles, self._bare_titles = _title_index(metadata.titles) if metadata else ({}, {})
        self._seen_indptr = data.seen_indptr.tolist()
        self._seen_indices = torch.as_tensor(data.seen_indices, dtype=torch.long, device=self.device)
        counts = np.bincount(data.seen_indices, minlength=data.num_items)
        self._num_ratings = counts.tolist()
        self._popular = np.argsort(-counts, kind="stable")
        with torch.inference_mode():
            self._unit_items = F.normalize(self.network.item_vectors().detach(), dim=1)
        spaces = {"watch": lambda: watch_space(self.network), "similar": lambda: self._unit_items}
        self.retrieval = Retrieval(index or IndexConfig(), self.num_items, spaces, model_file)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", index: IndexConfig | None = None) -> Recommender:
        """A recommender for the model saved at ``path`` (a model file or a run directory).

        A run directory (one with a config.json or metrics.json) must hold a complete, consistent
        run (:func:`mtrec.runs.check_complete`): an unfinished or damaged one is refused, saying
        why. A folder that :meth:`MultitaskModel.save` wrote holds just the model file. An HNSW
        ``index`` is read from beside the model file, or built and saved there.
        """
        folder = Path(path)
        if folder.is_dir() and ((folder / CONFIG_FILENAME).exists() or (folder / METRICS_FILENAME).exists()):
            check_complete(path)
        return cls(MultitaskModel.load(path, device), index, model_path(path))

    def user_index(self, user: Any) -> int | None:
        """The index of the user the data calls ``user``; ``None`` if the model never saw them."""
        try:
            return lookup_id(self._user_lookup, user)
        except KeyError:
            return None

    def item_index(self, item: Any) -> int:
        """The index of the item named by raw id or title; see the module docstring."""
        return self._item_index(item, "")

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
            mask[self._indices(include, "include")] = True
        if exclude:
            mask[self._indices(exclude, "exclude")] = False
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
        for index, names in enumerate(self._genres):
            for name in names:
                found.setdefault(name, []).append(index)
        masks = {}
        for name, indices in found.items():
            mask = torch.zeros(self.num_items, dtype=torch.bool, device=self.device)
            mask[torch.tensor(indices, device=self.device)] = True
            masks[name] = mask
        return masks

    def _indices(self, items: Iterable[Any], what: str) -> torch.Tensor:
        indices = [self._item_index(item, f" (in {what})") for item in items]
        return torch.tensor(indices, dtype=torch.long, device=self.device)

    def _ranked(
        self,
        network,
        users: torch.Tensor,
        hidden: torch.Tensor | None,
        allowed: torch.Tensor | None,
        k: int,
    ) -> list[ScoredItem]:
        """The top ``k`` items for one user of ``network``, leaving out ``hidden`` indices and what ``allowed`` refuses."""
        if self.retrieval.exhaustive:
            top_p, top_items, watch = self._scored_top(network, users, hidden, allowed, k)
        else:
            seen = None if hidden is None else (torch.zeros_like(hidden), hidden)
            top_p, top_items, watch = (found[0] for found in self._retrieved(network, users, seen, allowed, k))
            listed = torch.isfinite(top_p)
            top_p, top_items, watch = top_p[listed], top_items[listed], watch[listed]
        ratings, ratings_raw = self._ratings(network, users.expand(len(top_items)), top_items)
        columns = zip(top_items.tolist(), watch.tolist(), top_p.tolist(), ratings, ratings_raw)
        return [
            ScoredItem(rank=rank, **self._describe(i), watch_score=w, p=p, rating=r, rating_raw=raw)
            for rank, (i, w, p, r, raw) in enumerate(columns, start=1)
        ]

    def _scored_top(
        self, network, users: torch.Tensor, hidden: torch.Tensor | None, allowed: torch.Tensor | None, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top ``k`` items of one user (picks' p, items, watch scores) with every item scored."""
        scores = network.all_watch_scores(users)
        ranked = scores
        if hidden is not None and len(hidden):
            ranked = scores.index_fill(1, hidden, float("-inf"))
        if allowed is not None:
            ranked = ranked.masked_fill(~allowed, float("-inf"))
        if allowed is not None:
            available = int(torch.isfinite(ranked).sum())
        else:  # the hidden items are distinct: a user's seen items, a history's
            available = self.num_items - (0 if hidden is None else len(hidden))
        k = min(k, available)
        # How many of all items each pick outscores: a k x items comparison where that is small,
        # else the batch path's count over the picks and the hidden items (the comparison would
        # cost 100 ms for k = 1000 on a 59,047-item catalogue, a sort of the scores 5 ms).
        if k * self.num_items <= COMPARE_ELEMENTS:
            top_p, top_items = torch.topk(ranked[0], k)
            watch = (scores[0][None, :] < top_p[:, None]).sum(1).double() / max(self.num_items - 1, 1)
        else:
            seen = None
            if hidden is not None and len(hidden):
                seen = (torch.zeros_like(hidden), hidden, torch.arange(len(hidden), device=hidden.device))
            if allowed is None:
                top_p, top_items, watch = self._top_and_watch(scores, k, seen)
            else:
                top_p, top_items, watch = self._top_and_watch_filtered(scores, k, seen, allowed)
            top_p, top_items, watch = top_p[0], top_items[0], watch[0]
        return top_p, top_items, watch

    def _retrieved(self, network, users: torch.Tensor, seen, allowed: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top ``k`` of each of ``users`` of ``network`` among the watch index's candidates, re-scored
        by the network (:func:`mtrec.serving.retrieval.ranked_candidates`): picks' p (-inf past a short list),
        items and watch scores. ``seen`` (rows, items) are left out."""

        def score(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return watch_scores(network, users[rows], items)

        queries = watch_queries(network, users)
        index = self.retrieval.index("watch")
        top_p, top_items, above = ranked_candidates(index, queries, score, k, self.num_items, seen, allowed)
        return top_p, top_items, (self.num_items - above).double() / max(self.num_items - 1, 1)

    def recommend(
        self,
        user: Any,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[Any] = (),
        include: Iterable[Any] | None = None,
        genres: Iterable[str] = (),
    ) -> Recommendations:
        """The ``k`` items with the highest watch score for ``user`` (a raw id).

        Ranks the whole catalogue with one matrix product. With ``exclude_seen`` the user's
        training items are left out (so fewer than ``k`` come back if few are unseen);
        ``exclude``, ``include`` and ``genres`` filter further (:meth:`allowed`): a filter that
        leaves nothing gives an empty list. An unknown user gets the ``k`` most-rated training
        items (that pass the filters) with ``cold_start=True``.
        """
        k = min(_check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        index = self.user_index(user)
        if index is None:
            return Recommendations(user=user, cold_start=True, exclude_seen=exclude_seen, items=self._cold_start(k, allowed))
        with torch.inference_mode():
            users = torch.tensor([index], device=self.device)
            seen = self._seen_indices[self._seen_indptr[index] : self._seen_indptr[index + 1]] if exclude_seen else None
            items = self._ranked(self.network, users, seen, allowed, k)
        return Recommendations(user=self._user_ids[index], cold_start=False, exclude_seen=exclude_seen, items=items)

    def recommend_history(
        self,
        history: Sequence[tuple[Any, float | None]],
        k: int = 10,
        exclude: Iterable[Any] = (),
        include: Iterable[Any] | None = None,
        genres: Iterable[str] = (),
    ) -> Recommendations:
        """Recommendations for a user the model never saw, from their history (fold-in).

        ``history`` holds ``(item, rating)`` pairs, items by raw id or title and ratings None
        where unknown (then, for a history without any rating, only the watch loss fits). The
        user's vectors are fitted with everything else frozen (:func:`mtrec.serving.foldin.fold_in_model`), and
        the history's items are left out of the list. An empty history gets the most-rated items,
        flagged ``cold_start``. An unknown item is an :class:`UnknownItemError` naming it; a rating
        that is not a finite number on the model's rating scale a :class:`~mtrec.serving.foldin.RatingError`
        (a :class:`~mtrec.errors.DataError`) naming its entry.
        """
        k = min(_check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        if not history:
            return Recommendations(user=None, cold_start=True, exclude_seen=True, items=self._cold_start(k, allowed))
        items = [self._item_index(item, f" (history entry {n} of {len(history)})") for n, (item, _) in enumerate(history, 1)]
        one = fold_in_model(self.model, items, [rating for _, rating in history])
        with torch.inference_mode():
            users = torch.zeros(1, dtype=torch.long, device=self.device)
            hidden = torch.tensor(sorted(set(items)), dtype=torch.long, device=self.device)
            ranked = self._ranked(one, users, hidden, allowed, k)
        return Recommendations(user=None, cold_start=False, exclude_seen=True, items=ranked)

    def recommend_all(
        self,
        users: Sequence[Any] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[Any] = (),
        include: Iterable[Any] | None = None,
        genres: Iterable[str] = (),
        budget_bytes: int = BATCH_BYTES,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[pa.Table]:
        """The top ``k`` of every user (or of ``users``, raw ids), block by block, as Arrow tables.

        Each table has the columns ``user``, ``rank``, ``item``, ``title``, ``watch_score``, ``p``,
        ``rating``, ``rating_raw`` and ``cold_start``, one row per recommended item; a user the
        model never saw gets the most-rated items (``cold_start`` true, scores null). Users are
        scored in blocks whose scores fit ``budget_bytes``; ``progress`` is called with the number
        of users of each block done. The watch score is exact, as in :meth:`recommend`: the
        fraction of all items each pick outscores, counted in one pass over the block's scores
        (with an HNSW index, over the scored candidates: :mod:`mtrec.serving.retrieval`).
        """
        k = min(_check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        if users is None:
            known, cold = np.arange(len(self._user_ids)), []
        else:
            indices = [self.user_index(user) for user in users]
            known = np.array([i for i in indices if i is not None], dtype=np.int64)
            cold = [user for user, i in zip(users, indices) if i is None]
        per_user = BYTES_PER_SCORE * self.num_items
        if not self.retrieval.exhaustive:  # an average user's candidates and seen items
            per_user = bytes_per_query(k, self.num_items, allowed, len(self._seen_indices) / max(len(self._user_ids), 1))
        block = max(1, budget_bytes // per_user)
        seen_indptr = torch.as_tensor(np.asarray(self._seen_indptr), device=self.device)
        for start in range(0, len(known), block):
            chosen = torch.as_tensor(known[start : start + block], device=self.device)
            with torch.inference_mode():
                yield self._block(chosen, k, exclude_seen, allowed, seen_indptr)
            if progress is not None:
                progress(len(chosen))
        if cold:
            yield self._cold_table(cold, k, allowed)
            if progress is not None:
                progress(len(cold))

    def _block(self, users: torch.Tensor, k: int, exclude_seen: bool, allowed, seen_indptr) -> pa.Table:
        """The top ``k`` of a block of known users (indices), as an Arrow table."""
        seen = None
        if exclude_seen:
            starts, stops = seen_indptr[users], seen_indptr[users + 1]
            counts = stops - starts
            rows = torch.repeat_interleave(torch.arange(len(users), device=self.device), counts)
            offsets = torch.arange(int(counts.sum()), device=self.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            seen = (rows, self._seen_indices[torch.repeat_interleave(starts, counts) + offsets], offsets)
        if not self.retrieval.exhaustive:
            top_p, top_items, watch = self._retrieved(self.network, users, None if seen is None else seen[:2], allowed, k)
        elif allowed is None:
            top_p, top_items, watch = self._top_and_watch(self.network.all_watch_scores(users), k, seen)
        else:
            top_p, top_items, watch = self._top_and_watch_filtered(self.network.all_watch_scores(users), k, seen, allowed)
        valid = torch.isfinite(top_p)  # fewer than k items left after the filters
        pair_users = users[:, None].expand_as(top_items)
        if self.has_ratings:
            raw = self.network.rating(pair_users.reshape(-1), top_items.reshape(-1)).view_as(top_p)
            clipped = raw.clamp(*self.rating_scale) if self.rating_scale else raw
        flat = valid.reshape(-1).cpu().numpy()
        items = top_items.reshape(-1).cpu().numpy()[flat]
        columns = {
            "user": self._user_array.take(pa.array(pair_users.reshape(-1).cpu().numpy()[flat])),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[flat]),
            "item": self._item_array.take(pa.array(items)),
            "title": self._title_array.take(pa.array(items)),
            "watch_score": pa.array(watch.reshape(-1).cpu().numpy()[flat]),
            "p": pa.array(top_p.reshape(-1).cpu().numpy()[flat]),
            "rating": pa.array(clipped.reshape(-1).cpu().numpy()[flat]) if self.has_ratings else pa.nulls(int(flat.sum()), pa.float32()),
            "rating_raw": pa.array(raw.reshape(-1).cpu().numpy()[flat]) if self.has_ratings else pa.nulls(int(flat.sum()), pa.float32()),
            "cold_start": pa.array(np.zeros(int(flat.sum()), dtype=bool)),
        }
        return pa.table(columns)

    def _top_and_watch(self, scores: torch.Tensor, k: int, seen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top ``k`` of each row of ``scores`` with the ``seen`` entries (rows, columns, offsets)
        left out, and each pick's exact watch score, without a pass over all items per pick.

        An item scores at least as high as pick j if it is a pick at or above j, a left-out item
        scoring at least p_j, or an unpicked item tied with the last pick (no other unpicked item
        can reach p_j). So only the picks and the left-out items are counted, plus one comparison
        pass for the ties. ``scores`` is overwritten.
        """
        n = len(scores)
        entries = None
        if seen is not None and len(seen[0]):
            rows, columns, offsets = seen
            # The left-out items' scores, one row per user, padded with NaN (which reaches no pick).
            entries = torch.full((n, int(offsets.max()) + 1), float("nan"), device=scores.device)
            entries[rows, offsets] = scores[rows, columns]
            scores[rows, columns] = float("-inf")
        # One more than k: where the next item scores below the last pick, no unpicked item ties it.
        extra = int(k < self.num_items)
        top_p, top_items = torch.topk(scores, k + extra, dim=1)
        tied_rows = torch.nonzero(top_p[:, -1] == top_p[:, -2]).view(-1) if extra and k > 0 else top_p.new_zeros(0, dtype=torch.long)
        top_p, top_items = top_p[:, :k], top_items[:, :k]
        ascending = top_p.flip(1).contiguous()
        counted = ascending if entries is None else torch.cat([ascending, entries], dim=1)
        # Each counted score v reaches the picks p_j <= v: the lowest searchsorted(...) of them. A
        # histogram of those positions, summed from the top, gives per pick the entries at or above it.
        positions = torch.searchsorted(ascending, counted, right=True)
        positions.masked_fill_(counted.isnan(), 0)
        positions += (torch.arange(n, device=scores.device) * (k + 1))[:, None]
        histogram = torch.bincount(positions.view(-1), minlength=n * (k + 1)).view(n, k + 1)
        at_or_above = histogram[:, 1:].flip(1).cumsum(1)  # per pick, best first
        if len(tied_rows):
            last = top_p[tied_rows, -1:]
            ties = (scores[tied_rows] == last).sum(1, keepdim=True) - (top_p[tied_rows] == last).sum(1, keepdim=True)
            at_or_above[tied_rows] += torch.where(top_p[tied_rows] == last, ties, 0)
        watch = (self.num_items - at_or_above).double() / max(self.num_items - 1, 1)
        return top_p, top_items, watch

    def _top_and_watch_filtered(self, scores, k: int, seen, allowed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`_top_and_watch`, with a filter: every score is bucketed among the picks."""
        ranked = scores.clone()
        if seen is not None:
            ranked[seen[0], seen[1]] = float("-inf")
        ranked.masked_fill_(~allowed, float("-inf"))
        top_p, top_items = torch.topk(ranked, k, dim=1)
        del ranked
        # How many of all items each pick outscores: bucket every score among the picks (ascending),
        # count each bucket, and add the counts up from the top.
        n = len(scores)
        ascending = top_p.flip(1).contiguous()
        buckets = torch.searchsorted(ascending, scores, right=True, out_int32=True)
        keys = buckets.long() + (torch.arange(n, device=self.device) * (k + 1))[:, None]
        del buckets
        histogram = torch.bincount(keys.view(-1), minlength=n * (k + 1)).view(n, k + 1)
        del keys
        at_or_above = histogram[:, 1:].flip(1).cumsum(1).flip(1)  # per ascending pick: items scored at least as high
        below = (self.num_items - at_or_above).flip(1)
        watch = below.double() / max(self.num_items - 1, 1)
        return top_p, top_items, watch

    def _cold_table(self, users: list[Any], k: int, allowed) -> pa.Table:
        indices = self._popular_indices(k, allowed)
        n = len(users) * len(indices)
        return pa.table({
            "user": pa.array([str(u) for u in users for _ in indices]),
            "rank": pa.array(np.tile(np.arange(1, len(indices) + 1, dtype=np.int32), len(users))),
            "item": self._item_array.take(pa.array(np.tile(indices, len(users)))),
            "title": self._title_array.take(pa.array(np.tile(indices, len(users)))),
            "watch_score": pa.nulls(n, pa.float64()),
            "p": pa.nulls(n, pa.float32()),
            "rating": pa.nulls(n, pa.float32()),
            "rating_raw": pa.nulls(n, pa.float32()),
            "cold_start": pa.array(np.ones(n, dtype=bool)),
        })  # fmt: skip

    @functools.cached_property
    def _user_array(self) -> pa.Array:
        return pa.array([str(u) for u in self._user_ids])

    @functools.cached_property
    def _item_array(self) -> pa.Array:
        return pa.array([str(i) for i in self._item_ids])

    @functools.cached_property
    def _title_array(self) -> pa.Array:
        return pa.array(self._titles, type=pa.string())

    def predict(self, pairs: Iterable[tuple[Any, Any]]) -> list[Prediction]:
        """Watch score and rating for each (user, item) pair of raw ids (or item titles), in one batch.

        Raises :class:`UnknownUserError` or :class:`UnknownItemError` naming the first unknown id.
        """
        users, items = self._pair_indices(list(pairs))
        if not users:
            return []
        watch, p, ratings, ratings_raw = self._pair_scores(np.array(users), np.array(items))
        columns = zip(users, items, watch.tolist(), p.tolist(), ratings, ratings_raw)
        return [Prediction(self._user_ids[u], self._item_ids[i], self._titles[i], w, p, r, raw) for u, i, w, p, r, raw in columns]

    def similar(self, item: Any, k: int = 10) -> SimilarItems:
        """The ``k`` items closest to ``item`` by cosine similarity of the factorisation head's item vectors."""
        k = min(_check_k(k), self.num_items - 1)
        index = self.item_index(item)
        with torch.inference_mode():
            if self.retrieval.exhaustive:
                similarity = self._unit_items @ self._unit_items[index]
                similarity[index] = float("-inf")
                top, top_items = torch.topk(similarity, k)
            else:
                top, top_items = self._nearest(index, k)
        items = [
            SimilarItem(rank=rank, **self._describe(i), similarity=s) for rank, (i, s) in enumerate(zip(top_items.tolist(), top.tolist()), start=1)
        ]
        return SimilarItems(item=self._item_ids[index], title=self._titles[index], items=items)

    def _nearest(self, index: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` items of highest cosine similarity to item ``index`` (itself left out) among the
        similarity index's candidates, re-scored exactly: their similarities and indices."""
        unit = self._unit_items
        query = unit[index][None]
        itself = torch.tensor([index], device=self.device)

        def score(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return (unit[items] @ query[rows][:, :, None]).squeeze(-1)

        top, top_items, _ = ranked_candidates(
            self.retrieval.index("similar"), query, score, k, self.num_items, seen=(torch.zeros_like(itself), itself)
        )
        return top[0], top_items[0]

    def _item_index(self, item: Any, where: str) -> int:
        try:
            return lookup_id(self._item_lookup, item)
        except KeyError:
            pass
        key = str(item).strip().lower()
        matches = self._exact_titles.get(key) or self._bare_titles.get(key) or []
        if len(matches) == 1:
            return matches[0]
        if matches:
            candidates = [(self._item_ids[i], self._titles[i]) for i in matches]
            listed = "; ".join(f"{raw} {title!r}" for raw, title in candidates)
            raise AmbiguousItemError(f"{item!r}{where} names {len(matches)} items; use an item id: {listed}", candidates)
        raise UnknownItemError(f"unknown item {item!r}{where}: not an item id or title the model was trained on")

    def _pair_indices(self, pairs: list[tuple[Any, Any]]) -> tuple[list[int], list[int]]:
        """User and item indices of raw-id pairs; errors name the pair when there are several."""
        users, items = [], []
        for position, (user, item) in enumerate(pairs, start=1):
            where = f" (pair {position} of {len(pairs)})" if len(pairs) > 1 else ""
            index = self.user_index(user)
            if index is None:
                raise _unknown_user(user, where)
            users.append(index)
            items.append(self._item_index(item, where))
        return users, items

    def _popular_indices(self, k: int, allowed: torch.Tensor | None = None) -> np.ndarray:
        """The ``k`` most-rated items that ``allowed`` lets through."""
        popular = self._popular if allowed is None else self._popular[allowed.cpu().numpy()[self._popular]]
        return popular[:k]

    def _cold_start(self, k: int, allowed: torch.Tensor | None = None) -> list[ScoredItem]:
        return [
            ScoredItem(rank=rank, **self._describe(i), watch_score=None, p=None, rating=None, rating_raw=None)
            for rank, i in enumerate(self._popular_indices(k, allowed).tolist(), start=1)
        ]

    def _ratings(self, network, users: torch.Tensor, items: torch.Tensor) -> tuple[list, list]:
        """Clipped and raw rating-head predictions; all ``None`` if the model did not learn ratings."""
        if not self.has_ratings:
            unknown = [None] * len(items)
            return unknown, unknown
        raw = network.rating(users, items)
        clipped = raw.clamp(*self.rating_scale) if self.rating_scale else raw
        return clipped.tolist(), raw.tolist()

    def _describe(self, index: int) -> dict[str, Any]:
        return {
            "item": self._item_ids[index],
            "title": self._titles[index],
            "year": self._years[index],
            "genres": self._genres[index],
            "num_ratings": self._num_ratings[index],
        }

    def _pair_scores(self, users: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list, list]:
        """Watch scores, p, clipped and raw ratings of (user index, item index) pairs, in blocks of
        :data:`CHUNK_ELEMENTS` scores."""
        users_t = torch.as_tensor(users, dtype=torch.long, device=self.device)
        items_t = torch.as_tensor(items, dtype=torch.long, device=self.device)
        chunk = max(1, CHUNK_ELEMENTS // self.num_items)
        p_parts, watch_parts = [], []
        with torch.inference_mode():
            for start in range(0, len(users_t), chunk):
                rows = self.network.all_watch_scores(users_t[start : start + chunk])
                p = rows.gather(1, items_t[start : start + chunk, None]).squeeze(1)
                p_parts.append(p)
                watch_parts.append(_outscored_fraction(rows, p))
            ratings, ratings_raw = self._ratings(self.network, users_t, items_t)
        return torch.cat(watch_parts), torch.cat(p_parts), ratings, ratings_raw

    def recommend_frame(
        self,
        users: Sequence[Any] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[Any] = (),
        include: Iterable[Any] | None = None,
        genres: Iterable[str] = (),
        backend: str = "pandas",
    ) -> Any:
        """The top ``k`` of every user (or of ``users``, raw ids) as one table: a row per (user, rank).

        :meth:`recommend_all`'s tables in one, with the same filters: the columns ``user``,
        ``rank``, ``item``, ``title``, ``watch_score``, ``p``, ``rating``, ``rating_raw`` and
        ``cold_start``. Users and items keep the type of the model's ids (integers stay integers,
        so the table joins with the frame the model was trained on); a user the model never saw
        gets the most-rated items, flagged ``cold_start``, with null scores.

        Parameters
        ----------
        users:
            Raw user ids (a list, an array, a pandas or polars Series); default every user the
            model knows, in index order.
        k, exclude_seen, exclude, include, genres:
            As for :meth:`recommend`.
        backend:
            ``"pandas"`` (a DataFrame), ``"polars"`` or ``"arrow"`` (a pyarrow Table).

        Raises
        ------
        ConfigError
            For a ``k`` that is not a positive whole number, an unknown genre, or a backend whose
            library is not installed (naming the extra ``mtrec[frames]``).
        UnknownItemError
            For an item of ``exclude`` or ``include`` the model does not know.

        Examples
        --------
        >>> top = recommender.recommend_frame([196, 186], k=5)
        >>> top[["user", "rank", "title", "watch_score", "rating"]]
        """
        backend_library(backend)  # an unknown backend, or one not installed, is named before the work
        tables = list(self.recommend_all(users, k=k, exclude_seen=exclude_seen, exclude=exclude, include=include, genres=genres))
        table = pa.concat_tables(tables) if tables else self._cold_table([], k, None)
        for role, ids in (("user", self.model.data_.user_ids), ("item", self.model.data_.item_ids)):
            if ids.dtype != object:
                table = table.set_column(table.schema.get_field_index(role), role, as_integers(table.column(role)))
        return to_frame(table, backend)

    def predict_frame(self, pairs: Any, user: Column | None = None, item: Column | None = None, prefix: str = "") -> Any:
        """``pairs`` with the model's predictions for each (user, item) row added as columns.

        The columns added are ``watch_score``, ``p``, ``rating`` and ``rating_raw``, as
        :meth:`predict` gives them (``rating`` null when the model did not learn ratings), each
        after ``prefix``. Ids are looked up all at once; an item that is not an id may be a title,
        as in :meth:`predict`.

        Parameters
        ----------
        pairs:
            A pandas or polars DataFrame or a pyarrow Table, returned as the same kind with its
            rows (and pandas index) as they are.
        user, item:
            The columns' labels; by default recognised by name as in
            :meth:`~mtrec.data.interactions.Interactions.from_frame` (``user``/``userId``...,
            ``item``/``movieId``...).
        prefix:
            Put before the names of the columns added: ``"predicted_"`` keeps a frame's own
            ``rating`` beside ``predicted_rating``.

        Raises
        ------
        DataError
            For a missing column, an empty frame or a missing id, naming its row and column; or
            for a column that would be added and is already there (a frame's own ratings).
        UnknownUserError, UnknownItemError
            Naming the row and column of the first id the model was not trained on.

        Examples
        --------
        >>> scored = recommender.predict_frame(test_ratings, prefix="predicted_")
        >>> ((scored["predicted_rating"] - scored["rating"]) ** 2).mean()
        """
        source, table, roles = frame_table(pairs, {"user": user, "item": item}, required=("user", "item"))
        names = [prefix + name for name in ("watch_score", "p", "rating", "rating_raw")]
        taken = [name for name in names if name in column_labels(pairs)]
        if taken:
            raise DataError(f'{source} already has a column {taken[0]!r}: pass prefix= ("predicted_") to name the predictions apart')
        columns = frame_columns(source, table, roles)
        users, items = (self._frame_indices(source, columns[role], role, roles[role]) for role in ("user", "item"))
        watch, p, ratings, ratings_raw = self._pair_scores(users, items)
        arrays = [
            pa.array(watch.cpu().numpy()),
            pa.array(p.cpu().numpy()),
            pa.array(ratings, pa.float32()),
            pa.array(ratings_raw, pa.float32()),
        ]
        return with_columns(pairs, pa.table(dict(zip(names, arrays))))

    def _known_user(self, user: Any, where: str) -> int:
        index = self.user_index(user)
        if index is None:
            raise _unknown_user(user, where)
        return index

    def _frame_indices(self, source: str, column: pa.ChunkedArray, role: str, name: str) -> np.ndarray:
        """The indices of a frame's checked ``user`` or ``item`` id column, found all at once by their
        text; the few ids not found are looked up one by one (an item may be a title), or raise."""
        known, resolve = (self._user_array, self._known_user) if role == "user" else (self._item_array, self._item_index)
        found = pc.index_in(column.cast(pa.string()), value_set=known)
        indices = found.to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(found.is_null().to_numpy(zero_copy_only=False)).tolist():
            indices[row] = resolve(column[row].as_py(), f" ({source}, row {row + 1}, column {name!r})")
        return indices.astype(np.int64)


def _unknown_user(user: Any, where: str) -> UnknownUserError:
    return UnknownUserError(
        f"unknown user {user!r}{where}: the model has no vector for a user it was not trained on, "
        "so it cannot score them (recommendations fall back to popular items)"
    )


def _outscored_fraction(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each ``values[i]``, the fraction of the other entries of ``rows[i]`` strictly below it."""
    chunk = max(1, CHUNK_ELEMENTS // rows.shape[1])
    below = [(rows[s : s + chunk] < values[s : s + chunk, None]).sum(1) for s in range(0, len(values), chunk)]
    counts = torch.cat(below) if below else values.new_zeros(0)
    return counts / max(rows.shape[1] - 1, 1)
