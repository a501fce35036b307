"""The training objective: the specification that every training step computes.

A :class:`JointObjective` holds tasks by name (:mod:`mtrec.nn.tasks`: ``watch`` and ``rating``,
or any others) and a weight for each, and a weighting (:mod:`mtrec.nn.weighting`) that joins
their losses: ``fixed`` is Σ_t λ_t·L_t, the seed's λF·L_F + λR·L_R.
:class:`mtrec.train.steps.AutogradStep` differentiates it with autograd;
:class:`mtrec.train.steps.FusedStep` computes the same gradients by hand for the objectives it claims.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from mtrec.errors import ConfigError
from mtrec.nn.batch import Batch
from mtrec.nn.tasks import Task, default_tasks
from mtrec.nn.weighting import make_weighting

#: Largest loss weight accepted: beyond it Adam's first steps are already dominated by the
#: weight's scale and a float32 loss can overflow. The weights are used as given, not normalised.
MAX_LOSS_WEIGHT = 1000.0

#: What a task may be called: a JSON key ``train_<task>`` and a TensorBoard tag ``train/<task>_loss``.
TASK_NAME = re.compile(r"[a-z][a-z0-9_]*")
#: Names a task may not take: ``train_loss`` is the joint loss.
RESERVED = ("loss",)

#: The seed's weights: λF = λR = 0.5.
DEFAULT_WEIGHTS = {"watch": 0.5, "rating": 0.5}


def check_weights(weights: Mapping[str, float]) -> None:
    """Each weight must be a finite number in [0, MAX_LOSS_WEIGHT], and not all of them 0; the
    messages name the weights by their keys (``factorization_weight``, ``the weight of task 'like'``)."""
    if not weights:
        raise ConfigError("an objective needs at least one task")
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (0.0 <= value <= MAX_LOSS_WEIGHT):  # also false for NaN
            raise ConfigError(f"{name} must be a non-negative number of at most {MAX_LOSS_WEIGHT:g}, got {value}")
    if all(value == 0 for value in weights.values()):
        both = "both" if len(weights) == 2 else "all"
        raise ConfigError(f"{' and '.join(weights)} cannot {both} be 0")


class JointObjective:
    """The tasks' losses, each weighted, joined by a weighting.

    Parameters
    ----------
    weights:
        Each task's weight λ_t, by task name, in [0, :data:`MAX_LOSS_WEIGHT`], not all 0; the
        order is the tasks' order in records. Default ``{"watch": 0.5, "rating": 0.5}``.
    tasks:
        Tasks by name, beside the library's ``watch`` and ``rating``
        (:func:`~mtrec.nn.tasks.default_tasks`), which a task of the same name replaces. Every
        name in ``weights`` must be a task.
    watch_loss, rating_loss:
        The losses of the library's ``watch`` and ``rating`` tasks (:data:`~mtrec.nn.losses.WATCH_LOSSES`,
        :data:`~mtrec.nn.tasks.RATING_LOSSES`).
    weighting:
        How the losses become one update (:data:`~mtrec.nn.weighting.WEIGHTINGS`): ``"fixed"``
        (the λs), ``"uncertainty"``, ``"gradnorm"``, ``"pcgrad"`` or ``"mgda"``.
    gradnorm_alpha:
        GradNorm's asymmetry α.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        tasks: Mapping[str, Task] | None = None,
        *,
        watch_loss: str = "bpr",
        rating_loss: str = "mse",
        weighting: str = "fixed",
        gradnorm_alpha: float = 1.5,
    ):
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigError(f"the weights are given by task, as {{'watch': 0.5, 'rating': 0.5}}, not {weights!r}")
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        bad = [name for name in weights if not isinstance(name, str) or not TASK_NAME.fullmatch(name) or name in RESERVED]
        if bad:
            raise ConfigError(f"task name {bad[0]!r} is not allowed: lower-case letters, digits and _, starting with a letter, and not 'loss'")
        check_weights({f"the weight of task {name!r}": value for name, value in weights.items()})
        known = {**default_tasks(watch_loss, rating_loss), **(tasks or {})}
        missing = [name for name in weights if name not in known]
        if missing:
            raise ConfigError(f"no task named {missing[0]!r}; the tasks are {', '.join(known)}")
        self.weights = {name: float(value) for name, value in weights.items()}
        self.tasks = {name: known[name] for name in weights}
        self.weighting_name = weighting
        self.weighting = make_weighting(weighting, self.weights, gradnorm_alpha)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks, in the order of :attr:`weights` (and of the losses a step returns)."""
        return tuple(self.tasks)

    def task_losses(self, network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each task's loss of ``network`` on ``batch``; 0 for a task that needs ratings the batch lacks."""
        losses: dict[str, torch.Tensor] = {}
        for name, task in self.tasks.items():
            if task.needs_ratings and batch.ratings is None:
                device = batch.users.device
                losses[name] = torch.zeros((), device=device)
            else:
                losses[name] = task.loss(network, batch)
        return losses

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The joint loss: what autograd differentiates for a loss weighting, what is reported for all."""
        return self.weighting.combine(losses)

    def __call__(self, network, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each task's loss by name, and the joint loss."""
        losses = self.task_losses(network, batch)
        return losses, self.combine(losses)

    def untrained(self, has_ratings: bool) -> list[str]:
        """The tasks an epoch on data with (or without) ratings does not train: their records are NaN."""
        return [] if has_ratings else [name for name, task in self.tasks.items() if task.needs_ratings]

    def weight(self, task: str) -> float:
        """λ of ``task``; 0 for a task the objective does not hold."""
        return self.weights.get(task, 0.0)
