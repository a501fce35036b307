"""The training loop: epochs of shuffled batches with sampled negatives, evaluation, records.

:func:`train_epochs` drives a :class:`mtrec.training.Step` over the training data. Each epoch
draws a permutation of the training pairs and one uniformly drawn negative item per pair from
one generator seeded once, on the CPU, so that every device (and, in distributed training,
every process) sees the same samples for the same seed.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Mapping

import torch

from mtrec.data.interactions import Interactions
from mtrec.evaluation import Evaluator
from mtrec.fitted import EpochRecord
from mtrec.losses import Batch
from mtrec.training import Step


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


class EpochSampler:
    """Each epoch's order of the training pairs and their negatives.

    Parameters
    ----------
    train:
        The training pairs.
    seed:
        Seeds the one generator behind every draw.
    device:
        Where the epoch's tensors go (they are drawn on the CPU).
    with_ratings:
        Whether batches carry the ratings.
    """

    def __init__(self, train: Interactions, seed: int, device: torch.device, with_ratings: bool) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.num_items = train.num_items
        self.device = device
        self.users = torch.as_tensor(train.users, dtype=torch.long)
        self.items = torch.as_tensor(train.items, dtype=torch.long)
        self.ratings = torch.as_tensor(train.ratings) if with_ratings else None

    def __len__(self) -> int:
        return len(self.users)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The epoch's users, positives, negatives and ratings, in training order, on the device."""
        n = len(self.users)
        order = torch.randperm(n, generator=self.generator)
        negatives = torch.randint(0, self.num_items, (n,), generator=self.generator).to(self.device)
        users, items = self.users[order].to(self.device), self.items[order].to(self.device)
        ratings = self.ratings[order].to(self.device) if self.ratings is not None else None
        return users, items, negatives, ratings


def train_epochs(
    step: Step,
    sampler: EpochSampler,
    batch_size: int,
    epochs: int,
    evaluators: Mapping[str, Evaluator],
    eval_every: int = 1,
    eval_threads: int | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train for ``epochs`` epochs; evaluate on each of ``evaluators`` every ``eval_every`` and at the end.

    ``evaluators`` maps a prefix (``"valid"``, ``"test"``) to an evaluator; its metrics are
    recorded as ``<prefix>_<metric>``. Returns one record per epoch, each also passed to
    ``callback``.
    """
    network = step.network
    history = []
    n = len(sampler)
    network.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        users, items, negatives, ratings = sampler.draw()
        sums = torch.zeros(3, dtype=torch.float64, device=users.device)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = Batch(
                users[start:stop],
                items[start:stop],
                negatives[start:stop],
                ratings[start:stop] if ratings is not None else None,
            )
            sums += step(batch) * (stop - start)
        train_bpr, train_mse, train_loss = (sums / n).tolist()
        record = EpochRecord(
            epoch=epoch,
            train_bpr=train_bpr,
            train_mse=train_mse if ratings is not None else float("nan"),
            train_loss=train_loss,
        )
        if evaluators and (epoch % eval_every == 0 or epoch == epochs):
            with torch_threads(eval_threads):
                for prefix, evaluator in evaluators.items():
                    record.metrics.update({f"{prefix}_{k}": v for k, v in evaluator.evaluate(network).items()})
        record.seconds = time.perf_counter() - started
        history.append(record)
        if callback is not None:
            callback(record)
    return history
