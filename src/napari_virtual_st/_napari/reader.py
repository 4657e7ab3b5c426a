"""napari reader: whole-slide images and saved prediction stores (``.vst.zarr``).

Slides open as lazy multiscale RGB layers in micrometres (nothing is read until napari
draws it, and then only the tiles on screen at the level it needs). A prediction store opens
as its slide (when the file is still where the store says), heatmaps and spots, at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_virtual_st._backends import image_backend
from napari_virtual_st._napari import resolution
from napari_virtual_st._napari.layers import LayerDataTuple, slide_layer_data, store_layer_data
from napari_virtual_st._napari.views import hand_over, mark_opened
from napari_virtual_st.errors import SlideError, VirtualSTError
from napari_virtual_st.run.process import prewarm
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import STORE_FORMAT
from napari_virtual_st.store_view import StoreView

ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """The reader for ``path`` if this plugin can open it, else ``None`` (npe2 reader hook).

    Parameters
    ----------
    path
        A file or folder, or a list of them (each must be readable).
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read


def read(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Layer data for slides and prediction stores.

    Raises
    ------
    VirtualSTError
        With a message for the user when a file cannot be opened (napari shows it).
    """
    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerDataTuple] = []
    for p in map(Path, paths):
        if _is_store(p):
            layers.extend(read_store(p))
        else:
            layers.extend(read_slide(p))
    return layers


def read_slide(path: str | Path, *, mpp: float | None = None) -> list[LayerDataTuple]:
    """One lazy multiscale RGB layer of a slide (``scale`` = µm/px when known)."""
    slide = Slide(path, mpp=mpp)  # kept open by the layer's lazy arrays
    prewarm()  # a prediction is likely next: its process imports while the user docks Predict
    if slide.mpp_or_none is None:
        resolution.ask_soon(slide.path)  # once its layer is in the viewer
    return [slide_layer_data(slide)]


def read_store(path: str | Path) -> list[LayerDataTuple]:
    """A finished (or partial) prediction store: its slide, the most variable gene's
    heatmap (and uncertainty, when the model gives it) and the spots with every gene."""
    view = hand_over(StoreView.open(path))  # the viewer showing its layers takes it
    _dock_gene_browser_soon()
    return mark_opened(store_layer_data(view))


def _dock_gene_browser_soon() -> None:
    """Dock the Gene browser (the heatmaps' colour bar and legend) in the current viewer,
    once the store's layers are in: a reader is not given the viewer, napari's current one
    is the one opening the store."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_virtual_st._napari.gene_browser import dock_gene_browser

    viewer = napari.current_viewer()
    if viewer is not None:
        QTimer.singleShot(0, functools.partial(dock_gene_browser, viewer))


def _is_store(path: Path) -> bool:
    if not path.is_dir():
        return False
    meta = path / "zarr.json"
    try:
        return meta.is_file() and STORE_FORMAT in meta.read_text(encoding="utf-8")
    except OSError:
        return False


def _readable(path: Path) -> bool:
    if _is_store(path):
        return True
    if not path.is_file():
        return False
    if path.name.lower().endswith(image_backend.SUFFIXES):
        return True  # plain images are decoded whole on opening: only when asked to read
    try:
        with Slide(path):
            return True
    except (SlideError, VirtualSTError):
        return False
