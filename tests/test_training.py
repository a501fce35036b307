"""Training: the objective is the specification, the fused step's hand-written gradients equal the
autograd step's, both steps train alike, `auto` picks the fused step exactly where it applies,
seeding is exact (bit for bit within one machine), and the seed's settings give the numbers recorded
before (to a relative 1e-6: they were recorded on another machine)."""

import pytest
import torch
from conftest import random_interactions
from torch import nn

from mtrec.errors import ConfigError
from mtrec.eval.evaluation import Evaluator
from mtrec.model import MultitaskModel
from mtrec.nn.losses import WATCH_LOSSES, Batch, PairwiseLoss, bpr_loss, regression_loss
from mtrec.nn.network import MultitaskNet, RecommenderNetwork
from mtrec.nn.objective import JointObjective
from mtrec.train.steps import AutogradStep, FusedStep, make_step

STEPS = [FusedStep, AutogradStep]


def random_net(sharing=True, layer_sizes=(24, 16), seed=0, user_encoder="id"):
    torch.manual_seed(seed)
    net = MultitaskNet(12, 15, embedding_dim=8, layer_sizes=list(layer_sizes), sharing="hard" if sharing else "separate", user_encoder=user_encoder)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_()  # non-zero biases so every term of the gradient is exercised
    return net


def random_batch(n=64, negatives_per_pair=None, ratings=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (n,) if negatives_per_pair is None else (n, negatives_per_pair)
    return Batch(
        users=torch.randint(0, 12, (n,), generator=generator),
        positives=torch.randint(0, 15, (n,), generator=generator),
        negatives=torch.randint(0, 15, shape, generator=generator),
        ratings=torch.randint(1, 6, (n,), generator=generator).float() if ratings else None,
    )


def reference_loss(net, batch, weight_f, weight_r):
    """The specification written out plainly: λF·mean(1-σ(p+ - p-)) + λR·mean((r_hat - r)^2)."""
    p_pos, r_hat = net(batch.users, batch.positives)
    p_neg, _ = net(batch.users, batch.negatives)
    return weight_f * bpr_loss(p_pos, p_neg) + weight_r * regression_loss(r_hat, batch.ratings)


def test_the_objective_is_the_seeds_joint_loss():
    net, batch = random_net(), random_batch()
    losses, loss = JointObjective({"watch": 0.9, "rating": 0.1})(net, batch)
    loss_f, loss_r = losses["watch"], losses["rating"]
    assert loss.item() == pytest.approx(reference_loss(net, batch, 0.9, 0.1).item(), rel=1e-6)
    with torch.no_grad():
        p_pos, r_hat = net(batch.users, batch.positives)
        p_neg, _ = net(batch.users, batch.negatives)
    assert loss_f.item() == pytest.approx((1 - torch.sigmoid(p_pos - p_neg)).mean().item(), rel=1e-6)
    assert loss_r.item() == pytest.approx(((r_hat - batch.ratings) ** 2).mean().item(), rel=1e-6)


def test_logsigmoid_is_bprs_own_loss_and_several_negatives_average_over_all_pairs():
    net, batch = random_net(), random_batch(negatives_per_pair=3)
    loss_f = JointObjective({"watch": 1.0, "rating": 0.0}, watch_loss="logsigmoid")(net, batch)[0]["watch"]
    with torch.no_grad():
        p_pos = net.watch_score(batch.users, batch.positives)
        p_neg = torch.stack([net.watch_score(batch.users, batch.negatives[:, j]) for j in range(3)], 1)
    expected = -torch.log(torch.sigmoid(p_pos[:, None] - p_neg)).mean()
    assert loss_f.item() == pytest.approx(expected.item(), rel=1e-6)


CLAIMED = FusedStep.claims()


@pytest.mark.parametrize("sharing", CLAIMED["sharing"])
@pytest.mark.parametrize("layer_sizes", [(24, 16), (24, 12, 6)])
@pytest.mark.parametrize("watch_loss", CLAIMED["watch_loss"])
@pytest.mark.parametrize("rating_loss", CLAIMED["rating_loss"])
@pytest.mark.parametrize("weighting", CLAIMED["weighting"])
@pytest.mark.parametrize("user_encoder", CLAIMED["user_encoder"])
@pytest.mark.parametrize("negatives_per_pair", [None, 4])
def test_both_steps_give_the_same_losses_and_gradients(sharing, layer_sizes, watch_loss, rating_loss, weighting, user_encoder, negatives_per_pair):
    # Every combination the fused step claims, read from its claims: a component it adds is tested here
    objective = JointObjective({"watch": 0.9, "rating": 0.1}, watch_loss=watch_loss, rating_loss=rating_loss, weighting=weighting)
    batch = random_batch(negatives_per_pair=negatives_per_pair)
    results = []
    for step_class in STEPS:
        net = random_net(sharing == "hard", layer_sizes, user_encoder=user_encoder)
        step = step_class(net, objective, learning_rate=1e-3)
        losses = step.gradients(batch)
        grads = {name: param.grad if step_class is AutogradStep else step.flat.grad_of(param) for name, param in net.named_parameters()}
        results.append((losses, {name: grad.clone() for name, grad in grads.items()}))
    (fused_losses, fused_grads), (auto_losses, auto_grads) = results
    torch.testing.assert_close(fused_losses, auto_losses, rtol=1e-6, atol=1e-6)
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], auto_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("step_class", STEPS)
@pytest.mark.parametrize("negatives_per_pair", [None, 3])
def test_an_empty_share_of_a_global_batch_adds_nothing(step_class, negatives_per_pair):
    # A process whose slice of a small last batch is empty still takes its part in the step.
    empty = torch.zeros(0, dtype=torch.long)
    negatives = empty if negatives_per_pair is None else torch.zeros(0, negatives_per_pair, dtype=torch.long)
    batch = Batch(users=empty, positives=empty, negatives=negatives, ratings=torch.zeros(0), count=5)
    net = random_net()
    step = step_class(net, JointObjective({"watch": 0.9, "rating": 0.1}), learning_rate=1e-3)
    losses = step.gradients(batch)
    assert torch.equal(losses, torch.zeros(3))
    for name, param in net.named_parameters():
        grad = param.grad if step_class is AutogradStep else step.flat.grad_of(param)
        assert grad is None or not grad.any(), name


def test_without_ratings_only_the_watch_loss_has_gradients():
    net = random_net(seed=3)
    batch = random_batch(ratings=False, seed=3)
    p_pos, _ = net(batch.users, batch.positives)
    p_neg, _ = net(batch.users, batch.negatives)
    expected = torch.autograd.grad(bpr_loss(p_pos, p_neg), list(net.parameters()), allow_unused=True)
    step = FusedStep(net, JointObjective({"watch": 1.0, "rating": 0.0}), learning_rate=1e-3)
    step.gradients(batch)
    for (name, param), grad in zip(net.named_parameters(), expected):
        grad = torch.zeros_like(param) if grad is None else grad
        torch.testing.assert_close(step.flat.grad_of(param), grad, rtol=1e-5, atol=1e-6, msg=name)


def disjoint_batches(count, seed):
    """Positives and negatives apart: an item that is both gets a near-zero gradient from
    cancellation, and Adam's g / sqrt(g^2) blows rounding noise up to a full step."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield Batch(
            users=torch.randint(0, 12, (16,), generator=generator),
            positives=torch.randint(0, 7, (16,), generator=generator),
            negatives=torch.randint(7, 15, (16,), generator=generator),
            ratings=torch.randint(1, 6, (16,), generator=generator).float(),
        )


@pytest.mark.parametrize("sharing", [True, False])
def test_both_steps_give_the_same_parameters_after_50_steps(sharing):
    objective = JointObjective({"watch": 0.7, "rating": 0.3})
    nets = [random_net(sharing, seed=4) for _ in STEPS]
    steps = [step_class(net, objective, learning_rate=0.01, weight_decay=0.1) for step_class, net in zip(STEPS, nets)]
    for batch in disjoint_batches(50, seed=4):
        for step in steps:
            step(batch)
    for (name, fused), autograd in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(fused, autograd, rtol=1e-5, atol=1e-5, msg=name)


def test_a_fused_step_is_adams_update_with_the_learning_rate_and_per_group_weight_decay():
    reference, net = random_net(False, seed=5), random_net(False, seed=5)
    decay = {"embeddings": 0.1, "residuals": 0.0, "biases": 0.0, "mlp": 0.01}
    groups = {name: params for name, params in reference.parameter_groups().items() if params}
    optimizer = torch.optim.Adam([{"params": groups[g], "weight_decay": decay[g]} for g in groups], lr=0.01)
    step = FusedStep(net, JointObjective({"watch": 0.7, "rating": 0.3}), learning_rate=0.01, weight_decay=decay)
    assert len(step.flat.values) == 3  # one flat buffer per distinct weight decay
    for batch in disjoint_batches(3, seed=5):
        optimizer.zero_grad()
        reference_loss(reference, batch, 0.7, 0.3).backward()
        optimizer.step()
        step(batch)
    for (name, expected), actual in zip(reference.named_parameters(), net.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("silent_head", ["factorization", "regression"])
@pytest.mark.parametrize("step", ["fused", "autograd"])
def test_a_zero_weight_leaves_that_heads_own_parameters_untouched(silent_head, step):
    data = random_interactions(seed=4)
    weights = {"factorization_weight": 0.0, "regression_weight": 1.0}
    if silent_head == "regression":
        weights = {"factorization_weight": 1.0, "regression_weight": 0.0}
    before = MultitaskModel(embedding_dim=4, sharing="separate", seed=2, step=step, **weights).fit(data, epochs=0)
    after = MultitaskModel(embedding_dim=4, sharing="separate", seed=2, step=step, **weights).fit(data, epochs=3)
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


@pytest.mark.parametrize("step", ["fused", "autograd"])
def test_same_seed_gives_identical_results_bit_for_bit(step):
    data = random_interactions(num_users=50, num_items=60, n=1500, seed=5)
    test = random_interactions(num_users=50, num_items=60, n=200, seed=6)
    runs = [MultitaskModel(embedding_dim=8, batch_size=64, seed=7, step=step).fit(data, 3, test=test) for _ in range(2)]
    assert [r.to_json() | {"seconds": 0} for r in runs[0].history_] == [r.to_json() | {"seconds": 0} for r in runs[1].history_]
    for p0, p1 in zip(runs[0].network_.parameters(), runs[1].network_.parameters()):
        assert torch.equal(p0, p1)
    other = MultitaskModel(embedding_dim=8, batch_size=64, seed=8, step=step).fit(data, 3, test=test)
    assert other.history_[-1].test_mrr != runs[0].history_[-1].test_mrr


# ---------------------------------------------------------------------------------------------
# Which step runs


class DotProductNet(nn.Module):
    """A network the fused step knows nothing of: p = u·q, r_hat = 3 + u·v, by the contract alone."""

    def __init__(self, num_users, num_items, dim=8):
        super().__init__()
        self.users, self.items, self.rating_items = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim), nn.Embedding(num_items, dim)

    def watch_score(self, users, items):
        return (self.users(users) * self.items(items)).sum(1)

    def rating(self, users, items):
        return 3.0 + (self.users(users) * self.rating_items(items)).sum(1)

    def all_watch_scores(self, users):
        return self.users(users) @ self.items.weight.T

    def item_vectors(self):
        return self.items.weight


def test_auto_takes_the_fused_step_exactly_where_it_is_supported():
    objective = JointObjective({"watch": 0.5, "rating": 0.5})
    assert make_step("auto", random_net(), objective, 1e-3).kind == "fused"
    custom = DotProductNet(12, 15)
    assert isinstance(custom, RecommenderNetwork) and not FusedStep.supports(custom, objective)
    assert make_step("auto", custom, objective, 1e-3).kind == "autograd"
    assert make_step("autograd", random_net(), objective, 1e-3).kind == "autograd"
    with pytest.raises(ConfigError, match="the fused training step does not support this model: the network is a DotProductNet"):
        make_step("fused", custom, objective, 1e-3)
    with pytest.raises(ConfigError, match="unknown training step 'fast'; use one of auto, fused, autograd"):
        make_step("fast", custom, objective, 1e-3)
    assert MultitaskModel().resolved_step() == "fused" and MultitaskModel(step="autograd").resolved_step() == "autograd"


class Hinge(PairwiseLoss):
    """A watch loss the library does not have, defined here as a contributor would define one."""

    summary = "mean(max(0, 1 - (p+ - p-)))"

    def terms(self, margin):
        return (1.0 - margin).clamp_min(0.0)


@pytest.fixture
def hinge(monkeypatch):
    """``hinge`` registered for one test (the registry is restored after it)."""
    monkeypatch.setitem(WATCH_LOSSES._members, "hinge", Hinge)
    return Hinge


@pytest.mark.parametrize("name", WATCH_LOSSES.names())
def test_every_registered_watch_loss_trains_both_heads_with_the_autograd_step(name):
    net, batch = random_net(), random_batch(negatives_per_pair=3)
    step = AutogradStep(net, JointObjective({"watch": 0.9, "rating": 0.1}, watch_loss=name), learning_rate=0.05)
    first = step(batch)
    for _ in range(50):
        last = step(batch)
    assert bool(torch.isfinite(last).all()) and last[0] < first[0] and last[1] < first[1]


def test_a_watch_loss_outside_the_fused_steps_claims_trains_with_autograd_under_auto(hinge, tmp_path):
    objective = JointObjective({"watch": 0.5, "rating": 0.5}, watch_loss="hinge")
    assert "hinge" not in FusedStep.claims()["watch_loss"] and not FusedStep.supports(random_net(), objective)
    assert make_step("auto", random_net(), objective, 1e-3).kind == "autograd"
    with pytest.raises(ConfigError, match="cover the watch loss bpr, logsigmoid, not hinge"):
        make_step("fused", random_net(), objective, 1e-3)
    data = random_interactions(num_users=30, num_items=40, n=600, seed=9)
    model = MultitaskModel(watch_loss="hinge", learning_rate=0.05, seed=0).fit(data, 2)
    assert (
        model.resolved_step() == "autograd"
        and len(model.history_) == 2
        and model.history_[-1].train_losses["watch"] < model.history_[0].train_losses["watch"]
    )


def test_an_unknown_watch_loss_is_refused_naming_the_registered_ones(hinge):
    message = "unknown watch loss 'focal'; use one of bpr, logsigmoid, sampled-softmax, softmax, hinge$"
    with pytest.raises(ConfigError, match=message):
        JointObjective({"watch": 0.5, "rating": 0.5}, watch_loss="focal")
    with pytest.raises(ConfigError, match=message):
        MultitaskModel(watch_loss="focal").fit(random_interactions(num_users=5, num_items=5, n=20, seed=0), 1)


@pytest.mark.parametrize("negatives_per_pair", [None, 4])
def test_the_softmax_losses_are_the_cross_entropy_of_the_watched_item(negatives_per_pair):
    net, batch = random_net(), random_batch(negatives_per_pair=negatives_per_pair)
    with torch.no_grad():
        every = torch.stack([net.watch_score(batch.users, torch.full_like(batch.users, j)) for j in range(15)], 1)
        p_pos = net.watch_score(batch.users, batch.positives)
        negatives = batch.negatives.view(len(batch), -1)
        p_neg = torch.stack([net.watch_score(batch.users, negatives[:, j]) for j in range(negatives.shape[1])], 1)
    full = torch.nn.functional.cross_entropy(every, batch.positives)
    sampled = torch.nn.functional.cross_entropy(torch.cat([p_pos[:, None], p_neg], 1), torch.zeros(len(batch), dtype=torch.long))
    assert JointObjective({"watch": 1.0, "rating": 0.0}, watch_loss="softmax")(net, batch)[0]["watch"].item() == pytest.approx(full.item(), rel=1e-6)
    assert JointObjective({"watch": 1.0, "rating": 0.0}, watch_loss="sampled-softmax")(net, batch)[0]["watch"].item() == pytest.approx(
        sampled.item(), rel=1e-6
    )
    for name in ("softmax", "sampled-softmax"):  # the fused step claims neither: auto takes autograd
        assert make_step("auto", random_net(), JointObjective({"watch": 0.5, "rating": 0.5}, watch_loss=name), 1e-3).kind == "autograd"


def test_the_autograd_step_trains_a_network_the_fused_step_does_not_know():
    data = random_interactions(num_users=30, num_items=40, n=600, seed=9)
    net = DotProductNet(30, 40)
    step = AutogradStep(net, JointObjective({"watch": 0.5, "rating": 0.5}), learning_rate=0.05)
    users, items = torch.as_tensor(data.users).long(), torch.as_tensor(data.items).long()
    batch = Batch(users, items, torch.randint(0, 40, (len(users),), generator=torch.Generator().manual_seed(0)), torch.as_tensor(data.ratings))
    first = step(batch)
    for _ in range(100):
        last = step(batch)
    assert last[1] < first[1] / 2 and last[0] < first[0]  # both tasks learn
    metrics = Evaluator(data, data).evaluate(net)
    assert metrics["mse"] == pytest.approx(last[1].item(), rel=0.1)


# ---------------------------------------------------------------------------------------------
# Real MovieLens


#: Recorded with mtrec 0.1's TrainingStep on one machine (ML-100K, 95/5 random split seed 0, seed 0,
#: one thread, 3 epochs): per epoch (train BPR, train MSE, joint loss, test MSE, test MRR), and the
#: L2 norm of every tensor of the trained state. Another CPU (AVX2 against AVX-512) sums floats in
#: another order, so numbers recorded here are compared to a relative 1e-6, never bit for bit: the
#: fused step's numbers moved in the 9th significant digit on such a machine.
BEFORE_THE_SEAM = {
    "shared-0.5-0.5": (
        {},
        [
            (0.4819945385681955, 3.356558250828793, 1.9192763922038831, 0.893873739031353, 0.052763585473898124),
            (0.4469347922676488, 0.8968522604691355, 0.6718935264888563, 0.8745053919239166, 0.056777975757890245),
            (0.4162409568385074, 0.8843582617910285, 0.6502996102584035, 0.8711871900936813, 0.05662031772455571),
        ],
        {
            "user_embeddings.weight": 13.521698768611405,
            "item_embeddings.weight": 19.49377846350214,
            "user_biases.weight": 0.0,
            "item_biases.weight": 12.238464621820844,
            "rating_mlp.0.weight": 7.566054913833511,
            "rating_mlp.0.bias": 0.973818788220283,
            "rating_mlp.2.weight": 1.165364869030023,
            "rating_mlp.2.bias": 0.03504510968923569,
        },
    ),
    "shared-0.99-0.01": (
        {"factorization_weight": 0.99, "regression_weight": 0.01},
        [
            (0.4635365328738564, 3.87490931376407, 0.49765026375619986, 0.8972886185662732, 0.054677124856040496),
            (0.3095835487666883, 0.8981056596454822, 0.31546877229590164, 0.8700737973922354, 0.05591052687271673),
            (0.2354096040725708, 0.8751374181245503, 0.24180688454477411, 0.8652908743979572, 0.05644193692776167),
        ],
        {
            "user_embeddings.weight": 45.4989589068795,
            "item_embeddings.weight": 49.559985550835066,
            "user_biases.weight": 0.0,
            "item_biases.weight": 7.470647104615279,
            "rating_mlp.0.weight": 8.645450962401867,
            "rating_mlp.0.bias": 0.9973521183259296,
            "rating_mlp.2.weight": 1.2103986548483414,
            "rating_mlp.2.bias": 0.041451264172792435,
        },
    ),
    "separate-0.5-0.5": (
        {"sharing": "separate"},
        [
            (0.48292896312914396, 3.406406446657683, 1.9446677105552272, 0.8964819538562894, 0.06523025670318035),
            (0.3596265443299946, 0.8995722019797877, 0.6295993736066317, 0.8758317218170075, 0.0659498001839144),
            (0.2401538866444638, 0.8866642712040952, 0.5634090786582545, 0.8730991180956107, 0.07376049960360405),
        ],
        {
            "user_embeddings.weight": 44.01015728196897,
            "item_embeddings.weight": 48.50822096236668,
            "user_biases.weight": 0.0,
            "item_biases.weight": 8.37690218836856,
            "rating_user_embeddings.weight": 13.68650163054641,
            "rating_item_embeddings.weight": 14.811152921597275,
            "rating_mlp.0.weight": 7.068056752379476,
            "rating_mlp.0.bias": 0.8791260795647033,
            "rating_mlp.2.weight": 1.0882235188763505,
            "rating_mlp.2.bias": 0.06985069066286087,
        },
    ),
}


#: Numbers recorded on one machine are compared to this relative tolerance (see BEFORE_THE_SEAM).
RECORDED_RTOL = 1e-6


def state_norms(network) -> dict[str, float]:
    """The L2 norm of every tensor of the state: no cancellation, so a relative tolerance suits it."""
    return {name: float(tensor.detach().double().norm()) for name, tensor in network.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BEFORE_THE_SEAM))
def test_the_seeds_settings_take_the_fused_step_and_give_the_numbers_of_before(name, ml100k_split):
    train, test = ml100k_split
    params, history, norms = BEFORE_THE_SEAM[name]
    model = MultitaskModel(seed=0, **params).fit(train, 3, test=test, metrics=["mse", "mrr"])
    assert model.step_ == "fused"
    measured = [(r.train_losses["watch"], r.train_losses["rating"], r.train_loss, r.test_mse, r.test_mrr) for r in model.history_]
    for epoch, (got, recorded) in enumerate(zip(measured, history, strict=True), start=1):
        assert got == pytest.approx(recorded, rel=RECORDED_RTOL), f"epoch {epoch}"
    assert state_norms(model.network_) == pytest.approx(norms, rel=RECORDED_RTOL, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("sharing", [True, False])
def test_both_steps_give_the_same_metrics_after_3_epochs_on_movielens(sharing, ml100k_split):
    train, test = ml100k_split
    metrics = []
    for step in ("fused", "autograd"):
        model = MultitaskModel(sharing="hard" if sharing else "separate", seed=0, step=step)  # the seed's settings
        metrics.append(model.fit(train, 3, test=test).history_[-1].metrics)
    assert metrics[0].keys() == metrics[1].keys()
    for key in metrics[0]:
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-4), key


@pytest.mark.slow
def test_five_epochs_on_movielens_learn_both_tasks(ml100k_split):
    train, test = ml100k_split
    model = MultitaskModel(factorization_weight=0.5, regression_weight=0.5, seed=0)
    model.fit(train, epochs=5, test=test)
    first, last = model.history_[0], model.history_[-1]
    assert last.train_losses["watch"] < first.train_losses["watch"]
    assert last.train_losses["rating"] < first.train_losses["rating"]
    assert last.test_mse < 0.97
    assert last.test_mrr > 0.05
