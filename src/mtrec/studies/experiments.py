"""The assignment's experiments: named configurations, each trained over several seeds.

A configuration is the embedding sharing and the loss weights (λF, λR); every other setting
is the same across configurations. Each (configuration, seed) pair is an ordinary training
run (:func:`mtrec.runs.train_run`) in ``<root>/<name>/seed-<k>``, and the runs of a λ sweep
in ``<root>/sweep/<name>/seed-<k>``. Seed k seeds the split, initialisation and sampling
exactly as ``mtrec train --seed k`` does, so any single run can be reproduced on its own.

A run already finished with the same settings is reused, not trained again; an interrupted
run is never taken as finished (:func:`mtrec.runs.inspect_run`), so a stopped experiment
resumes where it stopped; a finished run with other settings is not replaced without ``force``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mtrec.config import RunConfig
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, RunExistsError
from mtrec.io.files import directory_lock
from mtrec.io.fitted import EpochRecord
from mtrec.runs import RunJob, inspect_run, train_runs
from mtrec.tracking import TrackedRun, Tracker, tracked, tracked_training

#: Folder below the experiment root that holds the runs of the λ sweep.
SWEEP_DIRNAME = "sweep"
#: Folder below the experiment root that holds the runs of the multi-task study.
STUDY_DIRNAME = "multitask"
#: λF of the study's fixed-λ sweep (λR = 1 − λF), each architecture's reference.
STUDY_WEIGHTS = (0.5, 0.9, 0.99)
#: The study's learned and gradient methods (λ only switches a task on for them, PCGrad aside).
STUDY_METHODS = ("uncertainty", "gradnorm", "mgda")


#: How each sharing is named in configuration names ("shared" is the assignment's word for hard).
SHARING_NAMES = {"hard": "shared", "separate": "separate", "residual": "residual", "cross-stitch": "cross-stitch"}


@dataclass(frozen=True)
class Configuration:
    """What the experiments vary: the sharing of the embeddings, the loss weights λF and λR, and
    the weighting that joins the tasks (fixed, the assignment's, unless a study says otherwise)."""

    sharing: str
    factorization_weight: float
    regression_weight: float
    weighting: str = "fixed"

    @property
    def name(self) -> str:
        """``shared-0.99-0.01``: sharing, the weighting unless fixed, then λF and λR."""
        method = "" if self.weighting == "fixed" else f"-{self.weighting}"
        return f"{SHARING_NAMES[self.sharing]}{method}-{self.factorization_weight:g}-{self.regression_weight:g}"

    @property
    def label(self) -> str:
        method = "" if self.weighting == "fixed" else f", {self.weighting}"
        return f"{SHARING_NAMES[self.sharing]}{method}, λF={self.factorization_weight:g}, λR={self.regression_weight:g}"

    def model_params(self) -> dict[str, Any]:
        """The :class:`~mtrec.model.MultitaskModel` parameters this configuration sets."""
        return {
            "sharing": self.sharing,
            "factorization_weight": self.factorization_weight,
            "regression_weight": self.regression_weight,
            "weighting": self.weighting,
        }

    @classmethod
    def of(cls, config: RunConfig) -> Configuration:
        """The configuration of a run."""
        model = config.model
        return cls(
            str(model["sharing"]), float(model["factorization_weight"]), float(model["regression_weight"]),
            str(model["weighting"]),
        )  # fmt: skip


#: The three configurations of the assignment, in its order.
ASSIGNMENT_CONFIGURATIONS = (
    Configuration("hard", 0.99, 0.01),
    Configuration("hard", 0.5, 0.5),
    Configuration("separate", 0.5, 0.5),
)
#: The assignment's configurations and the fourth that completes the 2 x 2 design.
CONFIGURATIONS = {c.name: c for c in (*ASSIGNMENT_CONFIGURATIONS, Configuration("separate", 0.99, 0.01))}


def configurations_named(names: Iterable[str]) -> list[Configuration]:
    """The configurations called ``names``; :class:`ConfigError` listing the known names otherwise."""
    names = list(names)
    unknown = [name for name in names if name not in CONFIGURATIONS]
    if unknown:
        raise ConfigError(f"unknown configuration {', '.join(unknown)}; known: {', '.join(CONFIGURATIONS)}")
    return [CONFIGURATIONS[name] for name in dict.fromkeys(names)]


def sweep_configurations(step: float = 0.1) -> list[Configuration]:
    """λF from 0 to 1 in ``step`` (λR = 1 − λF, and 1 always included), shared and separate."""
    if not (0.0 < step < 1.0):
        raise ConfigError(f"the sweep step must be in (0, 1), got {step}")
    count = math.floor(1 / step + 1e-9)
    # Rounded so that 0.1 * 3 is named 0.3, not 0.30000000000000004.
    weights = sorted({round(i * step, 10) for i in range(count + 1)} | {1.0})
    return [Configuration(sharing, weight, round(1 - weight, 10)) for sharing in ("hard", "separate") for weight in weights]


def study_configurations() -> list[Configuration]:
    """The multi-task study: every sharing architecture with a fixed-λ sweep, PCGrad at the sweep's
    high λF, and the weightings that set their own weights."""
    configurations = []
    for sharing in SHARING_NAMES:
        configurations += [Configuration(sharing, w, round(1 - w, 10)) for w in STUDY_WEIGHTS]
        configurations.append(Configuration(sharing, STUDY_WEIGHTS[-1], round(1 - STUDY_WEIGHTS[-1], 10), "pcgrad"))
        configurations += [Configuration(sharing, 0.5, 0.5, method) for method in STUDY_METHODS]
    return configurations


@dataclass(frozen=True)
class PlannedRun:
    """One training run of an experiment: a configuration, a seed and its directory."""

    configuration: Configuration
    seed: int
    path: Path


def plan_runs(configurations: Sequence[Configuration], seeds: int, root: str | Path, first_seed: int = 0) -> list[PlannedRun]:
    """Every run under ``root``: seeds ``first_seed`` onwards, seed by seed, so early seeds finish first."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive whole number, got {seeds!r}")
    if not configurations:
        raise ConfigError("no configuration to run")
    root = Path(root)
    return [
        PlannedRun(configuration, seed, root / configuration.name / f"seed-{seed}")
        for seed in range(first_seed, first_seed + seeds)
        for configuration in configurations
    ]


#: ``(train, validation, test, summary)``: a run's data.
Split = tuple[Interactions, "Interactions | None", Interactions, dict[str, Any]]
#: ``seed -> (train, validation, test, summary)``: a run's data, split by its seed.
SplitLoader = Callable[[int], Split]


@dataclass(frozen=True)
class RunAction:
    """What an experiment does with a planned run: reuse it, or train it (``reason`` says why, when
    a finished-looking run is trained again)."""

    reuse: bool
    reason: str | None = None


def plan_actions(runs: Sequence[PlannedRun], config_of: Callable[[PlannedRun], RunConfig], force: bool) -> list[RunAction]:
    """Reuse or train, for every planned run, before anything is trained.

    A finished run with the same settings is reused; a damaged one (its model fails its
    integrity check, or is not the model its metrics recorded) is trained again, saying why.

    Raises
    ------
    RunExistsError
        When finished runs hold other settings (each named, with the settings that differ) and
        ``force`` is false: they are not replaced silently. Also for folders holding files that
        are not a run's.
    """
    actions, conflicts = [], []
    for run in runs:
        config = config_of(run)
        state = inspect_run(run.path)
        if state.kind == "foreign":
            raise RunExistsError(f"{state.reason}: choose another --root")
        if state.kind == "finished" and state.config.same_run(config) and not force:
            actions.append(RunAction(True))
        elif state.kind == "finished" and not force:
            conflicts.append(f"{run.path} ({'; '.join(config.differences(state.config))})")
            actions.append(RunAction(False))
        elif state.kind == "damaged":
            actions.append(RunAction(False, f"{state.reason}: trained again"))
        else:
            actions.append(RunAction(False))
    if conflicts:
        raise RunExistsError(
            f"{len(conflicts)} finished runs were made with other settings, shown as here / there: "
            f"{', '.join(conflicts)}. Give --force to train them again with these settings, or another --root"
        )
    return actions


def run_experiment(
    runs: Sequence[PlannedRun],
    config_of: Callable[[PlannedRun], RunConfig],
    load_split: SplitLoader,
    *,
    force: bool = False,
    on_run: Callable[[PlannedRun, RunAction], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    tracker: Tracker | None = None,
    stack: int | None = 1,
    on_note: Callable[[str], None] | None = None,
) -> list[PlannedRun]:
    """Train every planned run that is not already finished with the same settings.

    One experiment at a time works in a root (``runs``' root, from :func:`plan_runs`): it holds the
    root's lock (:func:`mtrec.io.files.directory_lock`) from before the runs are inspected until the
    last is trained.

    Parameters
    ----------
    runs:
        The runs, from :func:`plan_runs`.
    config_of:
        The :class:`~mtrec.config.RunConfig` of a run.
    load_split:
        ``seed -> (train, validation, test, summary)``; called once per seed.
    force:
        Train every run again, finished or not.
    on_run:
        Called before each run with the run and what is done with it (progress display).
    on_epoch:
        Called after each trained epoch.
    tracker:
        Where to record the runs trained besides their directories (:mod:`mtrec.tracking`): each
        as a run named ``<configuration>/seed-<k>``, nested under one run for the experiment,
        ``experiments <root>`` (none when every run is reused).
    stack:
        The most runs trained at once as one stacked computation (:func:`mtrec.runs.train_runs`;
        None: as many as memory holds; 1, the default: one at a time). Each run's directory and
        metrics are what it gives alone.
    on_note:
        Told how the runs were grouped, and why any could not stack.

    Returns
    -------
    The runs that were trained (the others were reused).

    Raises
    ------
    RunExistsError
        See :func:`plan_actions`: checked for every run before the first is trained.
    LockHeldError
        When another process holds the root's lock: nothing is inspected or trained.
    """
    root = runs[0].path.parents[1]  # plan_runs' root/<configuration>/seed-<k>
    trained = []
    with directory_lock(root):
        actions = plan_actions(runs, config_of, force)
        training = any(not action.reuse for action in actions)
        with tracked(tracker if training else None, f"experiments {root}") as experiment:
            if stack == 1:
                split_of = functools.lru_cache(maxsize=1)(load_split)  # called once per seed; one split in memory at a time
                for run, action in zip(runs, actions):
                    if on_run is not None:
                        on_run(run, action)
                    if not action.reuse:
                        train_runs([_job(run, split_of(run.seed), config_of(run), root, on_epoch, tracker, experiment)], 1, force=True)
                        trained.append(run)
                return trained
            for run, action in zip(runs, actions):
                if action.reuse and on_run is not None:
                    on_run(run, action)
            todo = [(run, action) for run, action in zip(runs, actions) if not action.reuse]
            splits = {seed: load_split(seed) for seed in dict.fromkeys(run.seed for run, _ in todo)}  # every seed's split at once
            jobs = [_job(run, splits[run.seed], config_of(run), root, on_epoch, tracker, experiment) for run, _ in todo]
            by_job = {id(job): (run, action) for job, (run, action) in zip(jobs, todo)}

            def on_group(group: list[RunJob]) -> None:
                for job in group:
                    if on_run is not None:
                        on_run(*by_job[id(job)])

            train_runs(jobs, stack, force=True, on_note=on_note, on_group=on_group)
            trained = [run for run, _ in todo]
    return trained


def _job(
    run: PlannedRun,
    split: Split,
    config: RunConfig,
    root: Path,
    on_epoch: Callable[[EpochRecord], None] | None,
    tracker: Tracker | None,
    experiment: TrackedRun,
) -> RunJob:
    """``run`` as one job of :func:`mtrec.runs.train_runs`, in its directory (replacing whatever is there), tracked
    as ``<configuration>/seed-<k>`` (its path below ``root``) under the ``experiment``'s run."""
    train, validation, test, summary = split
    name = run.path.relative_to(root).as_posix()

    def callbacks() -> Any:
        return tracked_training(tracker, config, run.path, on_epoch, name=name, parent=experiment)

    return RunJob(name, config, train, validation, test, run.path, summary, callbacks)
