"""The training objective: the specification that every training step computes.

A batch holds positive (user, item) pairs, one or more sampled negative items per pair and,
where the data has them, the observed ratings. The two task losses are

* L_F, the watch loss (a :class:`WatchLoss` of the registry :data:`WATCH_LOSSES`), on the
  likelihood head's scores of positives p⁺ and negatives p⁻: ``bpr`` (the seed's) is
  mean(1 − σ(p⁺ − p⁻)); ``logsigmoid`` is BPR's own mean(−log σ(p⁺ − p⁻)), whose gradient does
  not vanish for badly ordered pairs;
* L_R, the rating loss, on the rating head's r̂ and the observed r: mean((r̂ − r)²);

and :class:`JointObjective` joins them as λF·L_F + λR·L_R. :class:`mtrec.train.steps.AutogradStep`
differentiates this objective with autograd; :class:`mtrec.train.steps.FusedStep` computes the
same gradients by hand for the objectives and networks it supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mtrec.errors import ConfigError
from mtrec.nn.weighting import make_weighting
from mtrec.registry import Registry

#: Largest loss weight accepted: beyond it Adam's first steps are already dominated by the
#: weight's scale and a float32 loss can overflow. The weights are used as given, not normalised.
MAX_LOSS_WEIGHT = 1000.0


@dataclass
class Batch:
    """One step's training examples.

    Parameters
    ----------
    users, positives:
        The positive pairs, int64 of shape (B,).
    negatives:
        Sampled negative items, int64 of shape (B,) (one per pair) or (B, K).
    ratings:
        The observed ratings of the positive pairs (float32, (B,)), or None.
    count:
        How many positive pairs the losses are averaged over. None means B; in distributed
        training it is the global batch, so that summing every rank's gradients gives the
        gradient of the global mean.
    """

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    ratings: torch.Tensor | None = None
    count: int | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def denominator(self) -> int:
        return len(self.users) if self.count is None else self.count


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
        p_pos = network.watch_score(users, batch.positives)
        if negatives.dim() == 1:
            margin = p_pos - network.watch_score(users, negatives)
        else:
            k = negatives.shape[1]
            p_neg = network.watch_score(users.repeat_interleave(k), negatives.reshape(-1)).view(-1, k)
            margin = p_pos.unsqueeze(1) - p_neg
        per_pair = 1 if negatives.dim() == 1 else negatives.shape[1]  # from the shape: a share may be empty
        return self.terms(margin).sum() / (batch.denominator * per_pair)


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

    The negatives are drawn uniformly, so the log-Q correction of a sampled softmax (subtracting
    each candidate's log sampling probability) is one constant for every candidate and leaves the
    loss unchanged. A negative that happens to be the positive itself stays in the denominator.
    """

    summary = "-log softmax of p+ among p+ and its sampled negatives"
    searched = False  # not yet measured against the pairwise losses: the tuner's space stays the measured one

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        users, negatives = batch.users, batch.negatives
        p_pos = network.watch_score(users, batch.positives)
        k = 1 if negatives.dim() == 1 else negatives.shape[1]
        p_neg = network.watch_score(users.repeat_interleave(k), negatives.reshape(-1)).view(-1, k)
        logits = torch.cat([p_pos[:, None], p_neg], 1)
        return (torch.logsumexp(logits, 1) - p_pos).sum() / batch.denominator


@WATCH_LOSSES.register("softmax")
class FullSoftmax(WatchLoss):
    """Cross-entropy of each watched item against the whole catalogue: −log(e^{p⁺} / Σ_j e^{p_j}).

    Every item is a negative (the sampled ones are not used): a (batch × items) product per step,
    which suits catalogues of thousands of items; ``sampled-softmax`` is the loss for larger ones.
    """

    summary = "-log softmax of p+ over every item (a batch x items product per step)"
    searched = False  # as above; and a 50-trial tune that searched both took 10 minutes instead of 4

    def __call__(self, network, batch: Batch) -> torch.Tensor:
        scores = network.all_watch_scores(batch.users)
        positive = scores.gather(1, batch.positives[:, None]).squeeze(1)
        return (torch.logsumexp(scores, 1) - positive).sum() / batch.denominator


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L_F = mean(1 - sigmoid(p+ - p-)): pushes a watched item's score above an unwatched one's."""
    return BPR().terms(positive - negative).mean()


def regression_loss(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """L_R = mean((r_hat - r)^2)."""
    return torch.mean((predicted - observed) ** 2)


def check_weights(factorization_weight: float, regression_weight: float) -> None:
    """λF and λR must be finite, in [0, MAX_LOSS_WEIGHT], and not both 0."""
    for name, value in (("factorization_weight", factorization_weight), ("regression_weight", regression_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (0.0 <= value <= MAX_LOSS_WEIGHT):  # also false for NaN
            raise ConfigError(f"{name} must be a non-negative number of at most {MAX_LOSS_WEIGHT:g}, got {value}")
    if factorization_weight == 0 and regression_weight == 0:
        raise ConfigError("factorization_weight and regression_weight cannot both be 0")


class JointObjective:
    """λF·L_F + λR·L_R, or the tasks' losses joined by another weighting.

    Parameters
    ----------
    factorization_weight, regression_weight:
        λF and λR, each in [0, :data:`MAX_LOSS_WEIGHT`], not both 0.
    watch_loss:
        The name of a registered :class:`WatchLoss` (:data:`WATCH_LOSSES`): ``"bpr"``
        (mean(1 − σ(p⁺ − p⁻)), the seed's) or ``"logsigmoid"`` (mean(−log σ(p⁺ − p⁻))).
    weighting:
        How the two losses become one update (:mod:`mtrec.nn.weighting`): ``"fixed"`` (the λs),
        ``"uncertainty"``, ``"gradnorm"``, ``"pcgrad"`` or ``"mgda"``.
    gradnorm_alpha:
        GradNorm's asymmetry α.
    """

    def __init__(
        self,
        factorization_weight: float = 0.5,
        regression_weight: float = 0.5,
        watch_loss: str = "bpr",
        weighting: str = "fixed",
        gradnorm_alpha: float = 1.5,
    ):
        check_weights(factorization_weight, regression_weight)
        self.factorization_weight = float(factorization_weight)
        self.regression_weight = float(regression_weight)
        self.watch_loss = watch_loss
        self.watch = WATCH_LOSSES[watch_loss]()
        self.weighting_name = weighting
        self.weighting = make_weighting(weighting, factorization_weight, regression_weight, gradnorm_alpha)

    def task_losses(self, network, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_F, L_R)`` of ``network`` on ``batch``; L_R is 0 for a batch without ratings."""
        loss_f = self.watch(network, batch)
        if batch.ratings is None:
            return loss_f, torch.zeros((), device=loss_f.device)
        error = network.rating(batch.users, batch.positives) - batch.ratings
        return loss_f, error.square().sum() / batch.denominator

    def combine(self, loss_f: torch.Tensor, loss_r: torch.Tensor) -> torch.Tensor:
        """The joint loss: what autograd differentiates for a loss weighting, what is reported for all."""
        return self.weighting.combine(loss_f, loss_r)

    def __call__(self, network, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_F, L_R, λF·L_F + λR·L_R)``."""
        loss_f, loss_r = self.task_losses(network, batch)
        return loss_f, loss_r, self.combine(loss_f, loss_r)
