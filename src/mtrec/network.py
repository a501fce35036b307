"""The multi-task network: a factorisation head and a rating head on user and item embeddings.

:class:`RecommenderNetwork` is the contract that evaluation, recommendation and serving rely
on: indices in, one value per pair (or per user and item) out. Any ``nn.Module`` that keeps it
can be evaluated and served by mtrec, and trained by :class:`mtrec.training.AutogradStep`.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.layers import ScaledEmbedding, ZeroEmbedding


@runtime_checkable
class RecommenderNetwork(Protocol):
    """What mtrec asks of a network. ``users`` and ``items`` are int64 index tensors."""

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The likelihood head's score p of each (user, item) pair, shape (len(users),)."""
        ...

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The rating head's prediction r_hat of each (user, item) pair, shape (len(users),)."""
        ...

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        """p of every item for each user, shape (len(users), num_items)."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """The likelihood head's item vectors, shape (num_items, d): what "similar items" compares."""
        ...


#: Parameter groups a network may name for per-group weight decay; others fall in "mlp".
PARAMETER_GROUPS = ("embeddings", "biases", "mlp")


def check_architecture(embedding_dim: int, layer_sizes: Sequence[int]) -> list[int]:
    """Validate the rating MLP's layer sizes against the embedding dimension."""
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    sizes = list(layer_sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(f"layer_sizes must be a non-empty list of positive integers, got {sizes!r}")
    if sizes[0] != 3 * embedding_dim:
        raise ConfigError(
            f"layer_sizes[0] must be 3 * embedding_dim = {3 * embedding_dim} (the MLP reads [u, q, u*q]), "
            f"got layer_sizes={sizes}"
        )
    return sizes


def build_mlp(layer_sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given input sizes with ReLU between them, ending in one output."""
    sizes = [*layer_sizes, 1]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class MultitaskNet(nn.Module):
    """Matrix factorisation (watch score p) and an MLP (rating r_hat) on user/item embeddings.

    Parameters
    ----------
    num_users, num_items:
        Sizes of the user and item index spaces.
    embedding_dim:
        Dimension d of the latent vectors.
    layer_sizes:
        Input size of each dense layer of the rating MLP; the first must be 3 * d.
        Default ``[3d, 64]``.
    embedding_sharing:
        If true both heads read the same U and Q; otherwise the rating head has its own.
    rating_bias:
        If true the rating head adds a learned bias per user and per item to the MLP's output.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] | None = None,
        embedding_sharing: bool = True,
        rating_bias: bool = False,
    ) -> None:
        super().__init__()
        sizes = check_architecture(embedding_dim, [3 * embedding_dim, 64] if layer_sizes is None else layer_sizes)
        self.embedding_sharing = bool(embedding_sharing)
        self.user_embeddings = ScaledEmbedding(num_users, embedding_dim)
        self.item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.user_biases = ZeroEmbedding(num_users, 1)
        self.item_biases = ZeroEmbedding(num_items, 1)
        if not self.embedding_sharing:
            self.rating_user_embeddings = ScaledEmbedding(num_users, embedding_dim)
            self.rating_item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.rating_mlp = build_mlp(sizes)
        self.rating_bias = bool(rating_bias)
        if self.rating_bias:
            self.rating_user_biases = ZeroEmbedding(num_users, 1)
            self.rating_item_biases = ZeroEmbedding(num_items, 1)

    @property
    def rating_users(self) -> nn.Embedding:
        """The user embeddings the rating head reads."""
        return self.user_embeddings if self.embedding_sharing else self.rating_user_embeddings

    @property
    def rating_items(self) -> nn.Embedding:
        """The item embeddings the rating head reads."""
        return self.item_embeddings if self.embedding_sharing else self.rating_item_embeddings

    def rating_from_embeddings(self, u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """r_hat from already looked-up rating-head embeddings."""
        return self.rating_mlp(torch.cat([u, q, u * q], dim=1)).squeeze(-1)

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """r_hat = MLP([u, q, u*q]) (+ the user's and the item's rating bias) for each (user, item) pair."""
        r_hat = self.rating_from_embeddings(self.rating_users(users), self.rating_items(items))
        if self.rating_bias:
            r_hat = r_hat + self.rating_user_biases(users).squeeze(-1) + self.rating_item_biases(items).squeeze(-1)
        return r_hat

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p = u . q + a + b for each (user, item) pair."""
        u = self.user_embeddings(users)
        q = self.item_embeddings(items)
        return (u * q).sum(1) + self.user_biases(users).squeeze(-1) + self.item_biases(items).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(p, r_hat)`` for each (user, item) pair, both of shape (batch,)."""
        return self.watch_score(users, items), self.rating(users, items)

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        """p for every item, one row per user: U[users] Q^T + a + b, shape (len(users), num_items)."""
        scores = self.user_embeddings(users) @ self.item_embeddings.weight.T
        scores += self.user_biases(users)
        scores += self.item_biases.weight.T
        return scores

    def item_vectors(self) -> torch.Tensor:
        """Q, the likelihood head's item embeddings."""
        return self.item_embeddings.weight

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by group, for per-group weight decay: embeddings, biases, the MLP."""
        embeddings = [self.user_embeddings.weight, self.item_embeddings.weight]
        if not self.embedding_sharing:
            embeddings += [self.rating_user_embeddings.weight, self.rating_item_embeddings.weight]
        biases = [self.user_biases.weight, self.item_biases.weight]
        if self.rating_bias:
            biases += [self.rating_user_biases.weight, self.rating_item_biases.weight]
        return {"embeddings": embeddings, "biases": biases, "mlp": list(self.rating_mlp.parameters())}
