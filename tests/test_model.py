"""The network and the estimator: shapes, parameter sharing, initialisation, validation."""

import re

import numpy as np
import pytest
import torch
from conftest import random_interactions

from mtrec.errors import ConfigError
from mtrec.model import MultitaskModel
from mtrec.nn.network import MultitaskNet


def test_forward_returns_one_score_and_one_rating_per_pair():
    net = MultitaskNet(10, 20, embedding_dim=8, layer_sizes=[24, 16])
    users, items = torch.tensor([0, 3, 9, 9, 1]), torch.tensor([0, 19, 5, 5, 2])
    p, r_hat = net(users, items)
    assert p.shape == (5,) and r_hat.shape == (5,)
    assert torch.equal(p[2], p[3]) and torch.equal(r_hat[2], r_hat[3])


def test_shared_heads_use_the_same_embedding_tensors():
    net = MultitaskNet(10, 20, sharing="hard")
    assert net.rating_users.weight is net.user_embeddings.weight
    assert net.rating_items.weight is net.item_embeddings.weight
    names = {name for name, _ in net.named_parameters()}
    assert not any(name.startswith("rating_user") or name.startswith("rating_item") for name in names)


def test_separate_heads_share_no_parameters():
    net = MultitaskNet(10, 20, sharing="separate")
    watch = {id(p) for p in (net.user_embeddings.weight, net.item_embeddings.weight)}
    rating = {id(p) for p in (net.rating_users.weight, net.rating_items.weight)}
    assert watch.isdisjoint(rating)
    storages = {p.untyped_storage().data_ptr() for p in net.parameters()}
    assert len(storages) == len(list(net.parameters()))


def test_embeddings_start_normal_with_std_1_over_d_and_biases_at_zero():
    torch.manual_seed(0)
    net = MultitaskNet(2000, 3000, embedding_dim=16)
    assert net.item_embeddings.weight.std().item() == pytest.approx(1 / 16, rel=0.02)
    assert net.user_embeddings.weight.mean().item() == pytest.approx(0, abs=0.01)
    assert torch.count_nonzero(net.user_biases.weight) == 0 and torch.count_nonzero(net.item_biases.weight) == 0


def test_rating_mlp_has_the_layers_listed():
    net = MultitaskNet(5, 5, embedding_dim=32, layer_sizes=[96, 64])
    shapes = [tuple(m.weight.shape) for m in net.rating_mlp if isinstance(m, torch.nn.Linear)]
    assert shapes == [(64, 96), (1, 64)]
    assert isinstance(net.rating_mlp[1], torch.nn.ReLU)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embedding_dim": 16, "layer_sizes": [96, 64]}, "layer_sizes: must start with 48, three times embedding_dim"),
        ({"embedding_dim": 0}, "embedding_dim: must be a positive whole number, got 0"),
        ({"layer_sizes": []}, "layer_sizes: must be a non-empty list, got []"),
        ({"factorization_weight": -0.1}, "factorization_weight: must be in [0, 1000], got -0.1"),
        ({"factorization_weight": 0, "regression_weight": 0}, "cannot both be 0"),
        ({"batch_size": 0}, "batch_size: must be a positive whole number, got 0"),
        ({"learning_rate": 0}, "learning_rate: must be a positive number, got 0"),
        ({"learning_rate": True}, "learning_rate: must be a positive number, got True"),  # never lr 1.0
        ({"learning_rate": "0.01"}, "learning_rate: must be a positive number, got '0.01'"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MultitaskModel(**kwargs)


def test_predict_returns_numpy_scores_and_ratings():
    data = random_interactions()
    model = MultitaskModel(embedding_dim=4, seed=1).fit(data, epochs=1)
    p, r_hat = model.predict([0, 1, 2], [3, 4, 5])
    assert isinstance(p, np.ndarray) and p.shape == (3,) and r_hat.shape == (3,)
    with pytest.raises(ConfigError, match="item index out of range"):
        model.predict([0], [data.num_items])


def test_implicit_data_needs_regression_weight_zero():
    data = random_interactions(ratings=False)
    with pytest.raises(ConfigError, match="no ratings"):
        MultitaskModel().fit(data, epochs=1)
    model = MultitaskModel(factorization_weight=1.0, regression_weight=0.0, seed=3).fit(data, epochs=2)
    assert np.isnan(model.history_[-1].train_losses["rating"]) and np.isfinite(model.history_[-1].train_losses["watch"])
    untrained = MultitaskModel(seed=3).fit(random_interactions(), epochs=0)
    for trained, initial in zip(model.network_.rating_mlp.parameters(), untrained.network_.rating_mlp.parameters()):
        assert torch.equal(trained, initial)


def test_the_large_batch_learning_rate_is_linear_up_to_batch_16384_then_constant():
    from mtrec.model import scaled_learning_rate

    assert scaled_learning_rate(256) == pytest.approx(1e-3)
    assert scaled_learning_rate(4096) == pytest.approx(0.016)
    assert scaled_learning_rate(16384) == pytest.approx(0.064)
    assert scaled_learning_rate(65536) == pytest.approx(0.064)
    assert scaled_learning_rate(64) == pytest.approx(2.5e-4)


def test_an_overflowed_metric_is_written_as_null_not_infinity():
    from mtrec.io.fitted import EpochRecord

    record = EpochRecord(epoch=1, train_losses={"watch": 0.5, "rating": float("inf")}, train_loss=float("-inf"), metrics={"test_mse": float("nan")})
    written = record.to_json()
    assert written["train_rating"] is None and written["train_loss"] is None and written["test_mse"] is None
    assert written["train_watch"] == 0.5
