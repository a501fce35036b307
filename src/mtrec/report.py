"""The experiment report, rebuilt from finished runs: figures, a results table and the answers.

The runs found below the given folders are grouped by configuration (sharing, λF, λR); runs
under ``sweep/`` form the λ sweep. For each configuration the per-epoch curves are averaged
over seeds, with the min–max band; the table gives mean ± standard deviation over seeds.
Seed k gives every configuration the same split, so two configurations are compared seed by
seed: a difference counts as real only when its mean exceeds twice its standard error;
otherwise the text says it is within noise. Every number in the text and the table is read
from the runs' metrics.json, and ``report.json`` holds them unrounded.

Written to the output folder: ``report.md``, ``report.html`` (self-contained, the figures
embedded), ``report.json`` and one PNG per figure.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mtrec.errors import DataError
from mtrec.experiments import CONFIGURATIONS, SWEEP_DIRNAME, Configuration
from mtrec.runs import CONFIG_FILENAME, METRICS_FILENAME, read_config, read_metrics

#: Per-epoch curves: metrics.json field -> (figure file, title, y label).
CURVES = {
    "train_bpr": ("train_bpr.png", "Training BPR loss", "BPR loss  mean(1 − σ(p⁺ − p⁻))"),
    "train_mse": ("train_mse.png", "Training MSE", "rating MSE"),
    "train_loss": ("train_joint_loss.png", "Training joint loss", "λF·BPR + λR·MSE"),
    "test_mse": ("test_mse.png", "Test MSE", "rating MSE"),
    "test_mrr": ("test_mrr.png", "Test MRR", "MRR"),
}
SUMMARY_FIGURE = "final_and_best.png"
TRADEOFF_FIGURE = "sweep_tradeoff.png"
FIGURES = (*(figure for figure, _, _ in CURVES.values()), SUMMARY_FIGURE, TRADEOFF_FIGURE)
#: The final-epoch values the table reports.
FINAL_FIELDS = ("test_mse", "test_mrr", "train_mse", "train_bpr")
#: The test metrics whose best epoch is reported, and whether lower is better.
BEST_FIELDS = {"test_mse": True, "test_mrr": False}
#: The training metric that goes with each test metric when looking for overfitting.
TRAIN_COUNTERPART = {"test_mse": "train_mse", "test_mrr": "train_bpr"}
NAMES = {
    "test_mse": "test MSE",
    "test_mrr": "test MRR",
    "train_mse": "train MSE",
    "train_bpr": "train BPR loss",
}


# ---------------------------------------------------------------------------------------------
# Reading and grouping runs


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, configuration, seed, config.json and metrics.json."""

    path: Path
    configuration: Configuration
    seed: int
    config: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> RunResult:
        """The finished run in ``run_dir``; :class:`DataError` naming the file that is missing or corrupt."""
        config, metrics = read_config(run_dir), read_metrics(run_dir)
        try:
            return cls(run_dir, Configuration.of(config), int(config["model"]["seed"]), config, metrics)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{run_dir / CONFIG_FILENAME}: not an mtrec run config") from None


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories: each path itself if it is one, else every run below it."""
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise DataError(f"{path}: no such directory")
        markers = [*path.rglob(CONFIG_FILENAME), *path.rglob(METRICS_FILENAME)]
        if not markers:
            raise DataError(f"{path}: no runs found (no {CONFIG_FILENAME} or {METRICS_FILENAME} in or below it)")
        for run_dir in sorted({marker.parent for marker in markers}):
            found.setdefault(run_dir.resolve(), run_dir)
    return list(found.values())


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[RunResult], list[str]]:
    """The finished runs, and one message per run left out (naming its file and why)."""
    runs, left_out = [], []
    for run_dir in run_dirs:
        try:
            runs.append(RunResult.read(run_dir))
        except DataError as error:
            left_out.append(str(error))
    return runs, left_out


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to be compared: all but the configuration and the seed.

    The split's seed, and the cold-start counts that follow from it, are the seed's part.
    """
    varying = {"seed", "embedding_sharing", "factorization_weight", "regression_weight", "device", "num_threads"}
    model = {k: v for k, v in config.get("model", {}).items() if k not in varying}
    data = {k: v for k, v in config.get("data", {}).items() if k != "cold_start"}
    if isinstance(data.get("split"), dict):
        data["split"] = {k: v for k, v in data["split"].items() if k != "seed"}
    rest = {k: v for k, v in config.items() if k not in ("model", "data", "mtrec_version")}
    return {**rest, "model": model, "data": data}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.l2": 0.0, ...}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def comparable_runs(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[str]]:
    """The runs trained with the most common settings (once per configuration and seed), and why others are not."""
    flats = [_flat(settings(run.config)) for run in runs]
    keys = [json.dumps(flat, sort_keys=True) for flat in flats]
    if not keys:
        return [], []
    majority_key = max(set(keys), key=lambda key: (keys.count(key), key))
    majority = flats[keys.index(majority_key)]
    kept: dict[tuple[Configuration, int], RunResult] = {}
    left_out = []
    for run, flat, key in zip(runs, flats, keys):
        same = kept.get((run.configuration, run.seed))
        if key != majority_key:
            differing = sorted(k for k in flat.keys() | majority.keys() if flat.get(k) != majority.get(k))
            text = ", ".join(f"{k} {flat.get(k)} (the others: {majority.get(k)})" for k in differing)
            left_out.append(f"{run.path}: trained with other settings than the rest of its comparison: {text}")
        elif same is not None:
            left_out.append(f"{run.path}: same configuration and seed as {same.path}")
        else:
            kept[(run.configuration, run.seed)] = run
    return list(kept.values()), left_out



# ---------------------------------------------------------------------------------------------
# Aggregation over seeds


@dataclass(frozen=True)
class Stat:
    """One quantity measured once per seed: ``values[i]`` belongs to ``seeds[i]``."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def defined(self) -> bool:
        return self.n > 0 and all(math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.defined else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if self.defined and self.n > 1 else math.nan

    @property
    def low(self) -> float:
        return min(self.values) if self.defined else math.nan

    @property
    def high(self) -> float:
        return max(self.values) if self.defined else math.nan

    def to_json(self) -> dict[str, Any]:
        def plain(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "values": [plain(v) for v in self.values],
            "seeds": list(self.seeds),
            **{name: plain(getattr(self, name)) for name in ("mean", "sd", "low", "high")},
        }


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class GroupSummary:
    """The runs of one configuration, aggregated over their seeds."""

    configuration: Configuration
    runs: tuple[RunResult, ...]

    @classmethod
    def of(cls, configuration: Configuration, runs: Sequence[RunResult]) -> GroupSummary:
        return cls(configuration, tuple(sorted(runs, key=lambda run: run.seed)))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def epochs(self) -> int:
        return len(self.runs[0].metrics["epochs"])

    def curve(self, field: str) -> np.ndarray:
        """``field`` per epoch, one row per seed; NaN on epochs that did not measure it."""
        return np.array([[_number(r.get(field)) for r in run.metrics["epochs"]] for run in self.runs])

    def stat(self, values: Iterable[float]) -> Stat:
        """A :class:`Stat` of one value per run, in the runs' order."""
        return Stat(tuple(values), tuple(self.seeds))

    def final(self, field: str) -> Stat:
        return self.stat(_number(run.metrics["final"].get(field)) for run in self.runs)

    def best(self, field: str) -> Stat:
        return self.stat(_number(run.metrics.get(f"best_{field}", {}).get("value")) for run in self.runs)

    def best_epoch(self, field: str) -> Stat:
        return self.stat(_number(run.metrics.get(f"best_{field}", {}).get("epoch")) for run in self.runs)

    def at_best_epoch(self, field: str, best_of: str) -> Stat:
        """``field`` at each seed's best epoch of ``best_of``."""
        epochs = [int(e) if math.isfinite(e) else None for e in self.best_epoch(best_of).values]
        return self.stat(
            math.nan if epoch is None else _number(run.metrics["epochs"][epoch - 1].get(field))
            for run, epoch in zip(self.runs, epochs)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration.name,
            "label": self.configuration.label,
            "seeds": self.seeds,
            "runs": [str(run.path) for run in self.runs],
            "epochs": self.epochs,
            "final": {field: self.final(field).to_json() for field in FINAL_FIELDS},
            "best": {
                field: {"value": self.best(field).to_json(), "epoch": self.best_epoch(field).to_json()}
                for field in BEST_FIELDS
            },
        }


def group_runs(runs: Sequence[RunResult]) -> list[GroupSummary]:
    """One summary per configuration: shared first, then by decreasing λF."""
    grouped: dict[Configuration, list[RunResult]] = {}
    for run in runs:
        grouped.setdefault(run.configuration, []).append(run)
    order = sorted(grouped, key=lambda c: (not c.embedding_sharing, -c.factorization_weight))
    return [GroupSummary.of(configuration, grouped[configuration]) for configuration in order]


@dataclass(frozen=True)
class Collection:
    """The runs a report is made of: the configurations compared, the sweep and what was left out."""

    groups: list[GroupSummary]
    sweep: list[GroupSummary]
    left_out: list[str]


def collect(paths: Sequence[str | Path]) -> Collection:
    """Read and group the runs in or below ``paths``; a warning names every run left out."""
    runs, left_out = load_runs(find_run_dirs(paths))
    # The layout of mtrec.experiments: ROOT/sweep/<configuration>/seed-<k>.
    in_sweep = [run.path.parent.parent.name == SWEEP_DIRNAME for run in runs]
    compared, excluded = comparable_runs([run for run, swept in zip(runs, in_sweep) if not swept])
    swept, excluded_sweep = comparable_runs([run for run, swept in zip(runs, in_sweep) if swept])
    left_out += excluded + excluded_sweep
    for message in left_out:
        warnings.warn(message, stacklevel=2)
    if not compared and not swept:
        raise DataError(f"no finished run in {', '.join(map(str, paths))}")
    return Collection(group_runs(compared), group_runs(swept), left_out)


# ---------------------------------------------------------------------------------------------
# Reading the numbers: comparisons and the answers


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on one metric, paired by seed (seed k splits the data alike for both).

    The difference is *clear* when its mean over the common seeds exceeds twice its standard
    error (sd / sqrt(n)); with fewer than two common seeds nothing is clear.
    """

    a: Stat
    b: Stat
    lower_is_better: bool

    @property
    def differences(self) -> list[float]:
        b = dict(zip(self.b.seeds, self.b.values))
        return [value - b[seed] for seed, value in zip(self.a.seeds, self.a.values) if seed in b]

    @property
    def difference(self) -> float:
        """Mean over the common seeds of ``a - b``."""
        differences = self.differences
        return statistics.fmean(differences) if differences else math.nan

    @property
    def standard_error(self) -> float:
        differences = self.differences
        if len(differences) < 2:
            return math.nan
        return statistics.stdev(differences) / math.sqrt(len(differences))

    @property
    def clear(self) -> bool:
        return math.isfinite(self.standard_error) and abs(self.difference) > 2 * self.standard_error

    @property
    def a_better(self) -> bool:
        return (self.difference < 0) == self.lower_is_better

    def describe(self) -> str:
        """``+0.0123 ± 0.0040`` (mean difference ± standard error)."""
        difference = f"{self.difference:+.4f}" if math.isfinite(self.difference) else "n/a"
        return f"{difference} ± {fmt(self.standard_error)}"


def fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def fmt_stat(stat: Stat) -> str:
    """``mean ± sd`` (just the value for a single seed)."""
    return fmt(stat.mean) if stat.n < 2 or not stat.defined else f"{fmt(stat.mean)} ± {fmt(stat.sd)}"


def fmt_epoch(stat: Stat) -> str:
    """The mean epoch, with the range over seeds when they differ."""
    if not stat.defined:
        return "n/a"
    if stat.low == stat.high:
        return f"{stat.low:.0f}"
    return f"{stat.mean:.0f} ({stat.low:.0f}–{stat.high:.0f})"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


#: What each test metric measures, for the verdicts.
TASKS = {"test_mse": "rating prediction (test MSE)", "test_mrr": "ranking (test MRR)"}


def verdict(a_name: str, b_name: str, comparisons: dict[str, Comparison]) -> tuple[str, str]:
    """(outcome, sentence): outcome is ``a``, ``b``, ``mixed``, ``a-partly``, ``b-partly`` or ``noise``."""
    wins_a = [TASKS[f] for f, c in comparisons.items() if c.clear and c.a_better]
    wins_b = [TASKS[f] for f, c in comparisons.items() if c.clear and not c.a_better]
    noise = [f for f, c in comparisons.items() if not c.clear]
    sentences = []
    if wins_a:
        sentences.append(f"{a_name} do better on {_join(wins_a)}")
    if wins_b:
        sentences.append(f"{b_name} do better on {_join(wins_b)}")
    for field in noise:
        c = comparisons[field]
        sentences.append(f"on {TASKS[field]} the difference ({c.describe()}) is within noise")
    sentence = _upper_first("; ".join(sentences) + ".")
    if wins_a and wins_b:
        return "mixed", sentence
    if not wins_a and not wins_b:
        return "noise", sentence
    side = "a" if wins_a else "b"
    return (side if not noise else f"{side}-partly"), sentence


def compare_test_metrics(a: GroupSummary, b: GroupSummary, stat: str = "final") -> dict[str, Comparison]:
    """Final (or best-epoch) test MSE and MRR of ``a`` against ``b``."""
    return {
        field: Comparison(getattr(a, stat)(field), getattr(b, stat)(field), lower)
        for field, lower in BEST_FIELDS.items()
    }


def _upper_first(text: str) -> str:
    """``text`` starting with a capital, unless it starts with a symbol such as λ."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


def overfitting(group: GroupSummary, field: str) -> str | None:
    """If the test metric's last value is clearly worse than its best, the sentence that says so."""
    best, final = group.best(field), group.final(field)
    lower = BEST_FIELDS[field]
    worse = Comparison(final, best, lower)
    if not worse.clear or worse.a_better:
        return None
    train_field = TRAIN_COUNTERPART[field]
    train_at_best, train_final = group.at_best_epoch(train_field, field), group.final(train_field)
    epoch = fmt_epoch(group.best_epoch(field))
    change = abs(final.mean / best.mean - 1)
    train_improves = train_final.mean < train_at_best.mean  # both training losses: lower is better
    verdict = (
        f"it overfits after about epoch {epoch}"
        if train_improves
        else f"the training fit worsens too, so this is not overfitting: after about epoch {epoch} "
        "training moves away from this task"
    )
    return (
        f"{group.configuration.label}: {NAMES[field]} is best at epoch {epoch}, at {fmt_stat(best)}, and ends "
        f"{change:.0%} {'higher' if lower else 'lower'}, at {fmt_stat(final)} (epoch {group.epochs}), while "
        f"{NAMES[train_field]} {'falls' if train_improves else 'rises'} from "
        f"{fmt_stat(train_at_best)} to {fmt_stat(train_final)}: {verdict}."
    )


def overfitting_reading(groups: Sequence[GroupSummary]) -> str:
    """Which configurations overfit on which test metric, and that the others show no sign of it."""
    found = [sentence for field in BEST_FIELDS for group in groups if (sentence := overfitting(group, field))]
    if len(found) == len(BEST_FIELDS) * len(groups):
        return " ".join(found)
    rest = "Elsewhere" if found else "For both configurations and both test metrics,"
    return " ".join(
        [
            *found,
            f"{rest} the last-epoch value is within noise of the best one: no test curve has turned by "
            f"epoch {groups[0].epochs}.",
        ]
    )


def _gap(group: GroupSummary) -> Stat:
    """Test MSE minus train MSE at the last epoch, per seed."""
    return group.stat(t - r for t, r in zip(group.final("test_mse").values, group.final("train_mse").values))


def train_test_reading(a: GroupSummary, a_name: str, b: GroupSummary, b_name: str, field: str) -> str:
    """What the training loss and the test metric ``field`` of two configurations say together."""
    train_field = TRAIN_COUNTERPART[field]
    train = Comparison(a.final(train_field), b.final(train_field), True)
    test = Comparison(a.final(field), b.final(field), BEST_FIELDS[field])
    text = (
        f"At the last epoch, {NAMES[train_field]} is {fmt_stat(a.final(train_field))} for {a_name} and "
        f"{fmt_stat(b.final(train_field))} for {b_name}; {NAMES[field]} {fmt_stat(a.final(field))} and "
        f"{fmt_stat(b.final(field))}."
    )
    if not test.clear:
        if train.clear:
            fits = a_name if train.a_better else b_name
            return text + (
                f" {_upper_first(fits)} fit the training data more closely, but on {NAMES[field]} the two are "
                "within noise: the extra fit does not carry over to unseen data."
            )
        return text + " Both are within noise of each other."
    winner, loser = (a_name, b_name) if test.a_better else (b_name, a_name)
    winner_fits = train.clear and train.a_better == test.a_better
    loser_fits = train.clear and not winner_fits
    if field == "test_mse":
        gap = Comparison(_gap(a), _gap(b), True)
        text += f" The train–test gap is {fmt_stat(_gap(a))} for {a_name} and {fmt_stat(_gap(b))} for {b_name}."
        if gap.clear and gap.a_better == test.a_better:  # the loser's gap is the wider
            detail = (
                ", although they fit the training ratings more closely"
                if loser_fits
                else ", and they fit the training ratings less closely too"
                if winner_fits
                else ""
            )
            return text + f" {_upper_first(loser)} predict held-out ratings worse because they overfit more{detail}."
    if winner_fits:
        return text + (
            f" {_upper_first(winner)} also have the lower {NAMES[train_field]}: their advantage is a better fit "
            "of the training data, not less overfitting."
        )
    if loser_fits:
        return text + (
            f" {_upper_first(loser)} fit the training data more closely yet do worse on test data: they overfit."
        )
    return text + f" Their {NAMES[train_field]} is within noise of each other: the difference is one of generalisation."


def answer_sharing(shared: GroupSummary, separate: GroupSummary) -> list[str]:
    """Question 1: does parameter sharing outperform separate models? Paragraphs, from the numbers."""
    final = compare_test_metrics(shared, separate)
    outcome, sentence = verdict("shared embeddings", "separate embeddings", final)
    opening = {
        "a": "Yes.",
        "a-partly": "Partly.",
        "mixed": "Not overall: it is a trade-off.",
        "b": "No.",
        "b-partly": "No.",
        "noise": "Not shown by these runs.",
    }[outcome]
    c = shared.configuration
    numbers = (
        f"With λF={c.factorization_weight:g} and λR={c.regression_weight:g}, after {shared.epochs} epochs, "
        f"shared embeddings reach test MSE {fmt_stat(shared.final('test_mse'))} and MRR "
        f"{fmt_stat(shared.final('test_mrr'))}; separate embeddings {fmt_stat(separate.final('test_mse'))} "
        f"and {fmt_stat(separate.final('test_mrr'))}."
    )
    best_comparisons = compare_test_metrics(shared, separate, "best")
    _, best_sentence = verdict("shared embeddings", "separate embeddings", best_comparisons)
    best = (
        f"At each model's best epoch (as with early stopping) test MSE is {fmt_stat(shared.best('test_mse'))} "
        f"against {fmt_stat(separate.best('test_mse'))} and MRR {fmt_stat(shared.best('test_mrr'))} against "
        f"{fmt_stat(separate.best('test_mrr'))}. {best_sentence}"
    )
    names = ("shared embeddings", "separate embeddings")
    return [
        f"{opening} {numbers} {sentence}",
        " ".join(train_test_reading(shared, names[0], separate, names[1], field) for field in BEST_FIELDS),
        overfitting_reading((shared, separate)),
        best,
    ]


def answer_weights(
    high: GroupSummary, balanced: GroupSummary, separate: tuple[GroupSummary, GroupSummary] | None = None
) -> list[str]:
    """Question 2: with sharing, λF=0.99/λR=0.01 against 0.5/0.5. ``separate``: the same pair unshared."""
    a_name, b_name = (
        f"the λF={g.configuration.factorization_weight:g}/λR={g.configuration.regression_weight:g} runs"
        for g in (high, balanced)
    )
    outcome, sentence = verdict(a_name, b_name, compare_test_metrics(high, balanced))
    readings = " ".join(train_test_reading(high, a_name, balanced, b_name, field) for field in BEST_FIELDS)
    why = "Why: the weights set how much each task shapes the shared embeddings."
    if outcome == "noise":
        why = f"Within {high.epochs} epochs the weights did not move the test metrics beyond noise."
    paragraphs = [
        f"With shared embeddings, {a_name} reach test MSE {fmt_stat(high.final('test_mse'))} and MRR "
        f"{fmt_stat(high.final('test_mrr'))}; {b_name} reach {fmt_stat(balanced.final('test_mse'))} and "
        f"{fmt_stat(balanced.final('test_mrr'))}. {sentence}",
        f"{why} {readings}",
        overfitting_reading((high, balanced)),
    ]
    if separate is not None:
        unshared = compare_test_metrics(*separate)
        mse, mrr = unshared["test_mse"], unshared["test_mrr"]
        text = (
            f"Control without sharing: the same change of weights moves test MSE by {mse.describe()} and "
            f"MRR by {mrr.describe()} (λF={high.configuration.factorization_weight:g} minus "
            f"λF={balanced.configuration.factorization_weight:g}). "
        )
        if not mse.clear and not mrr.clear:
            text += (
                "Both are within noise, as expected: with separate embeddings each parameter receives the "
                "gradient of one loss only, and Adam normalises that gradient's scale away."
            )
            if outcome != "noise":
                text += " What the weights change with sharing, they change through the shared embeddings."
        else:
            _, control = verdict(a_name, b_name, unshared)
            text += f"Even without sharing the weights change the results. {control}"
        paragraphs.append(text)
    return paragraphs


def _by_sharing(sweep: Sequence[GroupSummary]) -> list[tuple[str, list[GroupSummary]]]:
    """The sweep's configurations per sharing mode, by increasing λF."""
    modes = []
    for sharing, name in ((True, "shared"), (False, "separate")):
        groups = [g for g in sweep if g.configuration.embedding_sharing == sharing]
        if groups:
            modes.append((name, sorted(groups, key=lambda g: g.configuration.factorization_weight)))
    return modes


def _leader(groups: Sequence[GroupSummary], field: str, kind: str) -> str:
    """The λF with the best ``kind`` (final or best) value of ``field``, against the runner-up."""
    lower = BEST_FIELDS[field]
    ranked = sorted(groups, key=lambda g: getattr(g, kind)(field).mean, reverse=not lower)
    first = ranked[0]
    text = f"λF={first.configuration.factorization_weight:g} ({fmt_stat(getattr(first, kind)(field))})"
    if len(ranked) > 1:
        second = ranked[1]
        ahead = Comparison(getattr(first, kind)(field), getattr(second, kind)(field), lower).clear
        text += (
            f", {'clearly ahead of' if ahead else 'within noise of'} "
            f"λF={second.configuration.factorization_weight:g} ({fmt_stat(getattr(second, kind)(field))})"
        )
    return text


def sweep_reading(sweep: Sequence[GroupSummary]) -> list[str]:
    """Where the sweep puts the best test MSE and MRR, for shared and separate embeddings."""
    return [
        f"{_upper_first(name)} embeddings. Lowest test MSE at the last epoch: {_leader(groups, 'test_mse', 'final')}. "
        f"At the best epoch: {_leader(groups, 'test_mse', 'best')}. Highest test MRR at the last epoch: "
        f"{_leader(groups, 'test_mrr', 'final')}."
        for name, groups in _by_sharing(sweep)
    ]


# ---------------------------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)


def curve_figure(groups: Sequence[GroupSummary], field: str, path: Path) -> None:
    """``field`` per epoch: the mean over seeds as a line, the min–max range as a band."""
    plt = _pyplot()
    _, title, ylabel = CURVES[field]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, group in enumerate(groups):
        values = group.curve(field)
        measured = ~np.isnan(values).any(axis=0)
        if not measured.any():
            continue
        epochs = np.arange(1, values.shape[1] + 1)[measured]
        values = values[:, measured]
        color = f"C{index}"
        # Distinct line styles keep identical curves (separate embeddings at any λ) visible.
        style = ("-", "--", "-.", ":")[index % 4]
        axes.plot(epochs, values.mean(axis=0), color=color, linestyle=style, label=group.configuration.label)
        axes.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2, linewidth=0)
    axes.set_title(f"{title} (mean over seeds, band: min–max)")
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)


def _error_bars(stats: Sequence[Stat]) -> np.ndarray:
    return np.array([[s.mean - s.low for s in stats], [s.high - s.mean for s in stats]])


def summary_figure(groups: Sequence[GroupSummary], path: Path) -> None:
    """Final and best-epoch test MSE and MRR per configuration, bars with min–max error bars.

    The y axis is cut to the range of the values: the differences are small next to the values.
    """
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(10, 4.2))
    positions = np.arange(len(groups))
    for axes, field in zip(panels, BEST_FIELDS):
        bounds = []
        for offset, (kind, label) in zip((-0.2, 0.2), (("final", "last epoch"), ("best", "best epoch"))):
            stats = [getattr(group, kind)(field) for group in groups]
            axes.bar(positions + offset, [s.mean for s in stats], 0.4, yerr=_error_bars(stats), capsize=4, label=label)
            bounds += [s.low for s in stats] + [s.high for s in stats]
        finite = [b for b in bounds if math.isfinite(b)]
        if finite:  # none where no run measured this metric (data without ratings has no MSE)
            low, high = min(finite), max(finite)
            margin = (high - low) * 0.3 or abs(high) * 0.05 or 1.0
            axes.set_ylim(low - margin, high + margin)
        axes.set_xticks(positions, [g.configuration.label.replace(", ", "\n", 1) for g in groups], fontsize=8)
        axes.set_ylabel(f"{NAMES[field]} (axis cut)")
        axes.set_title(f"{NAMES[field]} ({'lower' if BEST_FIELDS[field] else 'higher'} is better)")
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    figure.suptitle("Test metrics: mean over seeds, error bars min–max")
    _save(figure, path)


def tradeoff_figure(sweep: Sequence[GroupSummary], path: Path) -> None:
    """Test MSE against MRR, one point per λF and a line per sharing mode; last and best epoch.

    λF = 0 and λF = 1 are not drawn: each leaves one head untrained, far off the other points.
    """
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.8))
    both_trained = [g for g in sweep if 0 < g.configuration.factorization_weight < 1]
    for axes, (kind, when) in zip(panels, (("final", "last epoch"), ("best", "best epoch"))):
        for index, (name, groups) in enumerate(_by_sharing(both_trained)):
            mse = [getattr(g, kind)("test_mse") for g in groups]
            mrr = [getattr(g, kind)("test_mrr") for g in groups]
            axes.errorbar(
                [s.mean for s in mse],
                [s.mean for s in mrr],
                xerr=_error_bars(mse),
                yerr=_error_bars(mrr),
                marker="o",
                capsize=3,
                color=f"C{index}",
                linestyle=("-", "--")[index],
                label=f"{name} embeddings",
            )
            for group, x, y in zip(groups, mse, mrr):
                label = f"{group.configuration.factorization_weight:g}"
                axes.annotate(label, (x.mean, y.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xlabel(f"test MSE at the {when} (lower is better)")
        axes.set_ylabel(f"test MRR at the {when} (higher is better)")
        axes.set_title(f"{when.capitalize()}")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("λ sweep: MSE–MRR trade-off (labels: λF = 1 − λR; bars: min–max; λF = 0, 1 not drawn)")
    _save(figure, path)


# ---------------------------------------------------------------------------------------------
# The document: blocks rendered to Markdown and to self-contained HTML


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    filename: str
    caption: str


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]


Block = Heading | Paragraph | Code | Table | Figure | BulletList


def to_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text}\n```")
        elif isinstance(block, Table):
            lines = [block.header, tuple("---" for _ in block.header), *block.rows]
            parts.append("\n".join("| " + " | ".join(line) + " |" for line in lines))
        elif isinstance(block, Figure):
            parts.append(f"![{block.caption}]({block.filename})\n\n*{block.caption}*")
        else:
            parts.append("\n".join(f"- {item}" for item in block.items))
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """Escaped text, with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
    "table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #ccc;padding:.3rem .5rem}"
    "td{text-align:right}td:first-child{text-align:left}pre{background:#f4f4f4;padding:.6rem;overflow-x:auto}"
    "img{max-width:100%}figcaption{font-style:italic;color:#444}"
)


def to_html(blocks: Sequence[Block], folder: Path, title: str) -> str:
    """A self-contained page: the figures in ``folder`` are embedded as base64 PNG."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(cell)}</th>" for cell in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode((folder / block.filename).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
            )
        else:
            parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block.items) + "</ul>")
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# The report


TABLE_HEADER = (
    "configuration",
    "seeds",
    "test MSE (last)",
    "test MSE (best)",
    "best MSE epoch",
    "test MRR (last)",
    "test MRR (best)",
    "best MRR epoch",
    "train MSE (last)",
    "train BPR (last)",
)


def results_table(groups: Sequence[GroupSummary]) -> Table:
    """Final and best-epoch test metrics, final training losses and best epochs, mean ± sd over seeds."""
    rows = []
    for group in groups:
        rows.append(
            (
                group.configuration.label,
                str(len(group.runs)),
                fmt_stat(group.final("test_mse")),
                fmt_stat(group.best("test_mse")),
                fmt_epoch(group.best_epoch("test_mse")),
                fmt_stat(group.final("test_mrr")),
                fmt_stat(group.best("test_mrr")),
                fmt_epoch(group.best_epoch("test_mrr")),
                fmt_stat(group.final("train_mse")),
                fmt_stat(group.final("train_bpr")),
            )
        )
    return Table(TABLE_HEADER, tuple(rows))


def _find(groups: Sequence[GroupSummary], name: str) -> GroupSummary | None:
    return next((group for group in groups if group.configuration == CONFIGURATIONS[name]), None)


def answers(groups: Sequence[GroupSummary]) -> list[Block]:
    """The two questions of the assignment, answered from the runs (or why they cannot be)."""
    blocks: list[Block] = [Heading(2, "1. Does parameter sharing outperform separate models?")]
    shared, separate = _find(groups, "shared-0.5-0.5"), _find(groups, "separate-0.5-0.5")
    if shared and separate:
        blocks += [Paragraph(text) for text in answer_sharing(shared, separate)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.5-0.5 and separate-0.5-0.5."))
    blocks.append(Heading(2, "2. With sharing, how do λF=0.99/λR=0.01 and 0.5/0.5 compare, and why?"))
    high = _find(groups, "shared-0.99-0.01")
    if high and shared:
        unshared_high = _find(groups, "separate-0.99-0.01")
        control = (unshared_high, separate) if unshared_high and separate else None
        blocks += [Paragraph(text) for text in answer_weights(high, shared, control)]
    else:
        blocks.append(Paragraph("Not answered: it needs finished runs of shared-0.99-0.01 and shared-0.5-0.5."))
    return blocks


def shared_options(config: dict[str, Any]) -> list[str]:
    """The ``mtrec train``/``experiments`` options that remake a run's settings (not --data-dir)."""
    model, data = config["model"], config["data"]
    if data.get("ratings_file"):
        source = ["--ratings", data["ratings_file"]]
    else:
        source = ["--dataset", str(data.get("dataset"))]
    split = data.get("split", {})
    split_options = [
        option
        for key, value in split.items()
        if key not in ("method", "seed")
        for option in (f"--{key.replace('_', '-')}", str(value))
    ]
    return [
        "--epochs", str(config["epochs"]),
        "--eval-every", str(config["eval_every"]),
        "--embedding-dim", str(model["embedding_dim"]),
        "--layer-sizes", *map(str, model["layer_sizes"]),
        "--batch-size", str(model["batch_size"]),
        "--learning-rate", f"{model['learning_rate']:g}",
        "--l2", f"{model['l2']:g}",
        *source,
        "--split", str(split.get("method", "random")),
        *split_options,
    ]  # fmt: skip


def setup(groups: Sequence[GroupSummary], sweep: bool = False) -> list[Block]:
    """How the runs were made, and the commands that make them again."""
    first = groups[0].runs[0]
    data = first.config["data"]
    seeds = sorted({seed for group in groups for seed in group.seeds})
    model = first.config["model"]
    text = (
        f"Data: {data.get('name')} ({data.get('num_users')} users, {data.get('num_items')} items), "
        f"{data.get('split', {}).get('method')} split with {data.get('train_size')} training and "
        f"{data.get('test_size')} test ratings. Each configuration was trained for {groups[0].epochs} epochs "
        f"with seeds {', '.join(map(str, seeds))}; seed k drives the train/test split, the initialisation and "
        f"the negative sampling, exactly like `mtrec train --seed k`. Model: embedding dimension "
        f"{model['embedding_dim']}, rating MLP layers {model['layer_sizes']}, batch {model['batch_size']}, "
        f"Adam learning rate {model['learning_rate']:g}, l2 {model['l2']:g}. Tables and text give mean ± "
        "standard deviation over seeds; figures show the mean with the min–max range. Because seed k gives "
        "every configuration the same split, configurations are compared seed by seed: a difference is "
        "quoted as mean ± standard error of the per-seed differences, and called clear only when it exceeds "
        "twice its standard error; otherwise it is within noise."
    )
    blocks: list[Block] = [Paragraph(text)]
    gaps = [group for group in groups if sorted(group.seeds) != seeds]
    if gaps:
        listed = "; ".join(f"{group.configuration.label}: seeds {', '.join(map(str, sorted(group.seeds)))}" for group in gaps)
        blocks.append(
            Paragraph(
                f"Not every configuration has every seed ({listed}). The table averages each configuration over "
                "its own seeds; a difference in the text pairs only the seeds both configurations have, so it "
                "need not equal the difference of the table's means."
            )
        )
    if len(seeds) < 2:
        blocks.append(Paragraph("Only one seed: there is no estimate of noise, so no difference is called clear."))
    options = shared_options(first.config)
    if sweep:
        weights = sorted({group.configuration.factorization_weight for group in groups})
        # The smallest gap is the step even if a value in between did not finish.
        step = ["--sweep-step", f"{min(np.diff(weights)):g}"] if len(weights) > 1 else []
        which = ["--sweep", *step]
    else:
        which = ["--configs", *(group.configuration.name for group in groups)]
    experiment = ["mtrec", "experiments", *which, "--seeds", str(len(seeds)), "--seed", str(seeds[0])]
    c = first.configuration
    single = [
        "mtrec", "train", "--seed", str(first.seed),
        "--factorization-weight", f"{c.factorization_weight:g}", "--regression-weight", f"{c.regression_weight:g}",
        "--shared-embeddings" if c.embedding_sharing else "--no-shared-embeddings",
        "--logdir", str(first.path),
    ]  # fmt: skip
    blocks += [
        Paragraph("To make these runs again (add `--data-dir DIR` where the data lives), and one of them alone:"),
        Code(" ".join([*experiment, *options]) + "\n" + " ".join([*single, *options])),
    ]
    return blocks


def document(collection: Collection, figures: dict[str, str]) -> list[Block]:
    """The report's blocks; ``figures`` maps each figure written to its caption."""
    groups, sweep = collection.groups, collection.sweep
    blocks: list[Block] = [Heading(1, "Multi-task recommender: experiments")]
    if groups:
        blocks += setup(groups)
        blocks += answers(groups)
        blocks += [Heading(2, "Results"), results_table(groups)]
        blocks += [Figure(name, caption) for name, caption in figures.items() if name != TRADEOFF_FIGURE]
    if sweep:
        blocks += [Heading(2, "λ sweep"), *setup(sweep, sweep=True)]
        blocks += [Paragraph(line) for line in sweep_reading(sweep)]
        blocks += [results_table(sweep), Figure(TRADEOFF_FIGURE, figures[TRADEOFF_FIGURE])]
    runs = [str(run.path) for group in (*groups, *sweep) for run in group.runs]
    blocks += [
        Heading(2, "Runs"),
        Paragraph(f"{len(runs)} runs, each with its TensorBoard curves (`tensorboard --logdir DIR`):"),
        BulletList(tuple(runs)),
    ]
    if collection.left_out:
        blocks += [Heading(2, "Runs left out"), BulletList(tuple(collection.left_out))]
    return blocks


def write_figures(collection: Collection, out: Path) -> dict[str, str]:
    """The PNG figures, written to ``out``; returns file name -> caption."""
    figures = {}
    groups = collection.groups
    if groups:
        for field, (name, title, _) in CURVES.items():
            curve_figure(groups, field, out / name)
            figures[name] = f"{title} per epoch, per configuration"
        summary_figure(groups, out / SUMMARY_FIGURE)
        figures[SUMMARY_FIGURE] = "Test MSE and MRR at the last and at the best epoch"
    if collection.sweep:
        tradeoff_figure(collection.sweep, out / TRADEOFF_FIGURE)
        figures[TRADEOFF_FIGURE] = (
            "Test MSE against MRR for each λF, shared and separate embeddings; λF = 0 and 1, which leave a head "
            "untrained, are in the table only"
        )
    return figures


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote, and the runs it read."""

    markdown: Path
    html: Path
    data: Path
    figures: list[Path]
    runs: int
    left_out: list[str]


def write_report(collection: Collection, out: str | Path) -> ReportFiles:
    """Write report.md, report.html, report.json and the figures to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES:
        (out / stale).unlink(missing_ok=True)
    figures = write_figures(collection, out)
    blocks = document(collection, figures)
    title = "Multi-task recommender: experiments"
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out, title))
    data = {
        "groups": [group.to_json() for group in collection.groups],
        "sweep": [group.to_json() for group in collection.sweep],
        "left_out": collection.left_out,
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    return ReportFiles(
        out / "report.md",
        out / "report.html",
        out / "report.json",
        [out / name for name in figures],
        sum(len(group.runs) for group in (*collection.groups, *collection.sweep)),
        collection.left_out,
    )


def build_report(paths: Sequence[str | Path], out: str | Path) -> ReportFiles:
    """Rebuild the report from the finished runs in or below ``paths``, into folder ``out``."""
    return write_report(collect(paths), out)
