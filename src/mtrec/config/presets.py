"""The presets: named starting points for a run's settings (README, "Presets")."""

from __future__ import annotations

from typing import Any

from mtrec.config.run import RunConfig
from mtrec.errors import ConfigError

#: The presets, the assignment's first. ``quality-0.3`` is mtrec 0.3's quality preset (an id user, BPR
#: with 8 negatives), kept so that the results measured with it (the multi-task study) reproduce.
PRESETS = ("seed", "quality", "quality-0.3")
#: The quality preset's model (see :func:`preset`): measured by ``benchmarks/quality.py``. A
#: history-aware user (SVD++/FISM, mean-pooled, half the history dropped while training) read by
#: both heads; the full softmax over the catalogue for the watch head; batches of whole users
#: (about 64 per step); a moving average of the weights; an L2 penalty on the rows each batch
#: reads; a rating head that starts at the mean rating and also reads the watch score; and an
#: EASE item-item path whose λ and weight are chosen on validation after training.
QUALITY_MODEL = {
    "sharing": "hard",
    "embedding_dim": 128,
    "user_encoder": "history",
    "history_alpha": 1.0,
    "history_dropout": 0.5,
    "watch_loss": "softmax",
    "factorization_weight": 1.0,
    "regression_weight": 0.1,
    "rating_bias": True,
    "rating_reads_score": True,
    "start_at_mean": True,
    "row_l2": 0.01,
    "batch_size": 6000,
    "batch_by": "users",
    "learning_rate": 0.005,
    "lr_schedule": "exponential",
    "lr_gamma": 0.97,
    "ema": 0.97,
    "item_item": True,
}
QUALITY_TRAINING = {"epochs": 60, "early_stopping": "joint", "patience": 10}
#: mtrec 0.3's quality preset: its model and its training.
QUALITY_03_MODEL = {
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
QUALITY_03_TRAINING = {"epochs": 150, "early_stopping": "joint", "patience": 20}
QUALITY_VALID_FRACTION = 0.05


def preset(name: str, **settings: Any) -> RunConfig:
    """The run config of preset ``name`` with ``settings`` (named as in :meth:`RunConfig.option_names`) laid over it.

    ``seed`` is the assignment's settings (:class:`RunConfig`'s defaults): 200 epochs at batch
    256, no validation, the last epoch's model. ``quality-0.3`` is mtrec 0.3's quality preset. ``quality`` is the best configuration measured
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
    if name in ("quality", "quality-0.3"):
        count = (given or {}).get("leave_k") or (given or {}).get("last_k")
        validation = {"valid_k": count} if count else {"valid_fraction": QUALITY_VALID_FRACTION}
        if name == "quality-0.3":
            return {**QUALITY_03_MODEL, **QUALITY_03_TRAINING, **validation}
        return {**QUALITY_MODEL, **QUALITY_TRAINING, **validation}
    raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
