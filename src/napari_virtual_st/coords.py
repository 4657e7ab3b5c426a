"""The one place where coordinate frames are converted.

Frames used in the project:

- ``xy_level0_px``: (x, y) pixels of the slide's full-resolution level. Canonical storage,
  as in QuPath GeoJSON and AnnData ``obsm['spatial']``.
- ``yx_um``: (row, col) micrometres, the napari world frame (slide layers get
  ``scale=(mpp, mpp)``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def xy_level0_px_to_yx_um(xy_level0_px: ArrayLike, mpp: float) -> NDArray[np.float64]:
    """Convert (x, y) level-0 pixels to napari (row, col) micrometres.

    Parameters
    ----------
    xy_level0_px
        Array of shape ``(n, 2)`` holding (x, y) level-0 pixel coordinates.
    mpp
        Micrometres per level-0 pixel.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, 2)`` holding (row, col) micrometres.
    """
    xy = np.asarray(xy_level0_px, dtype=np.float64).reshape(-1, 2)
    return xy[:, ::-1] * float(mpp)


def yx_um_to_xy_level0_px(yx_um: ArrayLike, mpp: float) -> NDArray[np.float64]:
    """Convert napari (row, col) micrometres to (x, y) level-0 pixels.

    Parameters
    ----------
    yx_um
        Array of shape ``(n, 2)`` holding (row, col) micrometres.
    mpp
        Micrometres per level-0 pixel.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, 2)`` holding (x, y) level-0 pixel coordinates.
    """
    yx = np.asarray(yx_um, dtype=np.float64).reshape(-1, 2)
    return yx[:, ::-1] / float(mpp)
