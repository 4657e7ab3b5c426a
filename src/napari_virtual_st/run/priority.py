"""Leaving the CPU to a GUI: a run's threads at a lower scheduling priority (Linux).

On a machine with few cores a run in napari takes the CPU time the GUI thread does not
need: tile readers are lowered from the start, the model's threads (ONNX Runtime's pool and
the run's own thread) once the first values are out, so the run still races to them.
Elsewhere than Linux nothing is lowered (macOS's ``setpriority`` would apply to the whole
process).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from napari_virtual_st.run.events import BatchEvent, PreviewEvent, RunEvent

#: Niceness the run's threads take (0 normal, 19 lowest): they get CPU time only when the
#: GUI thread and the display (normal priority) do not need it.
RUN_NICENESS = 10


def lower_thread_priority(niceness: int = RUN_NICENESS, thread_id: int | None = None) -> bool:
    """Lower a thread's scheduling priority to ``niceness`` (threads it starts afterwards
    inherit it). Linux only, where each thread has its own niceness; elsewhere (and where
    it is not allowed) nothing changes.

    Parameters
    ----------
    niceness
        0 normal, 19 lowest; a thread already lower stays as it is.
    thread_id
        The thread's native id (``threading.get_native_id()``); the calling thread's by
        default.

    Returns
    -------
    bool
        Whether the priority is now at most that.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id() if thread_id is None else thread_id
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except OSError:
        return False
    return True


def python_thread_ids() -> set[int]:
    """Native ids of this process's threads with the calling thread's OS name (a thread
    takes its creator's, while Qt, Mesa and other libraries name theirs); empty where /proc
    does not list them."""
    try:
        own = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
        found = set()
        for task in Path("/proc/self/task").iterdir():
            try:
                if (task / "comm").read_text() == own:
                    found.add(int(task.name))
            except OSError:  # (a thread that ended meanwhile)
                continue
        return found
    except OSError:
        return set()


def lowering_after_first_values(
    emit: Callable[[RunEvent], None], thread_ids: set[int]
) -> Callable[[RunEvent], None]:
    """``emit``, lowering the priority of the calling thread and of the threads in
    ``thread_ids`` (as the set is then: it is filled once the model is loaded) once it has
    sent the first predicted values (a preview or a batch)."""
    lowered = [False]

    def emitting(event: RunEvent) -> None:
        emit(event)
        if not lowered[0] and isinstance(event, PreviewEvent | BatchEvent):
            lowered[0] = True
            for tid in {threading.get_native_id(), *thread_ids}:
                lower_thread_priority(thread_id=tid)

    return emitting
