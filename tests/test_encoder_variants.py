"""The frozen encoder's feature variants (``models/encoder_variants.py``): the stage features
are the encoder's own stage outputs, per-slide standardisation uses only the slide's own
features, each variant feeds the head what it says, and a missing cache is named.

Tiles and features here are synthetic (random, named as such); nothing reads HER2ST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import encoder_variants as ev
from models import frozen_encoder as fe


def test_stage_features_are_the_encoders_stage_outputs_averaged_over_space() -> None:
    import torch

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)  # synthetic
    net = fe.encoder()
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        net._blocks[i].register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, out.mean(dim=(2, 3)))
        )
        for i in ev.STAGE_ENDS
    ]
    try:
        with torch.no_grad():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
            net.features(net.normalise(x))
    finally:
        for hook in hooks:
            hook.remove()
    expected = torch.cat([seen[i] for i in ev.STAGE_ENDS], dim=1).numpy()
    got = ev.encode_stages(net, tiles, batch=2)
    assert got.shape == (3, 40 + 112 + 320)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_per_slide_standardisation_uses_only_the_slides_own_features() -> None:
    rng = np.random.default_rng(1)
    slide = rng.normal(5.0, 3.0, size=(50, 4))  # synthetic features
    slide[:, 2] = 7.0  # a constant feature
    z = ev.standardise_per_slide(slide)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(axis=0), 1.0)
    assert np.all(z[:, 2] == 0.0)
    # a slide scanned brighter and with more contrast (an affine shift) gives the same input
    np.testing.assert_allclose(ev.standardise_per_slide(2.0 * slide + 10.0), z, atol=1e-12)


def _write_caches(tmp_path: Path, name: str, px: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    last = rng.normal(size=(6, 1280)).astype(np.float32)  # synthetic
    stages = rng.normal(size=(6, 472)).astype(np.float32)
    np.savez(fe.features_path(name, px), feat=last, feat_low=last + 1)
    np.savez(ev.stages_path(name, px), feat=stages, feat_low=stages - 1)
    return last, stages


def test_each_variant_feeds_the_head_what_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    last, stages = _write_caches(tmp_path, "C9", 160)
    np.testing.assert_allclose(fe.cached_features("C9", 160, True), last + 1)
    multi = ev.loader("multilayer")("C9", 160, False)
    np.testing.assert_allclose(multi, np.concatenate([stages, last], axis=1))
    low = ev.loader("multilayer")("C9", 160, True)
    np.testing.assert_allclose(low, np.concatenate([stages - 1, last + 1], axis=1))
    np.testing.assert_allclose(
        ev.loader("per_slide")("C9", 160, False), ev.standardise_per_slide(last)
    )
    np.testing.assert_allclose(
        ev.loader("multilayer_per_slide")("C9", 160, False), ev.standardise_per_slide(multi)
    )
    assert ev.method_names("per_slide") == ("lite0_per_slide", "nsl_lite0_per_slide")
    with pytest.raises(ValueError, match="unknown variant 'colour'"):
        ev.loader("colour")


def test_a_missing_stage_cache_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fe, "ENCODER_CACHE", tmp_path)
    _write_caches(tmp_path, "C9", 160)
    ev.stages_path("C9", 160).unlink()
    assert ev.loader("per_slide")("C9", 160, False).shape == (6, 1280)  # needs no stages
    with pytest.raises(FileNotFoundError, match=r"stages_C9_160px\.npz.*encoder_variants extract"):
        ev.loader("multilayer")("C9", 160, False)
