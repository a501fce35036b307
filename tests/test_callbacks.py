"""Callbacks: what a training session calls, in order, and the run's own (checkpoints, resuming)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_interactions

from mtrec.errors import TrainingDiverged
from mtrec.model import MultitaskModel
from mtrec.train.callbacks import Callback, Checkpoints, Resume


class Journal(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin", len(trainer.history)))

    def on_epoch_end(self, trainer, record):
        self.calls.append(("epoch", record.epoch))

    def on_train_end(self, trainer):
        self.calls.append(("end", len(trainer.history)))


def test_hooks_run_in_order_and_a_function_is_an_epoch_callback():
    journal, seen = Journal(), []
    MultitaskModel(embedding_dim=8, batch_size=64, seed=0).fit(random_interactions(), 3, callbacks=[journal, seen.append])
    assert journal.calls == [("begin", 0), ("epoch", 1), ("epoch", 2), ("epoch", 3), ("end", 3)]
    assert [record.epoch for record in seen] == [1, 2, 3]


def test_the_end_hook_runs_when_training_fails():
    journal = Journal()
    with pytest.raises(TrainingDiverged):
        MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=1e30, seed=0).fit(random_interactions(), 3, callbacks=journal)
    assert journal.calls[0] == ("begin", 0) and journal.calls[-1][0] == "end"


def test_resuming_a_checkpoint_continues_to_the_same_weights_as_training_straight_through():
    data = random_interactions(seed=4)
    straight = MultitaskModel(embedding_dim=8, batch_size=64, seed=2).fit(data, 4)
    saved = {}
    MultitaskModel(embedding_dim=8, batch_size=64, seed=2).fit(
        data, 2, callbacks=[Checkpoints(2, lambda trainer: saved.update(state=trainer.state()))]
    )
    resumed = MultitaskModel(embedding_dim=8, batch_size=64, seed=2).fit(data, 4, callbacks=[Resume(saved["state"])])
    assert [r.epoch for r in resumed.history_] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.network_.state_dict().items(), resumed.network_.state_dict().values()):
        assert torch.equal(a, b), name
