"""User encoders beyond the id embedding: users known by what they watched.

:class:`HistoryEncoder` (``user_encoder="history"``) is SVD++'s and FISM's user,
``u = U[u] + |N(u)|^-α Σ_{j ∈ N(u)} Y[j]``: a free vector per user plus the pooled vectors of
their training items N(u), in one ``embedding_bag`` over the batch's histories (no loop over
users). Both heads read it, under every sharing mode. A user without history gets the free
vector alone; fold-in folds a new user's history in through ``Y`` with no optimisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtrec.errors import ConfigError
from mtrec.nn.layers import ScaledEmbedding, ZeroEmbedding
from mtrec.nn.network import USER_ENCODERS, UserEncoder

#: The most history items a user's vector pools by default.
DEFAULT_CAP = 1000


@USER_ENCODERS.register("history")
class HistoryEncoder(UserEncoder):
    """U[u] + |N(u)|^-α Σ Y[j] over the user's training items.

    Parameters
    ----------
    alpha:
        The exponent of the normalisation, from 0 (a sum) to 1 (a mean); 0.5 is SVD++'s.
    dropout:
        While training, each history item is left out of a user's pool with this probability
        (the normalisation counts the items kept), from 0 to below 1. The draws come from a
        generator seeded by ``seed`` and the number of pools drawn so far, which the network
        keeps as a buffer (``history_draws``), so a resumed run draws the same.
    cap:
        The most items pooled per user: a longer history pools its ``cap`` lowest item indices
        (deterministic; the CSR keeps each user's items sorted by index).
    seed:
        Seeds the dropout draws.
    """

    summary = "U[u] + |N(u)|^-alpha * sum of Y[j] over the user's training items (SVD++, FISM)"
    #: The options an estimator's settings give as ``history_<option>`` (the seed is its own).
    options = ("alpha", "dropout", "cap")

    def __init__(self, alpha: float = 0.5, dropout: float = 0.0, cap: int = DEFAULT_CAP, seed: int = 0) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"history_alpha must be a number from 0 to 1, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"history_dropout must be a number from 0 to below 1, got {dropout!r}")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"history_cap must be a positive whole number, got {cap!r}")
        self.alpha, self.dropout, self.cap, self.seed = float(alpha), float(dropout), cap, int(seed)

    def settings(self) -> dict:
        return {"alpha": self.alpha, "dropout": self.dropout, "cap": self.cap, "seed": self.seed}

    def make(self, net, table, embedding_dim):
        table("user_embeddings", "users", "embeddings", ScaledEmbedding, embedding_dim)
        # Y starts at zero: an untrained history adds nothing, and the model starts as the id model.
        table("history_embeddings", "items", "embeddings", ZeroEmbedding, embedding_dim)
        net.register_buffer("history_draws", torch.zeros((), dtype=torch.long))
        net.register_buffer("history_indptr", torch.zeros(net.structure()["num_users"] + 1, dtype=torch.long), persistent=False)
        net.register_buffer("history_indices", torch.zeros(0, dtype=torch.long), persistent=False)

    def use_histories(self, net, indptr, indices):
        if indptr.dim() != 1 or len(indptr) != net.structure()["num_users"] + 1:
            raise ConfigError(f"the histories' indptr must have one entry per user and one more, got {tuple(indptr.shape)}")
        net.history_indptr, net.history_indices = indptr, indices

    def encode(self, net, users):
        return net.user_embeddings(users) + self.pooled(net, users)

    def pooled(self, net, users: torch.Tensor) -> torch.Tensor:
        """|N(u)|^-α Σ Y[j] for each user (0 for an empty history)."""
        starts = net.history_indptr[users]
        lengths = (net.history_indptr[users + 1] - starts).clamp_max(self.cap)
        offsets = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        positions = torch.arange(len(owner), device=users.device) - offsets[owner] + starts[owner]
        items = net.history_indices[positions]
        kept = torch.ones(len(items), device=users.device)
        if net.training and self.dropout > 0:
            kept = self._keep(net, len(items)).to(users.device)
        counts = torch.zeros(len(users), device=users.device).index_add_(0, owner, kept)
        weights = kept * counts.clamp_min(1.0).pow(-self.alpha)[owner]
        return F.embedding_bag(items, net.history_embeddings.weight, offsets, mode="sum", per_sample_weights=weights)

    def _keep(self, net, count: int) -> torch.Tensor:
        """The dropout's mask of ``count`` items: 1 kept, 0 left out; the next draw of a seeded sequence."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + int(net.history_draws)) % 2**64)
        net.history_draws += 1
        return (torch.rand(count, generator=generator) >= self.dropout).float()
