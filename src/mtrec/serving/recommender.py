"""Use a trained model: top-k recommendations, predictions for (user, item) pairs, similar items.

A :class:`Recommender` holds a fitted :class:`~mtrec.model.MultitaskModel` once, on its
device, with what every request needs precomputed (id maps, seen items, popularity, unit
item vectors), and answers in raw ids. It is a façade over the serving modules, one concern each:

* :mod:`mtrec.serving.catalogue`: ids and indices, titles and genres, seen items, filters;
* :mod:`mtrec.serving.ranker`: exact or HNSW ranking, watch scores, predictions, similar items,
  counted by :mod:`mtrec.eval.ranking`;
* :mod:`mtrec.serving.coldstart`: unknown users (the most-rated items) and fold-in;
* :mod:`mtrec.serving.batch`: every user's list and a frame's predictions, as Arrow tables;
* :mod:`mtrec.serving.loading`: which model files and run directories are served;
* :mod:`mtrec.serving.results`: what the answers hold.

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

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import torch
import torch.nn.functional as F

from mtrec.data.formats import Column
from mtrec.data.frames import backend_library
from mtrec.data.requests import MAX_HISTORY  # noqa: F401  (re-exported: serve.py reads it here)
from mtrec.errors import ConfigError
from mtrec.model import MultitaskModel
from mtrec.serving.batch import BATCH_BYTES, Batches
from mtrec.serving.catalogue import Catalogue
from mtrec.serving.coldstart import ColdStart
from mtrec.serving.foldin import features_user
from mtrec.serving.loading import check_fitted, load_model
from mtrec.serving.newitems import with_new_items
from mtrec.serving.ranker import Ranker
from mtrec.serving.results import (  # noqa: F401  (re-exported: the answers' types were defined here)
    Prediction,
    RankedItem,
    Recommendations,
    ScoredItem,
    SimilarItem,
    SimilarItems,
    check_k,
)
from mtrec.serving.retrieval import IndexConfig, Retrieval, watch_space


class Recommender:
    """Answers recommendation, prediction and similarity queries from a fitted model.

    Safe to share between threads: every query only reads the model's tensors, under
    ``torch.inference_mode``. Its parts (the modules above) are ``catalogue``, ``ranker``,
    ``cold`` and ``batches``; ``retrieval`` holds the indexes that rank the items.

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
        check_fitted(model)
        self.model = model
        self.network = model.network_.eval()
        self.device = model.device_
        data = model.data_
        self.num_items = data.num_items
        self.rating_scale = data.rating_scale
        self.has_ratings = data.has_ratings and model.regression_weight > 0
        self.catalogue = Catalogue(data, self.device)
        with torch.inference_mode():
            unit_items = F.normalize(self.network.item_vectors().detach(), dim=1)
        spaces = {"watch": lambda: watch_space(self.network), "similar": lambda: unit_items}
        index = index or IndexConfig()
        if getattr(self.network, "item_item", False) and index.kind == "hnsw":
            raise ConfigError(
                "this model's watch score has an item-item path, which is not an inner product an HNSW graph can search: "
                "use --index exact (auto does, for every catalogue the path allows)"
            )
        self.retrieval = Retrieval(index, self.num_items, spaces, model_file)
        self.ranker = Ranker(self.catalogue, self.network, self.retrieval, unit_items, self.rating_scale, self.has_ratings)
        self.cold = ColdStart(self.catalogue)
        self.batches = Batches(data, self.catalogue, self.ranker, self.cold)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", index: IndexConfig | None = None) -> Recommender:
        """A recommender for the model saved at ``path`` (a model file or a run directory).

        A run directory (one with a config.json or metrics.json) must hold a complete, consistent
        run (:func:`mtrec.runs.check_complete`): an unfinished or damaged one is refused, saying
        why (:func:`mtrec.serving.loading.load_model`). A folder that :meth:`MultitaskModel.save`
        wrote holds just the model file. An HNSW ``index`` is read from beside the model file, or
        built and saved there.
        """
        model, model_file = load_model(path, device)
        return cls(model, index, model_file)

    def user_index(self, user: Any) -> int | None:
        """The index of the user the data calls ``user``; ``None`` if the model never saw them."""
        return self.catalogue.user_index(user)

    def item_index(self, item: Any) -> int:
        """The index of the item named by raw id or title; see the module docstring."""
        return self.catalogue.item_index(item)

    def allowed(self, exclude: Iterable[Any] = (), include: Iterable[Any] | None = None, genres: Iterable[str] = ()) -> torch.Tensor | None:
        """The items a recommendation may hold: not in ``exclude``, in ``include`` (a candidate set)
        if given, and of one of ``genres`` if given; None when nothing is filtered.

        Items are named by raw id or title; an unknown one is an :class:`UnknownItemError`, an
        unknown genre a :class:`ConfigError` listing the genres the data has.
        """
        return self.catalogue.allowed(exclude, include, genres)

    @property
    def genres(self) -> dict[str, torch.Tensor]:
        """Per genre, which items have it."""
        return self.catalogue.genres

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
        leaves nothing gives an empty list. An unknown user, or one the model has no trained vector
        for (held out of training, and no user features to read), gets the ``k`` most-rated
        training items (that pass the filters) with ``cold_start=True``.
        """
        k = min(check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        index = self.catalogue.ranked_user_index(user)
        if index is None:
            return Recommendations(user=user, cold_start=True, exclude_seen=exclude_seen, items=self.cold.items(k, allowed))
        with torch.inference_mode():
            users = torch.tensor([index], device=self.device)
            seen = self.catalogue.seen(index) if exclude_seen else None
            items = self.ranker.ranked(self.network, users, seen, allowed, k)
        return Recommendations(user=self.catalogue.user_ids[index], cold_start=False, exclude_seen=exclude_seen, items=items)

    def recommend_history(
        self,
        history: Sequence[tuple[Any, float | None]],
        k: int = 10,
        exclude: Iterable[Any] = (),
        include: Iterable[Any] | None = None,
        genres: Iterable[str] = (),
        instant: bool = False,
        features: Mapping[str, Any] | None = None,
    ) -> Recommendations:
        """Recommendations for a user the model never saw, from their history (fold-in) and, for a
        model with user features, their attributes (``features``: ``{"age": 31, "gender": "F"}``).

        With ``instant``, the user's vector is read from the history through the model's encoder
        without any fitting (microseconds; as good as fitting for a history-aware model, and
        a mean user for an id-only one).

        ``history`` holds ``(item, rating)`` pairs, items by raw id or title and ratings None
        where unknown (then, for a history without any rating, only the watch loss fits). The
        user's vectors are fitted with everything else frozen (:func:`mtrec.serving.foldin.fold_in_model`), and
        the history's items are left out of the list. An empty history gets the most-rated items,
        flagged ``cold_start``. An unknown item is an :class:`UnknownItemError` naming it; a rating
        that is not a finite number on the model's rating scale a :class:`~mtrec.serving.foldin.RatingError`
        (a :class:`~mtrec.errors.DataError`) naming its entry.
        """
        k = min(check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        bags = None if features is None else self.user_feature_bags(features)
        if not history and bags is None:
            return Recommendations(user=None, cold_start=True, exclude_seen=True, items=self.cold.items(k, allowed))
        if not history:  # attributes alone: the feature encoders' user
            one, hidden = features_user(self.network, bags), None
        else:
            one, hidden = self.cold.fold_in(self.model, history, instant=instant, user_features=bags)
        with torch.inference_mode():
            users = torch.zeros(1, dtype=torch.long, device=self.device)
            ranked = self.ranker.ranked(one, users, hidden, allowed, k)
        return Recommendations(user=None, cold_start=False, exclude_seen=True, items=ranked)

    def with_candidates(self, table: Any) -> tuple[Recommender, list[Any]]:
        """A recommender whose catalogue also holds the items of ``table`` (item features, as the
        model's item features file lays them out) that the model never saw, each scored by its
        features alone (:mod:`mtrec.serving.newitems`), and the raw ids of ``table``'s items: pass
        them as ``include`` to recommend among them."""
        view, candidates = with_new_items(self.model, table)
        if view is self.model:
            return self, candidates
        # every item scored exactly: the candidates restrict the list anyway, and no graph is built per request
        return Recommender(view, IndexConfig(kind="exact")), candidates

    def user_feature_bags(self, features: Mapping[str, Any], where: str = "the user's features") -> Any:
        """A new user's attributes encoded by the model's user feature map; a :class:`ConfigError`
        for a model without user features, a :class:`~mtrec.errors.DataError` naming a bad value."""
        fitted = self.model.data_.features.get("users")
        if fitted is None:
            raise ConfigError("this model was trained without user features (features=none or items): it cannot read a user's attributes")
        return fitted.map.encode_record(features, where)

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
        k = min(check_k(k), self.num_items)
        allowed = self.allowed(exclude, include, genres)
        yield from self.batches.recommend_all(users, k, exclude_seen, allowed, budget_bytes, progress)

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
        tables = self.recommend_all(users, k=k, exclude_seen=exclude_seen, exclude=exclude, include=include, genres=genres)
        return self.batches.frame(tables, k, backend)

    def predict(self, pairs: Iterable[tuple[Any, Any]]) -> list[Prediction]:
        """Watch score and rating for each (user, item) pair of raw ids (or item titles), in one batch.

        Raises :class:`UnknownUserError` or :class:`UnknownItemError` naming the first unknown id.
        """
        users, items = self.catalogue.pair_indices(list(pairs))
        return self.ranker.predictions(users, items)

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
        return self.batches.predict_frame(pairs, user, item, prefix)

    def similar(self, item: Any, k: int = 10) -> SimilarItems:
        """The ``k`` items closest to ``item`` by cosine similarity of the factorisation head's item vectors."""
        k = min(check_k(k), self.num_items - 1)
        index = self.item_index(item)
        items = self.ranker.similar(index, k)
        return SimilarItems(item=self.catalogue.item_ids[index], title=self.catalogue.titles[index], items=items)
