"""Delimited text files: which separator and columns a file has, and which column plays which role.

:func:`sniff_format` decides the separator and whether the first line is a header;
:func:`resolve_columns` maps the roles (user, item, rating, time, title, genres) to columns,
by the names given, by their usual names, or by position in a file without a header.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from mtrec.data.files import format_suffix, open_text
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


def _first_lines(path: Path, count: int) -> list[str]:
    """The first ``count`` non-empty lines, decoded leniently (enough to sniff a format)."""
    lines = []
    with open_text(path, errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
                if len(lines) == count:
                    break
    return lines


def _split_line(line: str, delimiter: str, quoted: bool) -> list[str]:
    if delimiter == "::" or not quoted:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter))


def is_number(text: str) -> bool:
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
    if sep is None:
        sep = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(format_suffix(path))
        if sep is not None and sep not in lines[0]:
            # A ".csv" separated by ";" or "|" (spreadsheets write them): sniff rather than misread.
            sep = None
    if sep is None:
        sep = next((d for d in SNIFFED_DELIMITERS if d in lines[0]), None)
        if sep is None:
            raise DataError(f"{path}, line 1: cannot tell the field separator (tried tab, '::', ',', ';', '|'); pass it with sep= (--sep)")
    quoted = sep == "," or sep == ";"
    first = [field.strip() for field in _split_line(lines[0], sep, quoted)]
    known = {alias for aliases in COLUMN_ALIASES.values() for alias in aliases}
    known |= {_normalise(name) for name in column_names}
    header = any(_normalise(field) in known for field in first)
    if not header and len(lines) > 1:
        second = _split_line(lines[1], sep, quoted)
        header = sum(map(is_number, first)) < sum(map(is_number, second))
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
    roles = {role: _explicit_column(path, columns, role, spec, found) for role, spec in wanted.items() if spec is not None}
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
                f"{path}: no {role} column: none of the columns found ({found}) is called {aliases}; name it with {role}_col= (--{role}-col)"
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
