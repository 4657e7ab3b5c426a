"""Tissue detection: finds stained tissue, ignores glass and dust, and measures how much
tissue lies under each spot.

The real H&E slide comes from ``../shared/data/wsi``; every other image is synthetic: white
"glass" with slight noise and an H&E-pink disc of "tissue" speckled with purple nuclei.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from napari_virtual_st.errors import ParameterError
from napari_virtual_st.slide import Slide
from napari_virtual_st.tissue import (
    TissueMask,
    detect_tissue,
    has_black_background,
    no_light_as_glass,
    tissue_mask_from_rgb,
)

EOSIN_PINK = (232, 150, 200)
HEMATOXYLIN_PURPLE = (110, 70, 150)


def synthetic_glass(height: int, width: int, seed: int = 0) -> NDArray[np.uint8]:
    """Synthetic empty slide: near-white glass with faint sensor noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.5, (height, width, 1))
    return np.clip(248 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def disc(height: int, width: int, center_rc: tuple[float, float], radius: float) -> NDArray:
    """Boolean disc of ``radius`` px at (row, col) ``center_rc``."""
    rr, cc = np.mgrid[:height, :width]
    return (rr - center_rc[0]) ** 2 + (cc - center_rc[1]) ** 2 <= radius**2


def synthetic_he(
    height: int = 300, width: int = 400, seed: int = 0
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Synthetic H&E image: a pink disc with purple nuclei on glass, and the disc's mask."""
    rng = np.random.default_rng(seed)
    image = synthetic_glass(height, width, seed)
    blob = disc(height, width, (150, 220), 80)
    image[blob] = EOSIN_PINK
    nuclei = blob & (rng.random((height, width)) < 0.15)
    image[nuclei] = HEMATOXYLIN_PURPLE
    return image, blob


def _iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


# -- masks of images --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["saturation", "optical_density", "combined"])
def test_pink_tissue_on_white_glass_is_found(method: str) -> None:
    image, blob = synthetic_he()
    mask = tissue_mask_from_rgb(image, method=method)  # type: ignore[arg-type]
    assert mask.dtype == np.bool_
    assert mask.shape == blob.shape
    assert _iou(mask, blob) > 0.95


@pytest.mark.parametrize("method", ["saturation", "optical_density", "combined"])
def test_blank_glass_has_no_tissue(method: str) -> None:
    assert not tissue_mask_from_rgb(synthetic_glass(200, 300), method=method).any()  # type: ignore[arg-type]
    white = np.full((64, 64, 3), 255, np.uint8)
    assert not tissue_mask_from_rgb(white, method=method).any()  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["saturation", "optical_density", "combined"])
def test_a_black_background_is_not_tissue(method: str) -> None:
    # the HER2ST viewer's images: tissue on a black (masked or transparent) background
    image, blob = synthetic_he()
    outside = ~disc(*blob.shape, (150, 220), 110)
    image[outside] = 0
    mask = tissue_mask_from_rgb(image, method=method)  # type: ignore[arg-type]
    assert not (mask & outside).any()
    assert _iou(mask, blob) > 0.95
    black = np.zeros((64, 64, 3), np.uint8)
    assert not tissue_mask_from_rgb(black, method=method).any()  # type: ignore[arg-type]


def _on_black(image: NDArray[np.uint8], blob: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """``image`` with everything outside a disc around the tissue set to black."""
    out = image.copy()
    out[~disc(*blob.shape, (150, 220), 110)] = 0
    return out


def test_only_a_black_background_slide_is_read_as_white_glass() -> None:
    image, blob = synthetic_he()
    on_black = _on_black(image, blob)
    assert has_black_background(on_black)
    assert not has_black_background(image)  # white glass
    dark_inside = image.copy()
    dark_inside[150:160, 215:225] = 5  # a dark fleck inside the tissue of a normal scan
    assert not has_black_background(dark_inside)
    fluorescence = np.zeros_like(image)
    fluorescence[blob] = (0, 40, 160)  # dark everywhere: not bright-field, left alone
    assert not has_black_background(fluorescence)
    whitened = no_light_as_glass(on_black)
    assert (whitened[on_black.max(axis=-1) < 30] == 255).all()
    np.testing.assert_array_equal(whitened[blob], image[blob])  # tissue untouched
    assert no_light_as_glass(image) is image  # nothing that dark: no copy
    with pytest.raises(ParameterError, match="RGB thumbnail"):
        has_black_background(np.zeros((4, 4), np.uint8))


def test_tiles_of_a_black_background_slide_show_white_glass(tmp_path: Path) -> None:
    image, blob = synthetic_he()
    on_black = _on_black(image, blob)
    for name, pixels in (("white.png", image), ("black.png", on_black)):
        Image.fromarray(pixels).save(tmp_path / name)
    corner = (20.0, 20.0)  # (x, y): off the tissue, black on the black-background image
    with (
        Slide(tmp_path / "black.png", mpp=1.0) as black,
        Slide(tmp_path / "white.png", mpp=1.0) as white,
    ):
        tile = black.read_tile(corner, 16, 16.0)  # the level's own pixels (16 µm = 16 px)
        assert (tile == 255).all()
        batch = np.zeros((2, 16, 16, 3), np.uint8)  # read into a batch's buffer, both paths
        black.read_tile(corner, 16, 16.0, out=batch[0])
        black.read_tile(corner, 16, 24.0, out=batch[1])  # resampled
        assert (batch == 255).all()
        assert not black._backend.read_level_region(0, 12, 12, 16, 16).any()  # source: black
        edge = black.read_tile((220.0, 55.0), 32, 64.0)  # half tissue, half background
        assert edge.max(axis=-1).min() >= 30
        np.testing.assert_array_equal(
            black.read_tile((220.0, 150.0), 32, 64.0), white.read_tile((220.0, 150.0), 32, 64.0)
        )
    # a normal scan keeps every pixel, however dark
    dark_inside = image.copy()
    dark_inside[145:155, 215:225] = 5
    Image.fromarray(dark_inside).save(tmp_path / "fleck.png")
    with Slide(tmp_path / "fleck.png", mpp=1.0) as fleck:
        assert fleck.read_tile((220.0, 150.0), 10, 10.0).max(axis=-1).min() < 30


def test_dust_specks_are_removed_and_small_holes_filled() -> None:
    image, blob = synthetic_he()
    image[blob] = EOSIN_PINK  # no nuclei: holes below are the only gaps
    image[150:154, 220:224] = 248  # a 16 px hole inside the tissue
    for r, c in ((20, 20), (30, 380), (280, 40)):
        image[r : r + 3, c : c + 3] = HEMATOXYLIN_PURPLE  # 9 px specks of dust on the glass
    cleaned = tissue_mask_from_rgb(image, min_object_px=64, max_hole_px=64)
    assert not cleaned[:60].any()  # no specks
    assert not cleaned[270:].any()
    assert cleaned[150:154, 220:224].all()  # hole filled
    np.testing.assert_array_equal(cleaned, blob)
    raw = tissue_mask_from_rgb(image, min_object_px=0, max_hole_px=0)
    assert raw[20:23, 20:23].all()
    assert not raw[150:154, 220:224].any()


def test_invalid_tissue_parameters_are_refused() -> None:
    image, _ = synthetic_he(64, 64)
    with pytest.raises(ParameterError, match="method"):
        tissue_mask_from_rgb(image, method="threshold")  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        tissue_mask_from_rgb(image, min_object_px=-1)


# -- masks of slides --------------------------------------------------------------------------
def test_real_he_slide_has_a_plausible_tissue_mask(cmu_small_svs: Path) -> None:
    with Slide(cmu_small_svs) as slide:
        tissue = detect_tissue(slide)
        w0, h0 = slide.dimensions
    rows, cols = tissue.mask.shape
    assert cols * tissue.downsample_xy[0] == pytest.approx(w0)
    assert rows * tissue.downsample_xy[1] == pytest.approx(h0)
    # about a third of this crop is tissue (a strip of skin); the rest is glass
    assert 0.2 < tissue.tissue_fraction < 0.55
    glass_corners = [(150, 150), (w0 - 150, 150)]
    tissue_points = [(1270, 2320), (1100, 1500)]
    glass, inside = np.split(tissue.fraction_in_squares(glass_corners + tissue_points, 300), 2)
    np.testing.assert_array_equal(glass, 0.0)
    assert (inside > 0.9).all()


def test_detect_tissue_finds_the_tissue_of_a_synthetic_slide(tmp_path: Path) -> None:
    image, blob = synthetic_he()
    path = tmp_path / "synthetic_he.png"
    Image.fromarray(image).save(path, dpi=(25400 / 2.0, 25400 / 2.0))  # 2 µm/px
    with Slide(path) as slide:
        tissue = detect_tissue(slide)
    assert tissue.tissue_fraction == pytest.approx(blob.mean(), rel=0.1)
    center, corner = tissue.fraction_in_squares([(220, 150), (20, 20)], 40)
    assert center == 1.0
    assert corner == 0.0


def test_detect_tissue_works_without_a_resolution(tmp_path: Path) -> None:
    image, blob = synthetic_he()
    path = tmp_path / "synthetic_he_no_dpi.png"
    Image.fromarray(image).save(path)
    with Slide(path) as slide:
        assert slide.mpp_or_none is None
        tissue = detect_tissue(slide)
    assert tissue.mask.shape == blob.shape
    assert _iou(tissue.mask, blob) > 0.95


def test_blank_synthetic_slide_has_no_tissue(tmp_path: Path) -> None:
    path = tmp_path / "synthetic_glass.png"
    Image.fromarray(synthetic_glass(300, 400)).save(path)
    with Slide(path, mpp=2.0) as slide:
        assert detect_tissue(slide).tissue_fraction == 0.0


def test_detect_tissue_refuses_a_non_positive_resolution(tiny_svs: Path) -> None:
    with Slide(tiny_svs) as slide:
        with pytest.raises(ParameterError):
            detect_tissue(slide, mask_um_per_px=0.0)
        with pytest.raises(ParameterError):
            detect_tissue(slide, max_px=0)


# -- tissue under squares ---------------------------------------------------------------------
@pytest.fixture
def left_half_tissue() -> TissueMask:
    """Synthetic 100×100 mask, tissue in the left half, 4 level-0 px per mask px (400×400)."""
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True
    return TissueMask(mask=mask, downsample_xy=(4.0, 4.0))


@pytest.mark.parametrize(
    ("center_xy", "side", "expected"),
    [
        ((100, 100), 40, 1.0),  # inside the tissue
        ((300, 100), 40, 0.0),  # on the glass
        ((200, 200), 80, 0.5),  # across the tissue edge
        ((0, 200), 80, 0.5),  # half outside the slide, on tissue: outside is background
        ((0, 0), 80, 0.25),  # a quarter inside the slide
        ((-100, 200), 40, 0.0),  # wholly left of the slide
        ((100, -100), 40, 0.0),  # wholly above the slide
        ((500, 200), 40, 0.0),  # wholly right of the slide
        ((-100, 200), 2, 0.0),  # a tiny square outside
        ((101, 99), 2, 1.0),  # a tiny square (smaller than a mask pixel) on tissue
        ((103.3, 97.1), 55, 1.0),  # a fully covered square with an odd size and position
    ],
)
def test_fraction_in_squares_counts_the_tissue_under_each_square(
    left_half_tissue: TissueMask, center_xy: tuple[float, float], side: float, expected: float
) -> None:
    (fraction,) = left_half_tissue.fraction_in_squares([center_xy], side)
    assert fraction == pytest.approx(expected)


def test_fraction_in_squares_matches_counting_by_hand() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((50, 60)) < 0.4
    tissue = TissueMask(mask=mask, downsample_xy=(2.0, 3.0))
    side = 12.0  # level-0 px: 6 mask px along x, 4 along y
    padded = np.pad(mask, 10)
    corners = rng.integers(-8, 58, (200, 2))  # (col, row) of each square's top-left mask px
    centers = np.stack([(corners[:, 0] + 3) * 2.0, (corners[:, 1] + 2) * 3.0], axis=1)
    expected = [padded[r + 10 : r + 14, c + 10 : c + 16].mean() for c, r in corners]
    np.testing.assert_allclose(tissue.fraction_in_squares(centers, side), expected)


def test_fraction_in_squares_of_no_squares_is_empty(left_half_tissue: TissueMask) -> None:
    assert left_half_tissue.fraction_in_squares(np.empty((0, 2)), 40).shape == (0,)


def test_only_the_her2st_viewer_png_of_the_real_images_has_a_black_background() -> None:
    from conftest import SHARED_DATA

    her2st = SHARED_DATA / "her2st_subset"
    black = her2st / "app-imgs" / "A1_HE_image_dark.png"
    cmu = SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs"
    scans = [*sorted((her2st / "ST-imgs").glob("*/*/*.jpg")), cmu]
    if not black.is_file() or len(scans) < 2:
        pytest.skip("real images not available in ../shared/data")
    with Slide(black, mpp=3.1867) as slide:
        assert has_black_background(slide.thumbnail(512))
    for path in scans:  # white glass (the HER2ST sections the models learnt from): unchanged
        with Slide(path, mpp=None if path.suffix == ".svs" else 1.0) as slide:
            assert not has_black_background(slide.thumbnail(512)), path.name
