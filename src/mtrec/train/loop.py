"""The training loop: epochs of shuffled batches, evaluation, early stopping, learning-rate schedules.

:class:`Trainer` drives a :class:`mtrec.train.steps.Step` over the batches an
:class:`mtrec.train.sampling.EpochSampler` draws. After each evaluation an :class:`EarlyStopping`
keeps the weights of the best validation epoch and stops once the criterion has not improved
for ``patience`` evaluations. A loss or a parameter that becomes NaN or infinite stops training
with :class:`mtrec.errors.TrainingDiverged`, naming the epoch, the step and the loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mtrec.errors import ConfigError, TrainingDiverged
from mtrec.eval.evaluation import DEFAULT_K, Evaluator, all_metrics, lower_is_better, metric_names
from mtrec.io.fitted import EpochRecord
from mtrec.nn.batch import first_of_each_user
from mtrec.nn.losses import Batch
from mtrec.nn.weighting import Fixed
from mtrec.registry import Registry
from mtrec.train.averaging import WeightAverage
from mtrec.train.callbacks import CallbackLike, as_callbacks
from mtrec.train.distributed import Distributed
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import Step

#: The early-stopping criterion that weighs both tasks.
JOINT = "joint"
#: The learning-rate schedules.


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_early_stopping(criterion: str, patience: int, k: Sequence[int] = DEFAULT_K) -> None:
    """:class:`ConfigError` unless ``criterion`` is ``"joint"`` or a metric (with one of the cut-offs ``k``)
    and ``patience`` a positive whole number."""
    allowed = [JOINT, *metric_names(all_metrics(), k)]
    if criterion not in allowed:
        raise ConfigError(f"unknown early-stopping criterion {criterion!r}; use one of {', '.join(allowed)}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ConfigError(f"patience must be a positive whole number of evaluations, got {patience!r}")


def joint_score(metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """The mean relative improvement over ``reference`` of the validation MSE and MRR (higher is better).

    Δ = mean over the tasks measured of (reference MSE − MSE) / reference MSE and
    (MRR − reference MRR) / reference MRR: the Δm of multi-task papers, with the mean training
    rating and the most-popular ranking as the reference, so that neither task's scale dominates.
    """
    terms = []
    mse, mrr = metrics.get("mse"), metrics.get("mrr")
    if mse is not None and math.isfinite(mse) and reference.get("mse"):
        terms.append((reference["mse"] - mse) / reference["mse"])
    if mrr is not None and reference.get("mrr"):
        terms.append((mrr - reference["mrr"]) / reference["mrr"])
    return sum(terms) / len(terms) if terms else -math.inf


class EarlyStopping:
    """Keeps the weights of the best validation epoch; says when to stop.

    Parameters
    ----------
    criterion:
        ``"joint"`` (:func:`joint_score`) or a validation metric (``"mse"``, ``"ndcg@10"``...).
    patience:
        Evaluations without improvement before training stops.
    reference:
        The reference MSE and MRR of the joint criterion.
    """

    def __init__(self, criterion: str, patience: int, reference: Mapping[str, float] | None = None) -> None:
        check_early_stopping(criterion, patience, [int(criterion.split("@")[1])] if "@" in criterion else DEFAULT_K)
        self.criterion = criterion
        self.patience = patience
        self.reference = dict(reference or {})
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0

    def score(self, metrics: Mapping[str, float]) -> float:
        """The criterion on validation ``metrics`` (unprefixed names), higher is better."""
        if self.criterion == JOINT:
            return joint_score(metrics, self.reference)
        value = metrics[self.criterion]
        if value is None or math.isnan(value):
            return -math.inf
        return -value if lower_is_better(self.criterion) else value

    def update(self, epoch: int, metrics: Mapping[str, float], network: nn.Module) -> bool:
        """Record an evaluation; True when training should stop."""
        score = self.score(metrics)
        if score > self.best_score or self.best_epoch is None:
            self.best_score, self.best_epoch, self.waited = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, network: nn.Module) -> None:
        """Put the best epoch's weights back into ``network``."""
        if self.best_state is not None:
            with torch.no_grad():
                for name, tensor in network.state_dict().items():
                    tensor.copy_(self.best_state[name])


#: The per-epoch learning-rate schedules by name (:mod:`mtrec.registry`): each makes the scheduler
#: of an optimizer from the epoch count, γ and the step size (None: the rate stays as it is).
SCHEDULES: Registry[Callable[..., torch.optim.lr_scheduler.LRScheduler | None]] = Registry("learning-rate schedule")


@SCHEDULES.register("constant")
def _no_schedule(optimizer: torch.optim.Optimizer, epochs: int, gamma: float, step_size: int) -> None:
    return None


@SCHEDULES.register("exponential")
def _exponential(optimizer: torch.optim.Optimizer, epochs: int, gamma: float, step_size: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


@SCHEDULES.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, epochs: int, gamma: float, step_size: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))


@SCHEDULES.register("step")
def _step(optimizer: torch.optim.Optimizer, epochs: int, gamma: float, step_size: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int, gamma: float, step_size: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule called ``schedule``: None for ``constant``."""
    return SCHEDULES[schedule](optimizer, epochs, gamma, step_size)


def _check_finite(epoch: int, sums: torch.Tensor, per_step: torch.Tensor, network: nn.Module, step: Step) -> None:
    """:class:`TrainingDiverged` if a loss or a parameter of this epoch is not finite."""
    if bool(torch.isfinite(sums).all()):
        if all(bool(torch.isfinite(p).all()) for p in network.parameters()):
            return
        where, what = "after its last step", "a parameter became NaN or infinite"
    else:
        bad = (~torch.isfinite(per_step)).any(1).nonzero()
        index = int(bad[0]) if len(bad) else len(per_step) - 1
        column = int((~torch.isfinite(per_step[index])).nonzero()[0]) if len(bad) else per_step.shape[1] - 1
        value = float(per_step[index, column])
        names = [f"{task} loss" for task in step.objective.task_names] + ["joint loss"]
        where, what = f"at step {index + 1} of {len(per_step)}", f"the {names[column]} became {value}"
    rate = step.optimizer.param_groups[0]["lr"]
    raise TrainingDiverged(
        f"training diverged in epoch {epoch} {where}: {what}. Lower the learning rate (now {rate:g}) or the "
        "loss weights (--factorization-weight, --regression-weight); the run was not saved"
    )


class Trainer:
    """Drives a :class:`~mtrec.train.steps.Step` over epochs of batches; evaluates, stops early,
    schedules the learning rate, and saves and restores its whole state for checkpoints.

    Parameters
    ----------
    step, sampler, batch_size, epochs:
        What trains, on which samples, in global batches of this size, for up to this many epochs.
    evaluators:
        A prefix (``"valid"``, ``"test"``) per evaluator; its metrics are recorded as ``<prefix>_<metric>``.
    eval_every, eval_threads:
        Evaluate every N epochs (and after the last), with this many threads.
    callbacks:
        Called as training goes (:mod:`mtrec.train.callbacks`): progress, checkpoints, resuming.
    stopping:
        Reads the ``valid`` metrics; may end training early and leaves the best epoch's weights.
    scheduler:
        The per-epoch learning-rate schedule.
    distributed:
        This process's place in a distributed run (it then trains its slice of each global
        batch, and the gradients are summed over processes), or None.
    average:
        A moving average of the weights (:class:`~mtrec.train.averaging.WeightAverage`), updated
        after every step: evaluation and early stopping read it, and the network ends training
        holding it (or, under early stopping, the best evaluation's average). None: the weights as trained.
    """

    def __init__(
        self,
        step: Step,
        sampler: EpochSampler,
        batch_size: int,
        epochs: int,
        evaluators: Mapping[str, Evaluator],
        eval_every: int = 1,
        eval_threads: int | None = None,
        stopping: EarlyStopping | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        distributed: Distributed | None = None,
        callbacks: Iterable[CallbackLike] | None = None,
        average: WeightAverage | None = None,
    ) -> None:
        self.step, self.sampler, self.batch_size, self.epochs = step, sampler, batch_size, epochs
        self.average = average
        self.evaluators, self.eval_every, self.eval_threads = evaluators, max(1, eval_every), eval_threads
        self.stopping, self.scheduler, self.distributed = stopping, scheduler, distributed
        self.callbacks = as_callbacks(callbacks)
        self.history: list[EpochRecord] = []
        self.stopped = False
        if distributed is not None:
            step.reduce = distributed.sum
            if distributed.exchange == "rows":
                step.reduce_rows = distributed.sum_rows

    def train_epoch(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One epoch of steps over the sampler's draw: the sums of the losses over the pairs (each task's,
        then the joint loss), each step's losses, and whether the batches had ratings."""
        step, n, size = self.step, len(self.sampler), self.batch_size
        users, items, negatives, ratings = self.sampler.draw()
        weights, log_q = self.sampler.drawn_weights, self.sampler.log_q
        width = len(step.objective.task_names) + 1  # each task's loss, and the joint loss
        sums = torch.zeros(width, dtype=torch.float64, device=users.device)
        per_step = torch.empty(-(-n // size), width, dtype=torch.float32, device=users.device)
        marks_users = self.distributed is not None and getattr(step.objective, "row_l2", 0.0) > 0
        for index, start in enumerate(range(0, n, size)):
            stop = min(start + size, n)
            count, first = None, None
            if self.distributed is not None:
                count = stop - start  # the losses average over the global batch
                global_start = start
                start, stop = self.distributed.share(start, stop)
                if marks_users:  # the row penalty counts each user of the global batch once
                    first = first_of_each_user(users[global_start : global_start + count])[start - global_start : stop - global_start]
            batch = Batch(
                users[start:stop],
                items[start:stop],
                negatives[start:stop],
                ratings[start:stop] if ratings is not None else None,
                count,
                weights[start:stop] if weights is not None else None,
                log_q,
                first,
            )
            losses = step(batch)
            if self.average is not None:
                self.average.update()
            per_step[index] = losses
            sums += losses * (stop - start if count is None else count)
        if self.distributed is not None:
            self.distributed.sum([sums, per_step])  # each process's part of every global batch's loss
        return sums, per_step, ratings is not None

    def _epoch(self, epoch: int) -> EpochRecord:
        step, network = self.step, self.step.network
        started = time.perf_counter()
        learning_rate = step.optimizer.param_groups[0]["lr"]
        group = getattr(step, "group", None)  # a stacked group trains this run's epoch with the others' (mtrec.train.stacked)
        sums, per_step, has_ratings = group.train_epoch(self) if group is not None else self.train_epoch()
        n = len(self.sampler)
        _check_finite(epoch, sums, per_step, network, step)
        if self.scheduler is not None:
            self.scheduler.step()
        record = self._record(epoch, (sums / n).tolist(), has_ratings=has_ratings, learning_rate=learning_rate)
        if self.evaluators and (epoch % self.eval_every == 0 or epoch == self.epochs):
            if group is not None:  # on the group's thread, with its threads: its tensor work runs fastest there
                group.call(self._evaluate, epoch, record, None)
            else:
                self._evaluate(epoch, record)
        record.seconds = time.perf_counter() - started
        return record

    def _evaluate(self, epoch: int, record: EpochRecord, threads: int | None = -1) -> None:
        """Add the evaluators' metrics to the epoch's ``record`` (computed with ``threads`` intra-op
        threads: -1 for :attr:`eval_threads`, None for the caller's); update early stopping."""
        network = self.step.network
        averaged = self.average.applied() if self.average is not None else contextlib.nullcontext()
        with averaged:  # the network holds the average while it is measured and kept
            with torch_threads(self.eval_threads if threads == -1 else threads):
                for prefix, evaluator in self.evaluators.items():
                    record.metrics.update({f"{prefix}_{k}": v for k, v in evaluator.evaluate(network).items()})
            if self.stopping is not None:
                valid = {k.removeprefix("valid_"): v for k, v in record.metrics.items() if k.startswith("valid_")}
                self.stopped = self.stopping.update(epoch, valid, network)

    def _record(self, epoch: int, means: list[float], has_ratings: bool, learning_rate: float) -> EpochRecord:
        """The epoch's record of its mean losses (each task's, then the joint loss), before evaluation."""
        objective = self.step.objective
        untrained = objective.untrained(has_ratings)
        losses = {task: float("nan") if task in untrained else value for task, value in zip(objective.task_names, means)}
        record = EpochRecord(epoch=epoch, train_losses=losses, train_loss=means[-1], learning_rate=learning_rate)
        if not isinstance(objective.weighting, Fixed):
            record.task_weights = {task: float(w) for task, w in objective.weighting.task_weights().items()}
        return record

    def run(self) -> list[EpochRecord]:
        """Train the epochs not trained yet (all of them, unless a callback restored a checkpoint)."""
        self.step.network.train()
        try:
            for callback in self.callbacks:
                callback.on_train_begin(self)
            for epoch in range(len(self.history) + 1, self.epochs + 1):
                if self.stopped:
                    break
                record = self._epoch(epoch)
                self.history.append(record)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
            self._leave_group()
            if self.average is not None:
                self.average.copy_to_network()
            if self.stopping is not None:
                self.stopping.restore(self.step.network)
        finally:
            self._leave_group()
            for callback in self.callbacks:
                callback.on_train_end(self)
        return self.history

    def _leave_group(self) -> None:
        """A run of a stacked group trains no more epochs: the others go on without it."""
        group = getattr(self.step, "group", None)
        if group is not None:
            group.leave(self.step)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue exactly where training is: tensors, and plain JSON facts."""
        step = self.step
        # copies: the network goes on training (and, with a weight average, ends holding the average)
        tensors = {f"network.{k}": v.detach().clone() for k, v in step.network.state_dict().items()}
        tensors.update({f"weighting.{k}": v for k, v in step.objective.weighting.state_dict().items()})
        optimizer = step.optimizer.state_dict()
        for index, state in optimizer["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["sampler.generator"] = self.sampler.state()
        if self.average is not None:
            tensors.update(self.average.state())
        info = {
            "epoch": len(self.history),
            "history": [record.to_json() for record in self.history],
            "optimizer_groups": optimizer["param_groups"],
            "scheduler": None if self.scheduler is None else _plain(self.scheduler.state_dict()),
            "weighting": step.objective.weighting.extra_state(),
            "stopped": self.stopped,
        }
        if self.stopping is not None:
            info["stopping"] = {"best_score": self.stopping.best_score, "best_epoch": self.stopping.best_epoch, "waited": self.stopping.waited}
            if self.stopping.best_state is not None:
                tensors.update({f"best.{k}": v for k, v in self.stopping.best_state.items()})
        return tensors, info

    def restore(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """Continue from a :meth:`state`: the next :meth:`run` trains epoch ``info["epoch"] + 1`` on."""
        step = self.step
        with torch.no_grad():
            for name, tensor in step.network.state_dict().items():
                tensor.copy_(tensors[f"network.{name}"])
        weighting_state = {k.removeprefix("weighting."): v for k, v in tensors.items() if k.startswith("weighting.")}
        if weighting_state:
            step.objective.weighting.load_state_dict(weighting_state)
        step.objective.weighting.load_extra_state(info.get("weighting") or {})
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value
        step.optimizer.load_state_dict({"state": state, "param_groups": info["optimizer_groups"]})
        self.sampler.set_state(tensors["sampler.generator"])
        if self.average is not None:
            self.average.load(tensors)
        if self.scheduler is not None and info.get("scheduler") is not None:
            self.scheduler.load_state_dict(info["scheduler"])
        self.history = [EpochRecord.from_json(record) for record in info["history"]]
        self.stopped = bool(info.get("stopped"))
        if self.stopping is not None and info.get("stopping"):
            self.stopping.best_score = info["stopping"]["best_score"]
            self.stopping.best_epoch = info["stopping"]["best_epoch"]
            self.stopping.waited = info["stopping"]["waited"]
            best = {k.removeprefix("best."): v.clone() for k, v in tensors.items() if k.startswith("best.")}
            self.stopping.best_state = best or None


def _plain(value):
    """A state dict as JSON values (tensors as lists)."""
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
