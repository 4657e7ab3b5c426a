"""The Predict dock widget: choose a slide layer and a model, press Run, watch heatmaps fill in.

A thin form over the engine. The run itself (:func:`napari_virtual_st.run.run`, through
:func:`~napari_virtual_st.run.run_outcome`) happens in a prediction process of its own
(:mod:`napari_virtual_st.run.process`), followed by a ``napari.qt.threading``
worker; this widget only turns the events it yields into layer updates, progress (here and in
napari's activity dock) and notifications, so the GUI thread never waits for the slide, the
model or the store, nor for Python's interpreter lock while tiles are read and predicted.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Layer
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.labels import keep_height, set_text
from napari_virtual_st._napari.layer_views import LayerViews
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.frames import yx_um_to_xy_level0_px
from napari_virtual_st.pipeline import Progress
from napari_virtual_st.predictor import ModelInfo, Predictor, resolve_providers
from napari_virtual_st.registry import DEFAULT_MODEL_NAME, BundledModel, bundled_models
from napari_virtual_st.run import (
    BatchEvent,
    PreviewEvent,
    Region,
    RunEvent,
    RunOutcome,
    RunSpec,
    StageEvent,
    StoreReadyEvent,
    process,
    run_events,
    run_outcome,
)
from napari_virtual_st.store_view import (
    StoreView,
    forget_view,
    lookup_view,
    register_view,
)

if TYPE_CHECKING:
    import napari

#: Fewest seconds between two heatmap redraws during a run (the first batch draws at once).
REDRAW_INTERVAL_S = 0.25
#: Fewest seconds between two updates of napari's activity dock (each one makes napari
#: process all pending Qt events, canvas drawing included, before it returns).
ACTIVITY_INTERVAL_S = 2.0
#: Milliseconds between the GUI's own steps (preparing a run, finishing it): enough for the
#: event loop to handle input and drawing between two of them. Each step is one layer or one
#: colour bar, so that no two slow napari calls run back to back.
STEP_MS = 15
#: Model chooser entry that opens a file dialog.
BROWSE = "browse…"
GRID_CHOICES = [
    ("Visium: 55 µm spots, 100 µm apart (hexagonal)", "visium"),
    ("Legacy ST: 100 µm spots, 200 µm apart (square)", "st"),
    ("Dense: square tiles of the model's size", "dense"),
]
_PROVIDER_NAMES = {
    "TensorrtExecutionProvider": "TensorRT (NVIDIA GPU)",
    "CUDAExecutionProvider": "CUDA (NVIDIA GPU)",
    "CPUExecutionProvider": "CPU",
}


@functools.cache
def usable_bundled_models() -> tuple[BundledModel, ...]:
    """The bundled models, validated once per session; the default model first (the one
    choosers select), the others by name."""
    usable = [m for m in bundled_models() if m.info is not None]
    return tuple(sorted(usable, key=lambda m: m.name != DEFAULT_MODEL_NAME))


def provider_label(providers: list[str] | tuple[str, ...]) -> str:
    """Human name of the execution provider that runs first."""
    if not providers:
        return "unknown"
    return _PROVIDER_NAMES.get(providers[0], providers[0].removesuffix("ExecutionProvider"))


def model_summary(info: ModelInfo) -> str:
    """One line about a model: genes, tile size, what values mean, held-out metric."""
    parts = [
        f"{len(info.genes)} genes",
        f"{info.tile_px} px tiles of {info.tile_um:g} µm",
        info.target,
    ]
    metric = metric_summary(info.metadata.get("metrics"))
    if metric:
        parts.append(metric)
    if "variance" in info.outputs:
        parts.append("with uncertainty")
    return " · ".join(parts)


def metric_summary(metrics: Any) -> str:
    """The headline held-out correlations of a model's ``vst.metrics`` (PCC-* entries)."""
    if not isinstance(metrics, dict):
        return ""
    raw = metrics.get("raw")
    source = raw if isinstance(raw, dict) else metrics
    pcc = [
        f"{key} {value:.2f}"
        for key, value in source.items()
        if str(key).upper().startswith("PCC") and isinstance(value, (int, float))
    ]
    if not pcc:
        return ""
    where = metrics.get("test_section")
    return "held-out " + ", ".join(pcc[:3]) + (f" (test section {where})" if where else "")


def file_edit_path(edit: FileEdit) -> Path:
    """The one path a single-file or folder ``FileEdit`` holds."""
    value = edit.value
    if not isinstance(value, Path):
        raise TypeError(f"{edit.label} holds {value!r}, not one path")
    return value


def default_output_dir(slide_path: Path) -> Path:
    """Where results go by default: beside the slide, unless that folder is not writable or
    is inside the installed package (the bundled sample slide); then ``~/napari-virtual-st``."""
    package = Path(__file__).resolve().parents[1]
    folder = slide_path.resolve().parent
    if os.access(folder, os.W_OK) and not folder.is_relative_to(package):
        return folder
    return Path.home() / "napari-virtual-st"


def predict_then_build_spots(
    request: RunSpec, cancel: threading.Event, colour_by: str, in_process: bool = True
) -> Generator[RunEvent, None, tuple[RunOutcome, Layer | None, StoreView | None]]:
    """The worker's job: the run (in a prediction process of its own unless ``in_process``
    is false), then (still off the GUI thread) the finished store read back and its spots
    layer, with every gene as a feature, built for the GUI to add."""
    from napari.layers import Layer

    events = process.run_events_in_process if in_process else run_events
    outcome = yield from run_outcome(request, cancel, events)
    if outcome.store_path is None:
        return outcome, None, None
    view = StoreView.open(outcome.store_path)
    gene = colour_by if colour_by in view.genes else view.genes[0]
    spots = Layer.create(*vst_layers.spots_layer_data(view, gene, visible=view.geometry is None))
    return outcome, spots, view


class PredictWidget(Container):
    """Predict gene expression over a slide layer with an ONNX model.

    Parameters
    ----------
    napari_viewer
        The viewer whose slide layers are offered and where results appear.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._extra_models: list[tuple[str, Path]] = []
        self._model_info: dict[Path, ModelInfo] = {}
        self._worker: GeneratorWorker | None = None
        self._cancel = threading.Event()
        self._view: StoreView | None = None
        self._preview: StoreView | None = None
        self._preview_drawn = False
        self._run_layers: list[Layer] = []
        self._to_reveal: set[str] = set()
        self._made: dict[tuple[str, bool], LayerViews] = {}
        self._progress: napari_progress | None = None
        self._run_slide_layer: Layer | None = None
        self._latest: Progress | None = None
        self._drawn = False
        self._activity_time = 0.0
        self._run_store: Path | None = None
        self._run_model: Path | None = None
        self._closed = False
        self._pending_steps = 0
        self._steps: collections.deque[Callable[[], None]] = collections.deque()
        self._started = 0.0
        self._output_is_default = True
        self._setting_output = False
        self.batch_size = 32
        #: Run in a prediction process (``False``: in a thread of napari's process)
        self.in_process = True
        self.last_outcome: RunOutcome | None = None
        #: the worker's messages not handled yet: (handler, arguments, waits for the layers)
        self._inbox: collections.deque[tuple[Callable[..., None], tuple[Any, ...], bool]] = (
            collections.deque()
        )
        self._draining = False
        #: the run's layers are still being made (its end is handled once they are there)
        self._preparing = False

        self.slide = ComboBox(label="Slide", choices=self._slide_choices)
        self.mpp = FloatSpinBox(
            label="µm per pixel", value=0.5, min=0.01, max=20.0, step=0.001, visible=False
        )
        self.mpp_hint = Label(
            value="This slide does not record its resolution: give it (0.25 at 40×, 0.5 at 20×).",
            visible=False,
        )
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_info = Label(value="")
        self.grid = ComboBox(label="Spots", choices=GRID_CHOICES, value="visium")
        self.min_tissue = FloatSlider(
            label="Tissue per spot ≥", value=0.5, min=0.0, max=1.0, step=0.05
        )
        self.output = FileEdit(
            label="Save to", mode=FileDialogMode.OPTIONAL_FILE, filter="*.vst.zarr"
        )
        self.overwrite = CheckBox(text="Replace earlier results in this file", value=False)
        self.provider = Label(value=f"Runs on: {provider_label(resolve_providers(None))}")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.progress_bar = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.status = Label(value="Open a slide, choose a model, press Run.")
        for label in (self.model_info, self.mpp_hint):
            label.native.setWordWrap(True)
        keep_height(self.status, 4)  # it changes all through a run: no relayout each time
        self.extend(
            [
                self.slide,
                self.mpp_hint,
                self.mpp,
                self.model,
                self.model_info,
                self.grid,
                self.min_tissue,
                self.output,
                self.overwrite,
                self.provider,
                buttons,
                self.progress_bar,
                self.status,
            ]
        )
        self.slide.changed.connect(self._on_slide_changed)
        self.model.changed.connect(self._on_model_changed)
        self.grid.changed.connect(self._update_default_output)
        self.output.changed.connect(self._on_output_edited)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._redraw_timer = QTimer()
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.timeout.connect(self._redraw)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        self.native.destroyed.connect(self._on_destroyed)
        self._on_model_changed()
        self._on_slide_changed()
        # the Gene browser docks with this panel (once it is docked itself), not when Run is
        # pressed: docking re-lays out the window, which would stall the run's first seconds
        QTimer.singleShot(0, self._open_gene_browser)
        # a prediction process imports the engine now, while the user chooses, not at Run
        QTimer.singleShot(0, self._prewarm)

    def _prewarm(self) -> None:
        if self.in_process and not self._closed:
            process.prewarm()

    def _on_destroyed(self, *_: Any) -> None:
        """The panel is closing (or the viewer): stop a run after its current batch."""
        self._closed = True
        self._cancel.set()

    # -- choices ----------------------------------------------------------------------------
    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer) for layer in self._viewer.layers if vst_layers.slide_path_of(layer)
        ]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, object]]:
        choices: list[tuple[str, object]] = []
        for model in usable_bundled_models():
            assert model.info is not None
            self._model_info[model.path] = model.info
            choices.append((f"{model.info.name} ({model.name}, bundled)", model.path))
        choices.extend(self._extra_models)
        choices.append(("Browse for a model file (.onnx)…", BROWSE))
        return choices

    def add_model(self, path: str | Path) -> None:
        """Validate an ONNX model file, offer it in the chooser and select it.

        Raises
        ------
        ModelError
            If the file does not follow the model contract (the message names the problem).
        """
        path = Path(path)
        info = Predictor(path, providers=["cpu"]).info
        self._model_info[path] = info
        if all(p != path for _, p in self._extra_models):
            self._extra_models.append((f"{info.name} ({path.name})", path))
        self.model.reset_choices()
        self.model.value = path

    # -- reactions --------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        self.slide.reset_choices()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if added is not None and vst_layers.slide_path_of(added) is not None:
            self.slide.value = added  # a slide just opened is the one to predict on
        self._on_slide_changed()

    def _on_slide_changed(self, _value: Any = None) -> None:
        layer = self.slide.value
        needs_mpp = layer is not None and vst_layers.slide_mpp_of(layer) is None
        self.mpp.visible = needs_mpp
        self.mpp_hint.visible = needs_mpp
        self.run_button.enabled = layer is not None and self._worker is None
        self._update_default_output()

    def _on_model_changed(self, _value: Any = None) -> None:
        value = self.model.value
        if value == BROWSE:
            self._browse_model()
            return
        info = self._model_info.get(value) if value is not None else None
        self.model_info.value = model_summary(info) if info is not None else ""
        self._update_default_output()

    def _browse_model(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        filename, _ = QFileDialog.getOpenFileName(
            self.native, "Choose an ONNX model", str(Path.home()), "ONNX models (*.onnx)"
        )
        if filename:
            try:
                self.add_model(filename)
                return
            except VirtualSTError as exc:
                show_error(str(exc))
        choices = [c for c in self.model.choices if c != BROWSE]
        self.model.value = choices[0] if choices else None

    def _on_output_edited(self, _value: Any = None) -> None:
        if not self._setting_output:
            self._output_is_default = False

    def _update_default_output(self, _value: Any = None) -> None:
        layer = self.slide.value
        model = self.model.value
        if not self._output_is_default or layer is None or not isinstance(model, Path):
            return
        slide_path = vst_layers.slide_path_of(layer)
        assert slide_path is not None
        name = f"{slide_path.stem}.{model.stem}.{self.grid.value}.vst.zarr"
        self._setting_output = True
        try:
            self.output.value = default_output_dir(slide_path) / name
        finally:
            self._setting_output = False

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a run is in progress (its last layers included)."""
        return self._worker is not None or self._preparing or self._pending_steps > 0

    @property
    def worker(self) -> GeneratorWorker | None:
        """The worker of the run in progress."""
        return self._worker

    def request(self) -> RunSpec:
        """The run the form describes.

        Raises
        ------
        VirtualSTError
            If no slide or model is chosen.
        """
        layer = self.slide.value
        if layer is None:
            raise VirtualSTError("open a slide first (File ▸ Open, or the sample data menu)")
        model = self.model.value
        if not isinstance(model, Path):
            raise VirtualSTError("choose a model first")
        slide_path = vst_layers.slide_path_of(layer)
        assert slide_path is not None
        mpp = vst_layers.slide_mpp_of(layer)
        if mpp is None:
            mpp = float(self.mpp.value)
        output = file_edit_path(self.output)
        if not output.name.endswith(".vst.zarr"):
            output = output.with_name(output.name + ".vst.zarr")
        return RunSpec(
            slide_path=slide_path,
            model_path=model,
            store_path=output,
            grid_kind=self.grid.value,
            min_tissue_fraction=float(self.min_tissue.value),
            mpp=mpp,
            batch_size=self.batch_size,
            overwrite=bool(self.overwrite.value),
            visible_xy_level0_px=self.visible_region(),
            preview=True,
            report_values=True,
            yield_cpu=True,
        )

    def visible_region(self) -> Region | None:
        """The part of the chosen slide on screen, (x0, y0, x1, y1) level-0 pixels (``None``
        when the canvas size is unknown)."""
        layer = self.slide.value
        viewer = self._viewer
        scene = getattr(viewer, "scene", None)  # napari ≥ 0.9; earlier: viewer.camera
        camera = scene.camera if scene is not None else viewer.camera
        canvas = getattr(viewer, "canvas", None)
        size = canvas.size if canvas is not None else getattr(viewer, "_canvas_size", None)
        if layer is None or size is None or min(size[-2:]) <= 0:
            return None
        centre = np.asarray(camera.center[-2:], dtype=np.float64)
        half = np.asarray(size[-2:], dtype=np.float64) / max(float(camera.zoom), 1e-12) / 2
        translate = np.asarray(layer.translate[-2:], dtype=np.float64)
        world_per_px = float(layer.scale[-1])  # the slide layer's world units per pixel
        corners = yx_um_to_xy_level0_px(
            np.stack([centre - half, centre + half]) - translate, world_per_px
        )
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return (float(x0), float(y0), float(x1), float(y1))

    def run(self, _value: Any = None) -> GeneratorWorker | None:
        """Start predicting in a worker thread (returns the worker, or ``None`` if refused).

        The GUI's preparation goes in small steps, one event-loop turn each: the first
        heatmap layer is made (empty until values come, so that afterwards the GUI only has
        to draw values; a rerun into the same store reuses its layers), then the worker
        starts, told which part of the slide is on screen (those spots come first), and
        while it opens the slide and finds tissue napari's views of the layer are made and
        it is added, then the other layers, the activity dock's bar and the Gene browser
        follow. A run that ends before they are all there is ended after them. On a large
        slide the first values are a few preview spots predicted on a quick coarse tissue
        mask (see :mod:`napari_virtual_st.run.engine`); they stay until the run's own replace them.
        """
        if self.running:
            return None
        try:
            request = self.request()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        assert isinstance(request.model_path, Path)  # request() names the model's file
        info = self._model_info[request.model_path]
        self._run_slide_layer = self.slide.value
        if request.overwrite:
            forget_view(request.store_path)
        self._cancel = threading.Event()
        self._view = None
        self._preview = None
        self._preview_drawn = False
        self._run_layers = []
        self._to_reveal = set()
        self._made = {}
        self._latest = None
        self._drawn = False
        self._started = time.perf_counter()
        self._run_store = request.store_path
        self._run_model = request.model_path
        self.last_outcome = None
        genes = self._genes_to_show(request.store_path, info)
        worker = create_worker(
            predict_then_build_spots,
            request,
            self._cancel,
            genes[-1],
            self.in_process,
            _start_thread=False,
        )
        # napari's progress bars and layer controls process Qt events while they update, so
        # a handler can be re-entered; the inbox keeps the worker's messages in order
        worker.yielded.connect(lambda event: self._post(self._on_event, event))
        # (a run that ends before its layers are there is ended once they are)
        worker.returned.connect(
            lambda result: self._post(self._on_outcome, *result, after_layers=True)
        )
        worker.finished.connect(lambda: self._post(self._on_finished, after_layers=True))
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress_bar.max = 0  # busy until the number of spots is known
        self._set_status("starting…")
        # the run starts once the first heatmap layer is made; napari's views of the layer
        # and the add follow, each in a turn of its own (together they are napari's longest
        # piece of GUI work)
        steps = self._layer_steps(request.store_path, info, genes)
        steps[1:1] = [worker.start]
        steps += [
            functools.partial(self._start_activity, request.slide_path.name),
            self._open_gene_browser,  # (docked with this panel; again if it was closed)
        ]
        self._preparing = True
        self._step(steps)
        return worker

    def _step(self, steps: list[Callable[[], None]]) -> None:
        """Run the next preparation step of the run in its own event-loop turn; after the
        last one, the end of the run if it came meanwhile."""

        def next_step() -> None:
            if self._closed:  # (the rest of the run's layers are not made)
                steps.clear()
                self._step(steps)
                return
            try:
                steps.pop(0)()
            finally:  # (a failed step must not keep the run from starting, nor ending)
                self._step(steps)

        if steps:
            QTimer.singleShot(STEP_MS, next_step)
        else:
            self._preparing = False
            self._drain()

    def cancel(self, _value: Any = None) -> None:
        """Ask the run to stop after the batch in progress (finished batches are kept)."""
        if self._worker is None:
            return
        self._cancel.set()
        self.cancel_button.enabled = False
        self._set_status("cancelling after the current batch…")

    def _start_activity(self, slide_name: str) -> None:
        """A bar in napari's activity dock for this run."""
        self._progress = napari_progress(total=0, desc=f"Predicting {slide_name}")
        if self._latest is not None:
            self._progress.total = self._latest.spots_total

    def _genes_to_show(self, store_path: Path, info: ModelInfo) -> list[str]:
        """Genes already shown for this store (a resumed or repeated run), else the first."""
        shown = [
            vst_layers.vst_meta(layer)["gene"]
            for layer in vst_layers.find_layers(self._viewer, store_path, "heatmap")
        ]
        return [g for g in shown if g in info.genes] or [info.genes[0]]

    def _layer_steps(
        self, store_path: Path, info: ModelInfo, genes: list[str]
    ) -> list[Callable[[], None]]:
        """Steps that add the run's heatmap layers (empty until values come), one layer
        each, then select the last gene's and draw what arrived meanwhile. Layers an earlier
        run into the same store left are reused, not made again."""
        with_variance = "variance" in info.outputs
        steps: list[Callable[[], None]] = []
        for gene in genes:
            for uncertainty in (False, True) if with_variance else (False,):
                steps.append(functools.partial(self._make_layer, store_path, gene, uncertainty))
                steps.append(functools.partial(self._make_view, gene, uncertainty, "visual"))
                steps.append(functools.partial(self._make_view, gene, uncertainty, "controls"))
                steps.append(functools.partial(self._prepare_layer, store_path, gene, uncertainty))
                if not uncertainty:
                    steps.append(functools.partial(self._reveal_layer, store_path, gene))
        steps.append(functools.partial(self._layers_ready, store_path, genes[-1]))
        return steps

    def _make_layer(self, store_path: Path, gene: str, uncertainty: bool) -> None:
        """Make (not add) the run's empty, hidden heatmap or uncertainty layer of ``gene``,
        unless the viewer has it: its own turn, before :meth:`_make_view` makes napari's
        views of it and :meth:`_prepare_layer` adds it."""
        role = "uncertainty" if uncertainty else "heatmap"
        if not vst_layers.find_layers(self._viewer, store_path, role, gene):
            data = vst_layers.empty_heatmap_layer_data(store_path, gene, uncertainty=uncertainty)
            data[1]["visible"] = False
            self._made[(gene, uncertainty)] = LayerViews(self._viewer, Layer.create(*data))

    def _make_view(self, gene: str, uncertainty: bool, view: str) -> None:
        """Make napari's canvas visual or controls of a layer :meth:`_make_layer` made, in a
        turn of its own (napari would make both while adding the layer)."""
        views = self._made.get((gene, uncertainty))
        if views is not None and view == "visual":
            views.make_visual()
        elif views is not None:
            views.make_controls()

    def _prepare_layer(self, store_path: Path, gene: str, uncertainty: bool) -> None:
        """Add the layer :meth:`_make_layer` made, unless the viewer has one by now.

        It is added hidden: adding a layer and drawing it for the first time each cost napari
        tens of milliseconds, in two event-loop turns they do not add up to one long stall
        (:meth:`_reveal_layer` shows a heatmap in the next turn; uncertainty stays hidden)."""
        role = "uncertainty" if uncertainty else "heatmap"
        views = self._made.pop((gene, uncertainty), None)
        if views is None:
            return
        if vst_layers.find_layers(self._viewer, store_path, role, gene):
            views.close()
            return
        # (selected in _layers_ready, in a later turn)
        layer = vst_layers.add_layer(self._viewer, views.layer, select=False, views=views)
        self._run_layers.append(layer)
        if not uncertainty:
            self._to_reveal.add(gene)

    def _reveal_layer(self, store_path: Path, gene: str) -> None:
        """Show the heatmap layer :meth:`_prepare_layer` added hidden for this run."""
        if gene in self._to_reveal:
            self._to_reveal.discard(gene)
            for layer in vst_layers.find_layers(self._viewer, store_path, "heatmap", gene):
                layer.visible = True

    def _layers_ready(self, store_path: Path, gene: str) -> None:
        """Select the run's heatmap and draw the values that came before its layers."""
        active = vst_layers.find_layers(self._viewer, store_path, "heatmap", gene)
        if active:
            self._viewer.layers.selection.active = active[0]
        if self._view is not None:  # the store was ready before the layers were
            self._redraw()
        elif self._preview is not None:
            self._draw_preview()

    # -- events from the worker (GUI thread) ------------------------------------------------
    def _post(self, handler: Callable[..., None], *args: Any, after_layers: bool = False) -> None:
        """Handle a message from the worker after those before it (never re-entered);
        ``after_layers``: not before the run's layers are made."""
        self._inbox.append((handler, args, after_layers))
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._inbox:
                handler, args, after_layers = self._inbox[0]
                if after_layers and self._preparing:
                    break  # (until the last preparation step)
                self._inbox.popleft()
                handler(*args)
        finally:
            self._draining = False

    def _on_event(self, event: RunEvent) -> None:
        if isinstance(event, StageEvent):
            self._set_status(f"{event.message}…")
        elif isinstance(event, PreviewEvent):
            self._preview = event.view
            self._draw_preview()
        elif isinstance(event, StoreReadyEvent):
            self._on_store_ready(event)
        elif isinstance(event, BatchEvent):
            self._on_batch(event)

    def _on_store_ready(self, event: StoreReadyEvent) -> None:
        assert event.view is not None  # request() asks for values (report_values)
        assert self._run_model is not None  # set when the run started
        view = register_view(event.view)
        self._view = view
        # layers of an earlier run into this file that this run does not refresh go
        genes = self._genes_to_show(view.path, self._model_info[self._run_model])
        for layer in vst_layers.find_layers(self._viewer, view.path):
            meta = vst_layers.vst_meta(layer)
            keep = meta.get("role") in ("heatmap", "uncertainty") and meta.get("gene") in genes
            if not keep or (meta.get("role") == "uncertainty" and not view.has_variance):
                self._viewer.layers.remove(layer)
        self._latest = event.progress
        layer = self._run_slide_layer
        if (
            layer is not None
            and layer in self._viewer.layers
            and tuple(layer.scale[-2:]) != (event.mpp, event.mpp)
        ):
            vst_layers.place_slide_layer(layer, event.mpp)
        total = event.progress.spots_total
        self.progress_bar.max = max(total, 1)
        if self._progress is not None:
            self._progress.total = total
            self._progress.set_description(f"Predicting {total:,} spots")
        self.provider.value = f"Runs on: {provider_label(event.providers)}"
        self._redraw()

    def _on_batch(self, event: BatchEvent) -> None:
        """Take a batch's values; the screen follows at most every ``REDRAW_INTERVAL_S``."""
        view = self._view
        if view is None or event.progress.spots is None:
            return
        view.update(event.progress.spots, event.expression, event.variance)
        self._latest = event.progress
        if not self._drawn:
            self._redraw()  # the first values go on screen at once
        elif not self._redraw_timer.isActive():
            self._redraw_timer.start(round(REDRAW_INTERVAL_S * 1000))

    def _draw_preview(self) -> None:
        """Show the preview's values until the run's own first values replace them."""
        preview = self._preview
        if preview is None or self._view is not None:
            return
        vst_layers.refresh_heatmaps(self._viewer, preview)
        self._preview_drawn = True
        self._set_status(
            f"first {preview.n_spots} spots predicted; finding tissue at full resolution…"
        )

    def _redraw(self) -> None:
        """Show the values and progress received so far."""
        self._redraw_timer.stop()
        view, p = self._view, self._latest
        if view is None or p is None:
            return
        if self._preview is None or p.spots_done > 0:  # (a preview stays until values come)
            self._preview = None
            vst_layers.refresh_heatmaps(self._viewer, view)
        self._drawn = self._drawn or p.spots_done > 0
        self.progress_bar.value = p.spots_done
        rate = f" ({p.tiles_per_s:,.0f} spots/s)" if p.tiles_per_s else ""
        self._set_status(f"{p.spots_done:,} of {p.spots_total:,} spots predicted{rate}")
        if time.perf_counter() - self._activity_time >= ACTIVITY_INTERVAL_S:
            self._activity_time = time.perf_counter()
            # in a later event-loop turn of its own (a zero delay would put it in this one)
            QTimer.singleShot(STEP_MS, self._update_activity)

    def _update_activity(self) -> None:
        """Bring napari's activity dock up to date."""
        p = self._latest
        if self._progress is not None and p is not None and p.spots_done > self._progress.n:
            self._progress.update(p.spots_done - self._progress.n)

    def _on_outcome(
        self, outcome: RunOutcome, spots: Layer | None = None, final: StoreView | None = None
    ) -> None:
        self.last_outcome = outcome
        for gene in list(self._to_reveal):  # (a run that ended before its layers were shown)
            if self._run_store is not None:
                self._reveal_layer(self._run_store, gene)
        self._redraw()  # whatever was finished, cancelled runs included
        if outcome.error is not None:
            if self._view is None:  # no store: the layers made for it go
                for layer in vst_layers.find_layers(self._viewer, self._run_store):
                    if layer.data.shape == (1, 1) or any(layer is m for m in self._run_layers):
                        self._viewer.layers.remove(layer)
                earlier = lookup_view(self._run_store) if self._run_store else None
                if self._preview_drawn and earlier is not None:  # earlier values, not the preview
                    vst_layers.refresh_heatmaps(self._viewer, earlier)
                self._preview = None
            if outcome.cancelled:
                show_info(str(outcome.error))
                self._set_status(str(outcome.error))
                if self._view is not None:
                    self._later_colorbars(self._view)
            else:
                show_error(str(outcome.error))
                self._set_status(f"stopped: {outcome.error}")
            return
        view = self._view
        if view is None:  # (the store's first report always comes first)
            view = self._view = register_view(final) if final is not None else None
        elif final is not None:  # the whole store, as the worker read it back: same values
            view.update(slice(None), final.expression, final.variance)
        if view is None:
            return
        seconds = time.perf_counter() - self._started
        self._set_status(
            f"Done: {view.n_spots:,} spots predicted in {seconds:.1f} s and saved to {view.path}"
        )
        # the rest in later event-loop turns, so the GUI answers in between
        if spots is not None:  # napari's views of it first, a turn each
            views = LayerViews(self._viewer, spots)
            self._later(views.make_visual)
            self._later(views.make_controls)
            self._later(functools.partial(self._add_spots, views, view))
        self._later_colorbars(view)

    def _add_spots(self, spots: LayerViews, view: StoreView) -> None:
        # the status bar shows the values of the active layer under the cursor: a heatmap
        # (selected already) where there is one, else the spots
        shown = vst_layers.find_layers(self._viewer, view.path, "heatmap")
        vst_layers.add_layer(self._viewer, spots.layer, select=not shown, views=spots)

    def _later_colorbars(self, view: StoreView) -> None:
        """Colour bars for the run's heatmaps once they have values, one per later event-loop
        turn (the first one costs napari a font atlas and a new visual: not while batches
        are landing)."""
        for layer in vst_layers.find_layers(self._viewer, view.path, "heatmap"):
            self._later(functools.partial(vst_layers.show_colorbar, layer))

    def _later(self, step: Callable[[], None]) -> None:
        """Run ``step`` in a later event-loop turn, after the steps queued before it (one
        per turn, ``STEP_MS`` apart), unless the panel has closed by then."""
        self._steps.append(step)
        self._pending_steps += 1
        if self._pending_steps == 1:
            QTimer.singleShot(STEP_MS, self._next_later)

    def _next_later(self) -> None:
        step = self._steps.popleft()
        try:
            if not self._closed:
                step()
        finally:
            self._pending_steps -= 1
            if self._steps:
                QTimer.singleShot(STEP_MS, self._next_later)

    def _on_finished(self) -> None:
        self._redraw_timer.stop()
        self._worker = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.cancel_button.enabled = False
        self.run_button.enabled = self.slide.value is not None

    def _set_status(self, text: str) -> None:
        set_text(self.status, text)

    def _open_gene_browser(self) -> None:
        """Dock the gene browser beside this widget, once (when napari knows the plugin)."""
        window = getattr(self._viewer, "window", None)
        if window is None or self._closed:
            return
        try:
            window.add_plugin_dock_widget("napari-virtual-st", "Gene browser")
        except Exception:  # the plugin may not be registered (e.g. a widget made in a test)
            return
