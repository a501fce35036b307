"""Cold-start evaluation: warm and cold test pairs measured apart, and the content-only baselines.

A test pair is *cold* when its item (or its user) has no training pair, as in the cold splits
(``--split cold-items``, ``cold-users``: :func:`mtrec.data.splits.cold_split`), which hold out a share
of the items or users entirely. :func:`cold_start_metrics` measures, with the usual metrics:

- ``warm``: the pairs whose user and item both trained;
- ``cold_items``: the pairs of a cold item, ranked among all items (the user's known items removed,
  as always), and ``cold_items_among_cold``: the same pairs ranked among the cold items only (the
  test's items without training pairs), which is what a "new arrivals" shelf asks;
- ``cold_users``: the pairs of a cold user, ranked among all items.

The baselines read only what a cold item or user has: :class:`FeaturePopularity` (an item's score is
the mean training popularity of its feature values: genre popularity), :class:`ContentProfile`
(a user's profile is the mean feature vector of their training items, an item's score its cosine with
the item's features) and :class:`DemographicPopularity` (an item's share among the training users
who share the user's feature values).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from mtrec.data.feature_maps import FeatureBags, known_entities
from mtrec.data.interactions import Interactions
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, Evaluator


class AmongItems(nn.Module):
    """``network`` ranking only ``allowed`` items: every other item scores −inf."""

    def __init__(self, network: nn.Module, allowed: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("allowed", allowed.bool())

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.network.all_watch_scores(users).masked_fill(~self.allowed, float("-inf"))

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.network.watch_score(users, items)

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.network.rating(users, items)

    def item_vectors(self) -> torch.Tensor:
        return self.network.item_vectors()


def cold_parts(train: Interactions, test: Interactions) -> dict[str, np.ndarray]:
    """Boolean masks over ``test``'s pairs: ``warm``, ``cold_items`` (item without training pairs) and
    ``cold_users`` (user without training pairs)."""
    known = known_entities(train)
    cold_items, cold_users = ~known["items"][test.items], ~known["users"][test.users]
    return {"warm": ~cold_items & ~cold_users, "cold_items": cold_items, "cold_users": cold_users}


def cold_start_metrics(
    network: nn.Module,
    train: Interactions,
    test: Interactions,
    known: Sequence[Interactions] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: Sequence[int] = DEFAULT_K,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """The metrics of ``network`` on the warm and the cold pairs of ``test`` (see the module docstring),
    each part with its number of ``pairs``. ``known`` are the sets whose items leave the rankings
    (default: ``train``); parts without pairs are left out."""
    parts = cold_parts(train, test)
    known = [train] if known is None else list(known)
    results: dict[str, dict[str, float]] = {}
    for name, mask in parts.items():
        if not mask.any():
            continue
        evaluator = Evaluator(test.subset(mask), known, device, metrics, k)
        results[name] = {"pairs": int(mask.sum()), **evaluator.evaluate(network)}
        if name == "cold_items":
            allowed = torch.zeros(test.num_items, dtype=torch.bool, device=device)
            allowed[torch.as_tensor(np.unique(test.items[mask]).astype(np.int64), device=device)] = True
            among = AmongItems(network, allowed).to(device)
            results["cold_items_among_cold"] = {"pairs": int(mask.sum()), "candidates": int(allowed.sum()), **evaluator.evaluate(among)}
    return results


def dense_features(bags: FeatureBags, rows: int) -> torch.Tensor:
    """The bags as a dense (entities × feature rows) matrix of their weights."""
    owner = np.repeat(np.arange(len(bags)), np.diff(bags.indptr))
    flat = torch.as_tensor(owner * rows + np.asarray(bags.indices, dtype=np.int64))
    matrix = torch.zeros(len(bags) * rows, dtype=torch.float64).index_add_(0, flat, torch.as_tensor(bags.weights, dtype=torch.float64))
    return matrix.view(len(bags), rows)  # index_add_: sums in a fixed order (index_put_'s threads race)


def _interactions_matrix(train: Interactions) -> torch.Tensor:
    x = torch.zeros(train.num_users, train.num_items, dtype=torch.float64)
    x[torch.as_tensor(train.users.astype(np.int64)), torch.as_tensor(train.items.astype(np.int64))] = 1.0
    return x


class _Scores(nn.Module):
    """A baseline: fixed scores per (user, item), or per item for every user."""

    def __init__(self, scores: torch.Tensor, num_users: int) -> None:
        super().__init__()
        self.register_buffer("scores", scores.float())
        self.num_users = num_users

    def all_watch_scores(self, users: torch.Tensor) -> torch.Tensor:
        if self.scores.dim() == 1:
            return self.scores.expand(len(users), -1).clone()
        return self.scores[users]

    def watch_score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.all_watch_scores(users).gather(1, items[:, None]).squeeze(1)

    def rating(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.full((len(users),), float("nan"))


class FeaturePopularity(_Scores):
    """An item's score: Σ over its feature rows of weight × the mean training count of the known
    items that have that row (genre popularity); the same list for every user."""

    def __init__(self, train: Interactions, item_bags: FeatureBags, rows: int) -> None:
        features = dense_features(item_bags, rows)
        counts = torch.as_tensor(np.bincount(train.items, minlength=train.num_items), dtype=torch.float64)
        known = (counts > 0).double()
        has = (features != 0).double() * known[:, None]
        popularity = (has * counts[:, None]).sum(0) / has.sum(0).clamp_min(1)
        super().__init__(features @ popularity, train.num_users)


class ContentProfile(_Scores):
    """A user's profile: the mean feature vector of their training items; an item's score: the cosine
    of its feature vector with the profile (personal, content only)."""

    def __init__(self, train: Interactions, item_bags: FeatureBags, rows: int) -> None:
        features = dense_features(item_bags, rows)
        # each feature column standardised over the items, so that no column dominates the cosine
        centred = features - features.mean(0)
        centred = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = _interactions_matrix(train)
        profiles = x @ centred / x.sum(1, keepdim=True).clamp_min(1)
        super().__init__(profiles @ centred.T, train.num_users)


class DemographicPopularity(_Scores):
    """An item's score for a user: Σ over the user's feature rows of weight × the share of the training
    users with that row who rated the item (popularity among people like them)."""

    def __init__(self, train: Interactions, user_bags: FeatureBags, rows: int) -> None:
        features = (dense_features(user_bags, rows) != 0).double()
        x = _interactions_matrix(train)
        known = (x.sum(1) > 0).double()
        per_row = (features * known[:, None]).T @ x / (features * known[:, None]).sum(0).clamp_min(1)[:, None]
        super().__init__(features @ per_row, train.num_users)
