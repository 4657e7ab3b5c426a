"""Slide: every format opens, resolution is known or asked for, reads come from the right
level and the right place, lazy level arrays, identity, and damaged files fail cleanly.

Real files come from ``../shared/data/wsi`` (fixtures in ``conftest.py``). Every other file is
synthetic, written into ``tmp_path`` by the helpers below: a colour gradient whose red channel
ramps with x, green with y, and whose blue channel tags the pyramid level it belongs to, so a
pixel says both where and from which level it was read.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray
from PIL import Image

from napari_virtual_st.errors import (
    MissingResolutionError,
    ParameterError,
    SlideError,
    VirtualSTError,
)
from napari_virtual_st.slide import Slide

#: µm/px of level 0 of the synthetic pyramids.
MPP0 = 0.5
#: Blue value tagging each level of the synthetic gradient pyramid.
LEVEL_TAGS = (0, 100, 200)


# -- synthetic files --------------------------------------------------------------------------
def synthetic_gradient(width: int, height: int, tag: int) -> NDArray[np.uint8]:
    """Synthetic RGB image: red ramps 0→255 along x, green 0→255 along y, blue = ``tag``."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = np.round(np.arange(width) * 255 / (width - 1))[None, :]
    img[..., 1] = np.round(np.arange(height) * 255 / (height - 1))[:, None]
    img[..., 2] = tag
    return img


def write_synthetic_pyramid(
    path: Path,
    levels: list[NDArray[np.uint8]],
    *,
    compression: str = "zlib",
    tile: int = 128,
    mpp: float | None = MPP0,
) -> Path:
    """Write a synthetic tiled pyramidal TIFF: level 0 with its reductions as SubIFDs.

    The resolution, when given, is stored the way scanners do: pixels per centimetre.
    """
    extra: dict[str, object] = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1,
            tile=(tile, tile),
            compression=compression,
            photometric="rgb",
            **extra,
        )
        for level in levels[1:]:
            tif.write(
                level,
                subfiletype=1,
                tile=(tile, tile),
                compression=compression,
                photometric="rgb",
            )
    return path


@pytest.fixture
def gradient_levels() -> list[NDArray[np.uint8]]:
    """Synthetic 3-level gradient pyramid, 1024×768 → 512×384 → 256×192 (non-square)."""
    return [
        synthetic_gradient(1024, 768, LEVEL_TAGS[0]),
        synthetic_gradient(512, 384, LEVEL_TAGS[1]),
        synthetic_gradient(256, 192, LEVEL_TAGS[2]),
    ]


@pytest.fixture
def gradient_tiff(tmp_path: Path, gradient_levels: list[NDArray[np.uint8]]) -> Path:
    """Synthetic lossless (deflate) tiled pyramid of :func:`gradient_levels`, 0.5 µm/px."""
    return write_synthetic_pyramid(tmp_path / "synthetic_gradient.tif", gradient_levels)


@pytest.fixture
def no_resolution_tiff(tmp_path: Path) -> Path:
    """Synthetic flat TIFF that records no resolution."""
    path = tmp_path / "synthetic_no_resolution.tif"
    tifffile.imwrite(path, synthetic_gradient(96, 64, 0), photometric="rgb")
    return path


class ReadSpy:
    """Records the ``read_level_region`` calls a slide makes on its backend."""

    def __init__(self, slide: Slide, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, int, int, int]] = []
        backend = slide._backend
        original = backend.read_level_region

        def spy(level: int, x: int, y: int, width: int, height: int) -> NDArray[np.uint8]:
            self.calls.append((level, x, y, width, height))
            return original(level, x, y, width, height)

        monkeypatch.setattr(backend, "read_level_region", spy)

    @property
    def levels(self) -> set[int]:
        return {call[0] for call in self.calls}


def _assert_rgb(pixels: NDArray[np.uint8], shape: tuple[int, int]) -> None:
    assert pixels.dtype == np.uint8
    assert pixels.shape == (*shape, 3)


# -- opening every format ---------------------------------------------------------------------
def test_aperio_svs_opens_with_its_size_single_level_and_resolution(cmu_small_svs: Path) -> None:
    with Slide(cmu_small_svs) as slide:
        assert slide.format == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "metadata"
        tile = slide.read_region((1000, 1500), (64, 48))
    _assert_rgb(tile, (48, 64))
    assert tile.std() > 5  # real tissue, not a blank fill


def test_tiny_aperio_svs_reads_whole_as_rgb(tiny_svs: Path) -> None:
    with Slide(tiny_svs) as slide:
        assert slide.dimensions == (16, 16)
        assert slide.level_count == 1
        assert slide.mpp == pytest.approx(0.499)
        pixels = slide.read_region((0, 0), (16, 16))
    _assert_rgb(pixels, (16, 16))
    assert pixels.min() < 250  # a crop of real tissue


def test_hamamatsu_ndpi_opens_with_seven_levels_and_resolution(ndpi_dapi: Path) -> None:
    with Slide(ndpi_dapi) as slide:
        assert slide.format == "hamamatsu"
        assert slide.dimensions == (3968, 4864)
        assert slide.level_count == 7
        assert slide.level_downsamples == pytest.approx([2.0**k for k in range(7)])
        for k, (w, h) in enumerate(slide.level_dimensions):
            assert (w, h) == (3968 // 2**k, 4864 // 2**k)
        assert slide.mpp == pytest.approx(0.228, abs=5e-4)
        assert slide.mpp_source == "metadata"
        _assert_rgb(slide.read_region((0, 0), (62, 76), mpp=slide.mpp * 64), (76, 62))


def test_jpeg_tiled_pyramid_with_subifds_opens_every_level_and_cm_resolution(
    tmp_path: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    path = write_synthetic_pyramid(
        tmp_path / "synthetic_jpeg_pyramid.tif", gradient_levels, compression="jpeg"
    )
    with Slide(path) as slide:
        assert slide.format == "tiff"
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(MPP0)
        assert slide.mpp_source == "metadata"
        coarse = slide.read_region((0, 0), (256, 192), mpp=4 * MPP0)
    _assert_rgb(coarse, (192, 256))
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(coarse, tif.series[0].levels[2].asarray())
    # JPEG is lossy: the gradient is there within a few grey levels.
    assert np.abs(coarse.astype(int) - gradient_levels[2]).mean() < 2


@pytest.mark.parametrize(("size", "unit", "expected_mpp"), [(0.25, "µm", 0.25), (250, "nm", 0.25)])
def test_ome_tiff_takes_resolution_from_physical_size(
    tmp_path: Path,
    gradient_levels: list[NDArray[np.uint8]],
    size: float,
    unit: str,
    expected_mpp: float,
) -> None:
    path = tmp_path / "synthetic.ome.tif"
    metadata = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            gradient_levels[0],
            subifds=1,
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
            metadata=metadata,
        )
        tif.write(gradient_levels[1], subfiletype=1, tile=(128, 128), photometric="rgb")
    with Slide(path) as slide:
        assert slide.format == "ome-tiff"
        assert slide.level_dimensions == ((1024, 768), (512, 384))
        assert slide.mpp == pytest.approx(expected_mpp)
        assert slide.mpp_source == "metadata"
        np.testing.assert_array_equal(
            slide.read_region((64, 32), (100, 50)), gradient_levels[0][32:82, 64:164]
        )


def test_multichannel_ome_tiff_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "synthetic_3_channel.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), ome=True, metadata={"axes": "CYX"})
    with pytest.raises(SlideError, match="multi-dimensional"):
        Slide(path)


def test_flat_stripped_tiff_opens_as_one_level_with_inch_resolution(tmp_path: Path) -> None:
    image = synthetic_gradient(300, 200, 7)
    path = tmp_path / "synthetic_flat_strips.tif"
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        rowsperstrip=16,
        resolution=(25400 / MPP0, 25400 / MPP0),
        resolutionunit="INCH",
    )
    with Slide(path) as slide:
        assert slide.level_dimensions == ((300, 200),)
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp == pytest.approx(MPP0)
        # a region spanning several strips
        np.testing.assert_array_equal(slide.read_region((10, 5), (250, 60)), image[5:65, 10:260])


def test_tiff_without_resolution_asks_for_mpp(no_resolution_tiff: Path) -> None:
    with Slide(no_resolution_tiff) as slide:
        assert slide.mpp_or_none is None
        assert slide.mpp_source is None
        assert slide.describe()["mpp"] is None
        # native-resolution reads need no µm/px
        _assert_rgb(slide.read_region((0, 0), (96, 64)), (64, 96))
        with pytest.raises(MissingResolutionError, match="--mpp") as info:
            _ = slide.mpp
        assert isinstance(info.value, SlideError)
        assert isinstance(info.value, VirtualSTError)
        assert no_resolution_tiff.name in str(info.value)
        with pytest.raises(MissingResolutionError, match="--mpp"):
            slide.read_region((0, 0), (10, 10), mpp=1.0)
        with pytest.raises(MissingResolutionError, match="--mpp"):
            slide.read_tile((48, 32), 16, 16.0)


def test_mpp_override_supplies_a_missing_resolution(no_resolution_tiff: Path) -> None:
    with Slide(no_resolution_tiff, mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.mpp_source == "override"
        assert slide.describe()["mpp_source"] == "override"
        _assert_rgb(slide.read_tile((48, 32), 16, 8.0), (16, 16))


def test_mpp_override_wins_over_the_file_resolution(tiny_svs: Path) -> None:
    with Slide(tiny_svs, mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.mpp_source == "override"


@pytest.mark.parametrize("mpp", [0.0, -0.5, math.nan, math.inf, 96.0])
def test_implausible_mpp_override_is_refused(no_resolution_tiff: Path, mpp: float) -> None:
    with pytest.raises(ParameterError, match="µm/px"):
        Slide(no_resolution_tiff, mpp=mpp)


def test_ordinary_screen_dpi_is_not_taken_as_a_microscope_resolution(tmp_path: Path) -> None:
    path = tmp_path / "synthetic_72dpi.jpg"
    Image.fromarray(synthetic_gradient(64, 48, 0)).save(path, dpi=(72, 72))
    with Slide(path) as slide:
        assert slide.mpp_or_none is None


def test_png_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # opaque red
    rgba[20:30, :, 3] = 128  # half transparent
    path = tmp_path / "synthetic_rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with Slide(path) as slide:
        assert slide.format == "png"
        pixels = slide.read_region((0, 0), (60, 40))
    _assert_rgb(pixels, (40, 60))
    np.testing.assert_array_equal(pixels[0, 0], [200, 0, 0])
    np.testing.assert_allclose(pixels[25, 0], [227, 127, 127], atol=1)
    np.testing.assert_array_equal(pixels[35:], 255)


def test_tiff_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[:32, :, 3] = 255
    path = tmp_path / "synthetic_rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", tile=(32, 32), compression="zlib")
    with Slide(path) as slide:
        pixels = slide.read_region((0, 0), (64, 64))
    np.testing.assert_array_equal(pixels[:32], np.broadcast_to([0, 200, 0], (32, 64, 3)))
    np.testing.assert_array_equal(pixels[32:], 255)


def test_grayscale_png_reads_as_equal_rgb_channels_with_its_dpi(tmp_path: Path) -> None:
    gray = (np.arange(50 * 70).reshape(50, 70) % 256).astype(np.uint8)
    path = tmp_path / "synthetic_gray.png"
    Image.fromarray(gray, "L").save(path, dpi=(25400 / MPP0, 25400 / MPP0))
    with Slide(path) as slide:
        assert slide.mpp == pytest.approx(MPP0, rel=1e-3)
        assert slide.mpp_source == "metadata"
        pixels = slide.read_region((0, 0), (70, 50))
    _assert_rgb(pixels, (50, 70))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_sixteen_bit_grayscale_png_keeps_its_contrast(tmp_path: Path) -> None:
    gray16 = (np.arange(50 * 70).reshape(50, 70) * 18).astype(np.uint16)
    path = tmp_path / "synthetic_gray16.png"
    Image.fromarray(gray16).save(path)
    with Slide(path) as slide:
        pixels = slide.read_region((0, 0), (70, 50))
    np.testing.assert_array_equal(pixels[..., 0], (gray16 >> 8).astype(np.uint8))


def test_jpeg_opens_with_its_dpi_resolution(tmp_path: Path) -> None:
    image = synthetic_gradient(120, 80, 50)
    path = tmp_path / "synthetic.jpg"
    Image.fromarray(image).save(path, dpi=(25400 / MPP0, 25400 / MPP0), quality=95)
    with Slide(path) as slide:
        assert slide.format == "jpeg"
        assert slide.mpp == pytest.approx(MPP0, rel=1e-3)
        pixels = slide.read_region((0, 0), (120, 80))
    assert np.abs(pixels.astype(int) - image).max() <= 8


def test_large_plain_image_gets_a_coarse_pyramid(tmp_path: Path) -> None:
    path = tmp_path / "synthetic_large.png"
    Image.new("RGB", (3000, 2100), (230, 160, 200)).save(path)
    with Slide(path) as slide:
        assert slide.level_dimensions == ((3000, 2100), (1500, 1050), (750, 525))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)


# -- level choice -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mpp", "level"),
    [(0.25, 0), (0.5, 0), (0.9, 0), (1.0, 1), (1.5, 1), (2.0, 2), (3.0, 2), (8.0, 2)],
)
def test_read_region_reads_from_the_coarsest_level_that_resolves_the_request(
    gradient_tiff: Path, monkeypatch: pytest.MonkeyPatch, mpp: float, level: int
) -> None:
    with Slide(gradient_tiff) as slide:
        spy = ReadSpy(slide, monkeypatch)
        pixels = slide.read_region((200, 100), (32, 24), mpp=mpp)
        assert slide.level_for_mpp(mpp) == level
    assert spy.levels == {level}
    # the pixels carry the tag of the level they came from
    np.testing.assert_array_equal(pixels[..., 2], LEVEL_TAGS[level])


def test_level_choice_tolerates_vendor_downsample_rounding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Odd level-0 sizes give downsamples such as 2.002 and 4.004, not 2 and 4."""
    levels = [np.full((n, n, 3), tag, np.uint8) for n, tag in ((1001, 0), (500, 100), (250, 200))]
    path = write_synthetic_pyramid(tmp_path / "synthetic_odd_size.tif", levels)
    with Slide(path) as slide:
        assert slide.level_downsamples == pytest.approx([1.0, 2.002, 4.004])
        assert slide.best_level_for_downsample(4.0) == 2
        assert slide.best_level_for_downsample(2.0) == 1
        assert slide.best_level_for_downsample(3.9) == 1  # 4.004 is too coarse for 3.9
        slide.read_tile((500, 500), 32, 32 * 2 * MPP0)  # (the first also judges the background)
        spy = ReadSpy(slide, monkeypatch)
        pixels = slide.read_region((100, 100), (20, 20), mpp=4 * MPP0)
        tile = slide.read_tile((500, 500), 32, 32 * 2 * MPP0)
    assert spy.levels == {2, 1}
    assert spy.calls[0][0] == 2
    np.testing.assert_array_equal(pixels[..., 2], 200)
    np.testing.assert_array_equal(tile[..., 2], 100)


def test_ndpi_reads_come_from_the_matching_pyramid_level(
    ndpi_dapi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Slide(ndpi_dapi) as slide:
        spy = ReadSpy(slide, monkeypatch)
        mpp0 = slide.mpp
        expected = {1.0: 0, 1.5: 0, 4.0: 2, 5.0: 2, 64.0: 6, 100.0: 6}
        for factor, level in expected.items():
            spy.calls.clear()
            slide.read_region((1000, 1200), (16, 16), mpp=mpp0 * factor)
            assert spy.levels == {level}, factor
        slide.read_tile((2000, 2400), 224, 224 * 8 * mpp0)  # (the first also reads a thumbnail
        spy.calls.clear()  # to decide whether the background is black)
        tile = slide.read_tile((2000, 2400), 224, 224 * 8 * mpp0)
    assert spy.levels == {3}
    _assert_rgb(tile, (224, 224))


# -- geometry ---------------------------------------------------------------------------------
def test_read_region_at_level0_returns_exactly_the_pixels_there(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    with Slide(gradient_tiff) as slide:
        pixels = slide.read_region((100, 50), (300, 200), mpp=MPP0)
    _assert_rgb(pixels, (200, 300))
    np.testing.assert_array_equal(pixels, gradient_levels[0][50:250, 100:400])


def test_read_region_at_a_coarser_mpp_returns_the_coarser_level_pixels(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    with Slide(gradient_tiff) as slide:
        level1 = slide.read_region((100, 50), (130, 70), mpp=2 * MPP0)
        level2 = slide.read_region((400, 200), (60, 40), mpp=4 * MPP0)
    np.testing.assert_array_equal(level1, gradient_levels[1][25:95, 50:180])
    np.testing.assert_array_equal(level2, gradient_levels[2][50:90, 100:160])


@pytest.mark.parametrize(
    ("corner", "mpp"), [((100.5, 60.25), 0.75), ((333.3, 123.4), 3.0), ((10.0, 20.0), 0.3)]
)
def test_resampled_region_samples_the_right_place(
    gradient_tiff: Path, corner: tuple[float, float], mpp: float
) -> None:
    """Output pixel (i, j) shows the slide at level-0 point corner + (j + ½, i + ½)·scale."""
    width, height = 40, 30
    scale = mpp / MPP0
    with Slide(gradient_tiff) as slide:
        pixels = slide.read_region(corner, (width, height), mpp=mpp)
        level_ds = slide.level_downsamples[slide.level_for_mpp(mpp)]
        level_w, level_h = slide.level_dimensions[slide.level_for_mpp(mpp)]
    # pixel-centre coordinates in the pixels of the level that was read
    x = (corner[0] + (np.arange(width) + 0.5) * scale) / level_ds - 0.5
    y = (corner[1] + (np.arange(height) + 0.5) * scale) / level_ds - 0.5
    expected_r = x * 255 / (level_w - 1)
    expected_g = y * 255 / (level_h - 1)
    np.testing.assert_allclose(pixels[0, :, 0], expected_r, atol=1.5)
    np.testing.assert_allclose(pixels[:, 0, 1], expected_g, atol=1.5)


def test_read_tile_is_centred_on_its_point(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    with Slide(gradient_tiff) as slide:
        tile = slide.read_tile((612, 400), 64, 64.0)  # 64 µm as 64 px: 1 µm/px, level 1
        same = slide.read_region((612 - 64, 400 - 64), (64, 64), mpp=1.0)
    # 128 level-0 px centred on (612, 400) start at (548, 336) = (274, 168) on level 1
    np.testing.assert_array_equal(tile, gradient_levels[1][168:232, 274:338])
    np.testing.assert_array_equal(tile, same)


def test_regions_outside_the_slide_are_white(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    with Slide(gradient_tiff) as slide:
        outside = slide.read_region((-500, -400), (64, 32))
        far = slide.read_region((5000, 5000), (16, 16), mpp=1.5)
        corner = slide.read_region((1000, 700), (64, 128))
    np.testing.assert_array_equal(outside, 255)
    np.testing.assert_array_equal(far, 255)
    np.testing.assert_array_equal(corner[:68, :24], gradient_levels[0][700:, 1000:])
    np.testing.assert_array_equal(corner[68:], 255)
    np.testing.assert_array_equal(corner[:, 24:], 255)


def test_openslide_regions_outside_the_slide_are_white(tiny_svs: Path) -> None:
    with Slide(tiny_svs) as slide:
        inside = slide.read_region((0, 0), (16, 16))
        padded = slide.read_region((-8, -4), (32, 24))
    np.testing.assert_array_equal(padded[4:20, 8:24], inside)
    np.testing.assert_array_equal(padded[:4], 255)
    np.testing.assert_array_equal(padded[:, :8], 255)
    np.testing.assert_array_equal(padded[20:], 255)
    np.testing.assert_array_equal(padded[:, 24:], 255)


@pytest.mark.parametrize("size", [(0, 10), (10, -1)])
def test_empty_region_size_is_refused(gradient_tiff: Path, size: tuple[int, int]) -> None:
    with Slide(gradient_tiff) as slide, pytest.raises(ParameterError):
        slide.read_region((0, 0), size)


# -- lazy level arrays ------------------------------------------------------------------------
def test_level_arrays_describe_every_level_without_reading(
    gradient_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Slide(gradient_tiff) as slide:
        spy = ReadSpy(slide, monkeypatch)
        arrays = slide.level_arrays()
        assert [a.shape for a in arrays] == [(768, 1024, 3), (384, 512, 3), (192, 256, 3)]
        assert all(a.dtype == np.uint8 and a.ndim == 3 for a in arrays)
        assert arrays[0].chunks == (128, 128, 3)
        assert len(arrays[1]) == 384
        assert arrays[2].size == 192 * 256 * 3
    assert spy.calls == []


def test_slicing_a_level_array_reads_only_that_slice(
    gradient_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Slide(gradient_tiff) as slide:
        level1 = slide.level_array(1)
        spy = ReadSpy(slide, monkeypatch)
        block = level1[10:20, 30:50]
        assert spy.calls == [(1, 30, 10, 20, 10)]
        np.testing.assert_array_equal(block, slide.read_region((60, 20), (20, 10), mpp=2 * MPP0))


def test_level_array_values_equal_read_region_at_every_level(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    with Slide(gradient_tiff) as slide:
        for level, array in enumerate(slide.level_arrays()):
            full = np.asarray(array)
            np.testing.assert_array_equal(full, gradient_levels[level])
            w, h = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            np.testing.assert_array_equal(full, slide.read_region((0, 0), (w, h), mpp=ds * MPP0))


def test_level_array_supports_the_indexing_napari_uses(
    gradient_tiff: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    level0 = gradient_levels[0]
    with Slide(gradient_tiff) as slide:
        array = slide.level_array(0)
        np.testing.assert_array_equal(array[5, 6], level0[5, 6])
        np.testing.assert_array_equal(array[-1, -1], level0[-1, -1])
        np.testing.assert_array_equal(array[7], level0[7])
        np.testing.assert_array_equal(array[..., 1][:4, :4], level0[:4, :4, 1])
        np.testing.assert_array_equal(array[0:100:10, 0:50:5, 0], level0[0:100:10, 0:50:5, 0])
        np.testing.assert_array_equal(array[:, 3], level0[:, 3])
        np.testing.assert_array_equal(array[::-1, 100:0:-7], level0[::-1, 100:0:-7])
        np.testing.assert_array_equal(array[700::30, -3:], level0[700::30, -3:])
        assert array[10:10, :].shape == (0, 1024, 3)
        assert array[10:10, ::3].shape == (0, 342, 3)
        with pytest.raises(IndexError):
            _ = array[768, 0]
        with pytest.raises(ParameterError):
            slide.level_array(3)


def test_real_ndpi_level_array_equals_read_region(ndpi_dapi: Path) -> None:
    with Slide(ndpi_dapi) as slide:
        coarsest = np.asarray(slide.level_arrays()[6])
        assert coarsest.shape == (76, 62, 3)
        np.testing.assert_array_equal(
            coarsest, slide.read_region((0, 0), (62, 76), mpp=64 * slide.mpp)
        )


# -- identity and summary ---------------------------------------------------------------------
def test_fingerprint_is_stable_across_reopening_and_copies(
    cmu_small_svs: Path, tiny_svs: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "renamed_copy_of_cmu.svs"
    shutil.copyfile(cmu_small_svs, copy)
    with Slide(cmu_small_svs) as first, Slide(cmu_small_svs) as again, Slide(copy) as copied:
        assert first.fingerprint == again.fingerprint == copied.fingerprint
    with Slide(tiny_svs) as other:
        assert other.fingerprint != copied.fingerprint


def test_fingerprint_differs_for_different_synthetic_files(
    tmp_path: Path, gradient_levels: list[NDArray[np.uint8]]
) -> None:
    a = write_synthetic_pyramid(tmp_path / "synthetic_a.tif", gradient_levels)
    changed = [level.copy() for level in gradient_levels]
    changed[0][0, 0] = (1, 2, 3)
    b = write_synthetic_pyramid(tmp_path / "synthetic_b.tif", changed)
    with Slide(a) as slide_a, Slide(b) as slide_b:
        assert slide_a.fingerprint != slide_b.fingerprint


def test_describe_is_a_json_summary(gradient_tiff: Path) -> None:
    with Slide(gradient_tiff) as slide:
        summary = slide.describe()
        assert json.loads(json.dumps(summary)) == summary
        assert summary["dimensions"] == [1024, 768]
        assert summary["level_count"] == 3
        assert summary["mpp"] == pytest.approx(MPP0)
        assert summary["fingerprint"] == slide.fingerprint
        assert "1024×768" in repr(slide)


# -- thumbnail --------------------------------------------------------------------------------
def test_thumbnail_fits_the_size_and_keeps_the_aspect(
    gradient_tiff: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Slide(gradient_tiff) as slide:
        spy = ReadSpy(slide, monkeypatch)
        thumb = slide.thumbnail(100)
    _assert_rgb(thumb, (75, 100))
    assert spy.levels == {2}  # never the full-resolution level for a small thumbnail


def test_real_slide_thumbnail_fits_the_size_and_keeps_the_aspect(cmu_small_svs: Path) -> None:
    with Slide(cmu_small_svs) as slide:
        thumb = slide.thumbnail(256)
    height, width = thumb.shape[:2]
    assert max(height, width) == 256
    assert width / height == pytest.approx(2220 / 2967, rel=0.01)
    assert thumb.dtype == np.uint8


def test_thumbnails_of_other_sizes_resample_the_kept_level_and_equal_fresh_reads(
    cmu_small_svs: Path, gradient_tiff: Path, tiny_svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slide without a pyramid (the real CMU-1 small region) decodes its level 0 once for
    a run's two thumbnails (tissue check 256 px, background check 512 px), not once each (a
    slide keeps the last level read); every thumbnail is pixel for pixel what a freshly opened slide reads (a synthetic
    pyramid, where the thumbnail levels differ, and a 16 px slide, smaller than asked, too)."""
    for path, sizes in (
        (cmu_small_svs, (256, 512, 100, 3000)),
        (gradient_tiff, (100, 40, 300, 150)),
        (tiny_svs, (2048, 8, 3)),
    ):
        with Slide(path) as slide:
            spy = ReadSpy(slide, monkeypatch)
            thumbs = [slide.thumbnail(size, keep=False) for size in sizes]
            levels = [slide.best_level_for_downsample(max(slide.dimensions) / s) for s in sizes]
            changes = 1 + sum(a != b for a, b in itertools.pairwise(levels))
            assert len(spy.calls) == changes, (path.name, spy.calls)  # (one level kept)
        for size, thumb in zip(sizes, thumbs, strict=True):
            with Slide(path) as fresh:
                w0, h0 = fresh.dimensions
                ds = max(max(w0, h0) / size, 1.0)
                expected = fresh.read_region_downsampled(
                    (0, 0), (max(1, round(w0 / ds)), max(1, round(h0 / ds))), ds
                )
            np.testing.assert_array_equal(thumb, expected, err_msg=f"{path.name} {size}")


def test_thumbnail_never_enlarges_a_small_slide(tiny_svs: Path) -> None:
    with Slide(tiny_svs) as slide:
        assert slide.thumbnail(2048).shape == (16, 16, 3)
        with pytest.raises(ParameterError):
            slide.thumbnail(0)


# -- missing, empty, damaged ------------------------------------------------------------------
def _read_everything(path: Path) -> None:
    """Open ``path`` and read every level in full, as a whole-slide run would."""
    with Slide(path) as slide:
        for level, (w, h) in enumerate(slide.level_dimensions):
            slide.read_region_downsampled((0, 0), (w, h), slide.level_downsamples[level])


def _truncate_in_level0_tile_data(source: Path, target: Path) -> Path:
    """Synthetic damage: copy ``source`` cut half-way through its middle level-0 tile."""
    with tifffile.TiffFile(source) as tif:
        page = tif.pages.first
        middle = len(page.dataoffsets) // 2
        cut = int(page.dataoffsets[middle]) + int(page.databytecounts[middle]) // 2
    target.write_bytes(source.read_bytes()[:cut])
    return target


def _damaged_svs_mid_tiles(src: Path, tmp: Path) -> Path:
    return _truncate_in_level0_tile_data(src, tmp / "truncated_mid_tiles.svs")


def _damaged_svs_after_header(src: Path, tmp: Path) -> Path:
    data = src.read_bytes()
    path = tmp / "truncated_in_associated_images.svs"
    path.write_bytes(data[: int(len(data) * 0.9)])
    return path


def _damaged_svs_zeroed_tiles(src: Path, tmp: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[600_000:700_000] = bytes(100_000)
    path = tmp / "zeroed_tiles.svs"
    path.write_bytes(bytes(data))
    return path


def _random_bytes_svs(src: Path, tmp: Path) -> Path:
    path = tmp / "random_bytes.svs"
    path.write_bytes(np.random.default_rng(0).bytes(50_000))
    return path


def _random_bytes_tif(src: Path, tmp: Path) -> Path:
    path = tmp / "random_bytes.tif"
    path.write_bytes(np.random.default_rng(1).bytes(50_000))
    return path


def _truncated_svs_named_tif(src: Path, tmp: Path) -> Path:
    path = tmp / "truncated_svs.tif"
    path.write_bytes(src.read_bytes()[:500_000])
    return path


def _empty_svs(src: Path, tmp: Path) -> Path:
    path = tmp / "empty.svs"
    path.touch()
    return path


def _missing_svs(src: Path, tmp: Path) -> Path:
    return tmp / "does_not_exist.svs"


def _truncated_png(src: Path, tmp: Path) -> Path:
    path = tmp / "truncated.png"
    noise = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _unsupported_text(src: Path, tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a slide")
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_damaged_svs_mid_tiles, ("truncated", "damaged")),
        (_damaged_svs_after_header, ("truncated", "damaged")),
        (_damaged_svs_zeroed_tiles, ("damaged",)),
        (_random_bytes_svs, ("not a slide",)),
        (_random_bytes_tif, ("not a TIFF",)),
        (_truncated_svs_named_tif, ("truncated",)),
        (_empty_svs, ("empty",)),
        (_missing_svs, ("not found",)),
        (_truncated_png, ("truncated",)),
        (_unsupported_text, ("not a slide format",)),
    ],
)
def test_damaged_or_missing_files_raise_a_clear_slide_error(
    cmu_small_svs: Path,
    tmp_path: Path,
    make: Callable[[Path, Path], Path],
    words: tuple[str, ...],
) -> None:
    path = make(cmu_small_svs, tmp_path)
    with pytest.raises(SlideError) as info:
        _read_everything(path)
    assert isinstance(info.value, VirtualSTError)
    message = str(info.value)
    assert path.name in message or "damaged" in message
    assert all(word in message for word in words), message


def test_truncated_synthetic_tiff_fails_at_read_with_a_slide_error(
    gradient_tiff: Path, tmp_path: Path
) -> None:
    path = _truncate_in_level0_tile_data(gradient_tiff, tmp_path / "truncated_synthetic.tif")
    with Slide(path) as slide:  # the header is intact; the damage shows when pixels are read
        with pytest.raises(SlideError, match="truncated"):
            slide.read_region((0, 0), slide.dimensions)
        with pytest.raises(SlideError, match="truncated"):
            np.asarray(slide.level_array(0))


def test_a_tile_larger_than_the_read_limit_is_refused_before_reading(gradient_tiff: Path) -> None:
    with Slide(gradient_tiff) as slide:
        coarsest = slide.level_downsamples[-1]
        tile_um = 9000 * coarsest * slide.mpp  # 9000 px a side even on the coarsest level
        with pytest.raises(ParameterError, match=r"would read 9,000 × 9,000 px") as info:
            slide.read_tile((100, 100), 32, tile_um)
    assert "no pyramid level near" in str(info.value)
