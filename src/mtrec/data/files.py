"""Opening the files a user gives: the one place every input is opened, decompressed and decoded.

* **OS errors** are named in the operating system's own words, with the path
  (``ratings.csv: Too many levels of symbolic links``, ``data: Not a directory``), by
  :func:`os_error`, whatever opened or created the path.
* **Compression** is recognised by the file's first bytes, not its name: gzip, bz2 and xz
  with the standard library, zstd with pyarrow's codec (or the ``zstandard`` package). A
  damaged or truncated stream is a :class:`~mtrec.errors.DataError` naming the file. The
  first bytes are peeked at on the one handle that then reads the content, so a pipe (a FIFO,
  ``<(zcat ratings.csv.gz)``) reads like a file.
* **Text** is UTF-8, with or without the byte-order mark spreadsheets write ("CSV UTF-8").
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, TextIO

import pyarrow as pa

from mtrec.errors import DataError

#: Whether this pyarrow can decompress zstd itself (its wheels can); else the ``zstandard`` package is used.
ARROW_ZSTD = pa.Codec.is_available("zstd")

#: File name endings that say only how a file is compressed: the format is the ending before them.
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"(\xb5/\xfd": "zstd",
    b"PK\x03\x04": "zip",
}

# What a decompressor raises for a damaged or truncated stream.
_DAMAGED = (EOFError, OSError, lzma.LZMAError, zlib.error, pa.ArrowException)

# Bytes that are not UTF-8, as decoded with errors="surrogateescape".
_NOT_UTF8 = re.compile("[\udc80-\udcff]")

# Bytes per read from a compressed stream: pyarrow asks for whole blocks, Python's csv for lines.
_CHUNK = 2**20


def os_error(error: OSError, path: str | os.PathLike) -> DataError:
    """``error`` as a :class:`DataError`: the path it concerns and the OS's words for what went wrong."""
    return DataError(f"{error.filename or path}: {error.strerror or error}")


def open_raw(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading bytes as they are on disk; a :class:`DataError` naming the OS error."""
    try:
        return open(path, "rb")
    except OSError as error:
        raise os_error(error, path) from None


def check_readable(path: str | os.PathLike) -> None:
    """A :class:`DataError` unless ``path`` is a file that can be opened for reading."""
    open_raw(path).close()


def is_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file: ``False`` if nothing is there, a :class:`DataError` for any other
    OS error (a symbolic link loop, a file where a folder should be, no permission)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise os_error(error, path) from None


def check_directory(path: str | os.PathLike) -> Path:
    """``path``, if it is a directory or nothing is there yet; a :class:`DataError` naming the OS error otherwise."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Path(path)
    except OSError as error:
        raise os_error(error, path) from None
    if not stat.S_ISDIR(mode):
        raise DataError(f"{path}: {os.strerror(errno.ENOTDIR)}")
    return Path(path)


def make_directory(path: str | os.PathLike) -> Path:
    """Create ``path`` (and its parents) unless it is a directory already; OS errors in the OS's words."""
    path = check_directory(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise os_error(error, path) from None
    return path


def digest_of(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest (``algorithm`` of :mod:`hashlib`) of ``path``'s bytes as they are on disk, read in chunks."""
    digest = hashlib.new(algorithm)
    with open_raw(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def compression_of(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"bz2"``, ``"xz"``, ``"zstd"`` or ``"zip"`` by the file's first bytes; ``None`` for a plain file."""
    with open_raw(path) as handle:
        return _codec(handle, path)


def _codec(handle: io.BufferedReader, path: str | os.PathLike) -> str | None:
    """:func:`compression_of` the file open in ``handle``, by a peek that leaves its bytes to be read."""
    try:
        head = handle.peek(6)[:6]
    except OSError as error:
        raise os_error(error, path) from None
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def format_suffix(path: str | os.PathLike) -> str:
    """The lower-case ending that names the file's format: ``.csv`` for ``ratings.csv.gz``."""
    path = Path(path)
    if path.suffix.lower() in COMPRESSION_SUFFIXES:
        path = path.with_suffix("")
    return path.suffix.lower()


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened (once) for reading its content: decompressed where it is compressed."""
    raw = open_raw(path)
    try:
        codec = _codec(raw, path)
        if codec is None:
            return raw
        if codec == "zip":
            raise DataError(f"{path} is a zip archive: extract the file from it (or save a workbook as CSV)")
        return io.BufferedReader(_Decompressed(path, codec, _DECOMPRESSORS[codec](raw, path), raw), _CHUNK)
    except BaseException:
        raw.close()
        raise


def open_text(path: str | os.PathLike, errors: str = "surrogateescape") -> TextIO:
    """``path``'s content as UTF-8 text, a leading byte-order mark dropped, line endings kept.

    With the default ``errors``, bytes that are not UTF-8 survive as lone surrogates, for the
    caller to name with their line.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors=errors, newline="")


def undecodable(text: str, what: str) -> str | None:
    """The problem with ``text``, read by :func:`open_text`, if it holds bytes that are not UTF-8 (``what`` names it)."""
    if not _NOT_UTF8.search(text):
        return None
    return f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 text; save the file as UTF-8"


def seekable(path: str | os.PathLike) -> str | pa.BufferReader:
    """What pyarrow should read a Parquet file from: its path, or its decompressed bytes
    (Parquet needs random access, which a compressed stream does not give)."""
    if compression_of(path) is None:
        return str(path)
    with open_binary(path) as stream:
        return pa.BufferReader(stream.read())


def _open_zstd(raw: BinaryIO, path: str | os.PathLike) -> BinaryIO:
    if ARROW_ZSTD:
        return pa.CompressedInputStream(raw, "zstd")
    try:
        import zstandard
    except ImportError:
        raise DataError(f"{path} is zstd-compressed: install the 'zstandard' package or decompress it") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


#: The decompressing reader of each codec, over the handle of the compressed bytes (and the path, for errors).
_DECOMPRESSORS: dict[str, Callable[[BinaryIO, str | os.PathLike], BinaryIO]] = {
    "gzip": lambda raw, path: gzip.open(raw),
    "bz2": lambda raw, path: bz2.open(raw),
    "xz": lambda raw, path: lzma.open(raw),
    "zstd": _open_zstd,
}


class _Decompressed(io.RawIOBase):
    """A decompressing stream whose failures (a damaged or truncated file) are :class:`DataError` naming the
    file; closing it closes the decompressor and the handle of the compressed bytes ``raw``."""

    def __init__(self, path: str | os.PathLike, codec: str, stream: BinaryIO, raw: BinaryIO) -> None:
        super().__init__()
        self._path, self._codec, self._stream, self._raw = path, codec, stream, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._stream.read(len(buffer))
        except _DAMAGED as error:
            raise DataError(f"{self._path}: the {self._codec} data is damaged or truncated ({error})") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._raw.close()
        super().close()
