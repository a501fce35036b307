"""Downloading and extracting dataset archives, verified and atomic.

The cache never holds a half-written release:

* the archive is downloaded to ``<archive>.part``, its MD5 checked there, and only then
  renamed into place, so nothing unverified is ever at the archive's name;
* an interrupted transfer leaves the ``.part``: every byte in it came from the server in
  order, so it is a genuine prefix and the next attempt resumes it with an HTTP ``Range``
  request (restarting when the server answers 200 rather than 206);
* an archive (or ``.part``) whose MD5 does not match, or that is not a readable zip, is
  deleted, since which bytes are wrong cannot be known;
* the archive is extracted into a staging folder beside the target (``.<folder>.*.tmp``)
  and renamed into place, so the release folder appears whole or not at all; staging
  folders left by a killed extraction are removed when that release is next extracted.

Only an interrupted transfer keeps its ``.part``: after a checksum mismatch or a corrupt
zip the cache holds neither a ``.part`` nor the archive.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from mtrec.data.files import is_file, make_directory, open_raw, os_error
from mtrec.errors import DownloadError

#: Seconds to wait for the server before giving up.
TIMEOUT = 30.0
_CHUNK = 2**20


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_error(reason: object, *files: tuple[str, Path]) -> DownloadError:
    """The error for no network: what to fetch elsewhere and where to put it."""
    what = " and ".join(f"{url} at {path}" for url, path in files)
    return DownloadError(
        f"cannot download {files[0][0]}: {reason}. Without network access, download elsewhere and "
        f"place {what} (verified and extracted on the next run)"
    )


def published_md5(url: str, destination: Path) -> str:
    """The MD5 published beside an archive, ``<url>.md5`` (any text holding 32 hex digits).

    A copy placed beside the archive as ``<destination>.md5`` is used first (for offline use).
    """
    local = destination.with_name(destination.name + ".md5")
    if is_file(local):
        with open_raw(local) as handle:
            text = handle.read(4096).decode("ascii", errors="replace")
    else:
        text = _fetch_md5(url, local, destination)
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not match:
        raise DownloadError(f"{url}.md5 holds no MD5 checksum")
    return match.group(0).lower()


def _fetch_md5(url: str, local: Path, destination: Path) -> str:
    """The text GroupLens serves at ``<url>.md5``."""
    try:
        with urllib.request.urlopen(f"{url}.md5", timeout=TIMEOUT) as response:
            return response.read(4096).decode("ascii", errors="replace")
    except urllib.error.HTTPError as error:
        raise DownloadError(f"cannot fetch the checksum {url}.md5: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise _offline_error(reason, (f"{url}.md5", local), (url, destination)) from None


def download_release_archive(url: str, destination: Path, md5: str | None, progress: bool = False) -> Path:
    """``destination`` holding the verified archive from ``url``, downloading it if needed.

    Parameters
    ----------
    url:
        Where the archive is served.
    destination:
        Where the verified archive is kept (its folder is created).
    md5:
        Expected MD5; ``None`` uses the one published at ``<url>.md5`` (see :func:`published_md5`).
    progress:
        Show a tqdm progress bar (on stderr).

    Raises
    ------
    DownloadError
        No network (saying which file to place where), an HTTP error, an interrupted
        transfer (the ``.part`` is kept for resuming), or a checksum mismatch (the
        ``.part``, or an archive placed by hand, is deleted).
    """
    make_directory(destination.parent)
    if md5 is None:
        md5 = published_md5(url, destination)
    if is_file(destination):
        _verify_md5(url, destination, md5)
        return destination
    part = destination.with_name(destination.name + ".part")
    _fetch(url, part, destination, progress)
    _verify_md5(url, part, md5)
    os.replace(part, destination)
    return destination


def _verify_md5(url: str, path: Path, md5: str) -> None:
    """Delete ``path`` and raise :class:`DownloadError` unless its MD5 is ``md5``."""
    actual = md5_of(path)
    if actual != md5.lower():
        path.unlink()
        raise DownloadError(
            f"{url}: the archive has MD5 {actual}, expected {md5}; it was deleted. "
            "Try again; if this persists the file on the server differs from the one expected"
        )


def _fetch(url: str, part: Path, destination: Path, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming a previous ``.part`` where the server allows."""
    from tqdm import tqdm

    offset = part.stat().st_size if is_file(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The .part already holds the whole file: the checksum decides.
            return
        raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _offline_error(getattr(error, "reason", error), (url, destination)) from None
    with response:
        resumed = bool(offset) and response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        try:
            handle = open(part, "ab" if resumed else "wb")
        except OSError as error:
            raise os_error(error, part) from None
        with (
            handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=destination.name,
                disable=not progress,
            ) as bar,
        ):
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(f"download of {url} interrupted after {received} bytes ({error}); run again to resume from {part}") from None
    if total is not None and received < total:
        raise DownloadError(f"download of {url} interrupted after {received} of {total} bytes; run again to resume from {part}")


def extract_archive(archive: Path, root: Path, folder: str, required: str) -> Path:
    """Extract ``folder`` from ``archive`` into ``root`` atomically; ``root / folder``.

    The zip is extracted into a staging folder in ``root`` and its ``folder`` renamed into
    place; staging folders of ``folder`` left by a killed extraction are removed first. A
    corrupt zip (bad structure or CRC) is deleted and raises :class:`DownloadError`.
    """
    for stale in root.glob(f".{folder}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    target = root / folder
    if target.exists() and any(target.iterdir()):
        raise DownloadError(f"{target} exists but has no {required}: remove that folder to extract {archive} again")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=root))
    except OSError as error:
        raise os_error(error, root) from None
    try:
        try:
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.namelist():
                    if os.path.isabs(member) or ".." in Path(member).parts:
                        raise zipfile.BadZipFile(f"unsafe member path {member!r}")
                bundle.extractall(staging)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            archive.unlink(missing_ok=True)
            raise DownloadError(f"{archive} is not a valid zip archive ({error}); it was deleted") from None
        if not (staging / folder / required).is_file():
            raise DownloadError(f"{archive} has no {folder}/{required}")
        if target.exists():
            target.rmdir()
        os.replace(staging / folder, target)
    except OSError as error:  # a full disk, no permission...
        raise os_error(error, target) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
