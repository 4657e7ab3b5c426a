"""Loaders of measured spatial transcriptomics, on real public files in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.measured import (
    MeasuredDataError,
    log1p_cp10k,
    read_h5ad,
    read_legacy_st,
    read_space_ranger,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data {path.name} not available: ../shared/data is absent beside the checkout"
        )
    return path


def test_space_ranger_v1_h5_layout_reads_spots_genes_and_fullres_centres() -> None:
    outs = _need(SHARED / "visium_format_fixtures" / "squidpy_tests_data")
    m = read_space_ranger(outs)
    assert m.counts.shape == (100, 100)
    assert m.source == "spaceranger"
    assert m.spot_diameter_fullres_px == pytest.approx(89.4275, abs=1e-3)
    assert m.scalefactors["tissue_hires_scalef"] == pytest.approx(0.150015)
    # tissue_positions_list.csv row: AAACAAGTATCTCCCA-1,1,50,102,8513,9811 (pxl_row, pxl_col)
    i = m.spot_ids.index("AAACAAGTATCTCCCA-1")
    np.testing.assert_allclose(m.xy_fullres_px[i], [9811, 8513])
    np.testing.assert_array_equal(m.array_rc[i], [50, 102])
    assert set(m.images) == {"hires", "lowres"}


def test_space_ranger_v3_mtx_layout_with_headered_positions() -> None:
    outs = _need(SHARED / "visium_format_fixtures" / "coexpressdeconvolve_mouse_cytassist")
    m = read_space_ranger(outs)
    assert m.counts.shape[1] == 19465
    assert m.counts.shape[0] <= 2898
    assert (
        m.genes[0] == "Xkr4" and m.gene_ids is not None and m.gene_ids[0] == "ENSMUSG00000051951"
    )
    assert m.counts.nnz > 0
    assert (m.array_rc >= 0).all()


def test_legacy_st_her2st_a1_joins_counts_and_selected_spots_with_the_png_scale() -> None:
    base = _need(SHARED / "her2st_subset")
    m = read_legacy_st(
        base / "ST-cnts" / "A1.tsv.gz",
        base / "ST-spotfiles" / "A1_selection.tsv",
        base / "app-imgs" / "A1_HE_image_dark.png",
        pixel_scale=2000 / 6954,
    )
    assert m.n_spots == 346  # 348 selected, 346 with counts (SOURCES.md)
    assert len(m.genes) == 15045
    assert m.images["fullres"].name == "A1_HE_image_dark.png"
    assert (m.xy_fullres_px[:, 0] < 2000).all() and (m.xy_fullres_px[:, 1] < 2138).all()


def test_legacy_st_mouse_olfactory_bulb_keeps_only_selected_spots() -> None:
    base = _need(SHARED / "stutility_mob")
    m = read_legacy_st(base / "MOB1.tsv.gz", base / "alignment_table_MOB1.tsv")
    assert m.n_spots <= 379 and m.n_spots > 300
    everything = read_legacy_st(
        base / "MOB1.tsv.gz", base / "alignment_table_MOB1.tsv", selected_only=False
    )
    assert everything.n_spots > m.n_spots


def test_h5ad_with_obsm_spatial_round_trips(tmp_path: Path) -> None:
    anndata = pytest.importorskip("anndata")
    outs = _need(SHARED / "visium_format_fixtures" / "squidpy_tests_data")
    m = read_space_ranger(outs)
    adata = anndata.AnnData(X=m.counts, obsm={"spatial": m.xy_fullres_px})
    adata.obs_names = list(m.spot_ids)
    adata.var_names = list(m.genes)
    adata.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 89.43}}}
    adata.write_h5ad(tmp_path / "x.h5ad")
    back = read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_allclose(back.xy_fullres_px, m.xy_fullres_px)
    assert back.spot_diameter_fullres_px == pytest.approx(89.43)
    assert (back.counts != m.counts).nnz == 0


def test_missing_and_malformed_inputs_raise_measured_data_error(tmp_path: Path) -> None:
    with pytest.raises(MeasuredDataError, match="no spatial/ folder"):
        read_space_ranger(tmp_path)
    bad_spots = tmp_path / "spots.tsv"
    bad_spots.write_text("a\tb\n1\t2\n")
    counts = tmp_path / "counts.tsv"
    counts.write_text("\tG1\n1x1\t3\n")
    with pytest.raises(MeasuredDataError, match="not an ST spot file"):
        read_legacy_st(counts, bad_spots)
    with pytest.raises(MeasuredDataError, match="file not found"):
        read_legacy_st(tmp_path / "nope.tsv", bad_spots)


def test_log1p_cp10k_normalises_by_library_size() -> None:
    counts = np.array([[1, 1, 2], [0, 0, 0]], np.float32)
    out = log1p_cp10k(counts)
    np.testing.assert_allclose(out[0], np.log1p([2500, 2500, 5000]), rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)


def test_spot_grid_places_measured_spots_through_the_transform_with_their_ids(
    tmp_path: Path,
) -> None:
    anndata = pytest.importorskip("anndata")
    from napari_virtual_st.align import from_scale

    outs = _need(SHARED / "visium_format_fixtures" / "squidpy_tests_data")
    visium = read_space_ranger(outs)
    transform = from_scale(0.5)
    grid = visium.spot_grid(mpp=2.0, transform=transform)
    np.testing.assert_allclose(grid.xy_level0_px, transform.apply(visium.xy_fullres_px))
    assert list(grid.spot_ids) == list(visium.spot_ids)
    assert grid.spot_diameter_um == 55.0
    # an .h5ad export of Visium data is Visium too (55 µm), legacy ST is 100 µm
    adata = anndata.AnnData(X=visium.counts, obsm={"spatial": visium.xy_fullres_px})
    adata.obs_names = list(visium.spot_ids)
    adata.var_names = list(visium.genes)
    adata.write_h5ad(tmp_path / "v.h5ad")
    assert read_h5ad(tmp_path / "v.h5ad").spot_grid(mpp=1.0).spot_diameter_um == 55.0
    base = _need(SHARED / "stutility_mob")
    st = read_legacy_st(base / "MOB1.tsv.gz", base / "alignment_table_MOB1.tsv")
    assert st.spot_grid(mpp=5.0).spot_diameter_um == 100.0
