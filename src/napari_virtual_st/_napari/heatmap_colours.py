"""How the plugin's heatmaps and spots are coloured: colour maps, the contrast mode and the
display limits it gives, and napari's canvas colour bars.

The contrast mode and whether heatmaps get a canvas colour bar are chosen in the Gene
browser and hold for every prediction of the session; changing either updates the layers
already shown (:func:`set_contrast_mode`, :func:`set_canvas_colour_bars`). Values a model's
target cannot take are drawn clamped (:func:`drawn_values`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st import display
from napari_virtual_st._napari.tagged_layers import find_layers, vst_meta
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

HEATMAP_OPACITY = 0.65
#: Display limits follow the values as they land, but only moves larger than this share of
#: their span are applied (each change redraws the layer's colour bar and controls).
LIMITS_TOLERANCE = 0.02
COLORMAP = "viridis"
#: napari's canvas colour bars for heatmaps: the first one drawn costs the canvas a font atlas
#: and a new visual (≈0.5 s in software OpenGL), so they are opt-in (Gene browser checkbox).
_CANVAS_COLOUR_BARS = [False]
#: How heatmap colours are stretched (a :data:`~napari_virtual_st.display.CONTRAST_MODES` key,
#: chosen in the Gene browser, the same for every prediction of the session).
_CONTRAST_MODE = ["percentile"]
#: The last ``fixed`` limits, with the (view, spots done) they were computed for.
_FIXED_LIMITS: dict[str, Any] = {}


def contrast_mode() -> str:
    """How heatmap colours are stretched now (see :func:`set_contrast_mode`)."""
    return _CONTRAST_MODE[0]


def set_contrast_mode(viewer: napari.Viewer | None, mode: str) -> None:
    """Stretch heatmap (and spot) colours by ``mode`` (a
    :data:`~napari_virtual_st.display.CONTRAST_MODES` key): now, in ``viewer``, and later."""
    if mode not in display.CONTRAST_MODES:
        raise ValueError(f"unknown contrast mode {mode!r}")
    _CONTRAST_MODE[0] = mode
    if viewer is None:
        return
    for layer in find_layers(viewer):
        meta = vst_meta(layer)
        role, gene = meta.get("role"), meta.get("gene")
        view = views_of(viewer).lookup(meta["store"]) if meta.get("store") else None
        if view is None or gene not in view.genes:
            continue
        if role in ("heatmap", "uncertainty"):
            lo, hi = display_limits(view, str(gene), uncertainty=role == "uncertainty")
            layer.contrast_limits_range = (lo, hi)
            layer.contrast_limits = (lo, hi)
        elif role == "spots":
            layer.face_contrast_limits = display_limits(view, str(gene))
            layer.refresh_colors()


def display_limits(
    view: StoreView, gene: str, *, uncertainty: bool = False
) -> tuple[float, float]:
    """Colour-map limits of a gene's values (or SDs) in the current contrast mode; values
    the model's target cannot take are left out (they are drawn clamped)."""
    if uncertainty:
        values = view.sd(gene)
        return display.contrast_limits(values if values is not None else [], "percentile")
    mode = contrast_mode()
    if mode == "fixed":  # (every gene's values: once per prediction and state, not per gene)
        key = (id(view), view.spots_done)
        if _FIXED_LIMITS.get("key") != key:
            _FIXED_LIMITS["key"] = key
            _FIXED_LIMITS["limits"] = display.contrast_limits(
                [], "fixed", all_values=view.expression, target=view.target
            )
        return _FIXED_LIMITS["limits"]
    return display.contrast_limits(view.values(gene), mode, target=view.target)


def drawn_values(view: StoreView, gene: str) -> tuple[NDArray[np.float32], int]:
    """A gene's values as drawn: clamped to what the target can take, and how many were."""
    return display.clamp_to_target(view.values(gene), view.target)


def canvas_colour_bars() -> bool:
    """Whether heatmaps get napari's colour bar on the canvas (off by default: the Gene
    browser's own colour bar shows the active heatmap's scale without the canvas's cost)."""
    return _CANVAS_COLOUR_BARS[0]


def set_canvas_colour_bars(viewer: napari.Viewer | None, on: bool) -> None:
    """Turn the canvas colour bars of the plugin's heatmaps on or off (now, in ``viewer``,
    and for heatmaps shown later)."""
    _CANVAS_COLOUR_BARS[0] = bool(on)
    if viewer is None:
        return
    for layer in find_layers(viewer):
        if vst_meta(layer).get("role") in ("heatmap", "uncertainty"):
            colorbar = getattr(layer, "colorbar", None)
            if colorbar is not None and colorbar.visible != bool(on):
                colorbar.visible = bool(on)


def show_colorbar(layer: Layer, *, force: bool = False) -> None:
    """Show the layer's colour bar on the canvas (napari versions that have one) when canvas
    colour bars are on (:func:`set_canvas_colour_bars`) or ``force`` says so (side-by-side
    maps, whose two scales must be seen at once)."""
    if not (force or canvas_colour_bars()):
        return
    colorbar = getattr(layer, "colorbar", None)
    if colorbar is not None and not colorbar.visible:
        colorbar.visible = True
