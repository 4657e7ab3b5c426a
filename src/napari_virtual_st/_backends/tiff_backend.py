"""OME-TIFF and generic (pyramidal) TIFF through tifffile.

Storage segments (tiles or strips) are read under one file lock and decoded outside it
(imagecodecs releases the GIL), with a small byte-bounded cache of decoded segments, so
neighbouring spot tiles that share a JPEG tile decode it once.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

from napari_virtual_st._backends.base import SlideBackend, plausible_mpp, to_rgb
from napari_virtual_st.errors import SlideError

_UM_PER_UNIT = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,
    "um": 1.0,
    "nm": 1e-3,
    "Å": 1e-4,
}


class _SegmentCache:
    """Thread-safe LRU cache of decoded segments, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple[int, int], NDArray[np.uint8]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> NDArray[np.uint8] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, int], value: NDArray[np.uint8]) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self._max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class _Level:
    """One pyramid level: a TIFF page cut into segments (tiles or strips)."""

    def __init__(self, page: tifffile.TiffPage) -> None:
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1:
            raise SlideError("TIFF with separate colour planes is not supported; save it chunky")
        if page.imagedepth > 1:
            raise SlideError("volumetric (3-D) TIFF pages are not supported")
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = int(page.rowsperstrip or self.height), self.width
            self.seg_h = min(self.seg_h, self.height)
        self.rows = -(-self.height // self.seg_h)
        self.cols = -(-self.width // self.seg_w)
        self.decode = page.decode
        self.jpegtables = page.jpegtables
        self.offsets = page.dataoffsets
        self.bytecounts = page.databytecounts
        if len(self.offsets) < self.rows * self.cols:
            raise SlideError("the TIFF file is damaged: it lists fewer tiles than the image needs")


class TiffBackend(SlideBackend):
    """A slide opened with tifffile (OME-TIFF, generic pyramidal or flat TIFF)."""

    def __init__(self, path: Path, cache_bytes: int = 96 * 2**20) -> None:
        try:
            self._tif = tifffile.TiffFile(str(path))
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
            raise SlideError(
                f"cannot read {path.name}: the file is damaged, truncated or not a TIFF ({exc})"
            ) from exc
        try:
            self._load_levels(path)
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
            self._tif.close()
            raise SlideError(f"cannot read {path.name} as a TIFF: {exc}") from exc
        except BaseException:
            self._tif.close()
            raise
        self.metadata_mpp = plausible_mpp(self._read_mpp())
        self._lock = threading.Lock()
        self._cache = _SegmentCache(cache_bytes)
        self._path = path

    def _load_levels(self, path: Path) -> None:
        """Find the pyramid of the file's first image series (raises :class:`SlideError`)."""
        if not self._tif.series:
            raise SlideError(
                f"{path.name} holds no readable image: the TIFF file is truncated or damaged "
                "(an incomplete download or copy?)"
            )
        series = self._tif.series[0]
        pages = [lvl.keyframe for lvl in series.levels]
        axes = series.axes
        if not set("YX") <= set(axes) or any(
            a not in "YXS" and n > 1 for a, n in zip(axes, series.shape, strict=True)
        ):
            raise SlideError(
                f"{path.name} is a multi-dimensional TIFF (axes {axes}); "
                "an RGB or grayscale 2-D slide is needed"
            )
        levels = [_Level(p) for p in pages]
        # Drop levels that are not reductions of level 0 (some writers append labels).
        w0, h0 = levels[0].width, levels[0].height
        self._levels = [lvl for lvl in levels if lvl.width <= w0]
        self.format_name = "ome-tiff" if self._tif.is_ome else "tiff"
        self.level_dimensions = tuple((lvl.width, lvl.height) for lvl in self._levels)
        self.level_downsamples = tuple(
            float(np.mean([w0 / lvl.width, h0 / lvl.height])) for lvl in self._levels
        )
        self.level_tile_sizes = tuple(
            (lvl.seg_w, lvl.seg_h) if lvl.page.is_tiled else (512, 512) for lvl in self._levels
        )

    # -- metadata ---------------------------------------------------------------------------
    def _read_mpp(self) -> float | None:
        tif = self._tif
        if tif.is_ome and tif.ome_metadata:
            match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            if match:
                factor = _UM_PER_UNIT.get(unit.group(1) if unit else "µm")
                if factor is not None:
                    return float(match.group(1)) * factor
        page = tif.pages.first
        description = page.description or ""
        match = re.search(r"MPP\s*=\s*([0-9.]+)", description)
        if match:
            return float(match.group(1))
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            unit = tags["ResolutionUnit"].value
            num, den = tags["XResolution"].value
            if num and den:
                px_per_unit = num / den
                if unit == tifffile.RESUNIT.CENTIMETER:
                    return 1e4 / px_per_unit
                if unit == tifffile.RESUNIT.INCH:
                    return 25400.0 / px_per_unit
                if unit == tifffile.RESUNIT.MILLIMETER:
                    return 1e3 / px_per_unit
                if unit == tifffile.RESUNIT.MICROMETER:
                    return 1.0 / px_per_unit
        return None

    @property
    def properties(self) -> Mapping[str, str]:
        page = self._tif.pages.first
        return {
            "tiff.ImageDescription": (page.description or "")[:2000],
            "tiff.Software": str(page.software or ""),
        }

    # -- pixels -----------------------------------------------------------------------------
    def _segment(self, level: int, row: int, col: int) -> NDArray[np.uint8]:
        key = (level, row * 1_000_003 + col)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        lvl = self._levels[level]
        index = row * lvl.cols + col
        offset, count = int(lvl.offsets[index]), int(lvl.bytecounts[index])
        h = min(lvl.seg_h, lvl.height - row * lvl.seg_h)
        w = min(lvl.seg_w, lvl.width - col * lvl.seg_w)
        if count == 0:
            pixels = np.full((h, w, 3), 255, np.uint8)
        else:
            with self._lock:
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
            if len(data) < count:
                raise SlideError(
                    f"the slide file is truncated: tile {index} of level {level} "
                    f"ends past the end of {self._path.name}"
                )
            try:
                decoded, _, _ = lvl.decode(data, index, jpegtables=lvl.jpegtables)
            except Exception as exc:
                raise SlideError(
                    f"the slide file is damaged: tile {index} of level {level} "
                    f"cannot be decoded ({exc})"
                ) from exc
            if decoded is None:
                pixels = np.full((h, w, 3), 255, np.uint8)
            else:
                arr = np.asarray(decoded)
                arr = arr.reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1])
                pixels = to_rgb(arr[:h, :w])
        self._cache.put(key, pixels)
        return pixels

    def read_level_region(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> NDArray[np.uint8]:
        return self.read_level_region_into(level, x, y, np.empty((height, width, 3), np.uint8))

    def read_level_region_into(
        self, level: int, x: int, y: int, out: NDArray[np.uint8]
    ) -> NDArray[np.uint8]:
        """Copy the decoded segments' pixels straight into ``out`` (white outside the level)."""
        lvl = self._levels[level]
        height, width = out.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lvl.width), min(y + height, lvl.height)
        if (x0, y0, x1, y1) != (x, y, x + width, y + height):  # (partly) outside the level
            out[...] = 255
        if x0 >= x1 or y0 >= y1:
            return out
        for row in range(y0 // lvl.seg_h, (y1 - 1) // lvl.seg_h + 1):
            for col in range(x0 // lvl.seg_w, (x1 - 1) // lvl.seg_w + 1):
                seg = self._segment(level, row, col)
                sy, sx = row * lvl.seg_h, col * lvl.seg_w
                ay0, ay1 = max(y0, sy), min(y1, sy + seg.shape[0])
                ax0, ax1 = max(x0, sx), min(x1, sx + seg.shape[1])
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[
                    ay0 - sy : ay1 - sy, ax0 - sx : ax1 - sx
                ]
        return out

    def close(self) -> None:
        self._tif.close()
