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


# -- the learnt kind: per-gene weights per distance ring ------------------------------------


def _lattice(n: int, pitch_um: float = 200.0) -> np.ndarray:
    """Synthetic: an ``n`` × ``n`` square lattice, as HER2ST's legacy ST spots."""
    r, c = np.mgrid[0:n, 0:n]
    return np.column_stack([c.ravel(), r.ravel()]).astype(np.float64) * pitch_um


#: Ring edges between the distances of a 200 µm square lattice (200, 283, 400, 447, 566 µm).
EDGES = (240.0, 340.0, 420.0, 500.0)
RING_UM = (0.0, 200.0, 200.0 * np.sqrt(2), 400.0, 200.0 * np.sqrt(5))


def _gaussian_rings(sigma: float, n_genes: int) -> SpotContext:
    a = np.exp(-np.square(RING_UM) / (2 * sigma**2))
    return SpotContext.rings(EDGES, np.tile(a, (n_genes, 1)))


@pytest.mark.parametrize("gaps", [False, True])
def test_rings_with_the_gaussians_ring_weights_give_the_gaussian(gaps: bool) -> None:
    """Everywhere, the lattice's edges and a progressive run's gaps included."""
    rng = np.random.default_rng(2)
    xy = _lattice(9)
    values = rng.normal(size=(len(xy), 3))
    if gaps:
        values[rng.random(len(xy)) < 0.3] = np.nan
    gaussian = apply_context(values, context_weights(xy, SpotContext(200.0, 500.0)))
    rings = apply_context(values, context_weights(xy, _gaussian_rings(200.0, 3)))
    np.testing.assert_allclose(rings, gaussian, rtol=1e-6, equal_nan=True)
    assert np.isnan(rings).any() == gaps


def test_rings_weigh_each_gene_with_its_own_coefficients() -> None:
    xy = _row_of_spots(3, pitch_um=200.0)  # spot 1 has two neighbours in ring 1
    values = np.array([[1.0, 1.0], [4.0, 4.0], [7.0, 7.0]])
    ctx = SpotContext.rings([240.0], [[1.0, 0.0], [1.0, 0.5]])  # gene 0: itself only
    out = apply_context(values, context_weights(xy, ctx))
    np.testing.assert_allclose(out[:, 0], values[:, 0])
    assert out[1, 1] == pytest.approx((4.0 + 0.5 * 1.0 + 0.5 * 7.0) / 2.0)
    # the edge spot: its one neighbour, renormalised (a constant field would stay constant)
    assert out[0, 1] == pytest.approx((1.0 + 0.5 * 4.0) / 1.5)
    # a subset of the genes, as a store reads them, uses those genes' weights
    np.testing.assert_allclose(
        apply_context(values[:, [1]], context_weights(xy, ctx), columns=[1]), out[:, [1]]
    )


def test_a_gene_with_no_weight_on_what_is_there_keeps_its_own_value() -> None:
    xy = _row_of_spots(3, pitch_um=1000.0)  # nobody within 240 µm
    ctx = SpotContext.rings([240.0], [[0.0, 1.0]])  # neighbours only
    out = apply_context(np.array([[1.0], [2.0], [np.nan]]), context_weights(xy, ctx))
    np.testing.assert_array_equal(out[:2, 0], [1.0, 2.0])
    assert np.isnan(out[2, 0])


def test_rings_give_a_spot_the_same_bits_whichever_rows_are_computed_with_it() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 2000, size=(120, 2))
    values = rng.normal(size=(120, 70)).astype(np.float32)  # more than one gene block
    values[rng.random(120) < 0.2] = np.nan
    ctx = SpotContext.rings(EDGES, rng.uniform(0.0, 1.0, size=(70, 5)))
    weights = context_weights(xy, ctx)
    full = apply_context(values, weights)
    for rows in (np.array([5]), np.arange(10, 30), slice(40, 120), spots_near(weights, [7, 8])):
        np.testing.assert_array_equal(apply_context(values, weights, rows), full[rows])
    np.testing.assert_array_equal(
        spots_near(weights, [0]), np.flatnonzero(np.hypot(*(xy - xy[0]).T) <= 500.0)
    )


def test_a_rings_context_round_trips_and_describes_itself() -> None:
    ctx = _gaussian_rings(150.0, 2)
    again = SpotContext.from_json(ctx.to_json())
    assert again == ctx and again.n_genes == 2 and again.radius_um == 500.0
    assert describe_values(ctx).startswith("contextual (learnt ring context")
    with pytest.raises(ValueError, match="weights for 2"):
        apply_context(np.ones((4, 3)), context_weights(_lattice(2), ctx))


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"ring_edges_um": [240], "coefficients": [[1, -0.5]]}, "negative"),
        ({"ring_edges_um": [240], "coefficients": [[1, float("nan")]]}, "not a finite"),
        ({"ring_edges_um": [240], "coefficients": [[1, 0.5, 0.2]]}, "needs 2"),
        ({"ring_edges_um": [240], "coefficients": [[0, 0]]}, "all 0"),
        ({"ring_edges_um": [340, 240], "coefficients": [[1, 1, 1]]}, "ascend"),
        ({"ring_edges_um": [], "coefficients": [[1]]}, "at least one"),
        ({"ring_edges_um": [240], "coefficients": "x"}, "one row per gene"),
        ({"ring_edges_um": [240], "coefficients": []}, "one row per gene"),
        ({"ring_edges_um": [240], "radius_um": 300, "coefficients": [[1, 1]]}, "last ring"),
        ({"ring_edges_um": [240], "coefficients": [[1, 1]], "sigma_um": 9}, "unknown key"),
        ({"coefficients": [[1, 1]]}, "missing ring_edges_um"),
    ],
)
def test_malformed_rings_metadata_is_refused_by_key(record: dict, fragment: str) -> None:
    import json

    with pytest.raises(ModelError, match=r"vst\.context") as info:
        SpotContext.from_json(json.dumps({"kind": "rings", **record}))
    assert fragment in str(info.value)


def test_both_ways_of_computing_rings_agree() -> None:
    """Few distinct weight sets: one matrix per set; many: one sum per ring. Same values."""
    rng = np.random.default_rng(4)
    xy = _lattice(8)
    values = rng.normal(size=(len(xy), 6))
    values[rng.random(len(xy)) < 0.25] = np.nan
    coefficients = rng.uniform(0.0, 1.0, size=(6, 5))
    many = context_weights(xy, SpotContext.rings(EDGES, coefficients))
    assert not many.grouped
    out = apply_context(values, many)
    for g in range(6):
        one = context_weights(xy, SpotContext.rings(EDGES, coefficients[[g]]))
        assert one.grouped
        np.testing.assert_allclose(
            apply_context(values[:, [g]], one)[:, 0], out[:, g], rtol=1e-6, equal_nan=True
        )
        np.testing.assert_array_equal(
            apply_context(values[:, [g]], many, columns=[g])[:, 0], out[:, g]
        )
