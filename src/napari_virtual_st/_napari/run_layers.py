"""The heatmap layers of one run, made before its values come: :class:`RunLayers`.

Adding a layer costs napari a canvas visual, a controls panel, the add itself and the first
draw: tens of milliseconds each, a stall the user feels if they come in one event-loop turn.
The run's layers are made empty (their values are drawn as they arrive) and in steps, a turn
each: the layer, napari's two views of it (see :mod:`.layer_views`), the add (hidden), then
the heatmap shown.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from napari.layers import Layer

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari.layer_views import LayerViews

if TYPE_CHECKING:
    from pathlib import Path

    import napari

    from napari_virtual_st.predictor import ModelInfo


class RunLayers:
    """The heatmap (and uncertainty) layers of one run's genes.

    Parameters
    ----------
    viewer
        Where the layers go.
    store_path
        The run's store (the layers are tagged with it).
    info
        The model's description (whether it gives variance).
    genes
        The genes to show.
    """

    def __init__(
        self, viewer: napari.Viewer, store_path: Path, info: ModelInfo, genes: list[str]
    ) -> None:
        self._viewer = viewer
        self.store_path = store_path
        self._info = info
        self.genes = genes
        self._made: dict[tuple[str, bool], LayerViews] = {}  # made, not added yet
        #: the layers this run added
        self.added: list[Layer] = []
        self._to_reveal: set[str] = set()

    def steps(self) -> list[Callable[[], None]]:
        """Steps that add the run's heatmap layers (empty until values come), each in an
        event-loop turn of its own. Layers an earlier run into the same store left are
        reused, not made again."""
        with_variance = "variance" in self._info.outputs
        steps: list[Callable[[], None]] = []
        for gene in self.genes:
            for uncertainty in (False, True) if with_variance else (False,):
                steps.append(functools.partial(self._make_layer, gene, uncertainty))
                steps.append(functools.partial(self._make_view, gene, uncertainty, "visual"))
                steps.append(functools.partial(self._make_view, gene, uncertainty, "controls"))
                steps.append(functools.partial(self._prepare_layer, gene, uncertainty))
                if not uncertainty:
                    steps.append(functools.partial(self._reveal_layer, gene))
        return steps

    def _make_layer(self, gene: str, uncertainty: bool) -> None:
        """Make (not add) the run's empty, hidden heatmap or uncertainty layer of ``gene``,
        unless the viewer has it: its own turn, before :meth:`_make_view` makes napari's
        views of it and :meth:`_prepare_layer` adds it."""
        store_path = self.store_path
        role = "uncertainty" if uncertainty else "heatmap"
        if not vst_layers.find_layers(self._viewer, store_path, role, gene):
            data = vst_layers.empty_heatmap_layer_data(
                store_path,
                gene,
                uncertainty=uncertainty,
                model=self._info.name,
                taken=[layer.name for layer in self._viewer.layers],
                context=self._info.context,
            )
            data[1]["visible"] = False
            self._made[(gene, uncertainty)] = LayerViews(self._viewer, Layer.create(*data))

    def _make_view(self, gene: str, uncertainty: bool, view: str) -> None:
        """Make napari's canvas visual or controls of a layer :meth:`_make_layer` made, in a
        turn of its own (napari would make both while adding the layer)."""
        views = self._made.get((gene, uncertainty))
        if views is not None and view == "visual":
            views.make_visual()
        elif views is not None:
            views.make_controls()

    def _prepare_layer(self, gene: str, uncertainty: bool) -> None:
        """Add the layer :meth:`_make_layer` made, unless the viewer has one by now.

        It is added hidden: adding a layer and drawing it for the first time each cost napari
        tens of milliseconds, in two event-loop turns they do not add up to one long stall
        (:meth:`_reveal_layer` shows a heatmap in the next turn; uncertainty stays hidden)."""
        role = "uncertainty" if uncertainty else "heatmap"
        views = self._made.pop((gene, uncertainty), None)
        if views is None:
            return
        if vst_layers.find_layers(self._viewer, self.store_path, role, gene):
            views.close()
            return
        # (the session selects it, in a later turn)
        layer = vst_layers.add_layer(self._viewer, views.layer, select=False, views=views)
        self.added.append(layer)
        if not uncertainty:
            self._to_reveal.add(gene)

    def _reveal_layer(self, gene: str) -> None:
        """Show the heatmap layer :meth:`_prepare_layer` added hidden for this run."""
        if gene in self._to_reveal:
            self._to_reveal.discard(gene)
            for layer in vst_layers.find_layers(self._viewer, self.store_path, "heatmap", gene):
                layer.visible = True

    def reveal_all(self) -> None:
        """Show every heatmap added and not shown yet (the run ended before its turn)."""
        for gene in list(self._to_reveal):
            self._reveal_layer(gene)
