"""Evaluation of a network on held-out data, vectorised: rating errors and full-ranking metrics.

Rating metrics compare the rating head's r̂ with the held-out ratings: ``mse``, ``rmse``, ``mae``.

Ranking metrics rank, for each user with held-out items, *every* item by the watch score p,
with the user's known items (those passed as ``train``) removed from the ranking. Tied scores
take their average rank: an item is at rank ``1 + #outscoring + #tied / 2`` (counting the
other items), so a rank can end in .5; :func:`mtrec.eval.ranking.tied_ranks` counts them, as
the rest of mtrec counts its ranks. From these ranks, per user and then averaged over users:

* ``mrr``: the mean over the user's held-out items of 1 / rank (the assignment's MRR);
* ``hr@k``: 1 if any held-out item has rank ≤ k;
* ``recall@k``: the share of the user's held-out items with rank ≤ k;
* ``ndcg@k``: Σ 1 / log2(1 + rank) over held-out items with rank ≤ k, divided by its ideal,
  Σ_{i ≤ min(n, k)} 1 / log2(1 + i) for n held-out items;
* ``map@k``: the mean, over min(n, k), of the precision at each held-out item with rank ≤ k
  (the number of held-out items ranked at or above it, divided by its rank).

Cold start: test rows whose user or item never occurs in training are kept and scored like
any other row. In an id-only model a cold user's vector and bias keep their initial values (no
training row touches them), and a cold item is only ever a sampled negative, so training pushes
its score down; a model with features scores either by its attributes alone, and never samples a
cold item (:mod:`mtrec.eval.coldstart` measures the warm and the cold pairs apart).
:func:`~mtrec.data.splits.cold_start_counts` reports how many such rows there are.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from mtrec.data.interactions import Interactions, check_same_ids, same_id_maps
from mtrec.errors import ConfigError, DataError
from mtrec.eval.ranking import count_at_or_above_within, masked, tied_ranks
from mtrec.io.fitted import FittedModel
from mtrec.registry import Registry

#: Bytes of scores one block of users may occupy while ranking.
SCORE_BLOCK_BYTES = 256 * 2**20
#: Bytes of gathered score rows compared at once (kept small so they stay in cache).
COMPARE_CHUNK_BYTES = 4 * 2**20
#: Pairs scored by the rating head at once.
PREDICT_BATCH = 2**16

RATING_METRICS = ("mse", "rmse", "mae")


class RankedPairs:
    """What a ranking metric reads: the rank of every held-out pair (user-sorted, ties averaged) and
    per-user reductions over them (over every process's users in a distributed run).

    Parameters
    ----------
    ranks:
        float64, one per held-out pair, in the evaluator's user-sorted order.
    evaluator:
        The :class:`Evaluator` that ranked them.
    """

    def __init__(self, ranks: torch.Tensor, evaluator: Evaluator) -> None:
        self.ranks, self._evaluator = ranks, evaluator
        #: The number of held-out items of each user.
        self.counts = evaluator._counts_t

    def hits(self, k: int) -> torch.Tensor:
        """1.0 for each pair ranked within the top ``k``, else 0.0."""
        return (self.ranks <= k).double()

    def per_user_mean(self, values: torch.Tensor, per_user_denominator: torch.Tensor) -> float:
        """Mean over users with held-out items of (the sum of their pairs' ``values``) / denominator."""
        return self._evaluator._per_user_mean(values, per_user_denominator)

    def share_of_users_with_any(self, values: torch.Tensor) -> float:
        """The share of users with held-out items whose pairs' ``values`` sum to more than 0."""
        per_user = self._evaluator._per_user_sums(values)
        return float((per_user[self._evaluator._has_tests] > 0).double().mean())

    @functools.cached_property
    def discount(self) -> torch.Tensor:
        """1 / log2(1 + rank) of each pair."""
        return 1.0 / torch.log2(self.ranks + 1.0)

    def ideal_dcg(self, k: int) -> torch.Tensor:
        """Per user, Σ_{i ≤ min(n, k)} 1 / log2(1 + i) for n held-out items (1 where n = 0)."""
        return _ideal_dcg(self._evaluator._counts, k).to(self.ranks.device)

    @functools.cached_property
    def at_or_above(self) -> torch.Tensor:
        """For each pair, how many of its user's held-out items rank at or above it."""
        evaluator = self._evaluator
        groups, ranks = evaluator._sorted_test_users, self.ranks.cpu().numpy()
        counted = count_at_or_above_within(groups, ranks, evaluator.test_indptr, evaluator.num_items + 2)
        return torch.as_tensor(counted, dtype=torch.float64, device=self.ranks.device)


MetricFunction = Callable[[RankedPairs, "int | None"], float]


@dataclass(frozen=True)
class RankingMetric:
    """A ranking metric: ``compute(pairs, k)`` over the :class:`RankedPairs` (``k`` None when it is
    not ``cut_off``; one that is is named ``<name>@<k>``, once per cut-off)."""

    compute: MetricFunction
    cut_off: bool = True


#: The ranking metrics by name, in the order they are recorded (:mod:`mtrec.registry`).
RANKING_METRICS: Registry[RankingMetric] = Registry("metric")


def ranking_metric(name: str, cut_off: bool = True) -> Callable[[MetricFunction], MetricFunction]:
    """A decorator registering a function of (:class:`RankedPairs`, k) as the ranking metric ``name``."""

    def add(compute: MetricFunction) -> MetricFunction:
        RANKING_METRICS.register(name)(RankingMetric(compute, cut_off))
        return compute

    return add


@ranking_metric("mrr", cut_off=False)
def mrr(pairs: RankedPairs, k: None) -> float:
    """The mean over the user's held-out items of 1 / rank."""
    return pairs.per_user_mean(1.0 / pairs.ranks, pairs.counts)


@ranking_metric("ndcg")
def ndcg(pairs: RankedPairs, k: int) -> float:
    """Σ 1 / log2(1 + rank) over held-out items with rank ≤ k, divided by its ideal."""
    return pairs.per_user_mean(pairs.hits(k) * pairs.discount, pairs.ideal_dcg(k))


@ranking_metric("recall")
def recall(pairs: RankedPairs, k: int) -> float:
    """The share of the user's held-out items with rank ≤ k."""
    return pairs.per_user_mean(pairs.hits(k), pairs.counts)


@ranking_metric("hr")
def hit_rate(pairs: RankedPairs, k: int) -> float:
    """1 if any held-out item has rank ≤ k."""
    return pairs.share_of_users_with_any(pairs.hits(k))


@ranking_metric("map")
def average_precision(pairs: RankedPairs, k: int) -> float:
    """The mean, over min(n, k), of the precision at each held-out item with rank ≤ k."""
    return pairs.per_user_mean(pairs.hits(k) * pairs.at_or_above / pairs.ranks, pairs.counts.clamp(max=k))


def all_metrics() -> tuple[str, ...]:
    """Every metric that can be asked for: the rating errors, then the registered ranking metrics."""
    return RATING_METRICS + RANKING_METRICS.names()


METRICS = all_metrics()
DEFAULT_METRICS = METRICS
DEFAULT_K = (10,)
#: Whether a lower value of the metric is better.
LOWER_IS_BETTER = {"mse": True, "rmse": True, "mae": True}

_NAME = re.compile(r"^([a-z]+)(?:@(\d+))?$")


def metric_names(metrics: Sequence[str] = DEFAULT_METRICS, k: Sequence[int] = DEFAULT_K) -> list[str]:
    """The names of the metrics computed: ``["mse", ..., "mrr", "ndcg@10", ...]``, checked.

    Raises
    ------
    ConfigError
        For an unknown metric or a k that is not a positive whole number.
    """
    known = all_metrics()
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ConfigError(f"unknown metric {', '.join(map(repr, unknown))}; use some of {', '.join(known)}")
    if not metrics:
        raise ConfigError(f"no metric to compute; use some of {', '.join(known)}")
    cutoffs = list(k)
    if not cutoffs or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c <= 0 for c in cutoffs):
        raise ConfigError(f"k must be positive whole numbers (the cut-offs of ndcg, recall, hr, map), got {cutoffs}")
    names = []
    for metric in known:
        if metric in metrics:
            if metric in RATING_METRICS or not RANKING_METRICS[metric].cut_off:
                names.append(metric)
            else:
                names += [f"{metric}@{c}" for c in dict.fromkeys(cutoffs)]
    return names


def lower_is_better(name: str) -> bool:
    """Whether a lower value of metric ``name`` (``"mse"``, ``"valid_ndcg@10"``...) is better."""
    base = name.split("_", 1)[1] if name.startswith(("valid_", "test_")) else name
    match = _NAME.match(base)
    return LOWER_IS_BETTER.get(match.group(1) if match else base, False)


def _sorted_pairs(data: Interactions, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Users and items sorted by user, and the CSR row pointer over users."""
    order = np.lexsort((data.items, data.users))
    users = data.users[order]
    indptr = np.zeros(data.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=data.num_users), out=indptr[1:])
    as_tensor = lambda a: torch.as_tensor(a.astype(np.int64), device=device)  # noqa: E731
    return as_tensor(users), as_tensor(data.items[order]), indptr


class Evaluator:
    """Rating and ranking metrics of a network on fixed held-out and known sets.

    Building one sorts the held-out and known pairs once, so evaluating every epoch costs
    only the forward passes. The network needs only the contract of
    :class:`mtrec.nn.network.RecommenderNetwork`.

    Parameters
    ----------
    test:
        Held-out interactions.
    train:
        Known interactions; their items are removed from each user's ranking. Without them
        nothing is removed. Several sets (training and validation, say) may be given as a list.
    device:
        Where the evaluation tensors live.
    metrics, k:
        Which metrics, and the cut-offs of the top-k ones (see the module docstring).
    distributed:
        In a distributed run, each process ranks its share of the users and the per-user sums
        are added up over the processes: every process gets the single-process metrics.
    """

    def __init__(
        self,
        test: Interactions,
        train: Interactions | Sequence[Interactions] | None = None,
        device: torch.device | str = "cpu",
        metrics: Sequence[str] = DEFAULT_METRICS,
        k: Sequence[int] = DEFAULT_K,
        distributed=None,
    ) -> None:
        self.names = metric_names(metrics, k)
        known = [train] if isinstance(train, Interactions) else list(train or [])
        for part in known:
            check_same_ids(part, test)
        if len(test) == 0:
            raise DataError("the test set is empty")
        if not known:
            train = test.subset(np.zeros(len(test), dtype=bool))
        else:
            train = functools.reduce(Interactions.joined, known)
        self.device = torch.device(device)
        self.num_users, self.num_items = test.num_users, test.num_items
        self.test_users, self.test_items, self.test_indptr = _sorted_pairs(test, self.device)
        self.train_users, self.train_items, self.train_indptr = _sorted_pairs(train, self.device)
        self._pair_users = torch.as_tensor(test.users.astype(np.int64), device=self.device)
        self._pair_items = torch.as_tensor(test.items.astype(np.int64), device=self.device)
        self._ratings = None if test.ratings is None else torch.as_tensor(test.ratings, dtype=torch.float32, device=self.device)
        self._counts = np.diff(self.test_indptr)
        self._counts_t = torch.as_tensor(self._counts, device=self.device)
        self._has_tests = self._counts_t > 0
        self._sorted_test_users = self.test_users.cpu().numpy()
        self.distributed = distributed
        self._ranked_users = np.flatnonzero(self._counts)
        self._mine = None
        if distributed is not None:  # a contiguous share of the users with held-out items
            lo, hi = distributed.share(0, len(self._ranked_users))
            self._ranked_users = self._ranked_users[lo:hi]
            owned = np.zeros(self.num_users, dtype=bool)
            owned[self._ranked_users] = True
            self._mine = torch.as_tensor(owned[self._sorted_test_users], device=self.device)

    @torch.no_grad()
    def rating_errors(self, net) -> dict[str, float]:
        """``mse``, ``rmse`` and ``mae`` over the held-out ratings; NaN for data without ratings."""
        if self._ratings is None:
            return dict.fromkeys(RATING_METRICS, math.nan)
        squared = torch.zeros((), dtype=torch.float64, device=self.device)
        absolute = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, len(self._ratings), PREDICT_BATCH):
            users = self._pair_users[start : start + PREDICT_BATCH]
            items = self._pair_items[start : start + PREDICT_BATCH]
            error = net.rating(users, items) - self._ratings[start : start + PREDICT_BATCH]
            squared += (error**2).sum(dtype=torch.float64)
            absolute += error.abs().sum(dtype=torch.float64)
        mse = float(squared) / len(self._ratings)
        return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(absolute) / len(self._ratings)}

    def mse(self, net) -> float:
        """Mean over held-out pairs of (r_hat - r)^2; NaN for data without ratings."""
        return self.rating_errors(net)["mse"]

    @torch.no_grad()
    def ranks(self, net) -> torch.Tensor:
        """The (average, 1-based) rank of each held-out pair, in user-sorted order."""
        num_items = self.num_items
        block = max(1, SCORE_BLOCK_BYTES // (4 * num_items))
        chunk = max(1, COMPARE_CHUNK_BYTES // (4 * num_items))
        # 0 for the pairs of other processes' users (in a distributed run): this process ranks only its own.
        ranks = torch.zeros(len(self.test_users), dtype=torch.float32, device=self.device)
        for lo, hi in _blocks(self._ranked_users, block):
            t0, t1 = int(self.test_indptr[lo]), int(self.test_indptr[hi])
            scores = net.all_watch_scores(torch.arange(lo, hi, device=self.device))
            rows = self.test_users[t0:t1] - lo
            test_scores = scores[rows, self.test_items[t0:t1]]
            r0, r1 = int(self.train_indptr[lo]), int(self.train_indptr[hi])
            masked(scores, (self.train_users[r0:r1] - lo, self.train_items[r0:r1]), inplace=True)
            # A held-out item is always ranked, even if the data also has it in training.
            scores[rows, self.test_items[t0:t1]] = test_scores
            ranks[t0:t1] = tied_ranks(scores, rows, test_scores, chunk)
        return ranks

    def _per_user_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per user, the sum of their pairs' ``values`` (over every process's users in a distributed run)."""
        per_user = torch.zeros(self.num_users, dtype=torch.float64, device=self.device)
        if self._mine is not None:
            values = torch.where(self._mine, values, torch.zeros_like(values))
        per_user.index_add_(0, self.test_users, values)
        if self.distributed is not None:
            self.distributed.sum([per_user])
        return per_user

    def _per_user_mean(self, values: torch.Tensor, per_user_denominator: torch.Tensor) -> float:
        """Mean over users with held-out items of (the sum of their pairs' ``values``) / denominator."""
        per_user = self._per_user_sums(values)
        has = self._has_tests
        return float((per_user[has] / per_user_denominator[has]).mean())

    def mrr(self, net) -> float:
        """Mean over users with held-out items of their mean reciprocal rank."""
        return self.ranking_metrics(net, ["mrr"])["mrr"]

    def ranking_metrics(self, net, names: Sequence[str] | None = None) -> dict[str, float]:
        """The ranking metrics among ``names`` (default: those this evaluator computes)."""
        names = [n for n in (self.names if names is None else names) if n.split("@")[0] in RANKING_METRICS]
        if not names:
            return {}
        pairs = RankedPairs(self.ranks(net).double(), self)
        results = {}
        for name in names:
            metric, _, cutoff = name.partition("@")
            results[name] = RANKING_METRICS[metric].compute(pairs, int(cutoff) if cutoff else None)
        return results

    def evaluate(self, net) -> dict[str, float]:
        """Every metric this evaluator computes, by name (``"mse"``, ``"ndcg@10"``...)."""
        was_training = net.training
        net.eval()
        try:
            results: dict[str, float] = {}
            if any(name in RATING_METRICS for name in self.names):
                errors = self.rating_errors(net)
                results.update({name: errors[name] for name in self.names if name in RATING_METRICS})
            results.update(self.ranking_metrics(net))
            return {name: results[name] for name in self.names}
        finally:
            net.train(was_training)


def _ideal_dcg(counts: np.ndarray, k: int) -> torch.Tensor:
    """Per user, Σ_{i ≤ min(n, k)} 1 / log2(1 + i) for n held-out items (1 where n = 0)."""
    gains = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    ideal = gains[np.minimum(counts, k)]
    ideal[counts == 0] = 1.0
    return torch.as_tensor(ideal, dtype=torch.float64)


def _blocks(users: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Contiguous user-id ranges [lo, hi) covering ``users`` (sorted), each at most ``size`` wide."""
    blocks = []
    i = 0
    while i < len(users):
        lo = int(users[i])
        i = int(np.searchsorted(users, lo + size, side="left"))
        blocks.append((lo, int(users[i - 1]) + 1))
    return blocks


def _check_model_ids(model: FittedModel, data: Interactions) -> None:
    if model.data_ is None or model.network_ is None:
        raise ConfigError("the model is not fitted yet: call fit() or load()")
    if not same_id_maps(model.data_, data):
        raise DataError("the data does not use the id map the model was trained with")


def _device(model: FittedModel) -> torch.device:
    return next(model.network_.parameters()).device


def mse_score(model: FittedModel, test: Interactions) -> float:
    """Test MSE of a fitted model's rating head: the mean of (r_hat - r)^2 over ``test``."""
    _check_model_ids(model, test)
    return Evaluator(test, device=_device(model)).mse(model.network_)


def mrr_score(model: FittedModel, test: Interactions, train: Interactions) -> float:
    """MRR of a fitted model's watch score on ``test``, with ``train`` items removed from rankings."""
    _check_model_ids(model, test)
    return Evaluator(test, train, _device(model)).mrr(model.network_)
