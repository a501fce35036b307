"""Item descriptions: titles, release years and genres, from an items file of the user's or from
the MovieLens releases' own (``u.item``, ``movies.dat``, ``movies.csv``), aligned with the item index."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtrec.data.files import check_readable, format_suffix, open_binary, seekable
from mtrec.data.formats import PARQUET_SUFFIXES, TextFormat, resolve_columns, sniff_format
from mtrec.data.ids import as_integers, has_bad_ids, trimmed
from mtrec.data.parsing import bad_line_error, parquet_ids
from mtrec.errors import DataError


@dataclass
class ItemMetadata:
    """Descriptions of the items, aligned with the item index.

    Parameters
    ----------
    titles:
        Display title of each item ("Toy Story (1995)").
    years:
        Release year of each item, ``None`` where unknown.
    genres:
        Genre names of each item.
    """

    titles: list[str]
    years: list[int | None]
    genres: list[list[str]]

    def __len__(self) -> int:
        return len(self.titles)

    def to_json(self) -> dict[str, Any]:
        return {"titles": self.titles, "years": self.years, "genres": self.genres}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemMetadata:
        return cls(titles=list(data["titles"]), years=list(data["years"]), genres=[list(g) for g in data["genres"]])


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
    ``genres``); without a header they are id, title[, genres]. The file is read like a
    ratings file: compressed or not, ids trimmed, and a quote that is not closed, an empty id
    or one holding a control character named by its line (its row in Parquet).
    """
    path = Path(path)
    check_readable(path)
    wanted = {"item": None, "title": None, "genres": None}
    if format_suffix(path) in PARQUET_SUFFIXES:
        table = pq.read_table(seekable(path))
        roles = resolve_columns(path, table.schema.names, wanted, required=("item", "title"))
        ids = parquet_ids(path, table.column(roles["item"]), "item", roles["item"])
    else:
        text_format = sniff_format(path, sep)
        if text_format.delimiter == "::":
            # MovieLens's movies.dat: its titles hold colons, which pyarrow (splitting on one character) cannot read around.
            return _read_movies_dat(path)
        positions = {"item": 0, "title": 1, "genres": 2}
        if text_format.header:
            roles = resolve_columns(path, text_format.columns, wanted, required=("item", "title"))
        else:
            roles = {role: text_format.columns[i] for role, i in positions.items() if i < len(text_format.columns)}
        table = _read_items_text(path, text_format, roles)
        ids = trimmed(table.column(roles["item"]))
    if table.num_rows == 0:
        raise DataError(f"{path}: the items file has no rows")
    return item_table(table, roles, ids)


def item_table(table: pa.Table, roles: dict[str, str], ids: pa.ChunkedArray) -> ItemTable:
    """The descriptions in the ``title`` and optional ``genres`` columns of ``table`` (``roles`` names
    them), for the checked item ``ids``. Genres are text separated by ``|``, or lists (of a frame)."""
    titles = [str(t).strip() if t is not None else "" for t in table.column(roles["title"]).to_pylist()]
    if "genres" in roles:
        genres = [_genre_list(g) for g in table.column(roles["genres"]).to_pylist()]
    else:
        genres = [[] for _ in titles]
    years = [year_from_title(title) for title in titles]
    return ItemTable(ids=_raw_ids(ids), metadata=ItemMetadata(titles=titles, years=years, genres=genres))


def _genre_list(value: str | list | None) -> list[str]:
    """One item's genres from ``|``-separated text or a list."""
    if isinstance(value, list):
        return [str(genre) for genre in value if genre]
    return split_genres(value)


def _read_items_text(path: Path, text_format: TextFormat, roles: dict[str, str]) -> pa.Table:
    """The columns of ``roles`` as text. A bad line (a quote not closed, which pyarrow would let
    swallow the lines after it; an empty id or one holding a control character) is named."""
    try:
        with open_binary(path) as stream:
            table = pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=list(text_format.columns), skip_rows=1 if text_format.header else 0),
                parse_options=pacsv.ParseOptions(delimiter=text_format.delimiter, quote_char='"'),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(roles.values()), column_types={name: pa.string() for name in roles.values()}
                ),
            )
    except pa.ArrowInvalid as error:
        raise bad_line_error(path, text_format, roles, None, str(error)) from None
    over_lines = any(pc.any(pc.match_substring_regex(table.column(name), "[\r\n]")).as_py() for name in roles.values())
    if over_lines or has_bad_ids(trimmed(table.column(roles["item"]))):
        raise bad_line_error(path, text_format, roles, None, "a field that runs over lines, or a bad item id")
    return table


def _raw_ids(column: pa.ChunkedArray) -> np.ndarray:
    """Raw ids (text ones trimmed) as int64 where they are all integers, else as ``str``."""
    column = as_integers(column)
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    return np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)


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


def read_movies(path: Path) -> ItemTable:
    """Titles, years and genres from ``u.item``, ``movies.dat`` or ``movies.csv``."""
    if path.name == "u.item":
        return _read_u_item(path)
    if path.suffix == ".dat":
        return _read_movies_dat(path)
    return read_items_file(path)


def _decode(raw: bytes) -> str:
    """UTF-8 (without a byte-order mark) where valid (ML-10M), else Latin-1 (ML-100K, ML-1M)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def split_rows(path: Path, separator: str, width: int, id_field: int = 0) -> list[list[str]]:
    """The non-empty lines of a small metadata file, split into ``width`` fields with a numeric id."""
    with open_binary(path) as stream:
        text = _decode(stream.read())
    rows = []
    # Split on line feeds only: Latin-1 text may hold bytes that str.splitlines takes for line breaks.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip():
            fields = line.split(separator)
            if len(fields) != width or not fields[id_field].strip().isdigit():
                problem = f"expected {width} fields separated by {separator!r}" if len(fields) != width else "bad id"
                raise DataError(f"{path}, line {number}: {problem}, found {line[:80]!r}")
            rows.append(fields)
    return rows


def _u_item_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The genre names of ``u.genre`` beside ``path``, and the split rows of ``u.item`` (5 fields, then a flag per genre)."""
    genre_names = [fields[0] for fields in split_rows(path.with_name("u.genre"), "|", 2, id_field=1)]
    return genre_names, split_rows(path, "|", 5 + len(genre_names))


def _read_u_item(path: Path) -> ItemTable:
    genre_names, rows = _u_item_rows(path)
    for fields in rows:
        if any(flag not in ("0", "1") for flag in fields[5:]):
            raise DataError(f"{path}, item {fields[0]}: genre flags must be 0 or 1, found {'|'.join(fields[5:])!r}")
    flags = np.array([fields[5:] for fields in rows], dtype=np.int8).astype(bool)
    names = np.array(genre_names, dtype=object)
    return ItemTable(
        ids=np.array([int(fields[0]) for fields in rows], dtype=np.int64),
        metadata=ItemMetadata(
            titles=[fields[1].strip() for fields in rows],
            years=[year_from_title(fields[1], fields[2]) for fields in rows],
            genres=[names[row].tolist() for row in flags],
        ),
    )


_MONTHS = {name: number for number, name in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def release_months(path: Path) -> list[str | None]:
    """The release month (``"1997-05"``) of each movie of ``u.item``, in file order, from its release
    date (``"01-May-1997"``); ``None`` where the date is empty. A date of another form is a
    :class:`DataError` naming the item."""
    months: list[str | None] = []
    for fields in _u_item_rows(path)[1]:
        date = fields[2].strip()
        if not date:
            months.append(None)
            continue
        match = re.fullmatch(r"\d{1,2}-([A-Za-z]{3})-(\d{4})", date)
        if match is None or match.group(1).title() not in _MONTHS:
            raise DataError(f"{path}, item {fields[0]}: release date {date!r} is not DD-Mon-YYYY")
        months.append(f"{match.group(2)}-{_MONTHS[match.group(1).title()]:02d}")
    return months


def _read_movies_dat(path: Path) -> ItemTable:
    rows = split_rows(path, "::", 3)
    titles = [fields[1].strip() for fields in rows]
    return ItemTable(
        ids=np.array([int(fields[0]) for fields in rows], dtype=np.int64),
        metadata=ItemMetadata(
            titles=titles,
            years=[year_from_title(title) for title in titles],
            genres=[split_genres(fields[2]) for fields in rows],
        ),
    )
