"""A run's configuration: :class:`RunConfig`, what makes a training run, as plain data.

A run config holds the model's parameters, the data spec (:class:`mtrec.data.spec.DataSpec`),
the number of epochs and the evaluation settings. It is checked as a whole, written to a run's
``config.json`` and read back (also from the files of earlier mtrec versions), and turned into
the ``mtrec train`` options that make the same run.

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

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, get_type_hints

from pydantic import create_model

from mtrec import __version__
from mtrec.data.spec import READING_OPTIONS, DataSpec
from mtrec.errors import ConfigError, DataError
from mtrec.eval.evaluation import DEFAULT_K, DEFAULT_METRICS, metric_names
from mtrec.io.files import read_json
from mtrec.io.schemas import Schema, validate
from mtrec.model import MultitaskModel
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
#: Command-line spellings that are not ``--`` + the name with hyphens.
FLAGS = {"num_threads": "--threads"}


def model_defaults() -> dict[str, Any]:
    """:class:`MultitaskModel`'s parameters and their defaults."""
    signature = inspect.signature(MultitaskModel.__init__)
    return {name: p.default for name, p in signature.parameters.items() if name != "self"}


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _option(name: str, value: Any) -> list[str]:
    """``value`` of parameter ``name`` as command-line words."""
    if isinstance(value, bool):
        return [_flag(name) if value else "--no-" + _flag(name)[2:]]
    if isinstance(value, (list, tuple)):
        return [_flag(name), *(_word(v) for v in value)]
    return [_flag(name), _word(value)]


def _word(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, eq=False)
class RunConfig:
    """Everything that determines a training run.

    Parameters
    ----------
    model:
        :class:`~mtrec.model.MultitaskModel` parameters; missing ones take the constructor's
        defaults. ``seed`` also seeds the data spec's split.
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
    metrics, k:
        The metrics recorded and the cut-offs of the top-k ones.
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    epochs: int = 200
    eval_every: int = 1
    early_stopping: str | None = None
    patience: int = 10
    metrics: tuple[str, ...] = DEFAULT_METRICS
    k: tuple[int, ...] = DEFAULT_K

    def __post_init__(self) -> None:
        given = dict(self.model)
        if "embedding_sharing" in given:  # mtrec 0.1's name, and the seed's flags
            shared = given.pop("embedding_sharing")
            given.setdefault("sharing", "hard" if shared else "separate")
        params = {**model_defaults(), **given}
        if params.get("layer_sizes") is None:  # written out, so that default and explicit sizes compare equal
            params["layer_sizes"] = [3 * params["embedding_dim"], 64] if isinstance(params["embedding_dim"], int) else None
        elif isinstance(params["layer_sizes"], tuple):
            params["layer_sizes"] = list(params["layer_sizes"])
        object.__setattr__(self, "model", params)
        object.__setattr__(self, "data", dataclasses.replace(self.data, seed=params["seed"]))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "k", tuple(self.k))

    def __eq__(self, other: object) -> bool:
        """Equal when they say the same, defaults written out or not (speed settings included)."""
        return isinstance(other, RunConfig) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ building and checking

    @property
    def seed(self) -> int:
        return self.model["seed"]

    def build_model(self) -> MultitaskModel:
        """The unfitted model; :class:`ConfigError` for parameters out of range."""
        unknown = sorted(set(self.model) - set(model_defaults()))
        if unknown:
            raise ConfigError(f"unknown model parameter {', '.join(unknown)}")
        return MultitaskModel(**self.model)

    def check(self) -> RunConfig:
        """Raise :class:`ConfigError` for anything out of range or conflicting; return self."""
        self.build_model()
        self.data.check()
        for name in ("epochs", "eval_every"):  # a run of no epochs would publish an untrained model
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        metric_names(self.metrics, self.k)
        if self.early_stopping is not None:
            check_early_stopping(self.early_stopping, self.patience, self.k)
        if self.early_stopping is not None and not self.data.has_validation:
            raise ConfigError(f"--early-stopping {self.early_stopping} needs a validation set: give --valid-fraction (or --valid-k)")
        return self

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """Every setting a command line can give, and where it lives: ``model``, ``data`` or ``run``."""
        names = {name: "model" for name in model_defaults()}
        names.update({f.name: "data" for f in dataclasses.fields(DataSpec) if f.name != "seed"})
        names.update({f.name: "run" for f in dataclasses.fields(cls) if f.name not in ("model", "data")})
        return names

    def replace(self, **settings: Any) -> RunConfig:
        """This config with some settings changed, each named as in :meth:`option_names`."""
        where = self.option_names()
        unknown = sorted(set(settings) - set(where))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(unknown)}")
        model = {**self.model, **{k: v for k, v in settings.items() if where[k] == "model"}}
        data = dataclasses.replace(self.data, **{k: v for k, v in settings.items() if where[k] == "data"})
        run = {k: v for k, v in settings.items() if where[k] == "run"}
        return dataclasses.replace(self, model=model, data=data, **run)

    # ------------------------------------------------------------------ JSON

    def essential(self) -> dict[str, Any]:
        """What must be equal for two runs to give the same results: all but the metrics recorded."""
        training: dict[str, Any] = {"epochs": self.epochs, "eval_every": self.eval_every}
        if self.early_stopping is not None:
            training.update({"early_stopping": self.early_stopping, "patience": self.patience})
        return {
            "model": {k: v for k, v in self.model.items() if k not in SPEED_ONLY},
            "speed": self.execution(),
            "data": self.data.to_json(),
            "training": training,
        }

    def execution(self) -> dict[str, Any]:
        """What of how the run executes changes its numbers: the thread count as given (None:
        PyTorch's) and the step, ``auto`` resolved to the step the model takes (the same on every
        machine)."""
        step = self.model["step"]
        if step == "auto":
            try:
                step = self.build_model().resolved_step()
            except ConfigError:
                pass  # a config that cannot build says so when it is checked
        return {"num_threads": self.model["num_threads"], "step": step}

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
        essential = self.essential()
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mtrec_version": __version__,
            **essential,
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
        against its schema: :class:`ConfigError` naming the field that is wrong."""
        if not isinstance(document, dict) or "model" not in document or "data" not in document:
            raise ConfigError("not an mtrec run config (no model and data sections)")
        version = document.get("format_version", 1)
        known = type(version) is int and version in CONFIG_SCHEMAS
        if type(version) is int and version > FORMAT_VERSION:
            raise ConfigError(f"a run config of format {version}; this mtrec ({__version__}) reads up to {FORMAT_VERSION}")
        if not known:
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
        return cls(model=model, data=DataSpec.from_json(document["data"]), **training, **evaluation)

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
        for name, value in self.model.items():
            if name in exclude or value is None:
                continue
            if name == "layer_sizes" and value == [3 * self.model["embedding_dim"], 64]:
                continue  # what the dimension implies
            if value != seed.model[name] or name in ("sharing", "factorization_weight", "regression_weight", "seed"):
                options += _option(name, value)
        options += self.data.cli_options()
        if tuple(self.metrics) != tuple(DEFAULT_METRICS):
            options += _option("metrics", self.metrics)
        if tuple(self.k) != tuple(DEFAULT_K):
            options += _option("k", self.k)
        return options


# ---------------------------------------------------------------------------------------------
# config.json's schema: each setting typed as the class that takes it says (the sections are
# classes made by _section, which a static type checker cannot follow)


def _section(name: str, owner: Callable[..., Any], names: Iterable[str], **more: tuple[Any, Any]) -> type[Schema]:
    """A schema of ``owner``'s settings ``names``, each of the type ``owner`` declares and optional (a
    setting left out takes its default), and the fields ``more`` (``name=(type, default)``)."""
    hints = get_type_hints(owner)
    return create_model(name, __base__=Schema, **{n: (hints[n], None) for n in names}, **more)


#: Where each setting of a data spec lives in config.json: the source, and the split (``split`` is its ``method``).
_SOURCE = ("dataset", "ratings", *READING_OPTIONS)
_SPLIT = tuple(f.name for f in dataclasses.fields(DataSpec) if f.name not in (*_SOURCE, "split"))

#: Model settings of earlier formats that :class:`RunConfig` still reads: ``embedding_sharing``, the
#: sharing as mtrec 0.1 and 0.2.0 (before ``sharing``) named it.
_LEGACY_MODEL = {"embedding_sharing": (bool, None)}
ModelSchema = _section("ModelSchema", MultitaskModel.__init__, [n for n in model_defaults() if n not in SPEED_ONLY], **_LEGACY_MODEL)
SpeedSchema = _section("SpeedSchema", MultitaskModel.__init__, SPEED_ONLY)
SourceSchema = _section("SourceSchema", DataSpec, _SOURCE)
SplitSchema = _section("SplitSchema", DataSpec, _SPLIT, method=(str, None))
TrainingSchema = _section("TrainingSchema", RunConfig, ("epochs", "eval_every", "early_stopping", "patience"))
EvaluationSchema = _section("EvaluationSchema", RunConfig, RECORDING_ONLY)


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


ModelSchemaV1 = _section("ModelSchemaV1", MultitaskModel.__init__, model_defaults(), **_LEGACY_MODEL)


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


#: The presets: named starting points for a run's settings.
PRESETS = ("seed", "quality")


def preset(name: str, given: Mapping[str, Any] | None = None, **settings: Any) -> RunConfig:
    """The run config of preset ``name``, fitted to the ``given`` settings it will be laid under,
    with ``settings`` (named as in :meth:`RunConfig.option_names`) laid over it and checked.

    ``seed`` is the assignment's settings (:class:`RunConfig`'s defaults): 200 epochs at batch
    256, no validation, the last epoch's model. ``quality`` is the best configuration measured
    on validation data (README, "Presets"): a validation set carved from the training part by
    the split's own rule (5%, or K per user for ``--leave-k`` / ``--last-k`` splits), early
    stopping on the joint criterion, an exponentially decaying learning rate and weight decay.
    """
    if name == "seed":
        base = RunConfig()
    elif name == "quality":
        given = {**(given or {}), **settings}
        count = given.get("leave_k") or given.get("last_k")
        validation = {"valid_k": count} if count else {"valid_fraction": QUALITY_VALID_FRACTION}
        base = RunConfig(model=dict(QUALITY_MODEL), data=DataSpec(**validation), **QUALITY_TRAINING)
    else:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return base.replace(**settings).check() if settings else base


#: The quality preset (see :func:`preset`): measured by ``benchmarks/quality.py``.
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


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.l2": 0.0, ...}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
