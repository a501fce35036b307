"""A training session: what one call of :meth:`MultitaskModel.fit <mtrec.model.MultitaskModel.fit>` builds and runs.

From the model's settings, the data, a distributed context and callbacks it builds the
evaluators and early stopping (:func:`evaluation_plan`), the network, the training step, the
learning-rate schedule, the sampler and the :class:`~mtrec.train.loop.Trainer`, and runs them.
The estimator keeps what it gives back (:class:`TrainingResult`); infrastructure (checkpoints,
resuming, TensorBoard, progress) arrives as callbacks (:mod:`mtrec.train.callbacks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch

from mtrec.data.feature_maps import fit_features, known_entities
from mtrec.data.interactions import Interactions, check_same_ids
from mtrec.errors import ConfigError, DataError
from mtrec.eval.baselines import PopularityNet
from mtrec.eval.evaluation import Evaluator, metric_names
from mtrec.io.fitted import EpochRecord
from mtrec.nn.itemitem import check_item_item
from mtrec.settings import SettingsError
from mtrec.train.averaging import WeightAverage
from mtrec.train.callbacks import CallbackLike
from mtrec.train.devices import resolve_device
from mtrec.train.distributed import Distributed
from mtrec.train.itemitem import choose_item_item
from mtrec.train.loop import JOINT, EarlyStopping, Trainer, check_early_stopping, make_scheduler, torch_threads
from mtrec.train.memory import check_memory
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import Step


class Settings(Protocol):
    """What a session reads of the estimator's settings (:class:`~mtrec.model.MultitaskModel` has them)."""

    seed: int
    batch_size: int
    negatives: int
    exclude_positives: bool
    lr_schedule: str
    lr_gamma: float
    lr_step: int
    num_threads: int | None
    regression_weight: float

    def build_network(self, num_users: int, num_items: int, device: torch.device | str = "cpu") -> Any: ...

    def make_step(self, network: Any) -> Step: ...


def reference_metrics(train: Interactions, validation: Evaluator) -> dict[str, float]:
    """The joint criterion's references: the validation MSE of the training mean rating and the
    validation MRR of the most popular items (:class:`~mtrec.eval.baselines.PopularityNet`)."""
    baseline = validation.evaluate(PopularityNet(train))
    return {"mse": baseline.get("mse", float("nan")), "mrr": baseline["mrr"]}


@dataclass
class EvaluationPlan:
    """What a session measures: evaluators by prefix (``valid``, ``test``) and early stopping, if any."""

    evaluators: dict[str, Evaluator] = field(default_factory=dict)
    stopping: EarlyStopping | None = None
    criterion: str | None = None


def evaluation_plan(
    train: Interactions,
    validation: Interactions | None,
    test: Interactions | None,
    device: torch.device,
    metrics: Sequence[str],
    k: Sequence[int],
    early_stopping: str | None,
    patience: int,
    rates: bool,
    distributed: Distributed | None = None,
) -> EvaluationPlan:
    """The evaluators of ``validation`` (its rankings without ``train``'s items, measuring what the
    criterion reads too) and ``test`` (without ``train``'s and ``validation``'s), and early stopping
    on ``early_stopping``; ``rates`` says whether the model learns ratings (the joint criterion then reads MSE)."""
    plan = EvaluationPlan(criterion=early_stopping)
    if validation is not None:
        wanted, valid_k = list(metrics), list(k)
        if early_stopping == JOINT:
            wanted += ["mse", "mrr"] if rates else ["mrr"]
        elif early_stopping is not None:
            metric, _, cutoff = early_stopping.partition("@")
            wanted.append(metric)
            valid_k += [int(cutoff)] if cutoff else []
        plan.evaluators["valid"] = Evaluator(validation, train, device, list(dict.fromkeys(wanted)), list(dict.fromkeys(valid_k)), distributed)
        if early_stopping is not None:
            plan.stopping = EarlyStopping(early_stopping, patience, reference_metrics(train, plan.evaluators["valid"]))
    if test is not None:
        known = [train] if validation is None else [train, validation]
        plan.evaluators["test"] = Evaluator(test, known, device, metrics, k, distributed)
    return plan


def preflight(
    settings: Any,
    train: Interactions,
    epochs: int,
    test: Interactions | None,
    validation: Interactions | None,
    early_stopping: str | None,
    patience: int,
    metrics: Sequence[str],
    k: Sequence[int],
) -> torch.device:
    """Raise what training ``settings`` (a :class:`~mtrec.config.model.ModelConfig`) on these arguments
    would raise, before any work: bad epochs, metrics or early stopping, empty or mismatched data, a
    rating head without ratings, more memory than the device has. Returns the device."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    metric_names(metrics, k)
    if early_stopping is not None:
        check_early_stopping(early_stopping, patience, k)
        if validation is None:
            raise SettingsError([("", "early stopping needs a validation set (fit's validation; a run's {valid_fraction} or {valid_k})")])
    if len(train) == 0:
        raise DataError("the training set is empty")
    if getattr(settings, "item_item", False):
        check_item_item(train.num_items)
        if validation is None and (settings.item_item_l2 is None or settings.item_item_weight is None):
            raise ConfigError(
                "the item-item path chooses its l2 and weight on a validation set: give a validation set, or both item_item_l2 and item_item_weight"
            )
    for side in getattr(settings, "feature_sides", ()):
        table = getattr(train, f"{side[:-1]}_features", None)
        if table is None:
            raise ConfigError(
                f"features={settings.features} needs {side[:-1]} features, and the data has none: "
                f"give --{side[:-1]}-features FILE (a MovieLens release has them where it has the attributes)"
            )
        for name in settings.feature_columns()[side] or ():
            table.column(name)  # a column the table lacks: an error naming those it has, before anything is written
    device = resolve_device(settings.device)
    check_memory(settings.memory_needed(train.num_users, train.num_items), device)
    if not train.has_ratings and settings.regression_weight > 0:
        raise ConfigError("the data has no ratings, so the rating head cannot train: set regression_weight to 0")
    for other in (test, validation):
        if other is not None:
            check_same_ids(train, other)
    return device


@dataclass
class TrainingResult:
    """What a session gives the estimator: the trained network, its history, and which epoch it keeps and why."""

    network: Any
    history: list[EpochRecord]
    step: str
    selected_epoch: int | None
    selection: dict[str, Any]
    #: The returned network's own metrics (``valid_<metric>``, ``test_<metric>``) where it differs from
    #: the selected epoch's record: with the item-item path chosen after training. Empty otherwise.
    final_metrics: dict[str, float] = field(default_factory=dict)


class TrainingSession:
    """One training run of ``settings`` on ``train``: built once, run once.

    Parameters
    ----------
    settings:
        The estimator's settings (:class:`Settings`).
    train, epochs, device:
        The training data, up to how many epochs, and where.
    plan:
        The evaluators and early stopping (:func:`evaluation_plan`).
    eval_every:
        Evaluate every N epochs (and after the last).
    distributed:
        This process's place in a distributed run, or None.
    callbacks:
        Called as training goes (:mod:`mtrec.train.callbacks`).
    """

    def __init__(
        self,
        settings: Settings,
        train: Interactions,
        epochs: int,
        device: torch.device,
        plan: EvaluationPlan,
        eval_every: int = 1,
        distributed: Distributed | None = None,
        callbacks: Iterable[CallbackLike] | None = None,
    ) -> None:
        self.settings, self.train, self.epochs, self.device, self.plan = settings, train, epochs, device, plan
        self.eval_every, self.distributed, self.callbacks = eval_every, distributed, callbacks
        sides = getattr(settings, "feature_sides", ())
        #: The fitted features of each side the model reads (:mod:`mtrec.data.feature_maps`).
        self.features = fit_features(sides, train, settings.feature_columns()) if sides else {}
        rows = {side: fitted.map.size for side, fitted in self.features.items()}
        self.network = settings.build_network(train.num_users, train.num_items, device, rows or None).use_histories(*train.seen_items_csr())
        self.known = known_entities(train)
        for side, fitted in self.features.items():
            self.network.use_features(side, fitted.bags.indptr, fitted.bags.indices, fitted.bags.weights)
            self.network.use_known(side, self.known[side])
        if getattr(settings, "start_at_mean", False) and train.has_ratings:
            self.network.start_ratings_at(float(np.mean(train.ratings, dtype=np.float64)))

    def _trainer(self, eval_threads: int) -> Trainer:
        settings, plan = self.settings, self.plan
        step = settings.make_step(self.network)
        scheduler = make_scheduler(step.optimizer, settings.lr_schedule, self.epochs, settings.lr_gamma, settings.lr_step)
        with_ratings = self.train.has_ratings and settings.regression_weight > 0
        sampler = EpochSampler(
            self.train, settings.seed, self.device, with_ratings, settings.negatives, settings.exclude_positives,
            getattr(settings, "batch_by", "pairs"), getattr(settings, "negative_sampling", "uniform"),
            getattr(settings, "watch_weights", "none"), np.flatnonzero(self.known["items"]) if "items" in self.features else None,
        )  # fmt: skip
        decay = getattr(settings, "ema", 0.0)
        average = WeightAverage(self.network, decay) if decay > 0 else None
        return Trainer(
            step, sampler, settings.batch_size, self.epochs, plan.evaluators, self.eval_every, eval_threads,
            plan.stopping, scheduler, self.distributed, self.callbacks, average,
        )  # fmt: skip

    def run(self) -> TrainingResult:
        """Train; the network keeps the best validation epoch's weights under early stopping, else the last's."""
        eval_threads = torch.get_num_threads()  # evaluation keeps the caller's threads
        with torch_threads(self.settings.num_threads):
            trainer = self._trainer(eval_threads)
            history = trainer.run()
        stopping = self.plan.stopping
        last = history[-1].epoch if history else None
        selected = stopping.best_epoch if stopping is not None and stopping.best_epoch else last
        selection: dict[str, Any] = {}
        if stopping is not None:
            references = {f"reference_{k}": v for k, v in stopping.reference.items()}
            selection = {"criterion": self.plan.criterion, "score": stopping.best_score, **references}
        final: dict[str, float] = {}
        if getattr(self.network, "item_item", False):
            l2, weight = getattr(self.settings, "item_item_l2", None), getattr(self.settings, "item_item_weight", None)
            with torch_threads(self.settings.num_threads):
                selection.update(choose_item_item(self.network, self.plan.evaluators.get("valid"), l2, weight))
            # the epochs' records measured the network without the path: measure the model as it is kept
            for prefix, evaluator in self.plan.evaluators.items():
                final.update({f"{prefix}_{k}": v for k, v in evaluator.evaluate(self.network).items()})
        return TrainingResult(self.network, history, trainer.step.kind, selected, selection, final)
