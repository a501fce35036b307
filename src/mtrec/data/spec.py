"""What data a run uses and how it is split: :class:`DataSpec`, a plain, checkable description.

A data spec names a source (a MovieLens release, or a ratings file and how to read it) and a
split (the method and its parameters, and the validation set carved from the training part),
so that ``DataSpec(...).load_split()`` gives the same train / validation / test sets as the
command line options it was made from, and a run's ``config.json`` can be run again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from mtrec.data.datasets import RELEASES, load_movielens
from mtrec.data.interactions import Interactions
from mtrec.data.readers import load_ratings_file
from mtrec.data.splits import (
    CANONICAL_SPLITS,
    canonical_split,
    check_fraction,
    cold_start_counts,
    random_split,
    temporal_split,
    user_split,
)
from mtrec.errors import ConfigError

#: The split methods.
SPLITS = ("random", "user", "temporal", *CANONICAL_SPLITS)
#: The assignment's share of held-out ratings, for --split random, user and temporal.
DEFAULT_TEST_FRACTION = 0.05
#: Options of a ratings file; they do not apply to a MovieLens release.
READING_OPTIONS = ("items", "user_col", "item_col", "rating_col", "time_col", "sep", "rating_scale")
_SOURCE_FIELDS = ("dataset", "ratings", *READING_OPTIONS)
#: The one split option each method takes, beside a test fraction.
_SPLIT_OPTIONS = {"leave_k": "user", "cutoff": "temporal", "last_k": "temporal"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class DataSpec:
    """The data of a run and its split.

    Parameters
    ----------
    dataset:
        A MovieLens release (``"100k"``...), read from the data directory. Ignored (and must
        be None) when ``ratings`` is given.
    ratings:
        A ratings file (CSV, TSV, ``::`` or Parquet) instead of a release.
    items, user_col, item_col, rating_col, time_col, sep, rating_scale:
        How to read ``ratings``: see :func:`mtrec.data.readers.load_ratings_file`.
    split:
        ``random``, ``user``, ``temporal``, or one of MovieLens 100K's ``u1``..``u5``, ``ua``, ``ub``.
    test_fraction:
        Share held out (random, user and temporal splits); default 0.05 where no other size is given.
    leave_k:
        ``user`` split: hold out K interactions per user.
    cutoff, last_k:
        ``temporal`` split: everything from a time on, or each user's latest K.
    valid_fraction:
        Share of the training part carved out as the validation set, by the same rule as the
        test set (a random share, each user's share, the latest share; a random share of a
        canonical split's base).
    valid_k:
        For ``user --leave-k`` and ``temporal --last-k`` splits: K more per user, from the training part.
    seed:
        Seeds the random and per-user draws (the run's seed).
    """

    dataset: str | None = "100k"
    ratings: str | None = None
    items: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    sep: str | None = None
    rating_scale: tuple[float, float] | None = None
    split: str = "random"
    test_fraction: float | None = None
    leave_k: int | None = None
    cutoff: str | None = None
    last_k: int | None = None
    valid_fraction: float | None = None
    valid_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rating_scale is not None:
            object.__setattr__(self, "rating_scale", tuple(float(v) for v in self.rating_scale))
        if self.cutoff is not None:
            object.__setattr__(self, "cutoff", str(self.cutoff))

    # ------------------------------------------------------------------ checks

    def check(self) -> DataSpec:
        """Raise :class:`ConfigError` for options that are out of range or do not fit together; return self."""
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; use one of {', '.join(SPLITS)}")
        if self.ratings is None:
            if self.dataset not in RELEASES:
                raise ConfigError(f"unknown dataset {self.dataset!r}; known datasets: {', '.join(RELEASES)}")
            for option in READING_OPTIONS:
                if getattr(self, option) is not None:
                    raise ConfigError(f"{_flag(option)} applies to --ratings files only")
        for option, split in _SPLIT_OPTIONS.items():
            if getattr(self, option) is not None and self.split != split:
                raise ConfigError(f"{_flag(option)} applies to --split {split}, not --split {self.split}")
        if self.split in CANONICAL_SPLITS and (self.ratings is not None or self.dataset != "100k"):
            raise ConfigError(f"--split {self.split} is one of MovieLens 100K's own splits: use it with --dataset 100k")
        if self.cutoff is not None and self.last_k is not None:
            raise ConfigError("--cutoff and --last-k are two ways to make a temporal split: give one")
        if self.test_fraction is not None:
            for option in _SPLIT_OPTIONS:
                if getattr(self, option) is not None:
                    raise ConfigError(f"--test-fraction and {_flag(option)} are two ways to size the test set: give one")
            if self.split in CANONICAL_SPLITS:
                raise ConfigError(f"--test-fraction does not apply to --split {self.split}, whose test set is fixed")
            check_fraction("test_fraction", self.test_fraction)
        self._check_validation()
        return self

    @property
    def by_count(self) -> bool:
        """Whether the test set is K per user (``--leave-k``, ``--last-k``) rather than a share."""
        return self.leave_k is not None or self.last_k is not None

    def _check_validation(self) -> None:
        if self.valid_fraction is not None and self.valid_k is not None:
            raise ConfigError("--valid-fraction and --valid-k are two ways to size the validation set: give one")
        if self.valid_fraction is not None:
            if self.by_count:
                raise ConfigError(
                    "--valid-fraction does not fit a test set of K per user: the validation set is carved by the same rule, so give --valid-k"
                )
            check_fraction("valid_fraction", self.valid_fraction)
            if self.split == "user" and self.valid_fraction + self.effective_test_fraction >= 1:
                raise ConfigError(
                    f"--valid-fraction {self.valid_fraction:g} and --test-fraction {self.effective_test_fraction:g} "
                    "add up to 1 or more: users would be left without training data"
                )
        if self.valid_k is not None:
            if not self.by_count:
                raise ConfigError("--valid-k applies to --split user --leave-k and --split temporal --last-k; use --valid-fraction")
            if isinstance(self.valid_k, bool) or not isinstance(self.valid_k, int) or self.valid_k < 1:
                raise ConfigError(f"valid_k must be a positive whole number, got {self.valid_k!r}")

    @property
    def effective_test_fraction(self) -> float:
        return DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction

    @property
    def has_validation(self) -> bool:
        return self.valid_fraction is not None or self.valid_k is not None

    # ------------------------------------------------------------------ loading and splitting

    def load(self, data_dir: str | os.PathLike | None = None, progress: bool = False) -> Interactions:
        """The data the spec names (not for the canonical splits, which come split)."""
        if self.ratings is None:
            return load_movielens(self.dataset, data_dir, progress=progress)
        return load_ratings_file(
            self.ratings,
            user_col=self.user_col,
            item_col=self.item_col,
            rating_col=self.rating_col,
            time_col=self.time_col,
            items_path=self.items,
            rating_scale=self.rating_scale,
            sep=self.sep,
        )

    def split_data(self, data: Interactions) -> tuple[Interactions, Interactions | None, Interactions]:
        """``(train, validation, test)`` of ``data``; validation is None unless the spec asks for one."""
        train, test = self._split_once(data, self.effective_test_fraction, self.leave_k, self.last_k, self.cutoff, self.seed)
        return (*self.carve_validation(train), test)

    def carve_validation(self, train: Interactions) -> tuple[Interactions, Interactions | None]:
        """The training part without the validation set, and the validation set (None if not asked)."""
        if not self.has_validation:
            return train, None
        seed = (self.seed, 1)  # its own stream of draws: the validation draw does not repeat the test draw
        if self.split in CANONICAL_SPLITS:
            return random_split(train, test_fraction=self.valid_fraction, seed=seed)
        leave_k = self.valid_k if self.leave_k is not None else None
        last_k = self.valid_k if self.last_k is not None else None
        return self._split_once(train, self.valid_fraction, leave_k, last_k, None, seed)

    def _split_once(
        self,
        data: Interactions,
        fraction: float | None,
        leave_k: int | None,
        last_k: int | None,
        cutoff: str | None,
        seed: int | tuple[int, int],
    ) -> tuple[Interactions, Interactions]:
        """One cut by the spec's method: a share, K per user, or a time."""
        if self.split == "random":
            return random_split(data, test_fraction=fraction, seed=seed)
        if self.split == "user":
            if leave_k is not None:
                return user_split(data, leave_k=leave_k, seed=seed)
            return user_split(data, test_fraction=fraction, seed=seed)
        if last_k is not None:
            return temporal_split(data, last_k=last_k)
        if cutoff is not None:
            return temporal_split(data, cutoff=cutoff)
        return temporal_split(data, test_fraction=fraction)

    def load_split(
        self, data_dir: str | os.PathLike | None = None, progress: bool = False, data: Interactions | None = None
    ) -> tuple[Interactions, Interactions | None, Interactions]:
        """Load and split: ``(train, validation, test)``. ``data``, if given, is what :meth:`load` returned."""
        self.check()
        if self.split in CANONICAL_SPLITS:
            train, test = canonical_split(self.split, data_dir, progress=progress)
            return (*self.carve_validation(train), test)
        return self.split_data(data if data is not None else self.load(data_dir, progress))

    def with_seed(self, seed: int) -> DataSpec:
        return dataclasses.replace(self, seed=seed)

    # ------------------------------------------------------------------ JSON

    def normalised(self) -> DataSpec:
        """The same spec with the defaults in effect written out (the test fraction), so equal
        splits compare equal; the seed is dropped where the split draws nothing at random."""
        fraction = self.test_fraction
        if fraction is None and self.split in ("random", "user", "temporal") and not self.by_count and self.cutoff is None:
            fraction = DEFAULT_TEST_FRACTION
        return dataclasses.replace(self, test_fraction=fraction, dataset=None if self.ratings else self.dataset)

    def to_json(self) -> dict[str, Any]:
        """``{"source": {...}, "split": {...}}`` with the values in effect; options not given are left out."""
        spec = self.normalised()
        source = {name: getattr(spec, name) for name in _SOURCE_FIELDS if getattr(spec, name) is not None}
        if spec.rating_scale is not None:
            source["rating_scale"] = list(spec.rating_scale)
        split = {"method": spec.split}
        for name in ("test_fraction", "leave_k", "cutoff", "last_k", "valid_fraction", "valid_k"):
            if getattr(spec, name) is not None:
                split[name] = getattr(spec, name)
        if spec.split != "temporal":
            split["seed"] = spec.seed
        return {"source": source, "split": split}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSpec:
        """The spec :meth:`to_json` wrote, or the ``data`` section of an earlier mtrec's config.json."""
        if "source" in data:
            source, split = dict(data["source"]), dict(data["split"])
        else:  # mtrec 0.1: {"dataset" or "ratings_file", "items_file", "split": {...}, and the sizes}
            source = {"dataset": data.get("dataset"), "ratings": data.get("ratings_file"), "items": data.get("items_file")}
            split = dict(data.get("split") or {"method": "random"})
        fields = {k: v for k, v in source.items() if v is not None}
        if "ratings" in fields:
            fields.setdefault("dataset", None)
        fields["split"] = split.pop("method", "random")
        fields.update(split)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown data option {', '.join(unknown)}")
        return cls(**fields)

    def cli_options(self) -> list[str]:
        """The ``mtrec train`` options that give this spec, where it differs from the default (the
        assignment's 95/5 random split of MovieLens 100K); the seed is the run's ``--seed``."""
        spec, default = self.normalised(), DataSpec().normalised()
        options: list[str] = []
        for name in (*_SOURCE_FIELDS, "split", "test_fraction", "leave_k", "cutoff", "last_k", "valid_fraction", "valid_k"):
            value = getattr(spec, name)
            if value is None or value == getattr(default, name):
                continue
            if name == "rating_scale":
                options += [_flag(name), *(f"{v:g}" for v in value)]
            else:
                options += [_flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
        return options

    # ------------------------------------------------------------------ description

    def describe(self, train: Interactions, validation: Interactions | None, test: Interactions) -> dict[str, Any]:
        """What the split gave (sizes, cold start), for a run's config.json."""
        return {
            "name": train.name,
            "num_users": train.num_users,
            "num_items": train.num_items,
            "train_size": len(train),
            "valid_size": 0 if validation is None else len(validation),
            "test_size": len(test),
            "has_ratings": train.has_ratings,
            "rating_scale": None if train.rating_scale is None else [float(v) for v in train.rating_scale],
            "cold_start": cold_start_counts(train, test),
        }
