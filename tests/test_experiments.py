"""Experiments and their report: a small real experiment on MovieLens whose report repeats the
runs' own numbers, reuse and --force, interrupted and corrupt runs, bad input, and answers
whose wording follows the measured numbers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import random_interactions

from mtrec.cli import main
from mtrec.config import RunConfig
from mtrec.errors import ConfigError
from mtrec.runs import METRICS_FILENAME, is_finished, staging_dir
from mtrec.studies.experiments import (
    CONFIGURATIONS,
    Configuration,
    configurations_named,
    plan_runs,
    run_experiment,
    sweep_configurations,
)
from mtrec.studies.report import (
    CURVES,
    FIGURES,
    TABLE_HEADER,
    TRADEOFF_FIGURE,
    build_report,
)

# The experiments train real runs on MovieLens 100K
pytestmark = pytest.mark.slow

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
        for field, stat in group["selected"].items():
            if field != "epoch":
                chosen = [next(e for e in run["epochs"] if e["epoch"] == run["selected"]["epoch"]) for run in runs]
                assert stat["values"] == [epoch[field] for epoch in chosen]
                assert stat["mean"] == pytest.approx(np.mean(stat["values"]), rel=1e-12)
                assert stat["sd"] == pytest.approx(np.std(stat["values"], ddof=1), rel=1e-9)
        for field, best in group["oracle_best"].items():
            assert best["value"]["values"] == [run[f"oracle_best_{field}"]["value"] for run in runs]
            assert best["epoch"]["values"] == [run[f"oracle_best_{field}"]["epoch"] for run in runs]
        row = rows[group["label"]]
        selected, best = group["selected"], group["oracle_best"]
        assert row[2] == str(EPOCHS)  # the seed preset keeps the last epoch
        assert row[3] == f"{selected['test_mse']['mean']:.4f} ± {selected['test_mse']['sd']:.4f}"
        assert row[4] == f"{selected['test_mrr']['mean']:.4f} ± {selected['test_mrr']['sd']:.4f}"
        assert row[5] == f"{selected['test_ndcg@10']['mean']:.4f} ± {selected['test_ndcg@10']['sd']:.4f}"
        assert row[8].startswith(f"{best['test_mse']['value']['mean']:.4f} ± {best['test_mse']['value']['sd']:.4f} (")


def test_a_run_is_reproduced_by_the_train_command_the_report_gives(experiment, data_dir, tmp_path):
    command = next(line for line in (experiment / "report" / "report.md").read_text().splitlines() if line.startswith("mtrec train"))
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
        if staging_dir(runs[1].path).exists() and record.epoch == 2:
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
    assert [c.sharing for c in sweep] == ["hard"] * 5 + ["separate"] * 5
    names = [c.name for c in sweep_configurations(0.3)]
    assert names[:5] == ["shared-0-1", "shared-0.3-0.7", "shared-0.6-0.4", "shared-0.9-0.1", "shared-1-0"]
    assert configurations_named(["separate-0.5-0.5"]) == [Configuration("separate", 0.5, 0.5)]
    with pytest.raises(ConfigError):
        sweep_configurations(1.0)
