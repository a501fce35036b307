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
    """

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    ratings: torch.Tensor | None = None
    count: int | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def denominator(self) -> int:
        return len(self.users) if self.count is None else self.count
