"""The report's readings follow the numbers: verdicts (who wins which task, by how much, whether
it is clear by a seed-paired t-test), overfitting, train/test readings, the sweep's leaders, the
validation-chosen headline with oracles labelled, and one golden report.md."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mtrec.config import RunConfig
from mtrec.io.fitted import EpochRecord, summarize
from mtrec.runs import METRICS_FILENAME
from mtrec.studies.experiments import CONFIGURATIONS, Configuration, sweep_configurations
from mtrec.studies.report import SUMMARY_FIGURE, TRADEOFF_FIGURE, GroupSummary, RunResult, build_report
from mtrec.studies.report.assignment import (
    answer_sharing,
    answer_weights,
    leader,
    overfitting,
    sharing_verdict,
    train_test_reading,
    verdict,
    weights_verdict,
)
from mtrec.studies.report.stats import Comparison, Stat

GOLDEN = Path(__file__).parent / "golden" / "report.md"
SHARED, SEPARATE = CONFIGURATIONS["shared-0.5-0.5"], CONFIGURATIONS["separate-0.5-0.5"]
HIGH = CONFIGURATIONS["shared-0.99-0.01"]


def synthetic_group(configuration: Configuration, test_mse, test_mrr, train_mse=None, train_bpr=None, selected=None) -> GroupSummary:
    """A configuration's runs from per-seed curves (lists of per-epoch values, one list per seed);
    ``selected`` gives each seed's selected epoch (default: the last)."""
    runs = []
    for seed, (mse, mrr) in enumerate(zip(test_mse, test_mrr)):
        epochs = len(mse)
        tr_mse = train_mse[seed] if train_mse else np.linspace(1.0, 0.8, epochs)
        tr_bpr = train_bpr[seed] if train_bpr else np.linspace(0.3, 0.2, epochs)
        history = [
            EpochRecord(
                epoch=e + 1,
                train_losses={"watch": float(tr_bpr[e]), "rating": float(tr_mse[e])},
                train_loss=configuration.factorization_weight * tr_bpr[e] + configuration.regression_weight * tr_mse[e],
                metrics={"test_mse": float(mse[e]), "test_mrr": float(mrr[e])},
            )
            for e in range(epochs)
        ]
        config = RunConfig(model={"seed": seed, **configuration.model_params()}, epochs=epochs)
        chosen = selected[seed] if selected else None
        metrics = {"completed": True, "epochs": [r.to_json() for r in history], **summarize(history, chosen)}
        path = Path(f"run/{configuration.name}/seed-{seed}")
        summary = {"name": "synthetic", "num_users": 10, "num_items": 20, "train_size": 90, "test_size": 10}
        runs.append(RunResult(path, configuration, seed, config, summary, metrics))
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


# ---------------------------------------------------------------------------------------------
# Comparisons


def test_a_difference_is_tested_by_a_seed_paired_t_test():
    a = Stat((0.90, 0.95, 1.00), (0, 1, 2))
    b = Stat((0.93, 0.94, 1.03), (0, 1, 2))
    comparison = Comparison(a, b, lower_is_better=True)
    expected = stats.ttest_rel(a.values, b.values)
    assert comparison.difference == pytest.approx(-0.01667, abs=1e-5)
    assert comparison.standard_error == pytest.approx(0.01333, abs=1e-5)
    assert comparison.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert comparison.p_value > 0.05 and not comparison.clear
    assert comparison.describe() == f"-0.0167 ± 0.0133, p = {expected.pvalue:.3f}"


def test_seeds_pair_differences_even_when_the_seeds_spread_more():
    """Seed k is the same split for both: consistent per-seed differences are clear, whatever the spread."""
    comparison = Comparison(Stat((0.90, 0.95, 1.00), (0, 1, 2)), Stat((0.91, 0.96, 1.012), (0, 1, 2)), True)
    assert comparison.clear and comparison.a_better and comparison.p_value < 0.05


def test_one_seed_or_identical_runs_are_never_clear():
    assert not Comparison(Stat((0.9,), (0,)), Stat((1.0,), (0,)), True).clear
    same = Comparison(Stat((0.9, 0.8), (0, 1)), Stat((0.9, 0.8), (0, 1)), True)
    assert same.p_value == 1.0 and not same.clear


# ---------------------------------------------------------------------------------------------
# Verdicts


@pytest.mark.parametrize(
    "shared_mse, shared_mrr, separate_mse, separate_mrr, outcome, opening",
    [
        ([0.90, 0.91, 0.92], [0.060, 0.061, 0.062], [1.00, 1.01, 1.02], [0.050, 0.051, 0.052], "a", "Yes."),
        ([1.00, 1.01, 1.02], [0.050, 0.051, 0.052], [0.90, 0.91, 0.92], [0.060, 0.061, 0.062], "b", "No."),
        ([0.90, 0.91, 0.92], [0.050, 0.051, 0.052], [1.00, 1.01, 1.02], [0.060, 0.061, 0.062], "mixed", "Not overall"),
        ([0.90, 0.91, 0.92], [0.050, 0.051, 0.052], [1.00, 1.01, 1.02], [0.051, 0.050, 0.052], "a-partly", "Partly."),
        ([0.90, 0.95, 1.00], [0.050, 0.055, 0.060], [0.93, 0.94, 1.03], [0.051, 0.054, 0.061], "noise", "Not shown"),
    ],
    ids=["shared-better", "separate-better", "trade-off", "one-task-within-noise", "within-the-seed-spread"],
)
def test_question_1s_verdict_follows_the_per_seed_differences(shared_mse, shared_mrr, separate_mse, separate_mrr, outcome, opening):
    shared = synthetic_group(SHARED, flat(shared_mse), flat(shared_mrr))
    separate = synthetic_group(SEPARATE, flat(separate_mse), flat(separate_mrr))
    found = sharing_verdict(shared, separate)
    assert found.outcome == outcome
    mse = found.comparisons["test_mse"]
    assert mse.difference == pytest.approx(np.mean(shared_mse) - np.mean(separate_mse))
    assert mse.clear == ("test_mse" in found.wins_a + found.wins_b)
    assert answer_sharing(shared, separate)[0].startswith(opening)


def test_the_headline_is_the_epoch_chosen_on_validation_not_the_best_test_epoch():
    """The selected epoch (3) is worse on test than the best test epoch (2): the verdict reads epoch 3."""
    curve_a = [[1.0, 0.80, 0.90, 0.95]] * 3
    curve_b = [[1.0, 0.85, 0.85, 0.99]] * 3
    a = synthetic_group(SHARED, [[v + s / 100 for v in c] for s, c in enumerate(curve_a)], flat([0.05] * 3, 4), selected=[3, 3, 3])
    b = synthetic_group(SEPARATE, [[v + s / 100 for v in c] for s, c in enumerate(curve_b)], flat([0.05] * 3, 4), selected=[3, 3, 3])
    assert a.selected("test_mse").mean == pytest.approx(0.91) and a.best("test_mse").mean == pytest.approx(0.81)
    assert sharing_verdict(a, b).wins_b == ["test_mse"]  # at the selected epoch separate is better
    assert sharing_verdict(a, b, "best").wins_a == ["test_mse"]  # the oracle says the opposite
    assert "Oracle check" in answer_sharing(a, b)[3]


def test_overfitting_is_a_turn_of_the_test_curve_while_the_training_fit_improves():
    rising = [[1.0, 0.9, 0.8, 0.85, 0.95], [1.0, 0.91, 0.81, 0.86, 0.96]]
    falling = [[1.0, 0.8, 0.6, 0.4, 0.2]] * 2
    group = synthetic_group(SEPARATE, rising, flat([0.05, 0.05]), train_mse=falling)
    found = overfitting(group, "test_mse")
    assert found is not None and found.best_epoch == "3" and found.train_improves
    assert found.change == pytest.approx(0.955 / 0.805 - 1)
    assert "it overfits after about epoch 3" in found.sentence()
    assert overfitting(group, "test_mrr") is None  # flat: no turn


def test_a_test_curve_that_turns_with_the_training_fit_is_not_overfitting():
    rising = [[1.0, 0.9, 0.8, 0.85, 0.95], [1.0, 0.91, 0.81, 0.86, 0.96]]
    train_rising = [[0.9, 0.8, 0.7, 0.8, 0.9]] * 2
    found = overfitting(synthetic_group(SEPARATE, rising, flat([0.05, 0.05]), train_mse=train_rising), "test_mse")
    assert found is not None and not found.train_improves
    assert "not overfitting" in found.sentence()


def test_a_wider_train_test_gap_is_read_as_overfitting_more():
    separate = synthetic_group(SEPARATE, flat([0.95, 0.96]), flat([0.05, 0.05]), train_mse=[[0.2] * 5] * 2)
    shared = synthetic_group(SHARED, flat([0.80, 0.81]), flat([0.05, 0.05]), train_mse=[[0.8, 0.8, 0.8, 0.8, 0.79]] * 2)
    reading = train_test_reading(shared, "shared", separate, "separate", "test_mse")
    assert reading.kind == "overfits-more" and reading.loser == "separate"
    assert "although they fit the training ratings more closely" in reading.sentence()


def test_question_2_explains_each_task_by_its_training_fit():
    high = synthetic_group(HIGH, flat([1.20, 1.21]), flat([0.080, 0.081]), train_bpr=[[0.1] * 5] * 2)
    balanced = synthetic_group(SHARED, flat([0.90, 0.91]), flat([0.060, 0.061]))
    found = weights_verdict(high, balanced)
    assert found.outcome == "mixed" and found.wins_a == ["test_mrr"] and found.wins_b == ["test_mse"]
    assert found.comparisons["test_mrr"].difference == pytest.approx(0.02)
    names = ("the λF=0.99/λR=0.01 runs", "the λF=0.5/λR=0.5 runs")
    assert train_test_reading(high, names[0], balanced, names[1], "test_mrr").kind == "better-fit"
    assert train_test_reading(high, names[0], balanced, names[1], "test_mse").kind == "overfits-more"


def test_the_control_without_sharing_points_at_the_shared_embeddings_when_within_noise():
    high = synthetic_group(HIGH, flat([1.2, 1.21]), flat([0.08, 0.081]))
    balanced = synthetic_group(SHARED, flat([0.9, 0.91]), flat([0.06, 0.061]))
    unshared_high = synthetic_group(CONFIGURATIONS["separate-0.99-0.01"], flat([1.0, 1.02]), flat([0.05, 0.052]))
    within_noise = (unshared_high, synthetic_group(SEPARATE, flat([1.01, 1.01]), flat([0.051, 0.051])))
    noise = Comparison(within_noise[0].selected("test_mse"), within_noise[1].selected("test_mse"), True)
    assert verdict("a", "b", {"test_mse": noise}).outcome == "noise"
    assert "they change through the shared embeddings" in answer_weights(high, balanced, within_noise)[-1]
    clear = (unshared_high, synthetic_group(SEPARATE, flat([0.7, 0.71]), flat([0.051, 0.053])))
    assert "Even without sharing the weights change the results" in answer_weights(high, balanced, clear)[-1]


def test_the_sweep_names_its_leaders_and_draws_the_trade_off(tmp_path):
    groups = []
    for configuration in sweep_configurations(0.5):
        weight = configuration.factorization_weight
        group = synthetic_group(configuration, flat([1 + weight, 1.01 + weight]), flat([0.02 + weight / 10] * 2))
        write_runs(group, tmp_path / "run" / "sweep")
        groups.append(group)
    shared = [g for g in groups if g.configuration.sharing == "hard"]
    mse, mrr = leader(shared, "test_mse"), leader(shared, "test_mrr")
    assert mse.first.configuration.factorization_weight == 0 and mse.second.configuration.factorization_weight == 0.5
    assert mse.clear and mrr.first.configuration.factorization_weight == 1
    files = build_report([tmp_path / "run"], tmp_path / "report")
    assert (tmp_path / "report" / TRADEOFF_FIGURE).is_file() and not (tmp_path / "report" / SUMMARY_FIGURE).exists()
    assert math.isclose(json.loads(files.data.read_text())["sweep"][0]["selected"]["test_mse"]["mean"], 2.005)


def test_a_sweep_with_one_finished_weight_and_no_test_mse_still_reports(tmp_path):
    configuration = sweep_configurations(0.5)[1]
    group = synthetic_group(configuration, flat([float("nan")] * 2), flat([0.05, 0.06]))
    write_runs(group, tmp_path / "run" / "sweep")
    files = build_report([tmp_path / "run"], tmp_path / "report")
    markdown = files.markdown.read_text()
    assert "mtrec experiments --sweep --seeds 2" in markdown and "--sweep-step" not in markdown
    from mtrec.studies.report import summary_figure

    summary_figure([group], tmp_path / "summary.png")  # no finite test MSE: that panel stays empty
    assert (tmp_path / "summary.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# The golden report


def golden_runs(root: Path) -> None:
    """Four configurations x 3 seeds with every reading the report knows, and a small sweep."""
    rng = np.random.default_rng(0)
    epochs = 8

    def curves(start, best_at, best, end, noise):
        values = np.interp(np.arange(1, epochs + 1), [1, best_at, epochs], [start, best, end])
        return [list(values + rng.normal(0, noise, epochs)) for _ in range(3)]

    shared = synthetic_group(
        SHARED,
        curves(1.2, 3, 0.84, 2.5, 0.005),
        curves(0.03, 8, 0.058, 0.058, 0.001),
        train_mse=[list(np.linspace(1.0, 0.1, epochs))] * 3,
        selected=[3, 3, 4],
    )
    separate = synthetic_group(
        SEPARATE,
        curves(1.2, 3, 0.84, 2.3, 0.005),
        curves(0.03, 8, 0.13, 0.13, 0.001),
        train_mse=[list(np.linspace(1.0, 0.1, epochs))] * 3,
        selected=[3, 4, 3],
    )
    high = synthetic_group(
        HIGH, curves(1.3, 6, 0.84, 0.97, 0.004), curves(0.03, 8, 0.13, 0.13, 0.001), train_mse=[list(np.linspace(1.0, 0.55, epochs))] * 3
    )
    unshared = synthetic_group(
        CONFIGURATIONS["separate-0.99-0.01"],
        curves(1.2, 3, 0.84, 2.28, 0.005),
        curves(0.03, 8, 0.131, 0.131, 0.001),
        train_mse=[list(np.linspace(1.0, 0.1, epochs))] * 3,
    )
    for group in (shared, separate, high, unshared):
        write_runs(group, root)
    for configuration in sweep_configurations(0.5):
        weight = configuration.factorization_weight
        write_runs(
            synthetic_group(
                configuration,
                curves(1 + weight, 4, 0.9 + weight / 10, 1 + weight, 0.003),
                curves(0.02, 8, 0.02 + weight / 10, 0.02 + weight / 10, 0.001),
            ),
            root / "sweep",
        )


@pytest.mark.slow
def test_the_report_of_known_runs_is_the_golden_one(tmp_path, monkeypatch):
    """The whole report.md of fixed synthetic runs. After a deliberate change of wording, rewrite the
    golden file with MTREC_UPDATE_GOLDEN=1 and read the diff."""
    monkeypatch.chdir(tmp_path)
    golden_runs(Path("run"))
    markdown = build_report(["run"], "report").markdown.read_text()
    if os.environ.get("MTREC_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(markdown)
    assert_same_text_and_numbers(markdown, GOLDEN.read_text())


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def assert_same_text_and_numbers(text: str, golden: str) -> None:
    """The same words and whole numbers, and every decimal within one unit of its last printed digit.

    The golden file was written on one machine; another CPU may sum the same floats in another
    order, which can move a rounded decimal by one unit in its last digit, never the words.
    """
    assert NUMBER.split(text) == NUMBER.split(golden)
    for got, recorded in zip(NUMBER.findall(text), NUMBER.findall(golden), strict=True):
        decimals = len(recorded.partition(".")[2])
        tolerance = 1.01 * 10.0**-decimals if decimals else 0.0
        assert abs(float(got) - float(recorded)) <= tolerance, (got, recorded)


def test_the_golden_comparison_allows_a_last_digit_and_nothing_more():
    assert_same_text_and_numbers("MSE 0.8408 at epoch 3", "MSE 0.8407 at epoch 3")
    for other in ("MSE 0.8409 at epoch 3", "MSE 0.8407 at epoch 4", "MRR 0.8407 at epoch 3"):
        with pytest.raises(AssertionError):
            assert_same_text_and_numbers(other, "MSE 0.8407 at epoch 3")
