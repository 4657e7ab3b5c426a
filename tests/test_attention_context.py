"""The attention stage's neighbourhoods and its network (models/attention_context.py; synthetic
positions and features)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")

from models import attention_context as ac  # noqa: E402


def test_a_neighbourhood_is_the_spot_itself_first_then_those_within_the_radius() -> None:
    xy = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0], [1000.0, 1000.0]])
    index, offsets, pad = ac.neighbourhoods(xy, 250.0)
    assert index.shape == (4, 3)  # padded to the largest neighbourhood
    assert list(index[0][~pad[0]]) == [0, 1, 2]  # itself first
    assert list(index[3][~pad[3]]) == [3]  # an isolated spot sees itself only
    np.testing.assert_array_equal(offsets[0][~pad[0]], [[0, 0], [200, 0], [0, 200]])
    assert (offsets[pad] == 0).all()
    own, _, own_pad = ac.neighbourhoods(xy, 0.0)
    assert own.shape == (4, 1) and not own_pad.any()


def test_a_spots_value_ignores_spots_beyond_the_radius_and_the_padding() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 8)).astype(np.float32)
    xy = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0], [2000.0, 0.0], [2200.0, 0.0]])
    net = ac.network(8, 3).eval()

    def values(xy_um: np.ndarray) -> np.ndarray:
        index, offsets, pad = ac.neighbourhoods(xy_um, ac.SETTINGS["radius_um"])
        with torch.no_grad():
            return net(*(torch.from_numpy(a) for a in (features, index, offsets, pad))).numpy()

    moved = xy.copy()
    moved[4] = [2000.0, 200.0]  # a far spot moves: spots 0-2 do not see it
    np.testing.assert_allclose(values(xy)[:3], values(moved)[:3], rtol=1e-6)
    assert not np.allclose(values(xy)[3], values(moved)[3])  # spot 3 sees where it went
