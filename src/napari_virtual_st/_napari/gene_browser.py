"""The Gene browser dock widget: search the predicted genes, show them as heatmaps, colour
the spots, read values under the cursor.

Every selected gene gets a heatmap layer (and an uncertainty layer when the model gives a
variance); the spots layer, which holds every gene as a feature, is recoloured by the chosen
gene without re-running anything. The widget works on whatever prediction stores have layers
in the viewer: those the Predict widget is filling, and those opened from disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, LineEdit, Select
from napari.utils.notifications import show_warning

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.colour_bar import ColourBar
from napari_virtual_st._napari.labels import keep_height, set_text
from napari_virtual_st.store_view import StoreView, lookup_view, on_register

if TYPE_CHECKING:
    import napari

#: More heatmap layers than this at once makes the viewer hard to read (and slow).
MAX_HEATMAPS = 12
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "gray")


class GeneBrowser(Container):
    """Browse the genes of a prediction as heatmaps and coloured spots.

    Parameters
    ----------
    napari_viewer
        The viewer whose prediction layers are browsed.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._syncing = False
        self._store_key: str | None = None
        self._choices_from: StoreView | None = None
        self._closed = False

        self.prediction = ComboBox(label="Prediction", choices=self._store_choices, nullable=True)
        self.info = Label(value="")
        self.search = LineEdit(label="Search")
        self.search.native.setPlaceholderText("gene name, e.g. ERBB2")
        self.search.native.setClearButtonEnabled(True)
        self.genes = Select(label="Genes", choices=self._gene_choices, allow_multiple=True)
        self.genes.native.setMinimumHeight(220)
        self.colour_by = ComboBox(label="Colour spots by", choices=self._gene_choices)
        self.colormap = ComboBox(label="Colours", choices=COLORMAPS, value="viridis")
        self.opacity = FloatSlider(
            label="Heatmap opacity", value=vst_layers.HEATMAP_OPACITY, min=0.0, max=1.0, step=0.05
        )
        self.uncertainty = CheckBox(text="Uncertainty layers (models with variance)", value=True)
        self.canvas_colour_bars = CheckBox(
            text="Colour bars on the canvas too", value=vst_layers.canvas_colour_bars()
        )
        self.canvas_colour_bars.tooltip = (
            "napari's colour bars over the image (for figures); the bar below always shows "
            "the active heatmap's scale"
        )
        self.colour_bar = ColourBar()
        self.cursor = Label(value="")
        keep_height(self.info, 2)
        keep_height(self.cursor, 3)  # it changes with every mouse move
        self.extend(
            [
                self.prediction,
                self.info,
                self.search,
                self.genes,
                self.colour_by,
                self.colormap,
                self.opacity,
                self.uncertainty,
                self.canvas_colour_bars,
                self.cursor,
            ]
        )
        self.native.layout().addWidget(self.colour_bar)
        self.prediction.changed.connect(self._on_prediction_changed)
        self.search.changed.connect(self._apply_filter)
        self.genes.changed.connect(self._on_genes_changed)
        self.colour_by.changed.connect(self._on_colour_by_changed)
        self.colormap.changed.connect(self._on_style_changed)
        self.opacity.changed.connect(self._on_style_changed)
        self.uncertainty.changed.connect(self._on_genes_changed)
        self.canvas_colour_bars.changed.connect(self._on_canvas_colour_bars)
        napari_viewer.layers.selection.events.active.connect(self._follow_colour_bar)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        napari_viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self.native.destroyed.connect(self._on_destroyed)
        on_register(self._on_view_registered)
        self._on_layers_changed()

    # -- which prediction ---------------------------------------------------------------------
    def _store_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(name, key) for key, name in vst_layers.stores_in_viewer(self._viewer).items()]

    def _gene_choices(self, _widget: Any = None) -> list[str]:
        view = self.view
        return list(view.genes) if view is not None else []

    @property
    def view(self) -> StoreView | None:
        """The prediction being browsed."""
        key = self.prediction.value
        return None if key is None else lookup_view(key)

    def _on_layers_changed(self, event: Any = None) -> None:
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if (
            added is not None
            and vst_layers.vst_meta(added).get("role") == "heatmap"
            and added.data.shape != (1, 1)  # not the empty layer of a run that just started
        ):
            vst_layers.show_colorbar(added)  # e.g. a heatmap of a store opened from disk
        self._follow_colour_bar()
        if self._syncing:
            return
        self.prediction.reset_choices()
        if self.prediction.value is None and self.prediction.choices:
            self.prediction.value = self.prediction.choices[-1]
        if self.prediction.value != self._store_key or self.view is not self._choices_from:
            self._on_prediction_changed()
        else:
            self._select_shown_genes()

    def _on_view_registered(self, view: StoreView) -> None:
        """A run's store now exists (or was re-read): list its genes."""
        if self._closed:
            return
        if self.prediction.value is not None and lookup_view(self.prediction.value) is view:
            self._on_prediction_changed()

    def _on_prediction_changed(self, _value: Any = None) -> None:
        self._store_key = self.prediction.value
        view = self.view
        self._choices_from = view
        set_text(self.cursor, "")
        self._syncing = True
        try:
            self.genes.reset_choices()
            self.colour_by.reset_choices()
            self.uncertainty.enabled = view is not None and view.has_variance
            if view is not None:
                grid = {"visium": "Visium spots", "st": "legacy ST spots", "dense": "tiles"}.get(
                    view.kind, "spots"
                )
                info = (
                    f"{view.model_name}: {len(view.genes)} genes ({view.target}) on "
                    f"{view.n_spots:,} {grid}"
                    + (f"; values {view.values_description}" if view.is_contextual else "")
                )
            elif self.prediction.value is not None:
                info = "Waiting for the run to lay out its spots…"
            else:
                info = "No prediction in the viewer yet: run one, or open a .vst.zarr."
            set_text(self.info, info)
        finally:
            self._syncing = False
        self._apply_filter()
        self._select_shown_genes()
        self._follow_colour_bar()

    # -- colour bar -----------------------------------------------------------------------------
    def _follow_colour_bar(self, _event: Any = None) -> None:
        """Show the active layer's scale if it is a heatmap, else the browsed prediction's
        last heatmap's (nothing when there is none)."""
        if self._closed:
            return
        active = self._viewer.layers.selection.active
        if active is not None and vst_layers.vst_meta(active).get("role") in (
            "heatmap",
            "uncertainty",
        ):
            self.colour_bar.show_layer(active)
            return
        view = self.view
        shown = vst_layers.find_layers(self._viewer, view.path, "heatmap") if view else []
        self.colour_bar.show_layer(shown[-1] if shown else None)

    def _on_canvas_colour_bars(self, on: bool) -> None:
        vst_layers.set_canvas_colour_bars(self._viewer, bool(on))

    # -- gene list ------------------------------------------------------------------------------
    def visible_genes(self) -> list[str]:
        """Genes in the list that the search leaves visible."""
        native = self.genes.native
        return [
            native.item(i).text() for i in range(native.count()) if not native.item(i).isHidden()
        ]

    def _apply_filter(self, _value: Any = None) -> None:
        text = (self.search.value or "").strip().lower()
        native = self.genes.native
        for i in range(native.count()):
            item = native.item(i)
            item.setHidden(bool(text) and text not in item.text().lower())

    def _select_shown_genes(self) -> None:
        """Make the list's selection match the heatmap layers in the viewer."""
        view = self.view
        if view is None:
            return
        shown = [
            vst_layers.vst_meta(layer)["gene"]
            for layer in vst_layers.find_layers(self._viewer, view.path, "heatmap")
        ]
        spots = vst_layers.find_layers(self._viewer, view.path, "spots")
        self._syncing = True
        try:
            if set(shown) != set(self.genes.value):
                self.genes.value = [g for g in shown if g in view.genes]
                self._scroll_to(shown[-1] if shown else None)
            colour = vst_layers.vst_meta(spots[0]).get("gene") if spots else None
            if colour is None and shown:
                colour = shown[-1]
            if colour in view.genes and self.colour_by.value != colour:
                self.colour_by.value = colour
        finally:
            self._syncing = False

    def _scroll_to(self, gene: str | None) -> None:
        """Bring a gene's row into view in the list."""
        if gene is None:
            return
        native = self.genes.native
        for i in range(native.count()):
            if native.item(i).text() == gene:
                native.scrollToItem(native.item(i))
                return

    def show_genes(self, genes: list[str]) -> None:
        """Select exactly these genes (their heatmaps appear, the others' go)."""
        self.genes.value = list(genes)

    def _on_genes_changed(self, _value: Any = None) -> None:
        if self._syncing:
            return
        view = self.view
        if view is None:
            return
        wanted = list(self.genes.value)
        if len(wanted) > MAX_HEATMAPS:
            show_warning(
                f"{len(wanted)} genes selected: showing the first {MAX_HEATMAPS} as heatmaps"
            )
            wanted = wanted[:MAX_HEATMAPS]
        with_uncertainty = view.has_variance and bool(self.uncertainty.value)
        self._syncing = True
        try:
            for layer in vst_layers.find_layers(self._viewer, view.path):
                meta = vst_layers.vst_meta(layer)
                role, gene = meta.get("role"), meta.get("gene")
                if (role == "heatmap" and gene not in wanted) or (
                    role == "uncertainty" and (gene not in wanted or not with_uncertainty)
                ):
                    self._viewer.layers.remove(layer)
            if view.geometry is not None:
                for gene in wanted:
                    new = not vst_layers.find_layers(self._viewer, view.path, "heatmap", gene)
                    layer = vst_layers.show_heatmap(self._viewer, view, gene)
                    if with_uncertainty:
                        vst_layers.show_heatmap(self._viewer, view, gene, uncertainty=True)
                    if new and layer is not None:
                        layer.colormap = self.colormap.value
                        layer.opacity = float(self.opacity.value)
                        self._viewer.layers.selection.active = layer
        finally:
            self._syncing = False
        if wanted and wanted[-1] != self.colour_by.value:
            self.colour_by.value = wanted[-1]

    # -- spots and style ------------------------------------------------------------------------
    def colour_spots_by(self, gene: str) -> None:
        """Colour the spots layer by ``gene`` (adding the layer if the store has none yet)."""
        self.colour_by.value = gene

    def _on_colour_by_changed(self, _value: Any = None) -> None:
        if self._syncing:
            return
        view = self.view
        gene = self.colour_by.value
        if view is None or gene is None:
            return
        spots = vst_layers.find_layers(self._viewer, view.path, "spots")
        if spots:
            vst_layers.colour_spots(spots[0], view, gene)
            spots[0].face_colormap = self.colormap.value

    def _on_style_changed(self, _value: Any = None) -> None:
        view = self.view
        if view is None:
            return
        for layer in vst_layers.find_layers(self._viewer, view.path, "heatmap"):
            layer.colormap = self.colormap.value
            layer.opacity = float(self.opacity.value)
        for layer in vst_layers.find_layers(self._viewer, view.path, "spots"):
            layer.face_colormap = self.colormap.value

    # -- values under the cursor ----------------------------------------------------------------
    def values_at(self, yx_um: Any) -> str:
        """Text describing the spot under a world point (row, col) µm: its id and the
        selected genes' values (± SD when known); empty when no spot is there."""
        view = self.view
        if view is None:
            return ""
        spot = view.spot_at(yx_um)
        if spot < 0:
            return ""
        genes = list(self.genes.value) or [self.colour_by.value or view.genes[0]]
        parts = []
        for gene in genes[:MAX_HEATMAPS]:
            value = float(view.values(gene)[spot])
            if not np.isfinite(value):
                parts.append(f"{gene} not predicted yet")
                continue
            sd = view.sd(gene)
            spread = f" ± {float(sd[spot]):.3g}" if sd is not None else ""
            parts.append(f"{gene} {value:.3g}{spread}")
        return f"spot {view.spot_ids[spot]}: " + ", ".join(parts)

    def _on_mouse_move(self, viewer: napari.Viewer, event: Any) -> None:
        set_text(self.cursor, self.values_at(np.asarray(event.position)[-2:]))

    def _on_destroyed(self, *_: Any) -> None:
        """The panel is closing: stop following the viewer's layers and the mouse."""
        self._closed = True
        self._viewer.layers.selection.events.active.disconnect(self._follow_colour_bar)
        self.colour_bar.release()
        callbacks = self._viewer.mouse_move_callbacks
        if self._on_mouse_move in callbacks:
            callbacks.remove(self._on_mouse_move)
