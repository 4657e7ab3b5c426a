"""Building and finding the plugin's napari layers: slide, heatmaps, uncertainty, spots.

Every layer lives in the napari world frame of micrometres, (row, col): the slide with
``scale = (mpp, mpp)``, heatmaps with the ``scale``/``translate`` of their
:class:`~napari_virtual_st.heatmap.HeatmapGeometry`, spots at their centres converted by
:mod:`napari_virtual_st.frames`. Layers made here carry ``metadata["vst"]`` saying their role
(``slide``, ``heatmap``, ``uncertainty``, ``spots``), their store and gene, so the widgets
find them again however the user renames or reorders them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from napari_virtual_st import display
from napari_virtual_st._napari.layer_views import LayerViews, handing_over, unproxied
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.pyramid import MAX_COARSEST_PX
from napari_virtual_st.slide import Slide
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from napari_virtual_st.context import SpotContext

LayerDataTuple = tuple[Any, dict[str, Any], str]

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


# -- the slide ----------------------------------------------------------------------------
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


# -- predictions --------------------------------------------------------------------------
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


def spots_layer_data(
    view: StoreView, colour_by: str, *, visible: bool = True, taken: list[str] | None = None
) -> LayerDataTuple:
    """A points layer of the spots (µm) coloured by ``colour_by``: its features are the
    spot's name and that gene's value (what napari's status bar shows under the cursor; the
    Gene browser recolours the layer by another gene without a re-run)."""
    kwargs: dict[str, Any] = {
        "name": display.layer_name("spots", view.model_name, taken=taken or [], store=view.name),
        "features": spot_features(view, colour_by),
        "size": view.spot_diameter_um,
        "face_color": colour_by,
        "face_colormap": COLORMAP,
        "face_contrast_limits": display_limits(view, colour_by),
        "border_width": 0,
        "units": "um",
        "visible": visible,
        "metadata": {"vst": {"role": "spots", "store": str(view.path), "gene": colour_by}},
    }
    return (view.yx_um.copy(), kwargs, "points")


def spot_features(view: StoreView, gene: str) -> pd.DataFrame:
    """The spots layer's features: each spot's name and ``gene``'s drawn value."""
    return pd.DataFrame({"spot": view.spot_ids, gene: drawn_values(view, gene)[0]})


def store_layer_data(
    view: StoreView, genes: list[str] | None = None, *, with_slide: bool = True
) -> list[LayerDataTuple]:
    """Layers showing a finished store: its slide (if found), heatmaps and spots.

    Parameters
    ----------
    view
        The store.
    genes
        Genes to draw as heatmaps (default: the most variable one).
    with_slide
        Add the slide recorded in the store, when its file is still there.
    """
    genes = genes or [view.most_variable_gene()]
    layers: list[LayerDataTuple] = []
    slide_path = view.slide_path
    if with_slide and slide_path is not None and slide_path.exists():
        slide = Slide(slide_path, mpp=view.mpp)
        layers.append(slide_layer_data(slide))
    if view.geometry is not None:
        for gene in genes:
            layers.append(heatmap_layer_data(view, gene))
            if view.has_variance:
                layers.append(heatmap_layer_data(view, gene, uncertainty=True, visible=False))
    layers.append(spots_layer_data(view, genes[-1], visible=view.geometry is None))
    return layers


# -- finding and updating layers in a viewer ------------------------------------------------
def vst_meta(layer: Layer) -> dict[str, Any]:
    """The plugin's metadata of a layer (empty for layers it did not make)."""
    meta = layer.metadata.get("vst") if isinstance(layer.metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def stores_in_viewer(viewer: napari.Viewer) -> dict[str, str]:
    """The prediction stores that have layers in the viewer: path → folder name, in layer order."""
    seen: dict[str, str] = {}
    for layer in viewer.layers:
        store = vst_meta(layer).get("store")
        if store and store not in seen:
            seen[store] = Path(store).name
    return seen


def find_layers(
    viewer: napari.Viewer,
    store: str | Path | None = None,
    role: str | None = None,
    gene: str | None = None,
) -> list[Layer]:
    """Layers made by the plugin, filtered by store, role and gene."""
    key = None if store is None else str(Path(store))
    found = []
    for layer in viewer.layers:
        meta = vst_meta(layer)
        if not meta:
            continue
        if key is not None and meta.get("store") != key:
            continue
        if role is not None and meta.get("role") != role:
            continue
        if gene is not None and meta.get("gene") != gene:
            continue
        found.append(layer)
    return found


def add_layer(
    viewer: napari.Viewer,
    data: LayerDataTuple | Layer,
    *,
    select: bool = True,
    views: LayerViews | None = None,
) -> Layer:
    """Add a layer (or a layer data tuple) to the viewer and return the layer.

    Parameters
    ----------
    viewer
        The viewer.
    data
        A layer, or ``(data, kwargs, layer_type)``.
    select
        Make it the selected layer, as napari does with every new layer. ``False`` leaves
        the selection as it is: the new layer's controls are made but not shown, which saves
        napari a switch of the layer controls (tens of milliseconds of the GUI thread)
        while a run is drawing; the layer can be selected in a later event-loop turn.
    views
        napari's views of the layer made beforehand (:class:`LayerViews`, for ``data``
        given as that layer): napari uses them instead of making its own in this call.
    """
    from napari.layers import Layer

    layer = data if isinstance(data, Layer) else Layer.create(*data)
    layers = unproxied(viewer).layers
    # napari selects an inserted layer while _activate_on_insert is set (private: only
    # where it exists; past napari's proxy of a plugin panel's viewer)
    quiet = not select and hasattr(layers, "_activate_on_insert")
    if quiet:
        before, layers._activate_on_insert = layers._activate_on_insert, False
    try:
        with handing_over(views):
            viewer.add_layer(layer)
    finally:
        if quiet:
            layers._activate_on_insert = before
    return layer


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


def show_spots(
    viewer: napari.Viewer, view: StoreView, colour_by: str, *, visible: bool = True
) -> Layer:
    """The spots layer of the store (added if missing), coloured by ``colour_by``."""
    existing = find_layers(viewer, view.path, "spots")
    if existing:
        colour_spots(existing[0], view, colour_by)
        return existing[0]
    taken = [layer.name for layer in viewer.layers]
    return add_layer(viewer, spots_layer_data(view, colour_by, visible=visible, taken=taken))


def colour_spots(layer: Layer, view: StoreView, gene: str) -> None:
    """Colour a spots layer by one gene's predicted values (no re-run, no re-read)."""
    meta = vst_meta(layer)
    if meta.get("gene") == gene and gene in layer.features.columns:
        return
    features = spot_features(view, gene)
    old = meta.get("gene")
    if old in layer.features.columns and old != gene:
        # (the column colouring the spots goes only once they are coloured by the new one)
        layer.features = features.assign(**{str(old): layer.features[old].to_numpy()})
    else:
        layer.features = features
    layer.face_color = gene
    layer.face_contrast_limits = display_limits(view, gene)
    if len(layer.features.columns) > len(features.columns):
        layer.features = features
    layer.metadata = {**layer.metadata, "vst": {**meta, "gene": gene}}


# -- which layers are slides ------------------------------------------------------------
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
