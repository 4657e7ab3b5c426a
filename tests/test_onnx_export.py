"""Bring-your-own-model export: torch module → contract ONNX, and int8 quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the 'train' extra")
pytest.importorskip("onnxscript", reason="torch.onnx dynamo export needs onnxscript")

from napari_virtual_st.contract import ModelMetadata  # noqa: E402
from napari_virtual_st.errors import ModelError  # noqa: E402
from napari_virtual_st.onnx_export import export_torch_model, quantize_int8  # noqa: E402
from napari_virtual_st.predictor import Predictor  # noqa: E402
from napari_virtual_st.slide import Slide  # noqa: E402


class TinyCNN(torch.nn.Module):
    """A small synthetic CNN (random weights) with normalisation inside ``forward``."""

    def __init__(self, n_genes: int = 7, with_variance: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(32, n_genes)
        self.with_variance = with_variance
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        out = self.head(self.features(x).flatten(1))
        if self.with_variance:
            return out, torch.nn.functional.softplus(out)
        return out


def _genes(n: int) -> list[str]:
    return [f"SYNTH{i}" for i in range(n)]


def test_exported_model_matches_torch_within_1e_4_and_passes_the_contract(tmp_path: Path) -> None:
    module = TinyCNN()
    report = export_torch_model(
        module,
        tmp_path / "tiny.onnx",
        ModelMetadata(
            genes=_genes(7),
            tile_px=32,
            tile_um=55.0,
            family="baseline",
            target="synthetic",
        ),
    )
    assert report.max_abs_diff <= 1e-4
    predictor = Predictor(report.path)
    assert predictor.genes == tuple(_genes(7))
    assert predictor.info.tile_um == 55.0
    tiles = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = module(torch.from_numpy(tiles)).numpy()
    np.testing.assert_allclose(predictor.predict(tiles).expression, expected, atol=1e-4)


def test_variance_output_is_exported_and_returned(tmp_path: Path) -> None:
    report = export_torch_model(
        TinyCNN(with_variance=True),
        tmp_path / "var.onnx",
        ModelMetadata(
            genes=_genes(7),
            tile_px=32,
            tile_um=55.0,
            family="stem",
            target="synthetic",
            outputs=("expression", "variance"),
        ),
    )
    out = Predictor(report.path).predict(np.zeros((3, 32, 32, 3), np.uint8))
    assert out.variance is not None and out.variance.shape == (3, 7)
    assert (out.variance >= 0).all()


def test_a_log1p_model_is_exported_clamped_at_zero_and_a_synthetic_one_is_not(
    tmp_path: Path,
) -> None:
    from napari_virtual_st.onnx_export import CLAMP_NODE

    module = TinyCNN()
    tiles = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = module(torch.from_numpy(tiles)).numpy()
    assert raw.min() < 0  # the check below means something
    paths = {}
    for target in ("log1p_cp10k", "synthetic"):
        metadata = ModelMetadata(
            genes=_genes(7), tile_px=32, tile_um=55.0, family="baseline", target=target
        )
        report = export_torch_model(
            module, tmp_path / f"{target}.onnx", metadata, check_tiles=tiles
        )
        assert report.max_abs_diff <= 1e-4
        paths[target] = report.path
    clamped = Predictor(paths["log1p_cp10k"]).predict(tiles).expression
    np.testing.assert_allclose(clamped, np.maximum(raw, 0), atol=1e-4)
    np.testing.assert_allclose(
        Predictor(paths["synthetic"]).predict(tiles).expression, raw, atol=1e-4
    )
    import onnx

    assert any(n.name == CLAMP_NODE for n in onnx.load(str(paths["log1p_cp10k"])).graph.node)


class NoisyMean(torch.nn.Module):
    """Synthetic sampler-like module: mean and variance over K noisy copies of a linear map."""

    def __init__(self, n_genes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3, n_genes)

    def forward(
        self, image: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        colour = image.to(torch.float32).mean(dim=(1, 2)) / 255.0  # (N, 3)
        samples = self.head(colour).unsqueeze(1) + 0.3 * noise  # (N, K, G)
        return samples.mean(dim=1), samples.var(dim=1, unbiased=False)


def test_extra_inputs_are_declared_and_checked_on_the_noise_the_predictor_feeds(
    tmp_path: Path,
) -> None:
    spec = {"dtype": "float32", "shape": ["N", 4, 5], "distribution": "normal", "seed": 3}
    module = NoisyMean(5)
    report = export_torch_model(
        module,
        tmp_path / "noisy.onnx",
        ModelMetadata(
            genes=_genes(5),
            tile_px=8,
            tile_um=55.0,
            family="stem",
            target="synthetic",
            outputs=("expression", "variance"),
            extra_inputs={"noise": spec},
        ),
    )
    assert report.max_abs_diff <= 1e-4
    predictor = Predictor(report.path)
    assert predictor.info.extra_inputs == {"noise": spec}
    tiles = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = predictor.predict(tiles, spot_index=[10, 11, 12])
    from napari_virtual_st.predictor import extra_input_values

    with torch.no_grad():
        mean, var = module(
            torch.from_numpy(tiles), torch.from_numpy(extra_input_values(spec, [10, 11, 12]))
        )
    np.testing.assert_allclose(out.expression, mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.variance, var.numpy(), atol=1e-5)
    # the noise is per spot: the same spot gets the same values in any batch
    alone = predictor.predict(tiles[1:2], spot_index=[11])
    np.testing.assert_allclose(alone.expression, out.expression[1:2], atol=1e-6)


def test_export_with_wrong_gene_count_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"vst\.genes"):
        export_torch_model(
            TinyCNN(7),
            tmp_path / "bad.onnx",
            ModelMetadata(
                genes=_genes(5),
                tile_px=32,
                tile_um=55.0,
                family="x",
                target="y",
            ),
        )


def test_invalid_metadata_is_refused_before_anything_is_exported(tmp_path: Path) -> None:
    metadata = ModelMetadata(genes=["A", "A"], tile_px=32, tile_um=55.0, family="x", target="y")
    with pytest.raises(ModelError, match=r"'vst\.genes' lists gene 'A' more than once"):
        export_torch_model(TinyCNN(2), tmp_path / "dup.onnx", metadata)
    assert not (tmp_path / "dup.onnx").exists()


def test_int8_model_agrees_with_fp32_on_real_tissue_tiles(
    tmp_path: Path, cmu_small_svs: Path
) -> None:
    report = export_torch_model(
        TinyCNN(),
        tmp_path / "fp32.onnx",
        ModelMetadata(
            genes=_genes(7),
            tile_px=32,
            tile_um=55.0,
            family="baseline",
            target="synthetic",
        ),
    )
    with Slide(cmu_small_svs) as slide:
        centres = [(x, y) for x in range(300, 2000, 300) for y in range(300, 2700, 300)]
        tiles = np.stack([slide.read_tile(c, 32, 55.0) for c in centres])
    result = quantize_int8(
        report.path, tmp_path / "int8.onnx", tiles[::2], check_tiles=tiles, batch_size=16
    )
    quantised = Predictor(result.path)
    assert quantised.genes == tuple(_genes(7))
    assert "int8" in quantised.info.name
    assert result.median_gene_pcc > 0.95
    assert result.fp32_tiles_per_s > 0 and result.int8_tiles_per_s > 0


def test_float16_weight_storage_halves_the_file_keeps_outputs_and_metadata(
    tmp_path: Path,
) -> None:
    from napari_virtual_st.onnx_export import record_metrics, store_weights_fp16

    class Wide(torch.nn.Module):
        """Synthetic model whose size is in one large weight matrix."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Linear(8 * 8 * 3, 512)
            self.head = torch.nn.Linear(512, 6)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.to(torch.float32).flatten(1) / 255.0
            return self.head(torch.relu(self.body(x)))

    report = export_torch_model(
        Wide(),
        tmp_path / "wide.onnx",
        ModelMetadata(
            genes=_genes(6),
            tile_px=8,
            tile_um=55.0,
            family="baseline",
            target="synthetic",
        ),
    )
    tiles = np.random.default_rng(4).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    half = store_weights_fp16(report.path, tmp_path / "half.onnx", check_tiles=tiles)
    assert half.bytes_after < 0.6 * half.bytes_before
    assert half.max_abs_diff < 1e-2 and half.min_gene_pcc > 0.999
    predictor = Predictor(half.path)
    assert predictor.genes == tuple(_genes(6)) and predictor.info.tile_px == 8
    np.testing.assert_allclose(
        predictor.predict(tiles).expression,
        Predictor(report.path).predict(tiles).expression,
        atol=1e-2,
    )
    with pytest.raises(ModelError, match="float16"):
        store_weights_fp16(report.path, tmp_path / "strict.onnx", check_tiles=tiles, tolerance=0)
    assert not (tmp_path / "strict.onnx").exists()
    record_metrics(half.path, {"raw": {"PCC-ALL": 0.5}})
    assert Predictor(half.path).info.metadata["metrics"] == {"raw": {"PCC-ALL": 0.5}}
