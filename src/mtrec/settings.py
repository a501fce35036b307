"""Typed settings: the base class of mtrec's configurations, their field types, and the one function
that writes every message about them.

A setting's type and range are declared on its field (``learning_rate: Number = Field(1e-3, gt=0)``),
a choice among registered components names its registry (:func:`one_of`), and a rule over several
settings is a validator that raises :func:`rule`. Whatever is wrong becomes a :class:`SettingsError`,
a :class:`~mtrec.errors.ConfigError` whose problems each name the setting's path and what it allows::

    model.learning_rate: must be a positive number, got -1.0

A rule's text names other settings as ``{name}``: the library writes the name, the command line the
flag (``--valid-k``), so that neither has to know the other's spelling.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Iterable, Sequence, Union

import annotated_types
import numpy as np
from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from mtrec.errors import ConfigError

#: The error type of a rule over several settings (:func:`rule`).
RULE = "mtrec_rule"
#: Problems listed in a message before the rest are counted.
SHOWN = 3
#: A setting named in a rule's text: ``{valid_k}``.
NAMED = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (``np.int64(3)`` is a whole number like ``3``)."""
    return value.item() if isinstance(value, np.generic) else value


#: A whole number: an ``int`` or a NumPy integer, never ``True`` or ``3.0``.
Whole = Annotated[int, BeforeValidator(_plain), Strict()]
#: A finite number: an ``int``, a ``float`` or a NumPy number, never ``True`` or ``"0.1"``.
Number = Annotated[float, BeforeValidator(_plain), Strict(), AllowInfNan(False)]
#: ``True`` or ``False`` (NumPy's too), never ``1``.
Flag = Annotated[bool, BeforeValidator(_plain), Strict()]
#: A string, never a number.
Text = Annotated[str, Strict()]


@dataclass(frozen=True)
class Choices:
    """A setting's allowed names, read when asked (a component registered later is offered too), and
    each one's line of description (a registered component's ``summary``; empty where it has none)."""

    names: Callable[[], Sequence[str]]
    kind: str
    summary: Callable[[str], str] = lambda name: ""

    def check(self, value: str) -> str:
        """``value`` if it is one of the names, else a :class:`ConfigError` listing them."""
        if value not in self.names():
            raise ConfigError(f"unknown {self.kind} {value!r}; use one of {', '.join(self.names())}")
        return value


def one_of(names: Any, kind: str = "") -> Any:
    """The type of a setting that is one of ``names``: a :class:`~mtrec.registry.Registry` (its
    members, and its message for another name), a callable giving the names, or the names."""
    if hasattr(names, "check") and hasattr(names, "names"):  # a Registry
        registry = names
        choices = Choices(registry.names, registry.kind, lambda name: getattr(registry[name], "summary", ""))
        return Annotated[str, Strict(), AfterValidator(registry.check), choices]
    listed = names if callable(names) else (lambda: tuple(names))
    choices = Choices(listed, kind)
    return Annotated[str, Strict(), AfterValidator(choices.check), choices]


def rule(text: str, setting: str | None = None) -> PydanticCustomError:
    """The error a validator raises for a rule over several settings: ``text`` names settings as
    ``{name}``; ``setting``, if given, is the one the problem is about (under the validated model)."""
    return PydanticCustomError(RULE, text, {"setting": setting} if setting else None)


class SettingsError(ConfigError):
    """Settings that are not allowed: each problem a setting's path (``model.learning_rate``; empty
    for a rule over a whole section) and a text naming other settings as ``{name}``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self, where: Callable[[str], str] = lambda path: path, name: Callable[[str], str] = lambda name: name) -> str:
        """The problems on one line, the first few written out (``where`` spells a path, ``name`` a
        setting named in a text), the rest counted."""
        lines = []
        for path, text in self.problems[:SHOWN]:
            body = NAMED.sub(lambda match: name(match[1]), text)
            place = where(path) if path else ""
            lines.append(f"{place}: {body}" if place else body)
        more = len(self.problems) - SHOWN
        return "; ".join(lines) + (f" (and {more} more)" if more > 0 else "")

    def moved(self, move: Callable[[str], str]) -> SettingsError:
        """The same problems with each path ``move``\\ d (``epochs`` to ``training.epochs``, say)."""
        return SettingsError([(move(path), text) for path, text in self.problems])


class _Checked(type(BaseModel)):  # pydantic's model metaclass
    """Making settings raises a :class:`SettingsError` naming each problem at its path, not pydantic's error."""

    def __call__(cls, *arguments: Any, **values: Any) -> Any:
        try:
            return super().__call__(*arguments, **values)
        except ValidationError as error:
            raise settings_error(error, cls) from None


class Settings(BaseModel, metaclass=_Checked):
    """Frozen, typed settings: unknown names are refused, and whatever is wrong is a :class:`SettingsError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Variant(Settings):
    """One of the classes a tagged union chooses between, each taking only its own options.

    ``options`` are the options of every class of the union, in the order they are checked; one
    this class does not take is refused with what :meth:`foreign` says of it (its ``hints``), so
    that options of two variants cannot be given together. A name no variant takes is an unknown setting.
    """

    options: ClassVar[tuple[str, ...]] = ()
    hints: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _own_options_only(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name in [name for name in cls.options if name in values] + sorted(set(values) - set(cls.options)):
                if name not in cls.model_fields:
                    known = name in cls.options
                    raise rule(cls.foreign(name, values) if known else "unknown setting", None if known else name)
        return values

    @classmethod
    def foreign(cls, name: str, values: dict[str, Any]) -> str:
        """Why this variant does not take the option ``name`` (given beside ``values``): its hint."""
        return cls.hints[name]


# ---------------------------------------------------------------------------------------------
# Messages


def settings_error(error: ValidationError, root: type[BaseModel]) -> SettingsError:
    """``error``, raised while validating ``root``, as a :class:`SettingsError`: one problem per
    failure, at the path of the setting (the tags of tagged unions left out)."""
    problems = [problem for detail in error.errors(include_url=False) for problem in _problems(detail, root)]
    return SettingsError(list(dict.fromkeys(problems)))  # a union's members may say the same


def _problems(detail: ErrorDetails, root: type[BaseModel]) -> list[tuple[str, str]]:
    context = detail.get("ctx") or {}
    path, setting = locate(root, detail["loc"])
    value, kind = detail["input"], detail["type"]
    if context.get("setting"):
        path = _joined(path, context["setting"])
        value = value.get(context["setting"]) if isinstance(value, dict) else value
    if kind == "value_error" and isinstance(context.get("error"), SettingsError):  # settings a validator made: their problems, here
        return [(_joined(path, inner), text) for inner, text in context["error"].problems]
    if kind == "value_error":
        return [(path, str(context["error"]))]
    if kind in ("extra_forbidden", "missing"):
        return [(path, "unknown setting" if kind == "extra_forbidden" else "missing")]
    if setting is not None and (kind in _CONSTRAINTS or kind.endswith(("_type", "_parsing"))):
        return [(path, f"must be {requirement(*setting)}, got {shown(value)}")]
    text = detail["msg"] if kind == RULE else detail["msg"][0].lower() + detail["msg"][1:]
    return [(path, f"{text}, got {shown(value)}" if context.get("setting") and kind != RULE else text)]


#: The errors of a value out of its type or range: their message says what the setting must be.
_CONSTRAINTS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "too_short", "too_long", "literal_error"}


def _joined(path: str, more: str) -> str:
    return f"{path}.{more}" if path and more and not more.startswith("[") else path + more


def locate(root: type[BaseModel], location: Iterable[int | str]) -> tuple[str, tuple[Any, list[Any]] | None]:
    """The dotted path of ``location`` in ``root`` (``layer_sizes[1]``, ``data.split.valid_k``), and
    the type and constraints of the setting there (None where the location is no setting). A part
    that names a class is a tagged union's tag: it chooses the member, and is no part of the path;
    so is one that names a member of a union of plain types."""
    path, models, setting = "", [root], None
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
            setting = _item(setting)
            continue
        chosen = [model for model in models if model.__name__ == part]
        if chosen or (setting is not None and not models):  # a tagged union's tag, or a plain union's member
            models = chosen or models
            continue
        info = next((model.model_fields[part] for model in models if part in model.model_fields), None)
        path = f"{path}.{part}" if path else str(part)
        setting = None if info is None else (info.annotation, list(info.metadata))
        models = [] if info is None else list(_models(info.annotation))
    return path, setting


def _models(annotation: Any) -> Iterable[type[BaseModel]]:
    """The settings classes ``annotation`` admits (through unions and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    elif typing.get_origin(annotation) in (Union, types.UnionType, Annotated):
        for argument in typing.get_args(annotation):
            yield from _models(argument)


def unwrapped(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """``annotation`` without ``None`` and ``Annotated``, and every constraint met on the way."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *more = typing.get_args(annotation)
            metadata = [*metadata, *more]
        elif origin in (Union, types.UnionType):
            members = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, [*metadata, *(m for item in metadata if isinstance(item, FieldInfo) for m in item.metadata)]


def _item(setting: tuple[Any, list[Any]] | None) -> tuple[Any, list[Any]] | None:
    """The type and constraints of an item of the list ``setting``."""
    if setting is None:
        return None
    annotation, _ = unwrapped(*setting)
    arguments = typing.get_args(annotation)
    return (arguments[0], []) if arguments else None


def requirement(annotation: Any, metadata: list[Any]) -> str:
    """What a setting of this type and these constraints must be: ``a positive whole number``,
    ``in (0, 1]``, ``one of hard, separate``, ``a non-empty list``."""
    annotation, metadata = unwrapped(annotation, metadata)
    choices = next((item for item in metadata if isinstance(item, Choices)), None)
    if choices is not None:
        return f"one of {', '.join(choices.names())}"
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(requirement(member, []) for member in typing.get_args(annotation) if member is not type(None))
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        return _range(annotation is int, metadata)
    if typing.get_origin(annotation) in (list, tuple):
        arguments = typing.get_args(annotation)
        if typing.get_origin(annotation) is tuple and arguments and arguments[-1] is not Ellipsis:
            return f"a list of {len(arguments)} {_range(False, []).removeprefix('a ')}s"
        short = any(isinstance(item, annotated_types.MinLen) and item.min_length > 0 for item in metadata)
        return "a non-empty list" if short else "a list"
    return "a string"


def _range(whole: bool, metadata: list[Any]) -> str:
    """``a positive whole number``, ``a whole number from 1 to 1000``, ``a non-negative number``, ``in (0, 1]``..."""
    low = next(((item.ge, True) for item in metadata if isinstance(item, annotated_types.Ge)), None)
    low = low or next(((item.gt, False) for item in metadata if isinstance(item, annotated_types.Gt)), None)
    high = next(((item.le, True) for item in metadata if isinstance(item, annotated_types.Le)), None)
    high = high or next(((item.lt, False) for item in metadata if isinstance(item, annotated_types.Lt)), None)
    if whole:  # bounds of whole numbers are written closed: "from 1 to 1000"
        low = None if low is None else (low[0] if low[1] else low[0] + 1, True)
        high = None if high is None else (high[0] if high[1] else high[0] - 1, True)
    kind = "whole number" if whole else "number"
    if low is not None and high is not None:
        if whole:
            return f"a whole number from {number(low[0])} to {number(high[0])}"
        return f"in {'[' if low[1] else '('}{number(low[0])}, {number(high[0])}{']' if high[1] else ')'}"
    if low is not None and low[0] == 0:
        return f"a {'positive' if not low[1] else 'non-negative'} {kind}"
    if low is not None and whole and low[0] == 1:
        return "a positive whole number"
    if low is not None:
        return f"a {kind} of {'at least' if low[1] else 'more than'} {number(low[0])}"
    if high is not None:
        return f"a {kind} of {'at most' if high[1] else 'less than'} {number(high[0])}"
    return f"a {kind}"


def number(value: float) -> str:
    """``value`` as a message writes it: ``0.5``, ``1000``, ``2**64 - 1``."""
    if isinstance(value, int) and value >= 2**32 and (value + 1) & value == 0:
        return f"2**{value.bit_length()} - 1"
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: Python's spelling (``True``, ``'0.1'``, ``1e+308``), shortened."""
    value = _plain(value)
    text = repr(float(value)) if isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
