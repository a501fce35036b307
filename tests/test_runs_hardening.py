"""Run directories under pressure: concurrent commands never mix their work (one holds the lock, the
others are refused naming it, a killed holder's lock is taken over), a checkpoint is never thrown
away in silence (nor before its run is published), --resume keeps the checks of a run directory, a
symbolic --logdir is followed, a run of no epochs is refused before anything is written, a run of
this mtrec without its digests is not finished (one of 0.2.0 before them is), and the presets and
main.py never collide."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT
from test_distributed import torchrun, without_timing
from test_hardening import small_ratings, snapshot, train

from mtrec.cli import main
from mtrec.errors import ConfigError, DataError
from mtrec.io.files import LockHeldError, directory_lock
from mtrec.runs import METRICS_FILENAME, RunState, inspect_run, read_metrics, staging_dir

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT / 'src'}", "OMP_NUM_THREADS": "1"}
HOST = socket.gethostname()
SMALL = ["--no-progress", "--preset", "seed", "--epochs", "2", "--embedding-dim", "8", "--threads", "1"]


def lock_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def reaped(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Kill each of ``processes`` (those added to the list inside the block too) that still runs when
    the block ends, however it ends: a failed assertion or a timeout leaves no process behind."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def test_a_process_a_failing_test_started_is_killed_not_left_running():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(subprocess.TimeoutExpired), reaped([sleeper]):
        sleeper.communicate(timeout=0.1)
    assert sleeper.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------------------------
# Locks


#: A CLI process whose publication waits for the file argv[1]: it holds the run's lock until then.
RACER = """
import sys, time
from pathlib import Path
import mtrec.runs as runs
go, publish = Path(sys.argv[1]), runs.publish_directory
def waiting(staging, run_dir, old):
    while not go.exists():
        time.sleep(0.05)
    publish(staging, run_dir, old)
runs.publish_directory = waiting
from mtrec.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_trainings_into_one_logdir_publish_one_whole_run_and_refuse_the_others(count, tmp_path):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir, go = tmp_path / "race" / "r", tmp_path / "go"
    with reaped([]) as racers:
        for seed in range(1, count + 1):
            racers.append(subprocess.Popen(
                [sys.executable, "-c", RACER, str(go), "train", *SMALL, "--ratings", str(ratings), "--seed", str(seed),
                 "--logdir", str(run_dir)],
                env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
        deadline = time.monotonic() + 240
        while sum(racer.poll() is not None for racer in racers) < count - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        go.touch()  # the one still running holds the lock: let it publish
        outputs = [racer.communicate(timeout=240) for racer in racers]
    winners = [i for i, racer in enumerate(racers) if racer.returncode == 0]
    assert len(winners) == 1, [err for _, err in outputs]
    winner = winners[0]
    for i, (racer, (out, err)) in enumerate(zip(racers, outputs)):
        if i != winner:
            assert racer.returncode == 1 and out == ""
            assert err.splitlines() == [
                f"mtrec train: error: {run_dir} is in use by process {racers[winner].pid} on {HOST}: wait until it ends, or choose another folder"
            ]
    # The published run is the winner's whole work: its seed, its numbers, its model.
    assert inspect_run(run_dir).kind == "finished"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["seed"] == winner + 1 and config["data"]["split"]["seed"] == winner + 1
    selected = read_metrics(run_dir)["selected"]
    assert f"test MSE {selected['test_mse']:.4f}  MRR {selected['test_mrr']:.4f}" in outputs[winner][0]
    assert sorted(path.name for path in run_dir.parent.iterdir()) == ["r"]  # no staging, no lock left


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over_by_the_next_run(tmp_path):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    argv = ["train", *SMALL, "--ratings", str(ratings), "--batch-size", "64", "--logdir", str(run_dir)]
    killed = subprocess.Popen([sys.executable, "-c", f"import faults; faults.run('step', 3, 'KILL', {argv!r})"], env=ENV, cwd=tmp_path)
    with reaped([killed]):
        assert killed.wait(timeout=300) == -signal.SIGKILL
    assert lock_file(run_dir).read_text() == f"{killed.pid} {HOST}\n"  # the lock file its holder never removed
    assert not run_dir.exists() and staging_dir(run_dir).is_dir()
    assert train(*argv[1:]) == 0
    assert inspect_run(run_dir).kind == "finished"
    assert not lock_file(run_dir).exists() and not staging_dir(run_dir).exists()


#: A process that holds the lock of argv[1] until its standard input closes.
HOLDER = """
import sys
from mtrec.io.files import directory_lock
with directory_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(timeout=30)


@pytest.fixture
def held():
    """Hold a folder's lock in another process: ``held(folder)`` is that process (until :func:`release`,
    or the test's end, when it is released, or killed if it does not end)."""
    with reaped([]) as holders:

        def hold(folder: Path) -> subprocess.Popen:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holders.append(holder)
            assert holder.stdout.readline() == "held\n"
            return holder

        yield hold
        for holder in holders:
            if holder.poll() is None:
                release(holder)


def test_an_experiment_root_in_use_is_refused_naming_its_holder_and_nothing_is_written(tmp_path, held, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    root = tmp_path / "exp"
    pid = held(root).pid
    argv = [
        "experiments",
        "--configs",
        "shared-0.5-0.5",
        "--seeds",
        "1",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "report"),
        "--ratings",
        str(ratings),
        *SMALL,
    ]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"mtrec experiments: error: {root} is in use by process {pid} on {HOST}: wait until it ends, or choose another folder"
    ]
    assert not root.exists() and not (tmp_path / "report").exists()


def test_the_library_runs_one_experiment_at_a_time_in_a_root(tmp_path, held):
    from mtrec.config import preset
    from mtrec.studies.experiments import CONFIGURATIONS, plan_runs, run_experiment

    root = tmp_path / "exp"
    runs = plan_runs([CONFIGURATIONS["shared-0.5-0.5"]], 1, root)
    pid = held(root).pid
    loaded = []
    with pytest.raises(LockHeldError) as caught:
        run_experiment(runs, lambda run: preset("seed", epochs=1), loaded.append)
    assert str(caught.value) == f"{root} is in use by process {pid} on {HOST}: wait until it ends, or choose another folder"
    assert loaded == [] and not root.exists()


def test_a_finished_run_in_use_is_left_as_it_was(tmp_path, held, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    assert train(*SMALL, "--ratings", str(ratings), "--logdir", str(run_dir)) == 0
    before = snapshot(run_dir)
    pid = held(run_dir).pid
    assert train(*SMALL, "--ratings", str(ratings), "--logdir", str(run_dir), "--force", "--seed", "5") == 1
    assert f"{run_dir} is in use by process {pid} on {HOST}" in capsys.readouterr().err
    assert snapshot(run_dir) == before and not staging_dir(run_dir).exists()


@pytest.mark.slow
def test_under_torchrun_process_0_alone_takes_the_lock_and_every_process_reports_a_refusal(tmp_path, held):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    argv = ["-m", "mtrec", "train", *SMALL, "--ratings", str(ratings), "--logdir", str(run_dir)]
    holder = held(run_dir)
    refused = torchrun(*argv)
    message = f"mtrec train: error: {run_dir} is in use by process {holder.pid} on {HOST}"
    assert refused.returncode != 0 and refused.stderr.count(message) == 2  # both processes, no hang
    assert not run_dir.exists() and not staging_dir(run_dir).exists()
    release(holder)
    again = torchrun(*argv)  # were process 1 to take the lock too, process 0's would refuse it
    assert again.returncode == 0, again.stderr[-3000:]
    assert inspect_run(run_dir).kind == "finished" and not lock_file(run_dir).exists()
    assert json.loads((run_dir / "config.json").read_text())["resolved"]["world_size"] == 2


def test_a_folder_lock_is_exclusive_reentrant_in_its_thread_and_gone_once_released(tmp_path):
    folder = tmp_path / "root"
    refused = []

    def contend() -> None:
        try:
            with directory_lock(folder):
                pass
        except LockHeldError as error:
            refused.append(str(error))

    with directory_lock(folder):
        with directory_lock(folder):  # this thread holds it already
            assert lock_file(folder).read_text() == f"{os.getpid()} {HOST}\n"
        other = threading.Thread(target=contend)
        other.start()
        other.join()
        assert lock_file(folder).exists()
    assert refused == [f"{folder} is in use by process {os.getpid()} on {HOST}: wait until it ends, or choose another folder"]
    assert not lock_file(folder).exists()
    contend()  # free again
    assert len(refused) == 1


# ---------------------------------------------------------------------------------------------
# Checkpoints are resumed or discarded, never lost in silence


def interrupt(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """Train ``argv`` until Ctrl-C stops it after its third epoch."""

    def stop(record):
        if record.epoch == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("mtrec.cli.train.epoch_summary", stop)
        assert train(*argv) == 130


@pytest.fixture
def interrupted(tmp_path, monkeypatch, capsys):
    """A run Ctrl-C stopped after its third epoch, with a checkpoint every epoch; and its options."""
    ratings = small_ratings(tmp_path / "small.csv")
    argv = [*SMALL, "--epochs", "5", "--ratings", str(ratings), "--checkpoint-every", "1", "--logdir", str(tmp_path / "r")]
    interrupt(monkeypatch, *argv)
    checkpoint = staging_dir(tmp_path / "r") / "checkpoint.safetensors"
    assert checkpoint.is_file()
    capsys.readouterr()
    return argv, checkpoint


def test_resuming_with_other_settings_names_them_and_keeps_the_checkpoint(interrupted, capsys):
    argv, checkpoint = interrupted
    before = checkpoint.read_bytes()
    assert train(*argv, "--resume", "--learning-rate", "0.002") == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"mtrec train: error: {checkpoint.parent} holds the checkpoint of an unfinished run with other settings, shown "
        "as here / there: model.learning_rate: 0.002 here, 0.001 there. Give its settings to --resume it, or --force "
        "to discard it and train from scratch"
    ]
    assert checkpoint.read_bytes() == before and not (checkpoint.parent.parent / "r").exists()


def test_training_over_a_checkpoint_without_resume_is_refused_and_keeps_it(interrupted, capsys):
    argv, checkpoint = interrupted
    before = checkpoint.read_bytes()
    assert train(*argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"mtrec train: error: {checkpoint.parent} holds the checkpoint of an unfinished run of these settings: give "
        "--resume to continue it, or --force to discard it and train from scratch"
    ]
    assert checkpoint.read_bytes() == before


def test_an_unreadable_checkpoint_is_refused_until_forced_away(interrupted, tmp_path, capsys):
    argv, checkpoint = interrupted
    checkpoint.write_bytes(b"garbage" * 10)
    assert train(*argv, "--resume") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtrec train: error: {checkpoint.parent} holds a checkpoint that cannot be resumed ({checkpoint}")
    assert err[0].endswith("): give --force to discard it and train from scratch")
    assert checkpoint.read_bytes() == b"garbage" * 10
    assert train(*argv, "--resume", "--force") == 0
    assert inspect_run(tmp_path / "r").kind == "finished" and not staging_dir(tmp_path / "r").exists()


def test_force_discards_a_checkpoint_of_other_settings_and_trains_from_scratch(interrupted, tmp_path):
    argv, _ = interrupted
    run_dir = tmp_path / "r"
    assert train(*argv, "--resume", "--learning-rate", "0.002", "--force") == 0
    fresh = [*argv[:-1], str(tmp_path / "fresh")]
    assert train(*fresh, "--learning-rate", "0.002") == 0
    assert json.loads((run_dir / "config.json").read_text())["model"]["learning_rate"] == 0.002
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(tmp_path / "fresh"))
    assert not staging_dir(run_dir).exists() and not (run_dir / "checkpoint.safetensors").exists()


def test_resuming_with_the_same_settings_ends_as_an_uninterrupted_run(interrupted, tmp_path):
    argv, _ = interrupted
    assert train(*argv, "--resume") == 0
    assert train(*argv[:-1], str(tmp_path / "whole")) == 0
    assert without_timing(read_metrics(tmp_path / "r")) == without_timing(read_metrics(tmp_path / "whole"))


def test_resume_never_publishes_over_a_folder_that_is_not_a_run(interrupted, tmp_path, capsys):
    argv, checkpoint = interrupted
    run_dir, before = tmp_path / "r", checkpoint.read_bytes()
    run_dir.mkdir()  # someone's folder, made while the run was stopped
    (run_dir / "notes.txt").write_text("mine")
    assert train(*argv, "--resume") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"mtrec train: error: {run_dir} holds files that are not a run's (notes.txt): choose another --logdir"
    ]
    assert snapshot(run_dir) == {"notes.txt": b"mine"} and checkpoint.read_bytes() == before


def test_resume_never_replaces_a_finished_run_without_force(tmp_path, monkeypatch, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    argv = [*SMALL, "--epochs", "5", "--ratings", str(ratings), "--checkpoint-every", "1", "--logdir", str(run_dir)]
    assert train(*argv) == 0
    finished = snapshot(run_dir)
    interrupt(monkeypatch, *argv, "--force", "--seed", "3")  # its replacement, stopped midway
    checkpoint = staging_dir(run_dir) / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    capsys.readouterr()
    assert train(*argv, "--seed", "3", "--resume") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"mtrec train: error: {run_dir} holds a finished run: give --force to train it again (the finished run stays "
        "until the new one is complete), or another --logdir"
    ]
    assert snapshot(run_dir) == finished and checkpoint.read_bytes() == before
    assert train(*argv, "--seed", "3", "--resume", "--force") == 0  # continues the checkpoint
    assert train(*argv[:-1], str(tmp_path / "whole"), "--seed", "3") == 0
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(tmp_path / "whole"))
    assert inspect_run(run_dir).kind == "finished" and not staging_dir(run_dir).exists()


def test_a_save_that_fails_at_the_last_moment_keeps_the_checkpoint_for_resume(tmp_path, monkeypatch, capsys):
    import mtrec.runs

    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    argv = [*SMALL, "--epochs", "3", "--ratings", str(ratings), "--checkpoint-every", "1", "--logdir", str(run_dir)]
    write = mtrec.runs.atomic_write_text

    def full_disk_for_metrics(path, text: str) -> None:
        if Path(path).name == METRICS_FILENAME:
            raise OSError(28, "No space left on device")
        write(path, text)

    with monkeypatch.context() as patch:
        patch.setattr(mtrec.runs, "atomic_write_text", full_disk_for_metrics)
        assert train(*argv) == 1
    assert capsys.readouterr().err.splitlines() == ["mtrec train: error: No space left on device"]
    assert not run_dir.exists() and (staging_dir(run_dir) / "checkpoint.safetensors").is_file()
    assert train(*argv, "--resume") == 0
    assert inspect_run(run_dir).kind == "finished" and not staging_dir(run_dir).exists()
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events.")) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]  # no checkpoint left in a finished run
    assert train(*argv[:-1], str(tmp_path / "whole")) == 0
    assert without_timing(read_metrics(run_dir)) == without_timing(read_metrics(tmp_path / "whole"))


# ---------------------------------------------------------------------------------------------
# A symbolic --logdir


def test_a_symlinked_logdir_is_followed_and_forced_again_and_again(tmp_path):
    ratings = small_ratings(tmp_path / "small.csv")
    target, link = tmp_path / "store" / "run", tmp_path / "link"
    target.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)  # dangling: the first run creates the target
    for seed, force in ((1, []), (2, ["--force"]), (3, ["--force"])):
        assert train(*SMALL, "--ratings", str(ratings), "--seed", str(seed), "--logdir", str(link), *force) == 0
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert json.loads((link / "config.json").read_text())["model"]["seed"] == seed
        assert inspect_run(link).kind == "finished" and inspect_run(target).kind == "finished"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "small.csv", "store"]
        assert sorted(p.name for p in target.parent.iterdir()) == ["run"]


def test_a_symlinked_logdir_holding_a_finished_run_needs_force(tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    target, link = tmp_path / "run", tmp_path / "link"
    assert train(*SMALL, "--ratings", str(ratings), "--logdir", str(target)) == 0
    link.symlink_to(target)
    before = snapshot(target)
    assert train(*SMALL, "--ratings", str(ratings), "--logdir", str(link)) == 1
    assert f"{target} holds a finished run: give --force" in capsys.readouterr().err
    assert snapshot(target) == before and link.is_symlink()


# ---------------------------------------------------------------------------------------------
# A run of no epochs


@pytest.mark.parametrize("command", ["train", "experiments"])
def test_zero_epochs_is_refused_in_one_line_before_anything_is_written(command, tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    where = ["--logdir", str(tmp_path / "r")] if command == "train" else ["--root", str(tmp_path / "r"), "--seeds", "1"]
    assert main([command, *SMALL, "--ratings", str(ratings), *where, "--epochs", "0"]) == 2
    message = f"mtrec {command}: error: argument --epochs: must be a positive whole number, got 0 (see 'mtrec {command} --help')"
    assert capsys.readouterr().err.splitlines() == [message]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.csv"]


def test_negative_epochs_are_a_usage_error(tmp_path, capsys):
    assert train("--epochs", "-1", "--logdir", str(tmp_path / "r")) == 2
    assert "argument --epochs: must be a positive whole number, got -1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_library_refuses_to_record_a_run_of_no_epochs(tmp_path):
    from conftest import random_interactions

    from mtrec.config import preset
    from mtrec.runs import train_run

    data = random_interactions()
    with pytest.raises(ConfigError, match="^epochs: must be a positive whole number, got 0$"):
        train_run(preset("seed", epochs=0), data, None, data, tmp_path / "r")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# metrics.json: its digests and its shape


@pytest.mark.slow
@pytest.mark.parametrize("digest", ["model_sha256", "config_sha256"])
def test_a_run_without_a_digest_is_damaged_and_retrained_by_experiments(digest, tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    root = tmp_path / "exp"
    argv = [
        "experiments",
        "--configs",
        "shared-0.5-0.5",
        "--seeds",
        "1",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "report"),
        "--ratings",
        str(ratings),
        *SMALL,
    ]
    assert main(argv) == 0
    run_dir = root / "shared-0.5-0.5" / "seed-0"
    metrics = json.loads((run_dir / METRICS_FILENAME).read_text())
    del metrics[digest]
    (run_dir / METRICS_FILENAME).write_text(json.dumps(metrics))
    state = inspect_run(run_dir)
    file = "model.safetensors" if digest == "model_sha256" else "config.json"
    reason = f"{run_dir / METRICS_FILENAME} records no {digest}, so {run_dir / file} cannot be verified"
    assert state.kind == "damaged" and state.reason == reason
    capsys.readouterr()
    assert main(["recommend", "--model", str(run_dir), "--user", "u1"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"mtrec recommend: error: {run_dir} is not a complete run (damaged): {reason}"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 runs trained, 0 reused" in captured.out and f"{reason}: trained again" in captured.err
    assert inspect_run(run_dir).kind == "finished" and digest in read_metrics(run_dir)


#: Runs of mtrec 0.2.0 (config format 2): 2a1eb51's recorded no digests yet, f70a1e9's did (see
#: test_documents_hardening.GOLDEN_RUNS_0_2_0: trained on small_ratings with --epochs 1 --embedding-dim 4).
GOLDEN = TESTS / "golden"


def golden_run(commit: str, where: Path) -> Path:
    """A copy of the run of mtrec 0.2.0 at ``commit`` in ``where``."""
    return Path(shutil.copytree(GOLDEN / f"run-0.2.0-{commit}", where))


@pytest.mark.parametrize("commit", ["2a1eb51", "f70a1e9"])
def test_runs_of_mtrec_0_2_0_are_finished_with_or_without_their_digests(commit, tmp_path):
    run_dir = golden_run(commit, tmp_path / "r")
    assert ("model_sha256" in read_metrics(run_dir)) == (commit == "f70a1e9")
    state = inspect_run(run_dir)
    assert state.kind == "finished" and state.config.model["sharing"] == "hard"


def test_a_run_of_mtrec_0_2_0_that_recorded_digests_is_verified_against_them(tmp_path):
    run_dir = golden_run("f70a1e9", tmp_path / "r")
    config = run_dir / "config.json"
    config.write_text(config.read_text() + "\n")  # the same settings, another file
    reason = f"{config} is not the one {run_dir / METRICS_FILENAME} recorded"
    assert inspect_run(run_dir) == RunState("damaged", reason)


def test_a_run_of_format_3_without_its_digests_is_damaged(tmp_path):
    run_dir = golden_run("2a1eb51", tmp_path / "r")
    config = run_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format_version": 3}))
    reason = f"{run_dir / METRICS_FILENAME} records no model_sha256, so {run_dir / 'model.safetensors'} cannot be verified"
    assert inspect_run(run_dir) == RunState("damaged", reason)


def test_experiments_reuse_a_finished_run_of_mtrec_0_2_0(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the run's config.json names its ratings as small.csv
    small_ratings(tmp_path / "small.csv")
    run_dir = golden_run("f70a1e9", tmp_path / "exp" / "shared-0.5-0.5" / "seed-0")
    before = snapshot(run_dir)
    argv = [
        "experiments",
        "--configs",
        "shared-0.5-0.5",
        "--seeds",
        "1",
        "--root",
        "exp",
        "--out",
        "report",
        "--ratings",
        "small.csv",
        *SMALL,
        "--epochs",
        "1",
        "--embedding-dim",
        "4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "0 runs trained, 1 reused, in exp" in captured.out
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("change, flaw", [
    ({"epochs": "all of them"}, 'epochs: expected a list, got "all of them"'),
    ({"epochs": [1, 2]}, "epochs[0]: expected an object, got 1"),
    ({"epochs": [{"epoch": "one"}]}, 'epochs[0].epoch: expected a whole number, got "one"'),
    ({"final": [2]}, "final: expected an object, got [2]"),
    ({"final": {}}, "final.epoch: missing"),
    ({"selected": "epoch 2"}, 'selected: expected an object, got "epoch 2"'),
    ({"model_sha256": 7}, "model_sha256: expected a string, got 7"),
])  # fmt: skip
def test_metrics_of_the_wrong_shape_are_refused_in_one_line(change, flaw, tmp_path, capsys):
    ratings = small_ratings(tmp_path / "small.csv")
    run_dir = tmp_path / "r"
    assert train(*SMALL, "--ratings", str(ratings), "--logdir", str(run_dir)) == 0
    metrics = {**json.loads((run_dir / METRICS_FILENAME).read_text()), **change}
    (run_dir / METRICS_FILENAME).write_text(json.dumps(metrics))
    with pytest.raises(DataError) as error:
        read_metrics(run_dir)
    message = str(error.value)
    assert message.startswith(f"{run_dir / METRICS_FILENAME}: {flaw}") and "\n" not in message
    assert inspect_run(run_dir).kind == "unfinished"
    capsys.readouterr()
    assert main(["recommend", "--model", str(run_dir), "--user", "u1"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"mtrec recommend: error: {run_dir} is not a complete run (unfinished): {message}"]


# ---------------------------------------------------------------------------------------------
# The presets' directories and main.py


def test_the_quality_presets_default_directory_leaves_the_assignments_free(tmp_path, monkeypatch):
    ratings = small_ratings(tmp_path / "small.csv")
    monkeypatch.chdir(tmp_path)
    common = ["train", "--no-progress", "--threads", "1", "--ratings", str(ratings), "--epochs", "2"]
    assert main(common) == 0  # the quality preset, by default
    quality = tmp_path / "run" / "quality_shared=True_LF=1_LR=0.1"
    assert json.loads((quality / "config.json").read_text())["training"]["early_stopping"] == "joint"
    assert main([*common, "--preset", "seed", "--factorization_weight", "0.99", "--regression_weight", "0.01"]) == 0
    assert inspect_run(tmp_path / "run" / "shared=True_LF=0.99_LR=0.01").kind == "finished"
    assert inspect_run(quality).kind == "finished"


def test_the_readme_names_mtrec_trains_directory_and_main_py_never_trains_into_it():
    from mtrec.cli.train import default_logdir
    from mtrec.config import preset

    readme = (ROOT / "README.md").read_text()
    model = preset("quality").model
    default = default_logdir("quality", model["sharing"], model["factorization_weight"], model["regression_weight"])
    assert str(default) == "run/quality_shared=True_LF=1_LR=0.1"
    assert f"# MovieLens 100K, the quality preset, {default}\n" in readme
    logdirs = re.findall(r"^python main.py .* --logdir (\S+)$", readme, re.MULTILINE)
    assert len(logdirs) == 3 and str(default) not in logdirs


@pytest.mark.slow
def test_main_py_help_describes_main_py_with_the_seed_presets_defaults():
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--help"], capture_output=True, text=True, env={**ENV, "COLUMNS": "200"}, timeout=120
    )
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert text.startswith("usage: main.py [-h]") and "mtrec train [" not in text
    assert "The assignment's entry point: 'python main.py [options]' is 'mtrec train --preset seed [options]'." in text
    assert "with validation and early stopping) (default seed)" in text
    assert "training epochs; early stopping may end training sooner (a positive whole number; default 200, quality preset 60)" in text
    assert "Adam learning rate (a positive number; default 0.001, quality preset 0.005;" in text
    assert "run directory (default run/shared=<..>_LF=<..>_LR=<..>;" in text
    usage = subprocess.run([sys.executable, str(ROOT / "main.py"), "--epochs", "x"], capture_output=True, text=True, env=ENV, timeout=120)
    assert usage.returncode == 2
    assert usage.stderr == "main.py: error: argument --epochs: expected a whole number, got 'x' (see 'main.py --help')\n"


def test_mtrec_train_help_shows_the_quality_presets_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "training epochs; early stopping may end training sooner (a positive whole number; default 60, seed preset 200)" in text
    assert "run directory (default run/quality_shared=<..>_LF=<..>_LR=<..>;" in text
