"""A slide's resolution (µm per pixel), asked for once where the file does not record it.

A PNG or JPEG (e.g. the HER2ST images) has no µm/px. When one is opened, the user is asked
once, without a blocking dialog: a warning toast says so and the Predict panel is docked
(unless a panel with the field is open already), its *µm per pixel* field highlighted until
a value is given. The value is the slide's (:func:`.layers.set_slide_mpp`): the layer's
scale, the view and every panel take it at once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import FloatSpinBox
from napari.utils.notifications import show_warning

from napari_virtual_st._napari import layers as vst_layers

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

PLUGIN = "napari-virtual-st"
#: A field waiting for the user: an amber frame and tint, legible on napari's dark and
#: light themes.
NEEDED_STYLE = "background-color: rgba(224, 160, 32, 0.28); border: 2px solid #e0a020;"
#: The panels that hold a µm/px field (their ``display_name`` in napari.yaml).
PANELS_WITH_FIELD = ("Predict expression", "Measured ST")
HINT = "0.25 at 40×, 0.5 at 20×"


def mpp_field(label: str = "µm per pixel") -> FloatSpinBox:
    """The µm/px field of a panel: four decimals (vendors give 0.2527, 0.4990), 0 shown as
    "not given"; hidden until a slide without a recorded resolution is chosen."""
    field = FloatSpinBox(label=label, value=0.0, min=0.0, max=20.0, step=0.0001, visible=False)
    field.native.setDecimals(4)
    field.native.setSpecialValueText("not given")  # (0: nothing given yet)
    return field


def show_needed(widgets: Iterable[Any], needed: bool) -> None:
    """Highlight ``widgets`` (a µm/px field and its hint) while a value is ``needed``."""
    for widget in widgets:
        native = getattr(widget, "native", widget)
        native.setStyleSheet(NEEDED_STYLE if needed else "")
        native.setProperty("vst_needed", needed)


def is_needed(widget: Any) -> bool:
    """Whether ``widget`` is highlighted as waiting for the user's value."""
    return bool(getattr(widget, "native", widget).property("vst_needed"))


def mpp_missing(layer: Layer | None) -> bool:
    """Whether ``layer`` is a slide whose µm/px is neither recorded nor given yet."""
    return layer is not None and vst_layers.slide_mpp_of(layer) is None


def ask_soon(path: str | Path) -> None:
    """Ask for the resolution of the slide at ``path`` once its layer is in napari's current
    viewer (a reader is not given the viewer; the layer is added after it returns)."""
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.current_viewer()
    if viewer is not None:
        QTimer.singleShot(0, functools.partial(_ask_for_path, viewer, Path(path)))


def _ask_for_path(viewer: napari.Viewer, path: Path) -> None:
    for layer in list(viewer.layers):
        if vst_layers.vst_meta(layer).get("slide_path") == str(path) and mpp_missing(layer):
            ask(viewer, layer)


def ask(viewer: napari.Viewer, layer: Layer) -> bool:
    """Ask once for the µm/px of the slide ``layer``: a toast, and a docked panel whose field
    is highlighted (the Predict panel unless one with the field is open).

    Returns
    -------
    bool
        Whether the user was asked now (``False``: asked before, or the µm/px is known).
    """
    meta = vst_layers.vst_meta(layer)
    if not mpp_missing(layer) or meta.get("mpp_asked"):
        return False
    layer.metadata = {**layer.metadata, "vst": {**meta, "mpp_asked": True}}
    window = getattr(viewer, "window", None)
    if window is not None and not _panel_with_field_open(window):
        # (napari may not know the plugin here, e.g. a bare test viewer: the toast still asks)
        with contextlib.suppress(Exception):
            window.add_plugin_dock_widget(PLUGIN, PANELS_WITH_FIELD[0])
    show_warning(
        f"{layer.name} does not record its µm per pixel. Give it once in the highlighted "
        f"field ({HINT}); the slide and every panel take it at once."
    )
    return True


def _panel_with_field_open(window: Any) -> bool:
    from napari_virtual_st._napari.measured_widget import MeasuredWidget
    from napari_virtual_st._napari.predict_widget import PredictWidget

    docked = getattr(window, "dock_widgets", {})
    return any(isinstance(w, PredictWidget | MeasuredWidget) for w in docked.values())
