"""Tissue detection on a slide thumbnail.

H&E tissue is coloured and absorbs light; glass is white/grey. Otsu's threshold on the
HSV saturation, on the optical density, or on both (a pixel is tissue if either says so)
separates them; objects and holes smaller than a physical area are then cleaned up.

All of it assumes a bright-field stain: :func:`check_brightfield` refuses a slide that is
not (a fluorescence scan is dark where H&E glass is white, and every spot would count as
tissue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from skimage import filters, morphology

from napari_virtual_st.errors import ParameterError, SlideError

if TYPE_CHECKING:
    from napari_virtual_st.slide import Slide

#: Optical density of every uint8 intensity, -log10(max(v, 1) / 255).
_OD_LUT = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)

TissueMethod = Literal["saturation", "optical_density", "combined"]
_METHODS = ("saturation", "optical_density", "combined")
#: Pixels whose brightest channel is below this let no light through: a black (or
#: transparent, composited on black) background, as around the HER2ST viewer's images. They
#: are read as empty glass (white), never as tissue: even the darkest stained nucleus lets
#: some light through, and their huge optical density made them "tissue".
NO_LIGHT_LEVEL = 30
#: A slide whose thumbnail edge is at least this share no-light pixels has a black background.
BLACK_EDGE_FRACTION = 0.5
#: Width of the edge band that decides, as a share of the thumbnail's shorter side.
EDGE_BAND = 0.03
#: Longer side (px) of the thumbnail a slide's background is judged on (cheap to read).
BACKGROUND_THUMBNAIL_PX = 512


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the slide, at a coarse, known scale.

    Attributes
    ----------
    mask
        ``(rows, cols)`` boolean array; ``True`` is tissue.
    downsample_xy
        Level-0 pixels per mask pixel along x and y.
    """

    mask: NDArray[np.bool_]
    downsample_xy: tuple[float, float]

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in_squares(
        self, center_xy_level0_px: ArrayLike, side_level0_px: float
    ) -> NDArray[np.float64]:
        """Fraction of tissue inside axis-aligned squares centred on level-0 (x, y) points.

        Each square is snapped to whole mask pixels (at least one), and the result is the
        fraction of those pixels that are tissue: a square wholly on tissue gives exactly 1,
        one wholly off it exactly 0. Parts of a square outside the slide count as background.
        Uses a summed-area table, so it costs O(1) per square.

        Parameters
        ----------
        center_xy_level0_px
            ``(n, 2)`` square centres, (x, y) level-0 pixels.
        side_level0_px
            Side of every square in level-0 pixels.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` fractions in [0, 1].
        """
        centers = np.asarray(center_xy_level0_px, dtype=np.float64).reshape(-1, 2)
        rows, cols = self.mask.shape
        sat = np.zeros((rows + 1, cols + 1), np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1)
        dx, dy = self.downsample_xy
        half_x = side_level0_px / 2 / dx
        half_y = side_level0_px / 2 / dy
        cx, cy = centers[:, 0] / dx, centers[:, 1] / dy
        # Square bounds in mask pixels, before clipping to the mask: at least one pixel per
        # square, so tiny spots on coarse masks still sample it.
        x0 = np.round(cx - half_x).astype(np.int64)
        y0 = np.round(cy - half_y).astype(np.int64)
        x1 = np.maximum(np.round(cx + half_x).astype(np.int64), x0 + 1)
        y1 = np.maximum(np.round(cy + half_y).astype(np.int64), y0 + 1)
        area = (x1 - x0) * (y1 - y0)
        x0, x1 = np.clip(x0, 0, cols), np.clip(x1, 0, cols)
        y0, y1 = np.clip(y0, 0, rows), np.clip(y1, 0, rows)
        inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        return inside / area


def tissue_mask_from_rgb(
    rgb: NDArray[np.uint8],
    *,
    method: TissueMethod = "combined",
    min_object_px: int = 64,
    max_hole_px: int = 64,
) -> NDArray[np.bool_]:
    """Tissue mask of an RGB image (any scale).

    Parameters
    ----------
    rgb
        ``(rows, cols, 3)`` uint8 image.
    method
        ``"saturation"`` (Otsu on HSV saturation), ``"optical_density"`` (Otsu on the mean
        optical density), or ``"combined"`` (either).
    min_object_px, max_hole_px
        Connected tissue smaller than ``min_object_px`` is dropped; holes smaller than
        ``max_hole_px`` are filled.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape ``(rows, cols)``.
    """
    if method not in _METHODS:
        raise ParameterError(f"tissue method must be one of {', '.join(_METHODS)}; got {method!r}")
    if min_object_px < 0 or max_hole_px < 0:
        raise ParameterError("tissue cleanup sizes must be zero or positive")
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    mask = np.zeros(img.shape[:2], bool)
    img = no_light_as_glass(img)
    if method in ("saturation", "combined"):
        mx = img.max(axis=-1)
        mn = img.min(axis=-1)
        saturation = (mx - mn).astype(np.float32) / np.maximum(mx, 1).astype(np.float32)
        mask |= _otsu_foreground(saturation, min_contrast=0.05)
    if method in ("optical_density", "combined"):
        od = _OD_LUT[img].mean(axis=-1, dtype=np.float32)  # lookup: no per-pixel logarithm
        mask |= _otsu_foreground(od, min_contrast=0.05)
    if min_object_px > 0:
        mask = morphology.remove_small_objects(mask, max_size=min_object_px)
    if max_hole_px > 0:
        mask = morphology.remove_small_holes(mask, max_size=max_hole_px)
    return mask


def no_light_as_glass(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """``rgb`` with every pixel that lets no light through made white, as empty glass.

    A pixel whose brightest channel is below :data:`NO_LIGHT_LEVEL` is read as a black (or
    transparent, composited on black) background, never as stained tissue.

    Parameters
    ----------
    rgb
        ``(..., 3)`` uint8 image (one or many).

    Returns
    -------
    numpy.ndarray
        ``rgb`` itself when no pixel is that dark, otherwise a copy with those pixels at 255.
    """
    dark = rgb.max(axis=-1) < NO_LIGHT_LEVEL
    if not dark.any():
        return rgb
    out = rgb.copy()
    out[dark] = 255
    return out


def has_black_background(thumbnail: NDArray[np.uint8]) -> bool:
    """Whether a slide's thumbnail shows bright-field tissue on a black background.

    Images exported from viewers (the HER2ST PNGs) set the glass around the tissue to black.
    A model trained on scans, where glass is white, reads that black as dense tissue, so the
    tiles of such a slide are read with :func:`no_light_as_glass` (:meth:`Slide.read_tile`).
    The edge decides: at least :data:`BLACK_EDGE_FRACTION` of a band along the thumbnail's
    edge (:data:`EDGE_BAND` of its shorter side) lets no light through, and the image is
    bright-field (:func:`light_fraction`; a fluorescence scan is dark everywhere and is left
    as it is). A scan with white glass is never changed, even where a pixel inside the tissue
    is that dark.

    Parameters
    ----------
    thumbnail
        ``(rows, cols, 3)`` uint8 image of the whole slide.

    Returns
    -------
    bool
    """
    img = np.asarray(thumbnail)
    if img.ndim != 3 or img.shape[-1] < 3 or min(img.shape[:2]) == 0:
        raise ParameterError(f"need an RGB thumbnail; got shape {img.shape}")
    dark = img[..., :3].max(axis=-1) < NO_LIGHT_LEVEL
    k = max(1, round(EDGE_BAND * min(dark.shape)))  # (a band: resampling blurs the last pixel)
    frame = np.ones(dark.shape, bool)
    frame[k:-k, k:-k] = False
    dark_edge = float(dark[frame].mean())
    return dark_edge >= BLACK_EDGE_FRACTION and light_fraction(img) >= MIN_LIGHT_FRACTION


def _otsu_foreground(values: NDArray[np.floating], min_contrast: float) -> NDArray[np.bool_]:
    """Pixels above Otsu's threshold, or none when the image has no real contrast."""
    if float(values.max() - values.min()) < min_contrast:
        return np.zeros(values.shape, bool)
    threshold = filters.threshold_otsu(values)
    return values > threshold


def thumbnail_side(slide: Slide, mask_um_per_px: float = 8.0, max_px: int = 4096) -> int:
    """Longer side (px) of the thumbnail tissue is found on, at ``mask_um_per_px``."""
    w0, h0 = slide.dimensions
    mpp = slide.mpp_or_none
    if mpp is None:
        return min(max_px, max(w0, h0), 2048)
    target = max(w0, h0) * mpp / mask_um_per_px
    return int(min(max_px, max(w0, h0), max(256, target)))


def detect_tissue(
    slide: Slide,
    *,
    method: TissueMethod = "combined",
    mask_um_per_px: float = 8.0,
    max_px: int = 4096,
    min_object_um2: float = 20_000.0,
    max_hole_um2: float = 20_000.0,
) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide``.

    Parameters
    ----------
    slide
        The slide.
    method
        See :func:`tissue_mask_from_rgb`.
    mask_um_per_px
        Target resolution of the mask (finer slides are read coarser; never finer than the
        slide). Ignored when the slide's µm/px is unknown (a 2048 px thumbnail is used).
    max_px
        Upper bound on the mask's longer side.
    min_object_um2, max_hole_um2
        Cleanup: tissue pieces and holes smaller than these areas (µm²) are removed/filled.

    Returns
    -------
    TissueMask
    """
    if mask_um_per_px <= 0 or max_px <= 0:
        raise ParameterError("tissue mask resolution and size must be positive")
    w0, h0 = slide.dimensions
    mpp = slide.mpp_or_none
    thumb = slide.thumbnail(thumbnail_side(slide, mask_um_per_px, max_px))
    dx, dy = w0 / thumb.shape[1], h0 / thumb.shape[0]
    if mpp is not None:
        px_area_um2 = dx * dy * mpp * mpp
        min_obj = int(min_object_um2 / px_area_um2)
        max_hole = int(max_hole_um2 / px_area_um2)
    else:
        min_obj = max_hole = int(thumb.shape[0] * thumb.shape[1] * 1e-4)
    mask = tissue_mask_from_rgb(thumb, method=method, min_object_px=min_obj, max_hole_px=max_hole)
    return TissueMask(mask=mask, downsample_xy=(dx, dy))


#: Luminance (0-255) above which a thumbnail pixel is light: glass, or lightly stained tissue.
LIGHT_LUMINANCE = 150.0
#: A bright-field slide has at least this share of light pixels (H&E with its background
#: masked black, as in the HER2ST viewer's images, has ~0.2; fluorescence scans ~0).
MIN_LIGHT_FRACTION = 0.05


class NotBrightfieldError(SlideError):
    """The slide is not a bright-field (H&E) scan, e.g. a fluorescence one."""


def light_fraction(rgb: ArrayLike) -> float:
    """Share of pixels of an RGB image lighter than :data:`LIGHT_LUMINANCE`."""
    image = np.asarray(rgb, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] < 3 or image.size == 0:
        raise ParameterError(f"need an RGB image; got shape {image.shape}")
    return float((image[..., :3].mean(axis=-1) > LIGHT_LUMINANCE).mean())


def check_brightfield(slide: Slide, mask_um_per_px: float = 8.0) -> None:
    """Refuse a slide that does not look like a bright-field (H&E) scan.

    Image statistics decide: a bright-field scan is light where there is glass or pale
    tissue; a fluorescence scan is dark almost everywhere. The thumbnail is the one tissue
    detection at ``mask_um_per_px`` reads (the slide keeps it), so the check costs no read.

    Raises
    ------
    NotBrightfieldError
        Saying what the slide looks like and how to go on anyway.
    """
    share = light_fraction(slide.thumbnail(thumbnail_side(slide, mask_um_per_px)))
    if share < MIN_LIGHT_FRACTION:
        raise NotBrightfieldError(
            f"{slide.path.name} does not look like a bright-field H&E slide (only "
            f"{share:.1%} of it is light; a fluorescence scan is dark): the models predict "
            "from H&E only. If it is H&E, say so (--allow-non-brightfield)"
        )
