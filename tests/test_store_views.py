"""A registry of store views: one view per store, listeners told of new ones (held weakly),
forgetting, and reading a store only when asked to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.store_view import StoreView, StoreViews


def _view(path: Path) -> StoreView:
    xy = np.array([[10.0, 10.0], [30.0, 10.0]])
    grid = SpotGrid.from_coordinates(xy, 0.5, 10.0)
    values = np.ones((2, 1), np.float32)
    return StoreView.of_grid(
        path, grid, genes=["G"], model={"name": "m"}, slide={"name": "s"}, expression=values
    )


class _Listener:
    def __init__(self) -> None:
        self.heard: list[StoreView] = []

    def hear(self, view: StoreView) -> None:
        self.heard.append(view)


def test_register_lookup_forget_and_listeners(tmp_path: Path) -> None:
    views = StoreViews()
    listener = _Listener()
    views.on_register(listener.hear)
    first = views.register(_view(tmp_path / "a.vst.zarr"))
    assert views.lookup(tmp_path / "a.vst.zarr") is first
    assert views.lookup(str(tmp_path / "." / "a.vst.zarr")) is first  # by resolved path
    assert (tmp_path / "a.vst.zarr") in views and len(views) == 1
    assert views.lookup(tmp_path / "b.vst.zarr") is None  # never reads the disk
    second = views.register(_view(tmp_path / "a.vst.zarr"))
    assert views.lookup(tmp_path / "a.vst.zarr") is second
    assert listener.heard == [first, second]
    views.forget(tmp_path / "a.vst.zarr")
    assert views.lookup(tmp_path / "a.vst.zarr") is None
    del listener  # held weakly: a closed panel is not called
    views.register(_view(tmp_path / "c.vst.zarr"))
    assert len(views._listeners) == 0


def test_two_registries_share_nothing(tmp_path: Path) -> None:
    one, other = StoreViews(), StoreViews()
    one.register(_view(tmp_path / "a.vst.zarr"))
    assert other.lookup(tmp_path / "a.vst.zarr") is None


def test_a_view_tells_whether_it_has_finished_the_spots_the_store_read_again_has(
    tmp_path: Path,
) -> None:
    shown = _view(tmp_path / "a.vst.zarr")
    shown.tile_expression[1] = np.nan  # a spot not finished yet
    read_back = _view(tmp_path / "a.vst.zarr")
    read_back.tile_expression[1] = np.nan
    assert shown.has_finished_spots_of(read_back)  # unfinished in both: the same
    read_back.tile_expression[1] = 2.0  # a resumed run's earlier spot, not in the batches
    assert not shown.has_finished_spots_of(read_back)
    shown.update(slice(None), read_back.tile_expression)
    assert shown.has_finished_spots_of(read_back)
    assert shown.values("G")[1] == 2.0
