"""Users the model never saw: the most-rated items for a stranger, and a new user's history folded in.

A user without a learned vector gets the most-rated training items (that pass the filters),
flagged ``cold_start``: popularity is an honest answer to "what should a newcomer watch". A new
user who names what they rated is fitted instead (:func:`mtrec.serving.foldin.fold_in_model`: their
vectors, with everything else frozen) and ranked like any other user, their history left out.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from mtrec.eval.ranking import top_k_indices
from mtrec.nn.network import MultitaskNet
from mtrec.serving.catalogue import Catalogue
from mtrec.serving.foldin import fold_in_model
from mtrec.serving.results import ScoredItem


class ColdStart:
    """The answers for users the model has no vector for, from ``catalogue``'s popularity."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        #: The items, most-rated first (ties in index order).
        self.popular = top_k_indices(catalogue.popularity, len(catalogue.popularity))

    def popular_indices(self, k: int, allowed: torch.Tensor | None = None) -> np.ndarray:
        """The ``k`` most-rated items that ``allowed`` lets through."""
        popular = self.popular if allowed is None else self.popular[allowed.cpu().numpy()[self.popular]]
        return popular[:k]

    def items(self, k: int, allowed: torch.Tensor | None = None) -> list[ScoredItem]:
        """The ``k`` most-rated items (that ``allowed`` lets through) as a list without scores."""
        return [
            ScoredItem(rank=rank, **self.catalogue.describe(i), watch_score=None, p=None, rating=None, rating_raw=None)
            for rank, i in enumerate(self.popular_indices(k, allowed).tolist(), start=1)
        ]

    def table(self, users: list[Any], k: int, allowed: torch.Tensor | None) -> pa.Table:
        """The most-rated items for each of ``users`` (raw ids), as a batch table: null scores, ``cold_start`` true."""
        indices = self.popular_indices(k, allowed)
        n = len(users) * len(indices)
        repeated = pa.array(np.tile(indices, len(users)))
        return pa.table({
            "user": pa.array([str(u) for u in users for _ in indices]),
            "rank": pa.array(np.tile(np.arange(1, len(indices) + 1, dtype=np.int32), len(users))),
            "item": self.catalogue.item_array.take(repeated),
            "title": self.catalogue.title_array.take(repeated),
            "watch_score": pa.nulls(n, pa.float64()),
            "p": pa.nulls(n, pa.float32()),
            "rating": pa.nulls(n, pa.float32()),
            "rating_raw": pa.nulls(n, pa.float32()),
            "cold_start": pa.array(np.ones(n, dtype=bool)),
        })  # fmt: skip

    def fold_in(
        self, model, history: Sequence[tuple[Any, float | None]], instant: bool = False, user_features: Any = None
    ) -> tuple[MultitaskNet, torch.Tensor]:
        """A one-user network fitted to ``history`` (``(item, rating)`` pairs, items by id or title; with
        ``instant``, read through the encoder without fitting) and the history's items (distinct,
        ascending), to leave out of its list."""
        items = [self.catalogue.item_index(item, f" (history entry {n} of {len(history)})") for n, (item, _) in enumerate(history, 1)]
        network = fold_in_model(model, items, [rating for _, rating in history], instant=instant, user_features=user_features)
        return network, torch.tensor(sorted(set(items)), dtype=torch.long, device=self.catalogue.device)
