"""The Gene browser's list of a prediction's genes: a search field that filters it, the
list itself (several genes can be selected), and what the viewer shows of them.

The list's widgets are magicgui's (the browser lays them out in its form); this module
keeps what is done to them: filtering by the search text, scrolling a gene into view, and
reading which genes the viewer's layers show (so the selection can follow the layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import LineEdit, Select

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    import napari


class GeneList:
    """A search field and the list of genes it filters.

    Parameters
    ----------
    choices
        magicgui's callable giving the genes to list (asked again on ``reset_choices``).
    """

    def __init__(self, choices: Callable[[Any], list[str]]) -> None:
        self.search = LineEdit(label="Search")
        self.search.native.setPlaceholderText("gene name, e.g. ERBB2")
        self.search.native.setClearButtonEnabled(True)
        self.genes = Select(label="Genes", choices=choices, allow_multiple=True)
        self.genes.native.setMinimumHeight(160)
        self.search.changed.connect(self.apply_filter)

    def visible(self) -> list[str]:
        """Genes in the list that the search leaves visible."""
        native = self.genes.native
        return [
            native.item(i).text() for i in range(native.count()) if not native.item(i).isHidden()
        ]

    def apply_filter(self, _value: Any = None) -> None:
        """Hide the genes whose names do not contain the search text (any case)."""
        text = (self.search.value or "").strip().lower()
        native = self.genes.native
        for i in range(native.count()):
            item = native.item(i)
            item.setHidden(bool(text) and text not in item.text().lower())

    def scroll_to(self, gene: str | None) -> None:
        """Bring a gene's row into view in the list."""
        if gene is None:
            return
        native = self.genes.native
        for i in range(native.count()):
            if native.item(i).text() == gene:
                native.scrollToItem(native.item(i))
                return


def shown_genes(viewer: napari.Viewer, view: StoreView) -> tuple[list[str], str | None]:
    """The genes ``view``'s heatmap layers show in ``viewer`` (in layer order) and the gene
    its spots are coloured by (else the last heatmap's; ``None`` when neither)."""
    shown = [
        vst_layers.vst_meta(layer)["gene"]
        for layer in vst_layers.find_layers(viewer, view.path, "heatmap")
    ]
    spots = vst_layers.find_layers(viewer, view.path, "spots")
    colour = vst_layers.vst_meta(spots[0]).get("gene") if spots else None
    if colour is None and shown:
        colour = shown[-1]
    return shown, colour
