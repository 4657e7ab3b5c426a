"""Measured ST in the viewer: placement through an alignment, and the slow jobs behind the
Measured ST widget (registration, comparison; the prediction at the measured spots is an
ordinary :func:`napari_virtual_st.run.run` with explicit spots).

No Qt here. Frames:

- *measured full-res px* (x, y): the spot centres of :class:`~napari_virtual_st.measured.MeasuredST`;
- *measured image px* (row, col): pixels of the image that came with the data (a Space
  Ranger ``hires``/``lowres`` PNG is the full-res frame times its scale factor);
- *level-0 px* (x, y) of the slide, and the napari world, (row, col) µm, converted only by
  :mod:`napari_virtual_st.frames`.

A :class:`~napari_virtual_st.frames.Transform` maps full-res px → level-0 px; the layers built
here place the measured image and spots through it, so a new alignment only changes their
``affine`` and positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from napari_virtual_st import frames
from napari_virtual_st.align import register_images, warp_to_fixed
from napari_virtual_st.compare import Comparison, compare
from napari_virtual_st.errors import ParameterError, VirtualSTError
from napari_virtual_st.frames import Transform, yx_um_to_xy_level0_px
from napari_virtual_st.grid import (
    ST_PITCH_UM,
    VISIUM_PITCH_UM,
    SpotGrid,
)
from napari_virtual_st.heatmap import HeatmapGeometry, lattice_geometry, robust_limits
from napari_virtual_st.measured import MeasuredDataError, MeasuredST
from napari_virtual_st.slide import Slide
from napari_virtual_st.store import PredictionStore

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Image names that may come with measured data, the preferred first.
IMAGE_PREFERENCE = ("hires", "fullres", "lowres")
#: Longer side (px) of the images the automatic registration works on.
REGISTER_PX = 512
MEASURED_COLORMAP = "viridis"


# -- geometry ---------------------------------------------------------------------------------
def spot_diameter_um(measured: MeasuredST) -> float:
    """Physical spot diameter of the technology (Visium 55 µm, legacy ST 100 µm)."""
    return measured.spot_diameter_um


def lattice_kind(measured: MeasuredST) -> tuple[str, float] | None:
    """The spot lattice of the data (kind, pitch µm), or ``None`` without lattice indices."""
    if (measured.array_rc < 0).any():
        return None
    if measured.source == "legacy_st":
        return "st", ST_PITCH_UM
    return "visium", VISIUM_PITCH_UM


def spots_yx_um(measured: MeasuredST, transform: Transform, mpp: float) -> NDArray[np.float64]:
    """``(n, 2)`` measured spot centres in the napari world, (row, col) µm, through ``transform``."""
    return frames.fullres_xy_to_yx_um(measured.xy_fullres_px, transform, mpp)


def image_px_per_fullres_px(measured: MeasuredST, image_name: str) -> float:
    """Pixels of one of the data's images per full-resolution pixel."""
    if image_name == "fullres":
        return 1.0
    key = f"tissue_{image_name}_scalef"
    if key not in measured.scalefactors:
        raise MeasuredDataError(f"the data has a {image_name} image but no {key} scale factor")
    return float(measured.scalefactors[key])


def choose_image(measured: MeasuredST) -> str | None:
    """The name of the image to show and register (``hires`` first), or ``None``."""
    for name in IMAGE_PREFERENCE:
        if name in measured.images and Path(measured.images[name]).is_file():
            return name
    return None


def image_affine(transform: Transform, mpp: float, image_scale: float) -> NDArray[np.float64]:
    """The napari ``affine`` of a measured image layer: image (row, col) px → world (row, col) µm.

    Parameters
    ----------
    transform
        Measured full-res px → slide level-0 px.
    mpp
        The slide's µm per level-0 px.
    image_scale
        Image px per full-res px (:func:`image_px_per_fullres_px`).
    """
    return frames.image_rc_to_yx_um_matrix(transform, mpp, image_scale)


def image_rc_to_fullres_xy(rc_px: ArrayLike, image_scale: float) -> NDArray[np.float64]:
    """Points on a measured image, (row, col) image px → (x, y) measured full-res px."""
    return frames.image_rc_to_fullres_xy(rc_px, image_scale)


def landmark_pairs(
    slide_yx_um: ArrayLike, image_rc_px: ArrayLike, mpp: float, image_scale: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Landmarks as the fit wants them: (measured full-res px, slide level-0 px), (x, y).

    Parameters
    ----------
    slide_yx_um
        Points placed on the slide, napari world (row, col) µm.
    image_rc_px
        Points placed on the measured image, that layer's data frame (row, col) image px.
    mpp, image_scale
        The slide's µm/px; the image's px per full-res px.
    """
    return image_rc_to_fullres_xy(image_rc_px, image_scale), yx_um_to_xy_level0_px(
        slide_yx_um, mpp
    )


def measured_grid(measured: MeasuredST, transform: Transform, mpp: float) -> SpotGrid:
    """The measured spots as an explicit grid on the slide (level-0 px), carrying their ids
    and lattice indices, so a prediction made on it joins the measured data by id."""
    return measured.spot_grid(mpp, transform)


# -- values ------------------------------------------------------------------------------------
def library_sizes(measured: MeasuredST) -> NDArray[np.float64]:
    """Total counts per spot over all genes (the CP10k denominator)."""
    return np.asarray(measured.counts.sum(axis=1), np.float64).reshape(-1)


def measured_values(
    measured: MeasuredST,
    gene: str,
    library: NDArray[np.float64] | None = None,
    *,
    columns: sp.csc_matrix | None = None,
) -> NDArray[np.float32]:
    """``(n_spots,)`` log1p CP10k of one gene (the models' target), library over all genes.

    ``library`` (:func:`library_sizes`) and ``columns`` (the counts as CSC, fast to slice by
    gene) can be computed once and passed in.

    Raises
    ------
    ParameterError
        If the measured data has no such gene.
    """
    try:
        column = measured.genes.index(gene)
    except ValueError:
        raise ParameterError(f"the measured data has no gene {gene!r}") from None
    library = library_sizes(measured) if library is None else library
    counts = (measured.counts if columns is None else columns)[:, column]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = np.asarray(counts, np.float64).reshape(-1)
    scaled = np.divide(counts * 1e4, library, out=np.zeros_like(counts), where=library > 0)
    return np.log1p(scaled).astype(np.float32)


def value_geometry(
    kind: tuple[str, float] | None, lattice_rc: ArrayLike, yx_um: ArrayLike
) -> HeatmapGeometry | None:
    """The heatmap geometry of spots when they sit on their lattice (the Gene browser's
    rule); ``None`` means: draw them as spots (rotated or irregular arrays, no indices)."""
    if kind is None:
        return None
    try:
        return lattice_geometry(kind[0], lattice_rc, yx_um, kind[1])
    except ParameterError:
        return None


def measured_value_layer_data(
    measured: MeasuredST,
    gene: str,
    values: NDArray[np.float32],
    yx_um: NDArray[np.float64],
    *,
    geometry: HeatmapGeometry | None,
    opacity: float = 0.65,
) -> LayerDataTuple:
    """The measured values of one gene: a heatmap image when the spots sit on a lattice,
    else a points layer of the spots coloured by value (as predictions are shown)."""
    limits = robust_limits(values)
    meta = {"vst": {"role": "measured-values", "gene": gene}}
    name = f"{gene} measured"
    if geometry is not None:
        kwargs: dict[str, Any] = {
            "name": name,
            "scale": geometry.scale_um,
            "translate": geometry.translate_um,
            "units": "um",
            "colormap": MEASURED_COLORMAP,
            "contrast_limits": limits,
            "opacity": opacity,
            "blending": "translucent",
            "interpolation2d": "nearest",
            "metadata": meta,
        }
        return geometry.rasterise(values), kwargs, "image"
    kwargs = {
        "name": name,
        "features": {"spot": list(measured.spot_ids), "measured": values},
        "size": spot_diameter_um(measured),
        "face_color": "measured",
        "face_colormap": MEASURED_COLORMAP,
        "face_contrast_limits": limits,
        "border_width": 0,
        "units": "um",
        "opacity": opacity,
        "metadata": meta,
    }
    return yx_um.copy(), kwargs, "points"


# -- jobs for worker threads -------------------------------------------------------------------
@dataclass(frozen=True)
class Registration:
    """An automatic registration of the measured image to the slide thumbnail.

    Attributes
    ----------
    transform
        Measured full-res px → slide level-0 px, ``quality`` the NCC score.
    overlay
        The measured image warped into the thumbnail's frame (RGB uint8), for checking.
    overlay_scale_um, overlay_translate_um
        Where the overlay goes in the world (napari ``scale`` and ``translate``, (row, col) µm).
    """

    transform: Transform
    overlay: NDArray[np.uint8]
    overlay_scale_um: tuple[float, float]
    overlay_translate_um: tuple[float, float]


def _resample_matrix(
    from_shape: tuple[int, ...], to_shape: tuple[int, ...]
) -> NDArray[np.float64]:
    """(x, y) pixel-centre map from an image of ``from_shape`` to a resampled ``to_shape``."""
    sy, sx = to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def register_to_slide(
    slide_path: Path,
    mpp: float,
    image_path: Path,
    image_scale: float,
    *,
    fullres_to_level0: float | None = None,
    work_px: int = REGISTER_PX,
) -> Registration:
    """Register the measured image onto the slide's thumbnail (rotation, scale, translation).

    Parameters
    ----------
    slide_path, mpp
        The slide and its µm per level-0 px.
    image_path, image_scale
        The measured data's image and its px per full-res px.
    fullres_to_level0
        Level-0 px per measured full-res px when known (e.g. both µm/px known): the scale is
        then not searched, which is faster and safer.
    work_px
        Longer side of both images during the registration.
    """
    from PIL import Image
    from skimage.transform import resize

    with Slide(slide_path, mpp=mpp) as slide:
        thumb = slide.thumbnail(work_px)
        dims = slide.dimensions
    try:
        with Image.open(image_path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise MeasuredDataError(
            f"cannot read the measured image {image_path.name}: {exc}"
        ) from exc
    factor = min(1.0, work_px / max(rgb.shape[:2]))
    small_shape = (max(8, round(rgb.shape[0] * factor)), max(8, round(rgb.shape[1] * factor)))
    small = np.clip(resize(rgb, small_shape, anti_aliasing=True) * 255 + 0.5, 0, 255).astype(
        np.uint8
    )
    # full-res px → image px → small px, and thumbnail px → level-0 px
    fullres_to_small = _resample_matrix(rgb.shape, small.shape) @ np.diag(
        [image_scale, image_scale, 1.0]
    )
    thumb_to_level0 = np.linalg.inv(_resample_matrix((dims[1], dims[0]), thumb.shape))
    known = None
    if fullres_to_level0 is not None:
        small_per_fullres = fullres_to_small[0, 0]
        thumb_per_level0 = 1.0 / thumb_to_level0[0, 0]
        known = small_per_fullres / (fullres_to_level0 * thumb_per_level0)
    found = register_images(small, thumb, moving_px_per_fixed_px=known)
    matrix = thumb_to_level0 @ found.matrix @ fullres_to_small
    transform = Transform(
        matrix,
        "similarity",
        quality=found.quality,
        info={**found.info, "method": "register_images", "work_px": work_px},
    )
    overlay = warp_to_fixed(small, found, thumb.shape[:2])
    scale_um = (thumb_to_level0[1, 1] * mpp, thumb_to_level0[0, 0] * mpp)
    translate_um = (thumb_to_level0[1, 2] * mpp, thumb_to_level0[0, 2] * mpp)
    return Registration(transform, overlay, scale_um, translate_um)


def compare_store(store_path: Path, measured: MeasuredST, transform: Transform) -> Comparison:
    """:func:`~napari_virtual_st.compare.compare` of a store on disk with measured data."""
    store = PredictionStore.open(store_path)
    if not store.done.all():
        raise VirtualSTError(
            f"{store_path.name} is unfinished ({int(store.done.sum())} of {store.n_spots} "
            "spots predicted): predict at the measured spots first"
        )
    return compare(store, measured, transform)


def describe_transform(transform: Transform, mpp: float) -> str:
    """One line about an alignment: method, scale, rotation, residual (µm) or quality."""
    method = str(transform.info.get("method", transform.kind))
    names = {
        "scale": "scale factor",
        "landmarks": "landmarks",
        "register_images": "automatic registration",
    }
    parts = [
        names.get(method, method),
        f"scale {transform.scale:.4g}",
        f"rotation {transform.rotation_deg:+.2f}°",
    ]
    residual = transform.residual_um(mpp)
    if residual is not None:
        n = transform.info.get("n_landmarks")
        parts.append(f"residual {residual:.1f} µm RMS" + (f" over {n} pairs" if n else ""))
    if transform.quality is not None:
        parts.append(f"quality {transform.quality:.3f}")
    return " · ".join(parts)


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite float (table cells show a dash otherwise)."""
    return isinstance(value, (int, float)) and math.isfinite(value)
