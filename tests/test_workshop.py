"""The model workshop: protocol metrics, baselines, NSL training and the shipped model's record.

Training tests use a tiny subset of the real HER2ST data (skipped where ../shared/data is absent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from her2st import workshop_data as _her2st
from models.workshop.metrics import gene_sets, neighbourhood_mean, pearson_per_gene, score

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")


def test_pearson_is_zero_for_constant_predictions_and_one_for_perfect_ones() -> None:
    true = np.random.default_rng(0).normal(size=(30, 4))
    assert np.allclose(pearson_per_gene(true * 2 + 1, true), 1.0)
    assert np.all(pearson_per_gene(np.ones_like(true) * 0.3, true) == 0.0)


def test_neighbourhood_mean_averages_the_3x3_array_neighbours_present() -> None:
    rc = np.array([[0, 0], [0, 1], [1, 1], [5, 5]])
    values = np.array([[1.0], [2.0], [3.0], [10.0]])
    out = neighbourhood_mean(values, rc)
    np.testing.assert_allclose(out[:, 0], [2.0, 2.0, 2.0, 10.0])


def test_gene_sets_are_chosen_on_training_targets() -> None:
    train = np.zeros((10, 60))
    train[:, 59] = np.arange(10)  # most variable
    train[:, 3] = 100  # highest mean
    sets = gene_sets(train, [f"g{i}" for i in range(60)], k=1)
    assert sets["HEG1"] == [3] and sets["HVG1"] == [59]
    scores = score(train + 1, train, sets)
    assert scores["MSE"] == pytest.approx(1.0)


def test_tiles_come_from_the_spot_centres_at_the_derived_resolution() -> None:
    data = _her2st()
    c2 = next(s for s in data.her2st_sections() if s.name == "C2")
    section = data.load_section(c2, 16, 110.0, use_cache=False)
    assert section.mpp == pytest.approx(0.69, abs=0.01)  # 200 µm array pitch ≈ 290 px
    assert section.tiles.shape == (section.measured.n_spots, 16, 16, 3)
    # spots are under tissue: tiles are darker than glass
    assert section.tiles.mean() < 200


def test_nsl_has_eleven_trainable_weights_per_gene_and_trains_end_to_end_on_a_tiny_subset() -> (
    None
):
    data = _her2st()
    from models.nsl.train import NSLSettings, fit_nsl, predict_nsl
    from models.workshop.baselines import MeanPredictor, RidgeColour

    sections = data.load_her2st(16, 110.0, ["C2", "C3"])
    train, test = [sections["C2"]], sections["C3"]
    genes = data.gene_panel(train, 12, test.measured.genes)
    assert len(genes) == 12
    model = fit_nsl(train, genes, NSLSettings(epochs=2, batch_size=32))
    assert model.n_trainable_per_gene() == 11
    pred = predict_nsl(model, test.tiles)
    assert pred.shape == (len(test.tiles), 12) and np.isfinite(pred).all()
    for baseline in (MeanPredictor(), RidgeColour()):
        out = baseline.fit(train, genes).predict(test.tiles)
        assert out.shape == pred.shape


def test_evaluate_reproduces_the_bundled_models_recorded_held_out_metrics() -> None:
    _her2st()
    from models.evaluate import evaluate_onnx
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.registry import bundled_models

    models = [m for m in bundled_models() if m.info is not None and m.info.family == "nsl"]
    if not models:
        pytest.fail("the NSL model is not bundled")
    model = models[0]
    recorded = Predictor(model.path).info.metadata["metrics"]
    measured = evaluate_onnx(model.path)
    for labels in ("raw", "smoothed_3x3"):
        for key, value in recorded[labels].items():
            assert measured[labels][key] == pytest.approx(value, abs=1e-3), (labels, key)
    assert json.dumps(recorded)  # the record is plain JSON


def test_nsl_with_three_stains_has_sixteen_weights_per_gene_and_starts_at_ruifrok() -> None:
    from models.nsl.model import NSL, RUIFROK_H, ruifrok_deconvolution

    model = NSL(5, n_stains=3)
    assert model.n_trainable_per_gene() == 16  # 3×3 matrix + 6 head weights + bias
    matrix = ruifrok_deconvolution(3)
    h = np.asarray(RUIFROK_H) / np.linalg.norm(RUIFROK_H)
    # a pure haematoxylin pixel deconvolves to (1, 0, 0)
    np.testing.assert_allclose(h @ matrix, [1.0, 0.0, 0.0], atol=1e-6)
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), np.uint8))
    assert model.pooled_features(tiles).shape == (2, 5, 6)
    with pytest.raises(ValueError, match="n_stains"):
        ruifrok_deconvolution(4)


def test_nsl_light_pooling_matches_a_numpy_reference_of_signed_concentrations() -> None:
    from models.nsl.model import NSL, ruifrok_deconvolution

    model = NSL(2, n_stains=3, nonnegative=False, pool_light=True, pool_tissue_only=False)
    assert model.n_trainable_per_gene() == 22  # 3×3 matrix + 12 head weights + bias
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (4, 6, 6, 3), np.uint8)
    tiles[0] = 255  # a blank (glass) tile: concentrations ≤ 0 are kept, not clipped
    with torch.no_grad():
        feats = model.pooled_features(torch.from_numpy(tiles)).numpy()
    assert feats.shape == (4, 2, 12)
    od = -np.log((tiles.reshape(4, -1, 3).astype(np.float64) + 1.0) / 256.0)
    conc = od @ ruifrok_deconvolution(3).astype(np.float64)  # (4, 36, 3), signed
    light = np.exp(-conc)
    expected = np.concatenate([conc.mean(1), conc.std(1), light.mean(1), light.std(1)], axis=1)
    for gene in range(2):  # every gene starts from the same (Ruifrok) matrix
        np.testing.assert_allclose(feats[:, gene], expected, rtol=1e-4, atol=2e-3)
    # the clipped form differs exactly where some concentration is negative
    clipped = NSL(2, n_stains=3, pool_light=True, pool_tissue_only=False)
    with torch.no_grad():
        clipped_feats = clipped.pooled_features(torch.from_numpy(tiles)).numpy()
    assert (conc < 0).any()
    assert not np.allclose(clipped_feats[:, 0, :3], expected[:, :3], atol=1e-3)


def test_ridge_head_refit_recovers_a_linear_head_and_picks_its_penalty_by_section() -> None:
    from models.nsl.model import NSL
    from models.nsl.train import refit_head_ridge

    # synthetic tiles whose targets are an exact linear function of NSL's own features
    rng = np.random.default_rng(1)
    model = NSL(3).eval()
    tiles = torch.from_numpy(rng.integers(30, 230, (60, 6, 6, 3), np.uint8))
    with torch.no_grad():
        feats = model.pooled_features(tiles)
        model.feature_mean.copy_(feats.mean(0))
        model.feature_std.copy_(feats.std(0))
        x = (feats - model.feature_mean) / model.feature_std
    true_w = torch.from_numpy(rng.normal(size=(3, 4)).astype(np.float32))
    z = (x * true_w).sum(-1) + 0.5
    sections = np.repeat([0, 1, 2], 20)
    alpha = refit_head_ridge(model, tiles, z, sections, alphas=(1e-6, 1000.0))
    assert alpha == 1e-6  # the unpenalised fit predicts held-out sections better
    torch.testing.assert_close(model.head.detach(), true_w, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(model.bias.detach(), torch.full((3,), 0.5), atol=1e-3, rtol=0)


def test_nsl_three_stain_ridge_head_variant_trains_end_to_end_on_a_tiny_subset() -> None:
    data = _her2st()
    from models.nsl.train import NSLSettings, fit_nsl, predict_nsl

    sections = data.load_her2st(16, 110.0, ["C2", "C3", "C4"])
    train, test = [sections["C2"], sections["C3"]], sections["C4"]
    genes = data.gene_panel(train, 8, test.measured.genes)
    settings = NSLSettings(epochs=1, batch_size=64, n_stains=3, head="ridge")
    model = fit_nsl(train, genes, settings)
    pred = predict_nsl(model, test.tiles)
    assert pred.shape == (len(test.tiles), 8) and np.isfinite(pred).all()
    with pytest.raises(ValueError, match="head"):
        fit_nsl(train, genes, NSLSettings(epochs=1, head="lasso"))


def test_bootstrap_of_a_pcc_difference_separates_a_better_model_from_a_tie() -> None:
    from models.workshop.metrics import bootstrap_pcc_difference

    rng = np.random.default_rng(7)  # synthetic expression: 200 spots × 12 genes
    true = rng.normal(size=(200, 12))
    good = true + rng.normal(scale=0.5, size=true.shape)
    poor = true + rng.normal(scale=3.0, size=true.shape)
    better = bootstrap_pcc_difference(good, poor, true, n_boot=200)
    assert better["difference"] > 0.3
    assert better["ci95"][0] > 0 and better["share_positive"] == 1.0
    assert better["genes_a_better"] == 1.0 and better["wilcoxon_p"] < 0.01
    tie = bootstrap_pcc_difference(good, good, true, n_boot=50)
    assert tie["difference"] == 0.0 and tie["ci95"] == [0.0, 0.0]
    assert tie["share_positive"] == 0.0 and tie["genes_a_better"] == 0.0


def test_the_shipped_nsl_settings_train_on_a_tiny_subset_and_export_agreeing_on_real_tiles(
    tmp_path,
) -> None:
    data = _her2st()
    from dataclasses import replace

    from models.evaluate import make_method
    from models.nsl.build import SHIPPED_METHOD
    from models.nsl.train import fit_nsl, predict_nsl
    from napari_virtual_st.contract import ModelMetadata
    from napari_virtual_st.onnx_export import export_torch_model
    from napari_virtual_st.predictor import Predictor

    sections = data.load_her2st(16, 110.0, ["C2", "C3", "C4"])
    train, test = [sections["C2"], sections["C3"]], sections["C4"]
    genes = data.gene_panel(train, 8, test.measured.genes)
    settings = replace(make_method(SHIPPED_METHOD).settings, epochs=1)
    assert settings.pool_light and not settings.nonnegative and settings.head == "ridge"
    model = fit_nsl(train, genes, settings)
    assert model.n_trainable_per_gene() == 15
    report = export_torch_model(
        model,
        tmp_path / "nsl.onnx",
        ModelMetadata(
            genes=genes,
            tile_px=16,
            tile_um=110.0,
            family="nsl",
            target="log1p_cp10k",
        ),
        check_tiles=test.tiles[:32],  # real tissue: the export refuses a disagreement > 1e-4
    )
    assert report.max_abs_diff <= 1e-4
    got = Predictor(report.path, providers=["cpu"]).predict(test.tiles[:32]).expression
    np.testing.assert_allclose(got, predict_nsl(model, test.tiles[:32]), atol=1e-4)


def test_every_shipped_model_records_the_protocol_its_scores_and_the_baselines_the_same_way() -> (
    None
):
    from models.workshop.provenance import PROTOCOL, held_out_record

    held_out = {"raw": {"PCC-ALL": 0.08}, "smoothed_3x3": {"PCC-ALL": 0.09}}
    baselines = {"ridge_colour": {"mean": {"raw": {"PCC-ALL": 0.079}}, "folds": []}}
    record = held_out_record(held_out, "A1", 346, baselines, calibration={"coverage": 0.9})
    assert record["protocol"] == PROTOCOL and record["n_test_spots"] == 346
    assert record["raw"] == held_out["raw"] and record["calibration"] == {"coverage": 0.9}
    assert record["baselines_same_split"] == {"ridge_colour": {"raw": {"PCC-ALL": 0.079}}}
    assert "baselines_same_split" not in held_out_record(held_out, "A1", 346)
    assert json.loads(json.dumps(record)) == record


def test_auxiliary_genes_are_the_next_by_mean_and_only_the_panel_is_predicted() -> None:
    """Auxiliary Gene Learning (issue 19.4): extra targets in training, the panel out; on the
    colour ridge (no parameter shared between genes) the panel's predictions cannot change."""
    from models.evaluate import make_method
    from models.workshop.auxiliary import AuxiliaryGenes, auxiliary_genes

    data = _her2st()
    sections = data.load_her2st(16, 110.0, names=["C2", "C3", "C4"])
    train, test = [sections["C2"], sections["C3"]], sections["C4"]
    genes = data.gene_panel(train, 20)
    aux = auxiliary_genes(train, genes, 15)
    assert len(aux) == 15 and not set(aux) & set(genes)
    assert [*genes, *aux] == data.gene_panel(train, 35)  # ranks 21-35 of the same rule
    plain = make_method("ridge_colour").fit(train, genes).predict(test.tiles)
    with_aux = AuxiliaryGenes(make_method("ridge_colour"), 15).fit(train, genes)
    assert with_aux.auxiliary_ == aux
    predicted = with_aux.predict(test.tiles)
    assert predicted.shape == (test.measured.n_spots, 20)
    np.testing.assert_allclose(predicted, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_aux"):
        AuxiliaryGenes(make_method("ridge_colour"), 0)
