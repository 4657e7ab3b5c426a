"""What the Gene browser writes about a prediction: its one-line description, the colour
bar's legend and the read-out of the spot under the cursor.

Both are text made from a prediction's view (:class:`~napari_virtual_st.store_view.StoreView`)
and the plugin's drawing rules (values the model's target cannot take are drawn clamped);
the browser puts them in its labels.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st.display import (
    CONTRAST_MODES,
    clamp_note,
    context_marker,
    target_unit,
    top_genes,
)
from napari_virtual_st.store_view import StoreView

#: Genes the cursor read-out lists as standing out at a spot.
TOP_K = 3


def prediction_info(view: StoreView | None, *, waiting: bool) -> str:
    """One line about the browsed prediction: model, genes, spots (and contextual values);
    while ``waiting`` for a run's first report, or when there is none, says so."""
    if view is not None:
        grid = {"visium": "Visium spots", "st": "legacy ST spots", "dense": "tiles"}.get(
            view.kind, "spots"
        )
        return f"{view.model_name}: {len(view.genes)} genes on {view.n_spots:,} {grid}" + (
            f"; values {view.values_description}" if view.is_contextual else ""
        )
    if waiting:
        return "Waiting for the run to lay out its spots…"
    return "No prediction in the viewer yet: run one, or open a .vst.zarr."


def legend_text(view: StoreView, gene: str, role: str | None) -> str:
    """The colour bar's legend for a layer of ``view`` showing ``gene`` in ``role``: the
    unit, the contrast mode, the values' range, whether a spot's value uses its neighbours
    and the clamping note (for an uncertainty map: what its values mean)."""
    if role == "uncertainty":
        return (
            f"uncertainty: standard deviation of the prediction, {target_unit(view.target)}"
            " · brighter = less certain"
        )
    drawn, clamped = vst_layers.drawn_values(view, gene)  # (the range as drawn: never a
    finite = drawn[np.isfinite(drawn)]  # value the unit cannot take; the note counts them)
    parts = [target_unit(view.target), CONTRAST_MODES[vst_layers.contrast_mode()]]
    if finite.size:
        parts.append(f"values {finite.min():.3g} to {finite.max():.3g}")
    # whether a spot's value is its own tile's or uses its neighbours (the model says), in
    # the words the layer's name uses (display.context_marker); short enough that the
    # legend's three lines hold it in a laptop's dock
    parts.append(
        f"{context_marker(view.context)}: each spot's value mixes in its neighbours' "
        f"within {view.context.radius_um:g} µm"
        if view.context is not None
        else "per-tile: each spot's value from its own tile"
    )
    note = clamp_note(clamped, int(finite.size), view.target)
    return " · ".join(parts) + (f". {note}" if note else "")


class CursorReadout:
    """The text about the spot under the cursor; keeps every gene's mean and SD over the
    predicted spots while a view's values do not change."""

    def __init__(self) -> None:
        self._stats: tuple[int, int, NDArray[Any], NDArray[Any]] | None = None

    def text(self, view: StoreView, gene: str, yx_um: ArrayLike) -> str:
        """The spot under a world point (row, col) µm: its id, ``gene``'s value (± SD when
        known) and the few genes the spot stands out in; empty when no spot is there."""
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
        means, sds = self.gene_stats(view)
        top = top_genes(view.expression[spot], means, sds, view.genes, TOP_K)
        if top:
            text += "\nhigh here: " + ", ".join(f"{g} +{z:.1f} SD" for g, _, z in top if z > 0)
        return text.removesuffix("\nhigh here: ")

    def gene_stats(self, view: StoreView) -> tuple[NDArray[Any], NDArray[Any]]:
        """Every gene's mean and SD over the predicted spots (kept while nothing changes)."""
        key = (id(view), view.spots_done)
        if self._stats is None or self._stats[:2] != key:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (genes with no value yet)
                means = np.nanmean(view.expression, axis=0)
                sds = np.nanstd(view.expression, axis=0)
            self._stats = (*key, means, sds)
        return self._stats[2], self._stats[3]
