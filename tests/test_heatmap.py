"""Heatmap rasterisation (no viewer): cells are centred on their spots, tile the lattice
without overlap, and carry exactly their spot's value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.frames import xy_level0_px_to_yx_um
from napari_virtual_st.grid import SpotGrid
from napari_virtual_st.heatmap import (
    geometry_from_store,
    grid_geometry,
    heatmap_geometry,
    lattice_geometry,
    most_variable_gene,
    rasterise_gene,
    robust_limits,
)
from napari_virtual_st.store import PredictionStore

MPP = 0.5
SLIDE = (4000, 3000)  # (width, height) level-0 px: 2000 × 1500 µm


def _geometry(grid: SpotGrid):
    return heatmap_geometry(grid.kind, grid.lattice_rc, grid.xy_level0_px, grid.mpp, grid.pitch_um)


def _pixel_centres_um(geometry, pixels: np.ndarray) -> np.ndarray:
    """World (row, col) µm of image pixel centres (napari: translate + index · scale)."""
    return np.asarray(geometry.translate_um) + pixels * np.asarray(geometry.scale_um)


@pytest.mark.parametrize(
    "grid",
    [
        SpotGrid.legacy_st(SLIDE, MPP),
        SpotGrid.dense(SLIDE, MPP, 110.0),
        SpotGrid.dense(SLIDE, MPP, 110.0, overlap_um=10.0),
    ],
    ids=["st", "dense", "dense-overlap"],
)
def test_square_lattice_cells_are_centred_pitch_squares(grid: SpotGrid) -> None:
    geometry = _geometry(grid)
    assert geometry.spot_pixels.shape == (len(grid), 1, 2)
    assert geometry.scale_um == pytest.approx((grid.pitch_um, grid.pitch_um))
    assert geometry.cell_um == pytest.approx((grid.pitch_um, grid.pitch_um))
    centres = _pixel_centres_um(geometry, geometry.spot_pixels[:, 0])
    np.testing.assert_allclose(centres, xy_level0_px_to_yx_um(grid.xy_level0_px, MPP), atol=1e-6)
    # a full square lattice fills its image: one spot per pixel, none shared
    index = geometry.spot_index_image()
    assert (index >= 0).all()
    assert len(np.unique(index)) == len(grid)


def test_visium_cells_are_bricks_centred_on_their_spots() -> None:
    grid = SpotGrid.visium(SLIDE, MPP)
    geometry = _geometry(grid)
    pitch = grid.pitch_um
    assert geometry.scale_um == pytest.approx((pitch * math.sqrt(3) / 2, pitch / 2))
    assert geometry.cell_um == pytest.approx((pitch * math.sqrt(3) / 2, pitch))
    assert geometry.spot_pixels.shape == (len(grid), 2, 2)
    # the two pixels of a spot sit side by side, and their union is centred on the spot
    left, right = geometry.spot_pixels[:, 0], geometry.spot_pixels[:, 1]
    np.testing.assert_array_equal(right - left, np.tile([0, 1], (len(grid), 1)))
    centres = (_pixel_centres_um(geometry, left) + _pixel_centres_um(geometry, right)) / 2
    np.testing.assert_allclose(centres, xy_level0_px_to_yx_um(grid.xy_level0_px, MPP), atol=1e-6)
    # no pixel is shared by two spots; inside the lattice every pixel belongs to one
    index = geometry.spot_index_image()
    drawn = index[index >= 0]
    assert len(drawn) == 2 * len(grid)
    assert len(np.unique(drawn)) == len(grid)
    assert (index[:, 1:-1] >= 0).all()  # only the ragged row ends are empty


def test_rasterise_puts_each_value_in_its_cell_and_nan_elsewhere() -> None:
    full = SpotGrid.visium(SLIDE, MPP)
    grid = full.subset(np.arange(len(full)) % 3 != 0)  # holes, as off-tissue spots leave
    geometry = _geometry(grid)
    values = np.arange(len(grid), dtype=np.float32)
    image = geometry.rasterise(values)
    assert image.dtype == np.float32 and image.shape == geometry.shape
    for k in range(2):
        np.testing.assert_array_equal(
            image[geometry.spot_pixels[:, k, 0], geometry.spot_pixels[:, k, 1]], values
        )
    assert np.isnan(image).sum() == image.size - 2 * len(grid)
    # a batch landing later changes only its own cells
    partial = geometry.rasterise(np.full(len(grid), np.nan))
    geometry.rasterise_spots(partial, slice(10, 20), values[10:20])
    assert np.isfinite(partial).sum() == 20
    np.testing.assert_array_equal(
        partial[geometry.spot_pixels[10:20, 0, 0], geometry.spot_pixels[10:20, 0, 1]],
        values[10:20],
    )
    with pytest.raises(ParameterError, match="one value per spot"):
        geometry.rasterise(values[:-1])


@pytest.mark.parametrize("kind", ["visium", "st"])
def test_spot_at_finds_the_spot_anywhere_in_its_cell(kind: str) -> None:
    grid = SpotGrid.visium(SLIDE, MPP) if kind == "visium" else SpotGrid.legacy_st(SLIDE, MPP)
    geometry = _geometry(grid)
    index = geometry.spot_index_image()
    yx = xy_level0_px_to_yx_um(grid.xy_level0_px, MPP)
    h, w = geometry.cell_um
    rng = np.random.default_rng(0)
    for i in rng.choice(len(grid), 25, replace=False):
        assert geometry.spot_at(yx[i], index) == i
        inside = yx[i] + rng.uniform(-0.49, 0.49, 2) * (h, w)
        assert geometry.spot_at(inside, index) == i
    assert geometry.spot_at((-1000.0, -1000.0)) == -1


def test_grids_without_a_lattice_have_no_heatmap() -> None:
    grid = SpotGrid.from_coordinates([[100, 100], [300, 120]], MPP, 55.0)
    with pytest.raises(ParameterError, match="lattice"):
        _geometry(grid)
    st = SpotGrid.legacy_st(SLIDE, MPP)
    moved = st.xy_level0_px.copy()
    moved[3] += 80  # 40 µm off its lattice position
    with pytest.raises(ParameterError, match="do not lie on"):
        heatmap_geometry("st", st.lattice_rc, moved, MPP, st.pitch_um)
    with pytest.raises(ParameterError, match="at least one spot"):
        lattice_geometry("st", np.zeros((0, 2)), np.zeros((0, 2)), 200.0)


def _store(tmp_path: Path, grid: SpotGrid) -> PredictionStore:
    store = PredictionStore.create(
        tmp_path / "s.vst.zarr", grid=grid, genes=["A", "B"], chunk_spots=16
    )
    values = np.stack([np.arange(len(grid)), -np.arange(len(grid))], axis=1).astype(np.float32)
    for chunk in range(store.n_chunks):
        sl = store.chunk_slice(chunk)
        store.write_chunk(chunk, values[sl])
    return store


def test_rasterise_gene_from_a_store(tmp_path: Path) -> None:
    grid = SpotGrid.visium((1200, 1000), 0.25)
    store = _store(tmp_path, grid)
    heatmap = rasterise_gene(store, "B")
    geometry = geometry_from_store(store)
    assert heatmap.scale_um == geometry.scale_um
    assert heatmap.translate_um == geometry.translate_um
    np.testing.assert_array_equal(heatmap.image, geometry.rasterise(-np.arange(len(grid))))


def test_store_reads_a_range_of_spots(tmp_path: Path) -> None:
    """The engine's ranged read, used by the plugin to take each batch as it lands."""
    grid = SpotGrid.legacy_st(SLIDE, MPP)
    store = _store(tmp_path, grid)
    np.testing.assert_array_equal(store.expression(spots=slice(5, 9)), store.expression()[5:9])
    np.testing.assert_array_equal(
        store.expression(["B"], spots=slice(20, 40)), store.expression()[20:40, 1:]
    )


def test_robust_limits() -> None:
    assert robust_limits([np.nan, np.nan]) == (0.0, 1.0)
    lo, hi = robust_limits([2.0, 2.0, np.nan])
    assert lo < 2.0 < hi
    values = np.r_[np.linspace(0, 1, 1000), 100.0]
    lo, hi = robust_limits(values)
    assert 0.0 <= lo < 0.05 and 0.95 < hi < 2.0  # one outlier does not wash the map out


@pytest.mark.parametrize(
    "grid",
    [
        SpotGrid.visium(SLIDE, MPP, origin_um=(13.0, 7.0)),
        SpotGrid.visium(SLIDE, 0.37),
        SpotGrid.legacy_st(SLIDE, MPP, origin_um=(3.0, 40.0)),
        SpotGrid.dense(SLIDE, MPP, 110.0, overlap_um=10.0),
        SpotGrid.dense(SLIDE, MPP, 110.0).subset(np.arange(30, 90)),
    ],
    ids=["visium-origin", "visium-odd-mpp", "st-origin", "dense-overlap", "dense-subset"],
)
def test_the_grid_places_its_heatmap_where_its_spots_agree(grid: SpotGrid) -> None:
    """The grid knows its lattice origin; the cells it gives are those the spots' own
    positions imply (the rule for grids that do not know it, e.g. measured spots)."""
    assert grid.lattice_origin_yx_um is not None
    known = grid.heatmap_geometry()
    inferred = _geometry(grid)
    assert known.shape == inferred.shape
    assert known.scale_um == pytest.approx(inferred.scale_um)
    assert known.translate_um == pytest.approx(inferred.translate_um, abs=1e-9)
    np.testing.assert_array_equal(known.spot_pixels, inferred.spot_pixels)
    assert grid_geometry(grid).translate_um == known.translate_um


def test_a_known_lattice_origin_is_still_checked_against_the_spots() -> None:
    grid = SpotGrid.legacy_st(SLIDE, MPP)
    yx = xy_level0_px_to_yx_um(grid.xy_level0_px, MPP)
    with pytest.raises(ParameterError, match="do not lie on a st lattice"):
        lattice_geometry("st", grid.lattice_rc, yx, grid.pitch_um, origin_yx_um=(150.0, 100.0))


def test_the_store_heatmap_is_the_grid_heatmap(tmp_path: Path) -> None:
    grid = SpotGrid.visium((1200, 1000), 0.25, origin_um=(5.0, 5.0))
    store = _store(tmp_path, grid)
    geometry = geometry_from_store(store)
    assert geometry.translate_um == grid.heatmap_geometry().translate_um
    np.testing.assert_array_equal(geometry.spot_pixels, grid.heatmap_geometry().spot_pixels)


def test_the_most_variable_gene_counts_spots_predicted_for_every_gene() -> None:
    genes = ("A", "B", "C")
    values = np.array(
        [[0.0, 0.0, 5.0], [1.0, 0.0, 5.0], [2.0, 0.1, 5.0], [np.nan, 100.0, np.nan]],
        np.float32,
    )
    assert most_variable_gene(genes, values) == "A"  # B's spread is in an unfinished spot
    assert most_variable_gene(genes, np.full((3, 3), np.nan)) == "A"  # none done: the first
    assert most_variable_gene(genes, np.ones((3, 3))) == "A"  # ties: the first
    with pytest.raises(ParameterError, match="one column per gene"):
        most_variable_gene(genes, np.ones((3, 2)))
