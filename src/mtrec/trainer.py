"""The training loop: epochs of shuffled batches, evaluation, early stopping, learning-rate schedules.

:func:`train_epochs` drives a :class:`mtrec.training.Step` over the batches an
:class:`mtrec.sampling.EpochSampler` draws. After each evaluation an :class:`EarlyStopping`
keeps the weights of the best validation epoch and stops once the criterion has not improved
for ``patience`` evaluations. A loss or a parameter that becomes NaN or infinite stops training
with :class:`mtrec.errors.TrainingDiverged`, naming the epoch, the step and the loss.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mtrec.errors import ConfigError, TrainingDiverged
from mtrec.evaluation import DEFAULT_K, METRICS, Evaluator, lower_is_better, metric_names
from mtrec.fitted import EpochRecord
from mtrec.losses import Batch
from mtrec.sampling import EpochSampler
from mtrec.training import Step

#: The early-stopping criterion that weighs both tasks.
JOINT = "joint"
#: The learning-rate schedules.
SCHEDULES = ("constant", "exponential", "cosine", "step")
LOSS_NAMES = ("watch loss L_F", "rating loss L_R", "joint loss")


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
    allowed = [JOINT, *metric_names(METRICS, k)]
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


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int, gamma: float, step_size: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule: None for ``constant``."""
    if schedule == "constant":
        return None
    if schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    raise ConfigError(f"unknown learning-rate schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def _check_finite(epoch: int, sums: torch.Tensor, per_step: torch.Tensor, network: nn.Module, step: Step) -> None:
    """:class:`TrainingDiverged` if a loss or a parameter of this epoch is not finite."""
    if bool(torch.isfinite(sums).all()):
        if all(bool(torch.isfinite(p).all()) for p in network.parameters()):
            return
        where, what = "after its last step", "a parameter became NaN or infinite"
    else:
        bad = (~torch.isfinite(per_step)).any(1).nonzero()
        index = int(bad[0]) if len(bad) else len(per_step) - 1
        column = int((~torch.isfinite(per_step[index])).nonzero()[0]) if len(bad) else 2
        value = float(per_step[index, column])
        where, what = f"at step {index + 1} of {len(per_step)}", f"the {LOSS_NAMES[column]} became {value}"
    rate = step.optimizer.param_groups[0]["lr"]
    raise TrainingDiverged(
        f"training diverged in epoch {epoch} {where}: {what}. Lower the learning rate (now {rate:g}) or the "
        "loss weights (--factorization-weight, --regression-weight); the run was not saved"
    )


def train_epochs(
    step: Step,
    sampler: EpochSampler,
    batch_size: int,
    epochs: int,
    evaluators: Mapping[str, Evaluator],
    eval_every: int = 1,
    eval_threads: int | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
    stopping: EarlyStopping | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[EpochRecord]:
    """Train for up to ``epochs`` epochs; evaluate on each of ``evaluators`` every ``eval_every`` and at the end.

    ``evaluators`` maps a prefix (``"valid"``, ``"test"``) to an evaluator; its metrics are
    recorded as ``<prefix>_<metric>``. ``stopping`` reads the ``valid`` metrics: it may end
    training early, and it leaves the best validation epoch's weights in the network. Returns
    one record per epoch trained, each also passed to ``callback``.
    """
    network = step.network
    history = []
    n = len(sampler)
    steps = -(-n // batch_size)
    network.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        learning_rate = step.optimizer.param_groups[0]["lr"]
        users, items, negatives, ratings = sampler.draw()
        sums = torch.zeros(3, dtype=torch.float64, device=users.device)
        per_step = torch.empty(steps, 3, dtype=torch.float32, device=users.device)
        for index, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            batch = Batch(
                users[start:stop],
                items[start:stop],
                negatives[start:stop],
                ratings[start:stop] if ratings is not None else None,
            )
            losses = step(batch)
            per_step[index] = losses
            sums += losses * (stop - start)
        _check_finite(epoch, sums, per_step, network, step)
        if scheduler is not None:
            scheduler.step()
        train_bpr, train_mse, train_loss = (sums / n).tolist()
        record = EpochRecord(
            epoch=epoch,
            train_bpr=train_bpr,
            train_mse=train_mse if ratings is not None else float("nan"),
            train_loss=train_loss,
            learning_rate=learning_rate,
        )
        stop_now = False
        if evaluators and (epoch % eval_every == 0 or epoch == epochs):
            with torch_threads(eval_threads):
                for prefix, evaluator in evaluators.items():
                    record.metrics.update({f"{prefix}_{k}": v for k, v in evaluator.evaluate(network).items()})
            if stopping is not None:
                valid = {k.removeprefix("valid_"): v for k, v in record.metrics.items() if k.startswith("valid_")}
                stop_now = stopping.update(epoch, valid, network)
        record.seconds = time.perf_counter() - started
        history.append(record)
        if callback is not None:
            callback(record)
        if stop_now:
            break
    if stopping is not None:
        stopping.restore(network)
    return history
