"""The plugin's napari layers, in one import for the panels, and the layers of a store.

Every layer lives in the napari world frame of micrometres, (row, col). Each concept has a
module of its own; this one gathers their names, so a panel imports ``layers as vst_layers``
and calls ``vst_layers.find_layers(...)``, ``vst_layers.show_heatmap(...)``:

- :mod:`.tagged_layers`: the ``metadata["vst"]`` mark, finding and adding layers;
- :mod:`.slide_layers`: the slide's lazy multiscale layer, its µm/px, which layers are slides;
- :mod:`.heatmap_colours`: colour maps, contrast mode, display limits, canvas colour bars;
- :mod:`.heatmap_layers`: heatmaps of a gene's values or SDs, made, switched and redrawn;
- :mod:`.spot_layers`: the spots layer, coloured by one gene.

:func:`store_layer_data` (here) is what the reader shows for a saved store: its slide,
heatmaps and spots.
"""

from __future__ import annotations

from napari_virtual_st._napari.heatmap_colours import (
    COLORMAP,
    HEATMAP_OPACITY,
    LIMITS_TOLERANCE,
    canvas_colour_bars,
    contrast_mode,
    display_limits,
    drawn_values,
    set_canvas_colour_bars,
    set_contrast_mode,
    show_colorbar,
)
from napari_virtual_st._napari.heatmap_layers import (
    empty_heatmap_layer_data,
    heatmap_image,
    heatmap_layer_data,
    heatmap_name,
    refresh_heatmaps,
    show_heatmap,
    switch_gene,
)
from napari_virtual_st._napari.slide_layers import (
    ScaleFollower,
    place_slide_layer,
    resolution_is_given,
    set_slide_mpp,
    slide_layer_data,
    slide_levels,
    slide_mpp_of,
    slide_path_of,
)
from napari_virtual_st._napari.spot_layers import (
    colour_spots,
    show_spots,
    spot_features,
    spots_layer_data,
)
from napari_virtual_st._napari.tagged_layers import (
    LayerDataTuple,
    add_layer,
    find_layers,
    stores_in_viewer,
    vst_meta,
)
from napari_virtual_st.slide import Slide
from napari_virtual_st.store_view import StoreView

__all__ = [
    "COLORMAP",
    "HEATMAP_OPACITY",
    "LIMITS_TOLERANCE",
    "LayerDataTuple",
    "ScaleFollower",
    "add_layer",
    "canvas_colour_bars",
    "colour_spots",
    "contrast_mode",
    "display_limits",
    "drawn_values",
    "empty_heatmap_layer_data",
    "find_layers",
    "heatmap_image",
    "heatmap_layer_data",
    "heatmap_name",
    "place_slide_layer",
    "refresh_heatmaps",
    "resolution_is_given",
    "set_canvas_colour_bars",
    "set_contrast_mode",
    "set_slide_mpp",
    "show_colorbar",
    "show_heatmap",
    "show_spots",
    "slide_layer_data",
    "slide_levels",
    "slide_mpp_of",
    "slide_path_of",
    "spot_features",
    "spots_layer_data",
    "store_layer_data",
    "stores_in_viewer",
    "switch_gene",
    "vst_meta",
]


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
