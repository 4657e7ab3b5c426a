"""A slide's lazy pyramid for viewers (Slide.pyramid), in the core: its own levels chunked
like its tiles, computed coarser levels where its pyramid stops too high, nothing read until
indexed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_virtual_st.pyramid import MAX_COARSEST_PX, VIRTUAL_CHUNK_PX, lazy_pyramid
from napari_virtual_st.slide import Slide


def test_a_real_slides_pyramid_is_its_levels_chunked_like_its_tiles(cmu_small_svs: Path) -> None:
    with Slide(cmu_small_svs) as slide:
        levels = slide.pyramid()
        assert [lv.shape[:2] for lv in levels[: slide.level_count]] == [
            (h, w) for w, h in slide.level_dimensions
        ]
        assert max(levels[-1].shape[:2]) <= MAX_COARSEST_PX
        for level, native in zip(levels, slide.level_arrays(), strict=False):
            assert level.chunksize[:2] == tuple(
                min(c, s) for c, s in zip(native.chunks[:2], native.shape[:2], strict=True)
            )
        corner = np.asarray(levels[0][:64, :64])
        np.testing.assert_array_equal(corner, slide.level_array(0)[:64, :64])


def test_a_slide_without_a_pyramid_gets_computed_levels_read_lazily(tmp_path: Path) -> None:
    from PIL import Image

    flat = tmp_path / "flat.png"
    pixels = np.zeros((600, 5000, 3), np.uint8)
    pixels[:, :2500] = 200  # (left half bright: the coarse levels must say so)
    Image.fromarray(pixels).save(flat)
    with Slide(flat, mpp=0.5) as slide:
        levels = slide.pyramid(256)
        own = slide.level_count  # (its own levels stop at 625 px wide)
        assert [lv.shape[:2] for lv in levels[:own]] == [(h, w) for w, h in slide.level_dimensions]
        assert [lv.shape[:2] for lv in levels[own:]] == [(19, 157)]  # 4× coarser: ≤ 256
        assert levels[own].chunksize == (19, 157, 3)  # (one VIRTUAL_CHUNK_PX chunk)
        coarse = np.asarray(levels[-1])
        inner = coarse[2:-2, 2:-2]  # (edge pixels reach past the image)
        assert inner[:, :70].min() > 150 and inner[:, 80:].max() < 50
        assert [lv.shape[1] for lv in slide.pyramid(64)[own:]] == [157, 40]
        assert VIRTUAL_CHUNK_PX >= 157


def test_the_pyramid_refuses_a_coarsest_size_below_one_pixel(cmu_small_svs: Path) -> None:
    with Slide(cmu_small_svs) as slide, pytest.raises(ValueError, match="max_coarsest_px"):
        lazy_pyramid(slide, 0)
