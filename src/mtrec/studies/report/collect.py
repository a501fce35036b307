"""Reading runs for the report: finding run directories, leaving out what is unfinished or
not comparable (saying why), and grouping the rest by configuration."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mtrec.config import CONFIG_FILENAME, RunConfig, flatten
from mtrec.errors import DataError
from mtrec.runs import METRICS_FILENAME, read_config, read_metrics
from mtrec.studies.experiments import STUDY_DIRNAME, SWEEP_DIRNAME, Configuration
from mtrec.studies.report.stats import GroupSummary, group_runs


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, configuration, seed, config, what its data split gave, and metrics.json."""

    path: Path
    configuration: Configuration
    seed: int
    config: RunConfig
    data_summary: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> RunResult:
        """The finished run in ``run_dir``; :class:`DataError` naming the file that is missing or corrupt."""
        raw, metrics = read_config(run_dir), read_metrics(run_dir)
        config = RunConfig.load(run_dir)
        # mtrec 0.1 kept the sizes in the data section itself.
        summary = raw.get("data_summary", raw.get("data", {}))
        return cls(run_dir, Configuration.of(config), config.seed, config, summary, metrics)


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories: each path itself if it is one, else every run below it."""
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise DataError(f"{path}: no such directory")
        # Hidden folders are runs being trained (.<name>.staging) or replaced: not runs yet.
        markers = [
            marker
            for marker in (*path.rglob(CONFIG_FILENAME), *path.rglob(METRICS_FILENAME))
            if not any(part.startswith(".") for part in marker.relative_to(path).parts[:-1])
        ]
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


#: What the experiments vary between the runs they compare.
VARYING = ("seed", "sharing", "factorization_weight", "regression_weight", "weighting")


def settings(config: RunConfig) -> dict[str, Any]:
    """What must be equal for two runs to be compared: what makes them the same run
    (:meth:`RunConfig.essential`), but for the configuration, the seed and how it executed (the
    thread count and the step move only the last digits, and a gradient method takes the
    autograd step where a fixed weighting takes the fused one)."""
    essential = {k: v for k, v in config.essential().items() if k != "speed"}
    model = {k: v for k, v in essential["model"].items() if k not in VARYING}
    split = {k: v for k, v in essential["data"]["split"].items() if k != "seed"}
    return {**essential, "model": model, "data": {**essential["data"], "split": split}}


def comparable_runs(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[str]]:
    """The runs trained with the most common settings (once per configuration and seed), and why others are not."""
    flats = [flatten(settings(run.config)) for run in runs]
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


@dataclass(frozen=True)
class Collection:
    """The runs a report is made of: the configurations compared, the sweep, the multi-task study
    and what was left out."""

    groups: list[GroupSummary]
    sweep: list[GroupSummary]
    left_out: list[str]
    study: list[GroupSummary] = field(default_factory=list)


def collect(paths: Sequence[str | Path]) -> Collection:
    """Read and group the runs in or below ``paths``; a warning names every run left out."""
    runs, left_out = load_runs(find_run_dirs(paths))
    # The layout of mtrec.studies.experiments: ROOT/sweep/<configuration>/seed-<k>, ROOT/multitask/<configuration>/seed-<k>.
    parts: dict[str, list[RunResult]] = {"": [], SWEEP_DIRNAME: [], STUDY_DIRNAME: []}
    for run in runs:
        parts.get(run.path.parent.parent.name, parts[""]).append(run)
    kept = {}
    for name, members in parts.items():
        kept[name], excluded = comparable_runs(members)
        left_out += excluded
    for message in left_out:
        warnings.warn(message, stacklevel=2)
    if not any(kept.values()):
        raise DataError(f"no finished run in {', '.join(map(str, paths))}")
    return Collection(group_runs(kept[""]), group_runs(kept[SWEEP_DIRNAME]), left_out, group_runs(kept[STUDY_DIRNAME]))
