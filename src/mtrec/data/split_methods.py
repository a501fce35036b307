"""How a data spec splits its data: one settings class per split method and way of sizing it.

A split is one of these classes, told apart by its ``method`` and by the option that sizes its test
set (a share, ``leave_k`` per user, a ``cutoff`` time, the ``last_k`` per user), so that options of
another method or two ways of sizing one set cannot be given together: each class takes only its
own options (:class:`SplitMethod`). Each cuts the test set, then carves the validation set from
the training part by the same rule (a random share of a canonical split's base), on a stream of
draws of its own.
"""

from __future__ import annotations

import os
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from mtrec.data.interactions import Interactions
from mtrec.data.splits import (
    CANONICAL_SPLITS,
    COLD_SPLITS,
    DEFAULT_COLD_FRACTION,
    canonical_split,
    cold_split,
    random_split,
    temporal_split,
    user_split,
)
from mtrec.errors import ConfigError
from mtrec.settings import Number, Text, Variant, Whole, rule

#: The assignment's share of held-out ratings, for the random, user and temporal splits.
DEFAULT_TEST_FRACTION = 0.05
#: The split options beside the method, in the order config.json writes them.
SPLIT_OPTIONS = ("test_fraction", "leave_k", "cutoff", "last_k", "valid_fraction", "valid_k", "cold_fraction")
Fraction = Annotated[Number, Field(gt=0, lt=1)]
Count = Annotated[Whole, Field(ge=1)]


def _as_text(value: Any) -> Any:
    """A time given as a number (seconds since 1970) as the text the other times are."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class SplitMethod(Variant):
    """A split: its ``method`` and the options that size its test and validation sets.

    Subclasses declare ``method`` (the names they answer to), their options, ``key`` (the option
    that chooses this class among those of its method), ``hints`` (what to say of an option they
    do not take; otherwise, the methods that take it are named), and what they are: whether they
    draw at random (else config.json leaves the seed out) and whether they come split from files.
    """

    method: str
    options: ClassVar[tuple[str, ...]] = SPLIT_OPTIONS
    key: ClassVar[str | None] = None
    draws_at_random: ClassVar[bool] = True
    comes_split: ClassVar[bool] = False

    @classmethod
    def methods(cls) -> tuple[str, ...]:
        """The method names this class answers to."""
        return typing.get_args(cls.model_fields["method"].annotation)

    @classmethod
    def foreign(cls, name: str, values: dict[str, Any]) -> str:
        """Why this split does not take the option ``name``: its hint, or the methods that take it."""
        method = str(values.get("method", "random"))
        if name in cls.hints:
            return cls.hints[name].replace("<method>", method)
        takers = dict.fromkeys(m for member in SPLIT_CLASSES if name in member.model_fields for m in member.methods())
        return f"{{{name}}} applies to {{split}} {', '.join(takers)}, not {{split}} {method}"

    @property
    def valid_size(self) -> float | int | None:
        """The validation set's size: a share or K per user (None: no validation set)."""
        return getattr(self, "valid_fraction", None) or getattr(self, "valid_k", None)

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        """``(train, test)`` of ``data``."""
        raise NotImplementedError

    def carve(self, train: Interactions, seed: int) -> tuple[Interactions, Interactions | None]:
        """The training part without the validation set, and the validation set (None if not asked)."""
        if self.valid_size is None:
            return train, None
        return self.cut_validation(train, (seed, 1))  # a stream of its own: it does not repeat the test draw

    def cut_validation(self, train: Interactions, seed: tuple[int, int]) -> tuple[Interactions, Interactions]:
        """``(train, validation)``: by default, the test set's rule with the validation set's size."""
        return self.model_copy(update=self._sized_as_validation()).cut(train, seed)

    def _sized_as_validation(self) -> dict[str, Any]:
        """The options that size the test set as the validation set is sized."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """``{"method": ..., and the options in effect}``."""
        return {"method": self.method, **{name: getattr(self, name) for name in SPLIT_OPTIONS if getattr(self, name, None) is not None}}


# ---------------------------------------------------------------------------------------------
# By how the validation set is sized


class _ValidShare(SplitMethod):
    valid_fraction: Fraction | None = Field(None, description="share of the training part held out for validation, by the split's own rule")
    hints: ClassVar[dict[str, str]] = {"valid_k": "{valid_k} applies to {split} user {leave_k} and {split} temporal {last_k}; use {valid_fraction}"}

    def _sized_as_validation(self) -> dict[str, Any]:
        return {"test_fraction": self.valid_fraction}


class _ValidCount(SplitMethod):
    valid_k: Count | None = Field(
        None, description="for splits by {leave_k} or {last_k}: K more per user held out of the training part for validation"
    )
    hints: ClassVar[dict[str, str]] = {
        "valid_fraction": "{valid_fraction} does not fit a test set of K per user: the validation set is carved by the same rule, so give {valid_k}"
    }


class _Share(_ValidShare):
    test_fraction: Fraction = Field(DEFAULT_TEST_FRACTION, description="share of ratings held out")


# ---------------------------------------------------------------------------------------------
# The splits


class RandomSplit(_Share):
    """A share of the interactions drawn uniformly at random (the assignment's)."""

    method: Literal["random"] = "random"

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return random_split(data, test_fraction=self.test_fraction, seed=seed)


class UserShareSplit(_Share):
    """A share of each user's interactions."""

    method: Literal["user"]

    @model_validator(mode="after")
    def _leaves_training_data(self) -> UserShareSplit:
        if self.valid_fraction is not None and self.valid_fraction + self.test_fraction >= 1:
            raise rule(
                f"{{valid_fraction}} {self.valid_fraction:g} and {{test_fraction}} {self.test_fraction:g} add up to 1 or more: "
                "users would be left without training data"
            )
        return self

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return user_split(data, test_fraction=self.test_fraction, seed=seed)


class UserLeaveKSplit(_ValidCount):
    """``leave_k`` interactions of each user."""

    method: Literal["user"]
    leave_k: Count = Field(description="for {split} user: K per user held out")
    key: ClassVar[str | None] = "leave_k"
    hints: ClassVar[dict[str, str]] = {
        **_ValidCount.hints,
        "test_fraction": "{test_fraction} and {leave_k} are two ways to size the test set: give one",
    }

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return user_split(data, leave_k=self.leave_k, seed=seed)

    def _sized_as_validation(self) -> dict[str, Any]:
        return {"leave_k": self.valid_k}


class TemporalShareSplit(_Share):
    """The latest share of the interactions."""

    method: Literal["temporal"]
    draws_at_random: ClassVar[bool] = False

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return temporal_split(data, test_fraction=self.test_fraction)


class TemporalCutoffSplit(_ValidShare):
    """Everything from a time on."""

    method: Literal["temporal"]
    cutoff: Annotated[Text, BeforeValidator(_as_text)] = Field(
        description="for {split} temporal: test from this time on (seconds since 1970 or an ISO date, e.g. 1998-03-01)"
    )
    key: ClassVar[str | None] = "cutoff"
    draws_at_random: ClassVar[bool] = False
    hints: ClassVar[dict[str, str]] = {
        **_ValidShare.hints,
        "test_fraction": "{test_fraction} and {cutoff} are two ways to size the test set: give one",
    }

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return temporal_split(data, cutoff=self.cutoff)

    def cut_validation(self, train: Interactions, seed: tuple[int, int]) -> tuple[Interactions, Interactions]:
        return temporal_split(train, test_fraction=self.valid_fraction)


class TemporalLastKSplit(_ValidCount):
    """Each user's latest ``last_k`` interactions."""

    method: Literal["temporal"]
    last_k: Count = Field(description="for {split} temporal: each user's latest K held out")
    key: ClassVar[str | None] = "last_k"
    draws_at_random: ClassVar[bool] = False
    hints: ClassVar[dict[str, str]] = {
        **_ValidCount.hints,
        "test_fraction": "{test_fraction} and {last_k} are two ways to size the test set: give one",
        "cutoff": "{cutoff} and {last_k} are two ways to make a temporal split: give one",
    }

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        return temporal_split(data, last_k=self.last_k)

    def _sized_as_validation(self) -> dict[str, Any]:
        return {"last_k": self.valid_k}


class ColdSplit(_Share):
    """A share of the items (``cold-items``) or users (``cold-users``) held out entirely, with all
    their pairs, and a random share of the other pairs: the test set's cold pairs measure cold start,
    its warm ones the usual case. Validation is carved the same way from the training part."""

    method: Literal[COLD_SPLITS]  # type: ignore[valid-type]
    cold_fraction: Fraction | None = Field(
        None,
        description="for {split} cold-items and cold-users: share of the items (users) held out with all their pairs",
        json_schema_extra={"none": str(DEFAULT_COLD_FRACTION)},
    )

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        share = DEFAULT_COLD_FRACTION if self.cold_fraction is None else self.cold_fraction
        return cold_split(data, self.method.removeprefix("cold-"), share, self.test_fraction, seed)


class CanonicalSplit(_ValidShare):
    """One of MovieLens 100K's own splits, read from its files; validation is a random share of the base."""

    method: Literal[CANONICAL_SPLITS]  # type: ignore[valid-type]
    comes_split: ClassVar[bool] = True
    hints: ClassVar[dict[str, str]] = {
        **_ValidShare.hints,
        "test_fraction": "{test_fraction} does not apply to {split} <method>, whose test set is fixed",
    }

    def cut(self, data: Interactions, seed: int | tuple[int, int]) -> tuple[Interactions, Interactions]:
        raise ConfigError(f"split {self.method} is read from MovieLens 100K's files, not cut from other data: load it (DataSpec.load_split)")

    def load(self, data_dir: str | os.PathLike | None, progress: bool) -> tuple[Interactions, Interactions]:
        """``(train, test)`` as the release's files have them."""
        return canonical_split(self.method, data_dir, progress=progress)

    def cut_validation(self, train: Interactions, seed: tuple[int, int]) -> tuple[Interactions, Interactions]:
        return random_split(train, test_fraction=self.valid_fraction, seed=seed)


#: Every split, those chosen by an option (``key``) before the others of their method.
SPLIT_CLASSES: tuple[type[SplitMethod], ...] = (
    UserLeaveKSplit,
    TemporalLastKSplit,
    TemporalCutoffSplit,
    RandomSplit,
    UserShareSplit,
    TemporalShareSplit,
    ColdSplit,
    CanonicalSplit,
)
#: The split methods, in the order they are offered.
SPLITS = ("random", "user", "temporal", *COLD_SPLITS, *CANONICAL_SPLITS)


def split_class(value: Any) -> str | None:
    """The name of the class that takes ``value`` (a split, or its options with ``method``)."""
    if isinstance(value, SplitMethod):
        return type(value).__name__
    if not isinstance(value, dict):
        return None
    method = value.get("method", "random")
    for member in SPLIT_CLASSES:
        if method in member.methods() and (member.key is None or member.key in value):
            return member.__name__
    return None


#: A split, of whichever class its options choose.
Split = Annotated[
    Union[tuple(Annotated[member, Tag(member.__name__)] for member in SPLIT_CLASSES)],  # type: ignore[valid-type]
    Discriminator(
        split_class,
        custom_error_type="unknown_split",
        custom_error_message=f"must be one of {', '.join(SPLITS)}",
        custom_error_context={"setting": "method"},
    ),
]
