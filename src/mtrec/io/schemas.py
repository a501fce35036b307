"""Typed schemas of the JSON documents mtrec reads back, and the one function that checks them.

A document is checked as JSON, strictly: a number must be a JSON number (not ``true``, not
``"0.1"``), a whole number must have no fraction, and a key no schema knows is refused at every
level. Whatever is wrong becomes one line naming the field, ``model.learning_rate: expected a
number, got true``, raised as the error class the caller names (a config file's problem is a
:class:`~mtrec.errors.DataError`, a model file's a :class:`~mtrec.errors.ModelFileError`).

Here: :class:`Schema` (the strict base), the per-epoch record, ``metrics.json``
(:func:`parse_metrics`) and a training checkpoint's facts. ``config.json``'s schema lives beside
the config it describes, in :mod:`mtrec.config.run`; the settings themselves are checked by
:mod:`mtrec.settings`, which words its messages the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from pydantic_core import ErrorDetails

from mtrec.errors import DataError, MtrecError

#: What a value of each kind of JSON type error should have been.
_EXPECTED = {
    "float_type": "a number",
    "int_type": "a whole number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "none_required": "null",
}
#: Problems listed in the one line before the rest are counted.
_SHOWN = 3
#: A measured value's key: ``valid_`` or ``test_`` and a metric (``test_mse``, ``valid_ndcg@10``).
METRIC_KEY = re.compile(r"(valid|test)_[a-z][a-z0-9_]*(@[1-9][0-9]*)?")
#: A task's loss or weight in an epoch's record: ``train_<task>``, ``weight_<task>``.
TASK_KEY = re.compile(r"(train|weight)_[a-z][a-z0-9_]*")

S = TypeVar("S", bound="Schema")


class Schema(BaseModel):
    """A JSON object with exactly these keys, each of exactly its type."""

    model_config = ConfigDict(strict=True, extra="forbid")


def validate(schema: type[S], document: Any, error: type[MtrecError], where: str = "") -> S:
    """``document`` read as ``schema``; else ``error`` with one line: ``where``, each field and its problem."""
    try:
        return schema.model_validate_json(json.dumps(document))
    except (TypeError, ValueError, RecursionError) as problem:  # not JSON values (or nested too deeply), or a ValidationError
        text = describe(problem) if isinstance(problem, ValidationError) else f"not a JSON document ({problem})"
        raise error(f"{where}: {text}" if where else text) from None


def describe(error: ValidationError) -> str:
    """The problems of ``error`` in one line, the first few named (by their fields' paths, an order
    that does not depend on pydantic's version), the rest counted."""
    details = sorted(error.errors(include_url=False), key=lambda detail: tuple(str(part) for part in detail["loc"]))
    problems = [_problem(detail) for detail in details]
    more = len(problems) - _SHOWN
    return "; ".join(problems[:_SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _problem(detail: ErrorDetails) -> str:
    kind = detail["type"]
    if kind == "extra_forbidden":
        text = "unknown field"
    elif kind == "missing":
        text = "missing"
    elif kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind]}, got {_shown(detail['input'])}"
    else:  # a constraint (``greater than or equal to 1``) or a check of ours (``Value error, ...``)
        text = detail["msg"].removeprefix("Value error, ")
        text = text[0].lower() + text[1:]
    where = _field_path(detail["loc"])
    return f"{where}: {text}" if where else text


def _field_path(location: tuple[int | str, ...]) -> str:
    """``("epochs", 3, "test_mse")`` as ``epochs[3].test_mse``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _shown(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Training records: metrics.json and the checkpoints' history


class _Measured(Schema):
    """A record whose further keys are measurements: ``valid_<metric>`` or ``test_<metric>``, each a number or null."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None]

    @classmethod
    def extra_key(cls, key: str) -> bool:
        """Whether ``key`` may be one of the further keys."""
        return bool(METRIC_KEY.fullmatch(key))

    @model_validator(mode="after")
    def _only_measurements(self) -> _Measured:
        unknown = sorted(key for key in self.model_extra or {} if not self.extra_key(key))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        return self


class EpochSchema(_Measured):
    """One epoch's record, as :meth:`mtrec.io.fitted.EpochRecord.to_json` writes it: besides the
    measurements, each task's loss ``train_<task>`` and, for learned weightings, its weight
    ``weight_<task>`` (mtrec 0.2's ``train_bpr``, ``train_mse``, ``weight_f`` and ``weight_r`` among them)."""

    epoch: int = Field(ge=1)
    train_loss: float | None
    test_mse: float | None = None
    test_mrr: float | None = None
    seconds: float = 0.0
    learning_rate: float | None = None

    @classmethod
    def extra_key(cls, key: str) -> bool:
        return bool(METRIC_KEY.fullmatch(key) or TASK_KEY.fullmatch(key))


class SelectedSchema(_Measured):
    """The epoch whose weights a run keeps, and its measurements."""

    epoch: int


class SelectionSchema(Schema):
    """How the kept epoch was chosen: the criterion, its value and the joint criterion's references;
    the item-item path's λ and weight chosen after it, and a refit's epochs and rows."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None]

    criterion: str | None = None
    score: float | None = None

    @model_validator(mode="after")
    def _only_references(self) -> SelectionSchema:
        unknown = sorted(key for key in self.model_extra or {} if not key.startswith(("reference_", "item_item_", "refit_")))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        if self.criterion is not None and "score" not in self.model_fields_set:
            raise ValueError("score: a selection by a criterion records its score")
        return self


class OracleSchema(Schema):
    """The best test value over all epochs, and its epoch."""

    value: float
    epoch: int


class RefitSchema(Schema):
    """A refit (``--refit``): its epochs, its training rows, and its test metrics (``test_<metric>``)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None]

    epochs: int
    rows: int

    @model_validator(mode="after")
    def _only_test_metrics(self) -> RefitSchema:
        unknown = sorted(key for key in self.model_extra or {} if not key.startswith("test_"))
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        return self


class MetricsSchema(Schema):
    """``metrics.json``: the per-epoch records and their summary (:func:`mtrec.io.fitted.summarize`).

    The records are numbered 1, 2, ... and every epoch the summary names is one of them.
    ``best_test_*`` are mtrec 0.1's names of ``oracle_best_test_*``.
    """

    completed: bool
    model_sha256: str | None = None
    config_sha256: str | None = None
    epochs: list[EpochSchema]
    final: EpochSchema | None
    selected: SelectedSchema | None = None
    selection: SelectionSchema | None = None
    refit: RefitSchema | None = None
    model: dict[str, float | None] | None = None
    #: The kept model's test metrics on the warm and the cold pairs apart (a cold split, or a model with features).
    cold_start: dict[str, dict[str, float | None]] | None = None
    oracle_best_test_mse: OracleSchema | None = None
    oracle_best_test_mrr: OracleSchema | None = None
    best_test_mse: OracleSchema | None = None
    best_test_mrr: OracleSchema | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MetricsSchema:
        count = len(self.epochs)
        numbers = [record.epoch for record in self.epochs]
        if numbers != list(range(1, count + 1)):
            raise ValueError(f"epochs: numbered {_numbers(numbers)}, not 1 to {count}")
        if (self.final is None) != (count == 0) or (self.final is not None and self.final.epoch != count):
            raise ValueError(f"final: not the last epoch's record (epoch {count})")
        named = {"selected": self.selected}
        named.update({name: getattr(self, name) for name in ("oracle_best_test_mse", "oracle_best_test_mrr", "best_test_mse", "best_test_mrr")})
        for name, part in named.items():
            if part is not None and not 1 <= part.epoch <= count:
                raise ValueError(f"{name}.epoch: {part.epoch} is not one of the {count} epochs")
        return self


def _numbers(numbers: list[int], limit: int = 6) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (", ..." if len(numbers) > limit else "")


def parse_metrics(document: Any, path: str | Path) -> dict[str, Any]:
    """``document``, the contents of the metrics.json at ``path``, checked against :class:`MetricsSchema`;
    :class:`DataError` naming the file and the field otherwise."""
    validate(MetricsSchema, document, DataError, str(path))
    return document


class StoppingState(Schema):
    """Early stopping's state in a checkpoint."""

    best_score: float | None
    best_epoch: int | None
    waited: int


class TrainingStateSchema(Schema):
    """The JSON facts of a training checkpoint (:meth:`mtrec.train.loop.Trainer.state`); the optimiser's,
    the schedule's and the weighting's own state are torch's and the weighting's JSON, kept as they are."""

    epoch: int = Field(ge=0)
    history: list[EpochSchema]
    optimizer_groups: list[dict[str, JsonValue]]
    scheduler: dict[str, JsonValue] | None
    weighting: dict[str, JsonValue]
    stopped: bool
    stopping: StoppingState | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainingStateSchema:
        if len(self.history) != self.epoch:
            raise ValueError(f"history: {len(self.history)} records for {self.epoch} epochs trained")
        return self
