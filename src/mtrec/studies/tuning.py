"""Hyper-parameter search on the validation criterion, with Optuna (``pip install -e ".[tune]"``).

Each trial is an ordinary training run in ``<root>/trial-NNNN`` whose settings the sampler
(TPE, seeded) picks from a search space; the first trial of a new study is the base config
itself (the quality preset by default), so the best found is never worse than it. The trial's value is the best validation criterion
over its epochs (the one its early stopping keeps), and a trial whose criterion falls below
the median of the earlier trials at the same epoch is pruned. The test set is never read:
trials are trained without it. The best settings are written as ``<root>/best/config.json``,
which ``mtrec train --config`` trains (and then tests).

The study lives in ``<root>/study.db`` (SQLite): running the same search again adds trials to
it, so an interrupted search resumes. The sampler is seeded by the seed and the number of trials
the study already holds, so the trials a rerun adds continue the search instead of repeating its
first draws. One search at a time works in a root: it holds the root's lock
(:func:`mtrec.io.files.directory_lock`). A trial that fails (or that Ctrl-C ends) ends the search
with its error; the trials finished before it stay in the study.

Trials are asked for and told in slices (Optuna's ask and tell): one at a time, or with ``stack``
several whose runs train stacked as one computation (:mod:`mtrec.train.stacked`). The trials of
a slice share the shape settings of its first (those in :func:`~mtrec.train.stacked.stack_key`),
and the sampler, told of the slice's running trials (``constant_liar``), picks the others for
each. Each trial reports and is pruned on its own; a pruned trial leaves its group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mtrec.config import CONFIG_FILENAME, RunConfig
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, MtrecError
from mtrec.eval.evaluation import Evaluator
from mtrec.io.files import atomic_write_text, directory_lock
from mtrec.io.fitted import EpochRecord
from mtrec.nn.losses import WATCH_LOSSES
from mtrec.runs import RunJob, train_runs
from mtrec.tracking import TrackedRun, Tracker, tracked, tracked_training
from mtrec.train.loop import EarlyStopping
from mtrec.train.session import reference_metrics
from mtrec.train.stacked import VARYING, memory_limit, stack_key

#: A dimension of the search: ("categorical", choices), ("float", low, high) or ("log", low, high).
Dimension = tuple

#: The default search space: the settings the quality preset's measurements found to matter, around
#: the preset (its own settings are the first trial).
SEARCH_SPACE: dict[str, Dimension] = {
    "embedding_dim": ("categorical", [32, 64, 128]),
    "learning_rate": ("log", 0.001, 0.03),
    "lr_gamma": ("float", 0.85, 1.0),
    "row_l2": ("log", 1e-4, 0.1),
    "factorization_weight": ("float", 0.5, 1.0),
    "regression_weight": ("log", 0.01, 1.0),
    "history_dropout": ("float", 0.0, 0.8),
    "ema": ("categorical", [0.0, 0.9, 0.97, 0.99]),
    "negatives": ("categorical", [1, 2, 4, 8]),
    "watch_loss": ("categorical", [name for name in WATCH_LOSSES if WATCH_LOSSES[name].searched]),
    "sharing": ("categorical", ["hard", "separate"]),
    "rating_bias": ("categorical", [False, True]),
}
BEST_DIRNAME = "best"
STUDY_FILENAME = "study.db"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError('mtrec tune needs Optuna: pip install -e ".[tune]" (or pip install optuna)') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """The settings a trial picks from ``space``."""
    params = {}
    for name, (kind, *bounds) in space.items():
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, bounds[0])
        elif kind in ("float", "log"):
            params[name] = trial.suggest_float(name, bounds[0], bounds[1], log=kind == "log")
        else:
            raise ConfigError(f"unknown kind of search dimension {kind!r} for {name}")
    if "embedding_dim" in params:
        params["layer_sizes"] = None  # follows the dimension
    return params


def _point_of(config: RunConfig, space: dict[str, Dimension]) -> dict[str, Any]:
    """The search-space coordinates of ``config`` (a weight decay of None is the ``l2`` in effect);
    settings outside the space are left to the sampler."""
    point = {}
    for name, (kind, *bounds) in space.items():
        value = config.model.get(name)
        if value is None and name.startswith("l2_"):
            value = config.model["l2"]
        inside = value in bounds[0] if kind == "categorical" else value is not None and bounds[0] <= value <= bounds[1]
        if inside:
            point[name] = value
    return point


@dataclass(frozen=True)
class TuningResult:
    """What a search found: the best trial's number, value and settings, and its config file."""

    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    config_path: Path
    trials: int
    pruned: int
    #: how many of this search's trials trained stacked
    stacked: int = 0


#: The most trials ``stack=None`` (``--stack auto``) asks for at a time: the sampler learns from
#: each slice before it picks the next.
AUTO_SLICE = 10

#: The outcome of a trial of a slice that did not train (another trial's settings were not valid).
_NOT_RUN = MtrecError("not trained")


class _Pruned(MtrecError):
    """Raised inside a trial's training to end it (Optuna prunes it)."""


def sampler_seed(seed: int, done: int) -> int:
    """The sampler's seed for a study that holds ``done`` trials: each continuation draws anew."""
    return int(np.random.SeedSequence([seed, done]).generate_state(1)[0])


def tune(
    base: RunConfig,
    train: Interactions,
    validation: Interactions,
    root: str | Path,
    trials: int = 50,
    seed: int = 0,
    timeout: float | None = None,
    space: dict[str, Dimension] | None = None,
    on_trial: Callable[[int, float | None, bool], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    tracker: Tracker | None = None,
    stack: int | None = 1,
) -> TuningResult:
    """Search ``space`` around ``base`` for the best validation criterion.

    Parameters
    ----------
    base:
        The settings not searched (batch size, schedule, epochs, early stopping...). Its
        ``early_stopping`` is the criterion maximised (``"joint"`` when it has none).
    train, validation:
        The data: trials learn on ``train`` and are judged on ``validation``.
    root:
        Where the trials' run directories, the study and the best config go.
    trials:
        How many trials to run (in this call; earlier ones in the study count for the best).
    seed:
        Seeds the sampler, with the number of trials already in the study (:func:`sampler_seed`).
    timeout:
        Stop starting trials (slices of trials, with ``stack``) after this many seconds.
    space:
        The search space (default :data:`SEARCH_SPACE`).
    on_trial:
        Called after each trial with its number, value (None if pruned) and whether it was pruned.
    on_epoch:
        Called after each trained epoch.
    tracker:
        Where to record the search besides ``root`` (:mod:`mtrec.tracking`): one run for the study
        (the base settings and the search's as parameters, each finished trial's value as
        ``trial_value`` at step = trial number, ``best_value`` and ``best_trial``, and the best
        config.json as an artifact), each trial a training run nested under it.
    stack:
        How many trials to ask for at a time, to train stacked (:mod:`mtrec.train.stacked`); None:
        as many as memory holds, at most :data:`AUTO_SLICE`; 1: one at a time. A slice's trials
        share the settings stacked runs must share (:meth:`_Search.ask_slice`), so a slice whose
        first trial the fused step does not train is that trial alone. Pruning is per trial: a
        pruned trial leaves its group, the others go on.
    """
    optuna = _optuna()
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a positive whole number, got {trials!r}")
    space = _checked_space(SEARCH_SPACE if space is None else space)
    base = base.replace(early_stopping=base.early_stopping or "joint").check()
    root = Path(root)
    if stack is not None and (isinstance(stack, bool) or not isinstance(stack, int) or stack < 1):
        raise ConfigError(f"stack must be a positive whole number or None, got {stack!r}")
    if stack is not None and stack > 1 and stack_key(base, train) is not None and stack > (limit := memory_limit(base, train)):
        raise ConfigError(f"--stack {stack} does not fit in memory: at most {limit} of these trials fit at once")
    scorer = _validation_scorer(base, train, validation)
    search = _Search(optuna, base, space, train, validation, root, scorer, on_trial, on_epoch, tracker, stack)
    return search.run(trials, seed, timeout)


def _checked_space(space: dict[str, Dimension]) -> dict[str, Dimension]:
    """``space``, unless it names a setting that is not an option (:class:`ConfigError` naming it)."""
    unknown = sorted(set(space) - set(RunConfig.option_names()))
    if unknown:
        raise ConfigError(f"unknown setting in the search space: {', '.join(unknown)}")
    return space


def _validation_scorer(base: RunConfig, train: Interactions, validation: Interactions) -> EarlyStopping:
    """The criterion of ``base``'s early stopping, scored on ``validation`` as during training."""
    evaluator = Evaluator(validation, train, metrics=("mse", "mrr") if train.has_ratings else ("mrr",))
    return EarlyStopping(base.early_stopping, base.patience, reference_metrics(train, evaluator))


class _TrialProgress:
    """A trial's epoch callback: scores each validation, keeps the best score, reports it to the
    pruner and ends the trial (:class:`_Pruned`) when the pruner says so."""

    def __init__(self, trial, scorer: EarlyStopping, on_epoch: Callable[[EpochRecord], None] | None) -> None:
        self.trial = trial
        self.scorer = scorer
        self.on_epoch = on_epoch
        self.best = float("-inf")

    def __call__(self, record: EpochRecord) -> None:
        valid = {k.removeprefix("valid_"): v for k, v in record.metrics.items() if k.startswith("valid_")}
        if valid:
            score = self.scorer.score(valid)
            self.best = max(self.best, score)
            self.trial.report(score, record.epoch)
            if self.trial.should_prune():
                raise _Pruned(f"trial {self.trial.number} pruned at epoch {record.epoch}")
        if self.on_epoch is not None:
            self.on_epoch(record)


@dataclass(frozen=True)
class _Search:
    """One search: the settings its trials start from, the space they pick from, the data they
    learn on and are judged on, where they go and whom they report to (see :func:`tune`)."""

    optuna: Any
    base: RunConfig
    space: dict[str, Dimension]
    train: Interactions
    validation: Interactions
    root: Path
    scorer: EarlyStopping
    on_trial: Callable[[int, float | None, bool], None] | None
    on_epoch: Callable[[EpochRecord], None] | None
    tracker: Tracker | None
    #: trials asked at a time (None: as many as memory holds, at most :data:`AUTO_SLICE`)
    stack: int | None = 1
    #: the trials of this search that trained stacked (their names)
    stacked: list[str] = field(default_factory=list)
    #: what the search has said once (``"memory"``: that memory cut a slice below ``stack``)
    said: set[str] = field(default_factory=set)

    def run(self, trials: int, seed: int, timeout: float | None) -> TuningResult:
        """Run ``trials`` more trials under the root's lock, tracked, and write the best config."""
        with directory_lock(self.root), tracked(self.tracker, f"tune {self.root}") as study_run:
            study_run.log_config(self.base.to_json())
            study_run.log_params({"tune.trials": trials, "tune.seed": seed, "tune.criterion": self.base.early_stopping})
            study = self.open_study(seed)
            started, done = time.monotonic(), 0
            while done < trials and (timeout is None or time.monotonic() - started < timeout):
                done += self.train_slice(study, self.ask_slice(study, trials - done), study_run)
            result = dataclasses.replace(_conclude(self.optuna, study, self.base, self.root), stacked=len(self.stacked))
            study_run.log_metrics({"best_value": result.best_value, "best_trial": result.best_trial}, result.best_trial)
            study_run.log_artifacts(result.config_path.parent)
            return result

    def open_study(self, seed: int):
        """The study in ``<root>/study.db``, new or resumed, its sampler seeded by :func:`sampler_seed`."""
        self.root.mkdir(parents=True, exist_ok=True)
        optuna = self.optuna
        study = optuna.create_study(
            study_name="mtrec",
            storage=f"sqlite:///{self.root / STUDY_FILENAME}",
            load_if_exists=True,
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10),
        )
        # constant_liar: the trials of a slice, asked before any is told, keep apart from each other.
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, len(study.trials)), constant_liar=True)
        # A trial still running belongs to a search that was killed (one search at a time holds the
        # root's lock): it failed, and the sampler must not count it as running (constant_liar).
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        if not study.trials:
            # The first trial of a new study is the base config itself, so the search can only find something better.
            study.enqueue_trial(_point_of(self.base, self.space))
        return study

    def ask_slice(self, study, most: int) -> list[tuple[Any, RunConfig | ConfigError]]:
        """The next trials, each with its settings (or why they are not valid): one, or up to
        ``most`` that train stacked (:mod:`mtrec.train.stacked`) when the first of them can.

        The first trial is the sampler's. The others share its settings that stacked runs must
        share, and the sampler picks the rest (:data:`~mtrec.train.stacked.VARYING`: the loss
        weights, learning rate and schedule, weight decays, EMA); a space of only those settings
        searches exactly as one trial at a time would, K trials per round of the sampler.
        """
        asked: list[Any] = []
        try:
            asked.append(first := study.ask())
            trials = [(first, self.settings(first))]
            config = trials[0][1]
            if self.stack == 1 or most == 1 or isinstance(config, ConfigError) or stack_key(config, self.train) is None:
                return trials
            limit = memory_limit(config, self.train)
            if self.stack is not None and limit < min(most, self.stack) and "memory" not in self.said:
                # the group size is cut, never a trial's settings: said once a search
                self.said.add("memory")
                warnings.warn(
                    f"--stack {self.stack}: trial {first.number}'s settings fit only {limit} trials in memory at once, "
                    f"so its slice trains {limit} (and so does any other slice memory cuts)",
                    UserWarning,
                    stacklevel=2,
                )
            size = min(most, self.stack or AUTO_SLICE, limit)
            shared = {name: value for name, value in first.params.items() if name not in VARYING}
            for _ in range(size - 1):
                study.enqueue_trial(shared)  # the sampler picks the rest
                asked.append(trial := study.ask())
                trials.append((trial, self.settings(trial)))
            return trials
        except BaseException:  # Ctrl-C while the sampler picks: no trial of the slice stays running
            for trial in asked:
                study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            raise

    def settings(self, trial) -> RunConfig | ConfigError:
        """The run settings ``trial`` picks, or why they are not valid."""
        try:
            return self.base.replace(**suggest(trial, self.space)).check()
        except ConfigError as error:
            return error

    def train_slice(self, study, trials: list[tuple[Any, RunConfig | ConfigError]], parent: TrackedRun) -> int:
        """Train ``trials`` (stacked where they can), tell the study how each ended, and tell
        ``on_trial``; the number of trials. A trial that fails, or Ctrl-C, ends the search with its
        error once the slice has stopped and every trial of it is told (its finished trials kept)."""
        ended: dict[int, BaseException | None] = {}
        progress = {trial.number: _TrialProgress(trial, self.scorer, self.on_epoch) for trial, _ in trials}
        jobs = []
        for trial, config in trials:
            if isinstance(config, ConfigError):
                ended[trial.number] = config
                continue
            name = f"trial-{trial.number:04d}"
            callbacks = functools.partial(self._trial_callback, config, name, progress[trial.number], parent, ended, trial.number)
            jobs.append(RunJob(name, config, self.train, self.validation, None, self.root / name, callbacks=callbacks))
        try:
            if len(jobs) == len(trials):  # a slice with invalid settings fails before any trial trains
                train_runs(jobs, None if len(jobs) > 1 else 1, keep_going=True, on_group=self._count_stacked)
        finally:
            failure, told = None, []
            for trial, _ in trials:  # every trial is told before anything else can fail
                outcome = ended.get(trial.number, _NOT_RUN)
                if outcome is None:
                    told.append(study.tell(trial, progress[trial.number].best))
                elif isinstance(outcome, _Pruned):
                    told.append(study.tell(trial, state=self.optuna.trial.TrialState.PRUNED))
                else:
                    study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                    if outcome is not _NOT_RUN:
                        failure = failure or outcome
            for frozen in told:
                self.after(frozen, parent)
        if failure is not None and not isinstance(failure, KeyboardInterrupt):
            raise failure
        return len(trials)

    def _count_stacked(self, group: list[RunJob]) -> None:
        if len(group) > 1:
            self.stacked.extend(job.name for job in group)

    @contextlib.contextmanager
    def _trial_callback(
        self, config: RunConfig, name: str, progress: _TrialProgress, parent: TrackedRun, ended: dict[int, BaseException | None], number: int
    ) -> Iterator[Any]:
        """The epoch callback of one trial's training (tracked, nested under ``parent``); records
        in ``ended`` how the training ended."""
        try:
            with tracked_training(self.tracker, config, self.root / name, progress, name=name, parent=parent, stopped=(_Pruned,)) as callback:
                yield callback
        except BaseException as error:
            ended[number] = error
            raise
        ended[number] = None

    def after(self, trial, parent: TrackedRun) -> None:
        """Record a finished trial's value in ``parent`` and tell ``on_trial``."""
        pruned = trial.state == self.optuna.trial.TrialState.PRUNED
        if not pruned:
            parent.log_metrics({"trial_value": trial.value}, trial.number)
        if self.on_trial is not None:
            self.on_trial(trial.number, None if pruned else trial.value, pruned)


def _conclude(optuna, study, base: RunConfig, root: Path) -> TuningResult:
    """The best trial of ``study``, its config written to ``<root>/best/config.json``."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise MtrecError(f"no trial of the search in {root} finished (all were pruned or failed)")
    best = study.best_trial
    config = base.replace(**{**best.params, **({"layer_sizes": None} if "embedding_dim" in best.params else {})}).check()
    path = root / BEST_DIRNAME / CONFIG_FILENAME
    atomic_write_text(path, json.dumps(config.to_json(), indent=2) + "\n")
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return TuningResult(best.number, best.value, dict(best.params), path, len(study.trials), pruned)
