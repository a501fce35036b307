"""Watch losses: how the likelihood head's scores of watched items should beat the rest.

A watch loss (a :class:`WatchLoss` of the registry :data:`WATCH_LOSSES`) scores the positives p⁺
against their sampled negatives p⁻ (or against every item): ``bpr`` (the seed's) is
mean(1 − σ(p⁺ − p⁻)); ``logsigmoid`` is BPR's own mean(−log σ(p⁺ − p⁻)), whose gradient does not
vanish for badly ordered pairs; ``sampled-softmax`` and ``softmax`` are cross-entropies. The
``watch`` task (:mod:`mtrec.nn.tasks`) trains with one, and the objective
(:mod:`mtrec.nn.objective`) joins it with the other tasks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from mtrec.nn.batch import Batch
from mtrec.nn.network import MultitaskNet
from mtrec.registry import Registry


def scores_against(network, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Watch scores of each user (B,) against each of its items (B, K): :meth:`MultitaskNet.watch_scores
    <mtrec.nn.network.MultitaskNet.watch_scores>` (the user's vector made once) where the network's
    ``watch_score`` is MultitaskNet's own, else its ``watch_score`` of every pair (a subclass's override wins)."""
    if type(network).watch_score is MultitaskNet.watch_score:
        return network.watch_scores(users, items)
    k = items.shape[1]
    return network.watch_score(users.repeat_interleave(k), items.reshape(-1)).view(-1, k)


class WatchLoss:
    """L_F of a batch: how the likelihood head's scores of the watched items should beat the rest.

    A watch loss is registered in :data:`WATCH_LOSSES` under its name; the objective calls it on
    the network and the batch, and it returns L_F averaged over ``batch.denominator`` positive
    pairs (so that in distributed training the ranks' gradients sum to the global mean's).
    ``summary`` says what it is in a line (``--watch-loss``'s help is made of them).
    """

    summary: ClassVar[str] = ""
    #: Whether ``mtrec tune``'s default search space offers it.
    searched: ClassVar[bool] = True

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


#: The watch losses by name: ``--watch-loss``'s choices, the tuner's, and the tests' (:mod:`mtrec.registry`).
WATCH_LOSSES: Registry[type[WatchLoss]] = Registry("watch loss")


class PairwiseLoss(WatchLoss):
    """A watch loss of the margins p⁺ − p⁻ of each positive over its sampled negatives, averaged over
    the pairs: a subclass gives the per-pair term of a margin (:meth:`terms`)."""

    def terms(self, margin: torch.Tensor) -> torch.Tensor:
        """The loss of each margin p⁺ − p⁻ (any shape)."""
        raise NotImplementedError

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        users, negatives = batch.users, batch.negatives
        k = 1 if negatives.dim() == 1 else negatives.shape[1]
        # the positives and negatives of a user scored together: its vector is made once
        scores = scores_against(network, users, torch.cat([batch.positives.unsqueeze(1), negatives.view(len(users), k)], 1))
        margin = scores[:, 0].unsqueeze(1) - scores[:, 1:]
        if negatives.dim() == 1:
            margin = margin.squeeze(1)
        per_pair = 1 if negatives.dim() == 1 else negatives.shape[1]  # from the shape: a share may be empty
        terms = self.terms(margin)
        if batch.weights is not None:
            terms = terms * (batch.weights if negatives.dim() == 1 else batch.weights.unsqueeze(1))
        return terms.sum() / (batch.denominator * per_pair)


@WATCH_LOSSES.register("bpr")
class BPR(PairwiseLoss):
    """The seed's mean(1 − σ(p⁺ − p⁻)): pushes a watched item's score above an unwatched one's."""

    summary = "mean(1 - sigmoid(p+ - p-)) (the seed's, default)"

    def terms(self, margin: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.sigmoid(margin)


@WATCH_LOSSES.register("logsigmoid")
class LogSigmoid(PairwiseLoss):
    """BPR's own mean(−log σ(p⁺ − p⁻)), whose gradient does not vanish for badly ordered pairs."""

    summary = "mean(-log sigmoid(p+ - p-))"

    def terms(self, margin: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(margin)


@WATCH_LOSSES.register("sampled-softmax")
class SampledSoftmax(WatchLoss):
    """Cross-entropy of each watched item against its sampled negatives: −log(e^{p⁺} / (e^{p⁺} + Σ e^{p⁻})).

    With the log-Q correction (Bengio & Senécal; Yi et al. 2019): each candidate's score is
    lowered by the log of the probability Q that the sampler draws it (``batch.log_q``, one per
    item), so that a softmax over popularity-drawn negatives (``negative_sampling="popularity"``)
    estimates the full softmax rather than penalising popular items for being drawn often. For
    uniform draws log Q is one constant, which leaves the loss unchanged. A negative that happens
    to be the positive itself stays in the denominator.
    """

    summary = "-log softmax of p+ among p+ and its sampled negatives"
    searched = False  # not yet measured against the pairwise losses: the tuner's space stays the measured one

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        users, negatives = batch.users, batch.negatives
        k = 1 if negatives.dim() == 1 else negatives.shape[1]
        candidates = torch.cat([batch.positives.unsqueeze(1), negatives.view(len(users), k)], 1)
        logits = scores_against(network, users, candidates)
        if batch.log_q is not None:
            logits = logits - batch.log_q[candidates]
        terms = torch.logsumexp(logits, 1) - logits[:, 0]
        return _weighted(terms, batch).sum() / batch.denominator


@WATCH_LOSSES.register("softmax")
class FullSoftmax(WatchLoss):
    """Cross-entropy of each watched item against the whole catalogue: −log(e^{p⁺} / Σ_j e^{p_j}).

    Every item is a negative (the sampled ones are not used): a (distinct users × items) product
    per step, which suits catalogues of thousands of items (``sampled-softmax`` is the loss for
    larger ones). Each distinct user of the batch is scored once, so batches grouped by user
    (``batch_by="users"``) make it cheap.
    """

    summary = "-log softmax of p+ over every item (a batch x items product per step)"
    # the quality preset's loss (README, "Presets"); the tuner's space holds it

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        distinct, inverse = torch.unique(batch.users, return_inverse=True)
        scores = network.all_watch_scores(distinct)
        known = getattr(network, "item_known", None)
        if known is not None:  # an item held out of training (a model with item features) is no negative either
            scores = scores.masked_fill(known == 0, float("-inf"))
        # index_select, not indexing: the gradients then add up in a fixed order (see HistoryEncoder.encode)
        positive = scores.reshape(-1).index_select(0, inverse * scores.shape[1] + batch.positives)
        terms = torch.logsumexp(scores, 1).index_select(0, inverse) - positive
        return _weighted(terms, batch).sum() / batch.denominator


def _weighted(terms: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Each positive pair's loss times its weight (``batch.weights``), where the batch has weights."""
    return terms if batch.weights is None else terms * batch.weights


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L_F = mean(1 - sigmoid(p+ - p-)): pushes a watched item's score above an unwatched one's."""
    return BPR().terms(positive - negative).mean()


def regression_loss(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """L_R = mean((r_hat - r)^2)."""
    return torch.mean((predicted - observed) ** 2)
