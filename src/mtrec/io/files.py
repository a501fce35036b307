"""Atomic file writes (a reader sees the old file or the new one, never half of either), folders
published whole, exclusive locks of folders (one process at a time writes a run directory, a
report, an experiment's or a search's root), and the one reader of JSON files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from mtrec.errors import DataError, MtrecError

try:
    import fcntl
except ImportError:  # Windows has no flock: folders are not locked there
    fcntl = None  # type: ignore[assignment]

# The process's umask, read once: new files get the usual permissions, not mkstemp's 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that writes of ``path`` by processes no longer alive left behind
    (a SIGKILL mid-save cannot clean up after itself)."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        parts = temporary.name[len(path.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _alive(int(parts[0])):
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is untouched. The
    temporary's name carries the writer's process id, so that the next write of ``path``
    removes what a killed writer left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_UMASK)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def link_target(path: str | Path) -> Path:
    """``path``, or the target of the symbolic link ``path`` is: where a folder written "at ``path``"
    really goes, so that replacing it keeps the link and replaces what it points at."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _remove(path: Path) -> None:
    """Remove ``path`` whatever it is: a folder with its contents, or a file or symbolic link (a link's
    target is left alone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish_directory(staging: Path, target: Path, old: Path | None = None) -> None:
    """Rename the complete folder ``staging`` to ``target``, all or nothing.

    A previous ``target`` is first renamed out of the way, to ``old`` (default ``.<name>.old``
    beside it), put back if the rename fails, and removed once the new folder is in place: a
    reader finds the old folder or the new one, never a mix. A ``target`` that is a symbolic link
    is followed (:func:`link_target`): the folder it points at is replaced, the link stays.
    """
    target = link_target(target)
    old = old or target.parent / f".{target.name}.old"
    _remove(old)
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    fsync_directory(target.parent)
    _remove(old)


def fsync_directory(folder: Path) -> None:
    """Make a rename durable (where the platform allows opening a directory)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(payload)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Reading JSON


def parse_json(text: str | bytes) -> Any:
    """The JSON document ``text``; ValueError if it is not one, a document nested too deeply to
    parse included (where :func:`json.loads` raises RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document in the file ``path``, which should be a ``what`` (``"run config"``).

    Raises
    ------
    DataError
        One line naming the file: the OS's reason when it cannot be read (missing, a folder, no
        permission), or why it is not a readable ``what`` (not UTF-8, not JSON, nested too deeply).
    """
    path = Path(path)
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    except ValueError as error:  # UnicodeDecodeError and json.JSONDecodeError among them
        raise DataError(f"{path}: not a readable {what} ({error})") from None


# ---------------------------------------------------------------------------------------------
# Locks


class LockHeldError(MtrecError):
    """Another process holds the lock of a folder: it is writing there now."""


#: The locks this process holds, by lock file and thread: taking one again is a no-op.
_HELD: set[tuple[Path, int]] = set()


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(descriptor: int) -> str:
    """Who holds a lock, as its holder wrote it: ``process 123 on host``."""
    for _ in range(50):  # the holder writes its name just after taking the lock
        words = os.pread(descriptor, 512, 0).decode("utf-8", "replace").split()
        if len(words) == 2:
            return f"process {words[0]} on {words[1]}"
        time.sleep(0.01)
    return "another process"


def _acquire(path: Path, what: str) -> int:
    """The descriptor of ``path`` locked by this process; :class:`LockHeldError` if another holds it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        if not _try_lock(descriptor):
            holder = _holder(descriptor)
            os.close(descriptor)
            raise LockHeldError(f"{what} is in use by {holder}: wait until it ends, or choose another folder")
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)  # its holder removed the file as it released it: take the new one
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return descriptor


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; :class:`LockHeldError` at once, naming ``what``
    and the holder's process and host, when another process holds it.

    The lock is ``flock`` on the file: the kernel releases it when its holder exits, however it
    exits, so a lock that a killed process left is simply taken (no process ids are guessed; the
    holder writes its own into the file for the message only). The file is removed on release,
    while still held; a taker checks that the file it locked is still the one at ``path``. Taking
    a lock this thread already holds is a no-op, and so is every lock where the platform has no
    ``flock`` (Windows).
    """
    path = Path(os.path.abspath(path))
    key = (path, threading.get_ident())
    if key in _HELD or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _acquire(path, what)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        path.unlink(missing_ok=True)
        os.close(descriptor)


def directory_lock(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock of ``folder``: the file ``.<name>.lock`` beside it (see :func:`exclusive_lock`).

    Held by whoever writes the folder (a run directory while its run is staged and published;
    an experiment's or a search's root while it runs), so that two commands never mix their work.
    """
    folder = Path(folder)
    return exclusive_lock(folder.parent / f".{folder.name}.lock", str(folder))
