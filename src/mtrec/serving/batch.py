"""Many users at once, as Arrow tables: every user's top ``k`` block by block (for Parquet and CSV
files, or one DataFrame), and the predictions for a frame of (user, item) pairs.

Users are scored in blocks whose scores fit a memory budget; a block's lists and watch scores are
those :meth:`~mtrec.serving.recommender.Recommender.recommend` gives each of its users, counted in
one pass over the block's scores (:mod:`mtrec.serving.ranker`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from mtrec.data.formats import Column
from mtrec.data.frames import column_labels, frame_columns, frame_table, to_frame, with_columns
from mtrec.data.ids import as_integers
from mtrec.errors import DataError
from mtrec.io.fitted import FittedData
from mtrec.serving.catalogue import Catalogue
from mtrec.serving.coldstart import ColdStart
from mtrec.serving.ranker import Ranker
from mtrec.serving.retrieval import bytes_per_query

#: Bytes of scores (and their bookkeeping) one block of users may take in :meth:`Batches.recommend_all`.
BATCH_BYTES = 512 * 2**20
#: Bytes per (user, item) score while a block is ranked: the scores, their masked copy, the buckets and their keys.
BYTES_PER_SCORE = 4 + 4 + 4 + 8
#: What the predictions of :meth:`Batches.predict_frame` are called (after a prefix).
PREDICTION_COLUMNS = ("watch_score", "p", "rating", "rating_raw")


class Batches:
    """Batch recommendations and predictions as Arrow tables, from a catalogue, its ranker and its cold start.

    Parameters
    ----------
    data:
        The model's data: the types of its ids (a frame's integers stay integers).
    catalogue, ranker, cold:
        The recommender's parts (:mod:`mtrec.serving.recommender`).
    """

    def __init__(self, data: FittedData, catalogue: Catalogue, ranker: Ranker, cold: ColdStart) -> None:
        self.data, self.catalogue, self.ranker, self.cold = data, catalogue, ranker, cold

    def recommend_all(
        self,
        users: Sequence[Any] | None,
        k: int,
        exclude_seen: bool,
        allowed: torch.Tensor | None,
        budget_bytes: int = BATCH_BYTES,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[pa.Table]:
        """The top ``k`` (checked) of every user, or of ``users``, as tables: see
        :meth:`~mtrec.serving.recommender.Recommender.recommend_all`."""
        catalogue = self.catalogue
        if users is None:
            known = np.flatnonzero(catalogue.rankable)
            cold = [catalogue.user_ids[i] for i in np.flatnonzero(~catalogue.rankable).tolist()]
        else:
            indices = [catalogue.ranked_user_index(user) for user in users]
            known = np.array([i for i in indices if i is not None], dtype=np.int64)
            cold = [user for user, i in zip(users, indices) if i is None]
        block = max(1, budget_bytes // self._bytes_per_user(k, allowed))
        seen_indptr = torch.as_tensor(np.asarray(catalogue.seen_indptr), device=catalogue.device)
        for start in range(0, len(known), block):
            chosen = torch.as_tensor(known[start : start + block], device=catalogue.device)
            with torch.inference_mode():
                yield self._block(chosen, k, exclude_seen, allowed, seen_indptr)
            if progress is not None:
                progress(len(chosen))
        if cold:
            yield self.cold.table(cold, k, allowed)
            if progress is not None:
                progress(len(cold))

    def _bytes_per_user(self, k: int, allowed: torch.Tensor | None) -> int:
        """About the memory one user of a block takes while it is ranked."""
        catalogue = self.catalogue
        if self.ranker.retrieval.exhaustive:
            return BYTES_PER_SCORE * catalogue.num_items
        # an average user's candidates and seen items
        return bytes_per_query(k, catalogue.num_items, allowed, len(catalogue.seen_indices) / max(len(catalogue.user_ids), 1))

    def _seen(self, users: torch.Tensor, seen_indptr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training items of a block of users: (rows of the block, ascending; items)."""
        starts, stops = seen_indptr[users], seen_indptr[users + 1]
        counts = stops - starts
        device = self.catalogue.device
        rows = torch.repeat_interleave(torch.arange(len(users), device=device), counts)
        offsets = torch.arange(int(counts.sum()), device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return rows, self.catalogue.seen_indices[torch.repeat_interleave(starts, counts) + offsets]

    def _block(self, users: torch.Tensor, k: int, exclude_seen: bool, allowed, seen_indptr) -> pa.Table:
        """The top ``k`` of a block of known users (indices), as an Arrow table."""
        seen = self._seen(users, seen_indptr) if exclude_seen else None
        top_p, top_items, watch = self.ranker.block(users, k, seen, allowed)
        valid = torch.isfinite(top_p)  # fewer than k items left after the filters
        pair_users = users[:, None].expand_as(top_items)
        ratings = self.ranker.rating_tensors(self.ranker.network, pair_users.reshape(-1), top_items.reshape(-1))
        flat = valid.reshape(-1).cpu().numpy()
        count = int(flat.sum())

        def kept(values: torch.Tensor) -> pa.Array:
            return pa.array(values.reshape(-1).cpu().numpy()[flat])

        items = top_items.reshape(-1).cpu().numpy()[flat]
        catalogue = self.catalogue
        return pa.table({
            "user": catalogue.user_array.take(pa.array(pair_users.reshape(-1).cpu().numpy()[flat])),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[flat]),
            "item": catalogue.item_array.take(pa.array(items)),
            "title": catalogue.title_array.take(pa.array(items)),
            "watch_score": kept(watch),
            "p": kept(top_p),
            "rating": kept(ratings[0]) if ratings is not None else pa.nulls(count, pa.float32()),
            "rating_raw": kept(ratings[1]) if ratings is not None else pa.nulls(count, pa.float32()),
            "cold_start": pa.array(np.zeros(count, dtype=bool)),
        })  # fmt: skip

    def frame(self, tables: Iterable[pa.Table], k: int, backend: str) -> Any:
        """:meth:`recommend_all`'s ``tables`` as one frame of ``backend``, the ids of the model's type."""
        tables = list(tables)
        table = pa.concat_tables(tables) if tables else self.cold.table([], k, None)
        for role, ids in (("user", self.data.user_ids), ("item", self.data.item_ids)):
            if ids.dtype != object:
                table = table.set_column(table.schema.get_field_index(role), role, as_integers(table.column(role)))
        return to_frame(table, backend)

    def predict_frame(self, pairs: Any, user: Column | None, item: Column | None, prefix: str) -> Any:
        """``pairs`` with the predictions of each row added: see
        :meth:`~mtrec.serving.recommender.Recommender.predict_frame`."""
        source, table, roles = frame_table(pairs, {"user": user, "item": item}, required=("user", "item"))
        names = [prefix + name for name in PREDICTION_COLUMNS]
        taken = [name for name in names if name in column_labels(pairs)]
        if taken:
            raise DataError(f'{source} already has a column {taken[0]!r}: pass prefix= ("predicted_") to name the predictions apart')
        columns = frame_columns(source, table, roles)
        users, items = (self.catalogue.frame_indices(source, columns[role], role, roles[role]) for role in ("user", "item"))
        watch, p, ratings, ratings_raw = self.ranker.pair_scores(users, items)
        arrays = [
            pa.array(watch.cpu().numpy()),
            pa.array(p.cpu().numpy()),
            pa.array(ratings, pa.float32()),
            pa.array(ratings_raw, pa.float32()),
        ]
        return with_columns(pairs, pa.table(dict(zip(names, arrays))))
