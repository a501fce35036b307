"""Multi-task methods and sharing architectures: the textbook results of PCGrad and MGDA, the closed
form of uncertainty weighting, GradNorm's balancing, the architectures' limiting cases, and every
method and architecture training with the steps that support it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_interactions

from mtrec.model import MultitaskModel
from mtrec.nn.layers import ScaledEmbedding
from mtrec.nn.losses import Batch
from mtrec.nn.network import SHARINGS, MultitaskNet, Sharing
from mtrec.nn.objective import JointObjective
from mtrec.nn.weighting import WEIGHTINGS, GradNorm, Uncertainty, mgda_alpha, pcgrad
from mtrec.serving.foldin import user_parameter_names
from mtrec.serving.recommender import Recommender
from mtrec.train.steps import AutogradStep, FusedStep, make_step

# ---------------------------------------------------------------------------------------------
# Gradient combinations on hand-made gradients


def test_pcgrad_projects_conflicting_gradients_onto_each_others_normal_plane():
    g_f, g_r = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g_f · g_r = -1 < 0
    f = g_f - (-1.0 / 2.0) * g_r  # [0.5, 0.5], now orthogonal to g_r
    r = g_r - (-1.0 / 1.0) * g_f  # [0, 1], now orthogonal to g_f
    assert torch.allclose(pcgrad([g_f, g_r]), f + r)
    assert torch.dot(f, g_r) == 0 and torch.dot(r, g_f) == 0


def test_pcgrad_adds_aligned_gradients_and_leaves_one_alone_when_the_other_is_zero():
    g_f, g_r = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1])
    assert torch.equal(pcgrad([g_f, g_r]), g_f + g_r)
    assert torch.equal(pcgrad([g_f, torch.zeros(2)]), g_f)


def test_mgda_finds_the_minimum_norm_point_between_the_two_gradients():
    # Opposite gradients of equal length: the minimum-norm point is their midpoint, 0.
    assert mgda_alpha(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])) == 0.5
    # Conflicting but unequal: α·g_f + (1-α)·g_r is orthogonal to g_f - g_r at the minimum.
    g_f, g_r = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    alpha = mgda_alpha(g_f, g_r)
    point = alpha * g_f + (1 - alpha) * g_r
    assert abs(torch.dot(point, g_f - g_r).item()) < 1e-6
    # Aligned gradients: the shorter one is the minimum-norm point; one zero: the point is 0.
    assert mgda_alpha(torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])) == 1.0
    assert mgda_alpha(torch.tensor([1.0, 1.0]), torch.zeros(2)) == 0.0


# ---------------------------------------------------------------------------------------------
# Learned weights


def test_uncertainty_learns_the_weights_its_closed_form_predicts():
    """For fixed losses a and b, min_s exp(-s)·L + s is at s = log L: weights 1/a and 1/b."""
    weighting = Uncertainty({"watch": 1.0, "rating": 1.0})
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    a, b = torch.tensor(0.25), torch.tensor(2.0)
    for _ in range(3000):
        optimizer.zero_grad()
        weighting.combine({"watch": a, "rating": b}).backward()
        optimizer.step()
    assert weighting.task_weights() == pytest.approx({"watch": 4.0, "rating": 0.5}, rel=1e-3)
    off = Uncertainty({"watch": 1.0, "rating": 0.0})  # a task switched off by its λ stays off
    assert off.combine({"watch": a, "rating": b}).item() == pytest.approx(a.item()) and off.task_weights()["rating"] == 0.0


def test_gradnorm_raises_the_weight_of_the_task_with_the_smaller_gradient():
    weighting = GradNorm({"watch": 1.0, "rating": 1.0}, alpha=0.0)
    losses = (torch.tensor(1.0), torch.tensor(1.0))
    history = []
    for _ in range(300):
        weighting.shared(torch.tensor([[10.0, 0.0], [0.0, 1.0]]), losses)
        history.append(list(weighting.task_weights().values()))
    w_f, w_r = np.mean(history[-100:], axis=0)  # its fixed-size steps oscillate about the balance
    assert w_f + w_r == pytest.approx(2.0) and w_r > 1.5  # the rating task's gradient is ten times smaller
    assert w_f * 10 == pytest.approx(w_r * 1, rel=0.1)  # the weighted gradient norms balance


# ---------------------------------------------------------------------------------------------
# Architectures


def nets_with(sharing, **kwargs):
    torch.manual_seed(0)
    return MultitaskNet(12, 15, embedding_dim=8, layer_sizes=[24, 16], sharing=sharing, **kwargs)


def pairs():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 12, (40,), generator=generator), torch.randint(0, 15, (40,), generator=generator)


def test_cross_stitch_at_the_identity_equals_separate_embeddings():
    separate, stitched = nets_with("separate"), nets_with("cross-stitch", cross_stitch_init=1.0)
    users, items = pairs()
    assert torch.equal(separate.watch_score(users, items), stitched.watch_score(users, items))
    assert torch.equal(separate.rating(users, items), stitched.rating(users, items))
    assert torch.equal(separate.all_watch_scores(users), stitched.all_watch_scores(users))
    mixed = nets_with("cross-stitch")  # 0.9 / 0.1: the heads now read each other's tables
    assert not torch.equal(separate.rating(users, items), mixed.rating(users, items))


def test_residual_sharing_with_zero_task_parts_equals_hard_sharing():
    hard, residual = nets_with("hard"), nets_with("residual")
    users, items = pairs()
    assert torch.equal(hard.watch_score(users, items), residual.watch_score(users, items))
    assert torch.equal(hard.rating(users, items), residual.rating(users, items))
    with torch.no_grad():
        residual.rating_user_residuals.weight.normal_()
    assert torch.equal(hard.watch_score(users, items), residual.watch_score(users, items))
    assert not torch.equal(hard.rating(users, items), residual.rating(users, items))
    assert residual.parameter_groups()["residuals"] and not hard.parameter_groups()["residuals"]


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("rating_bias", [False, True])
def test_the_network_declares_every_table_once_with_its_rows_and_group(sharing, rating_bias):
    net = MultitaskNet(7, 11, embedding_dim=4, sharing=sharing, rating_bias=rating_bias)
    tables = net.tables()
    declared = {f"{table.name}.weight" for table in tables}
    assert len(declared) == len(tables)
    dense = {name for name, _ in net.named_parameters() if name.startswith("rating_mlp.") or name.endswith("_stitch")}
    assert declared | dense == {name for name, _ in net.named_parameters()} and not declared & dense
    for table in tables:
        assert getattr(net, table.name).num_embeddings == {"users": 7, "items": 11}[table.rows]
    groups = net.parameter_groups()
    assert [id(p) for p in groups["embeddings"] + groups["residuals"] + groups["biases"]] == [
        id(getattr(net, t.name).weight) for group in ("embeddings", "residuals", "biases") for t in tables if t.group == group
    ]
    users = {t.name for t in tables if t.rows == "users"}
    assert {"user_embeddings", "user_biases"} <= users and ("rating_user_biases" in users) == rating_bias
    assert ("rating_user_embeddings" in users) == (sharing in ("separate", "cross-stitch"))
    assert ({"watch_user_residuals", "rating_user_residuals"} <= users) == (sharing == "residual")


@pytest.mark.parametrize("sharing", SHARINGS)
def test_the_network_declares_its_heads_and_remakes_itself_from_its_structure(sharing):
    net = MultitaskNet(7, 11, embedding_dim=4, sharing=sharing, rating_bias=True, cross_stitch_init=0.7)
    heads = {head.name: head for head in net.heads()}
    assert [(h.name, h.task, h.output) for h in heads.values()] == [("watch", "watch", "watch_score"), ("rating", "rating", "rating")]
    assert heads["rating"].tables == ("rating_user_biases", "rating_item_biases") and heads["rating"].dense == ("rating_mlp",)
    declared = {t.name for t in net.tables()}
    assert all(name in declared for head in heads.values() for name in head.tables)
    one = net.resized(num_users=1)
    assert one.structure() == {**net.structure(), "num_users": 1}
    shapes = {name: p.shape for name, p in net.named_parameters()}
    for name, param in one.named_parameters():
        rows = {t.name: t.rows for t in net.tables()}.get(name.removesuffix(".weight"))
        assert param.shape == (shapes[name] if rows != "users" else (1, *shapes[name][1:])), name


class SeparateUsers(Sharing):
    """A sharing mode the library does not have: the heads share Q, each has its own U."""

    summary = "one Q, a U per head"

    def make(self, net, table, embedding_dim, cross_stitch_init):
        table("rating_user_embeddings", "users", "embeddings", ScaledEmbedding, embedding_dim)

    def rating_vectors(self, net, users, items):
        return net.rating_user_embeddings(users), net.item_embeddings(items)


def test_a_sharing_mode_defined_outside_the_library_trains_saves_and_folds_in(monkeypatch, tmp_path):
    monkeypatch.setitem(SHARINGS._members, "separate-users", SeparateUsers)
    data = random_interactions(num_users=30, num_items=40, n=600, seed=3)
    model = MultitaskModel(embedding_dim=8, sharing="separate-users", batch_size=64, learning_rate=0.01, seed=1).fit(data, 3)
    assert model.resolved_step() == "autograd"  # the fused step does not claim it
    net = model.network_
    assert {t.name for t in net.tables() if t.rows == "users"} == {"user_embeddings", "user_biases", "rating_user_embeddings"}
    assert model.history_[-1].train_losses["rating"] < model.history_[0].train_losses["rating"]
    with torch.no_grad():  # the rating head reads its own U and the shared Q
        users, items = torch.tensor([0, 1]), torch.tensor([2, 3])
        expected = net.rating_mlp(
            torch.cat(
                [net.rating_user_embeddings(users), net.item_embeddings(items), net.rating_user_embeddings(users) * net.item_embeddings(items)], 1
            )
        )
        assert torch.equal(net.rating(users, items), expected.squeeze(-1))
    loaded = MultitaskModel.load(model.save(tmp_path / "model.safetensors"))
    assert np.array_equal(loaded.predict(data.users[:20], data.items[:20])[1], model.predict(data.users[:20], data.items[:20])[1])
    assert "rating_user_embeddings.weight" in user_parameter_names(net)  # fold-in fits the mode's own user table too
    folded = Recommender(model).recommend_history([(data.item_ids[0], 4.0), (data.item_ids[1], None)], k=5)
    assert not folded.cold_start and len(folded.items) == 5


# ---------------------------------------------------------------------------------------------
# Every method and architecture trains


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_method_and_architecture_trains_with_the_steps_that_support_it(sharing, weighting):
    data = random_interactions(num_users=30, num_items=40, n=600, seed=3)
    model = MultitaskModel(embedding_dim=8, sharing=sharing, weighting=weighting, batch_size=64, learning_rate=0.01, seed=1)
    expected = "fused" if sharing in ("hard", "separate") and weighting == "fixed" else "autograd"
    assert model.resolved_step() == expected
    model.fit(data, 4, test=data)
    first, last = model.history_[0], model.history_[-1]
    assert last.train_losses["rating"] < first.train_losses["rating"] and np.isfinite(last.metrics["test_mrr"])


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "gradnorm"])
def test_each_epoch_records_the_task_weights_its_method_chose(weighting):
    from mtrec.io.fitted import EpochRecord

    data = random_interactions(num_users=30, num_items=40, n=600, seed=3)
    model = MultitaskModel(embedding_dim=8, weighting=weighting, batch_size=64, learning_rate=0.05, seed=1)
    model.fit(data, 3)
    weights = [record.task_weights for record in model.history_]
    if weighting == "fixed":
        assert weights == [None] * 3  # the λs are the configuration, not a record
        return
    assert all(w is not None and all(np.isfinite(list(w.values()))) and min(w.values()) > 0 for w in weights)
    assert weights[0] != weights[-1]  # learned, so they move
    back = EpochRecord.from_json(model.history_[-1].to_json())
    assert back.task_weights == pytest.approx(weights[-1])


@pytest.mark.parametrize("weighting", ["pcgrad", "mgda", "gradnorm"])
def test_gradient_methods_leave_task_specific_parameters_their_own_gradient(weighting):
    """With separate embeddings no parameter is shared: each gets its own task's (weighted) gradient."""
    batch = Batch(*pairs(), torch.randint(0, 15, (40,), generator=torch.Generator().manual_seed(2)), torch.ones(40) * 3)
    plain, method = nets_with("separate"), nets_with("separate")
    AutogradStep(plain, JointObjective({"watch": 1.0, "rating": 1.0}), 1e-3).gradients(batch)
    step = AutogradStep(method, JointObjective({"watch": 1.0, "rating": 1.0}, weighting=weighting), 1e-3)
    step.gradients(batch)
    w_f, w_r = (1.0, 1.0) if weighting == "mgda" else step.objective.weighting.task_weights().values()  # MGDA mixes shared ones only
    for (name, a), b in zip(plain.named_parameters(), method.parameters()):
        scale = w_r if name.startswith("rating") else w_f
        torch.testing.assert_close(b.grad, scale * a.grad, msg=name)


def test_the_fused_step_refuses_what_it_does_not_cover():
    objective = JointObjective({"watch": 0.5, "rating": 0.5}, weighting="pcgrad")
    assert not FusedStep.supports(nets_with("hard"), objective)
    assert make_step("auto", nets_with("hard"), objective, 1e-3).kind == "autograd"
    assert not FusedStep.supports(nets_with("residual"), JointObjective({"watch": 0.5, "rating": 0.5}))


# ---------------------------------------------------------------------------------------------
# The study


def study_group(configuration, test_mse, test_mrr, valid_scores):
    """Runs of one configuration with the given per-seed test MSE, MRR and validation criterion."""
    from pathlib import Path

    from mtrec.config import RunConfig
    from mtrec.io.fitted import EpochRecord, summarize
    from mtrec.studies.report import GroupSummary, RunResult

    runs = []
    for seed, (mse, mrr, score) in enumerate(zip(test_mse, test_mrr, valid_scores)):
        history = [EpochRecord(1, {"watch": 0.2, "rating": 0.8}, 0.5, metrics={"test_mse": mse, "test_mrr": mrr}, seconds=1.0)]
        metrics = {"completed": True, "epochs": [r.to_json() for r in history], **summarize(history, 1, {"criterion": "joint", "score": score})}
        config = RunConfig(model={"seed": seed, **configuration.model_params()})
        runs.append(RunResult(Path(f"run/multitask/{configuration.name}/seed-{seed}"), configuration, seed, config, {}, metrics))
    return GroupSummary.of(configuration, runs)


def test_the_study_chooses_each_variant_on_validation_and_counts_only_wins_on_both_tasks():
    from mtrec.studies.experiments import Configuration
    from mtrec.studies.report.study import choices, study_answer

    groups = [
        study_group(Configuration("separate", 0.99, 0.01), [0.90, 0.91, 0.92], [0.130, 0.131, 0.132], [0.5, 0.5, 0.5]),
        study_group(Configuration("separate", 0.5, 0.5), [0.95, 0.96, 0.97], [0.120, 0.121, 0.122], [0.4, 0.4, 0.4]),
        # Residual: the better test numbers belong to the variant validation does not choose.
        study_group(Configuration("residual", 0.5, 0.5), [0.80, 0.81, 0.82], [0.150, 0.151, 0.152], [0.3, 0.3, 0.3]),
        study_group(Configuration("residual", 0.99, 0.01), [0.88, 0.89, 0.90], [0.140, 0.141, 0.142], [0.6, 0.6, 0.6]),
        # Hard sharing with PCGrad: better MSE, MRR within noise: no win.
        study_group(Configuration("hard", 0.99, 0.01, "pcgrad"), [0.85, 0.86, 0.87], [0.131, 0.129, 0.132], [0.7, 0.7, 0.7]),
    ]
    found = {(c.sharing, c.weighting): c for c in choices(groups)}
    residual = found[("residual", "fixed")]
    assert residual.group.configuration.factorization_weight == 0.99 and residual.candidates == 2
    assert residual.wins  # lower MSE and higher MRR than separate, both clear
    assert not found[("hard", "pcgrad")].wins
    assert found[("separate", "fixed")].group.configuration.factorization_weight == 0.99
    text = " ".join(study_answer(list(found.values())))
    assert text.count("Yes: residual, fixed beats separate embeddings on both tasks") == 1


@pytest.mark.slow
def test_the_study_runs_every_architecture_and_method_and_reports_them(tmp_path):
    from mtrec.cli import main

    ratings = tmp_path / "ratings.csv"
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(40) for i in rng.choice(50, 20, replace=False)]
    ratings.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    argv = [
        "experiments",
        "--study",
        "multitask",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--ratings",
        str(ratings),
        "--root",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "report"),
        "--no-progress",
        "--threads",
        "1",
        "--batch-size",
        "256",
    ]
    assert main(argv) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Multi-task methods and sharing architectures" in markdown
    for name in ("shared, fixed", "separate, fixed", "residual, mgda", "cross-stitch, gradnorm", "shared, pcgrad", "residual, uncertainty"):
        assert f"| {name} |" in markdown, name
    assert (tmp_path / "report" / "multitask_plane.png").read_bytes().startswith(b"\x89PNG")
    assert "mtrec experiments --study multitask --seeds 2" in markdown
