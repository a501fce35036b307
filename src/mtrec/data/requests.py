"""The small files a request names: (user, item) pairs, a list of users, a new user's history.

Each is CSV or TSV (TSV when its first line holds a tab) with an optional header, read like
every other input (:mod:`mtrec.data.files`: compressed or not, UTF-8 with or without a
byte-order mark) and with the same rule for ids (:mod:`mtrec.data.ids`: trimmed, never empty or
holding a control character). A quote that is not closed, a missing field or a bad id is a
:class:`~mtrec.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import NamedTuple

from mtrec.data.files import open_text
from mtrec.data.ids import id_problem
from mtrec.data.parsing import quoted_records
from mtrec.errors import DataError

#: Most items a history may hold (for fold-in).
MAX_HISTORY = 1000

Rows = list[tuple[int, list[str]]]


class History(NamedTuple):
    """A history file's entries, ``(item, rating)`` with None where no rating is given, and the line
    each entry is on (to name a line where the library names an entry by its position)."""

    entries: list[tuple[str, float | None]]
    lines: list[int]


def _read_rows(path: Path, empty: str, limit: int | None = None) -> tuple[Rows, str]:
    """The non-blank records as (line number, trimmed cells), and the delimiter: a tab if the first
    non-blank line has one, else a comma. Reading stops after ``limit`` records, where one is given.
    ``empty`` words the error for a file without any (blank, or only empty fields)."""
    with open_text(path) as handle:
        leading = []
        for line in handle:
            leading.append(line)
            if line.strip():
                break
        delimiter = "\t" if leading and "\t" in leading[-1] else ","
        rows = []
        for number, fields in quoted_records(itertools.chain(leading, handle), delimiter):
            if isinstance(fields, str):
                raise DataError(f"{path}, line {number}: {fields}")
            cells = [cell.strip() for cell in fields]
            if any(cells):
                rows.append((number, cells))
                if len(rows) == limit:
                    break
    if not rows:
        raise DataError(f"{path}: {empty}")
    return rows, delimiter


def _checked(path: Path, number: int, text: str, what: str) -> str:
    """``text`` if it can be an id (see :func:`mtrec.data.ids.id_problem`), else a DataError naming the line."""
    problem = id_problem(text, what)
    if problem:
        raise DataError(f"{path}, line {number}: {problem}")
    return text


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(user, item) pairs from a CSV or TSV file.

    The columns named ``user`` and ``item`` in a header line, or else the first two columns;
    the header is optional.
    """
    path = Path(path)
    rows, delimiter = _read_rows(path, "no (user, item) pairs")
    header = [cell.lower() for cell in rows[0][1]]
    columns = (0, 1)
    if "user" in header and "item" in header:
        columns = (header.index("user"), header.index("item"))
        rows = rows[1:]
    pairs = []
    for number, row in rows:
        if len(row) <= max(columns):
            raise DataError(f"{path}, line {number}: expected a user and an item, got {delimiter.join(row)!r}")
        pairs.append((_checked(path, number, row[columns[0]], "user id"), _checked(path, number, row[columns[1]], "item")))
    return pairs


def read_users(path: str | os.PathLike) -> list[str]:
    """Raw user ids from a CSV or TSV file: the first column, one a line; a header ``user``
    (or ``userId``, ``user_id``) is skipped."""
    path = Path(path)
    rows, _ = _read_rows(path, "no users")
    if rows[0][1][0].lower() in ("user", "userid", "user_id"):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no users")
    return [_checked(path, number, row[0], "user id") for number, row in rows]


def read_history(path: str | os.PathLike) -> History:
    """A new user's history from a CSV or TSV file: an item (id or title) per line, optionally a rating.

    The columns named ``item`` and ``rating`` in a header line, or else the first two; the header
    is optional. At most :data:`MAX_HISTORY` items: reading stops at the first beyond them. A rating
    must be a number here; whether it is one the model can take (finite, on its scale) is checked
    once, by the fold-in (:func:`mtrec.serving.foldin.check_ratings`).
    """
    path = Path(path)
    rows, _ = _read_rows(path, "an empty history", limit=MAX_HISTORY + 2)  # a header, and one item too many
    header = [cell.lower() for cell in rows[0][1]]
    item_column, rating_column = 0, 1
    if "item" in header:
        item_column = header.index("item")
        rating_column = header.index("rating") if "rating" in header else None
        rows = rows[1:]
    if len(rows) > MAX_HISTORY:
        raise DataError(f"{path}, line {rows[MAX_HISTORY][0]}: more than {MAX_HISTORY:,} items; a history holds at most {MAX_HISTORY:,}")
    entries = []
    for number, row in rows:
        rating = None
        if rating_column is not None and len(row) > rating_column and row[rating_column]:
            try:
                rating = float(row[rating_column])
            except ValueError:
                raise DataError(f"{path}, line {number}: rating {row[rating_column]!r} is not a number") from None
        item = row[item_column] if len(row) > item_column else ""
        entries.append((_checked(path, number, item, "item"), rating))
    return History(entries, [number for number, _ in rows])
