"""GUI-thread work in small steps, each in an event-loop turn of its own.

napari's slow calls (making a layer's views, adding it, a colour bar's first draw) stall the
window for tens of milliseconds each; one after another in the same turn they add up to a
stall the user feels. :class:`GuiSteps` is the one queue a run's GUI work goes through:

- :meth:`GuiSteps.then` runs steps in order, one per turn, at least ``STEP_MS`` apart (the
  event loop handles input and drawing in between);
- :meth:`GuiSteps.due` runs a step once, no sooner than a delay from now, however often it
  is asked for meanwhile (a throttled redraw), ahead of ordered steps that are waiting.

One single-shot ``QTimer`` drives both. A step that fails raises (napari shows the error)
and the queue goes on, so that it does not keep the steps after it (a run's end, say) from
running.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from qtpy.QtCore import Qt, QTimer

#: Milliseconds between two steps: enough for the event loop to handle input and drawing
#: between them.
STEP_MS = 15
_GAP_S = STEP_MS / 1000
#: how early a timer may fire and still run its step (timers are not exact)
_SLACK_S = 0.001


class GuiSteps:
    """A queue of GUI-thread steps run by one timer (see the module's docstring)."""

    def __init__(self) -> None:
        self._ordered: collections.deque[Callable[[], None]] = collections.deque()
        #: throttled steps and when each is due (``time.perf_counter`` seconds)
        self._due: dict[Callable[[], None], float] = {}
        self._head_at = 0.0  # the soonest the first ordered step may run
        self._last_end = float("-inf")  # when the last step returned
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._run_next)
        self._running = False

    def __len__(self) -> int:
        """Ordered steps not run yet (throttled ones are not counted)."""
        return len(self._ordered)

    def then(self, step: Callable[[], None]) -> None:
        """Run ``step`` in a later turn, after the ordered steps added before it."""
        if not self._ordered:
            self._head_at = time.perf_counter() + _GAP_S
        self._ordered.append(step)
        self._arm()

    def due(self, step: Callable[[], None], delay_s: float) -> None:
        """Run ``step`` once, ``delay_s`` from now at the soonest (unless it is due already)."""
        if step not in self._due:
            self._due[step] = time.perf_counter() + delay_s
            self._arm()

    def drop(self, step: Callable[[], None]) -> None:
        """Forget a throttled step (it ran by other means, or is no longer wanted)."""
        if self._due.pop(step, None) is not None:
            self._arm()

    def clear(self) -> None:
        """Forget every step not run yet."""
        self._ordered.clear()
        self._due.clear()
        self._timer.stop()

    def _arm(self) -> None:
        if self._running:  # (armed once the step in progress returns)
            return
        times = list(self._due.values())
        if self._ordered:
            times.append(self._head_at)
        if not times:
            self._timer.stop()
            return
        at = max(min(times), self._last_end + _GAP_S)
        self._timer.start(max(0, round((at - time.perf_counter()) * 1000)))

    def _next_step(self) -> Callable[[], None] | None:
        now = time.perf_counter() + _SLACK_S
        if now < self._last_end + _GAP_S:
            return None
        ready = [step for step, at in self._due.items() if at <= now]
        if ready:
            step = min(ready, key=self._due.__getitem__)
            del self._due[step]
            return step
        if self._ordered and self._head_at <= now:
            return self._ordered.popleft()
        return None

    def _run_next(self) -> None:
        step = self._next_step()
        if step is None:  # (woken early)
            self._arm()
            return
        self._running = True
        try:
            step()
        finally:
            self._running = False
            self._last_end = time.perf_counter()
            self._arm()
