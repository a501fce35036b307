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

#: What may weigh each positive pair in the watch loss: nothing (1 each) or its rating over the training mean.
WATCH_WEIGHTS = ("none", "rating")

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
    watch_weights:
        ``"none"``, or ``"rating"``: each positive pair's watch loss weighted by its rating over
        the training mean (the sampler puts the weights in the batch: :attr:`Batch.weights
        <mtrec.nn.batch.Batch.weights>`), so that a 5-star watch counts more than a 1-star one.
    row_l2:
        λ of an L2 penalty on the embedding rows each batch reads (:meth:`row_penalty`), added to
        the joint loss: a user or item is regularised in proportion to how often it is trained,
        as SVD and Spotlight do, unlike weight decay, which shrinks every row alike.
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
        watch_weights: str = "none",
        row_l2: float = 0.0,
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
        if watch_weights not in WATCH_WEIGHTS:
            raise ConfigError(f"unknown watch weights {watch_weights!r}; use one of {', '.join(WATCH_WEIGHTS)}")
        self.watch_weights = watch_weights
        if isinstance(row_l2, bool) or not isinstance(row_l2, (int, float)) or not row_l2 >= 0:
            raise ConfigError(f"row_l2 must be a non-negative number, got {row_l2!r}")
        self.row_l2 = float(row_l2)
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

    def row_penalty(self, network, batch: Batch) -> torch.Tensor:
        """λ · (Σ ‖row‖² over the rows of the network's ``embeddings`` tables the batch reads) / the
        batch's pairs: the user tables' rows of its distinct users, the item tables' rows of its
        positive items (once per pair). 0 for a network that declares no tables."""
        if not hasattr(network, "tables"):
            return torch.zeros((), device=batch.users.device)
        # each user once: its first pair in the global batch where the batch is a process's share of it
        users = torch.unique(batch.users) if batch.first_of_user is None else batch.users[batch.first_of_user]
        total = torch.zeros((), device=batch.users.device)
        for table in network.tables():
            if table.group != "embeddings" or table.rows not in ("users", "items"):
                continue  # a feature table's rows are shared by many users or items: weight decay is theirs
            rows = getattr(network, table.name).weight[users if table.rows == "users" else batch.positives]
            total = total + rows.square().sum()
        # a user's or item's feature part is penalised as its id row is: the sum of its feature vectors
        for side, index in (("users", users), ("items", batch.positives)):
            if side in getattr(network, "feature_sizes", {}):
                total = total + network._feature_sum(side[:-1], index).square().sum()
        return self.row_l2 * total / batch.denominator

    def untrained(self, has_ratings: bool) -> list[str]:
        """The tasks an epoch on data with (or without) ratings does not train: their records are NaN."""
        return [] if has_ratings else [name for name, task in self.tasks.items() if task.needs_ratings]

    def weight(self, task: str) -> float:
        """λ of ``task``; 0 for a task the objective does not hold."""
        return self.weights.get(task, 0.0)
