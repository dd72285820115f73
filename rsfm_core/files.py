"""Files written safely: the one implementation of atomic replacement and of SHA-256.

Every output rsfm writes (user checkpoints, training-checkpoint metadata, GeoTIFFs, the
embedding products, shards and their manifests) goes through here:

- :func:`temp_path` makes a hidden temporary next to the final path (same folder, so the
  same filesystem, so the rename is atomic); :func:`commit` fsyncs it, gives it the
  permissions a plain ``open()`` would (``mkstemp`` creates 0600), renames it over the
  final path and fsyncs the folder, so after a crash either the old or the new file is
  there, never a torn one.
- :func:`atomic_path` is the usual form: a context manager yielding the temporary; commit
  on success, removal on any exception (Ctrl-C included); :func:`atomic_write` and
  :func:`atomic_write_text` wrap it for a writer function or a string.
- Outputs that must appear together (the embedder's COG + GeoParquet + npz) take their
  temporaries from :func:`temp_path` and :func:`commit` them in the order they choose.
- :func:`stale_temps` finds the temporaries that a killed process left next to a final
  path (their names are ``.<name>.[<tag>.]XXXXXXXX<suffix>``), so the next run on the same
  output removes them.
- :func:`exclusive_lock` is an ``fcntl.flock`` on a lock file held for a run's lifetime:
  a second process is refused (naming the holder), and the kernel drops the lock when
  its holder dies, so a killed run never blocks a restart.
- :func:`check_free_space` refuses to start a write that cannot fit, and
  :func:`no_space_error` turns the many shapes of "disk full" (``OSError`` ENOSPC,
  GDAL's message, a C++ ``iostream error``) into one :class:`NoSpaceError` that says
  "no space left on <folder>".
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "LockedError",
    "NoSpaceError",
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "check_free_space",
    "commit",
    "exclusive_lock",
    "fsync_dir",
    "fsync_file",
    "no_space_error",
    "remove_quietly",
    "sha256_file",
    "stale_temps",
    "temp_path",
]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def temp_path(near: str | os.PathLike, tag: str = "", suffix: str = ".partial") -> Path:
    """A new, empty, hidden temporary file next to ``near``: ``.<name>.<tag>.XXXX<suffix>``."""
    near = Path(near)
    prefix = f".{near.name}.{tag}." if tag else f".{near.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=near.parent)
    os.close(fd)
    return Path(tmp)


def remove_quietly(*paths: str | os.PathLike | None) -> None:
    """Remove the files that exist; ``None`` entries are skipped."""
    for p in paths:
        if p is not None and os.path.lexists(p):
            os.remove(p)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """fsync ``tmp``, give it the umask's permissions, rename it over ``final``, fsync the
    folder. ``tmp`` must be on ``final``'s filesystem (use :func:`temp_path`)."""
    tmp, final = Path(tmp), Path(final)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; commit it to ``final`` when the block
    ends normally, remove it (``final`` untouched) when it raises."""
    tmp = temp_path(final, suffix=suffix)
    try:
        yield tmp
        commit(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write(final: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary next to ``final``, which then replaces ``final``."""
    with atomic_path(final) as tmp:
        write(tmp)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    """Replace ``final`` with ``text`` (UTF-8) atomically."""
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data to disk (before a marker that says it is complete)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- stale temps

# what follows ".<final name>." in a temporary: an optional tag, mkstemp's 8 random
# characters, then the suffix (and whatever GDAL appends to a temporary it writes)
_TEMP_TAIL = re.compile(r"^(?:[A-Za-z0-9_-]+\.)?[a-z0-9_]{8}\.[A-Za-z0-9_.]+$")


def stale_temps(final: str | os.PathLike) -> list[Path]:
    """Temporaries of ``final`` left in its folder by a killed process: files named like
    :func:`temp_path`'s (``.<name>.[<tag>.]XXXXXXXX<suffix>``, or nested, one more dot).
    Only call this while holding the output's lock: a live run's temporaries match too."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    out = []
    for p in final.parent.iterdir():
        n = p.name
        for head in (f".{final.name}.", f"..{final.name}."):
            if n.startswith(head) and _TEMP_TAIL.match(n[len(head) :]) and p.is_file():
                out.append(p)
                break
    return sorted(out)


# ---------------------------------------------------------------------------- locks


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it and what to do."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, remove: bool = False) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on the file ``path`` (created) for the block; raise
    :class:`LockedError` at once when another process holds it. The file records the
    holder (pid, host, start time) for that message. The kernel releases the lock when
    the holder exits or is killed, so a stale file never blocks. ``remove``: unlink the
    file on release (for locks next to user outputs); a process that opened the old file
    before the unlink notices (inode check) and retries on a new one.

    ``flock`` is advisory and per open file: it works across processes of one machine
    and, on Linux NFS v4 clients, across machines. Where ``fcntl`` is missing (Windows)
    no lock is taken."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = path.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise LockedError(
                f"{what} is in use by another process ({holder}; lock file {path}). Wait for "
                "it to finish or stop it; a killed process does not hold the lock"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: take a new one
    try:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield path
    finally:
        if remove:
            remove_quietly(path)
        os.close(fd)


# ---------------------------------------------------------------------------- disk space


class NoSpaceError(OSError):
    """Not enough free space where a file is written; the message names the folder."""


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Raise :class:`NoSpaceError` when ``folder``'s file system has less than ``need``
    bytes free for ``what``."""
    folder = Path(folder)
    free = shutil.disk_usage(_existing(folder)).free
    if free < need:
        raise NoSpaceError(
            errno.ENOSPC,
            f"no space left on {folder}: about {_gib(need)} needed for {what}, {_gib(free)} "
            "free; free some space or write somewhere else",
        )


_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


def _is_no_space(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NoSpaceError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if any(t in str(exc).lower() for t in _NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def no_space_error(
    exc: BaseException, folder: str | os.PathLike, what: str, need: int = 0
) -> NoSpaceError | None:
    """A :class:`NoSpaceError` for ``exc`` when it comes from a full disk: its text or
    errno says so, or (for writers whose errors say nothing useful, such as C++
    ``basic_ios::clear: iostream error``) ``folder`` has less than ``need`` bytes free now.
    None when the failure has another cause."""
    if isinstance(exc, NoSpaceError):
        return exc
    folder = Path(folder)
    try:
        free = shutil.disk_usage(_existing(folder)).free
    except OSError:
        free = None
    if not _is_no_space(exc) and (free is None or free >= max(need, 1)):
        return None
    left = f" ({_gib(free)} free)" if free is not None else ""
    err = NoSpaceError(
        errno.ENOSPC,
        f"no space left on {folder}{left} while writing {what}: {exc}; free some space or "
        "write somewhere else",
    )
    err.__cause__ = exc
    return err
