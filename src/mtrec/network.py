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
PARAMETER_GROUPS = ("embeddings", "residuals", "biases", "mlp")
#: How the two heads share the user and item embeddings.
SHARINGS = ("hard", "separate", "residual", "cross-stitch")


def check_architecture(embedding_dim: int, layer_sizes: Sequence[int]) -> list[int]:
    """Validate the rating MLP's layer sizes against the embedding dimension."""
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    sizes = list(layer_sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(f"layer_sizes must be a non-empty list of positive integers, got {sizes!r}")
    if sizes[0] != 3 * embedding_dim:
        raise ConfigError(f"layer_sizes[0] must be 3 * embedding_dim = {3 * embedding_dim} (the MLP reads [u, q, u*q]), got layer_sizes={sizes}")
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
    sharing:
        How the heads share embeddings: ``"hard"`` (both read the same U and Q), ``"separate"``
        (each head its own), ``"residual"`` (shared U and Q plus a task-specific part per head,
        u_t = u + u'_t, the parts starting at zero and regularised as their own parameter group),
        or ``"cross-stitch"`` (two embedding sets mixed by a learned 2×2 map per table, Misra et
        al. 2016, starting at ``cross_stitch_init`` on the diagonal).
    rating_bias:
        If true the rating head adds a learned bias per user and per item to the MLP's output.
    cross_stitch_init:
        The diagonal of the cross-stitch maps at the start (1 − it off the diagonal); 1 is the identity.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 32,
        layer_sizes: Sequence[int] | None = None,
        sharing: str = "hard",
        rating_bias: bool = False,
        cross_stitch_init: float = 0.9,
    ) -> None:
        super().__init__()
        sizes = check_architecture(embedding_dim, [3 * embedding_dim, 64] if layer_sizes is None else layer_sizes)
        if sharing not in SHARINGS:
            raise ConfigError(f"unknown sharing {sharing!r}; use one of {', '.join(SHARINGS)}")
        self.sharing = sharing
        self.user_embeddings = ScaledEmbedding(num_users, embedding_dim)
        self.item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.user_biases = ZeroEmbedding(num_users, 1)
        self.item_biases = ZeroEmbedding(num_items, 1)
        if sharing in ("separate", "cross-stitch"):
            self.rating_user_embeddings = ScaledEmbedding(num_users, embedding_dim)
            self.rating_item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.rating_mlp = build_mlp(sizes)
        self.rating_bias = bool(rating_bias)
        if self.rating_bias:
            self.rating_user_biases = ZeroEmbedding(num_users, 1)
            self.rating_item_biases = ZeroEmbedding(num_items, 1)
        if sharing == "residual":
            self.watch_user_residuals = ZeroEmbedding(num_users, embedding_dim)
            self.watch_item_residuals = ZeroEmbedding(num_items, embedding_dim)
            self.rating_user_residuals = ZeroEmbedding(num_users, embedding_dim)
            self.rating_item_residuals = ZeroEmbedding(num_items, embedding_dim)
        if sharing == "cross-stitch":
            a = float(cross_stitch_init)
            start = torch.tensor([[a, 1.0 - a], [1.0 - a, a]])
            self.user_stitch = nn.Parameter(start.clone())
            self.item_stitch = nn.Parameter(start.clone())

    @property
    def embedding_sharing(self) -> bool:
        """Whether both heads read the very same U and Q (hard sharing)."""
        return self.sharing == "hard"

    @property
    def rating_users(self) -> nn.Embedding:
        """The user embeddings the rating head reads (hard and separate sharing)."""
        return self.user_embeddings if self.sharing == "hard" else self.rating_user_embeddings

    @property
    def rating_items(self) -> nn.Embedding:
        """The item embeddings the rating head reads (hard and separate sharing)."""
        return self.item_embeddings if self.sharing == "hard" else self.rating_item_embeddings

    def _stitched(self, stitch: torch.Tensor, row: int, watch: torch.Tensor, rating: torch.Tensor) -> torch.Tensor:
        return stitch[row, 0] * watch + stitch[row, 1] * rating

    def watch_users(self, users: torch.Tensor) -> torch.Tensor:
        """The likelihood head's user vectors."""
        u = self.user_embeddings(users)
        if self.sharing == "residual":
            return u + self.watch_user_residuals(users)
        if self.sharing == "cross-stitch":
            return self._stitched(self.user_stitch, 0, u, self.rating_user_embeddings(users))
        return u

    def watch_items(self, items: torch.Tensor) -> torch.Tensor:
        """The likelihood head's item vectors."""
        q = self.item_embeddings(items)
        if self.sharing == "residual":
            return q + self.watch_item_residuals(items)
        if self.sharing == "cross-stitch":
            return self._stitched(self.item_stitch, 0, q, self.rating_item_embeddings(items))
        return q

    def rating_vectors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rating head's u and q of each pair."""
        if self.sharing == "residual":
            u = self.user_embeddings(users) + self.rating_user_residuals(users)
            q = self.item_embeddings(items) + self.rating_item_residuals(items)
        elif self.sharing == "cross-stitch":
            u = self._stitched(self.user_stitch, 1, self.user_embeddings(users), self.rating_user_embeddings(users))
            q = self._stitched(self.item_stitch, 1, self.item_embeddings(items), self.rating_item_embeddings(items))
        else:
            u, q = self.rating_users(users), self.rating_items(items)
        return u, q

    def rating_from_embeddings(self, u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """r_hat from already looked-up rating-head embeddings."""
        return self.rating_mlp(torch.cat([u, q, u * q], dim=1)).squeeze(-1)

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """r_hat = MLP([u, q, u*q]) (+ the user's and the item's rating bias) for each (user, item) pair."""
        r_hat = self.rating_from_embeddings(*self.rating_vectors(users, items))
        if self.rating_bias:
            r_hat = r_hat + self.rating_user_biases(users).squeeze(-1) + self.rating_item_biases(items).squeeze(-1)
        return r_hat

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p = u . q + a + b for each (user, item) pair."""
        u, q = self.watch_users(users), self.watch_items(items)
        return (u * q).sum(1) + self.user_biases(users).squeeze(-1) + self.item_biases(items).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(p, r_hat)`` for each (user, item) pair, both of shape (batch,)."""
        return self.watch_score(users, items), self.rating(users, items)

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        """p for every item, one row per user: U[users] Q^T + a + b, shape (len(users), num_items)."""
        scores = self.watch_users(users) @ self.item_vectors().T
        scores += self.user_biases(users)
        scores += self.item_biases.weight.T
        return scores

    def item_vectors(self) -> torch.Tensor:
        """The likelihood head's item embeddings (Q, with its residual or stitch where there is one)."""
        if self.sharing == "residual":
            return self.item_embeddings.weight + self.watch_item_residuals.weight
        if self.sharing == "cross-stitch":
            return self._stitched(self.item_stitch, 0, self.item_embeddings.weight, self.rating_item_embeddings.weight)
        return self.item_embeddings.weight

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by group, for per-group weight decay: embeddings, residuals, biases, the MLP (and stitches)."""
        embeddings = [self.user_embeddings.weight, self.item_embeddings.weight]
        if self.sharing in ("separate", "cross-stitch"):
            embeddings += [self.rating_user_embeddings.weight, self.rating_item_embeddings.weight]
        residuals = []
        if self.sharing == "residual":
            residuals = [
                module.weight
                for module in (self.watch_user_residuals, self.watch_item_residuals, self.rating_user_residuals, self.rating_item_residuals)
            ]
        biases = [self.user_biases.weight, self.item_biases.weight]
        if self.rating_bias:
            biases += [self.rating_user_biases.weight, self.rating_item_biases.weight]
        mlp = list(self.rating_mlp.parameters())
        if self.sharing == "cross-stitch":
            mlp += [self.user_stitch, self.item_stitch]
        return {"embeddings": embeddings, "residuals": residuals, "biases": biases, "mlp": mlp}
