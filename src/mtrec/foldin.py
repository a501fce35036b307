"""Fold-in: a user the model never saw, fitted from their history with everything else frozen.

The user's own parameters (their vectors and biases, in every table the network keeps per user)
start at the trained users' mean and are fitted to the history with the model's own objective:
the watch loss against sampled negatives that avoid the history, and, where the history has
ratings, the rating loss. The items, the rating head and every other user stay as trained. The
steps are deterministic (a fixed number of full-batch Adam steps, negatives from a seeded
generator), so the same history always gives the same recommendations.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mtrec.errors import ConfigError
from mtrec.losses import Batch, JointObjective
from mtrec.network import MultitaskNet

#: Fitting steps and their learning rate (full-batch Adam on the user's parameters alone).
STEPS = 100
LEARNING_RATE = 0.05


def user_parameter_names(network: MultitaskNet) -> list[str]:
    """The network's tables indexed by user (one row per user)."""
    return [name for name, _ in network.named_parameters() if "user_" in name and "stitch" not in name]


def fold_in(
    network: MultitaskNet,
    objective: JointObjective,
    items: Sequence[int],
    ratings: Sequence[float] | None = None,
    negatives: int = 1,
    weight_decay: float = 0.0,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
) -> MultitaskNet:
    """A one-user network: ``network``'s items and heads, and a user fitted to ``items`` (and ``ratings``).

    Parameters
    ----------
    network:
        The trained network; it is not changed.
    objective:
        The objective the network was trained with (its weights, its watch loss).
    items:
        Item indices of the user's history (at least one).
    ratings:
        Their ratings, or None for a history of items alone (then only the watch loss fits).
    negatives:
        Negatives sampled per history item at each step.
    weight_decay:
        Weight decay of the user's parameters.
    steps, learning_rate, seed:
        The fitting steps, their Adam learning rate, and the seed of the negatives.
    """
    if not len(items):
        raise ConfigError("a history needs at least one item to fold in")
    device = next(network.parameters()).device
    num_items = network.item_biases.num_embeddings
    one = MultitaskNet(
        1, num_items, network.user_embeddings.embedding_dim, [l.in_features for l in network.rating_mlp if hasattr(l, "in_features")],
        network.sharing, network.rating_bias,
    ).to(device)  # fmt: skip
    own = set(user_parameter_names(network))
    trained = dict(network.named_parameters())
    with torch.no_grad():
        for name, param in one.named_parameters():
            source = trained[name].detach()
            param.copy_(source.mean(0, keepdim=True) if name in own else source)
            param.requires_grad_(name in own)
    users_params = [param for name, param in one.named_parameters() if name in own]
    optimizer = torch.optim.Adam(users_params, lr=learning_rate, weight_decay=weight_decay)
    positives = torch.as_tensor(list(items), dtype=torch.long, device=device)
    observed = None if ratings is None else torch.as_tensor(list(ratings), dtype=torch.float32, device=device)
    users = torch.zeros_like(positives)
    generator = torch.Generator().manual_seed(seed)
    history = torch.zeros(num_items, dtype=torch.bool)
    history[positives.cpu()] = True
    candidates = torch.nonzero(~history).view(-1)
    if not len(candidates):
        candidates = torch.arange(num_items)
    shape = (len(positives),) if negatives == 1 else (len(positives), negatives)
    with torch.enable_grad():
        for _ in range(steps):
            drawn = candidates[torch.randint(0, len(candidates), shape, generator=generator)].to(device)
            optimizer.zero_grad()
            _, _, loss = objective(one, Batch(users, positives, drawn, observed))
            loss.backward()
            optimizer.step()
    return one.eval()


def fold_in_model(model, items: Sequence[int], ratings: Sequence[float] | None = None) -> MultitaskNet:
    """:func:`fold_in` with a fitted :class:`~mtrec.model.MultitaskModel`'s own objective and settings.

    Its loss weights (λR 0 without ``ratings``; a model trained on ratings alone still ranks by
    its watch score, so a history fits that too), its watch loss, negatives, the weight decay
    of its embeddings and its seed.
    """
    weight_r = model.regression_weight if ratings is not None else 0.0
    weight_f = model.factorization_weight if model.factorization_weight > 0 or weight_r > 0 else 1.0
    objective = JointObjective(weight_f, weight_r, model.watch_loss)
    return fold_in(
        model.network_, objective, items, ratings, model.negatives, model.weight_decay()["embeddings"], seed=model.seed
    )

