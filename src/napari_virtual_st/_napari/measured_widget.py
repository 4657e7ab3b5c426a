"""The Measured ST dock widget: load measured spatial transcriptomics, align it to a slide,
predict at its spots and read the per-gene agreement.

A thin form over the engine (:mod:`~napari_virtual_st.measured`, :mod:`~napari_virtual_st.align`,
:mod:`~napari_virtual_st.compare`) and the helpers of :mod:`.measured_layers`. Loading,
automatic registration, prediction and comparison run in ``napari.qt.threading`` workers;
the GUI thread only builds layers, the table and the scatter plot from their results.
Alignment three ways: (a) a scale factor (1 = the same image), (b) landmarks clicked in two
Points layers and fitted (similarity or affine) with the residual in µm, (c) automatic
registration of the measured image to the slide thumbnail, with a quality score and an
overlay layer; landmarks refine it. The alignment is saved with the prediction store.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import measured_layers as ml
from napari_virtual_st._napari.predict_widget import file_edit_path, usable_bundled_models
from napari_virtual_st.align import Transform, fit_landmarks, from_scale
from napari_virtual_st.compare import Comparison
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.measured import MeasuredDataError, MeasuredST, read_measured
from napari_virtual_st.run import BatchEvent, RunEvent, RunSpec, StoreReadyEvent, run_events
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.store_view import StoreView, forget_view, register_view

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

DATA_KINDS = [
    ("Space Ranger outs/ folder (Visium)", "spaceranger"),
    ("AnnData .h5ad with obsm['spatial']", "h5ad"),
    ("Legacy ST: counts .tsv + spot file", "legacy"),
]
TABLE_COLUMNS = ("Gene", "Pearson", "Spearman", "SSIM", "Spots")
#: Gap between the predicted and the side-by-side measured values, as a share of the width.
SIDE_BY_SIDE_GAP = 0.08
LANDMARK_COLOURS = {"landmarks-slide": "#ff3030", "landmarks-measured": "#30c0ff"}


@dataclass(frozen=True)
class _Failed:
    """A worker's job ended with an engine error, whose message the user should see."""

    error: VirtualSTError


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (NaN below every number)."""

    def __init__(self, value: float, text: str) -> None:
        super().__init__(text)
        self.number = float(value)
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            a = -math.inf if math.isnan(self.number) else self.number
            b = -math.inf if math.isnan(other.number) else other.number
            return a < b
        return super().__lt__(other)


def _hide_row_numbers(table: QTableWidget) -> None:
    header = table.verticalHeader()
    if header is not None:  # a QTableWidget always has one; Qt's stubs allow None
        header.setVisible(False)


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if ml.is_finite_number(value) else "–"


class MeasuredWidget(Container):
    """Load measured ST, align it to a slide layer, predict at its spots and compare.

    Parameters
    ----------
    napari_viewer
        The viewer holding the slide layer; measured and comparison layers appear there.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.measured: MeasuredST | None = None
        self.transform: Transform | None = None
        self.comparison: Comparison | None = None
        self.registration: ml.Registration | None = None
        self.image_name: str | None = None
        self.image_scale = 1.0
        self.batch_size = 32
        self._image: np.ndarray | None = None
        self._library: np.ndarray | None = None
        self._columns: Any = None
        self._columns_of: MeasuredST | None = None
        self._slide_layer: Layer | None = None
        self._worker: FunctionWorker | GeneratorWorker | None = None
        self._cancel = threading.Event()
        self._gene: str | None = None
        self._predicted_layers: list[Layer] = []
        self._closed = False

        # -- data ---------------------------------------------------------------------------
        self.slide = ComboBox(label="Slide", choices=self._slide_choices)
        self.kind = ComboBox(label="Data", choices=DATA_KINDS, value="spaceranger")
        self.data_path = FileEdit(label="Counts", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.spots_path = FileEdit(
            label="Spot file", mode=FileDialogMode.EXISTING_FILE, filter="*.tsv"
        )
        self.image_path = FileEdit(label="Image", mode=FileDialogMode.EXISTING_FILE)
        self.pixel_scale = FloatSpinBox(
            label="Spot px → image px", value=1.0, min=1e-6, max=100.0, step=1e-6
        )
        self.load_button = PushButton(text="Load measured data")
        self.data_info = Label(value="")
        # -- alignment ----------------------------------------------------------------------
        self.scale = FloatSpinBox(
            label="Slide px per measured px", value=1.0, min=1e-6, max=1e4, step=1e-6
        )
        self.scale_button = PushButton(text="(a) Same image / scale factor")
        self.landmark_kind = ComboBox(
            label="Landmark fit", choices=["similarity", "affine"], value="similarity"
        )
        self.landmarks_button = PushButton(text="(b) Place landmarks")
        self.fit_button = PushButton(text="Fit landmarks")
        self.scale_known = CheckBox(text="Scale known (the factor above)", value=False)
        self.register_button = PushButton(text="(c) Auto-register")
        self.transform_info = Label(value="No alignment yet.")
        # -- prediction and comparison --------------------------------------------------------
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.store = FileEdit(
            label="Store", mode=FileDialogMode.OPTIONAL_FILE, filter="*.vst.zarr"
        )
        self.overwrite = CheckBox(text="Replace earlier results in this store", value=False)
        self.predict_button = PushButton(text="Predict at measured spots")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.compare_button = PushButton(text="Compare")
        self.save_button = PushButton(text="Save alignment with the store")
        self.side_by_side = CheckBox(text="Measured values beside the predicted", value=True)
        self.summary = Label(value="")
        self.status = Label(value="Open a slide, then load the measured data of that section.")
        for label in (self.data_info, self.transform_info, self.summary, self.status):
            label.native.setWordWrap(True)
        row = Container(
            widgets=[self.landmarks_button, self.fit_button], layout="horizontal", labels=False
        )
        run_row = Container(
            widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.slide,
                self.kind,
                self.data_path,
                self.spots_path,
                self.image_path,
                self.pixel_scale,
                self.load_button,
                self.data_info,
                self.scale,
                self.scale_button,
                self.landmark_kind,
                row,
                self.scale_known,
                self.register_button,
                self.transform_info,
                self.model,
                self.store,
                self.overwrite,
                run_row,
                self.progress_bar,
                self.save_button,
                self.compare_button,
                self.side_by_side,
                self.summary,
            ]
        )
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        _hide_row_numbers(self.table)
        self.table.setMinimumHeight(200)
        self.figure = Figure(figsize=(3.4, 2.8), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.axes = self.figure.add_subplot()
        self._scatter: Any = None
        self.native.layout().addWidget(self.table)
        self.native.layout().addWidget(self.canvas)
        self.append(self.status)

        self.kind.changed.connect(self._on_kind_changed)
        self.load_button.changed.connect(self.load)
        self.scale_button.changed.connect(self.apply_scale)
        self.landmarks_button.changed.connect(self.add_landmark_layers)
        self.fit_button.changed.connect(self.fit)
        self.register_button.changed.connect(self.auto_register)
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        self.compare_button.changed.connect(self.run_compare)
        self.save_button.changed.connect(self.save_transform)
        self.store.changed.connect(self._on_store_changed)
        self.side_by_side.changed.connect(self._on_side_by_side)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        self.native.destroyed.connect(self._on_destroyed)
        self._on_kind_changed()
        self._update_buttons()

    def _on_destroyed(self, *_: Any) -> None:
        self._closed = True
        self._cancel.set()

    # -- choices and state ------------------------------------------------------------------
    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer) for layer in self._viewer.layers if vst_layers.slide_path_of(layer)
        ]

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, Path]]:
        out = []
        for model in usable_bundled_models():
            assert model.info is not None
            out.append((f"{model.info.name} ({model.name}, bundled)", model.path))
        return out

    def _on_layers_changed(self, _event: Any = None) -> None:
        if self._closed:
            return
        self.slide.reset_choices()
        self._update_buttons()

    def _on_kind_changed(self, _value: Any = None) -> None:
        legacy = self.kind.value == "legacy"
        self.data_path.mode = "d" if self.kind.value == "spaceranger" else "r"
        self.data_path.filter = {"h5ad": "*.h5ad", "legacy": "*.tsv *.tsv.gz"}.get(
            self.kind.value, ""
        )
        for widget in (self.spots_path, self.image_path, self.pixel_scale):
            widget.visible = legacy

    @property
    def busy(self) -> bool:
        """Whether a worker (loading, registration, prediction, comparison) is running."""
        return self._worker is not None

    @property
    def worker(self) -> FunctionWorker | GeneratorWorker | None:
        """The worker in progress."""
        return self._worker

    def _update_buttons(self) -> None:
        idle = self._worker is None
        loaded = self.measured is not None and self.slide.value is not None
        self.load_button.enabled = idle
        for button in (self.scale_button, self.landmarks_button, self.fit_button):
            button.enabled = idle and loaded
        self.register_button.enabled = idle and loaded and self._image is not None
        self.predict_button.enabled = idle and loaded and self.transform is not None
        self.compare_button.enabled = idle and loaded and self.transform is not None
        self.save_button.enabled = idle and self.transform is not None
        self.cancel_button.enabled = not idle

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _mpp(self) -> float:
        layer = self.slide.value
        if layer is None:
            raise VirtualSTError("open the slide first (File ▸ Open)")
        mpp = vst_layers.slide_mpp_of(layer)
        if mpp is None:
            raise VirtualSTError(
                "the slide does not record its µm per pixel: give it in the Predict widget first"
            )
        return mpp

    def _start(
        self,
        job: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None],
        on_yield: Callable[[Any], None] | None = None,
        message: str,
    ) -> FunctionWorker | GeneratorWorker:
        """Run ``job`` in a worker; its engine errors become notifications."""

        def guarded(*a: Any) -> Any:
            try:
                if on_yield is None:
                    return job(*a)
                return (yield from job(*a))
            except VirtualSTError as exc:  # (napari re-raises a returned exception)
                return _Failed(exc)

        worker = create_worker(guarded, *args, _start_thread=False)
        if on_yield is not None:
            worker.yielded.connect(on_yield)

        def returned(result: Any) -> None:
            if isinstance(result, _Failed):
                show_error(str(result.error))
                self._set_status(f"stopped: {result.error}")
            elif not self._closed:
                on_done(result)

        worker.returned.connect(returned)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self._update_buttons()
        self._set_status(message)
        worker.start()
        return worker

    def _on_worker_finished(self) -> None:
        self._worker = None
        if not self._closed:
            self._update_buttons()

    # -- loading ----------------------------------------------------------------------------
    def load(self, _value: Any = None) -> FunctionWorker | GeneratorWorker | None:
        """Read the measured data (and its image) in a worker, then show it on the slide."""
        if self.busy:
            return None
        if self.slide.value is None:
            show_error("open the slide first (File ▸ Open), then load its measured data")
            return None
        legacy = self.kind.value == "legacy"
        path = file_edit_path(self.data_path)
        spots = file_edit_path(self.spots_path) if legacy else None
        image = file_edit_path(self.image_path) if legacy and self.image_path.value else None
        if image is not None and not image.is_file():
            image = None
        scale = float(self.pixel_scale.value) if legacy else 1.0
        return self._start(
            _load_job,
            path,
            spots,
            image,
            scale,
            on_done=self._on_loaded,
            message=f"reading {path.name}…",
        )

    def _on_loaded(self, loaded: _Loaded) -> None:
        measured, image_name = loaded.measured, loaded.image_name
        self.measured = measured
        self.image_name = image_name
        self._image = loaded.image
        self.image_scale = loaded.image_scale
        self._library = loaded.library
        self._columns = loaded.columns
        self._columns_of = measured
        self.comparison = None
        self._slide_layer = self.slide.value
        for role in ("measured-image", "measured-spots", "landmarks-measured"):
            self._remove_role(role)
        self.data_info.value = (
            f"{measured.n_spots:,} spots × {len(measured.genes):,} genes ({measured.source})"
            + (f"; image: {image_name}" if image_name else "; no image")
        )
        self._set_status("Loaded. Align it: (a), (b) or (c).")
        transform = self._saved_transform()
        try:
            if transform is not None:
                self._set_transform(transform, "alignment read from the store")
            else:
                self._set_transform(
                    from_scale(float(self.scale.value)), "placed by the scale factor"
                )
        except VirtualSTError as exc:
            show_error(str(exc))

    def _remove_role(self, role: str) -> None:
        for layer in list(self._viewer.layers):
            if vst_layers.vst_meta(layer).get("role") == role:
                self._viewer.layers.remove(layer)

    def _layer(self, role: str) -> Layer | None:
        for layer in self._viewer.layers:
            if vst_layers.vst_meta(layer).get("role") == role:
                return layer
        return None

    # -- the alignment ------------------------------------------------------------------------
    def _set_transform(self, transform: Transform, why: str = "") -> None:
        """Make ``transform`` current and move the measured layers to it."""
        measured = self.measured
        if measured is None:
            return
        mpp = self._mpp()
        self.transform = transform
        affine = ml.image_affine(transform, mpp, self.image_scale)
        image_layer = self._layer("measured-image")
        if self._image is not None:
            if image_layer is None:
                image_layer = vst_layers.add_layer(
                    self._viewer,
                    (
                        self._image,
                        {
                            "name": "measured image",
                            "rgb": True,
                            "affine": affine,
                            "units": "um",
                            "opacity": 0.5,
                            "visible": False,
                            "metadata": {"vst": {"role": "measured-image"}},
                        },
                        "image",
                    ),
                )
            else:
                image_layer.affine = affine
        marks = self._layer("landmarks-measured")
        if marks is not None:
            marks.affine = affine
        yx = ml.spots_yx_um(measured, transform, mpp)
        spots = self._layer("measured-spots")
        if spots is None:
            vst_layers.add_layer(
                self._viewer,
                (
                    yx,
                    {
                        "name": "measured spots",
                        "size": ml.spot_diameter_um(measured),
                        "face_color": "transparent",
                        "border_color": "#00e5ff",
                        "border_width": 0.08,
                        "units": "um",
                        "features": {"spot": list(measured.spot_ids)},
                        "metadata": {"vst": {"role": "measured-spots"}},
                    },
                    "points",
                ),
            )
        else:
            spots.data = yx
        self.transform_info.value = ml.describe_transform(transform, mpp) + (
            f" ({why})" if why else ""
        )
        self._update_buttons()

    def apply_scale(self, _value: Any = None) -> None:
        """(a) Measured px × the scale factor = slide px (1: the same image)."""
        try:
            self._set_transform(from_scale(float(self.scale.value)), "scale factor")
        except VirtualSTError as exc:
            show_error(str(exc))

    def add_landmark_layers(self, _value: Any = None) -> tuple[Layer, Layer] | None:
        """(b) Two Points layers to click corresponding points in, in the same order."""
        if self.measured is None or self.transform is None:
            show_error("load the measured data first")
            return None
        mpp = self._mpp()
        layers = []
        for role, name in (
            ("landmarks-slide", "landmarks on slide"),
            ("landmarks-measured", "landmarks on measured image"),
        ):
            layer = self._layer(role)
            if layer is None:
                measured_frame = role == "landmarks-measured"
                extent = self._extent_um()
                size = extent / 60
                kwargs: dict[str, Any] = {
                    "name": name,
                    "ndim": 2,
                    "face_color": LANDMARK_COLOURS[role],
                    "border_color": "white",
                    "units": "um",
                    "metadata": {"vst": {"role": role}},
                }
                if measured_frame:  # data in measured image px, placed through the alignment
                    kwargs["affine"] = ml.image_affine(self.transform, mpp, self.image_scale)
                    size /= mpp * self.transform.scale / self.image_scale
                kwargs["size"] = size
                layer = vst_layers.add_layer(self._viewer, (np.empty((0, 2)), kwargs, "points"))
            layers.append(layer)
        image = self._layer("measured-image")
        if image is not None:
            image.visible = True
        layers[0].mode = "add"
        self._viewer.layers.selection.active = layers[0]
        self._set_status(
            "Click ≥ 3 points on the slide in 'landmarks on slide', then the same places, in the "
            "same order, on the measured image in 'landmarks on measured image'; then Fit."
        )
        return layers[0], layers[1]

    def _extent_um(self) -> float:
        layer = self.slide.value
        if layer is None:
            return 1000.0
        lo, hi = np.asarray(layer.extent.world)[:, -2:]
        return float(max(hi - lo))

    def fit(self, _value: Any = None) -> Transform | None:
        """(b) Fit the landmarks; the residual shows in µm. The fit refines an automatic one."""
        slide_marks = self._layer("landmarks-slide")
        image_marks = self._layer("landmarks-measured")
        if self.transform is None or slide_marks is None or image_marks is None:
            show_error("place landmarks first: press (b) Place landmarks")
            return None
        try:
            mpp = self._mpp()
            src, dst = ml.landmark_pairs(slide_marks.data, image_marks.data, mpp, self.image_scale)
            fitted = fit_landmarks(src, dst, kind=self.landmark_kind.value)
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        previous = str(self.transform.info.get("method", ""))
        if previous == "register_images":
            fitted = Transform(
                fitted.matrix,
                fitted.kind,
                fitted.residual_px,
                self.transform.quality,
                {**fitted.info, "refines": "register_images"},
            )
        why = "refines the automatic registration" if previous == "register_images" else ""
        self._set_transform(fitted, why)
        residual = fitted.residual_um(mpp)
        self._set_status(f"Landmark fit: residual {residual:.1f} µm RMS.")
        return fitted

    def auto_register(self, _value: Any = None) -> FunctionWorker | GeneratorWorker | None:
        """(c) Register the measured image to the slide thumbnail in a worker."""
        if self.busy or self.measured is None or self.image_name is None:
            if self.image_name is None:
                show_error("the measured data has no image to register")
            return None
        layer = self.slide.value
        try:
            mpp = self._mpp()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        slide_path = vst_layers.slide_path_of(layer)
        image_path = Path(self.measured.images[self.image_name])
        known = float(self.scale.value) if self.scale_known.value else None
        return self._start(
            functools.partial(ml.register_to_slide, fullres_to_level0=known),
            slide_path,
            mpp,
            image_path,
            self.image_scale,
            on_done=self._on_registered,
            message="registering the measured image to the slide…",
        )

    def _on_registered(self, registration: ml.Registration) -> None:
        self.registration = registration
        self._remove_role("registration-overlay")
        vst_layers.add_layer(
            self._viewer,
            (
                registration.overlay,
                {
                    "name": "registration check (measured image)",
                    "rgb": True,
                    "scale": registration.overlay_scale_um,
                    "translate": registration.overlay_translate_um,
                    "units": "um",
                    "opacity": 0.5,
                    "metadata": {"vst": {"role": "registration-overlay"}},
                },
                "image",
            ),
        )
        self._set_transform(registration.transform)
        quality = registration.transform.quality or 0.0
        hint = "" if quality >= 0.5 else ": check the overlay, refine with landmarks"
        self._set_status(f"Registered: quality {quality:.3f}{hint}.")

    # -- the store ----------------------------------------------------------------------------
    def _store_path(self) -> Path | None:
        value = self.store.value
        if value is None or str(value) in ("", "."):
            return None
        path = file_edit_path(self.store)
        return path if path.name.endswith(".vst.zarr") else path.with_name(path.name + ".vst.zarr")

    def _saved_transform(self) -> Transform | None:
        path = self._store_path()
        if path is None or not path.is_dir():
            return None
        try:
            return PredictionStore.open(path).load_transform()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None

    def _on_store_changed(self, _value: Any = None) -> None:
        transform = self._saved_transform()
        if transform is not None and self.measured is not None:
            try:
                self._set_transform(transform, "alignment read from the store")
            except VirtualSTError as exc:
                show_error(str(exc))
        self._update_buttons()

    def save_transform(self, _value: Any = None) -> Path | None:
        """Save the current alignment with the existing store (``transform.json``); a
        prediction saves it too."""
        path = self._store_path()
        if self.transform is None or path is None or not path.is_dir():
            show_error("align the data and choose an existing prediction store first")
            return None
        try:
            written = PredictionStore.open(path).save_transform(self.transform)
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        self._set_status(f"Alignment saved with the store: {written}")
        return written

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, _value: Any = None) -> FunctionWorker | GeneratorWorker | None:
        """Predict at the measured spots (through the alignment) in a worker."""
        if self.busy:
            return None
        try:
            request = self._prediction_request()
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        self._cancel = threading.Event()
        self.progress_bar.max = 0
        self.progress_bar.value = 0
        if request.overwrite:
            forget_view(request.store_path)
        assert request.spots is not None
        return self._start(
            _predict_job,
            request,
            self._cancel,
            on_yield=self._on_progress,
            on_done=self._on_predicted,
            message=f"predicting {len(request.spots):,} measured spots…",
        )

    def _prediction_request(self) -> RunSpec:
        if self.measured is None or self.transform is None:
            raise VirtualSTError("load and align the measured data first")
        layer = self.slide.value
        mpp = self._mpp()
        model = self.model.value
        if not isinstance(model, Path):
            raise VirtualSTError("choose a model first")
        store_path = self._store_path()
        if store_path is None:
            raise VirtualSTError("say where to save the predictions (Store)")
        slide_path = vst_layers.slide_path_of(layer)
        if slide_path is None:
            raise VirtualSTError("choose the slide the measured data belong to")
        return RunSpec(
            slide_path=slide_path,
            model_path=model,
            store_path=store_path,
            spots=ml.measured_grid(self.measured, self.transform, mpp),
            mpp=mpp,
            batch_size=self.batch_size,
            overwrite=bool(self.overwrite.value),
            transform=self.transform,
        )

    def cancel(self, _value: Any = None) -> None:
        """Stop the prediction after the batch in progress."""
        self._cancel.set()
        self._set_status("cancelling after the current batch…")

    def _on_progress(self, event: RunEvent) -> None:
        if not isinstance(event, StoreReadyEvent | BatchEvent):
            return
        p = event.progress
        self.progress_bar.max = max(p.spots_total, 1)
        self.progress_bar.value = p.spots_done
        self._set_status(f"{p.spots_done:,} of {p.spots_total:,} measured spots predicted")

    def _on_predicted(self, result: tuple[Path, StoreView]) -> None:
        store_path, view = result
        register_view(view)
        self._set_status(
            f"Predicted at the measured spots; saved with the alignment to {store_path}."
        )
        show_info(f"predicted at the measured spots: {store_path.name}")

    # -- comparison ---------------------------------------------------------------------------
    def run_compare(self, _value: Any = None) -> FunctionWorker | GeneratorWorker | None:
        """Compare the store with the measured data in a worker; fill the table."""
        if self.busy:
            return None
        store_path = self._store_path()
        if self.measured is None or self.transform is None or store_path is None:
            show_error("load and align the measured data, and choose the prediction store")
            return None
        return self._start(
            _compare_job,
            store_path,
            self.measured,
            self.transform,
            on_done=self._on_compared,
            message="comparing predicted with measured…",
        )

    def _on_compared(self, result: tuple[Comparison, StoreView]) -> None:
        comparison, view = result
        register_view(view)
        self.comparison = comparison
        s = comparison.summary()
        text = (
            f"{s['n_spots']:,} spots matched by {s['spot_match']}, {s['n_genes']} genes · "
            f"mean Pearson {_fmt(s['mean_pearson'])} (median {_fmt(s['median_pearson'])}) · "
            f"mean Spearman {_fmt(s['mean_spearman'])} · mean SSIM {_fmt(s['mean_ssim'])} · "
            f"Pearson > 0 for {s['frac_pearson_gt_0']:.0%} of genes"
        )
        if comparison.missing_genes:
            shown = ", ".join(comparison.missing_genes[:5])
            more = "…" if len(comparison.missing_genes) > 5 else ""
            text += (
                f"\n{len(comparison.missing_genes)} model genes are absent from the measured "
                f"data and not compared ({shown}{more})"
            )
        self.summary.value = text
        self._fill_table(comparison)
        self._set_status("Click a gene to see its scatter plot and maps; click a header to sort.")
        if self.table.rowCount():
            self.table.selectRow(0)

    def _fill_table(self, comparison: Comparison) -> None:
        table = self.table
        table.setSortingEnabled(False)
        table.clearContents()
        rows = comparison.sorted_by("pearson")
        table.setRowCount(len(rows))
        for i, score in enumerate(rows):
            table.setItem(i, 0, QTableWidgetItem(score.gene))
            for j, value in enumerate((score.pearson, score.spearman, score.ssim), start=1):
                table.setItem(i, j, _NumberItem(value, _fmt(value)))
            table.setItem(i, 4, _NumberItem(comparison.n_spots, f"{comparison.n_spots:,}"))
        table.setSortingEnabled(True)
        table.sortItems(1, Qt.SortOrder.DescendingOrder)
        table.resizeColumnsToContents()

    def table_rows(self) -> list[tuple[str, float, float, float, int]]:
        """The table as shown (display order): gene, Pearson, Spearman, SSIM, spots."""
        out: list[tuple[str, float, float, float, int]] = []
        for i in range(self.table.rowCount()):
            gene = self.table.item(i, 0)
            cells = [self.table.item(i, j) for j in range(1, 5)]
            assert gene is not None  # every row is filled (_fill_table)
            pearson, spearman, ssim, spots = (
                c.number for c in cells if isinstance(c, _NumberItem)
            )
            out.append((gene.text(), pearson, spearman, ssim, int(spots)))
        return out

    def _on_table_selection(self) -> None:
        selection = self.table.selectionModel()
        assert selection is not None  # a QTableWidget always has one
        rows = selection.selectedRows()
        if rows:
            item = self.table.item(rows[0].row(), 0)
            if item is not None:
                self.show_gene(item.text())

    # -- one gene -----------------------------------------------------------------------------
    def show_gene(self, gene: str) -> None:
        """Scatter plot of predicted vs measured, and both maps, for one compared gene."""
        comparison, measured, transform = self.comparison, self.measured, self.transform
        store_path = self._store_path()
        if comparison is None or measured is None or transform is None or store_path is None:
            return
        names = [g.gene for g in comparison.genes]
        if gene not in names:
            show_error(f"{gene} was not compared (it is not in both the model and the data)")
            return
        self._gene = gene
        k = names.index(gene)
        score = comparison.genes[k]
        self._draw_scatter(
            gene, comparison.measured[:, k], comparison.predicted[:, k], score.pearson
        )
        try:
            self._show_maps(gene, store_path, measured, transform)
        except VirtualSTError as exc:
            show_error(str(exc))

    def _draw_scatter(
        self, gene: str, measured: np.ndarray, predicted: np.ndarray, pearson: float
    ) -> None:
        ax = self.axes
        ax.clear()
        self._scatter = ax.scatter(measured, predicted, s=7, alpha=0.6, color="#1f77b4")
        ax.set_xlabel("measured (log1p CP10k)")
        ax.set_ylabel("predicted")
        ax.set_title(f"{gene}: Pearson {_fmt(pearson, 2)}, {len(measured)} spots", fontsize=9)
        ax.tick_params(labelsize=8)
        self.canvas.draw_idle()

    def scatter_xy(self) -> np.ndarray:
        """``(n, 2)`` the scatter plot's points (measured, predicted)."""
        return (
            np.empty((0, 2)) if self._scatter is None else np.asarray(self._scatter.get_offsets())
        )

    def _show_maps(
        self, gene: str, store_path: Path, measured: MeasuredST, transform: Transform
    ) -> None:
        viewer = self._viewer
        mpp = self._mpp()
        view = _view_of(store_path)
        # the predicted values, placed as the Gene browser places them
        for layer in self._predicted_layers:
            meta = vst_layers.vst_meta(layer)
            if (
                layer in viewer.layers
                and meta.get("role") == "heatmap"
                and meta.get("gene") != gene
            ):
                viewer.layers.remove(layer)
        if view.geometry is not None:
            predicted = vst_layers.show_heatmap(viewer, view, gene)
        else:
            predicted = vst_layers.show_spots(viewer, view, gene)
            vst_layers.colour_spots(predicted, view, gene)
            predicted.visible = True
        self._predicted_layers = [predicted] if predicted is not None else []
        # the measured values, by the same rule, beside them
        yx = ml.spots_yx_um(measured, transform, mpp)
        geometry = ml.value_geometry(ml.lattice_kind(measured), measured.array_rc, yx)
        values = ml.measured_values(
            measured,
            gene,
            self._library,
            columns=self._columns if measured is self._columns_of else None,
        )
        self._remove_role("measured-values")
        data = ml.measured_value_layer_data(measured, gene, values, yx, geometry=geometry)
        layer = vst_layers.add_layer(viewer, data)
        layer.metadata = {
            **layer.metadata,
            "vst": {**vst_layers.vst_meta(layer), "base": list(layer.translate)},
        }
        self._place_side_by_side(layer, view)
        vst_layers.show_colorbar(layer, force=True)  # two maps: both scales on screen
        if predicted is not None:
            vst_layers.show_colorbar(predicted, force=True)

    def _shift_um(self, view: StoreView) -> tuple[float, float]:
        if not self.side_by_side.value:
            return (0.0, 0.0)
        yx = view.yx_um
        if not len(yx):
            return (0.0, 0.0)
        # the measured values start right of the slide (or of the predicted spots)
        left = float(yx[:, 1].min()) - view.spot_diameter_um / 2
        right = float(yx[:, 1].max()) + view.spot_diameter_um / 2
        slide = self.slide.value
        if slide is not None and slide in self._viewer.layers:
            right = max(right, float(np.asarray(slide.extent.world)[1, -1]))
        return (0.0, right - left + SIDE_BY_SIDE_GAP * (right - left))

    def _place_side_by_side(self, layer: Layer, view: StoreView) -> None:
        base = np.asarray(vst_layers.vst_meta(layer).get("base", layer.translate), np.float64)
        layer.translate = tuple(base + np.asarray(self._shift_um(view)))

    def _on_side_by_side(self, _value: Any = None) -> None:
        layer = self._layer("measured-values")
        store_path = self._store_path()
        if layer is not None and store_path is not None:
            self._place_side_by_side(layer, _view_of(store_path))

    def measured_shift_um(self) -> tuple[float, float]:
        """How far the measured values layer is moved from the spots (side by side)."""
        store_path = self._store_path()
        if store_path is None:
            return (0.0, 0.0)
        return self._shift_um(_view_of(store_path))


def _view_of(store_path: Path) -> StoreView:
    from napari_virtual_st.store_view import get_view

    return get_view(store_path)


@dataclass(frozen=True)
class _Loaded:
    """What the load worker hands to the GUI: the data, its image and per-spot totals."""

    measured: MeasuredST
    image_name: str | None
    image: np.ndarray | None
    image_scale: float
    library: np.ndarray
    columns: Any


def _load_job(path: Path, spots: Path | None, image: Path | None, pixel_scale: float) -> _Loaded:
    """Read measured data and the image it brings (the worker's part of loading)."""
    from PIL import Image

    measured = read_measured(path, spots=spots, image=image, pixel_scale=pixel_scale)
    name = ml.choose_image(measured)
    array = None
    scale = 1.0
    if name is not None:
        scale = ml.image_px_per_fullres_px(measured, name)
        try:
            with Image.open(measured.images[name]) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise MeasuredDataError(
                f"cannot read the image {Path(measured.images[name]).name}: {exc}"
            ) from exc
    return _Loaded(
        measured, name, array, scale, ml.library_sizes(measured), measured.counts.tocsc()
    )


def _predict_job(
    spec: RunSpec, cancel: threading.Event
) -> Generator[RunEvent, None, tuple[Path, StoreView]]:
    """The run at the measured spots (it saves the alignment with the store), then the
    finished store read for the maps."""
    store_path = yield from run_events(spec, cancel)
    return store_path, StoreView.open(store_path)


def _compare_job(
    store_path: Path, measured: MeasuredST, transform: Transform
) -> tuple[Comparison, StoreView]:
    """The comparison, and the store read for the maps (both off the GUI thread)."""
    return ml.compare_store(store_path, measured, transform), StoreView.open(store_path)
