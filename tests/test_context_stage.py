"""The learnt ring stage's fitting (models/context_stage.py) and what ``models.ship`` would
write from the protocol's record: synthetic data, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.context_stage import apply_rings, fit_rings, ring_means
from napari_virtual_st.context import SpotContext


def _lattice(n: int, pitch_um: float = 200.0) -> np.ndarray:
    r, c = np.mgrid[0:n, 0:n]
    return np.column_stack([c.ravel(), r.ravel()]).astype(np.float64) * pitch_um


def _sections(seed: int, n_sections: int = 3) -> tuple[list, list, list]:
    """Labels smooth over ~2 spots; predictions = labels + independent per-spot noise, so
    averaging with the nearest ring helps gene 0 (noisy) and not gene 1 (noise-free)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    preds, labels, xy = [], [], []
    for _ in range(n_sections):
        field = gaussian_filter(rng.normal(size=(14, 14, 2)), sigma=(1.5, 1.5, 0)) * 4
        y = field.reshape(-1, 2)
        noise = rng.normal(size=y.shape) * np.array([1.0, 0.0])
        preds.append(y + noise)
        labels.append(y)
        xy.append(_lattice(14))
    return preds, labels, xy


def test_ring_means_count_the_lattice_rings() -> None:
    xy = _lattice(5)
    means, counts = ring_means(np.arange(25.0)[:, None], xy, [240.0, 340.0])
    centre = 12
    assert counts[:, centre].tolist() == [1, 4, 4]
    assert means[1, centre, 0] == pytest.approx(np.mean([7, 11, 13, 17]))
    assert counts[:, 0].tolist() == [1, 2, 1]  # a corner


def test_fitted_rings_smooth_the_noisy_gene_and_leave_the_clean_one() -> None:
    preds, labels, xy = _sections(0)
    ctx = fit_rings(preds, labels, xy, "per_gene", edges=(240.0, 340.0))
    a = np.asarray(ctx.coefficients)
    assert ctx.kind == "rings" and a.shape == (2, 3)
    assert a[0, 1] > 0.3  # the noisy gene leans on its neighbours
    assert a[1, 1:].max() < 0.05  # the noise-free gene keeps (nearly) its own value
    test_p, test_y, test_xy = _sections(1, 1)
    before = np.corrcoef(test_p[0][:, 0], test_y[0][:, 0])[0, 1]
    after = np.corrcoef(apply_rings(test_p[0], test_xy[0], ctx)[:, 0], test_y[0][:, 0])[0, 1]
    assert after > before + 0.05
    shared = fit_rings(preds, labels, xy, "shared", edges=(240.0, 340.0))
    np.testing.assert_array_equal(shared.coefficients[0], shared.coefficients[1])


def test_ship_writes_the_rings_only_when_they_beat_the_gaussian() -> None:
    from models.ship import chosen_context

    rings = SpotContext.rings([240.0], [[1.0, 0.2], [1.0, 0.7]])
    result = {
        "methods": {
            "nsl": {
                "context": {"sigma_chosen_on_all_C": 100.0},
                "learned_context": {
                    "loso_C_minus_gaussian_raw": {"verdict": "tie"},
                    "context_fitted_on_all_C": {"genes": ["A", "B"], **rings.as_dict()},
                },
            }
        }
    }
    assert chosen_context(result, "nsl", ["B", "A"]) == SpotContext(100.0, 250.0)
    result["methods"]["nsl"]["learned_context"]["loso_C_minus_gaussian_raw"]["verdict"] = "a"
    shipped = chosen_context(result, "nsl", ["B", "A"])
    assert shipped is not None and shipped.kind == "rings"
    assert shipped.coefficients == ((1.0, 0.7), (1.0, 0.2))  # in the model's gene order
    with pytest.raises(ValueError, match="lack gene 'C'"):
        chosen_context(result, "nsl", ["A", "C"])
    result["methods"]["nsl"]["learned_context"]["loso_C_minus_gaussian_raw"]["verdict"] = "b"
    result["methods"]["nsl"]["context"]["sigma_chosen_on_all_C"] = None
    assert chosen_context(result, "nsl", ["A", "B"]) is None
