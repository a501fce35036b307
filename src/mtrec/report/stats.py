"""Statistics over seeds: one number per seed (:class:`Stat`), a configuration's runs
(:class:`GroupSummary`) and seed-paired comparisons between configurations (:class:`Comparison`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from mtrec.experiments import Configuration

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
        """The best test value over all epochs, per seed: an oracle, picked on the test set."""
        return self.stat(_number(_oracle(run.metrics, field).get("value")) for run in self.runs)

    def best_epoch(self, field: str) -> Stat:
        return self.stat(_number(_oracle(run.metrics, field).get("epoch")) for run in self.runs)

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


def group_runs(runs: Sequence[SeedRun]) -> list[GroupSummary]:
    """One summary per configuration: shared first, then by decreasing λF."""
    grouped: dict[Configuration, list[SeedRun]] = {}
    for run in runs:
        grouped.setdefault(run.configuration, []).append(run)
    order = sorted(grouped, key=lambda c: (not c.embedding_sharing, -c.factorization_weight))
    return [GroupSummary.of(configuration, grouped[configuration]) for configuration in order]



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


def join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]




def by_sharing(sweep: Sequence[GroupSummary]) -> list[tuple[str, list[GroupSummary]]]:
    """The sweep's configurations per sharing mode, by increasing λF."""
    modes = []
    for sharing, name in ((True, "shared"), (False, "separate")):
        groups = [g for g in sweep if g.configuration.embedding_sharing == sharing]
        if groups:
            modes.append((name, sorted(groups, key=lambda g: g.configuration.factorization_weight)))
    return modes
