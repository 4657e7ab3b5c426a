"""Counting what a viewer draws of a run's heatmap (for widget tests; needs napari)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_virtual_st._napari.layers import vst_meta


def heatmap_draw_counts(viewer: Any) -> list[int]:
    """A list that gets, each time a heatmap layer added from now on is redrawn with new
    values (napari's ``set_data``: a new array or one changed in place), how many of its
    pixels are finite."""
    counts: list[int] = []

    def watch(event: Any) -> None:
        layer = event.value
        if vst_meta(layer).get("role") == "heatmap":
            layer.events.set_data.connect(
                lambda _e: counts.append(int(np.isfinite(layer.data).sum()))
            )

    viewer.layers.events.inserted.connect(watch)
    return counts
