"""Distributed training with torchrun on this machine: 2 processes x 1 thread, gloo, 127.0.0.1.

Every process holds the same model and optimiser state, bit for bit; 2 processes train what 1
process trains at the same global batch (uneven batches included); distributed evaluation gives
the single-process metrics; a run resumes from its checkpoint after a kill, also when torchrun
restarts the workers; and a process that dies or hangs ends the job within its timeout, naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT / 'src'}"}


def torchrun(*argv: str, processes: int = 2, restarts: int = 0, timeout: float = 300, extra_env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", f"--max-restarts={restarts}", *argv]
    return subprocess.run(command, capture_output=True, text=True, env={**environment(), **(extra_env or {})}, timeout=timeout)


def ratings_file(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(60) for i in rng.choice(80, 30, replace=False)]
    path = folder / "ratings.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


def without_timing(metrics: dict) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in metrics["epochs"]]


@pytest.mark.parametrize("batch_size", [128, 101])  # 101: the global batches split unevenly, and so does the last
def test_every_process_holds_the_same_state_and_evaluation_is_exact(tmp_path, batch_size):
    result = torchrun(str(TESTS / "dist_worker.py"), str(tmp_path), str(batch_size))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["init"] == ranks[1]["init"]
    assert len(ranks[0]["epochs"]) == 3 and ranks[0]["epochs"] == ranks[1]["epochs"]  # bit for bit, every epoch
    assert ranks[0]["history"] == ranks[1]["history"]
    for rank in ranks:
        assert rank["distributed_eval"] == rank["single_eval"]  # exactly


def test_closing_joins_the_process_groups_threads_after_training(tmp_path):
    """A gloo thread left running after close() freed the last collective's tensors while the
    interpreter was being finalized: SIGABRT, "terminate called without an active exception", in
    about 1 finished 2-process run in 100 (torch.distributed._shard, imported by torch.optim's first
    optimizer after the group existed, kept the group alive)."""
    result = torchrun(str(TESTS / "dist_worker.py"), str(tmp_path), "128")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert not [name for name in threads if "gloo" in name], threads


def test_a_gradient_method_trains_alike_on_every_process(tmp_path):
    result = torchrun(str(TESTS / "dist_worker.py"), str(tmp_path), "128", "pcgrad")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["epochs"] == ranks[1]["epochs"]


@pytest.mark.parametrize("sharing", ["hard", "separate"])
def test_the_row_exchange_keeps_every_process_alike_and_trains_what_the_dense_one_trains(tmp_path, sharing):
    histories = {}
    for exchange in ("dense", "rows"):
        out = tmp_path / exchange
        out.mkdir()
        result = torchrun(str(TESTS / "dist_worker.py"), str(out), "101", "fixed", exchange, sharing)
        assert result.returncode == 0, result.stderr[-3000:]
        ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["epochs"] == ranks[1]["epochs"]  # bit for bit across processes, every epoch
        assert (ranks[0]["row_exchanges"] > 0) == (exchange == "rows")
        histories[exchange] = ranks[0]["history"]
    for dense, rows in zip(histories["dense"], histories["rows"], strict=True):
        for key, value in dense.items():
            if isinstance(value, float):
                assert rows[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("batch_size", ["128", "101"])
def test_two_processes_train_what_one_trains_at_the_same_global_batch(tmp_path, batch_size):
    ratings = ratings_file(tmp_path)
    argv = ["--ratings", str(ratings), "--epochs", "4", "--batch-size", batch_size, "--embedding-dim", "8", "--no-progress", "--threads", "1"]
    one = subprocess.run(
        [sys.executable, "-m", "mtrec", "train", *argv, "--logdir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = torchrun("-m", "mtrec", "train", *argv, "--logdir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    for x, y in zip(without_timing(a), without_timing(b)):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), key
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and config["resolved"]["dist_backend"] == "gloo"
    assert not list((tmp_path).glob(".two.staging"))


def test_a_run_killed_mid_way_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    ratings = ratings_file(tmp_path)
    argv = [
        "train",
        "--ratings",
        str(ratings),
        "--epochs",
        "6",
        "--batch-size",
        "128",
        "--embedding-dim",
        "8",
        "--no-progress",
        "--threads",
        "1",
        "--checkpoint-every",
        "2",
    ]
    whole = subprocess.run(
        [sys.executable, "-m", "mtrec", *argv, "--logdir", str(tmp_path / "whole")], capture_output=True, text=True, env=environment(), timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.run(
        [sys.executable, str(TESTS / "faults.py"), "step", "55", "KILL", *argv, "--logdir", str(tmp_path / "cut")],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert killed.returncode == -9
    assert (tmp_path / ".cut.staging" / "checkpoint.safetensors").is_file() and not (tmp_path / "cut").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "mtrec", *argv, "--logdir", str(tmp_path / "cut"), "--resume"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("whole", "cut"))
    assert without_timing(a) == without_timing(b)
    import torch

    from mtrec.io.checkpoint import load_record

    first, second = load_record(tmp_path / "whole"), load_record(tmp_path / "cut")
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert not (tmp_path / "cut" / "checkpoint.safetensors").exists()  # a finished run keeps no checkpoint


def test_workers_torchrun_restarts_resume_instead_of_starting_over(tmp_path):
    ratings = ratings_file(tmp_path)
    argv = [
        "train",
        "--ratings",
        str(ratings),
        "--epochs",
        "6",
        "--batch-size",
        "128",
        "--embedding-dim",
        "8",
        "--no-progress",
        "--threads",
        "1",
        "--checkpoint-every",
        "2",
    ]
    whole = torchrun("-m", "mtrec", *argv, "--logdir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    restarted = torchrun(
        str(TESTS / "faults.py"), "step", "40", "KILL", *argv, "--logdir", str(tmp_path / "again"), restarts=1, extra_env={"MTREC_FAULT_RANK": "1"}
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("whole", "again"))
    assert without_timing(a) == without_timing(b)


@pytest.mark.parametrize("fault", ["KILL", "HANG"])
def test_a_process_that_dies_or_hangs_ends_the_job_within_the_timeout(tmp_path, fault):
    ratings = ratings_file(tmp_path)
    argv = [
        "train",
        "--ratings",
        str(ratings),
        "--epochs",
        "50",
        "--batch-size",
        "64",
        "--embedding-dim",
        "8",
        "--no-progress",
        "--threads",
        "1",
        "--dist-timeout",
        "15",
        "--logdir",
        str(tmp_path / "run"),
    ]
    started = time.perf_counter()
    result = torchrun(str(TESTS / "faults.py"), "step", "20", fault, *argv, extra_env={"MTREC_FAULT_RANK": "1"}, timeout=240)
    elapsed = time.perf_counter() - started
    assert result.returncode != 0 and elapsed < 120
    if fault == "KILL":
        assert "rank" in result.stderr and "1" in result.stderr  # torchrun names the failed worker
    else:
        assert "process 0 of 2: summing gradients failed (another process died or did not answer within 15 s)" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing unfinished looks finished
