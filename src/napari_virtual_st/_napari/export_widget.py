"""The Export dock widget: a prediction's spots, or those inside drawn regions, to an AnnData
``.h5ad`` (scanpy, squidpy) and/or QuPath GeoJSON detections.

A thin form over :mod:`napari_virtual_st.export`, :mod:`napari_virtual_st.regions` and
:mod:`.shapes_regions`. The regions come from napari **Shapes** layers (polygons, rectangles,
ellipses drawn over the slide, in world µm; named and classed as :mod:`.shapes_regions`
says) or from a **QuPath GeoJSON** file of annotations; an import button turns such a file
into a Shapes layer (placed in the slide's µm frame, classes kept as features and colours), so
regions go QuPath → napari → QuPath. The export itself runs in a ``napari.qt.threading``
worker (:mod:`.export_worker`) over :func:`~napari_virtual_st.export.export_steps`, with a
progress bar and a cancel button; files appear under their names only when complete.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    Select,
)
from napari.layers import Shapes
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import notify
from napari_virtual_st._napari.dock import dock_as_step, scroll_form
from napari_virtual_st._napari.export_outputs import (
    SuggestedPaths,
    done_texts,
    output_path,
)
from napari_virtual_st._napari.export_worker import ExportOutcome, run_export
from napari_virtual_st._napari.predict_form import file_edit_path
from napari_virtual_st._napari.shapes_regions import regions_from_layers, shapes_layer_data
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.export import ExportError, ExportProgress
from napari_virtual_st.regions import Region, RegionError, read_geojson_regions
from napari_virtual_st.store import PredictionStore

if TYPE_CHECKING:
    import napari


ALL_SPOTS = "All spots"
FROM_SHAPES = "Shapes layers"
FROM_GEOJSON = "QuPath GeoJSON file"


# -- the widget ----------------------------------------------------------------------------------
class ExportWidget(Container):
    """Export a prediction (all spots, or those inside regions) to ``.h5ad`` and GeoJSON.

    Parameters
    ----------
    napari_viewer
        The viewer whose prediction layers and Shapes layers are exported.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._opened: list[str] = []
        self._worker: GeneratorWorker | None = None
        self._cancel = threading.Event()
        self._suggested = SuggestedPaths()
        self._shown_store: Path | None = None
        #: how the last export ended (``None`` before the first, and while one runs)
        self.last_outcome: ExportOutcome | None = None
        self._closed = False
        self._replacing: list[Path] = []
        self._build_form()
        self._connect(napari_viewer)
        self.native.destroyed.connect(self._on_destroyed)
        self._on_layers_changed()
        self._on_source_changed()
        self._on_outputs_changed()

    def _build_form(self) -> None:
        """The form's fields, in the order they show."""
        self.prediction = ComboBox(label="Prediction", choices=self._store_choices, nullable=True)
        self.open_store = FileEdit(label="Or open store", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.info = Label(value="")
        self.source = RadioButtons(label="Regions", choices=[ALL_SPOTS, FROM_SHAPES, FROM_GEOJSON])
        self.source.value = ALL_SPOTS
        self.shapes = Select(label="Shapes layers", choices=self._shapes_choices)
        self.shapes.native.setMaximumHeight(110)
        self.regions_file = FileEdit(
            label="QuPath GeoJSON", mode=FileDialogMode.EXISTING_FILE, filter="*.geojson *.json"
        )
        self.import_button = PushButton(text="Import GeoJSON as a Shapes layer")
        self.want_h5ad = CheckBox(text="AnnData .h5ad (scanpy, squidpy)", value=True)
        self.h5ad_path = FileEdit(
            label=".h5ad file", mode=FileDialogMode.OPTIONAL_FILE, filter="*.h5ad"
        )
        self.want_geojson = CheckBox(text="QuPath GeoJSON (spots as detections)", value=False)
        self.geojson_path = FileEdit(
            label="GeoJSON file", mode=FileDialogMode.OPTIONAL_FILE, filter="*.geojson"
        )
        self.export_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=1)
        self.status = Label(value="")
        self.summary = Label(value="")
        for label in (self.info, self.status, self.summary):
            label.native.setWordWrap(True)
        self.extend(
            [
                self.prediction,
                self.open_store,
                self.info,
                self.source,
                self.shapes,
                self.regions_file,
                self.import_button,
                self.want_h5ad,
                self.h5ad_path,
                self.want_geojson,
                self.geojson_path,
            ]
        )
        buttons = Container(
            widgets=[self.export_button, self.cancel_button], layout="horizontal", labels=False
        )
        # the form scrolls on a small screen; Export, the progress and the outcome stay in sight
        scroll_form(self, pinned=[buttons, self.progress_bar, self.status, self.summary])
        dock_as_step(self)  # (a tab beside Predict and Measured ST when they are docked)

    def _connect(self, napari_viewer: napari.Viewer) -> None:
        """Fields to actions, and the viewer's layer list to the choices."""
        self.prediction.changed.connect(self._on_prediction_changed)
        self.open_store.changed.connect(self._on_open_store)
        self.source.changed.connect(self._on_source_changed)
        self.import_button.changed.connect(self.import_geojson)
        self.want_h5ad.changed.connect(self._on_outputs_changed)
        self.want_geojson.changed.connect(self._on_outputs_changed)
        self.export_button.changed.connect(self.export)
        self.cancel_button.changed.connect(self.cancel)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)

    def _on_destroyed(self, *_: Any) -> None:
        """The panel closed: stop listening to the viewer, and stop a running export (which
        then writes nothing)."""
        self._closed = True
        self._cancel.set()
        for emitter in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            emitter.disconnect(self._on_layers_changed)

    # -- which prediction ---------------------------------------------------------------------
    def _store_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        seen = vst_layers.stores_in_viewer(self._viewer)
        for store in self._opened:
            seen.setdefault(store, Path(store).name)
        return [(name, key) for key, name in seen.items()]

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Shapes]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Shapes)]

    def _on_layers_changed(self, _event: Any = None) -> None:
        before = self.prediction.value
        self.prediction.reset_choices()
        if self.prediction.value is None and self.prediction.choices:
            self.prediction.value = self.prediction.choices[-1]
        if self.prediction.value == before:  # e.g. a run's spots layer: refresh the counts
            self._on_prediction_changed()
        chosen = list(self.shapes.value)
        self.shapes.reset_choices()
        self.shapes.value = [layer for layer in chosen if layer in self.shapes.choices]
        self._update_export_enabled()

    def _on_open_store(self, value: Any = None) -> None:
        path = file_edit_path(self.open_store)
        if not str(self.open_store.value) or path == Path("."):
            return
        try:
            PredictionStore.open(path)
        except VirtualSTError as exc:
            show_error(str(exc))
            return
        key = str(path)
        if key not in self._opened:
            self._opened.append(key)
        self.prediction.reset_choices()
        self.prediction.value = key

    @property
    def store_path(self) -> Path | None:
        """The chosen prediction store."""
        key = self.prediction.value
        return None if key is None else Path(key)

    def _store_mpp(self) -> float:
        """µm per level-0 pixel of the chosen prediction's slide."""
        path = self.store_path
        if path is None:
            raise RegionError("choose a prediction first: the regions are placed on its slide")
        return PredictionStore.open(path).grid.mpp

    def _on_prediction_changed(self, _value: Any = None) -> None:
        path = self.store_path
        if path != self._shown_store:  # the last export's summary was of another store
            self.summary.value = ""
            self._shown_store = path
        if path is None:
            self.info.value = "No prediction in the viewer: run one, or open a .vst.zarr."
            self._update_export_enabled()
            return
        try:
            store = PredictionStore.open(path)
        except VirtualSTError as exc:
            running = not path.exists()  # a run's layers come before its store
            self.info.value = "Waiting for the run to save its spots…" if running else str(exc)
            self._update_export_enabled()
            return
        done = int(store.done.sum())
        state = "" if done == store.n_spots else f" ({done:,} predicted so far)"
        self.info.value = f"{store.n_spots:,} spots × {len(store.genes)} genes{state}"
        stem = path.name.removesuffix(".zarr").removesuffix(".vst")
        self._suggested.suggest(self.h5ad_path, path.with_name(f"{stem}.h5ad"))
        self._suggested.suggest(self.geojson_path, path.with_name(f"{stem}_spots.geojson"))
        self._update_export_enabled()

    def _advance_defaults(self) -> None:
        """Suggested paths an export wrote move to the next free name (see
        :meth:`SuggestedPaths.advance`)."""
        self._suggested.advance((self.h5ad_path, self.geojson_path))

    def _on_source_changed(self, _value: Any = None) -> None:
        source = self.source.value
        self.shapes.visible = source == FROM_SHAPES
        self.regions_file.visible = source == FROM_GEOJSON
        self.import_button.visible = source == FROM_GEOJSON

    def _on_outputs_changed(self, _value: Any = None) -> None:
        self.h5ad_path.enabled = bool(self.want_h5ad.value)
        self.geojson_path.enabled = bool(self.want_geojson.value)
        self._update_export_enabled()

    def _update_export_enabled(self) -> None:
        self.export_button.enabled = (
            self._worker is None
            and self.store_path is not None
            and bool(self.want_h5ad.value or self.want_geojson.value)
        )

    # -- regions --------------------------------------------------------------------------------
    def regions(self) -> list[Region] | None:
        """The regions chosen in the form (``None`` for all spots).

        Raises
        ------
        RegionError
            If the chosen layers or file hold no usable region.
        """
        source = self.source.value
        if source == ALL_SPOTS:
            return None
        mpp = self._store_mpp()
        if source == FROM_SHAPES:
            return regions_from_layers(list(self.shapes.value), mpp)
        return read_geojson_regions(self._regions_file())

    def _regions_file(self) -> Path:
        value = str(self.regions_file.value)
        if value in ("", "."):
            raise RegionError("choose the QuPath GeoJSON file of annotations")
        return Path(value)

    def import_geojson(self, _value: Any = None) -> Shapes | None:
        """Add the annotations of the chosen QuPath GeoJSON file as a Shapes layer (placed on
        the prediction's slide) and select it as the regions; ``None`` on an error (shown)."""
        try:
            path = self._regions_file()
            regions = read_geojson_regions(path)
            data = shapes_layer_data(
                regions, self._store_mpp(), name=f"{path.stem} regions", source=str(path)
            )
        except VirtualSTError as exc:
            show_error(str(exc))
            return None
        layer = vst_layers.add_layer(self._viewer, data)
        self.source.value = FROM_SHAPES
        self.shapes.value = [layer]
        show_info(
            f"{len(regions)} regions imported.\nFrom {path.name}, as the layer {layer.name!r}"
        )
        return layer

    # -- export ---------------------------------------------------------------------------------
    def outputs(self) -> tuple[Path | None, Path | None]:
        """The ``.h5ad`` and GeoJSON paths to write (``None`` where not wanted).

        Raises
        ------
        ExportError
            If nothing is chosen, or a wanted output has no file name.
        """
        h5ad = output_path(self.h5ad_path, self.want_h5ad.value, ".h5ad", (".h5ad",))
        geojson = output_path(
            self.geojson_path, self.want_geojson.value, ".geojson", (".geojson", ".json")
        )
        if h5ad is None and geojson is None:
            raise ExportError("tick what to write: an .h5ad file, a GeoJSON file, or both")
        return h5ad, geojson

    @property
    def running(self) -> bool:
        """Whether an export is in progress."""
        return self._worker is not None

    def export(self, _value: Any = None) -> GeneratorWorker | None:
        """Start the export in a worker thread (returns the worker, or ``None`` on an error
        in the form, which is shown as a notification)."""
        if self.running:
            return None
        store = self.store_path
        self._advance_defaults()  # (a suggested name may have been taken since)
        try:
            if store is None:
                raise ExportError("choose a prediction to export (or open a .vst.zarr)")
            regions = self.regions()
            h5ad, geojson = self.outputs()
        except VirtualSTError as exc:
            notify.error(str(exc), "Nothing exported.", status=self.status)
            return None
        #: files the user chose that exist: replaced (safely), and said so when done
        self._replacing = [p for p in (h5ad, geojson) if p is not None and p.exists()]
        self._cancel = threading.Event()
        self.last_outcome = None
        worker = create_worker(
            run_export, store, regions, h5ad, geojson, self._cancel.is_set, _start_thread=False
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.export_button.enabled = False
        self.cancel_button.enabled = True
        self.progress_bar.max = 0  # busy until the first step
        self.progress_bar.value = 0
        self.status.value = f"exporting {store.name}…"
        self.summary.value = ""
        worker.start()
        return worker

    def cancel(self, _value: Any = None) -> None:
        """Stop the export at its next step; nothing is written under the final names."""
        if self._worker is None:
            return
        self._cancel.set()
        self.cancel_button.enabled = False
        self.status.value = "cancelling…"

    def _on_progress(self, report: ExportProgress) -> None:
        if self._closed:
            return
        self.progress_bar.max = report.total
        self.progress_bar.value = report.done
        if not self._cancel.is_set():
            self.status.value = report.message

    def _on_outcome(self, outcome: ExportOutcome) -> None:
        self.last_outcome = outcome
        if self._closed:
            return
        if outcome.error is not None:
            if outcome.cancelled:
                show_info(str(outcome.error))
            else:
                show_error(notify.toast_message("The export stopped.", str(outcome.error)))
            self.status.value = str(outcome.error)
            self.progress_bar.value = 0
            return
        result = outcome.result
        assert result is not None
        self.summary.value, toast = done_texts(result, self._replacing)
        self.status.value = "Done."
        show_info(toast)
        self._advance_defaults()

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:
            return
        self.cancel_button.enabled = False
        self._update_export_enabled()
