"""Heatmap layers: one gene's values (or SDs) of a prediction over its spots' lattice.

A heatmap is an image layer placed by the ``scale``/``translate`` of the store's
:class:`~napari_virtual_st.heatmap.HeatmapGeometry`, in µm. The Gene browser switches the gene
a heatmap shows (:func:`switch_gene`) rather than adding layers; a run draws its values into
heatmaps made beforehand, empty (:func:`empty_heatmap_layer_data`), as they arrive
(:func:`refresh_heatmaps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from napari_virtual_st import display
from napari_virtual_st._napari.heatmap_colours import (
    COLORMAP,
    HEATMAP_OPACITY,
    LIMITS_TOLERANCE,
    display_limits,
    drawn_values,
    show_colorbar,
)
from napari_virtual_st._napari.tagged_layers import (
    LayerDataTuple,
    add_layer,
    find_layers,
    vst_meta,
)
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from napari_virtual_st.context import SpotContext


def heatmap_image(view: StoreView, gene: str, *, uncertainty: bool = False) -> NDArray[np.float32]:
    """The heatmap image of a gene's drawn values (clamped, see :func:`drawn_values`) or SDs."""
    if uncertainty or view.geometry is None:
        return view.heatmap(gene, uncertainty=uncertainty)
    return view.geometry.rasterise(drawn_values(view, gene)[0])


def heatmap_name(
    view: StoreView,
    gene: str,
    *,
    uncertainty: bool = False,
    viewer: napari.Viewer | None = None,
    renaming: Layer | None = None,
) -> str:
    """A heatmap layer's name: gene and model, with the store's name when another layer of
    ``viewer`` (other than the one ``renaming``) has that name already."""
    taken = (
        [] if viewer is None else [layer.name for layer in viewer.layers if layer is not renaming]
    )
    return display.layer_name(
        gene,
        view.model_name,
        what="SD" if uncertainty else "",
        taken=taken,
        store=view.name,
        context=view.context,
    )


def heatmap_layer_data(
    view: StoreView,
    gene: str,
    *,
    uncertainty: bool = False,
    visible: bool = True,
    name: str | None = None,
) -> LayerDataTuple:
    """A heatmap image layer of one gene's values (or standard deviations) over its spots.

    Values the model's target cannot take (a negative log1p) are drawn clamped to its floor.
    """
    if view.geometry is None:
        raise ValueError(f"{view.path.name} has no lattice; show its spots instead")
    geometry = view.geometry
    image = heatmap_image(view, gene, uncertainty=uncertainty)
    role = "uncertainty" if uncertainty else "heatmap"
    kwargs: dict[str, Any] = {
        "name": name or heatmap_name(view, gene, uncertainty=uncertainty),
        "scale": geometry.scale_um,
        "translate": geometry.translate_um,
        "units": "um",
        "colormap": "magma" if uncertainty else COLORMAP,
        "contrast_limits": display_limits(view, gene, uncertainty=uncertainty),
        "opacity": HEATMAP_OPACITY,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "visible": visible,
        "metadata": {"vst": {"role": role, "store": str(view.path), "gene": gene}},
    }
    return (image, kwargs, "image")


def empty_heatmap_layer_data(
    store: str | Path,
    gene: str,
    *,
    uncertainty: bool = False,
    model: str = "",
    taken: list[str] | None = None,
    context: SpotContext | None = None,
) -> LayerDataTuple:
    """A heatmap layer with no values yet (one NaN pixel), placed when its store exists;
    named after the gene, ``model`` and its ``context`` (and the store when ``taken`` has
    that name)."""
    role = "uncertainty" if uncertainty else "heatmap"
    store_name = Path(store).name.removesuffix(".vst.zarr")
    name = display.layer_name(
        gene,
        model,
        what="SD" if uncertainty else "",
        taken=taken or [],
        store=store_name,
        context=context,
    )
    kwargs: dict[str, Any] = {
        "name": name,
        "units": "um",
        "colormap": "magma" if uncertainty else COLORMAP,
        "contrast_limits": (0.0, 1.0),
        "opacity": HEATMAP_OPACITY,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "visible": not uncertainty,
        "metadata": {"vst": {"role": role, "store": str(Path(store)), "gene": gene}},
    }
    return (np.full((1, 1), np.nan, np.float32), kwargs, "image")


def show_heatmap(
    viewer: napari.Viewer, view: StoreView, gene: str, *, uncertainty: bool = False
) -> Layer | None:
    """The heatmap layer of ``gene`` (added if missing); ``None`` for grids without lattice."""
    if view.geometry is None:
        return None
    role = "uncertainty" if uncertainty else "heatmap"
    existing = find_layers(viewer, view.path, role, gene)
    if existing:
        return existing[0]
    name = heatmap_name(view, gene, uncertainty=uncertainty, viewer=viewer)
    data = heatmap_layer_data(
        view, gene, uncertainty=uncertainty, visible=not uncertainty, name=name
    )
    layer = add_layer(viewer, data)
    show_colorbar(layer)
    return layer


def switch_gene(viewer: napari.Viewer, layer: Layer, view: StoreView, gene: str) -> None:
    """Show another gene in a heatmap (or uncertainty) layer: its values, limits, name and
    metadata change; the layer, its place in the list, colours and opacity stay."""
    meta = vst_meta(layer)
    if meta.get("gene") == gene or view.geometry is None:
        return
    uncertainty = meta.get("role") == "uncertainty"
    lo, hi = display_limits(view, gene, uncertainty=uncertainty)
    layer.metadata = {**layer.metadata, "vst": {**meta, "gene": gene}}
    _set_image(layer, heatmap_image(view, gene, uncertainty=uncertainty))
    layer.contrast_limits_range = (lo, hi)
    layer.contrast_limits = (lo, hi)
    layer.name = heatmap_name(view, gene, uncertainty=uncertainty, viewer=viewer, renaming=layer)


def refresh_heatmaps(viewer: napari.Viewer, view: StoreView) -> None:
    """Redraw every heatmap and uncertainty layer of the store from the view's values
    (placing layers that were added before the store's grid was known)."""
    geometry = view.geometry
    for layer in find_layers(viewer, view.path):
        meta = vst_meta(layer)
        role = meta.get("role")
        if role not in ("heatmap", "uncertainty"):
            continue
        if geometry is None:  # spots without a lattice: no heatmap can be drawn
            viewer.layers.remove(layer)
            continue
        uncertainty = role == "uncertainty"
        gene = str(meta["gene"])
        lo, hi = display_limits(view, gene, uncertainty=uncertainty)
        if tuple(layer.scale[-2:]) != geometry.scale_um:
            layer.scale = geometry.scale_um
        if tuple(layer.translate[-2:]) != geometry.translate_um:
            layer.translate = geometry.translate_um
        _set_image(layer, heatmap_image(view, gene, uncertainty=uncertainty))
        old_lo, old_hi = layer.contrast_limits
        span = max(hi - lo, old_hi - old_lo, 1e-12)
        if max(abs(lo - old_lo), abs(hi - old_hi)) > LIMITS_TOLERANCE * span:
            layer.contrast_limits_range = (lo, hi)
            layer.contrast_limits = (lo, hi)


def _set_image(layer: Layer, values: NDArray[np.float32]) -> None:
    """New values for an image layer: written into its array when the shape is the same
    (napari then only redraws; a new array also makes it recompute the viewer's extent)."""
    data = layer.data
    if (
        isinstance(data, np.ndarray)
        and data.shape == values.shape
        and data.dtype == values.dtype
        and data.flags.writeable
    ):
        np.copyto(data, values)
        layer.refresh()
    else:
        layer.data = values
