"""Honest model selection: validation sets carved by the split's own rule, early stopping that keeps
the best validation epoch's weights and never reads the test set, learning-rate schedules,
sampling options, presets, the tuner, and the bad values of every new option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_interactions

from mtrec.cli import main
from mtrec.config import RunConfig, preset
from mtrec.data.spec import DataSpec
from mtrec.errors import ConfigError
from mtrec.eval.evaluation import Evaluator
from mtrec.model import MultitaskModel
from mtrec.runs import METRICS_FILENAME
from mtrec.train.loop import EarlyStopping, joint_score
from mtrec.train.sampling import EpochSampler


def three_way(seed=0, n=1500):
    data = random_interactions(num_users=60, num_items=70, n=n, seed=seed)
    return DataSpec(seed=seed, valid_fraction=0.1, test_fraction=0.1).split_data(data)


# ---------------------------------------------------------------------------------------------
# Validation sets


def test_each_split_carves_its_validation_set_by_its_own_rule(ml100k):
    for spec, check in (
        (DataSpec(valid_fraction=0.05), lambda train, valid, test: len(valid) == round(0.05 * 95_000)),
        (DataSpec(split="user", leave_k=1, valid_k=1), lambda train, valid, test: np.all(np.bincount(valid.users, minlength=943) <= 1)),
        (DataSpec(split="temporal", last_k=1, valid_k=1), lambda train, valid, test: _latest_per_user(train, valid)),
    ):
        train, valid, test = spec.split_data(ml100k)
        assert len(train) + len(valid) + len(test) == len(ml100k)
        keys = [set(zip(part.users.tolist(), part.items.tolist())) for part in (train, valid, test)]
        assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
        assert check(train, valid, test), spec


def _latest_per_user(train, valid) -> bool:
    """Every validation interaction is its user's latest outside the test set."""
    latest_train = np.full(train.num_users, -1)
    np.maximum.at(latest_train, train.users, train.timestamps)
    return bool(np.all(valid.timestamps >= latest_train[valid.users]))


def test_a_canonical_splits_validation_set_is_a_share_of_its_base(data_dir):
    train, valid, test = DataSpec(split="u1", valid_fraction=0.1).load_split(data_dir)
    assert (len(train), len(valid), len(test)) == (72_000, 8_000, 20_000)


def test_the_validation_draw_does_not_repeat_the_test_draw():
    data = random_interactions(num_users=60, num_items=70, n=2000, seed=1)
    train, valid, test = DataSpec(valid_fraction=0.5, test_fraction=0.5, seed=3).split_data(data)
    assert abs(len(valid) - len(test) / 2) <= 1  # half of the rest, a different half than the test draw's order


# ---------------------------------------------------------------------------------------------
# Early stopping


def test_early_stopping_keeps_the_best_validation_epochs_weights_and_stops_after_patience():
    train, valid, test = three_way()
    model = MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, seed=1)
    model.fit(train, 60, validation=valid, test=test, early_stopping="mse", patience=3)
    valid_mse = [r.metrics["valid_mse"] for r in model.history_]
    best = int(np.argmin(valid_mse)) + 1
    assert model.selected_epoch_ == best and len(model.history_) == best + 3 < 60
    held = Evaluator(valid, train, metrics=["mse"]).evaluate(model.network_)
    assert held["mse"] == valid_mse[best - 1]  # the network holds the chosen epoch's weights
    tested = Evaluator(test, [train, valid], metrics=["mse"]).evaluate(model.network_)
    assert tested["mse"] == model.history_[best - 1].metrics["test_mse"]


def test_selection_never_reads_the_test_set():
    train, valid, test = three_way()
    other_test = random_interactions(num_users=60, num_items=70, n=300, seed=9)
    runs = [
        MultitaskModel(embedding_dim=8, batch_size=64, learning_rate=0.05, seed=1).fit(
            train, 30, validation=valid, test=t, early_stopping="joint", patience=3
        )
        for t in (test, other_test)
    ]
    assert runs[0].selected_epoch_ == runs[1].selected_epoch_
    for a, b in zip(runs[0].network_.parameters(), runs[1].network_.parameters()):
        assert torch.equal(a, b)


def test_the_joint_criterion_is_the_mean_relative_improvement_over_the_reference():
    reference = {"mse": 1.25, "mrr": 0.05}
    assert joint_score({"mse": 1.0, "mrr": 0.1}, reference) == pytest.approx((0.2 + 1.0) / 2)
    assert joint_score({"mse": float("nan"), "mrr": 0.075}, reference) == pytest.approx(0.5)  # no ratings: ranking alone
    stopping = EarlyStopping("joint", 2, reference)
    assert stopping.score({"mse": 1.25, "mrr": 0.05}) == 0
    assert EarlyStopping("mse", 2).score({"mse": 0.9}) == -0.9 and EarlyStopping("ndcg@10", 2).score({"ndcg@10": 0.3}) == 0.3


def test_the_saved_model_and_metrics_json_hold_the_chosen_epoch(tmp_path):
    from mtrec.runs import train_run

    train, valid, test = three_way()
    config = RunConfig(
        model={"embedding_dim": 8, "batch_size": 64, "learning_rate": 0.05, "seed": 1},
        data=DataSpec(valid_fraction=0.1),
        epochs=40,
        early_stopping="mse",
        patience=3,
    )
    metrics = train_run(config, train, valid, test, tmp_path)
    selected = metrics["selected"]
    chosen = metrics["epochs"][selected["epoch"] - 1]
    assert selected["valid_mse"] == chosen["valid_mse"] and selected["test_mse"] == chosen["test_mse"]
    assert metrics["completed"] and metrics["final"]["epoch"] == selected["epoch"] + 3
    loaded = MultitaskModel.load(tmp_path)
    assert loaded.selected_epoch_ == selected["epoch"]
    assert Evaluator(test, [train, valid], metrics=["mse"]).evaluate(loaded.network_)["mse"] == chosen["test_mse"]


# ---------------------------------------------------------------------------------------------
# Schedules and sampling


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", [0.01] * 6),
        ("exponential", [0.01 * 0.5**e for e in range(6)]),
        ("step", [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]),
        ("cosine", [0.01 * (1 + np.cos(np.pi * e / 6)) / 2 for e in range(6)]),
    ],
)
@pytest.mark.parametrize("step", ["fused", "autograd"])
def test_learning_rate_schedules_set_each_epochs_rate(schedule, expected, step):
    model = MultitaskModel(embedding_dim=4, learning_rate=0.01, lr_schedule=schedule, lr_gamma=0.5, lr_step=2, step=step)
    model.fit(random_interactions(), 6)
    assert [r.learning_rate for r in model.history_] == pytest.approx(expected)


def test_negatives_can_exclude_the_users_positives_and_come_several_per_pair():
    data = random_interactions(num_users=20, num_items=30, n=300, seed=2)
    sampler = EpochSampler(data, seed=0, device=torch.device("cpu"), with_ratings=False, negatives=5, exclude_positives=True)
    users, items, negatives, _ = sampler.draw()
    assert negatives.shape == (300, 5)
    positives = set(zip(data.users.tolist(), data.items.tolist()))
    assert not any((u, j) in positives for u, row in zip(users.tolist(), negatives.tolist()) for j in row)
    plain = EpochSampler(data, seed=0, device=torch.device("cpu"), with_ratings=False, negatives=5).draw()[2]
    assert any((u, j) in positives for u, row in zip(users.tolist(), plain.tolist()) for j in row)


@pytest.mark.parametrize("step", ["fused", "autograd"])
def test_every_training_option_trains_with_both_steps(step):
    train, valid, test = three_way()
    model = MultitaskModel(
        embedding_dim=8,
        watch_loss="logsigmoid",
        negatives=3,
        exclude_positives=True,
        rating_bias=True,
        l2_embeddings=1e-5,
        l2_mlp=1e-4,
        lr_schedule="exponential",
        step=step,
        seed=2,
    )
    model.fit(train, 3, validation=valid, test=test)
    assert model.step_ == step and np.isfinite(model.history_[-1].metrics["test_mse"])


# ---------------------------------------------------------------------------------------------
# Presets


def cli_train(*argv: str) -> int:
    return main(["train", "--no-progress", "--device", "cpu", *argv])


def test_mtrec_train_defaults_to_the_quality_preset_and_options_override_it(tmp_path, data_dir):
    ratings = tmp_path / "mine.csv"
    rows = [f"u{u},i{(u * 7 + k) % 50},{1 + (u + k) % 5}" for u in range(60) for k in range(20)]
    ratings.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    assert cli_train("--ratings", str(ratings), "--epochs", "3", "--l2", "0", "--logdir", str(tmp_path / "r")) == 0
    config = RunConfig.load(tmp_path / "r")
    quality = preset("quality")
    assert config.early_stopping == "joint" and config.data.split.valid_fraction == quality.data.split.valid_fraction
    assert config.model["learning_rate"] == quality.model["learning_rate"] and config.model["l2"] == 0
    assert config.epochs == 3


def test_the_quality_preset_carves_validation_by_the_splits_rule():
    assert preset("quality", split="user", leave_k=2).data.split.valid_k == 2
    assert preset("quality", split="temporal", last_k=3).data.split.valid_k == 3
    assert preset("quality", split="random").data.split.valid_fraction == 0.05
    assert preset("seed") == RunConfig()
    with pytest.raises(ConfigError, match="unknown preset 'best'; use one of seed, quality"):
        preset("best")


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--patience", "-1"], "--patience: must be a positive whole number, got -1"),
        (["--early-stopping", "auc"], "unknown early-stopping criterion 'auc'; use one of joint, mse, rmse"),
        (["--lr-schedule", "linear"], "invalid choice: 'linear' (choose from 'constant', 'exponential', 'cosine', 'step')"),
        (["--k", "0"], "--k: must be a positive whole number, got 0"),
        (["--negatives", "0"], "argument --negatives: must be a whole number from 1 to 1000, got 0"),
        (["--lr-gamma", "1.5"], "argument --lr-gamma: must be in (0, 1], got 1.5"),
        (["--preset", "seed", "--early-stopping", "mrr"], "--early-stopping mrr needs a validation set: give --valid-fraction"),
        (["--split", "user", "--test-fraction", "0.5", "--valid-fraction", "0.5"], "users would be left without training data"),
        (["--watch-loss", "hinge"], "invalid choice: 'hinge' (choose from 'bpr', 'logsigmoid', 'sampled-softmax', 'softmax')"),
    ],
)
def test_bad_values_of_the_new_options_are_one_line_errors(argv, message, tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(cli_train("--data-dir", str(data_dir), "--logdir", str(tmp_path / "r"), *argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_an_early_stopped_run_is_a_complete_run_that_experiments_reuse(tmp_path, data_dir, capsys):
    argv = [
        "experiments",
        "--configs",
        "shared-0.99-0.01",
        "--seeds",
        "1",
        "--preset",
        "quality",
        "--epochs",
        "40",
        "--patience",
        "1",
        "--root",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "report"),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "shared-0.99-0.01" / "seed-0" / METRICS_FILENAME).read_text())
    assert metrics["completed"] and metrics["final"]["epoch"] < 40
    assert main(argv) == 0 and "0 runs trained, 1 reused" in capsys.readouterr().out
    assert "the epoch its validation joint criterion chose" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# The tuner


def test_tune_searches_on_validation_and_writes_a_config_that_train_runs(tmp_path, capsys):
    ratings = tmp_path / "mine.csv"
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(50) for i in rng.choice(60, 25, replace=False)]
    ratings.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    root = tmp_path / "tune"
    argv = ["tune", "--trials", "3", "--root", str(root), "--ratings", str(ratings), "--epochs", "4", "--batch-size", "256", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 trials in the study" in out and str(root / "best" / "config.json") in out
    trials = sorted(root.glob("trial-*"))
    assert len(trials) == 3
    for trial in trials:
        metrics = json.loads((trial / METRICS_FILENAME).read_text())
        assert metrics["completed"] and not any(k.startswith("test_") and v is not None for e in metrics["epochs"] for k, v in e.items())
    best = RunConfig.load(root / "best" / "config.json")
    assert best.early_stopping == "joint" and best.data.source.ratings == str(ratings)
    assert cli_train("--config", str(root / "best" / "config.json"), "--logdir", str(tmp_path / "best-run")) == 0
    assert main([*argv[:2], "2", *argv[3:]]) == 0 and "5 trials in the study" in capsys.readouterr().out  # resumed


def test_tune_without_optuna_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna":
            raise ImportError("No module named 'optuna'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    assert main(["tune", "--root", str(tmp_path / "t")]) == 2
    assert 'mtrec tune needs Optuna: pip install -e ".[tune]"' in capsys.readouterr().err
