"""SpotGrid: the Visium hexagonal lattice, the legacy ST square lattice, dense tiles, measured
spots, tissue filtering, and refusal of impossible parameters.

All slides here are synthetic sizes; all tissue masks are synthetic arrays.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from numpy.typing import NDArray

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.grid import SpotGrid, match_distance_px, match_spots
from napari_virtual_st.tissue import TissueMask

#: A synthetic slide: 4000 × 3000 px at 0.5 µm/px, i.e. 2 × 1.5 mm.
DIMS = (4000, 3000)
MPP = 0.5
ROW_STEP_UM = 100 * math.sqrt(3) / 2


def _pairwise_um(grid: SpotGrid) -> NDArray[np.float64]:
    xy = grid.xy_level0_px * grid.mpp
    distances = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return distances


def _interior(grid: SpotGrid, margin_um: float) -> NDArray[np.bool_]:
    xy = grid.xy_level0_px * grid.mpp
    lo, hi = xy.min(axis=0) + margin_um, xy.max(axis=0) - margin_um
    return ((xy >= lo - 1e-6) & (xy <= hi + 1e-6)).all(axis=1)


# -- Visium -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mpp", [MPP, 0.2631])
def test_visium_neighbours_are_exactly_100_um_apart(mpp: float) -> None:
    dims = (round(DIMS[0] * MPP / mpp), round(DIMS[1] * MPP / mpp))
    grid = SpotGrid.visium(dims, mpp)
    assert grid.kind == "visium"
    assert grid.spot_diameter_um == 55.0
    assert grid.pitch_um == 100.0
    distances = _pairwise_um(grid)
    np.testing.assert_allclose(distances.min(axis=1), 100.0, atol=1e-6)
    neighbours = (distances < 100.0 + 1e-6).sum(axis=1)
    interior = _interior(grid, margin_um=100.0)
    assert interior.sum() > 100
    np.testing.assert_array_equal(neighbours[interior], 6)
    assert neighbours.max() == 6


def test_visium_rows_are_86_6_um_apart_and_cols_follow_space_ranger() -> None:
    grid = SpotGrid.visium(DIMS, MPP)
    x_um, y_um = (grid.xy_level0_px * MPP).T
    array_row, array_col = grid.lattice_rc.T
    # rows: equally spaced by 100·√3/2 µm, numbered from 0
    np.testing.assert_allclose(y_um, y_um.min() + array_row * ROW_STEP_UM, atol=1e-9)
    assert np.unique(array_row).tolist() == list(range(array_row.max() + 1))
    # columns: array_col has the parity of array_row and steps by 2 (100 µm) along a row,
    # so x is 50 µm per array_col on every row (odd rows shifted by half a pitch)
    np.testing.assert_array_equal(array_col % 2, array_row % 2)
    np.testing.assert_allclose(x_um, x_um.min() + array_col * 50.0, atol=1e-9)
    assert np.diff(array_col[array_row == 0]).tolist() == [2] * (int((array_row == 0).sum()) - 1)
    assert array_col[array_row == 1].min() == 1


@pytest.mark.parametrize("dims", [DIMS, (3968, 4864), (2220, 2967), (401, 401)])
def test_visium_spots_fill_the_slide_and_lie_wholly_on_it(dims: tuple[int, int]) -> None:
    grid = SpotGrid.visium(dims, MPP)
    x_um, y_um = (grid.xy_level0_px * MPP).T
    width_um, height_um = dims[0] * MPP, dims[1] * MPP
    radius = 55.0 / 2
    assert (x_um - radius >= 0).all()
    assert (x_um + radius <= width_um).all()
    assert (y_um - radius >= 0).all()
    assert (y_um + radius <= height_um).all()
    assert x_um.min() == pytest.approx(50.0)  # first centre half a pitch in
    for row in np.unique(grid.lattice_rc[:, 0]):  # no room for another spot on any row
        assert x_um[grid.lattice_rc[:, 0] == row].max() + 100.0 + radius > width_um
    assert y_um.max() + ROW_STEP_UM + radius > height_um
    assert len(grid) == len({tuple(rc) for rc in grid.lattice_rc.tolist()})


def test_visium_origin_shifts_the_whole_lattice() -> None:
    base = SpotGrid.visium(DIMS, MPP)
    shifted = SpotGrid.visium(DIMS, MPP, origin_um=(30.0, 20.0))
    assert shifted.xy_level0_px[0] * MPP == pytest.approx([80.0, 70.0])
    assert shifted.fingerprint != base.fingerprint


def test_slide_smaller_than_a_spot_pitch_gives_an_empty_grid() -> None:
    grid = SpotGrid.visium((40, 40), MPP)  # 20 µm square
    assert len(grid) == 0
    assert grid.xy_level0_px.shape == (0, 2)


# -- legacy ST and dense tiles ----------------------------------------------------------------
def test_legacy_st_is_a_square_lattice_with_200_um_pitch() -> None:
    grid = SpotGrid.legacy_st(DIMS, MPP)
    assert grid.kind == "st"
    assert grid.spot_diameter_um == 100.0
    assert grid.pitch_um == 200.0
    # centres from 100 µm in steps of 200 µm while the whole 100 µm spot is on the slide
    assert len(grid) == 10 * 7
    distances = _pairwise_um(grid)
    np.testing.assert_allclose(distances.min(axis=1), 200.0, atol=1e-6)
    interior = _interior(grid, margin_um=200.0)
    np.testing.assert_array_equal((distances[interior] < 200.0 + 1e-6).sum(axis=1), 4)
    x_um, y_um = (grid.xy_level0_px * MPP).T
    row, col = grid.lattice_rc.T
    np.testing.assert_allclose(x_um, 100.0 + 200.0 * col)
    np.testing.assert_allclose(y_um, 100.0 + 200.0 * row)


def test_dense_tiles_touch_edge_to_edge_and_cover_the_slide() -> None:
    grid = SpotGrid.dense(DIMS, MPP, tile_um=112.0)
    assert grid.kind == "dense"
    assert grid.pitch_um == grid.spot_diameter_um == 112.0
    x_um, y_um = (grid.xy_level0_px * MPP).T
    xs, ys = np.unique(x_um), np.unique(y_um)
    np.testing.assert_allclose(np.diff(xs), 112.0)
    np.testing.assert_allclose(np.diff(ys), 112.0)
    assert xs[0] == pytest.approx(56.0)  # the first tile starts at the slide's edge
    assert ys[0] == pytest.approx(56.0)
    # the last tile reaches the slide's far edge (partly off the slide if need be)
    assert xs[-1] - 56.0 < 2000.0 <= xs[-1] + 56.0
    assert ys[-1] - 56.0 < 1500.0 <= ys[-1] + 56.0
    assert len(grid) == len(xs) * len(ys)


def test_dense_tiles_that_fit_exactly_add_no_extra_tile() -> None:
    grid = SpotGrid.dense((4480, 2240), MPP, tile_um=112.0)  # 2240 × 1120 µm = 20 × 10 tiles
    assert len(grid) == 20 * 10
    assert grid.lattice_rc.max(axis=0).tolist() == [9, 19]


def test_dense_tiles_with_overlap_step_by_tile_minus_overlap() -> None:
    grid = SpotGrid.dense(DIMS, MPP, tile_um=100.0, overlap_um=25.0)
    assert grid.pitch_um == 75.0
    assert grid.spot_diameter_um == 100.0
    assert grid.params["overlap_um"] == 25.0
    xs = np.unique(grid.xy_level0_px[:, 0] * MPP)
    np.testing.assert_allclose(np.diff(xs), 75.0)
    assert xs[0] == pytest.approx(50.0)
    assert xs[-2] + 50.0 < 2000.0 <= xs[-1] + 50.0  # the fewest tiles reaching the edge


# -- explicit spots ---------------------------------------------------------------------------
def test_explicit_spots_keep_their_coordinates_and_ids() -> None:
    xy = [[10.0, 20.0], [30.5, 40.25], [1000.0, 5.0]]
    ids = ["AAAC-1", "AAAG-1", "TTTC-1"]
    grid = SpotGrid.from_coordinates(
        xy, MPP, 55.0, lattice_rc=[[0, 0], [0, 2], [1, 1]], spot_ids=ids
    )
    assert grid.kind == "explicit"
    np.testing.assert_array_equal(grid.xy_level0_px, xy)
    assert grid.xy_level0_px.dtype == np.float64
    assert grid.spot_ids == tuple(ids)
    assert grid.lattice_rc.tolist() == [[0, 0], [0, 2], [1, 1]]
    subset = grid.subset([2, 0])
    assert subset.spot_ids == ("TTTC-1", "AAAC-1")
    np.testing.assert_array_equal(subset.xy_level0_px, [xy[2], xy[0]])
    masked = grid.subset(np.array([False, True, False]))
    assert masked.spot_ids == ("AAAG-1",)


def test_explicit_spots_without_lattice_get_minus_one() -> None:
    grid = SpotGrid.from_coordinates(np.array([[1.0, 2.0], [3.0, 4.0]]), MPP, 55.0)
    assert grid.lattice_rc.tolist() == [[-1, -1], [-1, -1]]
    assert grid.spot_ids is None


def test_explicit_spots_must_be_finite_and_match_their_ids() -> None:
    with pytest.raises(ParameterError, match="finite"):
        SpotGrid.from_coordinates([[1.0, np.nan]], MPP, 55.0)
    with pytest.raises(ParameterError, match="id"):
        SpotGrid.from_coordinates([[1.0, 2.0], [3.0, 4.0]], MPP, 55.0, spot_ids=["a"])
    with pytest.raises(ParameterError, match="lattice"):
        SpotGrid.from_coordinates([[1.0, 2.0]], MPP, 55.0, lattice_rc=[[0, 0], [1, 1]])


# -- tissue filtering -------------------------------------------------------------------------
@pytest.fixture
def left_half_tissue() -> TissueMask:
    """Synthetic mask of the 4000×3000 px slide: tissue where x < 2000 px, 10 px per mask px."""
    mask = np.zeros((300, 400), bool)
    mask[:, :200] = True
    return TissueMask(mask=mask, downsample_xy=(10.0, 10.0))


def test_tissue_filter_drops_spots_on_the_glass(left_half_tissue: TissueMask) -> None:
    grid = SpotGrid.visium(DIMS, MPP)
    kept = grid.filter_tissue(left_half_tissue, min_fraction=0.5)
    assert 0 < len(kept) < len(grid)
    assert (kept.xy_level0_px[:, 0] < 2000 + 55 / MPP / 2).all()
    # every spot wholly inside the tissue is kept
    whole = grid.xy_level0_px[:, 0] + 55 / MPP / 2 <= 2000
    assert len(kept) >= whole.sum()
    assert kept.params["min_tissue_fraction"] == 0.5
    assert kept.kind == "visium"


def test_tissue_filter_thresholds_zero_keeps_all_one_keeps_fully_covered(
    left_half_tissue: TissueMask,
) -> None:
    grid = SpotGrid.visium(DIMS, MPP)
    assert len(grid.filter_tissue(left_half_tissue, min_fraction=0.0)) == len(grid)
    full = grid.filter_tissue(left_half_tissue, min_fraction=1.0)
    half_side_px = 55 / MPP / 2
    fully_covered = grid.xy_level0_px[:, 0] + half_side_px <= 2000
    np.testing.assert_array_equal(full.xy_level0_px, grid.xy_level0_px[fully_covered])
    np.testing.assert_array_equal(full.lattice_rc, grid.lattice_rc[fully_covered])


def test_tissue_fractions_cover_every_spot(left_half_tissue: TissueMask) -> None:
    grid = SpotGrid.legacy_st(DIMS, MPP)
    fractions = grid.tissue_fractions(left_half_tissue)
    assert fractions.shape == (len(grid),)
    x_um = grid.xy_level0_px[:, 0] * MPP
    np.testing.assert_array_equal(fractions[x_um < 950], 1.0)
    np.testing.assert_array_equal(fractions[x_um > 1050], 0.0)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan])
def test_tissue_threshold_outside_zero_to_one_is_refused(
    left_half_tissue: TissueMask, threshold: float
) -> None:
    with pytest.raises(ParameterError, match="between 0 and 1"):
        SpotGrid.visium(DIMS, MPP).filter_tissue(left_half_tissue, min_fraction=threshold)


# -- impossible parameters --------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: SpotGrid.visium(DIMS, 0.0),
        lambda: SpotGrid.visium(DIMS, -0.5),
        lambda: SpotGrid.visium(DIMS, math.nan),
        lambda: SpotGrid.legacy_st(DIMS, math.inf),
        lambda: SpotGrid.hexagonal(DIMS, MPP, 55.0, 0.0),
        lambda: SpotGrid.square(DIMS, MPP, -1.0, 100.0),
        lambda: SpotGrid.dense(DIMS, MPP, tile_um=0.0),
        lambda: SpotGrid.dense(DIMS, MPP, tile_um=-112.0),
        lambda: SpotGrid.dense(DIMS, MPP, tile_um=112.0, overlap_um=112.0),
        lambda: SpotGrid.dense(DIMS, MPP, tile_um=112.0, overlap_um=-1.0),
        lambda: SpotGrid.from_coordinates([[1.0, 2.0]], MPP, 0.0),
    ],
    ids=[
        "mpp-zero",
        "mpp-negative",
        "mpp-nan",
        "mpp-inf",
        "pitch-zero",
        "spot-negative",
        "tile-zero",
        "tile-negative",
        "overlap-equal-tile",
        "overlap-negative",
        "explicit-diameter-zero",
    ],
)
def test_out_of_range_grid_parameters_are_refused(make: object) -> None:
    with pytest.raises(ParameterError):
        make()  # type: ignore[operator]


def test_negative_tile_size_is_reported_as_a_tile_size_problem() -> None:
    with pytest.raises(ParameterError, match="spot diameter"):
        SpotGrid.dense(DIMS, MPP, tile_um=-112.0)


# -- identity ---------------------------------------------------------------------------------
def test_grid_fingerprint_is_stable_and_tracks_the_spots() -> None:
    a = SpotGrid.visium(DIMS, MPP)
    b = SpotGrid.visium(DIMS, MPP)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != SpotGrid.visium(DIMS, 0.25).fingerprint
    assert a.fingerprint != a.subset(np.arange(len(a) - 1)).fingerprint
    explicit = SpotGrid.from_coordinates(
        a.xy_level0_px, MPP, 55.0, spot_ids=[str(i) for i in range(len(a))]
    )
    renamed = SpotGrid.from_coordinates(
        a.xy_level0_px, MPP, 55.0, spot_ids=[f"s{i}" for i in range(len(a))]
    )
    assert explicit.fingerprint != renamed.fingerprint


def test_grid_describe_is_json_without_coordinates() -> None:
    grid = SpotGrid.dense(DIMS, MPP, tile_um=112.0, overlap_um=12.0)
    summary = grid.describe()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["kind"] == "dense"
    assert summary["n_spots"] == len(grid)
    assert summary["pitch_um"] == 100.0
    assert summary["params"]["overlap_um"] == 12.0
    assert summary["fingerprint"] == grid.fingerprint
    assert "xy_level0_px" not in summary


# -- matching two sets of spots ---------------------------------------------------------------
def test_spots_match_the_nearest_centre_within_the_bound_and_beyond_it_none() -> None:
    spots = [[100.0, 100.0], [300.0, 100.0], [500.0, 100.0], [900.0, 900.0]]
    others = [[103.0, 104.0], [320.0, 100.0], [500.0, 160.0], [106.0, 100.0]]
    rows, how = match_spots(spots, others, max_distance_px=25.0)
    assert how == "nearest"
    # 5 px and 20 px away match (the nearer of two for the first); 60 px and far away do not
    assert rows.tolist() == [0, 1, -1, -1]
    assert rows.dtype == np.intp
    assert match_spots(spots, others, max_distance_px=61.0)[0].tolist() == [0, 1, 2, -1]


def test_spots_match_by_id_when_any_id_is_shared_and_by_centre_otherwise() -> None:
    spots, others = [[0.0, 0.0], [50.0, 0.0], [900.0, 0.0]], [[900.0, 0.0], [0.0, 1.0]]
    rows, how = match_spots(spots, others, 5.0, spot_ids=["b", "x", "a"], other_ids=["a", "b"])
    # by id, however far apart the centres are; an id the other side lacks is unmatched
    assert (how, rows.tolist()) == ("id", [1, -1, 0])
    rows, how = match_spots(spots, others, 5.0, spot_ids=["x", "y", "z"], other_ids=["a", "b"])
    assert (how, rows.tolist()) == ("nearest", [1, -1, 0])
    assert match_spots(spots, others, 5.0, spot_ids=None, other_ids=["a", "b"])[1] == "nearest"
    with pytest.raises(ParameterError, match="2 spot ids were given for 3 spots"):
        match_spots(spots, others, 5.0, spot_ids=["a", "b"], other_ids=["a", "b"])


def test_no_spots_match_nothing() -> None:
    rows, how = match_spots(np.empty((0, 2)), [[1.0, 2.0]], 5.0)
    assert (how, rows.shape) == ("nearest", (0,))


def test_the_default_match_distance_is_half_the_pitch_or_one_spot_for_explicit_grids() -> None:
    visium = SpotGrid.visium(DIMS, MPP)
    assert match_distance_px(visium.describe()) == pytest.approx(50.0 / MPP)
    explicit = SpotGrid.from_coordinates(visium.xy_level0_px, MPP, 55.0)
    assert match_distance_px(explicit.describe()) == pytest.approx(55.0 / MPP)


@pytest.mark.parametrize(
    "grid",
    [
        SpotGrid.visium((3000, 2000), MPP, origin_um=(10.0, 5.0)),
        SpotGrid.legacy_st((3000, 2000), MPP),
        SpotGrid.dense((3000, 2000), MPP, 112, overlap_um=12.0),
        SpotGrid.from_coordinates([[10, 10], [20, 20]], MPP, 55, spot_ids=["A-1", "B-1"]),
    ],
    ids=["visium", "st", "dense", "explicit"],
)
def test_a_grid_is_rebuilt_from_its_description_and_spots(grid: SpotGrid) -> None:
    """What a prediction store keeps (description in attrs, spots in arrays) is the grid."""
    description = json.loads(json.dumps(grid.describe()))
    rebuilt = SpotGrid.from_description(
        description, grid.xy_level0_px, grid.lattice_rc, grid.spot_ids
    )
    assert rebuilt.fingerprint == grid.fingerprint
    assert rebuilt.describe() == grid.describe()
    assert rebuilt.spot_ids == grid.spot_ids
    assert rebuilt.lattice_origin_yx_um == grid.lattice_origin_yx_um


def test_a_grid_description_without_its_size_is_refused() -> None:
    with pytest.raises(ParameterError, match="lacks 'mpp'"):
        SpotGrid.from_description({"kind": "visium", "spot_diameter_um": 55}, [[0, 0]], [[0, 0]])
    with pytest.raises(ParameterError, match="not a number"):
        SpotGrid.from_description(
            {"kind": "visium", "spot_diameter_um": "55", "mpp": 0.5}, [[0, 0]], [[0, 0]]
        )


def test_the_grid_gives_its_spot_radius_and_match_distance() -> None:
    visium = SpotGrid.visium((2000, 2000), MPP)
    assert visium.spot_radius_um == 27.5
    assert visium.spot_radius_px == pytest.approx(27.5 / MPP)
    assert visium.match_distance_px == pytest.approx(50.0 / MPP)
    assert match_distance_px(visium) == visium.match_distance_px
    explicit = SpotGrid.from_coordinates([[5, 5]], MPP, 55.0)
    assert explicit.match_distance_px == pytest.approx(55.0 / MPP)
    assert explicit.spot_radius_px == pytest.approx(27.5 / MPP)


def test_a_laid_grid_knows_where_its_lattice_starts() -> None:
    """(row, col) µm of lattice index (0, 0): half a pitch (half a tile for dense tiles) in
    from the slide's corner, plus the origin; unknown for explicit spots."""
    visium = SpotGrid.visium((3000, 2000), MPP, origin_um=(10.0, 5.0))
    assert visium.lattice_origin_yx_um == pytest.approx((55.0, 60.0))
    assert SpotGrid.legacy_st((3000, 2000), MPP).lattice_origin_yx_um == pytest.approx(
        (100.0, 100.0)
    )
    dense = SpotGrid.dense((3000, 2000), MPP, 112, overlap_um=12.0)
    assert dense.lattice_origin_yx_um == pytest.approx((56.0, 56.0))
    first = dense.xy_level0_px[0] * MPP  # (x, y) µm of lattice (0, 0)
    assert dense.lattice_origin_yx_um == pytest.approx((first[1], first[0]))
    assert SpotGrid.from_coordinates([[5, 5]], MPP, 55.0).lattice_origin_yx_um is None
