"""What a training session calls as it runs: progress, logging, checkpoints, resuming.

A :class:`Callback` overrides the hooks it needs; a plain function of an
:class:`~mtrec.io.fitted.EpochRecord` is an epoch callback. Infrastructure (saving checkpoints,
resuming one, TensorBoard) is a callback given to
:meth:`MultitaskModel.fit <mtrec.model.MultitaskModel.fit>`, never a parameter passed down.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import torch

from mtrec.io.fitted import EpochRecord

#: The :class:`~mtrec.train.loop.Trainer` the hooks receive (the loop imports this module, not the reverse).
Trainer = Any


class Callback:
    """Hooks of a training session, each doing nothing unless overridden."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch the session trains (a resumed session: the first after its checkpoint)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each epoch, with its record (its metrics on evaluated epochs)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, early stopping's weights restored; also when training fails."""


#: What ``fit(callbacks=...)`` takes: callbacks, or functions of each epoch's record.
CallbackLike = Union[Callback, Callable[[EpochRecord], None]]


class EachEpoch(Callback):
    """Calls ``function(record)`` after each epoch (progress bars, logging, trackers)."""

    def __init__(self, function: Callable[[EpochRecord], None]) -> None:
        self.function = function

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.function(record)


class Checkpoints(Callback):
    """Calls ``save(trainer)`` every ``every`` epochs (it saves :meth:`Trainer.state <mtrec.train.loop.Trainer.state>`)."""

    def __init__(self, every: int, save: Callable[[Trainer], None]) -> None:
        self.every, self.save = every, save

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self.every and record.epoch % self.every == 0:
            self.save(trainer)


class Resume(Callback):
    """Continues from a checkpoint: restores :meth:`Trainer.state <mtrec.train.loop.Trainer.state>`'s
    ``(tensors, info)`` before training, which then goes on from the epoch after it."""

    def __init__(self, state: tuple[dict[str, torch.Tensor], dict]) -> None:
        self.state = state

    def on_train_begin(self, trainer: Trainer) -> None:
        trainer.restore(*self.state)


#: TensorBoard tags of the per-epoch training values besides the tasks' (``train/<task>_loss``,
#: ``train/weight_<task>``); a metric ``<prefix>_<name>`` is ``<prefix>/<name>``.
TRAIN_TAGS = {"train_loss": "train/joint_loss", "learning_rate": "train/learning_rate"}


def scalar_tags(record: EpochRecord) -> dict[str, float]:
    """The record's finite values by TensorBoard tag."""
    values = {f"train/{task}_loss": value for task, value in record.train_losses.items()}
    values.update({tag: getattr(record, name) for name, tag in TRAIN_TAGS.items()})
    values.update({f"train/weight_{task}": value for task, value in (record.task_weights or {}).items()})
    values.update({name.replace("_", "/", 1): value for name, value in record.metrics.items()})
    return {tag: value for tag, value in values.items() if value is not None and math.isfinite(value)}


class TensorBoard(Callback):
    """Writes each epoch's :func:`scalar_tags` to a TensorBoard event file in ``folder``, at step = epoch."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.writer = Path(folder), None

    def on_train_begin(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder))  # opened here: closed by on_train_end whatever happens

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def as_callbacks(callbacks: Iterable[CallbackLike] | CallbackLike | None) -> list[Callback]:
    """``callbacks`` as :class:`Callback` objects: a function becomes an :class:`EachEpoch`."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or callable(callbacks):
        callbacks = [callbacks]
    return [callback if isinstance(callback, Callback) else EachEpoch(callback) for callback in callbacks]
