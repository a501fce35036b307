"""A training run on disk: config.json, TensorBoard curves, the model and metrics.json.

A run directory is *finished* when its ``metrics.json`` says ``"completed": true``. That file is
written last and atomically, after the model, so an interrupted run never looks finished;
starting a run removes any previous one's metrics and event files first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from mtrec import __version__
from mtrec.checkpoint import MODEL_FILENAME
from mtrec.data.interactions import Interactions
from mtrec.errors import DataError
from mtrec.fileio import atomic_write_text
from mtrec.model import EpochRecord, MultitaskModel

CONFIG_FILENAME = "config.json"
METRICS_FILENAME = "metrics.json"

#: TensorBoard tag of each per-epoch scalar.
SCALAR_TAGS = {
    "train_bpr": "train/bpr_loss",
    "train_mse": "train/mse",
    "train_loss": "train/joint_loss",
    "test_mse": "test/mse",
    "test_mrr": "test/mrr",
}


def run_config(model: MultitaskModel, epochs: int, data_info: dict[str, Any], eval_every: int = 1) -> dict[str, Any]:
    """Everything that determines a run's results, as plain data."""
    params = model.get_params()
    # Device and threads change speed, not results; they are recorded but not compared.
    return {
        "model": params,
        "epochs": epochs,
        "eval_every": eval_every,
        "data": data_info,
    }


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two run configs give the same results (device and thread count aside)."""

    def essential(config: dict[str, Any]) -> dict[str, Any]:
        model = {k: v for k, v in config.get("model", {}).items() if k not in ("device", "num_threads")}
        return {**{k: v for k, v in config.items() if k not in ("model", "mtrec_version")}, "model": model}

    return essential(a) == essential(b)


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def summarize(history: list[EpochRecord]) -> dict[str, Any]:
    """Final-epoch metrics, and the best test MSE/MRR with their epochs."""
    records = [record.to_json() for record in history]
    summary: dict[str, Any] = {"final": records[-1] if records else None}
    with_mse = [r for r in records if r["test_mse"] is not None]
    if with_mse:
        best = min(with_mse, key=lambda r: r["test_mse"])
        summary["best_test_mse"] = {"value": best["test_mse"], "epoch": best["epoch"]}
    with_mrr = [r for r in records if r["test_mrr"] is not None]
    if with_mrr:
        best = max(with_mrr, key=lambda r: r["test_mrr"])
        summary["best_test_mrr"] = {"value": best["test_mrr"], "epoch": best["epoch"]}
    return summary


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
    path = Path(run_dir) / CONFIG_FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: corrupt config file ({error})") from None


def is_finished(run_dir: str | Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a completed run made with ``config``."""
    try:
        read_metrics(run_dir)
        return same_config(read_config(run_dir), config) and (Path(run_dir) / MODEL_FILENAME).is_file()
    except DataError:
        return False


def train_run(
    model: MultitaskModel,
    train: Interactions,
    test: Interactions,
    epochs: int,
    logdir: str | Path,
    data_info: dict[str, Any],
    eval_every: int = 1,
    callback: Callable[[EpochRecord], None] | None = None,
) -> dict[str, Any]:
    """Fit ``model`` and record the run in ``logdir``; returns the metrics written to metrics.json."""
    from torch.utils.tensorboard import SummaryWriter

    model.check_fit(train, epochs, test)  # a run that cannot start leaves an earlier one intact
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / METRICS_FILENAME).unlink(missing_ok=True)
    for stale in logdir.glob("events.out.tfevents.*"):
        stale.unlink()
    config = {**run_config(model, epochs, data_info, eval_every), "mtrec_version": __version__}
    atomic_write_text(logdir / CONFIG_FILENAME, json.dumps(config, indent=2, allow_nan=False) + "\n")

    writer = SummaryWriter(log_dir=str(logdir))

    def log_epoch(record: EpochRecord) -> None:
        for field, tag in SCALAR_TAGS.items():
            value = getattr(record, field)
            if _finite(value) is not None:
                writer.add_scalar(tag, value, record.epoch)
        writer.flush()
        if callback is not None:
            callback(record)

    try:
        model.fit(train, epochs, test=test, eval_every=eval_every, callback=log_epoch)
    finally:
        writer.close()
    model.save(logdir / MODEL_FILENAME)
    metrics = {
        "completed": True,
        "epochs": [record.to_json() for record in model.history_],
        **summarize(model.history_),
    }
    atomic_write_text(logdir / METRICS_FILENAME, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics
