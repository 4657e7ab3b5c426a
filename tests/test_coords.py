"""Coordinate frames: (x, y) level-0 pixels ↔ napari (row, col) micrometres."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_st.coords import xy_level0_px_to_yx_um, yx_um_to_xy_level0_px
from napari_virtual_st.grid import SpotGrid


def test_level0_xy_pixels_become_row_col_micrometres() -> None:
    yx_um = xy_level0_px_to_yx_um([[10.0, 20.0], [0.0, 3.0]], mpp=0.5)
    np.testing.assert_array_equal(yx_um, [[10.0, 5.0], [1.5, 0.0]])
    assert yx_um.dtype == np.float64


def test_row_col_micrometres_become_level0_xy_pixels() -> None:
    xy = yx_um_to_xy_level0_px([[10.0, 5.0]], mpp=0.5)
    np.testing.assert_array_equal(xy, [[10.0, 20.0]])


@pytest.mark.parametrize("mpp", [0.2281750559028887, 0.499, 1.0, 8.0])
def test_round_trip_returns_the_same_points(mpp: float) -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(-100.0, 100_000.0, (1000, 2))
    back = yx_um_to_xy_level0_px(xy_level0_px_to_yx_um(xy, mpp), mpp)
    np.testing.assert_allclose(back, xy, rtol=1e-12)
    yx = rng.uniform(0.0, 20_000.0, (1000, 2))
    np.testing.assert_allclose(xy_level0_px_to_yx_um(yx_um_to_xy_level0_px(yx, mpp), mpp), yx)


def test_a_single_point_and_no_points_keep_the_n_by_2_shape() -> None:
    assert xy_level0_px_to_yx_um((4, 6), 2.0).tolist() == [[12.0, 8.0]]
    assert xy_level0_px_to_yx_um(np.empty((0, 2)), 2.0).shape == (0, 2)
    assert yx_um_to_xy_level0_px([], 2.0).shape == (0, 2)


def test_grid_centres_land_at_their_physical_positions_in_napari() -> None:
    grid = SpotGrid.legacy_st((1000, 600), mpp=0.5)  # 500 × 300 µm
    yx_um = xy_level0_px_to_yx_um(grid.xy_level0_px, grid.mpp)
    row, col = grid.lattice_rc.T
    np.testing.assert_allclose(yx_um[:, 0], 100.0 + 200.0 * row)
    np.testing.assert_allclose(yx_um[:, 1], 100.0 + 200.0 * col)
