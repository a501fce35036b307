"""A training run on disk: config.json, TensorBoard curves, the model and metrics.json.

A run directory is either a complete, consistent run or visibly unfinished, never a mix:

* a run is trained in a staging folder beside its directory (``.<name>.staging``) and published
  by renaming it into place once its model and ``metrics.json`` are written, so a crash, a full
  disk or Ctrl-C never touches what the directory held;
* a run is *finished* when ``metrics.json`` says ``"completed": true``, its model file passes its
  integrity check, and the model's and config.json's digests are the ones ``metrics.json`` recorded;
* a finished run is never replaced unless asked (``force``), and then only once the new one is
  complete; a folder holding anything but run files is never replaced at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mtrec.checkpoint import (
    CHECKPOINT_FILENAME,
    MODEL_FILENAME,
    load_training_state,
    model_digest,
    read_model_file,
    save_training_state,
)
from mtrec.config import CONFIG_FILENAME, RunConfig
from mtrec.data.interactions import Interactions
from mtrec.distributed import Distributed
from mtrec.errors import DataError, ModelFileError, RunExistsError
from mtrec.fileio import atomic_write_text, fsync_directory
from mtrec.fitted import EpochRecord, summarize

METRICS_FILENAME = "metrics.json"
#: Files a run directory may hold; a folder with anything else is not mtrec's to replace.
RUN_FILES = (CONFIG_FILENAME, METRICS_FILENAME, MODEL_FILENAME, CHECKPOINT_FILENAME)

#: TensorBoard tags of the per-epoch training values; a metric ``<prefix>_<name>`` is ``<prefix>/<name>``.
TRAIN_TAGS = {
    "train_bpr": "train/bpr_loss",
    "train_mse": "train/mse",
    "train_loss": "train/joint_loss",
    "learning_rate": "train/learning_rate",
}


def scalar_tags(record: EpochRecord) -> dict[str, float]:
    """The record's finite values by TensorBoard tag."""
    values = {tag: getattr(record, name) for name, tag in TRAIN_TAGS.items()}
    if record.task_weights is not None:
        values["train/weight_f"], values["train/weight_r"] = record.task_weights
    values.update({name.replace("_", "/", 1): value for name, value in record.metrics.items()})
    return {tag: value for tag, value in values.items() if value is not None and math.isfinite(value)}


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The metrics of a finished run; :class:`DataError` naming the file if missing or corrupt."""
    path = Path(run_dir) / METRICS_FILENAME
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (the run did not finish)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: corrupt metrics file ({error})") from None
    if not isinstance(metrics, dict) or metrics.get("completed") is not True or not metrics.get("epochs"):
        raise DataError(f"{path}: not a completed run's metrics")
    return metrics


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The raw config.json of a run (see :meth:`RunConfig.load` for the parsed config)."""
    path = Path(run_dir) / CONFIG_FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: corrupt config file ({error})") from None


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
    """A file mtrec writes into a run directory: its files, TensorBoard's, and temporaries of a save."""
    return name in RUN_FILES or name.startswith("events.out.tfevents.") or (name.startswith(".") and name.endswith(".tmp"))


def _foreign_entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if not _is_run_file(entry.name))


def recover(run_dir: str | Path) -> None:
    """Finish a publication that a crash interrupted (between the renames), and remove its leftovers."""
    run_dir = Path(run_dir)
    staging, old = staging_dir(run_dir), _old_dir(run_dir)
    if not run_dir.exists() and staging.is_dir() and inspect_run(staging, recovering=False).kind == "finished":
        os.rename(staging, run_dir)
    if old.exists() and run_dir.exists():
        shutil.rmtree(old, ignore_errors=True)


def inspect_run(run_dir: str | Path, recovering: bool = True) -> RunState:
    """The :class:`RunState` of ``run_dir``; checks the model file in full for a finished run."""
    run_dir = Path(run_dir)
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
    recorded = metrics.get("model_sha256")
    if recorded is not None and recorded != model_digest(run_dir):
        return RunState("damaged", f"{run_dir / MODEL_FILENAME} is not the model {run_dir / METRICS_FILENAME} recorded")
    recorded = metrics.get("config_sha256")
    if recorded is not None and recorded != _file_digest(run_dir / CONFIG_FILENAME):
        return RunState("damaged", f"{run_dir / CONFIG_FILENAME} is not the config {run_dir / METRICS_FILENAME} recorded")
    return RunState("finished", config=config)


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


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


def _publish(staging: Path, run_dir: Path) -> None:
    """Rename the finished staging folder into place, the previous run (if any) out of the way."""
    old = _old_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(staging, run_dir)
    fsync_directory(run_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def prepare_run_dir(run_dir: str | Path, force: bool = False) -> Path:
    """Check that a run may be trained for ``run_dir``, and give a fresh staging folder for it.

    Raises
    ------
    RunExistsError
        When ``run_dir`` holds a finished run and ``force`` is false, or holds files that are
        not a run's (never replaced).
    """
    run_dir = Path(run_dir)
    state = inspect_run(run_dir)
    if state.kind == "foreign":
        raise RunExistsError(f"{state.reason}: choose another --logdir")
    if state.kind == "finished" and not force:
        raise RunExistsError(
            f"{run_dir} holds a finished run: give --force to train it again (the finished run stays until "
            "the new one is complete), or another --logdir"
        )
    staging = staging_dir(run_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _resumable(run_dir: Path, config: RunConfig) -> tuple[dict, dict] | None:
    """The checkpoint of an unfinished run of ``config`` for ``run_dir`` (in its staging folder), if there is one."""
    staging = staging_dir(run_dir)
    try:
        if not RunConfig.load(staging).same_run(config):
            return None
        return load_training_state(staging / CHECKPOINT_FILENAME)
    except (DataError, ModelFileError):
        return None


def train_run(
    config: RunConfig,
    train: Interactions,
    validation: Interactions | None,
    test: Interactions | None,
    logdir: str | Path,
    summary: dict[str, Any] | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
    force: bool = False,
    distributed: Distributed | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    speed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the model ``config`` describes and record the run in ``logdir``; returns the metrics written.

    Parameters
    ----------
    config, train, validation, test:
        The run and its data: ``validation`` (or None) chooses the epoch when the config asks for
        early stopping; the test set is evaluated for the record only.
    logdir:
        The run directory. A finished run there is replaced only with ``force``.
    summary:
        What the split gave (sizes, cold start), for config.json.
    callback:
        Called after each epoch.
    distributed:
        This process's place in a distributed run: every process trains; process 0 alone
        writes, and tells the others when it refuses to start.
    checkpoint_every, resume:
        Save a checkpoint (model, optimiser, generator, schedule, history) every K epochs; and
        continue from the last one of an unfinished run of the same config, if there is one.
    speed:
        Speed-only facts to record beside the config (the world size...).
    """
    from torch.utils.tensorboard import SummaryWriter

    config.check()
    model = config.build_model()
    # A run that cannot start leaves whatever was there intact.
    model.check_fit(
        train, config.epochs, test, validation, config.early_stopping, config.patience, config.metrics, config.k
    )
    logdir = Path(logdir)
    main = distributed is None or distributed.is_main
    state, refusal, staging = None, None, staging_dir(logdir)
    if main:
        try:
            state = _resumable(logdir, config) if resume else None
            if state is None:
                staging = prepare_run_dir(logdir, force)
                resolved = {"step": model.resolved_step(), **(speed or {})}
                if resolved.get("dist_exchange") == "rows" and resolved["step"] != "fused":
                    resolved["dist_exchange"] = "dense"  # only the fused step knows the rows it touched
                document = config.to_json(resolved=resolved, summary=summary)
                atomic_write_text(staging / CONFIG_FILENAME, json.dumps(document, indent=2, allow_nan=False) + "\n")
        except RunExistsError as error:
            refusal = str(error)
    if distributed is not None:
        refusal = distributed.broadcast(refusal)
        state = distributed.broadcast(state)  # every process continues from the same checkpoint
    if refusal is not None:
        raise RunExistsError(refusal)

    writer = SummaryWriter(log_dir=str(staging)) if main else None

    def log_epoch(record: EpochRecord) -> None:
        if writer is not None:
            for tag, value in scalar_tags(record).items():
                writer.add_scalar(tag, value, record.epoch)
            writer.flush()
        if callback is not None:
            callback(record)

    def save_checkpoint(trainer) -> None:
        if main:
            save_training_state(staging / CHECKPOINT_FILENAME, *trainer.state())

    try:
        model.fit(
            train,
            config.epochs,
            validation=validation,
            test=test,
            eval_every=config.eval_every,
            early_stopping=config.early_stopping,
            patience=config.patience,
            metrics=config.metrics,
            k=config.k,
            callback=log_epoch,
            distributed=distributed,
            on_checkpoint=save_checkpoint,
            checkpoint_every=checkpoint_every,
            resume=state,
        )
    finally:
        if writer is not None:
            writer.close()
    metrics = {
        "completed": True,
        "epochs": [record.to_json() for record in model.history_],
        **summarize(model.history_, model.selected_epoch_, model.selection_),
    }
    if main:
        model.save(staging / MODEL_FILENAME)
        (staging / CHECKPOINT_FILENAME).unlink(missing_ok=True)  # a finished run needs none
        metrics = {"completed": True, "model_sha256": model_digest(staging),
                   "config_sha256": _file_digest(staging / CONFIG_FILENAME), **metrics}
        atomic_write_text(staging / METRICS_FILENAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        _publish(staging, logdir)
    if distributed is not None:
        distributed.barrier()  # the run is published before any process reports it
    return metrics
