"""The Measured ST data panel: choose the slide and the measured data of its section (Space
Ranger outs, AnnData ``.h5ad`` or legacy ST files) and read them, with the image they bring,
in a worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, PushButton
from napari.utils.notifications import show_error

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import measured_layers as ml
from napari_virtual_st._napari import resolution
from napari_virtual_st._napari.measured_panel import MeasuredPanel, MeasuredSession, Worker
from napari_virtual_st._napari.predict_form import file_edit_path
from napari_virtual_st.measured import MeasuredDataError, MeasuredST, read_measured

DATA_KINDS = [
    ("Space Ranger outs/ folder (Visium)", "spaceranger"),
    ("AnnData .h5ad with obsm['spatial']", "h5ad"),
    ("Legacy ST: counts .tsv + spot file", "legacy"),
]
#: Layers of the measured data shown before; a new load replaces them.
_LOADED_ROLES = ("measured-image", "measured-spots", "landmarks-measured")


class DataPanel(MeasuredPanel):
    """Choose the slide and the measured data, and load them.

    Parameters
    ----------
    session
        The state shared with the other panels.
    on_loaded
        Called on the GUI thread once the data are in the session (to place them).
    """

    def __init__(self, session: MeasuredSession, on_loaded: Callable[[], None]) -> None:
        super().__init__(session)
        self._on_loaded_callback = on_loaded
        self.kind = ComboBox(label="Data", choices=DATA_KINDS, value="spaceranger")
        self.data_path = FileEdit(label="Counts", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.spots_path = FileEdit(
            label="Spot file", mode=FileDialogMode.EXISTING_FILE, filter="*.tsv"
        )
        self.image_path = FileEdit(label="Image", mode=FileDialogMode.EXISTING_FILE)
        self.pixel_scale = FloatSpinBox(
            label="Spot px → image px", value=1.0, min=1e-6, max=100.0, step=1e-6
        )
        self.slide_mpp = resolution.mpp_field()
        self.slide_mpp.tooltip = (
            "The slide does not record its resolution: give it here or in the Predict panel "
            "(0.25 at 40×, 0.5 at 20×); every panel uses it"
        )
        self.load_button = PushButton(text="Load measured data")
        self.data_info = Label(value="")
        self.wrap(self.data_info)
        self.extend(
            [
                session.slide,
                self.slide_mpp,
                self.kind,
                self.data_path,
                self.spots_path,
                self.image_path,
                self.pixel_scale,
                self.load_button,
                self.data_info,
            ]
        )
        self.kind.changed.connect(self._on_kind_changed)
        self._scale = vst_layers.ScaleFollower(self._show_mpp)
        session.slide.changed.connect(self._on_slide_changed)
        self.slide_mpp.changed.connect(self._on_mpp_edited)
        self._on_slide_changed()
        self.load_button.changed.connect(self.load)
        self._on_kind_changed()

    # -- the slide's resolution (shared with every panel through the slide layer) ------------
    def _on_slide_changed(self, _value: Any = None) -> None:
        layer = self.session.slide.value
        self.slide_mpp.visible = layer is not None and vst_layers.resolution_is_given(layer)
        self._scale.follow(layer)

    def _show_mpp(self, _event: Any = None) -> None:
        layer = self.session.slide.value
        mpp = vst_layers.slide_mpp_of(layer) if layer is not None else None
        if mpp is not None and mpp != self.slide_mpp.value:
            with self.slide_mpp.changed.blocked():
                self.slide_mpp.value = mpp
        resolution.show_needed((self.slide_mpp,), resolution.mpp_missing(layer))

    def _on_mpp_edited(self, value: float) -> None:
        layer = self.session.slide.value
        if layer is not None and vst_layers.resolution_is_given(layer) and value > 0:
            vst_layers.set_slide_mpp(self.session.viewer, layer, float(value))
            self._show_mpp()
            self.session.refresh()

    def _on_kind_changed(self, _value: Any = None) -> None:
        legacy = self.kind.value == "legacy"
        self.data_path.mode = "d" if self.kind.value == "spaceranger" else "r"
        self.data_path.filter = {"h5ad": "*.h5ad", "legacy": "*.tsv *.tsv.gz"}.get(
            self.kind.value, ""
        )
        for widget in (self.spots_path, self.image_path, self.pixel_scale):
            widget.visible = legacy

    def update_buttons(self) -> None:
        """Loading waits for the running worker."""
        self.load_button.enabled = not self.session.busy

    def load(self, _value: Any = None) -> Worker | None:
        """Read the measured data (and its image) in a worker, then show it on the slide."""
        session = self.session
        if session.busy:
            return None
        if session.slide.value is None:
            show_error("open the slide first (File ▸ Open), then load its measured data")
            return None
        legacy = self.kind.value == "legacy"
        path = file_edit_path(self.data_path)
        spots = file_edit_path(self.spots_path) if legacy else None
        image = file_edit_path(self.image_path) if legacy and self.image_path.value else None
        if image is not None and not image.is_file():
            image = None
        scale = float(self.pixel_scale.value) if legacy else 1.0
        return session.start(
            _load_job,
            path,
            spots,
            image,
            scale,
            on_done=self._on_loaded,
            message=f"reading {path.name}…",
        )

    def _on_loaded(self, loaded: _Loaded) -> None:
        session = self.session
        measured, image_name = loaded.measured, loaded.image_name
        session.measured = measured
        session.image_name = image_name
        session.image = loaded.image
        session.image_scale = loaded.image_scale
        session.library = loaded.library
        session.columns = loaded.columns
        session.columns_of = measured
        session.comparison = None
        for role in _LOADED_ROLES:
            session.remove_role(role)
        self.data_info.value = (
            f"{measured.n_spots:,} spots × {len(measured.genes):,} genes ({measured.source})"
            + (f"; image: {image_name}" if image_name else "; no image")
        )
        session.set_status("Loaded. Align it: (a), (b) or (c).")
        self._on_loaded_callback()


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
