"""Ranking a catalogue for users of a network: the top ``k`` items, their exact watch scores and
predicted ratings, the watch scores of given (user, item) pairs, and the items nearest an item.

Every item is scored (``exact``), or the candidates of an HNSW graph are re-scored exactly
(:mod:`mtrec.serving.retrieval`); either way the lists, masks and counts are those of
:mod:`mtrec.eval.ranking`. A pick's watch score is the percentile of its ``p`` among all the
user's items' scores (:func:`mtrec.eval.ranking.percentile`), counted without sorting a user's
scores: by comparison where a list is short and the catalogue small, else by placing the scores
among the picks (:func:`mtrec.eval.ranking.ranked_top_k`). Both count the same.
"""

from __future__ import annotations

import numpy as np
import torch

from mtrec.eval.ranking import count_below, masked, percentile, ranked_top_k, top_k
from mtrec.nn.network import MultitaskNet
from mtrec.serving.catalogue import Catalogue
from mtrec.serving.results import Prediction, ScoredItem, SimilarItem
from mtrec.serving.retrieval import Retrieval, ranked_candidates, watch_queries, watch_scores

#: Elements of a (pairs x catalogue) block scored at once: bounds memory for big batches.
CHUNK_ELEMENTS = 1 << 22
#: Up to this many (pick, item) pairs, one user's watch scores are counted by comparison, not a sort.
COMPARE_ELEMENTS = 1 << 17

#: Picks' p (``-inf`` past the end of a short list), their items, and their watch scores.
Picks = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Ranker:
    """Ranks the items of ``catalogue`` for users of a network, with ``retrieval``'s index.

    Parameters
    ----------
    catalogue:
        The model's users and items.
    network:
        The model's network, in evaluation mode; a fold-in's one-user network is passed per call.
    retrieval:
        The indexes: exact, or HNSW graphs of the watch and similarity spaces.
    unit_items:
        The factorisation head's item vectors, normalised (cosine similarity).
    rating_scale, has_ratings:
        The data's rating scale (predictions are clipped to it), and whether the model learned ratings.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        network: MultitaskNet,
        retrieval: Retrieval,
        unit_items: torch.Tensor,
        rating_scale: tuple[float, float] | None,
        has_ratings: bool,
    ) -> None:
        self.catalogue, self.network, self.retrieval = catalogue, network, retrieval
        self.unit_items, self.rating_scale, self.has_ratings = unit_items, rating_scale, has_ratings
        self.num_items = catalogue.num_items
        self.device = unit_items.device

    def ranked(self, network, users: torch.Tensor, hidden: torch.Tensor | None, allowed: torch.Tensor | None, k: int) -> list[ScoredItem]:
        """The top ``k`` items for one user of ``network``, leaving out ``hidden`` indices (distinct) and
        what ``allowed`` refuses, as a list."""
        if self.retrieval.exhaustive:
            top_p, top_items, watch = self._scored_top(network, users, hidden, allowed, k)
        else:
            seen = None if hidden is None else (torch.zeros_like(hidden), hidden)
            top_p, top_items, watch = (found[0] for found in self.retrieved(network, users, seen, allowed, k))
            listed = torch.isfinite(top_p)
            top_p, top_items, watch = top_p[listed], top_items[listed], watch[listed]
        ratings, ratings_raw = self.ratings(network, users.expand(len(top_items)), top_items)
        columns = zip(top_items.tolist(), watch.tolist(), top_p.tolist(), ratings, ratings_raw)
        return [
            ScoredItem(rank=rank, **self.catalogue.describe(i), watch_score=w, p=p, rating=r, rating_raw=raw)
            for rank, (i, w, p, r, raw) in enumerate(columns, start=1)
        ]

    def _scored_top(self, network, users: torch.Tensor, hidden: torch.Tensor | None, allowed: torch.Tensor | None, k: int) -> Picks:
        """The top ``k`` picks of one user with every item scored."""
        scores = network.all_watch_scores(users)
        seen = None if hidden is None or not len(hidden) else (torch.zeros_like(hidden), hidden)
        ranked = masked(scores, seen, allowed)
        if allowed is not None:
            available = int(torch.isfinite(ranked).sum())
        else:  # the hidden items are distinct: a user's seen items, a history's
            available = self.num_items - (0 if hidden is None else len(hidden))
        k = min(k, available)
        # How many of all items each pick outscores: a k x items comparison where that is small, else
        # the batch path's count over the picks and the hidden items (the comparison would cost 100 ms
        # for k = 1000 on a 59,047-item catalogue, a sort of the scores 5 ms).
        if k * self.num_items <= COMPARE_ELEMENTS:
            top_p, top_items = top_k(ranked[0], k)
            watch = percentile(count_below(scores[0].expand(k, -1), top_p), self.num_items)
            return top_p, top_items, watch
        top_p, top_items, watch = self.exact(scores, k, seen, allowed)
        return top_p[0], top_items[0], watch[0]

    def exact(self, scores: torch.Tensor, k: int, seen: tuple[torch.Tensor, torch.Tensor] | None, allowed: torch.Tensor | None) -> Picks:
        """The top ``k`` of each row of ``scores`` (every item's, one row per user; overwritten), the
        ``seen`` (rows, ascending; items) and refused items left out, with their watch scores."""
        top_p, top_items, at_or_above = ranked_top_k(scores, k, seen, allowed)
        return top_p, top_items, percentile(self.num_items - at_or_above, self.num_items)

    def retrieved(self, network, users: torch.Tensor, seen, allowed: torch.Tensor | None, k: int) -> Picks:
        """The top ``k`` of each of ``users`` of ``network`` among the watch index's candidates, re-scored
        by the network (:func:`mtrec.serving.retrieval.ranked_candidates`). ``seen`` (rows, items) are
        left out."""

        def score(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return watch_scores(network, users[rows], items)

        queries = watch_queries(network, users)
        index = self.retrieval.index("watch")
        top_p, top_items, above = ranked_candidates(index, queries, score, k, self.num_items, seen, allowed)
        return top_p, top_items, percentile(self.num_items - above, self.num_items)

    def block(self, users: torch.Tensor, k: int, seen: tuple[torch.Tensor, torch.Tensor] | None, allowed: torch.Tensor | None) -> Picks:
        """The top ``k`` picks of a block of known users (indices) of the model's network."""
        if not self.retrieval.exhaustive:
            return self.retrieved(self.network, users, seen, allowed, k)
        return self.exact(self.network.all_watch_scores(users), k, seen, allowed)

    def rating_tensors(self, network, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Clipped and raw rating-head predictions of (user, item) pairs; None if the model did not learn ratings."""
        if not self.has_ratings:
            return None
        raw = network.rating(users, items)
        return (raw.clamp(*self.rating_scale) if self.rating_scale else raw), raw

    def ratings(self, network, users: torch.Tensor, items: torch.Tensor) -> tuple[list, list]:
        """Clipped and raw rating-head predictions as lists; all ``None`` if the model did not learn ratings."""
        predicted = self.rating_tensors(network, users, items)
        if predicted is None:
            unknown = [None] * len(items)
            return unknown, unknown
        return predicted[0].tolist(), predicted[1].tolist()

    def pair_scores(self, users, items) -> tuple[torch.Tensor, torch.Tensor, list, list]:
        """Watch scores, p, clipped and raw ratings of (user index, item index) pairs (arrays), in blocks
        of :data:`CHUNK_ELEMENTS` scores. A watch score is float32 here, as ``predict`` has always given it."""
        users_t = torch.as_tensor(users, dtype=torch.long, device=self.device)
        items_t = torch.as_tensor(items, dtype=torch.long, device=self.device)
        chunk = max(1, CHUNK_ELEMENTS // self.num_items)
        p_parts, watch_parts = [], []
        with torch.inference_mode():
            for start in range(0, len(users_t), chunk):
                rows = self.network.all_watch_scores(users_t[start : start + chunk])
                p = rows.gather(1, items_t[start : start + chunk, None]).squeeze(1)
                p_parts.append(p)
                watch_parts.append(percentile(count_below(rows, p, chunk), rows.shape[1], torch.float32))
            ratings, ratings_raw = self.ratings(self.network, users_t, items_t)
        return torch.cat(watch_parts), torch.cat(p_parts), ratings, ratings_raw

    def predictions(self, users: list[int], items: list[int]) -> list[Prediction]:
        """What the model predicts for each (user index, item index) pair."""
        if not users:
            return []
        watch, p, ratings, ratings_raw = self.pair_scores(np.array(users), np.array(items))
        catalogue = self.catalogue
        columns = zip(users, items, watch.tolist(), p.tolist(), ratings, ratings_raw)
        return [Prediction(catalogue.user_ids[u], catalogue.item_ids[i], catalogue.titles[i], w, p, r, raw) for u, i, w, p, r, raw in columns]

    def similar(self, index: int, k: int) -> list[SimilarItem]:
        """The ``k`` items closest to item ``index`` (itself left out) by cosine similarity."""
        with torch.inference_mode():
            if self.retrieval.exhaustive:
                similarity = self.unit_items @ self.unit_items[index]
                top, top_items = top_k(similarity, k, (torch.tensor([index], device=self.device),), inplace=True)
            else:
                top, top_items = self._nearest(index, k)
        pairs = zip(top_items.tolist(), top.tolist())
        return [SimilarItem(rank=rank, **self.catalogue.describe(i), similarity=s) for rank, (i, s) in enumerate(pairs, start=1)]

    def _nearest(self, index: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` items of highest cosine similarity to item ``index`` (itself left out) among the
        similarity index's candidates, re-scored exactly: their similarities and indices."""
        unit = self.unit_items
        query = unit[index][None]
        itself = torch.tensor([index], device=self.device)

        def score(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return (unit[items] @ query[rows][:, :, None]).squeeze(-1)

        top, top_items, _ = ranked_candidates(
            self.retrieval.index("similar"), query, score, k, self.num_items, seen=(torch.zeros_like(itself), itself)
        )
        return top[0], top_items[0]
