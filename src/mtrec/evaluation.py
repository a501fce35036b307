"""Evaluation: test MSE of the rating head and MRR of the watch score, vectorised.

MRR follows the assignment: for each user with held-out items, every item is ranked by the
watch score p with the user's training items removed from the ranking; each held-out item's
reciprocal rank is averaged over the user's held-out items, then over users. Tied scores
take their average rank.

Cold start: test rows whose user or item never occurs in training are kept and scored like
any other row. A cold user's vector and bias keep their initial values (no training row
touches them); a cold item is only ever a sampled negative, so training pushes its score
down. :func:`~mtrec.data.splits.cold_start_counts` reports how many such rows there are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mtrec.data.interactions import Interactions
from mtrec.errors import DataError

if TYPE_CHECKING:
    from mtrec.model import FittedData, MultitaskModel
    from mtrec.network import MultitaskNet

#: Bytes of scores one block of users may occupy while ranking.
SCORE_BLOCK_BYTES = 256 * 2**20
#: Bytes of gathered score rows compared at once (kept small so they stay in cache).
COMPARE_CHUNK_BYTES = 4 * 2**20
#: Pairs scored by the rating head at once.
PREDICT_BATCH = 2**16


def _same_id_maps(a: Interactions | FittedData, b: Interactions) -> bool:
    same = (a.num_users, a.num_items) == (b.num_users, b.num_items)
    return same and np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.item_ids, b.item_ids)


def check_same_ids(a: Interactions, b: Interactions) -> None:
    """Raise unless ``a`` and ``b`` index users and items the same way."""
    if not _same_id_maps(a, b):
        raise DataError(
            f"{a.name or 'the data'} and {b.name or 'the test data'} use different id maps: "
            "split one Interactions so both share it"
        )


def _check_model_ids(model: MultitaskModel, data: Interactions) -> None:
    if not _same_id_maps(model.data_, data):
        raise DataError("the data does not use the id map the model was trained with")


def _sorted_pairs(data: Interactions, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Users and items sorted by user, and the CSR row pointer over users."""
    order = np.lexsort((data.items, data.users))
    users = data.users[order]
    indptr = np.zeros(data.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=data.num_users), out=indptr[1:])
    as_tensor = lambda a: torch.as_tensor(a.astype(np.int64), device=device)  # noqa: E731
    return as_tensor(users), as_tensor(data.items[order]), indptr


class Evaluator:
    """Test MSE and MRR of a network on fixed test and train sets.

    Building one sorts the test and training pairs once, so evaluating every epoch costs
    only the forward passes.

    Parameters
    ----------
    test:
        Held-out interactions.
    train:
        Training interactions; their items are removed from each user's ranking. Without
        them nothing is removed.
    device:
        Where the evaluation tensors live.
    """

    def __init__(
        self, test: Interactions, train: Interactions | None = None, device: torch.device | str = "cpu"
    ) -> None:
        train = train if train is not None else test.subset(np.zeros(len(test), dtype=bool))
        check_same_ids(train, test)
        if len(test) == 0:
            raise DataError("the test set is empty")
        self.device = torch.device(device)
        self.num_users, self.num_items = test.num_users, test.num_items
        self.test_users, self.test_items, self.test_indptr = _sorted_pairs(test, self.device)
        self.train_users, self.train_items, self.train_indptr = _sorted_pairs(train, self.device)
        self._pair_users = torch.as_tensor(test.users.astype(np.int64), device=self.device)
        self._pair_items = torch.as_tensor(test.items.astype(np.int64), device=self.device)
        self._ratings = (
            None if test.ratings is None else torch.as_tensor(test.ratings, dtype=torch.float32, device=self.device)
        )

    @torch.no_grad()
    def mse(self, net: MultitaskNet) -> float:
        """Mean over test pairs of (r_hat - r)^2; NaN for data without ratings."""
        if self._ratings is None:
            return float("nan")
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, len(self._ratings), PREDICT_BATCH):
            users = self._pair_users[start : start + PREDICT_BATCH]
            items = self._pair_items[start : start + PREDICT_BATCH]
            r_hat = net.rating(net.rating_users(users), net.rating_items(items))
            total += ((r_hat - self._ratings[start : start + PREDICT_BATCH]) ** 2).sum(dtype=torch.float64)
        return float(total) / len(self._ratings)

    @torch.no_grad()
    def ranks(self, net: MultitaskNet) -> torch.Tensor:
        """The (average, 1-based) rank of each test pair, in user-sorted order."""
        num_items = self.num_items
        block = max(1, SCORE_BLOCK_BYTES // (4 * num_items))
        chunk = max(1, COMPARE_CHUNK_BYTES // (4 * num_items))
        ranks = torch.empty(len(self.test_users), dtype=torch.float32, device=self.device)
        users_with_tests = np.flatnonzero(np.diff(self.test_indptr))
        for lo, hi in _blocks(users_with_tests, block):
            t0, t1 = int(self.test_indptr[lo]), int(self.test_indptr[hi])
            scores = net.all_watch_scores(torch.arange(lo, hi, device=self.device))
            rows = self.test_users[t0:t1] - lo
            test_scores = scores[rows, self.test_items[t0:t1]]
            r0, r1 = int(self.train_indptr[lo]), int(self.train_indptr[hi])
            scores[self.train_users[r0:r1] - lo, self.train_items[r0:r1]] = float("-inf")
            # A held-out item is always ranked, even if the data also has it in training.
            scores[rows, self.test_items[t0:t1]] = test_scores
            for a in range(0, t1 - t0, chunk):
                # sum(sign(s_j - s)) = #greater - #less; with #greater + #less + #equal = num_items
                # the average rank #greater + (#equal + 1) / 2 follows in one pass.
                diff = scores.index_select(0, rows[a : a + chunk])  # much faster than scores[rows]
                diff -= test_scores[a : a + chunk, None]
                ranks[t0 + a : t0 + a + len(diff)] = diff.sign_().sum(1)
        return (ranks + (num_items + 1)) / 2

    def mrr(self, net: MultitaskNet) -> float:
        """Mean over users with held-out items of their mean reciprocal rank."""
        reciprocal = 1.0 / self.ranks(net).double()
        per_user = torch.zeros(self.num_users, dtype=torch.float64, device=self.device)
        per_user.index_add_(0, self.test_users, reciprocal)
        counts = torch.as_tensor(np.diff(self.test_indptr), device=self.device)
        has_tests = counts > 0
        return float((per_user[has_tests] / counts[has_tests]).mean())

    def evaluate(self, net: MultitaskNet) -> dict[str, float]:
        """``{"test_mse": ..., "test_mrr": ...}``."""
        was_training = net.training
        net.eval()
        try:
            return {"test_mse": self.mse(net), "test_mrr": self.mrr(net)}
        finally:
            net.train(was_training)


def _blocks(users: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Contiguous user-id ranges [lo, hi) covering ``users`` (sorted), each at most ``size`` wide."""
    blocks = []
    i = 0
    while i < len(users):
        lo = int(users[i])
        i = int(np.searchsorted(users, lo + size, side="left"))
        blocks.append((lo, int(users[i - 1]) + 1))
    return blocks


def mse_score(model: MultitaskModel, test: Interactions) -> float:
    """Test MSE of a fitted model's rating head: the mean of (r_hat - r)^2 over ``test``."""
    _check_model_ids(model, test)
    return Evaluator(test, device=model.device_).mse(model.network_)


def mrr_score(model: MultitaskModel, test: Interactions, train: Interactions) -> float:
    """MRR of a fitted model's watch score on ``test``, with ``train`` items removed from rankings."""
    _check_model_ids(model, test)
    return Evaluator(test, train, model.device_).mrr(model.network_)
