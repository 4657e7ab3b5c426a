"""Plain raster images (PNG, JPEG, BMP, ...) through Pillow, held in memory with a small
pyramid of 2× reductions so that thumbnails and coarse reads stay cheap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from napari_virtual_st._backends.base import SlideBackend, plausible_mpp, to_rgb
from napari_virtual_st.errors import SlideError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_MIN_LEVEL_PX = 1024


class ImageBackend(SlideBackend):
    """A plain image opened with Pillow."""

    def __init__(self, path: Path) -> None:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # histology JPEGs legitimately exceed Pillow's bomb guard
        try:
            with Image.open(path) as img:
                img.load()
                fmt = (img.format or path.suffix.lstrip(".")).lower()
                dpi = img.info.get("dpi")
                rgb = _rgb_pixels(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideError(f"cannot read {path.name} as an image: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        levels = [rgb]
        while max(levels[-1].shape[:2]) > _MIN_LEVEL_PX and min(levels[-1].shape[:2]) >= 2:
            prev = Image.fromarray(levels[-1])
            levels.append(np.asarray(prev.reduce(2)))
        self._levels = levels
        self.format_name = fmt
        self.level_dimensions = tuple((lv.shape[1], lv.shape[0]) for lv in levels)
        self.level_downsamples = tuple(
            float(np.mean([rgb.shape[1] / lv.shape[1], rgb.shape[0] / lv.shape[0]]))
            for lv in levels
        )
        self.level_tile_sizes = tuple((512, 512) for _ in levels)
        mpp = None
        if dpi and dpi[0]:
            mpp = 25400.0 / float(dpi[0])
        self.metadata_mpp = plausible_mpp(mpp)

    def read_level_region(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> NDArray[np.uint8]:
        img = self._levels[level]
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, img.shape[1]), min(y + height, img.shape[0])
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
        return out


def _rgb_pixels(img: Image.Image) -> NDArray[np.uint8]:
    """uint8 RGB pixels of ``img``; 16-bit grayscale keeps its high byte (not clipped)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        gray = np.clip(np.asarray(img), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        return to_rgb(gray)
    return to_rgb(np.asarray(img.convert("RGBA") if _has_alpha(img) else img.convert("RGB")))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
