"""The Gene browser's colour scale: how colours are stretched (the contrast mode), whether
napari's canvas colour bars are on, and the Qt colour bar of the heatmap (or spots) on
screen with its legend (unit, contrast mode, values' range, clamping note).

The browser says which layer's scale to show (:meth:`HeatmapScale.show_layer`); the legend
follows it and the colour bar's own updates (a run's values changing its range).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Label

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.colour_bar import ColourBar
from napari_virtual_st._napari.gene_readout import legend_text
from napari_virtual_st._napari.labels import keep_height, set_text
from napari_virtual_st.display import CONTRAST_MODES
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


class HeatmapScale:
    """The contrast and canvas colour bar controls, the colour bar and its legend.

    Parameters
    ----------
    viewer
        The viewer whose heatmaps are scaled.
    lookup
        The view of a store by path in that viewer (``None`` when it has none).
    """

    def __init__(self, viewer: napari.Viewer, lookup: Callable[[str], StoreView | None]) -> None:
        self._viewer = viewer
        self._lookup = lookup
        self.contrast = ComboBox(
            label="Contrast",
            choices=[(text, key) for key, text in CONTRAST_MODES.items()],
            value=vst_layers.contrast_mode(),
        )
        self.contrast.tooltip = (
            "How colours are stretched: the gene's 1st–99th percentile (one extreme spot does "
            "not wash out the map), its lowest to highest value, or one range for every gene "
            "(a gene that hardly varies then looks flat, as it is)"
        )
        self.canvas_colour_bars = CheckBox(
            text="Colour bars on the canvas too", value=vst_layers.canvas_colour_bars()
        )
        self.canvas_colour_bars.tooltip = (
            "napari's colour bars over the image (for figures); the bar below always shows "
            "the active heatmap's scale"
        )
        self.colour_bar = ColourBar()
        self.colour_bar.on_update = self.update_legend  # (its range follows a run's values)
        self.legend = Label(value="")
        keep_height(self.legend, 3)
        self.contrast.changed.connect(self._on_contrast_changed)
        self.canvas_colour_bars.changed.connect(self._on_canvas_colour_bars)

    @property
    def layer(self) -> Layer | None:
        """The layer whose scale is shown."""
        return self.colour_bar.layer

    def show_layer(self, layer: Layer | None) -> None:
        """Show ``layer``'s scale (nothing for ``None``) and its legend."""
        self.colour_bar.show_layer(layer)
        self.update_legend()

    def refresh(self) -> None:
        """Redraw the scale and legend of the layer shown (its colours changed)."""
        self.colour_bar.refresh()
        self.update_legend()

    def update_legend(self) -> None:
        """The colour bar's unit, contrast mode, values' range and clamping note."""
        layer = self.colour_bar.layer
        meta = vst_layers.vst_meta(layer) if layer is not None else {}
        view = self._lookup(meta["store"]) if meta.get("store") else None
        gene = meta.get("gene")
        if view is None or gene not in view.genes:
            set_text(self.legend, "")
            return
        set_text(self.legend, legend_text(view, str(gene), meta.get("role")))

    def release(self) -> None:
        """Stop following the layer shown (the panel is closing)."""
        self.colour_bar.release()

    def _on_contrast_changed(self, mode: str) -> None:
        vst_layers.set_contrast_mode(self._viewer, str(mode))
        self.refresh()

    def _on_canvas_colour_bars(self, on: bool) -> None:
        vst_layers.set_canvas_colour_bars(self._viewer, bool(on))
