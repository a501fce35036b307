"""A run's configuration, typed: the model's hyper-parameters (:class:`~mtrec.config.model.ModelConfig`),
the whole run (:class:`~mtrec.config.run.RunConfig`: the model, the data spec, the training and
evaluation settings, config.json) and the presets (:func:`~mtrec.config.presets.preset`).

Each setting is declared once, on its field: its default, type, range and description; the
command line's options are made from these declarations (:mod:`mtrec.cli.options`).

Names are imported on first use, so that the estimator (:mod:`mtrec.model`) can read
:mod:`mtrec.config.model` without loading the run config, which builds estimators.
"""

from __future__ import annotations

from mtrec import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("MAX_NEGATIVES", "MAX_SEED", "ModelConfig"), "mtrec.config.model"),
    **dict.fromkeys(("PRESETS", "QUALITY_MODEL", "QUALITY_TRAINING", "QUALITY_VALID_FRACTION", "preset", "preset_settings"), "mtrec.config.presets"),
    **dict.fromkeys(
        (
            "CONFIG_FILENAME",
            "CONFIG_SCHEMAS",
            "FLAGS",
            "FORMAT",
            "FORMAT_VERSION",
            "RECORDING_ONLY",
            "RUN_SETTINGS",
            "SPEED_ONLY",
            "ConfigSchema",
            "ConfigSchemaV1",
            "RunConfig",
            "flag",
            "flatten",
        ),
        "mtrec.config.run",
    ),  # fmt: skip
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
