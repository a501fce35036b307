"""The options that make a run, shared by ``mtrec train``, ``mtrec experiments`` and ``mtrec tune``,
made from the settings' declarations (:meth:`mtrec.config.run.RunConfig.option_fields`).

Each setting is one flag (``--learning-rate``; :func:`mtrec.config.run.flag`) whose destination is
the setting's name; its type, choices (a registry's members) and help (the field's description, its
range, and its defaults in the presets) come from the field, so that a default or a range lives in
one place. What the command line adds is cosmetic (:data:`METAVARS`) or its own (:data:`NOTES`, the
presets, the seed's spellings of ``--sharing``).

An option that is not given is absent from the parsed arguments (its default is ``argparse.SUPPRESS``):
:func:`run_config` lays what was given over a base config (a preset, or a config.json), so that a
run says exactly which settings were chosen on the command line. What the settings do not allow is
a :class:`~mtrec.cli._args.UsageError` naming the flags (``argument --lr-gamma: must be in (0, 1], got 1.5``).
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mtrec.cli._args import UsageError, add_option, number, whole_number
from mtrec.config import PRESETS, RUN_SETTINGS, SPEED_ONLY, ModelConfig, RunConfig, flag, preset, preset_settings
from mtrec.model import scaled_learning_rate
from mtrec.settings import Choices, SettingsError, requirement, unwrapped
from mtrec.tracking import TRACKERS

SUPPRESS = argparse.SUPPRESS
#: How the help writes the values of a setting where its type does not say.
METAVARS: dict[str, Any] = {
    "layer_sizes": "N",
    "negatives": "K",
    "early_stopping": "CRITERION",
    "metrics": "METRIC",
    "k": "K",
    "ratings": "FILE",
    "items": "FILE",
    **{f"{role}_col": "NAME" for role in ("user", "item", "rating", "time")},
    "rating_scale": ("LOW", "HIGH"),
    "leave_k": "K",
    "cutoff": "TIME",
    "last_k": "K",
    "valid_k": "K",
}
#: What a flag means on the command line beyond its setting.
NOTES = {"learning_rate": "with --batch-size B alone, 1e-3 x B/256, at most 0.064"}
#: Requirements not worth repeating in a help text.
_OBVIOUS = ("a number", "a whole number", "a string", "true or false", "a list", "a non-empty list")


def add_setting(group: argparse._ActionsContainer, name: str, field: FieldInfo, default_preset: str) -> argparse.Action:
    """The flag of the setting ``name``, declared by ``field``: its type, choices and help are the field's."""
    kwargs = {"dest": name, "default": SUPPRESS, "help": help_text(name, field, default_preset), **_parsing(field)}
    if name in METAVARS:
        kwargs["metavar"] = METAVARS[name]
    return add_option(group, flag(name), **kwargs)


def _parsing(field: FieldInfo) -> dict[str, Any]:
    """How argparse reads a setting of ``field``'s type: a converter (the range is the setting's to
    check), the choices, the number of words, or a ``--x`` / ``--no-x`` pair."""
    annotation, metadata = unwrapped(field.annotation, list(field.metadata))
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) in (list, tuple):
        arguments = typing.get_args(annotation)
        count = "+" if typing.get_origin(annotation) is list or arguments[-1] is Ellipsis else len(arguments)
        return {"nargs": count, **_parsing(FieldInfo.from_annotation(arguments[0]))}
    choices = next((item for item in metadata if isinstance(item, Choices)), None)
    if choices is not None:
        return {"choices": choices.names()}
    return {"type": {int: whole_number, float: number}[annotation]} if annotation in (int, float) else {}


def help_text(name: str, field: FieldInfo, default_preset: str) -> str:
    """The field's description (its settings named by their flags), what a registered choice does, and
    in parentheses the range, the presets' defaults and what the command line adds."""
    text = _flags_in(field.description or "")
    annotation, metadata = unwrapped(field.annotation, list(field.metadata))
    choices = next((item for item in metadata if isinstance(item, Choices)), None)
    if choices is not None and any(choices.summary(choice) for choice in choices.names()):
        text += ": " + "; ".join(f"{choice}: {choices.summary(choice)}" for choice in choices.names())
    needs = requirement(field.annotation, list(field.metadata))
    details = [needs] if needs not in _OBVIOUS and choices is None and typing.get_origin(annotation) not in (list, tuple) else []
    details += [_defaults(name, field, default_preset)] if field.default is not PydanticUndefined else []
    details += [NOTES[name]] if name in NOTES else []
    return (f"{text} ({'; '.join(details)})" if details else text).replace("%", "%%")


def _defaults(name: str, field: FieldInfo, default_preset: str) -> str:
    """``default X`` where the presets agree, else the default preset's value first and the other's
    after it (``default 200, quality preset 150``)."""
    values = {which: field.default if which == "seed" else preset_settings(which).get(name, field.default) for which in PRESETS}
    shown = {which: _shown(value, field) for which, value in values.items()}
    other = "quality" if default_preset == "seed" else "seed"  # the two main presets; quality-0.3 is for reproducing
    if shown[other] == shown[default_preset]:
        return f"default {shown[default_preset]}"
    return f"default {shown[default_preset]}, {other} preset {shown[other]}"


def _shown(value: Any, field: FieldInfo) -> str:
    if value is None:
        return _flags_in((field.json_schema_extra or {}).get("none", "none"))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(item, field) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flags_in(text: str) -> str:
    """``text`` with the settings it names as ``{name}`` written as their flags."""
    return SettingsError([("", text)]).render(name=flag)


def flag_message(error: SettingsError) -> str:
    """``error`` as the command line says it: each setting by its flag (``argument --lr-gamma: must be ...``)."""
    names = {path: name for name, path in RunConfig.option_paths().items()}

    def where(path: str) -> str:
        name = names.get(path.partition("[")[0])
        return f"argument {flag(name)}" if name else ""

    return error.render(where, flag)


# ---------------------------------------------------------------------------------------------
# The groups of options


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """The model and its training, and the settings that choose only how fast it trains."""
    group = parser.add_argument_group("model and training")
    add_option(
        group,
        "--preset",
        choices=PRESETS,
        default=SUPPRESS,
        help=f"the settings the other options change: seed (the assignment's) or quality (the best measured, "
        f"with validation and early stopping) (default {default_preset})",
    )
    speed = parser.add_argument_group("speed (never changes the results)")
    fields = RunConfig.option_fields()
    for name in [*ModelConfig.model_fields, *RUN_SETTINGS]:
        if name == "sharing":
            _add_sharing(group, fields[name], default_preset)
        else:
            add_setting(speed if name in SPEED_ONLY else group, name, fields[name], default_preset)


def _add_sharing(group: argparse._ArgumentGroup, field: FieldInfo, default_preset: str) -> None:
    """``--sharing``, and the seed's spellings of two of its values."""
    sharing = group.add_mutually_exclusive_group()
    add_setting(sharing, "sharing", field, default_preset)
    for option, value in (("--shared-embeddings", "hard"), ("--no-shared-embeddings", "separate")):
        add_option(
            sharing, option, dest="sharing", action="store_const", const=value, default=SUPPRESS, help=f"the seed's spelling of --sharing {value}"
        )


def add_data_arguments(parser: argparse.ArgumentParser, default_preset: str = "seed") -> argparse._ArgumentGroup:
    """Add the ``data`` option group: the data set or a ratings file, and the split."""
    group = parser.add_argument_group(
        "data",
        "MovieLens (--dataset, downloaded on first use) or your own ratings (--ratings), and the train/test split.",
    )
    add_option(group, "--data-dir", default=None, metavar="DIR", help="where MovieLens releases live (default $MTREC_DATA_DIR, else ~/.cache/mtrec)")
    fields, where = RunConfig.option_fields(), RunConfig.option_names()
    for name in (name for name in fields if where[name] == "data"):
        add_setting(group, name, fields[name], default_preset)
    return group


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tracker`` and ``--tracking-uri``: where runs are recorded besides their directories (:mod:`mtrec.tracking`)."""
    group = parser.add_argument_group("experiment tracking")
    add_option(
        group,
        "--tracker",
        choices=TRACKERS,
        default=None,
        help='also record the runs in MLflow: parameters, every epoch, the selected epoch, the run files (needs pip install "mtrec[mlflow]")',
    )
    add_option(
        group,
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="the tracking store (default $MLFLOW_TRACKING_URI, else sqlite under the run root: ROOT/.mlflow/mlflow.db)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, default_preset: str = "seed") -> None:
    add_model_arguments(parser, default_preset)
    add_data_arguments(parser, default_preset)
    add_tracking_arguments(parser)
    parser.set_defaults(default_preset=default_preset)


# ---------------------------------------------------------------------------------------------
# From the options to a run config


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given on the command line, by their :class:`RunConfig` names."""
    names = RunConfig.option_names()
    return {name: value for name, value in vars(args).items() if name in names}


def run_config(args: argparse.Namespace, base: RunConfig | None = None, *, default_preset: str | None = None, **fixed: Any) -> RunConfig:
    """``base`` (default: the ``--preset``'s config, else ``default_preset``'s, else the parser's) with
    the options given, and ``fixed`` on top; :class:`UsageError` naming the flags of settings not allowed.

    The learning rate follows the batch size (:func:`mtrec.model.scaled_learning_rate`) when a
    batch size is given without a learning rate, and the layer sizes follow the dimension. A
    ``--preset`` beside a base config (``--config``) is an error.
    """
    given = {**given_settings(args), **fixed}
    if base is not None and hasattr(args, "preset"):
        raise UsageError("--config and --preset are two starting points: give one")
    if "batch_size" in given and "learning_rate" not in given:
        given["learning_rate"] = scaled_learning_rate(given["batch_size"])
    if "layer_sizes" not in given and "embedding_dim" in given:
        given["layer_sizes"] = None  # follows the new dimension
    try:
        if base is None:
            return preset(getattr(args, "preset", default_preset or getattr(args, "default_preset", "seed")), **given)
        return base.replace(**given)
    except SettingsError as error:
        raise UsageError(flag_message(error)) from None
