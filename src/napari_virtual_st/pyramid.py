"""A slide's lazy multiscale pyramid, as a viewer draws it (Qt-free).

Every level of the slide is a dask array chunked like its storage tiles, read only where it
is indexed (:class:`~napari_virtual_st.slide.LevelArray`). When even the slide's coarsest
level is larger than :data:`MAX_COARSEST_PX`, coarser levels (4× each) are added whose
chunks are read from the finest level that serves them, so a large slide without a pyramid
opens without being read whole. Use it through :meth:`Slide.pyramid
<napari_virtual_st.slide.Slide.pyramid>`; napari's reader passes the arrays as a multiscale
image layer.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import NDArray

from napari_virtual_st.slide import LevelArray, Slide

#: Coarsest level a viewer should need: slides whose own pyramid stops above this get extra
#: levels computed from the finest one, so a viewer never loads a whole large level.
MAX_COARSEST_PX = 2048
#: Chunk side of those computed levels.
VIRTUAL_CHUNK_PX = 512


class DownsampledLevel:
    """Array-like ``(h, w, 3)`` view of a slide at a downsample it has no level for.

    Parameters
    ----------
    slide
        The open slide (kept open by the array).
    downsample
        Level-0 pixels per pixel of this level.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, slide: Slide, downsample: float) -> None:
        self._slide = slide
        self.downsample = downsample
        w0, h0 = slide.dimensions
        self.shape = (max(1, math.ceil(h0 / downsample)), max(1, math.ceil(w0 / downsample)), 3)

    def __getitem__(self, key: tuple[slice, ...]) -> NDArray[np.uint8]:
        # dask asks for whole chunks: a tuple of slices with unit steps
        key = tuple(key) + (slice(None),) * (3 - len(key))
        rows = range(*key[0].indices(self.shape[0]))
        cols = range(*key[1].indices(self.shape[1]))
        if not rows or not cols:
            return np.empty((len(rows), len(cols), 3), np.uint8)[:, :, key[2]]
        corner = (cols[0] * self.downsample, rows[0] * self.downsample)
        size = (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
        block = self._slide.read_region_downsampled(corner, size, self.downsample)
        return block[:: rows.step, :: cols.step, key[2]]


def lazy_pyramid(slide: Slide, max_coarsest_px: int = MAX_COARSEST_PX) -> list[da.Array]:
    """Lazy dask arrays of every level of ``slide``, finest first, chunked like its tiles,
    with computed coarser levels until one is at most ``max_coarsest_px`` on its long side.

    Raises
    ------
    ValueError
        If ``max_coarsest_px`` is not a positive number of pixels.
    """
    if max_coarsest_px < 1:
        raise ValueError(f"max_coarsest_px must be at least 1; got {max_coarsest_px}")
    token = uuid.uuid4().hex[:12]
    levels: list[Any] = list(slide.level_arrays())
    downsample = slide.level_downsamples[-1]
    side = max(levels[-1].shape[:2])
    while side > max_coarsest_px:
        downsample *= 4.0
        side = math.ceil(side / 4.0)
        levels.append(DownsampledLevel(slide, downsample))
    arrays = []
    for i, level in enumerate(levels):
        if isinstance(level, LevelArray):
            chunks = tuple(min(c, s) for c, s in zip(level.chunks, level.shape, strict=True))
        else:
            chunks = (VIRTUAL_CHUNK_PX, VIRTUAL_CHUNK_PX, 3)
        arrays.append(
            da.from_array(
                level,
                chunks=chunks,
                name=f"vst-slide-{token}-{i}",
                asarray=False,
                fancy=False,
                lock=False,
                meta=np.empty((0, 0, 0), np.uint8),
            )
        )
    return arrays
