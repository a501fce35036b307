"""Stacked training (mtrec.train.stacked): K runs in one batched computation give each run what it
gives alone; runs that cannot stack are grouped apart, with a note; --stack and --seeds refuse bad values."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import random_interactions

from mtrec.cli import main
from mtrec.config import RunConfig
from mtrec.config.presets import preset
from mtrec.data.splits import random_split
from mtrec.errors import ConfigError
from mtrec.runs import RunJob, train_run, train_runs
from mtrec.train.callbacks import Callback
from mtrec.train.stacked import group_runs, plan_groups, run_group, stack_key

pytestmark = pytest.mark.slow


def _data(seed: int = 0):
    data = random_interactions(num_users=60, num_items=80, n=2400, seed=seed)
    train, test = random_split(data, test_fraction=0.1, seed=seed)
    valid_train, valid = random_split(train, test_fraction=0.1, seed=seed)
    return train, valid_train, valid, test


def _config(**settings) -> RunConfig:
    base = {"epochs": 4, "batch_size": 64, "embedding_dim": 8, "k": [5], "metrics": ["mse", "mae", "mrr", "ndcg"]}
    return preset("seed", **{**base, **settings})


def _numbers(metrics: dict) -> list[dict[str, float]]:
    return [{k: v for k, v in record.items() if isinstance(v, float) and k != "seconds"} for record in metrics["epochs"]]


def _assert_same(alone: dict, stacked: dict) -> None:
    """The same epochs, the same selected epoch, and every number within 1e-5."""
    assert len(alone["epochs"]) == len(stacked["epochs"])
    assert alone["selected"]["epoch"] == stacked["selected"]["epoch"]
    for a, b in zip(_numbers(alone), _numbers(stacked)):
        assert a.keys() == b.keys()
        for name in a:
            if not (math.isnan(a[name]) and math.isnan(b[name])):
                assert b[name] == pytest.approx(a[name], abs=1e-5, rel=1e-5), name


def _model_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


CONFIGURATIONS = {
    # the assignment's: seeds and loss weights differ
    "hard, seeds and weights": [dict(seed=0), dict(seed=1, factorization_weight=0.99, regression_weight=0.01), dict(seed=2)],
    # separate tables, several logsigmoid negatives, rating biases; learning rates, decays and schedules differ
    "separate, rates and decays": [
        dict(seed=s, sharing="separate", negatives=3, watch_loss="logsigmoid", rating_bias=True, learning_rate=lr, l2=l2, lr_schedule=sched)
        for s, lr, l2, sched in ((0, 0.01, 0.0, "constant"), (1, 0.005, 1e-4, "exponential"), (2, 0.02, 1e-5, "step"))
    ],
    # early stopping: the run with patience 1 stops while the others go on
    "early stopping": [
        dict(seed=0, learning_rate=0.05, early_stopping="mse", patience=1, epochs=10, valid_fraction=0.1),
        dict(seed=1, learning_rate=0.01, early_stopping="joint", patience=20, epochs=10, valid_fraction=0.1),
        dict(seed=2, learning_rate=0.01, early_stopping="mrr", patience=20, epochs=10, ema=0.9, valid_fraction=0.1),
    ],
}


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_stacked_runs_give_what_each_gives_alone(name, tmp_path):
    train, valid_train, valid, test = _data()
    configs = [_config(**settings) for settings in CONFIGURATIONS[name]]
    with_validation = any(c.early_stopping for c in configs)
    split = (valid_train, valid, test) if with_validation else (train, None, test)
    assert len({stack_key(c, split[0]) for c in configs}) == 1  # one group
    alone = [train_run(c, *split, tmp_path / f"alone-{i}") for i, c in enumerate(configs)]
    outcomes, group = run_group([lambda c=c, i=i: train_run(c, *split, tmp_path / f"stacked-{i}") for i, c in enumerate(configs)])
    assert group.widest == len(configs) and group.epochs > 0
    for i, (a, b) in enumerate(zip(alone, outcomes)):
        assert not isinstance(b, BaseException), b
        _assert_same(a, b)
        # the run directories hold the same run: config, and the model to rounding
        assert json.loads((tmp_path / f"alone-{i}" / "config.json").read_text()) == json.loads(
            (tmp_path / f"stacked-{i}" / "config.json").read_text()
        )
        one, other = _model_tensors(tmp_path / f"alone-{i}"), _model_tensors(tmp_path / f"stacked-{i}")
        assert one.keys() == other.keys()
        for key in one:
            torch.testing.assert_close(other[key], one[key], rtol=1e-5, atol=1e-6)
    if name == "early stopping":
        lengths = [len(m["epochs"]) for m in alone]
        assert min(lengths) < max(lengths) == 10  # one stopped early while the others went on
        assert group.epochs == max(lengths)


def test_a_run_that_fails_does_not_stop_the_others(tmp_path):
    train, _, _, test = _data()
    good, bad = _config(seed=0), _config(seed=1, learning_rate=1e6)  # diverges

    outcomes, _ = run_group(
        [lambda: train_run(good, train, None, test, tmp_path / "good"), lambda: train_run(bad, train, None, test, tmp_path / "bad")]
    )
    assert isinstance(outcomes[1], Exception) and "diverged" in str(outcomes[1])
    _assert_same(train_run(good, train, None, test, tmp_path / "alone"), outcomes[0])
    assert not (tmp_path / "bad").exists()  # nothing half-written


class _Interrupt(Callback):
    def on_epoch_end(self, trainer, record) -> None:
        if record.epoch == 2:
            trainer.step.group.cancel()  # as Ctrl-C in the job's thread does


def test_an_interrupted_stacked_job_resumes_from_its_checkpoints(tmp_path):
    train, _, _, test = _data()
    configs = [_config(seed=s, epochs=4) for s in range(3)]
    jobs = [RunJob(f"seed {i}", c, train, None, test, tmp_path / f"seed-{i}") for i, c in enumerate(configs)]
    interrupted = [RunJob(j.name, j.config, j.train, j.validation, j.test, j.logdir, None, _interrupting) for j in jobs]
    with pytest.raises(KeyboardInterrupt):
        train_runs(interrupted, None, checkpoint_every=1)
    assert not any((tmp_path / f"seed-{i}" / "metrics.json").exists() for i in range(3))
    resumed = train_runs(jobs, None, checkpoint_every=1, resume=True)
    for i, config in enumerate(configs):
        _assert_same(train_run(config, train, None, test, tmp_path / f"alone-{i}"), resumed[i])


class _Context:
    def __enter__(self):
        return _Interrupt()

    def __exit__(self, *exc):
        return False


def _interrupting():
    return _Context()


def test_runs_that_cannot_stack_are_grouped_apart_with_a_note():
    train, _, _, _ = _data()
    hard = [_config(seed=s) for s in range(3)]
    separate = [_config(seed=s, sharing="separate") for s in range(2)]
    autograd = [_config(seed=0, weighting="uncertainty")]
    configs = hard + separate + autograd
    names = [f"run {i}" for i in range(len(configs))]
    groups, notes = plan_groups(names, configs, [train] * len(configs), None)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    text = " ".join(notes)
    assert "they differ in sharing" in text and "run 5 is not" in text and "5 runs train stacked, in 2 groups of 3 + 2" in text
    groups, _ = plan_groups(names, configs, [train] * len(configs), 2)
    assert groups == [[0, 1], [2], [3, 4], [5]]
    assert plan_groups(names, configs, [train] * len(configs), 1)[0] == [[i] for i in range(len(configs))]


def test_a_stack_larger_than_memory_allows_names_the_limit():
    with pytest.raises(ConfigError, match="--stack 9 does not fit in memory: at most 4 of these runs fit at once"):
        group_runs([("k",)] * 10, 9, 4)
    assert group_runs([("k",)] * 10, None, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def _ratings_file(tmp_path):
    data = random_interactions(num_users=50, num_items=60, n=1500, seed=3)
    path = tmp_path / "ratings.csv"
    rows = [f"{u},{i},{int(r)}" for u, i, r in zip(data.users, data.items, data.ratings)]
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--stack", "0"], "0 runs per group: give at least 1"),
        (["--stack", "-2"], "-2 runs per group: give at least 1"),
        (["--stack", "many"], "'many' is not a number of runs"),
        (["--seeds", "4-1"], "'4-1' is not a list of seeds"),
        (["--seeds", "a"], "'a' is not a list of seeds"),
    ],
)
def test_bad_stack_and_seeds_are_one_line_errors(option, message, tmp_path, capsys):
    code = main(
        [
            "train",
            "--ratings",
            str(_ratings_file(tmp_path)),
            "--preset",
            "seed",
            "--epochs",
            "1",
            "--seeds",
            "0-1",
            *option,
            "--logdir",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_stack_that_does_not_fit_in_memory_is_refused_before_any_work(tmp_path, capsys):
    code = main(["train", "--ratings", str(_ratings_file(tmp_path)), "--preset", "seed", "--epochs", "1", "--seeds", "0-1", "--stack", str(10**9),
                 "--logdir", str(tmp_path / "r"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"--stack {10**9} does not fit in memory: at most" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_train_seeds_trains_each_seed_as_train_seed_does_and_prints_mean_and_sd(tmp_path, capsys):
    ratings = _ratings_file(tmp_path)
    common = ["--ratings", str(ratings), "--preset", "seed", "--epochs", "3", "--embedding-dim", "8", "--no-progress"]
    assert main(["train", *common, "--seeds", "0-2", "--logdir", str(tmp_path / "seeds")]) == 0
    out, err = capsys.readouterr()
    assert "3 runs train stacked, in 1 group of 3" in err
    assert "test metrics over 3 seeds (mean ± sd" in out
    mrr = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "metrics.json").read_text())["selected"]["test_mrr"] for s in range(3)]
    line = next(line for line in out.splitlines() if line.strip().startswith("mrr"))
    assert f"{np.mean(mrr):.4f} ± {np.std(mrr, ddof=1):.4f}" in line
    assert main(["train", *common, "--seed", "1", "--logdir", str(tmp_path / "one")]) == 0
    alone = json.loads((tmp_path / "one" / "metrics.json").read_text())
    _assert_same(alone, json.loads((tmp_path / "seeds" / "seed-1" / "metrics.json").read_text()))


# ---------------------------------------------------------------------------------------------
# mtrec tune --stack: K trials asked at a time, trained stacked, pruned one by one


TUNE_SEARCH = "learning_rate,factorization_weight,regression_weight,ema"


def _tune_argv(ratings, root, trials: int, stack: str, search: str = TUNE_SEARCH) -> list[str]:
    return ["tune", "--ratings", str(ratings), "--preset", "seed", "--valid-fraction", "0.1", "--epochs", "4", "--embedding-dim", "8",
            "--batch-size", "64", "--trials", str(trials), "--search", search, "--stack", stack, "--root", str(root), "--no-progress"]  # fmt: skip


def _study(root) -> list:
    import optuna

    return optuna.load_study(study_name="mtrec", storage=f"sqlite:///{root / 'study.db'}").trials


def _same_trials(alone: list, stacked: list) -> None:
    """The same settings, states and values (to 1e-6), trial by trial."""
    assert [t.params for t in alone] == [t.params for t in stacked]
    assert [t.state.name for t in alone] == [t.state.name for t in stacked]
    for a, b in zip(alone, stacked):
        assert b.value == pytest.approx(a.value, rel=1e-6, abs=1e-9), a.number
        assert b.intermediate_values.keys() == a.intermediate_values.keys()


def test_a_stacked_tune_trains_the_trials_the_sequential_tune_trains(tmp_path, capsys):
    pytest.importorskip("optuna")
    ratings = _ratings_file(tmp_path)
    assert main(_tune_argv(ratings, tmp_path / "alone", 6, "1")) == 0
    assert "trained stacked" not in capsys.readouterr().out
    assert main(_tune_argv(ratings, tmp_path / "stacked", 6, "3")) == 0
    out = capsys.readouterr().out
    assert "6 trials in the study (6 of this run's trained stacked; 0 pruned)" in out
    alone, stacked = _study(tmp_path / "alone"), _study(tmp_path / "stacked")
    # the sampler's first trials are its random start-up ones, drawn alike one or three at a time
    assert len({t.params["learning_rate"] for t in stacked}) == 6
    _same_trials(alone, stacked)
    for n in range(6):
        _assert_same(*(json.loads((tmp_path / where / f"trial-{n:04d}" / "metrics.json").read_text()) for where in ("alone", "stacked")))
    best = RunConfig.load(tmp_path / "stacked" / "best" / "config.json")
    assert best.model.learning_rate == pytest.approx(max(stacked, key=lambda t: t.value).params["learning_rate"])


def test_a_slice_shares_the_shape_settings_of_its_first_trial_and_the_sampler_picks_the_rest(tmp_path):
    pytest.importorskip("optuna")
    from mtrec.studies.tuning import tune

    train, valid_train, valid, _ = _data()
    base = _config(valid_fraction=0.1)
    space = {
        "embedding_dim": ("categorical", [4, 8]),
        "negatives": ("categorical", [1, 2]),
        "sharing": ("categorical", ["hard", "separate"]),
        "learning_rate": ("log", 0.001, 0.03),
        "ema": ("categorical", [0.0, 0.9]),
    }
    result = tune(base, valid_train, valid, tmp_path / "t", trials=7, seed=3, space=space, stack=3)
    trials = _study(tmp_path / "t")
    assert result.trials == 7 and result.stacked == 6  # slices of 3, 3 and 1 (a last trial alone)
    for first, size in ((0, 3), (3, 3)):
        block = trials[first : first + size]
        for name in ("embedding_dim", "negatives", "sharing"):
            assert len({t.params[name] for t in block}) == 1, name
        assert len({t.params["learning_rate"] for t in block}) == size
    assert trials[0].params == {"embedding_dim": 8, "negatives": 1, "sharing": "hard", "learning_rate": 0.001, "ema": 0.0}  # the base


def test_a_pruned_trial_leaves_its_slice_and_the_others_finish_as_they_would_alone(tmp_path, monkeypatch, capsys):
    optuna = pytest.importorskip("optuna")

    class PruneTrialOne(optuna.pruners.BasePruner):
        """Prunes trial 1 at its second epoch, and nothing else."""

        def prune(self, study, trial) -> bool:
            return trial.number == 1 and trial.last_step is not None and trial.last_step >= 2

    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **_: PruneTrialOne())
    ratings = _ratings_file(tmp_path)
    assert main(_tune_argv(ratings, tmp_path / "alone", 3, "1")) == 0
    assert main(_tune_argv(ratings, tmp_path / "stacked", 3, "3")) == 0
    assert "3 trials in the study (3 of this run's trained stacked; 1 pruned)" in capsys.readouterr().out
    alone, stacked = _study(tmp_path / "alone"), _study(tmp_path / "stacked")
    assert [t.state.name for t in stacked] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert sorted(stacked[1].intermediate_values) == [1, 2]  # it stopped at epoch 2 while the others went on
    _same_trials(alone, stacked)
    assert not (tmp_path / "stacked" / "trial-0001").exists() and not (tmp_path / "alone" / "trial-0001").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--stack", "0"], "0 runs per group: give at least 1"),
        (["--stack", "x"], "'x' is not a number of runs"),
        (["--search", "learning_rate,depth"], "'depth' is not a searched setting: choose from embedding_dim, learning_rate"),
        (["--search", ","], "nothing is not a searched setting"),
        (["--stack", str(10**9)], f"--stack {10**9} does not fit in memory: at most"),
    ],
)
def test_bad_tune_stack_and_search_are_one_line_errors(option, message, tmp_path, capsys):
    pytest.importorskip("optuna")
    argv = [*_tune_argv(_ratings_file(tmp_path), tmp_path / "t", 2, "auto"), *option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "t").exists()


def test_a_refused_tune_shows_no_progress_bar_before_its_error(tmp_path, capsys):
    pytest.importorskip("optuna")
    argv = [a for a in _tune_argv(_ratings_file(tmp_path), tmp_path / "t", 2, str(10**9)) if a != "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtrec tune: error: --stack {10**9} does not fit in memory") and len(err.splitlines()) == 1 and "trial/s" not in err


def test_a_slice_that_memory_cuts_below_stack_says_so_once(tmp_path, capsys, monkeypatch):
    pytest.importorskip("optuna")
    import mtrec.studies.tuning as tuning

    # the base config (checked first) fits 100 at once; the trials' learning rates, as the sampler gives them, fit only 2
    base_rate: list[float] = []

    def limit(config, train) -> int:
        base_rate[:] = base_rate or [config.model.learning_rate]
        return 100 if config.model.learning_rate == base_rate[0] else 2

    monkeypatch.setattr(tuning, "memory_limit", limit)
    assert main(_tune_argv(_ratings_file(tmp_path), tmp_path / "t", 7, "3", search="learning_rate")) == 0
    err = capsys.readouterr().err
    assert err.count("fit only 2 trials in memory at once, so its slice trains 2") == 1
    assert re.search(r"mtrec: warning: --stack 3: trial \d+'s settings fit only 2", err)
    trials = _study(tmp_path / "t")
    assert len(trials) == 7 and all(t.state.name == "COMPLETE" for t in trials)


def test_ctrl_c_in_a_stacked_tune_keeps_the_finished_slice_and_a_rerun_continues(tmp_path):
    pytest.importorskip("optuna")
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    ratings, root = _ratings_file(tmp_path), tmp_path / "t"
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{tests.parent / 'src'}", "OMP_NUM_THREADS": "1"}
    argv = [*_tune_argv(ratings, root, 6, "2"), "--threads", "1"]
    # 1,215 training pairs in batches of 64: 19 group steps an epoch, 76 a slice; Ctrl-C in the second slice
    code = f"import faults; faults.run('step', 100, 'INT', {argv!r})"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr
    assert f"the trials that finished (2 in this run) stay in {root / 'study.db'}" in result.stderr
    assert [t.state.name for t in _study(root)] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert sorted(p.name for p in root.glob("trial-*")) == ["trial-0000", "trial-0001"]
    again = [*_tune_argv(ratings, root, 2, "2"), "--threads", "1"]
    rerun = subprocess.run([sys.executable, "-m", "mtrec", *again], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 trials in the study" in rerun.stdout
    assert [t.state.name for t in _study(root)][4:] == ["COMPLETE", "COMPLETE"]


def test_a_killed_search_s_running_trials_are_failed_when_the_next_opens(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    ratings, root = _ratings_file(tmp_path), tmp_path / "t"
    assert main(_tune_argv(ratings, root, 2, "2")) == 0
    # a search killed in its slice leaves its trials running (nothing told them)
    study = optuna.load_study(study_name="mtrec", storage=f"sqlite:///{root / 'study.db'}")
    study.ask(), study.ask()
    assert [t.state.name for t in _study(root)] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
    capsys.readouterr()
    assert main(_tune_argv(ratings, root, 2, "2")) == 0
    assert "6 trials in the study" in capsys.readouterr().out
    assert [t.state.name for t in _study(root)] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]


def test_ctrl_c_while_the_sampler_picks_a_slice_leaves_no_trial_running(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from mtrec.studies import tuning

    train, valid_train, valid, _ = _data()
    base = _config(valid_fraction=0.1)
    space = {"learning_rate": ("log", 0.001, 0.03), "ema": ("categorical", [0.0, 0.9])}
    picked = []
    settings = tuning._Search.settings

    def interrupted(self, trial):
        picked.append(trial.number)
        if len(picked) == 2:  # the second trial of the first slice
            raise KeyboardInterrupt
        return settings(self, trial)

    monkeypatch.setattr(tuning._Search, "settings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(base, valid_train, valid, tmp_path / "t", trials=3, seed=0, space=space, stack=3)
    assert [t.state.name for t in _study(tmp_path / "t")] == ["FAIL", "FAIL"]
