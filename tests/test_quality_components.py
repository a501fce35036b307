"""Issue 21's components: batches by user, popularity negatives and the log-Q correction, watch
weights, the full softmax over distinct users, weight averaging, the item-item path, the rating
head that reads the watch score, and instant fold-in. Small synthetic data: no MovieLens needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrec import MultitaskModel
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, DataError
from mtrec.nn.batch import Batch
from mtrec.nn.itemitem import MAX_ITEM_ITEM, ease_matrix
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.nn.network import MultitaskNet
from mtrec.nn.objective import JointObjective
from mtrec.serving.foldin import fold_in_model
from mtrec.train.averaging import WeightAverage
from mtrec.train.itemitem import choose_item_item
from mtrec.train.sampling import EpochSampler
from mtrec.train.steps import AutogradStep, FusedStep, resolve_step

CPU = torch.device("cpu")


def synthetic(num_users: int = 40, num_items: int = 30, per_user: int = 8, seed: int = 0, ratings: bool = True) -> Interactions:
    """Users who each rate ``per_user`` distinct items, popular items (low indices) more often."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_items + 1)
    users, items = [], []
    for user in range(num_users):
        chosen = rng.choice(num_items, size=per_user, replace=False, p=weights / weights.sum())
        users += [user] * per_user
        items += sorted(chosen.tolist())
    users, items = np.array(users, dtype=np.int32), np.array(items, dtype=np.int32)
    values = rng.integers(1, 6, size=len(users)).astype(np.float32) if ratings else None
    return Interactions(
        users=users, items=items, ratings=values, timestamps=np.zeros(len(users), np.int64), num_users=num_users,
        num_items=num_items, user_ids=np.arange(num_users), item_ids=np.arange(num_items),
        rating_scale=(1.0, 5.0) if ratings else None, name="synthetic",
    )  # fmt: skip


def history_net(data: Interactions, **kwargs) -> MultitaskNet:
    torch.manual_seed(0)
    return MultitaskNet(data.num_users, data.num_items, 8, user_encoder="history", **kwargs).use_histories(*data.seen_items_csr())


# ---------------------------------------------------------------- sampling


def test_batches_by_user_keep_each_users_pairs_together_and_hold_every_pair():
    data = synthetic()
    users, items, _, ratings = EpochSampler(data, 3, CPU, True, batch_by="users").draw()
    runs = (users[1:] != users[:-1]).sum().item() + 1
    assert runs == data.num_users  # each user's pairs in one run
    drawn = sorted(zip(users.tolist(), items.tolist(), ratings.tolist()))
    assert drawn == sorted(zip(data.users.tolist(), data.items.tolist(), data.ratings.tolist()))
    again = EpochSampler(data, 3, CPU, True, batch_by="users").draw()
    assert torch.equal(again[0], users) and torch.equal(again[1], items)
    other = EpochSampler(data, 4, CPU, True, batch_by="users").draw()
    assert not torch.equal(other[0], users)


def test_popularity_negatives_follow_the_training_counts_and_give_log_q():
    data = synthetic(num_users=200)
    sampler = EpochSampler(data, 0, CPU, False, negatives=20, negative_sampling="popularity")
    counts = np.bincount(data.items, minlength=data.num_items) + 1
    expected = counts / counts.sum()
    assert torch.allclose(sampler.log_q.exp().double(), torch.as_tensor(expected), atol=1e-6)
    _, _, negatives, _ = sampler.draw()
    drawn = np.bincount(negatives.reshape(-1).numpy(), minlength=data.num_items) / negatives.numel()
    assert np.abs(drawn - expected).max() < 0.01
    uniform = EpochSampler(data, 0, CPU, False, negatives=20).draw()[2]
    assert drawn[0] > 2 * (np.bincount(uniform.reshape(-1).numpy(), minlength=data.num_items)[0] / uniform.numel())


def test_watch_weights_are_each_pairs_rating_over_the_mean_in_the_drawn_order():
    data = synthetic()
    sampler = EpochSampler(data, 1, CPU, True, watch_weights="rating")
    _, _, _, ratings = sampler.draw()
    assert torch.allclose(sampler.drawn_weights, ratings / float(data.ratings.mean()))
    plain = EpochSampler(data, 1, CPU, True)
    plain.draw()
    assert plain.drawn_weights is None
    negative = synthetic()
    negative.ratings -= 3.0
    with pytest.raises(ConfigError, match="must then be positive; the lowest is -2"):
        EpochSampler(negative, 1, CPU, True, watch_weights="rating")


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"batch_by": "user"}, "pairs, users"),
        ({"negative_sampling": "zipf"}, "uniform, popularity"),
    ],
)
def test_sampler_refuses_unknown_choices_naming_the_allowed_ones(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        EpochSampler(synthetic(), 0, CPU, True, **kwargs)


def test_rating_weights_on_data_without_ratings_are_refused():
    with pytest.raises(ConfigError, match="no ratings"):
        EpochSampler(synthetic(ratings=False), 0, CPU, False, watch_weights="rating")


# ---------------------------------------------------------------- losses


def batch_of(data: Interactions, negatives: int = 4, **extra) -> Batch:
    users, items, negs, ratings = EpochSampler(data, 0, CPU, True, negatives=negatives).draw()
    return Batch(users[:64], items[:64], negs[:64], ratings[:64], **extra)


def test_full_softmax_over_distinct_users_is_the_per_pair_cross_entropy():
    data = synthetic()
    net = history_net(data).eval()
    batch = batch_of(data)
    with torch.no_grad():
        net.user_embeddings.weight.normal_()
        net.history_embeddings.weight.normal_()
        loss = WATCH_LOSSES["softmax"]()(net, batch)
        scores = torch.stack([net.all_watch_scores(u.view(1))[0] for u in batch.users])
        expected = (torch.logsumexp(scores, 1) - scores[torch.arange(len(batch)), batch.positives]).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_log_q_correction_subtracts_each_candidates_log_probability():
    data = synthetic()
    net = history_net(data).eval()
    with torch.no_grad():
        net.item_embeddings.weight.normal_()
        net.user_embeddings.weight.normal_()
    loss = WATCH_LOSSES["sampled-softmax"]()
    plain = batch_of(data)
    uniform = batch_of(data, log_q=torch.full((data.num_items,), -np.log(data.num_items), dtype=torch.float32))
    skewed_q = torch.linspace(-1.0, -5.0, data.num_items)
    skewed = batch_of(data, log_q=skewed_q)
    with torch.no_grad():
        assert torch.allclose(loss(net, plain), loss(net, uniform), rtol=1e-6)  # a constant log Q changes nothing
        candidates = torch.cat([plain.positives[:, None], plain.negatives], 1)
        logits = torch.stack([net.watch_score(plain.users, candidates[:, j]) for j in range(candidates.shape[1])], 1) - skewed_q[candidates]
        expected = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
        assert torch.allclose(loss(net, skewed), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["bpr", "logsigmoid", "sampled-softmax", "softmax"])
def test_pair_weights_scale_each_pairs_watch_loss(name):
    data = synthetic()
    net = history_net(data).eval()
    loss = WATCH_LOSSES[name]()
    with torch.no_grad():
        net.user_embeddings.weight.normal_()
        one = loss(net, batch_of(data, weights=torch.ones(64)))
        assert torch.allclose(loss(net, batch_of(data)), one)
        assert torch.allclose(loss(net, batch_of(data, weights=torch.full((64,), 2.0))), 2 * one)
        half = torch.cat([torch.ones(32), torch.zeros(32)])
        first = batch_of(data)
        assert not torch.allclose(loss(net, batch_of(data, weights=half)), one)
        assert torch.isfinite(loss(net, first))


def test_history_pooled_once_per_distinct_user_equals_pooling_each_pair():
    data = synthetic()
    net = history_net(data).eval()
    with torch.no_grad():
        net.history_embeddings.weight.normal_()
        users = torch.tensor([3, 3, 5, 3, 7, 5])
        grouped = net.user_vectors(users)
        each = torch.cat([net.user_vectors(u.view(1)) for u in users])
    assert torch.allclose(grouped, each, atol=1e-6)


# ---------------------------------------------------------------- weight averaging


def test_weight_average_is_the_exponential_moving_average_of_the_steps():
    net = torch.nn.Linear(3, 1)
    average = WeightAverage(net, 0.9)
    start = [p.detach().clone() for p in net.parameters()]
    expected = [s.clone() for s in start]
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        average.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, net.parameters())]
    last = [p.detach().clone() for p in net.parameters()]
    with average.applied():
        assert all(torch.allclose(p, e) for p, e in zip(net.parameters(), expected))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), last))  # its own weights again after the block
    with pytest.raises(ConfigError, match="from 0 to below 1"):
        WeightAverage(net, 1.0)


def test_a_fitted_model_with_ema_holds_the_average_and_differs_from_without():
    data = synthetic()
    settings = dict(embedding_dim=8, batch_size=64, learning_rate=0.05, seed=1)
    plain = MultitaskModel(**settings).fit(data, 3)
    averaged = MultitaskModel(**settings, ema=0.9).fit(data, 3)
    again = MultitaskModel(**settings, ema=0.9).fit(data, 3)
    p, a, b = (m.network_.item_embeddings.weight for m in (plain, averaged, again))
    assert torch.equal(a, b)
    assert not torch.allclose(p, a)
    # the average moves less than the weights: it is nearer the initial weights
    start = MultitaskModel(**settings).build_network(data.num_users, data.num_items).item_embeddings.weight
    assert (a - start).norm() < (p - start).norm()


# ---------------------------------------------------------------- the item-item path


def ease_numpy(data: Interactions, l2: float) -> np.ndarray:
    x = np.zeros((data.num_users, data.num_items))
    x[data.users, data.items] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(data.num_items))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def test_ease_matrix_is_the_closed_form():
    data = synthetic()
    indptr, indices = data.seen_items_csr()
    b = ease_matrix(torch.as_tensor(indptr), torch.as_tensor(indices), data.num_items, 10.0)
    assert np.allclose(b.numpy(), ease_numpy(data, 10.0), atol=1e-5)
    with pytest.raises(ConfigError, match="positive"):
        ease_matrix(torch.as_tensor(indptr), torch.as_tensor(indices), data.num_items, 0.0)


def test_item_item_path_adds_w_times_the_history_rows_to_every_watch_score():
    data = synthetic()
    net = history_net(data, item_item=True).eval()
    users = torch.arange(data.num_users)
    with torch.no_grad():
        before = net.all_watch_scores(users)
        net.item_item_matrix.copy_(torch.as_tensor(ease_numpy(data, 10.0), dtype=torch.float32))
        net.item_item_weight.fill_(2.0)
        after = net.all_watch_scores(users)
        x = torch.zeros(data.num_users, data.num_items)
        x[data.users, data.items] = 1.0
        assert torch.allclose(after - before, 2.0 * x @ net.item_item_matrix, atol=1e-4)
        pairs_u, pairs_i = torch.tensor([0, 5, 9]), torch.tensor([2, 7, 11])
        assert torch.allclose(net.watch_score(pairs_u, pairs_i), after[pairs_u, pairs_i], atol=1e-5)
        assert torch.allclose(
            net.watch_scores(pairs_u, torch.stack([pairs_i, pairs_i + 1], 1)),
            after[pairs_u[:, None], torch.stack([pairs_i, pairs_i + 1], 1)],
            atol=1e-5,
        )
        # the rating head reads the factorisation alone: the path leaves ratings as they were
        net.item_item_weight.fill_(0.0)
        r0 = net.rating(pairs_u, pairs_i)
        net.item_item_weight.fill_(5.0)
        assert torch.equal(net.rating(pairs_u, pairs_i), r0)


def test_choose_item_item_keeps_the_best_validation_pair_and_given_values_as_given():
    data = synthetic(num_users=60, per_user=10)
    valid = synthetic(num_users=60, per_user=2, seed=7)
    from mtrec.eval.evaluation import Evaluator

    evaluator = Evaluator(valid, data, CPU, ["mrr"], [10])
    net = history_net(data, item_item=True)
    chosen = choose_item_item(net, evaluator, l2_candidates=(5.0, 50.0), weight_candidates=(0.0, 1.0, 10.0))
    scores = {}
    for l2 in (5.0, 50.0):
        for w in (0.0, 1.0, 10.0):
            probe = history_net(data, item_item=True)
            probe.load_state_dict(net.state_dict())
            choose_item_item(probe, None, l2, w)
            scores[l2, w] = evaluator.mrr(probe.eval())
    best = max(scores, key=scores.get)
    assert scores[chosen["item_item_l2"], chosen["item_item_weight"]] == pytest.approx(scores[best])
    assert float(net.item_item_weight) == chosen["item_item_weight"]
    given = choose_item_item(net, None, 20.0, 3.0)
    assert (given["item_item_l2"], given["item_item_weight"]) == (20.0, 3.0) and float(net.item_item_weight) == 3.0
    with pytest.raises(ConfigError, match="validation set"):
        choose_item_item(net, None, None, 3.0)


def test_item_item_refuses_a_catalogue_too_large_for_its_matrix():
    with pytest.raises(ConfigError, match="at most 20,000 items"):
        MultitaskNet(2, MAX_ITEM_ITEM + 1, 4, item_item=True)


def test_a_fitted_item_item_model_saves_loads_and_folds_in_with_its_path(tmp_path):
    data = synthetic(num_users=60, per_user=10)
    valid = synthetic(num_users=60, per_user=2, seed=7)
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, user_encoder="history", item_item=True, seed=2)
    model.fit(data, 3, validation=valid, early_stopping="mrr", patience=3)
    assert {"item_item_l2", "item_item_weight"} <= set(model.selection_)
    users, items = torch.arange(5), torch.arange(5)
    before = model.network_.watch_score(users, items)
    model.save(tmp_path / "m")
    loaded = MultitaskModel.load(tmp_path / "m")
    assert torch.allclose(loaded.network_.watch_score(users, items), before)
    assert float(loaded.network_.item_item_weight) == model.selection_["item_item_weight"]
    one = fold_in_model(model, [1, 2, 3], instant=True)
    assert float(one.item_item_weight) == model.selection_["item_item_weight"]
    assert torch.equal(one.item_item_matrix, model.network_.item_item_matrix)


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"item_item_l2": 100.0}, "item_item"),
        ({"item_item_weight": 1.0}, "item_item"),
        ({"item_item": True, "item_item_l2": 0.0}, "item_item_l2"),
        ({"item_item": True, "item_item_weight": -1.0}, "item_item_weight"),
        ({"ema": 1.0}, "ema"),
        ({"ema": -0.5}, "ema"),
        ({"batch_by": "items"}, "pairs, users"),
        ({"negative_sampling": "zipf"}, "uniform, popularity"),
        ({"watch_weights": "stars"}, "none, rating"),
    ],
)
def test_the_new_settings_refuse_bad_values_in_one_line_naming_them(settings, named):
    with pytest.raises(ConfigError) as error:
        MultitaskModel(**settings)
    assert named in str(error.value) and "\n" not in str(error.value).strip()


def test_item_item_without_validation_needs_both_values():
    data = synthetic()
    with pytest.raises(ConfigError, match="validation set"):
        MultitaskModel(embedding_dim=8, item_item=True).fit(data, 1)
    model = MultitaskModel(embedding_dim=8, item_item=True, item_item_l2=50.0, item_item_weight=1.0).fit(data, 1)
    assert model.selection_["item_item_weight"] == 1.0


# ---------------------------------------------------------------- the rating head reading the score


def test_a_rating_head_that_reads_the_watch_score_trains_with_autograd_only():
    data = synthetic()
    net = MultitaskNet(data.num_users, data.num_items, 8, rating_reads_score=True)
    assert net.rating_mlp[0].in_features == 3 * 8 + 1
    objective = JointObjective()
    assert resolve_step("auto", net, objective) == "autograd"
    assert "watch score" in FusedStep.unsupported(net, objective)
    step = AutogradStep(net, objective, 0.01)
    losses = step(batch_of(data, negatives=1))
    assert torch.isfinite(losses).all()
    # the score is an input: changing the item bias (which only the watch score reads) changes the rating
    users, items = torch.tensor([0, 1]), torch.tensor([2, 3])
    with torch.no_grad():
        before = net.rating(users, items)
        net.item_biases.weight[2] += 5.0
        assert not torch.allclose(net.rating(users, items)[0], before[0])


def test_weighted_watch_losses_are_not_claimed_by_the_fused_step():
    net = MultitaskNet(5, 5, 4)
    assert resolve_step("auto", net, JointObjective(watch_weights="rating")) == "autograd"
    with pytest.raises(ConfigError, match="none, rating"):
        JointObjective(watch_weights="stars")


# ---------------------------------------------------------------- instant fold-in


def test_instant_fold_in_reads_the_history_through_the_encoder_without_fitting():
    data = synthetic(num_users=60, per_user=10)
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, user_encoder="history", history_alpha=1.0, seed=3).fit(data, 3)
    net = model.network_
    history = [4, 9, 2]
    one = fold_in_model(model, history, instant=True)
    with torch.no_grad():
        expected = net.user_embeddings.weight.mean(0) + net.history_embeddings.weight[sorted(history)].mean(0)
        assert torch.allclose(one.user_vectors(torch.zeros(1, dtype=torch.long))[0], expected, atol=1e-6)
    again = fold_in_model(model, history, instant=True)
    assert torch.equal(one.all_watch_scores(torch.zeros(1, dtype=torch.long)), again.all_watch_scores(torch.zeros(1, dtype=torch.long)))
    fitted = fold_in_model(model, history)
    assert not torch.equal(fitted.user_embeddings.weight, one.user_embeddings.weight)  # fitting refines it


# ---------------------------------------------------------------- the row penalty, the mean start


def test_row_penalty_is_lambda_times_the_squared_rows_a_batch_reads_per_pair():
    data = synthetic()
    net = history_net(data)
    batch = batch_of(data, negatives=1)
    objective = JointObjective(row_l2=0.1)
    users = torch.unique(batch.users)
    expected = (
        (
            net.user_embeddings.weight[users].square().sum()
            + net.item_embeddings.weight[batch.positives].square().sum()
            + net.history_embeddings.weight[batch.positives].square().sum()
        )
        * 0.1
        / len(batch)
    )
    assert torch.allclose(objective.row_penalty(net, batch), expected)
    assert "row_l2" in FusedStep.unsupported(MultitaskNet(5, 5, 4), objective)
    with pytest.raises(ConfigError, match="row_l2"):
        JointObjective(row_l2=-1.0)


@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_the_row_penalty_shrinks_the_rows_it_reads(weighting):
    data = synthetic()
    shrunk = {}
    for l2 in (0.0, 1.0):
        model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, row_l2=l2, weighting=weighting, seed=4).fit(data, 4)
        assert model.step_ == "autograd" or l2 == 0.0
        shrunk[l2] = model.network_.item_embeddings.weight.norm()
    assert shrunk[1.0] < 0.8 * shrunk[0.0]


def test_start_at_mean_sets_the_rating_heads_last_bias_to_the_training_mean():
    data = synthetic()
    model = MultitaskModel(embedding_dim=8, start_at_mean=True, learning_rate=1e-9, seed=5).fit(data, 1)
    assert float(model.network_.rating_mlp[-1].bias.detach()) == pytest.approx(float(data.ratings.mean()), abs=1e-4)
    plain = MultitaskModel(embedding_dim=8, learning_rate=1e-9, seed=5).fit(data, 1)
    assert abs(float(plain.network_.rating_mlp[-1].bias.detach())) < 1.0


# ---------------------------------------------------------------- refit


def test_joined_interactions_are_both_parts_and_refuse_other_id_maps():
    data = synthetic()
    a, b = data.subset(np.arange(0, 100)), data.subset(np.arange(100, len(data)))
    both = a.joined(b)
    assert np.array_equal(both.users, data.users) and np.array_equal(both.ratings, data.ratings)
    other = synthetic(num_users=41)
    with pytest.raises(DataError, match="different id maps"):
        a.joined(other)


def test_refit_trains_again_on_train_and_validation_for_the_chosen_epochs():
    data = synthetic(num_users=60, per_user=10)
    part, valid = data.subset(np.arange(0, 500)), data.subset(np.arange(500, len(data)))
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, user_encoder="history", item_item=True, seed=6)
    model.fit(part, 6, validation=valid, early_stopping="mrr", patience=2)
    chosen, history = model.selected_epoch_, list(model.history_)
    first = model.network_.item_embeddings.weight.detach().clone()
    model.refit(part.joined(valid))
    assert model.selection_["refit_epochs"] == chosen and model.selection_["refit_rows"] == len(data)
    assert model.history_ == history and model.selected_epoch_ == chosen  # what the choice rests on
    assert not torch.equal(model.network_.item_embeddings.weight, first)
    assert float(model.network_.item_item_weight) == model.selection_["item_item_weight"]
    assert int(model.network_.history_indptr[-1]) == len(data)  # the refit model reads the joined histories
    # the same as a plain fit of that many epochs on the joined data, with the chosen path
    same = MultitaskModel(
        **{**model.get_params(), "item_item_l2": model.selection_["item_item_l2"], "item_item_weight": model.selection_["item_item_weight"]}
    )
    same.fit(part.joined(valid), chosen)
    assert torch.equal(same.network_.item_embeddings.weight, model.network_.item_embeddings.weight)
    with pytest.raises(ConfigError, match="not fitted"):
        MultitaskModel().refit(data)


def test_refit_needs_early_stopping_in_a_run_config():
    from mtrec.config import RunConfig, preset

    with pytest.raises(ConfigError, match="refit"):
        RunConfig(refit=True)
    config = preset("quality", refit=True)
    assert config.refit and config.essential()["training"]["refit"] is True
    assert "--refit" in config.cli_options()
    assert RunConfig.from_json(config.to_json()) == config
    assert "refit" not in preset("quality").essential()["training"]  # runs without it keep their digests


def test_mtrec_train_refit_records_the_refit_and_saves_its_model(tmp_path, data_dir, capsys):
    import json

    from mtrec.cli import main

    logdir = tmp_path / "run"
    code = main([
        "train", "--no-progress", "--data-dir", str(data_dir), "--epochs", "2", "--patience", "1", "--refit",
        "--embedding-dim", "16", "--logdir", str(logdir),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "refit on train + validation for" in out
    metrics = json.loads((logdir / "metrics.json").read_text())
    config = json.loads((logdir / "config.json").read_text())
    assert config["training"]["refit"] is True
    assert metrics["refit"]["epochs"] == metrics["selected"]["epoch"] and metrics["refit"]["rows"] == 95_000
    assert 0.0 < metrics["refit"]["test_mrr"] < 1.0 and metrics["refit"]["test_mse"] > 0.0
    loaded = MultitaskModel.load(logdir)
    assert loaded.data_.num_users == 943 and int(loaded.network_.history_indptr[-1]) == 95_000


def test_an_item_item_model_refuses_an_hnsw_index_and_the_vector_exports(tmp_path):
    from mtrec.serving.export import export_model
    from mtrec.serving.recommender import Recommender
    from mtrec.serving.retrieval import IndexConfig

    data = synthetic()
    model = MultitaskModel(embedding_dim=8, item_item=True, item_item_l2=10.0, item_item_weight=1.0).fit(data, 1)
    with pytest.raises(ConfigError, match="use --index exact"):
        Recommender(model, index=IndexConfig.of(kind="hnsw"))
    assert len(Recommender(model).recommend(data.user_ids[0], k=3).items) == 3  # auto: exact
    with pytest.raises(ConfigError, match="without --item-item"):
        export_model(model, tmp_path / "export", "parquet")
    assert not (tmp_path / "export").exists()
    scored = MultitaskModel(embedding_dim=8, rating_reads_score=True).fit(data, 1)
    with pytest.raises(ConfigError, match="without --rating-reads-score"):
        export_model(scored, tmp_path / "export", "parquet")


# ---------------------------------------------------------------- resuming, recording, refusing early


RECIPE = dict(
    embedding_dim=8, batch_size=64, learning_rate=0.05, user_encoder="history", history_dropout=0.3, watch_loss="sampled-softmax",
    negatives=4, negative_sampling="popularity", watch_weights="rating", batch_by="users", ema=0.9, row_l2=0.01,
    rating_reads_score=True, start_at_mean=True, seed=2,
)  # fmt: skip


def test_resuming_the_recipe_with_its_average_continues_to_the_same_weights():
    from mtrec.train.callbacks import Checkpoints, Resume

    data = synthetic(num_users=60, per_user=10)
    straight = MultitaskModel(**RECIPE).fit(data, 4)
    saved = {}
    MultitaskModel(**RECIPE).fit(data, 2, callbacks=[Checkpoints(2, lambda trainer: saved.update(state=trainer.state()))])
    assert any(name.startswith("average.") for name in saved["state"][0])
    resumed = MultitaskModel(**RECIPE).fit(data, 4, callbacks=[Resume(saved["state"])])
    for (name, a), b in zip(straight.network_.state_dict().items(), resumed.network_.state_dict().values()):
        assert torch.equal(a, b), name


def test_item_item_settings_are_refused_before_any_training():
    data = synthetic()
    model = MultitaskModel(embedding_dim=8, item_item=True)
    with pytest.raises(ConfigError, match="validation set"):
        model.fit(data, 10_000)  # refused at once: no epoch runs
    assert model.history_ == []
    big = synthetic(num_items=MAX_ITEM_ITEM + 1, num_users=3, per_user=2)
    with pytest.raises(ConfigError, match="--no-item-item"):
        MultitaskModel(embedding_dim=8, item_item=True, item_item_l2=1.0, item_item_weight=1.0).fit(big, 10_000)


def test_a_loaded_item_item_model_refits_with_the_l2_and_weight_it_keeps(tmp_path):
    data = synthetic(num_users=60, per_user=10)
    part, valid = data.subset(np.arange(0, 500)), data.subset(np.arange(500, len(data)))
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, item_item=True, seed=6)
    model.fit(part, 3, validation=valid, early_stopping="mrr", patience=2)
    assert float(model.network_.item_item_l2) == model.selection_["item_item_l2"]
    model.save(tmp_path / "m")
    loaded = MultitaskModel.load(tmp_path / "m")
    assert float(loaded.network_.item_item_l2) == model.selection_["item_item_l2"]
    loaded.refit(part.joined(valid), 2)
    assert float(loaded.network_.item_item_weight) == model.selection_["item_item_weight"]
    assert loaded.selection_["refit_epochs"] == 2


def test_a_fit_with_the_path_measures_the_kept_model():
    data = synthetic(num_users=60, per_user=10)
    part, valid = data.subset(np.arange(0, 500)), data.subset(np.arange(500, len(data)))
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, item_item=True, seed=6)
    model.fit(part, 3, validation=valid, test=valid, early_stopping="mrr", patience=2, metrics=("mrr",))
    from mtrec.eval.evaluation import Evaluator

    assert model.final_metrics_["valid_mrr"] == pytest.approx(Evaluator(valid, part, CPU, ["mrr"]).mrr(model.network_.eval()))
    assert model.final_metrics_["valid_mrr"] == pytest.approx(model.selection_["item_item_valid_mrr"])
    plain = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, seed=6)
    assert plain.fit(part, 1, validation=valid).final_metrics_ == {}


def test_mtrec_train_with_the_path_and_no_early_stopping_writes_metrics_its_readers_accept(tmp_path, data_dir, capsys):
    from mtrec.cli import main
    from mtrec.runs import read_metrics

    logdir = tmp_path / "run"
    code = main([
        "train", "--no-progress", "--preset", "seed", "--data-dir", str(data_dir), "--epochs", "1", "--item-item",
        "--item-item-l2", "250", "--item-item-weight", "1", "--logdir", str(logdir),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "the saved model, with its item-item path: test MSE" in out
    metrics = read_metrics(logdir)
    assert metrics["selection"]["item_item_l2"] == 250.0 and metrics["selection"]["item_item_weight"] == 1.0
    assert metrics["model"]["test_mrr"] > metrics["final"]["test_mrr"]  # EASE's path lifts a one-epoch model's ranking


def test_history_dropout_keeps_its_share_and_each_users_mask_whatever_the_split():
    data = synthetic(num_users=200, per_user=20)
    net = history_net(data, encoder_settings={"dropout": 0.3, "seed": 4}).train()
    encoder = net._encoder
    users = torch.arange(200)
    items, _, owner = net.history_bags(users)
    net.history_draws.fill_(7)
    whole = encoder._keep(net, users[owner], items)
    assert abs(float(whole.mean()) - 0.7) < 0.03
    net.history_draws.fill_(7)
    half = encoder._keep(net, users[owner][:1000], items[:1000])
    assert torch.equal(half, whole[:1000])  # a share of the batch draws the same mask for its pairs
    assert not torch.equal(encoder._keep(net, users[owner], items), whole)  # the next pool draws anew
    net.history_draws.fill_(7)
    other = history_net(data, encoder_settings={"dropout": 0.3, "seed": 5})._encoder._keep(net, users[owner], items)
    assert not torch.equal(other, whole)


def test_first_of_each_user_marks_each_users_first_pair():
    from mtrec.nn.batch import first_of_each_user

    users = torch.tensor([4, 4, 2, 4, 2, 9])
    assert first_of_each_user(users).tolist() == [True, False, True, False, False, True]
