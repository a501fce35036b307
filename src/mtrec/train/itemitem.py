"""Fitting the item-item path after training: EASE's λ and the path's weight, chosen on validation.

The path (:mod:`mtrec.nn.itemitem`) is not trained by gradient. Once the factorisation part has
trained (and early stopping has chosen its epoch), :func:`choose_item_item` makes EASE's matrix
for each candidate λ from the training pairs and, for each candidate weight w, measures the
validation MRR of the whole watch score; the best pair is kept. A λ or w the settings give is
used as given. Nothing here reads the test set.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mtrec.errors import ConfigError
from mtrec.eval.evaluation import Evaluator
from mtrec.nn.itemitem import ease_matrix, gram_matrix

#: The λ candidates: EASE's usual range on ML-100K-sized data (the README's benchmark chooses from the same).
L2_CANDIDATES = (50.0, 100.0, 250.0, 500.0, 1000.0)
#: The weight candidates; 0 (no path) among them, so the path is only kept where validation says it helps.
WEIGHT_CANDIDATES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@torch.no_grad()
def choose_item_item(
    network,
    validation: Evaluator | None,
    l2: float | None = None,
    weight: float | None = None,
    l2_candidates: Sequence[float] = L2_CANDIDATES,
    weight_candidates: Sequence[float] = WEIGHT_CANDIDATES,
) -> dict[str, float]:
    """Fill ``network``'s item-item matrix and weight from its histories (the training pairs); return
    ``{"item_item_l2": λ, "item_item_weight": w, "item_item_valid_mrr": ...}``.

    ``l2`` and ``weight`` given are used as given; each one left None is chosen on ``validation``'s
    MRR, which it then needs.
    """
    if (l2 is None or weight is None) and validation is None:
        raise ConfigError(
            "the item-item path chooses its l2 and weight on a validation set: give a validation set, or both item_item_l2 and item_item_weight"
        )
    network.eval()
    structure = network.structure()
    l2s = list(l2_candidates) if l2 is None else [l2]
    weights = list(weight_candidates) if weight is None else [weight]
    best: dict[str, float] | None = None
    best_matrix = None
    gram = gram_matrix(network.history_indptr, network.history_indices, structure["num_items"])
    for candidate in l2s:
        matrix = ease_matrix(network.history_indptr, network.history_indices, structure["num_items"], candidate, gram)
        network.item_item_matrix.copy_(matrix.to(network.item_item_matrix.device))
        for w in weights:
            network.item_item_weight.fill_(w)
            score = validation.mrr(network) if validation is not None and len(l2s) * len(weights) > 1 else float("nan")
            if best is None or score > best["item_item_valid_mrr"]:
                best = {"item_item_l2": float(candidate), "item_item_weight": float(w), "item_item_valid_mrr": score}
                best_matrix = matrix
    assert best is not None and best_matrix is not None
    network.item_item_matrix.copy_(best_matrix.to(network.item_item_matrix.device))
    network.item_item_weight.fill_(best["item_item_weight"])
    network.item_item_l2.fill_(best["item_item_l2"])
    return best
