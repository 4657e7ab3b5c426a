"""The job of a Predict panel run's worker thread: :func:`predict_then_build_spots`.

It runs off the GUI thread in a ``napari.qt.threading`` worker: the run itself
(:func:`napari_virtual_st.run.run`, through :func:`~napari_virtual_st.run.run_outcome`), in a
prediction process of its own (:mod:`napari_virtual_st.run.process`) so the GUI never waits
for Python's interpreter lock, yielding the run's events; then the finished store read back
and its spots layer built, for the GUI thread only to add.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

from napari.layers import Layer

from napari_virtual_st._napari.spot_layers import spots_layer_data
from napari_virtual_st.run import RunEvent, RunOutcome, RunSpec, process, run_events, run_outcome
from napari_virtual_st.store_view import StoreView


def predict_then_build_spots(
    request: RunSpec, cancel: threading.Event, colour_by: str, in_process: bool = True
) -> Generator[RunEvent, None, tuple[RunOutcome, Layer | None, StoreView | None]]:
    """The worker's job: the run (in a prediction process of its own unless ``in_process``
    is false), then (still off the GUI thread) the finished store read back and its spots
    layer, with every gene as a feature, built for the GUI to add."""
    events = process.run_events_in_process if in_process else run_events
    outcome = yield from run_outcome(request, cancel, events)
    if outcome.store_path is None:
        return outcome, None, None
    view = StoreView.open(outcome.store_path)
    gene = colour_by if colour_by in view.genes else view.genes[0]
    spots = Layer.create(*spots_layer_data(view, gene, visible=view.geometry is None))
    return outcome, spots, view
