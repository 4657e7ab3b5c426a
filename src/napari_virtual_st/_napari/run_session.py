"""One run of the Predict panel, from Run to its last layer: :class:`RunSession`.

The run itself (:func:`napari_virtual_st.run.run`, through
:func:`~napari_virtual_st.run.run_outcome`) happens in a prediction process of its own
(:mod:`napari_virtual_st.run.process`), followed by a ``napari.qt.threading`` worker, so the
GUI thread never waits for the slide, the model or the store, nor for Python's interpreter
lock while tiles are read and predicted (the worker's job: :mod:`.run_worker`). The session
turns the events the worker yields into layer updates, and shows progress, status and the
run's end in the panel that started it (a :class:`~.run_panel.RunPanel`) and in napari's
activity dock (:mod:`.run_activity`).

All of its GUI work goes through one queue of steps (:class:`.gui_steps.GuiSteps`): the
run's heatmap layers and napari's views of them are made beforehand, each in an event-loop
turn of its own; redraws follow batches at most every ``REDRAW_INTERVAL_S``; the run's end
waits for the layers, then the spots layer and the colour bars follow, a turn each. The
worker's messages reach it through an :class:`~.worker_inbox.Inbox`, in order.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.layers import Layer
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import notify
from napari_virtual_st._napari.gui_steps import STEP_MS, GuiSteps
from napari_virtual_st._napari.layer_views import LayerViews
from napari_virtual_st._napari.run_activity import RunActivity
from napari_virtual_st._napari.run_layers import RunLayers
from napari_virtual_st._napari.run_panel import RunPanel
from napari_virtual_st._napari.run_worker import predict_then_build_spots
from napari_virtual_st._napari.views import views_of
from napari_virtual_st._napari.worker_inbox import Inbox
from napari_virtual_st.display import layer_name
from napari_virtual_st.pipeline import Progress
from napari_virtual_st.predictor import ModelInfo
from napari_virtual_st.run import (
    BatchEvent,
    PreviewEvent,
    RunEvent,
    RunOutcome,
    RunSpec,
    StageEvent,
    StoreReadyEvent,
)
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    from pathlib import Path

    import napari

#: Fewest seconds between two heatmap redraws during a run (the first batch draws at once).
REDRAW_INTERVAL_S = 0.25


class RunSession:
    """One run: its worker, its layers, its progress, its end.

    Parameters
    ----------
    viewer
        Where the run's layers go.
    spec
        The run (it must ask for values: ``report_values``).
    info
        The model's description (its genes and outputs).
    panel
        Where progress, status and the end are shown.
    slide_layer
        The slide's layer, placed in µm once the run knows the slide's resolution.
    in_process
        Run in a prediction process (``False``: in a thread of napari's process).
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        spec: RunSpec,
        info: ModelInfo,
        panel: RunPanel,
        *,
        slide_layer: Layer | None = None,
        in_process: bool = True,
    ) -> None:
        self.spec = spec
        self._viewer = viewer
        self._info = info
        self._panel = panel
        self._slide_layer = slide_layer
        self._in_process = in_process
        self._cancel = threading.Event()
        self._steps = GuiSteps()
        #: the worker's messages not handled yet (handled in order, never re-entered)
        self._inbox = Inbox()
        self._closed = False
        #: the worker while it runs
        self.worker: GeneratorWorker | None = None
        #: the store's values as they arrive (``None`` until the store is ready)
        self.view: StoreView | None = None
        #: how the run ended (``None`` until it has)
        self.outcome: RunOutcome | None = None
        self._preview: StoreView | None = None
        self._preview_drawn = False
        self._latest: Progress | None = None
        self._drawn = False
        self._activity = RunActivity()
        self._started = 0.0
        self.genes = self._genes_to_show()
        #: the run's heatmap layers, made before its values come
        self.layers = RunLayers(viewer, spec.store_path, info, self.genes)

    @property
    def running(self) -> bool:
        """Whether the run is in progress, its last layers included."""
        return self.worker is not None or len(self._steps) > 0

    def start(self) -> GeneratorWorker:
        """Start the run: its first heatmap layer is made, then the worker starts, told which
        part of the slide is on screen (those spots come first); while it opens the slide
        and finds tissue, napari's views of the layer are made and the layer is added, then
        the other layers and the activity dock's bar follow, a turn each. A run that ends
        before they are all there is ended after them."""
        if self.spec.overwrite:
            views_of(self._viewer).forget(self.spec.store_path)
        worker = create_worker(
            predict_then_build_spots,
            self.spec,
            self._cancel,
            self.genes[-1],
            self._in_process,
            _start_thread=False,
        )
        # napari's progress bars and layer controls process Qt events while they update, so
        # a handler can be re-entered; the inbox keeps the worker's messages in order
        worker.yielded.connect(lambda event: self._post(self._on_event, event))
        # the end waits for the steps before it (the run's layers)
        worker.returned.connect(lambda result: self._post(self._end_after_layers, result))
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._started = time.perf_counter()
        self._panel.show_progress(0, 0)  # busy until the number of spots is known
        self._panel.show_status("starting…")
        steps = self.layers.steps()
        steps.insert(1, worker.start)  # once the first heatmap layer is made
        steps += [self._layers_ready, self._start_activity]
        for step in steps:
            self._steps.then(step)
        return worker

    def then(self, step: Callable[[], None]) -> None:
        """Run ``step`` in a later event-loop turn, after the session's steps so far."""
        self._steps.then(step)

    def cancel(self) -> None:
        """Ask the run to stop after the batch in progress (finished batches are kept)."""
        self._cancel.set()

    def close(self) -> None:
        """The panel has gone: stop the run after its current batch, make no more layers."""
        self._closed = True
        self._cancel.set()
        self._steps.clear()
        self._inbox.clear()

    # -- the run's layers, made beforehand --------------------------------------------------
    def _genes_to_show(self) -> list[str]:
        """Genes already shown for this store (a resumed or repeated run), else the gene of
        the heatmap being looked at (another model's, when this model predicts it too), else
        the first."""
        shown = [
            vst_layers.vst_meta(layer)["gene"]
            for layer in vst_layers.find_layers(self._viewer, self.spec.store_path, "heatmap")
        ]
        active = self._viewer.layers.selection.active
        meta = vst_layers.vst_meta(active) if active is not None else {}
        if not shown and meta.get("role") == "heatmap":
            shown = [meta.get("gene")]
        return [g for g in shown if g in self._info.genes] or [self._info.genes[0]]

    def _layers_ready(self) -> None:
        """Select the run's heatmap and draw the values that came before its layers."""
        active = vst_layers.find_layers(
            self._viewer, self.spec.store_path, "heatmap", self.genes[-1]
        )
        if active:
            self._viewer.layers.selection.active = active[0]
        if self.view is not None:  # the store was ready before the layers were
            self._redraw()
        elif self._preview is not None:
            self._draw_preview()

    def _start_activity(self) -> None:
        """A bar in napari's activity dock for this run."""
        total = None if self._latest is None else self._latest.spots_total
        self._activity.start(f"Predicting {self.spec.slide_path.name}", total)

    # -- events from the worker (GUI thread) ------------------------------------------------
    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        """Handle a message from the worker after those before it (never re-entered)."""
        if not self._closed:
            self._inbox.post(handler, *args)

    def _on_event(self, event: RunEvent) -> None:
        if isinstance(event, StageEvent):
            self._panel.show_status(f"{event.message}…")
        elif isinstance(event, PreviewEvent):
            self._preview = event.view
            self._draw_preview()
        elif isinstance(event, StoreReadyEvent):
            self._on_store_ready(event)
        elif isinstance(event, BatchEvent):
            self._on_batch(event)

    def _on_store_ready(self, event: StoreReadyEvent) -> None:
        assert event.view is not None  # the spec asks for values (report_values)
        view = self.view = views_of(self._viewer).register(event.view)
        # layers of an earlier run into this file that this run does not refresh go
        genes = self._genes_to_show()
        for layer in vst_layers.find_layers(self._viewer, view.path):
            meta = vst_layers.vst_meta(layer)
            keep = meta.get("role") in ("heatmap", "uncertainty") and meta.get("gene") in genes
            if not keep or (meta.get("role") == "uncertainty" and not view.has_variance):
                self._viewer.layers.remove(layer)
        self._latest = event.progress
        layer = self._slide_layer
        if (
            layer is not None
            and layer in self._viewer.layers
            and tuple(layer.scale[-2:]) != (event.mpp, event.mpp)
        ):
            vst_layers.place_slide_layer(layer, event.mpp)
        total = event.progress.spots_total
        self._panel.show_progress(0, max(total, 1))
        self._activity.set_total(total, f"Predicting {total:,} spots")
        self._panel.show_providers(event.providers)
        self._redraw()

    def _on_batch(self, event: BatchEvent) -> None:
        """Take a batch's values; the screen follows at most every ``REDRAW_INTERVAL_S``."""
        view = self.view
        if view is None or event.progress.spots is None:
            return
        view.update(event.progress.spots, event.expression, event.variance)
        self._latest = event.progress
        if not self._drawn:
            self._redraw()  # the first values go on screen at once
        else:
            self._steps.due(self._redraw, REDRAW_INTERVAL_S)

    def _draw_preview(self) -> None:
        """Show the preview's values until the run's own first values replace them."""
        preview = self._preview
        if preview is None or self.view is not None:
            return
        vst_layers.refresh_heatmaps(self._viewer, preview)
        self._preview_drawn = True
        self._panel.show_status(
            f"first {preview.n_spots} spots predicted; finding tissue at full resolution…"
        )

    def _redraw(self) -> None:
        """Show the values and progress received so far."""
        self._steps.drop(self._redraw)
        view, p = self.view, self._latest
        if view is None or p is None:
            return
        if self._preview is None or p.spots_done > 0:  # (a preview stays until values come)
            self._preview = None
            vst_layers.refresh_heatmaps(self._viewer, view)
        self._drawn = self._drawn or p.spots_done > 0
        self._panel.show_progress(p.spots_done, max(p.spots_total, 1))
        rate = f" ({p.tiles_per_s:,.0f} spots/s)" if p.tiles_per_s else ""
        self._panel.show_status(f"{p.spots_done:,} of {p.spots_total:,} spots predicted{rate}")
        if self._activity.due():  # (at most every ACTIVITY_INTERVAL_S, a turn of its own)
            self._steps.due(self._update_activity, STEP_MS / 1000)

    def _update_activity(self) -> None:
        """Bring napari's activity dock up to date."""
        if self._latest is not None:
            self._activity.update(self._latest.spots_done)

    # -- the end ----------------------------------------------------------------------------
    def _end_after_layers(self, result: tuple[RunOutcome, Layer | None, StoreView | None]) -> None:
        self._steps.then(functools.partial(self._on_outcome, *result))

    def _on_worker_finished(self) -> None:
        if self._closed:  # (no more steps)
            self._finish()
        else:
            self._post(self._steps.then, self._finish)

    def _on_outcome(
        self, outcome: RunOutcome, spots: Layer | None = None, final: StoreView | None = None
    ) -> None:
        self.outcome = outcome
        self.layers.reveal_all()  # (a run that ended before its layers were shown)
        self._redraw()  # whatever was finished, cancelled runs included
        if outcome.error is not None:
            self._on_stopped(outcome)
        else:
            self._on_complete(spots, final)
        self._panel.run_ended(outcome)

    def _on_stopped(self, outcome: RunOutcome) -> None:
        """A cancelled or failed run: what it saved stays, the layers made for nothing go."""
        if self.view is None:  # no store: the layers made for it go
            store_path = self.spec.store_path
            for layer in vst_layers.find_layers(self._viewer, store_path):
                if layer.data.shape == (1, 1) or any(layer is m for m in self.layers.added):
                    self._viewer.layers.remove(layer)
            earlier = views_of(self._viewer).lookup(store_path)
            if self._preview_drawn and earlier is not None:  # earlier values, not the preview
                vst_layers.refresh_heatmaps(self._viewer, earlier)
            self._preview = None
        if outcome.cancelled:
            show_info(str(outcome.error))
            self._panel.show_status(str(outcome.error))
            if self.view is not None:
                self._later_colorbars(self.view.path)
        else:
            show_error(notify.toast_message("The prediction stopped.", str(outcome.error)))
            self._panel.show_status(f"stopped: {outcome.error}")

    def _on_complete(self, spots: Layer | None, final: StoreView | None) -> None:
        """A finished run: the whole store shown, then its spots layer and colour bars."""
        view = self.view
        if view is None:  # (the store's first report always comes first)
            view = self.view = (
                views_of(self._viewer).register(final) if final is not None else None
            )
        elif final is not None and not view.has_finished_spots_of(final):
            # the whole store as the worker read it back, where it tells more than the batches
            # did (a resumed run's earlier spots); taking it costs the context over every spot
            view.update(slice(None), final.tile_expression, final.tile_variance)
        if view is None:
            return
        seconds = time.perf_counter() - self._started
        self._panel.show_status(
            f"Done: {view.n_spots:,} spots predicted in {seconds:.1f} s and saved to {view.path}"
        )
        # the rest in later event-loop turns, so the GUI answers in between
        if spots is not None:  # napari's views of it first, a turn each
            views = LayerViews(self._viewer, spots)
            self._steps.then(views.make_visual)
            self._steps.then(views.make_controls)
            self._steps.then(functools.partial(self._add_spots, views, view.path))
        self._later_colorbars(view.path)

    def _add_spots(self, spots: LayerViews, store_path: Path) -> None:
        # the status bar shows the values of the active layer under the cursor: a heatmap
        # (selected already) where there is one, else the spots
        shown = vst_layers.find_layers(self._viewer, store_path, "heatmap")
        taken = [layer.name for layer in self._viewer.layers]
        if spots.layer.name in taken and self.view is not None:  # (another store's spots)
            spots.layer.name = layer_name(
                "spots", self.view.model_name, taken=taken, store=self.view.name
            )
        vst_layers.add_layer(self._viewer, spots.layer, select=not shown, views=spots)

    def _later_colorbars(self, store_path: Path) -> None:
        """Colour bars for the run's heatmaps once they have values, one per later event-loop
        turn (the first one costs napari a font atlas and a new visual: not while batches
        are landing)."""
        for layer in vst_layers.find_layers(self._viewer, store_path, "heatmap"):
            self._steps.then(functools.partial(vst_layers.show_colorbar, layer))

    def _finish(self) -> None:
        """The worker has gone (after the run's end was handled, unless the panel closed)."""
        self._steps.drop(self._redraw)
        self._steps.drop(self._update_activity)
        self.worker = None
        self._activity.close()
        self._panel.worker_finished()
