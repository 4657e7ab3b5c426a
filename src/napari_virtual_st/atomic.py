"""Atomic writes: a file (or folder) appears under its final name complete, or not at all.

Writers put their output at a temporary name beside the destination (same folder, so the
final ``rename`` is atomic on one file system) and move it into place only after it was
written and flushed to disk. A failure or Ctrl-C half-way removes the temporary output and
leaves any previous file under the final name untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_virtual_st.writer_lock import writer_lock


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Give a temporary path to write to; move it to ``path`` when the block succeeds.

    One writer at a time holds ``path`` (:func:`~napari_virtual_st.writer_lock.writer_lock`),
    and temporary outputs that a killed writer left beside it are removed first.
    The temporary name keeps ``path``'s suffix (some writers insist on ``.h5ad``), starts with
    a dot, and lies in the same folder. The block may write a file or a folder there. An
    existing ``path`` is replaced only after the new output is complete; if the block raises,
    the temporary output is deleted and ``path`` is left as it was.

    Parameters
    ----------
    path
        The final destination.

    Yields
    ------
    pathlib.Path
        Where to write.

    Examples
    --------
    >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path, f"writing {path.name}"):
        for stale in path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"):
            remove_path(stale)  # left by a writer that was killed (none runs: we hold the lock)
        yield from _write_atomically(path)


def _write_atomically(path: Path) -> Iterator[Path]:
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {path.name}")
        _flush_to_disk(tmp)
        move_into_place(tmp, path, path.with_name(f".{path.stem}.{tag}.old{path.suffix}"))
    except BaseException:
        remove_path(tmp)
        raise


def remove_path(path: Path) -> None:
    """Delete a file or folder if present, ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _flush_to_disk(path: Path) -> None:
    """``fsync`` a written file (folders are left to the writer that made them)."""
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def move_into_place(new: Path, path: Path, trash: Path) -> None:
    """Rename ``new`` (a file or folder) to ``path``, replacing what is there.

    A file is replaced in one atomic rename. An existing folder cannot be, so it is first
    set aside as ``trash``, put back if ``new`` cannot take its place, and deleted after.

    Parameters
    ----------
    new
        The complete new output, beside ``path`` (same file system).
    path
        The final destination.
    trash
        Where an existing folder at ``path`` waits meanwhile (a free name beside it).
    """
    if not (path.is_dir() and not path.is_symlink()):
        os.replace(new, path)  # atomic for files, also over an existing file
        return
    path.rename(trash)
    try:
        new.rename(path)
    except BaseException:
        trash.rename(path)
        raise
    remove_path(trash)
