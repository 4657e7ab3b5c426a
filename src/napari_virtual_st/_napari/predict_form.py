"""The Predict panel's form: its fields, top to bottom, and the small rules they follow.

:class:`PredictForm` builds the fields (slide, µm/px, model, spots, tissue, output,
precision, Run/Cancel, progress, status) in a scrolling form whose buttons and status stay
pinned; :class:`~._napari.predict_widget.PredictWidget` adds what they do. Also here: the
file-path rule of the panels' ``FileEdit`` fields, where results go by default, and the part
of a slide on screen (the run predicts it first).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Layer

from napari_virtual_st._napari import resolution
from napari_virtual_st._napari.dock import dock_as_step, scroll_form
from napari_virtual_st._napari.labels import keep_height
from napari_virtual_st._napari.model_choices import first_provider_label
from napari_virtual_st.frames import yx_um_to_xy_level0_px
from napari_virtual_st.run import Region

if TYPE_CHECKING:
    import napari

#: Model chooser entry that opens a file dialog.
BROWSE = "browse…"
GRID_CHOICES = [
    ("Visium: 55 µm spots, 100 µm apart (hexagonal)", "visium"),
    ("Legacy ST: 100 µm spots, 200 µm apart (square)", "st"),
    ("Dense: square tiles of the model's size", "dense"),
]


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


def visible_region(viewer: napari.Viewer, layer: Layer | None) -> Region | None:
    """The part of slide ``layer`` on screen, (x0, y0, x1, y1) level-0 pixels (``None`` when
    the canvas size is unknown)."""
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


class PredictForm(Container):
    """The Predict panel's fields, laid out; the panel's behaviour is its subclass's."""

    def __init__(self) -> None:
        super().__init__(labels=True)
        self._add_fields()

    def _add_fields(self) -> None:
        """The form's fields, buttons and progress, top to bottom."""
        self.slide = ComboBox(label="Slide", choices=self._slide_choices)
        self.mpp = resolution.mpp_field()
        self.mpp_hint = Label(
            value=(
                "This slide does not record its resolution: give it (0.25 at 40×, 0.5 at 20×). "
                "Every panel uses it."
            ),
            visible=False,
        )
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_info = Label(value="")
        self.sample_note = Label(value="", visible=False)
        self.grid = ComboBox(label="Spots", choices=GRID_CHOICES, value="visium")
        self.min_tissue = FloatSlider(
            label="Tissue per spot ≥", value=0.5, min=0.0, max=1.0, step=0.05
        )
        self.output = FileEdit(
            label="Save to", mode=FileDialogMode.OPTIONAL_FILE, filter="*.vst.zarr"
        )
        self.overwrite = CheckBox(text="Replace earlier results in this file", value=False)
        # shown once a run refused the slide as not bright-field H&E (e.g. fluorescence)
        self.allow_non_brightfield = CheckBox(
            text="Predict anyway: this slide does not look like bright-field H&E",
            value=False,
            visible=False,
        )
        self.precision = ComboBox(
            label="Precision",
            choices=[
                ("fp32", "fp32"),
                ("int8 (faster; quantised model)", "int8"),
                ("auto (int8 where it passed its accuracy gate)", "auto"),
            ],
            value="fp32",
        )
        self.provider = Label(value=f"Runs on: {first_provider_label()}")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        self.progress_bar = ProgressBar(value=0, min=0, max=1)
        self.status = Label(value="Open a slide, choose a model, press Run.")
        for label in (self.model_info, self.mpp_hint, self.sample_note):
            label.native.setWordWrap(True)
        keep_height(self.status, 4)  # it changes all through a run: no relayout each time
        self.extend(
            [
                self.slide,
                self.mpp_hint,
                self.mpp,
                self.model,
                self.model_info,
                self.sample_note,
                self.grid,
                self.min_tissue,
                self.output,
                self.overwrite,
                self.allow_non_brightfield,
                self.precision,
                self.provider,
            ]
        )
        # the form scrolls on a small screen; Run, the progress and the status stay in sight
        scroll_form(self, pinned=[buttons, self.progress_bar, self.status])
        dock_as_step(self)

    def _slide_choices(self, _widget: object = None) -> list[tuple[str, Layer]]:
        """The slides offered (the panel knows its viewer's; a bare form offers none)."""
        return []

    def _model_choices(self, _widget: object = None) -> list[tuple[str, object]]:
        """The models offered (the panel's bundled and added ones; a bare form none)."""
        return []
