"""A prediction run's bar in napari's activity dock: :class:`RunActivity`.

Each update of napari's progress bar makes napari process every pending Qt event, canvas
drawing included, before it returns; so the bar follows the run at most every
``ACTIVITY_INTERVAL_S`` (:meth:`RunActivity.due`), in an event-loop turn of its own.
"""

from __future__ import annotations

import time

from napari.utils import progress as napari_progress

#: Fewest seconds between two updates of napari's activity dock (each one makes napari
#: process all pending Qt events, canvas drawing included, before it returns).
ACTIVITY_INTERVAL_S = 2.0


class RunActivity:
    """The activity dock's bar of one run (none until :meth:`start`, none after
    :meth:`close`)."""

    def __init__(self) -> None:
        self._bar: napari_progress | None = None
        self._updated = 0.0  # when an update was last asked for (time.perf_counter)

    def start(self, description: str, total: int | None = None) -> None:
        """Show the bar (busy until ``total``, the number of spots, is known)."""
        self._bar = napari_progress(total=0, desc=description)
        if total is not None:
            self._bar.total = total

    def set_total(self, total: int, description: str) -> None:
        """The number of spots is known (nothing happens before :meth:`start`)."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.set_description(description)

    def due(self) -> bool:
        """Whether an update is due (``ACTIVITY_INTERVAL_S`` since the last one asked for);
        a ``True`` counts as asked for now."""
        if time.perf_counter() - self._updated < ACTIVITY_INTERVAL_S:
            return False
        self._updated = time.perf_counter()
        return True

    def update(self, done: int) -> None:
        """Bring the bar to ``done`` spots."""
        if self._bar is not None and done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Take the bar away."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
