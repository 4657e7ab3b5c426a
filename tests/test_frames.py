"""Coordinate frames: measured image px ↔ measured full-res px ↔ level-0 px ↔ napari µm."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from napari_virtual_st.align import Transform as AlignTransform
from napari_virtual_st.align import fit_landmarks
from napari_virtual_st.frames import (
    AlignmentError,
    Transform,
    fullres_xy_to_image_rc,
    fullres_xy_to_yx_um,
    image_rc_to_fullres_xy,
    image_rc_to_fullres_xy_matrix,
    image_rc_to_yx_um_matrix,
    xy_level0_px_to_yx_um,
    xy_level0_px_to_yx_um_matrix,
    yx_um_to_fullres_xy,
    yx_um_to_xy_level0_px,
)
from napari_virtual_st.grid import SpotGrid

#: level-0 = 2 · full-res + (100, 50), turned 90° (x → y) in the second
SCALE = Transform(np.array([[2.0, 0.0, 100.0], [0.0, 2.0, 50.0], [0.0, 0.0, 1.0]]), "scale")
TURNED = Transform(np.array([[0.0, -1.0, 1000.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def _apply(matrix: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


# -- level-0 px ↔ napari µm (were coords.py's) --------------------------------------------------
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
    assert image_rc_to_fullres_xy([], 0.5).shape == (0, 2)
    assert fullres_xy_to_yx_um(np.empty((0, 2)), SCALE, 0.5).shape == (0, 2)


def test_grid_centres_land_at_their_physical_positions_in_napari() -> None:
    grid = SpotGrid.legacy_st((1000, 600), mpp=0.5)  # 500 × 300 µm
    yx_um = xy_level0_px_to_yx_um(grid.xy_level0_px, grid.mpp)
    row, col = grid.lattice_rc.T
    np.testing.assert_allclose(yx_um[:, 0], 100.0 + 200.0 * row)
    np.testing.assert_allclose(yx_um[:, 1], 100.0 + 200.0 * col)


# -- the whole chain ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("transform", "world_yx_um"),
    [(SCALE, [65.0, 130.0]), (TURNED, [40.0, 480.0])],
    ids=["scaled", "turned"],
)
def test_a_known_point_goes_through_the_whole_chain(
    transform: Transform, world_yx_um: list[float]
) -> None:
    # hires image px (row 10, col 20) at 0.25 image px per full-res px is full-res (x 80, y 40);
    # SCALE: level-0 (260, 130); TURNED: (-40 + 1000, 80); at 0.5 µm/px, world (row, col) µm
    rc = np.array([[10.0, 20.0]])
    fullres = image_rc_to_fullres_xy(rc, 0.25)
    np.testing.assert_array_equal(fullres, [[80.0, 40.0]])
    np.testing.assert_allclose(fullres_xy_to_yx_um(fullres, transform, 0.5), [world_yx_um])
    affine = image_rc_to_yx_um_matrix(transform, 0.5, 0.25)
    np.testing.assert_allclose(_apply(affine, rc), [world_yx_um])


def test_the_chain_matrices_agree_with_the_point_functions() -> None:
    rng = np.random.default_rng(1)
    transform = fit_landmarks(
        rng.uniform(0, 2000, (6, 2)), rng.uniform(0, 40_000, (6, 2)), kind="affine"
    )
    rc = rng.uniform(0, 2000, (200, 2))
    mpp, image_scale = 0.2527, 0.0754
    np.testing.assert_allclose(
        _apply(image_rc_to_fullres_xy_matrix(image_scale), rc),
        image_rc_to_fullres_xy(rc, image_scale),
    )
    xy = rng.uniform(0, 50_000, (200, 2))
    np.testing.assert_allclose(
        _apply(xy_level0_px_to_yx_um_matrix(mpp), xy), xy_level0_px_to_yx_um(xy, mpp)
    )
    np.testing.assert_allclose(
        _apply(image_rc_to_yx_um_matrix(transform, mpp, image_scale), rc),
        fullres_xy_to_yx_um(image_rc_to_fullres_xy(rc, image_scale), transform, mpp),
    )


def test_the_chain_round_trips_in_each_step_and_as_a_whole() -> None:
    rng = np.random.default_rng(2)
    transform = fit_landmarks(
        [[0, 0], [100, 0], [0, 80], [60, 70]],
        [[500, 300], [480, 520], [330, 290], [400, 450]],
        kind="similarity",
    )
    rc = rng.uniform(0, 2000, (500, 2))
    fullres = image_rc_to_fullres_xy(rc, 0.15)
    np.testing.assert_allclose(fullres_xy_to_image_rc(fullres, 0.15), rc)
    yx_um = fullres_xy_to_yx_um(fullres, transform, 0.5)
    np.testing.assert_allclose(yx_um_to_fullres_xy(yx_um, transform, 0.5), fullres)
    affine = image_rc_to_yx_um_matrix(transform, 0.5, 0.15)
    np.testing.assert_allclose(_apply(np.linalg.inv(affine), yx_um), rc)


# -- Transform ----------------------------------------------------------------------------------
def test_a_transform_round_trips_through_json_with_its_provenance() -> None:
    t = Transform(
        TURNED.matrix, "similarity", residual_px=1.5, quality=0.9, info={"method": "landmarks"}
    )
    back = Transform.from_json(t.to_json())
    np.testing.assert_array_equal(back.matrix, t.matrix)
    assert (back.kind, back.residual_px, back.quality, back.info) == (
        "similarity",
        1.5,
        0.9,
        {"method": "landmarks"},
    )
    np.testing.assert_allclose(back.apply([[3.0, 4.0]]), t.apply([[3.0, 4.0]]))
    np.testing.assert_allclose(t.inverse().apply(t.apply([[3.0, 4.0]])), [[3.0, 4.0]])
    assert t.rotation_deg == pytest.approx(90.0) and t.scale == pytest.approx(1.0)


def test_damaged_transform_json_is_refused() -> None:
    with pytest.raises(AlignmentError, match="not a saved alignment"):
        Transform.from_json("not json")
    with pytest.raises(AlignmentError, match="invertible"):
        Transform.from_json('{"matrix": [[1, 0], [0, 1]]}')


def test_align_still_exports_the_same_transform() -> None:
    assert AlignTransform is Transform
