"""A hostile user's inputs and faults: a diverged run never looks finished, a finished run is never
overwritten without --force, a failed run never mixes with an earlier one, damaged runs are not
reused, one request cannot take unbounded memory, oversized models and seeds are one-line errors,
every read error names its file, and kills at any point leave finished runs intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from mtrec.cli import main
from mtrec.runs import METRICS_FILENAME, inspect_run, staging_dir

TESTS = Path(__file__).parent


def small_ratings(path: Path, users: int = 40, per_user: int = 15) -> Path:
    rows = [f"u{u},i{(u * 7 + k) % 50},{1 + (u + k) % 5}" for u in range(users) for k in range(per_user)]
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


def train(*argv: str) -> int:
    return main(["train", "--no-progress", "--device", "cpu", "--preset", "seed", *argv])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """A finished run of a small ratings file, and its bytes."""
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "run"
    assert train("--ratings", str(ratings), "--epochs", "2", "--embedding-dim", "8", "--logdir", str(run_dir)) == 0
    return ratings, run_dir, snapshot(run_dir)


# ---------------------------------------------------------------------------------------------
# 1. Divergence


@pytest.mark.parametrize("argv", [["--learning-rate", "1e6"], ["--learning-rate", "1e6", "--regression-weight", "1000"]])
def test_a_diverged_run_stops_with_the_epoch_step_and_loss_and_is_not_saved(argv, finished, capsys):
    ratings, run_dir, before = finished
    code = train("--ratings", str(ratings), "--epochs", "5", "--logdir", str(run_dir), "--force", *argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "training diverged in epoch " in err and " became " in err and "Lower the learning rate (now 1e+06)" in err
    assert snapshot(run_dir) == before  # the last good run stays, byte for byte
    assert inspect_run(staging_dir(run_dir)).kind == "unfinished"  # and what failed looks unfinished


def test_loss_weights_are_bounded(tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    assert train("--ratings", str(ratings), "--factorization-weight", "1e308", "--logdir", str(tmp_path / "r")) == 2
    assert "argument --factorization-weight: must be in [0, 1000], got 1e+308" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# 2. A finished run is never overwritten without --force


def test_training_into_a_finished_run_is_an_error_unless_forced(finished, capsys):
    ratings, run_dir, before = finished
    assert train("--ratings", str(ratings), "--epochs", "1", "--logdir", str(run_dir)) == 1
    assert f"{run_dir} holds a finished run: give --force" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    assert train("--ratings", str(ratings), "--epochs", "1", "--logdir", str(run_dir), "--force") == 0
    assert json.loads((run_dir / METRICS_FILENAME).read_text())["final"]["epoch"] == 1
    assert not staging_dir(run_dir).exists()


def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert train("--ratings", str(ratings), "--epochs", "1", "--logdir", str(folder), "--force") == 1
    assert "holds files that are not a run's (notes.txt)" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "mine"


def experiments(root: Path, data_dir: Path, *more: str) -> int:
    return main(
        [
            "experiments",
            "--configs",
            "shared-0.5-0.5",
            "separate-0.5-0.5",
            "--seeds",
            "1",
            "--root",
            str(root),
            "--out",
            str(root.parent / "report"),
            "--data-dir",
            str(data_dir),
            "--no-progress",
            "--threads",
            "1",
            "--embedding-dim",
            "8",
            "--batch-size",
            "4096",
            *more,
        ]
    )


@pytest.mark.slow
def test_experiments_with_other_settings_name_them_and_replace_nothing(tmp_path, data_dir, capsys):
    root = tmp_path / "run"
    assert experiments(root, data_dir, "--epochs", "3") == 0
    before = snapshot(root)
    assert experiments(root, data_dir, "--epochs", "2") == 1
    err = capsys.readouterr().err
    assert "2 finished runs were made with other settings" in err and "training.epochs: 2 here, 3 there" in err
    assert "Give --force" in err and snapshot(root) == before
    assert experiments(root, data_dir, "--epochs", "2", "--force") == 0
    assert "2 runs trained, 0 reused" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 3 and 4. No mixed directories; damaged runs are not reused


def test_a_failed_save_leaves_the_earlier_run_whole_and_serving_refuses_a_mix(finished, tmp_path, monkeypatch, capsys):
    import mtrec.io.files as fileio

    ratings, run_dir, before = finished
    real = fileio.atomic_write_bytes

    def full_disk(path, payload):
        if Path(path).name == "model.safetensors":
            raise OSError(28, "No space left on device", str(path))
        real(path, payload)

    monkeypatch.setattr(fileio, "atomic_write_bytes", full_disk)
    monkeypatch.setattr("mtrec.io.checkpoint.atomic_write_bytes", full_disk)
    code = train("--ratings", str(ratings), "--epochs", "1", "--embedding-dim", "4", "--logdir", str(run_dir), "--force")
    assert code == 1 and "No space left on device" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    assert main(["recommend", "--model", str(run_dir), "--user", "u1", "-k", "3"]) == 0
    # A mixed directory, as an earlier mtrec could leave it: another run's config beside this model.
    (run_dir / "config.json").write_text((run_dir / "config.json").read_text().replace('"epochs": 2', '"epochs": 7'))
    capsys.readouterr()
    assert main(["recommend", "--model", str(run_dir), "--user", "u1"]) == 1
    assert "is not a complete run (damaged): " in capsys.readouterr().err
    assert main(["recommend", "--model", str(staging_dir(run_dir)), "--user", "u1"]) == 1
    assert "is not a complete run (unfinished)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_reused_run_is_verified_and_a_damaged_one_trained_again(tmp_path, data_dir, capsys):
    root = tmp_path / "run"
    assert experiments(root, data_dir, "--epochs", "2") == 0
    damaged = root / "shared-0.5-0.5" / "seed-0" / "model.safetensors"
    damaged.write_bytes(b"garbage" * 100)
    capsys.readouterr()
    assert experiments(root, data_dir, "--epochs", "2") == 0
    captured = capsys.readouterr()
    assert "1 runs trained, 1 reused" in captured.out
    assert f"{damaged} is not a readable mtrec model" in captured.err and "trained again" in captured.err
    assert inspect_run(damaged.parent).kind == "finished"


# ---------------------------------------------------------------------------------------------
# 5. Bounded memory per request


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mtrec serve` in a process of its own, on a free port of 127.0.0.1."""
    import socket

    folder = tmp_path_factory.mktemp("serve")
    ratings = small_ratings(folder / "small.csv")
    assert train("--ratings", str(ratings), "--epochs", "1", "--embedding-dim", "8", "--logdir", str(folder / "run")) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrec", "serve", "--model", str(folder / "run"), "--port", str(port), "--max-body-bytes", "1000000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", process
    process.terminate()
    process.wait(timeout=10)


def test_an_oversized_body_is_refused_before_parsing_and_memory_returns(server):
    import httpx

    url, process = server
    pairs = json.dumps({"pairs": [{"user": "u1", "item": "i2"}] * 200_000}).encode()  # 6 MB
    one_long = json.dumps({"pairs": [{"user": "u1", "item": "x" * 5_000_000}]}).encode()
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{url}/predict", json={"pairs": [{"user": "u1", "item": "i2"}]}).status_code == 200
        baseline = rss_mb(process.pid)
        for _ in range(10):
            for body in (pairs, one_long):
                response = client.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
                assert response.status_code == 413 and "request body over 1,000,000 bytes" in response.json()["detail"]
        assert rss_mb(process.pid) - baseline < 5
        # Without a Content-Length the body is counted as it streams in.
        chunks = (pairs[i : i + 65536] for i in range(0, len(pairs), 65536))
        response = client.post(f"{url}/predict", content=chunks, headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_ids_and_titles_have_a_bounded_length(server):
    import httpx

    url, _ = server
    long_id = "u" * 300
    assert httpx.post(f"{url}/predict", json={"pairs": [{"user": long_id, "item": "i2"}]}).status_code == 422
    assert httpx.get(f"{url}/users/{long_id}/recommendations").status_code == 422
    assert httpx.get(f"{url}/users/u1/recommendations").status_code == 200


# ---------------------------------------------------------------------------------------------
# 6. No tracebacks for impossible models and seeds


@pytest.mark.parametrize(
    "argv, option",
    [(["--embedding-dim", "100000000"], "--embedding-dim"), (["--layer-sizes", "24", "100000000", "--embedding-dim", "8"], "--layer-sizes")],
)
def test_a_model_larger_than_the_machine_is_a_one_line_error_naming_the_option(argv, option, tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    assert train("--ratings", str(ratings), *argv, "--logdir", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "training would need about" in err and f"most of it for {option}: lower it" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not staging_dir(tmp_path / "r").exists()


def test_a_seed_beyond_the_generators_range_is_a_usage_error(tmp_path, capsys):
    assert train("--seed", "99999999999999999999999", "--logdir", str(tmp_path / "r")) == 2
    assert "argument --seed: must be a whole number from 0 to 2**64 - 1, got 99999999999999999999999" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Should fix: reads name the file and the line


@pytest.mark.parametrize("separator", [";", "|"])
def test_a_csv_separated_otherwise_is_sniffed(separator, tmp_path):
    from mtrec.data import load_ratings_file

    path = tmp_path / "ratings.csv"
    path.write_text(f"user{separator}item{separator}rating\n" + "".join(f"{u}{separator}{u % 7}{separator}4\n" for u in range(30)))
    data = load_ratings_file(path)
    assert len(data) == 30 and data.has_ratings


def test_an_unclosed_quote_is_named_at_the_line_it_opens(tmp_path):
    from mtrec.data import load_ratings_file
    from mtrec.errors import DataError

    lines = ["user,item,rating"] + [f"{u},{u % 50},3" for u in range(2000)]
    lines[1236] = '"1236,5,3'
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings.csv, line 1237: a quoted field"):
        load_ratings_file(path)


def test_a_corrupt_parquet_file_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtrec.data import load_ratings_file
    from mtrec.errors import DataError

    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"user": list(range(1000)), "item": list(range(1000)), "rating": [3.0] * 1000}), path, compression="snappy")
    payload = bytearray(path.read_bytes())
    for offset in range(200, 600):
        payload[offset] ^= 0x5A
    path.write_bytes(bytes(payload))
    with pytest.raises(DataError, match=rf"{path}: not a readable Parquet file"):
        load_ratings_file(path)


def test_a_ratings_path_that_cannot_be_read_is_named(tmp_path, capsys):
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert train("--ratings", str(folder), "--logdir", str(tmp_path / "r")) == 1
    assert f"{folder}: Is a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Fault injection: kills at any point


def faulty(point: str, count: int, sig: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT / 'src'}", "OMP_NUM_THREADS": "1"}
    code = f"import faults; faults.run({point!r}, {count}, {sig!r}, {argv!r})"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "INT"])
@pytest.mark.parametrize("point, count", [("step", 5), ("save", 1), ("save", 2), ("save", 3)])
def test_a_killed_train_leaves_the_finished_run_whole_and_a_rerun_completes(point, count, sig, finished, tmp_path):
    ratings, run_dir, before = finished
    argv = [
        "train",
        "--no-progress",
        "--preset",
        "seed",
        "--ratings",
        str(ratings),
        "--epochs",
        "2",
        "--embedding-dim",
        "8",
        "--batch-size",
        "64",
        "--logdir",
        str(run_dir),
        "--force",
    ]
    result = faulty(point, count, sig, argv, tmp_path)
    assert result.returncode == (-9 if sig == "KILL" else 130), result.stderr
    assert snapshot(run_dir) == before  # byte for byte
    assert inspect_run(run_dir).kind == "finished"
    assert not list(run_dir.glob(".*.tmp"))
    again = faulty("step", 10**9, "KILL", argv, tmp_path)  # never fires
    assert again.returncode == 0, again.stderr
    assert inspect_run(run_dir).kind == "finished" and snapshot(run_dir) != before


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "INT"])
@pytest.mark.parametrize("point, count", [("step", 30), ("save", 4), ("save", 6)])
def test_a_killed_experiment_keeps_its_finished_runs_and_a_rerun_resumes(point, count, sig, tmp_path, data_dir):
    root = tmp_path / "run"
    argv = [
        "experiments",
        "--configs",
        "shared-0.5-0.5",
        "separate-0.5-0.5",
        "--seeds",
        "2",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "report"),
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--threads",
        "1",
        "--epochs",
        "2",
        "--embedding-dim",
        "8",
        "--batch-size",
        "8192",
    ]
    result = faulty(point, count, sig, argv, tmp_path)
    assert result.returncode in ((-9,) if sig == "KILL" else (130,)), result.stderr
    states = {run: inspect_run(run).kind for run in sorted(root.glob("*/seed-*"))}
    finished = [run for run, kind in states.items() if kind == "finished"]
    assert all(kind == "finished" for kind in states.values())  # published runs are complete; the rest is staged
    before = {run: snapshot(run) for run in finished}
    again = faulty("step", 10**9, "KILL", argv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{4 - len(finished)} runs trained, {len(finished)} reused" in again.stdout
    assert all(snapshot(run) == before[run] for run in finished)
