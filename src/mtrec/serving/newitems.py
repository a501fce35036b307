"""Items the model never saw, scored by their features: a candidate set of new and known items.

A model with item features (``features="items"``) scores an item without training pairs by its
features alone, as the cold-items split measures (:mod:`mtrec.eval.coldstart`). A candidate file
(``mtrec recommend --candidates FILE``, ``Recommender.with_candidates``) lists items with their
attributes, in the layout of the item features file: those the model knows keep their learned
vectors; the others join the catalogue, each its features' sum, with no retraining.

Refused, each in one line: a model without item features; a new item with no feature value (it has
neither interactions nor features: nothing to score it by); a value training never saw (its
feature has no vector); a column the model does not have.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np

from mtrec.data.feature_maps import FittedFeatures
from mtrec.data.metadata import ItemMetadata
from mtrec.errors import ConfigError, DataError


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool; a whole number too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:
        return False


def _raw(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def with_new_items(model: Any, table: Any) -> tuple[Any, list[Any]]:
    """A view of the fitted ``model`` whose catalogue also holds ``table``'s items it does not know
    (a :class:`~mtrec.data.features.FeatureTable` of item features), and the raw ids of every item
    of ``table`` (the candidate set), in its order. The model is not changed."""
    data = model.data_
    fitted = data.features.get("items")
    if fitted is None:
        raise ConfigError("this model was trained without item features (features=none or users): it cannot score an item it never saw")
    known_ids = {str(i): _raw(i) for i in data.item_ids.tolist()}  # the model's own id for each, by its text
    raw_ids = [_raw(i) for i in table.ids.tolist()]
    new = [row for row, raw in enumerate(raw_ids) if str(raw) not in known_ids]
    candidates = [known_ids.get(str(raw), raw) for raw in raw_ids]
    if not new:
        return model, candidates
    bags = fitted.map.encode(table, np.asarray(new, dtype=np.int64), strict=True)
    empty = np.flatnonzero(np.diff(bags.indptr) == 0)
    if len(empty):
        row = new[int(empty[0])]
        raise DataError(f"{table.where(row)}: item {raw_ids[row]} has neither interactions nor a feature value: the model has nothing to score it by")
    network = model.network_.with_new_items(bags.indptr, bags.indices, bags.weights)
    new_ids = np.asarray([raw_ids[row] for row in new], dtype=object)
    if data.item_ids.dtype != object and all(isinstance(i, (int, np.integer)) for i in new_ids):
        item_ids = np.concatenate([data.item_ids, new_ids.astype(np.int64)])
    else:
        item_ids = np.concatenate([data.item_ids.astype(str).astype(object), new_ids.astype(str).astype(object)])
    metadata = data.item_metadata
    if metadata is not None:  # a new item's title is its id; its genres, where the features have them, are --genre's
        genres = next((column for column in table.columns if column.name == "genres" and column.kind == "multi"), None)
        metadata = ItemMetadata(
            titles=[*metadata.titles, *(str(i) for i in new_ids)],
            years=[*metadata.years, *(None for _ in new_ids)],
            genres=[*metadata.genres, *(list(genres.values[row]) if genres is not None else [] for row in new)],
        )
    features = dict(data.features)
    features["items"] = FittedFeatures(fitted.map, fitted.bags.concatenated(bags))
    view = copy.copy(model)
    view.network_ = network
    view.data_ = replace(data, num_items=data.num_items + len(new), item_ids=item_ids, item_metadata=metadata, features=features)
    return view, [str(c) if item_ids.dtype == object else c for c in candidates]


def candidate_table(records: list[dict[str, Any]], model: Any, source: str = "candidates") -> Any:
    """A request's candidate items (``[{"item": id, "<feature>": value, ...}]``, values as
    :meth:`~mtrec.data.feature_maps.FeatureMap.encode_record` takes them) as a feature table in the
    layout of the model's item features; a :class:`ConfigError` naming the entry for a bad one."""
    from mtrec.data.features import FeatureColumn, FeatureTable

    fitted = model.data_.features.get("items")
    if fitted is None:
        raise ConfigError("this model was trained without item features (features=none or users): it cannot score an item it never saw")
    columns = fitted.map.columns
    names = {column["name"] for column in columns}
    ids: list[Any] = []
    values: dict[str, list[Any]] = {column["name"]: [] for column in columns}
    for number, record in enumerate(records, 1):
        where = f"{source} entry {number}"
        if not isinstance(record, dict) or "item" not in record:
            raise ConfigError(f"{where}: give an object with the item's id as 'item' and its features")
        item = record["item"]
        if isinstance(item, bool) or not isinstance(item, (int, str)) or (isinstance(item, str) and not item.strip()):
            raise ConfigError(f"{where}: 'item' must be an id (a whole number or text), got {item!r}")
        if isinstance(item, int) and not -(2**63) <= item < 2**63:
            raise ConfigError(f"{where}: 'item' {item} is out of range for an id")
        unknown = sorted(fitted.map.unknown([name for name in record if name != "item"]))
        if unknown:
            raise ConfigError(f"{where}: {', '.join(unknown)} are not among the model's item features ({', '.join(sorted(names))})")
        ids.append(item.strip() if isinstance(item, str) else item)
        for column in columns:
            value = record.get(column["name"])
            if column["kind"] == "numeric":
                if value is not None and not _finite(value):
                    raise ConfigError(f"{where}: {column['name']!r} is numeric and needs a finite number, got {value!r}")
                values[column["name"]].append(np.nan if value is None else float(value))
            elif column["kind"] == "multi":
                parts = [v.strip() for v in value.split("|")] if isinstance(value, str) else (value or [])
                if not isinstance(parts, list) or not all(isinstance(v, str) for v in parts):
                    raise ConfigError(f"{where}: {column['name']!r} takes a list of texts or '|'-separated text, got {value!r}")
                values[column["name"]].append([v for v in parts if v])
            else:
                if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                    raise ConfigError(f"{where}: {column['name']!r} takes a text value, got {value!r}")
                values[column["name"]].append(None if value is None or value == "" else str(value))
    if len({str(i) for i in ids}) < len(ids):
        raise ConfigError(f"{source}: an item appears twice")
    raw = np.asarray(ids, dtype=np.int64) if all(isinstance(i, int) for i in ids) else np.asarray([str(i) for i in ids], dtype=object)
    table_columns = [FeatureColumn(column["name"], column["kind"], values[column["name"]]) for column in columns]
    return FeatureTable("item", raw, table_columns, source)
