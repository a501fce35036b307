"""Run configs: what the command line means as a RunConfig, JSON and command-line round trips, one
definition of "the same run", reruns from config.json, configs of mtrec 0.1, and the
estimator's scikit-learn contract."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from conftest import random_interactions

from mtrec.cli import main
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.config import RunConfig
from mtrec.data.spec import DataSpec
from mtrec.errors import ConfigError, DataError
from mtrec.model import MultitaskModel
from mtrec.runs import METRICS_FILENAME, is_finished


def parse(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return run_config(parser.parse_args(list(argv)))


def without_timing(metrics: dict) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in metrics["epochs"]]


def test_the_command_line_and_the_library_describe_the_same_run():
    from_cli = parse("--split", "user", "--leave-k", "1", "--embedding-dim", "8", "--batch-size", "1024", "--seed", "4")
    in_python = RunConfig(
        model={"embedding_dim": 8, "batch_size": 1024, "learning_rate": 0.004, "seed": 4},
        data=DataSpec(split="user", leave_k=1),
    )
    assert from_cli == in_python and from_cli.same_run(in_python)
    assert from_cli.model["layer_sizes"] == [24, 64] and from_cli.data.seed == 4


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("--no-shared-embeddings", "--factorization-weight", "0.99", "--regression-weight", "0.01", "--l2", "1e-05"),
        ("--split", "temporal", "--last-k", "2", "--valid-k", "1", "--layer-sizes", "96", "32", "8", "--epochs", "7"),
        (
            "--ratings",
            "r.csv",
            "--items",
            "i.csv",
            "--user-col",
            "who",
            "--sep",
            ";",
            "--rating-scale",
            "0.5",
            "5",
            "--split",
            "temporal",
            "--cutoff",
            "1998-03-01",
            "--metrics",
            "mse",
            "mrr",
            "--k",
            "5",
            "20",
        ),
        ("--split", "u3", "--valid-fraction", "0.1", "--seed", "3", "--eval-every", "5"),
    ],
)
def test_a_config_survives_json_and_its_own_command_line(argv):
    config = parse(*argv)
    assert RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert parse(*config.cli_options()) == config


def test_the_thread_count_and_step_make_another_run_and_the_device_and_metrics_recorded_do_not():
    """Each sums floats in another order, so the last digits of the numbers differ (issue 19: threads 1
    and 2 gave test MSE 0.8711871912525978 and 0.8711871946860774 on an AVX-512 machine)."""
    base = parse("--epochs", "3")
    assert not base.same_run(parse("--epochs", "4"))
    assert base.differences(parse("--epochs", "3", "--l2", "1e-05")) == ["model.l2: 0.0 here, 1e-05 there"]
    assert base.differences(parse("--epochs", "3", "--threads", "2")) == ["speed.num_threads: null here, 2 there"]
    for option in (["--threads", "1"], ["--step", "autograd"]):
        other = parse("--epochs", "3", *option)
        assert not base.same_run(other) and parse(*other.cli_options()) == other
        assert option[0] in other.cli_options()
    assert parse("--threads", "1").to_json()["speed"]["num_threads"] == 1
    assert base.same_run(parse("--epochs", "3", "--metrics", "mse"))
    # auto is what it resolves to here: the step the model takes, the device kind this machine has
    assert base.same_run(parse("--epochs", "3", "--step", "fused")) and parse("--step", "auto").to_json()["speed"]["step"] == "auto"
    # the device is recorded, not compared: "auto" would mean another device on another machine
    assert base.same_run(parse("--epochs", "3", "--device", "auto")) and base.same_run(parse("--epochs", "3", "--device", "cpu"))


def test_a_batch_size_alone_scales_the_learning_rate_and_an_explicit_one_wins():
    assert parse("--batch-size", "4096").model["learning_rate"] == pytest.approx(0.016)
    assert parse("--batch-size", "4096", "--learning-rate", "0.002").model["learning_rate"] == 0.002


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--valid-fraction", "0.1", "--split", "user", "--leave-k", "1"), "--valid-fraction does not fit a test set of K"),
        (("--valid-k", "1"), "--valid-k applies to --split user --leave-k"),
        (("--valid-fraction", "1.5"), r"argument --valid-fraction: must be in \(0, 1\), got 1.5"),
        (("--split", "user", "--test-fraction", "0.6", "--valid-fraction", "0.4"), "users would be left without training"),
        (("--factorization-weight", "1e308"), r"argument --factorization-weight: must be in \[0, 1000\], got 1e\+308"),
    ],
)
def test_conflicting_or_out_of_range_settings_are_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


# ---------------------------------------------------------------------------------------------
# Reruns and earlier versions


def train(*argv: str) -> int:
    return main(["train", "--no-progress", "--device", "cpu", *argv])


@pytest.mark.slow
def test_train_config_reruns_a_finished_run_bit_for_bit(tmp_path, data_dir):
    first = tmp_path / "first"
    options = [
        "--epochs",
        "2",
        "--split",
        "user",
        "--leave-k",
        "1",
        "--embedding-dim",
        "8",
        "--batch-size",
        "2048",
        "--l2",
        "1e-5",
        "--seed",
        "5",
        "--no-shared-embeddings",
        "--metrics",
        "mse",
        "mrr",
        "ndcg",
    ]
    assert train(*options, "--data-dir", str(data_dir), "--logdir", str(first)) == 0
    again = tmp_path / "again"
    assert train("--config", str(first / "config.json"), "--data-dir", str(data_dir), "--logdir", str(again)) == 0
    original = json.loads((first / METRICS_FILENAME).read_text())
    assert without_timing(json.loads((again / METRICS_FILENAME).read_text())) == without_timing(original)
    assert RunConfig.load(again).same_run(RunConfig.load(first))
    # Options beside --config change those settings of it, and only those.
    changed = tmp_path / "changed"
    assert train("--config", str(first), "--epochs", "1", "--data-dir", str(data_dir), "--logdir", str(changed)) == 0
    assert RunConfig.load(first).differences(RunConfig.load(changed)) == ["training.epochs: 2 here, 1 there"]


def test_a_config_that_is_not_one_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model": 1')
    assert train("--config", str(tmp_path / "config.json")) == 1
    assert f"{tmp_path / 'config.json'}: not a readable run config" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"settings": {}}')
    with pytest.raises(DataError, match="not an mtrec run config"):
        RunConfig.load(tmp_path)


#: config.json as mtrec 0.1 wrote it for `mtrec experiments --epochs 2` (seed 1, shared 0.5/0.5).
CONFIG_0_1 = {
    "model": {
        "embedding_dim": 32, "layer_sizes": [96, 64], "embedding_sharing": True, "factorization_weight": 0.5,
        "regression_weight": 0.5, "batch_size": 256, "learning_rate": 0.001, "l2": 0.0, "seed": 1, "device": "auto",
        "num_threads": 1,
    },
    "epochs": 2,
    "eval_every": 1,
    "data": {
        "dataset": "100k", "name": "ml-100k", "split": {"method": "random", "test_fraction": 0.05, "seed": 1},
        "num_users": 943, "num_items": 1682, "train_size": 95000, "test_size": 5000, "has_ratings": True,
        "rating_scale": [1.0, 5.0],
        "cold_start": {"test_users": 800, "test_items": 1000, "test_ratings": 5000, "cold_users": 0, "cold_items": 10,
                       "cold_ratings": 10},
    },
    "mtrec_version": "0.1.0",
}  # fmt: skip


def test_a_config_of_mtrec_0_1_reads_as_the_same_run_as_todays_options():
    old = RunConfig.from_json(CONFIG_0_1)
    assert old.same_run(parse("--epochs", "2", "--seed", "1", "--threads", "1"))
    assert old.metrics == ("mse", "mrr") and old.model["num_threads"] == 1


#: mtrec 0.1's and 0.2's names of the tasks' training losses.
OLD_NAMES = {"train_watch": "train_bpr", "train_rating": "train_mse"}


@pytest.mark.slow
def test_experiments_and_report_take_finished_runs_of_mtrec_0_1_as_they_are(tmp_path, data_dir, capsys):
    """A run directory written by mtrec 0.1 (its config.json and metrics.json) is reused, not retrained."""
    run_dir = tmp_path / "run" / "shared-0.5-0.5" / "seed-1"
    options = ["--epochs", "2", "--seed", "1", "--threads", "1", "--data-dir", str(data_dir), "--no-progress"]
    assert train(*options, "--logdir", str(run_dir), "--metrics", "mse", "mrr") == 0
    metrics = json.loads((run_dir / METRICS_FILENAME).read_text())
    old_metrics = {
        "completed": True,
        "epochs": [
            {
                OLD_NAMES.get(k, k): v
                for k, v in e.items()
                if k in ("epoch", "train_watch", "train_rating", "train_loss", "test_mse", "test_mrr", "seconds")
            }
            for e in metrics["epochs"]
        ],
        "final": metrics["final"],
        "best_test_mse": metrics["oracle_best_test_mse"],
        "best_test_mrr": metrics["oracle_best_test_mrr"],
    }
    (run_dir / METRICS_FILENAME).write_text(json.dumps(old_metrics))
    (run_dir / "config.json").write_text(json.dumps(CONFIG_0_1))
    before = (run_dir / METRICS_FILENAME).read_bytes()
    assert is_finished(run_dir, parse("--epochs", "2", "--seed", "1", "--threads", "1"))
    assert not is_finished(run_dir, parse("--epochs", "2", "--seed", "1", "--threads", "2"))  # another thread count
    argv = [
        "experiments",
        "--configs",
        "shared-0.5-0.5",
        "--seeds",
        "1",
        "--root",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "report"),
        *options,
    ]
    assert main(argv) == 0
    assert "0 runs trained, 1 reused" in capsys.readouterr().out
    assert (run_dir / METRICS_FILENAME).read_bytes() == before
    assert "shared, λF=0.5, λR=0.5" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# The estimator's contract


def test_get_params_follows_the_constructor_and_set_params_checks():
    import inspect

    model = MultitaskModel(embedding_dim=8, l2=1e-5)
    names = [n for n in inspect.signature(MultitaskModel.__init__).parameters if n != "self"]
    assert list(model.get_params()) == names
    assert model.set_params(batch_size=64, step="autograd") is model and model.batch_size == 64
    with pytest.raises(ConfigError, match="batch_size: must be a positive whole number, got 0"):
        model.set_params(batch_size=0)
    assert model.batch_size == 64  # a refused change changes nothing
    with pytest.raises(ConfigError, match="unknown parameter colour"):
        model.set_params(colour="red")


def test_the_estimator_is_clonable_by_scikit_learn():
    from sklearn.base import clone

    model = MultitaskModel(embedding_dim=8, layer_sizes=[24, 16], l2=1e-5, seed=3)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    data = random_interactions()
    fitted = model.fit(data, 1)
    assert clone(fitted).network_ is None  # a clone is unfitted


def test_a_run_dir_copied_elsewhere_is_still_the_same_run(tmp_path):
    data, test = random_interactions(seed=1), random_interactions(seed=2)
    from mtrec.runs import train_run

    config = RunConfig(model={"embedding_dim": 4}, epochs=1)
    train_run(config, data, None, test, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert is_finished(tmp_path / "b", config) and not is_finished(tmp_path / "b", config.replace(epochs=2))
    assert Path(tmp_path / "b" / "config.json").is_file()
