"""Transforms from measured spatial transcriptomics pixels to slide level-0 pixels.

Three ways to get one:

(a) :func:`from_scale` — the measured data's full-resolution image *is* the slide (or a known
    rescaling of it), as with Space Ranger run on the same scan;
(b) :func:`fit_landmarks` — ≥ 3 corresponding points placed by the user, least-squares
    similarity (rotation + uniform scale + translation, Umeyama) or affine, with the residual;
(c) :func:`register_images` — automatic: the measured image is registered to the slide
    thumbnail by a search over rotation (and scale, when unknown) with phase correlation for
    the translation, scored by the normalised cross-correlation of tissue optical density.

Each returns a :class:`~napari_virtual_st.frames.Transform`: (x, y) *measured full-resolution
px* → (x, y) *slide level-0 px* (see :mod:`napari_virtual_st.frames` for the frames).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform, resize, rotate, warp

from napari_virtual_st.errors import ParameterError

# Transform (and the AlignmentError of its JSON) live in frames; importing them from here
# keeps working
from napari_virtual_st.frames import AlignmentError, Transform


def from_scale(scale: float, offset_xy: tuple[float, float] = (0.0, 0.0)) -> Transform:
    """Measured px × ``scale`` + ``offset_xy`` = slide level-0 px (same image, known rescaling)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ParameterError(f"scale factor must be a positive number; got {scale}")
    matrix = np.array([[scale, 0, offset_xy[0]], [0, scale, offset_xy[1]], [0, 0, 1]], np.float64)
    return Transform(
        matrix, "scale", info={"method": "scale", "scale": scale, "offset_xy": list(offset_xy)}
    )


def fit_landmarks(
    src_xy: ArrayLike, dst_xy: ArrayLike, kind: Literal["similarity", "affine"] = "similarity"
) -> Transform:
    """Least-squares transform taking landmarks ``src_xy`` (measured px) onto ``dst_xy`` (level-0 px).

    Parameters
    ----------
    src_xy, dst_xy
        ``(n, 2)`` corresponding points, n ≥ 3 (napari Points layers give (row, col) µm:
        convert with :mod:`napari_virtual_st.frames` first).
    kind
        ``similarity`` (rotation, uniform scale, translation) or ``affine``.

    Raises
    ------
    AlignmentError
        Fewer than 3 pairs, mismatched counts, or collinear points.
    """
    src = np.asarray(src_xy, np.float64).reshape(-1, 2)
    dst = np.asarray(dst_xy, np.float64).reshape(-1, 2)
    if len(src) != len(dst):
        raise AlignmentError(
            f"landmarks must come in pairs: {len(src)} on the measured image, {len(dst)} on the slide"
        )
    if len(src) < 3:
        raise AlignmentError(f"at least 3 landmark pairs are needed; got {len(src)}")
    centred = src - src.mean(axis=0)
    if np.linalg.matrix_rank(centred, tol=1e-6 * max(1.0, np.abs(centred).max())) < 2:
        raise AlignmentError("the landmarks lie on one line: place them spread over the tissue")
    if kind == "similarity":
        matrix = _umeyama(src, dst)
    elif kind == "affine":
        design = np.hstack([src, np.ones((len(src), 1))])
        solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
        matrix = np.eye(3)
        matrix[:2, :] = solution.T
    else:
        raise ParameterError(f"transform kind must be similarity or affine; got {kind!r}")
    transform = Transform(matrix, kind)
    residual = float(np.sqrt(np.mean(np.sum((transform.apply(src) - dst) ** 2, axis=1))))
    return Transform(
        matrix, kind, residual_px=residual, info={"method": "landmarks", "n_landmarks": len(src)}
    )


def _umeyama(src: NDArray[np.float64], dst: NDArray[np.float64]) -> NDArray[np.float64]:
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / s.var(axis=0).sum()
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rot
    matrix[:2, 2] = mu_d - scale * rot @ mu_s
    return matrix


def optical_density(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Mean optical density per pixel (tissue bright, glass dark), for registration."""
    return -np.log((np.asarray(rgb, np.float64)[..., :3] + 1.0) / 256.0).mean(axis=-1)


def register_images(
    moving_rgb: NDArray[np.uint8],
    fixed_rgb: NDArray[np.uint8],
    *,
    moving_px_per_fixed_px: float | None = None,
    scales: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.25),
    angle_step_deg: float = 6.0,
    work_px: int = 128,
    refine_px: int = 256,
) -> Transform:
    """Register ``moving_rgb`` (measured image) onto ``fixed_rgb`` (slide thumbnail).

    Parameters
    ----------
    moving_rgb, fixed_rgb
        RGB images; tissue must be darker than the background (brightfield H&E).
    moving_px_per_fixed_px
        Known scale (moving pixels per fixed pixel), e.g. from both images' µm/px; when
        ``None``, ``scales`` times the ratio of the images' tissue extents is searched.
    scales
        Relative scale factors tried around the initial estimate.
    angle_step_deg
        Coarse rotation step of the search.
    work_px
        Longer side of the images during the coarse search.
    refine_px
        Longer side of the images during the final refinement (rotation, scale and
        translation optimised together for the best normalised cross-correlation).

    Returns
    -------
    Transform
        Moving (x, y) px → fixed (x, y) px (full resolution of the images given), with
        ``quality`` the normalised cross-correlation
        of the aligned optical-density images (≈ 1 is a perfect match, < 0.5 deserves a look).
    """
    fixed_od = optical_density(fixed_rgb)
    moving_od = optical_density(moving_rgb)
    if fixed_od.std() < 1e-3 or moving_od.std() < 1e-3:
        raise AlignmentError("an image to register is blank (no tissue contrast)")
    f_down = work_px / max(fixed_od.shape)
    fixed_small = resize(
        fixed_od,
        (round(fixed_od.shape[0] * f_down), round(fixed_od.shape[1] * f_down)),
        anti_aliasing=True,
    )
    if moving_px_per_fixed_px is None:
        base = math.sqrt(_tissue_area(moving_od) / max(_tissue_area(fixed_od), 1.0))
        candidates = [base * s for s in scales]
    else:
        candidates = [float(moving_px_per_fixed_px)]
    best: tuple[float, float, float, NDArray[np.float64]] | None = None
    for rel in candidates:
        # moving rescaled into the fixed-small frame: moving px → fixed px is 1/rel, then × f_down
        m_down = f_down / rel
        shape = (
            max(8, round(moving_od.shape[0] * m_down)),
            max(8, round(moving_od.shape[1] * m_down)),
        )
        moving_small = resize(moving_od, shape, anti_aliasing=True)
        for angle in np.arange(-180.0, 180.0, angle_step_deg):
            score, shift = _score(moving_small, fixed_small, float(angle))
            if best is None or score > best[0]:
                best = (score, angle, m_down, shift)
    assert best is not None
    _, angle, m_down, shift = best
    coarse = _compose(moving_od.shape, m_down, angle, shift, fixed_od.shape, fixed_small.shape)
    matrix, score = _refine_similarity(moving_od, fixed_od, coarse, refine_px)
    return Transform(
        matrix,
        "similarity",
        quality=float(score),
        info={
            "method": "register_images",
            "coarse_angle_deg": float(angle),
            "work_px": work_px,
            "refine_px": refine_px,
        },
    )


def _refine_similarity(
    moving_od: NDArray[np.float64],
    fixed_od: NDArray[np.float64],
    start: NDArray[np.float64],
    work_px: int,
) -> tuple[NDArray[np.float64], float]:
    """Polish a similarity transform by maximising the NCC of the warped optical densities."""
    from scipy.optimize import minimize

    f = min(1.0, work_px / max(fixed_od.shape))
    m = min(1.0, work_px / max(moving_od.shape))
    fixed_small = resize(
        fixed_od,
        (max(8, round(fixed_od.shape[0] * f)), max(8, round(fixed_od.shape[1] * f))),
        anti_aliasing=True,
    )
    moving_small = resize(
        moving_od,
        (max(8, round(moving_od.shape[0] * m)), max(8, round(moving_od.shape[1] * m))),
        anti_aliasing=True,
    )
    to_fixed_small = _resize_matrix(fixed_od.shape, fixed_small.shape)
    from_moving_small = np.linalg.inv(_resize_matrix(moving_od.shape, moving_small.shape))
    b = fixed_small.ravel() - fixed_small.mean()
    b_norm = np.linalg.norm(b) + 1e-12

    scale0 = math.sqrt(abs(np.linalg.det(start[:2, :2])))
    angle0 = math.atan2(start[1, 0], start[0, 0])
    centre = np.array([(moving_od.shape[1] - 1) / 2, (moving_od.shape[0] - 1) / 2, 1.0])
    target0 = start @ centre  # where the moving centre lands: a well-conditioned translation

    def matrix_of(p: NDArray[np.float64]) -> NDArray[np.float64]:
        angle, log_scale, tx, ty = p
        sc = scale0 * math.exp(log_scale)
        rot = np.array(
            [
                [math.cos(angle0 + angle), -math.sin(angle0 + angle)],
                [math.sin(angle0 + angle), math.cos(angle0 + angle)],
            ]
        )
        out = np.eye(3)
        out[:2, :2] = sc * rot
        out[:2, 2] = target0[:2] + np.array([tx, ty]) - sc * rot @ centre[:2]
        return out

    def cost(p: NDArray[np.float64]) -> float:
        full = to_fixed_small @ matrix_of(p) @ from_moving_small  # moving small → fixed small
        warped = warp(
            moving_small,
            AffineTransform(matrix=np.linalg.inv(full)),
            output_shape=fixed_small.shape,
            order=1,
            cval=0.0,
        )
        a = warped.ravel() - warped.mean()
        return -float(a @ b / ((np.linalg.norm(a) + 1e-12) * b_norm))

    step = max(fixed_od.shape) / work_px
    result = minimize(
        cost,
        np.zeros(4),
        method="Powell",
        options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 600},
        bounds=[(-0.2, 0.2), (-0.3, 0.3), (-20 * step, 20 * step), (-20 * step, 20 * step)],
    )
    return matrix_of(result.x), -float(result.fun)


def _tissue_area(od: NDArray[np.float64]) -> float:
    return float((od > max(0.1, od.mean())).sum())


def _padded_rotation(
    image: NDArray[np.float64], angle: float, shape: tuple[int, int]
) -> NDArray[np.float64]:
    rotated = rotate(image, angle, resize=True, order=1, mode="constant", cval=0.0)
    out = np.zeros(shape)
    h, w = min(rotated.shape[0], shape[0]), min(rotated.shape[1], shape[1])
    out[:h, :w] = rotated[:h, :w]
    return out


def _score(
    moving: NDArray[np.float64], fixed: NDArray[np.float64], angle: float
) -> tuple[float, NDArray[np.float64]]:
    diagonal = math.ceil(math.hypot(*moving.shape))
    size = (fixed.shape[0] + diagonal, fixed.shape[1] + diagonal)
    canvas_f = np.zeros(size)
    canvas_f[: fixed.shape[0], : fixed.shape[1]] = fixed
    canvas_m = _padded_rotation(moving, angle, size)
    shift, _, _ = phase_cross_correlation(canvas_f, canvas_m, normalization=None)
    aligned = np.roll(canvas_m, tuple(round(float(s)) for s in shift), axis=(0, 1))
    a, b = aligned.ravel(), canvas_f.ravel()
    a, b = a - a.mean(), b - b.mean()
    ncc = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return ncc, np.asarray(shift, np.float64)


def _compose(
    moving_shape: tuple[int, ...],
    m_down: float,
    angle: float,
    shift_rc: NDArray[np.float64],
    fixed_shape: tuple[int, ...],
    fixed_small_shape: tuple[int, ...],
) -> NDArray[np.float64]:
    """Moving full px → fixed full px, replaying the search: resize, rotate, roll, resize back."""
    h, w = max(8, round(moving_shape[0] * m_down)), max(8, round(moving_shape[1] * m_down))
    down = _resize_matrix(moving_shape, (h, w))
    # skimage.transform.rotate(resize=True): turn about the centre ((w-1)/2, (h-1)/2) by
    # `angle` counter-clockwise on screen, then shift so the turned corners start at 0
    rot = AffineTransform(rotation=-math.radians(angle)).params
    centre = np.array([[1, 0, -(w - 1) / 2], [0, 1, -(h - 1) / 2], [0, 0, 1]])
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64).T
    turned = rot @ centre @ corners
    offset = np.array([[1, 0, -turned[0].min()], [0, 1, -turned[1].min()], [0, 0, 1]])
    roll = np.array([[1, 0, shift_rc[1]], [0, 1, shift_rc[0]], [0, 0, 1]])
    up = _resize_matrix(fixed_small_shape, fixed_shape)
    return up @ roll @ offset @ rot @ centre @ down


def _resize_matrix(src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Pixel-centre mapping of skimage.transform.resize from ``src_shape`` to ``dst_shape``."""
    sy, sx = dst_shape[0] / src_shape[0], dst_shape[1] / src_shape[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def warp_to_fixed(
    moving_rgb: NDArray[np.uint8], transform: Transform, fixed_shape: tuple[int, int]
) -> NDArray[np.uint8]:
    """The moving image resampled into the fixed frame (for an overlay check)."""
    inverse = AffineTransform(matrix=np.linalg.inv(transform.matrix))
    out = warp(
        moving_rgb, inverse, output_shape=fixed_shape, order=1, cval=1.0, preserve_range=False
    )
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
