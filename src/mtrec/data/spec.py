"""What data a run uses and how it is split: :class:`DataSpec`, typed and checked when it is made.

A data spec is a source (a MovieLens release, :class:`MovieLens`, or a ratings file and how to
read it, :class:`RatingsFile`) and a split (:mod:`mtrec.data.split_methods`: the method, what sizes
its test set, and the validation set carved from the training part), so that
``DataSpec(...).load_split()`` gives the same train / validation / test sets as the command line
options it was made from, and a run's ``config.json`` can be run again. Both are tagged unions:
options of two sources, of another split method, or two ways of sizing one set cannot be given
together, and the message says which option goes with which.

A spec is made from the options as the command line names them (``DataSpec(split="user",
leave_k=1)``), from its parts (``DataSpec(source=..., split=...)``), or from config.json
(:meth:`DataSpec.from_json`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Callable, ClassVar, Union

from pydantic import Discriminator, Field, Tag, model_validator
from pydantic.fields import FieldInfo

from mtrec.data.datasets import RELEASES, load_movielens
from mtrec.data.features import parse_feature_types, read_feature_file
from mtrec.data.interactions import Interactions
from mtrec.data.readers import load_ratings_file
from mtrec.data.split_methods import DEFAULT_TEST_FRACTION, SPLIT_CLASSES, SPLIT_OPTIONS, SPLITS, CanonicalSplit, RandomSplit, Split
from mtrec.data.splits import cold_start_counts
from mtrec.errors import ConfigError
from mtrec.settings import Number, Settings, Text, Variant, Whole, one_of, rule

__all__ = ["DEFAULT_TEST_FRACTION", "SPLITS", "DataSpec", "MovieLens", "RatingsFile", "READING_OPTIONS", "SOURCE_OPTIONS"]

#: The options of a source: a release, or a ratings file and how to read it.
SOURCE_OPTIONS = (
    "dataset",
    "ratings",
    "items",
    "item_features",
    "user_features",
    "item_feature_types",
    "user_feature_types",
    "user_col",
    "item_col",
    "rating_col",
    "time_col",
    "sep",
    "rating_scale",
)
#: How to read a ratings file; they do not apply to a MovieLens release.
READING_OPTIONS = SOURCE_OPTIONS[2:]


#: A MovieLens release's name: a key of :data:`~mtrec.data.datasets.RELEASES`.
Release = one_of(lambda: tuple(RELEASES), "dataset")


class MovieLens(Variant):
    """A MovieLens release, read from the data directory (downloaded there on first use)."""

    dataset: Release = Field("100k", description="MovieLens release")
    options: ClassVar[tuple[str, ...]] = SOURCE_OPTIONS
    hints: ClassVar[dict[str, str]] = {name: f"{{{name}}} applies to {{ratings}} files only" for name in READING_OPTIONS}

    def load(self, data_dir: str | os.PathLike | None, progress: bool) -> Interactions:
        return load_movielens(self.dataset, data_dir, progress=progress)


#: A column of a ratings file: its name, or its 0-based position.
ColumnName = Union[Text, Annotated[Whole, Field(ge=0)]]


def _column(role: str, names: str) -> Any:
    return Field(None, description=f"{role} column, a name or 0-based position", json_schema_extra={"none": f"found by name: {names}"})


class RatingsFile(Variant):
    """A ratings file and how to read it (see :func:`mtrec.data.readers.load_ratings_file`)."""

    ratings: Text = Field(description="your own ratings (CSV, TSV, '::' or Parquet); without a rating column only the watch-score head trains")
    items: Text | None = Field(None, description="item titles (and genres)")
    item_features: Text | None = Field(
        None, description="item attributes: a CSV/TSV/Parquet file with a header, the item id and one column per attribute"
    )
    user_features: Text | None = Field(None, description="user attributes, laid out as {item_features}")
    item_feature_types: Text | None = Field(
        None,
        description="the kinds of {item_features}' columns, e.g. genres:multi,year:numeric (categorical; multi: values separated "
        "by |; numeric: standardised, missing values filled with the mean)",
        json_schema_extra={"none": "sniffed: numeric if every value is a number, multi if one holds |, else categorical"},
    )
    user_feature_types: Text | None = Field(
        None,
        description="the kinds of {user_features}' columns, as {item_feature_types}",
        json_schema_extra={"none": "sniffed"},
    )
    user_col: ColumnName | None = _column("user", "user/userId/user_id/uid")
    item_col: ColumnName | None = _column("item", "item/itemId/item_id/movieId/movie_id/iid")
    rating_col: ColumnName | None = _column("rating", "rating/score/stars")
    time_col: ColumnName | None = _column("time", "timestamp/time/ts/date")
    sep: Text | None = Field(None, description="field separator", json_schema_extra={"none": "from the extension, or sniffed"})
    rating_scale: tuple[Number, Number] | None = Field(
        None, description="allowed ratings, low and high; any outside is an error", json_schema_extra={"none": "the range in the file"}
    )
    options: ClassVar[tuple[str, ...]] = SOURCE_OPTIONS
    hints: ClassVar[dict[str, str]] = {"dataset": "{dataset} and {ratings} are two data sources: give one"}

    def load(self, data_dir: str | os.PathLike | None, progress: bool) -> Interactions:
        data = load_ratings_file(
            self.ratings, user_col=self.user_col, item_col=self.item_col, rating_col=self.rating_col, time_col=self.time_col,
            items_path=self.items, rating_scale=self.rating_scale, sep=self.sep,
        )  # fmt: skip
        for side, path, types in (("item", self.item_features, self.item_feature_types), ("user", self.user_features, self.user_feature_types)):
            if types is not None and path is None:
                raise ConfigError(f"{side}_feature_types describes the columns of a {side} features file: give {side}_features too")
            if path is not None:
                setattr(data, f"{side}_features", read_feature_file(path, side, parse_feature_types(types)))
        return data


def _source_class(value: Any) -> str | None:
    if isinstance(value, (MovieLens, RatingsFile)):
        return type(value).__name__
    return ("RatingsFile" if "ratings" in value else "MovieLens") if isinstance(value, dict) else None


Source = Annotated[Union[Annotated[MovieLens, Tag("MovieLens")], Annotated[RatingsFile, Tag("RatingsFile")]], Discriminator(_source_class)]


class DataSpec(Settings):
    """The data of a run and its split.

    A spec is made from its parts (below), or from the options as the command line names them
    (``DataSpec(split="user", leave_k=1)``), each optional:

    - ``dataset``: a MovieLens release (``"100k"``, the default, ...), read from the data directory;
    - ``ratings``: a ratings file (CSV, TSV, ``::`` or Parquet) instead of a release, and
      ``items``, ``user_col``, ``item_col``, ``rating_col``, ``time_col``, ``sep``, ``rating_scale``:
      how to read it (see :func:`mtrec.data.readers.load_ratings_file`);
    - ``split``: ``random`` (the default), ``user``, ``temporal``, or one of MovieLens 100K's
      ``u1``..``u5``, ``ua``, ``ub``;
    - ``test_fraction``: the share held out (random, user and temporal splits; 0.05 where no other
      size is given); ``leave_k``: K per user held out (``user``); ``cutoff``, ``last_k``: everything
      from a time on, or each user's latest K (``temporal``);
    - ``valid_fraction``: the share of the training part carved out as the validation set, by the
      same rule as the test set (a random share, each user's share, the latest share; a random
      share of a canonical split's base); ``valid_k``: for splits by ``leave_k`` or ``last_k``, K
      more per user from the training part;
    - ``seed``.

    Attributes
    ----------
    source:
        A MovieLens release (:class:`MovieLens`) or a ratings file and how to read it (:class:`RatingsFile`).
    split:
        The split method and its sizes (:mod:`mtrec.data.split_methods`).
    seed:
        Seeds the random and per-user draws (the run's seed).
    """

    source: Source = Field(default_factory=MovieLens, description="the data: a MovieLens release or a ratings file")
    split: Split = Field(
        default_factory=RandomSplit,
        description="random: uniformly drawn test ratings; user: per user ({test_fraction} or {leave_k}); "
        "temporal: the latest ({test_fraction}, {cutoff} or {last_k}); cold-items, cold-users: a share of the items "
        "(users) held out entirely ({cold_fraction}) and {test_fraction} of the other ratings; u1..u5, ua, ub: MovieLens 100K's own",
    )
    seed: Whole = Field(0, ge=0, description="seeds the random and per-user draws")

    @model_validator(mode="before")
    @classmethod
    def _from_options(cls, values: Any) -> Any:
        """The options as the command line names them, as a source and a split."""
        if not isinstance(values, dict) or "source" in values or not isinstance(values.get("split", ""), str):
            return values
        options = {name: value for name, value in values.items() if value is not None}
        source = {name: options.pop(name) for name in SOURCE_OPTIONS if name in options}
        split = {"method": options.pop("split", "random"), **{name: options.pop(name) for name in SPLIT_OPTIONS if name in options}}
        return {"source": source, "split": split, **options}

    @model_validator(mode="after")
    def _canonical_splits_are_100ks(self) -> DataSpec:
        if isinstance(self.split, CanonicalSplit) and getattr(self.source, "dataset", None) != "100k":
            raise rule(f"{{split}} {self.split.method} is one of MovieLens 100K's own splits: use it with {{dataset}} 100k")
        return self

    def check(self) -> DataSpec:
        """Self: a spec is checked when it is made (kept for the callers that check explicitly)."""
        return self

    @property
    def has_validation(self) -> bool:
        return self.split.valid_size is not None

    # ------------------------------------------------------------------ loading and splitting

    def load(self, data_dir: str | os.PathLike | None = None, progress: bool = False) -> Interactions:
        """The data the spec names (not for the canonical splits, which come split)."""
        return self.source.load(data_dir, progress)

    def split_data(self, data: Interactions) -> tuple[Interactions, Interactions | None, Interactions]:
        """``(train, validation, test)`` of ``data``; validation is None unless the spec asks for one."""
        train, test = self.split.cut(data, self.seed)
        return (*self.split.carve(train, self.seed), test)

    def load_split(
        self, data_dir: str | os.PathLike | None = None, progress: bool = False, data: Interactions | None = None
    ) -> tuple[Interactions, Interactions | None, Interactions]:
        """Load and split: ``(train, validation, test)``. ``data``, if given, is what :meth:`load` returned."""
        if self.split.comes_split:
            train, test = self.split.load(data_dir, progress)
            return (*self.split.carve(train, self.seed), test)
        return self.split_data(data if data is not None else self.load(data_dir, progress))

    def split_loader(
        self, data_dir: str | os.PathLike | None = None
    ) -> Callable[[int], tuple[Interactions, Interactions | None, Interactions, dict]]:
        """``seed -> (train, validation, test, summary)``: the spec's split with each seed, the data read
        from disk once for all of them."""
        loaded: list[Interactions] = []

        def load(seed: int) -> tuple[Interactions, Interactions | None, Interactions, dict]:
            spec = self.with_seed(seed)
            if not loaded and not spec.split.comes_split:
                loaded.append(spec.load(data_dir))
            train, validation, test = spec.load_split(data_dir, data=loaded[0] if loaded else None)
            return train, validation, test, spec.describe(train, validation, test)

        return load

    def with_seed(self, seed: int) -> DataSpec:
        return DataSpec(source=self.source, split=self.split, seed=seed)

    # ------------------------------------------------------------------ options

    def options(self, given_only: bool = False) -> dict[str, Any]:
        """The spec as options named as the command line names them (``dataset``, ``split``, ``leave_k``...):
        those in effect, the defaults written out, or with ``given_only`` those given."""
        split = {name: getattr(self.split, name) for name in SPLIT_OPTIONS if getattr(self.split, name, None) is not None}
        if given_only:
            split = {name: value for name, value in split.items() if name in self.split.model_fields_set}
        return {**self.source.model_dump(exclude_none=True), "split": self.split.method, **split}

    def replace(self, **options: Any) -> DataSpec:
        """This spec with some options (named as in :meth:`options`) changed; None takes an option back.
        A source option of the other kind (``ratings`` for a release, ``dataset`` for a file) replaces the source."""
        return DataSpec(**self.merged(**options))

    def merged(self, **options: Any) -> dict[str, Any]:
        """The options given of this spec, and its seed, with ``options`` laid over them (see :meth:`replace`)."""
        merged = {**self.options(given_only=True), "seed": self.seed}
        if options.get("ratings") is not None:
            merged.pop("dataset", None)
        if options.get("dataset") is not None:
            merged.pop("ratings", None)
        return {**merged, **options}

    @classmethod
    def option_fields(cls) -> dict[str, FieldInfo]:
        """Each option by its name, and the field that declares it (its type, default and description)."""
        fields = {"dataset": MovieLens.model_fields["dataset"], **{name: RatingsFile.model_fields[name] for name in SOURCE_OPTIONS[1:]}}
        split = cls.model_fields["split"]
        fields["split"] = FieldInfo.from_annotated_attribute(one_of(SPLITS, "split"), Field("random", description=split.description))
        for name in SPLIT_OPTIONS:
            fields[name] = next(member.model_fields[name] for member in SPLIT_CLASSES if name in member.model_fields)
        return fields

    @classmethod
    def option_paths(cls) -> dict[str, str]:
        """Each option by its name, and where it lives in a spec: ``dataset`` in ``source.dataset``, ``split`` in ``split.method``."""
        return {
            name: f"source.{name}" if name in SOURCE_OPTIONS else f"split.{'method' if name == 'split' else name}" for name in cls.option_fields()
        }

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """``{"source": {...}, "split": {...}}`` with the values in effect; options not given are left out,
        and the seed where the split draws nothing at random."""
        source = self.source.model_dump(exclude_none=True)
        if source.get("rating_scale") is not None:
            source["rating_scale"] = list(source["rating_scale"])
        split = self.split.to_json()
        if self.split.draws_at_random:
            split["seed"] = self.seed
        return {"source": source, "split": split}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataSpec:
        """The spec :meth:`to_json` wrote, or the ``data`` section of an earlier mtrec's config.json."""
        return cls(**cls.json_options(data))

    @staticmethod
    def json_options(data: dict[str, Any]) -> dict[str, Any]:
        """The options of a spec as :meth:`to_json` wrote it, or as an earlier mtrec's config.json has them."""
        if "source" in data:
            source, split = dict(data["source"]), dict(data["split"])
        else:  # mtrec 0.1: {"dataset" or "ratings_file", "items_file", "split": {...}, and the sizes}
            source = {"dataset": data.get("dataset"), "ratings": data.get("ratings_file"), "items": data.get("items_file")}
            split = dict(data.get("split") or {})
        if source.get("ratings") is not None:  # a file is read, whatever release is named beside it
            source.pop("dataset", None)
        return {**source, "split": split.pop("method", "random"), **split}

    def cli_options(self) -> list[str]:
        """The ``mtrec train`` options that give this spec, where it differs from the default (the
        assignment's 95/5 random split of MovieLens 100K); the seed is the run's ``--seed``."""
        default = DataSpec().options()
        options: list[str] = []
        for name, value in self.options().items():
            if value != default.get(name):
                words = value if isinstance(value, (list, tuple)) else [value]
                options += ["--" + name.replace("_", "-"), *(f"{v:g}" if isinstance(v, float) else str(v) for v in words)]
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
