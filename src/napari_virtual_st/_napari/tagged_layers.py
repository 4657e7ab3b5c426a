"""The plugin's mark on the layers it makes, finding them again, and adding them.

Every layer this plugin makes carries ``metadata["vst"]``: its role (``slide``, ``heatmap``,
``uncertainty``, ``spots``), its store and its gene. The panels find their layers by that
mark (:func:`find_layers`), however the user renames or reorders them, and add new ones with
:func:`add_layer` (which can leave the selection alone and use views made beforehand).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_virtual_st._napari.layer_views import LayerViews, handing_over, unproxied

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: What a reader, sample or layer builder returns: ``(data, kwargs, layer_type)``.
LayerDataTuple = tuple[Any, dict[str, Any], str]


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
