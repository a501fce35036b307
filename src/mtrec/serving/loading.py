"""Which models a recommender serves: a fitted model, or one read from a model file or a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mtrec.config import CONFIG_FILENAME
from mtrec.errors import ConfigError
from mtrec.io.checkpoint import model_path
from mtrec.model import MultitaskModel
from mtrec.runs import METRICS_FILENAME, check_complete


class LoadedModel(NamedTuple):
    """A model read from disk, and the model file it was read from (an HNSW index is saved beside it)."""

    model: MultitaskModel
    model_file: Path


def check_fitted(model: MultitaskModel) -> None:
    """A :class:`ConfigError` unless ``model`` is fitted (or loaded)."""
    if model.network_ is None or model.data_ is None:
        raise ConfigError("the model is not fitted yet: call fit() or load()")


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """The model saved at ``path`` (a model file or a run directory), on ``device``.

    A run directory (one with a config.json or metrics.json) must hold a complete, consistent run
    (:func:`mtrec.runs.check_complete`): an unfinished or damaged one is refused, saying why. A
    folder that :meth:`MultitaskModel.save` wrote holds just the model file.
    """
    folder = Path(path)
    if folder.is_dir() and ((folder / CONFIG_FILENAME).exists() or (folder / METRICS_FILENAME).exists()):
        check_complete(path)
    return LoadedModel(MultitaskModel.load(path, device), model_path(path))
