"""A training run on disk: config.json, TensorBoard curves, the model and metrics.json.

A run directory is either a complete, consistent run or visibly unfinished, never a mix:

* a run is trained in a staging folder beside its directory (``.<name>.staging``) and published
  by renaming it into place once its model and ``metrics.json`` are written, so a crash, a full
  disk or Ctrl-C never touches what the directory held;
* a run is *finished* when ``metrics.json`` says ``"completed": true``, its model file passes its
  integrity check, and the model's and config.json's digests are the ones ``metrics.json`` recorded;
* a finished run is never replaced unless asked (``force``), and then only once the new one is
  complete; a folder holding anything but run files is never replaced at all (resuming a
  checkpoint included);
* one process at a time trains a run directory: it holds the directory's lock
  (:func:`mtrec.io.files.directory_lock`, ``.<name>.lock`` beside it) from before its staging folder
  is prepared until the run is published, so a published run is always one process's whole work;
* a checkpoint of an unfinished run is resumed, or discarded when asked (``force``), never thrown
  away in silence, and kept until the finished run is published;
* a ``logdir`` that is a symbolic link is followed: the run is staged beside the link's target and
  published in its place, so the link keeps pointing at the newest run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from mtrec.config import CONFIG_FILENAME, RunConfig
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError, DataError, ModelFileError, MtrecError, RunExistsError
from mtrec.eval.coldstart import cold_parts, cold_start_metrics
from mtrec.eval.evaluation import Evaluator
from mtrec.io.checkpoint import (
    CHECKPOINT_FILENAME,
    MODEL_FILENAME,
    load_training_state,
    model_digest,
    read_model_file,
    save_training_state,
)
from mtrec.io.files import LockHeldError, atomic_write_text, directory_lock, publish_directory, read_json
from mtrec.io.files import link_target as run_directory
from mtrec.io.fitted import current_keys, finite_or_none, summarize
from mtrec.io.schemas import parse_metrics
from mtrec.serving.retrieval import INDEX_FILENAMES
from mtrec.train.callbacks import Callback, CallbackLike, Checkpoints, Resume, TensorBoard, as_callbacks
from mtrec.train.distributed import Distributed

METRICS_FILENAME = "metrics.json"
#: Files a run directory may hold; a folder with anything else is not mtrec's to replace.
RUN_FILES = (CONFIG_FILENAME, METRICS_FILENAME, MODEL_FILENAME, CHECKPOINT_FILENAME)
#: The digests metrics.json records of a run's model and config.json.
DIGESTS = {"model_sha256": MODEL_FILENAME, "config_sha256": CONFIG_FILENAME}
#: The first config.json format whose runs always record their digests: runs of mtrec 0.1 (format 1)
#: and of 0.2.0 before its digests (format 2) may have none; those that do are verified.
DIGESTS_SINCE_FORMAT = 3


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics of a finished run; :class:`DataError` naming the file if missing, corrupt or not
    shaped as a completed run's metrics. The epochs of a run of mtrec 0.2 are read under their
    tasks' names (``train_watch`` for ``train_bpr``...)."""
    path = Path(run_dir) / METRICS_FILENAME
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict) or metrics.get("completed") is not True:
        raise DataError(f"{path}: not a completed run's metrics")
    metrics = parse_metrics(metrics, path)
    metrics["epochs"] = [current_keys(record) for record in metrics.get("epochs", [])]
    if isinstance(metrics.get("final"), dict):
        metrics["final"] = current_keys(metrics["final"])
    return metrics


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The raw config.json of a run (see :meth:`RunConfig.load` for the parsed config)."""
    return read_json(Path(run_dir) / CONFIG_FILENAME, "run config")


# ---------------------------------------------------------------------------------------------
# The state of a run directory


@dataclass(frozen=True)
class RunState:
    """What a run directory holds.

    ``kind`` is ``absent`` (nothing there), ``unfinished`` (a run that did not finish, or an
    empty folder), ``finished`` (complete and consistent), ``damaged`` (it says it finished, but
    its files disagree: ``reason`` says how) or ``foreign`` (files that are not a run's).
    """

    kind: str
    reason: str = ""
    config: RunConfig | None = None


def staging_dir(run_dir: Path) -> Path:
    """Where a run for ``run_dir`` is trained before it is published."""
    return run_dir.parent / f".{run_dir.name}.staging"


def _old_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.old"


def _is_run_file(name: str) -> bool:
    """A file mtrec writes into a run directory: its files, the HNSW indexes saved beside its model,
    TensorBoard's, and temporaries of a save."""
    return name in RUN_FILES or name in INDEX_FILENAMES or name.startswith("events.out.tfevents.") or (name.startswith(".") and name.endswith(".tmp"))


def _foreign_entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if not _is_run_file(entry.name))


def recover(run_dir: str | Path) -> None:
    """Finish a publication that a crash interrupted (between the renames), and remove its leftovers.

    Only with the directory's lock: while another process holds it, that process is publishing
    and finishes the work itself.
    """
    run_dir = run_directory(run_dir)
    staging, old = staging_dir(run_dir), _old_dir(run_dir)
    if not (old.exists() or (staging.is_dir() and not run_dir.exists())):
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(directory_lock(run_dir))
        except (LockHeldError, OSError):  # being published now, or a folder this process cannot change
            return
        if not run_dir.exists() and staging.is_dir() and inspect_run(staging, recovering=False).kind == "finished":
            os.rename(staging, run_dir)
        if old.exists() and run_dir.exists():
            shutil.rmtree(old, ignore_errors=True)


def inspect_run(run_dir: str | Path, recovering: bool = True) -> RunState:
    """The :class:`RunState` of ``run_dir``; checks the model file in full for a finished run.

    A run is finished only when its digests match (a run of config format 1 or 2, which may have
    recorded none, is taken as its model file's integrity check finds it; see :data:`DIGESTS_SINCE_FORMAT`).
    """
    run_dir = run_directory(run_dir)
    if recovering:
        recover(run_dir)
    if not run_dir.exists():
        return RunState("absent")
    if not run_dir.is_dir():
        return RunState("foreign", f"{run_dir} is a file, not a run directory")
    foreign = _foreign_entries(run_dir)
    if foreign:
        return RunState("foreign", f"{run_dir} holds files that are not a run's ({', '.join(foreign[:5])})")
    try:
        metrics = read_metrics(run_dir)
    except DataError as error:
        return RunState("unfinished", str(error))
    try:
        config = RunConfig.load(run_dir)
        read_model_file(run_dir)  # the integrity check
    except (DataError, ModelFileError) as error:
        return RunState("damaged", str(error))
    flaw = _digest_flaw(run_dir, metrics)
    if flaw:
        return RunState("damaged", flaw)
    return RunState("finished", config=config)


def _digest_flaw(run_dir: Path, metrics: dict[str, Any]) -> str | None:
    """Which of the run's files is not the one its metrics.json recorded, or which digest is missing."""
    expected = read_config(run_dir).get("format_version", 1) >= DIGESTS_SINCE_FORMAT
    for name, digest in _digests(run_dir).items():
        recorded, path = metrics.get(name), run_dir / DIGESTS[name]
        if recorded is None and expected:
            return f"{run_dir / METRICS_FILENAME} records no {name}, so {path} cannot be verified"
        if recorded is not None and recorded != digest:
            return f"{path} is not the one {run_dir / METRICS_FILENAME} recorded"
    return None


def _digests(run_dir: Path) -> dict[str, str | None]:
    """The digests of the run's files as they are now: the model's (as its header records it) and config.json's."""
    try:
        config = hashlib.sha256((run_dir / CONFIG_FILENAME).read_bytes()).hexdigest()
    except OSError:
        config = None
    return {"model_sha256": model_digest(run_dir), "config_sha256": config}


def check_complete(run_dir: str | Path) -> None:
    """:class:`DataError` unless ``run_dir`` holds a finished, consistent run (what serving needs)."""
    state = inspect_run(run_dir)
    if state.kind != "finished":
        why = {"absent": "there is no run there"}.get(state.kind, state.reason)
        raise DataError(f"{run_dir} is not a complete run ({state.kind}): {why}")


def is_finished(run_dir: str | Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished, consistent run made with ``config``."""
    state = inspect_run(run_dir)
    return state.kind == "finished" and state.config is not None and state.config.same_run(config)


def _check_run_dir(run_dir: Path, force: bool) -> None:
    """Check that a run, new or resumed, may be published as ``run_dir`` (the caller holds the directory's lock).

    Raises
    ------
    RunExistsError
        When ``run_dir`` holds a finished run and ``force`` is false, or holds files that are
        not a run's (never replaced).
    """
    state = inspect_run(run_dir)
    if state.kind == "foreign":
        raise RunExistsError(f"{state.reason}: choose another --logdir")
    if state.kind == "finished" and not force:
        raise RunExistsError(
            f"{run_dir} holds a finished run: give --force to train it again (the finished run stays until "
            "the new one is complete), or another --logdir"
        )


def _fresh_staging(run_dir: Path) -> Path:
    """An empty staging folder for ``run_dir``."""
    staging = staging_dir(run_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _checkpoint_to_resume(run_dir: Path, config: RunConfig, resume: bool, force: bool) -> tuple[dict, dict] | None:
    """The training state to continue from: the checkpoint an unfinished run for ``run_dir`` left
    in its staging folder, when ``resume`` and it is a run of ``config``.

    A checkpoint is never thrown away in silence: one that is not resumed (not asked to, made with
    other settings, or unreadable) is discarded with ``force``, and is an error without it.
    """
    staging = staging_dir(run_dir)
    if not (staging / CHECKPOINT_FILENAME).exists():
        return None
    discard = "--force to discard it and train from scratch"
    try:
        saved = RunConfig.load(staging)
        differences = config.differences(saved)
        state = load_training_state(staging / CHECKPOINT_FILENAME) if resume and not differences else None
    except (DataError, ModelFileError) as error:
        if force:
            return None
        raise RunExistsError(f"{staging} holds a checkpoint that cannot be resumed ({error}): give {discard}") from None
    if state is not None or force:
        return state
    if differences:
        raise RunExistsError(
            f"{staging} holds the checkpoint of an unfinished run with other settings, shown as here / there: "
            f"{'; '.join(differences)}. Give its settings to --resume it, or {discard}"
        )
    raise RunExistsError(f"{staging} holds the checkpoint of an unfinished run of these settings: give --resume to continue it, or {discard}")


def _start(
    run_dir: Path,
    config: RunConfig,
    model,
    force: bool,
    resume: bool,
    summary: dict[str, Any] | None,
    speed: dict[str, Any] | None,
) -> tuple[Path, tuple[dict, dict] | None]:
    """The staging folder to train in (with its config.json), and the checkpoint to continue from;
    :class:`RunExistsError` where ``run_dir`` may not be replaced, resumed or not."""
    _check_run_dir(run_dir, force)
    state = _checkpoint_to_resume(run_dir, config, resume, force)
    if state is not None:
        return staging_dir(run_dir), state
    staging = _fresh_staging(run_dir)
    resolved = {"step": model.resolved_step(), **(speed or {})}
    if resolved.get("dist_exchange") == "rows" and resolved["step"] != "fused":
        resolved["dist_exchange"] = "dense"  # only the fused step knows the rows it touched
    document = config.to_json(resolved=resolved, summary=summary)
    atomic_write_text(staging / CONFIG_FILENAME, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return staging, None


def train_run(
    config: RunConfig,
    train: Interactions,
    validation: Interactions | None,
    test: Interactions | None,
    logdir: str | Path,
    summary: dict[str, Any] | None = None,
    callbacks: Iterable[CallbackLike] | CallbackLike | None = None,
    force: bool = False,
    distributed: Distributed | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    speed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the model ``config`` describes and record the run in ``logdir``; returns the metrics written.

    Parameters
    ----------
    config, train, validation, test, summary:
        The run and its data (``validation`` chooses the epoch under early stopping; test is for the
        record only), and what the split gave (sizes, cold start) for config.json.
    logdir:
        The run directory (or a symbolic link to it: :func:`run_directory`). A finished run there
        is replaced only with ``force``. Its lock is held until the run is published: while
        another process trains it, :class:`~mtrec.io.files.LockHeldError` names that process.
    callbacks:
        Called as training goes, beside the run's own (TensorBoard, checkpoints).
    distributed:
        This process's place in a distributed run: every process trains; process 0 alone holds
        the lock and writes, and tells the others when it refuses to start.
    checkpoint_every, resume:
        Save a checkpoint every K epochs; continue from the last one of an unfinished run of the
        same config. A checkpoint not resumed is discarded with ``force``, and is an error
        without it (naming the settings that differ, when they do).
    speed:
        Speed-only facts to record beside the config (the world size...).
    """
    config.check()
    model = config.build_model()
    # A run that cannot start leaves whatever was there intact.
    model.check_fit(train, config.epochs, test, validation, config.early_stopping, config.patience, config.metrics, config.k)
    if config.refit and distributed is not None:
        raise ConfigError("--refit trains on one process; a distributed run cannot refit yet (train it again with --epochs N instead)")
    run_dir = run_directory(logdir)
    main = distributed is None or distributed.is_main
    begin = functools.partial(_start, run_dir, config, model, force, resume, summary, speed)
    with contextlib.ExitStack() as held:
        staging, state = _claim(held, run_dir, begin, distributed)
        own = _run_callbacks(staging if main else None, checkpoint_every, state)
        model.fit(
            train, config.epochs, validation=validation, test=test, eval_every=config.eval_every,
            early_stopping=config.early_stopping, patience=config.patience, metrics=config.metrics, k=config.k,
            callbacks=[*own, *as_callbacks(callbacks)], distributed=distributed,
        )  # fmt: skip
        metrics = {
            "completed": True,
            "epochs": [record.to_json() for record in model.history_],
            **summarize(model.history_, model.selected_epoch_, model.selection_),
        }
        if model.final_metrics_:  # the kept model differs from the selected epoch's record (the item-item path)
            metrics["model"] = {name: finite_or_none(value) for name, value in model.final_metrics_.items()}
        cold = _cold_start(model, config, train, validation, test)
        if cold:
            metrics["cold_start"] = cold
        if config.refit:
            metrics["refit"] = _refit(model, config, train, validation, test)
        if main:
            metrics = _save_and_publish(model, metrics, staging, run_dir)
    if distributed is not None:
        distributed.barrier()  # the run is published before any process reports it
    return metrics


def _cold_start(model, config: RunConfig, train: Interactions, validation: Interactions | None, test: Interactions | None) -> dict[str, Any]:
    """The kept model's test metrics on the warm and the cold pairs apart (:func:`mtrec.eval.coldstart.cold_start_metrics`),
    for a cold split or a model with features whose test set has cold pairs; empty otherwise."""
    if test is None or not (config.data.split.method.startswith("cold-") or config.model.features != "none"):
        return {}
    parts = cold_parts(train, test)
    if not (parts["cold_items"].any() or parts["cold_users"].any()):
        return {}
    device = next(model.network_.parameters()).device
    known = [train] if validation is None else [train, validation]
    measured = cold_start_metrics(model.network_, train, test, known, config.metrics, config.k, device)
    return {part: {name: finite_or_none(value) for name, value in values.items()} for part, values in measured.items()}


def _refit(model, config: RunConfig, train: Interactions, validation: Interactions | None, test: Interactions | None) -> dict[str, Any]:
    """Train ``model`` again on train + validation for the epochs it chose (:meth:`MultitaskModel.refit
    <mtrec.model.MultitaskModel.refit>`); what metrics.json records of it: the epochs, the rows and its test metrics."""
    assert validation is not None  # the config's rule: refit needs early stopping, which needs a validation set
    model.refit(train.joined(validation))
    record: dict[str, Any] = {"epochs": model.selection_["refit_epochs"], "rows": model.selection_["refit_rows"]}
    if test is not None:
        device = next(model.network_.parameters()).device
        measured = Evaluator(test, [train, validation], device, config.metrics, config.k).evaluate(model.network_)
        record.update({f"test_{name}": finite_or_none(value) for name, value in measured.items()})
    return record


def _run_callbacks(staging: Path | None, checkpoint_every: int, state: tuple[dict, dict] | None) -> list[Callback]:
    """A run's own callbacks: resuming from ``state``; and, on the process that writes (``staging``
    given), TensorBoard curves and checkpoints every ``checkpoint_every`` epochs in ``staging``."""
    callbacks: list[Callback] = [] if state is None else [Resume(state)]
    if staging is not None:
        callbacks.append(TensorBoard(staging))
        if checkpoint_every:
            callbacks.append(Checkpoints(checkpoint_every, lambda trainer: save_training_state(staging / CHECKPOINT_FILENAME, *trainer.state())))
    return callbacks


def _save_and_publish(model, metrics: dict[str, Any], staging: Path, run_dir: Path) -> dict[str, Any]:
    """Write the model and the metrics (with the digests) into ``staging``, publish it as ``run_dir``;
    the metrics written."""
    model.save(staging / MODEL_FILENAME)
    metrics = {"completed": True, **_digests(staging), **metrics}
    atomic_write_text(staging / METRICS_FILENAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    publish_directory(staging, run_dir, _old_dir(run_dir))
    # Only now: until the run is published, its checkpoint is what --resume continues from (one
    # left by a crash here is a run file, harmless to a finished run).
    (run_dir / CHECKPOINT_FILENAME).unlink(missing_ok=True)
    return metrics


def _claim(
    held: contextlib.ExitStack,
    run_dir: Path,
    begin: Callable[[], tuple[Path, tuple[dict, dict] | None]],
    distributed: Distributed | None,
) -> tuple[Path, tuple[dict, dict] | None]:
    """Take ``run_dir``'s lock (into ``held``) and ``begin`` the run there, on process 0; every process
    gets the staging folder and the checkpoint to continue from, or raises process 0's refusal."""
    staging, state, refusal = staging_dir(run_dir), None, None
    if distributed is None or distributed.is_main:
        try:
            held.enter_context(directory_lock(run_dir))
            staging, state = begin()
        except (MtrecError, OSError) as error:
            refusal = error
    if distributed is not None:
        refusal = distributed.broadcast(refusal)
        state = distributed.broadcast(state)  # every process continues from the same checkpoint
    if refusal is not None:
        raise refusal
    return staging, state


@dataclass(frozen=True)
class RunJob:
    """One run of a job of several (:func:`train_runs`): its name, config, data and directory, and
    what :func:`train_run` is given besides."""

    name: str
    config: RunConfig
    train: Interactions
    validation: Interactions | None
    test: Interactions | None
    logdir: Path
    summary: dict[str, Any] | None = None
    #: ``() -> context manager`` giving the run's epoch callback (a tracker's run, a progress bar); None: none.
    callbacks: Callable[[], contextlib.AbstractContextManager] | None = None


def train_runs(
    jobs: list[RunJob],
    stack: int | None = None,
    *,
    force: bool = False,
    checkpoint_every: int = 0,
    resume: bool = False,
    on_note: Callable[[str], None] | None = None,
    on_group: Callable[[list[RunJob]], None] | None = None,
    keep_going: bool = False,
) -> list[dict[str, Any] | Exception]:
    """Train ``jobs``, runs of one architecture and batch size stacked as one computation
    (:mod:`mtrec.train.stacked`); returns each run's metrics, in order.

    ``stack`` is the most runs per group (None: as many as memory holds; 1: one at a time). Runs
    that cannot stack (another shape, or a model the fused step does not train) are put in
    separate groups, never changed, and ``on_note`` is told how. Each run is exactly a
    :func:`train_run` of its own, with ``force``, ``checkpoint_every`` and ``resume``: its
    directory, checkpoints and metrics are what training it alone gives, its metrics to about
    1e-6. ``on_group`` is called with each group's jobs before it trains. A run that fails does
    not stop the others of its group; the first failure is raised once they have finished, unless
    ``keep_going``: then every group trains, and a failed run's entry is its error (an interrupt is
    raised all the same, once the runs of its group have stopped).
    """
    from mtrec.train.stacked import plan_groups, run_group

    groups, notes = plan_groups([job.name for job in jobs], [job.config for job in jobs], [job.train for job in jobs], stack)
    for note in notes:
        if on_note is not None:
            on_note(note)
    results: list[Any] = [None] * len(jobs)

    def runner(job: RunJob) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            with job.callbacks() if job.callbacks is not None else contextlib.nullcontext() as callback:
                return train_run(
                    job.config, job.train, job.validation, job.test, job.logdir, job.summary, callback, force=force,
                    checkpoint_every=checkpoint_every, resume=resume,
                )  # fmt: skip

        return run

    for group in groups:
        if on_group is not None:
            on_group([jobs[i] for i in group])
        if len(group) == 1:
            try:
                results[group[0]] = runner(jobs[group[0]])()
            except Exception as error:
                if not keep_going:
                    raise
                results[group[0]] = error
            continue
        outcomes, _ = run_group([runner(jobs[i]) for i in group], jobs[group[0]].config.model.num_threads)
        for index, outcome in zip(group, outcomes):
            results[index] = outcome
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed and not (keep_going and all(isinstance(error, Exception) for error in failed)):
            raise failed[0]
    return results
