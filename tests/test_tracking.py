"""`--tracker mlflow`: runs recorded in a real local MLflow store and read back with MlflowClient
(parameters, per-epoch steps, the selected epoch's summary, artifacts, nested trials and runs), and
a store that cannot be used failing in one line before any training."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, random_interactions
from mlflow import MlflowClient

from mtrec.cli import main
from mtrec.config import flatten, preset
from mtrec.errors import ConfigError
from mtrec.runs import train_run
from mtrec.studies.report.collect import find_run_dirs
from mtrec.tracking import CHECK_TIMEOUT, NoTracker, connect, default_uri, metric_key, param_value, tracked_training


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> Path:
    """A small ratings file: tracking, not the data, is the point here."""
    data = random_interactions(num_users=40, num_items=50, n=900)
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating", "timestamp"])
        writer.writerows(
            zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), data.ratings.astype(int).tolist(), data.timestamps.tolist())
        )
    return path


def training_options(ratings: Path, epochs: int = 3) -> list[str]:
    return [
        "--no-progress",
        "--preset",
        "seed",
        "--ratings",
        str(ratings),
        "--epochs",
        str(epochs),
        "--embedding-dim",
        "8",
        "--valid-fraction",
        "0.2",
    ]


def runs_of(uri: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mtrec")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def expected_params(run_dir: Path) -> dict[str, str]:
    return {key: param_value(value) for key, value in flatten(json.loads((run_dir / "config.json").read_text())).items()}


def assert_run_matches_its_directory(client: MlflowClient, run, run_dir: Path) -> None:
    """The tracked run holds the directory's config, every epoch, the selected epoch and its files."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.params == expected_params(run_dir)
    epochs = [record["epoch"] for record in metrics["epochs"]]
    for name in ("train_watch", "train_loss", "valid_mrr", "valid_ndcg@10", "test_mse"):
        values = [record.get(name) for record in metrics["epochs"]]
        measured = [(epoch, value) for epoch, value in zip(epochs, values) if value is not None]
        history = client.get_metric_history(run.info.run_id, metric_key(name))
        assert [m.step for m in history] == [epoch for epoch, _ in measured], name
        assert [m.value for m in history] == pytest.approx([value for _, value in measured]), name
    selected = metrics["selected"]
    summary = {key: value for key, value in run.data.metrics.items() if key.startswith("selected_")}
    assert summary == pytest.approx({metric_key(f"selected_{k}"): v for k, v in selected.items()})
    artifacts = sorted(entry.path for entry in client.list_artifacts(run.info.run_id))
    assert artifacts == sorted(path.name for path in run_dir.iterdir())
    assert run.data.tags["mtrec.run_dir"] == str(run_dir.resolve())


def parent_of_nested_runs(client: MlflowClient, runs: list, parent: str, children: list[str], folder: Path):
    """The first of ``runs``, named ``parent``, once the others are ``children`` nested under it, each
    matching its run directory in ``folder``."""
    first, *nested = runs
    assert first.info.run_name == parent and first.info.status == "FINISHED"
    assert [run.info.run_name for run in nested] == children
    for run in nested:
        assert run.data.tags["mlflow.parentRunId"] == first.info.run_id
        assert_run_matches_its_directory(client, run, folder / run.info.run_name)
    return first


# ---------------------------------------------------------------------------------------------
# mtrec train


@pytest.fixture(scope="module")
def tracked_train(tmp_path_factory, ratings):
    root = tmp_path_factory.mktemp("train") / "run"
    logdir = root / "tracked"
    code = main(["train", *training_options(ratings), "--early-stopping", "mse", "--patience", "1", "--logdir", str(logdir), "--tracker", "mlflow"])
    assert code == 0
    return root, logdir


def test_train_records_the_config_every_epoch_the_selected_epoch_and_the_run_files(tracked_train):
    root, logdir = tracked_train
    client, runs = runs_of(default_uri(root))
    assert [run.info.run_name for run in runs] == [str(logdir)]
    assert_run_matches_its_directory(client, runs[0], logdir)
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert runs[0].data.metrics["selected_epoch"] == metrics["selected"]["epoch"]
    assert runs[0].data.metrics["selection_score"] == pytest.approx(metrics["selection"]["score"])
    assert runs[0].data.tags["mtrec.selection_criterion"] == "mse"
    assert runs[0].data.params["model.embedding_dim"] == "8" and runs[0].data.params["resolved.step"] == "fused"


def test_a_training_refused_before_its_first_epoch_leaves_no_run_in_the_tracker(tracked_train, ratings, capsys):
    root, logdir = tracked_train
    code, _, err = run_cli(
        capsys, "train", *training_options(ratings), "--early-stopping", "mse", "--patience", "1", "--logdir", logdir, "--tracker", "mlflow"
    )
    assert code == 1 and "holds a finished run: give --force" in err
    _, runs = runs_of(default_uri(root))
    assert [run.info.status for run in runs] == ["FINISHED"]


def test_the_default_store_lives_hidden_under_the_run_root(tracked_train):
    root, logdir = tracked_train
    assert (root / ".mlflow" / "mlflow.db").is_file()
    stored = list((root / ".mlflow" / "mlartifacts").rglob("config.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == (logdir / "config.json").read_bytes()
    assert find_run_dirs([root]) == [logdir]  # the report never takes the store's copies for runs


# ---------------------------------------------------------------------------------------------
# mtrec tune and mtrec experiments: nested runs


@pytest.mark.slow
def test_tune_records_each_trial_as_a_run_nested_under_the_study(tmp_path, ratings, monkeypatch, capsys):
    store = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    root = tmp_path / "tune"
    code, out, _ = run_cli(capsys, "tune", *training_options(ratings, epochs=2), "--trials", "2", "--root", root, "--tracker", "mlflow")
    assert code == 0
    client, runs = runs_of(f"sqlite:///{store}")
    study = parent_of_nested_runs(client, runs, f"tune {root}", ["trial-0000", "trial-0001"], root)
    values = [(m.step, m.value) for m in client.get_metric_history(study.info.run_id, "trial_value")]
    assert [step for step, _ in values] == [0, 1]
    assert study.data.metrics["best_value"] == pytest.approx(max(value for _, value in values))
    assert f"best trial {int(study.data.metrics['best_trial'])}," in out
    assert [entry.path for entry in client.list_artifacts(study.info.run_id)] == ["config.json"]
    assert study.data.params["tune.trials"] == "2" and study.data.params["model.embedding_dim"] == "8"
    assert list((store.parent / "mlartifacts").iterdir())  # a local SQLite store keeps its artifacts beside it
    assert not (root / ".mlflow").exists()


@pytest.mark.slow
def test_experiments_record_each_trained_run_under_one_experiment_run(tmp_path, ratings, capsys):
    root = tmp_path / "run"
    code, _, _ = run_cli(
        capsys,
        "experiments",
        *training_options(ratings, epochs=1),
        "--configs",
        "shared-0.5-0.5",
        "separate-0.5-0.5",
        "--seeds",
        "1",
        "--root",
        root,
        "--out",
        tmp_path / "report",
        "--tracker",
        "mlflow",
    )
    assert code == 0
    client, runs = runs_of(default_uri(root))
    parent_of_nested_runs(client, runs, f"experiments {root}", ["shared-0.5-0.5/seed-0", "separate-0.5-0.5/seed-0"], root)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, before any training, nothing written


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["train", "experiments", "tune"])
def test_an_unreachable_tracking_server_fails_before_training_in_one_line(tmp_path, ratings, capsys, command):
    uri = f"http://127.0.0.1:{closed_port()}"
    root = tmp_path / "run"
    where = ["--logdir", root / "a"] if command == "train" else ["--root", root]
    started = time.monotonic()
    code, out, err = run_cli(capsys, command, *training_options(ratings), *where, "--tracker", "mlflow", "--tracking-uri", uri)
    assert time.monotonic() - started < CHECK_TIMEOUT + 20
    assert code == 2 and out == ""
    assert err == (
        f"mtrec {command}: error: the MLflow tracking store {uri} cannot be reached (Connection refused): "
        "start it, or give another --tracking-uri (or MLFLOW_TRACKING_URI)\n"
    )
    assert not root.exists()


def test_a_tracking_uri_mlflow_cannot_use_is_refused_in_one_line(tmp_path, ratings, capsys):
    code, _, err = run_cli(
        capsys, "train", *training_options(ratings), "--logdir", tmp_path / "a", "--tracker", "mlflow", "--tracking-uri", "foo://bar"
    )
    assert code == 2
    assert err == (
        "mtrec train: error: MLflow cannot use the tracking URI 'foo://bar' (scheme 'foo'): give "
        "http(s)://HOST:PORT of a tracking server, sqlite:///PATH, or another store MLflow supports\n"
    )
    assert not (tmp_path / "a").exists()


def test_a_missing_mlflow_package_names_the_extra(tmp_path, ratings, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the package gives: ImportError
    code, _, err = run_cli(capsys, "train", *training_options(ratings), "--logdir", tmp_path / "a", "--tracker", "mlflow")
    assert code == 2
    assert err == 'mtrec train: error: --tracker mlflow needs MLflow: pip install "mtrec[mlflow]"\n'
    assert not (tmp_path / "a").exists()


def test_a_tracking_uri_without_a_tracker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="give --tracker mlflow too"):
        connect(None, "sqlite:///x.db", tmp_path)
    assert connect(None, None, tmp_path) is None and list(tmp_path.iterdir()) == []


class FailingStore(NoTracker):
    """A tracker whose store goes away after the run started: every metric it is sent fails."""

    uri = "sqlite:///gone.db"

    def start_run(self, name, parent=None):
        return "run-1"

    def log_metrics(self, run, metrics, step):
        raise OSError("disk I/O error")


def test_a_store_that_fails_mid_training_stops_tracking_with_one_warning_and_training_finishes(tmp_path):
    data = random_interactions()
    config = preset("seed").replace(epochs=3, embedding_dim=8, layer_sizes=None)
    with pytest.warns(UserWarning) as caught, tracked_training(FailingStore(), config, tmp_path / "run") as callback:
        metrics = train_run(config, data, None, data, tmp_path / "run", callbacks=[callback])
    assert [str(w.message) for w in caught] == [
        (f"tracking run {tmp_path / 'run'} in sqlite:///gone.db stopped (disk I/O error); the run directory still records everything")
    ]
    assert [epoch["epoch"] for epoch in metrics["epochs"]] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["completed"] is True


# ---------------------------------------------------------------------------------------------
# Distributed: process 0 alone connects and logs


def torchrun_train(tmp_path: Path, ratings: Path, *argv: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{ROOT / 'src'}"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "mtrec",
        "train",
        *training_options(ratings, epochs=2),
        "--threads",
        "1",
        "--tracker",
        "mlflow",
        *argv,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_only_process_0_of_a_distributed_run_logs(tmp_path, ratings):
    root = tmp_path / "run"
    result = torchrun_train(tmp_path, ratings, "--logdir", str(root / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tracked in MLflow:") == 1
    client, runs = runs_of(default_uri(root))
    assert len(runs) == 1
    assert_run_matches_its_directory(client, runs[0], root / "two")


@pytest.mark.slow
def test_an_unreachable_store_stops_every_process_of_a_distributed_run_before_training(tmp_path, ratings):
    uri = f"http://127.0.0.1:{closed_port()}"
    result = torchrun_train(tmp_path, ratings, "--logdir", str(tmp_path / "run" / "two"), "--tracking-uri", uri)
    assert result.returncode != 0
    message = f"mtrec train: error: the MLflow tracking store {uri} cannot be reached (Connection refused)"
    assert result.stderr.count(message) == 2  # process 0's refusal, reported by both
    assert not (tmp_path / "run").exists()
