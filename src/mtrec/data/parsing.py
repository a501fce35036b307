"""Parsing rating files into typed columns: text with pyarrow (fast, multithreaded), Parquet,
and, when the fast parse fails, a line-by-line scan that names the first bad line.

Raw ids may be integers or any strings, each column typed on its own: integer ids stay int64
whatever the other columns hold; text ids follow :mod:`mtrec.data.ids` (trimmed; never empty or
holding a control character). Times become int64 seconds since 1970. Files are opened by
:mod:`mtrec.data.files`: compressed or not, with or without a byte-order mark.
"""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path
from typing import Iterator, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtrec.data.files import compression_of, open_binary, open_text, seekable, undecodable
from mtrec.data.formats import Column, TextFormat, resolve_columns
from mtrec.data.ids import as_integers, bad_ids, has_bad_ids, id_problem, trimmed
from mtrec.errors import DataError

# Bytes read per block by pyarrow: larger blocks parse faster on big files.
_BLOCK_SIZE = 16 * 2**20

# What pyarrow raises for a value it cannot parse or convert.
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

_TIME_KINDS = {"seconds": "seconds since 1970", "date": "an ISO date/time"}


def read_text_columns(
    path: Path,
    text_format: TextFormat,
    roles: dict[str, str],
    rating_scale: tuple[float, float] | None = None,
) -> dict[str, pa.ChunkedArray]:
    """Read the columns named in ``roles`` with pyarrow, typed; the time as int64 seconds.

    Ids and times are read as int64 first. If that fails, the file is read again with ids
    as strings (trimmed) and the time's type inferred, and each id column holding only
    integers is turned back into int64, so that no column's type depends on another's. If
    that fails too, or a value is empty, out of scale or not a time, or an id holds a control
    character, the file is scanned for the first bad line.
    """
    try:
        table = _arrow_read(path, text_format, roles, typed=True)
    except _ARROW_ERRORS:
        try:
            table = _arrow_read(path, text_format, roles, typed=False)
        except _ARROW_ERRORS as error:
            raise bad_line_error(path, text_format, roles, rating_scale, str(error)) from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows after the header" if text_format.header else f"{path}: the file is empty")
    columns = {role: table.column(name) for role, name in roles.items()}
    for role in ("user", "item"):
        columns[role] = trimmed(columns[role])
    if any(column.null_count for column in columns.values()) or any(map(has_bad_ids, (columns["user"], columns["item"]))):
        raise bad_line_error(path, text_format, roles, rating_scale, "an empty field or an id with a control character")
    if "rating" in columns and not _ratings_valid(columns["rating"], rating_scale):
        raise bad_line_error(path, text_format, roles, rating_scale, "a rating that is not finite or out of scale")
    for role in ("user", "item"):
        columns[role] = as_integers(columns[role])
    if "time" in columns:
        try:
            columns["time"] = seconds(columns["time"])
        except _ARROW_ERRORS:
            raise bad_line_error(path, text_format, roles, rating_scale, "a time that is neither seconds since 1970 nor an ISO date/time") from None
    return columns


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
    with contextlib.ExitStack() as opened:
        # A plain file by its path: pyarrow reads it natively, with no Python object in its threads
        # (whose teardown at exit is then pyarrow's alone); a compressed one through its decompressor.
        source = str(path) if compression_of(path) is None else opened.enter_context(open_binary(path))
        return pacsv.read_csv(
            source,
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


def bad_line_error(
    path: Path,
    text_format: TextFormat,
    roles: dict[str, str],
    rating_scale: tuple[float, float] | None,
    fallback: str,
) -> DataError:
    """Scan the file line by line (slow: only when the fast parse failed) for the first bad line;
    ``fallback`` says what was wrong if no line is."""
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
    time throughout: the kind of the first data line. ``roles`` may be those of a ratings
    file or of an items file (item, title, genres).
    """
    positions = {role: text_format.columns.index(name) for role, name in roles.items()}
    expected = len(text_format.columns)
    shown = "'::'" if text_format.delimiter == "::" else repr(text_format.delimiter)
    time_kind = None
    # Bytes that are not UTF-8 survive decoding as lone surrogates, for _field_problem to name.
    with open_text(path) as handle:
        if text_format.delimiter == "::" or not text_format.quoted:
            rows = ((number, line.rstrip("\r\n").split(text_format.delimiter)) for number, line in enumerate(handle, 1))
        else:
            rows = quoted_records(handle, text_format.delimiter)
        for number, fields in rows:
            if isinstance(fields, str):
                return number, fields
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


def quoted_records(handle: TextIO, delimiter: str) -> Iterator[tuple[int, list[str] | str]]:
    """``(line the record starts on, fields)`` of a quoted CSV; ``(line, problem)`` for a quote that is
    not closed, after which nothing more is read. A field that runs over lines is a quote not closed."""
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield start, f"a quoted field is not closed ({error}): the quote opens on this line"
            return
        if reader.line_num > start and any("\n" in field or "\r" in field for field in fields):
            yield start, f"a quoted field opens on this line and runs over {reader.line_num - start + 1} lines: a quote is not closed"
            return
        yield start, fields


def _time_kind(text: str) -> str | None:
    """``"seconds"`` for a finite number, ``"date"`` for an ISO date/time, else ``None``."""
    try:
        return "seconds" if math.isfinite(float(text)) else None
    except ValueError:
        pass
    try:
        seconds(pa.chunked_array([[text]]))
    except _ARROW_ERRORS:
        return None
    return "date"


def _field_problem(fields: list[str], positions: dict[str, int], rating_scale: tuple[float, float] | None) -> str | None:
    for role, position in positions.items():
        if role in ("user", "item"):
            problem = id_problem(fields[position].strip(), f"{role} id")
        else:
            problem = undecodable(fields[position], role)
        if problem:
            return problem
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


def read_parquet_columns(path: Path, wanted: dict[str, Column | None]) -> dict[str, pa.ChunkedArray]:
    """The columns named in ``wanted`` of a Parquet file (compressed or not); text ids trimmed and checked."""
    try:
        parquet = pq.ParquetFile(seekable(path))
        roles = resolve_columns(path, parquet.schema_arrow.names, wanted, required=("user", "item"))
        table = parquet.read(columns=list(roles.values()))
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    columns = {role: table.column(name) for role, name in roles.items()}
    for role, column in columns.items():
        if role in ("user", "item"):
            columns[role] = parquet_ids(path, column, role, roles[role])
        elif column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}, row {row + 1}: empty {role} (column {roles[role]!r})")
    if "rating" in columns:
        try:
            columns["rating"] = columns["rating"].cast(pa.float32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(f"{path}: rating column {roles['rating']!r} is not numeric: {error}") from None
    return columns


def parquet_ids(path: Path, column: pa.ChunkedArray, role: str, name: str) -> pa.ChunkedArray:
    """An id column of a Parquet file: integers as they are, text trimmed and dictionary-encoded.

    A missing or empty id, or one holding a control character, is a :class:`DataError` naming its row.
    """
    text = None if pa.types.is_integer(column.type) else trimmed(column.cast(pa.string()))
    bad = column.is_null() if text is None else pc.fill_null(bad_ids(text), True)
    if not pc.any(bad).as_py():
        return column if text is None else pc.dictionary_encode(text)
    row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
    value = "" if text is None else text[row].as_py() or ""
    raise DataError(f"{path}, row {row + 1}: {id_problem(value, f'{role} id')} (column {name!r})")


def seconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
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


def timestamps(path: Path, column: pa.ChunkedArray) -> np.ndarray:
    """:func:`seconds` as numpy; a :class:`DataError` naming the first row that is not a time."""
    try:
        return seconds(column).to_numpy()
    except _ARROW_ERRORS:
        pass
    # Bisect on prefixes (each conversion vectorised): prefix ``low`` converts, prefix ``high`` fails.
    low, high = 0, len(column)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            seconds(column.slice(0, middle))
            low = middle
        except _ARROW_ERRORS:
            high = middle
    value = column[low].as_py()
    raise DataError(f"{path}, row {low + 1}: time {value!r} is neither seconds since 1970 nor an ISO date/time")
