"""The interface every slide backend implements, and helpers they share."""

from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

#: Largest micrometres-per-pixel we believe comes from a microscope. Files written by
#: ordinary image software carry 72/96/300 dpi (85-350 µm/px); those are not resolutions.
MAX_PLAUSIBLE_MPP = 20.0


def plausible_mpp(value: float | None) -> float | None:
    """Return ``value`` if it is a believable microscope resolution, else ``None``."""
    if value is None or not np.isfinite(value) or value <= 0 or value > MAX_PLAUSIBLE_MPP:
        return None
    return float(value)


def composite_on_white(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Composite (non-premultiplied) RGBA on white and return RGB uint8."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    # integer arithmetic: rgb·a/255 + 255·(1 - a/255), rounded; exact and ~3× faster than float
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb(pixels: NDArray) -> NDArray[np.uint8]:
    """Return uint8 RGB from gray, gray+alpha, RGB or RGBA pixels (alpha on white)."""
    if pixels.dtype != np.uint8:
        if np.issubdtype(pixels.dtype, np.integer):
            shift = max(int(np.iinfo(pixels.dtype).bits) - 8, 0)
            pixels = (pixels >> shift).astype(np.uint8)
        else:
            pixels = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 2:
        gray = np.repeat(pixels[..., :1], 3, axis=-1)
        return composite_on_white(np.concatenate([gray, pixels[..., 1:2]], axis=-1))
    if channels == 3:
        return pixels
    return composite_on_white(pixels[..., :4])


class SlideBackend(abc.ABC):
    """Read access to one slide file through one library.

    Coordinates given to :meth:`read_level_region` are pixels *of that level*; regions
    reaching outside the image are filled with white.
    """

    #: Short name of the file format (e.g. ``"aperio"``, ``"ome-tiff"``, ``"png"``).
    format_name: str
    #: (width, height) of every level, finest first.
    level_dimensions: tuple[tuple[int, int], ...]
    #: Downsample of every level relative to level 0.
    level_downsamples: tuple[float, ...]
    #: µm/px of level 0 read from the file, or ``None`` when the file has none.
    metadata_mpp: float | None
    #: Native (width, height) of the storage tiles of every level (for lazy chunking).
    level_tile_sizes: tuple[tuple[int, int], ...]

    @abc.abstractmethod
    def read_level_region(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> NDArray[np.uint8]:
        """Read a ``(height, width, 3)`` uint8 RGB region of ``level`` at level pixel (x, y)."""

    def read_level_region_into(
        self, level: int, x: int, y: int, out: NDArray[np.uint8]
    ) -> NDArray[np.uint8]:
        """Read the region of ``level`` at level pixel (x, y) the size of ``out`` into ``out``
        (``(height, width, 3)`` uint8, e.g. one tile of a batch), and return ``out``.

        Backends that can decode straight into the caller's buffer override this; the
        default reads a new array and copies it.
        """
        height, width = out.shape[:2]
        out[...] = self.read_level_region(level, x, y, width, height)
        return out

    @property
    def properties(self) -> Mapping[str, str]:
        """Free-form metadata of the file (vendor properties)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""
