"""A run's configuration: :class:`RunConfig`, what makes a training run, typed and checked.

A run config holds the model's parameters (:class:`~mtrec.config.model.ModelConfig`), the data
spec (:class:`~mtrec.data.spec.DataSpec`), the number of epochs and the evaluation settings. It is
checked when it is made, written to a run's ``config.json`` and read back (also from the files of
earlier mtrec versions, against the schema of their format), and turned into the ``mtrec train`` options
that make the same run.

Some settings choose how a run executes: the device, the thread count and the training step
(recorded under ``"speed"``). Each computes the same mathematics, but the thread count and the
step sum floats in another order, so the last digits of the numbers differ (the fused and the
autograd step by up to 1e-4 in a metric after 3 epochs; two thread counts in the 9th digit on
some CPUs): they are part of :meth:`RunConfig.essential`, the one definition of "these two runs
give the same numbers" that reuse of finished runs and ``--resume`` use (the report, which reads
four decimals, compares runs that differ in them). The device
is recorded but not compared: ``auto`` means another device on another machine, and a config
read back must mean the same run wherever it is read. The metrics recorded are not essential
either: a run measured with fewer metrics is still the same run.
"""

from __future__ import annotations

import json
import numbers
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from mtrec import __version__
from mtrec.config.model import ModelConfig
from mtrec.data.interactions import Interactions
from mtrec.data.spec import SOURCE_OPTIONS, DataSpec
from mtrec.data.split_methods import SPLIT_OPTIONS
from mtrec.errors import ConfigError, DataError
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, all_metrics
from mtrec.io.files import read_json
from mtrec.io.schemas import Schema, validate
from mtrec.model import MultitaskModel
from mtrec.settings import Flag, Settings, SettingsError, Text, Whole, one_of, rule
from mtrec.train.loop import check_early_stopping

CONFIG_FILENAME = "config.json"
FORMAT = "mtrec-run"
#: config.json's format: 1 is mtrec 0.1's; 2 is 0.2.0's, whose runs may or may not record their
#: digests; from 3 on, every run records them (:data:`mtrec.runs.DIGESTS_SINCE_FORMAT`).
FORMAT_VERSION = 3
#: Model parameters that choose how a run executes, recorded under "speed": the same mathematics,
#: other last digits (see the module's docstring), so each is part of what makes a run.
SPEED_ONLY = ("device", "num_threads", "step")
#: Run settings that are recorded but do not change the trained model.
RECORDING_ONLY = ("metrics", "k")
#: The run's own settings (beside the model's and the data's), under "training" in config.json but those recorded only.
RUN_SETTINGS = ("epochs", "eval_every", "early_stopping", "patience", "refit", *RECORDING_ONLY)
#: Command-line spellings that are not ``--`` + the name with hyphens.
FLAGS = {"num_threads": "--threads"}

Metric = one_of(all_metrics, "metric")
Cutoff = Annotated[Whole, Field(ge=1)]


def flag(name: str) -> str:
    """The command-line flag of the setting ``name``: ``--learning-rate``, ``--threads``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


class RunConfig(Settings):
    """Everything that determines a training run; each part may be given (as keywords) or left to its default.

    Attributes
    ----------
    model:
        :class:`~mtrec.model.MultitaskModel` parameters (a :class:`~mtrec.config.model.ModelConfig`
        or a dict of them); missing ones take the defaults. ``seed`` also seeds the data spec's split.
    data:
        The data and its split.
    epochs:
        Training epochs.
    eval_every:
        Evaluate every N epochs (and after the last).
    early_stopping:
        None, or the validation criterion that chooses the epoch whose weights are kept and
        ends training when it stops improving (see :meth:`MultitaskModel.fit`).
    patience:
        Evaluations without improvement before early stopping ends training.
    refit:
        After early stopping has chosen the epoch, train again from scratch on the training part
        and the validation set together for that many epochs (:meth:`MultitaskModel.refit
        <mtrec.model.MultitaskModel.refit>`): the saved model is the refit one.
    metrics, k:
        The metrics recorded and the cut-offs of the top-k ones.
    """

    model: ModelConfig = Field(default_factory=ModelConfig, validate_default=True, description="the model and its training")
    data: DataSpec = Field(default_factory=DataSpec, description="the data and its split")
    epochs: Whole = Field(200, ge=1, description="training epochs; early stopping may end training sooner")
    eval_every: Whole = Field(1, ge=1, description="evaluate every N epochs (and after the last)")
    early_stopping: Text | None = Field(
        None,
        description="stop when this validation criterion has not improved for {patience} evaluations, and keep the best "
        "epoch's weights: joint (mean relative improvement of MSE and MRR over the mean rating and the most popular "
        "items), or a metric (mse, mrr, ndcg@10...)",
        json_schema_extra={"none": "none"},
    )
    patience: Whole = Field(10, ge=1, description="evaluations without improvement before early stopping ends training")
    refit: Flag = Field(False, description="then train again from scratch on train + validation for the chosen number of epochs, and keep that model")
    metrics: tuple[Metric, ...] = Field(DEFAULT_METRICS, min_length=1, description="metrics recorded")  # type: ignore[valid-type]
    k: tuple[Cutoff, ...] = Field(DEFAULT_K, min_length=1, description="cut-offs of ndcg, recall, hr and map")

    @field_validator("model", mode="before")
    @classmethod
    def _sharing_as_once_named(cls, model: Any) -> Any:
        if isinstance(model, Mapping) and "embedding_sharing" in model:  # mtrec 0.1's name, and the seed's flags
            model = dict(model)
            shared = model.pop("embedding_sharing")
            model.setdefault("sharing", "hard" if shared else "separate")
        return model

    @field_validator("model")
    @classmethod
    def _layer_sizes_written_out(cls, model: ModelConfig) -> ModelConfig:
        return model.written_out()  # so that default and explicit sizes compare equal

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, values: Any) -> Any:
        """The model's seed seeds the split too."""
        if not isinstance(values, dict):
            return values
        model = values.get("model")
        seed = model.get("seed", 0) if isinstance(model, (Mapping, ModelConfig)) else 0
        data = values.get("data", DataSpec())
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            return values  # the model's check says what is wrong
        seed = int(seed)
        if isinstance(data, DataSpec):
            return {**values, "data": data.with_seed(seed)}
        return {**values, "data": {**data, "seed": seed}} if isinstance(data, Mapping) else values

    @model_validator(mode="after")
    def _early_stopping_can_choose(self) -> RunConfig:
        if self.early_stopping is None:
            return self
        try:
            check_early_stopping(self.early_stopping, self.patience, self.k)
        except ConfigError as error:
            raise rule(str(error), "early_stopping") from None
        if not self.data.has_validation:
            raise rule(f"{{early_stopping}} {self.early_stopping} needs a validation set: give {{valid_fraction}} (or {{valid_k}})")
        return self

    @model_validator(mode="after")
    def _refit_needs_a_chosen_epoch(self) -> RunConfig:
        if self.refit and self.early_stopping is None:
            raise rule("{refit} trains again for the epochs early stopping chose on validation: give {early_stopping} too", "refit")
        return self

    @model_validator(mode="after")
    def _feature_files_are_read(self) -> RunConfig:
        for side in ("item", "user"):
            if getattr(self.data.source, f"{side}_features", None) is not None and f"{side}s" not in self.model.feature_sides:
                raise rule(f"{{{side}_features}} is read only by a model with {{features}} {side}s (or items,users): add it, or leave the file out")
        return self

    def __eq__(self, other: object) -> bool:
        """Equal when they say the same, defaults written out or not (speed settings included)."""
        return isinstance(other, RunConfig) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ building and checking

    @property
    def seed(self) -> int:
        return self.model.seed

    def build_model(self) -> MultitaskModel:
        """The unfitted model."""
        return MultitaskModel(**self.model.params())

    def check(self) -> RunConfig:
        """Self: a run config is checked when it is made (kept for the callers that check explicitly)."""
        return self

    def for_data(self, train: Interactions) -> RunConfig:
        """This config as it can train on ``train``, the one place that decides it: data without ratings
        cannot train the rating head, so ``regression_weight`` becomes 0 (and a ``factorization_weight``
        of 0 becomes 1), and a :class:`UserWarning` says so. Otherwise the config itself."""
        if train.has_ratings or self.model.regression_weight == 0:
            return self
        warnings.warn(
            "the data has no rating column, so the rating head cannot train: training the likelihood head alone (regression_weight = 0)",
            UserWarning,
            stacklevel=2,
        )
        return self.replace(regression_weight=0.0, factorization_weight=self.model.factorization_weight or 1.0)

    # ------------------------------------------------------------------ the settings by name

    @classmethod
    def option_fields(cls) -> dict[str, FieldInfo]:
        """Every setting a command line can give, by its name, and the field that declares it."""
        return {**ModelConfig.model_fields, **DataSpec.option_fields(), **{name: cls.model_fields[name] for name in RUN_SETTINGS}}

    @classmethod
    def option_paths(cls) -> dict[str, str]:
        """Every setting a command line can give, by its name, and its path: ``learning_rate`` is
        ``model.learning_rate``, ``split`` is ``data.split.method``, ``epochs`` is ``epochs``."""
        paths = {name: f"model.{name}" for name in ModelConfig.model_fields}
        paths.update({name: f"data.{path}" for name, path in DataSpec.option_paths().items()})
        return {**paths, **{name: name for name in RUN_SETTINGS}}

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """Every setting a command line can give, and where it lives: ``model``, ``data`` or ``run``."""
        return {name: path.split(".")[0] if "." in path else "run" for name, path in cls.option_paths().items()}

    def replace(self, **settings: Any) -> RunConfig:
        """This config with some settings changed, each named as in :meth:`option_names` (None takes
        an option of the data back; see :meth:`DataSpec.replace`)."""
        where = self.option_names()
        unknown = sorted(set(settings) - set(where))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(unknown)}")
        model = {**self.model.params(), **{k: v for k, v in settings.items() if where[k] == "model"}}
        if "layer_sizes" not in settings and self.model.layer_sizes == [3 * self.model.embedding_dim, 64]:
            model["layer_sizes"] = None  # the default sizes follow a new embedding dimension
        data = self.data.merged(**{k: v for k, v in settings.items() if where[k] == "data"})
        run = {name: settings.get(name, getattr(self, name)) for name in RUN_SETTINGS}
        return RunConfig(model=model, data=data, **run)

    # ------------------------------------------------------------------ JSON

    def essential(self) -> dict[str, Any]:
        """What must be equal for two runs to give the same results: all but the metrics recorded."""
        training: dict[str, Any] = {"epochs": self.epochs, "eval_every": self.eval_every}
        if self.early_stopping is not None:
            training.update({"early_stopping": self.early_stopping, "patience": self.patience})
        if self.refit:
            training["refit"] = True
        return {
            "model": {k: v for k, v in self.model.params().items() if k not in SPEED_ONLY},
            "speed": self.execution(),
            "data": self.data.to_json(),
            "training": training,
        }

    def execution(self) -> dict[str, Any]:
        """What of how the run executes changes its numbers: the thread count as given (None:
        PyTorch's) and the step, ``auto`` resolved to the step the model takes (the same on every
        machine)."""
        step = self.model.step if self.model.step != "auto" else self.build_model().resolved_step()
        return {"num_threads": self.model.num_threads, "step": step}

    def same_run(self, other: RunConfig) -> bool:
        return self.essential() == other.essential()

    def differences(self, other: RunConfig) -> list[str]:
        """``"model.l2: 0 here, 1e-05 there"`` for each essential setting that differs."""
        mine, theirs = flatten(self.essential()), flatten(other.essential())
        return [
            f"{key}: {json.dumps(mine.get(key))} here, {json.dumps(theirs.get(key))} there"
            for key in sorted(mine.keys() | theirs.keys())
            if mine.get(key) != theirs.get(key)
        ]

    def to_json(self, resolved: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config as written to config.json; ``resolved`` (what ran: the step, the device) and
        ``summary`` (what the split gave) are recorded beside it."""
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mtrec_version": __version__,
            **self.essential(),
            "evaluation": {"metrics": list(self.metrics), "k": list(self.k)},
            "speed": {k: self.model[k] for k in SPEED_ONLY},  # as given; essential() compares them resolved
        }
        if resolved:
            document["resolved"] = resolved
        if summary:
            document["data_summary"] = summary
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> RunConfig:
        """The config :meth:`to_json` wrote, or an earlier mtrec's config.json (format 1 or 2), checked
        against its schema: :class:`ConfigError` naming the field that is wrong, as config.json names it."""
        settings = _read_document(document)
        try:
            return cls(**settings)
        except SettingsError as error:
            raise error.moved(_document_path) from None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config in ``path``: a config.json, or a run directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILENAME
        document = read_json(path, "run config")
        try:
            return cls.from_json(document)
        except (ConfigError, TypeError, KeyError, ValueError) as error:
            raise DataError(f"{path}: {error}") from None

    # ------------------------------------------------------------------ the command line

    def cli_options(self, exclude: tuple[str, ...] = ()) -> list[str]:
        """The ``mtrec train`` options that make this run (``--data-dir`` aside), but for the model
        parameters named in ``exclude``. They start from ``--preset seed``, whose settings are
        :class:`RunConfig`'s defaults, and name what differs from it."""
        seed = RunConfig()
        options = ["--preset", "seed", "--epochs", str(self.epochs)]
        if self.eval_every != seed.eval_every:
            options += ["--eval-every", str(self.eval_every)]
        if self.early_stopping is not None:
            options += ["--early-stopping", self.early_stopping, "--patience", str(self.patience)]
        if self.refit:
            options += ["--refit"]
        options += _model_options(self.model, seed.model, exclude)
        options += self.data.cli_options()
        for name in RECORDING_ONLY:
            if tuple(getattr(self, name)) != tuple(getattr(seed, name)):
                options += _option(name, getattr(self, name))
        return options


def _model_options(model: ModelConfig, seed: ModelConfig, exclude: tuple[str, ...]) -> list[str]:
    """The options of the model parameters that differ from the seed preset's (and of those that name a run), but ``exclude``."""
    options: list[str] = []
    for name, value in model.params().items():
        if name in exclude or value is None:
            continue
        if name == "layer_sizes" and value == [3 * model.embedding_dim, 64]:
            continue  # what the dimension implies
        if value != seed[name] or name in ("sharing", "factorization_weight", "regression_weight", "seed"):
            options += _option(name, value)
    return options


def _option(name: str, value: Any) -> list[str]:
    """``value`` of setting ``name`` as command-line words."""
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name)[2:]]
    if isinstance(value, (list, tuple)):
        return [flag(name), *(_word(v) for v in value)]
    return [flag(name), _word(value)]


def _word(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# config.json: its schema, each setting typed as the class that takes it declares (the sections are
# classes made by _section, which a static type checker cannot follow), and its earlier formats


def _json_type(annotation: Any) -> Any:
    """``annotation`` without its constraints: the JSON type config.json must have (the ranges are the config's to check)."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _json_type(arguments[0])
    if origin in (Union, types.UnionType):
        return Union[tuple(_json_type(argument) for argument in arguments)]
    if origin in (list, tuple):
        return origin[tuple(argument if argument is Ellipsis else _json_type(argument) for argument in arguments)]
    return annotation


def _section(name: str, fields: Mapping[str, FieldInfo], names: Iterable[str], **more: tuple[Any, Any]) -> type[Schema]:
    """A schema of the settings ``names`` of ``fields``, each of its JSON type and optional (a setting left
    out takes its default), and the fields ``more`` (``name=(type, default)``)."""
    return create_model(name, __base__=Schema, **{n: (_json_type(fields[n].annotation) | None, None) for n in names}, **more)


#: Model settings of earlier formats that :class:`RunConfig` still reads: ``embedding_sharing``, the
#: sharing as mtrec 0.1 and 0.2.0 (before ``sharing``) named it.
_LEGACY_MODEL = {"embedding_sharing": (bool | None, None)}
_MODEL = ModelConfig.model_fields
_DATA = DataSpec.option_fields()
ModelSchema = _section("ModelSchema", _MODEL, [n for n in _MODEL if n not in SPEED_ONLY], **_LEGACY_MODEL)
SpeedSchema = _section("SpeedSchema", _MODEL, SPEED_ONLY)
SourceSchema = _section("SourceSchema", _DATA, SOURCE_OPTIONS)
SplitSchema = _section("SplitSchema", _DATA, SPLIT_OPTIONS, method=(str | None, None), seed=(int | None, None))
TrainingSchema = _section("TrainingSchema", RunConfig.model_fields, ("epochs", "eval_every", "early_stopping", "patience", "refit"))
EvaluationSchema = _section("EvaluationSchema", RunConfig.model_fields, RECORDING_ONLY)


class DataSchema(Schema):
    source: SourceSchema
    split: SplitSchema


class ColdStartSchema(Schema):
    test_users: int | None = None
    test_items: int | None = None
    test_ratings: int | None = None
    cold_users: int | None = None
    cold_items: int | None = None
    cold_ratings: int | None = None


class DataSummarySchema(Schema):
    """What the split gave (:meth:`DataSpec.describe`)."""

    name: str | None = None
    num_users: int | None = None
    num_items: int | None = None
    train_size: int | None = None
    valid_size: int | None = None
    test_size: int | None = None
    has_ratings: bool | None = None
    rating_scale: tuple[float, float] | None = None
    cold_start: ColdStartSchema | None = None


class ResolvedSchema(Schema):
    """What a run really used where a setting left the choice open."""

    step: str | None = None
    world_size: int | None = None
    dist_backend: str | None = None
    dist_exchange: str | None = None


class ConfigSchema(Schema):
    """config.json as :meth:`RunConfig.to_json` writes it (format 3), and as mtrec 0.2.0 wrote it (format 2:
    the same fields, ``model.embedding_sharing`` before ``model.sharing``)."""

    format: Literal["mtrec-run"] | None = None
    format_version: int
    mtrec_version: str | None = None
    model: ModelSchema
    data: DataSchema
    training: TrainingSchema | None = None
    evaluation: EvaluationSchema | None = None
    speed: SpeedSchema | None = None
    resolved: ResolvedSchema | None = None
    data_summary: DataSummarySchema | None = None


class DataSchemaV1(DataSummarySchema):
    """mtrec 0.1's data section: the source, the split and what it gave, side by side."""

    dataset: str | None = None
    ratings_file: str | None = None
    items_file: str | None = None
    split: SplitSchema | None = None


ModelSchemaV1 = _section("ModelSchemaV1", _MODEL, _MODEL, **_LEGACY_MODEL)


class ConfigSchemaV1(Schema):
    """config.json as mtrec 0.1 wrote it (format 1): epochs and eval_every at the top."""

    format_version: int | None = None
    mtrec_version: str | None = None
    model: ModelSchemaV1
    data: DataSchemaV1
    epochs: int | None = None
    eval_every: int | None = None


#: The schema of each config.json format.
CONFIG_SCHEMAS: dict[int, type[Schema]] = {1: ConfigSchemaV1, 2: ConfigSchema, FORMAT_VERSION: ConfigSchema}
#: Where config.json keeps the run's own settings and the speed settings.
_DOCUMENT_PATHS = {
    **{name: f"training.{name}" for name in ("epochs", "eval_every", "early_stopping", "patience", "refit")},
    **{name: f"evaluation.{name}" for name in RECORDING_ONLY},
    **{f"model.{name}": f"speed.{name}" for name in SPEED_ONLY},
}


def _document_path(path: str) -> str:
    """Where config.json keeps the setting at ``path`` of a :class:`RunConfig`."""
    head, bracket, rest = path.partition("[")
    return _DOCUMENT_PATHS.get(head, head) + bracket + rest


def _read_document(document: Any) -> dict[str, Any]:
    """The settings of a config.json of any format, checked against its schema: :class:`ConfigError`
    naming each field that is wrong."""
    if not isinstance(document, dict) or "model" not in document or "data" not in document:
        raise ConfigError("not an mtrec run config (no model and data sections)")
    version = document.get("format_version", 1)
    if type(version) is int and version > FORMAT_VERSION:
        raise ConfigError(f"a run config of format {version}; this mtrec ({__version__}) reads up to {FORMAT_VERSION}")
    if type(version) is not int or version not in CONFIG_SCHEMAS:
        raise ConfigError(f"format_version: expected one of {', '.join(map(str, CONFIG_SCHEMAS))}, got {json.dumps(version)}")
    validate(CONFIG_SCHEMAS[version], document, ConfigError)
    model = dict(document["model"])
    if version >= 2:
        model.update(document.get("speed", {}))
        training = document.get("training", {})
        evaluation = document.get("evaluation", {})
    else:  # mtrec 0.1: epochs and eval_every at the top, the metrics were MSE and MRR
        training = {k: document[k] for k in ("epochs", "eval_every") if k in document}
        evaluation = {"metrics": ["mse", "mrr"], "k": list(DEFAULT_K)}
    return {"model": model, "data": DataSpec.json_options(document["data"]), **training, **evaluation}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.l2": 0.0, ...}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
