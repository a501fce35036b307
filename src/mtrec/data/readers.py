"""Readers for rating files: CSV, TSV, MovieLens ``::`` and Parquet, into :class:`Interactions`.

Parsing is vectorised (``pyarrow.csv``, multithreaded and typed). Only when the fast parse
fails, or a value is out of bounds, is the file scanned line by line, slowly, to name the
first bad line in the error.

Raw ids may be integers or any strings, each column typed on its own: integer ids stay int64
whatever the other columns hold. The unique raw ids, in natural order, become the contiguous
indices 0..n-1 and are kept in ``user_ids`` / ``item_ids``.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtrec.data.interactions import Interactions, ItemMetadata
from mtrec.errors import ConfigError, DataError

#: Column names recognised for each role, compared lower-case with ``_``, ``-`` and spaces removed.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid"),
    "item": ("item", "itemid", "movieid", "iid", "movie"),
    "rating": ("rating", "score", "stars"),
    "time": ("timestamp", "time", "ts", "date"),
    "title": ("title", "name", "movietitle", "itemtitle"),
    "genres": ("genres", "genre"),
}

#: Columns of a file without a header, by position.
POSITIONAL_ROLES = ("user", "item", "rating", "time")

PARQUET_SUFFIXES = (".parquet", ".pq")
#: Delimiters tried, in this order, when neither the extension nor ``sep`` decides.
SNIFFED_DELIMITERS = ("::", "\t", ",", ";", "|")

Column = Union[str, int]

# Bytes read per block by pyarrow: larger blocks parse faster on big files.
_BLOCK_SIZE = 16 * 2**20

# What pyarrow raises for a value it cannot parse or convert.
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

# Bytes that are not valid UTF-8, as decoded with errors="surrogateescape".
_NOT_UTF8 = re.compile("[\udc80-\udcff]")

_TIME_KINDS = {"seconds": "seconds since 1970", "date": "an ISO date/time"}


@dataclass(frozen=True)
class TextFormat:
    """How a delimited text file is laid out.

    Parameters
    ----------
    delimiter:
        Field separator; ``"::"`` for the MovieLens ``.dat`` files.
    columns:
        Names of all columns, from the header or positional (``"0"``, ``"1"``, ...).
    header:
        Whether the first line holds the column names.
    quoted:
        Whether fields may be quoted with ``"`` (CSV); MovieLens tab and ``::`` files are not.
    """

    delimiter: str
    columns: tuple[str, ...]
    header: bool
    quoted: bool = True

    @property
    def arrow_columns(self) -> list[str]:
        """The column names pyarrow sees: ``::`` is read as ``:`` with empty columns between."""
        if self.delimiter != "::":
            return list(self.columns)
        names = []
        for index, name in enumerate(self.columns):
            if index:
                names.append(f"::{index}")
            names.append(name)
        return names

    @property
    def separator_columns(self) -> list[str]:
        """The empty columns between the two colons of ``::``, which must stay empty."""
        return [name for name in self.arrow_columns if name.startswith("::")]


def load_ratings_file(
    path: str | os.PathLike,
    user_col: Column | None = None,
    item_col: Column | None = None,
    rating_col: Column | None = None,
    time_col: Column | None = None,
    items_path: str | os.PathLike | None = None,
    rating_scale: tuple[float, float] | None = None,
    sep: str | None = None,
) -> Interactions:
    """Load a user's own ratings from CSV, TSV, ``::``-separated text or Parquet.

    Parameters
    ----------
    path:
        The ratings file. ``.parquet``/``.pq`` is read as Parquet; ``.csv`` as comma- and
        ``.tsv``/``.tab`` as tab-separated; anything else by sniffing its first line.
    user_col, item_col, rating_col, time_col:
        Column names (or 0-based positions). By default they are recognised from the
        header (``user``/``userId``/``user_id``/``uid``; ``item``/``itemId``/``item_id``/
        ``movieId``/``movie_id``/``iid``; ``rating``/``score``/``stars``;
        ``timestamp``/``time``/``ts``/``date``); a file without a header is read as
        user, item[, rating[, timestamp]].
    items_path:
        An optional file of item descriptions: item id, title and optionally genres
        (``|``-separated), with the same column recognition.
    rating_scale:
        ``(lowest, highest)`` rating allowed; a rating outside it is an error. By default
        the lowest and highest rating in the file.
    sep:
        Field separator, overriding the extension and sniffing: one character (``","``,
        ``"\\t"``...) or ``"::"``.

    Returns
    -------
    Interactions
        Without a rating column, ``ratings`` is ``None`` (implicit data).

    Raises
    ------
    ConfigError
        For a ``sep`` that is neither one character nor ``"::"``.
    DataError
        Naming the file, the line (or Parquet row) and the problem: a malformed line, a
        non-numeric rating, an empty id, a rating outside ``rating_scale``, a time that is
        neither seconds nor an ISO date/time, text that is not UTF-8, an empty or
        header-only file, an unknown column.

    Notes
    -----
    Duplicate (user, item) pairs keep the last by time (by file order without time), with
    a :class:`UserWarning` giving their count.
    """
    path = Path(path)
    # Mistakes in the other arguments are named before a long read, not after it.
    for given in (path, items_path):
        if given is not None and not Path(given).is_file():
            raise DataError(f"{given}: no such file")
    if rating_scale is not None and not float(rating_scale[0]) < float(rating_scale[1]):
        raise DataError(f"rating scale must have lowest < highest, got {rating_scale[0]:g}..{rating_scale[1]:g}")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "time": time_col}
    if path.suffix.lower() in PARQUET_SUFFIXES:
        columns = _read_parquet(path, wanted)
    else:
        text_format = sniff_format(path, sep, [c for c in wanted.values() if isinstance(c, str)])
        roles = resolve_columns(path, text_format.columns, wanted, required=("user", "item"), header=text_format.header)
        columns = read_text_columns(path, text_format, roles, rating_scale)
    data = build_interactions(path, columns, rating_scale=rating_scale, name=path.name)
    if items_path is not None:
        data.item_metadata = align_metadata(data.item_ids, read_items_file(items_path))
    return data


# ---------------------------------------------------------------------------------------------
# Format and column detection


def _first_lines(path: Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines, decoded leniently (enough to sniff a format)."""
    lines = []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for line in handle:
            line = line.rstrip("\r\n").lstrip("\ufeff")
            if line.strip():
                lines.append(line)
                if len(lines) == count:
                    break
    return lines


def _split_line(line: str, delimiter: str, quoted: bool) -> list[str]:
    if delimiter == "::" or not quoted:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def sniff_format(path: Path, sep: str | None = None, column_names: list[str] = ()) -> TextFormat:
    """Decide the delimiter and whether the first line is a header.

    The first line is a header when one of its fields is a known column name (or one of
    ``column_names``), or when it has fewer numeric fields than the second line. A ``sep``
    that is neither one character nor ``"::"`` is a :class:`ConfigError`.
    """
    if sep is not None and len(sep) != 1 and sep != "::":
        raise ConfigError(f"sep must be one character or '::', got {sep!r}")
    lines = _first_lines(path, 2)
    if not lines:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if sep is None:
        sep = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(suffix)
    if sep is None:
        sep = next((d for d in SNIFFED_DELIMITERS if d in lines[0]), None)
        if sep is None:
            raise DataError(
                f"{path}, line 1: cannot tell the field separator (tried tab, '::', ',', ';', '|'); "
                "pass it with sep= (--sep)"
            )
    quoted = sep == "," or sep == ";"
    first = [field.strip() for field in _split_line(lines[0], sep, quoted)]
    known = {alias for aliases in COLUMN_ALIASES.values() for alias in aliases}
    known |= {_normalise(name) for name in column_names}
    header = any(_normalise(field) in known for field in first)
    if not header and len(lines) > 1:
        second = _split_line(lines[1], sep, quoted)
        header = sum(map(_is_number, first)) < sum(map(_is_number, second))
    names = tuple(first) if header else tuple(str(i) for i in range(len(first)))
    if header and len(set(names)) != len(names):
        raise DataError(f"{path}, line 1: the header repeats a column name: {', '.join(names)}")
    return TextFormat(delimiter=sep, columns=names, header=header, quoted=quoted)


def resolve_columns(
    path: Path,
    columns: tuple[str, ...] | list[str],
    wanted: dict[str, Column | None],
    required: tuple[str, ...],
    header: bool = True,
) -> dict[str, str]:
    """Map each role (user, item, ...) to a column of the file.

    Explicit names must exist; other roles are recognised by their usual names (or, without
    a header, by position). Roles in ``required`` must be found.
    """
    columns = list(columns)
    found = ", ".join(repr(c) for c in columns)
    roles = {
        role: _explicit_column(path, columns, role, spec, found) for role, spec in wanted.items() if spec is not None
    }
    for role in [role for role in wanted if role not in roles]:
        # Recognised columns (by name, or by position without a header) not already named.
        if header:
            candidates = [c for c in columns if _normalise(c) in COLUMN_ALIASES[role]]
        else:
            position = POSITIONAL_ROLES.index(role) if role in POSITIONAL_ROLES else len(columns)
            candidates = columns[position : position + 1]
        match = next((c for c in candidates if c not in roles.values()), None)
        if match is not None:
            roles[role] = match
    for role in required:
        if role not in roles:
            aliases = "/".join(COLUMN_ALIASES[role])
            raise DataError(
                f"{path}: no {role} column: none of the columns found ({found}) is called "
                f"{aliases}; name it with {role}_col= (--{role}-col)"
            )
    used = list(roles.values())
    if len(set(used)) != len(used):
        raise DataError(f"{path}: one column is used for two roles: {roles}")
    return roles


def _explicit_column(path: Path, columns: list[str], role: str, spec: Column, found: str) -> str:
    if spec in columns:
        return str(spec)
    position = spec if isinstance(spec, int) else int(spec) if str(spec).isdigit() else None
    if position is not None and 0 <= position < len(columns):
        return columns[position]
    raise DataError(f"{path}: no column {spec!r} for the {role}; the columns found are {found}")


# ---------------------------------------------------------------------------------------------
# Fast reading


def read_text_columns(
    path: Path,
    text_format: TextFormat,
    roles: dict[str, str],
    rating_scale: tuple[float, float] | None = None,
) -> dict[str, pa.ChunkedArray]:
    """Read the columns named in ``roles`` with pyarrow, typed; the time as int64 seconds.

    Ids and times are read as int64 first. If that fails, the file is read again with ids
    as strings and the time's type inferred, and each id column holding only integers is
    turned back into int64, so that no column's type depends on another's. If that fails
    too, or a value is empty, out of scale or not a time, the file is scanned for the first
    bad line.
    """
    try:
        table = _arrow_read(path, text_format, roles, typed=True)
    except _ARROW_ERRORS:
        try:
            table = _arrow_read(path, text_format, roles, typed=False)
        except _ARROW_ERRORS as error:
            raise _bad_line_error(path, text_format, roles, rating_scale, str(error)) from None
    if table.num_rows == 0:
        raise DataError(
            f"{path}: no data rows after the header" if text_format.header else f"{path}: the file is empty"
        )
    columns = {role: table.column(name) for role, name in roles.items()}
    if any(column.null_count for column in columns.values()) or _has_empty_ids(columns):
        raise _bad_line_error(path, text_format, roles, rating_scale, "an empty field")
    if "rating" in columns and not _ratings_valid(columns["rating"], rating_scale):
        raise _bad_line_error(path, text_format, roles, rating_scale, "a rating that is not finite or out of scale")
    for role in ("user", "item"):
        columns[role] = _integer_ids(columns[role])
    if "time" in columns:
        try:
            columns["time"] = _seconds(columns["time"])
        except _ARROW_ERRORS:
            raise _bad_line_error(
                path, text_format, roles, rating_scale, "a time that is neither seconds since 1970 nor an ISO date/time"
            ) from None
    return columns


def _integer_ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """String ids as int64 where every one is an integer, as the typed read gives them."""
    if not pa.types.is_dictionary(column.type):
        return column
    try:
        chunks = [
            pc.utf8_trim_whitespace(chunk.dictionary).cast(pa.int64()).take(chunk.indices) for chunk in column.chunks
        ]
    except pa.ArrowInvalid:
        return column
    return pa.chunked_array(chunks, pa.int64())


def _ratings_valid(ratings: pa.ChunkedArray, rating_scale: tuple[float, float] | None) -> bool:
    if not pc.all(pc.is_finite(ratings)).as_py():
        return False
    if rating_scale is None:
        return True
    bounds = pc.min_max(ratings)
    return rating_scale[0] <= bounds["min"].as_py() and bounds["max"].as_py() <= rating_scale[1]


def _arrow_read(path: Path, text_format: TextFormat, roles: dict[str, str], typed: bool) -> pa.Table:
    """Ids and time as int64 when ``typed``, else ids as strings and the time's type inferred."""
    column_types = {}
    for role, name in roles.items():
        if role in ("user", "item"):
            column_types[name] = pa.int64() if typed else pa.dictionary(pa.int32(), pa.string())
        elif role == "rating":
            column_types[name] = pa.float32()
        elif role == "time" and typed:
            column_types[name] = pa.int64()
    # The empty columns between the colons of "::" are typed null: anything in them fails.
    column_types.update({name: pa.null() for name in text_format.separator_columns})
    delimiter = ":" if text_format.delimiter == "::" else text_format.delimiter
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(
            column_names=text_format.arrow_columns,
            skip_rows=1 if text_format.header else 0,
            block_size=_BLOCK_SIZE,
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if text_format.quoted else False),
        convert_options=pacsv.ConvertOptions(
            column_types=column_types,
            include_columns=list(roles.values()) + text_format.separator_columns,
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _has_empty_ids(columns: dict[str, pa.ChunkedArray]) -> bool:
    for role in ("user", "item"):
        column = columns[role]
        if pa.types.is_dictionary(column.type):
            for chunk in column.chunks:
                if len(chunk.dictionary) and pc.any(pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "")).as_py():
                    return True
    return False


def _bad_line_error(
    path: Path,
    text_format: TextFormat,
    roles: dict[str, str],
    rating_scale: tuple[float, float] | None,
    fallback: str,
) -> DataError:
    """Scan the file line by line (slow: only when the fast parse failed) for the first bad line."""
    found = first_bad_line(path, text_format, roles, rating_scale)
    if found is None:
        return DataError(f"{path}: cannot read the file: {fallback}")
    line_number, problem = found
    return DataError(f"{path}, line {line_number}: {problem}")


def first_bad_line(
    path: Path,
    text_format: TextFormat,
    roles: dict[str, str],
    rating_scale: tuple[float, float] | None = None,
) -> tuple[int, str] | None:
    """The number and problem of the first malformed line, or ``None`` if every line is fine.

    Lines are numbered from 1, the header included. The time column must hold one kind of
    time throughout: the kind of the first data line.
    """
    positions = {role: text_format.columns.index(name) for role, name in roles.items()}
    expected = len(text_format.columns)
    shown = "'::'" if text_format.delimiter == "::" else repr(text_format.delimiter)
    time_kind = None
    # Bytes that are not UTF-8 survive decoding as lone surrogates, for _field_problem to name.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if text_format.delimiter == "::" or not text_format.quoted:
            rows = ((number, line.rstrip("\r\n").split(text_format.delimiter)) for number, line in enumerate(handle, 1))
        else:
            reader = csv.reader(handle, delimiter=text_format.delimiter)
            rows = ((reader.line_num, fields) for fields in reader)
        for number, fields in rows:
            if number == 1 and text_format.header:
                continue
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != expected:
                return number, f"expected {expected} fields separated by {shown}, found {len(fields)}"
            problem = _field_problem(fields, positions, rating_scale)
            if problem is None and "time" in positions:
                text = fields[positions["time"]]
                kind = _time_kind(text)
                time_kind = time_kind or kind
                if kind is None:
                    problem = f"time {text!r} is neither seconds since 1970 nor an ISO date/time"
                elif kind != time_kind:
                    problem = f"time {text!r} is {_TIME_KINDS[kind]}, but earlier lines hold {_TIME_KINDS[time_kind]}"
            if problem:
                return number, problem
    return None


def _time_kind(text: str) -> str | None:
    """``"seconds"`` for a finite number, ``"date"`` for an ISO date/time, else ``None``."""
    try:
        return "seconds" if math.isfinite(float(text)) else None
    except ValueError:
        pass
    try:
        _seconds(pa.chunked_array([[text]]))
    except _ARROW_ERRORS:
        return None
    return "date"


def _field_problem(
    fields: list[str], positions: dict[str, int], rating_scale: tuple[float, float] | None
) -> str | None:
    for role, position in positions.items():
        if _NOT_UTF8.search(fields[position]):
            name = f"{role} id" if role in ("user", "item") else role
            raw = fields[position].encode("utf-8", "surrogateescape")
            return f"{name} {raw!r} is not valid UTF-8 text; save the file as UTF-8"
    for role in ("user", "item"):
        if not fields[positions[role]].strip():
            return f"empty {role} id"
    if "rating" in positions:
        text = fields[positions["rating"]]
        try:
            rating = float(text)
        except ValueError:
            return f"rating {text!r} is not a number"
        if not math.isfinite(rating):
            return f"rating {text!r} is not a finite number"
        if rating_scale is not None and not rating_scale[0] <= rating <= rating_scale[1]:
            return f"rating {text.strip()} is outside the rating scale {rating_scale[0]:g}..{rating_scale[1]:g}"
    if "time" in positions and not fields[positions["time"]].strip():
        return "empty time"
    return None


def _read_parquet(path: Path, wanted: dict[str, Column | None]) -> dict[str, pa.ChunkedArray]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    roles = resolve_columns(path, schema.names, wanted, required=("user", "item"))
    table = pq.read_table(path, columns=list(roles.values()))
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    columns = {role: table.column(name) for role, name in roles.items()}
    for role, column in columns.items():
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}, row {row + 1}: empty {role} (column {roles[role]!r})")
        if role in ("user", "item") and not pa.types.is_integer(column.type):
            text = column.cast(pa.string())
            empty = pc.equal(pc.utf8_trim_whitespace(text), "")
            if pc.any(empty).as_py():
                row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{path}, row {row + 1}: empty {role} id (column {roles[role]!r})")
            columns[role] = pc.dictionary_encode(text)
    if "rating" in columns:
        try:
            columns["rating"] = columns["rating"].cast(pa.float32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(f"{path}: rating column {roles['rating']!r} is not numeric: {error}") from None
    return columns


# ---------------------------------------------------------------------------------------------
# From columns to Interactions


def index_ids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous indices (int32) of raw ids, and the unique raw ids in natural order they stand for.

    Integer ids give an int64 id array; string ids an object array of ``str``.
    """
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if pa.types.is_dictionary(column.type):
        return _index_dictionary(column)
    raw = column.cast(pa.int64()).to_numpy()
    low, high = int(raw.min()), int(raw.max())
    if low >= 0 and high < 4 * len(raw) + 2**20:
        # Dense small ids (the usual case): a presence table, O(n) instead of sorting.
        present = np.zeros(high + 1, dtype=bool)
        present[raw] = True
        ids = np.flatnonzero(present)
        rank = np.cumsum(present, dtype=np.int64).astype(np.int32) - 1
        return rank[raw], ids.astype(np.int64)
    ids, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int32), ids


def natural_key(text: str) -> tuple:
    """Sort key comparing the digit runs of ``text`` as numbers: "m9" < "m10"."""
    parts = re.split(r"(\d+)", text)
    return (tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), text)


def _index_dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    values = np.concatenate([chunk.dictionary.to_numpy(zero_copy_only=False).astype(object) for chunk in chunks])
    ids, value_rank = np.unique(values, return_inverse=True)
    # Natural order ("u2" before "u10"): string ids that carry numbers index like the numbers,
    # so the same data keyed "196" or "user-196" gets the same indices as integer ids.
    order = np.array(sorted(range(len(ids)), key=lambda k: natural_key(ids[k])), dtype=np.int64)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    ids, value_rank = ids[order], rank[value_rank]
    offsets = np.cumsum([0] + [len(chunk.dictionary) for chunk in chunks])
    index = np.concatenate(
        [value_rank[offset + chunk.indices.to_numpy(zero_copy_only=False)] for offset, chunk in zip(offsets, chunks)]
    )
    return index.astype(np.int32), ids.astype(object)


def _seconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Times as int64 seconds since 1970, from integers, floats, dates, timestamps or ISO strings.

    Fractions of a second are dropped. A value that is none of these raises pyarrow's error
    (``ArrowInvalid``...).
    """
    kind = column.type
    if pa.types.is_integer(kind):
        return column.cast(pa.int64())
    if pa.types.is_floating(kind):
        return pc.floor(column).cast(pa.int64())
    if pa.types.is_dictionary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column.cast(pa.string())
        try:
            column = text.cast(pa.timestamp("ns"))
        except pa.ArrowInvalid:
            # ISO times with a zone offset ("Z", "+01:00") parse only as zoned times.
            column = text.cast(pa.timestamp("ns", tz="UTC"))
    return column.cast(pa.timestamp("s"), safe=False).cast(pa.int64())


def _timestamps(path: Path, column: pa.ChunkedArray) -> np.ndarray:
    """:func:`_seconds` as numpy; a :class:`DataError` naming the first row that is not a time."""
    try:
        return _seconds(column).to_numpy()
    except _ARROW_ERRORS:
        pass
    # Bisect on prefixes (each conversion vectorised): prefix ``low`` converts, prefix ``high`` fails.
    low, high = 0, len(column)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            _seconds(column.slice(0, middle))
            low = middle
        except _ARROW_ERRORS:
            high = middle
    value = column[low].as_py()
    raise DataError(f"{path}, row {low + 1}: time {value!r} is neither seconds since 1970 nor an ISO date/time")


def build_interactions(
    path: Path | str,
    columns: dict[str, pa.ChunkedArray],
    rating_scale: tuple[float, float] | None = None,
    name: str = "",
) -> Interactions:
    """Index the raw ids, check the ratings and drop duplicate pairs.

    ``columns`` maps ``user``, ``item`` and optionally ``rating``, ``time`` to columns.
    """
    users, user_ids = index_ids(columns.pop("user"))
    items, item_ids = index_ids(columns.pop("item"))
    ratings = timestamps = None
    if "rating" in columns:
        ratings = columns.pop("rating").to_numpy().astype(np.float32, copy=False)
        rating_scale = _check_scale(path, ratings, rating_scale)
    if "time" in columns:
        timestamps = _timestamps(Path(path), columns.pop("time"))
    # Freed arrow buffers stay in pyarrow's pool unless released: they would double the peak.
    pa.default_memory_pool().release_unused()
    keep = _last_of_duplicates(path, users, items, len(item_ids), timestamps)
    if keep is not None:
        users, items = users[keep], items[keep]
        ratings = None if ratings is None else ratings[keep]
        timestamps = None if timestamps is None else timestamps[keep]
    return Interactions(
        users=users,
        items=items,
        ratings=ratings,
        timestamps=timestamps,
        num_users=len(user_ids),
        num_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        rating_scale=rating_scale,
        name=name,
    )


def _check_scale(
    path: Path | str, ratings: np.ndarray, rating_scale: tuple[float, float] | None
) -> tuple[float, float]:
    """The rating scale: the declared one (every rating must lie in it) or the observed range.

    Text files are checked, with line numbers, while reading; this catches other sources.
    """
    if not np.isfinite(ratings).all():
        row = int(np.flatnonzero(~np.isfinite(ratings))[0])
        raise DataError(f"{path}, row {row + 1}: rating {ratings[row]} is not a finite number")
    if rating_scale is None:
        return float(ratings.min()), float(ratings.max())
    low, high = float(rating_scale[0]), float(rating_scale[1])
    if not low < high:
        raise DataError(f"rating scale must have lowest < highest, got {low:g}..{high:g}")
    outside = (ratings < low) | (ratings > high)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{path}, row {row + 1}: rating {ratings[row]:g} is outside the rating scale {low:g}..{high:g} "
            f"({int(outside.sum())} ratings are)"
        )
    return low, high


def _pair_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """One int64 per (user, item) pair, built in place (no temporaries on 25M rows)."""
    keys = users.astype(np.int64)
    keys *= num_items
    keys += items
    return keys


def _last_of_duplicates(
    path: Path | str, users: np.ndarray, items: np.ndarray, num_items: int, timestamps: np.ndarray | None
) -> np.ndarray | None:
    """Positions to keep so each (user, item) pair appears once, the last by time then file order.

    ``None`` when there are no duplicates (the usual case, checked with one in-place sort).
    """
    keys = _pair_keys(users, items, num_items)
    keys.sort()
    duplicates = int(np.count_nonzero(keys[1:] == keys[:-1]))
    if not duplicates:
        return None
    keys = _pair_keys(users, items, num_items)
    # lexsort is stable: within a key and time, file order decides, so the last row wins.
    order = np.lexsort((keys,) if timestamps is None else (timestamps, keys))
    sorted_keys = keys[order]
    last = np.empty(len(keys), dtype=bool)
    last[-1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=last[:-1])
    keep = np.zeros(len(keys), dtype=bool)
    keep[order[last]] = True
    rule = "the last by time" if timestamps is not None else "the last in the file"
    warnings.warn(f"{path}: {duplicates} duplicate (user, item) ratings dropped, keeping {rule}", stacklevel=3)
    return keep


# ---------------------------------------------------------------------------------------------
# Item descriptions


@dataclass
class ItemTable:
    """Item descriptions read from a file, in file order.

    Parameters
    ----------
    ids:
        Raw item ids (int64 or object ``str``).
    metadata:
        Title, year and genres of each, aligned with ``ids``.
    """

    ids: np.ndarray
    metadata: ItemMetadata


_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$")


def year_from_title(title: str, date: str = "") -> int | None:
    """The year in a title's trailing ``(1995)``, else the last four digits of ``date``."""
    match = _YEAR_IN_TITLE.search(title)
    if match:
        return int(match.group(1))
    match = re.search(r"(\d{4})\s*$", date)
    return int(match.group(1)) if match else None


def read_items_file(path: str | os.PathLike, sep: str | None = None) -> ItemTable:
    """Read an items file: an id and a title column, optionally genres (``|``-separated).

    Columns are recognised by name (``movieId``/``item_id``..., ``title``/``name``,
    ``genres``); without a header they are id, title[, genres].
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    wanted = {"item": None, "title": None, "genres": None}
    if path.suffix.lower() in PARQUET_SUFFIXES:
        table = pq.read_table(path)
        roles = resolve_columns(path, table.schema.names, wanted, required=("item", "title"))
    else:
        text_format = sniff_format(path, sep)
        positions = {"item": 0, "title": 1, "genres": 2}
        if text_format.header:
            roles = resolve_columns(path, text_format.columns, wanted, required=("item", "title"))
        else:
            roles = {role: text_format.columns[i] for role, i in positions.items() if i < len(text_format.columns)}
        table = _read_items_text(path, text_format, roles)
    if table.num_rows == 0:
        raise DataError(f"{path}: the items file has no rows")
    ids = _raw_ids(table.column(roles["item"]))
    titles = [str(t).strip() if t is not None else "" for t in table.column(roles["title"]).to_pylist()]
    if "genres" in roles:
        genres = [split_genres(g) for g in table.column(roles["genres"]).to_pylist()]
    else:
        genres = [[] for _ in titles]
    years = [year_from_title(title) for title in titles]
    return ItemTable(ids=ids, metadata=ItemMetadata(titles=titles, years=years, genres=genres))


def _read_items_text(path: Path, text_format: TextFormat, roles: dict[str, str]) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=list(text_format.columns), skip_rows=1 if text_format.header else 0
            ),
            parse_options=pacsv.ParseOptions(delimiter=text_format.delimiter, quote_char='"'),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(roles.values()), column_types={name: pa.string() for name in roles.values()}
            ),
        )
    except pa.ArrowInvalid as error:
        raise DataError(f"{path}: cannot read the items file: {error}") from None


def _raw_ids(column: pa.ChunkedArray) -> np.ndarray:
    """Raw ids as int64 where they are all integers, else as ``str``."""
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    text = column.cast(pa.string())
    try:
        return text.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        return np.asarray(text.to_pylist(), dtype=object)


def split_genres(value: str | None) -> list[str]:
    """``"Crime|Drama"`` as ``["Crime", "Drama"]``; MovieLens's ``(no genres listed)`` as none."""
    if not value or value == "(no genres listed)":
        return []
    return [genre for genre in value.split("|") if genre]


def align_metadata(item_ids: np.ndarray, table: ItemTable) -> ItemMetadata:
    """Metadata aligned with ``item_ids``; items missing from ``table`` get their id as title."""
    known, wanted = table.ids, item_ids
    if known.dtype == object or wanted.dtype == object:
        known, wanted = known.astype(str), wanted.astype(str)
    order = np.argsort(known, kind="stable")
    slots = np.minimum(np.searchsorted(known[order], wanted), len(known) - 1)
    found = known[order][slots] == wanted
    source = order[slots]
    meta = table.metadata
    titles = [meta.titles[s] if f else str(i) for s, f, i in zip(source.tolist(), found.tolist(), item_ids.tolist())]
    years = [meta.years[s] if f else None for s, f in zip(source.tolist(), found.tolist())]
    genres = [list(meta.genres[s]) if f else [] for s, f in zip(source.tolist(), found.tolist())]
    return ItemMetadata(titles=titles, years=years, genres=genres)
