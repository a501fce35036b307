"""Fold-in: a user the model never saw, fitted from their history with everything else frozen.

The user's own parameters (their vectors and biases, in every table the network keeps per user)
start at the trained users' mean and are fitted to the history with the model's own objective:
the watch loss against sampled negatives that avoid the history, and, where the history has
ratings, the rating loss. The items, the rating head and every other user stay as trained. The
steps are deterministic (a fixed number of full-batch Adam steps, negatives from a seeded
generator), so the same history always gives the same recommendations.

Instant fold-in (``steps=0``, ``instant=True``) skips the fitting: the user's parameters stay at
the trained users' mean, and a history-aware network (``user_encoder="history"``, or the
item-item path) reads the history itself, so the user's vector comes straight from the
encoder, ``mean(U) + |N|^-α Σ Y[j]``, in well under a millisecond (``benchmarks/foldin.py``).
The fitting then only refines it.

A history's ratings are checked here, once for every caller (the library, ``mtrec recommend
--history``, ``POST /recommendations``): each must be a finite number on the model's rating
scale. One outside it is refused, not clipped: it means the history was written or read wrong,
and a clipped number is one the user never gave.
"""

from __future__ import annotations

import copy
import math
import numbers
import weakref
from typing import Any, Sequence

import torch
from torch import nn

from mtrec.data.feature_maps import FeatureBags
from mtrec.errors import ConfigError, DataError
from mtrec.nn.batch import Batch
from mtrec.nn.network import MultitaskNet
from mtrec.nn.objective import JointObjective

#: Fitting steps and their learning rate (full-batch Adam on the user's parameters alone).
STEPS = 100
LEARNING_RATE = 0.05


class RatingError(DataError):
    """A history's rating that is not a finite number on the rating scale: ``problem`` says what is
    wrong with it, ``position`` is its entry's index in the history (from 0) of ``count`` entries."""

    def __init__(self, problem: str, position: int, count: int) -> None:
        super().__init__(f"history entry {position + 1} of {count}: {problem}")
        self.problem, self.position = problem, position


def check_ratings(ratings: Sequence[Any], rating_scale: tuple[float, float] | None = None) -> list[float | None]:
    """``ratings`` as floats (None where a rating is missing), each a finite number within
    ``rating_scale`` (lowest, highest) where one is given; else a :class:`RatingError` naming the
    first entry that is not."""
    checked: list[float | None] = []
    for position, rating in enumerate(ratings):
        problem = _rating_problem(rating, rating_scale)
        if problem is not None:
            raise RatingError(problem, position, len(ratings))
        checked.append(None if rating is None else float(rating))
    return checked


def _rating_problem(rating: Any, rating_scale: tuple[float, float] | None) -> str | None:
    """What is wrong with one rating (None: missing, which is allowed), or None if nothing is."""
    if rating is None:
        return None
    if isinstance(rating, bool) or not isinstance(rating, numbers.Real):
        return f"rating {rating!r} is not a number"
    if not math.isfinite(rating):
        return f"rating {rating} is not a finite number"
    if rating_scale is not None and not rating_scale[0] <= rating <= rating_scale[1]:
        return f"rating {rating:g} is outside the model's rating scale {rating_scale[0]:g}..{rating_scale[1]:g}"
    return None


def user_parameter_names(network: MultitaskNet) -> list[str]:
    """The parameters of the network's tables indexed by user (one row per user), as it declares them."""
    return [f"{table.name}.weight" for table in network.tables() if table.rows == "users"]


def fold_in(
    network: MultitaskNet,
    objective: JointObjective,
    items: Sequence[int],
    ratings: Sequence[float | None] | None = None,
    negatives: int = 1,
    weight_decay: float = 0.0,
    steps: int = STEPS,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
    rating_scale: tuple[float, float] | None = None,
    user_features: Any = None,
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
        Their ratings (None where one is unknown: the history's mean stands in for it), or None
        for a history of items alone. Checked by :func:`check_ratings`. Without any rating, or
        with an objective whose λR is 0, only the watch loss fits.
    negatives:
        Negatives sampled per history item at each step.
    weight_decay:
        Weight decay of the user's parameters.
    steps, learning_rate, seed:
        The fitting steps, their Adam learning rate, and the seed of the negatives.
    rating_scale:
        (lowest, highest) rating the ratings must lie in, where known.
    user_features:
        The user's features (:class:`~mtrec.data.feature_maps.FeatureBags` of one user), for a
        network with user features: the user is then their fitted vector plus the features' sum.
    """
    if not len(items):
        raise ConfigError("a history needs at least one item to fold in")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"fold-in steps must be a whole number of at least 0 (0: instant), got {steps!r}")
    device = next(network.parameters()).device
    observed = _observed(items, ratings, rating_scale, objective.weight("rating") > 0, device)
    if steps == 0:
        return instant_user(network, items, user_features)
    one, own = _one_user(network, device)
    one.use_histories([0, len(set(items))], sorted(set(items)))
    _own_user_side(one, user_features, True)  # a history-aware user reads it with no optimisation
    one.eval()  # fitted to the whole history, as it is served (no history dropout)
    optimizer = torch.optim.Adam(own, lr=learning_rate, weight_decay=weight_decay)
    positives = torch.as_tensor(list(items), dtype=torch.long, device=device)
    users = torch.zeros_like(positives)
    generator = torch.Generator().manual_seed(seed)
    candidates = _negative_candidates(positives, network.item_biases.num_embeddings, getattr(network, "item_known", None))
    shape = (len(positives),) if negatives == 1 else (len(positives), negatives)
    with torch.enable_grad():
        for _ in range(steps):
            drawn = candidates[torch.randint(0, len(candidates), shape, generator=generator)].to(device)
            optimizer.zero_grad()
            _, loss = objective(one, Batch(users, positives, drawn, observed))
            loss.backward()
            optimizer.step()
    return one.eval()


#: Each trained network's one-user template (made once, then shallow-copied per history).
_TEMPLATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _own_user_side(one: MultitaskNet, bags: Any, known: bool) -> MultitaskNet:
    """Give a one-user network its user's features (``bags``: one user's, or None) and whether the
    user's id part counts (a history to read or fit), where the network has user features; a
    :class:`ConfigError` for features given to a network without them."""
    if "users" not in getattr(one, "feature_sizes", {}):
        if bags is not None:
            raise ConfigError("this model was trained without user features (features=none or items): it cannot read a user's attributes")
        return one
    one._buffers = dict(one._buffers)  # its own user side; the rest stays shared
    device = one.item_biases.weight.device
    one._buffers["user_known"] = torch.full((1,), 1.0 if known else 0.0, device=device)
    bags = FeatureBags.none(1) if bags is None else bags
    return one.use_features("users", bags.indptr, bags.indices, bags.weights)


def features_user(network: MultitaskNet, bags: Any) -> MultitaskNet:
    """A one-user network whose user has no history: their features alone (``bags``, one user's)."""
    template = _TEMPLATES.get(network)
    if template is None:
        template = _TEMPLATES[network] = _template(network)
    one = copy.copy(template)
    one._buffers = dict(template._buffers)
    one.use_histories([0, 0], [])
    return _own_user_side(one, bags, False)


def instant_user(network: MultitaskNet, items: Sequence[int], user_features: Any = None) -> MultitaskNet:
    """A one-user network of ``network``'s heads whose user is the trained users' mean, reading the
    history ``items`` through the encoder (and the item-item path): no fitting, nothing copied.

    Every table, layer and buffer but the users' is ``network``'s own (shared, not copied: the
    one-user network is read, never trained). The one-user structure is made once per network
    (the users' mean taken then) and shallow-copied for each history, so a fold-in costs a
    fraction of a millisecond (``benchmarks/foldin.py``). A network trained further in place
    after its first instant fold-in keeps the template's user mean: fold in from the model
    that fit returns, as serving does.
    """
    if not len(items):
        raise ConfigError("a history needs at least one item to fold in")
    template = _TEMPLATES.get(network)
    if template is None:
        template = _TEMPLATES[network] = _template(network)
    one = copy.copy(template)
    one._buffers = dict(template._buffers)  # its own histories; everything else is shared
    distinct = sorted(set(int(item) for item in items))
    return _own_user_side(one.use_histories([0, len(distinct)], distinct), user_features, True)


def _template(network: MultitaskNet) -> MultitaskNet:
    """The one-user network of :func:`instant_user`, without histories."""
    with torch.device("meta"):  # the structure only; every tensor is set below
        one = network.resized(num_users=1)
    own = set(user_parameter_names(network))
    with torch.no_grad():
        for name, param in network.named_parameters():
            owner, _, leaf = name.rpartition(".")
            value = nn.Parameter(_trained_mean(network, param), requires_grad=False) if name in own else param
            one.get_submodule(owner)._parameters[leaf] = value
        for name, buffer in network.named_buffers():
            owner, _, leaf = name.rpartition(".")
            (one.get_submodule(owner) if owner else one)._buffers[leaf] = buffer
    return _own_user_side(one, None, True).eval()


def _one_user(network: MultitaskNet, device) -> tuple[MultitaskNet, list[torch.nn.Parameter]]:
    """A one-user copy of ``network`` whose user starts at the trained users' mean, and that user's
    parameters (the only ones that require a gradient)."""
    one = network.resized(num_users=1).to(device)
    own = set(user_parameter_names(network))
    trained = dict(network.named_parameters())
    buffers = dict(network.named_buffers())
    with torch.no_grad():
        for name, param in one.named_parameters():
            source = trained[name].detach()
            param.copy_(_trained_mean(network, source) if name in own else source)
            param.requires_grad_(name in own)
        for name, buffer in one.named_buffers():  # the item-item path's matrix and weight
            if name.startswith("item_item_") or name == "item_known":
                buffer.copy_(buffers[name])
    if "items" in getattr(network, "feature_sizes", {}):  # the items' features as they are: shared, not rebuilt
        for name in ("indptr", "indices", "weights", "dense"):
            one._buffers[f"item_feature_{name}"] = buffers[f"item_feature_{name}"]
    return one, [param for name, param in one.named_parameters() if name in own]


def _trained_mean(network: MultitaskNet, rows: torch.Tensor) -> torch.Tensor:
    """The mean of a user table's rows over the users that trained (with training pairs), shape (1, width):
    a cold-users split leaves untrained rows at their random start, which would only blur it. Where
    every user trained, the plain mean (the same numbers as ever)."""
    trained = network.history_indptr[1:] > network.history_indptr[:-1]
    if bool(trained.all()) or not bool(trained.any()):
        return rows.mean(0, keepdim=True)
    return rows[trained].mean(0, keepdim=True)


def _negative_candidates(positives: torch.Tensor, num_items: int, known: torch.Tensor | None = None) -> torch.Tensor:
    """The items negatives are drawn from (on the CPU): those outside the history (and, for a model
    with item features, among the items that trained, as in training), or every item when the
    history holds them all."""
    history = torch.zeros(num_items, dtype=torch.bool)
    history[positives.cpu()] = True
    if known is not None:
        history |= known.cpu() == 0
    candidates = torch.nonzero(~history).view(-1)
    return candidates if len(candidates) else torch.arange(num_items)


def _observed(
    items: Sequence[int], ratings: Sequence[Any] | None, rating_scale: tuple[float, float] | None, fitted: bool, device
) -> torch.Tensor | None:
    """The ratings the rating loss fits: ``ratings`` checked, the mean of the given ones where one is
    missing; None without any rating, or when ``fitted`` is false (the objective fits no ratings)."""
    if ratings is None:
        return None
    if len(ratings) != len(items):
        raise ConfigError(f"{len(ratings)} ratings for {len(items)} items: give one per item (None where unknown)")
    checked = check_ratings(ratings, rating_scale)
    given = [rating for rating in checked if rating is not None]
    if not given or not fitted:
        return None
    mean = sum(given) / len(given)
    return torch.tensor([mean if rating is None else rating for rating in checked], dtype=torch.float32, device=device)


def fold_in_model(
    model, items: Sequence[int], ratings: Sequence[float | None] | None = None, instant: bool = False, user_features: Any = None
) -> MultitaskNet:
    """:func:`fold_in` with a fitted :class:`~mtrec.model.MultitaskModel`'s own objective and settings
    (``instant``: no fitting steps, the history read through the encoder alone).

    Its loss weights (λR 0 without any rating, or when the model did not learn ratings; a model
    trained on ratings alone still ranks by its watch score, so a history fits that too), its
    watch loss, negatives, the weight decay of its embeddings, its seed and its data's rating
    scale, which every rating must lie in (:func:`check_ratings`).
    """
    learned = model.data_.has_ratings and model.regression_weight > 0
    rated = ratings is not None and any(rating is not None for rating in ratings)
    weight_r = model.regression_weight if learned and rated else 0.0
    weight_f = model.factorization_weight if model.factorization_weight > 0 or weight_r > 0 else 1.0
    objective = JointObjective({"watch": weight_f, "rating": weight_r}, watch_loss=model.watch_loss, rating_loss=model.rating_loss)
    return fold_in(
        model.network_, objective, items, ratings, model.negatives, model.weight_decay()["embeddings"],
        steps=0 if instant else STEPS, seed=model.seed, rating_scale=model.data_.rating_scale, user_features=user_features,
    )  # fmt: skip
