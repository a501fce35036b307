"""Training: hand-written gradients equal autograd's, each head learns from its own loss,
seeding is exact, and a short run on real MovieLens learns."""

import numpy as np
import pytest
import torch

from conftest import random_interactions
from mtrec.losses import bpr_loss, regression_loss
from mtrec.model import MultitaskModel
from mtrec.network import MultitaskNet
from mtrec.training import TrainingStep


def reference_loss(net, users, positives, negatives, ratings, weight_f, weight_r):
    """The specification, with autograd: λF·mean(1-σ(p+ - p-)) + λR·mean((r_hat - r)^2)."""
    p_pos, r_hat = net(users, positives)
    p_neg, _ = net(users, negatives)
    return weight_f * bpr_loss(p_pos, p_neg) + weight_r * regression_loss(r_hat, ratings)


@pytest.mark.parametrize("sharing", [True, False])
@pytest.mark.parametrize("layer_sizes", [[24, 16], [24, 12, 6]])
def test_handwritten_gradients_match_autograd(sharing, layer_sizes):
    torch.manual_seed(0)
    net = MultitaskNet(12, 15, embedding_dim=8, layer_sizes=layer_sizes, embedding_sharing=sharing)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_()  # non-zero biases so every term of the gradient is exercised
    users = torch.randint(0, 12, (64,))
    positives, negatives = torch.randint(0, 15, (64,)), torch.randint(0, 15, (64,))
    ratings = torch.randint(1, 6, (64,)).float()
    loss = reference_loss(net, users, positives, negatives, ratings, 0.9, 0.1)
    expected = torch.autograd.grad(loss, list(net.parameters()))

    step = TrainingStep(net, factorization_weight=0.9, regression_weight=0.1, learning_rate=1e-3, l2=0.0)
    losses = step.gradients(users, positives, negatives, ratings)
    assert losses[2].item() == pytest.approx(loss.item(), rel=1e-6)
    for (name, param), grad in zip(net.named_parameters(), expected):
        torch.testing.assert_close(step.flat.grad_of(param), grad, rtol=1e-5, atol=1e-6, msg=name)


def test_without_ratings_only_the_watch_loss_has_gradients():
    torch.manual_seed(3)
    net = MultitaskNet(12, 15, embedding_dim=8, layer_sizes=[24, 16])
    users, positives, negatives = torch.randint(0, 12, (32,)), torch.randint(0, 15, (32,)), torch.randint(0, 15, (32,))
    p_pos, _ = net(users, positives)
    p_neg, _ = net(users, negatives)
    expected = torch.autograd.grad(bpr_loss(p_pos, p_neg), list(net.parameters()), allow_unused=True)
    step = TrainingStep(net, factorization_weight=1.0, regression_weight=0.0, learning_rate=1e-3, l2=0.0)
    step.gradients(users, positives, negatives, None)
    for (name, param), grad in zip(net.named_parameters(), expected):
        grad = torch.zeros_like(param) if grad is None else grad
        torch.testing.assert_close(step.flat.grad_of(param), grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_step_is_adams_update_with_the_learning_rate_and_weight_decay():
    torch.manual_seed(4)
    reference = MultitaskNet(12, 15, embedding_dim=8, layer_sizes=[24, 16], embedding_sharing=False)
    net = MultitaskNet(12, 15, embedding_dim=8, layer_sizes=[24, 16], embedding_sharing=False)
    net.load_state_dict(reference.state_dict())
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.1)
    step = TrainingStep(net, factorization_weight=0.7, regression_weight=0.3, learning_rate=0.01, l2=0.1)
    for _ in range(3):
        # Positives and negatives apart: an item that is both gets a near-zero gradient from
        # cancellation, and Adam's g / sqrt(g^2) blows rounding noise up to a full step.
        users, positives, negatives = torch.randint(0, 12, (16,)), torch.randint(0, 7, (16,)), torch.randint(7, 15, (16,))
        ratings = torch.randint(1, 6, (16,)).float()
        optimizer.zero_grad()
        reference_loss(reference, users, positives, negatives, ratings, 0.7, 0.3).backward()
        optimizer.step()
        step(users, positives, negatives, ratings)
    for (name, expected), actual in zip(reference.named_parameters(), net.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_each_loss_pairs_a_head_with_its_own_target():
    """L_F is computed from the watch scores (p+, p-) and L_R from (r_hat, r), never crossed."""
    torch.manual_seed(1)
    net = MultitaskNet(5, 6, embedding_dim=4, layer_sizes=[12, 8])
    users, positives, negatives = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 0])
    ratings = torch.tensor([5.0, 1.0, 3.0])
    step = TrainingStep(net, factorization_weight=1.0, regression_weight=1.0, learning_rate=1e-3, l2=0.0)
    loss_f, loss_r, _ = step.gradients(users, positives, negatives, ratings)
    with torch.no_grad():
        p_pos, r_hat = net(users, positives)
        p_neg, _ = net(users, negatives)
    assert loss_f.item() == pytest.approx((1 - torch.sigmoid(p_pos - p_neg)).mean().item(), rel=1e-6)
    assert loss_r.item() == pytest.approx(((r_hat - ratings) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("silent_head", ["factorization", "regression"])
def test_a_zero_weight_leaves_that_heads_own_parameters_untouched(silent_head):
    data = random_interactions(seed=4)
    weights = {"factorization_weight": 0.0, "regression_weight": 1.0}
    if silent_head == "regression":
        weights = {"factorization_weight": 1.0, "regression_weight": 0.0}
    before = MultitaskModel(embedding_dim=4, embedding_sharing=False, seed=2, **weights).fit(data, epochs=0)
    after = MultitaskModel(embedding_dim=4, embedding_sharing=False, seed=2, **weights).fit(data, epochs=3)
    net0, net1 = before.network_, after.network_
    watch = ["user_embeddings", "item_embeddings", "item_biases"]
    rating = ["rating_user_embeddings", "rating_item_embeddings", "rating_mlp"]
    frozen, learning = (watch, rating) if silent_head == "factorization" else (rating, watch)
    for name in frozen:
        for p0, p1 in zip(getattr(net0, name).parameters(), getattr(net1, name).parameters()):
            assert torch.equal(p0, p1), name
    for name in learning:
        changed = any(not torch.equal(p0, p1) for p0, p1 in zip(getattr(net0, name).parameters(), getattr(net1, name).parameters()))
        assert changed, name


def test_same_seed_gives_identical_results_bit_for_bit():
    data = random_interactions(num_users=50, num_items=60, n=1500, seed=5)
    test = random_interactions(num_users=50, num_items=60, n=200, seed=6)
    runs = [MultitaskModel(embedding_dim=8, batch_size=64, seed=7).fit(data, 3, test=test) for _ in range(2)]
    assert [r.to_json() | {"seconds": 0} for r in runs[0].history_] == [
        r.to_json() | {"seconds": 0} for r in runs[1].history_
    ]
    for p0, p1 in zip(runs[0].network_.parameters(), runs[1].network_.parameters()):
        assert torch.equal(p0, p1)
    other = MultitaskModel(embedding_dim=8, batch_size=64, seed=8).fit(data, 3, test=test)
    assert other.history_[-1].test_mrr != runs[0].history_[-1].test_mrr


@pytest.mark.slow
def test_five_epochs_on_movielens_learn_both_tasks(ml100k_split):
    train, test = ml100k_split
    model = MultitaskModel(factorization_weight=0.5, regression_weight=0.5, seed=0)
    model.fit(train, epochs=5, test=test)
    first, last = model.history_[0], model.history_[-1]
    assert last.train_bpr < first.train_bpr
    assert last.train_mse < first.train_mse
    assert last.test_mse < 0.97
    assert last.test_mrr > 0.05
