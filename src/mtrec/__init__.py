"""mtrec: multi-task recommenders in PyTorch.

The public API, importable from ``mtrec`` itself::

    from mtrec import MultitaskModel, load_movielens, random_split

Names are imported on first use, so that ``import mtrec.io.checkpoint`` (say) loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "MultitaskModel": "mtrec.model",
    "scaled_learning_rate": "mtrec.model",
    "MultitaskNet": "mtrec.nn.network",
    "RecommenderNetwork": "mtrec.nn.network",
    "JointObjective": "mtrec.nn.objective",
    "Batch": "mtrec.nn.batch",
    "AutogradStep": "mtrec.train.steps",
    "FusedStep": "mtrec.train.steps",
    "make_step": "mtrec.train.steps",
    "Evaluator": "mtrec.eval.evaluation",
    "mse_score": "mtrec.eval.evaluation",
    "mrr_score": "mtrec.eval.evaluation",
    "EpochRecord": "mtrec.io.fitted",
    "RunConfig": "mtrec.config",
    "DataSpec": "mtrec.data.spec",
    "Interactions": "mtrec.data.interactions",
    "ItemMetadata": "mtrec.data.metadata",
    "load_movielens": "mtrec.data.datasets",
    "download_release": "mtrec.data.datasets",
    "load_ratings_file": "mtrec.data.readers",
    "random_split": "mtrec.data.splits",
    "user_split": "mtrec.data.splits",
    "temporal_split": "mtrec.data.splits",
    "canonical_split": "mtrec.data.splits",
    "Recommender": "mtrec.serving.recommender",
    "MtrecError": "mtrec.errors",
    "ConfigError": "mtrec.errors",
    "DataError": "mtrec.errors",
    "ModelFileError": "mtrec.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
