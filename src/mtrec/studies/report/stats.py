"""Statistics over seeds: one number per seed (:class:`Stat`), a configuration's runs
(:class:`GroupSummary`) and seed-paired comparisons between configurations (:class:`Comparison`).

A run's headline numbers are those of its *selected* epoch, the one whose weights it keeps:
chosen on validation data by early stopping, or the last epoch. The best test value over all
epochs is an *oracle* (chosen on the test set) and is reported only as such.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from mtrec.studies.experiments import SHARING_NAMES, Configuration

#: The values reported for the selected and the last epoch.
FINAL_FIELDS = ("test_mse", "test_mrr", "test_ndcg@10", "test_recall@10", "train_rating", "train_watch")
#: The test metrics the answers compare (and whose oracle best epoch is reported), and whether lower is better.
BEST_FIELDS = {"test_mse": True, "test_mrr": False}
#: A difference is clear when its seed-paired t-test gives a p-value below this.
SIGNIFICANCE = 0.05
#: The training metric that goes with each test metric when looking for overfitting.
TRAIN_COUNTERPART = {"test_mse": "train_rating", "test_mrr": "train_watch"}
NAMES = {
    "test_mse": "test MSE",
    "test_mrr": "test MRR",
    "train_rating": "train MSE",
    "train_watch": "train BPR loss",
    "test_ndcg@10": "test NDCG@10",
    "test_recall@10": "test Recall@10",
}


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


class SeedRun(Protocol):
    """One finished run of a configuration, as the statistics read it."""

    path: Path
    configuration: Configuration
    seed: int
    metrics: dict[str, Any]


def _oracle(metrics: dict[str, Any], field: str) -> dict[str, Any]:
    """The best test value of a run's metrics.json (mtrec 0.1 called it ``best_<field>``)."""
    return metrics.get(f"oracle_best_{field}") or metrics.get(f"best_{field}") or {}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class GroupSummary:
    """The runs of one configuration, aggregated over their seeds."""

    configuration: Configuration
    runs: tuple[SeedRun, ...]

    @classmethod
    def of(cls, configuration: Configuration, runs: Sequence[SeedRun]) -> GroupSummary:
        return cls(configuration, tuple(sorted(runs, key=lambda run: run.seed)))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def epochs(self) -> int:
        """The most epochs any of the runs trained (early stopping may end some sooner)."""
        return max(len(run.metrics["epochs"]) for run in self.runs)

    def curve(self, field: str) -> np.ndarray:
        """``field`` per epoch, one row per seed; NaN on epochs that did not measure it or were not trained."""
        values = np.full((len(self.runs), self.epochs), np.nan)
        for row, run in enumerate(self.runs):
            for column, record in enumerate(run.metrics["epochs"]):
                values[row, column] = _number(record.get(field))
        return values

    def stat(self, values: Iterable[float]) -> Stat:
        """A :class:`Stat` of one value per run, in the runs' order."""
        return Stat(tuple(values), tuple(self.seeds))

    def final(self, field: str) -> Stat:
        """``field`` at each run's last epoch."""
        return self.stat(_number(run.metrics["final"].get(field)) for run in self.runs)

    def selected(self, field: str) -> Stat:
        """``field`` at each run's selected epoch (chosen on validation, or the last): the headline."""
        return self.stat(_number(self._selected_record(run).get(field)) for run in self.runs)

    def selected_epoch(self) -> Stat:
        return self.stat(_number(self._selected_record(run).get("epoch")) for run in self.runs)

    @staticmethod
    def _selected_record(run: SeedRun) -> dict[str, Any]:
        """The selected epoch's record (mtrec 0.1 kept the last epoch's weights and had no "selected")."""
        epoch = (run.metrics.get("selected") or run.metrics["final"])["epoch"]
        return next(record for record in run.metrics["epochs"] if record["epoch"] == epoch)

    @property
    def early_stopped(self) -> bool:
        """Whether any run's weights come from an epoch other than its last."""
        return any(self._selected_record(run)["epoch"] != run.metrics["final"]["epoch"] for run in self.runs)

    def best(self, field: str) -> Stat:
        """The best test value over all epochs, per seed: an oracle, picked on the test set."""
        return self.stat(_number(_oracle(run.metrics, field).get("value")) for run in self.runs)

    def best_epoch(self, field: str) -> Stat:
        return self.stat(_number(_oracle(run.metrics, field).get("epoch")) for run in self.runs)

    def at_best_epoch(self, field: str, best_of: str) -> Stat:
        """``field`` at each seed's best epoch of ``best_of``."""
        return self.at_epochs(field, self.best_epoch(best_of))

    def at_epochs(self, field: str, epochs: Stat) -> Stat:
        """``field`` of each run at its epoch in ``epochs``."""
        chosen = [int(e) if math.isfinite(e) else None for e in epochs.values]
        return self.stat(math.nan if epoch is None else _number(run.metrics["epochs"][epoch - 1].get(field)) for run, epoch in zip(self.runs, chosen))

    def to_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration.name,
            "label": self.configuration.label,
            "seeds": self.seeds,
            "runs": [str(run.path) for run in self.runs],
            "epochs": self.epochs,
            "selected": {
                "epoch": self.selected_epoch().to_json(),
                **{field: self.selected(field).to_json() for field in FINAL_FIELDS},
            },
            "final": {field: self.final(field).to_json() for field in FINAL_FIELDS},
            "oracle_best": {field: {"value": self.best(field).to_json(), "epoch": self.best_epoch(field).to_json()} for field in BEST_FIELDS},
        }


def group_runs(runs: Sequence[SeedRun]) -> list[GroupSummary]:
    """One summary per configuration: shared first, then by decreasing λF."""
    grouped: dict[Configuration, list[SeedRun]] = {}
    for run in runs:
        grouped.setdefault(run.configuration, []).append(run)
    sharings = list(SHARING_NAMES)
    order = sorted(grouped, key=lambda c: (sharings.index(c.sharing), c.weighting != "fixed", c.weighting, -c.factorization_weight))
    return [GroupSummary.of(configuration, grouped[configuration]) for configuration in order]


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on one metric, paired by seed (seed k splits the data alike for both).

    The per-seed differences are tested with a two-sided paired t-test (n − 1 degrees of
    freedom); the difference is *clear* when its p-value is below :data:`SIGNIFICANCE` (0.05).
    With fewer than two common seeds, or identical differences of zero, nothing is clear.
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
    def p_value(self) -> float:
        """Two-sided p-value of the paired t-test of the per-seed differences (NaN when it cannot be computed)."""
        from scipy import stats

        differences, error = self.differences, self.standard_error
        if not math.isfinite(error) or not math.isfinite(self.difference):
            return math.nan
        if error == 0:
            return 1.0 if self.difference == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.difference / error), len(differences) - 1))

    @property
    def clear(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < SIGNIFICANCE

    @property
    def a_better(self) -> bool:
        return (self.difference < 0) == self.lower_is_better

    def describe(self) -> str:
        """``+0.0123 ± 0.0040, p = 0.012`` (mean difference ± standard error, and the test's p-value)."""
        difference = f"{self.difference:+.4f}" if math.isfinite(self.difference) else "n/a"
        return f"{difference} ± {fmt(self.standard_error)}, {fmt_p(self.p_value)}"


def fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def fmt_p(value: float) -> str:
    """``p = 0.012``, ``p < 0.001``, ``p n/a``."""
    if not math.isfinite(value):
        return "p n/a"
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


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


def join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def by_sharing(sweep: Sequence[GroupSummary]) -> list[tuple[str, list[GroupSummary]]]:
    """The sweep's configurations per sharing mode, by increasing λF."""
    modes = []
    for sharing, name in SHARING_NAMES.items():
        groups = [g for g in sweep if g.configuration.sharing == sharing]
        if groups:
            modes.append((name, sorted(groups, key=lambda g: g.configuration.factorization_weight)))
    return modes
