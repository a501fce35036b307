"""What a fitted model keeps: its data's description, the history of its epochs and their summary.

These are plain records, shared by the estimator (:mod:`mtrec.model`), the model files
(:mod:`mtrec.io.checkpoint`), the run directories (:mod:`mtrec.runs`) and the service; none of
them imports the others through this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from mtrec.data.feature_maps import FittedFeatures
from mtrec.data.interactions import Interactions
from mtrec.data.metadata import ItemMetadata

#: Keys of mtrec 0.2's records, read back under the names of their tasks.
LEGACY_KEYS = {"train_bpr": "train_watch", "train_mse": "train_rating", "weight_f": "weight_watch", "weight_r": "weight_rating"}
#: The keys of a record besides its tasks' losses, weights and metrics.
RECORD_KEYS = ("epoch", "train_loss", "seconds", "learning_rate")


def finite_or_none(value: Any) -> Any:
    """A float that is NaN or ±inf becomes None (JSON has no such numbers); anything else is kept."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def current_keys(record: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON with mtrec 0.2's keys (``train_bpr``, ``weight_f``...) under their tasks' names."""
    return {LEGACY_KEYS.get(key, key): value for key, value in record.items()}


@dataclass
class EpochRecord:
    """What one epoch of training measured.

    Parameters
    ----------
    epoch:
        1-based epoch number.
    train_losses:
        Each task's mean loss over the epoch's batches, by task name (``watch``, ``rating``...);
        NaN for a task the data cannot train (the rating loss of data without ratings).
    train_loss:
        The mean joint loss.
    metrics:
        Evaluation results of this epoch, keyed ``valid_<metric>`` and ``test_<metric>``
        (``test_mse``, ``valid_ndcg@10``...); empty on epochs not evaluated.
    seconds:
        Wall time of the epoch, evaluation included.
    learning_rate:
        The learning rate the epoch was trained with.
    task_weights:
        The tasks' weights at the epoch's end, by task, for a weighting that sets its own
        (uncertainty, GradNorm, MGDA; PCGrad's are the λs); None for fixed weights.

    In JSON (:meth:`to_json`) a task's loss is ``train_<task>`` and its weight ``weight_<task>``.
    """

    epoch: int
    train_losses: dict[str, float]
    train_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    learning_rate: float | None = None
    task_weights: dict[str, float] | None = None

    @property
    def test_mse(self) -> float | None:
        return self.metrics.get("test_mse")

    @property
    def test_mrr(self) -> float | None:
        return self.metrics.get("test_mrr")

    def get(self, name: str) -> float | None:
        """A training loss (``train_<task>``, ``train_loss``) or a metric by its JSON name; None where not measured."""
        name = LEGACY_KEYS.get(name, name)
        if name == "train_loss":
            return self.train_loss
        if name.startswith("train_"):
            return self.train_losses.get(name.removeprefix("train_"))
        return self.metrics.get(name)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: a metric that does not apply (NaN) or overflowed (±inf) becomes None.

        Test metrics are None on epochs that were not evaluated, as earlier versions wrote them.
        """
        record: dict[str, Any] = {"epoch": self.epoch}
        record.update({f"train_{task}": value for task, value in self.train_losses.items()})
        record["train_loss"] = self.train_loss
        record.update({"test_mse": None, "test_mrr": None})
        record.update(self.metrics)
        record["seconds"] = self.seconds
        if self.learning_rate is not None:
            record["learning_rate"] = self.learning_rate
        if self.task_weights is not None:
            record.update({f"weight_{task}": value for task, value in self.task_weights.items()})
        return {key: finite_or_none(value) for key, value in record.items()}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> EpochRecord:
        """The record :meth:`to_json` wrote (None read back as NaN for the training losses), or one
        of mtrec 0.2 (``train_bpr``, ``train_mse``, ``weight_f``, ``weight_r``)."""
        record = current_keys(record)
        number = lambda value: math.nan if value is None else float(value)  # noqa: E731
        losses = {k.removeprefix("train_"): number(v) for k, v in record.items() if k.startswith("train_") and k != "train_loss"}
        weights = {k.removeprefix("weight_"): v for k, v in record.items() if k.startswith("weight_")}
        known = {*RECORD_KEYS, *(f"train_{task}" for task in losses), *(f"weight_{task}" for task in weights)}
        rate = record.get("learning_rate")
        return cls(
            epoch=int(record["epoch"]),
            train_losses=losses,
            train_loss=number(record.get("train_loss")),
            metrics={k: float(v) for k, v in record.items() if k not in known and v is not None},
            seconds=float(record.get("seconds") or 0.0),
            learning_rate=None if rate is None else float(rate),
            task_weights=None if not weights or None in weights.values() else {k: float(v) for k, v in weights.items()},
        )


def history_table(history: list[EpochRecord]) -> pa.Table:
    """The per-epoch records as a table: one row per epoch, the columns of :meth:`EpochRecord.to_json`.

    That is ``epoch``, the training losses (``train_<task>``, ``train_loss``), ``test_mse`` and
    ``test_mrr``, every metric measured in any epoch (null in the epochs it was not), ``seconds``
    and, where recorded, ``learning_rate`` and the task weights ``weight_<task>``. A number that
    does not apply (the rating loss of data without ratings) is null.
    """
    records = [record.to_json() for record in history]
    # An empty history still has the columns every record has.
    names = dict.fromkeys(name for record in records or [EpochRecord(0, {}, 0.0).to_json()] for name in record)
    return pa.table({name: pa.array([row.get(name) for row in records], pa.int64() if name == "epoch" else pa.float64()) for name in names})


@dataclass
class FittedData:
    """What a fitted model keeps of its training data: sizes, id maps, seen items, metadata."""

    num_users: int
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    item_metadata: ItemMetadata | None
    rating_scale: tuple[float, float] | None
    has_ratings: bool
    name: str
    #: Each seen item's training rating, aligned with ``seen_indices``; None for data without
    #: ratings, and for a model file saved before they were kept.
    seen_ratings: np.ndarray | None = None
    #: The side features the model reads, by side (:class:`mtrec.data.feature_maps.FittedFeatures`).
    features: dict[str, FittedFeatures] = field(default_factory=dict)

    @classmethod
    def from_interactions(cls, data: Interactions, features: dict[str, FittedFeatures] | None = None) -> FittedData:
        indptr, indices = data.seen_items_csr()
        # seen_items_csr's order: by user, then item (a user's items are distinct)
        ratings = data.ratings[np.lexsort((data.items, data.users))].astype(np.float32) if data.has_ratings else None
        return cls(
            num_users=data.num_users,
            num_items=data.num_items,
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            seen_indptr=indptr,
            seen_indices=indices,
            item_metadata=data.item_metadata,
            rating_scale=data.rating_scale,
            has_ratings=data.has_ratings,
            name=data.name,
            seen_ratings=ratings,
            features=dict(features or {}),
        )


class FittedModel(Protocol):
    """What evaluation and serving need of a fitted estimator: its network and its data's description."""

    network_: Any
    data_: FittedData | None
    history_: list[EpochRecord]


def summarize(history: list[EpochRecord], selected_epoch: int | None = None, selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary metrics.json and ``GET /model`` give of a training history.

    ``final`` is the last epoch; ``selected`` the epoch whose weights the model keeps
    (``selected_epoch``, by default the last) with its validation and test metrics, and
    ``selection`` how it was chosen (the criterion, its reference and its value). The best
    test MSE and MRR over all epochs are an **oracle**: picked on the test set, they say how
    good an epoch was, never which to keep, and are labelled so.
    """
    records = [record.to_json() for record in history]
    summary: dict[str, Any] = {"final": records[-1] if records else None}
    if records:
        epoch = selected_epoch if selected_epoch is not None else records[-1]["epoch"]
        chosen = next(record for record in records if record["epoch"] == epoch)
        summary["selected"] = {
            "epoch": epoch,
            **{k: v for k, v in chosen.items() if k.startswith(("valid_", "test_")) and v is not None},
        }
        if selection:
            summary["selection"] = {k: finite_or_none(v) for k, v in selection.items()}
    for metric, lower in (("test_mse", True), ("test_mrr", False)):
        measured = [r for r in records if r.get(metric) is not None]
        if measured:
            best = (min if lower else max)(measured, key=lambda r: r[metric])
            summary[f"oracle_best_{metric}"] = {"value": best[metric], "epoch": best["epoch"]}
    return summary
