"""The Stem-style diffusion model: training on real data, the exported sampler, its variance,
the engine feeding its noise input, and the shipped model's record.

Training tests use a tiny subset of the real HER2ST data (skipped where ../shared/data is absent).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from her2st import workshop_data as _her2st

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")
pytest.importorskip(
    "onnxscript", reason="the torch ONNX exporter needs onnxscript ('train' extra)"
)

N_GENES = 12


@pytest.fixture(scope="module")
def tiny() -> Iterator[dict]:
    """A Stem model trained for a few epochs on C2 (12 genes), and C3 to predict."""
    data = _her2st()
    from models.stem.train import StemSettings, fit_stem

    sections = data.load_her2st(16, 110.0, ["C2", "C3"])
    train, test = [sections["C2"]], sections["C3"]
    genes = data.gene_panel(train, N_GENES, test.measured.genes)
    settings = StemSettings(epochs=3, batch_size=64, hidden=64, n_blocks=2, embed_dim=32)
    model = fit_stem(train, genes, settings)
    return {"model": model, "genes": genes, "test": test, "settings": settings}


@pytest.fixture(scope="module")
def exported(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's sampler (3 DDIM steps, 4 samples) exported to the contract."""
    from models.stem.export import export_stem
    from napari_virtual_st.contract import ModelMetadata

    path = tmp_path_factory.mktemp("stem") / "stem_tiny.onnx"
    metadata = ModelMetadata(
        genes=tiny["genes"], tile_px=16, tile_um=110.0, family="stem", target="log1p_cp10k"
    )
    export_stem(
        tiny["model"],
        path,
        metadata,
        n_steps=3,
        n_samples=4,
        check_tiles=tiny["test"].tiles[:8],
    )
    return path


def test_training_on_a_tiny_real_subset_gives_finite_means_and_non_negative_variances(
    tiny: dict,
) -> None:
    from models.stem.train import sample_stem

    test = tiny["test"]
    mean, var = sample_stem(tiny["model"], test.tiles, n_steps=3, n_samples=4)
    assert mean.shape == var.shape == (len(test.tiles), N_GENES)
    assert np.isfinite(mean).all() and np.isfinite(var).all()
    assert (mean >= 0).all()  # log1p CP10k cannot be negative
    assert (var >= 0).all() and var.max() > 0  # samples differ: the spread is not zero


def test_the_mean_head_alone_is_the_samplers_prior_mean_in_log1p_units(tiny: dict) -> None:
    """The diagnostic's mean head (``mean_head_expression``) is the prior mean the sampled
    residuals spread around, unstandardised and clamped at 0; batching does not change it."""
    from models.stem.train import mean_head_expression

    model, tiles = tiny["model"], tiny["test"].tiles
    head = mean_head_expression(model, tiles)
    assert head.shape == (len(tiles), N_GENES) and (head >= 0).all()
    np.testing.assert_allclose(mean_head_expression(model, tiles, batch_size=7), head, atol=1e-5)
    with torch.no_grad():
        prior = model.prior_mean(model.encoder(torch.from_numpy(tiles)))
        want = torch.relu(prior * model.target_std + model.target_mean).numpy()
    np.testing.assert_allclose(head, want, atol=1e-5)


def test_the_mean_head_point_estimate_keeps_the_samples_variance(tiny: dict) -> None:
    """``stem_mean_head`` (what ships) predicts with the mean head and still reports the
    samples' spread; ``stem`` keeps the samples' mean; an unknown point estimate is refused."""
    import dataclasses

    from models.evaluate import make_method
    from models.stem.model import StemSampler
    from models.stem.train import mean_head_expression, sample_stem, spot_noise

    tiles, settings = tiny["test"].tiles[:20], tiny["settings"]
    method = make_method("stem_mean_head")
    method.settings = dataclasses.replace(settings, point="mean_head", n_steps=3, n_samples=4)
    method.model_ = tiny["model"]
    np.testing.assert_allclose(method.predict(tiles), mean_head_expression(tiny["model"], tiles))
    _, variance = sample_stem(tiny["model"], tiles, n_steps=3, n_samples=4)
    np.testing.assert_allclose(method.variance_, variance)
    samples = torch.cat(  # the sampled mean, which the "stem" fold runs keep (shipped before)
        [
            StemSampler(tiny["model"], 3).samples(
                torch.from_numpy(tiles), torch.from_numpy(spot_noise(np.arange(20), 4, N_GENES))
            )
        ]
    )
    sampled = make_method("stem")
    assert sampled.settings.point == "sampled_mean"
    sampled.settings = dataclasses.replace(sampled.settings, n_steps=3, n_samples=4)
    sampled.model_ = tiny["model"]
    np.testing.assert_allclose(sampled.predict(tiles), samples.mean(dim=1).numpy(), atol=1e-6)
    np.testing.assert_allclose(sampled.variance_, variance)
    method.settings = dataclasses.replace(method.settings, point="median")
    with pytest.raises(ValueError, match="point must be one of"):
        method.predict(tiles)


def test_the_loss_falls_while_training(tiny: dict) -> None:
    from models.stem.train import fit_stem

    data = _her2st()
    train = [data.load_her2st(16, 110.0, ["C2"])["C2"]]
    z_tiles = torch.from_numpy(train[0].tiles)
    model = tiny["model"]
    targets = torch.from_numpy(train[0].targets(tiny["genes"]))
    z = (targets - model.target_mean) / model.target_std

    def loss(m) -> float:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            return float(np.mean([float(m.loss(z_tiles, z, g)) for _ in range(4)]))

    from dataclasses import replace

    untrained = fit_stem(train, tiny["genes"], replace(tiny["settings"], epochs=0))
    assert loss(model) < loss(untrained)


def test_exported_sampler_agrees_with_the_torch_sampler_on_the_same_noise(
    tiny: dict, exported: Path
) -> None:
    import onnxruntime as ort

    from models.stem.model import StemSampler

    rng = np.random.default_rng(5)
    tiles = tiny["test"].tiles[:10]
    noise = rng.standard_normal((10, 4, N_GENES)).astype(np.float32)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    onnx_mean, onnx_var = session.run(["expression", "variance"], {"image": tiles, "noise": noise})
    with torch.no_grad():
        mean, var = StemSampler(tiny["model"], 3)(torch.from_numpy(tiles), torch.from_numpy(noise))
    np.testing.assert_allclose(onnx_mean, mean.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(onnx_var, var.numpy(), rtol=0, atol=1e-4)
    from models.stem.train import mean_head_expression

    # expression is the mean head: the samples' centre, which the noise does not move
    np.testing.assert_allclose(onnx_mean, mean_head_expression(tiny["model"], tiles), atol=1e-4)
    other_mean, other_var = session.run(
        ["expression", "variance"], {"image": tiles, "noise": noise[::-1].copy()}
    )
    np.testing.assert_allclose(other_mean, onnx_mean, atol=1e-6)
    assert not np.allclose(other_var, onnx_var)  # the noise input really drives the samples


def test_the_exported_mean_head_stays_float_in_int8(exported: Path) -> None:
    """The nodes computing ``expression`` are declared float for int8 variants (the recipe's
    own rule finds only the denoiser's last layer in this graph)."""
    import onnx

    from napari_virtual_st.precision import declared_float_nodes, sensitive_nodes
    from napari_virtual_st.predictor import Predictor

    model = onnx.load(str(exported))
    declared = declared_float_nodes(Predictor(exported, providers=["cpu"]).info, model)
    scopes = {
        n.name: {p.key: p.value for p in n.metadata_props}.get("pkg.torch.onnx.name_scopes", "")
        for n in model.graph.node
    }
    assert len(declared) == 2 and all("model.mean_head" in scopes[n] for n in declared)
    assert not set(declared) & set(sensitive_nodes(model))


def test_the_predictor_feeds_declared_noise_per_spot_like_the_torch_sampler(
    tiny: dict, exported: Path
) -> None:
    from models.stem.train import sample_stem
    from napari_virtual_st.predictor import Predictor

    predictor = Predictor(exported, providers=["cpu"])
    spec = predictor.info.extra_inputs["noise"]
    assert spec == {
        "dtype": "float32",
        "shape": ["N", 4, N_GENES],
        "distribution": "normal",
        "seed": 0,
    }
    tiles = tiny["test"].tiles[:12]
    ids = np.arange(100, 112)
    whole = predictor.predict(tiles, spot_index=ids)
    halves = [predictor.predict(tiles[i : i + 5], spot_index=ids[i : i + 5]) for i in (0, 5, 10)]
    assert whole.variance is not None
    assert whole.expression.shape == whole.variance.shape == (12, N_GENES)
    assert (whole.variance >= 0).all()
    np.testing.assert_allclose(
        whole.expression, np.concatenate([h.expression for h in halves]), atol=1e-5
    )
    mean, var = sample_stem(tiny["model"], tiles, n_steps=3, n_samples=4, spot_ids=ids)
    np.testing.assert_allclose(whole.expression, mean, atol=1e-4)
    np.testing.assert_allclose(whole.variance, var, atol=1e-4)


def test_predict_through_the_engine_writes_expression_and_variance(
    exported: Path, cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.cli import main
    from napari_virtual_st.store import PredictionStore

    out = tmp_path / "cmu.vst.zarr"
    assert (
        main(
            ["predict", str(cmu_small_svs), "--model", str(exported), "--out", str(out), "--quiet"]
        )
        == 0
    )
    store = PredictionStore.open(out)
    assert store.is_complete and store.has_variance
    expression, variance = store.expression(), store.variance()
    assert expression.shape == variance.shape == (store.n_spots, N_GENES)
    assert store.n_spots > 10
    assert np.isfinite(expression).all() and (variance >= 0).all() and variance.max() > 0


def test_calibration_is_high_when_the_spread_tracks_the_error_and_near_zero_when_not() -> None:
    from models.stem.calibration import calibration

    rng = np.random.default_rng(0)
    sd = rng.uniform(0.1, 2.0, (400, 6))  # synthetic: errors drawn with the predicted spread
    truth = rng.normal(size=sd.shape) * sd
    good = calibration(np.zeros_like(sd), sd**2, truth)
    shuffled = calibration(
        np.zeros_like(sd), rng.permutation(sd.ravel()).reshape(sd.shape) ** 2, truth
    )
    assert good["per_gene_median"] > 0.3 and good["per_spot"] > 0.3
    assert abs(shuffled["per_gene_median"]) < 0.15
    assert 0.9 < good["coverage_2sd"] < 1.0
    with pytest.raises(ValueError, match="negative"):
        calibration(np.zeros((2, 2)), -np.ones((2, 2)), np.zeros((2, 2)))


def test_evaluate_reproduces_the_bundled_stem_models_recorded_held_out_metrics() -> None:
    _her2st()
    from models.evaluate import evaluate_onnx
    from napari_virtual_st.predictor import Predictor
    from napari_virtual_st.registry import bundled_models

    models = [m for m in bundled_models() if m.info is not None and m.info.family == "stem"]
    if not models:
        pytest.fail("the Stem model is not bundled")
    info = Predictor(models[0].path).info
    assert info.outputs == ("expression", "variance")
    assert "noise" in info.extra_inputs
    recorded = info.metadata["metrics"]
    measured = evaluate_onnx(models[0].path)
    for labels in ("raw", "smoothed_3x3"):
        for key, value in recorded[labels].items():
            assert measured[labels][key] == pytest.approx(value, abs=1e-3), (labels, key)
    assert -1 <= recorded["calibration"]["per_spot"] <= 1


def test_the_predict_widgets_run_feeds_the_noise_and_streams_variance_batches(
    exported: Path, cmu_small_svs: Path, tmp_path: Path
) -> None:
    from napari_virtual_st.run import BatchEvent, RunSpec, run_events
    from napari_virtual_st.store import PredictionStore

    request = RunSpec(
        slide_path=cmu_small_svs,
        model_path=exported,
        store_path=tmp_path / "run.vst.zarr",
        batch_size=16,
    )
    gen = run_events(request)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration:
            break
    batches = [e for e in events if isinstance(e, BatchEvent)]
    assert batches and all(b.variance is not None for b in batches)
    store = PredictionStore.open(request.store_path)
    assert store.is_complete and store.has_variance
    streamed = np.concatenate(
        [b.variance for b in sorted(batches, key=lambda b: b.progress.spots.start)]
    )
    np.testing.assert_array_equal(streamed, store.variance())
