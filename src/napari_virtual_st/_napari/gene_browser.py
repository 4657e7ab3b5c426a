"""The Gene browser dock widget: search the predicted genes, show them as heatmaps, colour
the spots, read values under the cursor.

A prediction has one heatmap layer whose gene the browser switches (a click on a gene); a
second gene gets a layer of its own only when asked (ctrl-click adds it to the selection).
The uncertainty layer, when the model gives a variance, follows the same way. The spots layer
is recoloured by the chosen gene without re-running anything. The browser follows the active
prediction: a layer of another prediction made active, or a new run, switches it (and a new
prediction's heatmap hides the older ones' so that colours never mix). The colour bar below
shows the active heatmap's (or spots') colours with the unit, the contrast mode and the
values' range; values the model's target cannot take are drawn clamped, with a note.
"""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, LineEdit, Select
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QDockWidget

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.colour_bar import ColourBar
from napari_virtual_st._napari.dock import scroll_form, share_height
from napari_virtual_st._napari.labels import keep_height, set_text
from napari_virtual_st.display import (
    CONTRAST_MODES,
    clamp_note,
    context_marker,
    target_unit,
    top_genes,
)
from napari_virtual_st.store_view import StoreView, lookup_view, on_register

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: More heatmap layers than this at once makes the viewer hard to read (and slow).
MAX_HEATMAPS = 12
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "gray")
#: Genes the cursor read-out lists as standing out at a spot.
TOP_K = 3
PLUGIN = "napari-virtual-st"
#: Names napari gives the Predict panel's dock.
_PREDICT_DOCKS = ("Predict expression (napari-virtual-st)", "Predict expression")
#: Gene browsers open now (one per viewer is enough).
_OPEN: weakref.WeakSet[GeneBrowser] = weakref.WeakSet()


def dock_gene_browser(viewer: napari.Viewer) -> None:
    """Dock the Gene browser in ``viewer``'s window unless one is open there already (the
    heatmaps' colour bar and legend live in it). Nothing happens where napari does not know
    the plugin (a widget made in a test) or the viewer has no window."""
    if any(browser.viewer is viewer and not browser.closed for browser in _OPEN):
        return
    window = getattr(viewer, "window", None)
    if window is None:
        return
    try:
        dock, _ = window.add_plugin_dock_widget(PLUGIN, "Gene browser")
    except Exception:  # the plugin may not be registered, or the window gone
        return
    # the gene list gets most of the column the Predict panel shares with it
    above = [
        d for d in (window.dock_widgets.get(name) for name in _PREDICT_DOCKS) if d is not None
    ]
    docks = [w.native.parentWidget() for w in above]
    docks = [d for d in docks if isinstance(d, QDockWidget)]
    if docks and isinstance(dock, QDockWidget):
        share_height([docks[0], dock], [0.4, 0.6])


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
        #: stores whose layers the browser has seen (a new one is browsed when it appears)
        self._seen_stores: set[str] = set(vst_layers.stores_in_viewer(napari_viewer))
        _OPEN.add(self)

        self.prediction = ComboBox(label="Prediction", choices=self._store_choices, nullable=True)
        self.info = Label(value="")
        self.search = LineEdit(label="Search")
        self.search.native.setPlaceholderText("gene name, e.g. ERBB2")
        self.search.native.setClearButtonEnabled(True)
        self.genes = Select(label="Genes", choices=self._gene_choices, allow_multiple=True)
        self.genes.native.setMinimumHeight(160)
        self.colour_by = ComboBox(label="Colour spots by", choices=self._gene_choices)
        self.colormap = ComboBox(label="Colours", choices=COLORMAPS, value="viridis")
        self.opacity = FloatSlider(
            label="Heatmap opacity", value=vst_layers.HEATMAP_OPACITY, min=0.0, max=1.0, step=0.05
        )
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
        self.uncertainty = CheckBox(text="Show the uncertainty (SD) instead", value=False)
        self.uncertainty.tooltip = (
            "For models that give an uncertainty: the map of each predicted value's standard "
            "deviation, in magma colours (brighter: less certain), in place of the values"
        )
        self.canvas_colour_bars = CheckBox(
            text="Colour bars on the canvas too", value=vst_layers.canvas_colour_bars()
        )
        self.canvas_colour_bars.tooltip = (
            "napari's colour bars over the image (for figures); the bar below always shows "
            "the active heatmap's scale"
        )
        self.colour_bar = ColourBar()
        self.colour_bar.on_update = self._update_legend  # (its range follows a run's values)
        self.legend = Label(value="")
        self.cursor = Label(value="")
        keep_height(self.info, 2)
        keep_height(self.legend, 3)
        keep_height(self.cursor, 3)  # it changes with every mouse move
        self._stats: tuple[int, int, np.ndarray, np.ndarray] | None = None
        self.extend(
            [
                self.prediction,
                self.info,
                self.search,
                self.genes,
                self.colour_by,
                self.colormap,
                self.opacity,
                self.contrast,
                self.uncertainty,
                self.canvas_colour_bars,
            ]
        )
        # the form scrolls on a small screen; the values under the cursor and the colour bar
        # stay in sight
        scroll_form(self, pinned=[self.cursor, self.colour_bar, self.legend], stretch=False)
        self.prediction.changed.connect(self._on_prediction_changed)
        self.search.changed.connect(self._apply_filter)
        self.genes.changed.connect(self._on_genes_changed)
        self.colour_by.changed.connect(self._on_colour_by_changed)
        self.colormap.changed.connect(self._on_style_changed)
        self.opacity.changed.connect(self._on_style_changed)
        self.contrast.changed.connect(self._on_contrast_changed)
        self.uncertainty.changed.connect(self._on_uncertainty_toggled)
        self.canvas_colour_bars.changed.connect(self._on_canvas_colour_bars)
        napari_viewer.layers.selection.events.active.connect(self._follow_colour_bar)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        napari_viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self.native.destroyed.connect(self._on_destroyed)
        on_register(self._on_view_registered)
        self._on_layers_changed()

    @property
    def viewer(self) -> napari.Viewer:
        """The viewer browsed."""
        return self._viewer

    @property
    def closed(self) -> bool:
        """Whether the panel has closed."""
        return self._closed

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
        new_store = vst_layers.vst_meta(added).get("store") if added is not None else None
        if new_store is not None and new_store not in self._seen_stores:
            # a new prediction (a run, or a store opened): browse it, and hide the older
            # predictions' heatmaps so that two colour maps never mix
            self._seen_stores.add(new_store)
            if new_store in self.prediction.choices:
                self._hide_other_heatmaps(new_store)
                self.prediction.value = new_store
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
                info = f"{view.model_name}: {len(view.genes)} genes on {view.n_spots:,} {grid}" + (
                    f"; values {view.values_description}" if view.is_contextual else ""
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
        self._activate_browsed()
        self._follow_colour_bar()

    def _activate_browsed(self) -> None:
        """Make a layer of the browsed prediction the active one (its heatmap, shown), when
        the active layer is another prediction's: the browser and the selection agree."""
        view = self.view
        active = self._viewer.layers.selection.active
        store = vst_layers.vst_meta(active).get("store") if active is not None else None
        if view is None or store is None or store == str(view.path):
            return
        layers = vst_layers.find_layers(self._viewer, view.path, "heatmap") or (
            vst_layers.find_layers(self._viewer, view.path, "spots")
        )
        if not layers:
            return
        self._syncing = True
        try:
            layers[-1].visible = True
            self._viewer.layers.selection.active = layers[-1]
        finally:
            self._syncing = False

    # -- colour bar -----------------------------------------------------------------------------
    def _follow_colour_bar(self, _event: Any = None) -> None:
        """Show the active layer's scale if it is a heatmap, else the browsed prediction's
        last heatmap's (nothing when there is none)."""
        if self._closed:
            return
        active = self._viewer.layers.selection.active
        meta = vst_layers.vst_meta(active) if active is not None else {}
        store = meta.get("store")
        if (
            store is not None
            and store != self.prediction.value
            and store in self.prediction.choices
            and not self._syncing
        ):
            self.prediction.value = store  # (the browser follows the active prediction)
            return
        role = meta.get("role")
        if role in ("heatmap", "uncertainty") or (role == "spots" and active.visible):
            self.colour_bar.show_layer(active)
        else:
            view = self.view
            shown = vst_layers.find_layers(self._viewer, view.path, "heatmap") if view else []
            self.colour_bar.show_layer(shown[-1] if shown else None)
        self._update_legend()

    def _update_legend(self) -> None:
        """The colour bar's unit, contrast mode, values' range and clamping note."""
        layer = self.colour_bar.layer
        meta = vst_layers.vst_meta(layer) if layer is not None else {}
        view = lookup_view(meta["store"]) if meta.get("store") else None
        gene = meta.get("gene")
        if view is None or gene not in view.genes:
            set_text(self.legend, "")
            return
        if meta.get("role") == "uncertainty":
            set_text(
                self.legend,
                f"uncertainty: standard deviation of the prediction, {target_unit(view.target)}"
                " · brighter = less certain",
            )
            return
        values = view.values(str(gene))
        finite = values[np.isfinite(values)]
        parts = [target_unit(view.target), CONTRAST_MODES[vst_layers.contrast_mode()]]
        if finite.size:
            parts.append(f"values {finite.min():.3g} to {finite.max():.3g}")
        # whether a spot's value is its own tile's or uses its neighbours (the model says)
        # (in the words the layer's name uses, display.context_marker; short enough that the
        # legend's three lines hold it in a laptop's dock)
        parts.append(
            f"{context_marker(view.context)}: each spot's value mixes in its neighbours' "
            f"within {view.context.radius_um:g} µm"
            if view.context is not None
            else "per-tile: each spot's value from its own tile"
        )
        _, clamped = vst_layers.drawn_values(view, str(gene))
        note = clamp_note(clamped, int(finite.size), view.target)
        set_text(self.legend, " · ".join(parts) + (f". {note}" if note else ""))

    def _hide_other_heatmaps(self, store: str) -> None:
        """Hide the heatmaps of every prediction but ``store`` (their layers stay)."""
        for layer in vst_layers.find_layers(self._viewer):
            meta = vst_layers.vst_meta(layer)
            if meta.get("store") != store and meta.get("role") in ("heatmap", "uncertainty"):
                layer.visible = False

    def _on_contrast_changed(self, mode: str) -> None:
        vst_layers.set_contrast_mode(self._viewer, str(mode))
        self.colour_bar.refresh()
        self._update_legend()

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
        """Make the prediction's heatmap layers show the selected genes: a layer whose gene
        is no longer selected is switched to a newly selected one (so one selected gene is
        one layer, whatever is clicked), a layer is added only for a gene selected beside
        others (ctrl-click), and layers left over are removed."""
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
        with_uncertainty = view.has_variance
        self._syncing = True
        try:
            shown: Layer | None = None
            for role in ("heatmap", "uncertainty"):
                if role == "uncertainty" and not with_uncertainty:
                    for layer in vst_layers.find_layers(self._viewer, view.path, role):
                        self._viewer.layers.remove(layer)
                    continue
                layer = self._show_genes_in(view, role, wanted)
                if (role == "uncertainty") == self._shows_uncertainty(view):
                    shown = layer  # (the map on screen: its colour bar is the one to see)
            if shown is not None:
                self._viewer.layers.selection.active = shown
        finally:
            self._syncing = False
        if wanted and wanted[-1] != self.colour_by.value:
            self.colour_by.value = wanted[-1]
        self._follow_colour_bar()

    def _on_uncertainty_toggled(self, show: bool) -> None:
        """Show (and select, for its colour bar) or hide the prediction's uncertainty maps."""
        view = self.view
        if view is None:
            return
        layers = vst_layers.find_layers(self._viewer, view.path, "uncertainty")
        if show and not layers:  # (none made yet: the selected genes' are made now)
            self._on_genes_changed()
            layers = vst_layers.find_layers(self._viewer, view.path, "uncertainty")
        show = self._shows_uncertainty(view)
        for layer in layers:
            layer.visible = show
        for layer in vst_layers.find_layers(self._viewer, view.path, "heatmap"):
            layer.visible = not show  # (one map at a time: colours never mix)
        role = "uncertainty" if show else "heatmap"
        target = vst_layers.find_layers(self._viewer, view.path, role)
        if target:
            self._viewer.layers.selection.active = target[-1]

    def _shows_uncertainty(self, view: StoreView) -> bool:
        """Whether the uncertainty map is shown in place of the values."""
        return view.has_variance and bool(self.uncertainty.value)

    def _show_genes_in(self, view: StoreView, role: str, wanted: list[str]) -> Layer | None:
        """Heatmap (or uncertainty) layers of ``view`` for exactly the ``wanted`` genes;
        returns the layer of the last gene wanted."""
        layers = vst_layers.find_layers(self._viewer, view.path, role)
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
                vst_layers.switch_gene(self._viewer, layer, view, gene)
                layer.visible = self._shows_uncertainty(view) == uncertainty
            elif layer is None:
                layer = vst_layers.show_heatmap(self._viewer, view, gene, uncertainty=uncertainty)
                if layer is not None:
                    layer.visible = self._shows_uncertainty(view) == uncertainty
                if layer is not None and not uncertainty:
                    layer.colormap = self.colormap.value
                    layer.opacity = float(self.opacity.value)
            last = layer
        for layer in free:
            self._viewer.layers.remove(layer)
        return last

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
            if self.colour_bar.layer is spots[0]:
                self.colour_bar.refresh()
                self._update_legend()

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
    def active_gene(self) -> str | None:
        """The gene the browsed prediction shows: the active heatmap's, else the last
        selected, else the one the spots are coloured by."""
        view = self.view
        if view is None:
            return None
        active = self._viewer.layers.selection.active
        meta = vst_layers.vst_meta(active) if active is not None else {}
        if meta.get("store") == str(view.path) and meta.get("gene") in view.genes:
            return str(meta["gene"])
        selected = list(self.genes.value)
        gene = selected[-1] if selected else self.colour_by.value
        return gene if gene in view.genes else (view.genes[0] if view.genes else None)

    def values_at(self, yx_um: Any) -> str:
        """Text describing the spot under a world point (row, col) µm: its id, the active
        gene's value (± SD when known) and the few genes the spot stands out in; empty when
        no spot is there."""
        view = self.view
        gene = self.active_gene()
        if view is None or gene is None:
            return ""
        spot = view.spot_at(yx_um)
        if spot < 0:
            return ""
        value = float(view.values(gene)[spot])
        if not np.isfinite(value):
            return f"spot {view.spot_ids[spot]}: {gene} not predicted yet"
        sd = view.sd(gene)
        spread = f" ± {float(sd[spot]):.3g}" if sd is not None else ""
        drawn = float(vst_layers.drawn_values(view, gene)[0][spot])
        if drawn != value:
            text = f"{gene} {drawn:.3g} (model gave {value:.3g}, drawn as {drawn:.3g})"
        else:
            text = f"{gene} {value:.3g}{spread}"
        text = f"spot {view.spot_ids[spot]}: {text} {target_unit(view.target)}"
        means, sds = self._gene_stats(view)
        top = top_genes(view.expression[spot], means, sds, view.genes, TOP_K)
        if top:
            text += "\nhigh here: " + ", ".join(f"{g} +{z:.1f} SD" for g, _, z in top if z > 0)
        return text.removesuffix("\nhigh here: ")

    def _gene_stats(self, view: StoreView) -> tuple[np.ndarray, np.ndarray]:
        """Every gene's mean and SD over the predicted spots (kept while nothing changes)."""
        key = (id(view), view.spots_done)
        if self._stats is None or self._stats[:2] != key:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (genes with no value yet)
                means = np.nanmean(view.expression, axis=0)
                sds = np.nanstd(view.expression, axis=0)
            self._stats = (*key, means, sds)
        return self._stats[2], self._stats[3]

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
