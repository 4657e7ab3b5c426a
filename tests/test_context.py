"""The fixed-kernel spot context: weights, renormalisation at edges and gaps, parsing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_virtual_st.context import (
    SpotContext,
    apply_context,
    context_weights,
    describe_values,
    spot_weights,
    spots_near,
)
from napari_virtual_st.errors import ModelError


def _row_of_spots(n: int, pitch_um: float = 100.0) -> np.ndarray:
    """Synthetic: ``n`` spots on a line, ``pitch_um`` apart."""
    return np.column_stack([np.arange(n) * pitch_um, np.zeros(n)])


def test_interior_spot_is_the_gaussian_weighted_mean_of_its_neighbours() -> None:
    xy = _row_of_spots(5)
    ctx = SpotContext(sigma_um=100.0, radius_um=150.0)
    values = np.array([[0.0], [1.0], [5.0], [2.0], [0.0]])
    out = apply_context(values, context_weights(xy, ctx))
    w = np.exp(-0.5)  # neighbours at one sigma
    assert out[2, 0] == pytest.approx((5.0 + w * 1.0 + w * 2.0) / (1 + 2 * w), rel=1e-6)


def test_edge_spot_renormalises_over_the_neighbours_it_has() -> None:
    xy = _row_of_spots(3)
    ctx = SpotContext(sigma_um=100.0, radius_um=150.0)
    values = np.full((3, 2), 4.0)
    out = apply_context(values, context_weights(xy, ctx))
    # A constant field stays constant at the edge: no shrinkage towards zero.
    np.testing.assert_allclose(out, 4.0, rtol=1e-6)


def test_isolated_spot_keeps_its_own_value() -> None:
    xy = np.array([[0.0, 0.0], [1000.0, 0.0]])
    out = apply_context(np.array([[3.0], [7.0]]), context_weights(xy, SpotContext(100.0, 200.0)))
    np.testing.assert_allclose(out[:, 0], [3.0, 7.0])


def test_missing_neighbours_are_left_out_and_missing_spots_stay_nan() -> None:
    xy = _row_of_spots(3)
    weights = context_weights(xy, SpotContext(sigma_um=100.0, radius_um=150.0))
    values = np.array([[2.0], [np.nan], [6.0]])
    out = apply_context(values, weights)
    assert out[0, 0] == pytest.approx(2.0)  # its only neighbour has no value yet
    assert np.isnan(out[1, 0])
    assert out[2, 0] == pytest.approx(6.0)


def test_subset_of_rows_matches_the_full_computation() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(60, 2))
    values = rng.normal(size=(60, 4))
    weights = context_weights(xy, SpotContext(sigma_um=80.0, radius_um=200.0))
    full = apply_context(values, weights)
    rows = np.array([3, 17, 42])
    np.testing.assert_allclose(apply_context(values, weights, rows), full[rows], rtol=1e-6)


def test_spots_near_lists_every_spot_within_the_radius() -> None:
    xy = _row_of_spots(6)
    weights = context_weights(xy, SpotContext(sigma_um=100.0, radius_um=150.0))
    np.testing.assert_array_equal(spots_near(weights, np.array([2])), [1, 2, 3])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"kind": "box", "sigma_um": 1, "radius_um": 2}', "kind 'box'"),
        ('{"sigma_um": -1, "radius_um": 2}', "sigma_um must be a positive"),
        ('{"sigma_um": 1}', "missing radius_um"),
        ('{"sigma_um": 1, "radius_um": 9e9}', "radius_um"),
        ('{"sigma_um": 1, "radius_um": 2, "k": 3}', "unknown key"),
        ("[1, 2]", "JSON object"),
        ("{", "not a JSON object"),
    ],
)
def test_malformed_context_metadata_is_refused_by_key(text: str, fragment: str) -> None:
    with pytest.raises(ModelError, match=r"vst\.context") as info:
        SpotContext.from_json(text)
    assert fragment in str(info.value)


def test_context_round_trips_through_its_metadata_text() -> None:
    ctx = SpotContext(sigma_um=150.0, radius_um=300.0)
    assert SpotContext.from_json(ctx.to_json()) == ctx


def test_a_spot_gets_the_same_bits_whichever_rows_are_computed_with_it() -> None:
    """What lets the viewer recompute a few spots per batch and still end on the store's values."""
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1000, size=(80, 2))
    values = rng.normal(size=(80, 3)).astype(np.float32)
    values[rng.random(80) < 0.2] = np.nan  # spots without a value yet
    weights = context_weights(xy, SpotContext(sigma_um=80.0, radius_um=200.0))
    full = apply_context(values, weights)
    for rows in (np.array([5]), np.arange(10, 30), slice(40, 80), spots_near(weights, [7, 8])):
        np.testing.assert_array_equal(apply_context(values, weights, rows), full[rows])


def test_the_level0_weights_are_the_micrometre_weights() -> None:
    xy_px = np.array([[0.0, 0.0], [200.0, 0.0], [900.0, 0.0]])
    ctx = SpotContext(sigma_um=100.0, radius_um=150.0)
    expected = context_weights(xy_px * 0.5, ctx).toarray()
    np.testing.assert_array_equal(spot_weights(xy_px, 0.5, ctx).toarray(), expected)
    assert expected[0, 1] == pytest.approx(np.exp(-0.5)) and expected[0, 2] == 0.0
    assert describe_values(None) == "per-tile"
    assert describe_values(ctx) == "contextual (Gaussian context, σ 100 µm within 150 µm)"
