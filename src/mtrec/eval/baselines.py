"""Baselines that keep the network contract: what any model must beat, and the reference of the
joint early-stopping criterion."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtrec.data.interactions import Interactions


class PopularityNet(nn.Module):
    """Ranks items by how often they occur in ``train``; predicts the mean training rating.

    Parameters
    ----------
    train:
        The training interactions.
    """

    def __init__(self, train: Interactions) -> None:
        super().__init__()
        counts = np.bincount(train.items, minlength=train.num_items).astype(np.float32)
        self.register_buffer("counts", torch.as_tensor(counts))
        mean = float(train.ratings.mean()) if train.ratings is not None and len(train) else 0.0
        self.register_buffer("mean_rating", torch.tensor(mean))

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items]

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mean_rating.expand(len(users))

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def item_vectors(self) -> torch.Tensor:
        return self.counts[:, None]
