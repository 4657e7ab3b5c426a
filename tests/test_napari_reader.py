"""The napari reader, sample data and manifest, on the real slides in ../shared/data/wsi."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st._backends import openslide_backend
from napari_virtual_st._napari.layers import slide_levels, vst_meta
from napari_virtual_st._napari.reader import get_reader
from napari_virtual_st.slide import Slide

PLUGIN = "napari-virtual-st"


def test_manifest_is_valid_and_registered() -> None:
    import npe2

    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Predict expression",
        "Gene browser",
        "Measured ST",
        "Export",
    }
    patterns = manifest.contributions.readers[0].filename_patterns
    assert {"*.svs", "*.ndpi", "*.mrxs", "*.tif", "*.vst.zarr"} <= set(patterns)
    assert manifest.contributions.sample_data[0].key == "cmu1_small_region"


def test_get_reader_declines_what_it_cannot_open(tmp_path: Path, tiny_svs: Path) -> None:
    note = tmp_path / "notes.tif"
    note.write_text("not a slide")
    folder = tmp_path / "plain.vst.zarr"
    folder.mkdir()
    assert get_reader(str(note)) is None
    assert get_reader(str(folder)) is None
    assert get_reader(str(tmp_path / "missing.svs")) is None
    assert get_reader(str(tiny_svs)) is not None


def test_ndpi_opens_as_lazy_multiscale_in_micrometres(make_napari_viewer, ndpi_dapi: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(ndpi_dapi, plugin=PLUGIN)
    with Slide(ndpi_dapi) as slide:
        mpp = slide.mpp
        assert layer.multiscale and len(layer.data) == slide.level_count == 7
        for level, array in enumerate(layer.data):
            w, h = slide.level_dimensions[level]
            assert array.shape == (h, w, 3)
            # chunks follow the file's storage tiles
            tile_w, tile_h = slide._backend.level_tile_sizes[level]
            assert array.chunksize[:2] == (min(tile_h, h), min(tile_w, w))
    assert layer.rgb
    np.testing.assert_allclose(layer.scale, (mpp, mpp))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert vst_meta(layer) == {"role": "slide", "slide_path": str(ndpi_dapi), "mpp": mpp}


def test_svs_opens_with_computed_coarse_levels(make_napari_viewer, cmu_small_svs: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(cmu_small_svs, plugin=PLUGIN)
    with Slide(cmu_small_svs) as slide:  # one level of 2220 × 2967 px in the file
        assert slide.level_count == 1
        np.testing.assert_allclose(layer.scale, (slide.mpp, slide.mpp))
        assert layer.multiscale and layer.data[0].shape == (2967, 2220, 3)
        coarse = np.asarray(layer.data[1][:100, :100])
        expected = slide.read_region_downsampled((0, 0), (512, 512), 4.0)[:100, :100]
        np.testing.assert_array_equal(coarse, expected)


def test_drawing_a_big_slide_reads_only_coarse_tiles(
    make_napari_viewer, ndpi_dapi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[int, int, int]] = []
    original = openslide_backend.OpenSlideBackend.read_level_region

    def counting(self, level, x, y, width, height):
        reads.append((level, width, height))
        return original(self, level, x, y, width, height)

    monkeypatch.setattr(openslide_backend.OpenSlideBackend, "read_level_region", counting)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(ndpi_dapi, plugin=PLUGIN)
    viewer.reset_view()
    viewer.screenshot(canvas_only=True, flash=False)  # draws it
    assert reads, "nothing was drawn"
    w0, h0 = layer.data[0].shape[1], layer.data[0].shape[0]
    level0_px = sum(w * h for level, w, h in reads if level == 0)
    assert level0_px < 0.05 * w0 * h0  # the whole-slide view never loads level 0
    assert max(level for level, _, _ in reads) >= 2


def test_sample_data_is_the_bundled_real_slide(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample(PLUGIN, "cmu1_small_region")
    assert layer.name == "CMU-1-Small-Region.svs"
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))


def test_slide_levels_of_a_slide_without_pyramid_stay_lazy(tmp_path: Path) -> None:
    from PIL import Image

    big = tmp_path / "flat.png"
    Image.fromarray(np.full((600, 5000, 3), 90, np.uint8)).save(big)
    with Slide(big, mpp=0.5) as slide:
        levels = slide_levels(slide, max_coarsest_px=256)
        assert max(levels[-1].shape[:2]) <= 256
        assert len(levels) > slide.level_count
        np.testing.assert_array_equal(np.asarray(levels[-1][:4, :4]), 90)


def test_opening_a_slide_starts_the_prediction_process_ahead_of_a_run(
    monkeypatch: pytest.MonkeyPatch, cmu_small_svs: Path
) -> None:
    from napari_virtual_st._napari import reader

    started: list[bool] = []
    monkeypatch.setattr(reader, "prewarm", lambda: started.append(True))
    reader_function = get_reader(str(cmu_small_svs))
    assert reader_function is not None
    (layer,) = reader_function(str(cmu_small_svs))
    assert vst_meta_of(layer)["role"] == "slide"
    assert started == [True]


def vst_meta_of(layer_data: tuple) -> dict:
    """The plugin's metadata in a reader's layer-data tuple."""
    return layer_data[1]["metadata"]["vst"]
