"""A run as a generator of events, for a caller that pulls (a GUI worker, a process link).

:func:`run_events` runs :func:`~.engine.run` on a helper thread and yields its events as
they come; cancelling (setting ``cancel``, or closing the generator) stops the run at the
next batch boundary, and finished batches stay in the store for a later run to resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.run.engine import run
from napari_virtual_st.run.events import RunEvent, RunOutcome
from napari_virtual_st.run.spec import RunSpec


@dataclass(frozen=True)
class Finished:
    """The run's last item when it finished: its store."""

    store_path: Path


@dataclass(frozen=True)
class Failed:
    """The run's last item when it raised: the error."""

    error: BaseException


RunItem = RunEvent | Finished | Failed
RunEvents = Callable[[RunSpec, threading.Event | None], Generator[RunEvent, None, Path]]


def run_events(
    spec: RunSpec, cancel: threading.Event | None = None
) -> Generator[RunEvent, None, Path]:
    """Run ``spec``, yielding its events; return the finished store's path.

    Raises
    ------
    VirtualSTError
        Whatever the run raised, with its message for the user.
    """
    cancel = threading.Event() if cancel is None else cancel
    items: queue.SimpleQueue[RunItem] = queue.SimpleQueue()
    helper = threading.Thread(
        target=work, args=(spec, cancel, items.put), name="vst-predict", daemon=True
    )
    helper.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, Finished):
                return item.store_path
            if isinstance(item, Failed):
                raise item.error
            yield item
    except GeneratorExit:
        cancel.set()  # closed early (worker quit, viewer closed): stop at the next batch
        raise
    finally:
        helper.join()


def run_outcome(
    spec: RunSpec, cancel: threading.Event | None = None, events: RunEvents = run_events
) -> Generator[RunEvent, None, RunOutcome]:
    """:func:`run_events` (or another ``events`` with its signature, e.g.
    :func:`.process.run_events_in_process`), returning the engine's errors as a
    :class:`~.events.RunOutcome`.

    Errors raised on purpose (missing resolution, bad model, cancelled...) carry a message
    for the user and end here; anything else is a bug and propagates.
    """
    try:
        store_path = yield from events(spec, cancel)
    except VirtualSTError as exc:
        return RunOutcome(None, exc)
    return RunOutcome(store_path)


def work(spec: RunSpec, cancel: threading.Event, emit: Callable[[RunItem], None]) -> None:
    """The run on the calling thread; every outcome ends with one final item."""
    try:
        store = run(spec, emit, cancel.is_set)
        emit(Finished(store.path))
    except BaseException as exc:  # handed to the consumer, which re-raises it
        emit(Failed(exc))
