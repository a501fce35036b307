"""`mtrec train` and the assignment's `python main.py`: what a run writes, and clear errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import DATA_DIR, ROOT

from mtrec.cli import main


def train(*argv: str) -> int:
    return main(["train", "--no-progress", "--device", "cpu", *argv])


@pytest.mark.slow
def test_main_py_runs_the_assignments_command_and_writes_the_run(tmp_path, data_dir):
    logdir = tmp_path / "run" / "shared=True_LF=0.99_LR=0.01"
    env = {**os.environ, "MTREC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--factorization_weight",
            "0.99",
            "--regression_weight",
            "0.01",
            "--logdir",
            str(logdir),
            "--epochs",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test MSE" in result.stdout and "MRR" in result.stdout
    config = json.loads((logdir / "config.json").read_text())
    assert config["model"]["factorization_weight"] == 0.99 and config["model"]["sharing"] == "hard"
    assert config["data_summary"]["train_size"] == 95_000 and config["data_summary"]["test_size"] == 5_000
    assert config["resolved"] == {"step": "fused", "world_size": 1} and config["speed"]["step"] == "auto"
    metrics = json.loads((logdir / "metrics.json").read_text())
    assert metrics["completed"] is True and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["final"]["test_mrr"] > 0.02
    assert (logdir / "model.safetensors").is_file()
    assert list(logdir.glob("events.out.tfevents.*"))


def test_tensorboard_receives_every_scalar_each_epoch(tmp_path, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train("--epochs", "2", "--no_shared_embeddings", "--data-dir", str(data_dir), "--logdir", str(tmp_path)) == 0
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    metrics = ("mse", "rmse", "mae", "mrr", "ndcg@10", "recall@10", "hr@10", "map@10")
    assert tags == {
        "train/watch_loss",
        "train/rating_loss",
        "train/joint_loss",
        "train/learning_rate",
        *(f"{part}/{m}" for part in ("valid", "test") for m in metrics),
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    mrr = [event.value for event in events.Scalars("test/mrr")]
    assert mrr == pytest.approx([epoch["test_mrr"] for epoch in metrics["epochs"]], rel=1e-6)


def test_hyphen_and_underscore_spellings_are_the_same_option(tmp_path, data_dir):
    assert train("--epochs", "1", "--test-fraction", "0.1", "--embedding_dim", "8", "--data_dir", str(data_dir), "--logdir", str(tmp_path)) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["embedding_dim"] == 8 and config["model"]["layer_sizes"] == [24, 64]
    assert config["data_summary"]["test_size"] == 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--factorization_weight", "-0.5"], "argument --factorization-weight: must be in [0, 1000], got -0.5"),
        (["--factorization_weight", "0", "--regression_weight", "0"], "cannot both be 0"),
        (["--test_fraction", "1.5"], "argument --test-fraction: must be in (0, 1), got 1.5"),
        (["--test_fraction", "0"], "argument --test-fraction: must be in (0, 1), got 0.0"),
        (["--embedding_dim", "16", "--layer_sizes", "96", "64"], "argument --layer-sizes: must start with 48, three times --embedding-dim"),
        (["--embedding_dim", "0"], "must be a positive whole number"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(argv, message, tmp_path, capsys, data_dir):
    with pytest.raises(SystemExit) as exit_info:
        code = train("--epochs", "1", "--data-dir", str(data_dir), "--logdir", str(tmp_path / "r"), *argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_data_dir_without_the_files_says_where_to_put_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTREC_MOVIELENS_BASE_URL", "http://127.0.0.1:9")  # nothing listens: offline
    code = train("--epochs", "1", "--data-dir", str(tmp_path / "empty"), "--logdir", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 1
    assert f"at {tmp_path / 'empty' / 'ml-100k.zip'}" in err and "Traceback" not in err
    assert not (tmp_path / "empty" / "ml-100k").exists()


@pytest.mark.movielens  # copies the real u.data
def test_a_malformed_line_in_u_data_names_the_file_and_line(tmp_path, capsys):
    folder = tmp_path / "data" / "ml-100k"
    shutil.copytree(DATA_DIR / "ml-100k", folder)
    lines = (folder / "u.data").read_text().splitlines(keepends=True)
    lines[41] = "196\t242\tthree\t881250949\n"
    (folder / "u.data").write_text("".join(lines))
    code = train("--epochs", "1", "--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 1
    assert "u.data, line 42: rating 'three' is not a number" in err and "Traceback" not in err


def test_a_run_that_cannot_start_leaves_the_finished_run_in_its_logdir(tmp_path, data_dir, capsys):
    assert train("--epochs", "1", "--data-dir", str(data_dir), "--logdir", str(tmp_path)) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code = train("--epochs", "1", "--data-dir", str(data_dir), "--logdir", str(tmp_path), "--regression_weight", "0", "--factorization_weight", "0")
    assert code == 2 and "cannot both be 0" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_data_without_ratings_trains_the_watch_head_alone_and_says_so(tmp_path, capsys):
    ratings = tmp_path / "clicks.csv"
    rows = [f"u{u},i{(u * 7 + k) % 40}" for u in range(30) for k in range(12)]
    ratings.write_text("user,item\n" + "\n".join(rows) + "\n")
    assert train("--epochs", "2", "--ratings", str(ratings), "--test-fraction", "0.2", "--logdir", str(tmp_path / "r")) == 0
    assert "no rating column" in capsys.readouterr().err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["regression_weight"] == 0.0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["final"]["test_mse"] is None and metrics["final"]["test_mrr"] > 0


def test_an_unwritable_logdir_is_one_line_not_a_traceback(tmp_path, data_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = train("--epochs", "1", "--data-dir", str(data_dir), "--logdir", str(blocker / "run"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and str(blocker) in err
