"""OpenSlide formats (Aperio, Hamamatsu, Leica, MIRAX, Philips, Sakura, Trestle, Ventana,
Zeiss, DICOM, generic tiled TIFF) through openslide-python and the openslide-bin library."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openslide
from numpy.typing import NDArray

from napari_virtual_st._backends.base import SlideBackend, composite_on_white, plausible_mpp
from napari_virtual_st.errors import SlideError


def detect(path: Path) -> str | None:
    """Return OpenSlide's vendor name for ``path``, or ``None`` if OpenSlide cannot open it."""
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None


class OpenSlideBackend(SlideBackend):
    """A slide opened with OpenSlide."""

    def __init__(self, path: Path) -> None:
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"OpenSlide cannot read {path.name}: {exc}") from exc
        props = self._slide.properties
        self.format_name = props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        mpps = [
            m
            for m in (
                plausible_mpp(_float(props.get(openslide.PROPERTY_NAME_MPP_X))),
                plausible_mpp(_float(props.get(openslide.PROPERTY_NAME_MPP_Y))),
            )
            if m is not None
        ]
        self.metadata_mpp = float(np.mean(mpps)) if mpps else None
        sizes = []
        for level in range(len(self.level_dimensions)):
            w = _int(props.get(f"openslide.level[{level}].tile-width")) or 256
            h = _int(props.get(f"openslide.level[{level}].tile-height")) or 256
            # Hamamatsu stores strips 8 rows high; napari is better served by square chunks.
            sizes.append((max(w, 256) if h < 64 else w, max(h, 256) if h < 64 else h))
        self.level_tile_sizes = tuple(sizes)

    @property
    def properties(self) -> Mapping[str, str]:
        return dict(self._slide.properties)

    def read_level_region(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> NDArray[np.uint8]:
        ds = self.level_downsamples[level]
        location = (round(x * ds), round(y * ds))
        try:
            rgba = np.asarray(self._slide.read_region(location, level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"the slide file is damaged: reading level {level} at {location} failed ({exc})"
            ) from exc
        return composite_on_white(rgba)

    def close(self) -> None:
        self._slide.close()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
