"""Tasks: what the network learns, each a named loss on a batch.

The objective (:class:`mtrec.nn.objective.JointObjective`) holds its tasks by name, and everything
downstream keys them the same way: the weights, the epoch records (``train_<task>``), metrics.json,
TensorBoard (``train/<task>_loss``) and the report. The library's two tasks are

* ``watch``: whether a user watches an item, learned by a watch loss (:data:`~mtrec.nn.losses.WATCH_LOSSES`)
  on the likelihood head's scores;
* ``rating``: what rating they give it, learned by a rating loss (:data:`RATING_LOSSES`) on the
  rating head's prediction.

A new task is a :class:`Task` subclass: a loss of the network and a batch (a test defines a
third one, "like", entirely in its own file; ``docs/extending.md`` shows how).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from mtrec.nn.batch import Batch
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.registry import Registry

#: The library's tasks, in the order records and tables list them.
TASK_NAMES = ("watch", "rating")


class Task:
    """One task of the objective: its loss on a batch, averaged over ``batch.denominator`` positive pairs.

    ``needs_ratings`` marks a task that learns from the observed ratings: its loss is 0 on a batch
    without them, and its epoch value NaN when the data has none.
    """

    needs_ratings: ClassVar[bool] = False

    def loss(self, network, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def component(self) -> str:
        """The registered component that computes the loss (what a hand-written step may claim)."""
        return type(self).__name__


class WatchTask(Task):
    """``watch``: a registered watch loss (``bpr`` by default) on the likelihood head's scores."""

    def __init__(self, loss: str = "bpr") -> None:
        self.loss_name = loss
        self.watch = WATCH_LOSSES[loss]()

    def loss(self, network, batch: Batch) -> torch.Tensor:
        return self.watch(network, batch)

    def component(self) -> str:
        return self.loss_name


class RatingLoss:
    """The per-pair loss of the rating head's errors r̂ − r; the task averages it over the batch."""

    summary: ClassVar[str] = ""

    def __call__(self, error: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


#: The rating losses by name (:mod:`mtrec.registry`).
RATING_LOSSES: Registry[type[RatingLoss]] = Registry("rating loss")


@RATING_LOSSES.register("mse")
class SquaredError(RatingLoss):
    """(r̂ − r)², the seed's: the mean is the MSE that evaluation reports."""

    summary = "mean((r_hat - r)^2) (the seed's, default)"

    def __call__(self, error: torch.Tensor) -> torch.Tensor:
        return error.square()


@RATING_LOSSES.register("huber")
class Huber(RatingLoss):
    """Huber's loss with δ = 1: squared for errors within a star, linear beyond (robust to odd ratings)."""

    summary = "Huber's loss, delta 1: (r_hat - r)^2 / 2 within one star, linear beyond"

    def __call__(self, error: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(error, torch.zeros_like(error), reduction="none", delta=1.0)


class RatingTask(Task):
    """``rating``: a registered rating loss (``mse`` by default) of the rating head's errors."""

    needs_ratings = True

    def __init__(self, loss: str = "mse") -> None:
        self.loss_name = loss
        self.rating_loss = RATING_LOSSES[loss]()

    def loss(self, network, batch: Batch) -> torch.Tensor:
        error = network.rating(batch.users, batch.positives) - batch.ratings
        return self.rating_loss(error).sum() / batch.denominator

    def component(self) -> str:
        return self.loss_name


def default_tasks(watch_loss: str = "bpr", rating_loss: str = "mse") -> dict[str, Task]:
    """The library's tasks, ``watch`` and ``rating``, with these losses."""
    return {"watch": WatchTask(watch_loss), "rating": RatingTask(rating_loss)}
