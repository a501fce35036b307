"""The one rule for raw ids, whichever file they come from.

Ratings (text or Parquet), item descriptions, histories, user lists and pair lists all read
ids the same way, so that an id means the same thing in each of them and on the command line:

* whitespace around an id is dropped: ``" u1 "`` is ``u1``, as `` 196 `` is 196;
* an id left empty is refused, and so is an id holding a control character (NUL, a line
  break inside quotes, escape...) or bytes that are not UTF-8, each naming its file and line.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from mtrec.data.files import undecodable

# The C0 control characters, DEL and the C1 control characters (Python and RE2 read it alike).
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
_CONTROL_RE = re.compile(_CONTROL)


def id_problem(text: str, what: str) -> str | None:
    """Why ``text`` (already trimmed) cannot be an id, worded with ``what`` (``"user id"``...); ``None`` if it can."""
    if not text:
        return f"empty {what}"
    control = _CONTROL_RE.search(text)
    if control:
        return f"{what} {text!r} holds the control character U+{ord(control.group()):04X}"
    return undecodable(text, what)


def trimmed(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text ids (plain or dictionary-encoded) without surrounding whitespace; other columns as they are."""
    if pa.types.is_dictionary(column.type):
        chunks = [pa.DictionaryArray.from_arrays(chunk.indices, pc.utf8_trim_whitespace(chunk.dictionary)) for chunk in column.chunks]
        return pa.chunked_array(chunks, column.type)
    if _is_text(column.type):
        return pc.utf8_trim_whitespace(column)
    return column


def bad_ids(values: pa.Array | pa.ChunkedArray) -> pa.BooleanArray | pa.ChunkedArray:
    """Which trimmed text ids are empty or hold a control character (see :func:`id_problem`)."""
    return pc.match_substring_regex(values, "^$|" + _CONTROL)


def has_bad_ids(column: pa.ChunkedArray) -> bool:
    """Whether any trimmed text id (of a dictionary, any of its values) is empty or holds a control character."""
    if pa.types.is_dictionary(column.type):
        return any(len(chunk.dictionary) and pc.any(bad_ids(chunk.dictionary)).as_py() for chunk in column.chunks)
    return _is_text(column.type) and bool(pc.any(bad_ids(column)).as_py())


def as_integers(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trimmed text ids as int64 where every one is an integer (as a typed read gives them), else as they are."""
    try:
        if pa.types.is_dictionary(column.type):
            chunks = [chunk.dictionary.cast(pa.int64()).take(chunk.indices) for chunk in column.chunks]
            return pa.chunked_array(chunks, pa.int64())
        if _is_text(column.type):
            return column.cast(pa.int64())
    except pa.ArrowInvalid:
        pass
    return column


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)
