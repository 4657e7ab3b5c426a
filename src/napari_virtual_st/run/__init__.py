"""One prediction run: :class:`RunSpec` in, :func:`run` assembles it, events report it.

Every face calls this package and nothing else to predict: the CLI (``virtual-st predict``),
the cohort task, the Predict widget (through :mod:`.process`, a prediction process of its
own, which calls :func:`run` there) and the Measured ST widget.

Modules: :mod:`.spec` (the parameters), :mod:`.engine` (:func:`run`), :mod:`.events` (what
a run reports), :mod:`.stream` (a run as a generator, on a helper thread),
:mod:`.process` (a run in a separate process), :mod:`.priority` (leaving the CPU to a GUI).
"""

from __future__ import annotations

from napari_virtual_st.run.engine import load_predictor, run, visible_first
from napari_virtual_st.run.events import (
    BatchEvent,
    PreviewEvent,
    RunEvent,
    RunOutcome,
    StageEvent,
    StoreReadyEvent,
)
from napari_virtual_st.run.spec import Region, RunSpec
from napari_virtual_st.run.stream import run_events, run_outcome

__all__ = [
    "BatchEvent",
    "PreviewEvent",
    "Region",
    "RunEvent",
    "RunOutcome",
    "RunSpec",
    "StageEvent",
    "StoreReadyEvent",
    "load_predictor",
    "run",
    "run_events",
    "run_outcome",
    "visible_first",
]
