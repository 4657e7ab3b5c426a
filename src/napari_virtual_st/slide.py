"""``Slide``: one whole-slide image, whatever its format, in one frame.

Every format reaches the engine through the same small surface: levels and downsamples,
µm/px, a thumbnail, lazy per-level arrays (for napari), and :meth:`Slide.read_region`, which
reads at a requested µm/px from the coarsest level that still has enough resolution.

Backends: OpenSlide (vendor formats), tifffile (OME / generic pyramidal TIFF), Pillow
(PNG/JPEG). Coordinates passed in and out are level-0 pixels, (x, y) order.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import DTypeLike, NDArray
from PIL import Image

if TYPE_CHECKING:
    import dask.array

from napari_virtual_st._backends import (
    SlideBackend,
    image_backend,
    openslide_backend,
    plausible_mpp,
)
from napari_virtual_st.errors import (
    MissingResolutionError,
    ParameterError,
    SlideError,
    VirtualSTError,
)
from napari_virtual_st.tissue import (
    BACKGROUND_THUMBNAIL_PX,
    has_black_background,
    no_light_as_glass,
)

#: A level may serve a request if its resolution is at most this much coarser than asked
#: (vendor downsamples such as 4.0003 would otherwise push reads onto a finer level).
LEVEL_TOLERANCE = 0.01
#: The most level pixels a side that one tile may read, whatever a model asks for (a model
#: asking for a 2 mm tile on a slide without a pyramid would otherwise read gigabytes).
MAX_TILE_READ_PX = 8192
#: A thumbnail's level, decoded whole, is kept for the next thumbnail of another size when it
#: holds at most this many bytes: a slide without a pyramid decodes all of level 0 for each
#: thumbnail, and a run takes two (the tissue check's and the background check's, 0.4-0.8 s
#: each for the 2967 × 2220 px CMU-1 small region on two loaded cores).
KEPT_LEVEL_BYTES = 32 << 20

_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8", ".qptiff")
#: Vendor formats that only OpenSlide reads (TIFF-named files fall back to tifffile).
_OPENSLIDE_SUFFIXES = (
    ".svs",
    ".svslide",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".czi",
    ".dcm",
)
#: Every file ending a slide may have (for folder scans, file dialogs and the napari reader).
SLIDE_SUFFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(image_backend.SUFFIXES + _TIFF_SUFFIXES + _OPENSLIDE_SUFFIXES)
)


def _open_backend(path: Path) -> SlideBackend:
    from napari_virtual_st._backends.tiff_backend import TiffBackend

    name = path.name.lower()
    if name.endswith(image_backend.SUFFIXES):
        return image_backend.ImageBackend(path)
    if name.endswith((".ome.tif", ".ome.tiff")):
        return TiffBackend(path)
    vendor = openslide_backend.detect(path)
    if vendor is not None and vendor != "generic-tiff":
        return openslide_backend.OpenSlideBackend(path)
    if vendor == "generic-tiff" or name.endswith(_TIFF_SUFFIXES):
        return TiffBackend(path)
    if name.endswith(_OPENSLIDE_SUFFIXES) and path.is_file():
        raise SlideError(
            f"{path.name} cannot be opened: OpenSlide does not recognise it as a "
            f"{path.suffix} slide. The file is probably truncated or damaged (an incomplete "
            f"download or copy? it is {path.stat().st_size:,} bytes), or not a slide at all"
        )
    if path.is_dir():
        raise SlideError(
            f"{path.name} is a folder, not a slide OpenSlide recognises (a DICOM folder would "
            "be; for a MIRAX or VMS slide give its .mrxs or .vms file)"
        )
    raise SlideError(
        f"{path.name} is not a slide format this tool reads "
        "(OpenSlide formats, OME/pyramidal TIFF, PNG or JPEG)"
    )


class Slide:
    """A whole-slide image opened for reading.

    Parameters
    ----------
    path
        Slide file (any OpenSlide format, OME/generic TIFF, PNG or JPEG).
    mpp
        Micrometres per level-0 pixel. Overrides the file's own value; required when the
        file has none.

    Raises
    ------
    SlideError
        If the file is missing, unreadable or not a slide.
    ParameterError
        If ``mpp`` is not a positive, finite number.

    Examples
    --------
    >>> with Slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
    ...     tile = slide.read_region((1000, 1000), (224, 224), mpp=0.5)
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"slide file not found: {self.path}")
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise SlideError(f"{self.path.name} is an empty file")
        if mpp is not None and plausible_mpp(mpp) is None:
            raise ParameterError(
                f"µm/px must be a positive number up to 20 (a microscope resolution); got {mpp}"
            )
        self._backend = _open_backend(self.path)
        self._mpp_override = None if mpp is None else float(mpp)
        self._fingerprint: str | None = None
        self._thumbnail: tuple[int, NDArray[np.uint8]] | None = None  # the last one read
        self._black_background: bool | None = None  # decided at the first read_tile
        self._kept_level: tuple[int, NDArray[np.uint8]] | None = None  # see thumbnail()

    # -- description ------------------------------------------------------------------------
    @property
    def format(self) -> str:
        """Short name of the file format (``"aperio"``, ``"hamamatsu"``, ``"ome-tiff"``, ...)."""
        return self._backend.format_name

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) in pixels of every level, finest first."""
        return self._backend.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""
        return self._backend.level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self._backend.level_dimensions[0]

    @property
    def properties(self) -> Mapping[str, str]:
        """Vendor metadata of the file."""
        return self._backend.properties

    @property
    def mpp_source(self) -> str | None:
        """Where :attr:`mpp` comes from: ``"override"``, ``"metadata"`` or ``None`` (unknown)."""
        if self._mpp_override is not None:
            return "override"
        return "metadata" if self._backend.metadata_mpp is not None else None

    @property
    def mpp_or_none(self) -> float | None:
        """Micrometres per level-0 pixel, or ``None`` when unknown."""
        if self._mpp_override is not None:
            return self._mpp_override
        return self._backend.metadata_mpp

    @property
    def mpp(self) -> float:
        """Micrometres per level-0 pixel.

        Raises
        ------
        MissingResolutionError
            If the file records no resolution and none was given when opening it.
        """
        value = self.mpp_or_none
        if value is None:
            raise MissingResolutionError(
                f"{self.path.name} does not record its resolution (µm per pixel); "
                "give it explicitly, e.g. --mpp 0.5 for a 20× scan"
            )
        return value

    # -- reading ----------------------------------------------------------------------------
    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample does not exceed ``downsample`` (within 1 %)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + LEVEL_TOLERANCE) and ds > self.level_downsamples[best]:
                best = level
        return best

    def level_for_mpp(self, mpp: float) -> int:
        """Coarsest level that still resolves ``mpp`` µm/px."""
        return self.best_level_for_downsample(mpp / self.mpp)

    def read_region(
        self,
        xy_level0_px: tuple[float, float],
        size_px: tuple[int, int],
        mpp: float | None = None,
    ) -> NDArray[np.uint8]:
        """Read a region resampled to ``mpp`` µm/px.

        Parameters
        ----------
        xy_level0_px
            Top-left corner of the region, (x, y) level-0 pixels (may be fractional or
            outside the slide; outside is white).
        size_px
            (width, height) of the returned image in output pixels.
        mpp
            Output resolution in µm/px; the slide's own level-0 resolution when omitted.

        Returns
        -------
        numpy.ndarray
            ``(height, width, 3)`` uint8 RGB (transparency composited on white).
        """
        downsample = 1.0 if mpp is None else float(mpp) / self.mpp
        return self.read_region_downsampled(xy_level0_px, size_px, downsample)

    def read_region_downsampled(
        self,
        xy_level0_px: tuple[float, float],
        size_px: tuple[int, int],
        downsample: float,
        *,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Like :meth:`read_region`, with the output scale given as a downsample of level 0.

        ``out``, a ``(height, width, 3)`` uint8 array (e.g. one tile of a batch), receives the
        pixels and is returned; a level read at the output scale is then decoded straight
        into it (TIFF), without an array of its own.
        """
        return self._read_resampled(
            xy_level0_px, size_px, downsample, out, self._backend.read_level_region
        )

    def _read_resampled(
        self,
        xy_level0_px: tuple[float, float],
        size_px: tuple[int, int],
        downsample: float,
        out: NDArray[np.uint8] | None,
        read_level_region: Callable[[int, int, int, int, int], NDArray[np.uint8]],
    ) -> NDArray[np.uint8]:
        """:meth:`read_region_downsampled` reading level pixels with ``read_level_region``
        ``(level, x, y, width, height)`` (the backend's, or the kept level's)."""
        width, height = int(size_px[0]), int(size_px[1])
        if width <= 0 or height <= 0:
            raise ParameterError(f"region size must be positive; got {size_px}")
        if not (math.isfinite(downsample) and downsample > 0):
            raise ParameterError(f"downsample must be positive; got {downsample}")
        if out is not None:
            _check_out(out, width, height)
        level = self.best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        factor = downsample / level_ds  # output pixel size in level pixels
        fx = xy_level0_px[0] / level_ds
        fy = xy_level0_px[1] / level_ds
        if abs(factor - 1.0) < 1e-9 and fx == int(fx) and fy == int(fy):
            if out is not None and read_level_region == self._backend.read_level_region:
                return self._backend.read_level_region_into(level, int(fx), int(fy), out)
            region = read_level_region(level, int(fx), int(fy), width, height)
            if out is None:
                return region
            out[...] = region
            return out
        x0, y0 = math.floor(fx), math.floor(fy)
        x1 = math.ceil(fx + width * factor) + 1
        y1 = math.ceil(fy + height * factor) + 1
        region = read_level_region(level, x0, y0, x1 - x0, y1 - y0)
        box = (fx - x0, fy - y0, fx - x0 + width * factor, fy - y0 + height * factor)
        resized = Image.fromarray(region).resize(
            (width, height), Image.Resampling.BILINEAR, box=box
        )
        if out is None:
            return np.asarray(resized)
        out[...] = np.asarray(resized)
        return out

    def read_tile(
        self,
        center_xy_level0_px: tuple[float, float],
        tile_px: int,
        tile_um: float,
        *,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read a square tile of ``tile_um`` µm side, centred on a level-0 point, as ``tile_px`` px.

        This is what a model sees. On a slide whose background is black (an exported image
        with its glass masked, :func:`~napari_virtual_st.tissue.has_black_background`, decided
        once per slide from its thumbnail), pixels that let no light through are made white,
        as glass (:func:`~napari_virtual_st.tissue.no_light_as_glass`).

        Where a level holds the tile at its own scale (its side there is ``tile_px`` px to
        within one pixel), the tile is that level's own ``tile_px`` × ``tile_px`` pixels
        whose centre is nearest the point (at most ½ level pixel off), copied without
        resampling; otherwise it is resampled (bilinear) from the coarsest level that
        resolves it.

        ``out``, a ``(tile_px, tile_px, 3)`` uint8 array (a tile of a batch), receives the
        pixels and is returned (see :meth:`read_region_downsampled`).
        """
        side_level0 = tile_um / self.mpp
        downsample = side_level0 / tile_px
        level = self.best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        side_read = side_level0 / level_ds
        if side_read > MAX_TILE_READ_PX:
            raise ParameterError(
                f"a {tile_um:g} µm tile would read {side_read:,.0f} × {side_read:,.0f} px of this "
                f"slide's level {level} (the limit is {MAX_TILE_READ_PX:,} px a side): the slide "
                f"has no pyramid level near {downsample * self.mpp:.3g} µm/px"
            )
        if abs(side_read - tile_px) < 1.0 and tile_px > 0:  # the level's own pixels
            x = round(center_xy_level0_px[0] / level_ds - tile_px / 2)
            y = round(center_xy_level0_px[1] / level_ds - tile_px / 2)
            if out is None:
                tile = self._backend.read_level_region(level, x, y, tile_px, tile_px)
            else:
                _check_out(out, tile_px, tile_px)
                tile = self._backend.read_level_region_into(level, x, y, out)
        else:
            corner = (
                center_xy_level0_px[0] - side_level0 / 2,
                center_xy_level0_px[1] - side_level0 / 2,
            )
            tile = self.read_region_downsampled(corner, (tile_px, tile_px), downsample, out=out)
        if self._black_background is None:  # (a small thumbnail, read once; the tissue
            # check's, which the slide keeps, stays kept)
            small = self.thumbnail(BACKGROUND_THUMBNAIL_PX, keep=False)
            self._black_background = has_black_background(small)
        if not self._black_background:
            return tile
        glass = no_light_as_glass(tile)  # (a copy when it changes anything: never written
        if out is None or glass is tile:  # into a backend's own pixels)
            return glass
        out[...] = glass  # (the caller's buffer, a tile of a batch)
        return out

    def thumbnail(self, max_px: int = 2048, *, keep: bool = True) -> NDArray[np.uint8]:
        """The whole slide as RGB, its longer side at most ``max_px`` pixels (``keep``: the
        slide keeps it for the next call of the same size, replacing the one it kept).

        The level a thumbnail is made from is read whole and kept, when it holds at most
        :data:`KEPT_LEVEL_BYTES`, so a thumbnail of another size from the same level (a run's
        tissue and background checks) resamples the kept pixels instead of decoding the
        level again: the same pixels, so the same thumbnail as a fresh read gives.
        """
        if max_px <= 0:
            raise ParameterError(f"thumbnail size must be positive; got {max_px}")
        cached = self._thumbnail
        if cached is not None and cached[0] == max_px:  # (the checks of one run share it)
            return cached[1].copy()
        w0, h0 = self.dimensions
        downsample = max(max(w0, h0) / max_px, 1.0)
        size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
        thumb = self._read_resampled((0, 0), size, downsample, None, self._kept_level_region)
        if keep:
            self._thumbnail = (max_px, thumb)
        return thumb.copy()

    def _kept_level_region(
        self, level: int, x: int, y: int, width: int, height: int
    ) -> NDArray[np.uint8]:
        """A level region for :meth:`thumbnail`: from the level decoded whole and kept
        (read the first time, if small enough), else from the backend. Outside the level it
        is white, as every backend reads there."""
        kept = self._kept_level
        if kept is None or kept[0] != level:
            w, h = self.level_dimensions[level]
            if w * h * 3 > KEPT_LEVEL_BYTES:
                return self._backend.read_level_region(level, x, y, width, height)
            kept = (level, self._backend.read_level_region(level, 0, 0, w, h))
            self._kept_level = kept
        pixels = kept[1]
        h, w = pixels.shape[:2]
        if x >= 0 and y >= 0 and x + width <= w and y + height <= h:
            return pixels[y : y + height, x : x + width]
        region = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, w), min(y + height, h)
        if x0 < x1 and y0 < y1:
            region[y0 - y : y1 - y, x0 - x : x1 - x] = pixels[y0:y1, x0:x1]
        return region

    def level_array(self, level: int) -> LevelArray:
        """A lazy, array-like view of one level (reads only what is indexed)."""
        if not 0 <= level < self.level_count:
            raise ParameterError(f"level must be in 0..{self.level_count - 1}; got {level}")
        return LevelArray(self._backend, level)

    def level_arrays(self) -> list[LevelArray]:
        """Lazy arrays of every level, finest first (a napari multiscale image)."""
        return [self.level_array(level) for level in range(self.level_count)]

    def pyramid(self, max_coarsest_px: int | None = None) -> list[dask.array.Array]:
        """The slide as a viewer draws it: lazy dask arrays of every level, finest first,
        chunked like its tiles, plus computed coarser levels where its own pyramid stops
        above ``max_coarsest_px`` (default :data:`~napari_virtual_st.pyramid.MAX_COARSEST_PX`);
        see :func:`~napari_virtual_st.pyramid.lazy_pyramid`. Nothing is read until indexed.
        """
        from napari_virtual_st.pyramid import MAX_COARSEST_PX, lazy_pyramid

        return lazy_pyramid(self, MAX_COARSEST_PX if max_coarsest_px is None else max_coarsest_px)

    # -- identity ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Content hash of the file (size, head and tail bytes, geometry); path-independent."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            main = self.path if self.path.is_file() else _largest_file(self.path)
            size = main.stat().st_size
            digest.update(str(size).encode())
            with main.open("rb") as fh:
                digest.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    digest.update(fh.read(1 << 20))
            digest.update(repr(self.level_dimensions).encode())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (format, levels, µm/px) for provenance and ``info``."""
        return {
            "path": str(self.path.absolute()),  # (found again from any working folder)
            "name": self.path.name,
            "format": self.format,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self.mpp_or_none,
            "mpp_source": self.mpp_source,
            "fingerprint": self.fingerprint,
        }

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file."""
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {self.format}, {w}×{h} px, {self.level_count} levels)"


class LevelArray:
    """Array-like ``(height, width, 3)`` uint8 view of one slide level, read on indexing.

    napari and NumPy need only ``shape``, ``dtype``, ``ndim`` and ``__getitem__``; nothing is
    read until a slice is asked for.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, backend: SlideBackend, level: int) -> None:
        self._backend = backend
        self.level = level
        w, h = backend.level_dimensions[level]
        self.shape = (h, w, 3)
        self.chunks = (backend.level_tile_sizes[level][1], backend.level_tile_sizes[level][0], 3)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: object) -> NDArray[np.uint8]:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        rows, cols, chans = key
        h, w = self.shape[:2]
        row_slice = (
            rows if isinstance(rows, slice) else slice(_index(rows, h), _index(rows, h) + 1)
        )
        col_slice = (
            cols if isinstance(cols, slice) else slice(_index(cols, w), _index(cols, w) + 1)
        )
        row_range = range(*row_slice.indices(h))
        col_range = range(*col_slice.indices(w))
        if len(row_range) and len(col_range):
            # read the bounding box of the selected pixels (any step sign), then step in it
            y0, y1 = min(row_range[0], row_range[-1]), max(row_range[0], row_range[-1]) + 1
            x0, x1 = min(col_range[0], col_range[-1]), max(col_range[0], col_range[-1]) + 1
            region = self._backend.read_level_region(self.level, x0, y0, x1 - x0, y1 - y0)
            block = region[
                slice(row_range[0] - y0, None, row_range.step),
                slice(col_range[0] - x0, None, col_range.step),
            ]
        else:
            block = np.empty((len(row_range), len(col_range), 3), np.uint8)
        if not isinstance(rows, slice):
            block = block[0]
            if not isinstance(cols, slice):
                return block[0][chans]
            return block[:, chans]
        if not isinstance(cols, slice):
            return block[:, 0][:, chans]
        return block[:, :, chans]

    def __array__(self, dtype: DTypeLike | None = None, copy: object = None) -> NDArray[np.uint8]:
        full = self[:, :, :]
        return full if dtype is None else full.astype(dtype)

    def __repr__(self) -> str:
        return f"LevelArray(level={self.level}, shape={self.shape})"


def _check_out(out: NDArray[np.uint8], width: int, height: int) -> None:
    """Refuse a buffer that cannot hold a ``(height, width)`` RGB uint8 region."""
    if out.shape != (height, width, 3) or out.dtype != np.uint8:
        raise ParameterError(
            f"out must be a ({height}, {width}, 3) uint8 array for this region; "
            f"got {out.shape} {out.dtype}"
        )


def _index(i: object, n: int) -> int:
    k = int(i)  # type: ignore[call-overload]  # whatever numpy would take as an index
    if k < 0:
        k += n
    if not 0 <= k < n:
        raise IndexError(f"index {k} out of range for size {n}")
    return k


def _largest_file(folder: Path) -> Path:
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise SlideError(f"{folder} contains no files")
    return max(files, key=lambda p: p.stat().st_size)


def locate_slide(
    name: str | None,
    recorded_path: Path | None,
    fingerprint: str | None,
    near: Sequence[Path] = (),
) -> Path | None:
    """Find the slide a store was predicted on, also after the slide or the store was moved.

    The recorded (absolute) path is tried first, then a file of the recorded name in each
    folder of ``near`` (e.g. the store's folder, where users keep slide and results
    together). A candidate is taken only when its content fingerprint matches the recorded
    one, so a different slide that happens to sit at the old path is never shown under
    another slide's predictions.

    Parameters
    ----------
    name, recorded_path, fingerprint
        What the store recorded (:class:`~napari_virtual_st.store.SlideRecord`); a missing
        fingerprint accepts the first candidate that opens.
    near
        Folders to look in for a file called ``name``.

    Returns
    -------
    pathlib.Path or None
        The slide's path, or ``None`` when none of the candidates is that slide.
    """
    candidates: list[Path] = []
    if recorded_path is not None:
        candidates.append(recorded_path)
    if name:
        candidates.extend(Path(folder) / name for folder in near)
    seen: set[Path] = set()
    for candidate in candidates:
        key = Path(os.path.abspath(candidate))
        if key in seen or not candidate.exists():
            continue
        seen.add(key)
        try:
            with Slide(candidate) as slide:
                if fingerprint is None or slide.fingerprint == fingerprint:
                    return key
        except VirtualSTError:
            continue
    return None
