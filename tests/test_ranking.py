"""The one ranking module (mtrec.eval.ranking): ranks with ties averaged, masked top-k lists, counts at
or above a pick, percentiles, and a batch of rows counted as each row alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_interactions
from scipy.stats import rankdata

from mtrec.eval.ranking import (
    MASKED,
    count_at_or_above,
    count_at_or_above_sorted,
    count_at_or_above_within,
    count_below,
    masked,
    percentile,
    ranked_top_k,
    tied_ranks,
    top_k,
    top_k_indices,
)


def tied_scores(rows: int, items: int, seed: int = 0, levels: int = 7) -> torch.Tensor:
    """Scores with many ties: a few distinct values per row."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (rows, items), generator=generator).float() / 2


def brute_at_or_above(scores: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    return (scores[:, None, :] >= picks[:, :, None]).sum(2)


# ---------------------------------------------------------------------------------------------
# Ranks, ties averaged


def test_tied_ranks_average_the_ranks_of_tied_scores():
    scores = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    ranks = tied_ranks(scores, torch.zeros(4, dtype=torch.long), scores[0])
    assert ranks.tolist() == [1.5, 4.0, 1.5, 3.0]
    assert ranks.dtype == torch.float32


def test_tied_ranks_agree_with_scipy_on_many_ties_and_in_any_chunks():
    scores = tied_scores(6, 50)
    rows = torch.arange(6).repeat_interleave(5)
    columns = torch.arange(30) % 50
    values = scores[rows, columns]
    expected = np.concatenate([rankdata(-scores[r].numpy(), method="average")[columns[rows == r].numpy()] for r in range(6)])
    for chunk in (None, 1, 7, 1000):
        assert tied_ranks(scores, rows, values, chunk).tolist() == expected.tolist()


def test_a_masked_entry_ranks_below_every_value():
    scores = torch.tensor([[2.0, 1.0, 0.5]])
    hidden = masked(scores, (torch.tensor([0]), torch.tensor([0])))
    assert tied_ranks(hidden, torch.tensor([0]), torch.tensor([1.0])).tolist() == [1.0]
    assert scores[0, 0] == 2.0  # masked copies unless told otherwise


def test_one_row_alone_ranks_as_in_a_batch():
    scores = tied_scores(5, 40, seed=1)
    rows = torch.tensor([0, 0, 2, 4, 4, 4])
    values = scores[rows, torch.tensor([1, 2, 3, 4, 5, 6])]
    batch = tied_ranks(scores, rows, values)
    single = torch.cat([tied_ranks(scores[r : r + 1], torch.zeros(1, dtype=torch.long), v[None]) for r, v in zip(rows.tolist(), values)])
    assert torch.equal(batch, single)


# ---------------------------------------------------------------------------------------------
# Percentiles


def test_percentile_is_one_for_the_best_and_zero_for_the_worst():
    row = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    below = count_below(row.expand(4, -1), row[0])
    assert below.tolist() == [3, 0, 2, 1]
    assert percentile(below, 4).tolist() == [1.0, 0.0, 2 / 3, 1 / 3]


def test_percentile_of_ties_counts_only_the_scores_strictly_below():
    row = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert percentile(count_below(row.expand(4, -1), row[0]), 4).tolist() == [1 / 3, 1 / 3, 1 / 3, 0.0]


def test_percentile_of_a_single_item_is_zero_and_of_nothing_empty():
    assert percentile(torch.tensor([0]), 1).tolist() == [0.0]
    nothing = count_below(torch.zeros(0, 5), torch.zeros(0))
    assert nothing.dtype == torch.long and percentile(nothing, 5).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_percentile_in_either_precision_is_the_correctly_rounded_fraction(dtype):
    below = torch.arange(0, 59047)
    assert torch.equal(percentile(below, 59047, dtype), (below.double() / 59046).to(dtype))


def test_count_below_in_chunks_counts_as_at_once():
    scores = tied_scores(9, 30, seed=2)
    values = scores[:, 3]
    assert torch.equal(count_below(scores, values, 2), count_below(scores, values))
    assert torch.equal(count_below(scores, values), (scores < values[:, None]).sum(1))


# ---------------------------------------------------------------------------------------------
# Top k, masked


def test_top_k_never_picks_a_masked_item_while_another_is_left():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    seen = (torch.tensor([0, 1]), torch.tensor([0, 4]))
    top, items = top_k(scores, 2, seen)
    assert items.tolist() == [[1, 2], [3, 2]] and top.tolist() == [[4.0, 3.0], [4.0, 3.0]]
    allowed = torch.tensor([True, False, True, False, True])
    _, items = top_k(scores, 2, seen, allowed)
    assert items.tolist() == [[2, 4], [2, 0]]


def test_a_short_list_ends_in_masked_picks():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    top, _ = top_k(scores, 3, allowed=torch.tensor([False, True, False]))
    assert top.tolist() == [[2.0, MASKED, MASKED]]


def test_top_k_of_one_row_masks_by_its_items():
    similarity = torch.tensor([0.9, 1.0, 0.5])
    top, items = top_k(similarity, 2, (torch.tensor([1]),), inplace=True)
    assert items.tolist() == [0, 2] and similarity[1] == MASKED


def test_top_k_indices_of_numpy_values_best_first():
    values = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert top_k_indices(values, 5).tolist() == [1, 3, 2, 4, 0]  # ties in index order, all kept
    assert sorted(top_k_indices(values, 2).tolist()) == [1, 3]
    assert top_k_indices(values, 3)[-1] == 2
    assert top_k_indices(np.array([2, 5, 5, 1]), 4).tolist() == [1, 2, 0, 3]


# ---------------------------------------------------------------------------------------------
# Counts at or above a pick


def test_count_at_or_above_counts_every_value_at_least_as_high():
    scores = tied_scores(4, 25, seed=3)
    top, _ = top_k(scores, 6)
    assert torch.equal(count_at_or_above(top, scores), brute_at_or_above(scores, top))


def test_count_at_or_above_leaves_out_what_is_not_counted_and_adds_the_extra_values():
    scores = tied_scores(3, 20, seed=4)
    top, _ = top_k(scores, 4)
    counted = torch.rand(3, 20, generator=torch.Generator().manual_seed(0)) > 0.3
    rows, extra = torch.tensor([0, 2, 2]), torch.tensor([9.0, -1.0, 1.5])
    expected = brute_at_or_above(scores.masked_fill(~counted, float("-inf")), top)
    for row, value in zip(rows.tolist(), extra.tolist()):
        expected[row] += (value >= top[row]).long()
    assert torch.equal(count_at_or_above(top, scores, counted, extra=(rows, extra)), expected)


def test_count_at_or_above_sorted_in_numpy():
    assert count_at_or_above_sorted(np.array([1.0, 2.0, 2.0, 3.0]), np.array([3.0, 2.0, 0.5, 4.0])).tolist() == [1, 3, 4, 0]


@pytest.mark.parametrize("filtered", [False, True])
def test_ranked_top_k_counts_all_items_the_seen_ones_included(filtered):
    scores = tied_scores(5, 30, seed=5, levels=5)
    seen = (torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([2, 7, 0, 1, 2, 3]))
    allowed = torch.ones(30, dtype=torch.bool) if filtered else None
    top, items, at_or_above = ranked_top_k(scores.clone(), 8, seen, allowed)
    assert torch.equal(at_or_above, brute_at_or_above(scores, top))
    assert not any(item in items[row] for row, item in zip(*(part.tolist() for part in seen)))
    assert torch.equal(top, scores.gather(1, items))


def test_the_filtered_and_the_unfiltered_count_agree_on_ties():
    scores = tied_scores(6, 60, seed=6, levels=4)
    seen = (torch.tensor([1, 1, 4]), torch.tensor([5, 6, 7]))
    fast = ranked_top_k(scores.clone(), 10, seen)
    slow = ranked_top_k(scores.clone(), 10, seen, torch.ones(60, dtype=torch.bool))
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[2], slow[2])


def test_a_batch_of_rows_counts_as_each_row_alone():
    scores = tied_scores(7, 45, seed=7)
    seen = (torch.tensor([0, 2, 2, 6]), torch.tensor([3, 4, 5, 44]))
    allowed = torch.arange(45) % 3 != 0
    for allow in (None, allowed):
        top, _, counts = ranked_top_k(scores.clone(), 9, seen, allow)
        for row in range(7):
            mine = seen[0] == row
            one = (torch.zeros(int(mine.sum()), dtype=torch.long), seen[1][mine])
            top_1, _, counts_1 = ranked_top_k(scores[row : row + 1].clone(), 9, one, allow)
            assert torch.equal(top_1[0], top[row]) and torch.equal(counts_1[0], counts[row])


def test_count_at_or_above_within_groups():
    groups = np.array([0, 0, 0, 2, 2, 3])
    ranks = np.array([3.0, 1.0, 3.0, 2.5, 7.0, 1.0])
    starts = np.array([0, 3, 3, 5, 6])
    assert count_at_or_above_within(groups, ranks, starts, 10).tolist() == [3, 1, 3, 1, 2, 1]


# ---------------------------------------------------------------------------------------------
# The same numbers through every path of a recommender


@pytest.fixture(scope="module")
def small_recommender():
    from mtrec.model import MultitaskModel
    from mtrec.serving.recommender import Recommender

    return Recommender(MultitaskModel(embedding_dim=4, seed=0).fit(random_interactions(), 2))


def test_a_recommendations_watch_score_is_its_percentile_in_predict_and_in_the_batch(small_recommender):
    import pyarrow as pa

    single = small_recommender.recommend(3, k=5)
    predicted = small_recommender.predict([(3, item.item) for item in single.items])
    assert [np.float32(item.watch_score) for item in single.items] == [np.float32(p.watch_score) for p in predicted]
    table = pa.concat_tables(small_recommender.recommend_all([3], k=5))
    assert table["watch_score"].to_pylist() == [item.watch_score for item in single.items]
    scores = small_recommender.network.all_watch_scores(torch.tensor([small_recommender.user_index(3)])).detach()
    below = count_below(scores.expand(len(single.items), -1), torch.tensor([item.p for item in single.items]))
    assert percentile(below, scores.shape[1]).tolist() == [item.watch_score for item in single.items]
