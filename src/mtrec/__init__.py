"""mtrec: multi-task recommenders in PyTorch.

The public API, importable from ``mtrec`` itself::

    from mtrec import MultitaskModel, load_movielens, random_split

Names are imported on first use, so that ``import mtrec.io.checkpoint`` (say) loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__version__ = "0.5.0"

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


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` that import each of ``exports``
    (public name -> defining module) on first use and keep it in the package's namespace."""
    namespace = vars(importlib.import_module(package))

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports})

    return getattr_, dir_


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
