"""Side features: attributes of the items (genres, year...) and of the users (age, gender...), read
from a file of the user's or from a MovieLens release, one row per id.

A features file has a header. Its id column is the one named by ``id_col``, else the one named
like the side (``itemId``, ``movieId``, ``user``... as :data:`~mtrec.data.formats.COLUMN_ALIASES`
lists them), else the first; every other column is a feature of one of three kinds:

* **categorical**: one text value per row (``"M"``, ``"technician"``);
* **multi**: several values per row, separated by ``|`` (``"Animation|Comedy"``);
* **numeric**: a number per row (``1995``, ``24.5``).

A column's kind is the one declared for it (``types``, ``--feature-types genres:multi``), else
sniffed from its values. Any value may be missing (empty, ``NA``, ``null``... see :data:`MISSING`),
but not every value of a column; bad content is a :class:`~mtrec.errors.DataError` naming the file
and its line (its row in Parquet) or column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtrec.data.files import check_readable, format_suffix, is_file, open_text, seekable, undecodable
from mtrec.data.formats import PARQUET_SUFFIXES, SNIFFED_DELIMITERS, is_number, resolve_columns
from mtrec.data.ids import as_integers, id_problem
from mtrec.data.metadata import read_movies, release_months, split_rows
from mtrec.data.parsing import parquet_ids, quoted_records
from mtrec.errors import ConfigError, DataError

FEATURE_KINDS = ("categorical", "multi", "numeric")
#: Most distinct values a categorical or multi-valued column may hold.
MAX_CATEGORIES = 10_000
#: Texts read as a missing value (after stripping spaces).
MISSING = ("", "NA", "N/A", "nan", "NaN", "null", "None")

SIDES = ("user", "item")

#: The age groups of ML-1M's ``users.dat``, by the code it gives for each (the group's lowest age; 1 for under 18).
AGE_GROUPS = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}

#: The occupations of ML-1M's ``users.dat``, by their code.
OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

#: The user file of each release that has one, and how to read it.
_USER_FILES = {"100k": "u.user", "1m": "users.dat"}

_MISSING = frozenset(MISSING)


@dataclass
class FeatureColumn:
    """One feature of every row of a :class:`FeatureTable`.

    Parameters
    ----------
    name:
        The column's name (its header in the file).
    kind:
        ``"categorical"``, ``"multi"`` or ``"numeric"``.
    values:
        One value per row. Categorical: a text, ``None`` where missing. Multi: a list of texts,
        empty where missing. Numeric: a float64 array, NaN where missing.
    separator:
        What separated the values of a multi-valued column in the file.
    optional:
        Read by a model only when named (``--item-feature-columns``); a file's columns are never
        optional, a release's may be (ML-100K's ``released``).
    """

    name: str
    kind: str
    values: list | np.ndarray
    separator: str = "|"
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"unknown feature type {self.kind!r} for column {self.name!r}; the types are {', '.join(FEATURE_KINDS)}")
        if self.kind == "numeric":
            self.values = np.asarray(self.values, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.values)

    def missing(self) -> int:
        """How many rows miss a value."""
        if self.kind == "numeric":
            return int(np.isnan(self.values).sum())
        if self.kind == "multi":
            return sum(1 for value in self.values if not value)
        return sum(1 for value in self.values if value is None)

    def take(self, positions: np.ndarray) -> FeatureColumn:
        """The values of the rows at ``positions``, as a new column."""
        if self.kind == "numeric":
            values = self.values[positions]
        else:
            values = [self.values[i] for i in positions.tolist()]
        return FeatureColumn(name=self.name, kind=self.kind, values=values, separator=self.separator, optional=self.optional)


@dataclass
class FeatureTable:
    """The features of users or items, one row per id, in file order.

    Parameters
    ----------
    side:
        ``"user"`` or ``"item"``.
    ids:
        Raw ids: int64 where every id is an integer, else ``str`` (trimmed).
    columns:
        The feature columns, each with a value per id.
    source:
        Where the rows come from (a file's path, ``"MovieLens 100K u.user"``), for messages.
    lines:
        The 1-based line of each row in its file (the header is line 1); ``None`` where rows
        have no lines (Parquet, a release's files).
    """

    side: str
    ids: np.ndarray
    columns: list[FeatureColumn]
    source: str
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def names(self) -> list[str]:
        """The names of the feature columns, in order."""
        return [column.name for column in self.columns]

    def column(self, name: str) -> FeatureColumn:
        """The column called ``name``; a :class:`ConfigError` naming the columns there are otherwise."""
        for column in self.columns:
            if column.name == name:
                return column
        raise ConfigError(f"{self.source}: no feature column {name!r}; the columns are {_listed(self.names)}")

    def where(self, row: int) -> str:
        """Where row ``row`` (0-based) is, for messages: ``"<source>, line N"`` or ``"<source>, row N"``."""
        if self.lines is not None:
            return f"{self.source}, line {int(self.lines[row])}"
        return f"{self.source}, row {row + 1}"

    def rows(self, positions: np.ndarray) -> FeatureTable:
        """A new table of the rows at ``positions`` (or where a boolean mask is true), same columns."""
        positions = np.asarray(positions)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64, copy=False)
        return FeatureTable(
            side=self.side,
            ids=self.ids[positions],
            columns=[column.take(positions) for column in self.columns],
            source=self.source,
            lines=None if self.lines is None else self.lines[positions],
        )


def parse_feature_types(text: str | None) -> dict[str, str]:
    """The kinds declared by ``"genres:multi,year:numeric,zip:categorical"``; ``{}`` for ``None`` or ``""``.

    An entry that is not ``COLUMN:KIND``, a kind that is not one of :data:`FEATURE_KINDS` or a
    column declared twice is a :class:`ConfigError`.
    """
    types: dict[str, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, colon, kind = entry.rpartition(":")
        name, kind = name.strip(), kind.strip()
        if not colon or not name or not kind:
            raise ConfigError(f"feature type {entry.strip()!r} is not COLUMN:TYPE (e.g. genres:multi,year:numeric)")
        if name in types:
            raise ConfigError(f"feature types declare column {name!r} twice")
        types[name] = kind
    _check_kinds(types)
    return types


def _check_kinds(types: dict[str, str]) -> None:
    for name, kind in types.items():
        if kind not in FEATURE_KINDS:
            raise ConfigError(f"unknown feature type {kind!r} for column {name!r}; the types are {', '.join(FEATURE_KINDS)}")


def read_feature_file(
    path: str | os.PathLike,
    side: str,
    types: dict[str, str] | None = None,
    sep: str | None = None,
    id_col: str | int | None = None,
    defaults: dict[str, str] | None = None,
) -> FeatureTable:
    """Read the features of users or items from a file with a header.

    The file is delimited text (``,``, tab, ``;`` or ``|``; compressed or not) or Parquet. Its id
    column is ``id_col`` (a name or a 0-based position), else the column named like the ``side``,
    else the first. Every other column is a feature, whose kind is ``types[name]`` where declared,
    else ``defaults[name]`` where the file has that column (the kinds a model read its features
    as), else sniffed: numeric if every value present is a number, multi-valued if a value holds
    ``|``, else categorical.

    Raises
    ------
    ConfigError
        For a ``side`` other than ``user``/``item``, an unknown kind, a type declared for a column
        the file does not have (or for the id column), or a bad ``sep``.
    DataError
        For a file that cannot be read, has no rows or no feature columns, an empty or repeated
        id, a column with no values or too many categories, or a value a numeric column cannot
        hold; each naming the file and its line (row in Parquet) or column.
    """
    if side not in SIDES:
        raise ConfigError(f"side must be 'user' or 'item', got {side!r}")
    types = dict(types or {})
    _check_kinds(types)
    _check_kinds(dict(defaults or {}))
    path = Path(path)
    check_readable(path)
    if format_suffix(path) in PARQUET_SUFFIXES:
        return _read_parquet(path, side, types, id_col, defaults or {})
    return _read_text(path, side, types, sep, id_col, defaults or {})


def _with_defaults(types: dict[str, str], defaults: dict[str, str], names: list[str], id_name: str) -> dict[str, str]:
    """The declared kinds, and the defaults of the file's other feature columns."""
    return {**{name: kind for name, kind in defaults.items() if name in names and name != id_name}, **types}


def _read_text(path: Path, side: str, types: dict[str, str], sep: str | None, id_col: str | int | None, defaults: dict[str, str]) -> FeatureTable:
    delimiter = _delimiter(path, sep, _header_line(path))
    quoted = delimiter in (",", ";")
    records = _records(path, delimiter, quoted)
    header_number, header = next(records)
    names = [name.strip() for name in header]
    if len(names) == 1:
        raise DataError(f"{path}: no feature columns: the file holds only the id column {names[0]!r}")
    id_name = _id_column(path, side, names, id_col, text=True)
    _check_header(path, header_number, names)
    _check_declared(path, side, names, id_name, types)
    types = _with_defaults(types, defaults, names, id_name)
    shown = "'::'" if delimiter == "::" else repr(delimiter)
    lines, rows = [], []
    for number, fields in records:
        if len(fields) != len(names):
            raise DataError(f"{path}, line {number}: expected {len(names)} fields separated by {shown}, found {len(fields)}")
        if undecodable("".join(fields), "value"):
            bad = next(i for i, field in enumerate(fields) if undecodable(field, "value"))
            raise DataError(f"{path}, line {number}: column {names[bad]!r}: {undecodable(fields[bad], 'value')}")
        lines.append(number)
        rows.append(fields)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    table = FeatureTable(side=side, ids=np.zeros(0, dtype=np.int64), columns=[], source=str(path), lines=np.asarray(lines, dtype=np.int64))
    position = names.index(id_name)
    ids = [fields[position].strip() for fields in rows]
    for row, text in enumerate(ids):
        problem = id_problem(text, f"{side} id")
        if problem:
            raise DataError(f"{table.where(row)}: {problem} (column {id_name!r})")
    table.ids = _raw_ids(pa.chunked_array([pa.array(ids, pa.string())]))
    _check_unique(table)
    for index, name in enumerate(names):
        if name != id_name:
            texts = [_text(fields[index]) for fields in rows]
            table.columns.append(_text_column(table, name, texts, types.get(name)))
    return table


def _header_line(path: Path) -> str:
    """The first line that is not blank; a :class:`DataError` for an empty file."""
    with open_text(path, errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.rstrip("\r\n")
    raise DataError(f"{path}: the file is empty")


def _delimiter(path: Path, sep: str | None, header_line: str) -> str | None:
    """``sep``, else the separator the file's name says (``.csv``, ``.tsv``) where the header holds it,
    else the first of :data:`SNIFFED_DELIMITERS` the header holds; ``None`` for a header of one column."""
    if sep is not None:
        if len(sep) != 1 and sep != "::":
            raise ConfigError(f"sep must be one character or '::', got {sep!r}")
        return sep
    by_name = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(format_suffix(path))
    if by_name is not None and by_name in header_line:
        return by_name
    return next((d for d in SNIFFED_DELIMITERS if d in header_line), None)


def _records(path: Path, delimiter: str | None, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of each line that is not blank, the header first; a quote not closed is named."""
    with open_text(path) as handle:
        if quoted:
            rows = quoted_records(handle, delimiter)
        else:
            rows = ((number, line.rstrip("\r\n").split(delimiter) if delimiter else [line.rstrip("\r\n")]) for number, line in enumerate(handle, 1))
        for number, fields in rows:
            if isinstance(fields, str):
                raise DataError(f"{path}, line {number}: {fields}")
            if any(field.strip() for field in fields):
                yield number, fields


def _check_header(path: Path, number: int, names: list[str]) -> None:
    for index, name in enumerate(names):
        if not name:
            raise DataError(f"{path}, line {number}: column {index + 1} has no name in the header; name every column")
        if name in names[:index]:
            raise DataError(f"{path}, line {number}: the header names column {name!r} twice")


def _id_column(path: Path, side: str, names: list[str], id_col: str | int | None, text: bool) -> str:
    """The id column: ``id_col``, else the one named like ``side``, else the first."""
    roles = resolve_columns(path, names, {side: id_col}, required=())
    if side in roles:
        found = roles[side]
        by_name = id_col is None or str(id_col) in names
    else:
        found, by_name = names[0], False
    if text and not by_name and is_number(names[0]):
        raise DataError(f"{path}: the first line must be a header naming the columns (it starts with {names[0]!r})")
    return found


def _check_declared(path: Path, side: str, names: list[str], id_name: str, types: dict[str, str]) -> None:
    for name in types:
        if name == id_name:
            raise ConfigError(f"{path}: column {name!r} holds the {side} ids; it takes no feature type")
        if name not in names:
            raise ConfigError(f"{path}: a feature type is declared for column {name!r}, which the file lacks; its columns are {_listed(names)}")


def _read_parquet(path: Path, side: str, types: dict[str, str], id_col: str | int | None, defaults: dict[str, str]) -> FeatureTable:
    try:
        table = pq.read_table(seekable(path))
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    names = [str(name) for name in table.schema.names]
    if len(names) == 1:
        raise DataError(f"{path}: no feature columns: the file holds only the id column {names[0]!r}")
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    id_name = _id_column(path, side, names, id_col, text=False)
    _check_declared(path, side, names, id_name, types)
    types = _with_defaults(types, defaults, names, id_name)
    ids = parquet_ids(path, table.column(id_name), side, id_name)
    result = FeatureTable(side=side, ids=_raw_ids(ids), columns=[], source=str(path))
    _check_unique(result)
    for name, column in zip(names, table.columns):
        if name != id_name:
            result.columns.append(_parquet_column(result, name, column, types.get(name)))
    return result


def _parquet_column(table: FeatureTable, name: str, column: pa.ChunkedArray, kind: str | None) -> FeatureColumn:
    """A column of a Parquet file: numbers and lists as they are, anything else as text."""
    arrow_type = column.type
    if pa.types.is_dictionary(arrow_type):
        column = column.cast(arrow_type.value_type)
        arrow_type = column.type
    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
    if numeric and kind in (None, "numeric"):
        numbers = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return _numeric_column(table, name, numbers)
    values = column.to_pylist()
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        if kind not in (None, "multi"):
            raise DataError(f"{table.source}: column {name!r} holds lists, which only a multi column can; declare it multi or leave its type out")
        lists = [[part for part in (_text(p) for p in value or ()) if part is not None] for value in values]
        return _checked(table, FeatureColumn(name=name, kind="multi", values=lists))
    return _text_column(table, name, [None if value is None else _text(_as_text(value)) for value in values], kind)


def _as_text(value: object) -> str:
    """A value of a Parquet column as text: ``1990`` for the float 1990.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _text(field: str) -> str | None:
    """A field without surrounding spaces; ``None`` where it is one of :data:`MISSING`."""
    field = field.strip()
    return None if field in _MISSING else field


def _text_column(table: FeatureTable, name: str, texts: list[str | None], kind: str | None) -> FeatureColumn:
    """A column of texts (``None`` where missing) as the declared ``kind``, else the sniffed one."""
    if kind in (None, "numeric"):
        numbers, bad = _numbers(texts)
        if bad is None:
            return _numeric_column(table, name, numbers, texts)
        if kind == "numeric":
            raise DataError(f"{table.where(bad)}: column {name!r} is numeric but holds {texts[bad]!r}")
        kind = "multi" if any(text is not None and "|" in text for text in texts) else "categorical"
    if kind == "multi":
        values = [[] if text is None else [part.strip() for part in text.split("|") if part.strip()] for text in texts]
        return _checked(table, FeatureColumn(name=name, kind="multi", values=values))
    return _checked(table, FeatureColumn(name=name, kind="categorical", values=texts))


def _numbers(texts: list[str | None]) -> tuple[np.ndarray, int | None]:
    """The texts as float64 (NaN where missing), and the row of the first that is not a number (else ``None``)."""
    numbers = np.full(len(texts), np.nan)
    for row, text in enumerate(texts):
        if text is not None:
            try:
                numbers[row] = float(text)
            except ValueError:
                return numbers, row
    return numbers, None


def _numeric_column(table: FeatureTable, name: str, numbers: np.ndarray, texts: list[str | None] | None = None) -> FeatureColumn:
    """A numeric column; an infinite value is a :class:`DataError` naming its row (and its text, where ``texts`` are given)."""
    infinite = np.flatnonzero(np.isinf(numbers))
    if len(infinite):
        row = int(infinite[0])
        shown = texts[row] if texts is not None else repr(float(numbers[row]))
        raise DataError(f"{table.where(row)}: column {name!r} is numeric but holds {shown!r}; give a finite number or leave it empty")
    return _checked(table, FeatureColumn(name=name, kind="numeric", values=numbers))


def _checked(table: FeatureTable, column: FeatureColumn) -> FeatureColumn:
    """``column``, unless every value is missing or it holds more than :data:`MAX_CATEGORIES` categories."""
    if column.missing() == len(column):
        raise DataError(f"{table.source}: column {column.name!r} has no values (every row is missing); drop it")
    if column.kind == "categorical":
        count = len({value for value in column.values if value is not None})
    elif column.kind == "multi":
        count = len({part for value in column.values for part in value})
    else:
        return column
    if count > MAX_CATEGORIES:
        raise DataError(
            f"{table.source}: column {column.name!r} holds {count:,} distinct values, more than the {MAX_CATEGORIES:,} "
            f"a {column.kind} column may hold; bucket it, declare it numeric or drop it"
        )
    return column


def _check_unique(table: FeatureTable) -> None:
    """A :class:`DataError` naming the first id that appears on two rows, and both rows."""
    first: dict[object, int] = {}
    for row, value in enumerate(table.ids.tolist()):
        earlier = first.setdefault(value, row)
        if earlier != row:
            unit = "line" if table.lines is not None else "row"
            before = int(table.lines[earlier]) if table.lines is not None else earlier + 1
            raise DataError(f"{table.where(row)}: {table.side} id {value} appears again (first on {unit} {before})")


def _raw_ids(column: pa.ChunkedArray) -> np.ndarray:
    """Raw ids (text ones trimmed) as int64 where they are all integers, else as ``str``."""
    column = as_integers(column)
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    return np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)


def _listed(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def movielens_features(release: Any, folder: Path) -> tuple[FeatureTable | None, FeatureTable | None]:
    """The item features and user features of a MovieLens release in ``folder``.

    Items (every release): ``genres`` (multi), ``year`` (numeric, the release year, NaN where
    unknown) and ``decade`` (categorical, ``"1990s"``); ML-100K's ``u.item`` also gives the release
    date, read as ``released`` (categorical, its month: ``"1997-05"``), an optional column a model
    reads only when it names it (``item_feature_columns``). Users, where the release has them
    (ML-100K's ``u.user``, ML-1M's ``users.dat``): ``age`` (numeric; ML-1M gives only the group,
    as its lowest age, 1 for under 18), ``age_group`` (categorical, ``"25-34"``), ``gender``,
    ``occupation`` and ``zip1`` (the first character of the zip code), all categorical. Either is
    ``None`` where its file is not in ``folder`` (the user features of a release without users).

    Raises
    ------
    ConfigError
        For an unknown release name.
    DataError
        For a file that cannot be read, is malformed or fails its pinned SHA-256.
    """
    spec = release
    folder = Path(folder)
    title = f"MovieLens {spec.name.upper() if spec.name[0].isdigit() else spec.name}"
    items = None
    if is_file(folder / spec.movies_file):
        items = _movie_features(spec, folder, f"{title} {spec.movies_file}")
    users = None
    user_file = _USER_FILES.get(spec.name)
    if user_file is not None and is_file(folder / user_file):
        path = folder / user_file
        ids, columns = _read_u_user(path) if user_file == "u.user" else _read_users_dat(path)
        users = FeatureTable(side="user", ids=ids, columns=columns, source=f"{title} {user_file}")
        _check_unique(users)
    return items, users


def _movie_features(spec: Any, folder: Path, source: str) -> FeatureTable:
    """Genres, year and decade of the release's movies file (with ``u.genre`` for ``u.item``), and
    the release month where the file has dates (``u.item``)."""
    movies = read_movies(folder / spec.movies_file)
    spec.verify(folder, spec.movies_file, "u.genre")
    years = np.array([np.nan if year is None else float(year) for year in movies.metadata.years])
    decades = [None if year is None else f"{year // 10 * 10}s" for year in movies.metadata.years]
    columns = [
        FeatureColumn(name="genres", kind="multi", values=[list(genres) for genres in movies.metadata.genres]),
        FeatureColumn(name="year", kind="numeric", values=years),
        FeatureColumn(name="decade", kind="categorical", values=decades),
    ]
    if spec.movies_file == "u.item":
        columns.append(FeatureColumn(name="released", kind="categorical", values=release_months(folder / spec.movies_file), optional=True))
    table = FeatureTable(side="item", ids=movies.ids, columns=columns, source=source)
    _check_unique(table)
    return table


def _read_u_user(path: Path) -> tuple[np.ndarray, list[FeatureColumn]]:
    """ML-100K's ``u.user``: ``id|age|gender|occupation|zip``."""
    rows = split_rows(path, "|", 5)
    ages = []
    for fields in rows:
        if not fields[1].strip().isdigit():
            raise DataError(f"{path}, user {fields[0].strip()}: age {fields[1]!r} is not a whole number")
        ages.append(int(fields[1]))
    return _user_columns(rows, ages, [_age_group(age) for age in ages], [fields[3] for fields in rows])


def _read_users_dat(path: Path) -> tuple[np.ndarray, list[FeatureColumn]]:
    """ML-1M's ``users.dat``: ``UserID::Gender::Age::Occupation::Zip-code``, age and occupation as codes."""
    rows = split_rows(path, "::", 5)
    ages, occupations = [], []
    for fields in rows:
        user, age, occupation = fields[0].strip(), fields[2].strip(), fields[3].strip()
        if not age.isdigit() or int(age) not in AGE_GROUPS:
            raise DataError(f"{path}, user {user}: age code {age!r} is not one of {', '.join(map(str, AGE_GROUPS))}")
        if not occupation.isdigit() or int(occupation) >= len(OCCUPATIONS):
            raise DataError(f"{path}, user {user}: occupation code {occupation!r} is not a whole number from 0 to {len(OCCUPATIONS) - 1}")
        ages.append(int(age))
        occupations.append(OCCUPATIONS[int(occupation)])
    # Reordered like u.user, so that one function builds the columns of both.
    rows = [[fields[0], fields[2], fields[1], fields[3], fields[4]] for fields in rows]
    return _user_columns(rows, ages, [AGE_GROUPS[age] for age in ages], occupations)


def _user_columns(rows: list[list[str]], ages: list[int], groups: list[str], occupations: list[str]) -> tuple[np.ndarray, list[FeatureColumn]]:
    """The ids and columns of users whose ``rows`` are ``id, age, gender, occupation, zip``."""
    ids = np.array([int(fields[0]) for fields in rows], dtype=np.int64)
    zips = [_text(fields[4]) for fields in rows]
    return ids, [
        FeatureColumn(name="age", kind="numeric", values=np.array(ages, dtype=np.float64)),
        FeatureColumn(name="age_group", kind="categorical", values=groups),
        FeatureColumn(name="gender", kind="categorical", values=[_text(fields[2]) for fields in rows]),
        FeatureColumn(name="occupation", kind="categorical", values=[_text(value) for value in occupations]),
        FeatureColumn(name="zip1", kind="categorical", values=[None if code is None else code[0] for code in zips]),
    ]


def _age_group(age: int) -> str:
    """The ML-1M age group an age falls in."""
    for lowest, group in reversed(AGE_GROUPS.items()):
        if age >= lowest:
            return group
    return AGE_GROUPS[1]
