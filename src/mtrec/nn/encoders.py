"""User encoders beyond the id embedding: users known by what they watched.

:class:`HistoryEncoder` (``user_encoder="history"``) is SVD++'s and FISM's user,
``u = U[u] + |N(u)|^-α Σ_{j ∈ N(u)} Y[j]``: a free vector per user plus the pooled vectors of
their training items N(u), in one ``embedding_bag`` over the histories of the batch's distinct
users (no loop over users). Both heads read it, under every sharing mode. A user without history gets the free
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

    def encode(self, net, users):
        # each distinct user is pooled once: a batch grouped by user (batch_by="users") pools each history once;
        # index_select, not [inverse]: its gradient sums a user's rows in a fixed order (indexing's backward
        # adds them with threads racing on large batches, so the same seed could train differently)
        distinct, inverse = torch.unique(users, return_inverse=True)
        if len(distinct) < len(users):
            return net.user_embeddings(users) + self.pooled(net, distinct).index_select(0, inverse)
        return net.user_embeddings(users) + self.pooled(net, users)

    def pooled(self, net, users: torch.Tensor) -> torch.Tensor:
        """|N(u)|^-α Σ Y[j] for each user (0 for an empty history)."""
        items, offsets, owner = net.history_bags(users, self.cap)
        kept = torch.ones(len(items), device=users.device)
        if net.training and self.dropout > 0:
            kept = self._keep(net, users[owner], items)
        counts = torch.zeros(len(users), device=users.device).index_add_(0, owner, kept)
        weights = kept * counts.clamp_min(1.0).pow(-self.alpha)[owner]
        return F.embedding_bag(items, net.history_embeddings.weight, offsets, mode="sum", per_sample_weights=weights)

    def _keep(self, net, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The dropout's mask of the (user, item) pairs: 1 kept, 0 left out.

        Each pair's draw is a hash of the seed, the number of pools drawn so far and the pair itself
        (Park and Miller's generator, three rounds, in int64 without overflow), not the next numbers
        of a stream: so a user's mask is the same however a batch is split, and a distributed run
        drops what one process drops.
        """
        draw = int(net.history_draws)
        net.history_draws += 1
        modulus = _PARK_MILLER
        start = (self.seed % modulus) * 16_807 + (draw % modulus) * 2_654_435 + 1
        state = (users * 1_103_515_245 + items * 12_345 + start) % modulus
        for _ in range(3):
            state = state * 48_271 % modulus
        return (state.double() / modulus >= self.dropout).float()


#: 2^31 − 1: the modulus of Park and Miller's minimal standard generator.
_PARK_MILLER = 2**31 - 1
