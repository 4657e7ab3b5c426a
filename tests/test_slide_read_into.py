"""Reading a tile straight into a batch buffer (``Slide.read_tile(..., out=)``): the same
pixels as a read of its own, in the caller's array, and no tile-sized array of its own on
the TIFF path where the level is read at the tile's scale."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray
from PIL import Image

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.slide import Slide

MPP0 = 0.5


def _texture(height: int, width: int, seed: int) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def levels() -> list[NDArray[np.uint8]]:
    """A 2-level synthetic pyramid, 700×500 → 350×250 (sizes not multiples of the tiles)."""
    return [_texture(500, 700, 1), _texture(250, 350, 2)]


@pytest.fixture(params=["zlib", "jpeg"])
def tiff(request: pytest.FixtureRequest, tmp_path: Path, levels: list[NDArray[np.uint8]]) -> Path:
    """The pyramid as a tiled TIFF (lossless and JPEG), level 1 as a SubIFD, 0.5 µm/px."""
    path = tmp_path / f"pyramid_{request.param}.tif"
    extra = {"resolution": (1e4 / MPP0, 1e4 / MPP0), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            levels[0],
            subifds=1,
            tile=(128, 128),
            compression=request.param,
            photometric="rgb",
            **extra,
        )
        tif.write(
            levels[1], subfiletype=1, tile=(128, 128), compression=request.param, photometric="rgb"
        )
    return path


# (centre in level-0 px, tile px, tile µm): level 0 at its own scale; level 1 at its own
# scale; resampled from level 0; partly outside the slide; wholly outside it.
CASES = [
    ((300.0, 200.0), 64, 32.0),
    ((300.0, 200.0), 64, 64.0),
    ((301.3, 199.6), 48, 40.0),
    ((10.0, 490.0), 64, 32.0),
    ((-500.0, -500.0), 32, 16.0),
]


@pytest.mark.parametrize(("centre", "tile_px", "tile_um"), CASES)
def test_a_tile_read_into_a_buffer_is_the_tile_read_on_its_own(
    tiff: Path, centre: tuple[float, float], tile_px: int, tile_um: float
) -> None:
    batch = np.full((3, tile_px, tile_px, 3), 7, np.uint8)  # (stale values from a last batch)
    with Slide(tiff) as slide:
        alone = slide.read_tile(centre, tile_px, tile_um)
        into = slide.read_tile(centre, tile_px, tile_um, out=batch[1])
    assert np.shares_memory(into, batch)
    np.testing.assert_array_equal(batch[1], alone)
    np.testing.assert_array_equal(batch[[0, 2]], 7)  # its neighbours untouched


@pytest.mark.parametrize("name", ["png", "svs"])
def test_backends_without_a_direct_read_fill_the_buffer_too(
    name: str, tmp_path: Path, cmu_small_svs: Path
) -> None:
    if name == "png":
        path = tmp_path / "slide.png"
        Image.fromarray(_texture(300, 400, 3)).save(path)
        slide = Slide(path, mpp=MPP0)
    else:
        slide = Slide(cmu_small_svs)
    with slide:
        for centre, tile_px, tile_um in [((200.0, 150.0), 64, 32.0), ((201.5, 149.2), 32, 55.0)]:
            out = np.zeros((tile_px, tile_px, 3), np.uint8)
            into = slide.read_tile(centre, tile_px, tile_um * slide.mpp / MPP0, out=out)
            assert into is out
            np.testing.assert_array_equal(
                out, slide.read_tile(centre, tile_px, tile_um * slide.mpp / MPP0)
            )


def test_a_tiff_tile_at_its_levels_scale_allocates_no_tile_of_its_own(tiff: Path) -> None:
    tile_px = 96
    nbytes = tile_px * tile_px * 3
    batch = np.empty((2, tile_px, tile_px, 3), np.uint8)
    with Slide(tiff) as slide:
        slide.read_tile((300.0, 200.0), tile_px, tile_px * MPP0)  # decodes (and caches) tiles
        peaks = []
        for out in (None, batch[0]):
            tracemalloc.start()
            try:
                slide.read_tile((300.0, 200.0), tile_px, tile_px * MPP0, out=out)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    alone, into = peaks
    assert alone >= nbytes  # a read of its own makes the tile's array...
    assert into < nbytes // 4  # ...a read into the batch makes none


@pytest.mark.parametrize(
    "out", [np.zeros((64, 64, 3), np.float32), np.zeros((64, 32, 3), np.uint8)]
)
def test_a_buffer_of_the_wrong_shape_or_type_is_refused(tiff: Path, out: np.ndarray) -> None:
    with Slide(tiff) as slide, pytest.raises(ParameterError, match=r"\(64, 64, 3\) uint8"):
        slide.read_tile((300.0, 200.0), 64, 32.0, out=out)


# -- a tile at its level's own scale is that level's pixels, not a resampling ------------------
@pytest.mark.parametrize(
    ("centre", "tile_um", "level"),
    [((300.3, 200.7), 32.0, 0), ((299.6, 201.2), 32.0, 0), ((401.1, 250.9), 64.0, 1)],
)
def test_a_tile_at_its_levels_scale_is_that_levels_pixels_nearest_its_centre(
    tiff: Path,
    levels: list[NDArray[np.uint8]],
    centre: tuple[float, float],
    tile_um: float,
    level: int,
) -> None:
    tile_px = 64
    with Slide(tiff) as slide:
        tile = slide.read_tile(centre, tile_px, tile_um)
        ds = slide.level_downsamples[level]
        x = round(centre[0] / ds - tile_px / 2)
        y = round(centre[1] / ds - tile_px / 2)
        decoded = slide.level_array(level)[y : y + tile_px, x : x + tile_px]
    # its centre is within half a level pixel of the point
    assert abs(x + tile_px / 2 - centre[0] / ds) <= 0.5
    assert abs(y + tile_px / 2 - centre[1] / ds) <= 0.5
    np.testing.assert_array_equal(tile, decoded)
    if tiff.name.endswith("zlib.tif"):  # (lossless: the very pixels written)
        np.testing.assert_array_equal(tile, levels[level][y : y + tile_px, x : x + tile_px])


def test_a_level_within_one_pixel_of_the_tiles_scale_is_read_as_it_is(tiff: Path) -> None:
    """µm/px a scanner records (0.499 for 0.5) must not force a resampling of every tile."""
    tile_px = 64
    with Slide(tiff, mpp=0.5 * 64.5 / 64) as near, Slide(tiff, mpp=0.5 * 66 / 64) as far:
        tile = near.read_tile((300.0, 200.0), tile_px, 32.0)  # 64.5 level px a side
        copy = near._backend.read_level_region(0, 268, 168, tile_px, tile_px)
        resampled = far.read_tile((300.0, 200.0), tile_px, 32.0)  # 66 level px a side
        region = far.read_region((300.0 - 33, 200.0 - 33), (tile_px, tile_px), mpp=0.5)
    np.testing.assert_array_equal(tile, copy)
    assert not np.array_equal(resampled, far._backend.read_level_region(0, 268, 168, 64, 64))
    assert resampled.shape == region.shape == (64, 64, 3)


def test_a_tile_of_a_smooth_image_differs_from_its_resampling_by_under_half_a_pixels_step(
    tmp_path: Path,
) -> None:
    """The tolerance against the bilinear resampling at the exact point (the reading before
    level pixels were taken as they are): on a ramp of 1 grey level per pixel, ≤ ½ + 1."""
    ramp = np.empty((400, 400, 3), np.uint8)
    ramp[..., 0] = (np.arange(400) // 2)[None, :]
    ramp[..., 1] = (np.arange(400) // 2)[:, None]
    ramp[..., 2] = 128
    path = tmp_path / "ramp.tif"
    tifffile.imwrite(
        path, ramp, tile=(128, 128), resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    with Slide(path) as slide:
        for centre in [(200.3, 190.6), (151.5, 240.49), (222.0, 222.0)]:
            tile = slide.read_tile(centre, 64, 32.0)
            exact = slide.read_region((centre[0] - 32, centre[1] - 32), (64, 64), mpp=0.5)
            assert np.abs(tile.astype(int) - exact).max() <= 1
