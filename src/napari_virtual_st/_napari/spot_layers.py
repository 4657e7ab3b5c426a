"""The spots layer of a prediction: a points layer at the spots' centres (µm), coloured by
one gene, with each spot's name and that gene's value as features (what napari's status bar
shows under the cursor). The Gene browser recolours it by another gene without a re-run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from napari_virtual_st import display
from napari_virtual_st._napari.heatmap_colours import COLORMAP, display_limits, drawn_values
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
