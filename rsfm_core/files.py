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
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "commit",
    "fsync_dir",
    "remove_quietly",
    "sha256_file",
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
