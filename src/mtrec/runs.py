"""A training run on disk: config.json, TensorBoard curves, the model and metrics.json.

A run directory is *finished* when its ``metrics.json`` says ``"completed": true``. That file is
written last and atomically, after the model, so an interrupted run never looks finished;
starting a run removes any previous one's metrics and event files first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mtrec.checkpoint import MODEL_FILENAME
from mtrec.config import CONFIG_FILENAME, RunConfig
from mtrec.data.interactions import Interactions
from mtrec.errors import DataError
from mtrec.fileio import atomic_write_text
from mtrec.fitted import EpochRecord, summarize

METRICS_FILENAME = "metrics.json"

#: TensorBoard tags of the per-epoch training losses; a metric ``<prefix>_<name>`` is ``<prefix>/<name>``.
TRAIN_TAGS = {
    "train_bpr": "train/bpr_loss",
    "train_mse": "train/mse",
    "train_loss": "train/joint_loss",
    "learning_rate": "train/learning_rate",
}


def scalar_tags(record: EpochRecord) -> dict[str, float]:
    """The record's finite values by TensorBoard tag."""
    values = {tag: getattr(record, name) for name, tag in TRAIN_TAGS.items()}
    values.update({name.replace("_", "/", 1): value for name, value in record.metrics.items()})
    return {tag: value for tag, value in values.items() if value is not None and value == value and abs(value) != float("inf")}


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


def is_finished(run_dir: str | Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a completed run made with ``config``."""
    try:
        read_metrics(run_dir)
        return RunConfig.load(run_dir).same_run(config) and (Path(run_dir) / MODEL_FILENAME).is_file()
    except DataError:
        return False


def train_run(
    config: RunConfig,
    train: Interactions,
    validation: Interactions | None,
    test: Interactions | None,
    logdir: str | Path,
    summary: dict[str, Any] | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
) -> dict[str, Any]:
    """Fit the model ``config`` describes and record the run in ``logdir``; returns the metrics written.

    ``validation`` (or None) chooses the epoch when the config asks for early stopping; the test
    set is evaluated for the record only. ``summary`` describes what the split gave (sizes, cold
    start) for config.json.
    """
    from torch.utils.tensorboard import SummaryWriter

    config.check()
    model = config.build_model()
    # a run that cannot start leaves an earlier one intact
    model.check_fit(train, config.epochs, test, validation, config.early_stopping, config.patience, config.metrics, config.k)
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / METRICS_FILENAME).unlink(missing_ok=True)
    for stale in logdir.glob("events.out.tfevents.*"):
        stale.unlink()
    resolved = {"step": model.resolved_step()}
    document = config.to_json(resolved=resolved, summary=summary)
    atomic_write_text(logdir / CONFIG_FILENAME, json.dumps(document, indent=2, allow_nan=False) + "\n")

    writer = SummaryWriter(log_dir=str(logdir))

    def log_epoch(record: EpochRecord) -> None:
        for tag, value in scalar_tags(record).items():
            writer.add_scalar(tag, value, record.epoch)
        writer.flush()
        if callback is not None:
            callback(record)

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
        )
    finally:
        writer.close()
    model.save(logdir / MODEL_FILENAME)
    metrics = {
        "completed": True,
        "epochs": [record.to_json() for record in model.history_],
        **summarize(model.history_, model.selected_epoch_),
    }
    atomic_write_text(logdir / METRICS_FILENAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics
