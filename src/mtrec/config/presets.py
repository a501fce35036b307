"""The presets: named starting points for a run's settings (README, "Presets")."""

from __future__ import annotations

from typing import Any

from mtrec.config.run import RunConfig
from mtrec.errors import ConfigError

#: The presets, the assignment's first.
PRESETS = ("seed", "quality")
#: The quality preset's model (see :func:`preset`): measured by ``benchmarks/quality.py``.
QUALITY_MODEL = {
    "sharing": "hard",
    "factorization_weight": 0.99,
    "regression_weight": 0.01,
    "batch_size": 4096,
    "learning_rate": 0.032,
    "lr_schedule": "exponential",
    "lr_gamma": 0.95,
    "l2": 5e-6,
    "negatives": 8,
}
QUALITY_TRAINING = {"epochs": 150, "early_stopping": "joint", "patience": 20}
QUALITY_VALID_FRACTION = 0.05


def preset(name: str, **settings: Any) -> RunConfig:
    """The run config of preset ``name`` with ``settings`` (named as in :meth:`RunConfig.option_names`) laid over it.

    ``seed`` is the assignment's settings (:class:`RunConfig`'s defaults): 200 epochs at batch
    256, no validation, the last epoch's model. ``quality`` is the best configuration measured
    on validation data (README, "Presets"): a validation set carved from the training part by
    the split's own rule (5%, or K per user for splits by ``leave_k`` or ``last_k``), early
    stopping on the joint criterion, an exponentially decaying learning rate and weight decay.
    """
    return RunConfig().replace(**{**preset_settings(name, settings), **settings})


def preset_settings(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """What preset ``name`` sets, fitted to the ``given`` settings it will be laid under (the quality
    preset's validation set follows the split they ask for)."""
    if name == "seed":
        return {}
    if name == "quality":
        count = (given or {}).get("leave_k") or (given or {}).get("last_k")
        validation = {"valid_k": count} if count else {"valid_fraction": QUALITY_VALID_FRACTION}
        return {**QUALITY_MODEL, **QUALITY_TRAINING, **validation}
    raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
