"""MSE and MRR: the assignment's worked example, and the fast paths against slow references."""

import numpy as np
import pytest
import torch
from conftest import random_interactions

import mtrec.eval.evaluation as evaluation
from mtrec.data import Interactions
from mtrec.eval.evaluation import Evaluator
from mtrec.nn.network import MultitaskNet


def net_with_scores(scores: np.ndarray) -> MultitaskNet:
    """A real network whose watch score p(u, j) is scores[u, j] (Q is the identity)."""
    num_users, num_items = scores.shape
    net = MultitaskNet(num_users, num_items, embedding_dim=num_items, layer_sizes=[3 * num_items, 4])
    with torch.no_grad():
        net.user_embeddings.weight.copy_(torch.as_tensor(scores, dtype=torch.float32))
        net.item_embeddings.weight.copy_(torch.eye(num_items))
    return net


def interactions(users, items, num_users, num_items, ratings=None) -> Interactions:
    return Interactions(
        users=np.asarray(users),
        items=np.asarray(items),
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32),
        timestamps=None,
        num_users=num_users,
        num_items=num_items,
        user_ids=np.arange(num_users),
        item_ids=np.arange(num_items),
    )


def test_mrr_of_the_assignments_worked_example_is_0_55():
    A, B, C, D, E, F, G = range(7)
    rankings = [[B, C, D, A, G], [A, B, C, G, D], [A, D, B, C, G]]
    held_out = [[A, B], [B], [A, B, C]]
    scores = np.zeros((3, 7))
    for user, ranking in enumerate(rankings):
        scores[user, ranking] = np.arange(5, 0, -1)
        scores[user, [E, F]] = 10  # training items score highest, but are removed from the ranking
    train = interactions([0, 0, 1, 1, 2, 2], [E, F] * 3, 3, 7)
    test = interactions([u for u, items in enumerate(held_out) for _ in items], sum(held_out, []), 3, 7)
    mrr = Evaluator(test, train).mrr(net_with_scores(scores))
    expected = np.mean([(1 + 1 / 4) / 2, 1 / 2, (1 + 1 / 3 + 1 / 4) / 3])
    assert mrr == pytest.approx(expected, abs=1e-12)
    assert round(mrr, 2) == 0.55


def slow_mrr(scores: np.ndarray, test: Interactions, train: Interactions) -> float:
    """Obviously correct: per user, average ranks over the items not in training."""
    per_user = []
    for user in range(test.num_users):
        held = test.items[test.users == user]
        if len(held) == 0:
            continue
        seen = set(train.items[train.users == user].tolist())
        candidates = [j for j in range(test.num_items) if j not in seen or j in held]
        reciprocal = []
        for item in held:
            s = scores[user, item]
            greater = sum(1 for j in candidates if scores[user, j] > s)
            equal = sum(1 for j in candidates if scores[user, j] == s)
            reciprocal.append(1.0 / (greater + (equal + 1) / 2))
        per_user.append(np.mean(reciprocal))
    return float(np.mean(per_user))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_mrr_equals_a_slow_reference_with_ties_and_users_without_tests(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    num_users, num_items = 25, 30
    scores = rng.integers(0, 4, size=(num_users, num_items)).astype(np.float32)  # many ties
    data = random_interactions(num_users, num_items, n=300, seed=seed)
    order = rng.permutation(len(data))
    train, test = data.subset(order[:220]), data.subset(order[220:])
    test = test.subset(test.users >= 3)  # users 0-2 have no held-out items
    expected = slow_mrr(scores, test, train)
    net = net_with_scores(scores)
    assert Evaluator(test, train).mrr(net) == pytest.approx(expected, rel=1e-9)
    # Tiny blocks and chunks take the same path as ML-25M does.
    monkeypatch.setattr(evaluation, "SCORE_BLOCK_BYTES", 4 * num_items * 4)
    monkeypatch.setattr(evaluation, "COMPARE_CHUNK_BYTES", 4 * num_items * 3)
    assert Evaluator(test, train).mrr(net) == pytest.approx(expected, rel=1e-9)


def test_a_test_item_also_seen_in_training_is_still_ranked():
    scores = np.array([[3.0, 2.0, 1.0]])
    train = interactions([0, 0], [0, 2], 1, 3)
    test = interactions([0], [2], 1, 3)
    # Item 0 is removed from the ranking; item 2 ranks below item 1 only.
    assert Evaluator(test, train).mrr(net_with_scores(scores)) == pytest.approx(0.5)


def test_mse_equals_the_mean_squared_error_of_the_rating_head():
    torch.manual_seed(0)
    data = random_interactions(seed=3)
    net = MultitaskNet(data.num_users, data.num_items, embedding_dim=4, layer_sizes=[12, 5])
    with torch.no_grad():
        _, r_hat = net(torch.as_tensor(data.users).long(), torch.as_tensor(data.items).long())
    expected = float(np.mean((r_hat.numpy().astype(np.float64) - data.ratings) ** 2))
    assert Evaluator(data, data).mse(net) == pytest.approx(expected, rel=1e-6)


def test_library_scores_agree_with_the_per_epoch_evaluation():
    from mtrec.data import random_split
    from mtrec.eval.evaluation import mrr_score, mse_score
    from mtrec.model import MultitaskModel

    train, test = random_split(random_interactions(num_users=40, num_items=50, n=900, seed=8), 0.2, seed=1)
    model = MultitaskModel(embedding_dim=8, seed=0).fit(train, epochs=2, test=test)
    assert mse_score(model, test) == model.history_[-1].test_mse
    assert mrr_score(model, test, train) == model.history_[-1].test_mrr


def slow_ranking_metrics(scores: np.ndarray, test: Interactions, train: Interactions, k: int) -> dict[str, float]:
    """Obviously correct: per user, each held-out item's average rank among the items not in training,
    then NDCG@k, Recall@k, HR@k and MAP@k by their textbook definitions."""
    totals = {"ndcg": [], "recall": [], "hr": [], "map": []}
    for user in range(test.num_users):
        held = test.items[test.users == user].tolist()
        if not held:
            continue
        seen = set(train.items[train.users == user].tolist())
        candidates = [j for j in range(test.num_items) if j not in seen or j in held]
        ranks = []
        for item in held:
            s = scores[user, item]
            greater = sum(1 for j in candidates if scores[user, j] > s)
            equal = sum(1 for j in candidates if scores[user, j] == s)
            ranks.append(greater + (equal + 1) / 2)
        hits = [r for r in ranks if r <= k]
        dcg = sum(1 / np.log2(1 + r) for r in hits)
        ideal = sum(1 / np.log2(1 + i) for i in range(1, min(len(held), k) + 1))
        precisions = [sum(1 for other in ranks if other <= r) / r for r in hits]
        totals["ndcg"].append(dcg / ideal)
        totals["recall"].append(len(hits) / len(held))
        totals["hr"].append(1.0 if hits else 0.0)
        totals["map"].append(sum(precisions) / min(len(held), k))
    return {f"{name}@{k}": float(np.mean(values)) for name, values in totals.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_k_metrics_equal_a_slow_reference_with_ties(seed, k, monkeypatch):
    rng = np.random.default_rng(seed)
    num_users, num_items = 25, 30
    scores = rng.integers(0, 4, size=(num_users, num_items)).astype(np.float32)  # many ties
    data = random_interactions(num_users, num_items, n=400, seed=seed)
    order = rng.permutation(len(data))
    train, test = data.subset(order[:250]), data.subset(order[250:])
    test = test.subset(test.users >= 2)  # users without held-out items do not count
    expected = slow_ranking_metrics(scores, test, train, k)
    net = net_with_scores(scores)
    measured = Evaluator(test, train, metrics=["ndcg", "recall", "hr", "map"], k=[k]).evaluate(net)
    assert measured == pytest.approx(expected, rel=1e-9)
    monkeypatch.setattr(evaluation, "SCORE_BLOCK_BYTES", 4 * num_items * 4)
    assert Evaluator(test, train, metrics=["ndcg", "recall", "hr", "map"], k=[k]).evaluate(net) == pytest.approx(expected, rel=1e-9)


def test_rmse_and_mae_are_the_root_and_the_absolute_errors():
    torch.manual_seed(1)
    data = random_interactions(seed=4)
    net = MultitaskNet(data.num_users, data.num_items, embedding_dim=4, layer_sizes=[12, 5])
    with torch.no_grad():
        r_hat = net.rating(torch.as_tensor(data.users).long(), torch.as_tensor(data.items).long()).numpy().astype(np.float64)
    measured = Evaluator(data, data, metrics=["mse", "rmse", "mae"]).evaluate(net)
    assert measured["rmse"] == pytest.approx(np.sqrt(np.mean((r_hat - data.ratings) ** 2)), rel=1e-6)
    assert measured["mae"] == pytest.approx(np.mean(np.abs(r_hat - data.ratings)), rel=1e-6)


@pytest.mark.parametrize(
    "metrics, k, message",
    [
        (["mse", "auc"], [10], "unknown metric 'auc'; use some of mse, rmse, mae, mrr, ndcg, recall, hr, map"),
        (["ndcg"], [0], r"k must be positive whole numbers \(the cut-offs of ndcg, recall, hr, map\), got \[0\]"),
        (["ndcg"], [-5, 10], "k must be positive whole numbers"),
        ([], [10], "no metric to compute"),
    ],
)
def test_unknown_metrics_and_bad_cut_offs_are_named(metrics, k, message):
    from mtrec.errors import ConfigError

    data = random_interactions()
    with pytest.raises(ConfigError, match=message):
        Evaluator(data, data, metrics=metrics, k=k)


def precision(pairs, k):
    """Precision@k, a metric the library does not have, as a contributor would add it."""
    return pairs.per_user_mean(pairs.hits(k), torch.full_like(pairs.counts, k, dtype=torch.float64))


def test_a_registered_ranking_metric_is_computed_named_and_offered_without_library_edits(monkeypatch):
    monkeypatch.setitem(evaluation.RANKING_METRICS._members, "precision", evaluation.RankingMetric(precision))
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, size=(25, 30)).astype(np.float32)
    data = random_interactions(25, 30, n=400, seed=4)
    order = rng.permutation(len(data))
    train, test = data.subset(order[:250]), data.subset(order[250:])
    measured = Evaluator(test, train, metrics=["recall", "precision"], k=[5, 10]).evaluate(net_with_scores(scores))
    assert list(measured) == ["recall@5", "recall@10", "precision@5", "precision@10"]
    counts = np.bincount(test.users, minlength=25)[np.bincount(test.users, minlength=25) > 0]
    for k in (5, 10):  # precision@k = recall@k · n / k per user; from the slow reference's per-user recall
        per_user = []
        for user in range(25):
            held = test.items[test.users == user].tolist()
            if held:
                seen = set(train.items[train.users == user].tolist())
                candidates = [j for j in range(30) if j not in seen or j in held]
                row = scores[user, candidates]
                ranks = [(row > scores[user, i]).sum() + ((row == scores[user, i]).sum() + 1) / 2 for i in held]
                per_user.append(sum(r <= k for r in ranks) / k)
        assert len(per_user) == len(counts)
        assert measured[f"precision@{k}"] == pytest.approx(np.mean(per_user), rel=1e-9)
    assert "precision" in evaluation.all_metrics()
    with pytest.raises(evaluation.ConfigError, match="unknown metric 'ndgc'; use some of mse, rmse, mae, mrr, ndcg, recall, hr, map, precision$"):
        Evaluator(test, train, metrics=["ndgc"])
