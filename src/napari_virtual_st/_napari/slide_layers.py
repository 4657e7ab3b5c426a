"""The slide's layer: a lazy multiscale RGB image placed in micrometres, and which layers
are slides.

The slide layer gets ``scale = (mpp, mpp)`` and units µm, so the scale bar is physical and
every other layer of the plugin lies over it in the same frame. A slide whose file does not
record its µm/px is placed once the user gives it (:func:`set_slide_mpp`, shared by every
panel; :class:`ScaleFollower` lets a panel follow it). Slides opened by other readers are
recognised by their source file (:func:`slide_path_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da

from napari_virtual_st._napari.tagged_layers import LayerDataTuple, vst_meta
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.pyramid import MAX_COARSEST_PX
from napari_virtual_st.slide import Slide

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


def slide_levels(slide: Slide, max_coarsest_px: int = MAX_COARSEST_PX) -> list[da.Array]:
    """The slide's lazy multiscale pyramid (:meth:`Slide.pyramid`)."""
    return slide.pyramid(max_coarsest_px)


def slide_layer_data(slide: Slide, *, name: str | None = None) -> LayerDataTuple:
    """An RGB image layer of the slide: lazy multiscale, placed in µm when µm/px is known."""
    levels = slide_levels(slide)
    mpp = slide.mpp_or_none
    kwargs: dict[str, Any] = {
        "name": name or slide.path.name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": (0, 255),
        "metadata": {
            "vst": {"role": "slide", "slide_path": str(slide.path), "mpp": mpp},
        },
    }
    if mpp is not None:
        kwargs["scale"] = (mpp, mpp)
        kwargs["units"] = "um"
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def place_slide_layer(layer: Layer, mpp: float, *, given: bool = False) -> None:
    """Give a slide layer its µm/px (``scale``, units µm), e.g. when the user supplies it
    (``given``: the file does not record it; the panels keep offering to correct it)."""
    meta = dict(layer.metadata.get("vst", {}))
    meta["mpp"] = mpp
    if given:
        meta["mpp_given"] = True
    # (metadata first: widgets that follow the scale read the new µm/px from it)
    layer.metadata = {**layer.metadata, "vst": meta}
    layer.units = ("um", "um")
    layer.scale = (mpp, mpp)


def set_slide_mpp(viewer: napari.Viewer, layer: Layer, mpp: float) -> None:
    """The user's µm/px of a slide whose file does not record it, set once for every panel:
    the layer is placed in µm at once (so are the heatmaps over it) and the view is reset
    onto the rescaled slide."""
    if float(mpp) <= 0:
        raise VirtualSTError(f"µm per pixel must be positive; got {mpp}")
    if vst_meta(layer).get("mpp") == float(mpp):
        return
    place_slide_layer(layer, float(mpp), given=True)
    viewer.reset_view()


def resolution_is_given(layer: Layer) -> bool:
    """Whether a slide layer's µm/px is the user's (its file does not record one), or not
    known yet: the panels then show a field for it."""
    meta = vst_meta(layer)
    if meta.get("role") == "slide":
        return meta.get("mpp") is None or bool(meta.get("mpp_given"))
    return slide_mpp_of(layer) is None


def slide_path_of(layer: Layer) -> Path | None:
    """The slide file behind an image layer (opened by this plugin or any other reader)."""
    from napari.layers import Image

    if not isinstance(layer, Image):
        return None
    meta = vst_meta(layer)
    if meta.get("role") == "slide":
        return Path(meta["slide_path"])
    source = getattr(layer.source, "path", None)
    if source and layer.rgb and Path(source).is_file():
        return Path(source)
    return None


class ScaleFollower:
    """Calls ``on_change`` whenever the scale of the followed slide layer changes (a µm/px
    typed in any panel), so every panel shows the same resolution."""

    def __init__(self, on_change: Callable[..., None]) -> None:
        self._on_change = on_change
        self.layer: Layer | None = None

    def follow(self, layer: Layer | None) -> None:
        """Follow ``layer`` (``None``: none) instead of the one before, and call back now."""
        if self.layer is not layer:
            self.stop()
            if layer is not None:
                layer.events.scale.connect(self._on_change)
            self.layer = layer
        self._on_change()

    def stop(self) -> None:
        """Stop following (the panel is closing)."""
        if self.layer is not None:
            self.layer.events.scale.disconnect(self._on_change)
            self.layer = None


def slide_mpp_of(layer: Layer) -> float | None:
    """µm/px of a slide layer's file, or ``None`` when the file does not record it."""
    meta = vst_meta(layer)
    if meta.get("role") == "slide":
        mpp = meta.get("mpp")
        return None if mpp is None else float(mpp)
    path = slide_path_of(layer)
    if path is None:
        return None
    try:
        with Slide(path) as slide:
            return slide.mpp_or_none
    except VirtualSTError:
        return None
