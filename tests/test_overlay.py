"""The demo overlay's choices are the viewer's: one rule picks the gene shown first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.overlay import most_variable_gene
from napari_virtual_st.store import PredictionStore
from napari_virtual_st.store_view import StoreView


def test_the_demo_and_the_viewer_pick_the_same_most_variable_gene(tmp_path: Path) -> None:
    grid = SpotGrid.legacy_st((2000, 1200), mpp=1.0)
    store = PredictionStore.create(
        tmp_path / "s.vst.zarr", grid=grid, genes=("A", "B", "C"), chunk_spots=8
    )
    rng = np.random.default_rng(1)
    values = rng.normal(size=(len(grid), 3)).astype(np.float32) * np.float32([1, 3, 2])
    store.write_chunk(0, values[:8])  # a run in progress: the other spots are NaN
    assert most_variable_gene(store) == StoreView.from_store(store).most_variable_gene() == "B"
    values[8:, 2] *= 100  # C varies most in the spots not predicted yet
    for chunk in range(1, store.n_chunks):
        store.write_chunk(chunk, values[store.chunk_slice(chunk)])
    assert most_variable_gene(store) == StoreView.from_store(store).most_variable_gene() == "C"
