"""DataFrames in and out: pandas and polars DataFrames and pyarrow Tables.

**In.** A frame becomes Arrow columns without a Python loop and, where the dtypes allow, without
a copy: pandas through ``pa.Table.from_pandas(..., preserve_index=False)``, polars through its
``to_arrow()``, a pyarrow Table as it is. Only the columns that play a role are converted. The
frame's library is recognised by the frame's own module, so neither pandas nor polars is imported
to read a frame of the other. From there a frame is read like a file:

* columns are recognised by the same names as in files (``user``/``userId``/``user_id``...,
  see :data:`~mtrec.data.formats.COLUMN_ALIASES`) or named with ``user=``, ``item=``...; a
  frame whose column labels are all numbers (``pd.read_csv(..., header=None)``) is read by
  position, as a file without a header;
* ids follow :mod:`mtrec.data.ids` (integers as they are, text trimmed and never empty or holding
  a control character); whole-number floats, as pandas makes of an integer column that once held
  a missing value, are integers;
* :meth:`Interactions.from_frame <mtrec.data.interactions.Interactions.from_frame>` passes the
  columns of :func:`frame_columns` to :func:`~mtrec.data.building.interaction_fields`, which
  indexes the ids, checks the ratings and keeps the last of duplicate (user, item) pairs, as for
  files: the same data gives the same :class:`~mtrec.data.interactions.Interactions` from a frame
  as from a file.

A problem is a :class:`~mtrec.errors.DataError` naming the frame (``pandas DataFrame`` unless
``name`` is given), the row (counted from 1, as in the readers' messages: row 1 is
``frame.iloc[0]``) and the column.

**Out.** :func:`to_frame` gives an Arrow table as a pandas or polars DataFrame, or as it is. pandas
and polars are optional (``pip install "mtrec[frames]"``); asking for a library that is not
installed is a :class:`~mtrec.errors.ConfigError` naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtrec.data.formats import COLUMN_ALIASES, POSITIONAL_ROLES, Column, resolve_columns
from mtrec.data.metadata import ItemTable, item_table
from mtrec.data.parsing import parquet_ids
from mtrec.errors import ConfigError, DataError

#: What installs the optional frame libraries.
FRAMES_EXTRA = 'pip install "mtrec[frames]"'
#: What :func:`to_frame` can give: a pandas or polars DataFrame, or the Arrow table itself.
BACKENDS = ("pandas", "polars", "arrow")
#: The keyword that names each role's column, where it differs from the role.
_KEYWORDS = {"time": "timestamp"}
#: The columns of an items frame without named columns, by position.
_ITEM_POSITIONS = {"item": 0, "title": 1, "genres": 2}
# What pyarrow raises for a value it cannot convert.
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def frame_library(frame: Any) -> str:
    """``"pandas"``, ``"polars"`` or ``"arrow"``: which library ``frame`` is a table of.

    Recognised by the frame's module, so that neither pandas nor polars is imported here.

    Raises
    ------
    DataError
        For anything else (a dict, a Series, a polars LazyFrame...), naming its type.
    """
    if isinstance(frame, pa.Table):
        return "arrow"
    kind = type(frame)
    for base in kind.__mro__:  # a subclass's (geopandas') base class is the library's DataFrame
        library = base.__module__.partition(".")[0]
        if library in ("pandas", "polars") and base.__name__ == "DataFrame":
            return library
    raise DataError(f"expected a pandas DataFrame, a polars DataFrame or a pyarrow Table, got {kind.__module__}.{kind.__qualname__}")


def backend_library(backend: str) -> ModuleType | None:
    """The library of ``backend`` (pandas, polars; None for arrow), imported.

    Raises
    ------
    ConfigError
        For a backend other than those of :data:`BACKENDS`, or one whose library is not
        installed (naming the extra that installs it).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "arrow":
        return None
    try:
        return importlib.import_module(backend)
    except ImportError:
        raise ConfigError(f"{backend} is not installed: {FRAMES_EXTRA} (or pip install {backend})") from None


def to_frame(table: pa.Table, backend: str = "pandas") -> Any:
    """``table`` as a pandas DataFrame (the default), a polars DataFrame or, for ``"arrow"``, as it is.

    Raises
    ------
    ConfigError
        As :func:`backend_library`.
    """
    library = backend_library(backend)
    if library is None:
        return table
    return table.to_pandas() if backend == "pandas" else library.from_arrow(table)


def with_columns(frame: Any, columns: pa.Table) -> Any:
    """``frame`` (pandas, polars or Arrow) with the columns of ``columns`` added after its own: the
    same kind of frame, its rows in the same order."""
    library = frame_library(frame)
    if library == "pandas":
        # Arrays, not Series: assign would align a Series on the frame's index.
        return frame.assign(**{name: columns.column(name).to_numpy() for name in columns.column_names})
    if library == "polars":
        return frame.with_columns(backend_library("polars").from_arrow(columns).get_columns())
    for name in columns.column_names:
        frame = frame.append_column(name, columns.column(name))
    return frame


def column_labels(frame: Any) -> list[str]:
    """The column labels of a pandas or polars DataFrame or an Arrow table, as text."""
    return [str(label) for label in _labels(frame, frame_library(frame))]


def _labels(frame: Any, library: str) -> list[Any]:
    return list(frame.column_names if library == "arrow" else frame.columns)


def frame_table(
    frame: Any,
    wanted: dict[str, Column | None],
    required: tuple[str, ...],
    name: str | None = None,
    positions: Mapping[str, int] | None = None,
) -> tuple[str, pa.Table, dict[str, str]]:
    """The columns of ``frame`` that play the roles of ``wanted``, as an Arrow table.

    Parameters
    ----------
    frame:
        A pandas or polars DataFrame or a pyarrow Table.
    wanted:
        Per role (``user``, ``item``, ``rating``, ``time``, ``title``, ``genres``), the column's
        label or position, or ``None`` to recognise it by name (by position in ``positions``
        where no label is text).
    required:
        The roles that must be found.
    name:
        What messages call the frame; by default its kind (``pandas DataFrame``).
    positions:
        Where each role is in a frame without text labels; by default user, item, rating, time.

    Returns
    -------
    tuple
        The frame's name in messages, the table (its columns named by role's column, as text)
        and the column of each role found.

    Raises
    ------
    DataError
        For a frame of another kind, a missing or repeated column, a column that is not of one
        type (a pandas column mixing numbers and text), naming it and its row, or no rows.
    """
    library = frame_library(frame)
    source = name or ("Arrow table" if library == "arrow" else f"{library} DataFrame")
    labels = _labels(frame, library)
    names = [str(label) for label in labels]
    if not any(isinstance(label, str) for label in labels):
        # Numbered columns, as pd.read_csv(..., header=None) makes: read by position, like a file without a header.
        places = dict(zip(POSITIONAL_ROLES, range(len(POSITIONAL_ROLES)))) if positions is None else positions
        wanted = {role: _by_position(spec, places.get(role), len(names)) for role, spec in wanted.items()}
    roles = resolve_columns(source, names, wanted, required=())
    for role in required:
        if role not in roles:
            aliases = "/".join(COLUMN_ALIASES[role])
            found = ", ".join(map(repr, names))
            raise DataError(
                f"{source}: no {role} column: none of the columns ({found}) is called {aliases}; name it with {_KEYWORDS.get(role, role)}="
            )
    for column in roles.values():
        if names.count(column) > 1:
            raise DataError(f"{source}: {names.count(column)} columns are called {column!r}")
    chosen = {column: labels[names.index(column)] for column in roles.values()}
    table = pa.table({column: _arrow_column(frame, library, label, source) for column, label in chosen.items()})
    if table.num_rows == 0:
        raise DataError(f"{source}: no rows")
    return source, table, roles


def _by_position(spec: Column | None, position: int | None, width: int) -> Column | None:
    """``spec`` if given, else the role's usual ``position`` where the frame has that many columns."""
    if spec is None and position is not None and position < width:
        return position
    return spec


def _arrow_column(frame: Any, library: str, label: Any, source: str) -> pa.ChunkedArray:
    """One column of ``frame`` as Arrow: zero-copy where its dtype allows."""
    if library == "arrow":
        return frame.column(label)
    if library == "polars":
        return frame.select(label).to_arrow().column(0)
    try:
        return pa.Table.from_pandas(frame, columns=[label], preserve_index=False).column(0)
    except _ARROW_ERRORS as error:
        raise DataError(_mixed_types(frame[label], source, str(label), error)) from None


def _mixed_types(series: Any, source: str, column: str, error: Exception) -> str:
    """Why pyarrow could not convert a pandas column: the first row whose value's type differs from
    the first value's (a scan in Python, only once conversion has failed)."""
    values = series.tolist()
    present = [row for row, missing in enumerate(series.isna().tolist()) if not missing]
    first = type(values[present[0]]) if present else None
    row = next((row for row in present if type(values[row]) is not first), None)
    if row is None:
        return f"{source}: column {column!r} cannot be read: {error}"
    return (
        f"{source}, row {row + 1}: {values[row]!r} is {type(values[row]).__name__}, but row {present[0] + 1} "
        f"holds {first.__name__} (column {column!r}): a column must hold one type"
    )


def frame_columns(source: str, table: pa.Table, roles: dict[str, str]) -> dict[str, pa.ChunkedArray]:
    """The ratings columns of a frame, typed and checked: ids as :func:`~mtrec.data.parsing.parquet_ids`
    gives them, ratings as float32, times as they are (:func:`~mtrec.data.parsing.seconds` converts them).

    Raises
    ------
    DataError
        For an id column that holds neither integers nor text, a float id that is not a whole
        number, a missing value, or a rating column that is not numbers, naming the row.
    """
    columns = {}
    for role, name in roles.items():
        column = table.column(name)
        if role in ("user", "item"):
            columns[role] = _ids(source, column, role, name)
            continue
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{source}, row {row + 1}: empty {role} (column {name!r})")
        columns[role] = _ratings(source, column, name) if role == "rating" else _times(source, column, name)
    return columns


def _ids(source: str, column: pa.ChunkedArray, role: str, name: str) -> pa.ChunkedArray:
    """An id column checked as :func:`~mtrec.data.parsing.parquet_ids` checks a Parquet file's, once
    it holds integers or text."""
    return parquet_ids(source, _integer_or_text(source, column, role, name), role, name)


def _integer_or_text(source: str, column: pa.ChunkedArray, role: str, name: str) -> pa.ChunkedArray:
    """An id column as integers or text (decoded from a category); whole-number floats as int64."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_floating(kind) and not column.null_count:  # missing ids are named by parquet_ids
        whole = pc.equal(pc.floor(column), column)
        if not pc.all(whole).as_py():
            row = int(np.flatnonzero(~whole.to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{source}, row {row + 1}: {role} id {column[row].as_py()} is not a whole number (column {name!r})")
        return column.cast(pa.int64())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or _is_text(kind):
        return column
    raise DataError(f"{source}: the {role} ids (column {name!r}) are {kind}; ids must be integers or text")


def _ratings(source: str, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Ratings as float32, from numbers or from text that holds numbers."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or _is_text(kind)):
        raise DataError(f"{source}: the ratings (column {name!r}) are {kind}; ratings must be numbers")
    try:
        return column.cast(pa.float32())
    except _ARROW_ERRORS:
        pass
    # Text that is not a number: the first such row (a scan in Python, only once the cast has failed).
    for row, value in enumerate(column.to_pylist()):
        try:
            float(value)
        except ValueError:
            raise DataError(f"{source}, row {row + 1}: rating {value!r} is not a number (column {name!r})") from None
    raise DataError(f"{source}: the ratings (column {name!r}) cannot be read as numbers")


def _times(source: str, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Times of a kind :func:`~mtrec.data.parsing.seconds` reads: numbers, timestamps, dates or text."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    readable = (pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp, pa.types.is_date, _is_text)
    if not any(check(kind) for check in readable):
        raise DataError(
            f"{source}: the times (column {name!r}) are {kind}; times must be seconds since 1970, timestamps, dates or ISO date/time text"
        )
    return column


def _is_text(kind: pa.DataType) -> bool:
    # polars may export text as string_view, which pyarrow < 16 has no predicate for.
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"


def read_items_frame(
    frame: Any,
    item: Column | None = None,
    title: Column | None = None,
    genres: Column | None = None,
    name: str | None = None,
) -> ItemTable:
    """Item descriptions from a frame: an id and a title column, optionally genres.

    The frame's counterpart of :func:`~mtrec.data.metadata.read_items_file`: columns are
    recognised by name (``movieId``/``item_id``..., ``title``/``name``, ``genres``) or named; in
    a frame whose labels are all numbers they are id, title[, genres]. Genres are a list per item
    (a list column of pandas or polars) or text separated by ``|`` (``"Crime|Drama"``). Ids follow
    the same rules as in :meth:`~mtrec.data.interactions.Interactions.from_frame`; a missing title
    is empty.

    Raises
    ------
    DataError
        For a missing column, an empty frame, or a missing or malformed id, naming its row.
    """
    wanted = {"item": item, "title": title, "genres": genres}
    source, table, roles = frame_table(frame, wanted, required=("item", "title"), name=name, positions=_ITEM_POSITIONS)
    return item_table(table, roles, _ids(source, table.column(roles["item"]), "item", roles["item"]))
