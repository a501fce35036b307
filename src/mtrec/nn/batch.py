"""A training batch: positive pairs, their sampled negatives and, where the data has them, ratings."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One step's training examples.

    Parameters
    ----------
    users, positives:
        The positive pairs, int64 of shape (B,).
    negatives:
        Sampled negative items, int64 of shape (B,) (one per pair) or (B, K).
    ratings:
        The observed ratings of the positive pairs (float32, (B,)), or None.
    count:
        How many positive pairs the losses are averaged over. None means B; in distributed
        training it is the global batch, so that summing every rank's gradients gives the
        gradient of the global mean.
    weights:
        A weight per positive pair for the watch loss (float32, (B,)), or None for 1 each
        (``watch_weights="rating"``: the rating over the training mean).
    log_q:
        The log of the probability that the sampler draws each item as a negative (float32,
        (num_items,)): the sampled softmax's log-Q correction; None for uniform draws.
    first_of_user:
        Whether each pair is its user's first in the global batch (bool, (B,)), where a row
        penalty needs it: in distributed training a user whose pairs two processes share is
        then penalised once, as in one process. None: the batch is the global batch.
    """

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    ratings: torch.Tensor | None = None
    count: int | None = None
    weights: torch.Tensor | None = None
    log_q: torch.Tensor | None = None
    first_of_user: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def denominator(self) -> int:
        return len(self.users) if self.count is None else self.count


def first_of_each_user(users: torch.Tensor) -> torch.Tensor:
    """True at each user's first position in ``users`` (bool, same length)."""
    distinct, inverse = torch.unique(users, return_inverse=True)
    positions = torch.arange(len(users), device=users.device)
    first = torch.full((len(distinct),), len(users), dtype=torch.long, device=users.device).scatter_reduce_(0, inverse, positions, "amin")
    mask = torch.zeros(len(users), dtype=torch.bool, device=users.device)
    mask[first] = True
    return mask
