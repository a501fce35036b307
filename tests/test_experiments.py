"""Experiments and their report: a small real experiment on MovieLens whose report repeats the
runs' own numbers, reuse and --force, interrupted and corrupt runs, bad input, and answers
whose wording follows the measured numbers."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import random_interactions
from mtrec.cli import main
from mtrec.errors import ConfigError
from mtrec.experiments import (
    CONFIGURATIONS,
    Configuration,
    configurations_named,
    plan_runs,
    run_experiment,
    sweep_configurations,
)
from mtrec.config import RunConfig
from mtrec.fitted import EpochRecord, summarize
from mtrec.report import (
    CURVES,
    FIGURES,
    SUMMARY_FIGURE,
    TABLE_HEADER,
    TRADEOFF_FIGURE,
    GroupSummary,
    RunResult,
    answer_sharing,
    answer_weights,
    build_report,
)
from mtrec.runs import METRICS_FILENAME, is_finished

SEEDS, EPOCHS = 2, 3


# ---------------------------------------------------------------------------------------------
# A small real experiment: 4 configurations x 2 seeds x 3 epochs on MovieLens 100K


def experiments(tmp: Path, data_dir: Path, *more: str) -> int:
    return main(
        [
            "experiments",
            "--seeds", str(SEEDS),
            "--epochs", str(EPOCHS),
            "--root", str(tmp / "run"),
            "--out", str(tmp / "report"),
            "--data-dir", str(data_dir),
            "--no-progress",
            "--threads", "1",
            *more,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, data_dir) -> Path:
    tmp = tmp_path_factory.mktemp("experiment")
    assert experiments(tmp, data_dir) == 0
    return tmp


def mtimes(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in sorted(root.rglob(METRICS_FILENAME))}


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The results table of report.md: configuration label -> cells."""
    lines = markdown.split("## Results", 1)[1].strip().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    assert rows[0] == list(TABLE_HEADER)
    return {row[0]: row for row in rows[2:]}


def test_every_run_is_a_complete_training_run(experiment):
    for name in CONFIGURATIONS:
        for seed in range(SEEDS):
            run_dir = experiment / "run" / name / f"seed-{seed}"
            metrics = json.loads((run_dir / METRICS_FILENAME).read_text())
            config = json.loads((run_dir / "config.json").read_text())
            assert metrics["completed"] and len(metrics["epochs"]) == EPOCHS
            assert config["model"]["seed"] == seed
            assert Configuration.of(RunConfig.from_json(config)) == CONFIGURATIONS[name]
            assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "model.safetensors").is_file()


def test_report_writes_every_figure_and_a_self_contained_page(experiment):
    report = experiment / "report"
    for figure in FIGURES:
        if figure != TRADEOFF_FIGURE:  # no sweep in this experiment
            assert (report / figure).read_bytes().startswith(b"\x89PNG"), figure
    assert not (report / TRADEOFF_FIGURE).exists()
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(CURVES) + 1
    assert not re.search(r'src="(?!data:)', page)  # nothing to fetch
    markdown = (report / "report.md").read_text()
    for heading in ("1. Does parameter sharing outperform", "2. With sharing", "## Results"):
        assert heading in markdown
    assert "Not answered" not in markdown


def test_report_numbers_are_the_runs_own(experiment):
    data = json.loads((experiment / "report" / "report.json").read_text())
    rows = table_rows((experiment / "report" / "report.md").read_text())
    assert len(data["groups"]) == len(CONFIGURATIONS) == len(rows)
    for group in data["groups"]:
        runs = [json.loads((Path(path) / METRICS_FILENAME).read_text()) for path in group["runs"]]
        assert group["seeds"] == list(range(SEEDS))
        for field, stat in group["final"].items():
            assert stat["values"] == [run["final"][field] for run in runs]
            assert stat["mean"] == pytest.approx(np.mean(stat["values"]), rel=1e-12)
            assert stat["sd"] == pytest.approx(np.std(stat["values"], ddof=1), rel=1e-9)
        for field, best in group["best"].items():
            assert best["value"]["values"] == [run[f"oracle_best_{field}"]["value"] for run in runs]
            assert best["epoch"]["values"] == [run[f"oracle_best_{field}"]["epoch"] for run in runs]
        row = rows[group["label"]]
        final, best = group["final"], group["best"]
        assert row[2] == f"{final['test_mse']['mean']:.4f} ± {final['test_mse']['sd']:.4f}"
        assert row[3] == f"{best['test_mse']['value']['mean']:.4f} ± {best['test_mse']['value']['sd']:.4f}"
        assert row[5] == f"{final['test_mrr']['mean']:.4f} ± {final['test_mrr']['sd']:.4f}"
        assert row[8] == f"{final['train_mse']['mean']:.4f} ± {final['train_mse']['sd']:.4f}"
        assert row[9] == f"{final['train_bpr']['mean']:.4f} ± {final['train_bpr']['sd']:.4f}"


def test_a_run_is_reproduced_by_the_train_command_the_report_gives(experiment, data_dir, tmp_path):
    command = next(
        line for line in (experiment / "report" / "report.md").read_text().splitlines() if line.startswith("mtrec train")
    )
    run_dir = Path(command.split("--logdir ")[1].split()[0])
    args = command.split()[1:]
    args[args.index("--logdir") + 1] = str(tmp_path / "again")
    assert main([*args, "--data-dir", str(data_dir), "--no-progress", "--threads", "1"]) == 0

    def without_timing(metrics):
        return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in metrics["epochs"]]

    original = json.loads((run_dir / METRICS_FILENAME).read_text())
    again = json.loads((tmp_path / "again" / METRICS_FILENAME).read_text())
    assert without_timing(again) == without_timing(original)


def test_second_invocation_trains_nothing(experiment, data_dir, capsys):
    before = mtimes(experiment / "run")
    assert experiments(experiment, data_dir) == 0
    assert f"0 runs trained, {len(CONFIGURATIONS) * SEEDS} reused" in capsys.readouterr().out
    assert mtimes(experiment / "run") == before


def test_force_trains_again(experiment, data_dir, capsys):
    before = mtimes(experiment / "run")
    assert experiments(experiment, data_dir, "--force", "--configs", "shared-0.5-0.5") == 0
    assert f"{SEEDS} runs trained, 0 reused" in capsys.readouterr().out
    after = mtimes(experiment / "run")
    changed = {path.parent.parent.name for path in before if before[path] != after[path]}
    assert changed == {"shared-0.5-0.5"}


def test_an_interrupted_run_is_trained_again(experiment, data_dir, capsys):
    """A run without metrics.json (as Ctrl-C leaves it) is not finished; the finished ones are reused."""
    (experiment / "run" / "separate-0.5-0.5" / "seed-1" / METRICS_FILENAME).unlink()
    assert experiments(experiment, data_dir) == 0
    assert f"1 runs trained, {len(CONFIGURATIONS) * SEEDS - 1} reused" in capsys.readouterr().out


def test_a_corrupt_metrics_file_is_named_and_the_other_runs_still_report(experiment, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(experiment / "run", root)
    corrupt = root / "shared-0.99-0.01" / "seed-0" / METRICS_FILENAME
    corrupt.write_text('{"completed": tr')
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    assert str(corrupt) in capsys.readouterr().err
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert str(corrupt) in markdown.split("## Runs left out")[1]
    rows = table_rows(markdown)
    assert rows[CONFIGURATIONS["shared-0.99-0.01"].label][1] == "1"
    assert rows[CONFIGURATIONS["shared-0.5-0.5"].label][1] == str(SEEDS)
    assert (
        "Not every configuration has every seed (shared, λF=0.99, λR=0.01: seeds 1). The table averages each "
        "configuration over its own seeds; a difference in the text pairs only the seeds both configurations have"
    ) in markdown


def test_report_accepts_individual_run_directories(experiment, tmp_path):
    runs = [experiment / "run" / name / "seed-0" for name in ("shared-0.5-0.5", "separate-0.5-0.5")]
    files = build_report(runs, tmp_path)
    assert files.runs == 2
    assert "Not answered: it needs finished runs of shared-0.99-0.01" in files.markdown.read_text()


# ---------------------------------------------------------------------------------------------
# Ctrl-C and bad input


def test_ctrl_c_leaves_finished_runs_complete_and_the_interrupted_one_unfinished(tmp_path):
    data = random_interactions(num_users=40, num_items=50, n=600, seed=1)
    test = random_interactions(num_users=40, num_items=50, n=100, seed=2)
    runs = plan_runs([CONFIGURATIONS["shared-0.5-0.5"], CONFIGURATIONS["separate-0.5-0.5"]], 1, tmp_path)

    def config_of(planned):
        return RunConfig(model={"embedding_dim": 4, "seed": planned.seed, **planned.configuration.model_params()}, epochs=3)

    def interrupt_second_run(record):
        if runs[1].path.exists() and record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(runs, config_of, lambda seed: (data, None, test, {"name": "random"}), on_epoch=interrupt_second_run)
    configs = [config_of(planned) for planned in runs]
    assert is_finished(runs[0].path, configs[0])
    assert not is_finished(runs[1].path, configs[1]) and not (runs[1].path / METRICS_FILENAME).exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--configs", "shared-0.5-0.5", "shared-0.7-0.3"],
            "unknown configuration shared-0.7-0.3; known: shared-0.99-0.01, shared-0.5-0.5, separate-0.5-0.5",
        ),
        (["--seeds", "0"], "seeds must be a positive whole number, got 0"),
        (["--sweep", "--sweep-step", "1.5"], "the sweep step must be in (0, 1), got 1.5"),
        (["--sweep", "--sweep-step", "0"], "the sweep step must be in (0, 1), got 0.0"),
    ],
)
def test_bad_input_is_a_usage_error(options, message, tmp_path, data_dir, capsys):
    assert experiments(tmp_path, data_dir, *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_report_of_a_folder_without_runs_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no runs found" in capsys.readouterr().err


def test_sweep_goes_from_0_to_1_shared_and_separate():
    sweep = sweep_configurations(0.25)
    assert [c.factorization_weight for c in sweep] == [0, 0.25, 0.5, 0.75, 1] * 2
    assert [c.regression_weight for c in sweep[:5]] == [1, 0.75, 0.5, 0.25, 0]
    assert [c.embedding_sharing for c in sweep] == [True] * 5 + [False] * 5
    names = [c.name for c in sweep_configurations(0.3)]
    assert names[:5] == ["shared-0-1", "shared-0.3-0.7", "shared-0.6-0.4", "shared-0.9-0.1", "shared-1-0"]
    assert configurations_named(["separate-0.5-0.5"]) == [Configuration(False, 0.5, 0.5)]
    with pytest.raises(ConfigError):
        sweep_configurations(1.0)


# ---------------------------------------------------------------------------------------------
# The answers follow the numbers: synthetic runs


def synthetic_group(configuration: Configuration, test_mse, test_mrr, train_mse=None, train_bpr=None) -> GroupSummary:
    """A configuration's runs from per-seed curves (lists of per-epoch values, one list per seed)."""
    runs = []
    for seed, (mse, mrr) in enumerate(zip(test_mse, test_mrr)):
        epochs = len(mse)
        tr_mse = train_mse[seed] if train_mse else np.linspace(1.0, 0.8, epochs)
        tr_bpr = train_bpr[seed] if train_bpr else np.linspace(0.3, 0.2, epochs)
        history = [
            EpochRecord(
                epoch=e + 1,
                train_bpr=float(tr_bpr[e]),
                train_mse=float(tr_mse[e]),
                train_loss=configuration.factorization_weight * tr_bpr[e] + configuration.regression_weight * tr_mse[e],
                metrics={"test_mse": float(mse[e]), "test_mrr": float(mrr[e])},
            )
            for e in range(epochs)
        ]
        config = RunConfig(model={"seed": seed, **configuration.model_params()}, epochs=epochs)
        metrics = {"completed": True, "epochs": [r.to_json() for r in history], **summarize(history)}
        path = Path(f"run/{configuration.name}/seed-{seed}")
        runs.append(RunResult(path, configuration, seed, config, {"name": "synthetic"}, metrics))
    return GroupSummary.of(configuration, runs)


def write_runs(group: GroupSummary, root: Path) -> None:
    """The group's runs as finished run directories ``root/<configuration>/seed-<k>``."""
    for run in group.runs:
        run_dir = root / group.configuration.name / f"seed-{run.seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(run.config.to_json(summary=run.data_summary)))
        (run_dir / METRICS_FILENAME).write_text(json.dumps(run.metrics))


def flat(values: list[float], epochs: int = 5) -> list[list[float]]:
    return [[value] * epochs for value in values]


SHARED, SEPARATE = CONFIGURATIONS["shared-0.5-0.5"], CONFIGURATIONS["separate-0.5-0.5"]
HIGH = CONFIGURATIONS["shared-0.99-0.01"]


@pytest.mark.parametrize(
    "shared_mse, shared_mrr, separate_mse, separate_mrr, opening",
    [
        ([0.90, 0.91, 0.92], [0.060, 0.061, 0.062], [1.00, 1.01, 1.02], [0.050, 0.051, 0.052], "Yes."),
        ([1.00, 1.01, 1.02], [0.050, 0.051, 0.052], [0.90, 0.91, 0.92], [0.060, 0.061, 0.062], "No."),
        ([0.90, 0.91, 0.92], [0.050, 0.051, 0.052], [1.00, 1.01, 1.02], [0.060, 0.061, 0.062], "Not overall"),
        ([0.90, 0.91, 0.92], [0.050, 0.051, 0.052], [1.00, 1.01, 1.02], [0.051, 0.050, 0.052], "Partly."),
        # Seeds spread more than the configurations differ, but seed k is the same split for both:
        # the per-seed differences are consistent, so the difference is clear.
        ([0.90, 0.95, 1.00], [0.050, 0.055, 0.060], [0.91, 0.96, 1.01], [0.049, 0.054, 0.059], "Yes."),
    ],
    ids=["shared-better", "separate-better", "trade-off", "one-task-within-noise", "paired-by-seed"],
)
def test_the_answer_to_question_1_follows_the_per_seed_differences(
    shared_mse, shared_mrr, separate_mse, separate_mrr, opening
):
    shared = synthetic_group(SHARED, flat(shared_mse), flat(shared_mrr))
    separate = synthetic_group(SEPARATE, flat(separate_mse), flat(separate_mrr))
    text = " ".join(answer_sharing(shared, separate))
    assert text.startswith(opening)
    assert f"shared embeddings reach test MSE {np.mean(shared_mse):.4f} ± {np.std(shared_mse, ddof=1):.4f}" in text


def test_differences_inside_the_seed_spread_are_called_noise():
    """Per-seed differences -0.03, +0.01, -0.03: mean -0.0167 < 2 x standard error 0.0133."""
    shared = synthetic_group(SHARED, flat([0.90, 0.95, 1.00]), flat([0.050, 0.055, 0.060]))
    separate = synthetic_group(SEPARATE, flat([0.93, 0.94, 1.03]), flat([0.051, 0.054, 0.061]))
    text = " ".join(answer_sharing(shared, separate))
    assert text.startswith("Not shown by these runs.")
    assert "On rating prediction (test MSE) the difference (-0.0167 ± 0.0133) is within noise; on ranking" in text


def test_a_rising_test_mse_with_falling_train_mse_is_called_overfitting_at_its_epoch():
    rising = [[1.0, 0.9, 0.8, 0.85, 0.95], [1.0, 0.91, 0.81, 0.86, 0.96]]
    falling = [[1.0, 0.8, 0.6, 0.4, 0.2]] * 2
    separate = synthetic_group(SEPARATE, rising, flat([0.05, 0.05]), train_mse=falling)
    shared = synthetic_group(SHARED, flat([0.80, 0.81]), flat([0.05, 0.05]))
    text = " ".join(answer_sharing(shared, separate))
    assert (
        "separate, λF=0.5, λR=0.5: test MSE is best at epoch 3, at 0.8050 ± 0.0071, and ends 19% higher, at "
        "0.9550 ± 0.0071 (epoch 5), while train MSE falls from 0.6000 ± 0.0000 to 0.2000 ± 0.0000: it overfits "
        "after about epoch 3."
    ) in text
    assert "The train–test gap is 0.0050 ± 0.0071 for shared embeddings and 0.7550 ± 0.0071 for separate" in text
    assert (
        "Separate embeddings predict held-out ratings worse because they overfit more, although they fit the "
        "training ratings more closely."
    ) in text
    assert "Elsewhere the last-epoch value is within noise of the best one: no test curve has turned by epoch 5" in text


def test_weights_answer_explains_each_task_by_its_training_fit():
    high = synthetic_group(HIGH, flat([1.20, 1.21]), flat([0.080, 0.081]), train_bpr=[[0.1] * 5] * 2)
    balanced = synthetic_group(SHARED, flat([0.90, 0.91]), flat([0.060, 0.061]))
    text = " ".join(answer_weights(high, balanced))
    assert (
        "The λF=0.99/λR=0.01 runs do better on ranking (test MRR); "
        "the λF=0.5/λR=0.5 runs do better on rating prediction (test MSE)."
    ) in text
    assert "Why: the weights set how much each task shapes the shared embeddings." in text
    assert "The λF=0.99/λR=0.01 runs predict held-out ratings worse because they overfit more." in text
    assert (
        "train BPR loss is 0.1000 ± 0.0000 for the λF=0.99/λR=0.01 runs and 0.2000 ± 0.0000 for the "
        "λF=0.5/λR=0.5 runs; test MRR 0.0805 ± 0.0007 and 0.0605 ± 0.0007. The λF=0.99/λR=0.01 runs also have "
        "the lower train BPR loss: their advantage is a better fit of the training data, not less overfitting."
    ) in text


def test_weights_control_without_sharing_within_noise_points_at_the_shared_embeddings():
    high = synthetic_group(HIGH, flat([1.2, 1.21]), flat([0.08, 0.081]))
    balanced = synthetic_group(SHARED, flat([0.9, 0.91]), flat([0.06, 0.061]))
    unshared = (
        synthetic_group(CONFIGURATIONS["separate-0.99-0.01"], flat([1.0, 1.02]), flat([0.05, 0.052])),
        synthetic_group(SEPARATE, flat([1.01, 1.01]), flat([0.051, 0.051])),
    )
    assert "they change through the shared embeddings" in answer_weights(high, balanced, unshared)[-1]
    unshared_clear = (unshared[0], synthetic_group(SEPARATE, flat([0.7, 0.71]), flat([0.051, 0.053])))
    assert "Even without sharing the weights change the results" in answer_weights(high, balanced, unshared_clear)[-1]


def test_sweep_report_draws_the_trade_off_curve(tmp_path):
    for configuration in sweep_configurations(0.5):
        weight = configuration.factorization_weight
        group = synthetic_group(configuration, flat([1 + weight, 1.01 + weight]), flat([0.02 + weight / 10] * 2))
        write_runs(group, tmp_path / "run" / "sweep")
    files = build_report([tmp_path / "run"], tmp_path / "report")
    assert (tmp_path / "report" / TRADEOFF_FIGURE).is_file() and not (tmp_path / "report" / SUMMARY_FIGURE).exists()
    markdown = files.markdown.read_text()
    assert "Lowest test MSE at the last epoch: λF=0 (1.0050 ± 0.0071), clearly ahead of λF=0.5 (1.5050" in markdown
    assert "Highest test MRR at the last epoch: λF=1 (0.1200 ± 0.0000), clearly ahead of λF=0.5" in markdown
    assert math.isclose(json.loads(files.data.read_text())["sweep"][0]["final"]["test_mse"]["mean"], 2.005)


def test_a_test_mse_that_rises_with_the_train_mse_is_not_called_overfitting():
    rising = [[1.0, 0.9, 0.8, 0.85, 0.95], [1.0, 0.91, 0.81, 0.86, 0.96]]
    train_rising = [[0.9, 0.8, 0.7, 0.8, 0.9]] * 2
    separate = synthetic_group(SEPARATE, rising, flat([0.05, 0.05]), train_mse=train_rising)
    shared = synthetic_group(SHARED, flat([0.80, 0.81]), flat([0.05, 0.05]))
    text = " ".join(answer_sharing(shared, separate))
    assert (
        "while train MSE rises from 0.7000 ± 0.0000 to 0.9000 ± 0.0000: the training fit worsens too, so this is "
        "not overfitting: after about epoch 3 training moves away from this task."
    ) in text
    assert "it overfits" not in text


def test_a_sweep_with_one_finished_weight_and_no_test_mse_still_reports(tmp_path):
    configuration = sweep_configurations(0.5)[1]
    group = synthetic_group(configuration, flat([float("nan")] * 2), flat([0.05, 0.06]))
    write_runs(group, tmp_path / "run" / "sweep")
    files = build_report([tmp_path / "run"], tmp_path / "report")
    markdown = files.markdown.read_text()
    assert "mtrec experiments --sweep --seeds 2" in markdown and "--sweep-step" not in markdown
    from mtrec.report import summary_figure

    summary_figure([group], tmp_path / "summary.png")  # no finite test MSE: that panel stays empty
    assert (tmp_path / "summary.png").stat().st_size > 0

