"""Alignment of measured ST pixels to slide level-0 pixels: scale, landmarks, automatic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.transform import AffineTransform, warp

from napari_virtual_st.align import (
    AlignmentError,
    Transform,
    fit_landmarks,
    from_scale,
    register_images,
    warp_to_fixed,
)
from napari_virtual_st.slide import Slide


def test_a_scale_factor_maps_hires_pixels_to_level0() -> None:
    t = from_scale(1 / 0.150015)  # Space Ranger tissue_hires_scalef
    np.testing.assert_allclose(t.apply([[150.015, 300.03]]), [[1000.0, 2000.0]])
    np.testing.assert_allclose(t.inverse().apply(t.apply([[3.0, 4.0]])), [[3.0, 4.0]])
    with pytest.raises(ValueError, match="positive"):
        from_scale(0)


def test_a_transform_round_trips_through_json() -> None:
    t = fit_landmarks([[0, 0], [10, 0], [0, 10], [5, 7]], [[1, 2], [21, 2], [1, 22], [11, 16]])
    back = Transform.from_json(t.to_json())
    np.testing.assert_allclose(back.matrix, t.matrix)
    assert back.kind == "similarity" and back.residual_px == pytest.approx(t.residual_px)
    with pytest.raises(AlignmentError, match="not a saved alignment"):
        Transform.from_json("{}")
    with pytest.raises(AlignmentError, match="invertible"):
        Transform.from_json('{"matrix": [[0,0,0],[0,0,0],[0,0,1]]}')


def test_similarity_landmarks_recover_rotation_scale_translation_with_zero_residual() -> None:
    true = AffineTransform(scale=2.5, rotation=np.deg2rad(30), translation=(100, -50))
    src = np.array([[0, 0], [100, 0], [0, 80], [60, 70], [30, 10]], float)
    t = fit_landmarks(src, true(src), kind="similarity")
    np.testing.assert_allclose(t.matrix, true.params, atol=1e-9)
    assert t.residual_px == pytest.approx(0, abs=1e-9)
    assert t.rotation_deg == pytest.approx(30) and t.scale == pytest.approx(2.5)
    assert t.residual_um(0.5) == pytest.approx(0, abs=1e-9)


def test_affine_landmarks_recover_a_shear_and_report_the_residual_of_noisy_points() -> None:
    true = AffineTransform(matrix=np.array([[1.2, 0.3, 5], [-0.1, 0.9, 7], [0, 0, 1]]))
    src = np.random.default_rng(0).uniform(0, 500, (12, 2))
    dst = true(src)
    np.testing.assert_allclose(
        fit_landmarks(src, dst, kind="affine").matrix, true.params, atol=1e-8
    )
    noisy = dst + np.random.default_rng(1).normal(0, 2.0, dst.shape)
    assert 0.5 < fit_landmarks(src, noisy, kind="affine").residual_px < 4.0


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ([[0, 0], [1, 1]], [[0, 0], [1, 1]], "at least 3 landmark pairs"),
        ([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1]], "must come in pairs"),
        ([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]], "lie on one line"),
    ],
)
def test_bad_landmarks_are_refused_with_a_clear_message(
    src: list, dst: list, message: str
) -> None:
    with pytest.raises(AlignmentError, match=message):
        fit_landmarks(src, dst)


def test_automatic_registration_recovers_a_known_warp_of_a_real_slide(cmu_small_svs: Path) -> None:
    """The real CMU thumbnail, synthetically rotated 17°, scaled 1/0.7 and shifted, is
    registered back; tolerance: 1.5 px (0.5 % of the 300 px thumbnail) at every test point."""
    with Slide(cmu_small_svs) as slide:
        fixed = slide.thumbnail(300)
    true = AffineTransform(scale=1 / 0.7, rotation=np.deg2rad(17.0), translation=(30, -20))
    moving = (warp(fixed, true, output_shape=(260, 280), cval=1.0) * 255).astype(np.uint8)
    estimate = register_images(moving, fixed)
    points = np.array([[x, y] for x in range(60, 240, 30) for y in range(60, 220, 30)], float)
    error = np.linalg.norm(estimate.apply(points) - true(points), axis=1)
    assert error.max() < 1.5
    assert estimate.rotation_deg == pytest.approx(17.0, abs=0.5)
    assert estimate.quality is not None and estimate.quality > 0.9
    overlay = warp_to_fixed(moving, estimate, fixed.shape[:2])
    assert overlay.shape == fixed.shape


def test_registration_of_a_blank_image_is_refused() -> None:
    blank = np.full((50, 50, 3), 255, np.uint8)
    tissue = np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8)
    with pytest.raises(AlignmentError, match="blank"):
        register_images(blank, tissue)
