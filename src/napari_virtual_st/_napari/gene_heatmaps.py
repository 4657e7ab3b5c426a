"""The heatmap layers of one prediction's genes, as the Gene browser keeps them.

One selected gene is one heatmap layer: a layer whose gene is no longer wanted is switched
to a newly wanted one, a layer is added only for a gene wanted beside others, and layers
left over go. The uncertainty maps (a model with a variance) follow the same way and are
shown in place of the values, never beside them, so that two colour maps never mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


def show_genes(
    viewer: napari.Viewer,
    view: StoreView,
    wanted: list[str],
    *,
    uncertainty: bool,
    colormap: str,
    opacity: float,
) -> Layer | None:
    """Heatmap (and uncertainty) layers of ``view`` for exactly the ``wanted`` genes; the
    uncertainty maps are the visible ones when ``uncertainty`` (and the model gives them).
    Returns the layer on screen for the last gene wanted (its colour bar is the one to see).
    """
    shows_uncertainty = uncertainty and view.has_variance
    shown: Layer | None = None
    for role in ("heatmap", "uncertainty"):
        if role == "uncertainty" and not view.has_variance:
            for layer in vst_layers.find_layers(viewer, view.path, role):
                viewer.layers.remove(layer)
            continue
        visible = shows_uncertainty == (role == "uncertainty")
        layer = _show_genes_in(viewer, view, role, wanted, visible, colormap, opacity)
        if visible:
            shown = layer
    return shown


def _show_genes_in(
    viewer: napari.Viewer,
    view: StoreView,
    role: str,
    wanted: list[str],
    visible: bool,
    colormap: str,
    opacity: float,
) -> Layer | None:
    """Layers of one ``role`` for exactly the ``wanted`` genes; the last gene's layer."""
    layers = vst_layers.find_layers(viewer, view.path, role)
    by_gene = {vst_layers.vst_meta(layer).get("gene"): layer for layer in layers}
    free = [layer for layer in layers if vst_layers.vst_meta(layer).get("gene") not in wanted]
    last: Layer | None = None
    if view.geometry is None:
        return None
    uncertainty = role == "uncertainty"
    for gene in wanted:
        layer = by_gene.get(gene)
        if layer is None and free:
            layer = free.pop(0)
            vst_layers.switch_gene(viewer, layer, view, gene)
            layer.visible = visible
        elif layer is None:
            layer = vst_layers.show_heatmap(viewer, view, gene, uncertainty=uncertainty)
            if layer is not None:
                layer.visible = visible
            if layer is not None and not uncertainty:
                layer.colormap = colormap
                layer.opacity = opacity
        last = layer
    for layer in free:
        viewer.layers.remove(layer)
    return last


def show_uncertainty(viewer: napari.Viewer, view: StoreView, show: bool) -> Layer | None:
    """Show the prediction's uncertainty maps in place of its values (or the values again);
    returns the last layer of the maps now on screen."""
    for layer in vst_layers.find_layers(viewer, view.path, "uncertainty"):
        layer.visible = show
    for layer in vst_layers.find_layers(viewer, view.path, "heatmap"):
        layer.visible = not show  # (one map at a time: colours never mix)
    on_screen = vst_layers.find_layers(viewer, view.path, "uncertainty" if show else "heatmap")
    return on_screen[-1] if on_screen else None


def hide_other_heatmaps(viewer: napari.Viewer, store: str) -> None:
    """Hide the heatmaps of every prediction but ``store`` (their layers stay)."""
    for layer in vst_layers.find_layers(viewer):
        meta = vst_layers.vst_meta(layer)
        if meta.get("store") != store and meta.get("role") in ("heatmap", "uncertainty"):
            layer.visible = False
