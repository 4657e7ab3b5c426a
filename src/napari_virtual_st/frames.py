"""Coordinate frames and the one place where they are converted.

The frames, in the order of the chain that places measured data on a slide:

- *measured image px*, ``rc`` (row, col): pixels of an image that came with measured data
  (a Space Ranger ``hires``/``lowres`` PNG is the full-res frame times its scale factor,
  ``image_scale`` = image px per full-res px);
- *measured full-res px*, ``xy_fullres_px`` (x, y): the measured spot centres;
- *level-0 px*, ``xy_level0_px`` (x, y): the slide's full-resolution level. Canonical
  storage, as in QuPath GeoJSON and AnnData ``obsm['spatial']``;
- *napari world*, ``yx_um`` (row, col) µm: slide layers get ``scale=(mpp, mpp)``.

::

    image (row, col) px ──image_rc_to_fullres_xy──▶ full-res (x, y) px
        ──Transform.apply──▶ level-0 (x, y) px ──xy_level0_px_to_yx_um──▶ world (row, col) µm

A :class:`Transform` is the middle step (the alignment of measured data to the slide, found
by :mod:`napari_virtual_st.align`); it round-trips through JSON so that it can be kept with
a prediction store. Each step is also a 3×3 homogeneous matrix, so that a napari layer can be
placed by one ``affine`` (:func:`image_rc_to_yx_um_matrix`) that agrees with the point
functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st.errors import VirtualSTError

TransformKind = Literal["scale", "similarity", "affine"]

#: Swaps (x, y) ↔ (row, col) in homogeneous coordinates (its own inverse).
SWAP_XY_RC = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


class AlignmentError(VirtualSTError):
    """An alignment could not be computed or read (too few or degenerate landmarks, blank
    images, a malformed saved transform)."""


@dataclass(frozen=True)
class Transform:
    """A 2-D affine map from measured full-res px to slide level-0 px, (x, y) order.

    Attributes
    ----------
    matrix
        3×3 homogeneous matrix ``[x', y', 1]ᵀ = M · [x, y, 1]ᵀ``.
    kind
        How it was obtained: ``scale``, ``similarity`` or ``affine``.
    residual_px
        RMS landmark residual (level-0 px) for fitted transforms, else ``None``.
    quality
        Registration score (normalised cross-correlation, −1..1) for automatic ones.
    info
        Free-form provenance (method, parameters).
    """

    matrix: NDArray[np.float64]
    kind: TransformKind = "affine"
    residual_px: float | None = None
    quality: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Map ``(n, 2)`` (x, y) measured full-res px to slide level-0 px."""
        pts = np.asarray(xy, np.float64).reshape(-1, 2)
        return pts @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def inverse(self) -> Transform:
        """The transform from slide level-0 px back to measured full-res px."""
        return Transform(
            np.asarray(np.linalg.inv(self.matrix), np.float64),
            self.kind,
            self.residual_px,
            self.quality,
            dict(self.info),
        )

    @property
    def scale(self) -> float:
        """Mean linear scale factor (level-0 px per measured px)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle in degrees (counter-clockwise in (x, y) image axes)."""
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    def residual_um(self, mpp: float) -> float | None:
        """Landmark residual in µm, given the slide's µm/px."""
        return None if self.residual_px is None else self.residual_px * mpp

    def to_json(self) -> str:
        """JSON text (saved next to or inside a prediction store)."""
        return json.dumps(
            {
                "matrix": self.matrix.tolist(),
                "kind": self.kind,
                "residual_px": self.residual_px,
                "quality": self.quality,
                "info": self.info,
                "frames": "measured full-resolution px (x, y) -> slide level-0 px (x, y)",
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Transform:
        """Read :meth:`to_json` output; raises :class:`AlignmentError` on malformed text."""
        try:
            data = json.loads(text)
            matrix = np.asarray(data["matrix"], np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise AlignmentError(f"not a saved alignment transform: {exc}") from exc
        if (
            matrix.shape != (3, 3)
            or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix)) < 1e-12
        ):
            raise AlignmentError("a saved alignment transform must be an invertible 3×3 matrix")
        return cls(
            matrix,
            data.get("kind", "affine"),
            data.get("residual_px"),
            data.get("quality"),
            data.get("info", {}),
        )


# -- points ------------------------------------------------------------------------------------
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


def image_rc_to_fullres_xy(rc_px: ArrayLike, image_scale: float) -> NDArray[np.float64]:
    """Points on a measured image, ``(n, 2)`` (row, col) image px → (x, y) measured full-res px.

    ``image_scale`` is the image's px per full-res px (Space Ranger's
    ``tissue_hires_scalef``; 1 for the full-res image).
    """
    rc = np.asarray(rc_px, np.float64).reshape(-1, 2)
    return rc[:, ::-1] / image_scale


def fullres_xy_to_image_rc(xy_fullres_px: ArrayLike, image_scale: float) -> NDArray[np.float64]:
    """``(n, 2)`` (x, y) measured full-res px → (row, col) px of an image of ``image_scale``
    px per full-res px (the inverse of :func:`image_rc_to_fullres_xy`)."""
    xy = np.asarray(xy_fullres_px, np.float64).reshape(-1, 2)
    return xy[:, ::-1] * image_scale


def fullres_xy_to_yx_um(
    xy_fullres_px: ArrayLike, transform: Transform, mpp: float
) -> NDArray[np.float64]:
    """``(n, 2)`` (x, y) measured full-res px → napari world (row, col) µm, through the
    alignment ``transform`` and the slide's µm per level-0 px ``mpp``."""
    return xy_level0_px_to_yx_um(transform.apply(xy_fullres_px), mpp)


def yx_um_to_fullres_xy(yx_um: ArrayLike, transform: Transform, mpp: float) -> NDArray[np.float64]:
    """``(n, 2)`` napari world (row, col) µm → (x, y) measured full-res px (the inverse of
    :func:`fullres_xy_to_yx_um`)."""
    return transform.inverse().apply(yx_um_to_xy_level0_px(yx_um, mpp))


# -- matrices (3×3 homogeneous; napari's ``affine`` of a layer) ---------------------------------
def image_rc_to_fullres_xy_matrix(image_scale: float) -> NDArray[np.float64]:
    """Measured image (row, col) px → measured full-res (x, y) px."""
    return np.diag([1.0 / image_scale, 1.0 / image_scale, 1.0]) @ SWAP_XY_RC


def xy_level0_px_to_yx_um_matrix(mpp: float) -> NDArray[np.float64]:
    """Slide level-0 (x, y) px → napari world (row, col) µm."""
    return np.diag([mpp, mpp, 1.0]) @ SWAP_XY_RC


def image_rc_to_yx_um_matrix(
    transform: Transform, mpp: float, image_scale: float
) -> NDArray[np.float64]:
    """The whole chain as one matrix: measured image (row, col) px → world (row, col) µm,
    the napari ``affine`` of a measured image layer.

    Parameters
    ----------
    transform
        Measured full-res px → slide level-0 px.
    mpp
        The slide's µm per level-0 px.
    image_scale
        Image px per full-res px.
    """
    return (
        xy_level0_px_to_yx_um_matrix(mpp)
        @ transform.matrix
        @ image_rc_to_fullres_xy_matrix(image_scale)
    )
