"""contract.py: the metadata a model author writes is what the Predictor reads back, and a
saved model is one self-contained file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from napari_virtual_st.contract import attach_metadata, contract_metadata, save_model
from napari_virtual_st.predictor import CONTRACT_VERSION, Predictor
from synthetic_models import NOISE_SPEC, expected_mean_colour, mean_colour_graph


def test_metadata_round_trips_through_save_model_and_the_predictor(tmp_path: Path) -> None:
    genes = ["EPCAM", "PTPRC", "COL1A1"]
    training = {"data": "synthetic", "split": "none", "revision": "abc123"}
    metrics = {"pcc_mean": 0.25, "protocol": "held-out patients"}
    meta = contract_metadata(
        genes=genes,
        tile_px=16,
        tile_um=112.0,
        family="dkan",
        target="log1p_cp10k",
        outputs=("expression", "variance"),
        name="round trip",
        training=training,
        metrics=metrics,
        license="CC0-1.0",
        extra_inputs={"noise": NOISE_SPEC},
        description="a synthetic model",
    )
    assert all(key.startswith("vst.") and isinstance(v, str) for key, v in meta.items())
    assert meta["vst.format_version"] == CONTRACT_VERSION
    model = mean_colour_graph(len(genes), 16, with_variance=True, noise_input=(8,))
    path = save_model(attach_metadata(model, meta), tmp_path / "round_trip.onnx")

    info = Predictor(path).info
    assert info.genes == tuple(genes)
    assert (info.tile_px, info.tile_um, info.mpp) == (16, 112.0, 7.0)
    assert (info.family, info.target, info.name) == ("dkan", "log1p_cp10k", "round trip")
    assert info.outputs == ("expression", "variance")
    assert dict(info.extra_inputs) == {"noise": NOISE_SPEC}
    assert info.metadata["training"] == training
    assert info.metadata["metrics"] == metrics
    assert info.metadata["license"] == "CC0-1.0"
    assert info.metadata["description"] == "a synthetic model"


def test_optional_keys_are_left_out_when_not_given() -> None:
    meta = contract_metadata(genes=["A"], tile_px=8, tile_um=8.0, family="nsl", target="counts")
    assert set(meta) == {
        "vst.format_version",
        "vst.family",
        "vst.genes",
        "vst.tile_px",
        "vst.tile_um",
        "vst.target",
        "vst.outputs",
    }
    assert meta["vst.outputs"] == '["expression"]'


def test_attaching_metadata_replaces_keys_and_keeps_the_others() -> None:
    model = mean_colour_graph(2, 8)
    attach_metadata(model, {"vst.family": "nsl", "author": "someone"})
    attach_metadata(model, {"vst.family": "stem"})
    props = [(p.key, p.value) for p in model.metadata_props]
    assert sorted(props) == [("author", "someone"), ("vst.family", "stem")]


def test_a_saved_model_is_one_self_contained_file(tmp_path: Path) -> None:
    n_genes = 4000  # a 48 kB weight matrix: large enough to be externalised if allowed
    model = mean_colour_graph(n_genes, 8)
    meta = contract_metadata(
        genes=[f"G{i}" for i in range(n_genes)],
        tile_px=8,
        tile_um=8.0,
        family="baseline",
        target="synthetic",
    )
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    path = save_model(attach_metadata(model, meta), out_dir / "big.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.onnx"]
    loaded = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in loaded.graph.initializer)
    # the file alone, moved elsewhere, still runs
    moved = tmp_path / "elsewhere.onnx"
    path.rename(moved)
    tiles = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        Predictor(moved).predict(tiles).expression,
        expected_mean_colour(tiles, n_genes),
        rtol=1e-5,
        atol=1e-5,
    )


def test_saving_replaces_an_existing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old contents")
    meta = contract_metadata(genes=["A", "B"], tile_px=8, tile_um=8.0, family="x", target="y")
    save_model(attach_metadata(mean_colour_graph(2, 8), meta), path)
    assert Predictor(path).genes == ("A", "B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("tile_um", [55, 55.5, 1e-3])
def test_tile_um_survives_the_string_round_trip_exactly(tmp_path: Path, tile_um: float) -> None:
    meta = contract_metadata(genes=["A"], tile_px=8, tile_um=tile_um, family="x", target="y")
    path = save_model(attach_metadata(mean_colour_graph(1, 8), meta), tmp_path / "m.onnx")
    assert Predictor(path).info.tile_um == float(tile_um)
