"""Each epoch's training examples: a shuffle of the training pairs and their sampled negatives.

Every draw comes from one generator seeded once, on the CPU, so that every device (and, in
distributed training, every process) sees the same samples for the same seed. The state of
that generator is part of a training checkpoint, so a resumed run draws what an uninterrupted
one would.
"""

from __future__ import annotations

import numpy as np
import torch

from mtrec.data.interactions import Interactions

#: Rounds of redrawing negatives that hit one of the user's positives; what still hits after them
#: (a user who has rated nearly every item) is kept.
REDRAW_ROUNDS = 16


class EpochSampler:
    """The order of the training pairs and their negatives, epoch by epoch.

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
    negatives:
        Negatives per positive pair; 1 gives a (n,) tensor, more a (n, K) one.
    exclude_positives:
        Redraw a negative that is one of the user's training items (uniform sampling over
        the other items, up to :data:`REDRAW_ROUNDS` rounds).
    """

    def __init__(
        self,
        train: Interactions,
        seed: int,
        device: torch.device,
        with_ratings: bool,
        negatives: int = 1,
        exclude_positives: bool = False,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.num_items = train.num_items
        self.device = device
        self.users = torch.as_tensor(train.users, dtype=torch.long)
        self.items = torch.as_tensor(train.items, dtype=torch.long)
        self.ratings = torch.as_tensor(train.ratings) if with_ratings else None
        self.negatives = negatives
        self._positive_keys = None
        if exclude_positives:
            keys = train.users.astype(np.int64) * train.num_items + train.items
            self._positive_keys = torch.as_tensor(np.sort(keys))

    def __len__(self) -> int:
        return len(self.users)

    def _draw_negatives(self, users: torch.Tensor) -> torch.Tensor:
        shape = (len(users),) if self.negatives == 1 else (len(users), self.negatives)
        negatives = torch.randint(0, self.num_items, shape, generator=self.generator)
        if self._positive_keys is None:
            return negatives
        owners = users if self.negatives == 1 else users[:, None].expand(shape)
        for _ in range(REDRAW_ROUNDS):
            hits = self._is_positive(owners, negatives)
            count = int(hits.sum())
            if not count:
                break
            negatives[hits] = torch.randint(0, self.num_items, (count,), generator=self.generator)
        return negatives

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.num_items + items
        slots = torch.searchsorted(self._positive_keys, keys).clamp_(max=len(self._positive_keys) - 1)
        return self._positive_keys[slots] == keys

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The epoch's users, positives, negatives and ratings, in training order, on the device."""
        order = torch.randperm(len(self.users), generator=self.generator)
        users, items = self.users[order], self.items[order]
        negatives = self._draw_negatives(users).to(self.device)
        ratings = self.ratings[order].to(self.device) if self.ratings is not None else None
        return users.to(self.device), items.to(self.device), negatives, ratings

    def state(self) -> torch.Tensor:
        """The generator's state: what the next epoch will draw."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
