"""Side features as the network reads them: each user's or item's features as a bag of feature rows.

A :class:`FeatureMap` is fitted on a feature table (:mod:`mtrec.data.features`) for the users or
items of a data set and saved with the model, so that serving encodes a new item or user exactly as
training did. Every categorical value, every value of a multi-valued column and every numeric
column is one *feature row*; an entity's features are a bag of (row, weight) pairs:

- a categorical value: its row, weight 1;
- a multi-valued column's values: their rows, weight 1/n each (the mean of their vectors);
- a numeric column: its row, weight the standardised value (x − mean) / sd (a linear map), 0 where
  the value is missing (the mean stands in for it: the fitted map counts and reports them).

The network adds the weighted sum of its feature vectors to the id vector (LightFM's user and item),
in one ``embedding_bag`` (:mod:`mtrec.nn.features`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mtrec.errors import ConfigError, DataError

#: The sides a model may have features for, as ``--features`` names them.
FEATURE_SIDES = ("items", "users")


@dataclass
class FeatureBags:
    """Each entity's features as CSR arrays: entity e's rows are ``indices[indptr[e]:indptr[e + 1]]``,
    with ``weights`` alongside."""

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def concatenated(self, other: FeatureBags) -> FeatureBags:
        """These entities, then ``other``'s."""
        return FeatureBags(
            np.concatenate([self.indptr, other.indptr[1:] + self.indptr[-1]]),
            np.concatenate([self.indices, other.indices]),
            np.concatenate([self.weights, other.weights]),
        )

    @classmethod
    def none(cls, count: int) -> FeatureBags:
        """``count`` entities without features."""
        return cls(np.zeros(count + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


@dataclass
class FeatureMap:
    """How one side's feature values become feature rows: fitted on the data's table, saved with the model.

    Parameters
    ----------
    side:
        ``"items"`` or ``"users"``.
    columns:
        Per column read, in the order chosen (the table's unless named otherwise): ``{"name", "kind", "values": [...]}`` for a categorical or
        multi-valued column (its values, each one row, in sorted order), ``{"name", "kind": "numeric",
        "mean", "sd"}`` for a numeric one (one row).
    notes:
        What fitting decided that a user should know (missing values filled with the mean, rows
        whose ids are not in the data).
    skipped:
        The columns of the training table the model does not read (left out of its chosen columns,
        or optional and not chosen): a file that has them may still be given, and they are passed over.
    """

    side: str
    columns: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._offsets: list[int] = []
        self._lookup: list[dict[str, int]] = []
        offset = 0
        for column in self.columns:
            self._offsets.append(offset)
            if column["kind"] == "numeric":
                self._lookup.append({})
                offset += 1
            else:
                self._lookup.append({value: i for i, value in enumerate(column["values"])})
                offset += len(column["values"])
        self._size = offset

    @property
    def size(self) -> int:
        """The number of feature rows."""
        return self._size

    @property
    def names(self) -> list[str]:
        return [column["name"] for column in self.columns]

    def unknown(self, names: Sequence[str], optional: Sequence[str] = ()) -> list[str]:
        """Those of ``names`` the map neither reads nor passes over: its skipped columns, and
        ``optional`` ones (a table's optional columns, which a model saved before they existed never read)."""
        return [str(name) for name in names if name not in self.names and name not in self.skipped and name not in optional]

    def row_names(self) -> list[str]:
        """Each feature row's name: ``column=value``, or the numeric column's name."""
        names: list[str] = []
        for column in self.columns:
            names += [column["name"]] if column["kind"] == "numeric" else [f"{column['name']}={v}" for v in column["values"]]
        return names

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, table: Any, ids: np.ndarray, side: str, columns: Sequence[str] | None = None) -> FeatureMap:
        """The map of ``table``'s rows whose ids are among ``ids`` (the data's raw ids of this side).

        ``columns`` names the columns read, in that order (None: every column that is not optional);
        a name the table lacks is a :class:`ConfigError` listing those it has. Rows whose ids the data
        does not hold are ignored (a note says how many); the values and the numeric columns' mean
        and sd are those of the rows kept.
        """
        if columns is None:
            chosen = [column for column in table.columns if not column.optional]
        else:
            chosen = [table.column(name) for name in columns]
        skipped = [name for name in table.names if name not in {column.name for column in chosen}]
        positions, found = _match(table.ids, ids)
        kept = np.flatnonzero(found)
        notes = []
        if len(kept) < len(table.ids):
            notes.append(
                f"{table.source}: {len(table.ids) - len(kept):,} of {len(table.ids):,} rows have {side[:-1]} ids not in the ratings; they are ignored"
            )
        if not len(kept):
            raise DataError(f"{table.source}: none of its {side[:-1]} ids is in the ratings (do its ids name the same {side}?)")
        specs = []
        for column in chosen:
            values = column.values
            if column.kind == "numeric":
                kept_values = np.asarray(values, dtype=np.float64)[kept]
                present = kept_values[~np.isnan(kept_values)]
                if not len(present):
                    raise DataError(f"{table.source}: column {column.name!r} has no values for the {side} in the ratings")
                mean, sd = float(present.mean()), float(present.std())
                specs.append({"name": column.name, "kind": "numeric", "mean": mean, "sd": sd if sd > 0 else 1.0})
                missing = len(kept_values) - len(present)
                if missing:
                    notes.append(f"{table.source}: column {column.name!r} misses {missing:,} values; its mean ({mean:g}) stands in for them")
            else:
                seen: set[str] = set()
                for position in kept.tolist():
                    value = values[position]
                    if column.kind == "multi":
                        seen.update(value)
                    elif value is not None:
                        seen.add(value)
                if not seen:
                    raise DataError(f"{table.source}: column {column.name!r} has no values for the {side} in the ratings")
                specs.append({"name": column.name, "kind": column.kind, "values": sorted(seen)})
        return cls(side, specs, notes, skipped)

    # ------------------------------------------------------------------ encoding

    def encode(self, table: Any, positions: Sequence[int] | np.ndarray | None = None, strict: bool = True) -> FeatureBags:
        """The bags of ``table``'s rows at ``positions`` (all by default), in that order.

        With ``strict``, a categorical value the map has never seen is a :class:`DataError` naming
        the row, the column and the value (a new item whose genre training never saw), and so is a
        column the map does not have (unless the model skipped it: :attr:`skipped`); else they are left out. A column the map has that the table
        lacks is read as missing in every row, and a warning says so.
        """
        rows = np.arange(len(table.ids)) if positions is None else np.asarray(positions, dtype=np.int64)
        by_name = {column.name: column for column in table.columns}
        missing = [name for name in self.names if name not in by_name]
        if missing:
            warnings.warn(
                f"{table.source} lacks the model's {self.side} feature column(s) {', '.join(missing)}: read as missing in every row",
                UserWarning,
                stacklevel=2,
            )
        extra = self.unknown(list(by_name), [name for name, column in by_name.items() if column.optional])
        if extra and strict:
            raise DataError(f"{table.source}: column(s) {', '.join(extra)} are not among the model's {self.side} features ({', '.join(self.names)})")
        entries: list[list[tuple[int, float]]] = [[] for _ in rows]
        for spec, offset, lookup in zip(self.columns, self._offsets, self._lookup):
            column = by_name.get(spec["name"])
            if column is None:
                continue
            if (column.kind == "numeric") != (spec["kind"] == "numeric"):
                raise DataError(f"{table.source}: column {spec['name']!r} is {column.kind} here, but the model read it as {spec['kind']}")
            for slot, row in enumerate(rows.tolist()):
                value = column.values[row]
                if spec["kind"] == "numeric":
                    x = float(value)
                    if not math.isnan(x):
                        entries[slot].append((offset, (x - spec["mean"]) / spec["sd"]))
                    continue
                values = value if spec["kind"] == "multi" else ([] if value is None else [value])
                if spec["kind"] == "multi" and isinstance(value, str):
                    values = [value]
                known = []
                for v in values:
                    if v in lookup:
                        known.append(offset + lookup[v])
                    elif strict:
                        raise DataError(
                            f"{table.where(row)}: column {spec['name']!r} holds {v!r}, a value the model never saw in training "
                            f"(it knows {_some(spec['values'])})"
                        )
                for index in known:
                    entries[slot].append((index, 1.0 / len(known)))
        counts = np.array([len(e) for e in entries], dtype=np.int64)
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.array([i for e in entries for i, _ in e], dtype=np.int64)
        weights = np.array([w for e in entries for _, w in e], dtype=np.float32)
        return FeatureBags(indptr, indices, weights)

    def encode_record(self, record: Mapping[str, Any], where: str = "the features") -> FeatureBags:
        """One user's or item's features given as ``{column: value}`` (a request's): categorical values
        as text, multi-valued ones as a list or ``|``-separated text, numeric ones as numbers; a
        column left out is missing, and a column the model skipped (:attr:`skipped`) is passed over.
        An unknown column, a value training never saw, a number that is not finite or text in a
        numeric column is a :class:`DataError` naming it."""
        if not isinstance(record, Mapping):
            raise DataError(f"{where}: give the {self.side[:-1]}'s features as an object of column: value, got {type(record).__name__}")
        unknown = self.unknown(list(record))
        if unknown:
            raise DataError(f"{where}: {', '.join(unknown)} are not among the model's {self.side} features ({', '.join(self.names)})")
        entries: list[tuple[int, float]] = []
        for spec, offset, lookup in zip(self.columns, self._offsets, self._lookup):
            name, value = spec["name"], record.get(spec["name"])
            if value is None or value == "":
                continue
            if spec["kind"] == "numeric":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                    raise DataError(f"{where}: {name!r} is numeric and needs a finite number, got {value!r}")
                entries.append((offset, (float(value) - spec["mean"]) / spec["sd"]))
                continue
            if spec["kind"] == "multi":
                values = [v.strip() for v in value.split("|")] if isinstance(value, str) else value
                if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                    raise DataError(f"{where}: {name!r} takes a list of texts or '|'-separated text, got {value!r}")
                values = [v for v in values if v]
            else:
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise DataError(f"{where}: {name!r} takes a text value, got {value!r}")
                values = [str(value)]
            for v in values:
                if v not in lookup:
                    raise DataError(f"{where}: {name!r} holds {v!r}, a value the model never saw in training (it knows {_some(spec['values'])})")
            entries += [(offset + lookup[v], 1.0 / len(values)) for v in values]
        if not entries:
            raise DataError(f"{where}: none of the model's {self.side} features ({', '.join(self.names)}) is given")
        return FeatureBags(
            np.array([0, len(entries)], np.int64), np.array([i for i, _ in entries], np.int64), np.array([w for _, w in entries], np.float32)
        )

    def aligned(self, table: Any, ids: np.ndarray) -> FeatureBags:
        """The bags of the entities ``ids`` (in that order): each its row of ``table``, or no features."""
        positions, found = _match(ids, table.ids)
        bags = self.encode(table, positions[found])
        counts = np.zeros(len(ids), np.int64)
        counts[found] = np.diff(bags.indptr)
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return FeatureBags(indptr, bags.indices, bags.weights)

    # ------------------------------------------------------------------ on disk

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side, "columns": self.columns, "notes": self.notes, "skipped": self.skipped}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureMap:
        return cls(str(data["side"]), [dict(column) for column in data["columns"]], list(data.get("notes", [])), list(data.get("skipped", [])))


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a whole number too large for a float
        return False


def _some(values: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:count])
    return shown + (f" and {len(values) - count:,} more" if len(values) > count else "")


def _match(ids: np.ndarray, among: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``ids``, its position in ``among`` and whether it is there (ids compared as text
    where either side is text, as the metadata's alignment does)."""
    known, wanted = np.asarray(among), np.asarray(ids)
    if known.dtype == object or wanted.dtype == object:
        known, wanted = known.astype(str), wanted.astype(str)
    if not len(known):
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    order = np.argsort(known, kind="stable")
    slots = np.minimum(np.searchsorted(known[order], wanted), len(known) - 1)
    found = known[order][slots] == wanted
    return order[slots].astype(np.int64), found


def parse_sides(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"items,users"`` (or a list, or ``"none"``) as the sides in :data:`FEATURE_SIDES` order."""
    if value is None:
        return ()
    parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p and p.strip()]
    if parts == ["none"]:
        return ()
    unknown = [p for p in parts if p not in FEATURE_SIDES]
    if unknown:
        raise ConfigError(f"features must be none, items, users or items,users; got {', '.join(unknown)}")
    return tuple(side for side in FEATURE_SIDES if side in parts)


@dataclass
class FittedFeatures:
    """One side's features as a fitted model keeps them: the map, and the bags of its users or items
    in index order."""

    map: FeatureMap
    bags: FeatureBags


def parse_columns(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"genres,year,released"`` (or a list) as column names; None for None. An empty name in the
    list, or one named twice, is a :class:`ConfigError`."""
    if value is None:
        return None
    parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else value)]
    if not parts or any(not p for p in parts):
        raise ConfigError(f"name the feature columns separated by commas (e.g. genres,year,released); got {value!r}")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise ConfigError(f"feature column(s) {', '.join(twice)} named twice")
    return tuple(parts)


def fit_features(sides: Sequence[str], data: Any, columns: Mapping[str, Sequence[str] | None] | None = None) -> dict[str, FittedFeatures]:
    """The maps and bags of ``sides`` (``"items"``, ``"users"``) for ``data`` (interactions whose
    ``item_features`` / ``user_features`` hold the tables), each reading the columns ``columns``
    names for its side (default: the table's columns that are not optional); a
    :class:`ConfigError` for a side asked for whose table the data lacks, or for a column it lacks."""
    fitted = {}
    for side in sides:
        table = getattr(data, f"{side[:-1]}_features", None)
        if table is None:
            flag = f"--{side[:-1]}-features FILE"
            raise ConfigError(
                f"features={side} needs {side[:-1]} features, and the data has none: give {flag} (the MovieLens releases have them where they exist)"
            )
        ids = data.item_ids if side == "items" else data.user_ids
        feature_map = FeatureMap.fit(table, ids, side, (columns or {}).get(side))
        for note in feature_map.notes:  # said once per fit: ids not in the ratings, missing values filled
            warnings.warn(note, UserWarning, stacklevel=3)
        fitted[side] = FittedFeatures(feature_map, feature_map.aligned(table, ids))
    return fitted


def known_entities(data: Any) -> dict[str, np.ndarray]:
    """Which users and items of ``data``'s index have training pairs (their id rows train)."""
    return {
        "users": np.bincount(data.users, minlength=data.num_users) > 0,
        "items": np.bincount(data.items, minlength=data.num_items) > 0,
    }
