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
from mtrec.errors import ConfigError

#: How an epoch's pairs are ordered into batches: shuffled pairs, or users shuffled with each
#: user's pairs together (a batch then holds a few whole users, whose histories are pooled once).
BATCH_ORDERS = ("pairs", "users")
#: How negatives are drawn: uniformly over the items, or in proportion to their training popularity.
NEGATIVE_SAMPLINGS = ("uniform", "popularity")

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
        Redraw a negative that is one of the user's training items (sampling again over
        the other items, up to :data:`REDRAW_ROUNDS` rounds).
    batch_by:
        ``"pairs"`` (every pair shuffled) or ``"users"`` (the users shuffled, each user's pairs
        together and shuffled among themselves): :data:`BATCH_ORDERS`.
    negative_sampling:
        ``"uniform"``, or ``"popularity"``: an item is drawn with probability proportional to its
        number of training pairs (plus one, so that every item can be drawn); :attr:`log_q`
        holds the log-probabilities the sampled softmax corrects for.
    watch_weights:
        ``"none"``, or ``"rating"``: :attr:`drawn_weights` holds, after each :meth:`draw`, each
        pair's rating over the training mean, in the epoch's order.
    drawable:
        The items negatives are drawn from (None: all). A model with item features draws only the
        items with training pairs: an item held out of training (a cold item) is never seen, not
        even as a negative.
    """

    def __init__(
        self,
        train: Interactions,
        seed: int,
        device: torch.device,
        with_ratings: bool,
        negatives: int = 1,
        exclude_positives: bool = False,
        batch_by: str = "pairs",
        negative_sampling: str = "uniform",
        watch_weights: str = "none",
        drawable: np.ndarray | None = None,
    ) -> None:
        if batch_by not in BATCH_ORDERS:
            raise ConfigError(f"unknown batch order {batch_by!r}; use one of {', '.join(BATCH_ORDERS)}")
        if negative_sampling not in NEGATIVE_SAMPLINGS:
            raise ConfigError(f"unknown negative sampling {negative_sampling!r}; use one of {', '.join(NEGATIVE_SAMPLINGS)}")
        if watch_weights == "rating" and train.ratings is None:
            raise ConfigError("watch_weights='rating' weighs each pair by its rating, and the data has no ratings")
        if watch_weights == "rating" and len(train) and float(train.ratings.min()) <= 0:
            raise ConfigError(
                f"watch_weights='rating' weighs each pair by its rating, which must then be positive; the lowest is {float(train.ratings.min()):g}"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_by = batch_by
        self.log_q: torch.Tensor | None = None
        self._popularity: torch.Tensor | None = None
        if negative_sampling == "popularity":
            counts = torch.as_tensor(np.bincount(train.items, minlength=train.num_items) + 1, dtype=torch.float64)
            if drawable is not None:
                counts *= torch.as_tensor(np.isin(np.arange(train.num_items), drawable), dtype=torch.float64)
            self._popularity = counts / counts.sum()
            self.log_q = self._popularity.log().float().to(device)
        self._weights: torch.Tensor | None = None
        if watch_weights == "rating":
            ratings = torch.as_tensor(train.ratings, dtype=torch.float32)
            self._weights = ratings / ratings.mean()
        #: The watch loss's weight of each pair of the last :meth:`draw`, in its order (None: unweighted).
        self.drawn_weights: torch.Tensor | None = None
        self.num_items, self.num_users = train.num_items, train.num_users
        self._drawable = None if drawable is None else torch.as_tensor(np.asarray(drawable, dtype=np.int64))
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

    def _items(self, count: int) -> torch.Tensor:
        """``count`` items drawn uniformly or by popularity."""
        if self._popularity is None:
            if self._drawable is not None:
                return self._drawable[torch.randint(0, len(self._drawable), (count,), generator=self.generator)]
            return torch.randint(0, self.num_items, (count,), generator=self.generator)
        return torch.multinomial(self._popularity, count, replacement=True, generator=self.generator)

    def _draw_negatives(self, users: torch.Tensor) -> torch.Tensor:
        shape = (len(users),) if self.negatives == 1 else (len(users), self.negatives)
        if self._popularity is None and self._drawable is not None:
            negatives = self._items(len(users) * self.negatives).view(shape)
        elif self._popularity is None:
            negatives = torch.randint(0, self.num_items, shape, generator=self.generator)
        else:
            negatives = self._items(len(users) * self.negatives).view(shape)
        if self._positive_keys is None:
            return negatives
        owners = users if self.negatives == 1 else users[:, None].expand(shape)
        for _ in range(REDRAW_ROUNDS):
            hits = self._is_positive(owners, negatives)
            count = int(hits.sum())
            if not count:
                break
            negatives[hits] = self._items(count)
        return negatives

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.num_items + items
        slots = torch.searchsorted(self._positive_keys, keys).clamp_(max=len(self._positive_keys) - 1)
        return self._positive_keys[slots] == keys

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The epoch's users, positives, negatives and ratings, in training order, on the device."""
        order = torch.randperm(len(self.users), generator=self.generator)
        if self.batch_by == "users":
            # users in a random order, each one's pairs together (in the order the shuffle gave them)
            rank = torch.randperm(self.num_users, generator=self.generator)
            order = order[torch.sort(rank[self.users[order]], stable=True).indices]
        users, items = self.users[order], self.items[order]
        self.drawn_weights = None if self._weights is None else self._weights[order].to(self.device)
        negatives = self._draw_negatives(users).to(self.device)
        ratings = self.ratings[order].to(self.device) if self.ratings is not None else None
        return users.to(self.device), items.to(self.device), negatives, ratings

    def state(self) -> torch.Tensor:
        """The generator's state: what the next epoch will draw."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
