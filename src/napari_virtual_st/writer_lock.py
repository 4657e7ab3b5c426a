"""One writer per prediction store: an OS-level lock that a crashed process cannot leave stuck.

A run that creates, resumes or replaces a store holds :func:`writer_lock` on it for the whole
run; a second writer — another CLI run, a cohort task, the napari plugin, another thread of
the same process — is refused at once with :class:`StoreInUseError`, naming the process that
holds it. The lock is a hidden file beside the store (``.<name>.lock``; beside, not inside,
so that replacing the store folder does not replace the lock) locked with ``flock`` (POSIX)
or ``msvcrt.locking`` (Windows). The operating system releases it when the holder's process
ends, however it ends (``kill -9`` included), so a stale lock file is simply taken over.

Examples
--------
>>> with writer_lock("slide.vst.zarr"):  # doctest: +SKIP
...     ...  # create, resume or write the store
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from napari_virtual_st.errors import StoreError


class StoreInUseError(StoreError):
    """Another process (or another run in this process) is writing the store."""


# Locks held by this process, by lock file: (owning thread, depth). ``flock`` locks are per
# open file, so a second open in the same process would conflict with itself; a nested
# acquisition by the same thread (e.g. saving an alignment at the end of a run) is allowed,
# another thread of this process is refused like another process.
_HELD: dict[Path, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()


def lock_path_for(store_path: str | Path) -> Path:
    """The lock file of the store at ``store_path`` (``.<name>.lock`` in the same folder)."""
    path = Path(store_path).absolute()
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def writer_lock(store_path: str | Path, purpose: str = "a prediction run") -> Iterator[None]:
    """Hold the store's writer lock for the block.

    Parameters
    ----------
    store_path
        The store (``.vst.zarr`` folder); it need not exist yet.
    purpose
        What the holder is doing, shown to a refused writer.

    Raises
    ------
    StoreInUseError
        If another process or another thread of this process holds the lock.
    StoreError
        If the lock file cannot be made (e.g. the folder is read-only).
    """
    lock = lock_path_for(store_path)
    me = threading.get_ident()
    with _HELD_GUARD:
        owner = _HELD.get(lock)
        if owner is not None:
            if owner[0] != me:
                raise StoreInUseError(
                    f"{Path(store_path).name} is in use by another run in this process "
                    f"(process {os.getpid()}); wait for it to finish or choose another output"
                )
            _HELD[lock] = (me, owner[1] + 1)
    if owner is not None:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[lock] = (me, _HELD[lock][1] - 1)
        return
    fd = _acquire(lock, Path(store_path), purpose)
    with _HELD_GUARD:
        _HELD[lock] = (me, 1)
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[lock]
        _release(lock, fd)


def holder_of(store_path: str | Path) -> dict[str, object] | None:
    """Who holds the store's lock now (``pid``, ``purpose``, ``since``), or ``None``."""
    lock = lock_path_for(store_path)
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return _read_holder(fd)
    finally:
        os.close(fd)


def _acquire(lock: Path, store_path: Path, purpose: str) -> int:
    """Open and lock ``lock``; make sure the locked file is still the one at that name."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write the prediction store {store_path}: {exc}") from exc
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write the prediction store {store_path}: {exc}") from exc
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreInUseError(_in_use_message(store_path, holder))
        # A holder that finished removed the file it locked: ours must be the one there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        _unlock(fd)
        os.close(fd)
    record = {"pid": os.getpid(), "purpose": purpose, "since": time.strftime("%H:%M:%S")}
    with contextlib.suppress(OSError):  # (a full disk: the lock holds, unnamed)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
    return fd


def _release(lock: Path, fd: int) -> None:
    """Remove the lock file (while still holding it, so nobody locks a deleted file) and unlock."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            os.unlink(lock)
    _unlock(fd)
    os.close(fd)
    if sys.platform == "win32":
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _in_use_message(store_path: Path, holder: dict[str, object] | None) -> str:
    if holder and "pid" in holder:
        who = f"process {holder['pid']}"
        if holder.get("purpose"):
            who += f" ({holder['purpose']}, since {holder.get('since', '?')})"
    else:
        who = "another process"
    return f"{store_path.name} is in use by {who}; wait for it to finish, or choose another output"


def _read_holder(fd: int) -> dict[str, object] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        record = json.loads(data.decode() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1 << 20)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1 << 20)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
