"""Tasks as data: a third task, defined entirely here, trains beside the library's two without a
library edit, and appears by name in the records, their JSON, metrics.json's schema and TensorBoard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtrec.data import Interactions
from mtrec.errors import ConfigError
from mtrec.io.fitted import EpochRecord
from mtrec.io.schemas import EpochSchema, validate
from mtrec.model import MultitaskModel
from mtrec.nn.layers import ScaledEmbedding
from mtrec.nn.network import USER_ENCODERS, MultitaskNet, UserEncoder
from mtrec.nn.objective import JointObjective
from mtrec.nn.tasks import Task
from mtrec.nn.weighting import WEIGHTINGS, min_norm_weights, pcgrad
from mtrec.serving.foldin import fold_in
from mtrec.train.callbacks import scalar_tags
from mtrec.train.loop import Trainer
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import make_step


class LikeNet(MultitaskNet):
    """The library's network with one more head: whether the user will like the item (rating ≥ 4)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dim = self.user_embeddings.embedding_dim
        self.like_head = nn.Linear(2 * dim, 1)

    def like_logit(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.like_head(torch.cat([self.user_embeddings(users), self.item_embeddings(items)], 1)).squeeze(1)


class LikeTask(Task):
    """Binary cross-entropy of the like head against rating ≥ 4."""

    needs_ratings = True

    def loss(self, network, batch):
        target = (batch.ratings >= 4).float()
        logits = network.like_logit(batch.users, batch.positives)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch.denominator


def liked_data(seed: int = 0) -> tuple[Interactions, Interactions]:
    """Ratings that an item decides (the first half of the items is liked), split in two."""
    rng = np.random.default_rng(seed)
    num_users, num_items, n = 60, 40, 1500
    pairs = rng.choice(num_users * num_items, size=n, replace=False)
    users, items = np.divmod(pairs, num_items)
    liked = items < num_items // 2
    ratings = np.where(liked, rng.choice([4.0, 5.0], n), rng.choice([1.0, 2.0, 3.0], n)).astype(np.float32)
    cut = int(0.8 * n)

    def part(rows):
        return Interactions(
            users=users[rows], items=items[rows], ratings=ratings[rows], timestamps=np.zeros(len(users[rows]), np.int64),
            num_users=num_users, num_items=num_items, user_ids=np.arange(num_users), item_ids=np.arange(num_items),
            rating_scale=(1.0, 5.0), name="liked",
        )  # fmt: skip

    return part(slice(0, cut)), part(slice(cut, n))


def train_like(weighting: str = "fixed", epochs: int = 8) -> tuple[LikeNet, list[EpochRecord], Interactions]:
    train, held_out = liked_data()
    torch.manual_seed(0)
    network = LikeNet(train.num_users, train.num_items, 16, [48, 16])
    objective = JointObjective({"watch": 0.5, "rating": 0.5, "like": 1.0}, tasks={"like": LikeTask()}, weighting=weighting)
    step = make_step("auto", network, objective, learning_rate=0.05)
    assert step.kind == "autograd"  # the fused step claims the library's two tasks only
    sampler = EpochSampler(train, seed=0, device=torch.device("cpu"), with_ratings=True)
    history = Trainer(step, sampler, batch_size=128, epochs=epochs, evaluators={}).run()
    return network, history, held_out


def test_a_third_task_defined_in_a_test_trains_and_is_recorded_by_name():
    network, history, held_out = train_like()
    assert [list(record.train_losses) for record in history] == [["watch", "rating", "like"]] * len(history)
    first, last = history[0].train_losses["like"], history[-1].train_losses["like"]
    assert last < 0.7 * first  # it learns
    with torch.no_grad():
        logits = network.like_logit(torch.as_tensor(held_out.users), torch.as_tensor(held_out.items)).numpy()
    liked = held_out.ratings >= 4
    assert logits[liked].mean() > logits[~liked].mean() + 1.0  # and generalises to pairs it never saw
    # The joint loss is the weighted sum of the three.
    record = history[-1]
    assert record.train_loss == pytest.approx(
        0.5 * record.train_losses["watch"] + 0.5 * record.train_losses["rating"] + 1.0 * record.train_losses["like"], rel=1e-4
    )
    document = record.to_json()
    assert document["train_like"] == pytest.approx(record.train_losses["like"])
    validate(EpochSchema, document, ConfigError, "metrics.json")  # metrics.json's schema takes it
    assert EpochRecord.from_json(document).train_losses == pytest.approx(record.train_losses)
    assert scalar_tags(record)["train/like_loss"] == pytest.approx(record.train_losses["like"])


@pytest.mark.parametrize("weighting", [name for name in WEIGHTINGS.names() if name != "fixed"])
def test_every_weighting_trains_three_tasks_and_records_their_weights_by_name(weighting):
    _, history, _ = train_like(weighting, epochs=2)
    weights = history[-1].task_weights
    assert weights is not None and list(weights) == ["watch", "rating", "like"]
    assert all(np.isfinite(value) for value in weights.values())
    assert "weight_like" in history[-1].to_json()


def test_an_objective_names_an_unknown_task_and_a_bad_weight():
    with pytest.raises(ConfigError, match="no task named 'like'; the tasks are watch, rating"):
        JointObjective({"watch": 1.0, "like": 1.0})
    with pytest.raises(ConfigError, match="the weight of task 'like' must be a non-negative number"):
        JointObjective({"watch": 1.0, "like": -1.0}, tasks={"like": LikeTask()})
    with pytest.raises(ConfigError, match="cannot all be 0"):
        JointObjective({"watch": 0.0, "rating": 0.0, "like": 0.0}, tasks={"like": LikeTask()})


def test_records_of_mtrec_0_2_read_back_under_their_tasks_names():
    old = {"epoch": 3, "train_bpr": 0.2, "train_mse": None, "train_loss": 0.1, "test_mse": None, "test_mrr": 0.05, "weight_f": 0.7, "weight_r": 0.3}
    record = EpochRecord.from_json(old)
    assert record.train_losses["watch"] == 0.2 and np.isnan(record.train_losses["rating"])
    assert record.task_weights == {"watch": 0.7, "rating": 0.3} and record.metrics == {"test_mrr": 0.05}
    assert record.get("train_bpr") == 0.2  # the old names still find the values


def test_the_estimators_records_key_the_two_tasks_by_name():
    train, _ = liked_data()
    model = MultitaskModel(embedding_dim=8, batch_size=256, seed=0).fit(train, 2)
    assert list(model.history_[-1].train_losses) == ["watch", "rating"]
    assert {"train_watch", "train_rating", "train_loss"} <= set(model.history_[-1].to_json())


# ---------------------------------------------------------------------------------------------
# Gradient combinations of more than two tasks


def test_pcgrad_of_three_tasks_projects_each_against_every_conflicting_other():
    gradients = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 1.0])]
    combined = pcgrad(gradients)
    expected = []
    for i, g in enumerate(gradients):
        for j, other in enumerate(gradients):
            if j != i and torch.dot(g, other) < 0:
                g = g - torch.dot(g, other) / other.square().sum() * other
        expected.append(g)
    torch.testing.assert_close(combined, sum(expected))


def test_mgda_of_three_tasks_finds_the_minimum_norm_point_of_their_hull():
    gradients = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, -1.5]])
    weights = torch.tensor(min_norm_weights(gradients), dtype=torch.float32)
    assert weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    found = (weights @ gradients).norm().item()
    grid = np.linspace(0, 1, 201)
    brute = min(
        float(np.linalg.norm(a * gradients[0].numpy() + b * gradients[1].numpy() + (1 - a - b) * gradients[2].numpy()))
        for a in grid
        for b in grid
        if a + b <= 1
    )
    assert found <= brute + 1e-3


# ---------------------------------------------------------------------------------------------
# Rating losses and user encoders are registered components too


def test_a_registered_rating_loss_is_what_the_rating_task_averages():
    train, _ = liked_data()
    torch.manual_seed(0)
    network = MultitaskNet(train.num_users, train.num_items, 8)
    users, items = torch.as_tensor(train.users[:50]), torch.as_tensor(train.items[:50])
    ratings = torch.as_tensor(train.ratings[:50])
    from mtrec.nn.batch import Batch

    batch = Batch(users, items, items.flip(0), ratings)
    huber = JointObjective({"rating": 1.0}, rating_loss="huber")(network, batch)[0]["rating"]
    expected = F.huber_loss(network.rating(users, items), ratings, delta=1.0)
    assert huber.item() == pytest.approx(expected.item(), rel=1e-6)
    assert make_step("auto", network, JointObjective(rating_loss="huber"), 1e-3).kind == "autograd"  # the fused step claims mse
    with pytest.raises(ConfigError, match="unknown rating loss 'mae'; use one of mse, huber"):
        JointObjective(rating_loss="mae")


class Hashed(UserEncoder):
    """A vector per bucket of hashed user ids (the example of docs/extending.md)."""

    summary = "a vector per bucket of hashed user ids"

    def make(self, net, table, embedding_dim):
        table("user_embeddings", "users", "embeddings", ScaledEmbedding, embedding_dim)

    def encode(self, net, users):
        return net.user_embeddings(users % 8)


def test_a_user_encoder_defined_in_a_test_trains_and_folds_in(monkeypatch):
    monkeypatch.setitem(USER_ENCODERS._members, "hashed", Hashed)
    train, _ = liked_data()
    torch.manual_seed(0)
    network = MultitaskNet(train.num_users, train.num_items, 8, user_encoder="hashed")
    objective = JointObjective()
    step = make_step("auto", network, objective, learning_rate=0.05)
    assert step.kind == "autograd"  # the fused step claims the id encoder only
    sampler = EpochSampler(train, seed=0, device=torch.device("cpu"), with_ratings=True)
    history = Trainer(step, sampler, batch_size=128, epochs=3, evaluators={}).run()
    assert history[-1].train_loss < history[0].train_loss
    with torch.no_grad():  # users of a bucket share a vector: the encoder, not the id, decides
        assert torch.equal(network.user_vectors(torch.tensor([1])), network.user_vectors(torch.tensor([9])))
    one = fold_in(network, objective, items=[0, 1, 2], ratings=[5.0, 4.0, 1.0])
    assert one.user_encoder == "hashed" and one.user_embeddings.num_embeddings == 1
    model = MultitaskModel(embedding_dim=8, batch_size=256, user_encoder="hashed", seed=0).fit(train, 2)  # the estimator too
    assert model.network_.user_encoder == "hashed" and model.step_ == "autograd"


def test_task_names_must_be_keys_of_the_records_and_weights_are_given_by_task():
    for name in ("Like", "like-it", "loss", "9lives"):
        with pytest.raises(ConfigError, match=f"task name {name!r} is not allowed"):
            JointObjective({"watch": 1.0, name: 1.0}, tasks={name: LikeTask()})
    with pytest.raises(ConfigError, match="the weights are given by task"):
        JointObjective(0.5, 0.5)


class Shifted(MultitaskNet):
    """A subclass whose watch score is its own: training must use it, not MultitaskNet's pairing shortcut."""

    def watch_score(self, users, items):
        return super().watch_score(users, items) * 0.0 + 7.0


def test_a_subclass_watch_score_is_what_the_pairwise_losses_train():
    from mtrec.nn.batch import Batch

    torch.manual_seed(0)
    net = Shifted(5, 9, 4)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([[4, 5], [6, 7], [8, 0]]))
    losses, _ = JointObjective({"watch": 1.0}, watch_loss="logsigmoid")(net, batch)
    assert losses["watch"].item() == pytest.approx(-F.logsigmoid(torch.tensor(0.0)).item())  # every margin is 7 - 7


def test_a_fitted_or_loaded_network_is_in_evaluation_mode_and_fold_in_keeps_the_rating_loss(tmp_path, monkeypatch):
    from mtrec.serving import foldin

    train, _ = liked_data()
    model = MultitaskModel(embedding_dim=8, batch_size=256, rating_loss="huber", user_encoder="history", history_dropout=0.5).fit(train, 1)
    assert not model.network_.training
    assert not MultitaskModel.load(model.save(tmp_path / "m")).network_.training
    seen = {}
    monkeypatch.setattr(foldin, "fold_in", lambda network, objective, *args, **kwargs: seen.setdefault("objective", objective))
    foldin.fold_in_model(model, [1, 2], [4.0, 5.0])
    assert seen["objective"].tasks["rating"].component() == "huber"
